//! Adopting BitForged Navigator's MariaDB database (its migrations v1..v8 and sample rows in
//! `tests/fixtures/navigator_v1_v8.sql`): every row arrives in easel's tables with its values,
//! Navigator's tables stay untouched as `navigator_*`, a second start changes nothing, easel
//! works on the database afterwards, and an adoption interrupted after the rename, after the
//! migrations or inside the copy is finished by the next start. Hosts starting at once (on
//! Navigator's database or an empty one) take turns.

mod common;

use base64::Engine as _;
use common::{Engine, TestDb};
use easel::jobs::{Txt2Img, png_size};
use easel::store::{JobStatus, ModelEntry, NewJob, Store, StoreError};
use serde_json::Value;
use sqlx::{Connection, MySqlConnection};

const FIXTURE: &str = include_str!("fixtures/navigator_v1_v8.sql");

/// Navigator's tables and the names the adoption keeps them under.
const RENAMED: [(&str, &str); 7] = [
    ("images", "navigator_images"),
    ("users", "navigator_users"),
    ("models", "navigator_models"),
    ("model_metadata", "navigator_model_metadata"),
    ("file_sha256_cache", "navigator_file_sha256_cache"),
    ("image_categories", "navigator_image_categories"),
    ("migrations", "navigator_migrations"),
];

const UNFINISHED: &str = "unfinished when the database was adopted from Navigator";
const ADMIN: &str = "111111111111111111";
const USER: &str = "222222222222222222";
const REVOKED: &str = "333333333333333333";

fn b64(text: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("fixture base64")
}

async fn conn(db: &TestDb) -> MySqlConnection {
    MySqlConnection::connect(&db.url).await.expect("connect")
}

/// A fresh MariaDB database as Navigator left it. (The adoption's log lines show with
/// `--nocapture`.)
async fn navigator_db() -> Option<TestDb> {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("easel=info")
        .try_init();
    let db = TestDb::create(Engine::MySql).await?;
    let mut conn = conn(&db).await;
    sqlx::raw_sql(FIXTURE)
        .execute(&mut conn)
        .await
        .expect("load the Navigator fixture");
    conn.close().await.unwrap();
    Some(db)
}

/// `(table, rows, checksum)` of each of Navigator's tables, under the given names.
async fn snapshot(conn: &mut MySqlConnection, names: &[&str]) -> Vec<(i64, Option<i64>)> {
    let mut out = Vec::new();
    for name in names {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM `{name}`"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let (_, checksum): (String, Option<i64>) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("CHECKSUM TABLE `{name}`")))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        out.push((rows, checksum));
    }
    out
}

async fn navigator_snapshot(conn: &mut MySqlConnection) -> Vec<(i64, Option<i64>)> {
    let names: Vec<&str> = RENAMED.iter().map(|(from, _)| *from).collect();
    snapshot(conn, &names).await
}

async fn backup_snapshot(conn: &mut MySqlConnection) -> Vec<(i64, Option<i64>)> {
    let names: Vec<&str> = RENAMED.iter().map(|(_, to)| *to).collect();
    snapshot(conn, &names).await
}

/// Unix ms of a Navigator DATETIME, read in the server's own time zone (as it filled them).
async fn ms(conn: &mut MySqlConnection, datetime: &str) -> i64 {
    sqlx::query("SET time_zone = @@GLOBAL.time_zone")
        .execute(&mut *conn)
        .await
        .unwrap();
    let ms =
        sqlx::query_scalar("SELECT CAST(UNIX_TIMESTAMP(CAST(? AS DATETIME)) * 1000 AS SIGNED)")
            .bind(datetime)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    sqlx::query("SET time_zone = '+00:00'")
        .execute(&mut *conn)
        .await
        .unwrap();
    ms
}

/// A Navigator image's stored column, base64-decoded (by the test, not by MariaDB).
async fn navigator_column(conn: &mut MySqlConnection, id: &str, column: &str) -> Vec<u8> {
    let text: Vec<u8> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {column} FROM navigator_images WHERE id = ?"
    )))
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    b64(&text)
}

async fn count(conn: &mut MySqlConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// A row of easel's `model_metadata`.
#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Metadata {
    id: i64,
    hash: String,
    model_type: i64,
    metadata: Option<String>,
    provider: i64,
    metadata_id: Option<i64>,
    updated_at: i64,
    updates_disabled: i64,
}

