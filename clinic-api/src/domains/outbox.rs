//! The outbox of patient messages (post-op check-ins, wound-photo prompts) and its delivery
//! worker.
//!
//! Completing an appointment writes its type's follow-up messages into `outbox_messages`, in the
//! same transaction. The worker claims due messages with a lease (so two workers never send the
//! same message at once, and a worker that died is replaced once its lease runs out), hands each
//! to a [`Channel`] with the message id as the idempotency key, then marks it sent; a failure is
//! retried with exponential backoff, up to a limit. The portal channel writes into the patient's
//! portal mailbox keyed by the message id, so a redelivery after a crash cannot make a second
//! copy: each due message reaches the patient exactly once. Email and SMS adapters implement the
//! same trait and pass the id to their provider as its idempotency key.
//!
//! Message text is generic (a prompt and a portal link): no name, condition, procedure or date.

use std::future::Future;
use std::pin::Pin;

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use chrono::Duration;
use chrono_tz::Tz;
use serde::Serialize;

use crate::domains::scheduling::FollowupRule;
use crate::domains::scheduling::time;
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission, Policy, Routes};
use crate::platform::clock::rfc3339;
use crate::platform::db::{Db, TenantTx};
use crate::platform::error::{ApiError, ApiResult};
use crate::platform::ids::ClinicId;
use crate::platform::state::AppState;

/// Where a message stands. Stored as its snake_case name in `outbox_messages.status`, whose CHECK
/// constraint lists the same names (tested against both migrations).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString, strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for its due time, or for its next attempt after a failure.
    Pending,
    /// Delivered; final.
    Sent,
    /// Gave up after the last allowed attempt; final.
    Failed,
    /// Its appointment was cancelled or moved before it was due; final.
    Cancelled,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<OutboxState> {
        s.parse().ok()
    }

    /// What one delivery attempt (the `attempts`-th, of at most `max_attempts`) leaves a pending
    /// message in: sent, pending again (a retry after [`backoff_ms`]) or failed for good.
    pub fn after_attempt(delivered: bool, attempts: i64, max_attempts: i64) -> OutboxState {
        match (delivered, attempts >= max_attempts) {
            (true, _) => OutboxState::Sent,
            (false, true) => OutboxState::Failed,
            (false, false) => OutboxState::Pending,
        }
    }
}

/// A message to deliver.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutboxMessage {
    pub id: String,
    pub clinic_id: String,
    pub patient_id: String,
    pub kind: String,
    pub channel: String,
    pub body: String,
    pub link: String,
    pub attempts: i64,
}

pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A way to reach patients. `deliver` must be idempotent on `msg.id`.
pub trait Channel: Send + Sync {
    fn name(&self) -> &'static str;
    fn deliver<'a>(&'a self, db: &'a Db, msg: &'a OutboxMessage) -> DeliveryFuture<'a>;
}

/// The default channel: the patient portal's mailbox.
pub struct PortalChannel;

impl Channel for PortalChannel {
    fn name(&self) -> &'static str {
        "portal"
    }

    fn deliver<'a>(&'a self, db: &'a Db, msg: &'a OutboxMessage) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let clinic = ClinicId::from_trusted(msg.clinic_id.clone());
            let result: sqlx::Result<()> = async {
                let now = chrono::Utc::now().timestamp_millis();
                let mut tx = db.tenant_tx(&clinic, now).await?;
                // Keyed by the outbox id: a second delivery of the same message adds nothing.
                sqlx::query(
                    "INSERT INTO portal_messages (id, clinic_id, patient_id, kind, body, link, delivered_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&msg.id)
                .bind(&msg.clinic_id)
                .bind(&msg.patient_id)
                .bind(&msg.kind)
                .bind(&msg.body)
                .bind(&msg.link)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
            .await;
            result.map_err(|e| format!("portal mailbox: {}", std::any::type_name_of_val(&e)))
        })
    }
}

/// The generic text of each kind: nothing about the patient or the visit.
pub fn text_of(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "photo_prompt" => (
            "Your care team has asked for a new photo. Please open your patient portal to add it.",
            "/photos",
        ),
        _ => (
            "Your care team would like to hear how you are doing. Please open your patient portal.",
            "/",
        ),
    }
}

/// Local hour at which follow-up messages become due (not in the middle of the night).
const SEND_HOUR_MIN: i64 = 10 * 60;

