//! The ceiling: a bare axum + sqlx server doing the database work each of the mix's requests
//! needs and nothing else: the session looked up, one row read or written, one audit event
//! inserted (in one transaction with the write). A sign-in checks its password with the same
//! argon2 parameters as the clinic (OWASP's minimum: 19 MiB, t = 2) on the blocking pool, as many
//! at once as there are cores. No authorization, reach check, hash chain, tenant transaction,
//! problem bodies, metrics, rate limits or timeouts: whatever the clinic API spends on those is
//! the difference between the two.
//!
//! SQLite writes take turns behind one lock (as the clinic's do: SQLite has one writer), in
//! WAL mode with `synchronous = NORMAL`, 16 connections, like the clinic's pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sqlx::AnyPool;

use super::clinic::{client_at, loopback, send};
use super::drive::Recorder;
use super::mix::Op;

/// Rows seeded per kind; reads draw among them.
pub const SEEDED: u64 = 2000;
/// Accounts seeded (signers and workers).
pub const USERS: u64 = 200;

#[derive(Clone)]
struct App {
    pool: AnyPool,
    sqlite: bool,
    /// SQLite's writers take turns.
    writer: Arc<tokio::sync::Mutex<()>>,
    checks: Arc<tokio::sync::Semaphore>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn argon() -> argon2::Argon2<'static> {
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters"),
    )
}

fn hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"ceiling-bench-salt").expect("valid salt");
    argon()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hash")
        .to_string()
}

fn verify(password: &str, stored: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(stored)
        .is_ok_and(|h| argon().verify_password(password.as_bytes(), &h).is_ok())
}

/// The password of seeded account `n`.
pub fn password_of(n: u64) -> String {
    format!("ceiling-user-{n}-correct-horse")
}

type Answer = Result<Response, StatusCode>;

fn fail(e: sqlx::Error) -> StatusCode {
    tracing::error!(error = %e, "ceiling query failed");
    StatusCode::INTERNAL_SERVER_ERROR
}

impl App {
    /// The session named by the `sid` cookie: (user, token).
    async fn session(&self, headers: &HeaderMap) -> Result<(String, String), StatusCode> {
        let sid = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| {
                c.split(';')
                    .find_map(|kv| kv.trim().strip_prefix("sid=").map(String::from))
            })
            .ok_or(StatusCode::UNAUTHORIZED)?;
        let row: Option<(String, String, i64)> =
            sqlx::query_as("SELECT user_id, stage, expires_at FROM sessions WHERE token = $1")
                .bind(&sid)
                .fetch_optional(&self.pool)
                .await
                .map_err(fail)?;
        match row {
            Some((user, _stage, exp)) if exp > now_ms() => Ok((user, sid)),
            _ => Err(StatusCode::UNAUTHORIZED),
        }
    }

    /// Runs `write` and an audit insert in one transaction (SQLite: behind the writer lock).
    async fn write_with_audit(
        &self,
        actor: &str,
        action: &str,
        object: &str,
        write: Option<(&str, Vec<String>)>,
    ) -> Result<(), StatusCode> {
        let _turn = if self.sqlite {
            Some(self.writer.lock().await)
        } else {
            None
        };
        let mut tx = self.pool.begin().await.map_err(fail)?;
        if let Some((sql, binds)) = write {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = q.bind(b);
            }
            q.execute(&mut *tx).await.map_err(fail)?;
        }
        sqlx::query(
            "INSERT INTO audit (at, actor, action, object, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(object)
        .bind("treatment")
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)
    }
}

