//! One consult's signaling state, sans-IO: feed it [`Input`]s with the current `Instant`; it
//! answers with an [`Output`]: messages to send, connections to close, and [`Effect`]s for the
//! shell to carry out (audit events, media-session commands for the SFU, the end of the consult).
//!
//! Rules: hosts (providers) enter directly; everyone else waits until a host admits them. At most
//! `max_participants` are present (waiting or admitted). A participant who leaves or is removed
//! has spent their token. A dropped connection of an admitted participant is `reconnecting` for
//! `grace`, and a `resume` with the resume token within it brings them back without re-admission.
//! With nobody connected for `idle_timeout`, the consult ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::protocol::{
    ClientMsg, Device, EndReason, LayerPreference, ParticipantInfo, PresenceState, ServerMsg,
    VERSION,
};
use crate::token::{Claims, ConsultRole};

/// A connection, as the shell numbers them.
pub type ConnId = u64;

#[derive(Clone, Debug)]
pub struct RoomConfig {
    pub max_participants: usize,
    pub grace: Duration,
    pub idle_timeout: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            max_participants: 4,
            grace: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// A verified join: the token's claims, the device, and a fresh random resume token (randomness
/// is an input).
#[derive(Clone, Debug)]
pub struct Joiner {
    pub claims: Claims,
    pub device: Device,
    pub resume_token: String,
}

#[derive(Clone, Debug)]
pub enum Input {
    Join {
        conn: ConnId,
        joiner: Joiner,
    },
    Resume {
        conn: ConnId,
        resume_token: String,
    },
    Msg {
        conn: ConnId,
        msg: ClientMsg,
    },
    /// The connection closed (network loss, tab closed, server-side close).
    Closed {
        conn: ConnId,
    },
    /// Time passed: expire grace periods, end an idle consult.
    Tick,
    /// The consult was ended from outside the room: a host through the REST API
    /// (`EndedByProvider`) or its appointment was cancelled (`Cancelled`).
    EndNow {
        reason: EndReason,
    },
    /// The shell could not record the audit event of this connection's join, admission or
    /// reconnect: the step is undone. The participant is told (`audit_unavailable`, fatal),
    /// closed and taken out of the room without a trace in anyone's roster; their token is not
    /// spent, so they can try again once the audit log takes writes.
    Unaudited {
        conn: ConnId,
    },
}

/// What the room asks the shell to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    Join,
    Admit,
    Remove,
    Leave,
    Reconnect,
    End,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Audit {
        action: AuditAction,
        participant: Option<String>,
        role: Option<ConsultRole>,
        by: Option<String>,
        detail: String,
    },
    /// Hand a participant's offer to the SFU; its answer goes back to `participant`.
    MediaOffer {
        participant: String,
        sdp: String,
    },
    MediaAnswer {
        participant: String,
        sdp: String,
    },
    MediaIce {
        participant: String,
        candidate: String,
    },
    MediaLayer {
        participant: String,
        preference: LayerPreference,
    },
    /// Tear down the participant's media session.
    MediaDrop {
        participant: String,
    },
    /// Stats from a participant's page, for hosts' pages and metrics.
    ClientStats {
        participant: String,
        report: BTreeMap<String, f64>,
    },
    /// The consult is over (mark it ended).
    Ended {
        reason: EndReason,
    },
}

#[derive(Debug, Default)]
pub struct Output {
    pub send: Vec<(ConnId, ServerMsg)>,
    pub close: Vec<ConnId>,
    pub effects: Vec<Effect>,
}

#[derive(Clone, Debug)]
struct Participant {
    role: ConsultRole,
    display: String,
    admitted: bool,
    conn: Option<ConnId>,
    resume_token: String,
    lost_at: Option<Instant>,
    audio: bool,
    video: bool,
}

pub struct Room {
    consult: String,
    cfg: RoomConfig,
    participants: BTreeMap<String, Participant>,
    conns: HashMap<ConnId, String>,
    spent: HashSet<String>,
    empty_since: Option<Instant>,
    ended: Option<EndReason>,
}

fn error(code: &str, message: &str, fatal: bool) -> ServerMsg {
    ServerMsg::Error {
        code: code.into(),
        message: message.into(),
        fatal,
    }
}

