//! Appointment types: duration, buffer, modality, who may book them, and the follow-up messages
//! a completed appointment of the type schedules.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::time::Ms;
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Role};
use crate::platform::db::TenantTx;
use crate::platform::error::{ApiError, ApiResult, ErrorCode, OnConstraint};
use crate::platform::http::ApiJson;
use crate::platform::ids::ClinicId;
use crate::platform::state::AppState;

#[derive(sqlx::FromRow, Clone, Debug)]
pub(super) struct TypeRow {
    pub id: String,
    pub name: String,
    pub duration_min: i64,
    pub buffer_min: i64,
    pub modality: String,
    pub needs_room: i64,
    pub bookable_by: String,
    pub followups: String,
}

impl TypeRow {
    pub fn bookable_by(&self, role: Role) -> bool {
        self.bookable_by.split(',').any(|r| r == role.as_str())
    }
    pub fn duration(&self) -> Ms {
        self.duration_min * 60_000
    }
    pub fn buffer(&self) -> Ms {
        self.buffer_min * 60_000
    }
    pub fn followup_rules(&self) -> Vec<FollowupRule> {
        serde_json::from_str(&self.followups).unwrap_or_default()
    }
}

const TYPE_COLUMNS: &str =
    "id, name, duration_min, buffer_min, modality, needs_room, bookable_by, followups";

/// A message the practice sends some days after an appointment of a type is completed.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowupRule {
    /// Days after the appointment (1 to 365).
    pub after_days: i64,
    /// `checkin` (how are you doing) or `photo_prompt` (please upload a wound photo).
    pub kind: String,
}

pub(super) async fn load_type(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    id: &str,
) -> ApiResult<TypeRow> {
    let row: Option<TypeRow> = sqlx::query_as(&format!(
        "SELECT {TYPE_COLUMNS} FROM appointment_types WHERE id = $1 AND clinic_id = $2 AND disabled_at IS NULL"
    ))
    .bind(id)
    .bind(clinic.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    row.ok_or_else(|| {
        ApiError::unprocessable(
            ErrorCode::UnknownType,
            "that appointment type does not exist",
        )
    })
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateType {
    pub name: String,
    pub duration_min: i64,
    #[serde(default)]
    pub buffer_min: i64,
    /// `in_person` or `telemedicine`.
    pub modality: String,
    /// Whether a room or chair must be free (in-person care).
    #[serde(default)]
    pub needs_room: bool,
    /// Roles that may book it, e.g. `["front_desk", "provider", "patient"]`.
    pub bookable_by: Vec<String>,
    /// Messages after completion, e.g. post-op check-ins at days 3, 7 and 14.
    #[serde(default)]
    pub followups: Vec<FollowupRule>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct TypeOut {
    pub id: String,
    pub name: String,
    pub duration_min: i64,
    pub buffer_min: i64,
    pub modality: String,
    pub needs_room: bool,
    pub bookable_by: Vec<String>,
    pub followups: Vec<FollowupRule>,
}

impl From<TypeRow> for TypeOut {
    fn from(r: TypeRow) -> Self {
        let followups = r.followup_rules();
        Self {
            bookable_by: r
                .bookable_by
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            followups,
            id: r.id,
            name: r.name,
            duration_min: r.duration_min,
            buffer_min: r.buffer_min,
            modality: r.modality,
            needs_room: r.needs_room == 1,
        }
    }
}

const FOLLOWUP_KINDS: [&str; 2] = ["checkin", "photo_prompt"];

/// Inserts an appointment type after checking it.
pub async fn insert_type(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    t: &CreateType,
    now: Ms,
) -> ApiResult<String> {
    let name = t.name.trim();
    let bad = |detail: &str| ApiError::unprocessable(ErrorCode::InvalidBody, detail.to_string());
    if name.is_empty() || name.chars().count() > 100 {
        return Err(bad("name must be 1 to 100 characters"));
    }
    if !(5..=480).contains(&t.duration_min) || !(0..=120).contains(&t.buffer_min) {
        return Err(bad("duration_min must be 5 to 480 and buffer_min 0 to 120"));
    }
    if t.modality != "in_person" && t.modality != "telemedicine" {
        return Err(bad("modality must be in_person or telemedicine"));
    }
    if t.needs_room && t.modality != "in_person" {
        return Err(bad("only in-person types need a room"));
    }
    if t.bookable_by.is_empty() || t.bookable_by.iter().any(|r| Role::parse(r).is_none()) {
        return Err(bad(
            "bookable_by must list roles such as front_desk, provider or patient",
        ));
    }
    if t.followups.len() > 20
        || t.followups.iter().any(|f| {
            !(1..=365).contains(&f.after_days) || !FOLLOWUP_KINDS.contains(&f.kind.as_str())
        })
    {
        return Err(bad(
            "followups need after_days 1 to 365 and kind checkin or photo_prompt",
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "INSERT INTO appointment_types (id, clinic_id, name, duration_min, buffer_min, modality, needs_room, bookable_by, followups, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(clinic.as_str())
    .bind(name)
    .bind(t.duration_min)
    .bind(t.buffer_min)
    .bind(&t.modality)
    .bind(i64::from(t.needs_room))
    .bind(t.bookable_by.join(","))
    .bind(serde_json::to_string(&t.followups).map_err(|_| ApiError::internal())?)
    .bind(now)
    .execute(&mut **tx)
    .await
    .on_unique(|| ApiError::conflict(ErrorCode::TypeExists, "an appointment type with that name exists"))?;
    Ok(id)
}

async fn all_types(state: &AppState, clinic: &ClinicId) -> ApiResult<Vec<TypeRow>> {
    let mut tx = state.tx(clinic).await?;
    let rows: Vec<TypeRow> = sqlx::query_as(&format!(
        "SELECT {TYPE_COLUMNS} FROM appointment_types WHERE clinic_id = $1 AND disabled_at IS NULL ORDER BY name"
    ))
    .bind(clinic.as_str())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

pub(super) async fn list_types(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TypeOut>>> {
    let rows = all_types(&state, &caller.clinic_id).await?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

pub(super) async fn list_own_types(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TypeOut>>> {
    let rows = all_types(&state, &caller.clinic_id).await?;
    Ok(Json(
        rows.into_iter()
            .filter(|t| t.bookable_by(caller.role))
            .map(Into::into)
            .collect(),
    ))
}

pub(super) async fn create_type(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateType>,
) -> ApiResult<(StatusCode, Json<TypeOut>)> {
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let id = insert_type(&mut tx, &caller.clinic_id, &body, now).await?;
    tx.audit(
        caller
            .event(Action::Create, "appointment_type")
            .resource(&id),
    )
    .await?;
    let row = load_type(&mut tx, &caller.clinic_id, &id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}
