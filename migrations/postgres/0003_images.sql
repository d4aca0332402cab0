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

ALTER TABLE images ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON images USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
GRANT SELECT, INSERT, UPDATE ON images TO clinic_app;

-- The tiering job walks tenants one by one (each in its own tenant transaction); this lists them
-- without exposing anything else across tenants.
CREATE FUNCTION clinic_ids() RETURNS SETOF text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT id FROM clinics ORDER BY id $$;
REVOKE ALL ON FUNCTION clinic_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION clinic_ids() TO clinic_app;
