//! The reach check, route by route: for every route whose path takes an id, a caller from
//! another location (and, for a patient's own routes, another patient) is refused and the
//! refusal is in the audit log; routes whose permission is tenant-wide for every role that holds
//! it are listed and checked to be so (a location does not limit them). Break-glass reads are
//! recorded with purpose `break_glass` and the reason, for single records and for lists.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clinic_api::app::all_routes;
use clinic_api::platform::authz::{Access, Role, Scope, grants};
use clinic_api::platform::http::BREAK_GLASS_HEADER;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{Reply, TestApp, TestUser};
use imaging::testimages::phone_photo;
use serde_json::{Value, json};

struct World {
    app: TestApp,
    /// Ids of one object of each kind, all at the first location ("North").
    appointment: String,
    consult: String,
    image: String,
    patient: String,
    /// The appointment's patient's portal session, and another patient's.
    own_patient: String,
    other_patient: String,
}

async fn post(app: &TestApp, cookie: &str, path: &str, body: Value) -> Reply {
    app.call(Method::POST, path, Some(cookie), Some(body)).await
}

async fn portal_patient(app: &TestApp, given: &str) -> (String, TestUser) {
    let user = app.user(Role::Patient).await;
    let mut tx = app.state.tx(&app.clinic).await.unwrap();
    let id = clinic_api::demo::insert_patient(
        &mut tx,
        &app.clinic,
        &app.locations[0],
        Some(&user.id),
        given,
        "Reach",
        "1950-01-01",
        app.now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    (id.to_string(), user)
}

async fn world() -> World {
    let app = TestApp::new().await;
    let north = app.locations[0].clone();
    let admin = app.user(Role::ClinicAdmin).await;
    let admin = app.session(&admin, Stage::Full).await;
    let provider = app
        .user_in(&app.clinic, Role::Provider, std::slice::from_ref(&north))
        .await;
    let doc = app.session(&provider, Stage::Full).await;
    let (patient, patient_user) = portal_patient(&app, "Own").await;
    let (_, other_user) = portal_patient(&app, "Other").await;

    let ty = post(
        &app,
        &admin,
        "/api/v1/appointment-types",
        json!({ "name": "Video check", "duration_min": 30, "buffer_min": 0,
                "modality": "telemedicine", "bookable_by": ["provider", "patient"] }),
    )
    .await;
    assert_eq!(ty.status, StatusCode::CREATED, "{}", ty.text);
    let start = chrono::DateTime::from_timestamp_millis(app.now() + 2 * 86_400_000)
        .unwrap()
        .to_rfc3339();
    let booked = post(
        &app,
        &doc,
        "/api/v1/appointments",
        json!({ "type_id": ty.body["id"], "location_id": north, "provider_id": provider.id,
                "patient_id": patient, "start": start, "override_availability": true }),
    )
    .await;
    assert_eq!(booked.status, StatusCode::CREATED, "{}", booked.text);
    let consult = post(
        &app,
        &doc,
        "/api/v1/consults",
        json!({ "location_id": north, "patient_id": patient }),
    )
    .await;
    assert_eq!(consult.status, StatusCode::OK, "{}", consult.text);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/patients/{patient}/images"))
        .header("cookie", &doc)
        .header("content-type", "image/jpeg")
        .body(Body::from(phone_photo(64, 48, 1)))
        .unwrap();
    let image = app.send(req).await;
    assert_eq!(image.status, StatusCode::CREATED, "{}", image.text);
    let own_patient = app.session(&patient_user, Stage::Full).await;
    let other_patient = app.session(&other_user, Stage::Full).await;
    World {
        appointment: booked.body["id"].as_str().unwrap().to_string(),
        consult: consult.body["id"].as_str().unwrap().to_string(),
        image: image.body["id"].as_str().unwrap().to_string(),
        patient,
        own_patient,
        other_patient,
        app,
    }
}

impl World {
    /// The route's path with the world's object in place of its id.
    fn path(&self, template: &str) -> Option<String> {
        let id = if template.starts_with("/api/v1/appointments/")
            || template.starts_with("/api/v1/me/appointments/")
        {
            &self.appointment
        } else if template.starts_with("/api/v1/consults/") {
            &self.consult
        } else if template.starts_with("/api/v1/images/") {
            &self.image
        } else if template.starts_with("/api/v1/patients/") {
            &self.patient
        } else {
            return None;
        };
        Some(template.replace("{id}", id))
    }

    /// A body that passes validation, so the reach (not the body) decides the answer.
    fn body(&self, method: &Method, template: &str) -> Option<Value> {
        if *method == Method::GET || *method == Method::DELETE {
            return None;
        }
        Some(match template {
            "/api/v1/appointments/{id}/reschedule" => {
                json!({ "start": "2030-01-07T10:00:00Z", "override_availability": true })
            }
            "/api/v1/appointments/{id}/follow-up" => json!({ "start": "2030-01-07T10:00:00Z" }),
            "/api/v1/consults/{id}/links" => json!({ "role": "patient", "display_name": "P" }),
            "/api/v1/patients/{id}" => json!({ "family_name": "Changed" }),
            _ => json!({}),
        })
    }

    async fn denials_of(&self, resource: &str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'access' AND outcome = 'denied' \
             AND (resource_id = $1 OR patient_id = $1)",
        )
        .bind(resource)
        .fetch_one(&self.app.admin.pool)
        .await
        .unwrap();
        n
    }
}

