-- Scheduling: opening hours, rooms, appointment types, provider availability, appointments with
-- their status history, recurring series, idempotency keys, and the outbox of patient messages.
-- Local times of day are minutes since midnight in the location's IANA zone; instants are BIGINT
-- milliseconds since the Unix epoch, as everywhere else.

CREATE TABLE location_hours (
    id           TEXT PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics(id),
    location_id  TEXT NOT NULL REFERENCES locations(id),
    weekday      BIGINT NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    opens_min    BIGINT NOT NULL,
    closes_min   BIGINT NOT NULL,
    CHECK (opens_min >= 0 AND opens_min < closes_min AND closes_min <= 1440)
);
CREATE INDEX location_hours_location ON location_hours (location_id);

CREATE TABLE rooms (
    id           TEXT PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics(id),
    location_id  TEXT NOT NULL REFERENCES locations(id),
    name         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    disabled_at  BIGINT,
    UNIQUE (location_id, name)
);

-- bookable_by: comma-separated roles; followups: JSON list of {"after_days": n, "kind": k}.
CREATE TABLE appointment_types (
    id           TEXT PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics(id),
    name         TEXT NOT NULL,
    duration_min BIGINT NOT NULL CHECK (duration_min BETWEEN 5 AND 480),
    buffer_min   BIGINT NOT NULL CHECK (buffer_min BETWEEN 0 AND 120),
    modality     TEXT NOT NULL CHECK (modality IN ('in_person', 'telemedicine')),
    needs_room   BIGINT NOT NULL CHECK (needs_room IN (0, 1)),
    bookable_by  TEXT NOT NULL,
    followups    TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    disabled_at  BIGINT,
    UNIQUE (clinic_id, name)
);

-- Weekly template blocks; `modality` carries the provider's preference for the block
-- (for example telemedicine only in the afternoon).
CREATE TABLE availability (
    id           TEXT PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics(id),
    provider_id  TEXT NOT NULL REFERENCES users(id),
    location_id  TEXT NOT NULL REFERENCES locations(id),
    weekday      BIGINT NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    start_min    BIGINT NOT NULL,
    end_min      BIGINT NOT NULL,
    modality     TEXT NOT NULL CHECK (modality IN ('any', 'in_person', 'telemedicine')),
    created_at   BIGINT NOT NULL,
    CHECK (start_min >= 0 AND start_min < end_min AND end_min <= 1440)
);
CREATE INDEX availability_provider ON availability (provider_id, location_id);

-- Time off (kind off) and extra hours (kind extra), as instants.
CREATE TABLE availability_exceptions (
    id           TEXT PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics(id),
    provider_id  TEXT NOT NULL REFERENCES users(id),
    location_id  TEXT REFERENCES locations(id),
    kind         TEXT NOT NULL CHECK (kind IN ('off', 'extra')),
    modality     TEXT NOT NULL CHECK (modality IN ('any', 'in_person', 'telemedicine')),
    starts_at    BIGINT NOT NULL,
    ends_at      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    CHECK (starts_at < ends_at)
);
CREATE INDEX availability_exceptions_provider ON availability_exceptions (provider_id, starts_at);

CREATE TABLE appointment_series (
    id           TEXT PRIMARY KEY,
    clinic_id    TEXT NOT NULL REFERENCES clinics(id),
    rrule        TEXT NOT NULL,
    created_by   TEXT NOT NULL REFERENCES users(id),
    created_at   BIGINT NOT NULL
);

-- A provider, a room and a patient never hold two overlapping active appointments (held, booked,
-- checked_in). busy_until = ends_at + the type's buffer: the provider's and room's time.
CREATE TABLE appointments (
    id               TEXT PRIMARY KEY,
    clinic_id        TEXT NOT NULL REFERENCES clinics(id),
    location_id      TEXT NOT NULL REFERENCES locations(id),
    provider_id      TEXT NOT NULL REFERENCES users(id),
    patient_id       TEXT NOT NULL REFERENCES patients(id),
    room_id          TEXT REFERENCES rooms(id),
    type_id          TEXT NOT NULL REFERENCES appointment_types(id),
    modality         TEXT NOT NULL CHECK (modality IN ('in_person', 'telemedicine')),
    starts_at        BIGINT NOT NULL,
    ends_at          BIGINT NOT NULL,
    busy_until       BIGINT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('held', 'booked', 'checked_in', 'completed', 'cancelled', 'no_show', 'expired')),
    hold_expires_at  BIGINT,
    series_id        TEXT REFERENCES appointment_series(id),
    follow_up_of     TEXT REFERENCES appointments(id),
    consult_id       TEXT REFERENCES consults(id),
    created_by       TEXT NOT NULL REFERENCES users(id),
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    CHECK (starts_at < ends_at AND ends_at <= busy_until)
);
CREATE INDEX appointments_provider ON appointments (clinic_id, provider_id, starts_at);
CREATE INDEX appointments_patient ON appointments (clinic_id, patient_id, starts_at);
CREATE INDEX appointments_location ON appointments (clinic_id, location_id, starts_at);

CREATE TABLE appointment_events (
    id               TEXT PRIMARY KEY,
    clinic_id        TEXT NOT NULL REFERENCES clinics(id),
    appointment_id   TEXT NOT NULL REFERENCES appointments(id),
    seq              BIGINT NOT NULL,
    at               BIGINT NOT NULL,
    actor_id         TEXT,
    from_status      TEXT,
    to_status        TEXT NOT NULL,
    starts_at        BIGINT NOT NULL,
    ends_at          BIGINT NOT NULL,
    provider_id      TEXT NOT NULL,
    room_id          TEXT
);
CREATE UNIQUE INDEX appointment_events_appointment ON appointment_events (appointment_id, seq);

-- A retried request with the same Idempotency-Key (per user) gets the first answer.
CREATE TABLE idempotency_keys (
    clinic_id     TEXT NOT NULL REFERENCES clinics(id),
    user_id       TEXT NOT NULL REFERENCES users(id),
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT NOT NULL,
    response      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (clinic_id, user_id, idem_key)
);

-- Scheduled patient messages. Text is generic (a prompt and a portal link), never PHI.
CREATE TABLE outbox_messages (
    id               TEXT PRIMARY KEY,
    clinic_id        TEXT NOT NULL REFERENCES clinics(id),
    patient_id       TEXT NOT NULL REFERENCES patients(id),
    appointment_id   TEXT REFERENCES appointments(id),
    kind             TEXT NOT NULL,
    channel          TEXT NOT NULL,
    body             TEXT NOT NULL,
    link             TEXT NOT NULL,
    due_at           BIGINT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    lease_until      BIGINT,
    last_error       TEXT,
    sent_at          BIGINT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX outbox_messages_due ON outbox_messages (status, next_attempt_at);

-- The portal channel's mailbox: its primary key is the outbox message id, so a redelivery after a
-- crash cannot add a second copy.
CREATE TABLE portal_messages (
    id            TEXT PRIMARY KEY,
    clinic_id     TEXT NOT NULL REFERENCES clinics(id),
    patient_id    TEXT NOT NULL REFERENCES patients(id),
    kind          TEXT NOT NULL,
    body          TEXT NOT NULL,
    link          TEXT NOT NULL,
    delivered_at  BIGINT NOT NULL,
    read_at       BIGINT
);
CREATE INDEX portal_messages_patient ON portal_messages (clinic_id, patient_id, delivered_at);

ALTER TABLE consults ADD COLUMN appointment_id TEXT;
-- A link of an appointment's consult works from shortly before the start.
ALTER TABLE consult_links ADD COLUMN not_before BIGINT;
