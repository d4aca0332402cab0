//! Uploads: the body read as a stream under the size and in-flight limits, processed on a
//! blocking thread, sealed and stored, and only then recorded with its audit event; a failure
//! at any step removes what was stored.

use super::*;

/// The problem answer for an imaging failure: 4xx for the upload's fault, 5xx for ours.
pub(super) fn imaging_error(e: ImagingError) -> ApiError {
    match e {
        ImagingError::Empty => ApiError::bad_request(ErrorCode::EmptyUpload, "the upload is empty"),
        ImagingError::TooLarge { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UploadTooLarge,
            format!("photos are limited to {} MB", limit / (1024 * 1024)),
        ),
        ImagingError::Unsupported => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedImageType,
            "only JPEG, PNG and WebP photos are accepted",
        ),
        ImagingError::HeicUnsupported => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::HeicNotSupported,
            "HEIC photos are not accepted here; set the camera to \"Most Compatible\" (JPEG) or share the photo as JPEG",
        ),
        e @ ImagingError::Dimensions { .. } => {
            ApiError::unprocessable(ErrorCode::ImageTooLarge, e.to_string())
        }
        e @ ImagingError::Corrupt(_) => {
            ApiError::unprocessable(ErrorCode::ImageCorrupt, e.to_string())
        }
        ImagingError::Memory => ApiError::unprocessable(
            ErrorCode::ImageTooComplex,
            "the image would need too much memory to decode",
        ),
        ImagingError::NotFound => ApiError::not_found("image file"),
        other => {
            tracing::error!(error = %other, "imaging failure");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::StorageUnavailable,
                "the image store or key service is unavailable; try again",
            )
            .with_retry_after(5)
        }
    }
}

/// Bytes as KiB permits, rounded up.
pub(super) fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// The caller's quota and what they used of it in the last 24 hours, read in `tx`.
async fn quota_of(
    tx: &mut TenantTx,
    images: &Images,
    caller: &Caller,
) -> ApiResult<Option<(u64, u64)>> {
    let Some(limit) = images.rules.daily_quota(caller.role) else {
        return Ok(None);
    };
    let now = tx.now();
    let used = uploaded_recently(tx, caller, now).await?;
    if used >= limit {
        return Err(over_quota(limit, used));
    }
    Ok(Some((limit, used)))
}

pub(super) async fn upload_for_patient(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<PatientPath>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageOut>)> {
    // Check reach first, and end the transaction before the (slow) body is read.
    let images = Images::of(&state);
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (_, reached) = patients::reach(&mut tx, &caller, &p.id, Permission::ClinicalWrite).await?;
    let quota = quota_of(&mut tx, images, &caller).await?;
    tx.commit().await?;
    let (bytes, inflight) = read_upload(&headers, body, images, &caller, quota).await?;
    let row = store_upload(&state, &caller, &p.id, "staff", &reached, bytes).await?;
    drop(inflight);
    let urls = crate::platform::authz::scope_of(caller.role, Permission::ImagesView)
        .is_some()
        .then_some((Images::of(&state), &caller, state.clock.now_ms()));
    Ok((StatusCode::CREATED, Json(ImageOut::from_row(row, urls))))
}

pub(super) async fn upload_own(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageOut>)> {
    let images = Images::of(&state);
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (patient, reached) = tx.reach_own(&caller, Permission::OwnRecordsWrite).await?;
    let quota = quota_of(&mut tx, images, &caller).await?;
    tx.commit().await?;
    let (bytes, inflight) = read_upload(&headers, body, images, &caller, quota).await?;
    let row = store_upload(&state, &caller, &patient, "patient", &reached, bytes).await?;
    drop(inflight);
    let now = state.clock.now_ms();
    Ok((
        StatusCode::CREATED,
        Json(ImageOut::from_row(
            row,
            Some((Images::of(&state), &caller, now)),
        )),
    ))
}

