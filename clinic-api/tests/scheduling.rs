//! Scheduling on the backend under test (SQLite by default, PostgreSQL with TEST_DATABASE_URL):
//! concurrent double booking, daylight-saving correctness, recurring series conflicts, holds,
//! idempotency, the status history, follow-ups, the telemedicine join window, and the outbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::domains::outbox::{
    self, Channel, DeliveryFuture, OutboxMessage, PortalChannel, WorkerConfig,
};
use clinic_api::platform::authz::Role;
use clinic_api::platform::db::Backend;
use clinic_api::platform::ids::LocationId;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{Reply, TestApp, TestUser};
use serde_json::{Value, json};

const DAY: i64 = 86_400;

struct Setup {
    app: Arc<TestApp>,
    admin: String,
    desk: String,
    desk_user: TestUser,
    north: LocationId,
}

async fn setup() -> Setup {
    let app = TestApp::with_config(|c| {
        c.database.max_connections = 12;
    })
    .await;
    let admin = app.user(Role::ClinicAdmin).await;
    let admin = app.session(&admin, Stage::Full).await;
    let desk_user = app.user(Role::FrontDesk).await;
    let desk = app.session(&desk_user, Stage::Full).await;
    let north = app.locations[0].clone();
    Setup {
        app: Arc::new(app),
        admin,
        desk,
        desk_user,
        north,
    }
}

impl Setup {
    /// Moves the clock on; sessions idle that long have ended, so the front desk signs in again.
    async fn advance(&mut self, secs: i64) {
        self.app.clock.advance_secs(secs);
        self.desk = self.app.session(&self.desk_user, Stage::Full).await;
    }

    async fn post(&self, cookie: &str, path: &str, body: Value) -> Reply {
        self.app
            .call(Method::POST, path, Some(cookie), Some(body))
            .await
    }
    async fn get(&self, cookie: &str, path: &str) -> Reply {
        self.app.call(Method::GET, path, Some(cookie), None).await
    }

