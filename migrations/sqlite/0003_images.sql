-- Wound images: one row per upload. The bytes live in the blob store as three sealed objects
-- (original without metadata, preview, thumbnail) under random keys; a row is written only after
-- all three are stored, so no row ever points at nothing.

CREATE TABLE images (
    id                TEXT PRIMARY KEY,
    clinic_id         TEXT NOT NULL REFERENCES clinics(id),
    patient_id        TEXT NOT NULL REFERENCES patients(id),
    uploaded_by       TEXT NOT NULL REFERENCES users(id),
    source            TEXT NOT NULL CHECK (source IN ('staff', 'patient')),
    format            TEXT NOT NULL CHECK (format IN ('jpeg', 'png', 'webp', 'heic')),
    width             BIGINT NOT NULL,
    height            BIGINT NOT NULL,
    orientation       BIGINT NOT NULL,
    captured_at       TEXT,
    original_bytes    BIGINT NOT NULL,
    original_key      TEXT NOT NULL,
    preview_key       TEXT NOT NULL,
    thumbnail_key     TEXT NOT NULL,
    original_tier     TEXT NOT NULL CHECK (original_tier IN ('hot', 'warm', 'cold')),
    tier_changed_at   BIGINT,
    key_provider      TEXT NOT NULL,
    store             TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    retain_until      BIGINT NOT NULL,
    legal_hold_at     BIGINT,
    legal_hold_by     TEXT,
    deleted_at        BIGINT
);
CREATE INDEX images_patient ON images (clinic_id, patient_id, created_at);
CREATE INDEX images_tier ON images (clinic_id, original_tier, created_at);