/// A role holding `perm` with the scope `scope`.
fn role_with(perm: clinic_api::platform::authz::Permission, scope: Scope) -> Option<Role> {
    Role::ALL
        .iter()
        .copied()
        .find(|r| grants(*r).contains(&(perm, scope)))
}

#[tokio::test]
async fn every_route_that_takes_an_id_refuses_other_locations_and_other_patients_and_audits_it() {
    let w = world().await;
    let south = w.app.locations[1].clone();
    // Routes a location does not limit: every role that holds their permission holds it
    // tenant-wide (checked below from the matrix), or the id is a token bound to its user.
    let tenant_wide = [
        "/api/v1/availability/{id}",
        "/api/v1/images/{id}",
        "/api/v1/images/{id}/legal-hold",
        "/api/v1/locations/{id}/hours",
        "/api/v1/patients/{id}/images/purge",
        "/api/v1/users/{id}/disable",
        "/api/v1/users/{id}/locations",
        "/api/v1/users/{id}/reset-mfa",
        "/api/v1/users/{id}/unlock",
    ];
    // A signed file URL: bound to the user it was made for (tests/images.rs
    // `signed_urls_are_bound_to_their_user_and_expire`), so no one else's call reaches it.
    let bound_tokens = ["/api/v1/image-files/{token}"];
    let mut checked: BTreeMap<String, &str> = BTreeMap::new();
    for spec in all_routes().specs() {
        if !spec.path.contains('{') {
            continue;
        }
        let what = format!("{} {}", spec.method, spec.path);
        if bound_tokens.contains(&spec.path) {
            checked.insert(what, "bound to its user");
            continue;
        }
        let Access::Perm(perm) = spec.policy.access else {
            panic!("{what}: a route that takes an id must name a permission");
        };
        if tenant_wide.contains(&spec.path) {
            for &role in Role::ALL {
                for (p, scope) in grants(role) {
                    if *p == perm {
                        assert_eq!(*scope, Scope::Tenant, "{what}: {role:?} holds it {scope:?}");
                    }
                }
            }
            checked.insert(what, "tenant-wide");
            continue;
        }
        let path = w
            .path(spec.path)
            .unwrap_or_else(|| panic!("{what}: no object for this route in the test's world"));
        let body = w.body(&spec.method, spec.path);
        let mut tried = false;
        // Another location's staff member, with the same permission for their own location.
        if let Some(role) = role_with(perm, Scope::AssignedLocations) {
            let outsider = w
                .app
                .user_in(&w.app.clinic, role, std::slice::from_ref(&south))
                .await;
            let cookie = w.app.session(&outsider, Stage::Full).await;
            let object = path.rsplit('/').find(|s| s.len() >= 32).unwrap_or_default();
            let before = w.denials_of(object).await + w.denials_of(&w.patient).await;
            let r = w
                .app
                .call(spec.method.clone(), &path, Some(&cookie), body.clone())
                .await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{what} as {role:?} at South: {}",
                r.text
            );
            assert_eq!(r.code(), "location_not_assigned", "{what}");
            let after = w.denials_of(object).await + w.denials_of(&w.patient).await;
            assert!(after > before, "{what}: the refusal is audited");
            tried = true;
        }
        // Another patient, on a patient's own grant.
        if role_with(perm, Scope::Own) == Some(Role::Patient) {
            let before = w.denials_of(&w.patient).await;
            let r = w
                .app
                .call(
                    spec.method.clone(),
                    &path,
                    Some(&w.other_patient),
                    body.clone(),
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{what} as another patient: {}",
                r.text
            );
            assert!(
                w.denials_of(&w.patient).await > before,
                "{what}: another patient's attempt is audited"
            );
            tried = true;
        }
        assert!(
            tried,
            "{what}: neither a location nor an own grant limits it"
        );
        checked.insert(what, "refused and audited");
    }
    assert!(checked.len() >= 20, "{checked:#?}");
    // The own patient still reaches their own appointment (the refusals above were the reach,
    // not a broken route).
    let own = w
        .app
        .call(
            Method::GET,
            "/api/v1/me/appointments",
            Some(&w.own_patient),
            None,
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    assert_eq!(own.body.as_array().unwrap().len(), 1);
}

