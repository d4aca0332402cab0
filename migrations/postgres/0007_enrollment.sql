-- One-time enrollment links (issue 16 point 3): an account created by an administrator gets a
-- link for its holder to set the first password, instead of a password its creator sees. Only the
-- token's SHA-256 is stored; `used_at` is set once, by a conditional update.
CREATE TABLE enrollment_links (
    id          TEXT PRIMARY KEY,
    clinic_id   TEXT NOT NULL REFERENCES clinics(id),
    user_id     TEXT NOT NULL REFERENCES users(id),
    token_hash  TEXT NOT NULL UNIQUE,
    created_by  TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX enrollment_links_user ON enrollment_links (user_id);

-- Set when someone other than the user chose the password (an operator's `clinic user add`):
-- the user's sessions reach only the password change until it is changed. 0 or 1.
ALTER TABLE users ADD COLUMN must_change_password BIGINT NOT NULL DEFAULT 0;

-- A tenant table like the others (0001, 0005): forced row-level security, the tenant policy, the
-- owner's cross-tenant read, and the server's role may not delete (a spent link stays spent).
ALTER TABLE enrollment_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE enrollment_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON enrollment_links USING (clinic_id = app_clinic()) WITH CHECK (clinic_id = app_clinic());
DO $$
BEGIN
    EXECUTE format('CREATE POLICY owner_reads_all_tenants ON enrollment_links FOR SELECT TO %I USING (true)',
        (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = 'public.enrollment_links'::regclass));
END
$$;
GRANT SELECT, INSERT, UPDATE ON enrollment_links TO clinic_app;
