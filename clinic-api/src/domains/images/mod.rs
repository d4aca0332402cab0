//! Wound images: uploads (staff during visits, patients from their phones), lists, views through
//! short-lived signed URLs, exports of originals (step-up), legal holds, retention-checked
//! deletion, and the tiering job.
//!
//! An upload is read as a stream up to the size limit (refused with 413 as soon as it passes it,
//! and with 415 as soon as its first bytes are not an image), processed on a blocking thread
//! (validate, orient, strip, derivatives), sealed per object under a fresh data key, stored, and
//! only then recorded, with its audit event, in one transaction. A failure at any step removes
//! what was stored; a crash leaves no partial object and no row pointing at nothing.
//!
//! Image bytes are only reachable through `/api/v1/image-files/{token}`: an HMAC-signed token
//! naming the image, the variant, the user it was issued to and its expiry. Fetching through it
//! re-checks the caller and is the audited event: a view, or an export for an original.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use imaging::envelope::Context;
use imaging::keys::{CacheLimits, KeyProvider, KmsKeys, LocalKeys};
use imaging::store::{BlobStore, LocalStore, ObjectKey, S3Store, Tier};
use imaging::tiering::{Refusal, TierPolicy, may_delete};
use imaging::{Format, ImagingError, Limits};
use serde::{Deserialize, Serialize};

use crate::domains::patients;
use crate::platform::audit::Action;
use crate::platform::authz::{Caller, Permission, Policy, Routes};
use crate::platform::clock::rfc3339;
use crate::platform::config::{Config, KeyProviderKind, StoreKind};
use crate::platform::db::{Db, TenantTx};
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ApiPath};
use crate::platform::ids::{ClinicId, LocationId, PatientId};
use crate::platform::keys::{KeyRing, Purpose};
use crate::platform::openapi::Content;
use crate::platform::pii::Pii;
use crate::platform::state::AppState;
use crate::platform::tx::{Reached, Target};

/// The imaging services the API uses: keys, store, limits, policy, URL signing.
pub struct Images {
    pub keys: KeyProvider,
    pub store: BlobStore,
    pub limits: Limits,
    pub policy: TierPolicy,
    url_key: ring::hmac::Key,
    url_ttl_ms: i64,
    export_ttl_ms: i64,
    orphan_grace: std::time::Duration,
    /// Bounds how many uploads are decoded at once (`imaging.max_parallel`).
    processing: tokio::sync::Semaphore,
    /// Upload bytes in memory, in KiB permits (`imaging.max_inflight_bytes`).
    inflight_kib: tokio::sync::Semaphore,
    /// An upload that sends nothing for this long is refused (`imaging.upload_idle_secs`).
    upload_idle: std::time::Duration,
}

impl Images {
    /// The imaging services, from the state `app` assembled.
    pub fn of(state: &AppState) -> &Images {
        state.get()
    }