async fn login(State(app): State<App>, body: axum::Json<Value>) -> Answer {
    let username = body["username"].as_str().unwrap_or_default().to_string();
    let password = body["password"].as_str().unwrap_or_default().to_string();
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE username = $1")
            .bind(&username)
            .fetch_optional(&app.pool)
            .await
            .map_err(fail)?;
    let Some((user, stored)) = row else {
        return Err(StatusCode::UNAUTHORIZED);
    };
    let permit = app
        .checks
        .acquire()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let ok = tokio::task::spawn_blocking(move || verify(&password, &stored))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    drop(permit);
    if !ok {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let token = format!("{:032x}", rand_u128());
    app.write_with_audit(
        &user,
        "login",
        &user,
        Some((
            "INSERT INTO sessions (token, user_id, stage, expires_at) VALUES ($1, $2, 'mfa', CAST($3 AS BIGINT))",
            vec![
                token.clone(),
                user.clone(),
                (now_ms() + 3_600_000).to_string(),
            ],
        )),
    )
    .await?;
    Ok((
        [(header::SET_COOKIE, format!("sid={token}; HttpOnly; Path=/"))],
        axum::Json(json!({ "stage": "mfa_pending" })),
    )
        .into_response())
}

async fn mfa(State(app): State<App>, headers: HeaderMap) -> Answer {
    let (user, sid) = app.session(&headers).await?;
    app.write_with_audit(
        &user,
        "mfa",
        &user,
        Some((
            "UPDATE sessions SET stage = 'full' WHERE token = $1",
            vec![sid],
        )),
    )
    .await?;
    Ok(axum::Json(json!({ "stage": "full" })).into_response())
}

async fn read(
    State(app): State<App>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
) -> Answer {
    let (user, _) = app.session(&headers).await?;
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, status, body FROM records WHERE kind = $1 AND id = $2")
            .bind(&kind)
            .bind(&id)
            .fetch_optional(&app.pool)
            .await
            .map_err(fail)?;
    let Some((id, status, body)) = row else {
        return Err(StatusCode::NOT_FOUND);
    };
    app.write_with_audit(&user, "view", &id, None).await?;
    Ok(axum::Json(json!({ "id": id, "status": status, "body": body })).into_response())
}

async fn create(State(app): State<App>, headers: HeaderMap, Path(kind): Path<String>) -> Answer {
    let (user, _) = app.session(&headers).await?;
    let id = format!("{:032x}", rand_u128());
    app.write_with_audit(
        &user,
        "create",
        &id,
        Some((
            "INSERT INTO records (kind, id, status, body) VALUES ($1, $2, 'new', $3)",
            vec![kind, id.clone(), "{\"given\":\"Synthetic\"}".into()],
        )),
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response())
}

async fn update(
    State(app): State<App>,
    headers: HeaderMap,
    Path((kind, id)): Path<(String, String)>,
) -> Answer {
    let (user, _) = app.session(&headers).await?;
    app.write_with_audit(
        &user,
        "update",
        &id,
        Some((
            "UPDATE records SET status = 'changed' WHERE kind = $1 AND id = $2",
            vec![kind, id.clone()],
        )),
    )
    .await?;
    Ok(axum::Json(json!({ "id": id })).into_response())
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish() as u128
    };
    (half() << 64) | half()
}

const SCHEMA: [&str; 4] = [
    "CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL)",
    "CREATE TABLE sessions (token TEXT PRIMARY KEY, user_id TEXT NOT NULL, stage TEXT NOT NULL, expires_at BIGINT NOT NULL)",
    "CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id))",
    "CREATE TABLE audit (seq BIGINT PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, object TEXT NOT NULL, detail TEXT NOT NULL)",
];

