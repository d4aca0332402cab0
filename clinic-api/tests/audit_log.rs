//! The audit log is append-only and tamper-evident: `verify` finds an edited row, a deleted row,
//! reordered rows and a truncated tail (against the last signed checkpoint). Tampering here is
//! done the way an attacker with the database owner's rights would: triggers off, rows changed.

use axum::http::{Method, StatusCode};
use clinic_api::platform::audit::{self, Action, AuditEvent, Problem};
use clinic_api::platform::authz::Role;
use clinic_api::platform::db::Backend;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::TestApp;

/// Ten events in the main clinic and three in another, then a checkpoint.
async fn seeded() -> (TestApp, std::path::PathBuf) {
    let app = TestApp::new().await;
    let (other, _) = app.add_clinic("beta").await;
    for i in 0..10 {
        audit::record_now(
            &app.state,
            AuditEvent::new(app.clinic.clone(), Action::View, "patient")
                .patient(format!("p{i}"))
                .detail("test"),
        )
        .await
        .unwrap();
        app.clock.advance_secs(1);
    }
    for _ in 0..3 {
        audit::record_now(
            &app.state,
            AuditEvent::new(other.clone(), Action::Create, "patient"),
        )
        .await
        .unwrap();
    }
    let file = app.dir.path().join("checkpoints.jsonl");
    let written = audit::checkpoint(&app.admin, &app.state.keys, app.now(), &file)
        .await
        .unwrap();
    assert_eq!(written.len(), 2);
    (app, file)
}

async fn verify(app: &TestApp, file: &std::path::Path) -> Vec<Problem> {
    audit::verify(&app.admin, &app.state.keys, file)
        .await
        .unwrap()
        .problems
}

/// Lets the owner connection change audit rows (what a tamperer would do first).
async fn disable_triggers(app: &TestApp) {
    let sqls: &[&str] = match app.backend() {
        Backend::Sqlite => &[
            "DROP TRIGGER audit_events_no_update",
            "DROP TRIGGER audit_events_no_delete",
        ],
        Backend::Postgres => &["ALTER TABLE audit_events DISABLE TRIGGER USER"],
    };
    for sql in sqls {
        sqlx::query(sql).execute(&app.admin.pool).await.unwrap();
    }
}

