//! The REST routes: create a consult, issue one-time join links, exchange a link's code for a
//! join token, and the provider's end.

use super::*;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConsult {
    pub location_id: LocationId,
    pub patient_id: Option<PatientId>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct ConsultOut {
    pub id: String,
    pub status: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// provider, covering_provider, patient, caregiver or interpreter
    pub role: String,
    /// The name the other participants see.
    pub display_name: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct LinkOut {
    pub participant_id: String,
    /// The page link; the one-time code rides in the fragment, which browsers never send to servers.
    pub url: String,
    pub expires_at: String,
    /// For a scheduled consult: when the link starts to work.
    pub not_before: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinCode {
    pub code: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct JoinToken {
    pub token: String,
    pub consult_id: String,
    pub role: String,
    pub ws_path: String,
}

#[derive(Deserialize)]
pub(super) struct ConsultPath {
    pub(super) id: PatientId,
}

/// Loads a consult of the caller's tenant and proves the caller's reach to it (refusals
/// audited and committed by the reach); an ended consult is a conflict.
pub(super) async fn reach_consult(
    tx: &mut TenantTx,
    caller: &Caller,
    id: &str,
) -> ApiResult<Reached> {
    let row: Option<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT location_id, patient_id, status FROM consults WHERE id = $1 AND clinic_id = $2",
    )
    .bind(id)
    .bind(caller.clinic_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let (location, patient, status) = row.ok_or_else(|| ApiError::not_found("consult"))?;
    let location = LocationId::from_trusted(location);
    let mut target = Target::object("consult", id).located(&location);
    if let Some(p) = &patient {
        target = target.of_patient(p);
    }
    let reached = tx.reach(caller, Permission::ConsultsRun, target).await?;
    if status != "open" {
        return Err(ApiError::conflict(
            ErrorCode::ConsultEnded,
            "this consult has ended",
        ));
    }
    Ok(reached)
}

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateConsult>,
) -> ApiResult<Json<ConsultOut>> {
    let now = state.clock.now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = tx
        .reach(
            &caller,
            Permission::ConsultsRun,
            Target::at("consult", &body.location_id),
        )
        .await?;
    if let Some(p) = &body.patient_id {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT location_id FROM patients WHERE id = $1 AND clinic_id = $2")
                .bind(p.as_str())
                .bind(caller.clinic_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let (loc,) = found.ok_or_else(|| {
            ApiError::unprocessable(ErrorCode::UnknownPatient, "that patient does not exist")
        })?;
        let loc = LocationId::from_trusted(loc);
        let patient = Target::object("patient", p.as_str())
            .located(&loc)
            .of_patient(p.as_str());
        tx.reach(&caller, Permission::PatientsRead, patient).await?;
    }
    sqlx::query("INSERT INTO consults (id, clinic_id, location_id, patient_id, created_by, status, created_at) VALUES ($1, $2, $3, $4, $5, 'open', $6)")
        .bind(&id)
        .bind(caller.clinic_id.as_str())
        .bind(body.location_id.as_str())
        .bind(body.patient_id.as_ref().map(|p| p.to_string()))
        .bind(caller.user_id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let mut event = reached.event(Action::Create).resource(&id);
    event.patient_id = body.patient_id.as_ref().map(|p| p.to_string());
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(ConsultOut {
        id,
        status: "open".into(),
    }))
}

pub(super) async fn create_link(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ConsultPath>,
    ApiJson(body): ApiJson<CreateLink>,
) -> ApiResult<Json<LinkOut>> {
    let role: ConsultRole = serde_json::from_value(serde_json::Value::String(body.role.clone()))
        .map_err(|_| {
            ApiError::unprocessable(
                ErrorCode::InvalidRole,
                "role must be provider, covering_provider, patient, caregiver or interpreter",
            )
        })?;
    let display = body.display_name.trim();
    if display.is_empty() || display.chars().count() > 80 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "display_name must be 1 to 80 characters",
        ));
    }
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = reach_consult(&mut tx, &caller, p.id.as_str()).await?;
    let consult = p.id.to_string();
    // A scheduled consult's links work only in its appointment's join window.
    let window = appointment_window(&state, &mut tx, &consult).await?;
    let (not_before, expires) = match window {
        Some((opens, closes)) => (Some(opens), closes),
        None => (None, now + LINK_TTL_SECS * 1000),
    };
    if expires <= now {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::JoinClosed,
            "this appointment's join window has closed",
        ));
    }
    let link = issue_link(
        &state,
        &mut tx,
        &caller.clinic_id,
        &consult,
        role,
        display,
        caller.user_id.as_str(),
        not_before,
        expires,
    )
    .await?;
    let event = reached
        .event_for(Action::Share, "consult_link")
        .resource(&consult)
        .detail(format!("role={}", body.role));
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(link))
}

/// The join window of a consult that belongs to an appointment: from `join_early_secs` before
/// its start to `join_late_secs` after its end.
pub(crate) async fn appointment_window(
    state: &AppState,
    tx: &mut crate::platform::db::TenantTx,
    consult: &str,
) -> ApiResult<Option<(i64, i64)>> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT a.starts_at, a.ends_at FROM consults c JOIN appointments a ON a.id = c.appointment_id WHERE c.id = $1",
    )
    .bind(consult)
    .fetch_optional(&mut **tx)
    .await?;
    let cfg = &state.config.scheduling;
    Ok(row.map(|(s, e)| {
        (
            s - cfg.join_early_secs * 1000,
            e + cfg.join_late_secs * 1000,
        )
    }))
}

