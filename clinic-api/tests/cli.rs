//! The `clinic` binary as an operator uses it: `serve --demo` on embedded defaults (logins
//! printed once; sign-in → MFA enrollment → MFA → session works), with every log line of the run
//! free of PHI; then `user add`, `access-review`, `audit checkpoint` and `audit verify`, which
//! fails once a row is tampered with.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use clinic_api::testkit::decode_base32;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_clinic");
const DISTINCTIVE: &str = "Quixotefeather";
const SCRAPER_TOKEN: &str = "cli-test-scraper-token";

fn clinic(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("CLINIC_DATA_DIR", dir.join("data"))
        .env("CLINIC_LISTEN", "127.0.0.1:0")
        .env("CLINIC_METRICS__TOKEN", SCRAPER_TOKEN);
    cmd
}

fn run(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = clinic(dir).args(args).output().expect("run clinic");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

struct Server {
    child: Child,
    base: String,
    logins: Vec<(String, String, String)>,
    /// stderr, drained by a thread so the server never blocks on a full pipe.
    logs: std::thread::JoinHandle<String>,
}

fn start(dir: &std::path::Path, demo: bool) -> Server {
    let mut cmd = clinic(dir);
    cmd.arg("serve")
        .env("CLINIC_LOG__FILTER", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if demo {
        cmd.arg("--demo");
    }
    let mut child = cmd.spawn().expect("spawn clinic serve");
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
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
        if cols.len() >= 3
            && cols[0] != "username"
            && (cols[1].contains('_') || ["owner", "provider", "patient"].contains(&cols[1]))
        {
            logins.push((
                cols[0].to_string(),
                cols[1].to_string(),
                cols[2].to_string(),
            ));
        }
    }
    // Keep draining stdout so a later print never meets a closed pipe.
    std::thread::spawn(move || stdout.for_each(drop));
    Server {
        child,
        base: base.expect("server printed its address"),
        logins,
        logs,
    }
}

impl Server {
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        self.logs.join().unwrap()
    }
    fn password(&self, user: &str) -> String {
        self.logins
            .iter()
            .find(|l| l.0 == user)
            .unwrap_or_else(|| panic!("no login for {user} in {:?}", self.logins))
            .2
            .clone()
    }
}

fn totp_now(secret: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    clinic_api::domains::identity::mfa::code_at(secret, now)
}

