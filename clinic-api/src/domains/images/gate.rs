//! What keeps one uploader from starving the others. An upload waits (bounded) for one of its
//! user's few upload slots, then (bounded) for its share of the upload memory; its body must keep
//! a minimum rate after a grace period and end by a deadline; and each account has a rolling
//! 24-hour byte quota. A slow or stuck client gives everything back when it is cut off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::*;
use crate::platform::authz::Role;
use crate::platform::config::ImagingConfig;

/// The upload rules of `[imaging]`, as durations.
pub(super) struct UploadRules {
    /// No data for this long: 408 `upload_stalled`.
    pub idle: Duration,
    /// The whole body must have arrived by then: 408 `upload_too_slow` (0 in config: off).
    pub deadline: Option<Duration>,
    /// Bytes a second, on average, from the end of the grace period on (0: off).
    pub min_rate: u64,
    pub rate_grace: Duration,
    /// How long an upload may wait for its user's slot and for memory together.
    pub wait: Duration,
    /// Bytes an account may upload in 24 hours (`None`: no limit).
    pub patient_daily: Option<u64>,
    pub staff_daily: Option<u64>,
}

impl UploadRules {
    pub(super) fn of(c: &ImagingConfig) -> Self {
        let some = |n: u64| (n > 0).then_some(n);
        Self {
            idle: Duration::from_secs(c.upload_idle_secs.max(1)),
            deadline: some(c.upload_deadline_secs).map(Duration::from_secs),
            min_rate: c.upload_min_bytes_per_sec,
            rate_grace: Duration::from_secs(c.upload_rate_grace_secs),
            wait: Duration::from_secs(c.upload_wait_secs.max(1)),
            patient_daily: some(c.patient_daily_upload_bytes),
            staff_daily: some(c.staff_daily_upload_bytes),
        }
    }

    /// The caller's rolling 24-hour quota, if any.
    pub(super) fn daily_quota(&self, role: Role) -> Option<u64> {
        if role == Role::Patient {
            self.patient_daily
        } else {
            self.staff_daily
        }
    }
}

pub(super) const QUOTA_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Bytes (of stored originals) the caller uploaded in the last 24 hours, deleted ones included:
/// a purge does not give the quota back.
pub(super) async fn uploaded_recently(
    tx: &mut TenantTx,
    caller: &Caller,
    now: i64,
) -> sqlx::Result<u64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(original_bytes), 0) AS BIGINT) FROM images \
         WHERE clinic_id = $1 AND uploaded_by = $2 AND created_at > $3",
    )
    .bind(caller.clinic_id.as_str())
    .bind(caller.user_id.as_str())
    .bind(now - QUOTA_WINDOW_MS)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n.max(0) as u64)
}

/// The answer past the quota: 429, with the limit and what was used.
pub(super) fn over_quota(limit: u64, used: u64) -> ApiError {
    metrics::counter!("image_uploads_refused_total", "reason" => "quota").increment(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::UploadQuota,
        format!(
            "uploads are limited to {} a day for each account; try again later or ask the practice",
            if limit >= 1024 * 1024 {
                format!("{} MB", limit / (1024 * 1024))
            } else {
                format!("{} KB", limit.div_ceil(1024))
            }
        ),
    )
    .with_extra(serde_json::json!({ "limit_bytes": limit, "used_bytes": used }))
}

/// A few uploads at a time per user: the rest of a user's burst waits here, holding no memory.
pub(super) struct PerUser {
    limit: usize,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One of a user's upload slots, given back (and the user's entry dropped when idle) on drop.
pub(super) struct UserSlot<'a> {
    gate: &'a PerUser,
    user: String,
    sem: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl PerUser {
    /// `limit` uploads at once per user (0: no limit).
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until `until` for a slot of `user`; `None` when there is no limit, `Err` on time.
    pub(super) async fn enter(
        &self,
        user: &str,
        until: Instant,
    ) -> Result<Option<UserSlot<'_>>, ()> {
        if self.limit == 0 {
            return Ok(None);
        }
        let sem = {
            let mut slots = self.slots.lock().expect("upload slots");
            slots
                .entry(user.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
                .clone()
        };
        let mut slot = UserSlot {
            gate: self,
            user: user.to_string(),
            sem: sem.clone(),
            permit: None,
        };
        // On time-out `slot` is dropped with no permit, which also tidies the entry.
        let permit = tokio::time::timeout_at(until, sem.acquire_owned())
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        slot.permit = Some(permit);
        Ok(Some(slot))
    }

    /// Users with an entry (someone uploading or waiting).
    #[cfg(test)]
    fn users(&self) -> usize {
        self.slots.lock().expect("upload slots").len()
    }
}

