//! The audit log is append-only and tamper-evident: `verify` finds an edited row, a deleted row,
//! reordered rows and a truncated tail (against the last signed checkpoint), and on the
//! checkpoint file's side a missing or empty file, a line deleted from the middle, reordered
//! lines and a truncated file (against the lines each tenant's log records). Tampering here is
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
    // 13 events, and one per tenant recording its checkpoint line.
    assert_eq!(report.events, 15);
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
            problems.first(),
            Some(Problem::BadCheckpoint { line: 1 | 2 })
        ),
        "{problems:?}"
    );
    // The forged line is not the one its tenant's log recorded either.
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::CheckpointLineMissing { .. })),
        "{problems:?}"
    );
}

/// `seeded`, then two more checkpoint passes: six chained lines, two per pass.
async fn seeded_with_six_lines() -> (TestApp, std::path::PathBuf) {
    let (app, file) = seeded().await;
    for _ in 0..2 {
        app.clock.advance_secs(60);
        audit::checkpoint(&app.admin, &app.state.keys, app.now(), &file)
            .await
            .unwrap();
    }
    assert_eq!(read_lines(&file).len(), 6);
    assert!(verify(&app, &file).await.is_empty());
    (app, file)
}

fn read_lines(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(file: &std::path::Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(file, text).unwrap();
}

#[tokio::test]
async fn verify_fails_when_events_exist_but_the_checkpoint_file_is_missing() {
    let (app, file) = seeded().await;
    std::fs::remove_file(&file).unwrap();
    let report = audit::verify(&app.admin, &app.state.keys, &file)
        .await
        .unwrap();
    assert!(!report.ok());
    assert_eq!(
        report.problems,
        vec![Problem::NoCheckpoints {
            events: 15,
            file: file.display().to_string()
        }]
    );
    let message = report.problems[0].to_string();
    assert!(
        message.contains("15 audit events") && message.contains("missing or empty"),
        "{message}"
    );
}

#[tokio::test]
async fn verify_fails_when_events_exist_but_the_checkpoint_file_is_empty() {
    let (app, file) = seeded().await;
    std::fs::write(&file, "").unwrap();
    assert_eq!(
        verify(&app, &file).await,
        vec![Problem::NoCheckpoints {
            events: 15,
            file: file.display().to_string()
        }]
    );
}

#[tokio::test]
async fn an_empty_log_needs_no_checkpoint() {
    let app = TestApp::new().await;
    let file = app.dir.path().join("none.jsonl");
    let report = audit::verify(&app.admin, &app.state.keys, &file)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

#[tokio::test]
async fn a_checkpoint_line_deleted_from_the_middle_is_detected() {
    let (app, file) = seeded_with_six_lines().await;
    let mut lines = read_lines(&file);
    lines.remove(2);
    write_lines(&file, &lines);
    let problems = verify(&app, &file).await;
    // The line after the gap no longer links (it is line 3 now)...
    assert!(
        problems.contains(&Problem::CheckpointChainBroken { line: 3 }),
        "{problems:?}"
    );
    // ...and the tenant whose line went recorded it.
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, Problem::CheckpointLineMissing { .. })),
        "{problems:?}"
    );
}

#[tokio::test]
async fn reordered_checkpoint_lines_are_detected() {
    let (app, file) = seeded_with_six_lines().await;
    let mut lines = read_lines(&file);
    lines.swap(1, 3);
    write_lines(&file, &lines);
    let problems = verify(&app, &file).await;
    for line in [2, 3, 4, 5] {
        assert!(
            problems.contains(&Problem::CheckpointChainBroken { line }),
            "line {line}: {problems:?}"
        );
    }
    // Every line is still there and validly signed: only the order is wrong.
    assert!(
        problems
            .iter()
            .all(|p| matches!(p, Problem::CheckpointChainBroken { .. })),
        "{problems:?}"
    );
}

#[tokio::test]
async fn a_truncated_checkpoint_file_is_detected_against_the_events() {
    let (app, file) = seeded_with_six_lines().await;
    let mut lines = read_lines(&file);
    // The last pass's two lines: consistent in themselves, and the rows they name still exist.
    lines.truncate(4);
    write_lines(&file, &lines);
    let problems = verify(&app, &file).await;
    let mut missing: Vec<&str> = problems
        .iter()
        .map(|p| match p {
            Problem::CheckpointLineMissing { clinic_id, .. } => clinic_id.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    missing.sort();
    assert_eq!(missing.len(), 2, "{problems:?}");
    assert!(missing.contains(&app.clinic.as_str()), "{problems:?}");
}

/// A file written before lines were chained (v1: no `prev`): its lines still verify, and new
/// lines chain onto it.
#[tokio::test]
async fn a_checkpoint_file_from_before_chaining_stays_readable() {
    let app = TestApp::new().await;
    for _ in 0..3 {
        audit::record_now(
            &app.state,
            AuditEvent::new(app.clinic.clone(), Action::View, "patient"),
        )
        .await
        .unwrap();
    }
    let file = app.dir.path().join("old.jsonl");
    let (clinic_id, seq, head) = app.admin.audit_heads().await.unwrap().remove(0);
    let at = app.now();
    let v1 = |seq: i64, head: &str| {
        let msg = format!("clinic-audit-checkpoint/v1|{clinic_id}|{seq}|{head}|{at}");
        let (key_id, public_key, sig) = app.state.keys.sign_checkpoint(msg.as_bytes());
        serde_json::json!({
            "clinic_id": clinic_id, "seq": seq, "head": head, "at": at, "key_id": key_id,
            "public_key": hex::encode(public_key), "signature": hex::encode(sig),
        })
        .to_string()
    };
    write_lines(&file, &[v1(seq, &head)]);
    let report = audit::verify(&app.admin, &app.state.keys, &file)
        .await
        .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.checkpoints, 1);
    audit::checkpoint(&app.admin, &app.state.keys, app.now(), &file)
        .await
        .unwrap();
    assert!(verify(&app, &file).await.is_empty());
    // An unchained line after chained ones is an insertion.
    let mut lines = read_lines(&file);
    lines.push(v1(seq, &head));
    write_lines(&file, &lines);
    assert_eq!(
        verify(&app, &file).await,
        vec![Problem::CheckpointChainBroken { line: 3 }]
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