async fn call_breaking_glass(app: &TestApp, cookie: &str, path: &str, reason: &str) -> Reply {
    let req = Request::builder()
        .uri(path)
        .header("cookie", cookie)
        .header(BREAK_GLASS_HEADER, reason)
        .body(Body::empty())
        .unwrap();
    app.send(req).await
}

#[tokio::test]
async fn break_glass_reads_are_recorded_as_break_glass_with_the_reason() {
    let w = world().await;
    let south = w.app.locations[1].clone();
    let provider = w
        .app
        .user_in(&w.app.clinic, Role::Provider, std::slice::from_ref(&south))
        .await;
    let cookie = w.app.session(&provider, Stage::Full).await;
    let reason = "patient in ER at South, chart needed";
    let north = w.app.locations[0].clone();
    for path in [
        format!("/api/v1/patients/{}", w.patient),
        format!("/api/v1/patients?location_id={north}"),
        format!("/api/v1/appointments/{}", w.appointment),
        format!("/api/v1/patients/{}/images", w.patient),
    ] {
        let r = call_breaking_glass(&w.app, &cookie, &path, reason).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }
    let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT resource_type, action, purpose, reason FROM audit_events \
         WHERE actor_id = $1 AND outcome = 'success' ORDER BY seq",
    )
    .bind(provider.id.as_str())
    .fetch_all(&w.app.admin.pool)
    .await
    .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for kind in ["patient", "appointment", "image"] {
        assert!(kinds.contains(&kind), "{kind} read audited: {rows:?}");
    }
    // Every one of them (the list's rows included) says break_glass and why.
    for (kind, action, purpose, why) in &rows {
        assert_eq!(action, "view", "{rows:?}");
        assert_eq!(purpose.as_deref(), Some("break_glass"), "{kind}: {rows:?}");
        assert_eq!(why.as_deref(), Some(reason), "{kind}");
    }
    assert!(rows.len() >= 4, "{rows:?}");
    // Without a reason the same reads are refused.
    let r = w
        .app
        .call(
            Method::GET,
            &format!("/api/v1/patients/{}", w.patient),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Break-glass reaches a record where it is; it does not move it.
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(format!("/api/v1/patients/{}", w.patient))
        .header("cookie", &cookie)
        .header(BREAK_GLASS_HEADER, reason)
        .header("content-type", "application/json")
        .body(Body::from(json!({ "location_id": south }).to_string()))
        .unwrap();
    let r = w.app.send(req).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}
