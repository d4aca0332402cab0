//! The OpenAPI 3.1 document, generated from the same route specs that carry each route's policy,
//! so it cannot miss a route. Request bodies and query parameters come from the types named with
//! `.body::<B>()` and `.query::<Q>()`; success responses come from the handler's return type
//! ([`DocumentedResponse`], inferred inside `Routes::add`), so a changed handler changes the
//! document. Where the type cannot say (a handler returning a plain `Response`, or a status code
//! chosen at run time), the route names it (`.responds(..)`, `.status(..)`); `tests/openapi_docs.rs`
//! fails when a route documents no success. Every error is an RFC 9457 problem whose `code` is
//! one of [`crate::platform::error::all_codes`].

use std::future::Future;

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{AppendHeaders, Html, IntoResponse, NoContent, Response};
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::platform::authz::{Access, Policy, RouteSpec, Routes};
use crate::platform::error::ApiError;
use crate::platform::state::AppState;

pub fn routes() -> Routes {
    Routes::new("ops")
        .add(
            Method::GET,
            "/api/v1/openapi.json",
            Policy::PUBLIC,
            "This OpenAPI document",
            serve,
        )
        .responds(StatusCode::OK, Content::json::<Map<String, Value>>())
}

/// The served document, made once from every route when `app` assembles the state.
pub struct Document(String);

impl Document {
    pub fn new(specs: &[RouteSpec]) -> Self {
        Self(document(specs).to_string())
    }
}

async fn serve(State(state): State<AppState>) -> Response {
    let doc = state.get::<Document>();
    ([(header::CONTENT_TYPE, "application/json")], doc.0.clone()).into_response()
}

/// A schema made by a generator (a request body, query or response type).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What a success answer carries.
#[derive(Clone, Copy)]
pub enum Content {
    /// No body (204, a redirect).
    Empty,
    /// A JSON body of this schema.
    Json(SchemaFn),
    /// A body of this media type that is not JSON (pages, scripts, metrics, image bytes).
    Media(&'static str),
}

impl Content {
    /// A JSON body of type `T`.
    pub fn json<T: JsonSchema>() -> Self {
        Content::Json(|g| g.subschema_for::<T>())
    }
}

/// One documented success answer. `status` is `None` when the handler picks the status at run
/// time (it returns a `StatusCode`); the route then names it with `.status(..)`.
#[derive(Clone, Copy)]
pub struct Success {
    pub status: Option<StatusCode>,
    pub content: Content,
}

impl Success {
    pub const fn new(status: StatusCode, content: Content) -> Self {
        Self {
            status: Some(status),
            content,
        }
    }
}

/// A handler return type that can say what it answers on success. Implemented for the types our
/// handlers return; a plain `Response` says nothing, so its route must declare its answers.
pub trait DocumentedResponse {
    fn successes() -> Vec<Success>;
}

impl<T: JsonSchema> DocumentedResponse for Json<T> {
    fn successes() -> Vec<Success> {
        vec![Success::new(StatusCode::OK, Content::json::<T>())]
    }
}

impl DocumentedResponse for NoContent {
    fn successes() -> Vec<Success> {
        vec![Success::new(StatusCode::NO_CONTENT, Content::Empty)]
    }
}

impl<T> DocumentedResponse for Html<T> {
    fn successes() -> Vec<Success> {
        vec![Success::new(
            StatusCode::OK,
            Content::Media("text/html; charset=utf-8"),
        )]
    }
}

impl DocumentedResponse for &'static str {
    fn successes() -> Vec<Success> {
        vec![Success::new(
            StatusCode::OK,
            Content::Media("text/plain; charset=utf-8"),
        )]
    }
}

impl DocumentedResponse for String {
    fn successes() -> Vec<Success> {
        <&'static str>::successes()
    }
}

/// A bare status chosen at run time, no body: the route names the status.
impl DocumentedResponse for StatusCode {
    fn successes() -> Vec<Success> {
        vec![Success {
            status: None,
            content: Content::Empty,
        }]
    }
}

/// A body with a status chosen at run time: the body's schema, the status named by the route.
impl<R: DocumentedResponse> DocumentedResponse for (StatusCode, R) {
    fn successes() -> Vec<Success> {
        R::successes()
            .into_iter()
            .map(|s| Success { status: None, ..s })
            .collect()
    }
}

/// Extra headers (a cookie) change nothing in the body.
impl<I, R: DocumentedResponse> DocumentedResponse for (AppendHeaders<I>, R) {
    fn successes() -> Vec<Success> {
        R::successes()
    }
}

