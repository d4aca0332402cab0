//! Test support (feature `testkit`): a whole app on a fresh database, with a manual clock,
//! users of any role and sessions at any stage, driven in-process through the router.
//!
//! The backend comes from the environment: `TEST_DATABASE_URL=postgres://…` (a connection that
//! may create databases; each test gets its own database, migrated by that connection, while
//! the app runs as `clinic_app` under row-level security); unset, SQLite in a temporary directory.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use crate::domains::identity::users::NewUser;
use crate::platform::authz::Role;
use crate::platform::clock::{Clock, ManualClock};
use crate::platform::config::Config;
use crate::platform::db::{Backend, Db};
use crate::platform::ids::{ClinicId, LocationId, PatientId, UserId};
use crate::platform::keys::{KeyRing, Purpose, sha256_hex};
use crate::platform::sessions::Stage;
use crate::platform::state::AppState;
use crate::{
    demo, domains::identity::mfa, domains::identity::passwords, domains::identity::users,
    domains::tenancy::clinics, domains::tenancy::locations,
};

/// The password every test user gets.
pub const PASSWORD: &str = "test password 123";

/// The bearer token test apps' scrapers send (`metrics.token`).
pub const METRICS_TOKEN: &str = "testkit-metrics-scraper";

pub struct TestApp {
    pub state: AppState,
    pub clock: ManualClock,
    /// A connection that sees every tenant (the schema owner on PostgreSQL).
    pub admin: Db,
    pub clinic: ClinicId,
    pub locations: Vec<LocationId>,
    pub dir: tempfile::TempDir,
    /// The admin URL of this test's own database (PostgreSQL), for raw connections.
    pub database_url: String,
}

#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: UserId,
    pub clinic: ClinicId,
    pub username: String,
    pub role: Role,
}

/// An answer from the app.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body.get("code").and_then(Value::as_str).unwrap_or("")
    }

    /// The session cookie this answer set (`name=value`, for a `Cookie` header), if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(crate::platform::sessions::COOKIE))
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
            .filter(|c| !c.ends_with('='))
    }
}

/// Which backend the tests run on, for messages.
pub fn backend_name() -> &'static str {
    if std::env::var("TEST_DATABASE_URL").is_ok() {
        "postgres"
    } else {
        "sqlite"
    }
}

/// The PostgreSQL admin URL for tests that need PostgreSQL specifically, or `None` (and a
/// message saying the test is skipped).
pub fn postgres_url_or_skip(test: &str) -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => Some(url),
        _ => {
            say_uncaptured(&format!(
                "SKIPPED {test}: needs PostgreSQL; set TEST_DATABASE_URL=postgres://… (.ci/run does)\n"
            ));
            None
        }
    }
}

/// Writes to file descriptor 2 itself: libtest captures both `eprintln!` and `std::io::stderr()`,
/// and a skipped test must be seen in the run's output.
pub fn say_uncaptured(text: &str) {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::fd::FromRawFd;
        // SAFETY: fd 2 is open for the life of the process; ManuallyDrop keeps it open after use.
        let mut err = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
        let _ = err.write_all(text.as_bytes());
    }
    #[cfg(not(unix))]
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// A small deterministic generator (xorshift64*) for tests that draw random moments or choices
/// and must be repeatable: [`Rng::from_env`] takes its seed from a variable, or from the clock,
/// and prints it.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `var` if set, else from the clock; prints `VAR=seed` so a run can be repeated.
    pub fn from_env(var: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64
                    | 1
            });
        println!("{var}={seed}");
        Rng(seed.max(1))
    }

    pub fn draw(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.draw() % (hi - lo + 1)
    }
}

