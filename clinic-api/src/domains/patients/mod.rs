//! Patient records (demographics; clinical modules attach to these). Staff reach a patient only
//! at their assigned locations (or by break-glass with a reason); patients reach only their own
//! record. Every read and change is audited in the same transaction.

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use serde::{Deserialize, Serialize};

use crate::platform::audit::Action;
use crate::platform::authz::{Basis, Caller, Permission, Policy, Routes};
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ApiPath, ApiQuery};
use crate::platform::ids::{LocationId, PatientId};
use crate::platform::pii::Pii;
use crate::platform::state::AppState;
use crate::platform::tx::{Reached, Target, TenantTx};

#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct PatientRow {
    pub(crate) id: String,
    pub(crate) location_id: String,
    pub(crate) user_id: Option<String>,
    given_name: String,
    family_name: String,
    birth_date: String,
}

const COLUMNS: &str = "id, location_id, user_id, given_name, family_name, birth_date";

/// A patient as the API shows it. Names and birth date are PHI: `Pii` keeps them out of logs.
#[derive(Serialize, schemars::JsonSchema)]
pub struct PatientOut {
    pub id: String,
    pub location_id: String,
    pub has_portal_account: bool,
    pub given_name: Pii<String>,
    pub family_name: Pii<String>,
    pub birth_date: Pii<String>,
}

impl From<PatientRow> for PatientOut {
    fn from(r: PatientRow) -> Self {
        Self {
            id: r.id,
            location_id: r.location_id,
            has_portal_account: r.user_id.is_some(),
            given_name: Pii(r.given_name),
            family_name: Pii(r.family_name),
            birth_date: Pii(r.birth_date),
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePatient {
    pub location_id: LocationId,
    pub given_name: Pii<String>,
    pub family_name: Pii<String>,
    /// YYYY-MM-DD
    pub birth_date: Pii<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePatient {
    pub location_id: Option<LocationId>,
    pub given_name: Option<Pii<String>>,
    pub family_name: Option<Pii<String>>,
    pub birth_date: Option<Pii<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub location_id: Option<LocationId>,
    /// At most this many (default 50, at most 200).
    pub limit: Option<i64>,
}

#[derive(Deserialize)]
struct PatientPath {
    id: PatientId,
}

pub fn routes() -> Routes {
    Routes::new("patients")
        .add(
            Method::POST,
            "/api/v1/patients",
            Policy::perm(Permission::PatientsWrite),
            "Register a patient at a location",
            create,
        )
        .body::<CreatePatient>()
        .add(
            Method::GET,
            "/api/v1/patients",
            Policy::perm(Permission::PatientsRead),
            "List patients at the caller's locations",
            list,
        )
        .query::<ListQuery>()
        .add(
            Method::GET,
            "/api/v1/patients/{id}",
            Policy::perm(Permission::PatientsRead),
            "Read a patient's demographics",
            get,
        )
        .add(
            Method::PATCH,
            "/api/v1/patients/{id}",
            Policy::perm(Permission::PatientsWrite),
            "Change a patient's demographics",
            update,
        )
        .body::<UpdatePatient>()
        .add(
            Method::GET,
            "/api/v1/me/record",
            Policy::perm(Permission::OwnRecordsRead),
            "A patient's own record",
            own_record,
        )
}

fn validate_name(field: &str, v: &Pii<String>) -> ApiResult<()> {
    let n = v.expose().trim().chars().count();
    if n == 0 || n > 200 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            format!("{field} must be 1 to 200 characters"),
        ));
    }
    Ok(())
}

fn validate_birth_date(v: &Pii<String>) -> ApiResult<()> {
    chrono::NaiveDate::parse_from_str(v.expose(), "%Y-%m-%d")
        .map(|_| ())
        .map_err(|_| {
            ApiError::unprocessable(
                ErrorCode::InvalidBody,
                "birth_date must be a date as YYYY-MM-DD",
            )
        })
}

async fn location_exists(tx: &mut TenantTx, caller: &Caller, loc: &LocationId) -> ApiResult<()> {
    let found: Option<(String,)> =
        sqlx::query_as("SELECT id FROM locations WHERE id = $1 AND clinic_id = $2")
            .bind(loc.as_str())
            .bind(caller.clinic_id.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    found.map(|_| ()).ok_or_else(|| {
        ApiError::unprocessable(ErrorCode::UnknownLocation, "that location does not exist")
    })
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreatePatient>,
) -> ApiResult<Json<PatientOut>> {
    validate_name("given_name", &body.given_name)?;
    validate_name("family_name", &body.family_name)?;
    validate_birth_date(&body.birth_date)?;
    let now = state.clock.now_ms();
    let id = PatientId::new();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = tx
        .reach(
            &caller,
            Permission::PatientsWrite,
            Target::at("patient", &body.location_id),
        )
        .await?;
    location_exists(&mut tx, &caller, &body.location_id).await?;
    sqlx::query(
        "INSERT INTO patients (id, clinic_id, location_id, given_name, family_name, birth_date, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.as_str())
    .bind(caller.clinic_id.as_str())
    .bind(body.location_id.as_str())
    .bind(body.given_name.expose().trim())
    .bind(body.family_name.expose().trim())
    .bind(body.birth_date.expose())
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.audit(reached.event(Action::Create).patient(&id).resource(&id))
        .await?;
    let row = fetch(&mut tx, &caller, &id)
        .await?
        .ok_or_else(ApiError::internal)?;
    tx.commit().await?;
    Ok(Json(row.into()))
}

async fn fetch(
    tx: &mut TenantTx,
    caller: &Caller,
    id: &PatientId,
) -> sqlx::Result<Option<PatientRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM patients WHERE id = $1 AND clinic_id = $2"
    ))
    .bind(id.as_str())
    .bind(caller.clinic_id.as_str())
    .fetch_optional(&mut **tx)
    .await
}

