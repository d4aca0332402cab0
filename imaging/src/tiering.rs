//! Tiering and retention decisions (sans-IO): which tier an original belongs in at its age, and
//! whether an image may be deleted.

use crate::store::Tier;

const DAY_MS: i64 = 86_400_000;

/// The policy, from configuration.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierPolicy {
    /// Originals move to the warm tier (S3 STANDARD_IA) after this many days.
    pub warm_after_days: u32,
    /// And to the cold tier (S3 GLACIER_IR) after this many.
    pub cold_after_days: u32,
    /// No image is deleted before this many days (default 7 years).
    pub min_retention_days: u32,
}

impl Default for TierPolicy {
    fn default() -> Self {
        Self {
            warm_after_days: 30,
            cold_after_days: 180,
            min_retention_days: 7 * 365 + 2,
        }
    }
}

impl TierPolicy {
    /// Checks the policy makes sense (cold after warm).
    pub fn validate(&self) -> Result<(), String> {
        if self.cold_after_days < self.warm_after_days {
            return Err("cold_after_days must not be less than warm_after_days".into());
        }
        Ok(())
    }

    /// The tier an original created at `created_ms` belongs in at `now_ms`.
    pub fn tier_for(&self, created_ms: i64, now_ms: i64) -> Tier {
        let age = now_ms.saturating_sub(created_ms);
        if age >= self.cold_after_days as i64 * DAY_MS {
            Tier::Cold
        } else if age >= self.warm_after_days as i64 * DAY_MS {
            Tier::Warm
        } else {
            Tier::Hot
        }
    }

    /// The earliest time an image created at `created_ms` may be deleted.
    pub fn retain_until(&self, created_ms: i64) -> i64 {
        created_ms.saturating_add(self.min_retention_days as i64 * DAY_MS)
    }
}

/// Why a deletion is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Under legal hold.
    LegalHold,
    /// Inside the minimum retention period, until this time (ms).
    Retention { until_ms: i64 },
}

/// May an image be deleted now? Tiers never move backwards, so a move is only ever forwards.
pub fn may_delete(retain_until_ms: i64, legal_hold: bool, now_ms: i64) -> Result<(), Refusal> {
    if legal_hold {
        return Err(Refusal::LegalHold);
    }
    if now_ms < retain_until_ms {
        return Err(Refusal::Retention {
            until_ms: retain_until_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_age() {
        let p = TierPolicy {
            warm_after_days: 30,
            cold_after_days: 90,
            min_retention_days: 10,
        };
        assert_eq!(p.tier_for(0, 29 * DAY_MS), Tier::Hot);
        assert_eq!(p.tier_for(0, 30 * DAY_MS), Tier::Warm);
        assert_eq!(p.tier_for(0, 90 * DAY_MS), Tier::Cold);
        assert_eq!(
            p.tier_for(100, 0),
            Tier::Hot,
            "clock skew never tiers early"
        );
        assert!(
            TierPolicy {
                warm_after_days: 9,
                cold_after_days: 8,
                min_retention_days: 0
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn retention_and_holds_refuse_deletion() {
        let p = TierPolicy::default();
        let until = p.retain_until(0);
        assert_eq!(until, (7 * 365 + 2) * DAY_MS);
        assert_eq!(
            may_delete(until, false, until - 1),
            Err(Refusal::Retention { until_ms: until })
        );
        assert_eq!(may_delete(until, true, until + 1), Err(Refusal::LegalHold));
        assert_eq!(may_delete(until, false, until), Ok(()));
    }
}
