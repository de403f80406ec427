//! Calendar windows: caps per hour, day or month that reset at a wall-clock time in an IANA
//! zone (T-Mobile's brand cap at midnight America/Los_Angeles, Sendblue's line limits at
//! 03:00 America/New_York), and release at a local wall-clock time in a recipient's zone
//! (08:00 once the cap has reset). Integer PostgreSQL microseconds in and out; chrono only inside.
//!
//! Daylight saving is resolved explicitly: a wall-clock time that does not exist (clocks jump
//! forward over it) resolves to the instant the clocks jump, and one that exists twice
//! (clocks fall back) to the first of the two.

use super::Micros;
use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00 UTC).
pub const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

fn to_utc(t: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.saturating_add(PG_EPOCH_UNIX_US))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn from_utc(d: DateTime<Utc>) -> Micros {
    d.timestamp_micros() - PG_EPOCH_UNIX_US
}

/// The instant a local wall-clock time names in `tz`. A time in a spring-forward gap names
/// the instant the clocks jump (the first valid instant after it); a time that repeats in a
/// fall-back names its first occurrence.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> Micros {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(d) => from_utc(d.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => from_utc(first.with_timezone(&Utc)),
        LocalResult::None => {
            // The clocks jump over `local`: the jump is the first instant whose local time is
            // later than `local` (local time only moves forward across a gap). Bisect on whole
            // seconds, which is how zones change offsets.
            let mut lo = Utc.from_utc_datetime(&(local - Duration::hours(26)));
            let mut hi = Utc.from_utc_datetime(&(local + Duration::hours(26)));
            while (hi - lo).num_seconds() > 1 {
                let mid = lo + Duration::seconds((hi - lo).num_seconds() / 2);
                if mid.with_timezone(&tz).naive_local() <= local {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            from_utc(hi)
        }
    }
}

/// How long a calendar window lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Month,
}

/// A calendar window: per `period`, resetting at `reset` local time in `tz` (for `Hour`, only
/// the minutes and seconds of `reset` count; for `Month`, windows start on the 1st).
#[derive(Clone, Copy, Debug)]
pub struct Calendar {
    pub period: Period,
    pub reset: NaiveTime,
    pub tz: Tz,
}

impl Calendar {
    /// The reset instant of the window whose local anchor is `local`'s period, shifted by `k`
    /// periods.
    fn reset_of(&self, local: NaiveDateTime, k: i32) -> Micros {
        let naive = match self.period {
            Period::Hour => {
                let h = local
                    .date()
                    .and_hms_opt(local.hour(), 0, 0)
                    .expect("valid hour")
                    + Duration::hours(k as i64);
                h + Duration::minutes(self.reset.minute() as i64)
                    + Duration::seconds(self.reset.second() as i64)
            }
            Period::Day => (local.date() + Duration::days(k as i64)).and_time(self.reset),
            Period::Month => {
                let months = local.year() * 12 + local.month0() as i32 + k;
                let first = NaiveDate::from_ymd_opt(
                    months.div_euclid(12),
                    months.rem_euclid(12) as u32 + 1,
                    1,
                )
                .expect("valid month");
                first.and_time(self.reset)
            }
        };
        resolve_local(self.tz, naive)
    }

    /// The start of the window that contains `t`: the latest reset at or before it.
    pub fn window_start(&self, t: Micros) -> Micros {
        let local = to_utc(t).with_timezone(&self.tz).naive_local();
        let mut k = 1;
        loop {
            let r = self.reset_of(local, k);
            if r <= t {
                return r;
            }
            k -= 1;
        }
    }

    /// The end of the window that contains `t`: the first reset after it.
    pub fn window_end(&self, t: Micros) -> Micros {
        let local = to_utc(t).with_timezone(&self.tz).naive_local();
        let mut k = -1;
        loop {
            let r = self.reset_of(local, k);
            if r > t {
                return r;
            }
            k += 1;
        }
    }
}

/// The first instant at or after `t` whose local time in `tz` is `at` ("08:00 in the
/// recipient's zone, once the cap has reset"). On a day where `at` does not exist the jump
/// instant counts; where it exists twice, the first.
pub fn next_local_at(t: Micros, tz: Tz, at: NaiveTime) -> Micros {
    let day = to_utc(t).with_timezone(&tz).date_naive();
    (-1..=2)
        .map(|k| resolve_local(tz, (day + Duration::days(k)).and_time(at)))
        .find(|&r| r >= t)
        .unwrap_or(t)
}