/// Writes the follow-up messages of a completed appointment.
#[allow(clippy::too_many_arguments)]
pub async fn schedule_followups(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    patient: &str,
    appointment: &str,
    tz: Tz,
    starts_at: i64,
    rules: &[FollowupRule],
    now: i64,
) -> sqlx::Result<()> {
    let day = time::local_date(tz, starts_at);
    for rule in rules {
        let due = time::resolve(
            tz,
            day + Duration::days(rule.after_days),
            SEND_HOUR_MIN,
            false,
        );
        let (body, link) = text_of(&rule.kind);
        sqlx::query(
            "INSERT INTO outbox_messages (id, clinic_id, patient_id, appointment_id, kind, channel, body, link, due_at, status, attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'portal', $6, $7, $8, $9, 0, $8, $10)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(clinic.as_str())
        .bind(patient)
        .bind(appointment)
        .bind(&rule.kind)
        .bind(body)
        .bind(link)
        .bind(due)
        .bind(OutboxState::Pending.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Cancels the pending messages of an appointment.
pub async fn cancel_for(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    appointment: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE outbox_messages SET status = $1 WHERE clinic_id = $2 AND appointment_id = $3 AND status = $4")
        .bind(OutboxState::Cancelled.as_str())
        .bind(clinic.as_str())
        .bind(appointment)
        .bind(OutboxState::Pending.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// How the worker runs.
#[derive(Clone, Copy, Debug)]
pub struct WorkerConfig {
    pub lease_ms: i64,
    pub max_attempts: i64,
    pub batch: i64,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
}

/// The wait before attempt `attempts + 1`: 30 s doubling, at most an hour.
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = (attempts - 1).clamp(0, 7) as u32;
    (30_000i64 << exp).min(3_600_000)
}

/// Claims up to `batch` due messages of one tenant: a lease that no other worker takes over
/// until it runs out.
async fn claim(
    db: &Db,
    clinic: &ClinicId,
    now: i64,
    cfg: &WorkerConfig,
) -> sqlx::Result<Vec<OutboxMessage>> {
    let mut tx = db.tenant_tx(clinic, now).await?;
    let due: Vec<OutboxMessage> = sqlx::query_as(
        "SELECT id, clinic_id, patient_id, kind, channel, body, link, attempts FROM outbox_messages \
         WHERE clinic_id = $1 AND status = $2 AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until <= $3) \
         ORDER BY next_attempt_at, id LIMIT $4",
    )
    .bind(clinic.as_str())
    .bind(OutboxState::Pending.as_str())
    .bind(now)
    .bind(cfg.batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut claimed = Vec::with_capacity(due.len());
    for mut m in due {
        // Conditional on the lease still being free: of two workers, only one wins the row.
        let done = sqlx::query(
            "UPDATE outbox_messages SET lease_until = $1, attempts = attempts + 1 \
             WHERE id = $2 AND status = $3 AND (lease_until IS NULL OR lease_until <= $4)",
        )
        .bind(now + cfg.lease_ms)
        .bind(&m.id)
        .bind(OutboxState::Pending.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            m.attempts += 1;
            claimed.push(m);
        }
    }
    tx.commit().await?;
    Ok(claimed)
}

/// One pass over every tenant: delivers what is due at `now`.
pub async fn deliver_due(
    db: &Db,
    channel: &dyn Channel,
    now: i64,
    cfg: &WorkerConfig,
) -> anyhow::Result<DeliveryReport> {
    let mut report = DeliveryReport::default();
    for clinic in db.clinic_ids().await? {
        for msg in claim(db, &clinic, now, cfg).await? {
            let result = channel.deliver(db, &msg).await;
            let mut tx = db.tenant_tx(&clinic, now).await?;
            let error = result
                .err()
                .map(|e| e.chars().take(200).collect::<String>());
            let next = OutboxState::after_attempt(error.is_none(), msg.attempts, cfg.max_attempts);
            match next {
                OutboxState::Sent => report.sent += 1,
                OutboxState::Failed => {
                    tracing::warn!(message = %msg.id, attempts = msg.attempts, "outbox message failed for good");
                    report.failed += 1;
                }
                // An attempt never cancels (only `cancel_for` does): anything else is a retry.
                OutboxState::Pending | OutboxState::Cancelled => report.retried += 1,
            }
            let retry_at = (next == OutboxState::Pending).then(|| now + backoff_ms(msg.attempts));
            // One statement for every outcome: the lease is released, and a retry gets its time.
            sqlx::query(
                "UPDATE outbox_messages SET status = $1, lease_until = NULL, last_error = $2, \
                 sent_at = $3, next_attempt_at = COALESCE($4, next_attempt_at) WHERE id = $5",
            )
            .bind(next.as_str())
            .bind(error)
            .bind((next == OutboxState::Sent).then_some(now))
            .bind(retry_at)
            .bind(&msg.id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
    }
    Ok(report)
}

/// One pass of the outbox worker (a server job, every `scheduling.outbox_interval_secs`):
/// delivers what is due now through `channel`.
pub async fn worker_pass(state: &AppState, channel: &dyn Channel) {
    let cfg = WorkerConfig {
        lease_ms: state.config.scheduling.outbox_lease_secs * 1000,
        max_attempts: state.config.scheduling.outbox_max_attempts,
        batch: 100,
    };
    match deliver_due(&state.db, channel, state.clock.now_ms(), &cfg).await {
        Ok(r) if r != DeliveryReport::default() => {
            tracing::info!(
                sent = r.sent,
                retried = r.retried,
                failed = r.failed,
                "outbox pass"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "outbox pass failed"),
    }
}

// ---------------------------------------------------------------------------------------------
// The portal mailbox

#[derive(Serialize, sqlx::FromRow, schemars::JsonSchema)]
pub struct PortalMessageOut {
    pub id: String,
    pub kind: String,
    pub body: String,
    pub link: String,
    #[sqlx(skip)]
    pub delivered: String,
    #[serde(skip)]
    pub delivered_at: i64,
}

pub fn routes() -> Routes {
    Routes::new("messages").add(
        Method::GET,
        "/api/v1/me/messages",
        Policy::perm(Permission::OwnRecordsRead),
        "The patient's portal messages",
        list_own,
    )
}

async fn list_own(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<PortalMessageOut>>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let patient: Option<(String,)> =
        sqlx::query_as("SELECT id FROM patients WHERE user_id = $1 AND clinic_id = $2")
            .bind(caller.user_id.as_str())
            .bind(caller.clinic_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let (patient,) = patient.ok_or_else(|| ApiError::not_found("patient record"))?;
    let mut rows: Vec<PortalMessageOut> = sqlx::query_as(
        "SELECT id, kind, body, link, delivered_at FROM portal_messages WHERE clinic_id = $1 AND patient_id = $2 ORDER BY delivered_at DESC LIMIT 200",
    )
    .bind(caller.clinic_id.as_str())
    .bind(&patient)
    .fetch_all(&mut *tx)
    .await?;
    for r in &mut rows {
        r.delivered = rfc3339(r.delivered_at);
    }
    tx.audit(
        caller
            .event(Action::View, "portal_message")
            .patient(&patient)
            .detail(format!("n={}", rows.len())),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

#[cfg(test)]
mod tests {
    use strum::VariantArray;

    use super::*;

    #[test]
    fn states_round_trip_through_their_stored_names() {
        for &state in OutboxState::VARIANTS {
            assert_eq!(OutboxState::parse(state.as_str()), Some(state));
        }
        assert_eq!(OutboxState::Cancelled.as_str(), "cancelled");
        assert_eq!(OutboxState::parse("delivered"), None);
    }

    /// The CHECK constraint of both migrations allows exactly the enum's names.
    #[test]
    fn the_schema_allows_exactly_these_states() {
        let wanted: Vec<String> = OutboxState::VARIANTS
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        for sql in [
            include_str!("../../../migrations/sqlite/0004_scheduling.sql"),
            include_str!("../../../migrations/postgres/0004_scheduling.sql"),
        ] {
            let table = &sql[sql.find("CREATE TABLE outbox_messages").unwrap()..];
            let check = table.lines().find(|l| l.contains("status")).unwrap();
            let inside = &check[check.find("IN (").unwrap() + 4..check.rfind("))").unwrap()];
            let allowed: Vec<String> = inside.split(',').map(|s| s.trim().to_string()).collect();
            assert_eq!(allowed, wanted, "{check}");
        }
    }

    #[test]
    fn an_attempt_sends_retries_or_gives_up() {
        use OutboxState::*;
        assert_eq!(OutboxState::after_attempt(true, 1, 5), Sent);
        assert_eq!(OutboxState::after_attempt(true, 5, 5), Sent);
        assert_eq!(OutboxState::after_attempt(false, 1, 5), Pending);
        assert_eq!(OutboxState::after_attempt(false, 4, 5), Pending);
        assert_eq!(OutboxState::after_attempt(false, 5, 5), Failed);
        assert_eq!(OutboxState::after_attempt(false, 6, 5), Failed);
    }
}
