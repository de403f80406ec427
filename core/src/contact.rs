//! Conversation-aware limits of a line (a sender), judged per message from what the line and
//! the recipient did before (seed 004, Sendblue; the WhatsApp pair rate):
//!
//! - distinct **new** contacts per window (messaging a contact who never wrote to the line),
//! - distinct **follow-up** contacts per window (messaging first more than the reply window
//!   after the contact's last inbound message),
//!   where a contact already counted in the window costs nothing more, and a window is a
//!   calendar (reset daily at 03:00 New York) or rolling (the last 24 h);
//! - the **reply window**: within it of the contact's last inbound message, messages to that
//!   contact are free of the contact limits;
//! - **unanswered**: at most `max` messages to a contact since its last inbound message (those
//!   sent in the reply window are not counted);
//! - **line streak**: at most `max` consecutive outbound messages on the line; any inbound
//!   message to the line resets it;
//! - **pair rate**: at most `max` messages to one recipient in every `period` (window-exact).
//!
//! Everything here counts messages, not segments. The state is read by the glue, the
//! decisions are taken here ([`check`], then [`record`] for a message that goes), and the
//! changed state is written back in the transaction that releases.

use crate::calendar::Calendar;
use crate::Micros;
use std::collections::HashMap;
use std::rc::Rc;

/// What a rule limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    NewContacts,
    FollowUpContacts,
    Unanswered,
    LineStreak,
    PairRate,
}

impl Kind {
    /// The name used in tables, `explain` and dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NewContacts => "new_contacts",
            Kind::FollowUpContacts => "follow_up_contacts",
            Kind::Unanswered => "unanswered",
            Kind::LineStreak => "line_streak",
            Kind::PairRate => "pair_rate",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "new_contacts" => Kind::NewContacts,
            "follow_up_contacts" => Kind::FollowUpContacts,
            "unanswered" => Kind::Unanswered,
            "line_streak" => Kind::LineStreak,
            "pair_rate" => Kind::PairRate,
            _ => return None,
        })
    }

    /// How a contact counted under this kind is recorded (1 new, 2 follow-up).
    pub fn counted_as(self) -> Option<i16> {
        match self {
            Kind::NewContacts => Some(1),
            Kind::FollowUpContacts => Some(2),
            _ => None,
        }
    }
}

/// The window a contact cap or a pair rate counts in.
#[derive(Clone, Copy, Debug)]
pub enum Window {
    /// Calendar windows (a day resetting at a local time in a zone).
    Calendar(Calendar),
    /// The last `period` µs before now.
    Rolling(Micros),
}

impl Window {
    /// What was counted at or after this instant counts now.
    pub fn start(&self, now: Micros) -> Micros {
        match self {
            Window::Calendar(c) => c.window_start(now),
            Window::Rolling(p) => now.saturating_sub(*p) + 1,
        }
    }

    /// When a full window has room again: the calendar's next reset, or when the oldest
    /// counted entry leaves the rolling window.
    fn room_at(&self, now: Micros, oldest: Option<Micros>) -> Micros {
        match self {
            Window::Calendar(c) => c.window_end(now),
            Window::Rolling(p) => oldest.map_or(now, |o| o.saturating_add(*p)).max(now),
        }
    }
}

/// What happens to a message over a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtLimit {
    /// It waits until the rule allows it (the window's reset, or an inbound message).
    Hold,
    /// It is dead-lettered.
    Refuse,
}

/// One configured rule of a line.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: i64,
    pub kind: Kind,
    pub max: u32,
    /// For contact caps and the pair rate.
    pub window: Window,
    /// Messages within this long after the contact's last inbound message are free of this
    /// rule (not for the line streak or the pair rate).
    pub reply_window: Micros,
    pub at_limit: AtLimit,
    /// The rule applies to messages of this channel only (None: every channel).
    pub channel: Option<String>,
}

impl Rule {
    /// Whether the rule counts messages on `channel`.
    pub fn applies_to(&self, channel: &str) -> bool {
        self.channel.as_deref().is_none_or(|c| c == channel)
    }
}

