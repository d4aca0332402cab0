//! Video consults: the REST routes (create, issue one-time join links, exchange a link's code for
//! a join token, end) and the WebSocket shell around `signaling::room::Room`.
//!
//! Each live consult has one room task that owns its `Room` and every connection's outbound
//! queue, so a consult's signaling never needs a lock. Connections authenticate with a join token
//! in their first message (or a resume token after a drop); the token is verified with the key
//! ring's consult-token key, without a database call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
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
use crate::platform::error::{ApiError, ApiResult};
use crate::platform::http::{ApiJson, ApiPath, ClientInfo};
use crate::platform::ids::{ClinicId, LocationId, PatientId};
use crate::platform::keys::{Purpose, sha256_hex};
use crate::platform::openapi::Content;
use crate::platform::state::AppState;

/// How long a join link's code may wait to be exchanged.
const LINK_TTL_SECS: i64 = 24 * 3600;
/// How long a join token lives once issued (it is used at once by the page).
const TOKEN_TTL_SECS: i64 = 10 * 60;
/// A connection must join (or resume) within this time.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// Frames above this close the connection at the WebSocket layer; below it and above the
/// protocol's limit they get a `too_large` error and the connection goes on.
const MAX_WS_MESSAGE: usize = 1 << 20;

/// Live consults on this node.
pub struct Hub {
    rooms: Mutex<HashMap<String, mpsc::UnboundedSender<RoomCmd>>>,
    next_conn: AtomicU64,
    pub token_key: TokenKey,
    pub room_config: RoomConfig,
    /// Media workers; a consult always uses the same one (sharded by consult id).
    sfu: Vec<sfu::SfuHandle>,
}

