//! The live consults of this node: one room task per consult owns its `Room` and every
//! connection's bounded outbound queue; media workers' notices are routed to their rooms.

use super::*;

/// Live consults on this node.
pub struct Hub {
    rooms: Mutex<HashMap<String, mpsc::Sender<RoomCmd>>>,
    pub(super) next_conn: AtomicU64,
    /// Set when the server shuts down: no new rooms.
    going_away: AtomicBool,
    pub token_key: TokenKey,
    pub room_config: RoomConfig,
    /// Media workers; a consult always uses the same one (sharded by consult id).
    sfu: Vec<sfu::SfuHandle>,
}

pub(super) enum RoomCmd {
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
pub(super) struct ConnQueue {
    pub(super) tx: mpsc::Sender<Outbound>,
    /// Told when the queue is full: the connection closes as a slow consumer.
    pub(super) slow: Arc<tokio::sync::Notify>,
}

/// How a message that finds a connection's queue full is treated.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Full {
    /// Dropped (stats: the next ones supersede it).
    Drop,
    /// The connection is closed as a slow consumer.
    Close,
}

/// Queues `out` for `conn` without waiting. A connection that cannot take it is removed from
/// `conns` (unless the message may be dropped) and told to close; its input loop then reports
/// it closed to the room, as for any dropped connection.
pub(super) fn push(
    conns: &mut HashMap<ConnId, ConnQueue>,
    conn: ConnId,
    out: Outbound,
    full: Full,
) {
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

pub(super) enum Outbound {
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
    pub(super) fn end_live(&self, consult: &str, reason: EndReason) {
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

    pub(super) fn room(&self, consult: &str) -> Option<mpsc::Sender<RoomCmd>> {
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
pub(super) struct ConsultRow {
    pub(super) patient_id: Option<String>,
    pub(super) status: String,
}

/// The room for a consult: the live one, or a new one if the consult is still open.
pub(super) async fn room_for(
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
pub(super) async fn room_task(
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
            &mut room,
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

pub(super) async fn apply(
    state: &AppState,
    clinic: &ClinicId,
    consult: &str,
    patient: Option<&str>,
    room: &mut Room,
    conns: &mut HashMap<ConnId, ConnQueue>,
    out: Output,
) {
    let mut pending = vec![out];
    while let Some(out) = pending.pop() {
        // The audit events first, before anyone hears of the step: a join, an admission or a
        // reconnect that cannot be recorded does not happen. Its messages are not sent, and the
        // room undoes it (the participant is told and closed).
        let mut effects = Vec::with_capacity(out.effects.len());
        let mut unaudited = Vec::new();
        for effect in out.effects {
            let Effect::Audit {
                action,
                participant,
                role,
                by,
                detail,
            } = effect
            else {
                effects.push(effect);
                continue;
            };
            let refusable = matches!(
                action,
                AuditAction::Join | AuditAction::Admit | AuditAction::Reconnect
            );
            let conn = participant.as_deref().and_then(|p| room.conn_of(p));
            let e = consult_event(
                clinic,
                consult,
                patient,
                action,
                participant,
                role,
                by,
                &detail,
            );
            if let Err(err) = audit::record_now(state, e).await {
                tracing::error!(error = %err, "could not audit a consult event");
                metrics::counter!("consult_audit_failures_total").increment(1);
                if refusable && let Some(conn) = conn {
                    unaudited.push(conn);
                }
            }
        }
        if !unaudited.is_empty() {
            for conn in out.close {
                push(conns, conn, Outbound::Close, Full::Close);
                conns.remove(&conn);
            }
            for conn in unaudited {
                pending.push(room.handle(Instant::now(), Input::Unaudited { conn }));
            }
            // Media of the undone step is not started; drops and the end still happen.
            for effect in effects {
                if matches!(effect, Effect::MediaDrop { .. } | Effect::Ended { .. }) {
                    carry_out(state, clinic, consult, room, conns, effect).await;
                }
            }
            continue;
        }
        for (conn, msg) in out.send {
            push(conns, conn, Outbound::Msg(msg), Full::Close);
        }
        for conn in out.close {
            push(conns, conn, Outbound::Close, Full::Close);
            conns.remove(&conn);
        }
        for effect in effects {
            carry_out(state, clinic, consult, room, conns, effect).await;
        }
    }
}

/// A consult room's audit event (ids and roles only; the detail names the step).
#[allow(clippy::too_many_arguments)]
fn consult_event(
    clinic: &ClinicId,
    consult: &str,
    patient: Option<&str>,
    action: AuditAction,
    participant: Option<String>,
    role: Option<signaling::token::ConsultRole>,
    by: Option<String>,
    detail: &str,
) -> AuditEvent {
    let action_name = match action {
        AuditAction::Join => "join",
        AuditAction::Admit => "admit",
        AuditAction::Remove => "remove",
        AuditAction::Leave => "leave",
        AuditAction::Reconnect => "reconnect",
        AuditAction::End => "end",
    };
    let mut e = AuditEvent::new(clinic.clone(), Action::Access, "consult").resource(consult);
    e.actor_id = by.or(participant.clone());
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
    e
}

/// Carries out one of the room's effects other than an audit event.
async fn carry_out(
    state: &AppState,
    clinic: &ClinicId,
    consult: &str,
    room: &Room,
    conns: &mut HashMap<ConnId, ConnQueue>,
    effect: Effect,
) {
    match effect {
        Effect::Audit { .. } => unreachable!("audit events are recorded before effects"),
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