/// Processes, seals, stores and records an upload. Anything stored is removed again if a later
/// step fails.
pub(super) async fn store_upload(
    state: &AppState,
    caller: &Caller,
    patient: &PatientId,
    source: &str,
    reached: &Reached,
    bytes: Vec<u8>,
) -> ApiResult<ImageRow> {
    let images = Images::of(state);
    let limits = images.limits.clone();
    let permit = images
        .processing
        .acquire()
        .await
        .map_err(|_| ApiError::internal())?;
    let processed = tokio::task::spawn_blocking(move || imaging::process(&bytes, &limits))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(imaging_error)?;
    drop(permit);
    let id = uuid::Uuid::new_v4().to_string();
    let tenant = caller.clinic_id.as_str();
    let keys = [
        ObjectKey::random(),
        ObjectKey::random(),
        ObjectKey::random(),
    ];
    let parts = [
        (Variant::Original, &processed.original),
        (Variant::Preview, &processed.preview.bytes),
        (Variant::Thumbnail, &processed.thumbnail.bytes),
    ];
    let mut stored: Vec<ObjectKey> = Vec::new();
    let mut failure = None;
    for ((variant, plain), key) in parts.iter().zip(&keys) {
        let ctx = Context::new(tenant, &id, variant.as_str());
        let result = match images.keys.seal(&ctx, plain).await {
            Ok(sealed) => images.store.put(tenant, key, sealed, Tier::Hot).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => stored.push(key.clone()),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        remove_objects(images, tenant, &stored).await;
        return Err(imaging_error(e));
    }
    let now = state.clock.now_ms();
    let row = ImageRow {
        id: id.clone(),
        patient_id: patient.to_string(),
        source: source.into(),
        format: processed.format.as_str().into(),
        width: processed.width as i64,
        height: processed.height as i64,
        orientation: processed.orientation as i64,
        captured_at: processed.captured_at.clone(),
        original_bytes: processed.original.len() as i64,
        original_key: keys[0].as_str().into(),
        preview_key: keys[1].as_str().into(),
        thumbnail_key: keys[2].as_str().into(),
        original_tier: Tier::Hot.as_str().into(),
        created_at: now,
        retain_until: images.policy.retain_until(now),
        legal_hold_at: None,
    };
    let recorded: ApiResult<()> = async {
        let mut tx = state.tx(&caller.clinic_id).await?;
        // The quota again, exactly, with this upload's stored size (on SQLite this transaction
        // is the only writer; on PostgreSQL concurrent uploads of one account can each pass,
        // bounded by `imaging.uploads_per_user`).
        if let Some(limit) = images.rules.daily_quota(caller.role) {
            let used = uploaded_recently(&mut tx, caller, now).await?;
            if used.saturating_add(row.original_bytes as u64) > limit {
                return Err(over_quota(limit, used));
            }
        }
        sqlx::query(
            "INSERT INTO images (id, clinic_id, patient_id, uploaded_by, source, format, width, height, \
             orientation, captured_at, original_bytes, original_key, preview_key, thumbnail_key, \
             original_tier, key_provider, store, created_at, retain_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(&row.id)
        .bind(tenant)
        .bind(&row.patient_id)
        .bind(caller.user_id.as_str())
        .bind(&row.source)
        .bind(&row.format)
        .bind(row.width)
        .bind(row.height)
        .bind(row.orientation)
        .bind(&row.captured_at)
        .bind(row.original_bytes)
        .bind(&row.original_key)
        .bind(&row.preview_key)
        .bind(&row.thumbnail_key)
        .bind(&row.original_tier)
        .bind(images.keys.kind())
        .bind(images.store.kind())
        .bind(row.created_at)
        .bind(row.retain_until)
        .execute(&mut *tx)
        .await?;
        tx.audit(
            reached
                .event_for(Action::Create, "image")
                .resource(&id)
                .detail(format!("upload by {source}")),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    if let Err(e) = recorded {
        remove_objects(images, tenant, &stored).await;
        return Err(e);
    }
    metrics::counter!("images_uploaded_total", "format" => processed.format.as_str()).increment(1);
    Ok(row)
}

/// Removes the objects of a failed upload (best effort: leftovers are unreachable, never partial).
pub(super) async fn remove_objects(images: &Images, tenant: &str, keys: &[ObjectKey]) {
    for key in keys {
        if let Err(e) = images.store.delete(tenant, key).await {
            tracing::warn!(error = %e, "could not remove an object of a failed upload");
        }
    }
}
