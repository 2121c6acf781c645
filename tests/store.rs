//! The store, the job service, the intake and the backend contract against real SQLite,
//! MariaDB and PostgreSQL, each test in a database of its own.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Engine, TestDb};
use easel::jobs::{Capabilities, EventKind, JobId, Received, Txt2Img};
use easel::store::{
    ClaimFilter, Completion, DEFAULT_LEASE, Fence, JobStatus, ModelEntry, NewImage, NewJob, Store,
};

fn request(prompt: &str) -> Txt2Img {
    Txt2Img {
        model_name: "m".into(),
        prompt: prompt.into(),
        width: 64,
        height: 32,
        steps: 3,
        seed: -1,
        cfg_scale: 7.0,
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

fn new_job<'a>(id: &'a str, json: &'a str, model: &'a str, pixels: i64) -> NewJob<'a> {
    NewJob {
        id,
        kind: "txt2img",
        request: json,
        owner_id: "o",
        origin: None,
        model,
        pixels,
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

    let s = common::services(store.clone(), "host-a");
    let mut events = s.jobs.subscribe();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(s.submit(request(&format!("p{i}"))).await);
    }
    assert_eq!(s.jobs.queue_depth(), 3);
    assert_eq!(store.count_jobs(JobStatus::Queued).await.unwrap(), 3);
    let row = store.job(ids[0].as_str()).await.unwrap().unwrap();
    assert_eq!((row.owner_id.as_str(), row.event_seq), ("owner", 1));
    assert_eq!(row.origin.as_deref(), Some("203.0.113.9"));
    assert_eq!((row.model.as_str(), row.pixels), ("m", 64 * 32));

    // FIFO claims, through the backend contract.
    let port = s.backends.port("sim");
    let any = Capabilities::any();
    let first = port.claim(&any, 1).await.unwrap().pop().expect("a job");
    assert_eq!(first.id(), &ids[0]);
    assert_eq!(first.attempt(), 1);
    assert_eq!(first.request(), &request("p0").with_defaults());
    let second = port.claim(&any, 1).await.unwrap().pop().expect("a job");
    assert_eq!(second.id(), &ids[1]);
    assert_eq!(s.jobs.queue_depth(), 1);

    // Finishing stores the image once.
    assert!(
        first
            .finish("sim-0", b"png-bytes".to_vec(), "{}".into())
            .await
            .unwrap()
    );
    assert_eq!(
        store.image_png(ids[0].as_str()).await.unwrap().as_deref(),
        Some(&b"png-bytes"[..])
    );
    assert_eq!(store.image_png(ids[1].as_str()).await.unwrap(), None);
    let row = store.job(ids[0].as_str()).await.unwrap().unwrap();
    assert_eq!((row.backend.as_deref(), row.event_seq), (Some("sim-0"), 3));

    // The host restarts while the second runs: a stale lease cannot finish; the new one can.
    assert_eq!(store.requeue_running("host-a", "restart").await.unwrap(), 1);
    let third = port
        .claim(&any, 1)
        .await
        .unwrap()
        .pop()
        .expect("requeued job first");
    assert_eq!((third.id(), third.attempt()), (&ids[1], 2));
    assert!(
        !second
            .finish("sim", b"stale".to_vec(), "{}".into())
            .await
            .unwrap()
    );
    assert!(third.fail("model missing").await.unwrap());
    let row = store.job(ids[1].as_str()).await.unwrap().unwrap();
    assert_eq!(row.status(), JobStatus::Failed);
    assert_eq!(row.last_error.as_deref(), Some("model missing"));

    // Interrupt a queued job: it leaves the queue.
    assert_eq!(
        s.jobs.interrupt(ids[2].as_str()).await.unwrap(),
        Some(JobStatus::Queued)
    );
    assert_eq!(s.jobs.interrupt(ids[2].as_str()).await.unwrap(), None);
    assert!(port.claim(&any, 1).await.unwrap().is_empty());
    assert_eq!(s.jobs.queue_depth(), 0);

    // Events came in order, each with its job's owner and origin, and sequence numbers that
    // grow by one with every change of the job.
    let mut seen = Vec::new();
    while let Some(Received::Event(event)) = events.try_recv() {
        seen.push(event);
    }
    let of = |id: &JobId| -> Vec<(i64, EventKind)> {
        seen.iter()
            .filter(|e| &e.job == id)
            .map(|e| (e.seq, e.kind.clone()))
            .collect()
    };
    assert_eq!(
        of(&ids[0]),
        vec![
            (1, EventKind::Queued),
            (
                2,
                EventKind::Started {
                    backend: "sim".into(),
                    attempt: 1
                }
            ),
            (
                3,
                EventKind::Finished {
                    backend: "sim-0".into()
                }
            ),
        ]
    );
    assert_eq!(
        of(&ids[2]),
        vec![
            (1, EventKind::Queued),
            (2, EventKind::Interrupted { was_running: false })
        ]
    );
    assert!(seen.iter().all(|e| &*e.owner == "owner"));
    assert!(matches!(
        seen.last().map(|e| &e.kind),
        Some(EventKind::Interrupted { .. })
    ));

    store.close().await;
    db.cleanup().await;
}

