-- Foundation (PostgreSQL): tenants, locations, identity, MFA, sessions, patients, audit.
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


-- The application's role: it owns nothing, so row-level security always applies to it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'clinic_app') THEN
        CREATE ROLE clinic_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- created concurrently by another database's migration
END
$$;

-- The tenant of the current transaction, set by the server with
-- set_config('app.clinic_id', <id>, true) at the start of every transaction.
CREATE FUNCTION app_clinic() RETURNS text LANGUAGE sql STABLE AS
$$ SELECT nullif(current_setting('app.clinic_id', true), '') $$;

-- Login resolves a clinic slug before any tenant is set; this is the only way through.
CREATE FUNCTION clinic_id_by_slug(p_slug text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS
$$ SELECT id FROM clinics WHERE slug = p_slug $$;
REVOKE ALL ON FUNCTION clinic_id_by_slug(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION clinic_id_by_slug(text) TO clinic_app;

ALTER TABLE clinics ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON clinics USING (id = app_clinic()) WITH CHECK (id = app_clinic());
ALTER TABLE locations ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON locations USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
ALTER TABLE user_locations ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON user_locations USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
ALTER TABLE mfa_recovery_codes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON mfa_recovery_codes USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
ALTER TABLE patients ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON patients USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());

GRANT USAGE ON SCHEMA public TO clinic_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON clinics, locations, users, user_locations, mfa_recovery_codes, sessions, patients TO clinic_app;
-- The audit log: INSERT and SELECT only, and triggers refuse change even to the owner.
GRANT SELECT, INSERT ON audit_events TO clinic_app;
REVOKE ALL ON _sqlx_migrations FROM clinic_app;

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$;
CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- Checkpointing needs each tenant's chain head; the server's role sees one tenant at a time, so
-- this definer function returns heads (hashes, no event content) for all of them.
CREATE FUNCTION audit_heads() RETURNS TABLE (clinic_id text, seq bigint, hash text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS
$$ SELECT a.clinic_id, a.seq, a.hash FROM audit_events a
   JOIN (SELECT e.clinic_id AS c, MAX(e.seq) AS m FROM audit_events e GROUP BY e.clinic_id) b
   ON a.clinic_id = b.c AND a.seq = b.m $$;
REVOKE ALL ON FUNCTION audit_heads() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_heads() TO clinic_app;