/// Runs the ceiling server on `port` against `url` (an empty database), seeding its accounts
/// and rows first, and prints `listening <addr>` when ready.
pub async fn serve(url: &str, port: u16) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite");
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(16)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    for s in SCHEMA {
        let s = if sqlite {
            s.replace(
                "seq BIGINT PRIMARY KEY",
                "seq INTEGER PRIMARY KEY AUTOINCREMENT",
            )
        } else {
            s.replace("seq BIGINT PRIMARY KEY", "seq BIGSERIAL PRIMARY KEY")
        };
        sqlx::query(&s).execute(&pool).await?;
    }
    let hashed = tokio::task::spawn_blocking(|| {
        (0..USERS)
            .map(|n| {
                // One hash, reused with a per-account password suffix would change the cost;
                // each account gets its own.
                hash(&password_of(n))
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let mut tx = pool.begin().await?;
    for (n, h) in hashed.iter().enumerate() {
        sqlx::query("INSERT INTO users (id, username, password_hash) VALUES ($1, $2, $3)")
            .bind(format!("u{n}"))
            .bind(format!("user{n}"))
            .bind(h)
            .execute(&mut *tx)
            .await?;
    }
    for kind in ["patient", "appointment", "image"] {
        for n in 0..SEEDED {
            sqlx::query(
                "INSERT INTO records (kind, id, status, body) VALUES ($1, $2, 'booked', $3)",
            )
            .bind(kind)
            .bind(format!("r{n}"))
            .bind("{\"given\":\"Synthetic\",\"family\":\"Patient\",\"birth_date\":\"1950-01-01\"}")
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let app = App {
        pool,
        sqlite,
        writer: Arc::new(tokio::sync::Mutex::new(())),
        checks: Arc::new(tokio::sync::Semaphore::new(cores)),
    };
    let router = Router::new()
        .route("/login", post(login))
        .route("/mfa", post(mfa))
        .route("/r/{kind}/{id}", get(read))
        .route("/w/{kind}", post(create))
        .route("/u/{kind}/{id}", post(update))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening {}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}

/// The ceiling as a target: the same operations, each mapped to the ceiling's request with the
/// same database work.
pub struct CeilingTarget {
    base: String,
    workers: Vec<reqwest::Client>,
    next_signer: std::sync::atomic::AtomicU64,
}

impl CeilingTarget {
    /// `workers` signed-in clients (accounts 0..workers); the rest of the accounts sign in
    /// during the run.
    pub async fn setup(base: &str, workers: usize) -> anyhow::Result<CeilingTarget> {
        let mut clients = Vec::new();
        for n in 0..workers {
            let c = client_at(loopback(0, 10 + n))?;
            sign_in(&c, base, n as u64).await?;
            clients.push(c);
        }
        Ok(CeilingTarget {
            base: base.to_string(),
            workers: clients,
            next_signer: std::sync::atomic::AtomicU64::new(workers as u64),
        })
    }

    pub async fn run(&self, op: Op, pick: u64, due: Instant, rec: &Recorder) {
        let w = &self.workers[(pick % self.workers.len() as u64) as usize];
        let id = format!("r{}", (pick >> 16) % SEEDED);
        let kind = match op {
            Op::PatientRead | Op::PatientList | Op::Intake => "patient",
            Op::ImageList | Op::ImageFetch => "image",
            _ => "appointment",
        };
        let route = op.name();
        match op {
            Op::SignIn => {
                let span = USERS - self.workers.len() as u64;
                let n = self.workers.len() as u64
                    + self
                        .next_signer
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        % span.max(1);
                let Ok(c) = client_at(loopback(3, n as usize)) else {
                    return;
                };
                let r = c
                    .post(format!("{}/login", self.base))
                    .json(&json!({ "username": format!("user{n}"), "password": password_of(n) }));
                send(rec, "POST /login", r, due, 200, &[]).await;
                let t = Instant::now();
                send(
                    rec,
                    "POST /mfa",
                    c.post(format!("{}/mfa", self.base)),
                    t,
                    200,
                    &[],
                )
                .await;
            }
            Op::Intake => {
                let r = w.post(format!("{}/w/{kind}", self.base));
                send(rec, route, r, due, 201, &[]).await;
            }
            Op::Book | Op::CheckIn | Op::Complete | Op::Cancel => {
                let r = w.post(format!("{}/u/{kind}/{id}", self.base));
                send(rec, route, r, due, 200, &[]).await;
            }
            _ => {
                let r = w.get(format!("{}/r/{kind}/{id}", self.base));
                send(rec, route, r, due, 200, &[]).await;
            }
        }
    }
}

async fn sign_in(c: &reqwest::Client, base: &str, n: u64) -> anyhow::Result<()> {
    let r = c
        .post(format!("{base}/login"))
        .json(&json!({ "username": format!("user{n}"), "password": password_of(n) }))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "ceiling sign-in: {}", r.status());
    let r = c.post(format!("{base}/mfa")).send().await?;
    anyhow::ensure!(r.status() == 200, "ceiling MFA: {}", r.status());
    Ok(())
}

/// The ceiling server started as a child process (`loadtest ceiling-server`).
pub struct CeilingProcess {
    pub base: String,
    pub pid: u32,
    child: tokio::process::Child,
    _data: tempfile::TempDir,
}

impl CeilingProcess {
    /// `db`: `sqlite` (a file in a fresh directory) or a PostgreSQL URL of an empty database.
    pub async fn start(db: &str, log: &std::path::Path) -> anyhow::Result<CeilingProcess> {
        use tokio::io::AsyncBufReadExt;
        let data = tempfile::tempdir()?;
        let url = if db == "sqlite" {
            format!(
                "sqlite://{}?mode=rwc",
                data.path().join("ceiling.db").display()
            )
        } else {
            db.to_string()
        };
        let me = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(me)
            .args(["ceiling-server", "--db", &url])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting the ceiling server")?;
        let pid = child.id().context("ceiling pid")?;
        let stdout = child.stdout.take().context("ceiling stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the ceiling server did not start within 120 s")??
            .context("the ceiling server exited")?;
        let addr = line
            .strip_prefix("listening ")
            .context("ceiling server's first line")?
            .to_string();
        Ok(CeilingProcess {
            base: format!("http://{addr}"),
            pid,
            child,
            _data: data,
        })
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
