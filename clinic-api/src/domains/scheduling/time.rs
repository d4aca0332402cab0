//! Local time in a location's IANA zone, and open-slot computation. Pure functions: no I/O.
//!
//! Templates and opening hours are wall-clock times (minutes since local midnight); everything
//! stored is an instant (milliseconds since the epoch). A wall time is turned into an instant on
//! its own date, so a 09:00 template stays at 09:00 local across a daylight-saving change. A
//! requested wall time that does not exist (the spring-forward gap) or exists twice (the
//! fall-back hour) is refused; template edges that fall in such an hour are resolved (a gap moves
//! to the first valid minute; an ambiguous start takes the earlier instant, an end the later).

use chrono::{Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

pub type Ms = i64;
const MINUTE: Ms = 60_000;

/// Why a local wall time cannot be booked.
#[derive(Debug, PartialEq, Eq)]
pub enum LocalTimeError {
    /// Skipped by a spring-forward change.
    Nonexistent,
    /// Repeated by a fall-back change; the two instants it could mean.
    Ambiguous { earlier: Ms, later: Ms },
}

/// `HH:MM` → minutes since midnight; `24:00` is the end of the day.
pub fn parse_hhmm(s: &str) -> Option<i64> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

pub fn fmt_hhmm(min: i64) -> String {
    format!("{:02}:{:02}", min / 60, min % 60)
}

/// A wall time as `YYYY-MM-DDTHH:MM` (seconds optional).
pub fn parse_local(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
        .ok()
}

/// The one instant a wall time names in `tz`.
pub fn local_instant(tz: Tz, t: NaiveDateTime) -> Result<Ms, LocalTimeError> {
    match tz.from_local_datetime(&t) {
        LocalResult::Single(d) => Ok(d.timestamp_millis()),
        LocalResult::Ambiguous(a, b) => Err(LocalTimeError::Ambiguous {
            earlier: a.timestamp_millis(),
            later: b.timestamp_millis(),
        }),
        LocalResult::None => Err(LocalTimeError::Nonexistent),
    }
}

/// A template edge (`minute` of `date`, up to 1440) as an instant, resolving DST edges.
pub fn resolve(tz: Tz, date: NaiveDate, minute: i64, is_end: bool) -> Ms {
    let (date, minute) = if minute >= 1440 {
        (date + Duration::days(1), minute - 1440)
    } else {
        (date, minute)
    };
    let mut t = date
        .and_hms_opt((minute / 60) as u32, (minute % 60) as u32, 0)
        .unwrap_or_default();
    // No zone has a gap longer than a few hours.
    for _ in 0..=24 * 60 {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(d) => return d.timestamp_millis(),
            LocalResult::Ambiguous(a, b) => {
                return if is_end { b } else { a }.timestamp_millis();
            }
            LocalResult::None => t += Duration::minutes(1),
        }
    }
    t.and_utc().timestamp_millis()
}

/// RFC 3339 with the zone's offset at that instant, e.g. `2026-11-02T09:00:00-05:00`.
pub fn local_rfc3339(tz: Tz, ms: Ms) -> String {
    tz.timestamp_millis_opt(ms)
        .single()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
        .unwrap_or_default()
}

/// The local date of an instant.
pub fn local_date(tz: Tz, ms: Ms) -> NaiveDate {
    tz.timestamp_millis_opt(ms)
        .single()
        .map(|d| d.date_naive())
        .unwrap_or_default()
}

