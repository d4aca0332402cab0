//! The audit log: append-only, one hash chain per tenant, signed checkpoints kept apart.
//!
//! Each event is written in the same transaction as the data it records ([`record`]); its hash is
//! `h_seq = SHA-256(h_{seq-1} ‖ canonical(event))`, with a single sequencer per tenant (an advisory
//! lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite). A chain alone cannot reveal that its newest
//! rows were deleted, so [`checkpoint`] appends Ed25519-signed `(tenant, seq, head)` lines to a
//! file kept outside the database, each line chained to the one before it and recorded in its
//! tenant's chain; [`verify`] checks each against the other.

use std::io::{BufRead, Write};
use std::path::Path;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::platform::authz::{Caller, Permission, Policy, Routes};
use crate::platform::clock::rfc3339;
use crate::platform::db::{self, Backend, Db, TenantTx};
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::ApiQuery;
use crate::platform::ids::ClinicId;
use crate::platform::keys::KeyRing;
use crate::platform::openapi::Content;
use crate::platform::state::AppState;

const GENESIS: [u8; 32] = [0u8; 32];

/// What was done. Stored as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Action {
    View,
    Create,
    Modify,
    Delete,
    Export,
    Share,
    Print,
    Sign,
    /// Reaching a route (recorded when refused).
    Access,
    Login,
    LoginFailed,
    Lockout,
    Logout,
    MfaEnroll,
    MfaVerify,
    MfaFailed,
    RecoveryCodeUsed,
    StepUp,
    PasswordChange,
    UserCreate,
    /// A one-time enrollment link issued for a new account.
    EnrollmentLinkIssue,
    /// An enrollment link used (the first password set), or refused.
    EnrollmentComplete,
    UserDisable,
    UserUnlock,
    MfaReset,
    LocationAssign,
    /// A checkpoint line was written for this tenant's chain (its hash is the resource id).
    Checkpoint,
}

impl Action {
    /// The stored name (snake_case, as serde writes it).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    /// The stored name (snake_case, as serde writes it).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One event to record. `detail` must not contain PHI (it is a route or a count, never a name).
#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub clinic_id: ClinicId,
    pub actor_id: Option<String>,
    pub actor_role: Option<String>,
    pub patient_id: Option<String>,
    pub resource_type: &'static str,
    pub resource_id: Option<String>,
    pub action: Action,
    pub outcome: Outcome,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    pub purpose: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
}

