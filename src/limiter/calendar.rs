//! Calendar windows: caps per hour, day or month that reset at a wall-clock time in an IANA
//! zone (T-Mobile's brand cap at midnight America/Los_Angeles, Sendblue's line limits at
//! 03:00 America/New_York), and release at a local wall-clock time in a recipient's zone
//! (08:00 the next day). Integer PostgreSQL microseconds in and out; chrono only inside.
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

/// The first instant, on the local day after `t`'s local day in `tz`, whose local time is
/// `at` ("08:00 the next day in the recipient's zone").
pub fn next_day_at(t: Micros, tz: Tz, at: NaiveTime) -> Micros {
    let day = to_utc(t).with_timezone(&tz).date_naive() + Duration::days(1);
    resolve_local(tz, day.and_time(at))
}

/// [`next_day_at`] over several zones (an area code that spans zones): the latest of them,
/// so that it is never before `at` in any of them.
pub fn next_day_at_all(t: Micros, zones: &[Tz], at: NaiveTime) -> Option<Micros> {
    zones.iter().map(|&tz| next_day_at(t, tz, at)).max()
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
    fn eight_am_next_day_in_the_recipients_zone() {
        // Over the cap at 23:59 Pacific on Nov 22 (07:59 UTC Nov 23).
        let t = pg("2026-11-23T07:59:00Z");
        // A 212 number (New York): it is already Nov 23 02:59 there: 08:00 on Nov 24 EST.
        assert_eq!(next_day_at(t, NY, hm(8, 0)), pg("2026-11-24T13:00:00Z"));
        // An 808 number (Honolulu): still Nov 22 21:59 there: 08:00 on Nov 23 HST.
        assert_eq!(next_day_at(t, HNL, hm(8, 0)), pg("2026-11-23T18:00:00Z"));
        // An area code in two zones: never before 08:00 in either.
        assert_eq!(
            next_day_at_all(t, &[NY, HNL], hm(8, 0)),
            Some(pg("2026-11-24T13:00:00Z"))
        );
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