impl Room {
    pub fn new(consult: impl Into<String>, cfg: RoomConfig, now: Instant) -> Self {
        Self {
            consult: consult.into(),
            cfg,
            participants: BTreeMap::new(),
            conns: HashMap::new(),
            spent: HashSet::new(),
            empty_since: Some(now),
            ended: None,
        }
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// The participant a connection speaks for.
    pub fn participant_of(&self, conn: ConnId) -> Option<&str> {
        self.conns.get(&conn).map(String::as_str)
    }

    /// The connection of a participant, if connected.
    pub fn conn_of(&self, participant: &str) -> Option<ConnId> {
        self.participants.get(participant).and_then(|p| p.conn)
    }

    /// Connections of admitted, connected hosts (they see stats and the waiting room).
    pub fn host_conns(&self) -> Vec<ConnId> {
        self.participants
            .values()
            .filter(|p| p.admitted && p.role.is_host())
            .filter_map(|p| p.conn)
            .collect()
    }

    /// Admitted participants' ids (the SFU forwards media among these).
    pub fn admitted(&self) -> Vec<String> {
        self.participants
            .iter()
            .filter(|(_, p)| p.admitted)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Output {
        let mut out = Output::default();
        if self.ended.is_some() {
            if let Input::Join { conn, .. } | Input::Resume { conn, .. } | Input::Msg { conn, .. } =
                input
            {
                out.send
                    .push((conn, error("consult_ended", "this consult has ended", true)));
                out.close.push(conn);
            }
            return out;
        }
        match input {
            Input::Join { conn, joiner } => self.join(now, conn, joiner, &mut out),
            Input::Resume { conn, resume_token } => self.resume(conn, &resume_token, &mut out),
            Input::Msg { conn, msg } => self.message(now, conn, msg, &mut out),
            Input::Closed { conn } => self.closed(now, conn, &mut out),
            Input::Tick => self.tick(now, &mut out),
            Input::EndNow { reason } => self.end(reason, None, &mut out),
            Input::Unaudited { conn } => self.unaudited(conn, &mut out),
        }
        self.update_empty(now);
        out
    }

    fn update_empty(&mut self, now: Instant) {
        let anyone = self.participants.values().any(|p| p.conn.is_some());
        match (anyone, self.empty_since) {
            (true, _) => self.empty_since = None,
            (false, None) => self.empty_since = Some(now),
            (false, Some(_)) => {}
        }
    }

    fn join(&mut self, now: Instant, conn: ConnId, j: Joiner, out: &mut Output) {
        let _ = now;
        let pid = j.claims.participant.clone();
        if j.claims.consult != self.consult {
            out.send.push((
                conn,
                error("wrong_consult", "this token is for another consult", true),
            ));
            out.close.push(conn);
            return;
        }
        if self.spent.contains(&pid) {
            out.send.push((
                conn,
                error(
                    "token_spent",
                    "you left this consult; ask for a new link to rejoin",
                    true,
                ),
            ));
            out.close.push(conn);
            return;
        }
        let present = self.participants.contains_key(&pid);
        if !present && self.participants.len() >= self.cfg.max_participants {
            out.send.push((
                conn,
                error(
                    "consult_full",
                    "this consult has the most participants it allows",
                    true,
                ),
            ));
            out.close.push(conn);
            return;
        }
        let device = serde_json::to_string(&j.device).unwrap_or_default();
        let p = self
            .participants
            .entry(pid.clone())
            .or_insert_with(|| Participant {
                role: j.claims.role,
                display: j.claims.display.clone(),
                admitted: j.claims.role.is_host(),
                conn: None,
                resume_token: j.resume_token.clone(),
                lost_at: None,
                audio: true,
                video: true,
            });
        // Joining again with the same token (a reload, a second tab) takes the seat over.
        if let Some(old) = p.conn.replace(conn) {
            self.conns.remove(&old);
            out.send.push((
                old,
                error("replaced", "you joined from another connection", true),
            ));
            out.close.push(old);
        }
        p.lost_at = None;
        p.resume_token = j.resume_token;
        let welcome = ServerMsg::Welcome {
            v: VERSION,
            participant: pid.clone(),
            role: p.role,
            admitted: p.admitted,
            resume_token: p.resume_token.clone(),
            grace_secs: self.cfg.grace.as_secs(),
        };
        let (admitted, role) = (p.admitted, p.role);
        self.conns.insert(conn, pid.clone());
        out.send.push((conn, welcome));
        out.effects.push(Effect::Audit {
            action: AuditAction::Join,
            participant: Some(pid),
            role: Some(role),
            by: None,
            detail: device,
        });
        if admitted {
            self.broadcast_roster(out);
        }
        self.send_waiting_room(out);
    }

    fn resume(&mut self, conn: ConnId, token: &str, out: &mut Output) {
        let found = self
            .participants
            .iter()
            .find(|(_, p)| !token.is_empty() && same_secret(&p.resume_token, token))
            .map(|(id, _)| id.clone());
        let Some(pid) = found else {
            out.send.push((
                conn,
                error(
                    "resume_invalid",
                    "that resume token is not valid here; join again with your link",
                    true,
                ),
            ));
            out.close.push(conn);
            return;
        };
        let p = self.participants.get_mut(&pid).expect("found above");
        if let Some(old) = p.conn.replace(conn) {
            self.conns.remove(&old);
            out.close.push(old);
        }
        p.lost_at = None;
        let msg = ServerMsg::Welcome {
            v: VERSION,
            participant: pid.clone(),
            role: p.role,
            admitted: p.admitted,
            resume_token: p.resume_token.clone(),
            grace_secs: self.cfg.grace.as_secs(),
        };
        let (admitted, role) = (p.admitted, p.role);
        self.conns.insert(conn, pid.clone());
        out.send.push((conn, msg));
        out.effects.push(Effect::Audit {
            action: AuditAction::Reconnect,
            participant: Some(pid),
            role: Some(role),
            by: None,
            detail: String::new(),
        });
        if admitted {
            self.broadcast_roster(out);
        }
        self.send_waiting_room(out);
    }

    fn message(&mut self, now: Instant, conn: ConnId, msg: ClientMsg, out: &mut Output) {
        let Some(pid) = self.conns.get(&conn).cloned() else {
            out.send.push((
                conn,
                error("not_joined", "send join (or resume) first", false),
            ));
            return;
        };
        let p = self
            .participants
            .get(&pid)
            .expect("connected participants exist")
            .clone();
        let host = p.role.is_host();
        let need_admitted = |out: &mut Output| {
            if !p.admitted {
                out.send.push((
                    conn,
                    error("not_admitted", "wait until the provider lets you in", false),
                ));
            }
            p.admitted
        };
        match msg {
            ClientMsg::Join { .. } | ClientMsg::Resume { .. } => {
                out.send.push((
                    conn,
                    error(
                        "already_joined",
                        "this connection has already joined",
                        false,
                    ),
                ));
            }
            ClientMsg::Offer { sdp } if need_admitted(out) => {
                out.effects.push(Effect::MediaOffer {
                    participant: pid,
                    sdp,
                })
            }
            ClientMsg::Answer { sdp } if need_admitted(out) => {
                out.effects.push(Effect::MediaAnswer {
                    participant: pid,
                    sdp,
                })
            }
            ClientMsg::Ice { candidate } if need_admitted(out) => {
                out.effects.push(Effect::MediaIce {
                    participant: pid,
                    candidate,
                })
            }
            ClientMsg::LayerPreference { preference } if need_admitted(out) => {
                out.effects.push(Effect::MediaLayer {
                    participant: pid,
                    preference,
                })
            }
            ClientMsg::Offer { .. }
            | ClientMsg::Answer { .. }
            | ClientMsg::Ice { .. }
            | ClientMsg::LayerPreference { .. } => {}
            ClientMsg::Admit { participant } => {
                if !host {
                    out.send.push((
                        conn,
                        error("forbidden", "only the provider can admit", false),
                    ));
                } else if let Some(target) = self
                    .participants
                    .get_mut(&participant)
                    .filter(|t| !t.admitted)
                {
                    target.admitted = true;
                    let (tconn, role) = (target.conn, target.role);
                    if let Some(c) = tconn {
                        out.send.push((c, ServerMsg::Admitted));
                    }
                    out.effects.push(Effect::Audit {
                        action: AuditAction::Admit,
                        participant: Some(participant),
                        role: Some(role),
                        by: Some(pid),
                        detail: String::new(),
                    });
                    self.broadcast_roster(out);
                    self.send_waiting_room(out);
                } else {
                    out.send.push((
                        conn,
                        error("unknown_participant", "nobody by that id is waiting", false),
                    ));
                }
            }
            ClientMsg::Remove { participant } => {
                if !host {
                    out.send.push((
                        conn,
                        error("forbidden", "only the provider can remove", false),
                    ));
                } else if participant == pid || !self.participants.contains_key(&participant) {
                    out.send.push((
                        conn,
                        error(
                            "unknown_participant",
                            "nobody else by that id is here",
                            false,
                        ),
                    ));
                } else {
                    self.depart(
                        &participant,
                        EndReason::Removed,
                        AuditAction::Remove,
                        Some(pid),
                        out,
                    );
                }
            }
            ClientMsg::Leave {} => {
                self.depart(&pid, EndReason::Left, AuditAction::Leave, None, out)
            }
            ClientMsg::End {} => {
                if host {
                    self.end(EndReason::EndedByProvider, Some(pid), out);
                } else {
                    out.send.push((
                        conn,
                        error("forbidden", "only the provider can end the consult", false),
                    ));
                }
            }
            ClientMsg::MediaState { audio, video } => {
                if let Some(p) = self.participants.get_mut(&pid) {
                    p.audio = audio;
                    p.video = video;
                }
                if p.admitted {
                    self.broadcast_roster(out);
                }
            }
            ClientMsg::Stats { report } => out.effects.push(Effect::ClientStats {
                participant: pid,
                report,
            }),
            ClientMsg::Ping { id } => out.send.push((conn, ServerMsg::Pong { id })),
        }
        let _ = now;
    }

    /// A participant leaves for good (left, removed, grace expired): token spent, media dropped.
    fn depart(
        &mut self,
        pid: &str,
        reason: EndReason,
        action: AuditAction,
        by: Option<String>,
        out: &mut Output,
    ) {
        let Some(p) = self.participants.remove(pid) else {
            return;
        };
        self.spent.insert(pid.to_string());
        if let Some(c) = p.conn {
            self.conns.remove(&c);
            out.send.push((c, ServerMsg::Ended { reason }));
            out.close.push(c);
        }
        if p.admitted {
            out.effects.push(Effect::MediaDrop {
                participant: pid.to_string(),
            });
        }
        let detail = match reason {
            EndReason::Idle => "reconnect grace expired",
            _ => "",
        };
        out.effects.push(Effect::Audit {
            action,
            participant: Some(pid.to_string()),
            role: Some(p.role),
            by,
            detail: detail.into(),
        });
        self.broadcast_roster(out);
        self.send_waiting_room(out);
    }

    fn unaudited(&mut self, conn: ConnId, out: &mut Output) {
        let Some(pid) = self.conns.remove(&conn) else {
            return;
        };
        out.send.push((
            conn,
            error(
                "audit_unavailable",
                "the visit could not be recorded, so it cannot go on; try again in a moment",
                true,
            ),
        ));
        out.close.push(conn);
        if self
            .participants
            .get(&pid)
            .is_none_or(|p| p.conn != Some(conn))
        {
            return;
        }
        let p = self.participants.remove(&pid).expect("present");
        if p.admitted {
            out.effects.push(Effect::MediaDrop { participant: pid });
        }
        self.broadcast_roster(out);
        self.send_waiting_room(out);
    }

    fn closed(&mut self, now: Instant, conn: ConnId, out: &mut Output) {
        let Some(pid) = self.conns.remove(&conn) else {
            return;
        };
        let Some(p) = self.participants.get_mut(&pid) else {
            return;
        };
        if p.conn != Some(conn) {
            return;
        }
        p.conn = None;
        if p.admitted {
            p.lost_at = Some(now);
            self.broadcast_roster(out);
        } else {
            // A waiting participant who drops simply stops waiting; the token still works.
            self.participants.remove(&pid);
            self.send_waiting_room(out);
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Output) {
        let expired: Vec<String> = self
            .participants
            .iter()
            .filter(|(_, p)| {
                p.lost_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.grace)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for pid in expired {
            self.depart(&pid, EndReason::Idle, AuditAction::Leave, None, out);
        }
        self.update_empty(now);
        if self
            .empty_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.idle_timeout)
        {
            self.end(EndReason::Idle, None, out);
        }
    }

    fn end(&mut self, reason: EndReason, by: Option<String>, out: &mut Output) {
        for (pid, p) in std::mem::take(&mut self.participants) {
            if let Some(c) = p.conn {
                out.send.push((c, ServerMsg::Ended { reason }));
                out.close.push(c);
            }
            if p.admitted {
                out.effects.push(Effect::MediaDrop { participant: pid });
            }
        }
        self.conns.clear();
        self.ended = Some(reason);
        out.effects.push(Effect::Audit {
            action: AuditAction::End,
            participant: None,
            role: None,
            by,
            detail: format!("{reason:?}"),
        });
        out.effects.push(Effect::Ended { reason });
    }

    fn info(id: &str, p: &Participant) -> ParticipantInfo {
        let state = match (p.admitted, p.conn) {
            (false, _) => PresenceState::Waiting,
            (true, Some(_)) => PresenceState::Connected,
            (true, None) => PresenceState::Reconnecting,
        };
        ParticipantInfo {
            id: id.into(),
            role: p.role,
            display: p.display.clone(),
            state,
            audio: p.audio,
            video: p.video,
        }
    }

    fn broadcast_roster(&self, out: &mut Output) {
        let roster: Vec<ParticipantInfo> = self
            .participants
            .iter()
            .filter(|(_, p)| p.admitted)
            .map(|(id, p)| Self::info(id, p))
            .collect();
        for p in self.participants.values().filter(|p| p.admitted) {
            if let Some(c) = p.conn {
                out.send.push((
                    c,
                    ServerMsg::Roster {
                        participants: roster.clone(),
                    },
                ));
            }
        }
    }

    fn send_waiting_room(&self, out: &mut Output) {
        let waiting: Vec<ParticipantInfo> = self
            .participants
            .iter()
            .filter(|(_, p)| !p.admitted)
            .map(|(id, p)| Self::info(id, p))
            .collect();
        for p in self
            .participants
            .values()
            .filter(|p| p.admitted && p.role.is_host())
        {
            if let Some(c) = p.conn {
                out.send.push((
                    c,
                    ServerMsg::WaitingRoom {
                        waiting: waiting.clone(),
                    },
                ));
            }
        }
    }
}

/// Compares a presented secret with the stored one in time that does not depend on where they
/// first differ (`==` on strings stops at the first differing byte, which a client timing many
/// guesses could read). Tokens have one fixed length, so the length check tells nothing.
fn same_secret(stored: &str, presented: &str) -> bool {
    let (a, b) = (stored.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcdef", "abcdef"));
        assert!(!same_secret("abcdef", "abcdeg"));
        assert!(!same_secret("abcdef", "xbcdef"));
        assert!(!same_secret("abcdef", "abcde"));
        assert!(!same_secret("abcdef", ""));
    }

    fn joiner(pid: &str, role: ConsultRole) -> Joiner {
        Joiner {
            claims: Claims {
                clinic: "c".into(),
                consult: "k".into(),
                participant: pid.into(),
                role,
                display: pid.to_uppercase(),
                iat: 0,
                exp: 0,
            },
            device: Device {
                user_agent: Some("UA".into()),
                client_hints: Default::default(),
            },
            resume_token: format!("resume-{pid}"),
        }
    }

    fn sent_to(out: &Output, conn: ConnId) -> Vec<&ServerMsg> {
        out.send
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, m)| m)
            .collect()
    }

    fn error_code(out: &Output, conn: ConnId) -> Option<String> {
        sent_to(out, conn).into_iter().find_map(|m| match m {
            ServerMsg::Error { code, .. } => Some(code.clone()),
            _ => None,
        })
    }

    fn setup() -> (Room, Instant) {
        let t0 = Instant::now();
        (Room::new("k", RoomConfig::default(), t0), t0)
    }

    /// A join or an admission the shell could not audit is undone: the participant is told and
    /// closed, leaves no trace in the others' roster or waiting room, and may join again.
    #[test]
    fn an_unaudited_join_or_admission_is_undone() {
        let (mut room, t) = setup();
        let join = |conn, pid, role| Input::Join {
            conn,
            joiner: joiner(pid, role),
        };
        room.handle(t, join(1, "dr", ConsultRole::Provider));
        room.handle(t, join(2, "pat", ConsultRole::Patient));
        let out = room.handle(t, Input::Unaudited { conn: 2 });
        assert_eq!(error_code(&out, 2).as_deref(), Some("audit_unavailable"));
        assert!(out.close.contains(&2));
        let waiting = sent_to(&out, 1).into_iter().find_map(|m| match m {
            ServerMsg::WaitingRoom { waiting } => Some(waiting.clone()),
            _ => None,
        });
        assert_eq!(
            waiting.map(|w| w.len()),
            Some(0),
            "the patient no longer waits"
        );
        assert_eq!(room.participant_of(2), None);
        assert!(out.effects.is_empty(), "nothing audited, no media to drop");

        // The same token joins again; this time the admission cannot be audited.
        room.handle(t, join(3, "pat", ConsultRole::Patient));
        room.handle(
            t,
            Input::Msg {
                conn: 1,
                msg: ClientMsg::Admit {
                    participant: "pat".into(),
                },
            },
        );
        assert_eq!(room.admitted().len(), 2);
        let out = room.handle(t, Input::Unaudited { conn: 3 });
        assert_eq!(error_code(&out, 3).as_deref(), Some("audit_unavailable"));
        assert_eq!(room.admitted(), vec!["dr".to_string()]);
        assert!(out.effects.contains(&Effect::MediaDrop {
            participant: "pat".into()
        }));
        let roster = sent_to(&out, 1).into_iter().find_map(|m| match m {
            ServerMsg::Roster { participants } => Some(participants.len()),
            _ => None,
        });
        assert_eq!(roster, Some(1), "the provider's roster drops the patient");
        // A connection the room no longer knows changes nothing.
        let out = room.handle(t, Input::Unaudited { conn: 3 });
        assert!(out.send.is_empty() && out.effects.is_empty());
    }

    #[test]
    fn patient_waits_until_the_provider_admits() {
        let (mut room, t) = setup();
        let out = room.handle(
            t,
            Input::Join {
                conn: 1,
                joiner: joiner("dr", ConsultRole::Provider),
            },
        );
        assert!(matches!(
            sent_to(&out, 1)[0],
            ServerMsg::Welcome { admitted: true, .. }
        ));
        let out = room.handle(
            t,
            Input::Join {
                conn: 2,
                joiner: joiner("pat", ConsultRole::Patient),
            },
        );
        assert!(matches!(
            sent_to(&out, 2)[0],
            ServerMsg::Welcome {
                admitted: false,
                ..
            }
        ));
        assert!(
            sent_to(&out, 2)
                .iter()
                .all(|m| !matches!(m, ServerMsg::Roster { .. })),
            "waiting patients do not see who is in"
        );
        let waiting = sent_to(&out, 1).into_iter().find_map(|m| match m {
            ServerMsg::WaitingRoom { waiting } => Some(waiting.clone()),
            _ => None,
        });
        assert_eq!(waiting.unwrap()[0].id, "pat");
        // Before admission the patient cannot send media.
        let out = room.handle(
            t,
            Input::Msg {
                conn: 2,
                msg: ClientMsg::Offer { sdp: "v=0".into() },
            },
        );
        assert_eq!(error_code(&out, 2).as_deref(), Some("not_admitted"));
        assert!(out.effects.is_empty());
        // Patients cannot admit.
        let out = room.handle(
            t,
            Input::Msg {
                conn: 2,
                msg: ClientMsg::Admit {
                    participant: "pat".into(),
                },
            },
        );
        assert_eq!(error_code(&out, 2).as_deref(), Some("forbidden"));
        let out = room.handle(
            t,
            Input::Msg {
                conn: 1,
                msg: ClientMsg::Admit {
                    participant: "pat".into(),
                },
            },
        );
        assert!(sent_to(&out, 2).contains(&&ServerMsg::Admitted));
        assert!(out.effects.iter().any(|e| matches!(
            e,
            Effect::Audit {
                action: AuditAction::Admit,
                ..
            }
        )));
        let out = room.handle(
            t,
            Input::Msg {
                conn: 2,
                msg: ClientMsg::Offer { sdp: "v=0".into() },
            },
        );
        assert_eq!(
            out.effects,
            vec![Effect::MediaOffer {
                participant: "pat".into(),
                sdp: "v=0".into()
            }]
        );
        assert_eq!(room.admitted(), vec!["dr".to_string(), "pat".to_string()]);
    }

    #[test]
    fn limit_spent_tokens_and_wrong_consult() {
        let (mut room, t) = setup();
        for (i, role) in [
            ConsultRole::Provider,
            ConsultRole::Patient,
            ConsultRole::Caregiver,
            ConsultRole::Interpreter,
        ]
        .into_iter()
        .enumerate()
        {
            let out = room.handle(
                t,
                Input::Join {
                    conn: i as u64,
                    joiner: joiner(&format!("p{i}"), role),
                },
            );
            assert!(error_code(&out, i as u64).is_none());
        }
        let out = room.handle(
            t,
            Input::Join {
                conn: 9,
                joiner: joiner("p9", ConsultRole::CoveringProvider),
            },
        );
        assert_eq!(error_code(&out, 9).as_deref(), Some("consult_full"));
        assert_eq!(out.close, vec![9]);
        // The caregiver leaves: their token is spent.
        let out = room.handle(
            t,
            Input::Msg {
                conn: 2,
                msg: ClientMsg::Leave {},
            },
        );
        assert!(out.close.contains(&2));
        let out = room.handle(
            t,
            Input::Join {
                conn: 10,
                joiner: joiner("p2", ConsultRole::Caregiver),
            },
        );
        assert_eq!(error_code(&out, 10).as_deref(), Some("token_spent"));
        let mut wrong = joiner("x", ConsultRole::Patient);
        wrong.claims.consult = "other".into();
        let out = room.handle(
            t,
            Input::Join {
                conn: 11,
                joiner: wrong,
            },
        );
        assert_eq!(error_code(&out, 11).as_deref(), Some("wrong_consult"));
    }

    #[test]
    fn dropped_connection_reconnects_within_grace_without_readmission() {
        let (mut room, t) = setup();
        room.handle(
            t,
            Input::Join {
                conn: 1,
                joiner: joiner("dr", ConsultRole::Provider),
            },
        );
        room.handle(
            t,
            Input::Join {
                conn: 2,
                joiner: joiner("pat", ConsultRole::Patient),
            },
        );
        room.handle(
            t,
            Input::Msg {
                conn: 1,
                msg: ClientMsg::Admit {
                    participant: "pat".into(),
                },
            },
        );
        let out = room.handle(t, Input::Closed { conn: 2 });
        let roster = sent_to(&out, 1).into_iter().find_map(|m| match m {
            ServerMsg::Roster { participants } => Some(participants.clone()),
            _ => None,
        });
        let pat = roster.unwrap().into_iter().find(|p| p.id == "pat").unwrap();
        assert_eq!(
            pat.state,
            PresenceState::Reconnecting,
            "the others see reconnecting, not a leave"
        );
        assert!(out.effects.is_empty(), "no media drop, no leave");
        let out = room.handle(
            t + Duration::from_secs(20),
            Input::Resume {
                conn: 3,
                resume_token: "resume-pat".into(),
            },
        );
        assert!(matches!(
            sent_to(&out, 3)[0],
            ServerMsg::Welcome { admitted: true, .. }
        ));
        assert!(out.effects.iter().any(|e| matches!(
            e,
            Effect::Audit {
                action: AuditAction::Reconnect,
                ..
            }
        )));
        // A wrong resume token is refused.
        let out = room.handle(
            t,
            Input::Resume {
                conn: 4,
                resume_token: "guess".into(),
            },
        );
        assert_eq!(error_code(&out, 4).as_deref(), Some("resume_invalid"));
        // Past the grace period the participant is gone.
        room.handle(t + Duration::from_secs(25), Input::Closed { conn: 3 });
        let out = room.handle(t + Duration::from_secs(56), Input::Tick);
        assert!(out.effects.contains(&Effect::MediaDrop {
            participant: "pat".into()
        }));
        let out = room.handle(
            t + Duration::from_secs(57),
            Input::Resume {
                conn: 5,
                resume_token: "resume-pat".into(),
            },
        );
        assert_eq!(error_code(&out, 5).as_deref(), Some("resume_invalid"));
    }

    #[test]
    fn provider_ends_and_idle_consults_end() {
        let (mut room, t) = setup();
        room.handle(
            t,
            Input::Join {
                conn: 1,
                joiner: joiner("dr", ConsultRole::Provider),
            },
        );
        room.handle(
            t,
            Input::Join {
                conn: 2,
                joiner: joiner("pat", ConsultRole::Patient),
            },
        );
        let out = room.handle(
            t,
            Input::Msg {
                conn: 2,
                msg: ClientMsg::End {},
            },
        );
        assert_eq!(error_code(&out, 2).as_deref(), Some("forbidden"));
        let out = room.handle(
            t,
            Input::Msg {
                conn: 1,
                msg: ClientMsg::End {},
            },
        );
        assert!(out.close.contains(&1) && out.close.contains(&2));
        assert!(out.effects.contains(&Effect::Ended {
            reason: EndReason::EndedByProvider
        }));
        assert!(room.is_ended());
        let out = room.handle(
            t,
            Input::Join {
                conn: 3,
                joiner: joiner("dr", ConsultRole::Provider),
            },
        );
        assert_eq!(error_code(&out, 3).as_deref(), Some("consult_ended"));

        let (mut idle, t) = setup();
        idle.handle(
            t,
            Input::Join {
                conn: 1,
                joiner: joiner("dr", ConsultRole::Provider),
            },
        );
        idle.handle(t, Input::Closed { conn: 1 });
        let out = idle.handle(t + Duration::from_secs(100), Input::Tick);
        assert!(!idle.is_ended(), "{:?}", out.effects);
        let out = idle.handle(t + Duration::from_secs(631), Input::Tick);
        assert!(out.effects.contains(&Effect::Ended {
            reason: EndReason::Idle
        }));
    }

    #[test]
    fn messages_before_join_and_repeats_are_errors_not_crashes() {
        let (mut room, t) = setup();
        let out = room.handle(
            t,
            Input::Msg {
                conn: 7,
                msg: ClientMsg::Leave {},
            },
        );
        assert_eq!(error_code(&out, 7).as_deref(), Some("not_joined"));
        assert!(out.close.is_empty(), "the connection goes on");
        room.handle(
            t,
            Input::Join {
                conn: 1,
                joiner: joiner("dr", ConsultRole::Provider),
            },
        );
        let out = room.handle(
            t,
            Input::Msg {
                conn: 1,
                msg: ClientMsg::Join {
                    v: 1,
                    token: "t".into(),
                    device: Device::default(),
                },
            },
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("already_joined"));
        let out = room.handle(
            t,
            Input::Msg {
                conn: 1,
                msg: ClientMsg::Admit {
                    participant: "ghost".into(),
                },
            },
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("unknown_participant"));
        let out = room.handle(
            t,
            Input::Msg {
                conn: 1,
                msg: ClientMsg::Remove {
                    participant: "dr".into(),
                },
            },
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("unknown_participant"));
        let out = room.handle(
            t,
            Input::Msg {
                conn: 1,
                msg: ClientMsg::Ping { id: 3 },
            },
        );
        assert_eq!(sent_to(&out, 1), vec![&ServerMsg::Pong { id: 3 }]);
        // Closing an unknown connection is harmless.
        assert!(room.handle(t, Input::Closed { conn: 99 }).send.is_empty());
    }

    #[test]
    fn a_second_tab_takes_the_seat_over() {
        let (mut room, t) = setup();
        room.handle(
            t,
            Input::Join {
                conn: 1,
                joiner: joiner("dr", ConsultRole::Provider),
            },
        );
        let out = room.handle(
            t,
            Input::Join {
                conn: 2,
                joiner: joiner("dr", ConsultRole::Provider),
            },
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("replaced"));
        assert!(out.close.contains(&1));
        assert_eq!(room.conn_of("dr"), Some(2));
        // The old connection closing later does not mark the participant reconnecting.
        let out = room.handle(t, Input::Closed { conn: 1 });
        assert!(out.send.is_empty());
    }
}