impl AuditEvent {
    pub fn new(clinic_id: ClinicId, action: Action, resource_type: &'static str) -> Self {
        Self {
            clinic_id,
            actor_id: None,
            actor_role: None,
            patient_id: None,
            resource_type,
            resource_id: None,
            action,
            outcome: Outcome::Success,
            ip: None,
            user_agent: None,
            session_id: None,
            purpose: None,
            reason: None,
            detail: None,
        }
    }
    pub fn patient(mut self, patient_id: impl ToString) -> Self {
        self.patient_id = Some(patient_id.to_string());
        self
    }
    pub fn resource(mut self, id: impl ToString) -> Self {
        self.resource_id = Some(id.to_string());
        self
    }
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// A stored event, as read back.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct AuditRow {
    pub clinic_id: String,
    pub seq: i64,
    pub at: i64,
    pub actor_id: Option<String>,
    pub actor_role: Option<String>,
    pub patient_id: Option<String>,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub session_id: Option<String>,
    pub purpose: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

const COLUMNS: &str = "clinic_id, seq, at, actor_id, actor_role, patient_id, resource_type, resource_id, action, \
     outcome, ip, user_agent, session_id, purpose, reason, detail, prev_hash, hash";

impl AuditRow {
    /// The canonical encoding hashed into the chain: a version tag, then every field in a fixed
    /// order, each as presence byte + big-endian u32 length + UTF-8 bytes.
    pub fn canonical(&self) -> Vec<u8> {
        let seq = self.seq.to_string();
        let at = self.at.to_string();
        let fields: [Option<&str>; 16] = [
            Some(&self.clinic_id),
            Some(&seq),
            Some(&at),
            self.actor_id.as_deref(),
            self.actor_role.as_deref(),
            self.patient_id.as_deref(),
            Some(&self.resource_type),
            self.resource_id.as_deref(),
            Some(&self.action),
            Some(&self.outcome),
            self.ip.as_deref(),
            self.user_agent.as_deref(),
            self.session_id.as_deref(),
            self.purpose.as_deref(),
            self.reason.as_deref(),
            self.detail.as_deref(),
        ];
        let mut out = b"clinic-audit-v1".to_vec();
        for f in fields {
            match f {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        out
    }

    /// The hash this row must carry, given its stored `prev_hash`.
    pub fn expected_hash(&self) -> String {
        chain_hash(&self.prev_hash, &self.canonical())
    }
}

fn chain_hash(prev_hex: &str, canonical: &[u8]) -> String {
    let prev = hex::decode(prev_hex).unwrap_or_else(|_| prev_hex.as_bytes().to_vec());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&prev);
    ctx.update(canonical);
    hex::encode(ctx.finish())
}

/// Appends `event` to its tenant's chain inside `tx` (the transaction of the data it records).
/// Domains record through [`TenantTx::audit`](crate::platform::tx::TenantTx::audit), which
/// supplies the backend and the transaction's one `now`.
pub(in crate::platform) async fn record(
    tx: &mut TenantTx,
    backend: Backend,
    now_ms: i64,
    event: AuditEvent,
) -> sqlx::Result<i64> {
    db::lock_audit_chain(tx, backend, &event.clinic_id).await?;
    let last: Option<(i64, String)> = sqlx::query_as(
        "SELECT seq, hash FROM audit_events WHERE clinic_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(event.clinic_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, hex::encode(GENESIS)),
    };
    let mut row = AuditRow {
        clinic_id: event.clinic_id.to_string(),
        seq,
        at: now_ms,
        actor_id: event.actor_id,
        actor_role: event.actor_role,
        patient_id: event.patient_id,
        resource_type: event.resource_type.to_string(),
        resource_id: event.resource_id,
        action: event.action.as_str().to_string(),
        outcome: event.outcome.as_str().to_string(),
        ip: event.ip,
        user_agent: event.user_agent,
        session_id: event.session_id,
        purpose: event.purpose,
        reason: event.reason,
        detail: event.detail,
        prev_hash,
        hash: String::new(),
    };
    row.hash = row.expected_hash();
    sqlx::query(&format!(
        "INSERT INTO audit_events ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18)"
    ))
    .bind(&row.clinic_id)
    .bind(row.seq)
    .bind(row.at)
    .bind(&row.actor_id)
    .bind(&row.actor_role)
    .bind(&row.patient_id)
    .bind(&row.resource_type)
    .bind(&row.resource_id)
    .bind(&row.action)
    .bind(&row.outcome)
    .bind(&row.ip)
    .bind(&row.user_agent)
    .bind(&row.session_id)
    .bind(&row.purpose)
    .bind(&row.reason)
    .bind(&row.detail)
    .bind(&row.prev_hash)
    .bind(&row.hash)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

/// Records `event` in a transaction of its own (events that must survive the request failing:
/// refused logins, lockouts, denials).
pub async fn record_now(state: &AppState, event: AuditEvent) -> sqlx::Result<i64> {
    let mut tx = state.tx(&event.clinic_id).await?;
    let seq = record(&mut tx, state.db.backend, state.clock.now_ms(), event).await?;
    tx.commit().await?;
    Ok(seq)
}

// ---------------------------------------------------------------------------------------------
// Checkpoints and verification

/// One signed checkpoint line.
///
/// Lines are chained: `prev` is the SHA-256 of the previous line's exact text (zeros for the
/// first line) and is covered by the signature, so a line deleted from the middle, or lines
/// reordered, break the chain at the next line. Deleting the newest lines leaves a chain that is
/// consistent in itself; each tenant's audit log therefore records every line written for it (a
/// `checkpoint` event naming the line's hash), and [`verify`] looks each such line up in the file.
///
/// Files written before chaining hold v1 lines (no `prev`). They still verify one by one; a v1
/// line may only come before the first chained line, and the first chained line links to the
/// last v1 line, so old files need no migration (but deletions among their v1 lines stay
/// invisible, as they were).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub clinic_id: String,
    pub seq: i64,
    pub head: String,
    pub at: i64,
    pub key_id: String,
    /// Hex Ed25519 public key, for outside verifiers; [`verify`] checks against the key ring.
    pub public_key: String,
    /// Hex SHA-256 of the previous line's text; absent in v1 (unchained) lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    pub signature: String,
}

impl Checkpoint {
    fn message(&self) -> Vec<u8> {
        let Checkpoint {
            clinic_id,
            seq,
            head,
            at,
            ..
        } = self;
        match &self.prev {
            None => format!("clinic-audit-checkpoint/v1|{clinic_id}|{seq}|{head}|{at}"),
            Some(prev) => {
                format!("clinic-audit-checkpoint/v2|{clinic_id}|{seq}|{head}|{at}|{prev}")
            }
        }
        .into_bytes()
    }
}

/// What a tenant's audit log records about a checkpoint line: `resource_type`, and the line's
/// hash as `resource_id`.
const CHECKPOINT_RESOURCE: &str = "audit_checkpoint";

fn line_hash(line: &str) -> String {
    crate::platform::keys::sha256_hex(line.as_bytes())
}

/// Appends one signed checkpoint per tenant (its chain's current head), chained to the file's
/// last line, fsyncs the file, then records each line in its tenant's audit log. `keys` is the
/// checkpoint signing ring (`Config::checkpoint_key_file`).
pub async fn checkpoint(
    db: &Db,
    keys: &KeyRing,
    now_ms: i64,
    path: &Path,
) -> anyhow::Result<Vec<Checkpoint>> {
    let heads = db.audit_heads().await?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    // Two writers (the server's job and `clinic audit checkpoint`) would both link to the same
    // last line and fork the chain; the lock serialises them. Released when `file` closes.
    file.lock()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text)?;
    let mut prev = text
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .map_or_else(|| hex::encode(GENESIS), line_hash);
    let mut written = Vec::new();
    let mut lines = Vec::new();
    for (clinic_id, seq, head) in heads {
        let mut cp = Checkpoint {
            clinic_id,
            seq,
            head,
            at: now_ms,
            key_id: String::new(),
            public_key: String::new(),
            prev: Some(prev.clone()),
            signature: String::new(),
        };
        let (key_id, public_key, sig) = keys.sign_checkpoint(&cp.message());
        cp.key_id = key_id;
        cp.public_key = hex::encode(public_key);
        cp.signature = hex::encode(sig);
        let line = serde_json::to_string(&cp)?;
        prev = line_hash(&line);
        lines.push(line);
        written.push(cp);
    }
    let mut out = String::new();
    for line in &lines {
        out.push_str(line);
        out.push('\n');
    }
    file.write_all(out.as_bytes())?;
    file.sync_all()?;
    drop(file);
    // After the fsync: a recorded line is always in the file (a line whose record failed is
    // merely not cross-checked).
    for (cp, line) in written.iter().zip(&lines) {
        let clinic = ClinicId::from_trusted(cp.clinic_id.clone());
        let mut tx = db.tenant_tx(&clinic, now_ms).await?;
        let mut event = AuditEvent::new(clinic, Action::Checkpoint, CHECKPOINT_RESOURCE)
            .resource(line_hash(line))
            .detail(format!("seq {}", cp.seq));
        event.purpose = Some("operations".into());
        tx.audit(event).await?;
        tx.commit().await?;
    }
    Ok(written)
}

/// What verification found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The row's content does not match its hash: edited, or moved from another position.
    Edited { clinic_id: String, seq: i64 },
    /// The row does not link to the row before it: rows deleted or reordered.
    BrokenLink { clinic_id: String, seq: i64 },
    /// Sequence numbers skip: rows deleted.
    Missing {
        clinic_id: String,
        from_seq: i64,
        to_seq: i64,
    },
    /// The chain ends before a signed checkpoint: its tail was deleted.
    Truncated {
        clinic_id: String,
        checkpoint_seq: i64,
        last_seq: i64,
    },
    /// The row a checkpoint names has another hash than the one signed.
    CheckpointMismatch { clinic_id: String, seq: i64 },
    /// A checkpoint line whose signature does not verify (or cannot be parsed).
    BadCheckpoint { line: usize },
    /// Audit events exist but the checkpoint file is missing or holds no line: nothing vouches
    /// for the chains' tails.
    NoCheckpoints { events: u64, file: String },
    /// A checkpoint line does not link to the line before it: lines deleted, reordered or
    /// inserted.
    CheckpointChainBroken { line: usize },
    /// A tenant's log records a checkpoint line the file does not hold: the file was truncated
    /// or replaced.
    CheckpointLineMissing { clinic_id: String, seq: i64 },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Edited { clinic_id, seq } => write!(
                f,
                "clinic {clinic_id}: event {seq} was edited (content does not match its hash)"
            ),
            Problem::BrokenLink { clinic_id, seq } => write!(
                f,
                "clinic {clinic_id}: event {seq} does not link to the event before it (rows deleted or reordered)"
            ),
            Problem::Missing {
                clinic_id,
                from_seq,
                to_seq,
            } => write!(
                f,
                "clinic {clinic_id}: events {from_seq}..={to_seq} are missing (deleted)"
            ),
            Problem::Truncated {
                clinic_id,
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "clinic {clinic_id}: chain ends at {last_seq} but a signed checkpoint names {checkpoint_seq} (tail deleted)"
            ),
            Problem::CheckpointMismatch { clinic_id, seq } => write!(
                f,
                "clinic {clinic_id}: event {seq} differs from the signed checkpoint"
            ),
            Problem::BadCheckpoint { line } => {
                write!(f, "checkpoint line {line} has an invalid signature")
            }
            Problem::NoCheckpoints { events, file } => write!(
                f,
                "{events} audit events but the checkpoint file {file} is missing or empty \
                 (deleted, or never written: restore it, or run `clinic audit checkpoint` on a new install)"
            ),
            Problem::CheckpointChainBroken { line } => write!(
                f,
                "checkpoint line {line} does not link to the line before it (lines deleted, reordered or inserted)"
            ),
            Problem::CheckpointLineMissing { clinic_id, seq } => write!(
                f,
                "clinic {clinic_id}: event {seq} records a checkpoint line the checkpoint file does not hold (file truncated or replaced)"
            ),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub clinics: usize,
    pub events: u64,
    pub checkpoints: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies every tenant's chain and the checkpoint file against each other. `keys` is the
/// checkpoint signing ring. Needs a connection that sees all tenants (the admin/owner connection
/// on PostgreSQL).
pub async fn verify(
    db: &Db,
    keys: &KeyRing,
    checkpoint_file: &Path,
) -> anyhow::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let (checkpoints, line_hashes, lines) = read_checkpoints(keys, checkpoint_file, &mut report)?;
    report.checkpoints = checkpoints.len();
    let clinics: Vec<(String,)> = sqlx::query_as("SELECT id FROM clinics ORDER BY id")
        .fetch_all(&db.pool)
        .await?;
    report.clinics = clinics.len();
    for (clinic_id,) in clinics {
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE clinic_id = $1 ORDER BY seq"
        ))
        .bind(&clinic_id)
        .fetch_all(&db.pool)
        .await?;
        report.events += rows.len() as u64;
        let mut expected_seq = 1;
        let mut prev = hex::encode(GENESIS);
        for row in &rows {
            if row.seq != expected_seq {
                report.problems.push(Problem::Missing {
                    clinic_id: clinic_id.clone(),
                    from_seq: expected_seq,
                    to_seq: row.seq - 1,
                });
            }
            if row.expected_hash() != row.hash {
                report.problems.push(Problem::Edited {
                    clinic_id: clinic_id.clone(),
                    seq: row.seq,
                });
            }
            if row.prev_hash != prev {
                report.problems.push(Problem::BrokenLink {
                    clinic_id: clinic_id.clone(),
                    seq: row.seq,
                });
            }
            let records_line = row.action == Action::Checkpoint.as_str()
                && row.resource_type == CHECKPOINT_RESOURCE;
            if records_line
                && lines > 0
                && !row
                    .resource_id
                    .as_ref()
                    .is_some_and(|h| line_hashes.contains(h))
            {
                report.problems.push(Problem::CheckpointLineMissing {
                    clinic_id: clinic_id.clone(),
                    seq: row.seq,
                });
            }
            prev = row.hash.clone();
            expected_seq = row.seq + 1;
        }
        let last_seq = rows.last().map_or(0, |r| r.seq);
        let mut latest: Option<&Checkpoint> = None;
        for cp in checkpoints.iter().filter(|c| c.clinic_id == clinic_id) {
            match rows.iter().find(|r| r.seq == cp.seq) {
                Some(r) if r.hash != cp.head => report.problems.push(Problem::CheckpointMismatch {
                    clinic_id: clinic_id.clone(),
                    seq: cp.seq,
                }),
                _ => {}
            }
            if latest.is_none_or(|l| cp.seq > l.seq) {
                latest = Some(cp);
            }
        }
        if let Some(cp) = latest
            && last_seq < cp.seq
        {
            report.problems.push(Problem::Truncated {
                clinic_id: clinic_id.clone(),
                checkpoint_seq: cp.seq,
                last_seq,
            });
        }
    }
    // An empty file is reported once, not as every recorded line missing from it.
    if lines == 0 && report.events > 0 {
        report.problems.insert(
            0,
            Problem::NoCheckpoints {
                events: report.events,
                file: checkpoint_file.display().to_string(),
            },
        );
    }
    Ok(report)
}

