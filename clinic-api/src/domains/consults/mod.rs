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

mod hub;
mod links;
mod socket;

pub use hub::Hub;
use hub::*;
pub use links::LinkOut;
pub(crate) use links::issue_link;
use links::*;
use socket::*;

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
