//! The OpenAPI document covers every route, and docs/permissions.md is the matrix as generated.

use axum::http::{Method, StatusCode};
use clinic_api::app::all_routes;
use clinic_api::platform::authz::matrix_markdown;
use clinic_api::testkit::TestApp;

#[tokio::test]
async fn openapi_covers_every_route() {
    let app = TestApp::new().await;
    let reply = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let specs = all_routes().specs();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        operations += item.as_object().unwrap().len();
        assert!(
            specs.iter().any(|s| s.path == path),
            "documented path {path} has no route"
        );
    }
    assert_eq!(operations, specs.len(), "one operation per route");
    for spec in &specs {
        let op = &doc["paths"][spec.path][spec.method.as_str().to_lowercase()];
        assert!(
            op.is_object(),
            "{} {} is missing from the document",
            spec.method,
            spec.path
        );
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(op["x-permission"].is_string());
        if spec.path.contains('{') {
            assert!(
                op["parameters"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x["in"] == "path")),
                "{}",
                spec.path
            );
        }
        if spec.request_body.is_some() {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            assert!(
                schema.is_object(),
                "{} {} request body schema",
                spec.method,
                spec.path
            );
        }
    }
    // Bodies are described by their types: the login body names its fields.
    let login = serde_json::to_string(&doc["paths"]["/api/v1/auth/login"]["post"]).unwrap()
        + &serde_json::to_string(&doc["components"]).unwrap();
    for field in ["clinic", "username", "password"] {
        assert!(login.contains(field), "login schema lacks {field}");
    }
}

#[test]
fn docs_permissions_md_is_generated_from_the_matrix() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/permissions.md");
    let generated = matrix_markdown(&all_routes().specs());
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/permissions.md is stale: run `cargo run -p clinic-api --bin clinic -- permissions > docs/permissions.md`"
    );
}

/// The README's configuration block names only keys that exist, each with its default value.
#[test]
fn the_readme_configuration_block_is_the_defaults() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme
        .find("## Configuration")
        .expect("configuration section")..];
    let start = section.find("```toml\n").expect("toml block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").expect("block end")];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clinic.toml");
    std::fs::write(&path, block).unwrap();
    let loaded = clinic_api::Config::load_from(Some(&path), std::iter::empty())
        .unwrap_or_else(|e| panic!("the README's configuration does not load: {e}"));
    let as_json = |c: &clinic_api::Config| serde_json::to_value(c).unwrap();
    assert_eq!(
        as_json(&loaded),
        as_json(&clinic_api::Config::default()),
        "a value in the README's configuration block differs from the default"
    );
}