/// The file's validly signed lines, the hashes of those lines, and how many non-blank lines it
/// has; signature and chain problems go into `report`.
fn read_checkpoints(
    keys: &KeyRing,
    path: &Path,
    report: &mut VerifyReport,
) -> anyhow::Result<(Vec<Checkpoint>, std::collections::HashSet<String>, usize)> {
    let mut out = Vec::new();
    let mut hashes = std::collections::HashSet::new();
    let mut lines = 0;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, hashes, 0)),
        Err(e) => return Err(e.into()),
    };
    let mut expected_prev = hex::encode(GENESIS);
    let mut chained = false;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let hash = line_hash(&line);
        let parsed = serde_json::from_str::<Checkpoint>(&line).ok();
        let valid = parsed.filter(|cp| {
            hex::decode(&cp.signature).is_ok_and(|sig| {
                keys.verify_checkpoint(&cp.key_id, &cp.message(), &sig)
                    .is_ok()
            })
        });
        match valid {
            Some(cp) => {
                // A v1 line is only accepted before the first chained one (an old file's
                // prefix); after it, an unchained line is an insertion.
                let links = match &cp.prev {
                    Some(p) => *p == expected_prev,
                    None => !chained,
                };
                if !links {
                    report
                        .problems
                        .push(Problem::CheckpointChainBroken { line: i + 1 });
                }
                chained |= cp.prev.is_some();
                hashes.insert(hash.clone());
                out.push(cp);
            }
            None => report.problems.push(Problem::BadCheckpoint { line: i + 1 }),
        }
        // Link the next line to this one whatever it is, so one break is reported once.
        expected_prev = hash;
    }
    Ok((out, hashes, lines))
}

