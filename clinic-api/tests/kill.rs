//! Kill -9 with the real binary: `clinic serve` on its embedded defaults (SQLite, the local
//! encrypted blob store, the local key file) is killed with SIGKILL at a random moment while a
//! patient uploads photos (three at a time), books visits with an `Idempotency-Key` (two at a
//! time) and the outbox worker delivers messages into the portal mailbox. After every kill, with
//! the server down:
//!
//! - the database passes `PRAGMA integrity_check`;
//! - every upload that was answered 201 has its row, and every live image's three objects open
//!   (envelope decrypted, the original decodes); `clinic imaging tier` with no orphan grace then
//!   leaves no object that no image refers to, and no temporary file;
//! - every booking answered 201 is there; a booking whose answer the kill swallowed, retried
//!   with its key on the next start, is answered 2xx with the one appointment it made (never a
//!   conflict with itself, never a second appointment);
//! - no outbox message is marked sent without its mailbox copy, none failed, and each mailbox
//!   copy is one message's; at the end every message was delivered exactly once;
//! - `clinic audit verify` passes (the hash chain and its checkpoints).
//!
//! The run goes on until at least `KILL_POINTS` (default 100) kills landed inside each kind of
//! work: an upload in flight, a booking in flight, the outbox part-way through its messages.
//! `KILL_SEED` repeats a run's kill times (the seed is printed).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clinic_api::Config;
use clinic_api::domains::images::Images;
use clinic_api::platform::keys::KeyRing;
use clinic_api::testkit::{Rng, say_uncaptured};
use imaging::envelope::Context;
use imaging::store::{ObjectKey, Tier};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

const BIN: &str = env!("CARGO_BIN_EXE_clinic");
const UPLOADERS: usize = 3;
const BOOKERS: usize = 2;
const MESSAGES_PER_RUN: usize = 30;

fn clinic(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("CLINIC_DATA_DIR", dir.join("data"))
        .env("CLINIC_LISTEN", "127.0.0.1:0")
        .env("CLINIC_LOG__FILTER", "warn")
        // The outbox worker every second with one-second leases, so a killed worker's claims
        // come back within the run; image tiering (and its orphan sweep) only when asked.
        .env("CLINIC_SCHEDULING__OUTBOX_INTERVAL_SECS", "1")
        .env("CLINIC_SCHEDULING__OUTBOX_LEASE_SECS", "1")
        .env("CLINIC_SCHEDULING__OUTBOX_MAX_ATTEMPTS", "1000")
        .env("CLINIC_IMAGING__TIER_INTERVAL_SECS", "0")
        .env("CLINIC_AUDIT__CHECKPOINT_INTERVAL_SECS", "1");
    cmd
}

struct Server {
    child: Child,
    base: String,
    /// Demo logins printed on the first start: (username, role, password).
    logins: Vec<(String, String, String)>,
}

