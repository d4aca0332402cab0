//! New accounts (issue 16 point 3): the creator gets a one-time enrollment link for the new
//! user, never a password; the link sets the password once, not after it expires, and once
//! under concurrent use; each role gives only the roles `authz::assignable` allows, the
//! privileged ones only after a fresh step-up.

use axum::http::{Method, StatusCode};
use clinic_api::platform::authz::{Assign, Permission, Role, assign_rule, scope_of};
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{PASSWORD, TestApp, TestUser};
use serde_json::{Value, json};

async fn audit_count(app: &TestApp, action: &str, outcome: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = $1 AND outcome = $2")
        .bind(action)
        .bind(outcome)
        .fetch_one(&app.admin.pool)
        .await
        .unwrap()
}

fn token_of(created: &Value) -> String {
    let url = created["enrollment"]["url"].as_str().unwrap();
    url.strip_prefix("/enroll#")
        .unwrap_or_else(|| panic!("an /enroll link: {url}"))
        .to_string()
}

async fn create(
    app: &TestApp,
    cookie: &str,
    username: &str,
    role: Role,
) -> clinic_api::testkit::Reply {
    let locations: Vec<String> = if role.is_staff() {
        vec![app.locations[0].to_string()]
    } else {
        vec![]
    };
    app.call(
        Method::POST,
        "/api/v1/users",
        Some(cookie),
        Some(json!({
            "username": username,
            "display_name": username,
            "role": role.as_str(),
            "location_ids": locations,
        })),
    )
    .await
}

fn as_user(app: &TestApp, id: &str, username: &str, role: Role) -> TestUser {
    TestUser {
        id: clinic_api::platform::ids::UserId::from_trusted(id.to_string()),
        clinic: app.clinic.clone(),
        username: username.into(),
        role,
    }
}

async fn enroll(app: &TestApp, token: &str, password: &str) -> clinic_api::testkit::Reply {
    app.call(
        Method::POST,
        "/api/v1/auth/enroll",
        None,
        Some(json!({ "token": token, "password": password })),
    )
    .await
}

#[tokio::test]
async fn an_admin_cannot_make_a_provider_and_the_creator_gets_a_link_not_a_password() {
    let app = TestApp::new().await;
    let admin = app.user(Role::ClinicAdmin).await;
    let admin_cookie = app.session(&admin, Stage::Full).await;
    // The hole: an administrator made a provider and was handed its password.
    let refused = create(&app, &admin_cookie, "dr.new", Role::Provider).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "role_not_assignable"),
        "{}",
        refused.text
    );
    assert!(!refused.text.contains("password"), "{}", refused.text);
    let made: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = 'dr.new'")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert_eq!(made, 0);
    assert_eq!(audit_count(&app, "user_create", "denied").await, 1);

    // The owner may (fresh from MFA), and gets a link to deliver: no password anywhere.
    let owner = app.user(Role::Owner).await;
    let owner_cookie = app.session(&owner, Stage::Full).await;
    let created = create(&app, &owner_cookie, "dr.new", Role::Provider).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    assert!(
        !created.text.contains("password"),
        "no password in the answer: {}",
        created.text
    );
    let token = token_of(&created.body);
    assert!(created.body["enrollment"]["expires_at"].is_string());
    let provider = as_user(
        &app,
        created.body["id"].as_str().unwrap(),
        "dr.new",
        Role::Provider,
    );
    // The creator cannot sign in as the new account with anything the answer gave them.
    for guess in [token.as_str(), PASSWORD, ""] {
        let (login, cookie) = app.login(&provider, guess).await;
        assert_eq!(login.code(), "invalid_credentials", "{}", login.text);
        assert!(cookie.is_none());
    }
    // Only the hash of the token is stored.
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM enrollment_links")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert!(!stored.contains(&token) && !token.contains(&stored));

    // The holder sets the password once; then signs in, and must enroll MFA first.
    let set = enroll(&app, &token, "the provider's own pass").await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    assert_eq!(set.body["username"], "dr.new");
    assert_eq!(set.body["clinic"], "alpha");
    let (login, _) = app.login(&provider, "the provider's own pass").await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert_eq!(login.body["stage"], "enroll_only");
    // The link works once.
    let again = enroll(&app, &token, "someone else's pass").await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::GONE, "link_used"),
        "{}",
        again.text
    );
    assert_eq!(again.headers["content-type"], "application/problem+json");
    let (login, _) = app.login(&provider, "someone else's pass").await;
    assert_eq!(login.code(), "invalid_credentials");
    // Every step is audited: issued, used, refused.
    assert_eq!(
        audit_count(&app, "enrollment_link_issue", "success").await,
        1
    );
    assert_eq!(audit_count(&app, "enrollment_complete", "success").await, 1);
    assert_eq!(audit_count(&app, "enrollment_complete", "denied").await, 1);
    // A token that was never issued, or of no clinic, is not a link.
    let forged = enroll(&app, &format!("{}.AAAA", app.clinic), "whatever password").await;
    assert_eq!(
        (forged.status, forged.code()),
        (StatusCode::UNAUTHORIZED, "invalid_link")
    );
    let junk = enroll(&app, "no-dot-here", "whatever password").await;
    assert_eq!(junk.code(), "invalid_link");
    // A weak password spends nothing.
    let second = create(&app, &owner_cookie, "dr.second", Role::FrontDesk).await;
    let token2 = token_of(&second.body);
    let weak = enroll(&app, &token2, "short").await;
    assert_eq!(weak.code(), "weak_password");
    let ok = enroll(&app, &token2, "long enough password").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[tokio::test]
