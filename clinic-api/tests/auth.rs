//! Sign-in, MFA enrollment and verification, replay refusal, recovery codes, lockout, session
//! idle timeout and absolute lifetime, and revocation on disable, MFA reset and password change.

use axum::http::{Method, StatusCode};
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{PASSWORD, TestApp, TestUser, decode_base32};
use serde_json::json;

async fn audit_count(app: &TestApp, action: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_events WHERE action = $1")
        .bind(action)
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn staff_must_enroll_then_codes_cannot_be_replayed() {
    let app = TestApp::new().await;
    let provider = app.user(Role::Provider).await;

    let (login, cookie) = app.login(&provider, PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert_eq!(login.body["stage"], "enroll_only");
    let cookie = cookie.expect("session cookie");
    let set_cookie = login.headers["set-cookie"].to_str().unwrap();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(
        set_cookie.contains("; Secure"),
        "Secure on a loopback listener too: {set_cookie}"
    );

    // Before enrolling, nothing but enrollment.
    let blocked = app
        .call(Method::GET, "/api/v1/locations", Some(&cookie), None)
        .await;
    assert_eq!(
        (blocked.status, blocked.code()),
        (StatusCode::FORBIDDEN, "mfa_enrollment_required")
    );

    let start = app
        .call(Method::POST, "/api/v1/auth/mfa/enroll", Some(&cookie), None)
        .await;
    assert_eq!(start.status, StatusCode::OK, "{}", start.text);
    let secret = decode_base32(start.body["secret"].as_str().unwrap());
    assert_eq!(secret.len(), 20, "160-bit secret");
    assert!(
        start.body["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );

    let wrong = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/enroll/confirm",
            Some(&cookie),
            Some(json!({ "code": "000000" })),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let code = app.code(&secret, 0);
    let done = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/enroll/confirm",
            Some(&cookie),
            Some(json!({ "code": code })),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let cookie = done
        .session_cookie()
        .expect("a new session cookie after MFA");
    let recovery: Vec<String> =
        serde_json::from_value(done.body["recovery_codes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);
    assert_eq!(
        app.call(Method::GET, "/api/v1/locations", Some(&cookie), None)
            .await
            .status,
        StatusCode::OK
    );

    // Next sign-in owes a code; the code already used cannot be replayed.
    let (second, cookie2) = app.login(&provider, PASSWORD).await;
    assert_eq!(second.body["stage"], "mfa_pending");
    let cookie2 = cookie2.unwrap();
    let owed = app
        .call(Method::GET, "/api/v1/locations", Some(&cookie2), None)
        .await;
    assert_eq!(
        (owed.status, owed.code()),
        (StatusCode::UNAUTHORIZED, "mfa_required")
    );
    let replay = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Some(&cookie2),
            Some(json!({ "code": code })),
        )
        .await;
    assert_eq!(
        (replay.status, replay.code()),
        (StatusCode::UNAUTHORIZED, "code_replayed"),
        "{}",
        replay.text
    );
    app.clock.advance_secs(30);
    let fresh = app.code(&secret, 0);
    let ok = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Some(&cookie2),
            Some(json!({ "code": fresh })),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let cookie2 = ok.session_cookie().expect("a new session cookie after MFA");
    assert_eq!(
        app.call(Method::GET, "/api/v1/locations", Some(&cookie2), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        audit_count(&app, "mfa_failed").await,
        2,
        "the wrong enrollment code and the replay are audited"
    );

    // A recovery code works once.
    let (_, cookie3) = app.login(&provider, PASSWORD).await;
    let cookie3 = cookie3.unwrap();
    let used = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Some(&cookie3),
            Some(json!({ "recovery_code": recovery[3].to_uppercase() })),
        )
        .await;
    assert_eq!(used.status, StatusCode::OK, "{}", used.text);
    let (_, cookie4) = app.login(&provider, PASSWORD).await;
    let again = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Some(&cookie4.unwrap()),
            Some(json!({ "recovery_code": recovery[3] })),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.text);
    assert_eq!(audit_count(&app, "recovery_code_used").await, 1);

    // Owners and admins see enrollment state.
    let admin = app.user(Role::ClinicAdmin).await;
    app.user(Role::Patient).await;
    let list = app
        .call(
            Method::GET,
            "/api/v1/users",
            Some(&app.session(&admin, Stage::Full).await),
            None,
        )
        .await;
    let me = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == provider.username.as_str())
        .unwrap();
    assert_eq!(me["mfa_enrolled"], true);
    let admin_row = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == admin.username.as_str())
        .unwrap();
    assert_eq!(admin_row["mfa_enrolled"], false);
    assert!(
        list.body
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["role"] != "patient"),
        "patient accounts (PHI) are not listed"
    );
}

#[tokio::test]
async fn patients_sign_in_without_mfa_but_not_as_staff() {
    let app = TestApp::new().await;
    let patient = app.user(Role::Patient).await;
    let (login, cookie) = app.login(&patient, PASSWORD).await;
    assert_eq!(login.body["stage"], "full", "{}", login.text);
    let info = app
        .call(
            Method::GET,
            "/api/v1/auth/session",
            Some(&cookie.unwrap()),
            None,
        )
        .await;
    assert_eq!(info.body["role"], "patient");
}

#[tokio::test]
async fn failed_logins_back_off_then_lock_and_are_audited() {
    let app = TestApp::new().await;
    let user = app.user(Role::FrontDesk).await;
    let cfg = app.state.config.login.clone();
    let mut last = None;
    for attempt in 1..=cfg.lock_after {
        let (reply, _) = app.login(&user, "wrong password!").await;
        if attempt < cfg.lock_after {
            assert_eq!(
                (reply.status, reply.code()),
                (StatusCode::UNAUTHORIZED, "invalid_credentials"),
                "attempt {attempt}: {}",
                reply.text
            );
        }
        if attempt >= cfg.backoff_after && attempt < cfg.lock_after {
            // Immediately again: backing off, and the password is not even checked.
            let (busy, _) = app.login(&user, PASSWORD).await;
            assert_eq!(
                (busy.status, busy.code()),
                (StatusCode::TOO_MANY_REQUESTS, "login_backoff"),
                "{}",
                busy.text
            );
            assert!(busy.headers.contains_key("retry-after"));
            app.clock.advance_secs(60);
        }
        last = Some(reply);
    }
    let locked = last.unwrap();
    assert_eq!(
        (locked.status, locked.code()),
        (StatusCode::LOCKED, "account_locked"),
        "{}",
        locked.text
    );
    assert!(locked.body["detail"].as_str().unwrap().contains("locked"));
    // The right password does not get through a lock.
    app.clock.advance_secs(60);
    let (still, _) = app.login(&user, PASSWORD).await;
    assert_eq!(still.status, StatusCode::LOCKED);
    assert_eq!(audit_count(&app, "lockout").await, 1);
    assert!(audit_count(&app, "login_failed").await >= cfg.lock_after);

    // An administrator unlocks.
    let admin = app.user(Role::ClinicAdmin).await;
    let unlock = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{}/unlock", user.id),
            Some(&app.session(&admin, Stage::Full).await),
            None,
        )
        .await;
    assert_eq!(unlock.status, StatusCode::OK, "{}", unlock.text);
    let (ok, _) = app.login(&user, PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
}

#[tokio::test]
async fn unknown_users_and_clinics_look_like_wrong_passwords() {
    let app = TestApp::new().await;
    let ghost = TestUser {
        username: "nobody-here".into(),
        ..app.user(Role::Provider).await
    };
    let (reply, cookie) = app.login(&ghost, PASSWORD).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
    assert!(cookie.is_none());
    let other = app
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "clinic": "no-such", "username": "x", "password": "y" })),
        )
        .await;
    assert_eq!(
        (other.status, other.code()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials")
    );
}