/// [`next_local_at`] over several zones (an area code that spans zones): the latest of them,
/// so that it is never before `at` in any of them.
pub fn next_local_at_all(t: Micros, zones: &[Tz], at: NaiveTime) -> Option<Micros> {
    zones.iter().map(|&tz| next_local_at(t, tz, at)).max()
}

/// The North American area code of a recipient written as E.164 (`+12125550100`) or as
/// ten or eleven digits with any punctuation; `None` if it is not a NANP number.
pub fn nanp_area_code(recipient: &str) -> Option<[u8; 3]> {
    let mut digits = [0u8; 11];
    let mut n = 0;
    for b in recipient.bytes() {
        match b {
            b'0'..=b'9' => {
                if n == digits.len() {
                    return None;
                }
                digits[n] = b;
                n += 1;
            }
            b'+' | b' ' | b'-' | b'.' | b'(' | b')' => {}
            _ => return None,
        }
    }
    let national = match n {
        11 if digits[0] == b'1' => &digits[1..11],
        10 => &digits[..10],
        _ => return None,
    };
    // NPA and exchange both start with 2-9.
    if national[0] < b'2' || national[3] < b'2' {
        return None;
    }
    Some([national[0], national[1], national[2]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pg(utc: &str) -> Micros {
        let d = DateTime::parse_from_rfc3339(utc)
            .expect("rfc3339")
            .with_timezone(&Utc);
        from_utc(d)
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("time")
    }

    const LA: Tz = chrono_tz::America::Los_Angeles;
    const NY: Tz = chrono_tz::America::New_York;
    const HNL: Tz = chrono_tz::Pacific::Honolulu;

    #[test]
    fn t_mobile_cap_resets_at_midnight_pacific() {
        let c = Calendar {
            period: Period::Day,
            reset: hm(0, 0),
            tz: LA,
        };
        // 23:59 PST on Nov 22 is 07:59 UTC on Nov 23.
        let t = pg("2026-11-23T07:59:00Z");
        assert_eq!(c.window_start(t), pg("2026-11-22T08:00:00Z"));
        assert_eq!(c.window_end(t), pg("2026-11-23T08:00:00Z"));
        // Summer: midnight PDT is 07:00 UTC.
        let t = pg("2026-07-01T12:00:00Z");
        assert_eq!(c.window_start(t), pg("2026-07-01T07:00:00Z"));
    }

    #[test]
    fn sendblue_limits_reset_at_three_eastern() {
        let c = Calendar {
            period: Period::Day,
            reset: hm(3, 0),
            tz: NY,
        };
        // 02:00 EST on Nov 22 (07:00 UTC) is still in the window that began at 03:00 on Nov 21.
        let t = pg("2026-11-22T07:00:00Z");
        assert_eq!(c.window_start(t), pg("2026-11-21T08:00:00Z"));
        assert_eq!(c.window_end(t), pg("2026-11-22T08:00:00Z"));
    }

    #[test]
    fn a_reset_inside_the_spring_forward_gap_is_the_jump() {
        // 2026-03-08: Los Angeles clocks go from 02:00 PST straight to 03:00 PDT (10:00 UTC).
        let c = Calendar {
            period: Period::Day,
            reset: hm(2, 30),
            tz: LA,
        };
        let t = pg("2026-03-08T12:00:00Z");
        assert_eq!(c.window_start(t), pg("2026-03-08T10:00:00Z"));
        assert_eq!(
            resolve_local(
                LA,
                NaiveDate::from_ymd_opt(2026, 3, 8)
                    .unwrap()
                    .and_time(hm(2, 30))
            ),
            pg("2026-03-08T10:00:00Z")
        );
    }

    #[test]
    fn a_reset_in_the_repeated_hour_is_the_first() {
        // 2026-11-01: 01:30 happens twice in Los Angeles, first at 08:30 UTC (PDT).
        let local = NaiveDate::from_ymd_opt(2026, 11, 1)
            .unwrap()
            .and_time(hm(1, 30));
        assert_eq!(resolve_local(LA, local), pg("2026-11-01T08:30:00Z"));
        let c = Calendar {
            period: Period::Day,
            reset: hm(1, 30),
            tz: LA,
        };
        // The day's window is 25 hours long.
        let start = c.window_start(pg("2026-11-01T12:00:00Z"));
        let end = c.window_end(pg("2026-11-01T12:00:00Z"));
        assert_eq!((end - start) / 3_600_000_000, 25);
    }

    #[test]
    fn monthly_and_hourly_windows() {
        let m = Calendar {
            period: Period::Month,
            reset: hm(0, 0),
            tz: NY,
        };
        let t = pg("2026-12-31T23:00:00Z"); // 18:00 EST Dec 31
        assert_eq!(m.window_start(t), pg("2026-12-01T05:00:00Z"));
        assert_eq!(m.window_end(t), pg("2027-01-01T05:00:00Z"));
        let h = Calendar {
            period: Period::Hour,
            reset: hm(0, 0),
            tz: NY,
        };
        let t = pg("2026-11-22T15:42:10Z");
        assert_eq!(h.window_start(t), pg("2026-11-22T15:00:00Z"));
        assert_eq!(h.window_end(t), pg("2026-11-22T16:00:00Z"));
    }

    #[test]
    fn eight_am_after_the_reset_in_the_recipients_zone() {
        // Over T-Mobile's cap at 23:59 Pacific on Nov 22: the cap resets at midnight Pacific
        // (08:00 UTC Nov 23), and the message goes at the next 08:00 in its own zone.
        let reset = pg("2026-11-23T08:00:00Z");
        // A 212 number (New York): 08:00 EST on Nov 23.
        assert_eq!(
            next_local_at(reset, NY, hm(8, 0)),
            pg("2026-11-23T13:00:00Z")
        );
        // An 808 number (Honolulu): 08:00 HST on Nov 23.
        assert_eq!(
            next_local_at(reset, HNL, hm(8, 0)),
            pg("2026-11-23T18:00:00Z")
        );
        // Exactly 08:00 counts as at-or-after.
        let eight = pg("2026-11-23T13:00:00Z");
        assert_eq!(next_local_at(eight, NY, hm(8, 0)), eight);
        // An area code in two zones: never before 08:00 in either.
        assert_eq!(
            next_local_at_all(reset, &[NY, HNL], hm(8, 0)),
            Some(pg("2026-11-23T18:00:00Z"))
        );
        // 02:30 on the spring-forward day does not exist in Los Angeles: the jump instant.
        assert_eq!(
            next_local_at(pg("2026-03-08T09:00:00Z"), LA, hm(2, 30)),
            pg("2026-03-08T10:00:00Z")
        );
        // 01:30 on the fall-back day happens twice: the first.
        assert_eq!(
            next_local_at(pg("2026-11-01T07:00:00Z"), LA, hm(1, 30)),
            pg("2026-11-01T08:30:00Z")
        );
    }

    #[test]
    fn area_codes_of_north_american_numbers() {
        assert_eq!(nanp_area_code("+12125550100"), Some(*b"212"));
        assert_eq!(nanp_area_code("(808) 555-0100"), Some(*b"808"));
        assert_eq!(nanp_area_code("1-415-555-0100"), Some(*b"415"));
        assert_eq!(nanp_area_code("+442071234567"), None); // UK
        assert_eq!(nanp_area_code("+11125550100"), None); // NPA cannot start with 1
        assert_eq!(nanp_area_code("2125550100x9"), None);
        assert_eq!(nanp_area_code(""), None);
    }

    proptest! {
        /// Windows tile time: every instant is in exactly one, and each ends where the next
        /// begins, across DST changes in both directions.
        #[test]
        fn windows_tile_time(secs in 0i64..(40 * 366 * 86_400), period in 0u8..3, h in 0u32..24, m in 0u32..60, zone in 0usize..3) {
            let tz = [LA, NY, HNL][zone];
            let period = [Period::Hour, Period::Day, Period::Month][period as usize];
            let c = Calendar { period, reset: hm(h, m), tz };
            let t = secs * 1_000_000;
            let (s, e) = (c.window_start(t), c.window_end(t));
            prop_assert!(s <= t && t < e, "{} <= {} < {}", s, t, e);
            prop_assert_eq!(c.window_start(e), e);
            prop_assert_eq!(c.window_end(e - 1), e);
        }
    }
}
