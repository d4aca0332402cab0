//! Transport and edge security: the session cookie is `__Host-` prefixed and always `Secure`,
//! HSTS is sent only when the server is configured as served over TLS, and a state-changing
//! request from another site (by its `Origin` or `Sec-Fetch-Site`) is refused before any
//! handler runs, while clients that send no `Origin` (the CLI, the load test) keep working.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::{self, Stage};
use clinic_api::testkit::{PASSWORD, Reply, TestApp, TestUser};
use serde_json::json;

async fn slug(app: &TestApp, user: &TestUser) -> String {
    sqlx::query_as::<_, (String,)>("SELECT slug FROM clinics WHERE id = $1")
        .bind(user.clinic.as_str())
        .fetch_one(&app.admin.pool)
        .await
        .unwrap()
        .0
}

/// A sign-in for `user` with the given extra headers.
async fn login_with(app: &TestApp, user: &TestUser, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/auth/login")
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body =
        json!({ "clinic": slug(app, user).await, "username": user.username, "password": PASSWORD });
    app.send(req.body(Body::from(body.to_string())).unwrap())
        .await
}

fn set_cookie(r: &Reply) -> String {
    r.headers
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no set-cookie: {}", r.text))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn session_cookies_are_host_prefixed_and_always_secure() {
    // The default listener is loopback: Secure is set there too (a TLS-terminating proxy on
    // loopback is common, and browsers accept Secure cookies from http://localhost).
    let app = TestApp::new().await;
    assert!(app.state.config.listen.ip().is_loopback());
    let patient = app.user(Role::Patient).await;
    let login = login_with(&app, &patient, &[]).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    let cookie = set_cookie(&login);
    assert!(cookie.starts_with("__Host-clinic_session="), "{cookie}");
    assert_eq!(sessions::COOKIE, "__Host-clinic_session");
    let attrs: Vec<&str> = cookie.split("; ").skip(1).collect();
    for want in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(attrs.contains(&want), "{want} missing: {cookie}");
    }
    assert!(
        !cookie.to_ascii_lowercase().contains("domain="),
        "a __Host- cookie has no Domain: {cookie}"
    );
    // Signing out clears it under the same name and attributes (else a browser keeps it).
    let value = cookie.split(';').next().unwrap().to_string();
    let out = app
        .call(Method::POST, "/api/v1/auth/logout", Some(&value), None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    let cleared = set_cookie(&out);
    assert!(
        cleared.starts_with("__Host-clinic_session=;") && cleared.contains("; Secure"),
        "{cleared}"
    );
}

#[tokio::test]
async fn hsts_is_sent_only_when_served_over_tls() {
    let plain = TestApp::new().await;
    let r = plain.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        !r.headers.contains_key("strict-transport-security"),
        "no HSTS over plain HTTP"
    );
    let tls = TestApp::with_config(|c| c.http.behind_tls = true).await;
    for path in ["/healthz", "/api/v1/no-such-route"] {
        let r = tls.call(Method::GET, path, None, None).await;
        assert_eq!(
            r.headers
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap()),
            Some("max-age=31536000"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn state_changing_requests_from_another_site_are_refused() {
    let app = TestApp::with_config(|c| {
        c.http.allowed_origins = vec!["https://portal.example".into()];
    })
    .await;
    let patient = app.user(Role::Patient).await;
    let refused = |r: &Reply, what: &str| {
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.text);
        assert_eq!(r.code(), "cross_origin", "{what}");
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{what}"
        );
        assert!(!r.headers.contains_key("set-cookie"), "{what}");
    };
    let host = ("host", "clinic.example");
    for (what, headers) in [
        (
            "another origin",
            vec![host, ("origin", "https://evil.example")],
        ),
        (
            "same host, other port",
            vec![host, ("origin", "http://clinic.example:8443")],
        ),
        ("an opaque origin", vec![host, ("origin", "null")]),
        (
            "cross-site fetch metadata",
            vec![host, ("sec-fetch-site", "cross-site")],
        ),
        (
            "own origin but cross-site metadata",
            vec![
                host,
                ("origin", "http://clinic.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
        (
            "no host to compare with",
            vec![("origin", "http://clinic.example")],
        ),
    ] {
        refused(&login_with(&app, &patient, &headers).await, what);
    }
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sessions")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "no refused sign-in reached the handler");

    for (what, headers) in [
        ("no Origin (CLI, load test)", vec![]),
        (
            "own origin",
            vec![
                host,
                ("origin", "http://clinic.example"),
                ("sec-fetch-site", "same-origin"),
            ],
        ),
        (
            "own origin, other case",
            vec![host, ("origin", "HTTP://Clinic.Example")],
        ),
        (
            "an allowed origin",
            vec![
                host,
                ("origin", "https://portal.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
        (
            "a navigation typed by hand",
            vec![host, ("sec-fetch-site", "none")],
        ),
    ] {
        let r = login_with(&app, &patient, &headers).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text);
    }

    // Every state-changing method, on any route; reads are not checked.
    let cookie = app.session(&patient, Stage::Full).await;
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let req = Request::builder()
            .method(method.clone())
            .uri("/api/v1/auth/logout")
            .header("cookie", &cookie)
            .header("origin", "https://evil.example")
            .body(Body::empty())
            .unwrap();
        refused(&app.send(req).await, method.as_str());
    }
    let req = Request::builder()
        .uri("/api/v1/auth/session")
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.status, StatusCode::OK);

    // Behind TLS the own origin is https.
    let tls = TestApp::with_config(|c| c.http.behind_tls = true).await;
    let patient = tls.user(Role::Patient).await;
    let r = login_with(
        &tls,
        &patient,
        &[host, ("origin", "https://clinic.example")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = login_with(&tls, &patient, &[host, ("origin", "http://clinic.example")]).await;
    refused(&r, "plain-HTTP origin behind TLS");
}
