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

mod access;
mod gate;
mod model;
mod purge;
mod tiers;
mod upload;

use access::*;
use gate::*;
pub use model::ImageOut;
use model::*;
use purge::purge;
pub use purge::{KeptImage, Purge, PurgeOut};
pub use tiers::{TierReport, apply_tiers};
use upload::*;

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
    /// Idle time, deadline, minimum rate, waits and quotas of an upload.
    rules: UploadRules,
    /// Each user's uploads at once (`imaging.uploads_per_user`).
    per_user: PerUser,
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
            rules: UploadRules::of(c),
            per_user: PerUser::new(c.uploads_per_user),
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
            // Both directions need step-up: the policy is per route, and placing a hold is as rare.
            Policy::sensitive(Permission::RecordsRetention),
            "Place or lift a legal hold on an image (needs step-up)",
            legal_hold,
        )
        .body::<LegalHold>()
        .add(
            Method::POST,
            "/api/v1/patients/{id}/images/purge",
            Policy::sensitive(Permission::RecordsRetention),
            "Purge junk uploads a patient sent from their own account, named or from the last hours \
             (with a reason; not under legal hold, never staff uploads; audited; needs step-up)",
            purge,
        )
        .body::<Purge>()
        .add(
            Method::DELETE,
            "/api/v1/images/{id}",
            Policy::sensitive(Permission::RecordsRetention),
            "Delete an image after its retention period (refused under legal hold; needs step-up)",
            delete_image,
        )
        .status(StatusCode::NO_CONTENT)
}