fn start(dir: &Path, demo: bool) -> Server {
    let mut cmd = clinic(dir);
    cmd.arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if demo {
        cmd.arg("--demo");
    }
    let mut child = cmd.spawn().expect("spawn clinic serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut logins = Vec::new();
    let mut base = None;
    for line in stdout.by_ref() {
        let line = line.unwrap();
        if let Some(addr) = line.strip_prefix("clinic listening on ") {
            base = Some(addr.trim().to_string());
            break;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 3 {
            logins.push((cols[0].into(), cols[1].into(), cols[2].into()));
        }
    }
    std::thread::spawn(move || stdout.for_each(drop));
    Server {
        child,
        base: base.expect("the server printed its address"),
        logins,
    }
}

impl Server {
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        assert!(self.child.wait().unwrap().success(), "a clean stop exits 0");
    }
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = clinic(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "clinic {args:?} failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A slot the patient may book: the booking body.
type Slot = Value;

#[derive(Default)]
struct Work {
    uploads_started: usize,
    uploads_acked: Vec<String>,
    uploads_answered: usize,
    bookings_started: usize,
    bookings_answered: usize,
    /// Answered 201: (slot, appointment id).
    booked: Vec<(Slot, String)>,
    /// Sent, no answer before the kill: (slot, key).
    unknown: Vec<(Slot, String)>,
    /// Any answer other than the expected one, or a failure other than the kill's.
    wrong: Vec<String>,
}

async fn get_json(c: &reqwest::Client, url: String) -> Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// The status and body of an answer read whole; `None` when the kill cut it off.
async fn answered(resp: reqwest::Result<reqwest::Response>) -> Option<(u16, Value)> {
    let resp = resp.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json::<Value>().await.ok()?))
}

async fn uploader(c: reqwest::Client, base: String, photo: Arc<Vec<u8>>, work: Arc<Mutex<Work>>) {
    loop {
        work.lock().unwrap().uploads_started += 1;
        let resp = c
            .post(format!("{base}/api/v1/me/images"))
            .header("content-type", "image/jpeg")
            .body(photo.to_vec())
            .send()
            .await;
        let Some((status, body)) = answered(resp).await else {
            return;
        };
        let mut w = work.lock().unwrap();
        w.uploads_answered += 1;
        match (status, body["id"].as_str()) {
            (201, Some(id)) => w.uploads_acked.push(id.to_string()),
            _ => w.wrong.push(format!("upload answered {status}: {body}")),
        }
    }
}

async fn booker(
    c: reqwest::Client,
    base: String,
    slots: Arc<Mutex<Vec<Slot>>>,
    work: Arc<Mutex<Work>>,
) {
    loop {
        let Some(slot) = slots.lock().unwrap().pop() else {
            return;
        };
        let key = uuid::Uuid::new_v4().to_string();
        {
            let mut w = work.lock().unwrap();
            w.bookings_started += 1;
            w.unknown.push((slot.clone(), key.clone()));
        }
        let resp = c
            .post(format!("{base}/api/v1/me/appointments"))
            .header("idempotency-key", &key)
            .json(&slot)
            .send()
            .await;
        let Some((status, body)) = answered(resp).await else {
            return;
        };
        let mut w = work.lock().unwrap();
        w.bookings_answered += 1;
        w.unknown.retain(|(_, k)| *k != key);
        match (status, body["id"].as_str()) {
            (201, Some(id)) => w.booked.push((slot, id.to_string())),
            _ => w
                .wrong
                .push(format!("booking {slot} answered {status}: {body}")),
        }
    }
}

async fn db(dir: &Path) -> SqlitePool {
    let opts = SqliteConnectOptions::new()
        .filename(dir.join("data/clinic.db"))
        .busy_timeout(Duration::from_secs(10));
    SqlitePool::connect_with(opts).await.unwrap()
}

/// Pending outbox messages due now, for the patient: the next run's worker delivers them.
async fn queue_messages(pool: &SqlitePool, clinic: &str, patient: &str, n: usize) -> Vec<String> {
    let now = chrono::Utc::now().timestamp_millis();
    let mut ids = Vec::with_capacity(n);
    let mut tx = pool.begin().await.unwrap();
    for _ in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO outbox_messages (id, clinic_id, patient_id, kind, channel, body, link, due_at, \
             status, attempts, next_attempt_at, created_at) \
             VALUES (?, ?, ?, 'photo_prompt', 'portal', 'Please add a new photo.', '/photos', ?, 'pending', 0, ?, ?)",
        )
        .bind(&id)
        .bind(clinic)
        .bind(patient)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    ids
}

/// Offline checks of the outbox: nothing marked sent without its mailbox copy, nothing failed,
/// no mailbox copy of a message that does not exist. Returns (sent, delivered, pending) of `ids`.
async fn check_outbox(pool: &SqlitePool, ids: &[String]) -> (usize, usize, usize) {
    let bad: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox_messages o WHERE o.status = 'sent' \
         AND NOT EXISTS (SELECT 1 FROM portal_messages p WHERE p.id = o.id)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        bad, 0,
        "outbox messages marked sent without their mailbox copy"
    );
    let failed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox_messages WHERE status <> 'sent' AND status <> 'pending'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(failed, 0, "outbox messages failed or cancelled by a kill");
    let strays: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM portal_messages p WHERE NOT EXISTS (SELECT 1 FROM outbox_messages o WHERE o.id = p.id)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(strays, 0, "mailbox copies of no message");
    let (mut sent, mut delivered, mut pending) = (0, 0, 0);
    for chunk in ids.chunks(400) {
        let list = chunk
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",");
        let rows = sqlx::query(&format!(
            "SELECT o.status, (SELECT COUNT(*) FROM portal_messages p WHERE p.id = o.id) AS copies \
             FROM outbox_messages o WHERE o.id IN ({list})"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), chunk.len(), "outbox messages lost");
        for r in rows {
            let status: String = r.get(0);
            let copies: i64 = r.get(1);
            assert!(copies <= 1);
            sent += usize::from(status == "sent");
            pending += usize::from(status == "pending");
            delivered += copies as usize;
        }
    }
    (sent, delivered, pending)
}