enum RoomCmd {
    Attach {
        conn: ConnId,
        tx: mpsc::UnboundedSender<Outbound>,
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
        let (notice_tx, mut notice_rx) = mpsc::unbounded_channel();
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
                if let Some(room) = hub.room(&consult) {
                    let _ = room.send(cmd);
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

    fn room(&self, consult: &str) -> Option<mpsc::UnboundedSender<RoomCmd>> {
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
) -> ApiResult<mpsc::UnboundedSender<RoomCmd>> {
    if let Some(tx) = Hub::of(state).room(consult) {
        return Ok(tx);
    }
    let mut tx = state.db.tenant_tx(clinic).await?;
    let row: Option<ConsultRow> =
        sqlx::query_as("SELECT patient_id, status FROM consults WHERE id = $1 AND clinic_id = $2")
            .bind(consult)
            .bind(clinic.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    let row = row
        .filter(|r| r.status == "open")
        .ok_or_else(|| ApiError::conflict("consult_unavailable", "this consult has ended"))?;
    let mut rooms = Hub::of(state).rooms.lock().expect("hub lock");
    if let Some(tx) = rooms.get(consult).filter(|tx| !tx.is_closed()) {
        return Ok(tx.clone());
    }
    let (tx, rx) = mpsc::unbounded_channel();
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
    mut rx: mpsc::UnboundedReceiver<RoomCmd>,
) {
    let mut conns: HashMap<ConnId, mpsc::UnboundedSender<Outbound>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let input = tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(RoomCmd::Attach { conn, tx }) => { conns.insert(conn, tx); continue; }
                Some(RoomCmd::Input(input)) => input,
                Some(RoomCmd::Deliver { participant, msg }) => {
                    if let Some(tx) = room.conn_of(&participant).and_then(|c| conns.get(&c)) {
                        let _ = tx.send(Outbound::Msg(msg));
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
                        if let Some(tx) = conns.get(&conn) {
                            let _ = tx.send(Outbound::Msg(ServerMsg::Stats { participants: vec![entry.clone()] }));
                        }
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
    conns: &mut HashMap<ConnId, mpsc::UnboundedSender<Outbound>>,
    out: Output,
) {
    for (conn, msg) in out.send {
        if let Some(tx) = conns.get(&conn) {
            let _ = tx.send(Outbound::Msg(msg));
        }
    }
    for conn in out.close {
        if let Some(tx) = conns.remove(&conn) {
            let _ = tx.send(Outbound::Close);
        }
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
                        code: "invalid_sdp".into(),
                        message: e.to_string(),
                        fatal: false,
                    },
                };
                if let Some(tx) = room.conn_of(&participant).and_then(|c| conns.get(&c)) {
                    let _ = tx.send(Outbound::Msg(reply));
                }
            }
            Effect::MediaAnswer { participant, sdp } => {
                if let Err(e) = Hub::of(state)
                    .sfu_for(consult)
                    .answer(&participant, sdp)
                    .await
                    && let Some(tx) = room.conn_of(&participant).and_then(|c| conns.get(&c))
                {
                    let _ = tx.send(Outbound::Msg(ServerMsg::Error {
                        code: "invalid_sdp".into(),
                        message: e.to_string(),
                        fatal: false,
                    }));
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
                let now = state.clock.now_ms();
                let result = async {
                    let mut tx = state.db.tenant_tx(clinic).await?;
                    sqlx::query("UPDATE consults SET status = 'ended', ended_at = $1, end_reason = $2 WHERE id = $3 AND status = 'open'")
                        .bind(now)
                        .bind(format!("{reason:?}"))
                        .bind(consult)
                        .execute(&mut *tx)
                        .await?;
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
    upgrade: WebSocketUpgrade,
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
                let _ = socket.send(text(&ServerMsg::Pong { id })).await;
            }
            Ok(_) => {
                let _ = socket
                    .send(text(
                        &ProtocolError::new("not_joined", "send join (or resume) first")
                            .to_msg(false),
                    ))
                    .await;
            }
            Err(e) => {
                let _ = socket.send(text(&e.to_msg(false))).await;
            }
        }
    }
}

async fn refuse(mut socket: WebSocket, code: &str, message: &str) {
    let _ = socket
        .send(text(&ServerMsg::Error {
            code: code.into(),
            message: message.into(),
            fatal: true,
        }))
        .await;
    let _ = socket.close().await;
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
                Err(e) => return refuse(socket, e.code, &e.detail).await,
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
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    if room.send(RoomCmd::Attach { conn, tx: out_tx }).is_err()
        || room.send(RoomCmd::Input(input)).is_err()
    {
        return refuse(socket, "consult_unavailable", "this consult has ended").await;
    }
    let mut limiter = RateLimiter::new(40, 20, Instant::now());
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(Outbound::Msg(m)) => { if sink.send(text(&m)).await.is_err() { break; } }
                Some(Outbound::Close) => { let _ = sink.close().await; break; }
                None => {
                    // The room ended before it handled this connection's input.
                    let _ = sink.send(text(&ServerMsg::Error { code: "consult_unavailable".into(), message: "this consult has ended".into(), fatal: true })).await;
                    let _ = sink.close().await;
                    break;
                }
            },
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break };
                let parsed = match frame {
                    Message::Text(t) => {
                        if !limiter.allow(Instant::now()) {
                            if limiter.strikes > 200 {
                                let _ = sink.send(text(&ServerMsg::Error { code: "rate_limited".into(), message: "too many messages; disconnected".into(), fatal: true })).await;
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
                    Ok(msg) => { if room.send(RoomCmd::Input(Input::Msg { conn, msg })).is_err() { break; } }
                    Err(e) => { if sink.send(text(&e.to_msg(false))).await.is_err() { break; } }
                }
            }
        }
    }
    let _ = room.send(RoomCmd::Input(Input::Closed { conn }));
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
            end,
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
        .responds(StatusCode::SWITCHING_PROTOCOLS, Content::Empty)
}

/// Loads an open consult of the caller's tenant and checks the caller's location scope.
async fn reach_consult(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<(String, Option<String>)> {
    let mut tx = state.db.tenant_tx(&caller.clinic_id).await?;
    let row: Option<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT location_id, patient_id, status FROM consults WHERE id = $1 AND clinic_id = $2",
    )
    .bind(id)
    .bind(caller.clinic_id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let (location, patient, status) = row.ok_or_else(|| ApiError::not_found("consult"))?;
    caller.check_location(Permission::ConsultsRun, &LocationId::from_trusted(location))?;
    if status != "open" {
        return Err(ApiError::conflict(
            "consult_ended",
            "this consult has ended",
        ));
    }
    Ok((id.to_string(), patient))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateConsult>,
) -> ApiResult<Json<ConsultOut>> {
    let basis = caller.check_location(Permission::ConsultsRun, &body.location_id)?;
    let now = state.clock.now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let mut tx = state.db.tenant_tx(&caller.clinic_id).await?;
    if let Some(p) = &body.patient_id {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT location_id FROM patients WHERE id = $1 AND clinic_id = $2")
                .bind(p.as_str())
                .bind(caller.clinic_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let (loc,) = found.ok_or_else(|| {
            ApiError::unprocessable("unknown_patient", "that patient does not exist")
        })?;
        caller.check_location(Permission::PatientsRead, &LocationId::from_trusted(loc))?;
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
    let mut event = caller
        .event_on(Action::Create, "consult", &basis)
        .resource(&id);
    event.patient_id = body.patient_id.as_ref().map(|p| p.to_string());
    audit::record(&mut tx, state.db.backend, now, event).await?;
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
                "invalid_role",
                "role must be provider, covering_provider, patient, caregiver or interpreter",
            )
        })?;
    let display = body.display_name.trim();
    if display.is_empty() || display.chars().count() > 80 {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "display_name must be 1 to 80 characters",
        ));
    }
    let (consult, patient) = reach_consult(&state, &caller, p.id.as_str()).await?;
    let now = state.clock.now_ms();
    let mut tx = state.db.tenant_tx(&caller.clinic_id).await?;
    // A scheduled consult's links work only in its appointment's join window.
    let window = appointment_window(&state, &mut tx, &consult).await?;
    let (not_before, expires) = match window {
        Some((opens, closes)) => (Some(opens), closes),
        None => (None, now + LINK_TTL_SECS * 1000),
    };
    if expires <= now {
        return Err(ApiError::new(
            StatusCode::GONE,
            "join_closed",
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
    let mut event = caller
        .event(Action::Share, "consult_link")
        .resource(&consult)
        .detail(format!("role={}", body.role));
    event.patient_id = patient;
    audit::record(&mut tx, state.db.backend, now, event).await?;
    tx.commit().await?;
    Ok(Json(link))
}

/// The join window of a consult that belongs to an appointment: from `join_early_secs` before
/// its start to `join_late_secs` after its end.
pub(crate) async fn appointment_window(
    state: &AppState,
    tx: &mut crate::platform::db::Tx,
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
    tx: &mut crate::platform::db::Tx,
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
            "invalid_link",
            "this join link is not valid; ask the practice for a new one",
        )
    };
    let clinic = body
        .code
        .split_once('.')
        .and_then(|(c, _)| ClinicId::parse(c))
        .ok_or_else(invalid)?;
    let now = state.clock.now_ms();
    let mut tx = state.db.tenant_tx(&clinic).await?;
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
            "link_used",
            "this join link was already used; ask the practice for a new one",
        ));
    }
    if let Some(opens) = row.not_before
        && now < opens
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "join_not_open",
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
            "link_expired",
            "this join link has expired; ask the practice for a new one",
        ));
    }
    if row.status != "open" {
        return Err(ApiError::new(
            StatusCode::GONE,
            "consult_ended",
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
    audit::record(&mut tx, state.db.backend, now, event).await?;
    tx.commit().await?;
    Ok(Json(JoinToken {
        token: Hub::of(&state).token_key.sign(&claims),
        consult_id: row.consult_id,
        role: row.role,
        ws_path: "/api/v1/consults/ws".into(),
    }))
}

async fn end(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(p): ApiPath<ConsultPath>,
) -> ApiResult<Json<ConsultOut>> {
    let (consult, patient) = reach_consult(&state, &caller, p.id.as_str()).await?;
    let now = state.clock.now_ms();
    let mut tx = state.db.tenant_tx(&caller.clinic_id).await?;
    sqlx::query("UPDATE consults SET status = 'ended', ended_at = $1, end_reason = 'EndedByProvider' WHERE id = $2 AND status = 'open'")
        .bind(now)
        .bind(&consult)
        .execute(&mut *tx)
        .await?;
    let mut event = caller
        .event(Action::Modify, "consult")
        .resource(&consult)
        .detail("end");
    event.patient_id = patient;
    audit::record(&mut tx, state.db.backend, now, event).await?;
    tx.commit().await?;
    // A live room is told too; its participants get `ended` and are disconnected.
    if let Some(room) = Hub::of(&state).room(&consult) {
        let _ = room.send(RoomCmd::Input(Input::EndNow));
    }
    Ok(Json(ConsultOut {
        id: consult,
        status: "ended".into(),
    }))
}