async fn an_expired_link_is_refused() {
    // The lifetime is configuration (72 hours by default).
    let default = TestApp::new().await;
    assert_eq!(
        default.state.config.login.enrollment_link_ttl_secs,
        72 * 3600
    );
    let app = TestApp::with_config(|c| c.login.enrollment_link_ttl_secs = 600).await;
    let admin = app.user(Role::ClinicAdmin).await;
    let cookie = app.session(&admin, Stage::Full).await;
    let created = create(&app, &cookie, "desk.new", Role::FrontDesk).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let token = token_of(&created.body);
    app.clock.advance_secs(601);
    let late = enroll(&app, &token, "a password in time").await;
    assert_eq!(
        (late.status, late.code()),
        (StatusCode::GONE, "link_expired"),
        "{}",
        late.text
    );
    let (login, _) = app
        .login(
            &as_user(
                &app,
                created.body["id"].as_str().unwrap(),
                "desk.new",
                Role::FrontDesk,
            ),
            "a password in time",
        )
        .await;
    assert_eq!(login.code(), "invalid_credentials");
    assert_eq!(audit_count(&app, "enrollment_complete", "denied").await, 1);
}

#[tokio::test]
async fn twenty_concurrent_uses_of_one_link_set_one_password() {
    let app = TestApp::new().await;
    let admin = app.user(Role::ClinicAdmin).await;
    let cookie = app.session(&admin, Stage::Full).await;
    let created = create(&app, &cookie, "ma.new", Role::MedicalAssistant).await;
    let token = token_of(&created.body);
    let uses = (0..20).map(|i| {
        app.call(
            Method::POST,
            "/api/v1/auth/enroll",
            None,
            Some(json!({ "token": token, "password": format!("concurrent password {i}") })),
        )
    });
    let answers = futures_util::future::join_all(uses).await;
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == StatusCode::OK)
        .map(|(i, _)| i)
        .collect();
    let used = answers
        .iter()
        .filter(|r| (r.status, r.code()) == (StatusCode::GONE, "link_used"))
        .count();
    assert_eq!(
        (winners.len(), used),
        (1, 19),
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, r.text.clone()))
            .collect::<Vec<_>>()
    );
    // The one password that took is the winner's.
    let user = as_user(
        &app,
        created.body["id"].as_str().unwrap(),
        "ma.new",
        Role::MedicalAssistant,
    );
    let (login, _) = app
        .login(&user, &format!("concurrent password {}", winners[0]))
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert_eq!(audit_count(&app, "enrollment_complete", "success").await, 1);
    assert_eq!(audit_count(&app, "enrollment_complete", "denied").await, 19);
}

