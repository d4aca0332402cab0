//! The one typed configuration, loaded once: built-in defaults, then an optional TOML file, then
//! `CLINIC_*` environment variables (nested keys with `__`, e.g. `CLINIC_SESSIONS__IDLE_TIMEOUT_SECS`),
//! then `DATABASE_URL`. Passed down by value; nothing else reads the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root of embedded state: SQLite database, blobs, key file, audit checkpoints.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub blobs: BlobConfig,
    pub keys: KeyConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    pub sessions: SessionConfig,
    pub login: LoginConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub sfu: SfuConfig,
    pub imaging: ImagingConfig,
    pub scheduling: SchedulingConfig,
}

/// Scheduling: slot granularity, holds, the telemedicine join window, and the message outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingConfig {
    /// Open slots start on this grid (minutes from the availability block's start).
    pub slot_step_min: i64,
    /// How long a patient's hold on a slot lasts.
    pub hold_secs: i64,
    /// Join links of a telemedicine appointment work from this long before its start…
    pub join_early_secs: i64,
    /// …until this long after its end.
    pub join_late_secs: i64,
    /// How often the outbox worker looks for due messages (0: no worker).
    pub outbox_interval_secs: u64,
    /// A claimed message is retried by another worker after this long without an answer.
    pub outbox_lease_secs: i64,
    /// Delivery attempts before a message is marked failed.
    pub outbox_max_attempts: i64,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        Self {
            slot_step_min: 15,
            hold_secs: 300,
            join_early_secs: 15 * 60,
            join_late_secs: 30 * 60,
            outbox_interval_secs: 5,
            outbox_lease_secs: 60,
            outbox_max_attempts: 8,
        }
    }
}

/// Wound images: limits, where sealed objects go, which keys seal them, and tiering.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagingConfig {
    pub limits: imaging::Limits,
    /// `local` (the blob directory) or `s3`.
    pub store: StoreKind,
    /// `local` (the key file) or `kms`.
    pub keys: KeyProviderKind,
    pub s3: S3Config,
    pub kms: KmsConfig,
    pub tiers: imaging::tiering::TierPolicy,
    /// How often the server applies the tier policy (0: never; `clinic imaging tier` still
    /// works).
    pub tier_interval_secs: u64,
    /// Lifetime of a signed image URL (thumbnails and previews).
    pub url_ttl_secs: i64,
    /// Lifetime of a signed URL for an original (an export).
    pub export_url_ttl_secs: i64,
    /// Objects no image refers to are removed by the tier job once this old.
    pub orphan_grace_secs: u64,
    /// Uploads decoded and resized at once (0: one per core). Further uploads of a burst wait
    /// their turn with their (compressed) bytes, so memory stays bounded: a 12 MP photo needs
    /// about 100 MB while it is being processed.
    pub max_parallel: usize,
    /// Upload bytes held in memory at once, across all uploads (at least `limits.max_bytes`).
    /// An upload reserves its Content-Length (or `limits.max_bytes` when it sends none) before
    /// its body is read, and keeps it until it is stored; past the cap, uploads wait their turn
    /// and their bytes stay in the network's buffers.
    pub max_inflight_bytes: u64,
    /// An upload that sends no data for this long is refused with 408 (and its reservation of
    /// `max_inflight_bytes` is given back).
    pub upload_idle_secs: u64,
    /// An upload's body must have arrived within this many seconds of its start (0: no
    /// deadline); past it, 408 `upload_too_slow`.
    pub upload_deadline_secs: u64,
    /// After `upload_rate_grace_secs`, an upload must average at least this many bytes a second
    /// (0: no minimum); a trickle is cut off with 408 `upload_too_slow`.
    pub upload_min_bytes_per_sec: u64,
    pub upload_rate_grace_secs: u64,
    /// Uploads one user has in progress at once (0: no limit); the rest of their burst waits,
    /// holding no memory.
    pub uploads_per_user: usize,
    /// How long an upload may wait for its user's turn and for memory together: then 429
    /// `too_many_uploads` or 503 `upload_busy`, with Retry-After.
    pub upload_wait_secs: u64,
    /// Bytes a patient account may upload in any 24 hours (0: no limit); past it, 429
    /// `upload_quota`.
    pub patient_daily_upload_bytes: u64,
    /// The same for staff accounts.
    pub staff_daily_upload_bytes: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Local,
    S3,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyProviderKind {
    Local,
    Kms,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:9000` for a local server; default: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Static credentials; without them the default AWS chain (environment, profile, instance
    /// role) is used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub bucket: String,
    /// Prepended to `<tenant>/<key>`.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), as local S3 servers need.
    pub force_path_style: bool,
    /// SSE-KMS on top of our own envelope encryption, with this KMS key.
    pub sse_kms_key_id: Option<String>,
    /// Whether the server supports storage classes (tiering moves need them).
    pub storage_classes: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            bucket: "clinic-images".into(),
            prefix: "images/".into(),
            force_path_style: false,
            sse_kms_key_id: None,
            storage_classes: true,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsConfig {
    /// e.g. `http://127.0.0.1:9000` for a local server; default: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Static credentials; without them the default AWS chain (environment, profile, instance
    /// role) is used.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// The KMS key (id, ARN or alias) that wraps data keys.
    pub key_id: String,
    /// Unwrapped data keys kept in memory, and for how long.
    pub cache_entries: usize,
    pub cache_ttl_secs: u64,
}