async fn post(c: &reqwest::Client, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = c.post(url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn get(c: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = c.get(url).send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// Signs a demo staff user in through enrollment; returns the client holding the session.
async fn enroll(base: &str, username: &str, password: &str) -> reqwest::Client {
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let (s, login) = post(
        &c,
        format!("{base}/api/v1/auth/login"),
        Some(json!({ "clinic": "demo", "username": username, "password": password })),
    )
    .await;
    assert_eq!(s, 200, "{login}");
    assert_eq!(login["stage"], "enroll_only");
    let (s, e) = post(&c, format!("{base}/api/v1/auth/mfa/enroll"), None).await;
    assert_eq!(s, 200, "{e}");
    let secret = decode_base32(e["secret"].as_str().unwrap());
    let (s, r) = post(
        &c,
        format!("{base}/api/v1/auth/mfa/enroll/confirm"),
        Some(json!({ "code": totp_now(&secret) })),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    c
}

#[tokio::test]
async fn serve_demo_then_operator_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), true);
    let base = server.base.clone();
    let roles: Vec<&str> = server.logins.iter().map(|l| l.1.as_str()).collect();
    for role in [
        "owner",
        "clinic_admin",
        "provider",
        "medical_assistant",
        "front_desk",
        "patient",
    ] {
        assert!(roles.contains(&role), "demo lacks {role}: {roles:?}");
    }
    assert_eq!(roles.iter().filter(|r| **r == "provider").count(), 2);
    assert_eq!(roles.iter().filter(|r| **r == "patient").count(), 2);
    // Embedded defaults: SQLite, blob directory and a 0600 key file under ./data.
    let data = dir.path().join("data");
    assert!(data.join("clinic.db").exists() && data.join("blobs").is_dir());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(data.join("keys.json"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );

    // The front desk registers a patient with a distinctive name; a provider reads and edits it.
    let desk = enroll(&base, "frontdesk", &server.password("frontdesk")).await;
    let (_, locations) = get(&desk, format!("{base}/api/v1/locations")).await;
    assert_eq!(locations.as_array().unwrap().len(), 2);
    let tz: Vec<&str> = locations
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["time_zone"].as_str().unwrap())
        .collect();
    assert_ne!(tz[0], tz[1], "locations in different time zones");
    let main_st = locations
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"].as_str().unwrap().starts_with("Main"))
        .unwrap()["id"]
        .clone();
    let (s, p) = post(&desk, format!("{base}/api/v1/patients"), Some(json!({ "location_id": main_st, "given_name": "Zebediah", "family_name": DISTINCTIVE, "birth_date": "1949-07-30" }))).await;
    assert_eq!(s, 200, "{p}");
    let pid = p["id"].as_str().unwrap().to_string();
    let dr = enroll(&base, "dr.hartwell", &server.password("dr.hartwell")).await;
    let (s, read) = get(&dr, format!("{base}/api/v1/patients/{pid}")).await;
    assert_eq!((s, read["family_name"].as_str()), (200, Some(DISTINCTIVE)));
    let resp = dr
        .patch(format!("{base}/api/v1/patients/{pid}"))
        .json(&json!({ "given_name": format!("{DISTINCTIVE}ia") }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, _) = post(&dr, format!("{base}/api/v1/patients"), Some(json!({ "location_id": main_st, "given_name": DISTINCTIVE, "family_name": 7, "birth_date": "x" }))).await;
    assert_eq!(s, 422);
    // A patient signs in (no MFA required) and reads only their record.
    let pat = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let (s, l) = post(&pat, format!("{base}/api/v1/auth/login"), Some(json!({ "clinic": "demo", "username": "patient.ellis", "password": server.password("patient.ellis") }))).await;
    assert_eq!((s, l["stage"].as_str()), (200, Some("full")));
    let (s, mine) = get(&pat, format!("{base}/api/v1/me/record")).await;
    assert_eq!((s, mine["family_name"].as_str()), (200, Some("Ellis")));
    let (s, _) = get(&pat, format!("{base}/api/v1/patients/{pid}")).await;
    assert_eq!(s, 403);
    // The owner reads the audit log of it all.
    let owner = enroll(&base, "owner", &server.password("owner")).await;
    let (s, events) = get(&owner, format!("{base}/api/v1/audit?patient_id={pid}")).await;
    assert_eq!(s, 200);
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["modify", "view", "create"]);
    // Anonymous callers get a problem, the scraper with its token the series.
    let anonymous = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let metrics = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(SCRAPER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    // Latency is a fixed-bucket histogram (bounded memory per route, scraped or not).
    assert!(
        metrics.contains("http_request_duration_seconds_bucket{"),
        "{metrics}"
    );
    // The allocator's own numbers: jemalloc serves the binary, and it holds more than nothing.
    let heap = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (allocated, resident) = (
        heap("process_heap_allocated_bytes"),
        heap("process_heap_resident_bytes"),
    );
    assert!(
        allocated > 1e6 && resident >= allocated,
        "allocated {allocated}, resident {resident}"
    );
    let logs = server.stop();

    // Logs at TRACE level for the whole run: plenty of them, and no PHI in any.
    assert!(
        logs.lines().count() > 50,
        "expected a full trace log, got:\n{logs}"
    );
    assert!(
        logs.contains("/api/v1/patients/{id}"),
        "requests are logged by route template"
    );
    for phi in [DISTINCTIVE, "Zebediah", "1949-07-30", "Ellis"] {
        assert!(
            !logs.contains(phi),
            "PHI {phi:?} reached the logs:\n{}",
            logs.lines()
                .filter(|l| l.contains(phi))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        !metrics.contains(&pid),
        "metrics carry route templates, not ids"
    );

    // A second start does not seed again or print logins.
    let again = start(dir.path(), true);
    assert!(again.logins.is_empty());
    again.stop();

    // Operator commands on the same data.
    let (ok, out) = run(
        dir.path(),
        &[
            "user",
            "add",
            "--clinic",
            "demo",
            "--username",
            "locum",
            "--role",
            "provider",
        ],
    );
    assert!(
        ok && out.contains("enrollment link") && out.contains("/enroll#"),
        "{out}"
    );
    assert!(
        !out.contains("password:"),
        "the operator is never told a password: {out}"
    );
    let (ok, out) = run(
        dir.path(),
        &[
            "user",
            "add",
            "--clinic",
            "demo",
            "--username",
            "x",
            "--role",
            "wizard",
        ],
    );
    assert!(!ok && out.contains("unknown role"), "{out}");
    let (ok, out) = run(dir.path(), &["access-review", "--json"]);
    assert!(ok, "{out}");
    let review: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let names = |k: &str| {
        review[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["username"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(names("staff_without_mfa").contains(&"locum".to_string()));
    assert!(
        !names("staff_without_mfa").contains(&"owner".to_string()),
        "the owner enrolled"
    );
    assert!(
        names("privileged").contains(&"owner".to_string())
            && names("privileged").contains(&"admin".to_string())
    );
    assert!(
        names("stale").contains(&"locum".to_string()),
        "never signed in"
    );
    assert!(names("disabled_with_live_sessions").is_empty());
    let (ok, out) = run(
        dir.path(),
        &[
            "user",
            "disable",
            "--clinic",
            "demo",
            "--username",
            "dr.hartwell",
        ],
    );
    assert!(ok && out.contains("1 sessions revoked"), "{out}");
    let (ok, out) = run(
        dir.path(),
        &[
            "user",
            "reset-mfa",
            "--clinic",
            "demo",
            "--username",
            "owner",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        dir.path(),
        &[
            "user",
            "reset-password",
            "--clinic",
            "demo",
            "--username",
            "frontdesk",
        ],
    );
    assert!(
        ok && out.contains("temporary password") && out.contains("must change it"),
        "{out}"
    );

    let (ok, out) = run(dir.path(), &["imaging", "tier"]);
    assert!(
        ok && out.contains("originals examined, 0 moved, 0 failed"),
        "{out}"
    );
    let (ok, out) = run(dir.path(), &["audit", "checkpoint"]);
    assert!(ok && out.contains("1 checkpoints written"), "{out}");
    let (ok, out) = run(dir.path(), &["audit", "verify"]);
    assert!(ok && out.contains(": ok"), "{out}");
    // Tamper with one row as a database owner could, then verify fails.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("clinic.db").display()))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_events_no_update")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET detail = 'rewritten by an intruder' WHERE seq = 3")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let (ok, out) = run(dir.path(), &["audit", "verify"]);
    assert!(!ok, "verify must fail after tampering: {out}");
    assert!(
        out.contains("TAMPERING DETECTED") && out.contains("event 3 was edited"),
        "{out}"
    );

    let (ok, out) = run(dir.path(), &["permissions"]);
    assert!(ok && out.starts_with("# Permission matrix"));
}

/// `[audit] checkpoint_key_path` (here through its environment variable) puts the checkpoint
/// signing key outside the data directory: checkpoints sign and verify with it, nothing in the
/// data directory can vouch for them, and verify never makes up a missing key.
#[test]
fn the_checkpoint_key_lives_apart_from_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("secrets/checkpoint-key.json");
    let with_key = |args: &[&str], key: &std::path::Path| {
        let out = clinic(dir.path())
            .env("CLINIC_AUDIT__CHECKPOINT_KEY_PATH", key)
            .args(args)
            .output()
            .expect("run clinic");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, out) = run(
        dir.path(),
        &["tenant", "add", "--slug", "north", "--name", "North"],
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        dir.path(),
        &[
            "user",
            "add",
            "--clinic",
            "north",
            "--username",
            "lee",
            "--role",
            "owner",
        ],
    );
    assert!(ok, "{out}");
    // Events exist and no checkpoint was written yet: verify fails and says why.
    let (ok, out) = with_key(&["audit", "verify"], &key);
    assert!(!ok, "{out}");
    assert!(
        out.contains("checkpoint-key.json: does not exist"),
        "verify must not create a checkpoint key: {out}"
    );
    assert!(!key.exists());
    let (ok, out) = with_key(&["audit", "checkpoint"], &key);
    assert!(ok && out.contains("1 checkpoints written"), "{out}");
    assert!(key.exists());
    let (ok, out) = with_key(&["audit", "verify"], &key);
    assert!(ok && out.contains(": ok"), "{out}");
    // The data directory holds the checkpoints and the main key file, but not the key that
    // signed them: with the data directory's key the lines do not verify.
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        !names.iter().any(|n| n.contains("checkpoint-key")),
        "{names:?}"
    );
    let (ok, out) = run(dir.path(), &["audit", "verify"]);
    assert!(!ok && out.contains("invalid signature"), "{out}");
    // Deleting the checkpoint file is caught too.
    std::fs::remove_file(data.join("audit-checkpoints.jsonl")).unwrap();
    let (ok, out) = with_key(&["audit", "verify"], &key);
    assert!(
        !ok && out.contains("TAMPERING DETECTED") && out.contains("missing or empty"),
        "{out}"
    );
}