/// A (line, contact) pair as the line knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contact {
    /// The contact's last inbound message to the line.
    pub last_inbound: Option<Micros>,
    /// When the contact was last counted against a contact cap, and as which (1 new, 2
    /// follow-up).
    pub counted: Option<(i16, Micros)>,
    /// Messages sent outside the reply window since the inbound message `unanswered_since`
    /// (a newer inbound message resets the count).
    pub unanswered: u32,
    pub unanswered_since: Option<Micros>,
    /// The last sends to the contact, oldest first (as many as the pair rate needs).
    pub recent: Vec<Micros>,
    /// Changed since it was read: to be written back.
    pub dirty: bool,
    /// Read with no row of its own in the table of what was sent (and not written since):
    /// its first write is a plain insert. False when unknown: the write then inserts or
    /// updates, which is always right.
    pub unstored: bool,
}

/// A line's own state, and the use of each of its contact caps in their current windows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    /// The line's last inbound message from anyone.
    pub last_inbound: Option<Micros>,
    /// Consecutive outbound messages since the inbound message `streak_since`.
    pub streak: u32,
    pub streak_since: Option<Micros>,
    /// Per rule (same order): contacts counted in its current window, and the oldest count
    /// in it (for rolling windows). Rules that are not contact caps have (0, None).
    pub used: Vec<(u32, Option<Micros>)>,
    pub dirty: bool,
}

/// What [`check`] decided for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// Over `rule` (an index into the rules): wait until `until`, or for an inbound message
    /// (None).
    Hold {
        rule: usize,
        until: Option<Micros>,
    },
    /// Over `rule`, whose action is to refuse.
    Refuse {
        rule: usize,
    },
}

/// Whether `c` is in `rule`'s reply window at `now`.
fn in_reply_window(rule: &Rule, c: &Contact, now: Micros) -> bool {
    c.last_inbound
        .is_some_and(|t| now.saturating_sub(t) < rule.reply_window)
}

/// Whether `c` was counted in `rule`'s current window.
fn counted_in_window(rule: &Rule, c: &Contact, now: Micros) -> bool {
    c.counted
        .is_some_and(|(_, at)| at >= rule.window.start(now))
}

/// Whether a message to `c` now falls under contact cap `rule` (and is not already counted).
fn counts_under(rule: &Rule, c: &Contact, now: Micros) -> bool {
    let applies = match rule.kind {
        Kind::NewContacts => c.last_inbound.is_none(),
        Kind::FollowUpContacts => c.last_inbound.is_some() && !in_reply_window(rule, c, now),
        _ => false,
    };
    applies && !counted_in_window(rule, c, now)
}

/// The contact's streak as it stands: reset by an inbound message newer than the one it
/// counts after.
fn unanswered(c: &Contact) -> u32 {
    if c.unanswered_since == c.last_inbound {
        c.unanswered
    } else {
        0
    }
}

fn line_streak(l: &Line) -> u32 {
    if l.streak_since == l.last_inbound {
        l.streak
    } else {
        0
    }
}

/// Sends to the contact in `rule`'s window, and when the oldest of the last `max` leaves it.
fn pair_over(rule: &Rule, c: &Contact, now: Micros) -> Option<Micros> {
    let start = rule.window.start(now);
    let inside: Vec<Micros> = c.recent.iter().copied().filter(|&t| t >= start).collect();
    let max = rule.max as usize;
    if inside.len() < max {
        return None;
    }
    // Room again when all but max - 1 of them have left.
    let k = inside.len() - max;
    Some(match rule.window {
        Window::Rolling(p) => inside[k].saturating_add(p),
        Window::Calendar(cal) => cal.window_end(now),
    })
}

/// Whether a message goes to the provider for the first time, or again after the provider
/// refused it (a failed acknowledgement): its conversation was counted the first time, so
/// only the pair rate, which counts requests to a recipient, counts it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Send {
    First,
    Again,
}

