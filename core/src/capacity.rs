//! Capacity planning arithmetic: how long a volume takes under one rate limit or calendar cap
//! (from a full bucket and an unused window), how much one sender passes within a deadline,
//! and how many senders a deadline needs. Also the two estimates `explain` makes for a
//! waiting message: its weighted share of a shared limit and the cap window it fits in.
//! Integer microseconds in and out (any fixed epoch); no clock.

use crate::calendar::Calendar;
use crate::contact::Window;
use crate::gcra::Rate;
use crate::Micros;

/// The most messages one plan may count (10¹²).
pub const MAX_MESSAGES: i64 = 1_000_000_000_000;

/// The longest deadline a plan accepts: 100 years of 366 days.
pub const MAX_DEADLINE_US: Micros = 100 * 366 * 86_400_000_000;

/// Windows followed one by one before the rest is extrapolated at their average length.
const WINDOWS_FOLLOWED: u64 = 1_000;

/// Later windows `explain` follows for a message that does not fit the current one.
const WINDOWS_EXPLAINED: u32 = 400;

/// What one limit or cap means for a volume: how long it takes from a full bucket or an
/// unused window (`time`, in µs), and what one sender passes through it within the deadline
/// (`room`, None without a deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub time: Micros,
    pub room: Option<i128>,
}

/// How a limit stands against a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The sender's own limit: this many senders like it (at least 1) meet the deadline.
    Senders(i64),
    /// A shared limit that passes the whole volume within the deadline.
    Fits,
    /// A shared limit that alone misses the deadline (more senders do not help).
    Misses,
}

/// The segments of the part `share / total_share` of `messages` messages of `cost` segments
/// each (the messages rounded to the nearest whole one).
pub fn share_volume(messages: i64, share: f64, total_share: f64, cost: u64) -> u64 {
    ((messages as f64) * share / total_share).round() as u64 * cost
}

/// [`rate_time`] and [`rate_room`] of `volume` segments through `rate`.
pub fn rate_estimate(rate: &Rate, volume: u64, deadline_us: Option<Micros>) -> Estimate {
    Estimate {
        time: rate_time(rate, volume),
        room: deadline_us.map(|d| rate_room(rate, d)),
    }
}

/// How long `volume` segments take through `rate` from a full bucket: what goes at once goes
/// now, the rest at the rate (saturating at `Micros::MAX`).
pub fn rate_time(rate: &Rate, volume: u64) -> Micros {
    let t = volume.saturating_sub(rate.max_at_once()) as i128 * rate.period_us as i128
        / rate.count as i128;
    t.min(i64::MAX as i128) as i64
}

/// What one sender's bucket of `rate` passes within `deadline_us`, starting full.
pub fn rate_room(rate: &Rate, deadline_us: Micros) -> i128 {
    rate.max_at_once() as i128 + deadline_us as i128 * rate.count as i128 / rate.period_us as i128
}

/// [`cap_time`] and [`cap_room`] of `volume` segments under a cap of `cal` that allows
/// `allowed` per window (0 counts as 1), starting at `now` in an unused window.
pub fn cap_estimate(
    cal: &Calendar,
    allowed: u64,
    volume: u64,
    now: Micros,
    deadline_us: Option<Micros>,
) -> Estimate {
    Estimate {
        time: cap_time(cal, allowed, volume, now),
        room: deadline_us.map(|d| cap_room(cal, allowed, now, d)),
    }
}

/// How long from `now` until `volume` segments have all gone under a cap of `cal` that allows
/// `allowed` per window (0 counts as 1): the current window (unused) takes what it allows,
/// each later one a whole allowance; the answer is the start of the last window needed.
pub fn cap_time(cal: &Calendar, allowed: u64, volume: u64, now: Micros) -> Micros {
    let allowed = allowed.max(1);
    // Whole windows after the current one that the volume needs.
    let k = volume.saturating_sub(allowed).div_ceil(allowed);
    let at = if k == 0 {
        now
    } else {
        window_after(cal, cal.window_end(now), k - 1)
    };
    at.saturating_sub(now)
}

/// What a cap of `cal` that allows `allowed` per window (0 counts as 1) passes within
/// `deadline_us` of `now`: a whole allowance in every window that starts before the deadline,
/// the current one included (past a thousand windows, the rest at their average length).
pub fn cap_room(cal: &Calendar, allowed: u64, now: Micros, deadline_us: Micros) -> i128 {
    windows_before(cal, now, now.saturating_add(deadline_us)) * allowed.max(1) as i128
}

