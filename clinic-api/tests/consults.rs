//! Consult signaling over a real WebSocket (tokio-tungstenite client): one-time links exchanged for
//! tokens, forged and expired tokens refused, the waiting room, the participant limit, garbage
//! frames answered with errors while the connection goes on, reconnect with a resume token, leave
//! spending the token, and the provider ending the consult. All of it audited.

use clinic_api::domains::consults::Hub;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::TestApp;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use signaling::token::{Claims, ConsultRole};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Consult {
    app: TestApp,
    addr: std::net::SocketAddr,
    cookie: String,
    id: String,
}

async fn setup() -> Consult {
    let app = TestApp::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(clinic_api::run(
        listener,
        app.state.clone(),
        std::future::pending(),
    ));
    let provider = app.user(Role::Provider).await;
    let cookie = app.session(&provider, Stage::Full).await;
    let patient = app
        .patient_in(&app.clinic, &app.locations[0], "Wendy", "Wound")
        .await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/consults",
            Some(&cookie),
            Some(json!({ "location_id": app.locations[0], "patient_id": patient })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    Consult {
        app,
        addr,
        cookie,
        id,
    }
}

impl Consult {
    /// Issues a link for `role`; returns its one-time code (the URL's fragment).
    async fn code(&self, role: &str, name: &str) -> String {
        let link = self
            .app
            .call(
                Method::POST,
                &format!("/api/v1/consults/{}/links", self.id),
                Some(&self.cookie),
                Some(json!({ "role": role, "display_name": name })),
            )
            .await;
        assert_eq!(link.status, StatusCode::OK, "{}", link.text);
        let url = link.body["url"].as_str().unwrap();
        url.split_once('#').unwrap().1.to_string()
    }

    /// Issues a link for `role` and exchanges its code for a join token.
    async fn token(&self, role: &str, name: &str) -> String {
        let code = self.code(role, name).await;
        let code = code.as_str();
        let joined = self
            .app
            .call(
                Method::POST,
                "/api/v1/consults/join",
                None,
                Some(json!({ "code": code })),
            )
            .await;
        assert_eq!(joined.status, StatusCode::OK, "{}", joined.text);
        // The code is one-time.
        let again = self
            .app
            .call(
                Method::POST,
                "/api/v1/consults/join",
                None,
                Some(json!({ "code": code })),
            )
            .await;
        assert_eq!(
            (again.status, again.code()),
            (StatusCode::GONE, "link_used")
        );
        joined.body["token"].as_str().unwrap().to_string()
    }

    async fn connect(&self) -> Ws {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/api/v1/consults/ws", self.addr))
                .await
                .unwrap();
        ws
    }

    async fn join(&self, token: &str) -> (Ws, Value) {
        let mut ws = self.connect().await;
        send(&mut ws, json!({ "type": "join", "v": 1, "token": token, "device": { "user_agent": "TestPhone/1.0" } })).await;
        let first = recv(&mut ws).await;
        (ws, first)
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message (pings skipped); `Null` when the server closed.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return Value::Null,
        }
    }
}

/// Reads until a message of `kind` that satisfies `pred` arrives.
async fn until_where(ws: &mut Ws, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let m = until(ws, kind).await;
        if pred(&m) {
            return m;
        }
    }
}

/// The presence state of `id` in a roster message.
fn presence(roster: &Value, id: &str) -> Option<String> {
    roster["participants"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["state"].as_str().unwrap_or_default().to_string())
}

/// Reads until a message of `kind` arrives.
async fn until(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = recv(ws).await;
        assert!(!m.is_null(), "connection closed while waiting for {kind}");
        if m["type"] == kind {
            return m;
        }
    }
}

