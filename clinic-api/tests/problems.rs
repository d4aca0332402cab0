//! Bad input gets a clear 4xx with an RFC 9457 problem body, and writes nothing.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::TestApp;
use serde_json::json;

async fn patients(app: &TestApp) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM patients")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap()
        .0
}

fn raw(cookie: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/patients")
        .header("cookie", cookie);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).unwrap()
}

#[tokio::test]
async fn malformed_oversize_and_unknown_input_is_refused_cleanly() {
    let app = TestApp::new().await;
    let desk = app.user(Role::FrontDesk).await;
    let cookie = app.session(&desk, Stage::Full).await;
    let loc = app.locations[0].to_string();
    let valid = json!({ "location_id": loc, "given_name": "Val", "family_name": "Id", "birth_date": "1970-05-06" });

    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        ("malformed json", raw(&cookie, Some("application/json"), "{\"location_id\": "), StatusCode::BAD_REQUEST, "malformed_json"),
        ("not json at all", raw(&cookie, Some("application/json"), vec![0xff, 0xfe, 0x00, 0x13]), StatusCode::BAD_REQUEST, "malformed_json"),
        ("no content type", raw(&cookie, None, valid.to_string()), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("wrong content type", raw(&cookie, Some("text/plain"), valid.to_string()), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (
            "unknown field",
            raw(&cookie, Some("application/json"), json!({ "location_id": loc, "given_name": "A", "family_name": "B", "birth_date": "1970-05-06", "ssn": "x" }).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        ("wrong type", raw(&cookie, Some("application/json"), json!({ "location_id": 5, "given_name": "A", "family_name": "B", "birth_date": "x" }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("bad id", raw(&cookie, Some("application/json"), json!({ "location_id": "not-a-uuid", "given_name": "A", "family_name": "B", "birth_date": "1970-05-06" }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("bad date", raw(&cookie, Some("application/json"), json!({ "location_id": loc, "given_name": "A", "family_name": "B", "birth_date": "1970-13-45" }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ("empty name", raw(&cookie, Some("application/json"), json!({ "location_id": loc, "given_name": " ", "family_name": "B", "birth_date": "1970-05-06" }).to_string()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (
            "unknown location",
            raw(&cookie, Some("application/json"), json!({ "location_id": uuid::Uuid::new_v4().to_string(), "given_name": "A", "family_name": "B", "birth_date": "1970-05-06" }).to_string()),
            StatusCode::FORBIDDEN,
            "location_not_assigned",
        ),
        (
            "oversize body",
            raw(&cookie, Some("application/json"), format!("{{\"given_name\": \"{}\"}}", "a".repeat(70 * 1024))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (name, req, status, code) in cases {
        let reply = app.send(req).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.text);
        assert_eq!(reply.code(), code, "{name}: {}", reply.text);
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{name}"
        );
        assert_eq!(reply.body["status"], status.as_u16(), "{name}");
        assert!(
            reply.body["type"]
                .as_str()
                .unwrap()
                .starts_with("/problems/"),
            "{name}"
        );
        assert!(!reply.body["detail"].as_str().unwrap().is_empty(), "{name}");
    }
    assert_eq!(patients(&app).await, 0, "nothing was written");
    let ok = app
        .call(Method::POST, "/api/v1/patients", Some(&cookie), Some(valid))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(patients(&app).await, 1);
}

#[tokio::test]
async fn bad_paths_queries_and_routes_are_problems_too() {
    let app = TestApp::new().await;
    let admin = app.user(Role::ClinicAdmin).await;
    let cookie = app.session(&admin, Stage::Full).await;
    for (method, path, status) in [
        (Method::GET, "/api/v1/no-such-route", StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/api/v1/users/not-a-uuid/disable",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/v1/audit?limit=lots",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/v1/audit?unknown=1",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let r = app.call(method.clone(), path, Some(&cookie), None).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{path}"
        );
    }
    let r = app
        .call(
            Method::POST,
            "/api/v1/locations",
            Some(&cookie),
            Some(json!({ "name": "East", "time_zone": "Mars/Olympus" })),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_time_zone")
    );
    let r = app
        .call(
            Method::POST,
            "/api/v1/locations",
            Some(&cookie),
            Some(json!({ "name": "North", "time_zone": "UTC" })),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "location_exists"),
        "{}",
        r.text
    );
    let r = app
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&cookie),
            Some(
                json!({ "username": admin.username, "display_name": "Dup", "role": "front_desk" }),
            ),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "username_taken"),
        "{}",
        r.text
    );
    let r = app
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&cookie),
            Some(json!({ "username": "new.user", "display_name": "New", "role": "superuser" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let (users,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert_eq!(users, 1, "no half-made users");
    // A cookie of garbage is simply not a session.
    for junk in ["", "....", "%00%ff", "abc.def"] {
        let junk = format!("{}={junk}", clinic_api::platform::sessions::COOKIE);
        let r = app
            .call(Method::GET, "/api/v1/locations", Some(&junk), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{junk}");
    }
}
