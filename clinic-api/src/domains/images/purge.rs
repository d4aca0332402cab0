//! Purging junk uploads: photos a patient sent from their own account that are not part of the
//! record (sent by mistake, not wound photos, a flood from an abused account). An owner or admin
//! names them, or a time window, with a reason; each purged image is deleted (before its
//! retention period: a patient's junk upload is not a record) and audited with the reason. A
//! purge never touches an image under legal hold, nor one staff uploaded (those follow the
//! retention rules of `DELETE /api/v1/images/{id}`).

use super::*;

/// At most this many images are named or purged in one call.
const MAX_PURGE: usize = 500;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// Why (kept in the audit log with every purged image), 3 to 500 characters.
    pub reason: String,
    /// The images to purge (the patient's own uploads), or …
    #[serde(default)]
    pub image_ids: Vec<String>,
    /// … every upload of the patient's own from the last this many hours (1 to 720).
    pub within_hours: Option<u32>,
}

/// What a purge did.
#[derive(Serialize, schemars::JsonSchema)]
pub struct PurgeOut {
    pub purged: Vec<String>,
    /// Named images that were not purged, each with why: `legal_hold`, `staff_upload` or
    /// `not_found`.
    pub kept: Vec<KeptImage>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct KeptImage {
    pub id: String,
    pub reason: &'static str,
}

pub(super) async fn purge(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<PatientPath>,
    ApiJson(body): ApiJson<Purge>,
) -> ApiResult<Json<PurgeOut>> {
    let reason = body.reason.trim();
    if !(3..=500).contains(&reason.chars().count()) {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "reason must be 3 to 500 characters",
        ));
    }
    let by_window = match (body.image_ids.is_empty(), body.within_hours) {
        (false, None) if body.image_ids.len() <= MAX_PURGE => None,
        (true, Some(h)) if (1..=720).contains(&h) => Some(h),
        _ => {
            return Err(ApiError::unprocessable(
                ErrorCode::InvalidBody,
                format!(
                    "name either image_ids (1 to {MAX_PURGE}) or within_hours (1 to 720), not both"
                ),
            ));
        }
    };
    let clinic = caller.clinic_id.as_str();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (_, reached) =
        patients::reach(&mut tx, &caller, &p.id, Permission::RecordsRetention).await?;
    let now = tx.now();
    let mut kept = Vec::new();
    let candidates: Vec<ImageRow> = match by_window {
        Some(hours) => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM images WHERE clinic_id = $1 AND patient_id = $2 \
                 AND deleted_at IS NULL AND source = 'patient' AND created_at > $3 \
                 ORDER BY created_at LIMIT {MAX_PURGE}"
            ))
            .bind(clinic)
            .bind(p.id.as_str())
            .bind(now - i64::from(hours) * 3600 * 1000)
            .fetch_all(&mut *tx)
            .await?
        }
        None => {
            let mut rows = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for id in body.image_ids.iter().filter(|id| seen.insert(id.as_str())) {
                let row: Option<ImageRow> = sqlx::query_as(&format!(
                    "SELECT {COLUMNS} FROM images WHERE id = $1 AND clinic_id = $2 \
                     AND patient_id = $3 AND deleted_at IS NULL"
                ))
                .bind(id)
                .bind(clinic)
                .bind(p.id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    Some(r) => rows.push(r),
                    None => kept.push(KeptImage {
                        id: id.clone(),
                        reason: "not_found",
                    }),
                }
            }
            rows
        }
    };
    let mut purged = Vec::new();
    for row in candidates {
        if row.source != "patient" {
            kept.push(KeptImage {
                id: row.id,
                reason: "staff_upload",
            });
            continue;
        }
        // The conditions again in the UPDATE: a hold placed meanwhile wins.
        let marked = sqlx::query(
            "UPDATE images SET deleted_at = $1 WHERE id = $2 AND clinic_id = $3 \
             AND deleted_at IS NULL AND legal_hold_at IS NULL AND source = 'patient'",
        )
        .bind(now)
        .bind(&row.id)
        .bind(clinic)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 0 {
            kept.push(KeptImage {
                id: row.id,
                reason: "legal_hold",
            });
            continue;
        }
        tx.audit(
            reached
                .event_for(Action::Delete, "image")
                .resource(&row.id)
                .detail(format!("purged as junk: {reason}")),
        )
        .await?;
        purged.push(row);
    }
    if purged.is_empty() {
        // Nothing matched: the attempt is recorded all the same.
        tx.audit(
            reached
                .event_for(Action::Delete, "image")
                .detail(format!("purge, nothing purged: {reason}")),
        )
        .await?;
    }
    tx.commit().await?;
    let images = Images::of(&state);
    for row in &purged {
        let keys: Vec<ObjectKey> = [Variant::Original, Variant::Preview, Variant::Thumbnail]
            .into_iter()
            .filter_map(|v| row.key(v))
            .collect();
        remove_objects(images, clinic, &keys).await;
    }
    metrics::counter!("images_purged_total").increment(purged.len() as u64);
    Ok(Json(PurgeOut {
        purged: purged.into_iter().map(|r| r.id).collect(),
        kept,
    }))
}