// ---------------------------------------------------------------------------------------------
// Routes: owners and admins read and filter the log; exporting it is sensitive and itself audited.

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub patient_id: Option<String>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// RFC 3339 lower bound (inclusive).
    pub from: Option<String>,
    /// RFC 3339 upper bound (exclusive).
    pub to: Option<String>,
    /// Only events with a lower sequence number (paging backwards).
    pub before_seq: Option<i64>,
    /// At most this many events (default 100, at most 1000).
    pub limit: Option<i64>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct AuditEventOut {
    #[serde(flatten)]
    pub row: AuditRow,
    pub time: String,
}

pub fn routes() -> Routes {
    Routes::new("audit")
        .add(
            Method::GET,
            "/api/v1/audit",
            Policy::perm(Permission::AuditRead),
            "List audit events, newest first, with filters",
            list,
        )
        .query::<AuditQuery>()
        .add(
            Method::GET,
            "/api/v1/audit/export",
            Policy::sensitive(Permission::AuditExport),
            "Export audit events as NDJSON (step-up; audited as an export)",
            export,
        )
        .query::<AuditQuery>()
        .responds(StatusCode::OK, Content::Media("application/x-ndjson"))
}

fn parse_time(s: &Option<String>, field: &str) -> ApiResult<Option<i64>> {
    s.as_ref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.timestamp_millis())
                .map_err(|_| {
                    ApiError::unprocessable(
                        ErrorCode::InvalidQuery,
                        format!("{field} must be an RFC 3339 time"),
                    )
                })
        })
        .transpose()
}