/// How many windows of `cal` start before `end`, counting the one that contains `now` (at
/// least 1; past a thousand windows, the rest at the average length of those).
pub fn windows_before(cal: &Calendar, now: Micros, end: Micros) -> i128 {
    let first_end = cal.window_end(now);
    let mut n = 1i128;
    let mut e = first_end;
    while e < end && n < WINDOWS_FOLLOWED as i128 {
        e = cal.window_end(e);
        n += 1;
    }
    if e < end {
        // Past a thousand windows: the rest at the average length so far.
        let avg = ((e - first_end) / (n as i64 - 1)).max(1);
        n += ((end - e) / avg) as i128 + 1;
    }
    n
}

/// The start of the window `k` windows after the one that starts at `start` (past a thousand,
/// at the average length of the first thousand).
pub fn window_after(cal: &Calendar, start: Micros, k: u64) -> Micros {
    let mut t = start;
    let n = k.min(WINDOWS_FOLLOWED);
    for _ in 0..n {
        t = cal.window_end(t);
    }
    if k > n {
        let avg = (t - start) / n as i64;
        t = t.saturating_add(avg.saturating_mul((k - n) as i64));
    }
    t
}

/// How `volume` segments stand against a deadline under a limit through which one sender
/// passes `room` within it: `own` when the limit is each sender's own (then more senders
/// split the volume), otherwise it is shared by all of them.
pub fn against_deadline(volume: u64, room: i128, own: bool) -> Verdict {
    if own {
        Verdict::Senders(senders_needed(volume, room))
    } else if volume as i128 > room {
        Verdict::Misses
    } else {
        Verdict::Fits
    }
}

/// How many senders, each passing `room` (at least 1), pass `volume` together (at least 1).
pub fn senders_needed(volume: u64, room: i128) -> i64 {
    let room = room.max(1);
    let k = ((volume as i128 + room - 1) / room) as i64;
    k.max(1)
}

/// What a queue whose messages need `need` segments must see go through a limit it shares,
/// by weight, with other queues waiting under it: its part is `weight / (weight +
/// their_weight)`, so the limit passes `need` scaled up by the inverse (rounded up). With no
/// other queue waiting (`others == 0`), just `need`.
pub fn weighted_need(need: u64, others: i64, their_weight: i64, weight: i64) -> u64 {
    if others > 0 {
        ((need as u128 * (weight + their_weight) as u128).div_ceil(weight.max(1) as u128))
            .min(u64::MAX as u128) as u64
    } else {
        need
    }
}

/// When `need` more segments fit under a cap of `cal` that allows `allowed` per window (0
/// counts as 1) and has `spent` in the window that ends at `window_end`: `now` if they fit
/// it, otherwise the start of the window in which the rest has had whole allowances
/// (followed for at most 400 windows).
pub fn cap_ready_at(
    cal: &Calendar,
    allowed: u64,
    spent: u64,
    need: u64,
    window_end: Micros,
    now: Micros,
) -> Micros {
    let allowed = allowed.max(1);
    let mut at = now;
    let mut over = (spent + need).saturating_sub(allowed);
    let mut end = window_end;
    // Each later window gives a whole allowance.
    let mut windows = 0;
    while over > 0 && windows < WINDOWS_EXPLAINED {
        at = end;
        end = cal.window_end(end);
        over = over.saturating_sub(allowed);
        windows += 1;
    }
    at
}