#[tokio::test]
async fn idle_timeout_and_absolute_lifetime_are_enforced() {
    let app = TestApp::new().await;
    let user = app.user(Role::MedicalAssistant).await;
    let cookie = app.session(&user, Stage::Full).await;
    let get = |c: String| {
        let app = &app;
        async move {
            app.call(Method::GET, "/api/v1/locations", Some(&c), None)
                .await
        }
    };
    app.clock.advance_secs(14 * 60);
    assert_eq!(
        get(cookie.clone()).await.status,
        StatusCode::OK,
        "14 idle minutes: still signed in"
    );
    app.clock.advance_secs(15 * 60 + 1);
    let idle = get(cookie.clone()).await;
    assert_eq!(
        (idle.status, idle.code()),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{}",
        idle.text
    );
    // Stays expired even if used again at once.
    assert_eq!(get(cookie).await.status, StatusCode::UNAUTHORIZED);

    // Absolute lifetime: active every 10 minutes, still ends at 12 hours.
    let cookie = app.session(&user, Stage::Full).await;
    for _ in 0..71 {
        app.clock.advance_secs(600);
        assert_eq!(get(cookie.clone()).await.status, StatusCode::OK);
    }
    app.clock.advance_secs(600);
    let end = get(cookie).await;
    assert_eq!(
        (end.status, end.code()),
        (StatusCode::UNAUTHORIZED, "session_expired")
    );
}

