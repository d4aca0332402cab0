//! A consult participant that stops reading: its connection's queue is bounded, so the room
//! closes it (`slow_consumer`) instead of holding ever more messages for it, and the room and
//! the other participants go on.
//!
//! The server's listening socket and the reader's socket get small buffers (the kernel would
//! otherwise take megabytes on loopback before the server notices), and two participants toggle
//! their microphones, so the room sends everyone a roster many times a second.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::Method;
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::TestApp;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = WebSocketStream<TcpStream>;

const BOUND: Duration = Duration::from_secs(60);

/// A WebSocket over a socket with a small receive buffer.
async fn connect(addr: SocketAddr) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/api/v1/consults/ws"), stream)
            .await
            .unwrap();
    ws
}

async fn send<S>(ws: &mut S, v: Value)
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Debug,
{
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message; `Null` once closed.
async fn recv(ws: &mut SplitStream<Ws>) -> Value {
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

async fn until(ws: &mut SplitStream<Ws>, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let m = recv(ws).await;
        assert!(!m.is_null(), "closed while waiting");
        if pred(&m) {
            return m;
        }
    }
}

/// Reads everything a participant gets, in the background, and hands it on.
fn drain(mut read: SplitStream<Ws>) -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = read.next().await {
            if let Message::Text(t) = frame
                && tx.send(serde_json::from_str(t.as_str()).unwrap()).is_err()
            {
                break;
            }
        }
    });
    rx
}

async fn next_where(
    rx: &mut mpsc::UnboundedReceiver<Value>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(BOUND, async {
        loop {
            let m = rx.recv().await.expect("still connected");
            if pred(&m) {
                return m;
            }
        }
    })
    .await
    .expect("the expected message")
}

fn presence(roster: &Value, id: &str) -> Option<String> {
    roster["participants"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["state"].as_str().unwrap_or_default().to_string())
}

struct Participant {
    id: String,
    write: SplitSink<Ws, Message>,
    read: SplitStream<Ws>,
}

#[tokio::test]
async fn a_participant_that_stops_reading_is_closed_and_the_room_goes_on() {
    let app = TestApp::new().await;
    let socket = TcpSocket::new_v4().unwrap();
    // Accepted connections inherit the small send buffer.
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(clinic_api::run(
        listener,
        app.state.clone(),
        std::future::pending(),
    ));
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
    let consult = r.body["id"].as_str().unwrap().to_string();
    let token = |role: &'static str| {
        let app = &app;
        let cookie = cookie.clone();
        let consult = consult.clone();
        async move {
            // Long names make long rosters.
            let name = format!("{role} {}", "n".repeat(60));
            let link = app
                .call(
                    Method::POST,
                    &format!("/api/v1/consults/{consult}/links"),
                    Some(&cookie),
                    Some(json!({ "role": role, "display_name": name })),
                )
                .await;
            let code = link.body["url"]
                .as_str()
                .unwrap()
                .split_once('#')
                .unwrap()
                .1;
            let joined = app
                .call(
                    Method::POST,
                    "/api/v1/consults/join",
                    None,
                    Some(json!({ "code": code })),
                )
                .await;
            joined.body["token"].as_str().unwrap().to_string()
        }
    };
    let join = |token: String| async move {
        let (mut write, mut read) = connect(addr).await.split();
        send(
            &mut write,
            json!({ "type": "join", "v": 1, "token": token }),
        )
        .await;
        let welcome = until(&mut read, |m| m["type"] == "welcome").await;
        Participant {
            id: welcome["participant"].as_str().unwrap().to_string(),
            write,
            read,
        }
    };

    let mut host = join(token("provider").await).await;
    let mut others = Vec::new();
    for role in ["patient", "caregiver", "interpreter"] {
        let mut p = join(token(role).await).await;
        send(
            &mut host.write,
            json!({ "type": "admit", "participant": p.id }),
        )
        .await;
        until(&mut p.read, |m| m["type"] == "admitted").await;
        others.push(p);
    }
    let mut host_rx = drain(host.read);
    let interpreter = others.pop().unwrap();
    let caregiver = others.pop().unwrap();
    // The patient reads nothing from here on.
    let patient = others.pop().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut togglers = Vec::new();
    for p in [caregiver, interpreter] {
        let mut write = p.write;
        let rx = drain(p.read);
        let stop = stop.clone();
        togglers.push((
            tokio::spawn(async move {
                // 15 a second each, under the per-connection rate limit.
                for i in 0..4000u32 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let on = i % 2 == 0;
                    let msg = json!({ "type": "media_state", "audio": on, "video": on });
                    if write
                        .send(Message::Text(msg.to_string().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(66)).await;
                }
                write
            }),
            rx,
        ));
    }

    // The room gives up on the patient: the host sees them drop to reconnecting.
    let patient_id = patient.id.clone();
    next_where(&mut host_rx, |m| {
        m["type"] == "roster" && presence(m, &patient_id).as_deref() == Some("reconnecting")
    })
    .await;

    // The patient's connection ends (after what was already in its buffers), with
    // slow_consumer if the socket could still take it.
    let mut read = patient.read;
    let mut last = Value::Null;
    loop {
        let m = recv(&mut read).await;
        if m.is_null() {
            break;
        }
        last = m;
    }
    assert!(
        last["type"] == "roster" || (last["type"] == "error" && last["code"] == "slow_consumer"),
        "the last message was {last}"
    );

    // The others go on: the host still gets rosters, and a ping is answered.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for (task, mut rx) in togglers {
        let mut write = tokio::time::timeout(BOUND, task).await.unwrap().unwrap();
        send(&mut write, json!({ "type": "ping", "id": 7 })).await;
        next_where(&mut rx, |m| m["type"] == "pong" && m["id"] == 7).await;
    }
    send(&mut host.write, json!({ "type": "ping", "id": 8 })).await;
    next_where(&mut host_rx, |m| m["type"] == "pong" && m["id"] == 8).await;
}
