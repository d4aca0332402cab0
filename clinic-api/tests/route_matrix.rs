//! Every route of the router × every role (plus no session, and sessions that still owe MFA),
//! checked against the permission matrix. A route is only added with a policy, so a new route is
//! walked here automatically; its answer must agree with `authz::grants`.

use axum::http::{Method, StatusCode};
use clinic_api::app::all_routes;
use clinic_api::platform::authz::{Access, Role};
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::TestApp;
use serde_json::json;

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                uuid::Uuid::new_v4().to_string()
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn body_for(method: &Method) -> Option<serde_json::Value> {
    (*method == Method::POST || *method == Method::PUT || *method == Method::PATCH)
        .then(|| json!({}))
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_matrix_says() {
    let app = TestApp::new().await;
    let specs = all_routes().specs();
    assert!(
        specs.len() >= 25,
        "expected the whole API, got {} routes",
        specs.len()
    );
    let mut users = Vec::new();
    for &role in Role::ALL {
        users.push(app.user(role).await);
    }
    let mut denials = 0;
    for spec in &specs {
        // /metrics is for the scraper's bearer token, not a session (tests/metrics.rs).
        if spec.path == "/metrics" {
            continue;
        }
        for user in &users {
            // A fresh session per call: some routes (logout, password change) end the session.
            let cookie = app.session(user, Stage::Full).await;
            let path = concrete(spec.path);
            let reply = app
                .call(
                    spec.method.clone(),
                    &path,
                    Some(&cookie),
                    body_for(&spec.method),
                )
                .await;
            let what = format!(
                "{} {} as {:?} -> {} {}",
                spec.method, spec.path, user.role, reply.status, reply.text
            );
            assert_ne!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{what}");
            assert_ne!(
                reply.body["detail"], "route not found",
                "spec has no route behind it: {what}"
            );
            if spec.policy.allows(user.role) {
                assert_ne!(
                    reply.status,
                    StatusCode::FORBIDDEN,
                    "allowed by the matrix but refused: {what}"
                );
                assert_ne!(
                    reply.status,
                    StatusCode::UNAUTHORIZED,
                    "allowed by the matrix but refused: {what}"
                );
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::FORBIDDEN,
                    "refused by the matrix but answered: {what}"
                );
                assert_eq!(reply.code(), "forbidden", "{what}");
                assert_eq!(reply.headers["content-type"], "application/problem+json");
                denials += 1;
            }
        }
    }
    assert!(
        denials > 50,
        "the matrix should refuse many route × role pairs, refused {denials}"
    );
    // Every refusal is in the audit log.
    let (audited,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'access' AND outcome = 'denied'",
    )
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(audited, denials as i64);
}

#[tokio::test]
async fn no_session_and_unfinished_sessions_reach_only_what_they_may() {
    let app = TestApp::new().await;
    let provider = app.user(Role::Provider).await;
    for spec in all_routes().specs() {
        // /metrics is for the scraper's bearer token, not a session (tests/metrics.rs).
        if spec.path == "/metrics" {
            continue;
        }
        let path = concrete(spec.path);
        let body = body_for(&spec.method);
        let anon = app
            .call(spec.method.clone(), &path, None, body.clone())
            .await;
        let enroll = app
            .call(
                spec.method.clone(),
                &path,
                Some(&app.session(&provider, Stage::EnrollOnly).await),
                body.clone(),
            )
            .await;
        let pending = app
            .call(
                spec.method.clone(),
                &path,
                Some(&app.session(&provider, Stage::MfaPending).await),
                body.clone(),
            )
            .await;
        let what = |r: &clinic_api::testkit::Reply| {
            format!("{} {} -> {} {}", spec.method, spec.path, r.status, r.text)
        };
        match spec.policy.access {
            Access::Public => {
                assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&anon.status),
                    "{}",
                    what(&anon)
                );
            }
            Access::PendingMfa => {
                assert_eq!(anon.code(), "unauthenticated", "{}", what(&anon));
                assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&enroll.status)
                        || enroll.code() == "mfa_not_enrolled",
                    "{}",
                    what(&enroll)
                );
                assert_ne!(pending.status, StatusCode::FORBIDDEN, "{}", what(&pending));
            }
            Access::Authenticated | Access::Perm(_) => {
                assert_eq!(anon.status, StatusCode::UNAUTHORIZED, "{}", what(&anon));
                assert_eq!(anon.code(), "unauthenticated", "{}", what(&anon));
                assert_eq!(enroll.status, StatusCode::FORBIDDEN, "{}", what(&enroll));
                assert_eq!(
                    enroll.code(),
                    "mfa_enrollment_required",
                    "{}",
                    what(&enroll)
                );
                assert_eq!(
                    pending.status,
                    StatusCode::UNAUTHORIZED,
                    "{}",
                    what(&pending)
                );
                assert_eq!(pending.code(), "mfa_required", "{}", what(&pending));
            }
        }
    }
}