impl Default for KmsConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            key_id: String::new(),
            cache_entries: 4096,
            cache_ttl_secs: 300,
        }
    }
}

impl Default for ImagingConfig {
    fn default() -> Self {
        Self {
            limits: imaging::Limits::default(),
            store: StoreKind::Local,
            keys: KeyProviderKind::Local,
            s3: S3Config::default(),
            kms: KmsConfig::default(),
            tiers: imaging::tiering::TierPolicy::default(),
            tier_interval_secs: 3600,
            url_ttl_secs: 300,
            export_url_ttl_secs: 60,
            orphan_grace_secs: 86_400,
            max_parallel: 0,
            max_inflight_bytes: 256 * 1024 * 1024,
            upload_idle_secs: 30,
            upload_deadline_secs: 900,
            upload_min_bytes_per_sec: 1024,
            upload_rate_grace_secs: 10,
            uploads_per_user: 4,
            upload_wait_secs: 60,
            patient_daily_upload_bytes: 512 * 1024 * 1024,
            staff_daily_upload_bytes: 32 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SfuConfig {
    /// Address of the media workers' UDP sockets; port 0 picks free ports, a port p gives
    /// workers p, p+1, …. Browsers must reach this address.
    pub udp_bind: SocketAddr,
    /// Media worker threads (each one UDP port); 0 means one per core.
    pub workers: usize,
    /// Offer ICE-TCP (RFC 4571), for networks that block UDP.
    pub ice_tcp: bool,
    /// ICE-TCP listeners' address; port 0 picks free ports, a port p gives workers p, p+1, ….
    pub tcp_bind: SocketAddr,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 0,
            ice_tcp: true,
            tcp_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`; default: SQLite at `<data_dir>/clinic.db`.
    pub url: Option<String>,
    /// PostgreSQL only: a connection that owns the schema, used by migrations and by the
    /// operator commands (`audit verify`, `access-review`). Default: `url`.
    pub admin_url: Option<String>,
    /// PostgreSQL only: the role the server's queries run as (`SET ROLE` after connecting when
    /// the login role is not already it). It must not own tables, be superuser or bypass RLS.
    pub app_role: String,
    pub max_connections: u32,
    /// SQLite only: how long a connection waits for another process's write lock (the
    /// server's own writers queue in turn before they begin, see `write_wait_ms`).
    pub busy_timeout_ms: u64,
    /// SQLite only: how long a request waits for its turn to write before answering 503 with
    /// Retry-After (the server's writers take turns in arrival order, one at a time).
    pub write_wait_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BlobConfig {
    /// Default: `<data_dir>/blobs`.
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// Local key file (created with mode 0600 on first run). Default: `<data_dir>/keys.json`.
    pub file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Where signed checkpoints are appended; keep it on other storage than the database.
    /// Default: `<data_dir>/audit-checkpoints.jsonl`.
    pub checkpoint_file: Option<PathBuf>,
    /// The key file that signs checkpoints (same format as `keys.file`, mode 0600, created on
    /// first use). Put it on other storage than the data directory, so whoever can rewrite the
    /// database and the checkpoint file still cannot sign a new checkpoint. Default: the main
    /// key file (`keys.file`).
    pub checkpoint_key_path: Option<PathBuf>,
    /// How often the server writes a checkpoint (0: never; `clinic audit checkpoint` still
    /// works).
    pub checkpoint_interval_secs: u64,
}

/// Who may scrape `/metrics`. Route templates and counts are not PHI, but they map the practice's
/// activity, so the main listener never serves them to anonymous callers.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// The bearer token a scraper sends (`Authorization: Bearer …`), compared in constant time.
    /// Unset: `/metrics` answers 404 (off).
    pub token: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    pub idle_timeout_secs: i64,
    pub absolute_lifetime_secs: i64,
    /// How recent an MFA check must be for routes marked sensitive.
    pub step_up_window_secs: i64,
    /// `always`, the only value. The cookie is `__Host-` prefixed, which browsers accept only
    /// with `Secure`; they also accept `Secure` cookies from http://localhost and
    /// http://127.0.0.1 (potentially trustworthy origins), so plain-HTTP local development needs
    /// no opt-out. The former `auto` dropped `Secure` on a loopback listener, which is wrong
    /// behind a TLS-terminating proxy on loopback; a file that still says `auto` is refused.
    pub secure_cookie: SecureCookie,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecureCookie {
    Always,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginConfig {
    /// Failures after which each further failure imposes an exponential wait.
    pub backoff_after: i64,
    /// Failures after which the account locks for `lock_secs`.
    pub lock_after: i64,
    pub lock_secs: i64,
    /// Sign-in attempts each client address may make a minute (a token bucket; 0: no limit).
    /// Generous: a practice's staff may share one address behind its router.
    pub per_ip_per_minute: u32,
    /// Sign-in attempts a minute per clinic and username, whether or not the account exists
    /// (0: no limit).
    pub per_account_per_minute: u32,
    /// How long a sign-in waits for one of the password checks (as many at once as the machine
    /// has cores) before answering 503 with Retry-After.
    pub check_wait_ms: u64,
    /// How long a new account's one-time enrollment link (set the first password) stays valid.
    pub enrollment_link_ttl_secs: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted JSON body.
    pub body_limit_bytes: usize,
    /// Largest number of concurrent connections (upgraded WebSockets included); past it, new
    /// connections wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// A request (other than the streaming routes: image uploads and files, the consult
    /// WebSocket) that has not been answered after this long gets 503.
    pub request_timeout_secs: u64,
    /// A request head must arrive within this long (a connection idle between requests is closed
    /// after it too).
    pub header_read_timeout_secs: u64,
    /// A request body (non-streaming routes) must arrive within this long, or 408.
    pub body_read_timeout_secs: u64,
    /// On shutdown, requests in flight get this long to finish before their connections close.
    pub drain_timeout_secs: u64,
    /// The server is reached over TLS (terminated by a proxy in front of it; it speaks plain
    /// HTTP itself): answers carry `Strict-Transport-Security`, and the server's own origin is
    /// `https://<Host>` (else `http://<Host>`) for the cross-site check.
    pub behind_tls: bool,
    /// Origins besides the server's own (`scheme://host[:port]`) whose pages may send
    /// state-changing requests (POST, PUT, PATCH, DELETE); any other `Origin` gets 403.
    pub allowed_origins: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info,clinic_api=debug`.
    pub filter: String,
    pub json: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: DatabaseConfig::default(),
            blobs: BlobConfig::default(),
            keys: KeyConfig::default(),
            audit: AuditConfig::default(),
            metrics: MetricsConfig::default(),
            sessions: SessionConfig::default(),
            login: LoginConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            sfu: SfuConfig::default(),
            imaging: ImagingConfig::default(),
            scheduling: SchedulingConfig::default(),
        }
    }
}

impl LoginConfig {
    /// How long a password check may wait for a free slot (`check_wait_ms`).
    pub fn check_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.check_wait_ms)
    }
}

impl DatabaseConfig {
    /// How the pool waits on contention.
    pub fn contention(&self) -> crate::platform::db::Contention {
        crate::platform::db::Contention {
            busy_timeout_ms: self.busy_timeout_ms,
            write_wait_ms: self.write_wait_ms,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            admin_url: None,
            app_role: "clinic_app".into(),
            max_connections: 16,
            busy_timeout_ms: 5_000,
            write_wait_ms: 5_000,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_file: None,
            checkpoint_key_path: None,
            checkpoint_interval_secs: 24 * 3600,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 15 * 60,
            absolute_lifetime_secs: 12 * 3600,
            step_up_window_secs: 5 * 60,
            secure_cookie: SecureCookie::Always,
        }
    }
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            backoff_after: 3,
            lock_after: 6,
            lock_secs: 15 * 60,
            per_ip_per_minute: 120,
            per_account_per_minute: 30,
            check_wait_ms: 5_000,
            enrollment_link_ttl_secs: 72 * 3600,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 64 * 1024,
            max_connections: 1024,
            request_timeout_secs: 30,
            header_read_timeout_secs: 15,
            body_read_timeout_secs: 15,
            drain_timeout_secs: 20,
            behind_tls: false,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            json: false,
        }
    }
}

impl Config {
    /// Defaults, then the TOML file (if given), then `CLINIC_*` variables, then `DATABASE_URL`.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment passed in (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(
                path.exists(),
                "configuration file {} does not exist",
                path.display()
            );
            fig = fig.merge(Toml::file(path));
        }
        // Like figment's `Env` provider (values parsed the same way), but over the given pairs.
        let overrides: Vec<(String, String)> = env
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("CLINIC_")
                    .map(|rest| (rest.to_ascii_lowercase(), v.clone()))
            })
            .collect();
        for (key, value) in overrides {
            let path = key.replace("__", ".");
            let parsed: figment::value::Value = value
                .parse::<figment::value::Value>()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()));
            fig = fig.merge(Serialized::default(&path, parsed));
        }
        if let Some((_, url)) = env.iter().find(|(k, _)| k == "DATABASE_URL") {
            fig = fig.merge(Serialized::default("database.url", url));
        }
        let config: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        Ok(config)
    }

    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("clinic.db").display()
            )
        })
    }
    pub fn admin_database_url(&self) -> String {
        self.database
            .admin_url
            .clone()
            .unwrap_or_else(|| self.database_url())
    }
    pub fn blob_dir(&self) -> PathBuf {
        self.blobs
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs"))
    }
    pub fn key_file(&self) -> PathBuf {
        self.keys
            .file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys.json"))
    }
    pub fn checkpoint_file(&self) -> PathBuf {
        self.audit
            .checkpoint_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-checkpoints.jsonl"))
    }
    /// The key file whose ring signs and verifies audit checkpoints.
    pub fn checkpoint_key_file(&self) -> PathBuf {
        self.audit
            .checkpoint_key_path
            .clone()
            .unwrap_or_else(|| self.key_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_embedded() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.database_url().starts_with("sqlite://./data/clinic.db"));
        assert_eq!(c.blob_dir(), PathBuf::from("./data/blobs"));
        assert_eq!(c.sessions.idle_timeout_secs, 900);
        assert_eq!(c.sessions.secure_cookie, SecureCookie::Always);
        assert!(!c.http.behind_tls);
    }

    #[test]
    fn file_then_env_then_database_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clinic.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\n[sessions]\nidle_timeout_secs = 60\n",
        )
        .unwrap();
        let c = Config::load_from(
            Some(&file),
            env(&[
                ("CLINIC_SESSIONS__IDLE_TIMEOUT_SECS", "120"),
                ("CLINIC_LOG__JSON", "true"),
                ("DATABASE_URL", "postgres://u@localhost/db"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.sessions.idle_timeout_secs, 120);
        assert!(c.log.json);
        assert_eq!(c.database_url(), "postgres://u@localhost/db");
    }

    #[test]
    fn the_former_auto_secure_cookie_is_refused() {
        let err = Config::load_from(None, env(&[("CLINIC_SESSIONS__SECURE_COOKIE", "auto")]))
            .unwrap_err();
        assert!(err.to_string().contains("always"), "{err}");
    }

    #[test]
    fn checkpoint_key_defaults_to_the_key_file_and_can_move() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.checkpoint_key_file(), c.key_file());
        let c = Config::load_from(
            None,
            env(&[(
                "CLINIC_AUDIT__CHECKPOINT_KEY_PATH",
                "/secrets/checkpoint.json",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.checkpoint_key_file(),
            PathBuf::from("/secrets/checkpoint.json")
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::load_from(None, env(&[("CLINIC_NO_SUCH_KEY", "1")])).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }
}