async fn exec(app: &TestApp, sql: &str) {
    sqlx::query(sql)
        .bind(app.clinic.as_str())
        .execute(&app.admin.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_untouched_log_verifies() {
    let (app, file) = seeded().await;
    let report = audit::verify(&app.admin, &app.state.keys, &file)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.events, 13);
    assert_eq!(report.checkpoints, 2);
}

#[tokio::test]
async fn verify_detects_an_edited_row() {
    let (app, file) = seeded().await;
    disable_triggers(&app).await;
    exec(
        &app,
        "UPDATE audit_events SET patient_id = 'someone-else' WHERE clinic_id = $1 AND seq = 4",
    )
    .await;
    let problems = verify(&app, &file).await;
    assert_eq!(
        problems,
        vec![Problem::Edited {
            clinic_id: app.clinic.to_string(),
            seq: 4
        }]
    );
}

#[tokio::test]
async fn verify_detects_a_deleted_row() {
    let (app, file) = seeded().await;
    disable_triggers(&app).await;
    exec(
        &app,
        "DELETE FROM audit_events WHERE clinic_id = $1 AND seq = 6",
    )
    .await;
    let problems = verify(&app, &file).await;
    let c = app.clinic.to_string();
    assert!(
        problems.contains(&Problem::Missing {
            clinic_id: c.clone(),
            from_seq: 6,
            to_seq: 6
        }),
        "{problems:?}"
    );
    assert!(
        problems.contains(&Problem::BrokenLink {
            clinic_id: c,
            seq: 7
        }),
        "{problems:?}"
    );
}

#[tokio::test]
async fn verify_detects_reordered_rows() {
    let (app, file) = seeded().await;
    disable_triggers(&app).await;
    // Swap rows 3 and 5 by renumbering them.
    exec(
        &app,
        "UPDATE audit_events SET seq = 1000 WHERE clinic_id = $1 AND seq = 3",
    )
    .await;
    exec(
        &app,
        "UPDATE audit_events SET seq = 3 WHERE clinic_id = $1 AND seq = 5",
    )
    .await;
    exec(
        &app,
        "UPDATE audit_events SET seq = 5 WHERE clinic_id = $1 AND seq = 1000",
    )
    .await;
    let problems = verify(&app, &file).await;
    let c = app.clinic.to_string();
    for seq in [3, 5] {
        assert!(
            problems.contains(&Problem::Edited {
                clinic_id: c.clone(),
                seq
            }),
            "{problems:?}"
        );
        assert!(
            problems.contains(&Problem::BrokenLink {
                clinic_id: c.clone(),
                seq
            }),
            "{problems:?}"
        );
    }
    // The other tenant's chain is untouched and reported clean.
    assert!(
        problems.iter().all(|p| format!("{p}").contains(&c)),
        "{problems:?}"
    );
}

#[tokio::test]
async fn verify_detects_a_truncated_tail_against_the_checkpoint() {
    let (app, file) = seeded().await;
    disable_triggers(&app).await;
    // Deleting the newest rows leaves a chain that is consistent in itself...
    exec(
        &app,
        "DELETE FROM audit_events WHERE clinic_id = $1 AND seq > 8",
    )
    .await;
    let problems = verify(&app, &file).await;
    // ...but the signed checkpoint names seq 10.
    assert_eq!(
        problems,
        vec![Problem::Truncated {
            clinic_id: app.clinic.to_string(),
            checkpoint_seq: 10,
            last_seq: 8
        }]
    );
}

#[tokio::test]
async fn a_forged_checkpoint_line_is_refused() {
    let (app, file) = seeded().await;
    let text = std::fs::read_to_string(&file).unwrap();
    let forged = text.replacen("\"seq\":10", "\"seq\":11", 1);
    assert_ne!(forged, text);
    std::fs::write(&file, forged).unwrap();
    let problems = verify(&app, &file).await;
    assert!(
        matches!(
            problems.as_slice(),
            [Problem::BadCheckpoint { line: 1 | 2 }]
        ),
        "{problems:?}"
    );
}

#[tokio::test]
async fn the_log_is_append_only() {
    let app = TestApp::new().await;
    audit::record_now(
        &app.state,
        AuditEvent::new(app.clinic.clone(), Action::View, "patient"),
    )
    .await
    .unwrap();
    // Through the application's own connection.
    let mut tx = app.state.tx(&app.clinic).await.unwrap();
    let update = sqlx::query("UPDATE audit_events SET detail = 'x'")
        .execute(&mut *tx)
        .await;
    assert!(update.is_err(), "update must be refused");
    drop(tx);
    let mut tx = app.state.tx(&app.clinic).await.unwrap();
    assert!(
        sqlx::query("DELETE FROM audit_events")
            .execute(&mut *tx)
            .await
            .is_err(),
        "delete must be refused"
    );
    drop(tx);
    // Even the owner is stopped by the triggers.
    let err = sqlx::query("UPDATE audit_events SET detail = 'x'")
        .execute(&app.admin.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(
        sqlx::query("DELETE FROM audit_events")
            .execute(&app.admin.pool)
            .await
            .unwrap_err()
            .to_string()
            .contains("append-only")
    );
    if app.backend() == Backend::Postgres {
        let err = sqlx::query("TRUNCATE audit_events")
            .execute(&app.admin.pool)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        // And the app role lacks the privilege in the first place.
        let mut tx = app.state.tx(&app.clinic).await.unwrap();
        let err = sqlx::query("UPDATE audit_events SET detail = 'x'")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{err}");
    }
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_events")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn owners_read_and_filter_the_log_and_others_cannot() {
    let app = TestApp::new().await;
    let provider = app.user(Role::Provider).await;
    let pc = app.session(&provider, Stage::Full).await;
    let patient = app
        .patient_in(&app.clinic, &app.locations[0], "Ann", "Example")
        .await;
    let other = app
        .patient_in(&app.clinic, &app.locations[0], "Ben", "Example")
        .await;
    for id in [&patient, &patient, &other] {
        assert_eq!(
            app.call(
                Method::GET,
                &format!("/api/v1/patients/{id}"),
                Some(&pc),
                None
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    let owner = app.user(Role::Owner).await;
    let oc = app.session(&owner, Stage::Full).await;
    let r = app
        .call(
            Method::GET,
            &format!("/api/v1/audit?patient_id={patient}&action=view"),
            Some(&oc),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let events = r.body.as_array().unwrap();
    assert_eq!(events.len(), 2);
    for e in events {
        assert_eq!(e["patient_id"], patient.as_str());
        assert_eq!(e["actor_id"], provider.id.as_str());
        assert_eq!(e["actor_role"], "provider");
        assert_eq!(e["resource_type"], "patient");
        assert_eq!(e["outcome"], "success");
        assert_eq!(e["purpose"], "treatment");
        assert!(e["session_id"].is_string() && e["time"].is_string());
    }
    let bad = app
        .call(Method::GET, "/api/v1/audit?from=yesterday", Some(&oc), None)
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Reading the log is itself recorded.
    let (views,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_events WHERE resource_type = 'audit_log' AND action = 'view'",
    )
    .fetch_one(&app.admin.pool)
    .await
    .unwrap();
    assert_eq!(views, 1);
    assert_eq!(
        app.call(Method::GET, "/api/v1/audit", Some(&pc), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}
