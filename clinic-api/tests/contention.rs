//! Contention is never a 500: a flood of writers (registrations and bad sign-ins at once) on a
//! database whose lock wait is far shorter than the flood answers every request with its real
//! answer, loses no write, and keeps the audit chain whole.

use axum::http::{Method, StatusCode};
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{TestApp, backend_name};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_writes_and_bad_sign_ins_answers_no_5xx() {
    let app = TestApp::with_config(|c| {
        // A lock wait far shorter than the flood: SQLite's own busy handler alone answered
        // "database is locked" (500) here for most of the writers.
        c.database.busy_timeout_ms = 1;
        c.database.max_connections = 16;
        c.login.per_ip_per_minute = 0;
        c.login.per_account_per_minute = 0;
        c.login.backoff_after = 10_000;
        c.login.lock_after = 20_000;
    })
    .await;
    let desk = app.user(Role::FrontDesk).await;
    let cookie = app.session(&desk, Stage::Full).await;
    let location = app.locations[0].to_string();
    let (before,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM patients")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    const WRITERS: usize = 48;
    const EACH: usize = 4;
    let registrations = (0..WRITERS).map(|w| {
        let (app, cookie, location) = (&app, cookie.clone(), location.clone());
        async move {
            let mut statuses = Vec::new();
            for i in 0..EACH {
                let r = app
                    .call(
                        Method::POST,
                        "/api/v1/patients",
                        Some(&cookie),
                        Some(json!({ "location_id": location, "given_name": format!("Flood{w}"), "family_name": format!("Writer{i}"), "birth_date": "1950-01-01" })),
                    )
                    .await;
                statuses.push((r.status, r.text));
            }
            statuses
        }
    });
    let sign_ins = (0..16).map(|n| {
        let app = &app;
        async move {
            let r = app
                .call(
                    Method::POST,
                    "/api/v1/auth/login",
                    None,
                    Some(json!({ "clinic": "alpha", "username": format!("nobody-{n}"), "password": "wrong password!" })),
                )
                .await;
            vec![(r.status, r.text)]
        }
    });
    let (written, refused) = tokio::join!(
        futures_util::future::join_all(registrations),
        futures_util::future::join_all(sign_ins)
    );
    let server_errors: Vec<_> = written
        .iter()
        .chain(refused.iter())
        .flatten()
        .filter(|(s, _)| s.is_server_error())
        .collect();
    assert!(
        server_errors.is_empty(),
        "{}: {} of {} answers were 5xx, e.g. {:?}",
        backend_name(),
        server_errors.len(),
        WRITERS * EACH + 16,
        server_errors.first()
    );
    let created = written
        .iter()
        .flatten()
        .filter(|(s, _)| *s == StatusCode::OK)
        .count();
    assert_eq!(created, WRITERS * EACH, "every registration is written");
    assert!(
        refused
            .iter()
            .flatten()
            .all(|(s, _)| *s == StatusCode::UNAUTHORIZED)
    );
    let (after,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM patients")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert_eq!((after - before) as usize, WRITERS * EACH, "no write lost");
    // The audit chain has no gap: one event a sequence number, none skipped or doubled.
    let (events, top): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM audit_events WHERE clinic_id = $1",
    )
    .bind(app.clinic.as_str())
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(events, top, "the audit chain has no gap");
}
