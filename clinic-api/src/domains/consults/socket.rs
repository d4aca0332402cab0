//! The WebSocket shell: a connection authenticates with its first message (a join or resume
//! token), then its frames go to the room task and the room's answers come back through its
//! bounded queue, written with a timeout.

use super::*;

pub(super) async fn ws(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    ApiWebSocket(upgrade): ApiWebSocket,
) -> Response {
    let hints: std::collections::BTreeMap<String, String> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("sec-ch-ua"))
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.to_string(), v.chars().take(200).collect()))
        })
        .take(16)
        .collect();
    upgrade
        .max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| connection(state, socket, client, hints))
}

pub(super) fn text(msg: &ServerMsg) -> Message {
    Message::Text(protocol::encode(msg).into())
}

/// Sends one frame, giving up after [`SEND_TIMEOUT`] (a client that does not read).
pub(super) async fn send_within<S>(sink: &mut S, msg: Message) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await,
        Ok(Ok(()))
    )
}

/// Closes a connection that does not read what it is sent: an `error` `slow_consumer` (fatal)
/// if its socket still takes it, then the close. Bounded: a socket that takes nothing is just
/// dropped.
pub(super) async fn close_slow_consumer<S>(sink: &mut S)
where
    S: futures_util::Sink<Message> + Unpin,
{
    metrics::counter!("consult_slow_consumers_total").increment(1);
    tracing::warn!("closing a consult connection that does not read (slow consumer)");
    let msg = text(&ServerMsg::Error {
        code: "slow_consumer".into(),
        message: "this connection did not keep up with its messages; connect again".into(),
        fatal: true,
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sink.send(msg).await;
        let _ = sink.close().await;
    })
    .await;
}

/// The signaling error code for a media worker's refusal of an offer or answer.
pub(super) fn media_error_code(e: &sfu::SfuError) -> &'static str {
    match e {
        sfu::SfuError::InvalidSdp(_) | sfu::SfuError::UnknownParticipant => "invalid_sdp",
        // Its command queue is full, or it has stopped: try again later.
        sfu::SfuError::Busy | sfu::SfuError::Stopped => "media_unavailable",
    }
}

/// What a participant is told when the server shuts down.
pub(super) fn going_away_msg() -> ServerMsg {
    ServerMsg::Error {
        code: "server_going_away".into(),
        message: "the server is restarting; join again in a moment".into(),
        fatal: true,
    }
}

pub(super) fn going_away_error() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServerGoingAway,
        "the server is restarting; join again in a moment",
    )
}

/// Reads frames until a valid join or resume (errors on the others), within the deadline.
pub(super) async fn first_message(
    socket: &mut WebSocket,
    deadline: tokio::time::Instant,
) -> Option<ClientMsg> {
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.recv())
            .await
            .ok()??
            .ok()?;
        let msg = match frame {
            Message::Text(t) => protocol::parse(t.as_str()),
            Message::Binary(_) => Err(ProtocolError::new(
                "binary_not_accepted",
                "send JSON text frames",
            )),
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        match msg {
            Ok(m @ (ClientMsg::Join { .. } | ClientMsg::Resume { .. })) => return Some(m),
            Ok(ClientMsg::Ping { id }) => {
                let _ = send_within(socket, text(&ServerMsg::Pong { id })).await;
            }
            Ok(_) => {
                let error = ProtocolError::new("not_joined", "send join (or resume) first");
                let _ = send_within(socket, text(&error.to_msg(false))).await;
            }
            Err(e) => {
                let _ = send_within(socket, text(&e.to_msg(false))).await;
            }
        }
    }
}

pub(super) async fn refuse(mut socket: WebSocket, code: &str, message: &str) {
    let error = ServerMsg::Error {
        code: code.into(),
        message: message.into(),
        fatal: true,
    };
    let _ = send_within(&mut socket, text(&error)).await;
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.close()).await;
}