    /// Builds the key provider and store the configuration names.
    pub async fn open(config: &Config, ring: &KeyRing) -> anyhow::Result<Self> {
        let c = &config.imaging;
        c.tiers.validate().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            c.max_inflight_bytes >= c.limits.max_bytes,
            "imaging.max_inflight_bytes ({}) must hold at least one upload of imaging.limits.max_bytes ({})",
            c.max_inflight_bytes,
            c.limits.max_bytes
        );
        let keys = match c.keys {
            KeyProviderKind::Local => {
                let (active, keks) = ring.purpose_keys(Purpose::ImageKek);
                KeyProvider::Local(LocalKeys::new(&active, keks)?)
            }
            KeyProviderKind::Kms => {
                anyhow::ensure!(
                    !c.kms.key_id.is_empty(),
                    "imaging.kms.key_id is required with imaging.keys = \"kms\""
                );
                let client = imaging::aws::kms_client(&imaging::aws::AwsSettings {
                    endpoint: c.kms.endpoint.clone(),
                    region: c.kms.region.clone(),
                    access_key_id: c.kms.access_key_id.clone(),
                    secret_access_key: c.kms.secret_access_key.clone(),
                })
                .await;
                KeyProvider::Kms(KmsKeys::new(
                    client,
                    &c.kms.key_id,
                    CacheLimits {
                        entries: c.kms.cache_entries,
                        ttl: std::time::Duration::from_secs(c.kms.cache_ttl_secs),
                    },
                ))
            }
        };
        let store = match c.store {
            StoreKind::Local => BlobStore::Local(LocalStore::open(&config.blob_dir())?),
            StoreKind::S3 => {
                let client = imaging::aws::s3_client(
                    &imaging::aws::AwsSettings {
                        endpoint: c.s3.endpoint.clone(),
                        region: c.s3.region.clone(),
                        access_key_id: c.s3.access_key_id.clone(),
                        secret_access_key: c.s3.secret_access_key.clone(),
                    },
                    c.s3.force_path_style,
                )
                .await;
                BlobStore::S3(S3Store::new(
                    client,
                    &c.s3.bucket,
                    &c.s3.prefix,
                    c.s3.sse_kms_key_id.clone(),
                    c.s3.storage_classes,
                ))
            }
        };
        Ok(Self {
            keys,
            store,
            limits: c.limits.clone(),
            policy: c.tiers.clone(),
            url_key: ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &ring.purpose_key(Purpose::ImageUrl),
            ),
            url_ttl_ms: c.url_ttl_secs.max(1) * 1000,
            export_ttl_ms: c.export_url_ttl_secs.max(1) * 1000,
            orphan_grace: std::time::Duration::from_secs(c.orphan_grace_secs),
            processing: tokio::sync::Semaphore::new(match c.max_parallel {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            }),
            upload_idle: std::time::Duration::from_secs(c.upload_idle_secs.max(1)),
            inflight_kib: tokio::sync::Semaphore::new(
                kib(c.max_inflight_bytes).min(tokio::sync::Semaphore::MAX_PERMITS as u64) as usize,
            ),
        })
    }

    /// Upload bytes that may still be taken into memory now (of `imaging.max_inflight_bytes`).
    pub fn inflight_free_bytes(&self) -> u64 {
        self.inflight_kib.available_permits() as u64 * 1024
    }

    /// A signed path for one variant of an image, for `caller` only, expiring after `ttl_ms`.
    fn sign_url(&self, image: &str, variant: Variant, caller: &Caller, expires: i64) -> String {
        let claims = UrlClaims {
            i: image.into(),
            v: variant.as_str().into(),
            u: caller.user_id.to_string(),
            c: caller.clinic_id.to_string(),
            e: expires,
        };
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let tag = ring::hmac::sign(&self.url_key, payload.as_bytes());
        format!(
            "/api/v1/image-files/{payload}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    fn verify_url(&self, token: &str) -> Option<UrlClaims> {
        let (payload, tag) = token.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        ring::hmac::verify(&self.url_key, payload.as_bytes(), &tag).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

/// A signed URL's claims (ids and times only, never PHI).
#[derive(Serialize, Deserialize)]
struct UrlClaims {
    /// Image id.
    i: String,
    /// Variant.
    v: String,
    /// The user it was issued to.
    u: String,
    /// Their tenant.
    c: String,
    /// Expiry (ms since the epoch).
    e: i64,
}

/// The stored forms of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Original,
    Preview,
    Thumbnail,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Original => "original",
            Variant::Preview => "preview",
            Variant::Thumbnail => "thumbnail",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        [Variant::Original, Variant::Preview, Variant::Thumbnail]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
struct ImageRow {
    id: String,
    patient_id: String,
    source: String,
    format: String,
    width: i64,
    height: i64,
    orientation: i64,
    captured_at: Option<String>,
    original_bytes: i64,
    original_key: String,
    preview_key: String,
    thumbnail_key: String,
    original_tier: String,
    created_at: i64,
    retain_until: i64,
    legal_hold_at: Option<i64>,
}

const COLUMNS: &str = "id, patient_id, source, format, width, height, orientation, captured_at, \
    original_bytes, original_key, preview_key, thumbnail_key, original_tier, created_at, \
    retain_until, legal_hold_at";

impl ImageRow {
    fn key(&self, v: Variant) -> Option<ObjectKey> {
        ObjectKey::parse(match v {
            Variant::Original => &self.original_key,
            Variant::Preview => &self.preview_key,
            Variant::Thumbnail => &self.thumbnail_key,
        })
    }
    fn tier(&self, v: Variant) -> Tier {
        match v {
            Variant::Original => Tier::parse(&self.original_tier).unwrap_or(Tier::Hot),
            _ => Tier::Hot,
        }
    }
}

/// An image as the API shows it.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ImageOut {
    pub id: String,
    pub patient_id: String,
    /// `staff` or `patient`.
    pub source: String,
    /// `jpeg`, `png` or `webp` (of the original).
    pub format: String,
    /// Upright size of the original, in pixels.
    pub width: i64,
    pub height: i64,
    /// EXIF orientation of the stored original (its pixels are as shot; derivatives are upright).
    pub orientation: i64,
    /// When the photo was taken, per the camera (`YYYY-MM-DDTHH:MM:SS`, with an offset if known).
    pub captured_at: Option<Pii<String>>,
    pub uploaded_at: String,
    pub original_bytes: i64,
    /// Storage tier of the original: `hot`, `warm` or `cold`.
    pub original_tier: String,
    pub legal_hold: bool,
    /// The earliest time the image may be deleted.
    pub retain_until: String,
    /// Signed, short-lived URLs for this caller (absent where the caller may not view).
    pub thumbnail_url: Option<String>,
    pub preview_url: Option<String>,
    pub urls_expire_at: Option<String>,
}

impl ImageOut {
    fn from_row(r: ImageRow, urls: Option<(&Images, &Caller, i64)>) -> Self {
        let (thumbnail_url, preview_url, urls_expire_at) = match urls {
            Some((images, caller, now)) => {
                let exp = now + images.url_ttl_ms;
                (
                    Some(images.sign_url(&r.id, Variant::Thumbnail, caller, exp)),
                    Some(images.sign_url(&r.id, Variant::Preview, caller, exp)),
                    Some(rfc3339(exp)),
                )
            }
            None => (None, None, None),
        };
        Self {
            id: r.id,
            patient_id: r.patient_id,
            source: r.source,
            format: r.format,
            width: r.width,
            height: r.height,
            orientation: r.orientation,
            captured_at: r.captured_at.map(Pii),
            uploaded_at: rfc3339(r.created_at),
            original_bytes: r.original_bytes,
            original_tier: r.original_tier,
            legal_hold: r.legal_hold_at.is_some(),
            retain_until: rfc3339(r.retain_until),
            thumbnail_url,
            preview_url,
            urls_expire_at,
        }
    }
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegalHold {
    /// Place (`true`) or lift (`false`) the hold.
    pub hold: bool,
}

#[derive(Deserialize)]
struct PatientPath {
    id: PatientId,
}

#[derive(Deserialize)]
struct ImagePath {
    id: String,
}

#[derive(Deserialize)]
struct TokenPath {
    token: String,
}

/// What an upload may be: the type is read from the bytes, never from `Content-Type`.
const UPLOAD_MEDIA: &[&str] = &["image/jpeg", "image/png", "image/webp"];

pub fn routes() -> Routes {
    Routes::new("images")
        .add(
            Method::POST,
            "/api/v1/patients/{id}/images",
            Policy::perm(Permission::ClinicalWrite),
            "Upload a wound photo for a patient (body: the image bytes; JPEG, PNG or WebP)",
            upload_for_patient,
        )
        .streaming()
        .status(StatusCode::CREATED)
        .bytes_body(UPLOAD_MEDIA)
        .add(
            Method::GET,
            "/api/v1/patients/{id}/images",
            Policy::perm(Permission::ImagesView),
            "List a patient's wound photos, with signed thumbnail and preview URLs",
            list_for_patient,
        )
        .add(
            Method::POST,
            "/api/v1/me/images",
            Policy::perm(Permission::OwnRecordsWrite),
            "Upload a wound photo of one's own (patients; body: the image bytes)",
            upload_own,
        )
        .streaming()
        .status(StatusCode::CREATED)
        .bytes_body(UPLOAD_MEDIA)
        .add(
            Method::GET,
            "/api/v1/me/images",
            Policy::perm(Permission::OwnRecordsRead),
            "List one's own wound photos (patients)",
            list_own,
        )
        .add(
            Method::POST,
            "/api/v1/images/{id}/export",
            Policy::sensitive(Permission::ImagesExport),
            "A signed URL for an image's original (an export: needs step-up; audited when fetched)",
            export,
        )
        .add(
            Method::GET,
            "/api/v1/image-files/{token}",
            Policy::AUTHENTICATED,
            "Fetch an image through a signed URL issued to the caller (audited as a view or export)",
            fetch_file,
        )
        .streaming()
        .responds(StatusCode::OK, Content::Media("image/*"))
        .add(
            Method::PUT,
            "/api/v1/images/{id}/legal-hold",
            Policy::perm(Permission::RecordsRetention),
            "Place or lift a legal hold on an image",
            legal_hold,
        )
        .body::<LegalHold>()
        .add(
            Method::DELETE,
            "/api/v1/images/{id}",
            Policy::perm(Permission::RecordsRetention),
            "Delete an image after its retention period (refused under legal hold)",
            delete_image,
        )
        .status(StatusCode::NO_CONTENT)
}

/// The problem answer for an imaging failure: 4xx for the upload's fault, 5xx for ours.
fn imaging_error(e: ImagingError) -> ApiError {
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

/// Reads the body up to the limit, refusing early: 413 past the limit (or a Content-Length over
/// it), 415 as soon as the first bytes are not an image, 400 when empty or interrupted.
/// Bytes as KiB permits, rounded up.
fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// An upload's share of `imaging.max_inflight_bytes`, held until it is stored.
type InflightPermit<'a> = tokio::sync::SemaphorePermit<'a>;

async fn read_upload<'a>(
    headers: &HeaderMap,
    body: Body,
    images: &'a Images,
) -> ApiResult<(Vec<u8>, InflightPermit<'a>)> {
    let limits = &images.limits;
    let too_large = || {
        imaging_error(ImagingError::TooLarge {
            limit: limits.max_bytes,
        })
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > limits.max_bytes
    {
        return Err(too_large());
    }
    // Reserve the upload's bytes before reading any: a burst waits here, its bodies unread.
    let reserve = kib(declared.unwrap_or(limits.max_bytes).max(1)) as u32;
    let permit = images
        .inflight_kib
        .acquire_many(reserve)
        .await
        .map_err(|_| ApiError::internal())?;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut sniffed = false;
    // A client that stops sending gives its reservation back after `upload_idle`.
    while let Some(chunk) = tokio::time::timeout(images.upload_idle, stream.next())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::UploadStalled,
                "the upload stopped sending data; try again",
            )
        })?
    {
        let chunk = chunk.map_err(|_| {
            ApiError::bad_request(
                ErrorCode::UploadInterrupted,
                "the upload was interrupted; try again",
            )
        })?;
        if buf.len() as u64 + chunk.len() as u64 > limits.max_bytes {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
        if !sniffed && buf.len() >= imaging::sniff::SNIFF_LEN {
            imaging::sniff(&buf).map_err(imaging_error)?;
            sniffed = true;
        }
    }
    if !sniffed {
        imaging::sniff(&buf).map_err(imaging_error)?;
    }
    Ok((buf, permit))
}

async fn upload_for_patient(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<PatientPath>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageOut>)> {
    // Check reach first, and end the transaction before the (slow) body is read.
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (_, reached) = patients::reach(&mut tx, &caller, &p.id, Permission::ClinicalWrite).await?;
    tx.commit().await?;
    let (bytes, inflight) = read_upload(&headers, body, Images::of(&state)).await?;
    let row = store_upload(&state, &caller, &p.id, "staff", &reached, bytes).await?;
    drop(inflight);
    let urls = crate::platform::authz::scope_of(caller.role, Permission::ImagesView)
        .is_some()
        .then_some((Images::of(&state), &caller, state.clock.now_ms()));
    Ok((StatusCode::CREATED, Json(ImageOut::from_row(row, urls))))
}

async fn upload_own(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImageOut>)> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (patient, reached) = tx.reach_own(&caller, Permission::OwnRecordsWrite).await?;
    tx.commit().await?;
    let (bytes, inflight) = read_upload(&headers, body, Images::of(&state)).await?;
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
async fn store_upload(
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
async fn remove_objects(images: &Images, tenant: &str, keys: &[ObjectKey]) {
    for key in keys {
        if let Err(e) = images.store.delete(tenant, key).await {
            tracing::warn!(error = %e, "could not remove an object of a failed upload");
        }
    }
}

async fn list_rows(
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

async fn audit_list(tx: &mut TenantTx, reached: &Reached, rows: &[ImageRow]) -> ApiResult<()> {
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

async fn list_for_patient(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<PatientPath>,
) -> ApiResult<Json<Vec<ImageOut>>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (_, reached) = patients::reach(&mut tx, &caller, &p.id, Permission::ImagesView).await?;
    let rows = list_rows(&mut tx, &caller.clinic_id, p.id.as_str()).await?;
    audit_list(&mut tx, &reached, &rows).await?;
    tx.commit().await?;
    let now = state.clock.now_ms();
    Ok(Json(
        rows.into_iter()
            .map(|r| ImageOut::from_row(r, Some((Images::of(&state), &caller, now))))
            .collect(),
    ))
}

async fn list_own(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<ImageOut>>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let (patient, reached) = tx.reach_own(&caller, Permission::OwnRecordsRead).await?;
    let rows = list_rows(&mut tx, &caller.clinic_id, patient.as_str()).await?;
    audit_list(&mut tx, &reached, &rows).await?;
    tx.commit().await?;
    let now = state.clock.now_ms();
    Ok(Json(
        rows.into_iter()
            .map(|r| ImageOut::from_row(r, Some((Images::of(&state), &caller, now))))
            .collect(),
    ))
}

/// An image of the caller's tenant (not deleted), with its patient's location and portal user.
async fn load_image(
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
async fn reach_image(
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

async fn export(
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

async fn fetch_file(
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

async fn legal_hold(
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

async fn delete_image(
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

/// What a tiering pass did.
#[derive(Debug, Default, Serialize)]
pub struct TierReport {
    /// (from, to) → originals moved.
    pub moved: BTreeMap<String, u64>,
    pub failed: u64,
    pub examined: u64,
    /// Objects no image refers to (left by a crash between storing and recording an upload, or
    /// by a failed removal), older than the grace period, removed.
    pub orphans_removed: u64,
}

/// Applies the tier policy to every tenant's originals: moves those whose age calls for a
/// colder tier, then records the new tier. Thumbnails and previews stay hot.
pub async fn apply_tiers(db: &Db, images: &Images, now: i64) -> anyhow::Result<TierReport> {
    let mut report = TierReport::default();
    for clinic in db.clinic_ids().await? {
        let mut tx = db.tenant_tx(&clinic, now).await?;
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT id, original_key, original_tier, created_at FROM images \
             WHERE clinic_id = $1 AND deleted_at IS NULL AND original_tier <> 'cold'",
        )
        .bind(clinic.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for (id, key, tier, created) in rows {
            report.examined += 1;
            let (Some(from), Some(key)) = (Tier::parse(&tier), ObjectKey::parse(&key)) else {
                report.failed += 1;
                continue;
            };
            let to = images.policy.tier_for(created, now);
            if to <= from {
                continue;
            }
            if let Err(e) = images.store.set_tier(clinic.as_str(), &key, from, to).await {
                tracing::warn!(error = %e, "tier move failed");
                report.failed += 1;
                continue;
            }
            let mut tx = db.tenant_tx(&clinic, now).await?;
            sqlx::query(
                "UPDATE images SET original_tier = $1, tier_changed_at = $2 WHERE id = $3 AND clinic_id = $4",
            )
            .bind(to.as_str())
            .bind(now)
            .bind(&id)
            .bind(clinic.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            *report
                .moved
                .entry(format!("{}->{}", from.as_str(), to.as_str()))
                .or_default() += 1;
        }
        report.orphans_removed += sweep_orphans(db, images, &clinic, now).await?;
    }
    Ok(report)
}

/// Removes a tenant's objects that no live image refers to and that are older than the grace
/// period (younger ones may belong to an upload still being recorded).
async fn sweep_orphans(
    db: &Db,
    images: &Images,
    clinic: &ClinicId,
    now: i64,
) -> anyhow::Result<u64> {
    let listed = images.store.list_modified(clinic.as_str()).await?;
    if listed.is_empty() {
        return Ok(0);
    }
    let mut tx = db.tenant_tx(clinic, now).await?;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT original_key, preview_key, thumbnail_key FROM images \
         WHERE clinic_id = $1 AND deleted_at IS NULL",
    )
    .bind(clinic.as_str())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let live: std::collections::HashSet<String> =
        rows.into_iter().flat_map(|(a, b, c)| [a, b, c]).collect();
    let cutoff = std::time::SystemTime::now() - images.orphan_grace;
    let mut removed = 0;
    for (key, modified) in listed {
        if !live.contains(key.as_str()) && modified <= cutoff {
            images.store.delete(clinic.as_str(), &key).await?;
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::warn!(removed, "removed objects no image refers to");
    }
    Ok(removed)
}