    async fn add_type(&self, name: &str, modality: &str, minutes: i64, extra: Value) -> String {
        let mut body = json!({
            "name": name, "duration_min": minutes, "buffer_min": 0, "modality": modality,
            "bookable_by": ["front_desk", "provider", "patient"],
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .post(&self.admin, "/api/v1/appointment-types", body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }

    async fn add_room(&self, name: &str) -> String {
        let r = self
            .post(
                &self.admin,
                "/api/v1/rooms",
                json!({ "location_id": self.north, "name": name }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }

    /// A provider at North with the given weekly blocks `(weekday, start, end, modality)`.
    async fn provider(&self, blocks: &[(i64, &str, &str, &str)]) -> TestUser {
        let p = self
            .app
            .user_in(
                &self.app.clinic,
                Role::Provider,
                std::slice::from_ref(&self.north),
            )
            .await;
        for (weekday, start, end, modality) in blocks {
            let r = self
                .post(
                    &self.admin,
                    "/api/v1/availability",
                    json!({ "provider_id": p.id, "location_id": self.north, "weekday": weekday, "start": start, "end": end, "modality": modality }),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        }
        p
    }

    async fn patient(&self, n: usize) -> String {
        self.app
            .patient_in(&self.app.clinic, &self.north, "Pat", &format!("Number{n}"))
            .await
            .to_string()
    }

    /// A patient with a portal account: (patient id, session cookie, user).
    async fn portal_patient(&self, given: &str) -> (String, String, TestUser) {
        let user = self.app.user(Role::Patient).await;
        let mut tx = self.app.state.tx(&self.app.clinic).await.unwrap();
        let id = clinic_api::demo::insert_patient(
            &mut tx,
            &self.app.clinic,
            &self.north,
            Some(&user.id),
            given,
            "Tester",
            "1955-05-05",
            self.app.now(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        (
            id.to_string(),
            self.app.session(&user, Stage::Full).await,
            user,
        )
    }

    async fn book(&self, cookie: &str, body: Value) -> Reply {
        self.post(cookie, "/api/v1/appointments", body).await
    }
}

/// Runs `n` bookings at once on a multi-threaded runtime; returns the replies.
async fn concurrently(s: &Setup, bodies: Vec<Value>) -> Vec<Reply> {
    let mut tasks = Vec::new();
    for body in bodies {
        let app = s.app.clone();
        let cookie = s.desk.clone();
        tasks.push(tokio::spawn(async move {
            app.call(
                Method::POST,
                "/api/v1/appointments",
                Some(&cookie),
                Some(body),
            )
            .await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn exactly_one_wins(replies: &[Reply], what: &str) {
    let won: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    assert_eq!(
        won.len(),
        1,
        "{what}: exactly one booking must succeed: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(r.status, StatusCode::CONFLICT, "{what}: {}", r.text);
        assert_eq!(r.code(), "slot_unavailable", "{what}: {}", r.text);
        assert_eq!(r.body["conflict"]["with"], what, "{}", r.text);
        // The conflicting appointment's time, in the location's local time.
        assert_eq!(
            r.body["conflict"]["start"], won[0].body["start"],
            "{}",
            r.text
        );
    }
}

async fn active_count(s: &Setup, column: &str, value: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(&format!(
        "SELECT count(*) FROM appointments WHERE {column} = $1 AND status IN ('held', 'booked', 'checked_in')"
    ))
    .bind(value)
    .fetch_one(&s.app.admin.pool)
    .await
    .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_bookings_of_one_provider_room_or_patient_one_succeeds() {
    let s = setup().await;
    let visit = s
        .add_type("Foot exam", "in_person", 30, json!({ "needs_room": true }))
        .await;
    let tele = s
        .add_type("Video check", "telemedicine", 30, json!({}))
        .await;
    let room = s.add_room("Room 1").await;
    let start = "2026-10-06T10:00"; // a Tuesday, inside default opening hours
    let mut patients = Vec::new();
    for i in 0..50 {
        patients.push(s.patient(i).await);
    }
    let mut providers = Vec::new();
    for _ in 0..50 {
        providers.push(s.provider(&[]).await);
    }

    // One provider, fifty patients.
    let bodies = patients
        .iter()
        .map(|p| json!({ "type_id": tele, "location_id": s.north, "provider_id": providers[0].id, "patient_id": p, "start": start, "override_availability": true }))
        .collect();
    let replies = concurrently(&s, bodies).await;
    exactly_one_wins(&replies, "provider");
    assert_eq!(
        active_count(&s, "provider_id", providers[0].id.as_str()).await,
        1
    );

    // One room, fifty providers and patients, half an hour later.
    let start = "2026-10-06T11:00";
    let bodies = (0..50)
        .map(|i| json!({ "type_id": visit, "location_id": s.north, "provider_id": providers[i].id, "patient_id": patients[i], "room_id": room, "start": start, "override_availability": true }))
        .collect();
    let replies = concurrently(&s, bodies).await;
    exactly_one_wins(&replies, "room");
    assert_eq!(active_count(&s, "room_id", &room).await, 1);

    // One patient, fifty providers.
    let start = "2026-10-06T13:00";
    let bodies = providers
        .iter()
        .map(|p| json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patients[7], "start": start, "override_availability": true }))
        .collect();
    let replies = concurrently(&s, bodies).await;
    exactly_one_wins(&replies, "patient");

    // On PostgreSQL the database itself refuses an overlap that skips the application's check.
    if s.app.backend() == Backend::Postgres {
        let (id, clinic, loc, provider, patient, ty, starts, ends, by): (String, String, String, String, String, String, i64, i64, String) =
            sqlx::query_as("SELECT id, clinic_id, location_id, provider_id, patient_id, type_id, starts_at, ends_at, created_by FROM appointments WHERE provider_id = $1")
                .bind(providers[0].id.as_str())
                .fetch_one(&s.app.admin.pool)
                .await
                .unwrap();
        let err = sqlx::query(
            "INSERT INTO appointments (id, clinic_id, location_id, provider_id, patient_id, type_id, modality, starts_at, ends_at, busy_until, status, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'telemedicine', $7, $8, $8, 'booked', $9, 0, 0)",
        )
        .bind(format!("{id}-x"))
        .bind(clinic)
        .bind(loc)
        .bind(provider)
        .bind(&patients[1])
        .bind(ty)
        .bind(starts + 60_000)
        .bind(ends + 60_000)
        .bind(by)
        .execute(&s.app.admin.pool)
        .await
        .expect_err("the exclusion constraint must refuse an overlap");
        let _ = patient;
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("23P01"), "{db}");
        assert_eq!(db.constraint(), Some("appointments_provider_overlap"));
    }
}

#[tokio::test]
async fn weekly_template_keeps_local_time_across_dst_and_bad_local_times_are_refused() {
    let s = setup().await;
    let tele = s
        .add_type("Video check", "telemedicine", 30, json!({}))
        .await;
    let p = s.provider(&[(1, "09:00", "10:00", "any")]).await;
    let patient = s.patient(1).await;
    // New York falls back on Sunday 2026-11-01.
    let r = s
        .get(&s.desk, &format!("/api/v1/slots?location_id={}&type_id={tele}&provider_id={}&from=2026-10-26&days=14", s.north, p.id))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let starts: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["start"].as_str().unwrap())
        .collect();
    assert_eq!(
        starts,
        [
            "2026-10-26T09:00:00-04:00",
            "2026-10-26T09:15:00-04:00",
            "2026-10-26T09:30:00-04:00",
            "2026-11-02T09:00:00-05:00",
            "2026-11-02T09:15:00-05:00",
            "2026-11-02T09:30:00-05:00"
        ]
    );
    // Booked by local wall time after the change: still 09:00 local, 14:00 UTC.
    let r = s
        .book(&s.desk, json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-11-02T09:00" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["start"], "2026-11-02T09:00:00-05:00");
    let (starts_at,): (i64,) = sqlx::query_as("SELECT starts_at FROM appointments WHERE id = $1")
        .bind(r.body["id"].as_str().unwrap())
        .fetch_one(&s.app.admin.pool)
        .await
        .unwrap();
    assert_eq!(
        starts_at,
        chrono::DateTime::parse_from_rfc3339("2026-11-02T14:00:00Z")
            .unwrap()
            .timestamp_millis()
    );
    // The booked slot is gone from the list, with its neighbour that would overlap.
    let r = s
        .get(
            &s.desk,
            &format!(
                "/api/v1/slots?location_id={}&type_id={tele}&provider_id={}&from=2026-11-02&days=1",
                s.north, p.id
            ),
        )
        .await;
    assert_eq!(r.body, json!([r.body[0].clone()]), "{}", r.text);
    assert_eq!(r.body[0]["start"], "2026-11-02T09:30:00-05:00");

    // 02:30 on 2027-03-14 does not exist in New York; 01:30 on 2026-11-01 happens twice.
    let r = s
        .book(&s.desk, json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2027-03-14T02:30", "override_availability": true }))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.code(), "nonexistent_local_time");
    let r = s
        .book(&s.desk, json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-11-01T01:30", "override_availability": true }))
        .await;
    assert_eq!(r.code(), "ambiguous_local_time", "{}", r.text);
    assert_eq!(
        r.body["candidates"],
        json!(["2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00"])
    );
    // With the offset it is unambiguous.
    let r = s
        .book(&s.desk, json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-11-01T01:30:00-05:00", "override_availability": true }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Outside the template without the override: refused.
    let r = s
        .book(&s.desk, json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-11-03T09:00" }))
        .await;
    assert_eq!(r.code(), "outside_availability", "{}", r.text);
}

#[tokio::test]
async fn a_series_reports_exactly_its_two_conflicting_occurrences() {
    let s = setup().await;
    let exam = s
        .add_type("Diabetic foot check", "in_person", 30, json!({}))
        .await;
    let p = s.provider(&[(1, "08:00", "12:00", "in_person")]).await;
    let patient = s.patient(1).await;
    let other = s.patient(2).await;
    // Two other visits in the way: 2027-01-25 09:15 and 2027-05-17 09:00 (both Mondays).
    for start in ["2027-01-25T09:15", "2027-05-17T09:00"] {
        let r = s
            .book(&s.desk, json!({ "type_id": exam, "location_id": s.north, "provider_id": p.id, "patient_id": other, "start": start }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    // Every 8 weeks for a year, from Monday 2026-10-05 09:00.
    let r = s
        .post(
            &s.desk,
            "/api/v1/appointments/series",
            json!({ "type_id": exam, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-10-05T09:00", "rrule": "FREQ=WEEKLY;INTERVAL=8;COUNT=7" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let occ = r.body["occurrences"].as_array().unwrap();
    let starts: Vec<&str> = occ.iter().map(|o| o["start"].as_str().unwrap()).collect();
    // The wall time stays 09:00 across both daylight-saving changes.
    assert_eq!(
        starts,
        [
            "2026-10-05T09:00:00-04:00",
            "2026-11-30T09:00:00-05:00",
            "2027-01-25T09:00:00-05:00",
            "2027-03-22T09:00:00-04:00",
            "2027-05-17T09:00:00-04:00",
            "2027-07-12T09:00:00-04:00",
            "2027-09-06T09:00:00-04:00"
        ]
    );
    let conflicts: Vec<(&str, &Value)> = occ
        .iter()
        .filter(|o| o["outcome"] == "conflict")
        .map(|o| (o["start"].as_str().unwrap(), &o["conflict"]))
        .collect();
    assert_eq!(conflicts.len(), 2, "{}", r.text);
    assert_eq!(conflicts[0].0, "2027-01-25T09:00:00-05:00");
    assert_eq!(conflicts[0].1["start"], "2027-01-25T09:15:00-05:00");
    assert_eq!(conflicts[1].0, "2027-05-17T09:00:00-04:00");
    assert_eq!(conflicts[1].1["with"], "provider");
    assert_eq!(r.body["booked"], 5);
    assert_eq!(r.body["conflicts"], 2);
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM appointments WHERE series_id = $1 AND status = 'booked'",
    )
    .bind(r.body["series_id"].as_str().unwrap())
    .fetch_one(&s.app.admin.pool)
    .await
    .unwrap();
    assert_eq!(n, 5);
    // Nonsense rules are a clear 422.
    for bad in [
        "FREQ=SOMETIMES",
        "FREQ=DAILY",
        "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY;COUNT=2",
    ] {
        let r = s
            .post(
                &s.desk,
                "/api/v1/appointments/series",
                json!({ "type_id": exam, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-10-05T09:00", "rrule": bad }),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.text
        );
        assert_eq!(r.code(), "invalid_rrule", "{bad}: {}", r.text);
    }
}

#[tokio::test]
async fn a_telemedicine_join_link_works_only_inside_its_window() {
    let mut s = setup().await;
    let tele = s
        .add_type("Video check", "telemedicine", 20, json!({}))
        .await;
    let p = s.provider(&[(3, "09:00", "12:00", "telemedicine")]).await;
    let provider = s.app.session(&p, Stage::Full).await;
    let (patient, me, me_user) = s.portal_patient("Robin").await;
    // Wednesday 2026-09-23 10:00 New York (the test clock is Monday 2026-09-21 10:13).
    let r = s
        .book(&s.desk, json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-09-23T10:00" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let appt = r.body["id"].as_str().unwrap().to_string();
    let consult = r.body["consult_id"]
        .as_str()
        .expect("a telemedicine booking opens its consult")
        .to_string();
    assert_eq!(r.body["join_opens_at"], "2026-09-23T13:45:00.000Z");
    let join = format!("/api/v1/appointments/{appt}/join");

    // Too early: refused, with when it opens.
    let r = s.post(&me, &join, json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "join_not_open");
    assert_eq!(r.body["opens_at"], "2026-09-23T13:45:00.000Z");
    // A link issued now by staff does not work before the window either.
    let staff_link = s
        .post(
            &provider,
            &format!("/api/v1/consults/{consult}/links"),
            json!({ "role": "caregiver", "display_name": "Daughter" }),
        )
        .await;
    assert_eq!(staff_link.status, StatusCode::OK, "{}", staff_link.text);
    let code = |url: &str| url.split_once('#').unwrap().1.to_string();
    let early_code = code(staff_link.body["url"].as_str().unwrap());
    let r = s
        .app
        .call(
            Method::POST,
            "/api/v1/consults/join",
            None,
            Some(json!({ "code": early_code })),
        )
        .await;
    assert_eq!(r.code(), "join_not_open", "{}", r.text);

    // Ten minutes before the start: both participants get links that work.
    let start = chrono::DateTime::parse_from_rfc3339("2026-09-23T14:00:00Z")
        .unwrap()
        .timestamp();
    s.advance(start - 600 - s.app.now() / 1000).await;
    let me = s.app.session(&me_user, Stage::Full).await;
    let provider = s.app.session(&p, Stage::Full).await;
    let r = s.post(&me, &join, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.body["url"]
            .as_str()
            .unwrap()
            .starts_with("/consult/join#")
    );
    let token = s
        .app
        .call(
            Method::POST,
            "/api/v1/consults/join",
            None,
            Some(json!({ "code": code(r.body["url"].as_str().unwrap()) })),
        )
        .await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.text);
    assert_eq!(token.body["consult_id"], consult.as_str());
    assert_eq!(token.body["role"], "patient");
    let r = s.post(&provider, &join, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.body["url"]
            .as_str()
            .unwrap()
            .starts_with("/consult/provider#")
    );
    // The staff link issued earlier works now too.
    let r = s
        .app
        .call(
            Method::POST,
            "/api/v1/consults/join",
            None,
            Some(json!({ "code": early_code })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Only the appointment's own patient and provider.
    let (_, stranger, _) = s.portal_patient("Other").await;
    assert_eq!(
        s.post(&stranger, &join, json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    let other = s
        .app
        .user_in(
            &s.app.clinic,
            Role::Provider,
            std::slice::from_ref(&s.north),
        )
        .await;
    let other = s.app.session(&other, Stage::Full).await;
    assert_eq!(
        s.post(&other, &join, json!({})).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.post(&s.desk, &join, json!({})).await.status,
        StatusCode::FORBIDDEN
    );

    // After the end plus the grace period: closed.
    s.app.clock.advance_secs(600 + 20 * 60 + 31 * 60);
    let me = s.app.session(&me_user, Stage::Full).await;
    let r = s.post(&me, &join, json!({})).await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.text);
    assert_eq!(r.code(), "join_closed");
}

#[tokio::test]
async fn patients_hold_and_book_open_slots_of_their_types_and_see_only_their_own() {
    let s = setup().await;
    let open = s
        .add_type("Video check", "telemedicine", 30, json!({}))
        .await;
    let staff_only = s
        .add_type(
            "Procedure",
            "in_person",
            60,
            json!({ "bookable_by": ["front_desk"] }),
        )
        .await;
    let p = s.provider(&[(3, "09:00", "10:00", "any")]).await;
    let (_, me, _) = s.portal_patient("Robin").await;
    let (other_id, other, _) = s.portal_patient("Alex").await;

    let types = s.get(&me, "/api/v1/me/appointment-types").await;
    let names: Vec<&str> = types
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Video check"]);
    let r = s
        .get(
            &me,
            &format!(
                "/api/v1/me/slots?location_id={}&type_id={staff_only}&from=2026-09-23&days=1",
                s.north
            ),
        )
        .await;
    assert_eq!(r.code(), "unknown_type", "{}", r.text);
    let r = s
        .post(&me, "/api/v1/me/holds", json!({ "type_id": staff_only, "location_id": s.north, "provider_id": p.id, "start": "2026-09-23T09:00" }))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    let slots_path = format!(
        "/api/v1/me/slots?location_id={}&type_id={open}&from=2026-09-23&days=1",
        s.north
    );
    let slots = s.get(&me, &slots_path).await;
    assert_eq!(slots.body.as_array().unwrap().len(), 3, "{}", slots.text);
    let first = slots.body[0]["start"].as_str().unwrap().to_string();
    assert_eq!(first, "2026-09-23T09:00:00-04:00");
    let choice =
        json!({ "type_id": open, "location_id": s.north, "provider_id": p.id, "start": first });
    let hold = s.post(&me, "/api/v1/me/holds", choice.clone()).await;
    assert_eq!(hold.status, StatusCode::CREATED, "{}", hold.text);
    assert_eq!(hold.body["status"], "held");
    // Held: gone for others (with its overlapping neighbour), and not bookable by them.
    let theirs = s.get(&other, &slots_path).await;
    let starts: Vec<&str> = theirs
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["start"].as_str().unwrap())
        .collect();
    assert_eq!(starts, ["2026-09-23T09:30:00-04:00"]);
    let r = s
        .post(&other, "/api/v1/me/appointments", choice.clone())
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    // The hold expires by itself: the slot is open again, and the late confirmation is refused.
    s.app.clock.advance_secs(301);
    let theirs = s.get(&other, &slots_path).await;
    assert_eq!(theirs.body.as_array().unwrap().len(), 3, "{}", theirs.text);
    let r = s
        .post(
            &me,
            "/api/v1/me/appointments",
            json!({ "hold_id": hold.body["id"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.text);
    assert_eq!(r.code(), "hold_expired");
    // Hold again and confirm in time.
    let hold = s.post(&me, "/api/v1/me/holds", choice.clone()).await;
    assert_eq!(hold.status, StatusCode::CREATED, "{}", hold.text);
    let booked = s
        .post(
            &me,
            "/api/v1/me/appointments",
            json!({ "hold_id": hold.body["id"] }),
        )
        .await;
    assert_eq!(booked.status, StatusCode::CREATED, "{}", booked.text);
    assert_eq!(booked.body["status"], "booked");
    assert!(booked.body["consult_id"].is_string());
    assert!(booked.body["patient_name"].is_null());
    // Another patient books directly; each sees only their own.
    let r = s
        .post(&other, "/api/v1/me/appointments", json!({ "type_id": open, "location_id": s.north, "provider_id": p.id, "start": "2026-09-23T09:30" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mine = s.get(&me, "/api/v1/me/appointments").await;
    assert_eq!(mine.body.as_array().unwrap().len(), 1, "{}", mine.text);
    let theirs = s.get(&other, "/api/v1/me/appointments").await;
    assert_eq!(theirs.body.as_array().unwrap().len(), 1);
    assert_eq!(theirs.body[0]["patient_id"], other_id.as_str());
    // …and cannot cancel someone else's.
    let r = s
        .post(
            &other,
            &format!(
                "/api/v1/me/appointments/{}/cancel",
                booked.body["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s
        .post(
            &me,
            &format!(
                "/api/v1/me/appointments/{}/cancel",
                booked.body["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    // Staff routes stay closed to patients.
    assert_eq!(
        s.get(
            &me,
            &format!("/api/v1/slots?location_id={}&type_id={open}", s.north)
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
}

async fn book_with_key(s: &Setup, key: &str, body: Value) -> Reply {
    book_with_key_as(s, &s.desk, key, body).await
}

async fn book_with_key_as(s: &Setup, cookie: &str, key: &str, body: Value) -> Reply {
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/appointments")
        .header("cookie", cookie)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    s.app.send(req).await
}

#[tokio::test]
async fn a_retried_booking_with_the_same_idempotency_key_returns_the_first_result() {
    let s = setup().await;
    let tele = s
        .add_type("Video check", "telemedicine", 30, json!({}))
        .await;
    let p = s.provider(&[(3, "09:00", "12:00", "any")]).await;
    let patient = s.patient(1).await;
    let body = json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-09-23T09:00" });
    let first = book_with_key(&s, "retry-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = book_with_key(&s, "retry-1", body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.headers.get("idempotent-replay").unwrap(), "true");
    assert_eq!(active_count(&s, "provider_id", p.id.as_str()).await, 1);
    // Without the key the same request is a conflict; with the key and another body, refused.
    assert_eq!(
        s.book(&s.desk, body.clone()).await.status,
        StatusCode::CONFLICT
    );
    let mut changed = body.clone();
    changed["start"] = json!("2026-09-23T10:00");
    let r = book_with_key(&s, "retry-1", changed).await;
    assert_eq!(r.code(), "idempotency_key_reused", "{}", r.text);
    // Concurrent retries with one key: all get the same appointment.
    let body2 = json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-09-23T11:00" });
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s2_app, desk, body2) = (s.app.clone(), s.desk.clone(), body2.clone());
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/api/v1/appointments")
                .header("cookie", &desk)
                .header("content-type", "application/json")
                .header("idempotency-key", "retry-2")
                .body(Body::from(body2.to_string()))
                .unwrap();
            s2_app.send(req).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        ids.insert(r.body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(active_count(&s, "provider_id", p.id.as_str()).await, 2);
}

/// An idempotency record keeps ids and a hash, never the answer (which names the patient), and
/// lasts a day: after it, the key is free again.
#[tokio::test]
async fn idempotency_records_hold_no_names_and_expire_after_a_day() {
    let s = setup().await;
    let tele = s
        .add_type("Video check", "telemedicine", 30, json!({}))
        .await;
    let p = s
        .provider(&[(3, "09:00", "12:00", "any"), (4, "09:00", "12:00", "any")])
        .await;
    let patient = s.patient(7).await;
    let body = json!({ "type_id": tele, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-09-23T09:00" });
    let first = book_with_key(&s, "day-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(
        first.body["patient_name"], "Pat Number7",
        "staff see the name"
    );
    let stored: Vec<(String,)> = sqlx::query_as("SELECT response FROM idempotency_keys")
        .fetch_all(&s.app.admin.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(
        !stored[0].0.contains("Number7") && !stored[0].0.contains("Pat "),
        "no name kept: {}",
        stored[0].0
    );
    // Replayed within the day, the name is there again (read now, as this caller may see it).
    let again = book_with_key(&s, "day-1", body.clone()).await;
    assert_eq!(again.headers.get("idempotent-replay").unwrap(), "true");
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["patient_name"], "Pat Number7");
    // A day later the key is forgotten: another request under it books, not 422.
    s.app.clock.advance_secs(24 * 3600 + 1);
    let mut later = body.clone();
    later["start"] = json!("2026-09-24T10:00");
    let fresh = s.app.session(&s.desk_user, Stage::Full).await;
    let r = book_with_key_as(&s, &fresh, "day-1", later).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_ne!(r.body["id"], first.body["id"]);
    let (left,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM idempotency_keys WHERE created_at < $1")
            .bind(s.app.now() - 24 * 3600 * 1000)
            .fetch_one(&s.app.admin.pool)
            .await
            .unwrap();
    assert_eq!(left, 0, "expired records are swept");
}

#[tokio::test]
async fn status_history_follow_up_reschedule_and_audit() {
    let mut s = setup().await;
    let visit = s
        .add_type("Nail procedure", "in_person", 30, json!({ "needs_room": true, "buffer_min": 10, "followups": [{ "after_days": 3, "kind": "checkin" }, { "after_days": 7, "kind": "photo_prompt" }] }))
        .await;
    s.add_room("Chair A").await;
    let p = s
        .provider(&[
            (2, "09:00", "12:00", "in_person"),
            (3, "09:00", "12:00", "in_person"),
        ])
        .await;
    let patient = s.patient(1).await;
    let r = s
        .book(&s.desk, json!({ "type_id": visit, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": "2026-09-22T09:00" }))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(
        r.body["room_id"].is_string(),
        "a free room is picked: {}",
        r.text
    );
    let id = r.body["id"].as_str().unwrap().to_string();
    // The buffer keeps the provider and the chair busy until 09:40.
    let r = s
        .book(&s.desk, json!({ "type_id": visit, "location_id": s.north, "provider_id": p.id, "patient_id": s.patient(2).await, "start": "2026-09-22T09:30" }))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.body["conflict"]["end"], "2026-09-22T09:30:00-04:00");
    // Reschedule to 10:00, then no-show is too early, check-in, complete.
    let r = s
        .post(
            &s.desk,
            &format!("/api/v1/appointments/{id}/reschedule"),
            json!({ "start": "2026-09-22T10:00" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["start"], "2026-09-22T10:00:00-04:00");
    let r = s
        .post(
            &s.desk,
            &format!("/api/v1/appointments/{id}/no-show"),
            json!({}),
        )
        .await;
    assert_eq!(r.code(), "not_started", "{}", r.text);
    s.advance(DAY).await;
    // A day later: the provider signs in (a session from yesterday would have idled out).
    let provider = s.app.session(&p, Stage::Full).await;
    assert_eq!(
        s.post(
            &s.desk,
            &format!("/api/v1/appointments/{id}/check-in"),
            json!({})
        )
        .await
        .status,
        StatusCode::OK
    );
    let r = s
        .post(
            &provider,
            &format!("/api/v1/appointments/{id}/complete"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = s
        .post(
            &s.desk,
            &format!("/api/v1/appointments/{id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(r.code(), "invalid_transition", "{}", r.text);
    // History kept, oldest first.
    let r = s.get(&s.desk, &format!("/api/v1/appointments/{id}")).await;
    let steps: Vec<(Value, Value)> = r.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["from_status"].clone(), h["to_status"].clone()))
        .collect();
    assert_eq!(
        steps,
        [
            (Value::Null, json!("booked")),
            (json!("booked"), json!("booked")),
            (json!("booked"), json!("checked_in")),
            (json!("checked_in"), json!("completed"))
        ]
    );
    assert_eq!(r.body["history"][0]["start"], "2026-09-22T09:00:00-04:00");
    // Completing scheduled the type's two messages, at 10:00 local on days 3 and 7.
    let due: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, due_at FROM outbox_messages WHERE appointment_id = $1 ORDER BY due_at",
    )
    .bind(&id)
    .fetch_all(&s.app.admin.pool)
    .await
    .unwrap();
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    };
    assert_eq!(
        due,
        [
            ("checkin".to_string(), at("2026-09-25T10:00:00-04:00")),
            ("photo_prompt".to_string(), at("2026-09-29T10:00:00-04:00"))
        ]
    );
    // The provider books the follow-up in one step: first open slot from 14 days on.
    let r = s
        .post(
            &provider,
            &format!("/api/v1/appointments/{id}/follow-up"),
            json!({ "after_days": 14 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["follow_up_of"], id.as_str());
    assert_eq!(r.body["start"], "2026-10-06T09:00:00-04:00");
    assert_eq!(r.body["provider_id"], p.id.as_str());
    // Every read and change is in the audit log.
    let actions: Vec<(String, String)> = sqlx::query_as("SELECT action, coalesce(detail, '') FROM audit_events WHERE resource_type = 'appointment' AND resource_id = $1 ORDER BY seq")
        .bind(&id)
        .fetch_all(&s.app.admin.pool)
        .await
        .unwrap();
    let actions: Vec<String> = actions
        .into_iter()
        .map(|(a, d)| format!("{a} {d}"))
        .collect();
    assert!(
        actions.iter().any(|a| a.starts_with("create")),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a == "modify reschedule"),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a == "modify checked_in -> completed"),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| a.starts_with("view")), "{actions:?}");
    // A front desk member of another location cannot touch it (and the denial is audited).
    let south = s
        .app
        .user_in(
            &s.app.clinic,
            Role::FrontDesk,
            std::slice::from_ref(&s.app.locations[1]),
        )
        .await;
    let south = s.app.session(&south, Stage::Full).await;
    assert_eq!(
        s.get(&south, &format!("/api/v1/appointments/{id}"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Another tenant does not see it at all.
    let (other_clinic, other_locs) = s.app.add_clinic("beta").await;
    let outsider = s
        .app
        .user_in(&other_clinic, Role::FrontDesk, &other_locs)
        .await;
    let outsider = s.app.session(&outsider, Stage::Full).await;
    assert_eq!(
        s.get(&outsider, &format!("/api/v1/appointments/{id}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

// ---------------------------------------------------------------------------------------------
// The outbox

/// Delivers through the portal, but "dies" (never returns) after delivering message number
/// `die_after`, as a process killed between sending and recording would.
struct DyingChannel {
    delivered: Mutex<u32>,
    die_after: u32,
    died: tokio::sync::Notify,
}

impl Channel for DyingChannel {
    fn name(&self) -> &'static str {
        "portal"
    }
    fn deliver<'a>(
        &'a self,
        db: &'a clinic_api::platform::db::Db,
        msg: &'a OutboxMessage,
    ) -> DeliveryFuture<'a> {
        Box::pin(async move {
            PortalChannel.deliver(db, msg).await?;
            let n = {
                let mut d = self.delivered.lock().unwrap();
                *d += 1;
                *d
            };
            if n == self.die_after {
                self.died.notify_one();
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    }
}

/// Counts deliveries per message (no deduplication): shows whether two workers ever send one
/// message twice. Fails the first `fail_first` attempts of every message.
struct CountingChannel {
    seen: Mutex<HashMap<String, u32>>,
    fail_first: u32,
}

impl Channel for CountingChannel {
    fn name(&self) -> &'static str {
        "test"
    }
    fn deliver<'a>(
        &'a self,
        _db: &'a clinic_api::platform::db::Db,
        msg: &'a OutboxMessage,
    ) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let n = {
                let mut seen = self.seen.lock().unwrap();
                let n = seen.entry(msg.id.clone()).or_default();
                *n += 1;
                *n
            };
            tokio::task::yield_now().await;
            if n <= self.fail_first {
                Err(format!("provider unavailable (attempt {n})"))
            } else {
                Ok(())
            }
        })
    }
}

/// Completes `n` appointments of a type with check-ins at days 3, 7 and 14; returns the patient.
async fn completed_visits(s: &Setup, n: usize) -> Vec<String> {
    let ty = s
        .add_type("Procedure", "in_person", 30, json!({ "followups": [{ "after_days": 3, "kind": "checkin" }, { "after_days": 7, "kind": "photo_prompt" }, { "after_days": 14, "kind": "checkin" }] }))
        .await;
    let p = s.provider(&[]).await;
    let mut patients = Vec::new();
    for i in 0..n {
        let patient = s.patient(100 + i).await;
        let r = s
            .book(&s.desk, json!({ "type_id": ty, "location_id": s.north, "provider_id": p.id, "patient_id": patient, "start": format!("2026-09-22T{:02}:00", 8 + i), "override_availability": true }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let r = s
            .post(
                &s.desk,
                &format!(
                    "/api/v1/appointments/{}/complete",
                    r.body["id"].as_str().unwrap()
                ),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        patients.push(patient);
    }
    patients
}

fn worker() -> WorkerConfig {
    WorkerConfig {
        lease_ms: 60_000,
        max_attempts: 5,
        batch: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_delivers_each_due_message_exactly_once_across_a_worker_restart() {
    let s = setup().await;
    completed_visits(&s, 5).await;
    let db = s.app.state.db.clone();
    // Nothing is due yet.
    let r = outbox::deliver_due(&db, &PortalChannel, s.app.now(), &worker())
        .await
        .unwrap();
    assert_eq!(r.sent, 0);
    s.app.clock.advance_secs(20 * DAY);
    let now = s.app.now();

    // The first worker dies right after delivering its fourth message, before recording it.
    let dying = Arc::new(DyingChannel {
        delivered: Mutex::new(0),
        die_after: 4,
        died: tokio::sync::Notify::new(),
    });
    let task = {
        let (db, dying) = (db.clone(), dying.clone());
        tokio::spawn(async move { outbox::deliver_due(&db, &*dying, now, &worker()).await })
    };
    dying.died.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let sent = |s: &Setup| {
        let pool = s.app.admin.pool.clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM outbox_messages WHERE status = 'sent'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            n
        }
    };
    assert_eq!(sent(&s).await, 3);

    // A restarted worker does not touch the leased messages until the lease runs out…
    let r = outbox::deliver_due(&db, &PortalChannel, now + 1_000, &worker())
        .await
        .unwrap();
    assert_eq!(r.sent, 0);
    // …then delivers the rest, including the one whose delivery was never recorded.
    let r = outbox::deliver_due(&db, &PortalChannel, now + 61_000, &worker())
        .await
        .unwrap();
    assert_eq!(r.sent, 12);
    assert_eq!(sent(&s).await, 15);
    let per_message: Vec<(String, i64)> = sqlx::query_as(
        "SELECT o.id, (SELECT count(*) FROM portal_messages m WHERE m.id = o.id) FROM outbox_messages o",
    )
    .fetch_all(&s.app.admin.pool)
    .await
    .unwrap();
    assert_eq!(per_message.len(), 15);
    assert!(
        per_message.iter().all(|(_, n)| *n == 1),
        "each message exactly once: {per_message:?}"
    );
    let r = outbox::deliver_due(&db, &PortalChannel, now + 3_600_000, &worker())
        .await
        .unwrap();
    assert_eq!(r.sent, 0);

    // Messages carry no PHI: the fixed generic prompt and a portal link only.
    let bodies: Vec<(String, String)> = sqlx::query_as("SELECT body, link FROM portal_messages")
        .fetch_all(&s.app.admin.pool)
        .await
        .unwrap();
    for (body, link) in &bodies {
        assert!(
            !body.contains("Pat") && !body.contains("Number") && !body.contains("Procedure"),
            "{body}"
        );
        assert!(link == "/" || link == "/photos", "{link}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_never_send_a_message_twice_and_failures_back_off() {
    let s = setup().await;
    completed_visits(&s, 6).await;
    s.app.clock.advance_secs(20 * DAY);
    let now = s.app.now();
    let db = s.app.state.db.clone();
    let counting = Arc::new(CountingChannel {
        seen: Mutex::new(HashMap::new()),
        fail_first: 0,
    });
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (db, ch) = (db.clone(), counting.clone());
        tasks.push(tokio::spawn(async move {
            outbox::deliver_due(
                &db,
                &*ch,
                now,
                &WorkerConfig {
                    lease_ms: 60_000,
                    max_attempts: 5,
                    batch: 3,
                },
            )
            .await
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().unwrap().sent;
    }
    // Small batches: keep passing until everything is out.
    while total < 18 {
        total += outbox::deliver_due(&db, &*counting, now, &worker())
            .await
            .unwrap()
            .sent;
    }
    let seen = counting.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 18);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");

    // A channel that fails twice: retried after 30 s, then 60 s; never early.
    let s = setup().await;
    completed_visits(&s, 1).await;
    s.app.clock.advance_secs(20 * DAY);
    let t0 = s.app.now();
    let flaky = CountingChannel {
        seen: Mutex::new(HashMap::new()),
        fail_first: 2,
    };
    let db = s.app.state.db.clone();
    let r = outbox::deliver_due(&db, &flaky, t0, &worker())
        .await
        .unwrap();
    assert_eq!((r.sent, r.retried), (0, 3));
    assert_eq!(
        outbox::deliver_due(&db, &flaky, t0 + 29_000, &worker())
            .await
            .unwrap()
            .retried,
        0
    );
    assert_eq!(
        outbox::deliver_due(&db, &flaky, t0 + 30_000, &worker())
            .await
            .unwrap()
            .retried,
        3
    );
    assert_eq!(
        outbox::deliver_due(&db, &flaky, t0 + 89_000, &worker())
            .await
            .unwrap()
            .sent,
        0
    );
    let r = outbox::deliver_due(&db, &flaky, t0 + 90_000, &worker())
        .await
        .unwrap();
    assert_eq!(r.sent, 3);
    let attempts: Vec<(i64, String)> =
        sqlx::query_as("SELECT attempts, status FROM outbox_messages")
            .fetch_all(&s.app.admin.pool)
            .await
            .unwrap();
    assert!(
        attempts.iter().all(|(a, st)| *a == 3 && st == "sent"),
        "{attempts:?}"
    );
    // Giving up after the limit.
    let s = setup().await;
    completed_visits(&s, 1).await;
    s.app.clock.advance_secs(20 * DAY);
    let never = CountingChannel {
        seen: Mutex::new(HashMap::new()),
        fail_first: 100,
    };
    let db = s.app.state.db.clone();
    let cfg = WorkerConfig {
        lease_ms: 60_000,
        max_attempts: 2,
        batch: 100,
    };
    let t0 = s.app.now();
    outbox::deliver_due(&db, &never, t0, &cfg).await.unwrap();
    let r = outbox::deliver_due(&db, &never, t0 + 3_600_000, &cfg)
        .await
        .unwrap();
    assert_eq!(r.failed, 3);
}

/// Staff book only patients they reach at the patient's own location: a visit at North does not
/// open a South patient to North's front desk (refused and audited, nothing booked, no name
/// answered); a provider breaking glass with a reason books, audited as break-glass. An
/// availability exception names a real provider even without a location.
#[tokio::test]
async fn staff_book_only_patients_they_reach_and_exceptions_name_a_real_provider() {
    let s = setup().await;
    let ty = s.add_type("Foot exam", "in_person", 30, json!({})).await;
    let provider = s.provider(&[]).await;
    let south = s.app.locations[1].clone();
    let southerner = s
        .app
        .patient_in(&s.app.clinic, &south, "Sam", "Southerly")
        .await;
    let northerner = s.patient(1).await;
    let body = |patient: &str, start: &str| json!({ "type_id": ty, "location_id": s.north, "provider_id": provider.id, "patient_id": patient, "start": start, "override_availability": true });

    let ok = s.book(&s.desk, body(&northerner, "2026-10-06T10:00")).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    let refused = s
        .book(&s.desk, body(southerner.as_str(), "2026-10-06T11:00"))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    assert!(!refused.text.contains("Southerly"), "{}", refused.text);
    assert_eq!(active_count(&s, "patient_id", southerner.as_str()).await, 0);
    let (denied,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE patient_id = $1 AND actor_id = $2 AND outcome = 'denied'",
    )
    .bind(southerner.as_str())
    .bind(s.desk_user.id.as_str())
    .fetch_one(&s.app.admin.pool)
    .await
    .unwrap();
    assert_eq!(denied, 1, "the refusal is audited");

    // A provider breaking glass books, and the booking is recorded as break-glass.
    let cookie = s.app.session(&provider, Stage::Full).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/appointments")
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .header("clinic-break-glass-reason", "covering urgent wound check")
        .body(Body::from(
            body(southerner.as_str(), "2026-10-06T12:00").to_string(),
        ))
        .unwrap();
    let glass = s.app.send(req).await;
    assert_eq!(glass.status, StatusCode::CREATED, "{}", glass.text);
    let (purpose, reason): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT purpose, reason FROM audit_events WHERE resource_type = 'appointment' AND action = 'create' AND patient_id = $1",
    )
    .bind(southerner.as_str())
    .fetch_one(&s.app.admin.pool)
    .await
    .unwrap();
    assert_eq!(
        (purpose.as_deref(), reason.as_deref()),
        (Some("break_glass"), Some("covering urgent wound check"))
    );

    // Exceptions without a location still name a real, active provider.
    for who in [uuid::Uuid::new_v4().to_string(), s.desk_user.id.to_string()] {
        let r = s
            .post(
                &s.admin,
                "/api/v1/availability-exceptions",
                json!({ "provider_id": who, "kind": "off", "modality": "any", "start": "2026-10-07T00:00:00Z", "end": "2026-10-08T00:00:00Z" }),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "unknown_provider"),
            "{who}: {}",
            r.text
        );
    }
    let r = s
        .post(
            &s.admin,
            "/api/v1/availability-exceptions",
            json!({ "provider_id": provider.id, "kind": "off", "modality": "any", "start": "2026-10-07T00:00:00Z", "end": "2026-10-08T00:00:00Z" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}