/// Loads a patient and proves the caller's reach to it (`TenantTx::reach`: a refusal is audited
/// as denied and committed, and the error returned). Other domains reach a patient's records
/// through this function.
pub(crate) async fn reach(
    tx: &mut TenantTx,
    caller: &Caller,
    id: &PatientId,
    perm: Permission,
) -> ApiResult<(PatientRow, Reached)> {
    let row = fetch(tx, caller, id)
        .await?
        .ok_or_else(|| ApiError::not_found("patient"))?;
    let location = LocationId::from_trusted(row.location_id.clone());
    let target = Target::object("patient", id.as_str())
        .located(&location)
        .of_patient(id.as_str());
    let reached = tx.reach(caller, perm, target).await?;
    Ok((row, reached))
}

async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<PatientPath>,
) -> ApiResult<Json<PatientOut>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach(&mut tx, &caller, &p.id, Permission::PatientsRead).await?;
    tx.audit(reached.event(Action::View)).await?;
    tx.commit().await?;
    Ok(Json(row.into()))
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<PatientOut>>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let mut tx = state.tx(&caller.clinic_id).await?;
    let target = match &q.location_id {
        Some(l) => Target::at("patient", l),
        None => Target::listing("patient"),
    };
    let reached = tx.reach(&caller, Permission::PatientsRead, target).await?;
    let locations: Vec<LocationId> = match &q.location_id {
        Some(l) => vec![l.clone()],
        None if reached.basis == Basis::Tenant => Vec::new(),
        None => caller.locations.clone(),
    };
    if locations.is_empty() && reached.basis != Basis::Tenant {
        tx.commit().await?;
        return Ok(Json(Vec::new()));
    }
    let mut sql = format!("SELECT {COLUMNS} FROM patients WHERE clinic_id = $1");
    if !locations.is_empty() {
        let marks: Vec<String> = (0..locations.len())
            .map(|i| format!("${}", i + 2))
            .collect();
        sql.push_str(&format!(" AND location_id IN ({})", marks.join(", ")));
    }
    sql.push_str(&format!(
        " ORDER BY family_name, given_name, id LIMIT {limit}"
    ));
    let mut query = sqlx::query_as::<_, PatientRow>(&sql).bind(caller.clinic_id.as_str());
    for l in &locations {
        query = query.bind(l.as_str());
    }
    let rows = query.fetch_all(&mut *tx).await?;
    for r in &rows {
        tx.audit(
            reached
                .event(Action::View)
                .patient(&r.id)
                .resource(&r.id)
                .detail("list"),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<PatientPath>,
    ApiJson(body): ApiJson<UpdatePatient>,
) -> ApiResult<Json<PatientOut>> {
    if let Some(v) = &body.given_name {
        validate_name("given_name", v)?;
    }
    if let Some(v) = &body.family_name {
        validate_name("family_name", v)?;
    }
    if let Some(v) = &body.birth_date {
        validate_birth_date(v)?;
    }
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach(&mut tx, &caller, &p.id, Permission::PatientsWrite).await?;
    if let Some(loc) = &body.location_id {
        // The new home location must be in reach too, and break-glass reaches a record where
        // it is: it never moves one.
        let to = tx
            .reach(
                &caller,
                Permission::PatientsWrite,
                Target::at("patient", loc).of_patient(p.id.as_str()),
            )
            .await?;
        if reached.is_break_glass() || to.is_break_glass() {
            let event = reached.event(Action::Modify).detail("location_id");
            return tx
                .refuse(
                    event,
                    ApiError::forbidden(
                        "break-glass access does not move a patient's home location",
                    ),
                )
                .await;
        }
        location_exists(&mut tx, &caller, loc).await?;
    }
    let mut changed = Vec::new();
    let location = body
        .location_id
        .as_ref()
        .map(|l| l.to_string())
        .unwrap_or(row.location_id.clone());
    let given = body
        .given_name
        .as_ref()
        .map(|v| v.expose().trim().to_string())
        .unwrap_or(row.given_name.clone());
    let family = body
        .family_name
        .as_ref()
        .map(|v| v.expose().trim().to_string())
        .unwrap_or(row.family_name.clone());
    let birth = body
        .birth_date
        .as_ref()
        .map(|v| v.expose().clone())
        .unwrap_or(row.birth_date.clone());
    for (name, set) in [
        ("location_id", body.location_id.is_some()),
        ("given_name", body.given_name.is_some()),
        ("family_name", body.family_name.is_some()),
        ("birth_date", body.birth_date.is_some()),
    ] {
        if set {
            changed.push(name);
        }
    }
    sqlx::query("UPDATE patients SET location_id = $1, given_name = $2, family_name = $3, birth_date = $4, updated_at = $5 WHERE id = $6 AND clinic_id = $7")
        .bind(location)
        .bind(given)
        .bind(family)
        .bind(birth)
        .bind(now)
        .bind(p.id.as_str())
        .bind(caller.clinic_id.as_str())
        .execute(&mut *tx)
        .await?;
    // The detail names the fields changed, never their values.
    tx.audit(reached.event(Action::Modify).detail(changed.join(",")))
        .await?;
    let row = fetch(&mut tx, &caller, &p.id)
        .await?
        .ok_or_else(ApiError::internal)?;
    tx.commit().await?;
    Ok(Json(row.into()))
}

async fn own_record(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<PatientOut>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let row: Option<PatientRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM patients WHERE user_id = $1 AND clinic_id = $2"
    ))
    .bind(caller.user_id.as_str())
    .bind(caller.clinic_id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| ApiError::not_found("patient record"))?;
    tx.audit(
        caller
            .event(Action::View, "patient")
            .patient(&row.id)
            .resource(&row.id)
            .detail("own"),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(row.into()))
}