async fn ok(app: &TestApp, cookie: &str) -> StatusCode {
    app.call(Method::GET, "/api/v1/locations", Some(cookie), None)
        .await
        .status
}

#[tokio::test]
async fn disable_mfa_reset_and_password_change_revoke_sessions_at_once() {
    let app = TestApp::new().await;
    let admin = app.user(Role::ClinicAdmin).await;
    let admin_cookie = app.session(&admin, Stage::Full).await;

    let victim = app.user(Role::Provider).await;
    let (a, b) = (
        app.session(&victim, Stage::Full).await,
        app.session(&victim, Stage::Full).await,
    );
    assert_eq!(ok(&app, &a).await, StatusCode::OK);
    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{}/disable", victim.id),
            Some(&admin_cookie),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["sessions_revoked"], 2);
    assert_eq!(ok(&app, &a).await, StatusCode::UNAUTHORIZED);
    assert_eq!(ok(&app, &b).await, StatusCode::UNAUTHORIZED);
    let (login, _) = app.login(&victim, PASSWORD).await;
    // The same answer as a wrong password: the right password does not confirm the account.
    let (wrong, _) = app.login(&victim, "not the password at all").await;
    assert_eq!(
        (login.status, login.code(), login.body["detail"].clone()),
        (
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            wrong.body["detail"].clone()
        ),
        "disabled users cannot sign in: {}",
        login.text
    );
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let reset = app.user(Role::Provider).await;
    app.enroll(&reset).await;
    let c = app.session(&reset, Stage::Full).await;
    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/users/{}/reset-mfa", reset.id),
            Some(&admin_cookie),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(ok(&app, &c).await, StatusCode::UNAUTHORIZED);
    let (login, _) = app.login(&reset, PASSWORD).await;
    assert_eq!(
        login.body["stage"], "enroll_only",
        "after a reset the user enrolls again"
    );

    let changer = app.user(Role::FrontDesk).await;
    let (c1, c2) = (
        app.session(&changer, Stage::Full).await,
        app.session(&changer, Stage::Full).await,
    );
    let short = app
        .call(
            Method::POST,
            "/api/v1/auth/password",
            Some(&c1),
            Some(json!({ "current_password": PASSWORD, "new_password": "short" })),
        )
        .await;
    assert_eq!(
        (short.status, short.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "weak_password")
    );
    assert_eq!(
        ok(&app, &c2).await,
        StatusCode::OK,
        "a refused change revokes nothing"
    );
    let changed = app
        .call(
            Method::POST,
            "/api/v1/auth/password",
            Some(&c1),
            Some(
                json!({ "current_password": PASSWORD, "new_password": "a much better passphrase" }),
            ),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(ok(&app, &c1).await, StatusCode::UNAUTHORIZED);
    assert_eq!(ok(&app, &c2).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.login(&changer, PASSWORD).await.0.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&changer, "a much better passphrase")
            .await
            .0
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = TestApp::new().await;
    let user = app.user(Role::Owner).await;
    let cookie = app.session(&user, Stage::Full).await;
    let out = app
        .call(Method::POST, "/api/v1/auth/logout", Some(&cookie), None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        app.call(Method::GET, "/api/v1/auth/session", Some(&cookie), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

/// Failed sign-ins sent at once each count (on PostgreSQL a count read before the others'
/// updates would lose them), and each is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_passwords_each_count_a_failure() {
    let app = TestApp::with_config(|c| {
        c.login.backoff_after = 100;
        c.login.lock_after = 200;
    })
    .await;
    let user = app.user(Role::FrontDesk).await;
    let tries = (0..8).map(|_| app.login(&user, "wrong password!"));
    for (reply, _) in futures_util::future::join_all(tries).await {
        assert_eq!(
            (reply.status, reply.code()),
            (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            "{}",
            reply.text
        );
    }
    let (failures,): (i64,) = sqlx::query_as("SELECT failed_logins FROM users WHERE id = $1")
        .bind(user.id.as_str())
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert_eq!(failures, 8, "every failure counted");
    assert_eq!(audit_count(&app, "login_failed").await, 8);
}

/// One TOTP code sent at once from several sessions owing it passes once: the others are
/// replays (on PostgreSQL each request reads the last step before any stored the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_sent_at_once_from_eight_sessions_passes_once() {
    // Replays count as failures; keep the backoff out of the way so every answer is the check's.
    let app = TestApp::with_config(|c| {
        c.login.backoff_after = 100;
        c.login.lock_after = 200;
    })
    .await;
    let provider = app.user(Role::Provider).await;
    let secret = app.enroll(&provider).await;
    let mut cookies = Vec::new();
    for _ in 0..8 {
        cookies.push(app.session(&provider, Stage::MfaPending).await);
    }
    let code = app.code(&secret, 0);
    let body = json!({ "code": code });
    let verifies = cookies.iter().map(|cookie| {
        app.call(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Some(cookie),
            Some(body.clone()),
        )
    });
    let answers = futures_util::future::join_all(verifies).await;
    let passed = answers
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let replayed = answers
        .iter()
        .filter(|r| (r.status, r.code()) == (StatusCode::UNAUTHORIZED, "code_replayed"))
        .count();
    assert_eq!(
        (passed, replayed),
        (1, 7),
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, r.text.clone()))
            .collect::<Vec<_>>()
    );
}