/// Stores a one-time join link for a participant and returns its page URL (the code rides in
/// the fragment). Valid from `not_before` (if any) until `expires`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn issue_link(
    state: &AppState,
    tx: &mut crate::platform::db::TenantTx,
    clinic: &ClinicId,
    consult: &str,
    role: ConsultRole,
    display: &str,
    created_by: &str,
    not_before: Option<i64>,
    expires: i64,
) -> ApiResult<LinkOut> {
    let now = state.clock.now_ms();
    let mut raw = [0u8; 24];
    state.keys.random(&mut raw);
    let code = format!("{}.{}", clinic, URL_SAFE_NO_PAD.encode(raw));
    let participant = uuid::Uuid::new_v4().to_string();
    let role_name = serde_json::to_value(role)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO consult_links (id, clinic_id, consult_id, participant_id, role, display_name, code_hash, created_by, created_at, expires_at, not_before) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(clinic.as_str())
    .bind(consult)
    .bind(&participant)
    .bind(&role_name)
    .bind(display)
    .bind(sha256_hex(code.as_bytes()))
    .bind(created_by)
    .bind(now)
    .bind(expires)
    .bind(not_before)
    .execute(&mut **tx)
    .await?;
    let page = if role.is_host() {
        "/consult/provider"
    } else {
        "/consult/join"
    };
    Ok(LinkOut {
        participant_id: participant,
        url: format!("{page}#{code}"),
        expires_at: rfc3339(expires),
        not_before: not_before.map(rfc3339),
    })
}

#[derive(sqlx::FromRow)]
pub(super) struct LinkRow {
    pub(super) id: String,
    pub(super) consult_id: String,
    pub(super) participant_id: String,
    pub(super) role: String,
    pub(super) display_name: String,
    pub(super) expires_at: i64,
    pub(super) not_before: Option<i64>,
    pub(super) used_at: Option<i64>,
    pub(super) status: String,
}

pub(super) async fn join(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(body): ApiJson<JoinCode>,
) -> ApiResult<Json<JoinToken>> {
    let invalid = || {
        ApiError::unauthorized(
            ErrorCode::InvalidLink,
            "this join link is not valid; ask the practice for a new one",
        )
    };
    let clinic = body
        .code
        .split_once('.')
        .and_then(|(c, _)| ClinicId::parse(c))
        .ok_or_else(invalid)?;
    let now = state.clock.now_ms();
    let mut tx = state.tx(&clinic).await?;
    let row: Option<LinkRow> = sqlx::query_as(
        "SELECT l.id, l.consult_id, l.participant_id, l.role, l.display_name, l.expires_at, l.not_before, l.used_at, c.status \
         FROM consult_links l JOIN consults c ON c.id = l.consult_id WHERE l.code_hash = $1 AND l.clinic_id = $2",
    )
    .bind(sha256_hex(body.code.as_bytes()))
    .bind(clinic.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(invalid)?;
    if row.used_at.is_some() {
        return Err(link_used());
    }
    if let Some(opens) = row.not_before
        && now < opens
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::JoinNotOpen,
            format!(
                "this consult opens at {}; use the link again then",
                rfc3339(opens)
            ),
        )
        .with_extra(serde_json::json!({ "opens_at": rfc3339(opens) })));
    }
    if now > row.expires_at {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::LinkExpired,
            "this join link has expired; ask the practice for a new one",
        ));
    }
    if row.status != "open" {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::ConsultEnded,
            "this consult has ended",
        ));
    }
    // The code is spent by whoever's update takes it: a concurrent exchange of the same code read
    // it unused too, but on PostgreSQL its update waits for this one and then matches no row.
    let spent =
        sqlx::query("UPDATE consult_links SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(now)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
    if spent.rows_affected() != 1 {
        return Err(link_used());
    }
    let role: ConsultRole = serde_json::from_value(serde_json::Value::String(row.role.clone()))
        .map_err(|_| ApiError::internal())?;
    let claims = Claims {
        clinic: clinic.to_string(),
        consult: row.consult_id.clone(),
        participant: row.participant_id.clone(),
        role,
        display: row.display_name,
        iat: now / 1000,
        exp: now / 1000 + TOKEN_TTL_SECS,
    };
    let mut event = AuditEvent::new(clinic.clone(), Action::Access, "consult_link")
        .resource(&row.consult_id)
        .detail(format!("code exchanged role={}", row.role));
    event.actor_id = Some(row.participant_id);
    event.ip = client.ip;
    event.user_agent = client.user_agent;
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(JoinToken {
        token: Hub::of(&state).token_key.sign(&claims),
        consult_id: row.consult_id,
        role: row.role,
        ws_path: "/api/v1/consults/ws".into(),
    }))
}

pub(super) async fn end_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ConsultPath>,
) -> ApiResult<Json<ConsultOut>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = reach_consult(&mut tx, &caller, p.id.as_str()).await?;
    let consult = p.id.to_string();
    end(&state, &mut tx, &consult, EndReason::EndedByProvider).await?;
    tx.audit(reached.event(Action::Modify).detail("end"))
        .await?;
    // Committing tells the live room; its participants get `ended` and are disconnected.
    tx.commit().await?;
    Ok(Json(ConsultOut {
        id: consult,
        status: "ended".into(),
    }))
}

fn link_used() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        ErrorCode::LinkUsed,
        "this join link was already used; ask the practice for a new one",
    )
}