#[tokio::test]
async fn each_role_gives_only_the_roles_the_matrix_allows() {
    let app = TestApp::new().await;
    // The table as decided (docs/permissions.md shows it).
    assert_eq!(assign_rule(Role::ClinicAdmin, Role::Provider), None);
    assert_eq!(assign_rule(Role::ClinicAdmin, Role::ClinicAdmin), None);
    assert_eq!(assign_rule(Role::ClinicAdmin, Role::Owner), None);
    assert_eq!(
        assign_rule(Role::ClinicAdmin, Role::FrontDesk),
        Some(Assign::Allowed)
    );
    assert_eq!(
        assign_rule(Role::ClinicAdmin, Role::MedicalAssistant),
        Some(Assign::Allowed)
    );
    for privileged in [Role::Owner, Role::ClinicAdmin, Role::Provider] {
        assert_eq!(assign_rule(Role::Owner, privileged), Some(Assign::StepUp));
    }
    let mut n = 0;
    for &actor in Role::ALL {
        let user = app.user(actor).await;
        for &target in Role::ALL {
            n += 1;
            // A fresh session each time: fresh from MFA, so step-up is not what decides here.
            let cookie = app.session(&user, Stage::Full).await;
            let r = create(&app, &cookie, &format!("made{n}"), target).await;
            let what = format!("{actor:?} creating {target:?}: {} {}", r.status, r.text);
            let may_manage = scope_of(actor, Permission::UsersManage).is_some();
            match (may_manage, assign_rule(actor, target)) {
                (true, Some(_)) => {
                    assert_eq!(r.status, StatusCode::OK, "{what}");
                    assert!(r.body["enrollment"]["url"].is_string(), "{what}");
                }
                (true, None) => {
                    assert_eq!(
                        (r.status, r.code()),
                        (StatusCode::FORBIDDEN, "role_not_assignable"),
                        "{what}"
                    );
                }
                (false, _) => {
                    assert_eq!(
                        (r.status, r.code()),
                        (StatusCode::FORBIDDEN, "forbidden"),
                        "{what}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn privileged_roles_need_a_fresh_step_up() {
    let app = TestApp::new().await;
    let owner = app.user(Role::Owner).await;
    let secret = app.enroll(&owner).await;
    let cookie = app.session(&owner, Stage::Full).await;
    // Past the step-up window, the session kept alive.
    for _ in 0..3 {
        app.clock.advance_secs(120);
        let r = app
            .call(Method::GET, "/api/v1/users", Some(&cookie), None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for (i, role) in [Role::Owner, Role::ClinicAdmin, Role::Provider]
        .into_iter()
        .enumerate()
    {
        let r = create(&app, &cookie, &format!("stale{i}"), role).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "step_up_required"),
            "{role:?}: {}",
            r.text
        );
    }
    // Roles without the condition need none.
    let desk = create(&app, &cookie, "desk.stale", Role::FrontDesk).await;
    assert_eq!(desk.status, StatusCode::OK, "{}", desk.text);
    let up = app
        .call(
            Method::POST,
            "/api/v1/auth/step-up",
            Some(&cookie),
            Some(json!({ "code": app.code(&secret, 0) })),
        )
        .await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.text);
    let provider = create(&app, &cookie, "dr.fresh", Role::Provider).await;
    assert_eq!(provider.status, StatusCode::OK, "{}", provider.text);
}