impl Rule {
    /// Whether this rule judges and counts a message sent `send`.
    fn counts(&self, send: Send) -> bool {
        send == Send::First || self.kind == Kind::PairRate
    }
}

/// May a message on a line with `rules` and state `line`, to contact `c`, of `channel`, go at
/// `now`? Nothing is changed: [`record`] does that once the message goes.
pub fn check(rules: &[Rule], line: &Line, c: &Contact, channel: &str, now: Micros) -> Decision {
    check_send(rules, line, c, channel, now, Send::First)
}

/// [`check`] of a message sent `send`.
pub fn check_send(
    rules: &[Rule],
    line: &Line,
    c: &Contact,
    channel: &str,
    now: Micros,
    send: Send,
) -> Decision {
    let mut hold: Option<(usize, Option<Micros>)> = None;
    for (i, rule) in rules.iter().enumerate() {
        if !rule.applies_to(channel) || !rule.counts(send) {
            continue;
        }
        let over: Option<Option<Micros>> = match rule.kind {
            Kind::NewContacts | Kind::FollowUpContacts => {
                let (used, oldest) = line.used.get(i).copied().unwrap_or_default();
                (counts_under(rule, c, now) && used >= rule.max)
                    .then(|| Some(rule.window.room_at(now, oldest)))
            }
            Kind::Unanswered => {
                (!in_reply_window(rule, c, now) && unanswered(c) >= rule.max).then_some(None)
            }
            Kind::LineStreak => (line_streak(line) >= rule.max).then_some(None),
            Kind::PairRate => pair_over(rule, c, now).map(Some),
        };
        let Some(until) = over else { continue };
        if rule.at_limit == AtLimit::Refuse {
            return Decision::Refuse { rule: i };
        }
        // Held by the rule that lets go last (an inbound message: last of all).
        let later = match (hold, until) {
            (None, _) => true,
            (Some((_, None)), _) => false,
            (Some((_, Some(_))), None) => true,
            (Some((_, Some(a))), Some(b)) => b > a,
        };
        if later {
            hold = Some((i, until));
        }
    }
    match hold {
        Some((rule, until)) => Decision::Hold { rule, until },
        None => Decision::Go,
    }
}

/// Count a message that goes (after [`check`] said [`Decision::Go`]).
pub fn record(rules: &[Rule], line: &mut Line, c: &mut Contact, channel: &str, now: Micros) {
    record_send(rules, line, c, channel, now, Send::First)
}

/// [`record`] of a message sent `send`.
pub fn record_send(
    rules: &[Rule],
    line: &mut Line,
    c: &mut Contact,
    channel: &str,
    now: Micros,
    send: Send,
) {
    let mut counted_as = None;
    let mut pair_keep = 0usize;
    let mut streaks = (false, false);
    for (i, rule) in rules.iter().enumerate() {
        if !rule.applies_to(channel) || !rule.counts(send) {
            continue;
        }
        match rule.kind {
            Kind::NewContacts | Kind::FollowUpContacts => {
                if counts_under(rule, c, now) {
                    if let Some(u) = line.used.get_mut(i) {
                        u.0 += 1;
                        u.1 = Some(u.1.map_or(now, |o| o.min(now)));
                        line.dirty = true;
                    }
                    counted_as = rule.kind.counted_as();
                }
            }
            Kind::Unanswered => streaks.0 |= !in_reply_window(rule, c, now),
            Kind::LineStreak => streaks.1 = true,
            Kind::PairRate => pair_keep = pair_keep.max(rule.max as usize),
        }
    }
    if let Some(kind) = counted_as {
        c.counted = Some((kind, now));
        c.dirty = true;
    }
    if streaks.0 {
        c.unanswered = unanswered(c) + 1;
        c.unanswered_since = c.last_inbound;
        c.dirty = true;
    }
    if streaks.1 {
        line.streak = line_streak(line) + 1;
        line.streak_since = line.last_inbound;
        line.dirty = true;
    }
    if pair_keep > 0 {
        c.recent.push(now);
        let extra = c.recent.len().saturating_sub(pair_keep);
        c.recent.drain(..extra);
        c.dirty = true;
    }
}