/// Says nothing: the route declares its answers with `.responds(..)`.
impl DocumentedResponse for Response {
    fn successes() -> Vec<Success> {
        Vec::new()
    }
}

/// The success answers of `R`; the errors are problems, documented for every route.
impl<R: DocumentedResponse> DocumentedResponse for Result<R, ApiError> {
    fn successes() -> Vec<Success> {
        R::successes()
    }
}

/// The output type of a handler function, for the argument tuple `T` of axum's
/// `Handler<T, S>` (`((),)` for no arguments, `(M, T1, .., Tn)` otherwise), so `Routes::add` can
/// ask the handler's return type for its [`DocumentedResponse`].
pub trait HandlerOutput<T> {
    type Output;
}

impl<F, Fut> HandlerOutput<((),)> for F
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    type Output = Fut::Output;
}

macro_rules! handler_output {
    ($($ty:ident),+) => {
        impl<F, Fut, M, $($ty,)+> HandlerOutput<(M, $($ty,)+)> for F
        where
            F: FnOnce($($ty,)+) -> Fut,
            Fut: Future,
        {
            type Output = Fut::Output;
        }
    };
}

handler_output!(T1);
handler_output!(T1, T2);
handler_output!(T1, T2, T3);
handler_output!(T1, T2, T3, T4);
handler_output!(T1, T2, T3, T4, T5);
handler_output!(T1, T2, T3, T4, T5, T6);
handler_output!(T1, T2, T3, T4, T5, T6, T7);
handler_output!(T1, T2, T3, T4, T5, T6, T7, T8);
handler_output!(T1, T2, T3, T4, T5, T6, T7, T8, T9);
handler_output!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10);
handler_output!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11);
handler_output!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12);
handler_output!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13);
handler_output!(T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14);
handler_output!(
    T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14, T15
);
handler_output!(
    T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14, T15, T16
);

const SCHEMAS: &str = "#/components/schemas/";
const PROBLEM: &str = "#/components/responses/Problem";

/// JSON Schema 2020-12 (the dialect of OpenAPI 3.1) with definitions under
/// `#/components/schemas`. Requests are described as they are read, responses as they are
/// written (`skip_serializing_if`, `Option` as null), so the two get separate generators.
fn generator(contract: Contract) -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.contract = contract;
        })
        .into_generator()
}

/// Builds the document for `specs`.
pub fn document(specs: &[RouteSpec]) -> Value {
    let mut requests = generator(Contract::Deserialize);
    let mut responses = generator(Contract::Serialize);
    let mut queries = SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
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
            .map(|name| {
                // Ids are UUIDs; a signed image-file token is an opaque string.
                let schema = if name == "token" {
                    json!({ "type": "string" })
                } else {
                    json!({ "type": "string", "format": "uuid" })
                };
                json!({ "name": name, "in": "path", "required": true, "schema": schema })
            })
            .collect();
        if let Some(query) = spec.query {
            let schema = serde_json::to_value(query(&mut queries)).unwrap_or_default();
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, s) in props {
                    params.push(json!({
                        "name": name, "in": "query",
                        "required": required.contains(&name.as_str()), "schema": s
                    }));
                }
            }
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(body) = spec.request_body {
            let schema = serde_json::to_value(body(&mut requests)).unwrap_or_default();
            op.insert("requestBody".into(), json!({ "required": true, "content": { "application/json": { "schema": schema } } }));
        }
        if let Some(media) = spec.request_bytes {
            let content: Map<String, Value> = media
                .iter()
                .map(|m| {
                    (
                        m.to_string(),
                        json!({ "schema": { "type": "string", "format": "binary" } }),
                    )
                })
                .collect();
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": content }),
            );
        }
        let mut answers = Map::new();
        for status in error_statuses(spec) {
            answers.insert(status.as_str().into(), json!({ "$ref": PROBLEM }));
        }
        answers.insert("default".into(), json!({ "$ref": PROBLEM }));
        for success in &spec.responses {
            let Some(status) = success.status else {
                continue;
            };
            let description = status.canonical_reason().unwrap_or("success");
            let answer = match success.content {
                Content::Empty => json!({ "description": description }),
                Content::Json(schema) => {
                    let schema = serde_json::to_value(schema(&mut responses)).unwrap_or_default();
                    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
                }
                Content::Media(media) => {
                    json!({ "description": description, "content": { media: { "schema": { "type": "string" } } } })
                }
            };
            answers.insert(status.as_str().into(), answer);
        }
        op.insert("responses".into(), Value::Object(answers));
        let entry = paths
            .entry(spec.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(spec.method.as_str().to_lowercase(), Value::Object(op));
        }
    }
    let mut schemas = requests.take_definitions(true);
    // A type written in answers can differ from the same type read in requests (fields skipped
    // when empty, defaults); such a response schema is kept under its own name.
    let mut written = responses.take_definitions(true);
    // Renaming a schema changes the references of those that name it, so repeat until stable.
    let mut renamed: Vec<String> = Vec::new();
    loop {
        let more: Vec<String> = written
            .iter()
            .filter(|(name, _)| !renamed.contains(*name))
            .filter(|(name, schema)| {
                let mut schema = (*schema).clone();
                rename_refs(&mut schema, &renamed);
                schemas.get(*name).is_some_and(|s| *s != schema)
            })
            .map(|(name, _)| name.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        renamed.extend(more);
    }
    for schema in written.values_mut() {
        rename_refs(schema, &renamed);
    }
    rename_refs_in_paths(&mut paths, &renamed);
    for (name, schema) in written {
        let name = if renamed.contains(&name) {
            format!("{name}.Response")
        } else {
            name
        };
        schemas.insert(name, schema);
    }
    for schema in schemas.values_mut() {
        pairs_as_arrays(schema);
    }
    for item in paths.values_mut() {
        pairs_as_arrays(item);
    }
    let codes = crate::platform::error::all_codes();
    schemas.insert(
        "Problem".into(),
        json!({
            "description": "An RFC 9457 problem. Some carry extra members (`retry_after`, `conflict`, `opens_at`).",
            "type": "object",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": { "type": "string" },
                "title": { "type": "string" },
                "status": { "type": "integer", "minimum": 400, "maximum": 599 },
                "detail": { "type": "string" },
                "code": { "type": "string", "enum": codes }
            }
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Clinic API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Problem": {
                    "description": "an RFC 9457 problem",
                    "content": { "application/problem+json": { "schema": { "$ref": format!("{SCHEMAS}Problem") } } }
                }
            },
            "securitySchemes": { "session": { "type": "apiKey", "in": "cookie", "name": crate::platform::sessions::COOKIE } }
        }
    })
}