/// What easel's `images` holds besides the picture and its info.
#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Image {
    width: i64,
    height: i64,
    category_id: Option<i64>,
    message_id: Option<String>,
    created_at: i64,
    preview: Option<Vec<u8>>,
}

fn request(store_request: &str) -> Txt2Img {
    serde_json::from_str(store_request).expect("the adopted request is a Txt2Img")
}

/// Every row of the fixture arrived, with its values, and the backup is as Navigator left it.
async fn check_adopted(store: &Store, db: &TestDb, before: &[(i64, Option<i64>)]) {
    let mut conn = conn(db).await;
    assert_eq!(
        backup_snapshot(&mut conn).await,
        before,
        "the backup is untouched"
    );
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name IN ('migrations', 'image_categories')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        tables.is_empty(),
        "Navigator's own names are gone: {tables:?}"
    );
    assert_eq!(count(&mut conn, "adopted_from_navigator").await, 1);

    // Users: ids as text, roles, times in ms.
    for (id, role, created, updated) in [
        (ADMIN, 4, "2024-01-10 08:00:00", "2024-01-12 09:30:00"),
        (USER, 1, "2024-01-11 10:15:00", "2024-01-11 10:15:00"),
        (REVOKED, 0, "2024-01-12 23:59:59", "2024-02-01 00:00:01"),
    ] {
        assert_eq!(
            store.user_role(id).await.unwrap(),
            Some(role),
            "role of {id}"
        );
        let times: (i64, i64) =
            sqlx::query_as("SELECT created_at, updated_at FROM users WHERE id = ?")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            times,
            (ms(&mut conn, created).await, ms(&mut conn, updated).await)
        );
    }
    assert_eq!(count(&mut conn, "users").await, 3);

    // Categories keep their ids; names stay base64 of UTF-8.
    let categories = store.categories(ADMIN).await.unwrap();
    let names: Vec<(i64, String)> = categories
        .iter()
        .map(|(id, owner, name64)| {
            assert_eq!(owner, ADMIN);
            (*id, String::from_utf8(b64(name64.as_bytes())).unwrap())
        })
        .collect();
    assert_eq!(
        names,
        vec![(4, "Foxes".to_owned()), (9, "Füchse 🦊".to_owned())]
    );
    assert!(store.category_owned_by(9, ADMIN).await.unwrap());
    assert!(store.categories(USER).await.unwrap().is_empty());

    // Models keep their ids, names and flags.
    let models = store.models().await.unwrap();
    assert_eq!(
        models,
        vec![
            ModelEntry {
                id: 3,
                name: "sdxl_base".into(),
                friendly_name: Some("SDXL Base".into()),
                restricted: false,
            },
            ModelEntry {
                id: 7,
                name: "flux1-dev-fp8".into(),
                friendly_name: Some("Flux Dev (fp8)".into()),
                restricted: true,
            },
        ]
    );

    // Model metadata: JSON decoded, provider, CivitAI id, type, flag and time kept; the row
    // without a hash stays in the backup only.
    let metadata: Vec<Metadata> = sqlx::query_as(
        "SELECT id, hash, model_type, metadata, provider, metadata_id, updated_at, \
         updates_disabled FROM model_metadata ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let navigator: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, metadata_cache FROM navigator_model_metadata WHERE hash IS NOT NULL ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(metadata.len(), 3);
    let expected = [
        (1, "ABCDEF0123", 0, 1, Some(12345), "2024-02-01 10:00:00", 0),
        (2, "LOCAL00001", 0, 0, None, "2024-02-02 11:00:00", 0),
        (5, "1234ABCD99", 1, 1, Some(777), "2000-01-01 00:00:00", 1),
    ];
    for ((row, (cache_id, cache)), (id, hash, model_type, provider, civitai, updated, disabled)) in
        metadata.iter().zip(&navigator).zip(expected)
    {
        assert_eq!(*cache_id, id);
        let original: Value = serde_json::from_slice(&b64(cache.as_bytes())).unwrap();
        let json: Value = serde_json::from_str(row.metadata.as_deref().unwrap()).unwrap();
        assert_eq!(json, original, "metadata of {hash}");
        let expected = Metadata {
            id,
            hash: hash.to_owned(),
            model_type,
            metadata: row.metadata.clone(),
            provider,
            metadata_id: civitai,
            updated_at: ms(&mut conn, updated).await,
            updates_disabled: disabled,
        };
        assert_eq!(*row, expected);
    }
    let local: Value = serde_json::from_str(metadata[1].metadata.as_deref().unwrap()).unwrap();
    assert_eq!(local["trainedWords"][1], "füchsin");

    // The file hash cache.
    let hashes: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT file_name, sha256, created_at FROM file_sha256_cache ORDER BY file_name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        hashes,
        vec![
            (
                "fox_lora.safetensors".to_owned(),
                "a3f1c2d4e5b6a7980112233445566778899aabbccddeeff00112233445566778".to_owned(),
                ms(&mut conn, "2024-02-05 06:00:00").await
            ),
            (
                "mystery.safetensors".to_owned(),
                "0000000000000000000000000000000000000000000000000000000000000001".to_owned(),
                ms(&mut conn, "2024-02-06 07:30:00").await
            ),
        ]
    );

    // a1b2c3d4: finished, with picture, preview, png-info and category.
    let fox = store.job("a1b2c3d4").await.unwrap().expect("job a1b2c3d4");
    assert_eq!(fox.status(), JobStatus::Finished);
    assert_eq!(fox.kind, "txt2img");
    assert_eq!(fox.owner_id, ADMIN);
    assert_eq!(fox.last_error, None);
    assert_eq!((fox.attempts, fox.faults, fox.event_seq), (0, 0, 1));
    let queued = ms(&mut conn, "2024-03-01 12:00:00").await;
    assert_eq!(fox.created_at, queued);
    assert_eq!(fox.finished_at, Some(queued));
    assert_eq!(fox.model, "sdxl_base");
    assert_eq!(fox.pixels, 8 * 4);
    let asked = request(&fox.request);
    assert_eq!(
        asked,
        Txt2Img {
            model_name: "sdxl_base".into(),
            prompt: "a fox".into(),
            negative_prompt: Some("blurry".into()),
            width: 8,
            height: 4,
            steps: 20,
            hrf_steps: Some(10),
            seed: 4242424242,
            cfg_scale: 6.5,
            distilled_cfg: 3.5,
            sampler_name: "Euler a".into(),
            scheduler_name: "Karras".into(),
            denoising_strength: 0.45,
            force_hr_fix: true,
            subseed: Some(99),
            subseed_strength: Some(0.3),
            upscaler_name: Some("R-ESRGAN 4x+".into()),
            category_id: Some(4),
            ..Txt2Img::default()
        }
    );
    let png = store.image_png("a1b2c3d4").await.unwrap().expect("picture");
    assert_eq!(
        png,
        navigator_column(&mut conn, "a1b2c3d4", "image_data").await
    );
    assert_eq!(png_size(&png), Some((8, 4)));
    let info: Value =
        serde_json::from_str(&store.image_info("a1b2c3d4").await.unwrap().unwrap()).unwrap();
    let original: Value =
        serde_json::from_slice(&navigator_column(&mut conn, "a1b2c3d4", "info_data64").await)
            .unwrap();
    assert_eq!(info, original);
    assert_eq!(info["parameters"]["Prompt"], "a fox");
    assert_eq!(
        store.preview_png("a1b2c3d4").await.unwrap(),
        Some(navigator_column(&mut conn, "a1b2c3d4", "preview_data").await)
    );
    let image: Image = sqlx::query_as(
        "SELECT width, height, category_id, message_id, created_at, preview FROM images WHERE id = ?",
    )
    .bind("a1b2c3d4")
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        image,
        Image {
            width: 8,
            height: 4,
            category_id: Some(4),
            message_id: None,
            created_at: queued,
            preview: Some(navigator_column(&mut conn, "a1b2c3d4", "preview_data").await),
        }
    );

    // b2c3d4e5: running when Navigator stopped: failed, its live preview still readable.
    let wip = store.job("b2c3d4e5").await.unwrap().expect("job b2c3d4e5");
    assert_eq!(wip.status(), JobStatus::Failed);
    assert_eq!(wip.last_error.as_deref(), Some(UNFINISHED));
    assert_eq!(wip.created_at, ms(&mut conn, "2024-03-01 12:05:00").await);
    assert!(wip.finished_at.is_some());
    let asked = request(&wip.request);
    assert_eq!((asked.width, asked.height, asked.steps), (512, 512, 50));
    assert_eq!(asked.category_id, Some(9));
    assert_eq!(store.image_png("b2c3d4e5").await.unwrap(), None);
    assert_eq!(store.image_info("b2c3d4e5").await.unwrap(), None);
    assert_eq!(
        store.preview_png("b2c3d4e5").await.unwrap(),
        Some(navigator_column(&mut conn, "b2c3d4e5", "preview_data").await)
    );
    let meta = store.job_meta("b2c3d4e5").await.unwrap().unwrap();
    assert_eq!((meta.owner_id.as_str(), meta.category_id), (ADMIN, Some(9)));

    // c3d4e5f6: nothing but the queue-time row.
    let bare = store.job("c3d4e5f6").await.unwrap().expect("job c3d4e5f6");
    assert_eq!(bare.status(), JobStatus::Failed);
    assert_eq!(bare.last_error.as_deref(), Some(UNFINISHED));
    assert_eq!(bare.owner_id, USER);
    request(&bare.request);
    assert_eq!(store.preview_png("c3d4e5f6").await.unwrap(), None);
    assert_eq!(store.image_png("c3d4e5f6").await.unwrap(), None);

    // d4e5f6a7: a Discord-era picture; png-info's values are strings, the prompt is not ASCII.
    let snow = store.job("d4e5f6a7").await.unwrap().expect("job d4e5f6a7");
    assert_eq!(snow.status(), JobStatus::Finished);
    assert_eq!(
        (snow.model.as_str(), snow.pixels),
        ("flux1-dev-fp8", 16 * 12)
    );
    let asked = request(&snow.request);
    assert_eq!(asked.prompt, "Füchse \"im\" Schnee 🦊");
    assert_eq!(
        (asked.width, asked.height, asked.steps, asked.seed),
        (16, 12, 30, 7)
    );
    assert_eq!((asked.cfg_scale, asked.distilled_cfg), (7.0, 3.0));
    assert_eq!(asked.negative_prompt, None);
    assert_eq!(asked.category_id, None);
    assert!(!asked.force_hr_fix);
    let meta = store.job_meta("d4e5f6a7").await.unwrap().unwrap();
    assert_eq!(meta.message_id.as_deref(), Some("1234567890123456789"));
    assert_eq!(meta.created_at, ms(&mut conn, "2024-03-03 18:30:00").await);
    let info: Value =
        serde_json::from_str(&store.image_info("d4e5f6a7").await.unwrap().unwrap()).unwrap();
    let original: Value =
        serde_json::from_slice(&navigator_column(&mut conn, "d4e5f6a7", "info_data64").await)
            .unwrap();
    assert_eq!(info, original);
    assert_eq!(info["parameters"]["Prompt"], "Füchse \"im\" Schnee 🦊");
    let png = store.image_png("d4e5f6a7").await.unwrap().unwrap();
    assert_eq!(
        png,
        navigator_column(&mut conn, "d4e5f6a7", "image_data").await
    );
    assert_eq!(store.preview_png("d4e5f6a7").await.unwrap(), None);

    // e5f6a7b8: finished, png-info never cached: `{}` (the info route then asks Forge).
    let plain = store.job("e5f6a7b8").await.unwrap().expect("job e5f6a7b8");
    assert_eq!(plain.status(), JobStatus::Finished);
    assert_eq!(plain.pixels, 3 * 5);
    let asked = request(&plain.request);
    assert_eq!(
        (asked.width, asked.height, asked.prompt.as_str()),
        (3, 5, "")
    );
    assert_eq!(
        store.image_info("e5f6a7b8").await.unwrap().as_deref(),
        Some("{}")
    );
    let png = store.image_png("e5f6a7b8").await.unwrap().unwrap();
    assert_eq!(png_size(&png), Some((3, 5)));

    // The owners' lists, newest first, with categories.
    assert_eq!(
        store.owner_jobs(ADMIN, None, 10, 0).await.unwrap(),
        (
            2,
            vec![
                ("b2c3d4e5".to_owned(), Some(9)),
                ("a1b2c3d4".to_owned(), Some(4))
            ]
        )
    );
    assert_eq!(
        store.owner_jobs(ADMIN, Some(4), 10, 0).await.unwrap(),
        (1, vec![("a1b2c3d4".to_owned(), Some(4))])
    );
    assert_eq!(store.owner_jobs(USER, None, 10, 0).await.unwrap().0, 2);
    assert!(store.owns_images(REVOKED).await.unwrap());
    assert_eq!(store.jobs().await.unwrap().len(), 5);
    assert_eq!(store.count_jobs(JobStatus::Finished).await.unwrap(), 3);
    assert_eq!(store.count_jobs(JobStatus::Failed).await.unwrap(), 2);
    assert_eq!(store.count_jobs(JobStatus::Queued).await.unwrap(), 0);
    assert_eq!(count(&mut conn, "images").await, 3);
    conn.close().await.unwrap();
}