#[tokio::test]
async fn sensitive_routes_need_a_recent_mfa_check() {
    let app = TestApp::new().await;
    let owner = app.user(Role::Owner).await;
    let secret = app.enroll(&owner).await;
    let cookie = app.session(&owner, Stage::Full).await;
    // Fresh from MFA: allowed.
    let ok = app
        .call(Method::GET, "/api/v1/audit/export", Some(&cookie), None)
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    // Six minutes later (session kept alive): the step-up window has passed.
    for _ in 0..3 {
        app.clock.advance_secs(120);
        assert_eq!(
            app.call(Method::GET, "/api/v1/audit", Some(&cookie), None)
                .await
                .status,
            StatusCode::OK
        );
    }
    let stale = app
        .call(Method::GET, "/api/v1/audit/export", Some(&cookie), None)
        .await;
    // 403, not 401: the session is fine (pages sign out on 401), it needs a step-up.
    assert_eq!(stale.status, StatusCode::FORBIDDEN, "{}", stale.text);
    assert_eq!(stale.code(), "step_up_required");
    // A wrong code does not step up.
    let bad = app
        .call(
            Method::POST,
            "/api/v1/auth/step-up",
            Some(&cookie),
            Some(json!({ "code": "000000" })),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let code = app.code(&secret, 0);
    let up = app
        .call(
            Method::POST,
            "/api/v1/auth/step-up",
            Some(&cookie),
            Some(json!({ "code": code })),
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.text);
    let again = app
        .call(Method::GET, "/api/v1/audit/export", Some(&cookie), None)
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.headers["content-type"], "application/x-ndjson");
    // The export itself is audited as an export, and the step-up as a step-up.
    let (exports,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'export' AND resource_type = 'audit_log'",
    )
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(exports, 2);
    let (step_ups,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM audit_events WHERE action = 'step_up'")
            .fetch_one(&app.admin.pool)
            .await
            .unwrap();
    assert_eq!(step_ups, 1);
}

#[tokio::test]
async fn resetting_mfa_legal_holds_and_deleting_images_need_a_fresh_step_up() {
    let app = TestApp::new().await;
    let owner = app.user(Role::Owner).await;
    let secret = app.enroll(&owner).await;
    let cookie = app.session(&owner, Stage::Full).await;
    let other = app.user(Role::FrontDesk).await;
    app.enroll(&other).await;
    let image = uuid::Uuid::new_v4();
    let guarded = [
        (
            Method::POST,
            "/api/v1/users/{id}/reset-mfa",
            format!("/api/v1/users/{}/reset-mfa", other.id),
            None,
        ),
        (
            Method::PUT,
            "/api/v1/images/{id}/legal-hold",
            format!("/api/v1/images/{image}/legal-hold"),
            Some(json!({ "hold": false })),
        ),
        (
            Method::DELETE,
            "/api/v1/images/{id}",
            format!("/api/v1/images/{image}"),
            None,
        ),
    ];
    // The step-up is the route's policy, not a handler's habit.
    let specs = all_routes().specs();
    for (method, template, _, _) in &guarded {
        let spec = specs
            .iter()
            .find(|s| s.method == *method && s.path == *template)
            .unwrap();
        assert!(spec.policy.step_up, "{method} {template}");
    }
    // Six minutes on, the session kept alive: each is refused, and does nothing.
    for _ in 0..3 {
        app.clock.advance_secs(120);
        let r = app
            .call(Method::GET, "/api/v1/users", Some(&cookie), None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for (method, template, path, body) in &guarded {
        let r = app
            .call(method.clone(), path, Some(&cookie), body.clone())
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "step_up_required"),
            "{method} {template}: {}",
            r.text
        );
    }
    let enrolled: Option<i64> =
        sqlx::query_scalar("SELECT mfa_enrolled_at FROM users WHERE id = $1")
            .bind(other.id.as_str())
            .fetch_one(&app.admin.pool)
            .await
            .unwrap();
    assert!(enrolled.is_some(), "a refused reset resets nothing");
    let up = app
        .call(
            Method::POST,
            "/api/v1/auth/step-up",
            Some(&cookie),
            Some(json!({ "code": app.code(&secret, 0) })),
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.text);
    // After the step-up each reaches its handler: the reset is done; the images do not exist.
    let expected = [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::NOT_FOUND];
    for ((method, template, path, body), want) in guarded.iter().zip(expected) {
        let r = app
            .call(method.clone(), path, Some(&cookie), body.clone())
            .await;
        assert_eq!(r.status, want, "{method} {template}: {}", r.text);
    }
}
