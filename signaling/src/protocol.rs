//! The consult signaling protocol, version 1: JSON text frames, one message each, tagged by
//! `type`. `docs/signaling.md` is the reference. Parsing is strict (unknown types and fields are
//! refused) and bounded (frame size, SDP size, list lengths); a bad frame yields a
//! [`ProtocolError`] that the server answers with an `error` message while the connection goes on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::token::ConsultRole;

pub const VERSION: u32 = 1;
/// Largest accepted frame.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest accepted SDP.
pub const MAX_SDP_BYTES: usize = 32 * 1024;

/// The device a participant joins from: recorded in the audit log at join (device fingerprint).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub user_agent: Option<String>,
    /// User-agent client hints (`Sec-CH-UA*`), as the page read them.
    #[serde(default)]
    pub client_hints: BTreeMap<String, String>,
}

/// What a participant wants to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LayerPreference {
    /// The best layer the bandwidth estimate allows.
    #[default]
    Normal,
    /// The lowest video layer only.
    LowData,
    /// No video at all.
    AudioOnly,
}

/// Messages from a participant's page.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// First message on a connection: protocol version and the join token.
    Join {
        v: u32,
        token: String,
        #[serde(default)]
        device: Device,
    },
    /// First message on a new connection after a drop: the resume token from `welcome`.
    Resume { v: u32, resume_token: String },
    /// An SDP offer for the participant's media session with the SFU.
    Offer { sdp: String },
    /// An SDP answer to an offer the SFU sent.
    Answer { sdp: String },
    /// A trickled ICE candidate.
    Ice { candidate: String },
    /// Host only: let a waiting participant in.
    Admit { participant: String },
    /// Host only: remove a participant (waiting or admitted).
    Remove { participant: String },
    /// Leave for good (the join token is spent).
    Leave {},
    /// Host only: end the consult for everyone.
    End {},
    /// Microphone and camera state, shown to the others.
    MediaState { audio: bool, video: bool },
    /// Which video layer to receive.
    LayerPreference { preference: LayerPreference },
    /// A client-side stats summary (bounded map of numbers).
    Stats { report: BTreeMap<String, f64> },
    Ping {
        #[serde(default)]
        id: u64,
    },
}

/// A participant as others see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub role: ConsultRole,
    pub display: String,
    pub state: PresenceState,
    pub audio: bool,
    pub video: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// In the waiting room.
    Waiting,
    /// Admitted and connected.
    Connected,
    /// Admitted, connection lost, within the grace period.
    Reconnecting,
}

/// Messages to a participant's page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Joined (or resumed): who you are, whether you are in, and the token to resume with.
    Welcome {
        v: u32,
        participant: String,
        role: ConsultRole,
        admitted: bool,
        resume_token: String,
        /// Seconds a dropped connection may take to come back without re-admission.
        grace_secs: u64,
    },
    /// You were let in from the waiting room.
    Admitted,
    /// Who is in the consult (admitted participants, with presence), sent on every change.
    Roster {
        participants: Vec<ParticipantInfo>,
    },
    /// Hosts only: who is waiting.
    WaitingRoom {
        waiting: Vec<ParticipantInfo>,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Ice {
        candidate: String,
    },
    /// Per-participant media stats (hosts).
    Stats {
        participants: Vec<serde_json::Value>,
    },
    /// The consult ended (or you were removed); the connection closes.
    Ended {
        reason: EndReason,
    },
    Pong {
        id: u64,
    },
    /// Something about your last message was wrong; unless `fatal`, carry on.
    Error {
        code: String,
        message: String,
        fatal: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A host ended it.
    EndedByProvider,
    /// Nobody was connected for the idle timeout.
    Idle,
    /// Its appointment was cancelled (or marked a no-show).
    Cancelled,
    /// You were removed by a host.
    Removed,
    /// You left.
    Left,
}

/// Why a frame was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn to_msg(&self, fatal: bool) -> ServerMsg {
        ServerMsg::Error {
            code: self.code.to_string(),
            message: self.message.clone(),
            fatal,
        }
    }
}

/// Parses one text frame.
pub fn parse(frame: &str) -> Result<ClientMsg, ProtocolError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::new(
            "too_large",
            format!("messages are limited to {MAX_FRAME_BYTES} bytes"),
        ));
    }
    let msg: ClientMsg = serde_json::from_str(frame).map_err(|e| {
        // serde's message names the problem (unknown variant, missing field), not the values.
        let kind = if e.is_syntax() || e.is_eof() {
            "malformed"
        } else {
            "invalid_message"
        };
        ProtocolError::new(kind, e.to_string())
    })?;
    match &msg {
        ClientMsg::Join { v, .. } | ClientMsg::Resume { v, .. } if *v != VERSION => {
            Err(ProtocolError::new(
                "unsupported_version",
                format!("this server speaks protocol version {VERSION}"),
            ))
        }
        ClientMsg::Offer { sdp } | ClientMsg::Answer { sdp }
            if sdp.len() > MAX_SDP_BYTES || !sdp.starts_with("v=0") =>
        {
            Err(ProtocolError::new(
                "invalid_sdp",
                "an SDP must start with v=0 and be at most 32 KiB",
            ))
        }
        ClientMsg::Ice { candidate } if candidate.len() > 1024 => Err(ProtocolError::new(
            "invalid_candidate",
            "candidate too long",
        )),
        ClientMsg::Stats { report } if report.len() > 64 => {
            Err(ProtocolError::new("invalid_message", "at most 64 stats"))
        }
        ClientMsg::Join { device, .. }
            if device.client_hints.len() > 16
                || device.user_agent.as_ref().is_some_and(|u| u.len() > 512) =>
        {
            Err(ProtocolError::new(
                "invalid_message",
                "device description too large",
            ))
        }
        _ => Ok(msg),
    }
}