/// Replaces the database name of a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    /// A fresh app; `tweak` adjusts the configuration first.
    pub async fn with_config(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        config.database.max_connections = 4;
        // No background jobs unless a test asks for them: they would write (checkpoints, tier
        // moves, deliveries) under tests that drive those by hand on a manual clock.
        config.audit.checkpoint_interval_secs = 0;
        config.imaging.tier_interval_secs = 0;
        config.scheduling.outbox_interval_secs = 0;
        config.metrics.token = Some(METRICS_TOKEN.into());
        let (app_url, admin_url) = match std::env::var("TEST_DATABASE_URL") {
            Ok(admin) if admin.starts_with("postgres") => {
                let name = format!("clinic_t_{}", uuid::Uuid::new_v4().simple());
                let server = Db::connect(&admin, 1, None)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&server.pool)
                    .await
                    .expect("create test database");
                server.pool.close().await;
                let url = with_database(&admin, &name);
                (url.clone(), url)
            }
            _ => {
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("clinic.db").display()
                );
                (url.clone(), url)
            }
        };
        config.database.url = Some(app_url);
        config.database.admin_url = Some(admin_url.clone());
        tweak(&mut config);
        Db::migrate(&admin_url).await.expect("migrate");
        let db = Db::connect_with(
            &config.database_url(),
            config.database.max_connections,
            Some(&config.database.app_role),
            config.database.contention(),
        )
        .await
        .expect("connect app pool");
        if let Some(check) = db.role_check().await.expect("role check") {
            assert!(
                !check.can_bypass_rls(),
                "the test app role can bypass RLS: {check:?}"
            );
        }
        let admin = Db::connect(&admin_url, 2, None)
            .await
            .expect("connect admin pool");
        let clock = ManualClock::new(1_790_000_000_000);
        let keys = KeyRing::generate();
        let state = crate::app::assemble(config, db, keys, std::sync::Arc::new(clock.clone()))
            .await
            .expect("media workers and imaging services");
        let (clinic, locations) = Self::make_clinic(&state, "alpha").await;
        Self {
            state,
            clock,
            admin,
            clinic,
            locations,
            dir,
            database_url: admin_url,
        }
    }

    async fn make_clinic(state: &AppState, slug: &str) -> (ClinicId, Vec<LocationId>) {
        let now = state.clock.now_ms();
        let clinic = clinics::create(&state.db, slug, &format!("{slug} podiatry"), now)
            .await
            .expect("create clinic");
        let mut tx = state.tx(&clinic).await.unwrap();
        let a = locations::create(&mut tx, &clinic, "North", "America/New_York", now)
            .await
            .unwrap();
        let b = locations::create(&mut tx, &clinic, "South", "America/Chicago", now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (clinic, vec![a, b])
    }

    /// Another tenant with its own two locations.
    pub async fn add_clinic(&self, slug: &str) -> (ClinicId, Vec<LocationId>) {
        Self::make_clinic(&self.state, slug).await
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A user of `role` in `clinic`, assigned to `locations`, with password [`PASSWORD`].
    pub async fn user_in(
        &self,
        clinic: &ClinicId,
        role: Role,
        locations: &[LocationId],
    ) -> TestUser {
        let username = format!(
            "{}-{}",
            role.as_str(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let hashed = passwords::NewHash::of(PASSWORD, std::time::Duration::from_secs(60))
            .await
            .expect("hash the test password");
        let mut tx = self.state.tx(clinic).await.unwrap();
        let id = users::create(
            &mut tx,
            clinic,
            self.now(),
            &NewUser {
                username: &username,
                display_name: &username,
                role,
                password: &hashed,
                locations,
            },
        )
        .await
        .expect("create user");
        tx.commit().await.unwrap();
        TestUser {
            id,
            clinic: clinic.clone(),
            username,
            role,
        }
    }

    /// A user of `role` in the main clinic at its first location.
    pub async fn user(&self, role: Role) -> TestUser {
        let locs = if role.is_staff() {
            vec![self.locations[0].clone()]
        } else {
            vec![]
        };
        self.user_in(&self.clinic.clone(), role, &locs).await
    }

    /// Enrolls TOTP for `user` directly; returns the raw secret.
    pub async fn enroll(&self, user: &TestUser) -> Vec<u8> {
        let secret: Vec<u8> = (0..20)
            .map(|i| {
                (i as u8)
                    .wrapping_mul(37)
                    .wrapping_add(user.username.len() as u8)
            })
            .collect();
        let sealed = self
            .state
            .keys
            .seal(Purpose::MfaSecret, user.id.as_str().as_bytes(), &secret);
        let mut tx = self.state.tx(&user.clinic).await.unwrap();
        sqlx::query("UPDATE users SET mfa_secret = $1, mfa_enrolled_at = $2 WHERE id = $3")
            .bind(sealed)
            .bind(self.now())
            .bind(user.id.as_str())
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        secret
    }

    /// The TOTP code for `secret` at the test clock's time, `offset_steps` steps away.
    pub fn code(&self, secret: &[u8], offset_steps: i64) -> String {
        mfa::code_at(secret, self.now() / 1000 + offset_steps * mfa::STEP_SECS)
    }

    /// A session cookie for `user` at `stage` (a full session has a fresh MFA check).
    pub async fn session(&self, user: &TestUser, stage: Stage) -> String {
        let token = format!("tok{}", uuid::Uuid::new_v4().simple());
        let now = self.now();
        let mut tx = self.state.tx(&user.clinic).await.unwrap();
        sqlx::query(
            "INSERT INTO sessions (id, clinic_id, user_id, token_hash, stage, created_at, last_seen_at, expires_at, mfa_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(user.clinic.as_str())
        .bind(user.id.as_str())
        .bind(sha256_hex(token.as_bytes()))
        .bind(stage.as_str())
        .bind(now)
        .bind(now)
        .bind(now + self.state.config.sessions.absolute_lifetime_secs * 1000)
        .bind((stage == Stage::Full).then_some(now))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        format!(
            "{}={}.{}",
            crate::platform::sessions::COOKIE,
            user.clinic,
            token
        )
    }

    /// A patient record in `clinic` at `location`.
    pub async fn patient_in(
        &self,
        clinic: &ClinicId,
        location: &LocationId,
        given: &str,
        family: &str,
    ) -> PatientId {
        let mut tx = self.state.tx(clinic).await.unwrap();
        let id = demo::insert_patient(
            &mut tx,
            clinic,
            location,
            None,
            given,
            family,
            "1960-01-01",
            self.now(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        id
    }

    /// Sends a request through the app in-process.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.send(req).await
    }

    /// Scrapes `/metrics` as the configured scraper.
    pub async fn scrape_metrics(&self) -> Reply {
        let req = Request::builder()
            .uri("/metrics")
            .header("authorization", format!("Bearer {METRICS_TOKEN}"))
            .body(Body::empty())
            .unwrap();
        self.send(req).await
    }

    /// Sends a prepared request.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = crate::app::router(&self.state).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    /// Logs in through the API; returns the reply and the session cookie it set.
    pub async fn login(&self, user: &TestUser, password: &str) -> (Reply, Option<String>) {
        let slug: (String,) = sqlx::query_as("SELECT slug FROM clinics WHERE id = $1")
            .bind(user.clinic.as_str())
            .fetch_one(&self.admin.pool)
            .await
            .unwrap();
        let reply = self
            .call(Method::POST, "/api/v1/auth/login", None, Some(serde_json::json!({ "clinic": slug.0, "username": user.username, "password": password })))
            .await;
        let cookie = reply.session_cookie();
        (reply, cookie)
    }

    pub fn backend(&self) -> Backend {
        self.state.db.backend
    }
}

/// Decodes RFC 4648 base32 (no padding), as an authenticator app reads the enrollment key.
pub fn decode_base32(s: &str) -> Vec<u8> {
    const A: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buf, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in s.chars().filter(|c| !c.is_whitespace()) {
        buf = (buf << 5) | A.find(c).expect("base32 character") as u32;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}
