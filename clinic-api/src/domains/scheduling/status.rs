//! An appointment's status and the one table of the moves between statuses. Pure: the SQL that
//! filters by status is derived from here ([`active_sql`]), and so is every status change's
//! check (the appointments' `transition` refuses what [`Status::can_become`] refuses).

use std::fmt;

/// Where an appointment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// A patient's tentative hold on a slot, until `hold_expires_at`.
    Held,
    Booked,
    CheckedIn,
    Completed,
    Cancelled,
    NoShow,
    /// A hold that ran out (kept for the record; shown to nobody).
    Expired,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Held,
        Status::Booked,
        Status::CheckedIn,
        Status::Completed,
        Status::Cancelled,
        Status::NoShow,
        Status::Expired,
    ];

    /// The statuses in which an appointment holds its provider, room and patient (a hold only
    /// while it lasts): double booking is judged against these, on both backends (the
    /// PostgreSQL exclusion constraints name the same list; a test compares them).
    pub const HOLDING: [Status; 3] = [Status::Held, Status::Booked, Status::CheckedIn];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Held => "held",
            Status::Booked => "booked",
            Status::CheckedIn => "checked_in",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
            Status::NoShow => "no_show",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// THE transition table. A reschedule keeps `booked`.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Held, Booked | Cancelled | Expired)
                | (Booked, Booked | CheckedIn | Completed | Cancelled | NoShow)
                | (CheckedIn, Completed)
        )
    }

    /// The statuses an appointment may become `to` from.
    pub fn sources(to: Status) -> Vec<Status> {
        Status::ALL
            .into_iter()
            .filter(|s| s.can_become(to))
            .collect()
    }

    /// Whether nothing can follow.
    pub fn is_final(self) -> bool {
        Status::ALL.into_iter().all(|to| !self.can_become(to))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SQL: an appointment that holds its provider, room and patient (expired holds do not), with
/// `$NOW` for the placeholder of the current time.
pub fn active_sql() -> String {
    let lasting: Vec<String> = Status::HOLDING
        .iter()
        .filter(|s| **s != Status::Held)
        .map(|s| format!("'{s}'"))
        .collect();
    format!(
        "(status IN ({}) OR (status = '{}' AND hold_expires_at > $NOW))",
        lasting.join(", "),
        Status::Held
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    #[test]
    fn statuses_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("entered_in_error"), None);
    }

    #[test]
    fn the_table_allows_the_clinics_moves_and_nothing_else() {
        assert_eq!(Status::sources(Cancelled), vec![Held, Booked]);
        assert_eq!(Status::sources(CheckedIn), vec![Booked]);
        assert_eq!(Status::sources(NoShow), vec![Booked]);
        assert_eq!(Status::sources(Completed), vec![Booked, CheckedIn]);
        assert_eq!(Status::sources(Expired), vec![Held]);
        assert_eq!(Status::sources(Held), vec![]);
        // A checked-in patient is seen or the visit completes; it is not cancelled any more.
        assert!(!CheckedIn.can_become(Cancelled));
        for s in [Completed, Cancelled, NoShow, Expired] {
            assert!(s.is_final(), "{s} is final");
        }
        for s in [Held, Booked, CheckedIn] {
            assert!(!s.is_final(), "{s} goes on");
        }
    }

    #[test]
    fn the_active_filter_names_exactly_the_holding_statuses() {
        let sql = active_sql();
        assert_eq!(
            sql,
            "(status IN ('booked', 'checked_in') OR (status = 'held' AND hold_expires_at > $NOW))"
        );
        for s in Status::ALL {
            assert_eq!(
                sql.contains(&format!("'{s}'")),
                Status::HOLDING.contains(&s),
                "{s}"
            );
        }
    }

    #[test]
    fn the_postgres_exclusion_constraints_name_the_holding_statuses() {
        let migration = include_str!("../../../../migrations/postgres/0004_scheduling.sql");
        let holding: Vec<String> = Status::HOLDING.iter().map(|s| format!("'{s}'")).collect();
        let clause = format!("status IN ({})", holding.join(", "));
        let constraints = migration.matches("EXCLUDE USING gist").count();
        assert_eq!(constraints, 3, "provider, room and patient");
        assert_eq!(
            migration.matches(&clause).count(),
            constraints,
            "every exclusion constraint filters on {clause}"
        );
    }
}