/// The idle clock moves at most once a minute (not a write per request), and a page's
/// background refresh never moves it: a schedule left open on a screen signs out when idle.
#[tokio::test]
async fn the_idle_clock_moves_once_a_minute_and_never_for_background_refreshes() {
    use axum::body::Body;
    use axum::http::Request;
    let app = TestApp::new().await;
    let user = app.user(Role::FrontDesk).await;
    let cookie = app.session(&user, Stage::Full).await;
    let last_seen = || async {
        let (t,): (i64,) =
            sqlx::query_as("SELECT MAX(last_seen_at) FROM sessions WHERE user_id = $1")
                .bind(user.id.as_str())
                .fetch_one(&app.admin.pool)
                .await
                .unwrap();
        t
    };
    let person = || app.call(Method::GET, "/api/v1/locations", Some(&cookie), None);
    let background = || {
        app.send(
            Request::get("/api/v1/locations")
                .header("cookie", &cookie)
                .header("X-Clinic-Background", "1")
                .body(Body::empty())
                .unwrap(),
        )
    };
    let start = last_seen().await;

    app.clock.advance_secs(30);
    assert_eq!(person().await.status, StatusCode::OK);
    assert_eq!(last_seen().await, start, "30 s on: no write");
    app.clock.advance_secs(31);
    assert_eq!(person().await.status, StatusCode::OK);
    let moved = last_seen().await;
    assert_eq!(moved, start + 61_000, "a minute on: the clock moves");

    // Only background refreshes from here: answered, but the session still goes idle.
    for _ in 0..14 {
        app.clock.advance_secs(60);
        assert_eq!(background().await.status, StatusCode::OK);
        assert_eq!(
            last_seen().await,
            moved,
            "background refreshes do not count"
        );
    }
    app.clock.advance_secs(61);
    let idle = background().await;
    assert_eq!(
        (idle.status, idle.code()),
        (StatusCode::UNAUTHORIZED, "session_expired"),
        "{}",
        idle.text
    );
}

/// One sign-in as it comes from a client address (`ConnectInfo`, as the real listener sets it).
async fn login_from(
    app: &TestApp,
    ip: &str,
    clinic: &str,
    username: &str,
) -> clinic_api::testkit::Reply {
    let mut req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            json!({ "clinic": clinic, "username": username, "password": "wrong password!" })
                .to_string(),
        ))
        .unwrap();
    let addr: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    app.send(req).await
}

