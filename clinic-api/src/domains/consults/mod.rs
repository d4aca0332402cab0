//! Video consults: the REST routes (create, issue one-time join links, exchange a link's code for
//! a join token, end) and the WebSocket shell around `signaling::room::Room`.
//!
//! Each live consult has one room task that owns its `Room` and every connection's outbound
//! queue, so a consult's signaling never needs a lock. Connections authenticate with a join token
//! in their first message (or a resume token after a drop); the token is verified with the key
//! ring's consult-token key, without a database call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use signaling::protocol::{self, ClientMsg, ProtocolError, RateLimiter, ServerMsg};
use signaling::room::{AuditAction, ConnId, Effect, Input, Joiner, Output, Room, RoomConfig};
use signaling::token::{Claims, ConsultRole, TokenKey};
use tokio::sync::mpsc;

use crate::platform::audit::{self, Action, AuditEvent};
use crate::platform::authz::{Caller, Permission, Policy, Routes};
use crate::platform::clock::rfc3339;
use crate::platform::error::{ApiError, ApiResult, ErrorCode};
use crate::platform::http::{ApiJson, ApiPath, ApiWebSocket, ClientInfo};
use crate::platform::ids::{ClinicId, LocationId, PatientId};
use crate::platform::keys::{Purpose, sha256_hex};
use crate::platform::openapi::Content;
use crate::platform::state::AppState;
use crate::platform::tx::{Reached, Target, TenantTx};

/// Why a consult ended (the signaling protocol's reasons); see [`end`].
pub use signaling::protocol::EndReason;

/// How long a join link's code may wait to be exchanged.
const LINK_TTL_SECS: i64 = 24 * 3600;
/// How long a join token lives once issued (it is used at once by the page).
const TOKEN_TTL_SECS: i64 = 10 * 60;
/// A connection must join (or resume) within this time.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// Frames above this close the connection at the WebSocket layer; below it and above the
/// protocol's limit they get a `too_large` error and the connection goes on.
const MAX_WS_MESSAGE: usize = 1 << 20;
/// Commands waiting for a room task, at most. Connections wait for room (their reads pause);
/// the media workers' notices never wait: stats are dropped when a room is this far behind.
const ROOM_QUEUE: usize = 1024;
/// Messages waiting to be written to one connection, at most. A connection whose queue fills
/// is not reading: it is closed with `slow_consumer` and its queue freed.
const CONNECTION_QUEUE: usize = 128;
/// Notices from all media workers waiting for the task that routes them to rooms.
const NOTICE_QUEUE: usize = 4096;
/// A frame that the client's socket does not take within this long closes the connection
/// (a client that stops reading).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Live consults on this node.
pub struct Hub {
    rooms: Mutex<HashMap<String, mpsc::Sender<RoomCmd>>>,
    next_conn: AtomicU64,
    /// Set when the server shuts down: no new rooms.
    going_away: AtomicBool,
    pub token_key: TokenKey,
    pub room_config: RoomConfig,
    /// Media workers; a consult always uses the same one (sharded by consult id).
    sfu: Vec<sfu::SfuHandle>,
}

enum RoomCmd {
    Attach {
        conn: ConnId,
        queue: ConnQueue,
    },
    Input(Input),
    /// A message from the media worker for one participant.
    Deliver {
        participant: String,
        msg: ServerMsg,
    },
    /// A participant's media stats, for the consult's hosts.
    Stats {
        participant: String,
        stats: sfu::PeerStats,
    },
    /// The server is shutting down: tell everyone and close.
    GoingAway,
}

/// A connection's outbound queue, as its room holds it.
struct ConnQueue {
    tx: mpsc::Sender<Outbound>,
    /// Told when the queue is full: the connection closes as a slow consumer.
    slow: Arc<tokio::sync::Notify>,
}

/// How a message that finds a connection's queue full is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Full {
    /// Dropped (stats: the next ones supersede it).
    Drop,
    /// The connection is closed as a slow consumer.
    Close,
}