/// One tick's conversation state, read by the glue before the worker's release and written
/// back after it: the lines of the queues taken, the contacts of the rows fetched, and what
/// the release decided for them.
#[derive(Debug, Default)]
pub struct Tick {
    /// Per queue taken (in the order of the tick's taken queues): its line (an index into
    /// `lines`) and its channel; None for a queue whose line has no rules.
    pub queues: Vec<Option<(usize, String)>>,
    /// Each line's rules and state.
    pub lines: Vec<(Rc<[Rule]>, Line)>,
    /// Lines whose state a client is changing right now (an admission or an inbound message
    /// holds the line's lock): their rows wait for a later tick (missing: none is busy).
    pub busy: Vec<bool>,
    /// Each fetched row's contact (an index into `contacts`; None: the row has no recipient).
    pub rows: HashMap<i64, Option<usize>>,
    pub contacts: Vec<Contact>,
    /// Rows a rule holds: (row id, the rule's id, until when; None: an inbound message).
    pub held: Vec<(i64, i64, Option<Micros>)>,
    /// Fetched rows the provider refused before ([`Send::Again`]): counted once already.
    pub again: std::collections::HashSet<i64>,
}

/// What a row's line and recipient say in a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// No rule applies, or none is over: the row goes on to the caps and rate limits.
    Free,
    /// Held by a rule (recorded in [`Tick::held`]).
    Held,
    /// Over a rule that refuses.
    Refused { rule: i64, kind: Kind },
    /// Its line has rules and it has no recipient to judge them by.
    NoRecipient,
    /// Its line's state is being changed by a client: not judged now.
    Busy,
}

impl Tick {
    /// Judge row `id` of taken queue `q` at `now` (nothing is counted: see [`Tick::count`]).
    pub fn judge(&mut self, q: usize, id: i64, now: Micros) -> Judged {
        let Some(Some((li, channel))) = self.queues.get(q) else {
            return Judged::Free;
        };
        if self.busy.get(*li).copied().unwrap_or(false) {
            return Judged::Busy;
        }
        let Some(Some(ci)) = self.rows.get(&id).copied() else {
            return Judged::NoRecipient;
        };
        let send = self.send_of(id);
        let (rules, line) = &self.lines[*li];
        match check_send(rules, line, &self.contacts[ci], channel, now, send) {
            Decision::Go => Judged::Free,
            Decision::Hold { rule, until } => {
                self.held.push((id, rules[rule].id, until));
                Judged::Held
            }
            Decision::Refuse { rule } => Judged::Refused {
                rule: rules[rule].id,
                kind: rules[rule].kind,
            },
        }
    }

    /// Count row `id` of taken queue `q`, which goes at `now`.
    pub fn count(&mut self, q: usize, id: i64, now: Micros) {
        let Some(Some((li, channel))) = self.queues.get(q) else {
            return;
        };
        let Some(Some(ci)) = self.rows.get(&id).copied() else {
            return;
        };
        let send = self.send_of(id);
        let (rules, line) = &mut self.lines[*li];
        record_send(rules, line, &mut self.contacts[ci], channel, now, send);
    }