pub(super) async fn connection(
    state: AppState,
    mut socket: WebSocket,
    client: ClientInfo,
    hints: std::collections::BTreeMap<String, String>,
) {
    let Some(first) = first_message(&mut socket, tokio::time::Instant::now() + JOIN_DEADLINE).await
    else {
        return refuse(socket, "join_timeout", "send join within 10 seconds").await;
    };
    let conn = Hub::of(&state).next_conn.fetch_add(1, Ordering::Relaxed);
    let (room, input) = match first {
        ClientMsg::Join {
            token, mut device, ..
        } => {
            let now = state.clock.now_ms() / 1000;
            let claims: Claims = match Hub::of(&state).token_key.verify(&token, now, 30) {
                Ok(c) => c,
                Err(e) => return refuse(socket, e.code(), &e.to_string()).await,
            };
            let Some(clinic) = ClinicId::parse(&claims.clinic) else {
                return refuse(socket, "token_invalid", "the join token names no practice").await;
            };
            let room = match room_for(&state, &clinic, &claims.consult).await {
                Ok(r) => r,
                Err(e) => return refuse(socket, e.code.as_str(), &e.detail).await,
            };
            // What the server saw wins over what the page says.
            if let Some(ua) = &client.user_agent {
                device.user_agent = Some(ua.clone());
            }
            device.client_hints.extend(hints);
            let mut random = [0u8; 24];
            state.keys.random(&mut random);
            let resume_token = format!("{}.{}", claims.consult, URL_SAFE_NO_PAD.encode(random));
            (
                room,
                Input::Join {
                    conn,
                    joiner: Joiner {
                        claims,
                        device,
                        resume_token,
                    },
                },
            )
        }
        ClientMsg::Resume { resume_token, .. } => {
            let consult = resume_token.split('.').next().unwrap_or_default();
            let Some(room) = Hub::of(&state).room(consult) else {
                return refuse(
                    socket,
                    "resume_invalid",
                    "that consult is not live here; join again with your link",
                )
                .await;
            };
            (room, Input::Resume { conn, resume_token })
        }
        _ => unreachable!("first_message returns only join or resume"),
    };
    let (out_tx, mut out_rx) = mpsc::channel(CONNECTION_QUEUE);
    let slow = Arc::new(tokio::sync::Notify::new());
    let queue = ConnQueue {
        tx: out_tx,
        slow: slow.clone(),
    };
    if room.send(RoomCmd::Attach { conn, queue }).await.is_err()
        || room.send(RoomCmd::Input(input)).await.is_err()
    {
        return refuse(socket, "consult_unavailable", "this consult has ended").await;
    }
    let mut limiter = RateLimiter::new(40, 20, Instant::now());
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            biased;
            _ = slow.notified() => {
                // The room found this connection's queue full: free it, say why, close.
                drop(out_rx);
                close_slow_consumer(&mut sink).await;
                break;
            }
            out = out_rx.recv() => match out {
                Some(Outbound::Msg(m)) => {
                    // A send blocked on a client that does not read ends as soon as the room
                    // gives up on it (its queue full), or after the send timeout.
                    let sent = tokio::select! {
                        sent = send_within(&mut sink, text(&m)) => sent,
                        _ = slow.notified() => false,
                    };
                    if !sent {
                        drop(out_rx);
                        close_slow_consumer(&mut sink).await;
                        break;
                    }
                }
                Some(Outbound::Close) => { let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await; break; }
                None => {
                    // The room ended before it handled this connection's input.
                    let _ = send_within(&mut sink, text(&ServerMsg::Error { code: "consult_unavailable".into(), message: "this consult has ended".into(), fatal: true })).await;
                    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.close()).await;
                    break;
                }
            },
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break };
                let parsed = match frame {
                    Message::Text(t) => {
                        if !limiter.allow(Instant::now()) {
                            if limiter.strikes > 200 {
                                let _ = send_within(&mut sink, text(&ServerMsg::Error { code: "rate_limited".into(), message: "too many messages; disconnected".into(), fatal: true })).await;
                                break;
                            }
                            Err(ProtocolError::new("rate_limited", "too many messages; slow down"))
                        } else {
                            protocol::parse(t.as_str())
                        }
                    }
                    Message::Binary(_) => Err(ProtocolError::new("binary_not_accepted", "send JSON text frames")),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                match parsed {
                    Ok(msg) => { if room.send(RoomCmd::Input(Input::Msg { conn, msg })).await.is_err() { break; } }
                    Err(e) => {
                        if !send_within(&mut sink, text(&e.to_msg(false))).await {
                            close_slow_consumer(&mut sink).await;
                            break;
                        }
                    }
                }
            }
        }
    }
    let _ = room.send(RoomCmd::Input(Input::Closed { conn })).await;
}
