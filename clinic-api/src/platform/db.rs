//! Storage: one sqlx `Any` pool whose SQL runs unchanged on SQLite and PostgreSQL (TEXT ids,
//! BIGINT millisecond times, `$n` placeholders), one migration set per backend, and the tenant
//! transaction every regulated query runs in.
//!
//! On PostgreSQL a tenant transaction starts with `set_config('app.clinic_id', …, true)`, which
//! the row-level-security policies read; the server's role owns nothing and cannot bypass them.
//! On SQLite a write transaction is `BEGIN IMMEDIATE`, so writers are serialized.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::platform::ids::ClinicId;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!("unsupported database url scheme (use sqlite:// or postgres://)")
        }
    }
}

/// The pool plus which backend it talks to.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// SQLite: the server's writers take turns here, in arrival order, before `BEGIN IMMEDIATE`.
    /// SQLite's own busy handler retries by sleeping, unfairly: under a flood some writers waited
    /// past the busy timeout and answered 500 while later ones got through. Waiting here is fair
    /// and bounded (`write_wait`, then 503), and SQLite's lock is then never contended from
    /// inside this process.
    writers: Option<Arc<Semaphore>>,
    write_wait: Duration,
}

/// How connections wait on contention (SQLite; PostgreSQL ignores both).
#[derive(Clone, Copy, Debug)]
pub struct Contention {
    /// SQLite's busy timeout: how long a connection waits for another process's lock.
    pub busy_timeout_ms: u64,
    /// How long a transaction waits for its turn among this process's writers.
    pub write_wait_ms: u64,
}

impl Default for Contention {
    fn default() -> Self {
        Self {
            busy_timeout_ms: 5_000,
            write_wait_ms: 5_000,
        }
    }
}

pub use crate::platform::tx::TenantTx;

/// A transaction before any tenant is known.
type RawTx = Transaction<'static, Any>;

/// The role a PostgreSQL connection runs as and what it may bypass.
#[derive(Debug, sqlx::FromRow)]
pub struct RoleCheck {
    pub role: String,
    pub superuser: i64,
    pub bypass_rls: i64,
    pub owned_tables: i64,
}