#[tokio::test]
async fn waiting_room_admit_reconnect_leave_and_end() {
    let c = setup().await;
    let provider_token = c.token("provider", "Dr. Hartwell").await;
    let patient_token = c.token("patient", "Wendy").await;

    let (mut dr, welcome) = c.join(&provider_token).await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["admitted"].as_bool()),
        (Some("welcome"), Some(true)),
        "{welcome}"
    );
    let (mut pat, welcome) = c.join(&patient_token).await;
    assert_eq!(welcome["admitted"], false, "{welcome}");
    let resume = welcome["resume_token"].as_str().unwrap().to_string();
    let mut waiting = until(&mut dr, "waiting_room").await;
    while waiting["waiting"].as_array().unwrap().is_empty() {
        waiting = until(&mut dr, "waiting_room").await;
    }
    let patient_id = waiting["waiting"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(waiting["waiting"][0]["display"], "Wendy");

    // Not admitted yet: no media.
    send(&mut pat, json!({ "type": "offer", "sdp": "v=0\r\n" })).await;
    assert_eq!(until(&mut pat, "error").await["code"], "not_admitted");

    send(
        &mut dr,
        json!({ "type": "admit", "participant": patient_id }),
    )
    .await;
    until(&mut pat, "admitted").await;
    let roster = until(&mut pat, "roster").await;
    assert_eq!(roster["participants"].as_array().unwrap().len(), 2);

    // Garbage gets errors and the connection goes on.
    pat.send(Message::Text("{".into())).await.unwrap();
    assert_eq!(until(&mut pat, "error").await["code"], "malformed");
    pat.send(Message::Binary(vec![0, 159, 146, 150].into()))
        .await
        .unwrap();
    assert_eq!(
        until(&mut pat, "error").await["code"],
        "binary_not_accepted"
    );
    pat.send(Message::Text("x".repeat(100 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(until(&mut pat, "error").await["code"], "too_large");
    send(&mut pat, json!({ "type": "teleport" })).await;
    assert_eq!(until(&mut pat, "error").await["code"], "invalid_message");
    send(
        &mut pat,
        json!({ "type": "offer", "sdp": "this is not sdp" }),
    )
    .await;
    assert_eq!(until(&mut pat, "error").await["code"], "invalid_sdp");
    send(
        &mut pat,
        json!({ "type": "admit", "participant": patient_id }),
    )
    .await;
    assert_eq!(until(&mut pat, "error").await["code"], "forbidden");
    // SDP that passes the protocol's shape check but is garbage reaches the SFU, which refuses it.
    send(
        &mut pat,
        json!({ "type": "offer", "sdp": "v=0\r\nm=video nonsense\r\na=\u{0}\r\n" }),
    )
    .await;
    let refused = until(&mut pat, "error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["fatal"].as_bool()),
        (Some("invalid_sdp"), Some(false)),
        "{refused}"
    );
    send(&mut pat, json!({ "type": "answer", "sdp": "v=0\r\n" })).await;
    assert_eq!(
        until(&mut pat, "error").await["code"],
        "invalid_sdp",
        "an answer with no offer pending"
    );
    send(&mut pat, json!({ "type": "ping", "id": 42 })).await;
    assert_eq!(until(&mut pat, "pong").await["id"], 42);

    // The patient's network drops: the provider sees "reconnecting", then "connected" on resume.
    drop(pat);
    until_where(&mut dr, "roster", |r| {
        presence(r, &patient_id).as_deref() == Some("reconnecting")
    })
    .await;
    let mut pat = c.connect().await;
    send(
        &mut pat,
        json!({ "type": "resume", "v": 1, "resume_token": resume }),
    )
    .await;
    let welcome = until(&mut pat, "welcome").await;
    assert_eq!(welcome["admitted"], true, "no re-admission after a resume");
    until_where(&mut dr, "roster", |r| {
        presence(r, &patient_id).as_deref() == Some("connected")
    })
    .await;

    // Leaving spends the token.
    send(&mut pat, json!({ "type": "leave" })).await;
    assert_eq!(until(&mut pat, "ended").await["reason"], "left");
    let (mut again, first) = c.join(&patient_token).await;
    assert_eq!(
        (first["code"].as_str(), first["fatal"].as_bool()),
        (Some("token_spent"), Some(true)),
        "{first}"
    );
    assert!(
        recv(&mut again).await.is_null(),
        "closed after a fatal error"
    );

    // The provider ends the consult through the API: the room ends, and nobody can rejoin.
    let end = c
        .app
        .call(
            Method::POST,
            &format!("/api/v1/consults/{}/end", c.id),
            Some(&c.cookie),
            None,
        )
        .await;
    assert_eq!(end.status, StatusCode::OK, "{}", end.text);
    assert_eq!(until(&mut dr, "ended").await["reason"], "ended_by_provider");
    let (_, first) = c.join(&provider_token).await;
    assert_eq!(first["code"], "consult_unavailable", "{first}");

    // All of it is audited, with the device recorded at join.
    let rows: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT detail, patient_id FROM audit_events WHERE resource_type = 'consult' AND resource_id = $1 ORDER BY seq")
            .bind(&c.id)
            .fetch_all(&c.app.admin.pool)
            .await
            .unwrap();
    let details: Vec<String> = rows
        .iter()
        .map(|r| r.0.clone().unwrap_or_default())
        .collect();
    for needed in ["join", "admit", "reconnect", "leave", "end"] {
        assert!(
            details.iter().any(|d| d.starts_with(needed)),
            "no {needed} event in {details:?}"
        );
    }
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("join") && d.contains("TestPhone/1.0")),
        "device recorded: {details:?}"
    );
    assert!(
        rows.iter().all(|r| r.1.is_some()),
        "consult events name the patient"
    );
}

#[tokio::test]
async fn forged_expired_and_over_limit_joins_are_refused() {
    let c = setup().await;
    let now = c.app.now() / 1000;
    let claims = |exp: i64| Claims {
        clinic: c.app.clinic.to_string(),
        consult: c.id.clone(),
        participant: "intruder".into(),
        role: ConsultRole::Provider,
        display: "Intruder".into(),
        iat: now - 600,
        exp,
    };
    // Forged: signed with another key.
    let forged = signaling::token::TokenKey::new(&[9; 32]).sign(&claims(now + 600));
    let (mut ws, first) = c.join(&forged).await;
    assert_eq!(
        (first["code"].as_str(), first["fatal"].as_bool()),
        (Some("token_invalid"), Some(true)),
        "{first}"
    );
    assert!(recv(&mut ws).await.is_null());
    // Expired: our key, past its lifetime.
    let expired = Hub::of(&c.app.state).token_key.sign(&claims(now - 120));
    let (_, first) = c.join(&expired).await;
    assert_eq!(first["code"], "token_expired", "{first}");
    // Wrong consult: a valid token for a consult that does not exist.
    let mut other = claims(now + 600);
    other.consult = uuid::Uuid::new_v4().to_string();
    let (_, first) = c.join(&Hub::of(&c.app.state).token_key.sign(&other)).await;
    assert_eq!(first["code"], "consult_unavailable", "{first}");

    // Four participants fit; the fifth is refused.
    let mut kept = Vec::new();
    for (role, name) in [
        ("provider", "Dr"),
        ("patient", "Pat"),
        ("caregiver", "Care"),
        ("interpreter", "Interp"),
    ] {
        let (ws, first) = c.join(&c.token(role, name).await).await;
        assert_eq!(first["type"], "welcome", "{role}: {first}");
        kept.push(ws);
    }
    let (_, first) = c.join(&c.token("covering_provider", "Dr Two").await).await;
    assert_eq!(first["code"], "consult_full", "{first}");

    // Messages before joining get an error, and the connection goes on until join.
    let mut early = c.connect().await;
    send(&mut early, json!({ "type": "leave" })).await;
    assert_eq!(recv(&mut early).await["code"], "not_joined");
    send(&mut early, json!({ "type": "ping", "id": 1 })).await;
    assert_eq!(recv(&mut early).await["type"], "pong");
}

#[tokio::test]
async fn links_need_the_consult_permission_and_a_valid_role() {
    let c = setup().await;
    let desk = c.app.user(Role::FrontDesk).await;
    let desk_cookie = c.app.session(&desk, Stage::Full).await;
    let r = c
        .app
        .call(
            Method::POST,
            &format!("/api/v1/consults/{}/links", c.id),
            Some(&desk_cookie),
            Some(json!({ "role": "patient", "display_name": "X" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c
        .app
        .call(
            Method::POST,
            &format!("/api/v1/consults/{}/links", c.id),
            Some(&c.cookie),
            Some(json!({ "role": "surgeon", "display_name": "X" })),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_role")
    );
    for bad in [
        "",
        "nodot",
        "not-a-uuid.abc",
        &format!("{}.{}", c.app.clinic, "wrong"),
    ] {
        let r = c
            .app
            .call(
                Method::POST,
                "/api/v1/consults/join",
                None,
                Some(json!({ "code": bad })),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "invalid_link"),
            "{bad}"
        );
    }
    // Links never carry PHI: only a role page and an opaque code in the fragment.
    let link = c
        .app
        .call(
            Method::POST,
            &format!("/api/v1/consults/{}/links", c.id),
            Some(&c.cookie),
            Some(json!({ "role": "patient", "display_name": "Wendy" })),
        )
        .await;
    let url = link.body["url"].as_str().unwrap();
    assert!(
        url.starts_with("/consult/join#") && !url.contains("Wendy") && !url.contains(&c.id),
        "{url}"
    );
}

#[tokio::test]
async fn cancelling_a_telemedicine_appointment_ends_its_consult_for_everyone_in_it() {
    let app = TestApp::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(clinic_api::run(
        listener,
        app.state.clone(),
        std::future::pending(),
    ));
    let north = app.locations[0].clone();
    let admin = app.user(Role::ClinicAdmin).await;
    let admin = app.session(&admin, Stage::Full).await;
    let provider = app.user(Role::Provider).await;
    let cookie = app.session(&provider, Stage::Full).await;
    let patient = app
        .patient_in(&app.clinic, &north, "Cass", "Cancelled")
        .await;
    let ty = app
        .call(
            Method::POST,
            "/api/v1/appointment-types",
            Some(&admin),
            Some(
                json!({ "name": "Video wound check", "duration_min": 20, "buffer_min": 0,
                         "modality": "telemedicine", "bookable_by": ["provider"] }),
            ),
        )
        .await;
    assert_eq!(ty.status, StatusCode::CREATED, "{}", ty.text);
    // Starting in five minutes: inside the join window.
    let start = chrono::DateTime::from_timestamp_millis(app.now() + 5 * 60_000)
        .unwrap()
        .to_rfc3339();
    let booked = app
        .call(
            Method::POST,
            "/api/v1/appointments",
            Some(&cookie),
            Some(
                json!({ "type_id": ty.body["id"], "location_id": north, "provider_id": provider.id,
                         "patient_id": patient, "start": start, "override_availability": true }),
            ),
        )
        .await;
    assert_eq!(booked.status, StatusCode::CREATED, "{}", booked.text);
    let appointment = booked.body["id"].as_str().unwrap().to_string();
    let consult = booked.body["consult_id"].as_str().unwrap().to_string();
    let c = Consult {
        app,
        addr,
        cookie,
        id: consult.clone(),
    };
    let (mut dr, welcome) = c.join(&c.token("provider", "Dr. Hartwell").await).await;
    assert_eq!(welcome["admitted"], true, "{welcome}");
    let (mut pat, _) = c.join(&c.token("patient", "Cass").await).await;
    let mut waiting = until(&mut dr, "waiting_room").await;
    while waiting["waiting"].as_array().unwrap().is_empty() {
        waiting = until(&mut dr, "waiting_room").await;
    }
    let patient_id = waiting["waiting"][0]["id"].as_str().unwrap().to_string();
    send(
        &mut dr,
        json!({ "type": "admit", "participant": patient_id }),
    )
    .await;
    until(&mut pat, "admitted").await;

    let r = c
        .app
        .call(
            Method::POST,
            &format!("/api/v1/appointments/{appointment}/cancel"),
            Some(&c.cookie),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cancelled");
    // Both are told, and both connections close.
    assert_eq!(until(&mut dr, "ended").await["reason"], "cancelled");
    assert_eq!(until(&mut pat, "ended").await["reason"], "cancelled");
    for ws in [&mut dr, &mut pat] {
        loop {
            let m = recv(ws).await;
            if m.is_null() {
                break;
            }
        }
    }
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, end_reason FROM consults WHERE id = $1")
            .bind(&consult)
            .fetch_one(&c.app.admin.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("ended", Some("AppointmentCancelled"))
    );
    // The consult is over: no new links for it.
    let link = c
        .app
        .call(
            Method::POST,
            &format!("/api/v1/consults/{consult}/links"),
            Some(&c.cookie),
            Some(json!({ "role": "patient", "display_name": "Cass" })),
        )
        .await;
    assert_eq!(link.code(), "consult_ended", "{}", link.text);
}

/// A join code is single-use under concurrency too: twenty exchanges of one code at once yield
/// exactly one token (on PostgreSQL each reads the code unused; only one update may spend it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_exchanges_of_one_code_yield_one_token() {
    let c = setup().await;
    let code = c.code("patient", "Wendy").await;
    let exchanges = (0..20).map(|_| {
        c.app.call(
            Method::POST,
            "/api/v1/consults/join",
            None,
            Some(json!({ "code": code })),
        )
    });
    let answers = futures_util::future::join_all(exchanges).await;
    let tokens = answers
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let used = answers
        .iter()
        .filter(|r| (r.status, r.code()) == (StatusCode::GONE, "link_used"))
        .count();
    assert_eq!(
        (tokens, used),
        (1, 19),
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, r.text.clone()))
            .collect::<Vec<_>>()
    );
    let exchanged: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE clinic_id = $1 AND resource_type = 'consult_link' AND detail LIKE 'code exchanged%'",
    )
    .bind(c.app.clinic.as_str())
    .fetch_one(&c.app.admin.pool)
    .await
    .unwrap();
    assert_eq!(exchanged, 1, "one exchange audited");
}

/// Makes the database refuse consult audit events whose detail starts with `step` (a trigger,
/// created by the test's admin connection), or lets them through again.
async fn refuse_consult_audit(app: &TestApp, step: Option<&str>) {
    let pool = &app.admin.pool;
    let postgres = app.backend() == clinic_api::platform::db::Backend::Postgres;
    if postgres {
        sqlx::query("DROP TRIGGER IF EXISTS refuse_consult_audit ON audit_events")
            .execute(pool)
            .await
            .unwrap();
    } else {
        sqlx::query("DROP TRIGGER IF EXISTS refuse_consult_audit")
            .execute(pool)
            .await
            .unwrap();
    }
    let Some(step) = step else { return };
    // (The step is one of the test's own literals.)
    let when = format!("NEW.resource_type = 'consult' AND NEW.detail LIKE '{step}%'");
    if postgres {
        sqlx::query("CREATE OR REPLACE FUNCTION refuse_consult_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE TRIGGER refuse_consult_audit BEFORE INSERT ON audit_events FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION refuse_consult_audit()"))
            .execute(pool)
            .await
            .unwrap();
    } else {
        sqlx::query(&format!("CREATE TRIGGER refuse_consult_audit BEFORE INSERT ON audit_events WHEN {when} BEGIN SELECT RAISE(ABORT, 'refused'); END"))
            .execute(pool)
            .await
            .unwrap();
    }
}

