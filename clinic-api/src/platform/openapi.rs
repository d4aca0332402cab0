//! The OpenAPI 3.1 document, generated from the same route specs that carry each route's policy,
//! so it cannot miss a route; request bodies and query parameters come from the types (schemars).

use axum::extract::State;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

use crate::platform::authz::{Access, Policy, RouteSpec, Routes};
use crate::platform::state::AppState;

pub fn routes() -> Routes {
    Routes::new("ops").add(
        Method::GET,
        "/api/v1/openapi.json",
        Policy::PUBLIC,
        "This OpenAPI document",
        serve,
    )
}

/// The served document, made once from every route when `app` assembles the state.
pub struct Document(String);

impl Document {
    pub fn new(specs: &[RouteSpec]) -> Self {
        Self(document(specs).to_string())
    }
}

async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    let doc = state.get::<Document>();
    ([(header::CONTENT_TYPE, "application/json")], doc.0.clone())
}

/// Builds the document for `specs`.
pub fn document(specs: &[RouteSpec]) -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for spec in specs {
        let mut op = Map::new();
        op.insert("summary".into(), json!(spec.summary));
        op.insert("tags".into(), json!([spec.tag]));
        op.insert(
            "operationId".into(),
            json!(format!(
                "{}_{}",
                spec.method.as_str().to_lowercase(),
                spec.path
                    .trim_start_matches('/')
                    .replace(['/', '{', '}', '-', '.'], "_")
            )),
        );
        let (security, needs) = match spec.policy.access {
            Access::Public => (json!([]), "public".to_string()),
            Access::PendingMfa => (json!([{ "session": [] }]), "any session".to_string()),
            Access::Authenticated => (json!([{ "session": [] }]), "signed in".to_string()),
            Access::Perm(p) => (json!([{ "session": [] }]), p.as_str().to_string()),
        };
        op.insert("security".into(), security);
        op.insert("x-permission".into(), json!(needs));
        op.insert("x-step-up".into(), json!(spec.policy.step_up));
        let mut params: Vec<Value> = path_params(spec.path)
            .into_iter()
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }))
            .collect();
        if let Some(query) = spec.query {
            let schema = serde_json::to_value(query(&mut generator)).unwrap_or_default();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, s) in props {
                    params.push(
                        json!({ "name": name, "in": "query", "required": false, "schema": s }),
                    );
                }
            }
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = spec.request_body {
            let schema = serde_json::to_value(body(&mut generator)).unwrap_or_default();
            op.insert("requestBody".into(), json!({ "required": true, "content": { "application/json": { "schema": schema } } }));
        }
        op.insert(
            "responses".into(),
            json!({
                "200": { "description": "success" },
                "default": { "description": "an RFC 9457 problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } }
            }),
        );
        let entry = paths
            .entry(spec.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(spec.method.as_str().to_lowercase(), Value::Object(op));
        }
    }
    let mut schemas = Map::new();
    for (name, schema) in generator.take_definitions(true) {
        schemas.insert(name, schema);
    }
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": { "type": "string" }, "title": { "type": "string" }, "status": { "type": "integer" },
                "detail": { "type": "string" }, "code": { "type": "string" }
            }
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Clinic API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "session": { "type": "apiKey", "in": "cookie", "name": crate::platform::sessions::COOKIE } }
        }
    })
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}
