//! `clinic access-review`: stale accounts, staff without MFA, privileged roles, and disabled users
//! with live sessions (which must be none: disabling revokes sessions at once).

use serde::Serialize;

use crate::platform::authz::Role;
use crate::platform::db::Db;

#[derive(Debug, Serialize, sqlx::FromRow, Clone)]
pub struct AccountLine {
    pub clinic: String,
    pub username: String,
    pub role: String,
    pub last_login_at: Option<i64>,
    pub disabled_at: Option<i64>,
    pub mfa_enrolled_at: Option<i64>,
}

#[derive(Debug, Serialize, Default)]
pub struct AccessReview {
    pub stale_days: i64,
    pub stale: Vec<AccountLine>,
    pub staff_without_mfa: Vec<AccountLine>,
    pub privileged: Vec<AccountLine>,
    pub disabled_with_live_sessions: Vec<AccountLine>,
}

impl AccessReview {
    /// A failed review: a disabled account still holds a live session.
    pub fn has_violations(&self) -> bool {
        !self.disabled_with_live_sessions.is_empty()
    }
}

/// Runs the review over every tenant (needs the admin connection on PostgreSQL).
pub async fn run(
    db: &Db,
    now_ms: i64,
    stale_days: i64,
    idle_timeout_secs: i64,
) -> anyhow::Result<AccessReview> {
    let rows: Vec<AccountLine> = sqlx::query_as(
        "SELECT c.slug AS clinic, u.username, u.role, u.last_login_at, u.disabled_at, u.mfa_enrolled_at \
         FROM users u JOIN clinics c ON c.id = u.clinic_id ORDER BY c.slug, u.username",
    )
    .fetch_all(&db.pool)
    .await?;
    let live: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.slug, u.username FROM sessions s JOIN users u ON u.id = s.user_id JOIN clinics c ON c.id = s.clinic_id \
         WHERE s.revoked_at IS NULL AND s.expires_at > $1 AND s.last_seen_at > $2 AND u.disabled_at IS NOT NULL",
    )
    .bind(now_ms)
    .bind(now_ms - idle_timeout_secs * 1000)
    .fetch_all(&db.pool)
    .await?;
    let cutoff = now_ms - stale_days * 86_400_000;
    let mut review = AccessReview {
        stale_days,
        ..Default::default()
    };
    for r in rows {
        let role = Role::parse(&r.role);
        let active = r.disabled_at.is_none();
        if active && r.last_login_at.is_none_or(|t| t < cutoff) {
            review.stale.push(r.clone());
        }
        if active && role.is_some_and(Role::requires_mfa) && r.mfa_enrolled_at.is_none() {
            review.staff_without_mfa.push(r.clone());
        }
        if active && role.is_some_and(Role::is_privileged) {
            review.privileged.push(r.clone());
        }
        if live.iter().any(|(c, u)| *c == r.clinic && *u == r.username) {
            review.disabled_with_live_sessions.push(r);
        }
    }
    Ok(review)
}

/// Plain-text rendering for the terminal.
pub fn render(review: &AccessReview) -> String {
    let when = |t: Option<i64>| {
        t.map(crate::platform::clock::rfc3339)
            .unwrap_or_else(|| "never".into())
    };
    let mut out = String::new();
    let mut section = |title: String, lines: &[AccountLine]| {
        out.push_str(&format!("{title}: {}\n", lines.len()));
        for l in lines {
            out.push_str(&format!(
                "  {:<12} {:<20} {:<18} last login {}\n",
                l.clinic,
                l.username,
                l.role,
                when(l.last_login_at)
            ));
        }
    };
    section(
        format!("stale accounts (no login in {} days)", review.stale_days),
        &review.stale,
    );
    section(
        "accounts that must have MFA but have not enrolled".into(),
        &review.staff_without_mfa,
    );
    section(
        "privileged accounts (owner, clinic_admin)".into(),
        &review.privileged,
    );
    section(
        "disabled accounts with live sessions (must be none)".into(),
        &review.disabled_with_live_sessions,
    );
    out
}