/// Serializes a server message as a text frame.
pub fn encode(msg: &ServerMsg) -> String {
    serde_json::to_string(msg).expect("server messages serialize")
}

/// A token bucket per connection: `burst` messages at once, `per_sec` sustained.
#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    /// Messages refused in a row; the shell closes the connection past a threshold.
    pub strikes: u32,
}

impl RateLimiter {
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        Self {
            burst: burst as f64,
            per_sec: per_sec as f64,
            tokens: burst as f64,
            last: now,
            strikes: 0,
        }
    }

    /// Whether a message arriving at `now` may be handled.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

/// Convenience for tests and shells: `Duration` from seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_message() {
        let frames = [
            r#"{"type":"join","v":1,"token":"t","device":{"user_agent":"UA","client_hints":{"sec-ch-ua-mobile":"?1"}}}"#,
            r#"{"type":"resume","v":1,"resume_token":"r"}"#,
            r#"{"type":"offer","sdp":"v=0\r\n"}"#,
            r#"{"type":"answer","sdp":"v=0\r\n"}"#,
            r#"{"type":"ice","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}"#,
            r#"{"type":"admit","participant":"p"}"#,
            r#"{"type":"remove","participant":"p"}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"end"}"#,
            r#"{"type":"media_state","audio":true,"video":false}"#,
            r#"{"type":"layer_preference","preference":"low_data"}"#,
            r#"{"type":"stats","report":{"rtt_ms":40.5}}"#,
            r#"{"type":"ping","id":7}"#,
        ];
        for f in frames {
            parse(f).unwrap_or_else(|e| panic!("{f}: {e:?}"));
        }
    }

    #[test]
    fn refuses_garbage_with_codes() {
        let cases = [
            ("", "malformed"),
            ("{", "malformed"),
            ("\u{0}\u{1}binary", "malformed"),
            ("[]", "invalid_message"),
            (r#"{"type":"fly"}"#, "invalid_message"),
            (r#"{"type":"join","v":1}"#, "invalid_message"),
            (r#"{"type":"leave","extra":1}"#, "invalid_message"),
            (
                r#"{"type":"join","v":9,"token":"t"}"#,
                "unsupported_version",
            ),
            (r#"{"type":"offer","sdp":"hello"}"#, "invalid_sdp"),
            (r#"{"type":"admit","participant":5}"#, "invalid_message"),
        ];
        for (frame, code) in cases {
            assert_eq!(parse(frame).unwrap_err().code, code, "{frame}");
        }
        let big = format!(
            r#"{{"type":"offer","sdp":"v=0{}"}}"#,
            "a".repeat(MAX_SDP_BYTES)
        );
        assert_eq!(parse(&big).unwrap_err().code, "invalid_sdp");
        let huge = "x".repeat(MAX_FRAME_BYTES + 1);
        assert_eq!(parse(&huge).unwrap_err().code, "too_large");
    }

    /// Thousands of mutations of valid frames (bytes flipped, cut, inserted, repeated; numbers
    /// made huge; nesting made deep): every one parses or is refused with a known code, and
    /// none panics.
    #[test]
    fn mutated_frames_never_panic() {
        let seeds = [
            r#"{"type":"join","v":1,"token":"v1.abc.def","device":{"user_agent":"UA","client_hints":{"sec-ch-ua":"x"}}}"#,
            r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}"#,
            r#"{"type":"ice","candidate":"candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"}"#,
            r#"{"type":"stats","report":{"rtt_ms":40.5,"fps":30}}"#,
            r#"{"type":"media_state","audio":true,"video":false}"#,
            r#"{"type":"layer_preference","preference":"normal"}"#,
            r#"{"type":"ping","id":7}"#,
        ];
        let codes = [
            "malformed",
            "invalid_message",
            "unsupported_version",
            "invalid_sdp",
            "invalid_candidate",
            "too_large",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n.max(1) as u64) as usize
        };
        let (mut ok, mut refused) = (0, 0);
        for seed in seeds {
            for _ in 0..3000 {
                let mut b = seed.as_bytes().to_vec();
                for _ in 0..1 + rnd(4) {
                    let at = rnd(b.len());
                    match rnd(7) {
                        0 => {
                            let i = at.min(b.len() - 1);
                            b[i] ^= 1 << rnd(8);
                        }
                        1 => b.truncate(at),
                        2 => b.insert(at, b"{}[]\",:0e9-\x00"[rnd(12)]),
                        3 => {
                            let end = (at + rnd(16)).min(b.len());
                            let piece = b[at..end].to_vec();
                            b.splice(at..at, piece.repeat(1 + rnd(50)));
                        }
                        4 => b.splice(at..at, b"1e999999".iter().copied()).for_each(drop),
                        5 => b
                            .splice(at..at, "[".repeat(200).into_bytes())
                            .for_each(drop),
                        _ => b
                            .splice(at..at, r"\u0000\uffff\ud800".bytes())
                            .for_each(drop),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                let frame = String::from_utf8_lossy(&b);
                match parse(&frame) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert!(codes.contains(&e.code), "{frame}: {e:?}");
                        refused += 1;
                    }
                }
            }
        }
        assert!(
            refused > ok,
            "most mutations are refused: {refused} refused, {ok} accepted"
        );
    }

    #[test]
    fn rate_limiter_allows_bursts_then_sustained_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(5, 2, t0);
        assert!((0..5).all(|_| rl.allow(t0)));
        assert!(!rl.allow(t0));
        assert_eq!(rl.strikes, 1);
        assert!(rl.allow(t0 + Duration::from_millis(500)));
        assert_eq!(rl.strikes, 0);
        assert!(!rl.allow(t0 + Duration::from_millis(600)));
    }
}
