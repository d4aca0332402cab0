//! Tenants never see each other's data (through the API, and on PostgreSQL through row-level
//! security even for a raw query from the application's role); staff reach only their assigned
//! locations unless they break glass with a reason; patients reach only their own record.

use axum::http::{Method, Request, StatusCode};
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{TestApp, postgres_url_or_skip, with_database};
use sqlx::Connection;

#[tokio::test]
async fn another_tenants_records_do_not_exist_for_you() {
    let app = TestApp::new().await;
    let (beta, beta_locs) = app.add_clinic("beta").await;
    let ours = app
        .patient_in(&app.clinic, &app.locations[0], "Ours", "Patient")
        .await;
    let theirs = app
        .patient_in(&beta, &beta_locs[0], "Theirs", "Patient")
        .await;
    let beta_provider = app.user_in(&beta, Role::Provider, &beta_locs).await;
    let cookie = app.session(&beta_provider, Stage::Full).await;

    let r = app
        .call(
            Method::GET,
            &format!("/api/v1/patients/{ours}"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app
        .call(
            Method::PATCH,
            &format!("/api/v1/patients/{ours}"),
            Some(&cookie),
            Some(serde_json::json!({ "family_name": "Changed" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let list = app
        .call(Method::GET, "/api/v1/patients", Some(&cookie), None)
        .await;
    let ids: Vec<&str> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![theirs.as_str()]);
    // Our location ids are refused too.
    let r = app
        .call(
            Method::GET,
            &format!("/api/v1/patients?location_id={}", app.locations[0]),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Another tenant's user ids are not found by admins either.
    let beta_admin = app.user_in(&beta, Role::ClinicAdmin, &[]).await;
    let alpha_user = app.user(Role::FrontDesk).await;
    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{}/disable", alpha_user.id),
            Some(&app.session(&beta_admin, Stage::Full).await),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A session cookie moved onto another tenant's id is worthless.
    let forged = cookie.replace(beta.as_str(), app.clinic.as_str());
    let r = app
        .call(Method::GET, "/api/v1/patients", Some(&forged), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    // The record was never changed.
    let (family,): (String,) = sqlx::query_as("SELECT family_name FROM patients WHERE id = $1")
        .bind(ours.as_str())
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert_eq!(family, "Patient");
}

#[tokio::test]
async fn staff_reach_their_locations_or_break_glass_with_a_reason() {
    let app = TestApp::new().await;
    let north = app
        .patient_in(&app.clinic, &app.locations[0], "North", "Patient")
        .await;
    let south = app
        .patient_in(&app.clinic, &app.locations[1], "South", "Patient")
        .await;
    let provider = app.user(Role::Provider).await; // assigned to North only
    let cookie = app.session(&provider, Stage::Full).await;

    assert_eq!(
        app.call(
            Method::GET,
            &format!("/api/v1/patients/{north}"),
            Some(&cookie),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let refused = app
        .call(
            Method::GET,
            &format!("/api/v1/patients/{south}"),
            Some(&cookie),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    let listed = app
        .call(Method::GET, "/api/v1/patients", Some(&cookie), None)
        .await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);

    // Break-glass: allowed with a reason, audited as such.
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("/api/v1/patients/{south}"))
        .header("cookie", &cookie)
        .header("clinic-break-glass-reason", "covering urgent wound check")
        .body(axum::body::Body::empty())
        .unwrap();
    let glass = app.send(req).await;
    assert_eq!(glass.status, StatusCode::OK, "{}", glass.text);
    let (purpose, reason, outcome): (Option<String>, Option<String>, String) =
        sqlx::query_as("SELECT purpose, reason, outcome FROM audit_events WHERE patient_id = $1 AND action = 'view'")
            .bind(south.as_str())
            .fetch_one(&app.admin.pool)
            .await
            .unwrap();
    assert_eq!(
        (purpose.as_deref(), reason.as_deref(), outcome.as_str()),
        (
            Some("break_glass"),
            Some("covering urgent wound check"),
            "success"
        )
    );
    let (denied,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE patient_id = $1 AND outcome = 'denied'",
    )
    .bind(south.as_str())
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(denied, 1, "the refused attempt is audited");

    // Front desk may not break glass.
    let desk = app.user(Role::FrontDesk).await;
    let req = Request::builder()
        .uri(format!("/api/v1/patients/{south}"))
        .header("cookie", app.session(&desk, Stage::Full).await)
        .header("clinic-break-glass-reason", "curious")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(app.send(req).await.status, StatusCode::FORBIDDEN);

    // A covering provider granted the second location reaches it without breaking glass.
    let admin = app.user(Role::ClinicAdmin).await;
    let grant = app
        .call(
            Method::PUT,
            &format!("/api/v1/users/{}/locations", provider.id),
            Some(&app.session(&admin, Stage::Full).await),
            Some(serde_json::json!({ "location_ids": [app.locations[0], app.locations[1]] })),
        )
        .await;
    assert_eq!(grant.status, StatusCode::OK, "{}", grant.text);
    assert_eq!(
        app.call(
            Method::GET,
            &format!("/api/v1/patients/{south}"),
            Some(&cookie),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn patients_reach_only_their_own_record() {
    let app = TestApp::new().await;
    let patient_user = app.user(Role::Patient).await;
    let mine = app
        .patient_in(&app.clinic, &app.locations[0], "Mine", "Own")
        .await;
    let other = app
        .patient_in(&app.clinic, &app.locations[0], "Other", "Person")
        .await;
    sqlx::query("UPDATE patients SET user_id = $1 WHERE id = $2")
        .bind(patient_user.id.as_str())
        .bind(mine.as_str())
        .execute(&app.admin.pool)
        .await
        .unwrap();
    let cookie = app.session(&patient_user, Stage::Full).await;
    let own = app
        .call(Method::GET, "/api/v1/me/record", Some(&cookie), None)
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    assert_eq!(own.body["id"], mine.as_str());
    assert_eq!(own.body["given_name"], "Mine");
    for path in [
        format!("/api/v1/patients/{other}"),
        format!("/api/v1/patients/{mine}"),
        "/api/v1/patients".to_string(),
    ] {
        assert_eq!(
            app.call(Method::GET, &path, Some(&cookie), None)
                .await
                .status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
}

#[tokio::test]
async fn row_level_security_hides_other_tenants_from_a_raw_app_role_query() {
    let Some(_) =
        postgres_url_or_skip("row_level_security_hides_other_tenants_from_a_raw_app_role_query")
    else {
        return;
    };
    let app = TestApp::new().await;
    let (beta, beta_locs) = app.add_clinic("beta").await;
    app.patient_in(&app.clinic, &app.locations[0], "A", "One")
        .await;
    app.patient_in(&app.clinic, &app.locations[1], "A", "Two")
        .await;
    app.patient_in(&beta, &beta_locs[0], "B", "One").await;

    // A login role that is only a member of clinic_app, as production runs it.
    let login = format!(
        "clinic_app_login_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    sqlx::query(&format!(
        "CREATE ROLE {login} LOGIN PASSWORD 'pw' IN ROLE clinic_app"
    ))
    .execute(&app.admin.pool)
    .await
    .unwrap();
    let db_name = app
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let url = with_database(&app.database_url, &db_name).replacen(
        "postgres:clinic@",
        &format!("{login}:pw@"),
        1,
    );
    let url = if url.contains(&login) {
        url
    } else {
        panic!(
            "TEST_DATABASE_URL must have the form postgres://postgres:clinic@host:port/db for this test"
        )
    };
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect as the app login role");

    let count = |sql: &'static str| sqlx::query_as::<_, (i64,)>(sql);
    // No tenant set: nothing at all, from any tenant table.
    for sql in [
        "SELECT COUNT(*) FROM patients",
        "SELECT COUNT(*) FROM users",
        "SELECT COUNT(*) FROM clinics",
        "SELECT COUNT(*) FROM locations",
        "SELECT COUNT(*) FROM audit_events",
    ] {
        assert_eq!(count(sql).fetch_one(&mut conn).await.unwrap().0, 0, "{sql}");
    }
    // Tenant set for this transaction: only that tenant's rows.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.clinic_id', $1, true)")
        .bind(app.clinic.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        count("SELECT COUNT(*) FROM patients")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
            .0,
        2
    );
    let (foreign,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM patients WHERE clinic_id = $1")
        .bind(beta.as_str())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(foreign, 0);
    // Writing into another tenant is refused by the policy's WITH CHECK.
    let insert = sqlx::query("INSERT INTO locations (id, clinic_id, name, time_zone, created_at) VALUES ('x', $1, 'Sneaky', 'UTC', 0)")
        .bind(beta.as_str())
        .execute(&mut *tx)
        .await;
    assert!(
        insert
            .unwrap_err()
            .to_string()
            .contains("row-level security")
    );
    tx.rollback().await.unwrap();
    // The setting is per transaction: gone afterwards.
    assert_eq!(
        count("SELECT COUNT(*) FROM patients")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .0,
        0
    );
    // The role cannot switch the policies off or take rights it lacks.
    let err = sqlx::query("ALTER TABLE patients DISABLE ROW LEVEL SECURITY")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must be owner"), "{err}");
    let err = sqlx::query("SET row_security = off")
        .execute(&mut conn)
        .await;
    if err.is_ok() {
        // Allowed to set, but then queries that would be filtered fail instead of bypassing.
        let e = count("SELECT COUNT(*) FROM patients")
            .fetch_one(&mut conn)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("row-level security"), "{e}");
    }
    conn.close().await.unwrap();
    sqlx::query(&format!("DROP ROLE {login}"))
        .execute(&app.admin.pool)
        .await
        .ok();
}

/// An audit row's resource type, purpose, reason and patient.
type AuditLine = (String, Option<String>, Option<String>, Option<String>);

/// Break-glass through the list routes is flagged too: every row a break-glass list shows is
/// audited with purpose `break_glass` and its reason, and the same list without a reason is
/// refused and audited as denied (the patient list at another location, and a patient's images).
#[tokio::test]
async fn break_glass_lists_are_audited_as_break_glass_with_the_reason() {
    let app = TestApp::new().await;
    let south_location = &app.locations[1];
    let south = app
        .patient_in(&app.clinic, south_location, "South", "Patient")
        .await;
    let provider = app.user(Role::Provider).await; // assigned to North only
    let cookie = app.session(&provider, Stage::Full).await;
    let list_at_south = format!("/api/v1/patients?location_id={south_location}");
    let images_of_south = format!("/api/v1/patients/{south}/images");

    for uri in [&list_at_south, &images_of_south] {
        let refused = app.call(Method::GET, uri, Some(&cookie), None).await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{uri}: {}",
            refused.text
        );
    }
    let (denied,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE actor_id = $1 AND outcome = 'denied'",
    )
    .bind(provider.id.as_str())
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(denied, 2, "both refusals audited");

    let glass = |uri: &str| {
        Request::builder()
            .uri(uri)
            .header("cookie", &cookie)
            .header("clinic-break-glass-reason", "covering urgent wound check")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let listed = app.send(glass(&list_at_south)).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "{}", listed.text);
    let images = app.send(glass(&images_of_south)).await;
    assert_eq!(images.status, StatusCode::OK, "{}", images.text);

    let rows: Vec<AuditLine> = sqlx::query_as(
        "SELECT resource_type, purpose, reason, patient_id FROM audit_events \
         WHERE actor_id = $1 AND outcome = 'success' ORDER BY seq",
    )
    .bind(provider.id.as_str())
    .fetch_all(&app.admin.pool)
    .await
    .unwrap();
    assert!(
        rows.iter().any(|r| r.0 == "patient") && rows.iter().any(|r| r.0 == "image"),
        "the patient list and the image list are both audited: {rows:?}"
    );
    for (resource, purpose, reason, patient) in &rows {
        assert_eq!(
            (purpose.as_deref(), reason.as_deref(), patient.as_deref()),
            (
                Some("break_glass"),
                Some("covering urgent wound check"),
                Some(south.as_str())
            ),
            "{resource}: {rows:?}"
        );
    }
}