async fn query_events(
    state: &AppState,
    caller: &Caller,
    q: &AuditQuery,
    max: i64,
) -> ApiResult<Vec<AuditRow>> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE clinic_id = $1");
    let mut binds: Vec<Bind> = vec![Bind::Text(caller.clinic_id.to_string())];
    let mut push = |clause: &str, b: Bind| {
        binds.push(b);
        sql.push_str(&format!(" AND {clause} ${}", binds.len()));
    };
    if let Some(v) = &q.patient_id {
        push("patient_id =", Bind::Text(v.clone()));
    }
    if let Some(v) = &q.actor_id {
        push("actor_id =", Bind::Text(v.clone()));
    }
    if let Some(v) = &q.action {
        push("action =", Bind::Text(v.clone()));
    }
    if let Some(v) = &q.outcome {
        push("outcome =", Bind::Text(v.clone()));
    }
    if let Some(v) = parse_time(&q.from, "from")? {
        push("at >=", Bind::Int(v));
    }
    if let Some(v) = parse_time(&q.to, "to")? {
        push("at <", Bind::Int(v));
    }
    if let Some(v) = q.before_seq {
        push("seq <", Bind::Int(v));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, max);
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT {limit}"));
    let mut query = sqlx::query_as::<_, AuditRow>(&sql);
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s),
            Bind::Int(i) => query.bind(i),
        };
    }
    let mut tx = state.tx(&caller.clinic_id).await?;
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

enum Bind {
    Text(String),
    Int(i64),
}

async fn list(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<axum::Json<Vec<AuditEventOut>>> {
    let rows = query_events(&state, &caller, &q, 1000).await?;
    record_now(
        &state,
        caller
            .event(Action::View, "audit_log")
            .detail(format!("{} events", rows.len())),
    )
    .await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|row| AuditEventOut {
                time: rfc3339(row.at),
                row,
            })
            .collect(),
    ))
}

async fn export(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Response> {
    let rows = query_events(&state, &caller, &q, 100_000).await?;
    record_now(
        &state,
        caller
            .event(Action::Export, "audit_log")
            .detail(format!("{} events", rows.len())),
    )
    .await?;
    let mut body = String::new();
    for row in rows {
        body.push_str(
            &serde_json::to_string(&AuditEventOut {
                time: rfc3339(row.at),
                row,
            })
            .map_err(anyhow::Error::from)?,
        );
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
