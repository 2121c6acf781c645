//! The store and job service against real SQLite, MariaDB and PostgreSQL, each test in a
//! database of its own.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{Engine, TestDb};
use easel::jobs::{JobEvent, JobService, Txt2Img};
use easel::store::{JobStatus, NewImage, NewJob, Store};

fn request(prompt: &str) -> Txt2Img {
    Txt2Img {
        model_name: "m".into(),
        prompt: prompt.into(),
        width: 64,
        height: 32,
        steps: 3,
        seed: -1,
        ..Txt2Img::default()
    }
}

fn image(png: &[u8]) -> NewImage<'_> {
    NewImage {
        png,
        info: "{}",
        width: 64,
        height: 32,
        category_id: None,
    }
}

async fn lifecycle(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.expect("connect + migrate"));
    // Migrations are idempotent: a second connect on the same database works.
    Store::connect(&db.url)
        .await
        .expect("second connect")
        .close()
        .await;

    let jobs = JobService::new(store.clone(), "host-a");
    let mut events = jobs.subscribe();
    for i in 0..3 {
        jobs.enqueue(
            &format!("job{i}"),
            "owner",
            Some("127.0.0.1"),
            &request(&format!("p{i}")),
        )
        .await
        .unwrap();
    }
    assert_eq!(jobs.queued().await.unwrap(), 3);
    // A duplicate id is refused and changes nothing.
    assert!(
        jobs.enqueue("job0", "owner", None, &request("dup"))
            .await
            .is_err()
    );

    // FIFO claims.
    let first = jobs.claim("sim").await.unwrap().expect("a job");
    assert_eq!(first.id(), "job0");
    assert_eq!(first.attempt, 1);
    assert_eq!(first.request, request("p0"));
    let second = jobs.claim("sim").await.unwrap().expect("a job");
    assert_eq!(second.id(), "job1");

    // Finishing stores the image once; a second finish of the same claim is refused.
    assert!(
        jobs.finish(&first, "sim", b"png-bytes", "{}")
            .await
            .unwrap()
    );
    assert!(!jobs.finish(&first, "sim", b"other", "{}").await.unwrap());
    assert_eq!(
        store.image_png("job0").await.unwrap().as_deref(),
        Some(&b"png-bytes"[..])
    );
    assert_eq!(store.image_png("job1").await.unwrap(), None);

    // Requeue, then a stale claim cannot finish; the new claim can.
    assert!(jobs.requeue(&second, "worker went away").await.unwrap());
    let third = jobs
        .claim("sim")
        .await
        .unwrap()
        .expect("requeued job first");
    assert_eq!((third.id(), third.attempt), ("job1", 2));
    assert!(!jobs.finish(&second, "sim", b"stale", "{}").await.unwrap());
    assert!(jobs.fail(&third, "model missing").await.unwrap());
    let row = store.job("job1").await.unwrap().unwrap();
    assert_eq!(row.status(), JobStatus::Failed);
    assert_eq!(row.last_error.as_deref(), Some("model missing"));

    // Interrupt a queued job: it leaves the queue.
    assert_eq!(
        jobs.interrupt("job2").await.unwrap(),
        Some(JobStatus::Queued)
    );
    assert_eq!(jobs.interrupt("job2").await.unwrap(), None);
    assert!(jobs.claim("sim").await.unwrap().is_none());

    // Events came in order.
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(seen.contains(&JobEvent::Finished {
        job_id: "job0".into(),
        backend: "sim".into()
    }));
    assert!(seen.contains(&JobEvent::Interrupted {
        job_id: "job2".into(),
        was_running: false
    }));
    assert!(matches!(seen.last(), Some(JobEvent::Interrupted { .. })));

    store.close().await;
    db.cleanup().await;
}

async fn interrupt_running(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    let jobs = JobService::new(store.clone(), "host-a");
    jobs.enqueue("run1", "o", None, &request("p"))
        .await
        .unwrap();
    let claim = jobs.claim("sim").await.unwrap().unwrap();
    assert!(jobs.progress(&claim, 1, 3).is_ok());
    assert_eq!(
        jobs.interrupt("run1").await.unwrap(),
        Some(JobStatus::Running)
    );
    assert!(
        jobs.progress(&claim, 2, 3).is_err(),
        "backend is told to stop"
    );
    assert!(!jobs.finish(&claim, "sim", b"late", "{}").await.unwrap());
    assert_eq!(
        store.job("run1").await.unwrap().unwrap().status(),
        JobStatus::Interrupted
    );
    store.close().await;
    db.cleanup().await;
}