/// The error statuses a route can answer, from its shape: the authorization middleware (401,
/// 403), path ids (404), bodies (400, 413, 415, 422), queries (422), and any failure (500, 503).
/// Handlers add their own (409, 410, 423, 429…), all covered by `default`.
fn error_statuses(spec: &RouteSpec) -> Vec<StatusCode> {
    let mut out = Vec::new();
    let body = spec.request_body.is_some() || spec.request_bytes.is_some();
    if body {
        out.push(StatusCode::BAD_REQUEST);
    }
    if spec.policy.access != Access::Public {
        out.push(StatusCode::UNAUTHORIZED);
        out.push(StatusCode::FORBIDDEN);
    }
    if spec.path.contains('{') {
        out.push(StatusCode::NOT_FOUND);
    }
    if body {
        out.push(StatusCode::PAYLOAD_TOO_LARGE);
        out.push(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    if body || spec.query.is_some() {
        out.push(StatusCode::UNPROCESSABLE_ENTITY);
    }
    out.push(StatusCode::INTERNAL_SERVER_ERROR);
    out.push(StatusCode::SERVICE_UNAVAILABLE);
    out
}

/// Describes a tuple (`prefixItems`, JSON Schema 2020-12) as an array of its length whose items
/// are any of its member types. schemathesis 4 rewrites `prefixItems` to the draft-4 `items: [..]`
/// form and then rejects that as an OpenAPI 3.1 schema (so the operation went untested); the
/// looser form is still true of every answer.
fn pairs_as_arrays(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(members)) = map.remove("prefixItems") {
                map.insert("items".into(), json!({ "anyOf": members }));
            }
            map.values_mut().for_each(pairs_as_arrays);
        }
        Value::Array(items) => items.iter_mut().for_each(pairs_as_arrays),
        _ => {}
    }
}

fn rename_refs(value: &mut Value, renamed: &[String]) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(r) = v
                    && let Some(name) = r.strip_prefix(SCHEMAS)
                    && renamed.iter().any(|n| n == name)
                {
                    *r = format!("{SCHEMAS}{name}.Response");
                } else {
                    rename_refs(v, renamed);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(v, renamed)),
        _ => {}
    }
}

/// Renames references inside response bodies only (request bodies keep the read schema).
fn rename_refs_in_paths(paths: &mut Map<String, Value>, renamed: &[String]) {
    for item in paths.values_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            if let Some(answers) = op.get_mut("responses") {
                rename_refs(answers, renamed);
            }
        }
    }
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}