/// A watch follows its job to the end, in order, whatever the broadcast does: the event
/// buffer here holds one event and a subscriber never reads.
async fn watches_cannot_miss_the_end(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    let s = common::services_with_buffer(store.clone(), "host-a", 1);
    let _never_read = s.jobs.subscribe();
    let (id, mut watch) = s.submit_and_watch(request("watched")).await;
    let port = s.backends.port("sim");
    let lease = port
        .claim(&Capabilities::any(), 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    for step in 1..=2 {
        lease.progress(step, 3).unwrap();
    }
    // A live preview is stored with the job; the event says so, readers fetch it by id.
    lease
        .progress_with_preview(3, 3, b"preview-png")
        .await
        .unwrap();
    let reader = s.jobs.reader();
    assert_eq!(
        reader.preview_png(id.as_str()).await.unwrap().as_deref(),
        Some(&b"preview-png"[..])
    );
    assert!(
        lease
            .finish("sim-0", b"png".to_vec(), "{}".into())
            .await
            .unwrap()
    );
    let mut kinds = Vec::new();
    while let Some(event) = watch.next().await {
        assert_eq!(event.job, id);
        kinds.push(event.kind);
    }
    assert_eq!(kinds.first(), Some(&EventKind::Queued));
    assert!(matches!(kinds[1], EventKind::Started { .. }));
    assert_eq!(
        kinds.last(),
        Some(&EventKind::Finished {
            backend: "sim-0".into()
        })
    );
    // Progress may be coalesced, never reordered.
    let steps: Vec<u32> = kinds
        .iter()
        .filter_map(|k| match k {
            EventKind::Progress { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert!(watch.next().await.is_none(), "ended");
    // The preview went with the job's end.
    assert_eq!(reader.preview_png(id.as_str()).await.unwrap(), None);
    drop(watch);

    // A watch of a job that already ended reads its end from the store.
    let mut late = s.jobs.watch(id.clone());
    let event = late.next().await.expect("the job's state");
    assert_eq!(event.seq, 3);
    assert!(matches!(event.kind, EventKind::Finished { .. }));
    assert!(late.next().await.is_none());
    drop(late);
    // Nothing is followed any more.
    for _ in 0..100 {
        if s.jobs.watched_jobs() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(s.jobs.watched_jobs(), 0);
    store.close().await;
    db.cleanup().await;
}

async fn interrupt_running(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    let s = common::services(store.clone(), "host-a");
    let id = s.submit(request("p")).await;
    let port = s.backends.port("sim");
    let lease = port
        .claim(&Capabilities::any(), 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(lease.progress(1, 3).is_ok());
    assert_eq!(
        s.jobs.interrupt(id.as_str()).await.unwrap(),
        Some(JobStatus::Running)
    );
    assert!(lease.progress(2, 3).is_err(), "backend is told to stop");
    assert!(
        !lease
            .finish("sim", b"late".to_vec(), "{}".into())
            .await
            .unwrap()
    );
    assert_eq!(
        store.job(id.as_str()).await.unwrap().unwrap().status(),
        JobStatus::Interrupted
    );
    store.close().await;
    db.cleanup().await;
}

async fn interrupted_job_keeps_its_partial_picture(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    let s = common::services(store.clone(), "host-a");
    let id = s.submit(request("p")).await;
    let mut watch = s.jobs.watch(id.clone());
    let port = s.backends.port("forge");
    // What a backend may look at before it claims (model affinity).
    let (oldest, model) = port
        .oldest_queued(&Capabilities::any())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((oldest.as_str(), model.as_str()), (id.as_str(), "m"));
    let other = Capabilities {
        models: vec!["not-m".into()],
        max_pixels: None,
    };
    assert!(port.oldest_queued(&other).await.unwrap().is_none());
    let lease = port
        .claim(&Capabilities::any(), 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(!lease.interrupt_requested());
    assert_eq!(
        s.jobs.interrupt(id.as_str()).await.unwrap(),
        Some(JobStatus::Running)
    );
    assert!(
        lease.interrupt_requested(),
        "the backend can see it at once"
    );
    assert!(lease.progress(2, 3).is_err());
    // Forge answers an interrupt with the picture so far: it becomes the job's.
    assert!(
        lease
            .finish_partial("forge", b"partial".to_vec(), "{}".into())
            .await
            .unwrap()
    );
    assert_eq!(
        store.job(id.as_str()).await.unwrap().unwrap().status(),
        JobStatus::Finished
    );
    assert_eq!(
        store.image_png(id.as_str()).await.unwrap().unwrap(),
        b"partial"
    );
    // A watcher sees the interrupt, then the finish.
    let mut kinds = Vec::new();
    while let Some(event) = watch.next().await {
        kinds.push(event.kind);
    }
    assert!(
        matches!(
            kinds.as_slice(),
            [
                ..,
                EventKind::Interrupted { was_running: true },
                EventKind::Finished { .. }
            ]
        ),
        "{kinds:?}"
    );
    store.close().await;
    db.cleanup().await;
}

async fn recovery_is_per_host(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    let a = common::services(store.clone(), "host-a");
    let b = common::services(store.clone(), "host-b");
    let a1 = a.submit(request("p")).await;
    let b1 = a.submit(request("p")).await;
    let any = Capabilities::any();
    let _lease_a = a
        .backends
        .port("sim")
        .claim(&any, 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    let lease_b = b
        .backends
        .port("sim")
        .claim(&any, 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(lease_b.id(), &b1);
    // host-a restarts: only its own running job goes back to the queue.
    assert_eq!(a.jobs.recover().await.unwrap(), 1);
    assert_eq!(
        store.job(a1.as_str()).await.unwrap().unwrap().status(),
        JobStatus::Queued
    );
    assert_eq!(
        store.job(b1.as_str()).await.unwrap().unwrap().status(),
        JobStatus::Running
    );
    assert!(
        lease_b
            .finish("sim", b"x".to_vec(), "{}".into())
            .await
            .unwrap()
    );
    let again = a
        .backends
        .port("sim")
        .claim(&any, 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((again.id(), again.attempt()), (&a1, 2));
    store.close().await;
    db.cleanup().await;
}

/// Claims take only what the claiming backend can run; what nobody can run stays queued.
async fn claims_follow_capabilities(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Store::connect(&db.url).await.unwrap();
    let json = serde_json::to_string(&request("p")).unwrap();
    for (id, model, pixels) in [
        ("big-sdxl", "sdxl", 2048 * 2048),
        ("flux", "flux", 512 * 512),
        ("sdxl", "sdxl", 1024 * 1024),
        ("default", "", 512 * 512),
    ] {
        store
            .insert_job(&new_job(id, &json, model, pixels))
            .await
            .unwrap();
    }
    let models = vec!["sdxl".to_owned()];
    let filter = ClaimFilter {
        models: Some(&models),
        max_pixels: Some(1024 * 1024),
    };
    let rows = store
        .claim_jobs("h", "w", filter, 10, DEFAULT_LEASE)
        .await
        .unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["sdxl", "default"]);
    assert!(
        store
            .claim_jobs("h", "w", filter, 10, DEFAULT_LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let any = store
        .claim_jobs("h", "w", ClaimFilter::default(), 10, DEFAULT_LEASE)
        .await
        .unwrap();
    let ids: Vec<&str> = any.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["big-sdxl", "flux"]);
    store.close().await;
    db.cleanup().await;
}

/// A burst of inserts is one statement; a taken id in it is reported for that job alone.
async fn batched_inserts_report_taken_ids(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Store::connect(&db.url).await.unwrap();
    let json = serde_json::to_string(&request("p")).unwrap();
    store
        .insert_job(&new_job("taken", &json, "m", 1))
        .await
        .unwrap();
    let done = store
        .insert_jobs(&[
            new_job("n1", &json, "m", 1),
            new_job("taken", &json, "m", 1),
            new_job("n2", &json, "m", 1),
        ])
        .await
        .unwrap();
    assert_eq!(done, [true, false, true]);
    let ids: Vec<String> = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["taken", "n1", "n2"]);
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
    let json = serde_json::to_string(&request("p")).unwrap();
    for i in 0..JOBS {
        setup
            .insert_job(&new_job(&format!("c{i:04}"), &json, "m", 1))
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
                let done = store
                    .finish_jobs(&[Completion {
                        id: &row.id,
                        fence: Fence::Claim(row.event_seq),
                        backend: "sim",
                        image: image(b"png"),
                    }])
                    .await
                    .unwrap();
                assert_eq!(done, [Some(row.event_seq + 1)]);
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
    let sdxl = store
        .add_model("sdxl_base", Some("SDXL"), false)
        .await
        .unwrap();
    let secret = store.add_model("secret", None, true).await.unwrap();
    assert_ne!(sdxl, secret);
    assert_eq!(
        store.models().await.unwrap(),
        vec![
            ModelEntry {
                id: sdxl,
                name: "sdxl_base".to_owned(),
                friendly_name: Some("SDXL".to_owned()),
                restricted: false
            },
            ModelEntry {
                id: secret,
                name: "secret".to_owned(),
                friendly_name: None,
                restricted: true
            }
        ]
    );
    store.close().await;
    db.cleanup().await;
}

async fn galleries_and_enrolment(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Store::connect(&db.url).await.unwrap();
    // Navigator's first-user rule: the first authorisation makes a superuser, later ones
    // apprentices; a disabled user does not count.
    store.set_user_role("7", 0).await.unwrap();
    assert_eq!(store.authorize_user("8", 1, 4).await.unwrap(), 4);
    assert_eq!(store.authorize_user("9", 1, 4).await.unwrap(), 1);
    assert_eq!(store.user_role("8").await.unwrap(), Some(4));

    let foxes = store.create_category("Rm94ZXM=", "8").await.unwrap();
    let owls = store.create_category("T3dscw==", "8").await.unwrap();
    store.create_category("Qm9i", "9").await.unwrap();
    assert_eq!(
        store.categories("8").await.unwrap(),
        vec![
            (foxes, "8".to_owned(), "Rm94ZXM=".to_owned()),
            (owls, "8".to_owned(), "T3dscw==".to_owned()),
        ]
    );
    assert!(store.rename_category(owls, "8", "T3dscw==").await.unwrap());
    assert!(!store.rename_category(owls, "9", "eA==").await.unwrap());

    // Five jobs of owner 8 (two in Foxes), one of owner 9; one finished with its picture, one
    // removed from the queue before it ran (not in the gallery).
    let json = serde_json::to_string(&request("p")).unwrap();
    for (n, owner, category) in [
        (0, "8", Some(foxes)),
        (1, "8", Some(foxes)),
        (2, "8", None),
        (3, "9", None),
        (4, "8", None),
        (5, "8", None),
    ] {
        let id = format!("g{n}");
        store
            .insert_job(&NewJob {
                owner_id: owner,
                category_id: category,
                ..new_job(&id, &json, "m", 2048)
            })
            .await
            .unwrap();
    }
    assert_eq!(store.jobs_ahead("g0").await.unwrap(), Some(0));
    assert_eq!(store.jobs_ahead("g3").await.unwrap(), Some(3));
    assert_eq!(store.jobs_ahead("nope").await.unwrap(), None);
    let claimed = store.claim_job("h", "w").await.unwrap().unwrap();
    assert_eq!(claimed.id, "g0");
    // A running job is still ahead in line.
    assert_eq!(store.jobs_ahead("g2").await.unwrap(), Some(2));
    let png = b"png".to_vec();
    store
        .finish_jobs(&[Completion {
            id: "g0",
            fence: Fence::Claim(claimed.event_seq),
            backend: "w",
            image: image(&png),
        }])
        .await
        .unwrap();
    store.interrupt_job("g5").await.unwrap();
    let (count, page) = store.owner_jobs("8", None, 2, 0).await.unwrap();
    assert_eq!(count, 4, "g5 was removed before it ran");
    assert_eq!(page, vec![("g4".to_owned(), None), ("g2".to_owned(), None)]);
    let (_, page) = store.owner_jobs("8", None, 2, 2).await.unwrap();
    assert_eq!(
        page,
        vec![
            ("g1".to_owned(), Some(foxes)),
            ("g0".to_owned(), Some(foxes))
        ]
    );
    assert_eq!(
        store.owner_jobs("8", Some(foxes), 10, 0).await.unwrap().0,
        2
    );
    assert_eq!(store.owner_jobs("9", None, 10, 0).await.unwrap().0, 1);

    // Filing and deleting only touch the owner's jobs.
    assert!(store.set_job_category("g2", "8", Some(owls)).await.unwrap());
    assert!(!store.set_job_category("g3", "8", Some(owls)).await.unwrap());
    assert!(store.set_job_category("g0", "8", Some(owls)).await.unwrap());
    let meta = store.job_meta("g0").await.unwrap().unwrap();
    assert_eq!(
        (meta.owner_id.as_str(), meta.category_id),
        ("8", Some(owls))
    );
    assert!(store.job_meta("nope").await.unwrap().is_none());
    // Deleting a category leaves its jobs and pictures without one.
    assert!(!store.delete_category(owls, "9").await.unwrap());
    assert!(store.delete_category(owls, "8").await.unwrap());
    assert_eq!(
        store.job_meta("g0").await.unwrap().unwrap().category_id,
        None
    );
    assert_eq!(
        store.job_meta("g2").await.unwrap().unwrap().category_id,
        None
    );
    assert_eq!(store.image_png("g0").await.unwrap(), Some(png.clone()));
    assert!(!store.delete_job("g0", "9").await.unwrap());
    assert!(store.delete_job("g0", "8").await.unwrap());
    assert_eq!(store.image_png("g0").await.unwrap(), None);
    assert!(store.job("g0").await.unwrap().is_none());
    assert_eq!(store.owner_jobs("8", None, 10, 0).await.unwrap().0, 3);
    store.close().await;
    db.cleanup().await;
}

async fn failed_jobs_are_listed_and_requeued(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    let s = common::services(store.clone(), "host-a");
    let first = s.submit(request("first")).await;
    let second = s.submit(request("second")).await;
    let port = s.backends.port("sim");
    let mut leases = port.claim(&Capabilities::any(), 2).await.unwrap();
    assert_eq!(leases.len(), 2);
    let second_lease = leases.pop().unwrap();
    assert!(leases.pop().unwrap().fail("bad prompt").await.unwrap());
    assert!(second_lease.fail("worse prompt").await.unwrap());
    let failed = store.recent_jobs(JobStatus::Failed, 10).await.unwrap();
    let ids: Vec<&str> = failed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first.as_str()) && ids.contains(&second.as_str()));
    assert_eq!(
        store.recent_jobs(JobStatus::Failed, 1).await.unwrap().len(),
        1
    );
    assert!(
        store
            .recent_jobs(JobStatus::Finished, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let mut events = s.jobs.subscribe();
    assert!(s.jobs.requeue_failed(first.as_str()).await.unwrap());
    assert!(
        !s.jobs.requeue_failed(first.as_str()).await.unwrap(),
        "not failed any more"
    );
    assert!(!s.jobs.requeue_failed("nope").await.unwrap());
    let row = store.job(first.as_str()).await.unwrap().unwrap();
    assert_eq!(
        (row.status(), row.faults, row.finished_at),
        (JobStatus::Queued, 0, None)
    );
    match events.recv().await {
        easel::jobs::Received::Event(event) => {
            assert_eq!(event.job, first);
            assert_eq!(event.seq, row.event_seq);
            assert!(matches!(
                event.kind,
                easel::jobs::EventKind::Requeued { .. }
            ));
        }
        other => panic!("{other:?}"),
    }
    // Claimable again, at its old place.
    let lease = port
        .claim(&Capabilities::any(), 1)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(lease.id(), &first);
    store.close().await;
    db.cleanup().await;
}

/// A claim is a lease: renewed by its host, and once it runs out any host's job service
/// requeues the job as a fault (fenced: a renewal or a settled claim wins).
async fn leases_renew_and_expire(engine: Engine) {
    let Some(db) = TestDb::create(engine).await else {
        return;
    };
    let store = Arc::new(Store::connect(&db.url).await.unwrap());
    let short = Duration::from_millis(300);
    store
        .insert_job(&new_job("lease-1", r#"{"prompt":"p"}"#, "", 1))
        .await
        .unwrap();
    let claimed = store
        .claim_jobs("host-a", "sim", ClaimFilter::default(), 1, short)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(claimed.claimed_by.as_deref(), Some("host-a"));
    let until = claimed.lease_until.expect("a claim carries its lease");
    assert!(until > claimed.started_at.unwrap(), "{claimed:?}");
    assert!(store.expired_leases(10).await.unwrap().is_empty());
    tokio::time::sleep(short + Duration::from_millis(100)).await;
    let expired = store.expired_leases(10).await.unwrap();
    assert_eq!(expired.len(), 1);
    // The holder renews before anyone acts: nothing expires any more.
    assert_eq!(
        store
            .renew_leases("host-a", Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .renew_leases("host-b", Duration::from_secs(60))
            .await
            .unwrap(),
        0
    );
    assert!(store.expired_leases(10).await.unwrap().is_empty());
    assert_eq!(
        store
            .expire_lease("lease-1", expired[0].event_seq, 2, "late")
            .await
            .unwrap(),
        None,
        "a renewed lease is not expired"
    );

    // host-b's job service requeues a job whose lease ran out, as a fault, with an event.
    let mut settings = easel::jobs::JobSettings::new("host-b");
    settings.lease = short;
    let b = easel::jobs::JobService::new(store.clone(), settings);
    let mut events = b.subscribe();
    store
        .insert_job(&new_job("lease-2", r#"{"prompt":"p"}"#, "", 1))
        .await
        .unwrap();
    let dead = store
        .claim_jobs("host-dead", "sim", ClaimFilter::default(), 1, short)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(dead.id, "lease-2");
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the expired lease is requeued");
    match event {
        easel::jobs::Received::Event(event) => {
            assert_eq!(event.job.as_str(), "lease-2");
            match event.kind {
                easel::jobs::EventKind::Requeued { reason, revived } => {
                    assert!(reason.contains("host-dead"), "{reason}");
                    assert!(!revived);
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    let row = store.job("lease-2").await.unwrap().unwrap();
    assert_eq!((row.status(), row.faults), (JobStatus::Queued, 1));
    // The dead host's late result is stale; lease-1, renewed by host-a, still runs.
    assert_eq!(
        store.job("lease-1").await.unwrap().unwrap().status(),
        JobStatus::Running
    );
    drop(b);
    store.close().await;
    db.cleanup().await;
}

per_engine!(
    lifecycle,
    leases_renew_and_expire,
    failed_jobs_are_listed_and_requeued,
    watches_cannot_miss_the_end,
    claims_follow_capabilities,
    batched_inserts_report_taken_ids,
    interrupt_running,
    interrupted_job_keeps_its_partial_picture,
    recovery_is_per_host,
    concurrent_claims,
    users_categories_models,
    galleries_and_enrolment,
);