/// The server closed the connection (after any messages still queued).
async fn closed(ws: &mut Ws) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// A join or an admission whose audit event cannot be written does not happen: the participant
/// gets a fatal `audit_unavailable` and is closed, nobody else sees them, and once the audit log
/// takes writes again the same token joins (before the fix the join went on unaudited).
#[tokio::test]
async fn a_join_or_admission_that_cannot_be_audited_is_refused() {
    let c = setup().await;
    let provider_token = c.token("provider", "Dr. Hartwell").await;
    let patient_token = c.token("patient", "Wendy").await;
    let joins = || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM audit_events WHERE resource_type = 'consult' AND resource_id = $1 AND detail LIKE 'join%'",
        )
        .bind(&c.id)
        .fetch_one(&c.app.admin.pool)
        .await
        .unwrap();
        n
    };

    refuse_consult_audit(&c.app, Some("join")).await;
    let (mut dr, first) = c.join(&provider_token).await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["code"].as_str(),
            first["fatal"].as_bool()
        ),
        (Some("error"), Some("audit_unavailable"), Some(true)),
        "{first}"
    );
    assert!(closed(&mut dr).await, "the unaudited connection is closed");
    assert_eq!(joins().await, 0);

    refuse_consult_audit(&c.app, None).await;
    let (mut dr, welcome) = c.join(&provider_token).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["admitted"], true, "{welcome}");
    assert_eq!(joins().await, 1);

    // The admission cannot be recorded: the patient is refused, not let in unaudited.
    let (mut pat, welcome) = c.join(&patient_token).await;
    assert_eq!(welcome["admitted"], false, "{welcome}");
    let waiting = until_where(&mut dr, "waiting_room", |m| {
        !m["waiting"].as_array().unwrap().is_empty()
    })
    .await;
    let patient_id = waiting["waiting"][0]["id"].as_str().unwrap().to_string();
    refuse_consult_audit(&c.app, Some("admit")).await;
    send(
        &mut dr,
        json!({ "type": "admit", "participant": patient_id }),
    )
    .await;
    let refused = until(&mut pat, "error").await;
    assert_eq!(refused["code"], "audit_unavailable", "{refused}");
    assert!(closed(&mut pat).await);
    let roster = until(&mut dr, "roster").await;
    assert_eq!(
        roster["participants"].as_array().unwrap().len(),
        1,
        "the provider's roster never shows the patient: {roster}"
    );
    assert_eq!(presence(&roster, &patient_id), None);

    // Writes work again: the same token waits and is admitted.
    refuse_consult_audit(&c.app, None).await;
    let (mut pat, welcome) = c.join(&patient_token).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    until_where(&mut dr, "waiting_room", |m| {
        !m["waiting"].as_array().unwrap().is_empty()
    })
    .await;
    send(
        &mut dr,
        json!({ "type": "admit", "participant": patient_id }),
    )
    .await;
    until(&mut pat, "admitted").await;
}