/// Every live image's three objects open (and the original decodes); returns the live images'
/// object keys. `acked` must all be live.
async fn check_images(
    pool: &SqlitePool,
    images: &Images,
    clinic: &str,
    acked: &[String],
    opened: &mut HashSet<String>,
) -> HashSet<String> {
    let rows = sqlx::query(
        "SELECT id, original_key, preview_key, thumbnail_key, original_tier FROM images \
         WHERE clinic_id = ? AND deleted_at IS NULL",
    )
    .bind(clinic)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut live = HashSet::new();
    let mut ids = HashSet::new();
    for r in rows {
        let id: String = r.get(0);
        let tier = Tier::parse(r.get::<String, _>(4).as_str()).unwrap();
        let keys: [(String, &str, Tier); 3] = [
            (r.get(1), "original", tier),
            (r.get(2), "preview", Tier::Hot),
            (r.get(3), "thumbnail", Tier::Hot),
        ];
        ids.insert(id.clone());
        for (key, variant, tier) in &keys {
            live.insert(key.clone());
            if opened.contains(&id) {
                continue;
            }
            let object = ObjectKey::parse(key).expect("a stored key");
            let sealed = images
                .store
                .get(clinic, &object, *tier)
                .await
                .unwrap_or_else(|e| panic!("image {id}: its {variant} is missing: {e}"));
            let plain = images
                .keys
                .open(&Context::new(clinic, &id, variant), &sealed)
                .await
                .unwrap_or_else(|e| panic!("image {id}: its {variant} does not open: {e}"));
            image::load_from_memory(&plain)
                .unwrap_or_else(|e| panic!("image {id}: its {variant} does not decode: {e}"));
        }
        opened.insert(id);
    }
    for id in acked {
        assert!(ids.contains(id), "upload {id} was answered 201 and is gone");
    }
    live
}

fn temporary_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".tmp") {
                found.push(path);
            }
        }
    }
    found
}

/// The one booked appointment of the patient at `slot`'s start, if any (more than one fails).
async fn booked_at(
    pool: &SqlitePool,
    patient: &str,
    provider: &str,
    starts_at: i64,
) -> Option<String> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM appointments WHERE patient_id = ? AND provider_id = ? AND starts_at = ? AND status = 'booked'",
    )
    .bind(patient)
    .bind(provider)
    .bind(starts_at)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(ids.len() <= 1, "two appointments for one booking: {ids:?}");
    ids.into_iter().next()
}