impl Drop for UserSlot<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut slots = self.gate.slots.lock().expect("upload slots");
        // The map's reference and ours: nobody else holds or waits for this user's slots.
        if Arc::strong_count(&self.sem) == 2 {
            slots.remove(&self.user);
        }
    }
}

/// What an upload holds while its bytes are in memory: its user's slot and its share of
/// `imaging.max_inflight_bytes`.
pub(super) struct Ticket<'a> {
    _memory: tokio::sync::SemaphorePermit<'a>,
    _user: Option<UserSlot<'a>>,
}

/// Waits (until `rules.wait` has passed, for both together) for a slot of the caller's and for
/// `kib` of upload memory: 429 `too_many_uploads` when the caller's own uploads fill their
/// slots that long, 503 `upload_busy` when memory stays taken.
pub(super) async fn admit<'a>(
    images: &'a Images,
    caller: &Caller,
    kib: u32,
) -> ApiResult<Ticket<'a>> {
    let until = Instant::now() + images.rules.wait;
    let user = images
        .per_user
        .enter(caller.user_id.as_str(), until)
        .await
        .map_err(|()| {
            metrics::counter!("image_uploads_refused_total", "reason" => "user_busy").increment(1);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyUploads,
                "too many of your uploads are in progress; wait for them to finish",
            )
            .with_retry_after(5)
        })?;
    let memory = tokio::time::timeout_at(until, images.inflight_kib.acquire_many(kib))
        .await
        .map_err(|_| {
            metrics::counter!("image_uploads_refused_total", "reason" => "memory_busy")
                .increment(1);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::UploadBusy,
                "the server is taking in many uploads; try again in a moment",
            )
            .with_retry_after(5)
        })?
        .map_err(|_| ApiError::internal())?;
    Ok(Ticket {
        _memory: memory,
        _user: user,
    })
}

/// When the body read gives up, and why.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cutoff {
    Idle,
    Deadline,
    Rate,
}

/// The earliest time the body read must give up with `received` bytes in, and why.
fn cutoff(
    rules: &UploadRules,
    started: Instant,
    last: Instant,
    received: u64,
) -> (Instant, Cutoff) {
    let mut at = (last + rules.idle, Cutoff::Idle);
    if let Some(d) = rules.deadline
        && started + d < at.0
    {
        at = (started + d, Cutoff::Deadline);
    }
    if rules.min_rate > 0 {
        let allowed =
            rules.rate_grace + Duration::from_secs_f64(received as f64 / rules.min_rate as f64);
        if started + allowed < at.0 {
            at = (started + allowed, Cutoff::Rate);
        }
    }
    at
}

fn cut_off(rules: &UploadRules, why: Cutoff) -> ApiError {
    let (reason, code, detail) = match why {
        Cutoff::Idle => (
            "stalled",
            ErrorCode::UploadStalled,
            "the upload stopped sending data; try again".to_string(),
        ),
        Cutoff::Deadline => (
            "deadline",
            ErrorCode::UploadTooSlow,
            format!(
                "the upload took longer than {} seconds; try again on a better connection",
                rules.deadline.map_or(0, |d| d.as_secs())
            ),
        ),
        Cutoff::Rate => (
            "slow",
            ErrorCode::UploadTooSlow,
            format!(
                "the upload was slower than {} bytes a second; try again on a better connection",
                rules.min_rate
            ),
        ),
    };
    metrics::counter!("image_uploads_refused_total", "reason" => reason).increment(1);
    ApiError::new(StatusCode::REQUEST_TIMEOUT, code, detail)
}