#[tokio::test]
async fn sign_ins_are_limited_per_address_and_per_name() {
    let app = TestApp::with_config(|c| {
        c.login.per_ip_per_minute = 5;
        c.login.per_account_per_minute = 3;
        c.login.backoff_after = 100;
        c.login.lock_after = 200;
    })
    .await;
    let user = app.user(Role::FrontDesk).await;
    // Three for one name (from two addresses), then that name is refused from any address;
    // the limit counts names with no account the same way.
    for ip in ["10.1.0.1", "10.1.0.2", "10.1.0.1"] {
        let r = login_from(&app, ip, "alpha", &user.username).await;
        assert_eq!(r.code(), "invalid_credentials", "{}", r.text);
    }
    let name = login_from(&app, "10.1.0.3", "alpha", &user.username.to_uppercase()).await;
    assert_eq!(
        (name.status, name.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        "{}",
        name.text
    );
    assert!(name.headers.contains_key("retry-after"));
    for _ in 0..3 {
        let r = login_from(&app, "10.1.0.4", "alpha", "ghost").await;
        assert_eq!(r.code(), "invalid_credentials", "{}", r.text);
    }
    let ghost = login_from(&app, "10.1.0.5", "alpha", "ghost").await;
    assert_eq!(ghost.code(), "rate_limited", "{}", ghost.text);
    // 10.1.0.1 has made two attempts (and 10.1.0.4 three, plus its refused one is not counted
    // against another address): three more names from 10.1.0.1 pass, the next is refused.
    for n in 0..3 {
        let r = login_from(&app, "10.1.0.1", "alpha", &format!("someone-{n}")).await;
        assert_eq!(r.code(), "invalid_credentials", "{}", r.text);
    }
    let ip = login_from(&app, "10.1.0.1", "alpha", "someone-else").await;
    assert_eq!(ip.code(), "rate_limited", "{}", ip.text);
    assert!(ip.body["detail"].as_str().unwrap().contains("address"));
    // Another address is unaffected.
    let other = login_from(&app, "10.1.0.9", "alpha", "someone-else").await;
    assert_eq!(other.code(), "invalid_credentials", "{}", other.text);
}

/// The answers a run of wrong passwords gets: a real account's and a name with no account (in a
/// real clinic, and in no clinic) must be the same, step by step, lock included.
#[tokio::test]
async fn unknown_names_back_off_and_lock_like_accounts() {
    let app = TestApp::new().await;
    let cfg = app.state.config.login.clone();
    let real = app.user(Role::FrontDesk).await;
    // Each name's answers to a run of wrong passwords, waiting out each backoff as a client would.
    let run = |clinic: String, username: String| {
        let app = &app;
        async move {
            let mut seen = Vec::new();
            for _ in 0..2 * cfg.lock_after + 2 {
                let body = json!({ "clinic": clinic, "username": username, "password": "wrong password!" });
                let r = app
                    .call(Method::POST, "/api/v1/auth/login", None, Some(body))
                    .await;
                seen.push((r.status, r.code().to_string()));
                if r.status == StatusCode::TOO_MANY_REQUESTS {
                    let wait = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                    app.clock.advance_secs(wait);
                }
            }
            seen
        }
    };
    let answers = [
        run("alpha".into(), real.username.clone()).await,
        run("alpha".into(), "nobody-at-all".into()).await,
        run("no-such-clinic".into(), "x".into()).await,
    ];
    assert!(
        answers[0].iter().any(|(_, c)| c == "login_backoff")
            && answers[0].last().unwrap().1 == "account_locked",
        "the real account backs off then locks: {:?}",
        answers[0]
    );
    assert_eq!(
        answers[1], answers[0],
        "a name with no account answers the same"
    );
    assert_eq!(
        answers[2], answers[0],
        "a clinic that does not exist answers the same"
    );
}

#[tokio::test]
async fn a_password_someone_else_set_must_be_changed_before_anything_else() {
    let app = TestApp::new().await;
    let desk = app.user(Role::FrontDesk).await;
    let secret = app.enroll(&desk).await;
    // An operator's reset (`clinic user reset-password`) sets a temporary password.
    let temporary = clinic_api::domains::identity::passwords::NewHash::of(
        "temporary password 1",
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    let mut tx = app.state.tx(&desk.clinic).await.unwrap();
    clinic_api::domains::identity::users::set_temporary_password(
        &mut tx,
        &desk.id,
        &temporary,
        app.now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (login, cookie) = app.login(&desk, "temporary password 1").await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    assert_eq!(login.body["must_change_password"], true);
    let cookie = cookie.unwrap();
    let verify = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Some(&cookie),
            Some(json!({ "code": app.code(&secret, 0) })),
        )
        .await;
    assert_eq!(verify.status, StatusCode::OK, "{}", verify.text);
    // The token changes when MFA completes.
    let cookie = verify.session_cookie().expect("the session's new token");
    // A full session, but only the password change is open to it.
    for (method, path) in [
        (Method::GET, "/api/v1/locations"),
        (Method::GET, "/api/v1/patients"),
        (Method::POST, "/api/v1/auth/step-up"),
    ] {
        let r = app
            .call(
                method.clone(),
                path,
                Some(&cookie),
                Some(json!({})).filter(|_| method == Method::POST),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "password_change_required"),
            "{method} {path}: {}",
            r.text
        );
    }
    let info = app
        .call(Method::GET, "/api/v1/auth/session", Some(&cookie), None)
        .await;
    assert_eq!(info.body["must_change_password"], true, "{}", info.text);
    let changed = app
        .call(
            Method::POST,
            "/api/v1/auth/password",
            Some(&cookie),
            Some(json!({ "current_password": "temporary password 1", "new_password": "my own password 2" })),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    // Signed in again with their own password: everything their role allows.
    app.clock.advance_secs(31);
    let (login, cookie) = app.login(&desk, "my own password 2").await;
    assert_eq!(login.body["must_change_password"], false, "{}", login.text);
    let cookie = cookie.unwrap();
    let verify = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Some(&cookie),
            Some(json!({ "code": app.code(&secret, 0) })),
        )
        .await;
    assert_eq!(verify.status, StatusCode::OK, "{}", verify.text);
    let cookie = verify.session_cookie().expect("the session's new token");
    let r = app
        .call(Method::GET, "/api/v1/locations", Some(&cookie), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// Session fixation: the token a session had before its MFA check (which could have been seen,
/// or planted, before the second factor was given) stops working once the check passes; the
/// answer sets a new one. Both ways to pass it: enrollment and verification.
#[tokio::test]
async fn the_session_token_changes_when_mfa_completes() {
    let app = TestApp::new().await;
    let provider = app.user(Role::Provider).await;
    let state_of = |cookie: String| {
        let app = &app;
        async move {
            let r = app
                .call(Method::GET, "/api/v1/auth/session", Some(&cookie), None)
                .await;
            (r.status, r.body["stage"].as_str().unwrap_or("").to_string())
        }
    };

    // Enrollment completes MFA.
    let (_, before) = app.login(&provider, PASSWORD).await;
    let before = before.unwrap();
    let start = app
        .call(Method::POST, "/api/v1/auth/mfa/enroll", Some(&before), None)
        .await;
    let secret = decode_base32(start.body["secret"].as_str().unwrap());
    let done = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/enroll/confirm",
            Some(&before),
            Some(json!({ "code": app.code(&secret, 0) })),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    let after = done.session_cookie().expect("a new session cookie");
    assert_ne!(after, before);
    assert!(
        done.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure; HttpOnly; SameSite=Strict")
    );
    assert_eq!(
        state_of(before.clone()).await.0,
        StatusCode::UNAUTHORIZED,
        "the pre-MFA token no longer works"
    );
    assert_eq!(state_of(after).await, (StatusCode::OK, "full".to_string()));

    // Verification completes MFA.
    app.clock.advance_secs(30);
    let (_, before) = app.login(&provider, PASSWORD).await;
    let before = before.unwrap();
    assert_eq!(
        state_of(before.clone()).await,
        (StatusCode::OK, "mfa_pending".to_string())
    );
    let ok = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/verify",
            Some(&before),
            Some(json!({ "code": app.code(&secret, 0) })),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let after = ok.session_cookie().expect("a new session cookie");
    assert_ne!(after, before);
    assert_eq!(state_of(before.clone()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        state_of(after.clone()).await,
        (StatusCode::OK, "full".to_string())
    );
    // The old token cannot do what the pre-MFA session could either (verify again, sign out).
    let again = app
        .call(Method::POST, "/api/v1/auth/logout", Some(&before), None)
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.text);
    assert_eq!(state_of(after).await.0, StatusCode::OK);
    // Still one session per sign-in: the token changed, the session did not multiply.
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL")
        .fetch_one(&app.admin.pool)
        .await
        .unwrap();
    assert_eq!(n, 2, "live sessions after two sign-ins");
}