/// Queues `out` for `conn` without waiting. A connection that cannot take it is removed from
/// `conns` (unless the message may be dropped) and told to close; its input loop then reports
/// it closed to the room, as for any dropped connection.
fn push(conns: &mut HashMap<ConnId, ConnQueue>, conn: ConnId, out: Outbound, full: Full) {
    let Some(queue) = conns.get(&conn) else {
        return;
    };
    match queue.tx.try_send(out) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) if full == Full::Drop => {
            metrics::counter!("consult_messages_dropped_total").increment(1);
        }
        Err(_) => {
            if let Some(queue) = conns.remove(&conn) {
                queue.slow.notify_one();
            }
        }
    }
}

enum Outbound {
    Msg(ServerMsg),
    Close,
}

impl Hub {
    /// The node's hub, from the state `app` assembled.
    pub fn of(state: &AppState) -> &Hub {
        state.get()
    }

    /// Starts the media workers and the task that routes their notices to rooms. Needs a tokio
    /// runtime.
    pub fn start(
        keys: &crate::platform::keys::KeyRing,
        config: &crate::platform::config::SfuConfig,
    ) -> std::io::Result<std::sync::Arc<Self>> {
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let (notice_tx, mut notice_rx) = mpsc::channel(NOTICE_QUEUE);
        let mut sfu = Vec::with_capacity(workers);
        for i in 0..workers {
            let mut bind = config.udp_bind;
            if bind.port() != 0 {
                bind.set_port(bind.port() + i as u16);
            }
            let tcp = config.ice_tcp.then_some(config.tcp_bind).map(|mut t| {
                if t.port() != 0 {
                    t.set_port(t.port() + i as u16);
                }
                t
            });
            sfu.push(sfu::SfuHandle::start(bind, tcp, notice_tx.clone())?);
        }
        let hub = std::sync::Arc::new(Self {
            rooms: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            going_away: AtomicBool::new(false),
            token_key: TokenKey::new(&keys.purpose_key(Purpose::ConsultToken)),
            room_config: RoomConfig::default(),
            sfu,
        });
        let weak = std::sync::Arc::downgrade(&hub);
        tokio::spawn(async move {
            while let Some(notice) = notice_rx.recv().await {
                let Some(hub) = weak.upgrade() else { break };
                let (consult, cmd) = match notice {
                    sfu::Notice::Offer {
                        consult,
                        participant,
                        sdp,
                    } => (
                        consult,
                        RoomCmd::Deliver {
                            participant,
                            msg: ServerMsg::Offer { sdp },
                        },
                    ),
                    sfu::Notice::Stats {
                        consult,
                        participant,
                        stats,
                    } => (consult, RoomCmd::Stats { participant, stats }),
                    sfu::Notice::Worker {
                        udp_addr,
                        peers,
                        dropped_unknown,
                    } => {
                        let labels = [("worker", udp_addr.port().to_string())];
                        metrics::gauge!("sfu_worker_sessions", &labels).set(peers as f64);
                        metrics::counter!("sfu_worker_dropped_unknown_packets_total", &labels)
                            .absolute(dropped_unknown);
                        continue;
                    }
                };
                let Some(room) = hub.room(&consult) else {
                    continue;
                };
                match room.try_send(cmd) {
                    Ok(()) => {}
                    // Stats are the first to drop; an offer waits, on its own task, so one
                    // busy room does not hold up the notices of the others.
                    Err(mpsc::error::TrySendError::Full(cmd @ RoomCmd::Deliver { .. })) => {
                        tokio::spawn(async move {
                            if room.send_timeout(cmd, SEND_TIMEOUT).await.is_err() {
                                tracing::warn!(
                                    "a consult room is too busy; a media offer was dropped"
                                );
                            }
                        });
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        metrics::counter!("consult_messages_dropped_total").increment(1);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        });
        Ok(hub)
    }

    /// The media worker of a consult.
    fn sfu_for(&self, consult: &str) -> &sfu::SfuHandle {
        let h = consult
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        &self.sfu[(h % self.sfu.len() as u64) as usize]
    }

    /// The UDP addresses of the media workers.
    pub fn media_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.sfu.iter().map(|s| s.udp_addr).collect()
    }

    /// Number of live rooms (for metrics and tests).
    pub fn live_rooms(&self) -> usize {
        self.rooms.lock().expect("hub lock").len()
    }

    /// Tells a live room (if the consult has one on this node) that it has ended: its
    /// participants get `ended` with `reason` and are disconnected.
    fn end_live(&self, consult: &str, reason: EndReason) {
        if let Some(room) = self.room(consult) {
            let cmd = RoomCmd::Input(Input::EndNow { reason });
            if let Err(mpsc::error::TrySendError::Full(cmd)) = room.try_send(cmd) {
                tokio::spawn(async move {
                    let _ = room.send_timeout(cmd, SEND_TIMEOUT).await;
                });
            }
        }
    }

    /// Tells every live room that the server is going away (on shutdown): each sends its
    /// participants `error` `server_going_away` (fatal) and closes their connections. The
    /// consults stay open, so the participants can join again once the server is back.
    pub fn going_away(&self) {
        self.going_away.store(true, Ordering::SeqCst);
        let rooms: Vec<_> = self
            .rooms
            .lock()
            .expect("hub lock")
            .values()
            .cloned()
            .collect();
        for room in rooms {
            if let Err(mpsc::error::TrySendError::Full(cmd)) = room.try_send(RoomCmd::GoingAway) {
                tokio::spawn(async move {
                    let _ = room.send_timeout(cmd, SEND_TIMEOUT).await;
                });
            }
        }
    }

    fn room(&self, consult: &str) -> Option<mpsc::Sender<RoomCmd>> {
        self.rooms
            .lock()
            .expect("hub lock")
            .get(consult)
            .filter(|tx| !tx.is_closed())
            .cloned()
    }
}

/// The consult row a room needs.
#[derive(sqlx::FromRow)]
struct ConsultRow {
    patient_id: Option<String>,
    status: String,
}

/// The room for a consult: the live one, or a new one if the consult is still open.
async fn room_for(
    state: &AppState,
    clinic: &ClinicId,
    consult: &str,
) -> ApiResult<mpsc::Sender<RoomCmd>> {
    if let Some(tx) = Hub::of(state).room(consult) {
        return Ok(tx);
    }
    if Hub::of(state).going_away.load(Ordering::SeqCst) {
        return Err(going_away_error());
    }
    let mut tx = state.tx(clinic).await?;
    let row: Option<ConsultRow> =
        sqlx::query_as("SELECT patient_id, status FROM consults WHERE id = $1 AND clinic_id = $2")
            .bind(consult)
            .bind(clinic.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    let row = row.filter(|r| r.status == "open").ok_or_else(|| {
        ApiError::conflict(ErrorCode::ConsultUnavailable, "this consult has ended")
    })?;
    let mut rooms = Hub::of(state).rooms.lock().expect("hub lock");
    if let Some(tx) = rooms.get(consult).filter(|tx| !tx.is_closed()) {
        return Ok(tx.clone());
    }
    let (tx, rx) = mpsc::channel(ROOM_QUEUE);
    rooms.insert(consult.to_string(), tx.clone());
    let room = Room::new(consult, Hub::of(state).room_config.clone(), Instant::now());
    tokio::spawn(room_task(
        state.clone(),
        clinic.clone(),
        consult.to_string(),
        row.patient_id,
        room,
        rx,
    ));
    Ok(tx)
}

/// Owns one consult's room: applies inputs in order, sends its output, carries out its effects.
async fn room_task(
    state: AppState,
    clinic: ClinicId,
    consult: String,
    patient: Option<String>,
    mut room: Room,
    mut rx: mpsc::Receiver<RoomCmd>,
) {
    let mut conns: HashMap<ConnId, ConnQueue> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let input = tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(RoomCmd::Attach { conn, queue }) => { conns.insert(conn, queue); continue; }
                Some(RoomCmd::GoingAway) => {
                    for conn in conns.keys().copied().collect::<Vec<_>>() {
                        push(&mut conns, conn, Outbound::Msg(going_away_msg()), Full::Close);
                        push(&mut conns, conn, Outbound::Close, Full::Close);
                    }
                    break;
                }
                Some(RoomCmd::Input(input)) => input,
                Some(RoomCmd::Deliver { participant, msg }) => {
                    if let Some(conn) = room.conn_of(&participant) {
                        push(&mut conns, conn, Outbound::Msg(msg), Full::Close);
                    }
                    continue;
                }
                Some(RoomCmd::Stats { participant, stats }) => {
                    let entry = serde_json::json!({
                        "participant": participant,
                        "bitrate_in_bps": stats.bitrate_in_bps,
                        "bitrate_out_bps": stats.bitrate_out_bps,
                        "packets_in": stats.packets_in,
                        "packets_out": stats.packets_out,
                        "estimate_bps": stats.estimate_bps,
                        "layer": stats.layer,
                        "connected": stats.connected,
                        "loss_in": stats.loss_in,
                        "loss_out": stats.loss_out,
                        "rtt_ms": stats.rtt_ms,
                        "transport": stats.transport,
                        "nacks": stats.nacks,
                    });
                    // Labels are opaque ids, never names; series expire when a participant goes.
                    let labels = [("consult", consult.clone()), ("participant", participant.clone())];
                    metrics::gauge!("sfu_participant_bitrate_in_bps", &labels).set(stats.bitrate_in_bps as f64);
                    metrics::gauge!("sfu_participant_bitrate_out_bps", &labels).set(stats.bitrate_out_bps as f64);
                    metrics::gauge!("sfu_participant_loss_in_ratio", &labels).set(stats.loss_in.unwrap_or(0.0) as f64);
                    metrics::gauge!("sfu_participant_rtt_ms", &labels).set(stats.rtt_ms.unwrap_or(0) as f64);
                    metrics::gauge!("sfu_participant_layer", &labels).set(stats.layer.map_or(-1.0, f64::from));
                    metrics::gauge!("sfu_participant_nacks", &labels).set(stats.nacks as f64);
                    for conn in room.host_conns() {
                        push(&mut conns, conn, Outbound::Msg(ServerMsg::Stats { participants: vec![entry.clone()] }), Full::Drop);
                    }
                    continue;
                }
            },
            _ = tick.tick() => Input::Tick,
        };
        let out = room.handle(Instant::now(), input);
        apply(
            &state,
            &clinic,
            &consult,
            patient.as_deref(),
            &room,
            &mut conns,
            out,
        )
        .await;
        if room.is_ended() {
            break;
        }
    }
    Hub::of(&state)
        .rooms
        .lock()
        .expect("hub lock")
        .remove(&consult);
}

