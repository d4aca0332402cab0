-- Foundation: tenants, locations, identity, MFA, sessions, patients, audit.
-- Identifiers are TEXT (UUIDs), times are BIGINT milliseconds since the Unix epoch, and flags are
-- nullable timestamps (disabled_at, used_at, revoked_at), so the same SQL runs on both backends.

CREATE TABLE clinics (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE locations (
    id          TEXT PRIMARY KEY,
    clinic_id   TEXT NOT NULL REFERENCES clinics(id),
    name        TEXT NOT NULL,
    time_zone   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (clinic_id, name)
);

CREATE TABLE users (
    id                  TEXT PRIMARY KEY,
    clinic_id           TEXT NOT NULL REFERENCES clinics(id),
    username            TEXT NOT NULL,
    display_name        TEXT NOT NULL,
    role                TEXT NOT NULL,
    password_hash       TEXT NOT NULL,
    disabled_at         BIGINT,
    mfa_secret          TEXT,
    mfa_pending_secret  TEXT,
    mfa_enrolled_at     BIGINT,
    totp_last_step      BIGINT,
    failed_logins       BIGINT NOT NULL DEFAULT 0,
    locked_until        BIGINT,
    last_login_at       BIGINT,
    password_changed_at BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    UNIQUE (clinic_id, username)
);

CREATE TABLE user_locations (
    clinic_id   TEXT NOT NULL REFERENCES clinics(id),
    user_id     TEXT NOT NULL REFERENCES users(id),
    location_id TEXT NOT NULL REFERENCES locations(id),
    PRIMARY KEY (user_id, location_id)
);

CREATE TABLE mfa_recovery_codes (
    id          TEXT PRIMARY KEY,
    clinic_id   TEXT NOT NULL REFERENCES clinics(id),
    user_id     TEXT NOT NULL REFERENCES users(id),
    code_hash   TEXT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX mfa_recovery_codes_user ON mfa_recovery_codes (user_id);

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    clinic_id     TEXT NOT NULL REFERENCES clinics(id),
    user_id       TEXT NOT NULL REFERENCES users(id),
    token_hash    TEXT NOT NULL UNIQUE,
    stage         TEXT NOT NULL CHECK (stage IN ('mfa_pending', 'enroll_only', 'full')),
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    mfa_at        BIGINT,
    revoked_at    BIGINT,
    ip            TEXT,
    user_agent    TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE patients (
    id           TEXT PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics(id),
    location_id  TEXT NOT NULL REFERENCES locations(id),
    user_id      TEXT REFERENCES users(id),
    given_name   TEXT NOT NULL,
    family_name  TEXT NOT NULL,
    birth_date   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX patients_clinic_location ON patients (clinic_id, location_id);

-- Append-only, hash-chained audit log: one chain per tenant, h_seq = SHA-256(h_{seq-1} || canonical(event)).
CREATE TABLE audit_events (
    clinic_id      TEXT NOT NULL REFERENCES clinics(id),
    seq            BIGINT NOT NULL,
    at             BIGINT NOT NULL,
    actor_id       TEXT,
    actor_role     TEXT,
    patient_id     TEXT,
    resource_type  TEXT NOT NULL,
    resource_id    TEXT,
    action         TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    ip             TEXT,
    user_agent     TEXT,
    session_id     TEXT,
    purpose        TEXT,
    reason         TEXT,
    detail         TEXT,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    PRIMARY KEY (clinic_id, seq)
);
CREATE INDEX audit_events_patient ON audit_events (clinic_id, patient_id);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
