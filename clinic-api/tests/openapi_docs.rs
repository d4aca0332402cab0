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
        if let Some(media) = spec.request_bytes {
            for m in media {
                assert!(
                    op["requestBody"]["content"][*m]["schema"].is_object(),
                    "{} {} request body {m}",
                    spec.method,
                    spec.path
                );
            }
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

/// Every operation documents at least one success answer with its body (a schema, a media type,
/// or explicitly none) and its errors as RFC 9457 problems; every route's success statuses are
/// known (none left for the handler to pick unnamed).
#[test]
fn every_route_documents_its_answers() {
    let specs = all_routes().specs();
    let doc = clinic_api::platform::openapi::document(&specs);
    let mut missing = Vec::new();
    for spec in &specs {
        let name = format!("{} {}", spec.method, spec.path);
        if spec.responses.is_empty() || spec.responses.iter().any(|s| s.status.is_none()) {
            missing.push(format!("{name}: success status not known"));
            continue;
        }
        let answers = doc["paths"][spec.path][spec.method.as_str().to_lowercase()]["responses"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let successes: Vec<_> = answers
            .iter()
            .filter(|(status, _)| status.starts_with(['1', '2', '3']))
            .collect();
        if successes.is_empty() {
            missing.push(format!("{name}: no success answer"));
        }
        for (status, answer) in &successes {
            let described = answer["description"].is_string();
            let no_body = status.as_str() == "204" || status.starts_with(['1', '3']);
            let body = answer["content"]
                .as_object()
                .is_some_and(|c| !c.is_empty() && c.values().all(|m| m["schema"].is_object()));
            if !described || (no_body && answer.get("content").is_some()) || (!no_body && !body) {
                missing.push(format!("{name}: {status} lacks its body schema"));
            }
        }
        if answers.get("default").map(|d| &d["$ref"])
            != Some(&"#/components/responses/Problem".into())
        {
            missing.push(format!("{name}: no problem default"));
        }
        for (status, answer) in answers.iter().filter(|(s, _)| s.starts_with(['4', '5'])) {
            let text_answer = answer["content"]
                .as_object()
                .is_some_and(|c| c.keys().all(|k| k.starts_with("text/")));
            if answer["$ref"] != "#/components/responses/Problem" && !text_answer {
                missing.push(format!("{name}: {status} is not a problem"));
            }
        }
        if spec.policy.access != clinic_api::platform::authz::Access::Public
            && !(answers.contains_key("401") && answers.contains_key("403"))
        {
            missing.push(format!("{name}: 401/403 not documented"));
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented answers:\n{}",
        missing.join("\n")
    );
    let problem = &doc["components"]["responses"]["Problem"]["content"]["application/problem+json"]
        ["schema"]["$ref"];
    assert_eq!(problem, "#/components/schemas/Problem");
    let schema = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "code"] {
        assert!(
            schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == field),
            "problem field {field}"
        );
    }
}

/// The problem schema's `code` enum is exactly the list of codes the API can answer with.
#[test]
fn the_problem_code_enum_is_every_error_code() {
    let doc = clinic_api::platform::openapi::document(&all_routes().specs());
    let listed: Vec<String> = doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .expect("code enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let mut codes: Vec<String> = clinic_api::platform::error::all_codes()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(listed, codes, "the document lists the codes in order");
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), listed.len(), "each code listed once");
    for code in [
        "internal",
        "not_found",
        "forbidden",
        "unauthenticated",
        "invalid_body",
    ] {
        assert!(listed.iter().any(|c| c == code), "{code} listed");
    }
}

/// Every `$ref` in the document resolves inside it.
#[test]
fn every_reference_resolves() {
    let doc = clinic_api::platform::openapi::document(&all_routes().specs());
    fn walk(v: &serde_json::Value, doc: &serde_json::Value, bad: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str())
                    && doc.pointer(r.trim_start_matches('#')).is_none()
                {
                    bad.push(r.to_string());
                }
                m.values().for_each(|v| walk(v, doc, bad));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, doc, bad)),
            _ => {}
        }
    }
    let mut bad = Vec::new();
    walk(&doc, &doc, &mut bad);
    assert!(bad.is_empty(), "dangling references: {bad:?}");
}
