//! The server's lifecycle over the wire, from `run(listener, state, shutdown)` on 127.0.0.1:0:
//! stalled and malformed requests get an answer (or a close) instead of hanging, the router's
//! own errors are problems, the connection cap holds, and shutdown drains (requests in flight
//! finish, new connections are refused, consult participants are told, jobs stop).
//!
//! Timeouts are configured at 1 s and bounded generously (10 s) here: before, each of these
//! requests hung until the client gave up.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use clinic_api::Config;
use clinic_api::platform::authz::Role;
use clinic_api::platform::jobs::Running;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::TestApp;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Far more than any configured timeout here; the old behaviour never answered at all.
const BOUND: Duration = Duration::from_secs(10);

struct Server {
    app: TestApp,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A server with 1 s header and body read timeouts, adjusted by `tweak`.
async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let app = TestApp::with_config(|c| {
        c.http.header_read_timeout_secs = 1;
        c.http.body_read_timeout_secs = 1;
        c.http.drain_timeout_secs = 10;
        tweak(c);
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(clinic_api::run(listener, app.state.clone(), async move {
        let _ = stopped.await;
    }));
    Server {
        app,
        addr,
        stop: Some(stop),
        task,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
    }

    /// Waits for `run` to return (bounded).
    async fn finished(&mut self) {
        tokio::time::timeout(BOUND, &mut self.task)
            .await
            .expect("run returns after shutdown")
            .expect("the server task")
            .expect("run ends cleanly");
    }
}

/// A raw connection that has sent `bytes`.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Everything the server sends until it closes the connection, within [`BOUND`].
async fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(BOUND, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        // A reset after the answer still counts as closed.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read failed: {e}"),
        Err(_) => panic!(
            "the server neither answered nor closed within {BOUND:?}; got so far: {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `needle` has arrived (bounded).
async fn until_seen(s: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        while !String::from_utf8_lossy(&out).contains(needle) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {:?}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} within {BOUND:?}"));
    String::from_utf8_lossy(&out).into_owned()
}

/// Status, lowercased head, and the JSON body of a raw HTTP/1.1 answer.
fn parse(answer: &str) -> (u16, String, Value) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn assert_problem(answer: &str, status: u16, code: &str) {
    let (got, head, body) = parse(answer);
    assert_eq!(got, status, "{answer}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert_eq!(body["code"], code, "{answer}");
}

const JOIN_HEAD: &str =
    "POST /api/v1/consults/join HTTP/1.1\r\nHost: clinic\r\nContent-Type: application/json\r\n";

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_any_body() {
    let s = start(|_| {}).await;
    let mut c = raw(
        s.addr,
        format!("{JOIN_HEAD}Content-Length: 10000000\r\n\r\n").as_bytes(),
    )
    .await;
    assert_problem(&until_closed(&mut c).await, 413, "body_too_large");
    // Also with Expect: 100-continue: refused without inviting the body.
    let mut c = raw(
        s.addr,
        format!("{JOIN_HEAD}Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n").as_bytes(),
    )
    .await;
    let answer = until_closed(&mut c).await;
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert_problem(&answer, 413, "body_too_large");
}

#[tokio::test]
async fn a_body_short_of_its_declared_length_gets_408() {
    let s = start(|_| {}).await;
    let mut c = raw(
        s.addr,
        format!("{JOIN_HEAD}Content-Length: 100\r\n\r\n{{\"code\":").as_bytes(),
    )
    .await;
    assert_problem(&until_closed(&mut c).await, 408, "body_timeout");
}

#[tokio::test]
async fn a_chunked_body_that_stalls_gets_408() {
    let s = start(|_| {}).await;
    let mut c = raw(
        s.addr,
        format!("{JOIN_HEAD}Transfer-Encoding: chunked\r\n\r\n8\r\n{{\"code\":\r\n").as_bytes(),
    )
    .await;
    assert_problem(&until_closed(&mut c).await, 408, "body_timeout");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413() {
    let s = start(|c| c.http.body_limit_bytes = 1024).await;
    let mut c = raw(
        s.addr,
        format!("{JOIN_HEAD}Transfer-Encoding: chunked\r\n\r\n").as_bytes(),
    )
    .await;
    let chunk = format!("800\r\n{}\r\n", "x".repeat(0x800));
    let _ = c.write_all(chunk.as_bytes()).await;
    assert_problem(&until_closed(&mut c).await, 413, "body_too_large");
}

/// What the HTTP parser refuses (before any route sees the request) is answered with a
/// problem too, not an empty 400/431: a client can tell what it did wrong.
#[tokio::test]
async fn requests_the_parser_refuses_get_problems() {
    let s = start(|_| {}).await;
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("{JOIN_HEAD}Content-Length: -1\r\n\r\n"),
            400,
            "malformed_request",
        ),
        (
            format!("{JOIN_HEAD}Content-Length: 1, 2\r\n\r\n{{}}"),
            400,
            "malformed_request",
        ),
        (
            "GET /heal\x7fthz HTTP/1.1\r\nHost: clinic\r\n\r\n".to_string(),
            400,
            "malformed_request",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: clinic\r\nBad Header: x\r\n\r\n".to_string(),
            400,
            "malformed_request",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: clinic\r\n{many_headers}\r\n"),
            431,
            "headers_too_large",
        ),
    ];
    for (bytes, status, code) in &cases {
        let mut c = raw(s.addr, bytes.as_bytes()).await;
        let answer = until_closed(&mut c).await;
        assert_problem(&answer, *status, code);
        let (_, head, _) = parse(&answer);
        assert!(head.contains("connection: close"), "{answer}");
        // The declared length is the body's: a client reads exactly the problem.
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{answer}"
        );
    }
    // Also on a keep-alive connection, after a request that was answered normally.
    let mut c = raw(
        s.addr,
        b"GET /healthz HTTP/1.1\r\nHost: clinic\r\n\r\nGET /healthz HTTP/1.1\r\nHost: clinic\r\nContent-Length: -1\r\n\r\n",
    )
    .await;
    let answer = until_closed(&mut c).await;
    let (first, second) = answer
        .split_once("HTTP/1.1 400")
        .unwrap_or_else(|| panic!("no 400 after the first answer: {answer}"));
    assert!(first.starts_with("HTTP/1.1 200"), "{answer}");
    assert_problem(&format!("HTTP/1.1 400{second}"), 400, "malformed_request");
}

#[tokio::test]
async fn an_unfinished_request_head_is_closed() {
    let s = start(|_| {}).await;
    let mut c = raw(s.addr, b"GET /healthz HTTP/1.1\r\nHost: clinic\r\n").await;
    let answer = until_closed(&mut c).await;
    assert!(!answer.contains(" 200 "), "{answer}");
}

#[tokio::test]
async fn a_request_head_trickled_byte_by_byte_is_closed() {
    let s = start(|_| {}).await;
    let c = raw(s.addr, b"GET /healthz HTTP/1.1\r\nX-Slow: ").await;
    let (mut read, mut write) = c.into_split();
    // One byte every 50 ms: each arrives well within any idle timeout, the head never ends.
    let trickle = tokio::spawn(async move {
        loop {
            if write.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut out = Vec::new();
    let closed = tokio::time::timeout(BOUND, read.read_to_end(&mut out)).await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "a trickled head kept the connection for {BOUND:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = start(|_| {}).await;
    let mut c = raw(s.addr, b"GET /healthz HTTP/1.1\r\nHost: clinic\r\n\r\n").await;
    until_seen(&mut c, "\r\n\r\n").await;
    // No second request: the connection closes after the header read timeout.
    until_closed(&mut c).await;
}

#[tokio::test]
async fn the_routers_own_errors_are_problems() {
    let s = start(|_| {}).await;
    let http = reqwest::Client::new();
    let problem = |r: &reqwest::Response| {
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };

    let r = http
        .delete(s.url("/api/v1/consults/join"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(problem(&r), "application/problem+json");
    assert!(r.headers().get("allow").is_some(), "405 keeps Allow");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");

    let r = http.get(s.url("/api/v1/consults/ws")).send().await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(problem(&r), "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "upgrade_required");

    let r = http.get(s.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(problem(&r), "application/problem+json");
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_wait() {
    let s = start(|c| {
        c.http.max_connections = 2;
        // The two connections that hold the cap stay open while the test looks.
        c.http.header_read_timeout_secs = 60;
    })
    .await;
    let first = raw(s.addr, b"").await;
    let _second = raw(s.addr, b"").await;
    let mut third = raw(
        s.addr,
        b"GET /healthz HTTP/1.1\r\nHost: clinic\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the third connection was served past a cap of two"
    );
    drop(first);
    let (status, _, _) = parse(&until_closed(&mut third).await);
    assert_eq!(status, 200, "served once a place is free");
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_refuses_new_connections_and_stops_jobs() {
    let mut s = start(|c| {
        c.audit.checkpoint_interval_secs = 3600;
        c.imaging.tier_interval_secs = 3600;
        c.scheduling.outbox_interval_secs = 3600;
    })
    .await;
    let ready = reqwest::get(s.url("/healthz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(Running::of(&s.app.state).count(), 3, "three jobs run");

    // A request whose body is still to come: the server asks for it with 100 Continue, so it is
    // in its handler's hands when the shutdown begins.
    let body = br#"{"code":"nobody.nothing"}"#;
    let mut slow = raw(
        s.addr,
        format!(
            "{JOIN_HEAD}Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    until_seen(&mut slow, "100 Continue\r\n\r\n").await;

    s.shutdown();
    tokio::time::timeout(BOUND, async {
        loop {
            match TcpStream::connect(s.addr).await {
                Err(_) => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("new connections are refused once shutdown begins");

    slow.write_all(body).await.unwrap();
    // (The 100 Continue was read above.)
    let answer = until_closed(&mut slow).await;
    assert_problem(&answer, 401, "invalid_link");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    s.finished().await;
    assert_eq!(
        Running::of(&s.app.state).count(),
        0,
        "no job outlives the server"
    );
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(BOUND, ws.next())
            .await
            .expect("a message")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return Value::Null,
        }
    }
}

#[tokio::test]
async fn consult_participants_are_told_the_server_is_going_away() {
    let mut s = start(|_| {}).await;
    let app = &s.app;
    let provider = app.user(Role::Provider).await;
    let cookie = app.session(&provider, Stage::Full).await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/consults",
            Some(&cookie),
            Some(json!({ "location_id": app.locations[0] })),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let link = app
        .call(
            Method::POST,
            &format!("/api/v1/consults/{id}/links"),
            Some(&cookie),
            Some(json!({ "role": "provider", "display_name": "Dr. Hartwell" })),
        )
        .await;
    let code = link.body["url"]
        .as_str()
        .unwrap()
        .split_once('#')
        .unwrap()
        .1
        .to_string();
    let joined = app
        .call(
            Method::POST,
            "/api/v1/consults/join",
            None,
            Some(json!({ "code": code })),
        )
        .await;
    let token = joined.body["token"].as_str().unwrap().to_string();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/v1/consults/ws", s.addr))
            .await
            .unwrap();
    ws.send(Message::Text(
        json!({ "type": "join", "v": 1, "token": token })
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(recv(&mut ws).await["type"], "welcome");

    s.shutdown();
    let told = loop {
        let m = recv(&mut ws).await;
        assert!(!m.is_null(), "closed without being told");
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(
        (told["code"].as_str(), told["fatal"].as_bool()),
        (Some("server_going_away"), Some(true)),
        "{told}"
    );
    assert!(recv(&mut ws).await.is_null(), "then the connection closes");
    s.finished().await;
    // The consult itself stays open: the participants join again once the server is back.
    let mut tx = s.app.state.tx(&s.app.clinic).await.unwrap();
    let (status,): (String,) = sqlx::query_as("SELECT status FROM consults WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(status, "open");
}
