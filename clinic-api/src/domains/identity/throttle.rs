//! Sign-in throttling, in front of the password check: rate limits per client address and per
//! account name (whether or not an account has that name), and the failure record of names that
//! match no account, so an unknown username backs off and locks on the same schedule, with the
//! same answers, as a real one and cannot be told apart from it by what the server says.
//!
//! The limits are token buckets (`governor`): each key may spend its per-minute quota at once
//! and regains it evenly over the minute. They count attempts before any database or argon2 work,
//! so a flood from one address costs one map lookup per request once its bucket is empty.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use lru::LruCache;

use crate::platform::config::LoginConfig;
use crate::platform::error::{ApiError, ErrorCode};

/// How many names with no account keep a failure record; past it the least recently failed name
/// is forgotten (and starts again from zero). Bounded so a flood of random names cannot grow it.
const UNKNOWN_NAMES: usize = 10_000;
/// Every this many admissions the limiters drop keys whose buckets are full again (governor keeps
/// a key until told to), so memory follows the active senders, not every sender ever seen.
const PRUNE_EVERY: u64 = 4096;

/// A failure count and the lock it imposes, for a real account (from its row) or a name with none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: i64,
    pub locked_until: Option<i64>,
}

impl Failures {
    /// The record after one more failure at `now`: backoff after `backoff_after`, lock after
    /// `lock_after` (one schedule for accounts and for names with none).
    pub fn after_failure(self, cfg: &LoginConfig, now: i64) -> Failures {
        let count = self.count + 1;
        Failures {
            count,
            locked_until: lock_until(cfg, count, now),
        }
    }
}

/// When `failures` failures at `now` lock or hold off the account until, if they do.
pub fn lock_until(cfg: &LoginConfig, failures: i64, now: i64) -> Option<i64> {
    if failures >= cfg.lock_after {
        Some(now + cfg.lock_secs * 1000)
    } else if failures >= cfg.backoff_after {
        Some(now + (1i64 << (failures - cfg.backoff_after).min(10)) * 1000)
    } else {
        None
    }
}

/// The sign-in throttle: one per server, a service in the state.
pub struct SignInThrottle {
    per_ip: Option<DefaultKeyedRateLimiter<String>>,
    per_account: Option<DefaultKeyedRateLimiter<(String, String)>>,
    unknown: Mutex<LruCache<(String, String), Failures>>,
    admitted: AtomicU64,
}

/// The key of an account name: the clinic as typed and the username, trimmed and lowercased, so
/// case variants of one name share one bucket and one record.
pub fn account_key(clinic: &str, username: &str) -> (String, String) {
    (clinic.trim().to_lowercase(), username.trim().to_lowercase())
}

/// A keyed limiter of `per_minute` attempts a minute per key, or none for 0.
fn keyed<K: Clone + Eq + std::hash::Hash>(per_minute: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

impl SignInThrottle {
    pub fn new(cfg: &LoginConfig) -> Self {
        Self {
            per_ip: keyed(cfg.per_ip_per_minute),
            per_account: keyed(cfg.per_account_per_minute),
            unknown: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(UNKNOWN_NAMES).expect("non-zero"),
            )),
            admitted: AtomicU64::new(0),
        }
    }

    /// Spends one attempt from the address's and the name's buckets, or answers 429 with the
    /// wait. A request with no known address (in-process calls) is limited by name only.
    pub fn admit(&self, ip: Option<&str>, account: &(String, String)) -> Result<(), ApiError> {
        if self.admitted.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            if let Some(l) = &self.per_ip {
                l.retain_recent();
            }
            if let Some(l) = &self.per_account {
                l.retain_recent();
            }
        }
        let now = DefaultClock::default().now();
        if let (Some(limiter), Some(ip)) = (&self.per_ip, ip)
            && let Err(wait) = limiter.check_key(&ip.to_string())
        {
            let secs = wait.wait_time_from(now).as_secs().max(1);
            return Err(rate_limited(
                format!("too many sign-in attempts from this address; wait {secs} s"),
                secs,
            ));
        }
        if let Some(limiter) = &self.per_account
            && let Err(wait) = limiter.check_key(account)
        {
            let secs = wait.wait_time_from(now).as_secs().max(1);
            return Err(rate_limited(
                format!("too many sign-in attempts for this account; wait {secs} s"),
                secs,
            ));
        }
        Ok(())
    }

    /// The failure record of a name that matches no account (zero if it has none).
    pub fn unknown_failures(&self, account: &(String, String)) -> Failures {
        self.unknown
            .lock()
            .map(|mut m| m.get(account).copied().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Counts a failure for a name that matches no account; returns the record after it.
    pub fn unknown_failed(
        &self,
        account: &(String, String),
        cfg: &LoginConfig,
        now: i64,
    ) -> Failures {
        let Ok(mut map) = self.unknown.lock() else {
            return Failures::default();
        };
        let before = map.get(account).copied().unwrap_or_default();
        let after = before.after_failure(cfg, now);
        map.put(account.clone(), after);
        after
    }
}

fn rate_limited(detail: String, secs: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        detail,
    )
    .with_retry_after(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LoginConfig {
        LoginConfig {
            per_ip_per_minute: 3,
            per_account_per_minute: 2,
            ..LoginConfig::default()
        }
    }

    #[test]
    fn each_address_and_each_name_has_its_own_bucket() {
        let t = SignInThrottle::new(&cfg());
        let a = account_key("alpha", "Ann");
        let b = account_key("alpha", "bob");
        assert!(t.admit(Some("10.0.0.1"), &a).is_ok());
        assert!(
            t.admit(Some("10.0.0.1"), &account_key(" ALPHA", "ann "))
                .is_ok()
        );
        let name = t.admit(Some("10.0.0.2"), &a).unwrap_err();
        assert_eq!(
            (name.status, name.code),
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
        );
        assert!(name.retry_after.unwrap() >= 1);
        // The first address has spent two of three; its third goes to another name, its fourth
        // is refused whatever the name.
        assert!(t.admit(Some("10.0.0.1"), &b).is_ok());
        let ip = t
            .admit(Some("10.0.0.1"), &account_key("alpha", "carl"))
            .unwrap_err();
        assert!(ip.detail.contains("address"), "{}", ip.detail);
        assert!(
            t.admit(Some("10.0.0.3"), &account_key("alpha", "carl"))
                .is_ok()
        );
    }

    #[test]
    fn unknown_names_follow_the_account_schedule() {
        let cfg = LoginConfig::default();
        let t = SignInThrottle::new(&cfg);
        let ghost = account_key("alpha", "ghost");
        let mut row = Failures::default();
        for _ in 0..cfg.lock_after + 1 {
            let unknown = t.unknown_failed(&ghost, &cfg, 1_000);
            row = row.after_failure(&cfg, 1_000);
            assert_eq!(unknown, row);
        }
        assert_eq!(
            t.unknown_failures(&ghost).locked_until,
            Some(1_000 + cfg.lock_secs * 1000)
        );
        assert_eq!(
            t.unknown_failures(&account_key("alpha", "other")),
            Failures::default()
        );
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let t = SignInThrottle::new(&LoginConfig {
            per_ip_per_minute: 0,
            per_account_per_minute: 0,
            ..LoginConfig::default()
        });
        for _ in 0..1000 {
            assert!(t.admit(Some("10.0.0.1"), &account_key("a", "b")).is_ok());
        }
    }
}