/// What a contact cap of a line (at most `max` distinct contacts per `window`) means for
/// `contacts` contacts it would count: how long one line takes to count them all from an
/// unused window (calendar windows as a cap's, a rolling window releasing `max` more each
/// period), and what one line takes on within the deadline *at the rule's steady pace*:
/// `max` per window's length (so "10,000 new contacts a day" at 50 a day needs 200 lines,
/// whatever the hour), and at least one window's `max` for a shorter deadline.
pub fn contact_estimate(
    window: &Window,
    max: u64,
    contacts: u64,
    now: Micros,
    deadline_us: Option<Micros>,
) -> Estimate {
    let max = max.max(1);
    let (time, length) = match window {
        Window::Calendar(cal) => (
            cap_time(cal, max, contacts, now),
            cal.window_end(now) - cal.window_start(now),
        ),
        Window::Rolling(p) => {
            let later = contacts.div_ceil(max).saturating_sub(1) as i128;
            ((later * *p as i128).min(i64::MAX as i128) as Micros, *p)
        }
    };
    Estimate {
        time,
        room: deadline_us
            .map(|d| (max as i128 * d as i128 / length.max(1) as i128).max(max as i128)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Period;
    use chrono::NaiveTime;

    const SEC: Micros = 1_000_000;
    const HOUR: Micros = 3_600 * SEC;
    const DAY: Micros = 24 * HOUR;

    fn cal(period: Period) -> Calendar {
        Calendar {
            period,
            reset: NaiveTime::from_hms_opt(0, 0, 0).expect("midnight"),
            tz: chrono_tz::UTC,
        }
    }

    fn rate(count: u64, period_us: u64, burst: u64) -> Rate {
        Rate::new(count, period_us, burst).expect("valid rate")
    }

    #[test]
    fn share_volume_rounds_messages_then_counts_segments() {
        assert_eq!(share_volume(10, 1.0, 3.0, 1), 3);
        assert_eq!(share_volume(10, 2.0, 3.0, 2), 14); // 6.67 → 7 messages, 2 segments each
        assert_eq!(share_volume(10, 1.0, 1.0, 3), 30);
        assert_eq!(share_volume(0, 1.0, 1.0, 5), 0);
        assert_eq!(
            share_volume(MAX_MESSAGES, 1.0, 1.0, 1_000_000),
            1_000_000_000_000_000_000
        );
    }

    #[test]
    fn rate_time_sends_the_burst_at_once_then_at_the_rate() {
        let r = rate(1, SEC as u64, 10);
        assert_eq!(rate_time(&r, 0), 0);
        assert_eq!(rate_time(&r, 10), 0);
        assert_eq!(rate_time(&r, 11), SEC);
        assert_eq!(rate_time(&r, 3_610), 3_600 * SEC);
        // A window counts its whole count at once.
        let w = Rate::window(100, 60 * SEC as u64).expect("valid window");
        assert_eq!(rate_time(&w, 100), 0);
        assert_eq!(rate_time(&w, 250), 90 * SEC);
        // Rounded down to the microsecond.
        let third = rate(3, SEC as u64, 1);
        assert_eq!(rate_time(&third, 2), 333_333);
        // Saturates rather than wrapping.
        let slow = rate(1, 31 * DAY as u64, 1);
        assert_eq!(rate_time(&slow, u64::MAX), Micros::MAX);
    }

    #[test]
    fn rate_room_is_the_burst_and_what_the_deadline_refills() {
        let r = rate(1, SEC as u64, 10);
        assert_eq!(rate_room(&r, 0), 10);
        assert_eq!(rate_room(&r, 30 * 60 * SEC), 10 + 1_800);
        assert_eq!(rate_room(&r, SEC - 1), 10);
        let w = Rate::window(100, 60 * SEC as u64).expect("valid window");
        assert_eq!(rate_room(&w, 60 * SEC), 200);
        assert_eq!(
            rate_estimate(&r, 11, Some(SEC)),
            Estimate {
                time: SEC,
                room: Some(11)
            }
        );
        assert_eq!(rate_estimate(&r, 11, None).room, None);
    }

    #[test]
    fn window_after_follows_then_extrapolates() {
        let h = cal(Period::Hour);
        assert_eq!(window_after(&h, 0, 0), 0);
        assert_eq!(window_after(&h, 0, 1), HOUR);
        assert_eq!(window_after(&h, 0, 1_000), 1_000 * HOUR);
        assert_eq!(window_after(&h, 0, 5_000), 5_000 * HOUR);
        // Months differ in length: the first thousand are followed exactly.
        let m = cal(Period::Month);
        let jan = m.window_start(0);
        assert_eq!(window_after(&m, jan, 1), 31 * DAY);
        assert_eq!(window_after(&m, jan, 2), (31 + 29) * DAY); // 2000 is a leap year
    }

    #[test]
    fn cap_time_counts_whole_windows_after_the_current_one() {
        let d = cal(Period::Day);
        let now = 6 * HOUR; // 06:00 on day 0: the current window ends at 24:00
        assert_eq!(cap_time(&d, 100, 0, now), 0);
        assert_eq!(cap_time(&d, 100, 100, now), 0);
        // One more: the next window, which starts in 18 hours.
        assert_eq!(cap_time(&d, 100, 101, now), 18 * HOUR);
        assert_eq!(cap_time(&d, 100, 200, now), 18 * HOUR);
        assert_eq!(cap_time(&d, 100, 201, now), 18 * HOUR + DAY);
        // A cap that allows nothing counts as allowing one.
        assert_eq!(cap_time(&d, 0, 1, now), 0);
        assert_eq!(cap_time(&d, 0, 3, now), 18 * HOUR + DAY);
    }

    #[test]
    fn windows_before_counts_the_current_one() {
        let h = cal(Period::Hour);
        let now = 30 * 60 * SEC; // 00:30
        assert_eq!(windows_before(&h, now, now), 1);
        assert_eq!(windows_before(&h, now, HOUR), 1);
        assert_eq!(windows_before(&h, now, HOUR + 1), 2);
        assert_eq!(windows_before(&h, now, 8 * HOUR + 1), 9);
        // Past a thousand: extrapolated (the window that starts at `end` counts as well).
        assert_eq!(windows_before(&h, now, 999 * HOUR + 1), 1_000);
        assert_eq!(windows_before(&h, now, 2_000 * HOUR), 2_001);
        assert_eq!(windows_before(&h, now, 2_000 * HOUR + 1), 2_001);
    }

    #[test]
    fn cap_room_is_an_allowance_per_window_started() {
        let d = cal(Period::Day);
        let now = 6 * HOUR;
        assert_eq!(cap_room(&d, 100, now, HOUR), 100);
        assert_eq!(cap_room(&d, 100, now, 18 * HOUR), 100);
        assert_eq!(cap_room(&d, 100, now, 18 * HOUR + 1), 200);
        assert_eq!(cap_room(&d, 0, now, 3 * DAY), 4);
        assert_eq!(
            cap_estimate(&d, 100, 150, now, Some(DAY)),
            Estimate {
                time: 18 * HOUR,
                room: Some(200)
            }
        );
        assert_eq!(cap_estimate(&d, 100, 150, now, None).room, None);
    }

    #[test]
    fn deadline_verdicts() {
        assert_eq!(against_deadline(0, 10, true), Verdict::Senders(1));
        assert_eq!(against_deadline(10, 10, true), Verdict::Senders(1));
        assert_eq!(against_deadline(11, 10, true), Verdict::Senders(2));
        assert_eq!(against_deadline(3_600, 1_810, true), Verdict::Senders(2));
        assert_eq!(against_deadline(5, 0, true), Verdict::Senders(5));
        assert_eq!(against_deadline(10, 10, false), Verdict::Fits);
        assert_eq!(against_deadline(11, 10, false), Verdict::Misses);
    }

    #[test]
    fn weighted_need_scales_by_the_share() {
        assert_eq!(weighted_need(10, 0, 5, 1), 10);
        assert_eq!(weighted_need(10, 1, 1, 1), 20);
        assert_eq!(weighted_need(10, 2, 1, 2), 15);
        assert_eq!(weighted_need(10, 2, 2, 1), 30);
        assert_eq!(weighted_need(1, 1, 1, 2), 2); // 1.5 rounded up
        assert_eq!(weighted_need(u64::MAX, 1, 1, 1), u64::MAX);
    }

    #[test]
    fn cap_ready_at_finds_the_window_that_fits() {
        let d = cal(Period::Day);
        let now = 6 * HOUR;
        let end = DAY;
        assert_eq!(cap_ready_at(&d, 100, 90, 10, end, now), now);
        assert_eq!(cap_ready_at(&d, 100, 90, 11, end, now), DAY);
        assert_eq!(cap_ready_at(&d, 100, 90, 110, end, now), DAY);
        assert_eq!(cap_ready_at(&d, 100, 90, 111, end, now), 2 * DAY);
        assert_eq!(cap_ready_at(&d, 0, 0, 2, end, now), DAY);
        // Followed for 400 windows at most.
        assert_eq!(cap_ready_at(&d, 1, 0, 10_000, end, now), 400 * DAY);
    }

    #[test]
    fn contact_estimate_plans_lines_at_the_rules_daily_pace() {
        let w = Window::Calendar(cal(Period::Day));
        let now = 6 * HOUR;
        // Sendblue: 10,000 new contacts a day at 50 per line and day need 200 lines, at any
        // hour; a week's 70,000 need as many.
        let e = contact_estimate(&w, 50, 10_000, now, Some(DAY));
        assert_eq!(e.room, Some(50));
        assert_eq!(senders_needed(10_000, e.room.unwrap_or(0)), 200);
        let week = contact_estimate(&w, 50, 70_000, now, Some(7 * DAY));
        assert_eq!(senders_needed(70_000, week.room.unwrap_or(0)), 200);
        // A shorter deadline still lets a line take on one day's 50.
        assert_eq!(contact_estimate(&w, 50, 10, now, Some(HOUR)).room, Some(50));
        // One line alone: 50 today, then 50 a day from each reset: the 10,000th on the
        // 200th day (199 resets after today's).
        assert_eq!(e.time, 199 * DAY - now);
        assert_eq!(contact_estimate(&w, 50, 50, now, None).time, 0);
        assert_eq!(contact_estimate(&w, 50, 50, now, None).room, None);
        // A rolling 24 h: 50 now, 50 more every 24 h.
        let r = Window::Rolling(DAY);
        assert_eq!(contact_estimate(&r, 50, 51, now, None).time, DAY);
        assert_eq!(
            contact_estimate(&r, 50, 10_000, now, Some(DAY)).room,
            Some(50)
        );
        assert_eq!(contact_estimate(&r, 50, 0, now, None).time, 0);
    }
}
