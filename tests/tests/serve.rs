//! The server as `clinic serve` runs it (configuration → `app::open` → `run`), on the
//! backend under test, over real TCP: the demo practice signs in through MFA enrollment, PHI
//! routes work, checkpoints are written by the server's own role, and shutdown drains.

use clinic_api::testkit::decode_base32;
use clinic_api::{demo, domains::identity::mfa, platform::audit};
use clinic_e2e::{Server, client, config};
use serde_json::{Value, json};

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn sign_in(
    server: &Server,
    c: &reqwest::Client,
    username: &str,
    password: &str,
) -> anyhow::Result<Value> {
    let body = json!({ "clinic": "demo", "username": username, "password": password });
    Ok(c.post(server.url("/api/v1/auth/login"))
        .json(&body)
        .send()
        .await?
        .json()
        .await?)
}

#[tokio::test]
async fn demo_practice_end_to_end() -> anyhow::Result<()> {
    let (config, dir) = config().await?;
    let server = Server::start(config, dir).await?;
    let seeded = demo::seed(&server.state).await?.expect("first seed");
    assert!(
        demo::seed(&server.state).await?.is_none(),
        "seeding twice does nothing"
    );
    let pw = |u: &str| {
        seeded
            .logins
            .iter()
            .find(|l| l.username == u)
            .unwrap()
            .password
            .clone()
    };

    let page = reqwest::get(server.url("/")).await?;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()?
            .contains("frame-ancestors 'none'")
    );
    assert!(page.text().await?.contains("id=\"login-form\""));

    // The medical assistant: login → enroll → session.
    let ma = client();
    let login = sign_in(&server, &ma, "ma.rivera", &pw("ma.rivera")).await?;
    assert_eq!(login["stage"], "enroll_only", "{login}");
    let enroll: Value = ma
        .post(server.url("/api/v1/auth/mfa/enroll"))
        .send()
        .await?
        .json()
        .await?;
    let secret = decode_base32(enroll["secret"].as_str().unwrap());
    let confirm = ma
        .post(server.url("/api/v1/auth/mfa/enroll/confirm"))
        .json(&json!({ "code": mfa::code_at(&secret, now_secs()) }))
        .send()
        .await?;
    assert_eq!(confirm.status(), 200);
    let patients: Value = ma
        .get(server.url("/api/v1/patients"))
        .send()
        .await?
        .json()
        .await?;
    let names: Vec<&str> = patients
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["family_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["Ellis"],
        "the MA at Main Street sees only Main Street's patient"
    );
    let resp = ma.get(server.url("/api/v1/auth/session")).send().await?;
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");

    // Sign out, sign in again: MFA is owed now, and the next time step's code is needed.
    assert_eq!(
        ma.post(server.url("/api/v1/auth/logout"))
            .send()
            .await?
            .status(),
        204
    );
    assert_eq!(
        ma.get(server.url("/api/v1/patients"))
            .send()
            .await?
            .status(),
        401
    );
    let again = sign_in(&server, &ma, "ma.rivera", &pw("ma.rivera")).await?;
    assert_eq!(again["stage"], "mfa_pending");
    let next = mfa::code_at(&secret, now_secs() + mfa::STEP_SECS);
    let verified = ma
        .post(server.url("/api/v1/auth/mfa/verify"))
        .json(&json!({ "code": next }))
        .send()
        .await?;
    assert_eq!(verified.status(), 200, "{}", verified.text().await?);
    assert_eq!(
        ma.get(server.url("/api/v1/patients"))
            .send()
            .await?
            .status(),
        200
    );

    // Checkpoints written by the server's own (row-level-security bound) role, verified by the operator.
    let path = server.dir.path().join("checkpoints.jsonl");
    let written = audit::checkpoint(
        &server.state.db,
        &server.state.keys,
        server.state.clock.now_ms(),
        &path,
    )
    .await?;
    assert_eq!(written.len(), 1);
    assert!(
        written[0].seq >= 5,
        "logins, enrollment, views and logout are in the chain: {}",
        written[0].seq
    );
    let admin =
        clinic_api::platform::db::Db::connect(&server.config.admin_database_url(), 2, None).await?;
    // Audit rows from the real listener carry the client's address and user agent.
    let (ip, agent, session): (Option<String>, Option<String>, Option<String>) =
        sqlx::query_as("SELECT ip, user_agent, session_id FROM audit_events WHERE action = 'view' AND resource_type = 'patient' ORDER BY seq DESC LIMIT 1")
            .fetch_one(&admin.pool)
            .await?;
    assert_eq!(ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(agent.as_deref(), Some("clinic-e2e"));
    assert!(session.is_some());
    let report = audit::verify(&admin, &server.state.keys, &path).await?;
    assert!(report.ok(), "{:?}", report.problems);

    server.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_role_that_can_bypass_rls_is_refused() -> anyhow::Result<()> {
    let Some(_) =
        clinic_api::testkit::postgres_url_or_skip("a_role_that_can_bypass_rls_is_refused")
    else {
        return Ok(());
    };
    let (mut config, dir) = config().await?;
    // The admin URL's superuser, without switching to clinic_app, must not be served with.
    config.database.app_role = "postgres".into();
    let err = Server::start(config, dir)
        .await
        .err()
        .expect("serving as a superuser is refused");
    assert!(
        err.to_string().contains("can bypass row-level security"),
        "{err}"
    );
    Ok(())
}