/// easel goes on working on the adopted database: new jobs, categories and models get ids
/// after Navigator's.
async fn check_works(store: &Store) {
    let json = serde_json::to_string(&Txt2Img {
        prompt: "after the adoption".into(),
        ..Txt2Img::default().with_defaults()
    })
    .unwrap();
    store
        .insert_job(&NewJob {
            id: "0f0f0f0f",
            kind: "txt2img",
            request: &json,
            owner_id: ADMIN,
            origin: None,
            model: "",
            pixels: 512 * 512,
            category_id: Some(9),
        })
        .await
        .unwrap();
    let claimed = store
        .claim_job("host", "sim")
        .await
        .unwrap()
        .expect("a claim");
    assert_eq!(claimed.id, "0f0f0f0f");
    assert_eq!(
        store.claim_job("host", "sim").await.unwrap().map(|j| j.id),
        None
    );
    // Navigator's next category id was 12 (10 and 11 were deleted).
    let category = store.create_category("TmV1", ADMIN).await.unwrap();
    assert_eq!(category, 12);
    let model = store.add_model("new_model", None, false).await.unwrap();
    assert_eq!(model, 8);
    store.set_user_role(USER, 2).await.unwrap();
    assert_eq!(store.user_role(USER).await.unwrap(), Some(2));
    assert!(
        store
            .set_job_category("a1b2c3d4", ADMIN, Some(category))
            .await
            .unwrap()
    );
    assert!(store.delete_category(4, ADMIN).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_every_row_once() {
    let Some(db) = navigator_db().await else {
        return;
    };
    let before = navigator_snapshot(&mut conn(&db).await).await;
    assert_eq!(
        before.iter().map(|(rows, _)| *rows).collect::<Vec<_>>(),
        vec![5, 3, 2, 4, 2, 2, 8]
    );
    let store = Store::connect(&db.url).await.expect("adopt");
    check_adopted(&store, &db, &before).await;

    // A second start (and a third, from a second store at once) adopts nothing again.
    let again = Store::connect(&db.url).await.expect("second connect");
    check_adopted(&again, &db, &before).await;
    again.close().await;

    check_works(&store).await;
    let mut conn = conn(&db).await;
    assert_eq!(
        backup_snapshot(&mut conn).await,
        before,
        "easel never writes the backup"
    );
    assert_eq!(count(&mut conn, "jobs").await, 6);
    drop(conn);
    store.close().await;
    let third = Store::connect(&db.url).await.expect("third connect");
    assert_eq!(third.jobs().await.unwrap().len(), 6);
    third.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_starting_together_adopt_once() {
    let Some(db) = navigator_db().await else {
        return;
    };
    let before = navigator_snapshot(&mut conn(&db).await).await;
    let (a, b, c) = tokio::join!(
        Store::connect(&db.url),
        Store::connect(&db.url),
        Store::connect(&db.url)
    );
    for store in [a, b, c] {
        let store = store.expect("every host starts");
        check_adopted(&store, &db, &before).await;
        store.close().await;
    }
    db.cleanup().await;
}

/// The lock that keeps adopting hosts apart also keeps their migrations apart on a database
/// that is not Navigator's (sqlx's own migration lock does not wait on MariaDB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_starting_together_on_an_empty_database_migrate_once() {
    let Some(db) = TestDb::create(Engine::MySql).await else {
        return;
    };
    let (a, b, c) = tokio::join!(
        Store::connect(&db.url),
        Store::connect(&db.url),
        Store::connect(&db.url)
    );
    for store in [a, b, c] {
        let store = store.expect("every host starts");
        assert!(store.jobs().await.unwrap().is_empty());
        store.close().await;
    }
    let mut conn = conn(&db).await;
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/mysql"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        count(&mut conn, "_sqlx_migrations WHERE success").await,
        migrations
    );
    assert_eq!(count(&mut conn, "adopted_from_navigator").await, 0);
    conn.close().await.unwrap();
    db.cleanup().await;
}

/// The statement the adoption starts with, as a crashed start would have left it.
async fn rename_as_easel_does(conn: &mut MySqlConnection) {
    let pairs: Vec<String> = RENAMED
        .iter()
        .map(|(from, to)| format!("`{from}` TO `{to}`"))
        .collect();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "RENAME TABLE {}",
        pairs.join(", ")
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_between_rename_and_migrations() {
    let Some(db) = navigator_db().await else {
        return;
    };
    let mut conn = conn(&db).await;
    let before = navigator_snapshot(&mut conn).await;
    rename_as_easel_does(&mut conn).await;
    conn.close().await.unwrap();
    let store = Store::connect(&db.url).await.expect("resume");
    check_adopted(&store, &db, &before).await;
    check_works(&store).await;
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_a_crash_between_migrations_and_copy() {
    let Some(db) = navigator_db().await else {
        return;
    };
    let mut conn = conn(&db).await;
    let before = navigator_snapshot(&mut conn).await;
    rename_as_easel_does(&mut conn).await;
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/mysql");
    sqlx::migrate::Migrator::new(migrations)
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .expect("easel's migrations");
    assert_eq!(count(&mut conn, "jobs").await, 0);
    conn.close().await.unwrap();
    let store = Store::connect(&db.url).await.expect("resume");
    check_adopted(&store, &db, &before).await;
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_fails_before_its_commit_leaves_nothing_and_is_retried() {
    let Some(db) = navigator_db().await else {
        return;
    };
    let mut conn = conn(&db).await;
    let before = navigator_snapshot(&mut conn).await;
    // The marker table made early, with a trigger that fails the copy's last statement, as a
    // crash just before the commit would.
    sqlx::raw_sql(
        "CREATE TABLE adopted_from_navigator (adopted_at BIGINT NOT NULL) CHARACTER SET utf8mb4; \
         CREATE TRIGGER crash_before_commit BEFORE INSERT ON adopted_from_navigator \
         FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'simulated crash'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let err = Store::connect(&db.url).await.expect_err("the copy fails");
    assert!(err.to_string().contains("simulated crash"), "{err}");
    assert_eq!(backup_snapshot(&mut conn).await, before);
    for table in [
        "jobs",
        "images",
        "categories",
        "users",
        "models",
        "model_metadata",
        "file_sha256_cache",
        "adopted_from_navigator",
    ] {
        assert_eq!(count(&mut conn, table).await, 0, "{table} rolled back");
    }
    sqlx::query("DROP TRIGGER crash_before_commit")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let store = Store::connect(&db.url).await.expect("retry");
    check_adopted(&store, &db, &before).await;
    check_works(&store).await;
    store.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_navigator_schema_is_refused_untouched() {
    let Some(db) = navigator_db().await else {
        return;
    };
    let mut conn = conn(&db).await;
    sqlx::query("DELETE FROM migrations WHERE migration_id = 8")
        .execute(&mut conn)
        .await
        .unwrap();
    let before = navigator_snapshot(&mut conn).await;
    let err = Store::connect(&db.url).await.expect_err("refused");
    assert!(matches!(err, StoreError::Adopt(_)), "{err:?}");
    assert!(err.to_string().contains("v7"), "{err}");
    assert_eq!(
        navigator_snapshot(&mut conn).await,
        before,
        "nothing renamed or changed"
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 7, "no easel table was made");
    conn.close().await.unwrap();
    db.cleanup().await;
}
