-- Video consults and their one-time join links (PostgreSQL: with row-level security).

CREATE TABLE consults (
    id           TEXT PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics(id),
    location_id  TEXT NOT NULL REFERENCES locations(id),
    patient_id   TEXT REFERENCES patients(id),
    created_by   TEXT NOT NULL REFERENCES users(id),
    status       TEXT NOT NULL CHECK (status IN ('open', 'ended')),
    end_reason   TEXT,
    created_at   BIGINT NOT NULL,
    ended_at     BIGINT
);

-- A join link carries `<clinic id>.<one-time code>`; only the code's SHA-256 is stored. Exchanging
-- the code for a join token spends it.
CREATE TABLE consult_links (
    id              TEXT PRIMARY KEY,
    clinic_id       TEXT NOT NULL REFERENCES clinics(id),
    consult_id      TEXT NOT NULL REFERENCES consults(id),
    participant_id  TEXT NOT NULL,
    role            TEXT NOT NULL,
    display_name    TEXT NOT NULL,
    code_hash       TEXT NOT NULL UNIQUE,
    created_by      TEXT NOT NULL REFERENCES users(id),
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT
);
CREATE INDEX consult_links_consult ON consult_links (consult_id);

ALTER TABLE consults ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON consults USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
ALTER TABLE consult_links ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON consult_links USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
GRANT SELECT, INSERT, UPDATE ON consults, consult_links TO clinic_app;
