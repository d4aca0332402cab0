//! An image's row, its answer (with signed URLs for the caller) and the routes' path types.

use super::*;

#[derive(Clone, Debug, sqlx::FromRow)]
pub(super) struct ImageRow {
    pub(super) id: String,
    pub(super) patient_id: String,
    pub(super) source: String,
    pub(super) format: String,
    pub(super) width: i64,
    pub(super) height: i64,
    pub(super) orientation: i64,
    pub(super) captured_at: Option<String>,
    pub(super) original_bytes: i64,
    pub(super) original_key: String,
    pub(super) preview_key: String,
    pub(super) thumbnail_key: String,
    pub(super) original_tier: String,
    pub(super) created_at: i64,
    pub(super) retain_until: i64,
    pub(super) legal_hold_at: Option<i64>,
}

pub(super) const COLUMNS: &str = "id, patient_id, source, format, width, height, orientation, captured_at, \
    original_bytes, original_key, preview_key, thumbnail_key, original_tier, created_at, \
    retain_until, legal_hold_at";

impl ImageRow {
    pub(super) fn key(&self, v: Variant) -> Option<ObjectKey> {
        ObjectKey::parse(match v {
            Variant::Original => &self.original_key,
            Variant::Preview => &self.preview_key,
            Variant::Thumbnail => &self.thumbnail_key,
        })
    }
    pub(super) fn tier(&self, v: Variant) -> Tier {
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
    pub(super) fn from_row(r: ImageRow, urls: Option<(&Images, &Caller, i64)>) -> Self {
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
pub(super) struct PatientPath {
    pub(super) id: PatientId,
}

#[derive(Deserialize)]
pub(super) struct ImagePath {
    pub(super) id: String,
}

#[derive(Deserialize)]
pub(super) struct TokenPath {
    pub(super) token: String,
}
