//! Lists, signed-URL fetches (the audited view, or export for an original), legal holds and
//! retention-checked deletion.

use super::*;

pub(super) async fn list_rows(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    patient: &str,
) -> sqlx::Result<Vec<ImageRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM images WHERE clinic_id = $1 AND patient_id = $2 AND deleted_at IS NULL \
         ORDER BY created_at DESC, id LIMIT 500"
    ))
    .bind(clinic.as_str())
    .bind(patient)
    .fetch_all(&mut **tx)
    .await
}

pub(super) async fn audit_list(
    tx: &mut TenantTx,
    reached: &Reached,
    rows: &[ImageRow],
) -> ApiResult<()> {
    // An empty list is a look at the patient's images too (a break-glass one above all).
    if rows.is_empty() {
        tx.audit(
            reached
                .event_for(Action::View, "image")
                .detail("list, empty"),
        )
        .await?;
    }
    for r in rows {
        tx.audit(
            reached
                .event_for(Action::View, "image")
                .resource(&r.id)
                .detail("list"),
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn list_for_patient(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<PatientPath>,
) -> ApiResult<Json<Vec<ImageOut>>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (_, reached) = patients::reach(&mut tx, &caller, &p.id, Permission::ImagesView).await?;
    list_answer(&state, tx, &caller, &reached, p.id.as_str()).await
}

pub(super) async fn list_own(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ImageOut>>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (patient, reached) = tx.reach_own(&caller, Permission::OwnRecordsRead).await?;
    list_answer(&state, tx, &caller, &reached, patient.as_str()).await
}

/// A reached patient's images with this caller's signed URLs, the list's audit event committed.
async fn list_answer(
    state: &AppState,
    mut tx: TenantTx,
    caller: &Caller,
    reached: &Reached,
    patient: &str,
) -> ApiResult<Json<Vec<ImageOut>>> {
    let rows = list_rows(&mut tx, &caller.clinic_id, patient).await?;
    audit_list(&mut tx, reached, &rows).await?;
    tx.commit().await?;
    let now = state.clock.now_ms();
    Ok(Json(
        rows.into_iter()
            .map(|r| ImageOut::from_row(r, Some((Images::of(state), caller, now))))
            .collect(),
    ))
}

/// An image of the caller's tenant (not deleted), with its patient's location and portal user.
pub(super) async fn load_image(
    tx: &mut TenantTx,
    clinic: &ClinicId,
    id: &str,
) -> sqlx::Result<Option<(ImageRow, String, Option<String>)>> {
    let row: Option<ImageRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM images WHERE id = $1 AND clinic_id = $2 AND deleted_at IS NULL"
    ))
    .bind(id)
    .bind(clinic.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (location, user): (String, Option<String>) = sqlx::query_as(
        "SELECT location_id, user_id FROM patients WHERE id = $1 AND clinic_id = $2",
    )
    .bind(&row.patient_id)
    .bind(clinic.as_str())
    .fetch_one(&mut **tx)
    .await?;
    Ok(Some((row, location, user)))
}

/// Loads an image and proves the caller's reach to it with the first of `perms` their role
/// holds (refusals audited as denied and committed by the reach).
pub(super) async fn reach_image(
    tx: &mut TenantTx,
    caller: &Caller,
    id: &str,
    perms: &[Permission],
) -> ApiResult<(ImageRow, Reached)> {
    let (row, location, _) = load_image(tx, &caller.clinic_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("image"))?;
    let location = LocationId::from_trusted(location);
    let target = Target::object("image", &row.id)
        .located(&location)
        .of_patient(&row.patient_id);
    let reached = tx.reach_any(caller, perms, target).await?;
    Ok((row, reached))
}

pub(super) async fn export(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ImagePath>,
) -> ApiResult<Json<SignedUrl>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach_image(&mut tx, &caller, &p.id, &[Permission::ImagesExport]).await?;
    tx.audit(reached.event(Action::Share).detail("export_url"))
        .await?;
    tx.commit().await?;
    let expires = state.clock.now_ms() + Images::of(&state).export_ttl_ms;
    Ok(Json(SignedUrl {
        url: Images::of(&state).sign_url(&row.id, Variant::Original, &caller, expires),
        expires_at: rfc3339(expires),
    }))
}

