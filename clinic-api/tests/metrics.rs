//! `/metrics`: closed to anonymous callers on the main listener (404 with no scraper token
//! configured, 401 without the token), open to the scraper's bearer token; and its method label
//! takes a fixed set of values, so invented methods add no series.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::testkit::TestApp;

#[tokio::test]
async fn metrics_are_off_without_a_scraper_token() {
    let app = TestApp::with_config(|c| c.metrics.token = None).await;
    let r = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.body["code"], "not_found", "{}", r.text);
    assert!(!r.text.contains("http_requests_total"));
}

#[tokio::test]
async fn anonymous_and_wrong_tokens_get_401_the_scraper_gets_series() {
    let app = TestApp::new().await;
    app.call(Method::GET, "/healthz", None, None).await;
    let r = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.body["code"], "unauthenticated", "{}", r.text);
    assert!(!r.text.contains("http_requests_total"));
    for auth in [
        "Bearer wrong",
        "Bearer ",
        "testkit-metrics-scraper",
        "Basic dGVzdGtpdC1tZXRyaWNzLXNjcmFwZXI=",
    ] {
        let req = Request::builder()
            .uri("/metrics")
            .header("authorization", auth)
            .body(Body::empty())
            .unwrap();
        let r = app.send(req).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth}: {}", r.text);
    }
    let r = app.scrape_metrics().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.text.contains("http_requests_total{") && r.text.contains("route=\"/healthz\""),
        "{}",
        r.text
    );
}

/// Every `method` label value in the scrape.
fn method_labels(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with("http_request"))
        .filter_map(|l| {
            let rest = &l[l.find("method=\"")? + 8..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[tokio::test]
async fn invented_methods_add_no_series() {
    let app = TestApp::new().await;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..1000 {
        // xorshift: 1,000 distinct, valid method tokens.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let method = Method::from_bytes(format!("X{seed:016X}").as_bytes()).unwrap();
        let path = if seed.is_multiple_of(2) {
            "/healthz"
        } else {
            "/nowhere"
        };
        app.call(method, path, None, None).await;
    }
    app.call(Method::from_bytes(b"FOO").unwrap(), "/healthz", None, None)
        .await;
    let text = app.scrape_metrics().await.text;
    let labels = method_labels(&text);
    let allowed: BTreeSet<String> = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert!(labels.contains("other"), "{labels:?}");
    assert!(labels.is_subset(&allowed), "{labels:?}");
    let series = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .count();
    assert!(series < 50, "{series} request series:\n{text}");
}