/// Sorted, merged half-open intervals.
pub fn normalize(mut v: Vec<(Ms, Ms)>) -> Vec<(Ms, Ms)> {
    v.retain(|(a, b)| a < b);
    v.sort_unstable();
    let mut out: Vec<(Ms, Ms)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

pub fn intersect(a: &[(Ms, Ms)], b: &[(Ms, Ms)]) -> Vec<(Ms, Ms)> {
    let mut out = Vec::new();
    for &(a0, a1) in a {
        for &(b0, b1) in b {
            let (s, e) = (a0.max(b0), a1.min(b1));
            if s < e {
                out.push((s, e));
            }
        }
    }
    normalize(out)
}

pub fn subtract(a: &[(Ms, Ms)], b: &[(Ms, Ms)]) -> Vec<(Ms, Ms)> {
    let mut out = Vec::new();
    for &(mut s, e) in a {
        for &(b0, b1) in b {
            if b1 <= s || b0 >= e {
                continue;
            }
            if b0 > s {
                out.push((s, b0));
            }
            s = s.max(b1);
            if s >= e {
                break;
            }
        }
        if s < e {
            out.push((s, e));
        }
    }
    normalize(out)
}

pub fn overlaps(list: &[(Ms, Ms)], s: Ms, e: Ms) -> bool {
    list.iter().any(|&(a, b)| a < e && s < b)
}

/// A weekly template block: ISO weekday (1 = Monday), minutes, and the modality it is for.
#[derive(Clone, Debug)]
pub struct Block {
    pub weekday: i64,
    pub start_min: i64,
    pub end_min: i64,
    pub modality: String,
}

/// Time off (`off`) or extra hours, as instants.
#[derive(Clone, Debug)]
pub struct Exception {
    pub off: bool,
    pub starts_at: Ms,
    pub ends_at: Ms,
    pub modality: String,
}

/// Whether a block or exception for `block_modality` may host an appointment of `modality`.
pub fn modality_fits(block_modality: &str, modality: &str) -> bool {
    block_modality == "any" || block_modality == modality
}

/// When a provider can see patients of `modality` at a location, over `days` local dates from
/// `from`: template blocks (within opening hours for in-person care), plus extra hours, minus
/// time off.
pub fn availability(
    tz: Tz,
    from: NaiveDate,
    days: i64,
    templates: &[Block],
    exceptions: &[Exception],
    opening_hours: Option<&[(i64, i64, i64)]>,
    modality: &str,
) -> Vec<(Ms, Ms)> {
    let mut windows = Vec::new();
    let mut hours = Vec::new();
    for d in 0..days {
        let date = from + Duration::days(d);
        let weekday = date.weekday().number_from_monday() as i64;
        for b in templates
            .iter()
            .filter(|b| b.weekday == weekday && modality_fits(&b.modality, modality))
        {
            windows.push((
                resolve(tz, date, b.start_min, false),
                resolve(tz, date, b.end_min, true),
            ));
        }
        for &(wd, opens, closes) in opening_hours.unwrap_or_default() {
            if wd == weekday {
                hours.push((
                    resolve(tz, date, opens, false),
                    resolve(tz, date, closes, true),
                ));
            }
        }
    }
    let mut windows = normalize(windows);
    if opening_hours.is_some() {
        windows = intersect(&windows, &normalize(hours));
    }
    let range = [(
        resolve(tz, from, 0, false),
        resolve(tz, from + Duration::days(days), 0, false),
    )];
    let extra: Vec<(Ms, Ms)> = exceptions
        .iter()
        .filter(|x| !x.off && modality_fits(&x.modality, modality))
        .map(|x| (x.starts_at, x.ends_at))
        .collect();
    windows.extend(intersect(&normalize(extra), &range));
    let off: Vec<(Ms, Ms)> = exceptions
        .iter()
        .filter(|x| x.off && modality_fits(&x.modality, modality))
        .map(|x| (x.starts_at, x.ends_at))
        .collect();
    subtract(&normalize(windows), &normalize(off))
}

/// What a slot needs.
pub struct SlotRules<'a> {
    pub duration: Ms,
    pub buffer: Ms,
    pub step: Ms,
    /// No slot starts before this (now, or now plus a lead time).
    pub not_before: Ms,
    /// The provider's busy time (other appointments, to their buffer's end).
    pub busy: &'a [(Ms, Ms)],
    /// With a room needed: each room and its busy time.
    pub rooms: Option<&'a [RoomBusy]>,
}

/// A room and its busy time.
pub type RoomBusy = (String, Vec<(Ms, Ms)>);