    fn send_of(&self, id: i64) -> Send {
        if self.again.contains(&id) {
            Send::Again
        } else {
            Send::First
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Period;
    use chrono::NaiveTime;

    const SEC: Micros = 1_000_000;
    const HOUR: Micros = 3600 * SEC;
    const DAY: Micros = 24 * HOUR;

    fn daily_3am_ny() -> Window {
        Window::Calendar(Calendar {
            period: Period::Day,
            reset: NaiveTime::from_hms_opt(3, 0, 0).unwrap(),
            tz: chrono_tz::America::New_York,
        })
    }

    /// A message the provider refused, sent again, was counted the first time: only the pair
    /// rate counts it again.
    #[test]
    fn a_message_sent_again_counts_only_for_the_pair_rate() {
        let rules = vec![
            rule(1, Kind::Unanswered, 1, daily_3am_ny()),
            rule(2, Kind::LineStreak, 1, daily_3am_ny()),
            rule(3, Kind::PairRate, 1, Window::Rolling(6 * SEC)),
        ];
        let mut l = Line {
            used: vec![(0, None); rules.len()],
            ..Line::default()
        };
        let mut c = Contact::default();
        let now = 10 * DAY;
        assert_eq!(check(&rules, &l, &c, "sms", now), Decision::Go);
        record(&rules, &mut l, &mut c, "sms", now);
        // Again 10 s later: neither streak holds it, and neither counts it.
        let again = now + 10 * SEC;
        assert_eq!(
            check_send(&rules, &l, &c, "sms", again, Send::Again),
            Decision::Go
        );
        record_send(&rules, &mut l, &mut c, "sms", again, Send::Again);
        assert_eq!((c.unanswered, l.streak), (1, 1), "counted once");
        // The pair rate counted the request: another within 6 s waits.
        assert!(matches!(
            check_send(&rules, &l, &c, "sms", again + 2 * SEC, Send::Again),
            Decision::Hold { rule: 2, .. }
        ));
        // A new message is held by the streaks, as after one message.
        assert!(matches!(
            check(&rules, &l, &c, "sms", again + 20 * SEC),
            Decision::Hold { .. }
        ));
    }

    fn rule(id: i64, kind: Kind, max: u32, window: Window) -> Rule {
        Rule {
            id,
            kind,
            max,
            window,
            reply_window: DAY,
            at_limit: AtLimit::Hold,
            channel: None,
        }
    }

    /// Sendblue Blue Ocean: 50 new and 200 follow-up contacts a day (03:00 New York), 5
    /// messages without a reply, 150 consecutive outbound SMS.
    fn blue_ocean() -> Vec<Rule> {
        vec![
            rule(1, Kind::NewContacts, 50, daily_3am_ny()),
            rule(2, Kind::FollowUpContacts, 200, daily_3am_ny()),
            rule(3, Kind::Unanswered, 5, daily_3am_ny()),
            Rule {
                channel: Some("sms".into()),
                ..rule(4, Kind::LineStreak, 150, daily_3am_ny())
            },
        ]
    }

    fn line(rules: &[Rule]) -> Line {
        Line {
            used: vec![(0, None); rules.len()],
            ..Line::default()
        }
    }

    /// 2026-12-02 12:00 New York (17:00 UTC), in PostgreSQL µs.
    fn noon() -> Micros {
        let utc = chrono::NaiveDate::from_ymd_opt(2026, 12, 2)
            .unwrap()
            .and_hms_opt(17, 0, 0)
            .unwrap();
        crate::calendar::resolve_local(chrono_tz::UTC, utc)
    }

    #[test]
    fn the_51st_new_contact_waits_for_3am_new_york_and_a_counted_one_is_free() {
        let rules = blue_ocean();
        let mut l = line(&rules);
        let mut contacts: Vec<Contact> = vec![Contact::default(); 51];
        let now = noon();
        for c in contacts.iter_mut().take(50) {
            assert_eq!(check(&rules, &l, c, "imessage", now), Decision::Go);
            record(&rules, &mut l, c, "imessage", now);
        }
        assert_eq!(l.used[0].0, 50);
        let reset = now + 15 * HOUR; // 03:00 New York the next day
        assert_eq!(
            check(&rules, &l, &contacts[50], "imessage", now),
            Decision::Hold {
                rule: 0,
                until: Some(reset)
            }
        );
        // A second message to a contact counted today costs nothing more.
        assert_eq!(
            check(&rules, &l, &contacts[0], "imessage", now),
            Decision::Go
        );
        record(&rules, &mut l, &mut contacts[0], "imessage", now);
        assert_eq!(l.used[0].0, 50);
        // After the reset a new window counts again (the glue reads used = 0 then).
        let mut l2 = line(&rules);
        l2.used[0] = (0, None);
        assert_eq!(
            check(&rules, &l2, &contacts[50], "imessage", reset),
            Decision::Go
        );
        assert_eq!(
            check(&rules, &l2, &contacts[0], "imessage", reset),
            Decision::Go
        );
        record(&rules, &mut l2, &mut contacts[0], "imessage", reset);
        assert_eq!(l2.used[0].0, 1, "counted yesterday, counted again today");
    }

    #[test]
    fn the_reply_window_is_free_and_after_it_the_contact_is_a_follow_up() {
        let rules = blue_ocean();
        let now = noon();
        let mut l = line(&rules);
        l.used[0] = (50, Some(now - HOUR));
        l.used[1] = (200, Some(now - HOUR));
        let mut wrote_23h = Contact {
            last_inbound: Some(now - 23 * HOUR),
            ..Contact::default()
        };
        l.last_inbound = wrote_23h.last_inbound;
        for _ in 0..100 {
            assert_eq!(check(&rules, &l, &wrote_23h, "imessage", now), Decision::Go);
            record(&rules, &mut l, &mut wrote_23h, "imessage", now);
        }
        assert_eq!((l.used[0].0, l.used[1].0), (50, 200));
        assert_eq!(
            wrote_23h.unanswered, 0,
            "replies in the window are not a streak"
        );
        let wrote_25h = Contact {
            last_inbound: Some(now - 25 * HOUR),
            ..Contact::default()
        };
        assert_eq!(
            check(&rules, &l, &wrote_25h, "imessage", now),
            Decision::Hold {
                rule: 1,
                until: Some(now + 15 * HOUR)
            }
        );
        l.used[1] = (199, Some(now - HOUR));
        let mut c = wrote_25h.clone();
        assert_eq!(check(&rules, &l, &c, "imessage", now), Decision::Go);
        record(&rules, &mut l, &mut c, "imessage", now);
        assert_eq!((l.used[0].0, l.used[1].0), (50, 200));
        assert_eq!(c.counted, Some((2, now)));
    }

    #[test]
    fn the_6th_message_without_a_reply_waits_for_one() {
        let rules = blue_ocean();
        let now = noon();
        let mut l = line(&rules);
        let mut c = Contact::default();
        for k in 0..5 {
            assert_eq!(
                check(&rules, &l, &c, "imessage", now + k * SEC),
                Decision::Go
            );
            record(&rules, &mut l, &mut c, "imessage", now + k * SEC);
        }
        assert_eq!(
            check(&rules, &l, &c, "imessage", now + 10 * SEC),
            Decision::Hold {
                rule: 2,
                until: None
            }
        );
        // An inbound message resets the streak (and opens the reply window).
        c.last_inbound = Some(now + 20 * SEC);
        assert_eq!(
            check(&rules, &l, &c, "imessage", now + 30 * SEC),
            Decision::Go
        );
        // Two days later, outside the window: 5 more, then wait again.
        let later = now + 2 * DAY;
        l.used = vec![(0, None); rules.len()];
        for k in 0..5 {
            assert_eq!(check(&rules, &l, &c, "imessage", later + k), Decision::Go);
            record(&rules, &mut l, &mut c, "imessage", later + k);
        }
        assert!(matches!(
            check(&rules, &l, &c, "imessage", later + 10),
            Decision::Hold { rule: 2, .. }
        ));
    }

    #[test]
    fn the_line_streak_counts_its_channel_and_resets_on_any_inbound() {
        let rules = vec![Rule {
            channel: Some("sms".into()),
            ..rule(1, Kind::LineStreak, 3, daily_3am_ny())
        }];
        let now = noon();
        let mut l = line(&rules);
        let mut contacts = vec![Contact::default(); 5];
        for c in contacts.iter_mut().take(3) {
            assert_eq!(check(&rules, &l, c, "sms", now), Decision::Go);
            record(&rules, &mut l, c, "sms", now);
        }
        // Other channels are not counted.
        assert_eq!(
            check(&rules, &l, &contacts[3], "imessage", now),
            Decision::Go
        );
        assert_eq!(
            check(&rules, &l, &contacts[3], "sms", now),
            Decision::Hold {
                rule: 0,
                until: None
            }
        );
        l.last_inbound = Some(now + SEC);
        assert_eq!(
            check(&rules, &l, &contacts[3], "sms", now + 2 * SEC),
            Decision::Go
        );
        record(&rules, &mut l, &mut contacts[3], "sms", now + 2 * SEC);
        assert_eq!(l.streak, 1);
    }

    #[test]
    fn the_pair_rate_holds_in_every_window() {
        let rules = vec![rule(1, Kind::PairRate, 1, Window::Rolling(6 * SEC))];
        let mut l = line(&rules);
        let mut c = Contact::default();
        let mut sent: Vec<Micros> = Vec::new();
        let mut t = noon();
        // Try every 250 ms for two minutes; go whenever allowed.
        for _ in 0..480 {
            match check(&rules, &l, &c, "whatsapp", t) {
                Decision::Go => {
                    record(&rules, &mut l, &mut c, "whatsapp", t);
                    sent.push(t);
                }
                Decision::Hold { until: Some(u), .. } => assert!(u > t),
                d => panic!("{d:?}"),
            }
            t += SEC / 4;
        }
        for w in sent.windows(2) {
            assert!(w[1] - w[0] >= 6 * SEC, "{w:?}");
        }
        assert_eq!(sent.len(), 20, "every 6 s: used to the full");
        // 3 per 10 s, window-exact.
        let rules = vec![rule(1, Kind::PairRate, 3, Window::Rolling(10 * SEC))];
        let mut c = Contact::default();
        let mut sent: Vec<Micros> = Vec::new();
        let mut t = noon();
        for _ in 0..400 {
            if check(&rules, &l, &c, "whatsapp", t) == Decision::Go {
                record(&rules, &mut l, &mut c, "whatsapp", t);
                sent.push(t);
            }
            t += SEC / 4;
        }
        for (i, &s) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().filter(|&&u| u < s + 10 * SEC).count();
            assert!(in_window <= 3, "at {s}: {in_window}");
        }
        assert!(c.recent.len() <= 3);
    }

    #[test]
    fn a_rolling_window_frees_room_when_its_oldest_count_leaves() {
        let rules = vec![rule(1, Kind::FollowUpContacts, 2, Window::Rolling(DAY))];
        let now = noon();
        let mut l = line(&rules);
        l.used[0] = (2, Some(now - 20 * HOUR));
        let c = Contact {
            last_inbound: Some(now - 3 * DAY),
            ..Contact::default()
        };
        assert_eq!(
            check(&rules, &l, &c, "imessage", now),
            Decision::Hold {
                rule: 0,
                until: Some(now + 4 * HOUR)
            }
        );
        // Counted 23 h ago under the rolling window: free.
        let counted = Contact {
            counted: Some((2, now - 23 * HOUR)),
            ..c.clone()
        };
        assert_eq!(check(&rules, &l, &counted, "imessage", now), Decision::Go);
    }

    #[test]
    fn a_refusing_rule_wins_over_holds() {
        let mut rules = blue_ocean();
        rules[0].at_limit = AtLimit::Refuse;
        let now = noon();
        let mut l = line(&rules);
        l.used[0] = (50, None);
        let c = Contact {
            unanswered: 7,
            ..Contact::default()
        };
        assert_eq!(
            check(&rules, &l, &c, "imessage", now),
            Decision::Refuse { rule: 0 }
        );
        rules[0].at_limit = AtLimit::Hold;
        // Held by the streak (until a reply) rather than by the reset, which comes first.
        assert_eq!(
            check(&rules, &l, &c, "imessage", now),
            Decision::Hold {
                rule: 2,
                until: None
            }
        );
    }
}