/// Reads the body up to the limit, refusing early: 413 past the size limit (or a Content-Length
/// over it), 429 past the caller's quota (`quota_left`), 415 as soon as the first bytes are not
/// an image, 400 when empty or interrupted, 408 when it stalls, is too slow or takes too long.
pub(super) async fn read_upload<'a>(
    headers: &HeaderMap,
    body: Body,
    images: &'a Images,
    caller: &Caller,
    quota: Option<(u64, u64)>,
) -> ApiResult<(Vec<u8>, Ticket<'a>)> {
    let limits = &images.limits;
    let rules = &images.rules;
    let too_large = || {
        imaging_error(ImagingError::TooLarge {
            limit: limits.max_bytes,
        })
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > limits.max_bytes
    {
        return Err(too_large());
    }
    let over = |extra: u64| match quota {
        Some((limit, used)) if used.saturating_add(extra) > limit => Some(over_quota(limit, used)),
        _ => None,
    };
    if let Some(e) = over(declared.unwrap_or(1).max(1)) {
        return Err(e);
    }
    // Reserve the upload's bytes before reading any: a burst waits here, its bodies unread.
    let reserve = kib(declared.unwrap_or(limits.max_bytes).max(1)) as u32;
    let ticket = admit(images, caller, reserve).await?;
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut sniffed = false;
    let started = Instant::now();
    let mut last = started;
    loop {
        let (at, why) = cutoff(rules, started, last, buf.len() as u64);
        let Some(chunk) = tokio::time::timeout_at(at, stream.next())
            .await
            .map_err(|_| cut_off(rules, why))?
        else {
            break;
        };
        let chunk = chunk.map_err(|_| {
            ApiError::bad_request(
                ErrorCode::UploadInterrupted,
                "the upload was interrupted; try again",
            )
        })?;
        last = Instant::now();
        if buf.len() as u64 + chunk.len() as u64 > limits.max_bytes {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
        if let Some(e) = over(buf.len() as u64) {
            return Err(e);
        }
        if !sniffed && buf.len() >= imaging::sniff::SNIFF_LEN {
            imaging::sniff(&buf).map_err(imaging_error)?;
            sniffed = true;
        }
    }
    if !sniffed {
        imaging::sniff(&buf).map_err(imaging_error)?;
    }
    Ok((buf, ticket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> UploadRules {
        UploadRules {
            idle: Duration::from_secs(30),
            deadline: Some(Duration::from_secs(600)),
            min_rate: 1000,
            rate_grace: Duration::from_secs(10),
            wait: Duration::from_secs(60),
            patient_daily: None,
            staff_daily: None,
        }
    }

    #[test]
    fn the_cutoff_is_the_earliest_of_idle_deadline_and_rate() {
        let r = rules();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Nothing in yet: the grace period ends first (10 s < 30 s idle).
        assert_eq!(cutoff(&r, t0, t0, 0), (t0 + s(10), Cutoff::Rate));
        // 1 byte every 25 s: after the first byte, 10.001 s; never the idle time.
        assert_eq!(cutoff(&r, t0, t0 + s(5), 1).1, Cutoff::Rate);
        // 100 kB in at 20 s: the rate allows 110 s, the idle time ends at 50 s.
        assert_eq!(
            cutoff(&r, t0, t0 + s(20), 100_000),
            (t0 + s(50), Cutoff::Idle)
        );
        // 10 MB in, steadily: the deadline.
        assert_eq!(
            cutoff(&r, t0, t0 + s(590), 10_000_000),
            (t0 + s(600), Cutoff::Deadline)
        );
        let off = UploadRules {
            min_rate: 0,
            deadline: None,
            ..rules()
        };
        assert_eq!(cutoff(&off, t0, t0 + s(5), 0), (t0 + s(35), Cutoff::Idle));
    }

    #[tokio::test]
    async fn a_users_slots_are_bounded_and_their_entry_goes_when_idle() {
        let gate = PerUser::new(2);
        let until = Instant::now() + Duration::from_millis(50);
        let a = gate.enter("u1", until).await.unwrap().unwrap();
        let b = gate.enter("u1", until).await.unwrap().unwrap();
        assert!(
            gate.enter("u1", until).await.is_err(),
            "a third waits, then gives up"
        );
        let other = gate.enter("u2", until).await.unwrap();
        assert!(other.is_some(), "another user is not held up");
        assert_eq!(gate.users(), 2);
        drop(a);
        let c = gate
            .enter("u1", Instant::now() + Duration::from_millis(50))
            .await
            .unwrap();
        assert!(c.is_some(), "a slot given back is taken");
        drop((b, other));
        assert_eq!(gate.users(), 1, "u2's entry is gone; u1 still uploads");
        drop(c);
        assert_eq!(gate.users(), 0);
        assert!(PerUser::new(0).enter("u", until).await.unwrap().is_none());
    }
}