/// Open slots inside `windows`: starts on the step grid from each window's start, the visit
/// inside the window, the visit plus buffer clear of the provider's (and one room's) busy time.
pub fn open_slots(windows: &[(Ms, Ms)], rules: &SlotRules) -> Vec<(Ms, Option<String>)> {
    let mut out = Vec::new();
    for &(a, b) in windows {
        let mut t = a;
        while t + rules.duration <= b {
            let busy_end = t + rules.duration + rules.buffer;
            if t >= rules.not_before && !overlaps(rules.busy, t, busy_end) {
                match rules.rooms {
                    None => out.push((t, None)),
                    Some(rooms) => {
                        if let Some((room, _)) =
                            rooms.iter().find(|(_, busy)| !overlaps(busy, t, busy_end))
                        {
                            out.push((t, Some(room.clone())));
                        }
                    }
                }
            }
            t += rules.step.max(MINUTE);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NY: Tz = chrono_tz::America::New_York;

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn gaps_and_repeats_are_refused() {
        // 2027-03-14 02:30 does not exist in New York; 2026-11-01 01:30 happens twice.
        assert_eq!(
            local_instant(NY, parse_local("2027-03-14T02:30").unwrap()),
            Err(LocalTimeError::Nonexistent)
        );
        match local_instant(NY, parse_local("2026-11-01T01:30").unwrap()) {
            Err(LocalTimeError::Ambiguous { earlier, later }) => {
                assert_eq!(later - earlier, 3_600_000)
            }
            other => panic!("expected ambiguous, got {other:?}"),
        }
        assert!(local_instant(NY, parse_local("2026-11-01T03:30").unwrap()).is_ok());
        assert_eq!(parse_hhmm("24:00"), Some(1440));
        assert_eq!(parse_hhmm("9:00"), None);
        assert_eq!(parse_hhmm("12:60"), None);
    }

    #[test]
    fn weekly_template_keeps_local_time_across_the_change() {
        let monday_9_to_10 = [Block {
            weekday: 1,
            start_min: 540,
            end_min: 600,
            modality: "any".into(),
        }];
        let w = availability(
            NY,
            date("2026-10-26"),
            14,
            &monday_9_to_10,
            &[],
            None,
            "in_person",
        );
        assert_eq!(w.len(), 2);
        assert_eq!(local_rfc3339(NY, w[0].0), "2026-10-26T09:00:00-04:00");
        assert_eq!(local_rfc3339(NY, w[1].0), "2026-11-02T09:00:00-05:00");
        // Same wall time, one more real hour between them than a plain week.
        assert_eq!(w[1].0 - w[0].0, 7 * 86_400_000 + 3_600_000);
    }

    #[test]
    fn slots_on_change_days_never_land_in_the_gap() {
        // Sunday 01:00-04:00 on the spring-forward day: 02:00-03:00 does not exist.
        let sunday = [Block {
            weekday: 7,
            start_min: 60,
            end_min: 240,
            modality: "any".into(),
        }];
        let w = availability(NY, date("2027-03-14"), 1, &sunday, &[], None, "in_person");
        let slots = open_slots(
            &w,
            &SlotRules {
                duration: 30 * MINUTE,
                buffer: 0,
                step: 30 * MINUTE,
                not_before: 0,
                busy: &[],
                rooms: None,
            },
        );
        let local: Vec<String> = slots.iter().map(|(t, _)| local_rfc3339(NY, *t)).collect();
        assert_eq!(
            local,
            [
                "2027-03-14T01:00:00-05:00",
                "2027-03-14T01:30:00-05:00",
                "2027-03-14T03:00:00-04:00",
                "2027-03-14T03:30:00-04:00"
            ]
        );
        // Fall-back day: 01:00-03:00 local is three real hours, 01:xx twice.
        let w = availability(NY, date("2026-11-01"), 1, &sunday, &[], None, "in_person");
        assert_eq!(w[0].1 - w[0].0, 4 * 3_600_000);
    }

    #[test]
    fn busy_time_time_off_rooms_and_hours() {
        let block = [Block {
            weekday: 1,
            start_min: 480,
            end_min: 720,
            modality: "in_person".into(),
        }];
        let day = date("2026-10-26");
        // Opening hours 09:00-17:00 cut the 08:00 start.
        let hours = [(1, 540, 1020)];
        let w = availability(NY, day, 1, &block, &[], Some(&hours), "in_person");
        assert_eq!(local_rfc3339(NY, w[0].0), "2026-10-26T09:00:00-04:00");
        // Telemedicine is not offered in an in-person block.
        assert!(availability(NY, day, 1, &block, &[], None, "telemedicine").is_empty());
        // Time off 10:00-11:00.
        let off = Exception {
            off: true,
            starts_at: resolve(NY, day, 600, false),
            ends_at: resolve(NY, day, 660, true),
            modality: "any".into(),
        };
        let w = availability(NY, day, 1, &block, &[off], Some(&hours), "in_person");
        assert_eq!(w.len(), 2);
        let nine = resolve(NY, day, 540, false);
        let rooms = vec![
            ("r1".to_string(), vec![(nine, nine + 30 * MINUTE)]),
            ("r2".to_string(), vec![(nine, nine + 60 * MINUTE)]),
        ];
        let slots = open_slots(
            &w,
            &SlotRules {
                duration: 30 * MINUTE,
                buffer: 10 * MINUTE,
                step: 15 * MINUTE,
                not_before: 0,
                busy: &[],
                rooms: Some(&rooms),
            },
        );
        // 09:00 has no free room; 09:30 gets r1 (the visit fits before the time off; the buffer
        // only has to be clear of busy time).
        assert_eq!(slots[0], (nine + 30 * MINUTE, Some("r1".into())));
        assert!(slots.iter().all(|(t, _)| *t != nine));
    }
}