fn starts_at_ms(slot: &Slot) -> i64 {
    chrono::DateTime::parse_from_rfc3339(slot["start"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_uploads_bookings_and_outbox_delivery_loses_nothing() {
    // The embedded defaults are what crash here (SQLite, the local store and key file); the
    // PostgreSQL pass of the test command has nothing to add to it.
    if std::env::var("TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) {
        say_uncaptured(
            "SKIPPED kill_9: the kill -9 suite runs on the embedded defaults (unset TEST_DATABASE_URL)\n",
        );
        return;
    }
    let points: usize = std::env::var("KILL_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    println!("KILL_POINTS={points}");
    let mut rng = Rng::from_env("KILL_SEED");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // First start: the demo practice; the patient signs in once (the session outlives restarts).
    let server = start(dir, true);
    let password = server
        .logins
        .iter()
        .find(|l| l.0 == "patient.ellis")
        .map(|l| l.2.clone())
        .expect("the demo patient's login");
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = server.base.clone();
    let login = c
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "clinic": "demo", "username": "patient.ellis", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let me: Value = get_json(&c, format!("{base}/api/v1/me/record")).await;
    let patient = me["id"].as_str().unwrap().to_string();
    let location = me["location_id"].as_str().unwrap().to_string();
    let types: Value = get_json(&c, format!("{base}/api/v1/me/appointment-types")).await;
    // Open slots of the types the patient may book over the coming weeks, an hour apart at
    // least (one patient books them all, and a type may keep a buffer around its visits).
    let from = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d");
    let mut offered: Vec<(i64, i64, Slot)> = Vec::new();
    for t in types.as_array().unwrap() {
        let slots: Value = get_json(
            &c,
            format!(
                "{base}/api/v1/me/slots?location_id={location}&type_id={}&from={from}&days=60",
                t["id"].as_str().unwrap()
            ),
        )
        .await;
        for s in slots.as_array().unwrap() {
            let ms = |k: &str| {
                chrono::DateTime::parse_from_rfc3339(s[k].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis()
            };
            let body = json!({
                "type_id": s["type_id"], "location_id": s["location_id"],
                "provider_id": s["provider_id"], "start": s["start"],
            });
            offered.push((ms("start"), ms("end"), body));
        }
    }
    offered.sort_by_key(|o| o.0);
    let mut pool_slots: Vec<Slot> = Vec::new();
    let mut free_from = i64::MIN;
    for (start, end, body) in offered {
        if start >= free_from {
            pool_slots.push(body);
            free_from = end + 3_600_000;
        }
    }
    assert!(
        pool_slots.len() >= 40,
        "slots to book: {}",
        pool_slots.len()
    );
    server.stop();
    // A new install's first checkpoint (verify refuses a chain with none: it could have been
    // deleted); from here on the server writes one every second.
    run(dir, &["audit", "checkpoint"], &[]);

    let config = Config::load_from(
        None,
        [(
            "CLINIC_DATA_DIR".to_string(),
            dir.join("data").display().to_string(),
        )],
    )
    .unwrap();
    let ring = KeyRing::load(&config.key_file()).unwrap();
    let images = Images::open(&config, &ring).await.unwrap();
    let pool = db(dir).await;
    let clinic: String = sqlx::query_scalar("SELECT id FROM clinics WHERE slug = 'demo'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let photo = Arc::new(imaging::testimages::phone_photo(320, 240, 6));
    let slots = Arc::new(Mutex::new(pool_slots));
    let mut messages: Vec<String> = Vec::new();
    let mut opened = HashSet::new();
    // Bookings whose answer a kill swallowed, to retry with their keys on the next start.
    let mut to_retry: Vec<(Slot, String)> = Vec::new();
    let (mut in_upload, mut in_booking, mut in_outbox) = (0usize, 0usize, 0usize);
    let mut kills = 0usize;
    let mut delivered_before = 0usize;
    let mut totals: HashMap<&str, usize> = HashMap::new();
    let began = Instant::now();

    while in_upload.min(in_booking).min(in_outbox) < points {
        assert!(
            kills < points * 3,
            "{kills} kills and only {in_upload} landed in an upload, {in_booking} in a booking, \
             {in_outbox} in outbox delivery"
        );
        messages.extend(queue_messages(&pool, &clinic, &patient, MESSAGES_PER_RUN).await);
        let server = start(dir, false);
        let base = server.base.clone();

        // The bookings the last kill left unanswered, retried with their keys: each is answered
        // with the one appointment it made (or makes it now), never a conflict with itself.
        let mut retried = Vec::new();
        for (slot, key) in to_retry.drain(..) {
            let resp = c
                .post(format!("{base}/api/v1/me/appointments"))
                .header("idempotency-key", &key)
                .json(&slot)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            assert!(
                status == 200 || status == 201,
                "a retried booking answered {status}: {body}"
            );
            retried.push((slot, body["id"].as_str().unwrap().to_string()));
        }

        let work = Arc::new(Mutex::new(Work::default()));
        let mut tasks = Vec::new();
        for _ in 0..UPLOADERS {
            tasks.push(tokio::spawn(uploader(
                c.clone(),
                base.clone(),
                photo.clone(),
                work.clone(),
            )));
        }
        for _ in 0..BOOKERS {
            tasks.push(tokio::spawn(booker(
                c.clone(),
                base.clone(),
                slots.clone(),
                work.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(rng.between(40, 900))).await;
        // What was in flight at the moment of the kill.
        let (up_inflight, book_inflight) = {
            let w = work.lock().unwrap();
            (
                w.uploads_started > w.uploads_answered,
                w.bookings_started > w.bookings_answered,
            )
        };
        server.kill();
        kills += 1;
        for t in tasks {
            let _ = t.await;
        }
        let work = std::mem::take(&mut *work.lock().unwrap());
        assert!(work.wrong.is_empty(), "wrong answers: {:?}", work.wrong);

        // Offline, with the server down.
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        // Delivery was under way: this run delivered some messages and left others pending.
        let (_, delivered, pending) = check_outbox(&pool, &messages).await;
        let outbox_midway = delivered > delivered_before && pending > 0;
        *totals.entry("messages delivered").or_default() += delivered - delivered_before;
        delivered_before = delivered;
        in_upload += usize::from(up_inflight);
        in_booking += usize::from(book_inflight);
        in_outbox += usize::from(outbox_midway);
        *totals.entry("uploads acked").or_default() += work.uploads_acked.len();
        *totals.entry("uploads in flight at the kill").or_default() +=
            work.uploads_started - work.uploads_answered;
        *totals.entry("bookings acked").or_default() += work.booked.len();
        *totals.entry("bookings retried").or_default() += retried.len();

        check_images(&pool, &images, &clinic, &work.uploads_acked, &mut opened).await;
        let report = run(
            dir,
            &["imaging", "tier", "--json"],
            &[("CLINIC_IMAGING__ORPHAN_GRACE_SECS", "0")],
        );
        let report: Value = serde_json::from_str(&report).unwrap();
        *totals.entry("orphan objects swept").or_default() +=
            report["orphans_removed"].as_u64().unwrap() as usize;
        let live = check_images(&pool, &images, &clinic, &work.uploads_acked, &mut opened).await;
        for key in images.store.list(&clinic).await.unwrap() {
            assert!(
                live.contains(key.as_str()),
                "object {} is left with no image after the sweep",
                key.as_str()
            );
        }
        let leftovers = temporary_files(&dir.join("data/blobs"));
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

        for (slot, id) in work.booked.iter().chain(&retried) {
            let at = booked_at(
                &pool,
                &patient,
                slot["provider_id"].as_str().unwrap(),
                starts_at_ms(slot),
            )
            .await;
            assert_eq!(
                at.as_deref(),
                Some(id.as_str()),
                "booking {slot} answered {id}"
            );
        }
        for (slot, _) in &work.unknown {
            booked_at(
                &pool,
                &patient,
                slot["provider_id"].as_str().unwrap(),
                starts_at_ms(slot),
            )
            .await;
        }
        let verify = run(dir, &["audit", "verify"], &[]);
        assert!(verify.contains(": ok"), "{verify}");

        // The checked bookings are cancelled (offline, outside the audited paths: test
        // bookkeeping only) so their slots can be booked again.
        for (slot, id) in work.booked.iter().chain(&retried) {
            sqlx::query("UPDATE appointments SET status = 'cancelled' WHERE id = ?")
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
            slots.lock().unwrap().insert(0, slot.clone());
        }
        to_retry = work.unknown;
    }

    // A last start without a kill: the retries, then every message delivered, once.
    let server = start(dir, false);
    for (slot, key) in to_retry.drain(..) {
        let resp = c
            .post(format!("{}/api/v1/me/appointments", server.base))
            .header("idempotency-key", &key)
            .json(&slot)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (sent, delivered, _) = check_outbox(&pool, &messages).await;
        if sent == messages.len() {
            assert_eq!(delivered, messages.len(), "each message delivered once");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sent} of {} messages sent a minute after the last start",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop();
    let verify = run(dir, &["audit", "verify"], &[]);
    assert!(verify.contains(": ok"), "{verify}");
    println!(
        "{kills} kills in {:.0} s: {in_upload} during an upload, {in_booking} during a booking, \
         {in_outbox} during outbox delivery; {} messages delivered once each; {totals:?}; {}",
        began.elapsed().as_secs_f64(),
        messages.len(),
        verify.trim()
    );
}
