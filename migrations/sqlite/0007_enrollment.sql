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