async fn apply(
    state: &AppState,
    clinic: &ClinicId,
    consult: &str,
    patient: Option<&str>,
    room: &Room,
    conns: &mut HashMap<ConnId, ConnQueue>,
    out: Output,
) {
    for (conn, msg) in out.send {
        push(conns, conn, Outbound::Msg(msg), Full::Close);
    }
    for conn in out.close {
        push(conns, conn, Outbound::Close, Full::Close);
        conns.remove(&conn);
    }
    for effect in out.effects {
        match effect {
            Effect::Audit {
                action,
                participant,
                role,
                by,
                detail,
            } => {
                let action_name = match action {
                    AuditAction::Join => "join",
                    AuditAction::Admit => "admit",
                    AuditAction::Remove => "remove",
                    AuditAction::Leave => "leave",
                    AuditAction::Reconnect => "reconnect",
                    AuditAction::End => "end",
                };
                let mut e =
                    AuditEvent::new(clinic.clone(), Action::Access, "consult").resource(consult);
                e.actor_id = by.clone().or(participant.clone());
                e.actor_role = role.map(|r| {
                    format!(
                        "consult_{}",
                        serde_json::to_value(r)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    )
                });
                e.patient_id = patient.map(String::from);
                e.detail = Some(
                    format!(
                        "{action_name} participant={} {detail}",
                        participant.unwrap_or_default()
                    )
                    .trim()
                    .to_string(),
                );
                if let Err(err) = audit::record_now(state, e).await {
                    tracing::error!(error = %err, "could not audit a consult event");
                }
            }
            Effect::MediaOffer { participant, sdp } => {
                let reply = match Hub::of(state)
                    .sfu_for(consult)
                    .offer(consult, &participant, sdp)
                    .await
                {
                    Ok(answer) => ServerMsg::Answer { sdp: answer },
                    Err(e) => ServerMsg::Error {
                        code: media_error_code(&e).into(),
                        message: e.to_string(),
                        fatal: false,
                    },
                };
                if let Some(conn) = room.conn_of(&participant) {
                    push(conns, conn, Outbound::Msg(reply), Full::Close);
                }
            }
            Effect::MediaAnswer { participant, sdp } => {
                if let Err(e) = Hub::of(state)
                    .sfu_for(consult)
                    .answer(&participant, sdp)
                    .await
                    && let Some(conn) = room.conn_of(&participant)
                {
                    let error = ServerMsg::Error {
                        code: media_error_code(&e).into(),
                        message: e.to_string(),
                        fatal: false,
                    };
                    push(conns, conn, Outbound::Msg(error), Full::Close);
                }
            }
            Effect::MediaIce {
                participant,
                candidate,
            } => Hub::of(state)
                .sfu_for(consult)
                .candidate(&participant, candidate),
            Effect::MediaLayer {
                participant,
                preference,
            } => {
                let pref = match preference {
                    protocol::LayerPreference::Normal => sfu::Preference::Normal,
                    protocol::LayerPreference::LowData => sfu::Preference::LowData,
                    protocol::LayerPreference::AudioOnly => sfu::Preference::AudioOnly,
                };
                Hub::of(state)
                    .sfu_for(consult)
                    .preference(&participant, pref);
            }
            Effect::MediaDrop { participant } => Hub::of(state)
                .sfu_for(consult)
                .drop_participant(&participant),
            Effect::ClientStats { .. } => {}
            Effect::Ended { reason } => {
                let result = async {
                    let mut tx = state.tx(clinic).await?;
                    mark_ended(&mut tx, consult, reason).await?;
                    tx.commit().await
                }
                .await;
                if let Err(err) = result {
                    tracing::error!(error = %err, "could not mark a consult ended");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket connections

async fn ws(
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

fn text(msg: &ServerMsg) -> Message {
    Message::Text(protocol::encode(msg).into())
}

/// Sends one frame, giving up after [`SEND_TIMEOUT`] (a client that does not read).
async fn send_within<S>(sink: &mut S, msg: Message) -> bool
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
async fn close_slow_consumer<S>(sink: &mut S)
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
fn media_error_code(e: &sfu::SfuError) -> &'static str {
    match e {
        sfu::SfuError::InvalidSdp(_) | sfu::SfuError::UnknownParticipant => "invalid_sdp",
        // Its command queue is full, or it has stopped: try again later.
        sfu::SfuError::Busy | sfu::SfuError::Stopped => "media_unavailable",
    }
}

/// What a participant is told when the server shuts down.
fn going_away_msg() -> ServerMsg {
    ServerMsg::Error {
        code: "server_going_away".into(),
        message: "the server is restarting; join again in a moment".into(),
        fatal: true,
    }
}

fn going_away_error() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServerGoingAway,
        "the server is restarting; join again in a moment",
    )
}

/// Reads frames until a valid join or resume (errors on the others), within the deadline.
async fn first_message(
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

async fn refuse(mut socket: WebSocket, code: &str, message: &str) {
    let error = ServerMsg::Error {
        code: code.into(),
        message: message.into(),
        fatal: true,
    };
    let _ = send_within(&mut socket, text(&error)).await;
    let _ = tokio::time::timeout(SEND_TIMEOUT, socket.close()).await;
}

async fn connection(
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

// ---------------------------------------------------------------------------------------------
// REST routes

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConsult {
    pub location_id: LocationId,
    pub patient_id: Option<PatientId>,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct ConsultOut {
    pub id: String,
    pub status: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// provider, covering_provider, patient, caregiver or interpreter
    pub role: String,
    /// The name the other participants see.
    pub display_name: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct LinkOut {
    pub participant_id: String,
    /// The page link; the one-time code rides in the fragment, which browsers never send to servers.
    pub url: String,
    pub expires_at: String,
    /// For a scheduled consult: when the link starts to work.
    pub not_before: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinCode {
    pub code: String,
}

#[derive(Serialize, schemars::JsonSchema)]
pub struct JoinToken {
    pub token: String,
    pub consult_id: String,
    pub role: String,
    pub ws_path: String,
}

#[derive(Deserialize)]
struct ConsultPath {
    id: PatientId,
}

/// How an end reason is stored in `consults.end_reason`.
fn stored_reason(reason: EndReason) -> &'static str {
    match reason {
        EndReason::EndedByProvider => "EndedByProvider",
        EndReason::Idle => "Idle",
        EndReason::Cancelled => "AppointmentCancelled",
        EndReason::Removed => "Removed",
        EndReason::Left => "Left",
    }
}

/// Ends a consult: marks it ended in `tx` (if it is still open) and, once `tx` commits, tells
/// its live room, whose participants are then disconnected. The one way a consult ends from
/// outside its room: the provider's end, and an appointment's cancellation or no-show. (A room
/// that ends by itself, idle, records it through the same row update.) Returns whether it was
/// open.
pub async fn end(
    state: &AppState,
    tx: &mut TenantTx,
    consult: &str,
    reason: EndReason,
) -> sqlx::Result<bool> {
    let done = mark_ended(tx, consult, reason).await?;
    let hub = state.get_arc::<Hub>();
    let consult = consult.to_string();
    tx.on_commit(move || hub.end_live(&consult, reason));
    Ok(done)
}

async fn mark_ended(tx: &mut TenantTx, consult: &str, reason: EndReason) -> sqlx::Result<bool> {
    let (now, clinic) = (tx.now(), tx.clinic().clone());
    let done = sqlx::query(
        "UPDATE consults SET status = 'ended', ended_at = $1, end_reason = $2 \
         WHERE id = $3 AND clinic_id = $4 AND status = 'open'",
    )
    .bind(now)
    .bind(stored_reason(reason))
    .bind(consult)
    .bind(clinic.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub fn routes() -> Routes {
    Routes::new("consults")
        .add(
            Method::POST,
            "/api/v1/consults",
            Policy::perm(Permission::ConsultsRun),
            "Open a video consult (ad hoc)",
            create,
        )
        .body::<CreateConsult>()
        .add(
            Method::POST,
            "/api/v1/consults/{id}/links",
            Policy::perm(Permission::ConsultsRun),
            "Issue a participant's one-time join link",
            create_link,
        )
        .body::<CreateLink>()
        .add(
            Method::POST,
            "/api/v1/consults/{id}/end",
            Policy::perm(Permission::ConsultsRun),
            "End a consult for everyone",
            end_route,
        )
        .add(
            Method::POST,
            "/api/v1/consults/join",
            Policy::PUBLIC,
            "Exchange a join link's one-time code for a join token",
            join,
        )
        .body::<JoinCode>()
        .add(
            Method::GET,
            "/api/v1/consults/ws",
            Policy::PUBLIC,
            "Consult signaling WebSocket (authenticated by the join token in its first message)",
            ws,
        )
        .streaming()
        .responds(StatusCode::SWITCHING_PROTOCOLS, Content::Empty)
}

/// Loads a consult of the caller's tenant and proves the caller's reach to it (refusals
/// audited and committed by the reach); an ended consult is a conflict.
async fn reach_consult(tx: &mut TenantTx, caller: &Caller, id: &str) -> ApiResult<Reached> {
    let row: Option<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT location_id, patient_id, status FROM consults WHERE id = $1 AND clinic_id = $2",
    )
    .bind(id)
    .bind(caller.clinic_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let (location, patient, status) = row.ok_or_else(|| ApiError::not_found("consult"))?;
    let location = LocationId::from_trusted(location);
    let mut target = Target::object("consult", id).located(&location);
    if let Some(p) = &patient {
        target = target.of_patient(p);
    }
    let reached = tx.reach(caller, Permission::ConsultsRun, target).await?;
    if status != "open" {
        return Err(ApiError::conflict(
            ErrorCode::ConsultEnded,
            "this consult has ended",
        ));
    }
    Ok(reached)
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateConsult>,
) -> ApiResult<Json<ConsultOut>> {
    let now = state.clock.now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = tx
        .reach(
            &caller,
            Permission::ConsultsRun,
            Target::at("consult", &body.location_id),
        )
        .await?;
    if let Some(p) = &body.patient_id {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT location_id FROM patients WHERE id = $1 AND clinic_id = $2")
                .bind(p.as_str())
                .bind(caller.clinic_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let (loc,) = found.ok_or_else(|| {
            ApiError::unprocessable(ErrorCode::UnknownPatient, "that patient does not exist")
        })?;
        let loc = LocationId::from_trusted(loc);
        let patient = Target::object("patient", p.as_str())
            .located(&loc)
            .of_patient(p.as_str());
        tx.reach(&caller, Permission::PatientsRead, patient).await?;
    }
    sqlx::query("INSERT INTO consults (id, clinic_id, location_id, patient_id, created_by, status, created_at) VALUES ($1, $2, $3, $4, $5, 'open', $6)")
        .bind(&id)
        .bind(caller.clinic_id.as_str())
        .bind(body.location_id.as_str())
        .bind(body.patient_id.as_ref().map(|p| p.to_string()))
        .bind(caller.user_id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let mut event = reached.event(Action::Create).resource(&id);
    event.patient_id = body.patient_id.as_ref().map(|p| p.to_string());
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(ConsultOut {
        id,
        status: "open".into(),
    }))
}

async fn create_link(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ConsultPath>,
    ApiJson(body): ApiJson<CreateLink>,
) -> ApiResult<Json<LinkOut>> {
    let role: ConsultRole = serde_json::from_value(serde_json::Value::String(body.role.clone()))
        .map_err(|_| {
            ApiError::unprocessable(
                ErrorCode::InvalidRole,
                "role must be provider, covering_provider, patient, caregiver or interpreter",
            )
        })?;
    let display = body.display_name.trim();
    if display.is_empty() || display.chars().count() > 80 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            "display_name must be 1 to 80 characters",
        ));
    }
    let now = state.clock.now_ms();
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = reach_consult(&mut tx, &caller, p.id.as_str()).await?;
    let consult = p.id.to_string();
    // A scheduled consult's links work only in its appointment's join window.
    let window = appointment_window(&state, &mut tx, &consult).await?;
    let (not_before, expires) = match window {
        Some((opens, closes)) => (Some(opens), closes),
        None => (None, now + LINK_TTL_SECS * 1000),
    };
    if expires <= now {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::JoinClosed,
            "this appointment's join window has closed",
        ));
    }
    let link = issue_link(
        &state,
        &mut tx,
        &caller.clinic_id,
        &consult,
        role,
        display,
        caller.user_id.as_str(),
        not_before,
        expires,
    )
    .await?;
    let event = reached
        .event_for(Action::Share, "consult_link")
        .resource(&consult)
        .detail(format!("role={}", body.role));
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(link))
}

/// The join window of a consult that belongs to an appointment: from `join_early_secs` before
/// its start to `join_late_secs` after its end.
pub(crate) async fn appointment_window(
    state: &AppState,
    tx: &mut crate::platform::db::TenantTx,
    consult: &str,
) -> ApiResult<Option<(i64, i64)>> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT a.starts_at, a.ends_at FROM consults c JOIN appointments a ON a.id = c.appointment_id WHERE c.id = $1",
    )
    .bind(consult)
    .fetch_optional(&mut **tx)
    .await?;
    let cfg = &state.config.scheduling;
    Ok(row.map(|(s, e)| {
        (
            s - cfg.join_early_secs * 1000,
            e + cfg.join_late_secs * 1000,
        )
    }))
}

/// Stores a one-time join link for a participant and returns its page URL (the code rides in
/// the fragment). Valid from `not_before` (if any) until `expires`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn issue_link(
    state: &AppState,
    tx: &mut crate::platform::db::TenantTx,
    clinic: &ClinicId,
    consult: &str,
    role: ConsultRole,
    display: &str,
    created_by: &str,
    not_before: Option<i64>,
    expires: i64,
) -> ApiResult<LinkOut> {
    let now = state.clock.now_ms();
    let mut raw = [0u8; 24];
    state.keys.random(&mut raw);
    let code = format!("{}.{}", clinic, URL_SAFE_NO_PAD.encode(raw));
    let participant = uuid::Uuid::new_v4().to_string();
    let role_name = serde_json::to_value(role)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    sqlx::query(
        "INSERT INTO consult_links (id, clinic_id, consult_id, participant_id, role, display_name, code_hash, created_by, created_at, expires_at, not_before) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(clinic.as_str())
    .bind(consult)
    .bind(&participant)
    .bind(&role_name)
    .bind(display)
    .bind(sha256_hex(code.as_bytes()))
    .bind(created_by)
    .bind(now)
    .bind(expires)
    .bind(not_before)
    .execute(&mut **tx)
    .await?;
    let page = if role.is_host() {
        "/consult/provider"
    } else {
        "/consult/join"
    };
    Ok(LinkOut {
        participant_id: participant,
        url: format!("{page}#{code}"),
        expires_at: rfc3339(expires),
        not_before: not_before.map(rfc3339),
    })
}

#[derive(sqlx::FromRow)]
struct LinkRow {
    id: String,
    consult_id: String,
    participant_id: String,
    role: String,
    display_name: String,
    expires_at: i64,
    not_before: Option<i64>,
    used_at: Option<i64>,
    status: String,
}

async fn join(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(body): ApiJson<JoinCode>,
) -> ApiResult<Json<JoinToken>> {
    let invalid = || {
        ApiError::unauthorized(
            ErrorCode::InvalidLink,
            "this join link is not valid; ask the practice for a new one",
        )
    };
    let clinic = body
        .code
        .split_once('.')
        .and_then(|(c, _)| ClinicId::parse(c))
        .ok_or_else(invalid)?;
    let now = state.clock.now_ms();
    let mut tx = state.tx(&clinic).await?;
    let row: Option<LinkRow> = sqlx::query_as(
        "SELECT l.id, l.consult_id, l.participant_id, l.role, l.display_name, l.expires_at, l.not_before, l.used_at, c.status \
         FROM consult_links l JOIN consults c ON c.id = l.consult_id WHERE l.code_hash = $1 AND l.clinic_id = $2",
    )
    .bind(sha256_hex(body.code.as_bytes()))
    .bind(clinic.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(invalid)?;
    if row.used_at.is_some() {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::LinkUsed,
            "this join link was already used; ask the practice for a new one",
        ));
    }
    if let Some(opens) = row.not_before
        && now < opens
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::JoinNotOpen,
            format!(
                "this consult opens at {}; use the link again then",
                rfc3339(opens)
            ),
        )
        .with_extra(serde_json::json!({ "opens_at": rfc3339(opens) })));
    }
    if now > row.expires_at {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::LinkExpired,
            "this join link has expired; ask the practice for a new one",
        ));
    }
    if row.status != "open" {
        return Err(ApiError::new(
            StatusCode::GONE,
            ErrorCode::ConsultEnded,
            "this consult has ended",
        ));
    }
    sqlx::query("UPDATE consult_links SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
        .bind(now)
        .bind(&row.id)
        .execute(&mut *tx)
        .await?;
    let role: ConsultRole = serde_json::from_value(serde_json::Value::String(row.role.clone()))
        .map_err(|_| ApiError::internal())?;
    let claims = Claims {
        clinic: clinic.to_string(),
        consult: row.consult_id.clone(),
        participant: row.participant_id.clone(),
        role,
        display: row.display_name,
        iat: now / 1000,
        exp: now / 1000 + TOKEN_TTL_SECS,
    };
    let mut event = AuditEvent::new(clinic.clone(), Action::Access, "consult_link")
        .resource(&row.consult_id)
        .detail(format!("code exchanged role={}", row.role));
    event.actor_id = Some(row.participant_id);
    event.ip = client.ip;
    event.user_agent = client.user_agent;
    tx.audit(event).await?;
    tx.commit().await?;
    Ok(Json(JoinToken {
        token: Hub::of(&state).token_key.sign(&claims),
        consult_id: row.consult_id,
        role: row.role,
        ws_path: "/api/v1/consults/ws".into(),
    }))
}

async fn end_route(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ConsultPath>,
) -> ApiResult<Json<ConsultOut>> {
    let mut tx = state.tx(&caller.clinic_id).await?;
    let reached = reach_consult(&mut tx, &caller, p.id.as_str()).await?;
    let consult = p.id.to_string();
    end(&state, &mut tx, &consult, EndReason::EndedByProvider).await?;
    tx.audit(reached.event(Action::Modify).detail("end"))
        .await?;
    // Committing tells the live room; its participants get `ended` and are disconnected.
    tx.commit().await?;
    Ok(Json(ConsultOut {
        id: consult,
        status: "ended".into(),
    }))
}