async fn recovery_is_per_host(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    let a = JobService::new(store.clone(), "host-a");
    let b = JobService::new(store.clone(), "host-b");
    a.enqueue("a1", "o", None, &request("p")).await.unwrap();
    a.enqueue("b1", "o", None, &request("p")).await.unwrap();
    let _claim_a = a.claim("sim").await.unwrap().unwrap();
    let claim_b = b.claim("sim").await.unwrap().unwrap();
    // host-a restarts: only its own running job goes back to the queue.
    assert_eq!(a.recover().await.unwrap(), 1);
    assert_eq!(
        store.job("a1").await.unwrap().unwrap().status(),
        JobStatus::Queued
    );
    assert_eq!(
        store.job("b1").await.unwrap().unwrap().status(),
        JobStatus::Running
    );
    assert!(b.finish(&claim_b, "sim", b"x", "{}").await.unwrap());
    let again = a.claim("sim").await.unwrap().unwrap();
    assert_eq!((again.id(), again.attempt), ("a1", 2));
    store.close().await;
    db.cleanup().await;
}

/// Several hosts claiming from one database concurrently: every job is claimed exactly once.
async fn concurrent_claims(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    const JOBS: usize = 120;
    const HOSTS: usize = 4;
    let setup = Store::connect(&db.url).await.unwrap();
    for i in 0..JOBS {
        setup
            .insert_job(&NewJob {
                id: &format!("c{i:04}"),
                kind: "txt2img",
                request: &serde_json::to_string(&request("p")).unwrap(),
                owner_id: "o",
                origin: None,
            })
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for h in 0..HOSTS {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            // Each host has its own pool, as separate processes would.
            let store = Store::connect(&url).await.unwrap();
            let host = format!("host-{h}");
            let mut mine = Vec::new();
            while let Some(row) = store.claim_job(&host, "sim").await.unwrap() {
                assert!(
                    store
                        .finish_job(&row.id, Some(row.attempts), &image(b"png"))
                        .await
                        .unwrap()
                );
                mine.push(row.id);
            }
            store.close().await;
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), JOBS, "every job claimed");
    assert_eq!(unique.len(), JOBS, "no job claimed twice");
    assert_eq!(
        setup.count_jobs(JobStatus::Finished).await.unwrap(),
        JOBS as i64
    );
    assert!(setup.jobs().await.unwrap().iter().all(|j| j.attempts == 1));
    setup.close().await;
    db.cleanup().await;
}

async fn users_categories_models(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Store::connect(&db.url).await.unwrap();
    assert_eq!(store.user_role("42").await.unwrap(), None);
    store.set_user_role("42", 1).await.unwrap();
    store.set_user_role("42", 3).await.unwrap();
    assert_eq!(store.user_role("42").await.unwrap(), Some(3));
    let cat = store.create_category("Zm94ZXM=", "42").await.unwrap();
    assert!(store.category_owned_by(cat, "42").await.unwrap());
    assert!(!store.category_owned_by(cat, "43").await.unwrap());
    assert!(!store.category_owned_by(cat + 1000, "42").await.unwrap());
    store
        .add_model("sdxl_base", Some("SDXL"), false)
        .await
        .unwrap();
    store.add_model("secret", None, true).await.unwrap();
    assert_eq!(
        store.models().await.unwrap(),
        vec![
            ("sdxl_base".to_owned(), Some("SDXL".to_owned()), false),
            ("secret".to_owned(), None, true)
        ]
    );
    store.close().await;
    db.cleanup().await;
}

macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Engine::Sqlite).await })*
        }
        mod mysql {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Engine::MySql).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Engine::Postgres).await })*
        }
    };
}

per_engine!(
    lifecycle,
    interrupt_running,
    recovery_is_per_host,
    concurrent_claims,
    users_categories_models,
);