pub(super) async fn fetch_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<TokenPath>,
) -> ApiResult<Response> {
    let images = Images::of(&state);
    let claims = images
        .verify_url(&p.token)
        .filter(|c| c.u == caller.user_id.as_str() && c.c == caller.clinic_id.as_str())
        .ok_or_else(|| ApiError::not_found("image"))?;
    let variant = Variant::parse(&claims.v).ok_or_else(|| ApiError::not_found("image"))?;
    let now = state.clock.now_ms();
    if now > claims.e {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::UrlExpired,
            "this image link has expired; reload the page for a new one",
        ));
    }
    // The caller must still be allowed (their own photo, or the patient's location), proven in
    // a short transaction: no transaction is held while the object is fetched and opened.
    let perms: &[Permission] = if variant == Variant::Original {
        &[Permission::ImagesExport]
    } else {
        &[Permission::ImagesView, Permission::OwnRecordsRead]
    };
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) = reach_image(&mut tx, &caller, &claims.i, perms).await?;
    tx.commit().await?;
    let key = row.key(variant).ok_or_else(ApiError::internal)?;
    let sealed = images
        .store
        .get(caller.clinic_id.as_str(), &key, row.tier(variant))
        .await
        .map_err(imaging_error)?;
    let ctx = Context::new(caller.clinic_id.as_str(), &row.id, variant.as_str());
    let bytes = images.keys.open(&ctx, &sealed).await.map_err(|e| {
        tracing::error!(error = %e, "a stored image failed to open");
        ApiError::internal()
    })?;
    let action = if variant == Variant::Original {
        Action::Export
    } else {
        Action::View
    };
    // Audited before a byte is answered: a failure here answers 500 and shows nothing.
    let mut tx = state.tx(&caller.clinic_id).await?;
    tx.audit(reached.event(action).detail(variant.as_str()))
        .await?;
    tx.commit().await?;
    let media = match variant {
        Variant::Original => {
            Format::parse(&row.format).map_or("application/octet-stream", |f| f.media_type())
        }
        _ => "image/jpeg",
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    if variant == Variant::Original {
        let ext = if row.format == "jpeg" {
            "jpg"
        } else {
            row.format.as_str()
        };
        if let Ok(v) =
            HeaderValue::from_str(&format!("attachment; filename=\"image-{}.{ext}\"", row.id))
        {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(resp)
}

pub(super) async fn legal_hold(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ImagePath>,
    ApiJson(body): ApiJson<LegalHold>,
) -> ApiResult<Json<ImageOut>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (mut row, reached) =
        reach_image(&mut tx, &caller, &p.id, &[Permission::RecordsRetention]).await?;
    let now = tx.now();
    let (at, by) = if body.hold {
        (Some(now), Some(caller.user_id.to_string()))
    } else {
        (None, None)
    };
    sqlx::query(
        "UPDATE images SET legal_hold_at = $1, legal_hold_by = $2 WHERE id = $3 AND clinic_id = $4",
    )
    .bind(at)
    .bind(by)
    .bind(&row.id)
    .bind(caller.clinic_id.as_str())
    .execute(&mut *tx)
    .await?;
    tx.audit(reached.event(Action::Modify).detail(if body.hold {
        "legal_hold_placed"
    } else {
        "legal_hold_lifted"
    }))
    .await?;
    tx.commit().await?;
    row.legal_hold_at = at;
    Ok(Json(ImageOut::from_row(row, None)))
}

pub(super) async fn delete_image(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ImagePath>,
) -> ApiResult<StatusCode> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (row, reached) =
        reach_image(&mut tx, &caller, &p.id, &[Permission::RecordsRetention]).await?;
    let now = tx.now();
    let under_hold = || {
        ApiError::conflict(
            ErrorCode::LegalHold,
            "the image is under legal hold and cannot be deleted",
        )
    };
    match may_delete(row.retain_until, row.legal_hold_at.is_some(), now) {
        Ok(()) => {}
        Err(Refusal::LegalHold) => return Err(under_hold()),
        Err(Refusal::Retention { until_ms }) => {
            return Err(ApiError::conflict(
                ErrorCode::RetentionPeriod,
                format!("the image must be kept until {}", rfc3339(until_ms)),
            )
            .with_extra(serde_json::json!({ "retain_until": rfc3339(until_ms) })));
        }
    }
    // The row is marked first: a failure deleting objects leaves unreachable objects, never a
    // row pointing at nothing.
    // No hold in the UPDATE itself: a hold placed since the row was read wins (PostgreSQL
    // reads at statement time; SQLite's write lock is held already).
    let marked = sqlx::query(
        "UPDATE images SET deleted_at = $1 WHERE id = $2 AND clinic_id = $3 \
         AND deleted_at IS NULL AND legal_hold_at IS NULL",
    )
    .bind(now)
    .bind(&row.id)
    .bind(caller.clinic_id.as_str())
    .execute(&mut *tx)
    .await?;
    if marked.rows_affected() == 0 {
        return Err(under_hold());
    }
    tx.audit(reached.event(Action::Delete)).await?;
    tx.commit().await?;
    for v in [Variant::Original, Variant::Preview, Variant::Thumbnail] {
        if let Some(key) = row.key(v)
            && let Err(e) = Images::of(&state)
                .store
                .delete(caller.clinic_id.as_str(), &key)
                .await
        {
            tracing::warn!(error = %e, "could not remove a deleted image's object");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