impl Db {
    /// Connects. With `app_role` on PostgreSQL, each connection `SET ROLE`s to it unless the login
    /// role already is it.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        app_role: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::connect_with(url, max_connections, app_role, Contention::default()).await
    }

    /// [`Db::connect`] with the contention settings of `database.busy_timeout_ms` and
    /// `database.write_wait_ms`.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        app_role: Option<&str>,
        contention: Contention,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url)?;
        if backend == Backend::Sqlite {
            ensure_sqlite_dir(url)?;
        }
        let options = AnyConnectOptions::from_str(url)?;
        let mut pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let pragmas = format!(
                "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {}; PRAGMA synchronous = NORMAL;",
                contention.busy_timeout_ms
            );
            pool = pool.after_connect(move |conn, _| {
                let pragmas = pragmas.clone();
                Box::pin(async move {
                    conn.execute(pragmas.as_str()).await?;
                    // Readers must not wait for writers (nor a writer for readers): WAL, which
                    // migrations set and the file keeps. Checked on every connection, since a
                    // database file in rollback mode would serialize reads behind each write.
                    if !memory {
                        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode = WAL")
                            .fetch_one(&mut *conn)
                            .await?;
                        if !mode.eq_ignore_ascii_case("wal") {
                            return Err(sqlx::Error::Configuration(
                                format!("SQLite journal mode is {mode}, not WAL").into(),
                            ));
                        }
                    }
                    Ok(())
                })
            });
        } else if let Some(role) = app_role {
            let role = role.to_string();
            anyhow::ensure!(
                role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "app_role must be a plain identifier"
            );
            pool = pool.after_connect(move |conn, _| {
                let role = role.clone();
                Box::pin(async move {
                    let current: (String,) = sqlx::query_as("SELECT current_user::text")
                        .fetch_one(&mut *conn)
                        .await?;
                    if current.0 != role {
                        conn.execute(format!("SET ROLE {role}").as_str()).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await?;
        Ok(Self {
            pool,
            backend,
            writers: (backend == Backend::Sqlite).then(|| Arc::new(Semaphore::new(1))),
            write_wait: Duration::from_millis(contention.write_wait_ms),
        })
    }

    /// Applies this backend's migrations (needs a connection that may create tables).
    pub async fn migrate(url: &str) -> anyhow::Result<()> {
        match Backend::of_url(url)? {
            Backend::Sqlite => {
                ensure_sqlite_dir(url)?;
                let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
                let pool = sqlx::SqlitePool::connect_with(opts).await?;
                SQLITE_MIGRATIONS.run(&pool).await?;
                pool.close().await;
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(url).await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                pool.close().await;
            }
        }
        Ok(())
    }

    /// Starts a transaction scoped to one tenant at `now`. Every query on regulated rows runs in
    /// one (handlers take theirs from `AppState::tx`, which reads the clock).
    pub async fn tenant_tx(&self, clinic: &ClinicId, now: i64) -> sqlx::Result<TenantTx> {
        let (tx, turn) = self.begin().await?;
        let mut tx = tx;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT set_config('app.clinic_id', $1, true)")
                .bind(clinic.as_str())
                .execute(&mut *tx)
                .await?;
        }
        Ok(TenantTx::new(tx, turn, clinic.clone(), self.backend, now))
    }

    /// A transaction with no tenant: on PostgreSQL it sees no tenant rows at all (RLS). On
    /// SQLite it holds the writers' turn, which it returns with it, until it ends.
    async fn begin(&self) -> sqlx::Result<(RawTx, Option<OwnedSemaphorePermit>)> {
        let turn = match &self.writers {
            Some(writers) => Some(self.turn(writers).await?),
            None => None,
        };
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok((tx, turn))
    }

    /// Waits for this process's writers' turn, at most `write_wait` (then the pool's "timed out",
    /// which answers 503 with Retry-After).
    async fn turn(&self, writers: &Arc<Semaphore>) -> sqlx::Result<OwnedSemaphorePermit> {
        match tokio::time::timeout(self.write_wait, writers.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }

    /// Each tenant's audit chain head (clinic id, seq, hash), for checkpoints. On PostgreSQL the
    /// server's role sees one tenant at a time; a SECURITY DEFINER function returns the heads
    /// (and nothing else).
    pub async fn audit_heads(&self) -> sqlx::Result<Vec<(String, i64, String)>> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT clinic_id, seq, hash FROM audit_heads()",
            Backend::Sqlite => {
                "SELECT a.clinic_id, a.seq, a.hash FROM audit_events a \
                 JOIN (SELECT clinic_id, MAX(seq) AS m FROM audit_events GROUP BY clinic_id) b \
                 ON a.clinic_id = b.clinic_id AND a.seq = b.m ORDER BY a.clinic_id"
            }
        };
        sqlx::query_as(sql).fetch_all(&self.pool).await
    }

    /// Every tenant's id (jobs that visit each tenant in turn: tiering, the outbox).
    pub async fn clinic_ids(&self) -> sqlx::Result<Vec<ClinicId>> {
        // On PostgreSQL the app role sees no clinic rows outside a tenant transaction; a
        // SECURITY DEFINER function lists the ids (and nothing else).
        let sql = match self.backend {
            Backend::Postgres => "SELECT clinic_ids()",
            Backend::Sqlite => "SELECT id FROM clinics ORDER BY id",
        };
        let (mut tx, _turn) = self.begin().await?;
        let ids: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(ids
            .into_iter()
            .map(|(id,)| ClinicId::from_trusted(id))
            .collect())
    }

    /// Resolves a clinic's slug to its id, before any tenant is known (login).
    pub async fn clinic_id_by_slug(&self, slug: &str) -> sqlx::Result<Option<ClinicId>> {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT id FROM clinics WHERE slug = $1",
            Backend::Postgres => "SELECT clinic_id_by_slug($1) AS id",
        };
        let row: Option<(Option<String>,)> = sqlx::query_as(sql)
            .bind(slug)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| r.0).map(ClinicId::from_trusted))
    }

    /// On PostgreSQL: what the server's role could bypass. Serving refuses a role that is
    /// superuser, has BYPASSRLS or owns a table, itself or through a role it is a member of (a
    /// member can `SET ROLE` to the owner, and owners may alter or drop their tables' policies).
    pub async fn role_check(&self) -> sqlx::Result<Option<RoleCheck>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let check: RoleCheck = sqlx::query_as(
            "SELECT r.rolname::text AS role, \
                    CASE WHEN r.rolsuper THEN 1 ELSE 0 END::bigint AS superuser, \
                    CASE WHEN r.rolbypassrls THEN 1 ELSE 0 END::bigint AS bypass_rls, \
                    (SELECT count(*) FROM pg_tables t WHERE t.schemaname = 'public' AND pg_has_role(r.rolname, t.tableowner, 'MEMBER'))::bigint AS owned_tables \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(check))
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

impl RoleCheck {
    pub fn can_bypass_rls(&self) -> bool {
        self.superuser != 0 || self.bypass_rls != 0 || self.owned_tables != 0
    }
}

/// Whether a database error is contention rather than a fault: SQLite `SQLITE_BUSY` (5) and
/// `SQLITE_LOCKED` (6) with their extended codes (`code & 0xff`), PostgreSQL `40001`
/// (serialization failure), `40P01` (deadlock) and `55P03` (lock not available).
pub fn is_contention(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else { return false };
    match code.as_ref() {
        "40001" | "40P01" | "55P03" => true,
        // SQLSTATEs are five characters; SQLite's (extended) result codes are below 10,000.
        numeric if numeric.len() < 5 => numeric
            .parse::<i64>()
            .is_ok_and(|n| matches!(n & 0xff, 5 | 6)),
        _ => false,
    }
}

fn ensure_sqlite_dir(url: &str) -> anyhow::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

/// Makes the writers of one tenant's audit chain take turns inside their transactions, so each
/// appends after the head the one before it wrote. On SQLite `BEGIN IMMEDIATE` already
/// serializes every writer; on PostgreSQL it is a transaction-scoped advisory lock on the chain.
pub(in crate::platform) async fn lock_audit_chain(
    tx: &mut TenantTx,
    backend: Backend,
    clinic: &ClinicId,
) -> sqlx::Result<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 AS locked FROM pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind(format!("audit:{clinic}"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
