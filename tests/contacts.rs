//! Contact rules against a real server, through the release worker: distinct new and
//! follow-up contacts per day (03:00 New York), the reply window, unanswered streaks, the
//! line streak, the WhatsApp pair rate, rules changed live, bad input, and an immediate
//! shutdown in the middle of a release. "Hours ago" is simulated through
//! `throttle.inbound(..., received_at)`; what the worker does runs in real time.

use pg_throttle_tests::{count, sqlstate, wait_for, Client, Server};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A line with a generous rate (the rules are what is tested) and these contact rules.
fn line(c: &mut Client, sender: &str, rules: &str) {
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender, sender_type) VALUES ('{sender}', 'imessage');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', '{sender}', 1000, '1 second');
         INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count, per, at_limit, error_code, channel)
         SELECT 'sender', '{sender}', kind::throttle.contact_rule_kind, max_count, per::interval,
                coalesce(at_limit, 'hold')::throttle.contact_action, error_code, channel
           FROM (VALUES {rules}) AS r(kind, max_count, per, at_limit, error_code, channel);"
    ))
    .expect("configure a line");
}

/// Enqueue `n` messages from `sender` to `recipient(i)`; their ids.
fn enqueue(c: &mut Client, sender: &str, recipients: &[String], channel: &str) -> Vec<i64> {
    c.query(
        "INSERT INTO throttle.pending (sender, carrier, channel, recipient)
         SELECT $1, 'att', $3, r FROM unnest($2::text[]) WITH ORDINALITY AS u(r, o) ORDER BY o RETURNING id",
        &[&sender, &recipients, &channel],
    )
    .expect("enqueue")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn ids_list(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn ready_of(c: &mut Client, ids: &[i64]) -> i64 {
    count(
        c,
        &format!(
            "SELECT count(*) FROM throttle.ready WHERE id IN ({})",
            ids_list(ids)
        ),
    )
}

fn wait_ready(c: &mut Client, ids: &[i64], n: i64, secs: u64) -> i64 {
    wait_for(
        c,
        &format!(
            "SELECT count(*) FROM throttle.ready WHERE id IN ({})",
            ids_list(ids)
        ),
        Duration::from_secs(secs),
        |k| k >= n,
    )
}

fn wait_held(c: &mut Client, ids: &[i64], n: i64) -> i64 {
    wait_for(
        c,
        &format!(
            "SELECT count(*) FROM throttle.pending WHERE held_rule IS NOT NULL AND id IN ({})",
            ids_list(ids)
        ),
        Duration::from_secs(10),
        |k| k >= n,
    )
}

fn used(c: &mut Client, sender: &str, kind: &str) -> i64 {
    count(
        c,
        &format!(
            "SELECT coalesce(max(used), -1)::int8 FROM throttle.contact_rule_state
              WHERE sender = '{sender}' AND kind = '{kind}'"
        ),
    )
}

fn numbers(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:04}")).collect()
}

#[test]
fn the_51st_new_contact_of_the_day_waits_for_3am_new_york_and_a_raise_lets_it_go() {
    let server = Server::start("contacts-new", &[]);
    let mut c = server.connect();
    line(
        &mut c,
        "nc-line",
        "('new_contacts', 50, NULL, NULL, NULL, NULL), ('follow_up_contacts', 200, NULL, NULL, NULL, NULL)",
    );
    let to = numbers("+1555100", 51);
    let ids = enqueue(&mut c, "nc-line", &to, "imessage");
    assert_eq!(wait_ready(&mut c, &ids, 50, 20), 50);
    assert_eq!(wait_held(&mut c, &ids, 1), 1);
    // The 50 that went are the first 50; the 51st waits for 03:00 New York.
    assert_eq!(ready_of(&mut c, &ids[..50]), 50);
    let waits_for_reset = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.pending p
              WHERE p.id = {} AND p.not_before =
                    (SELECT w.window_end FROM throttle.cap_window('day', '03:00', 'America/New_York', now()) w)
                AND extract(hour FROM p.not_before AT TIME ZONE 'America/New_York') = 3",
            ids[50]
        ),
    );
    assert_eq!(waits_for_reset, 1, "held until the next 03:00 New York");
    assert_eq!(used(&mut c, "nc-line", "new_contacts"), 50);
    // A second message to a contact counted today costs nothing more.
    let again = enqueue(&mut c, "nc-line", &to[..1], "imessage");
    assert_eq!(wait_ready(&mut c, &again, 1, 10), 1);
    assert_eq!(used(&mut c, "nc-line", "new_contacts"), 50);
    // explain() names the rule and what lets the message go.
    let why: String = c
        .query_one(
            &format!("SELECT string_agg(kind || ' ' || name || ': ' || detail, '; ') FROM throttle.explain({})", ids[50]),
            &[],
        )
        .expect("explain")
        .get(0);
    assert!(why.contains("contact_rule new_contacts"), "{why}");
    assert!(why.contains("when the window resets"), "{why}");
    // Raised live: the held one goes.
    c.batch_execute(
        "UPDATE throttle.contact_rule SET max_count = 51 WHERE scope_id = 'nc-line' AND kind = 'new_contacts'",
    )
    .expect("raise");
    assert_eq!(wait_ready(&mut c, &ids, 51, 10), 51);
    assert_eq!(used(&mut c, "nc-line", "new_contacts"), 51);
}

#[test]
fn over_a_refusing_rule_a_message_is_dead_lettered_with_its_error_code() {
    let server = Server::start("contacts-refuse", &[]);
    let mut c = server.connect();
    line(
        &mut c,
        "rf-line",
        "('new_contacts', 2, NULL, 'refuse', 'SB-NEW-CONTACTS', NULL)",
    );
    let ids = enqueue(&mut c, "rf-line", &numbers("+1555200", 3), "imessage");
    let dead = wait_for(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.dead WHERE id = {} AND error_code = 'SB-NEW-CONTACTS'
                AND reason LIKE '%new_contacts%'",
            ids[2]
        ),
        Duration::from_secs(10),
        |n| n == 1,
    );
    assert_eq!(dead, 1);
    assert_eq!(ready_of(&mut c, &ids[..2]), 2);
    // A message with no recipient on a line with rules cannot be counted: dead, with why.
    let id: i64 = c
        .query_one(
            "INSERT INTO throttle.pending (sender, carrier) VALUES ('rf-line', 'att') RETURNING id",
            &[],
        )
        .expect("no recipient")
        .get(0);
    let dead = wait_for(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.dead WHERE id = {id} AND reason LIKE 'no recipient%'"
        ),
        Duration::from_secs(10),
        |n| n == 1,
    );
    assert_eq!(dead, 1);
}

#[test]
fn the_reply_window_is_free_and_after_it_a_contact_is_a_follow_up() {
    let server = Server::start("contacts-reply", &[]);
    let mut c = server.connect();
    line(
        &mut c,
        "rw-line",
        "('new_contacts', 1, NULL, NULL, NULL, NULL), ('follow_up_contacts', 1, NULL, NULL, NULL, NULL),
         ('unanswered', 5, NULL, NULL, NULL, NULL)",
    );
    c.batch_execute(
        "SELECT throttle.inbound('rw-line', '+15553000001', now() - interval '23 hours', 'm-1');
         SELECT throttle.inbound('rw-line', '+15553000002', now() - interval '25 hours', 'm-2');
         SELECT throttle.inbound('rw-line', '+15553000003', now() - interval '25 hours', 'm-3');",
    )
    .expect("inbound messages");
    // The same webhook twice counts once.
    let again: bool = c
        .query_one(
            "SELECT throttle.inbound('rw-line', '+15553000001', now(), 'm-1')",
            &[],
        )
        .expect("inbound again")
        .get(0);
    assert!(!again, "recorded once");
    let wrote_23h_ago = vec!["+15553000001".to_string(); 100];
    let ids = enqueue(&mut c, "rw-line", &wrote_23h_ago, "imessage");
    assert_eq!(
        wait_ready(&mut c, &ids, 100, 20),
        100,
        "100 in the reply window"
    );
    assert_eq!(used(&mut c, "rw-line", "follow_up_contacts"), 0);
    assert_eq!(used(&mut c, "rw-line", "new_contacts"), 0);
    // 25 h ago: a follow-up (the cap of 1 takes one; the next contact waits).
    let one = enqueue(&mut c, "rw-line", &["+15553000002".to_string()], "imessage");
    assert_eq!(wait_ready(&mut c, &one, 1, 10), 1);
    assert_eq!(used(&mut c, "rw-line", "follow_up_contacts"), 1);
    let other = enqueue(&mut c, "rw-line", &["+15553000003".to_string()], "imessage");
    assert_eq!(wait_held(&mut c, &other, 1), 1, "the follow-up cap is full");
    assert_eq!(ready_of(&mut c, &other), 0);
}

#[test]
fn the_6th_message_without_a_reply_waits_and_goes_right_after_an_inbound() {
    let server = Server::start("contacts-unanswered", &[]);
    let mut c = server.connect();
    line(
        &mut c,
        "un-line",
        "('unanswered', 5, NULL, NULL, NULL, NULL)",
    );
    let to = vec!["+15554000001".to_string(); 6];
    let ids = enqueue(&mut c, "un-line", &to, "imessage");
    assert_eq!(wait_ready(&mut c, &ids, 5, 10), 5);
    assert_eq!(wait_held(&mut c, &ids, 1), 1);
    assert_eq!(ready_of(&mut c, &ids[5..]), 0);
    let until_reply = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.pending WHERE id = {} AND not_before = throttle.until_reply()",
            ids[5]
        ),
    );
    assert_eq!(until_reply, 1, "held until a reply");
    // Another contact's reply lets nothing go.
    c.batch_execute("SELECT throttle.inbound('un-line', '+15554000999')")
        .expect("someone else writes");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ready_of(&mut c, &ids[5..]), 0);
    let t = Instant::now();
    c.batch_execute("SELECT throttle.inbound('un-line', '+15554000001')")
        .expect("the contact writes");
    assert_eq!(wait_ready(&mut c, &ids[5..], 1, 10), 1);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The worker and admissions write a line's lock key out (src/contacts.rs); inbound()
    // calls throttle.line_lock_key: the same key, or the two would not exclude each other.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM (VALUES ('un-line'), ('+15554000001'), ('')) v(s)
              WHERE throttle.line_lock_key(s) = pg_catalog.hashtextextended(s, 7368)"
        ),
        3
    );
}

#[test]
fn the_line_streak_holds_the_line_until_anyone_writes() {
    let server = Server::start("contacts-streak", &[]);
    let mut c = server.connect();
    line(
        &mut c,
        "ls-line",
        "('line_streak', 3, NULL, NULL, NULL, 'sms')",
    );
    let ids = enqueue(&mut c, "ls-line", &numbers("+1555500", 4), "sms");
    assert_eq!(wait_ready(&mut c, &ids, 3, 10), 3);
    assert_eq!(wait_held(&mut c, &ids, 1), 1);
    // Another channel is not counted.
    let im = enqueue(&mut c, "ls-line", &numbers("+1555501", 1), "imessage");
    assert_eq!(wait_ready(&mut c, &im, 1, 10), 1);
    c.batch_execute("SELECT throttle.inbound('ls-line', '+15555009999')")
        .expect("anyone writes");
    assert_eq!(wait_ready(&mut c, &ids, 4, 10), 4);
}

#[test]
fn the_whatsapp_pair_rate_holds_in_every_6_s_window() {
    let server = Server::start("contacts-pair", &[]);
    let mut c = server.connect();
    line(
        &mut c,
        "wa-line",
        "('pair_rate', 1, '6 seconds', NULL, NULL, NULL)",
    );
    let mut to = vec!["+15556000001".to_string(); 3];
    to.extend(vec!["+15556000002".to_string(); 3]);
    let ids = enqueue(&mut c, "wa-line", &to, "whatsapp");
    assert_eq!(wait_ready(&mut c, &ids, 6, 30), 6);
    let rows = c
        .query(
            &format!(
                "SELECT recipient, (extract(epoch FROM released_at) * 1000000)::int8
                   FROM throttle.ready WHERE id IN ({}) ORDER BY released_at",
                ids_list(&ids)
            ),
            &[],
        )
        .expect("released");
    let mut by: HashMap<String, Vec<i64>> = HashMap::new();
    for r in rows {
        by.entry(r.get(0)).or_default().push(r.get(1));
    }
    for (who, times) in by {
        assert_eq!(times.len(), 3);
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= 6_000_000, "{who}: two in 6 s: {times:?}");
        }
        // Used to the full: the third went within 2 s of being allowed.
        assert!(times[2] - times[0] < 14_000_000, "{who}: {times:?}");
    }
}

#[test]
fn bad_rules_and_bad_inbound_calls_are_refused_with_a_hint() {
    let server = Server::start("contacts-bad", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    for (sql, state) in [
        ("INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES ('sender', 'x', 'pair_rate', 1)", "22023"),
        ("INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count, time_zone) VALUES ('sender', 'x', 'new_contacts', 50, 'Mars/Base')", "22023"),
        ("INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES ('sender', 'x', 'new_contacts', 0)", "22023"),
        ("INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES ('sender', 'x', 'no_such_kind', 1)", "22P02"),
        ("SELECT throttle.inbound(NULL, '+15550000000')", "22023"),
        ("SELECT throttle.inbound('x', '')", "22023"),
        ("SELECT throttle.inbound('x', '+15550000000', 'infinity')", "22023"),
        ("SELECT throttle.inbound('x', '+15550000000', now(), '')", "22023"),
        ("SELECT throttle.inbound_for('x', '+15550000000', now(), NULL, 42)", "42501"),
        // The filter's trigger function, fired other than BEFORE a row is written.
        ("CREATE TABLE seen_after (sender text, contact text);
          CREATE TRIGGER seen AFTER INSERT ON seen_after FOR EACH ROW EXECUTE FUNCTION throttle.contact_seen();
          INSERT INTO seen_after VALUES ('x', '+15550000000')", "39P01"),
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), state, "{sql}: {e}");
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.contact_rule"),
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.contact_inbound"),
        0
    );
}

#[test]
fn an_immediate_shutdown_mid_release_counts_every_contact_once() {
    let mut server = Server::start("contacts-crash", &["throttle.release_batch = 20"]);
    let mut c = server.connect();
    line(
        &mut c,
        "cc-line",
        "('new_contacts', 200, NULL, NULL, NULL, NULL)",
    );
    c.batch_execute("UPDATE throttle.rate_limit SET rate = 60 WHERE scope_id = 'cc-line'")
        .expect("slower");
    let to = numbers("+1555700", 300);
    let ids = enqueue(&mut c, "cc-line", &to, "imessage");
    wait_ready(&mut c, &ids, 40, 20);
    drop(c);
    server.restart("immediate");
    let mut c = server.connect();
    assert_eq!(wait_ready(&mut c, &ids, 200, 30), 200);
    assert_eq!(wait_held(&mut c, &ids, 100), 100);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ready_of(&mut c, &ids), 200, "no more than the cap");
    // Every message in exactly one place; every contact that went counted once.
    let ready: HashSet<i64> = c
        .query(
            &format!(
                "SELECT id FROM throttle.ready WHERE id IN ({})",
                ids_list(&ids)
            ),
            &[],
        )
        .expect("ready")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let pending: HashSet<i64> = c
        .query(
            &format!(
                "SELECT id FROM throttle.pending WHERE id IN ({})",
                ids_list(&ids)
            ),
            &[],
        )
        .expect("pending")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ready.len() + pending.len(), 300);
    assert!(ready.is_disjoint(&pending));
    let counted = count(
        &mut c,
        "SELECT count(*) FROM throttle.contact_sent s
          WHERE s.sender = 'cc-line' AND s.counted_as = 1
            AND EXISTS (SELECT 1 FROM throttle.ready r WHERE r.sender = s.sender AND r.recipient = s.contact)",
    );
    let all_counted = count(
        &mut c,
        "SELECT count(*) FROM throttle.contact_sent WHERE sender = 'cc-line' AND counted_as = 1",
    );
    assert_eq!((counted, all_counted), (200, 200));
    assert_eq!(used(&mut c, "cc-line", "new_contacts"), 200);
}

#[test]
fn profiles_create_the_contact_rules_of_a_line() {
    let server = Server::start("contacts-profiles", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) SELECT 'pf-' || g FROM generate_series(1, 5) g",
    )
    .expect("lines");
    let rules = |c: &mut Client, sender: &str| -> Vec<String> {
        c.query(
            "SELECT kind || ' ' || max_count || coalesce(' per ' || per, '') || coalesce(' ' || channel, '')
               FROM throttle.contact_rule WHERE scope = 'sender' AND scope_id = $1 ORDER BY 1",
            &[&sender],
        )
        .expect("rules")
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // The default class: Blue Ocean.
    let created: Vec<bool> = c
        .query(
            "SELECT created FROM throttle.apply_profile('sendblue_contacts', 'sender', 'pf-1')",
            &[],
        )
        .expect("apply")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(created, vec![true; 4]);
    assert_eq!(
        rules(&mut c, "pf-1"),
        [
            "follow_up_contacts 200",
            "line_streak 150 sms",
            "new_contacts 50",
            "unanswered 5"
        ]
    );
    let again = count(
        &mut c,
        "SELECT count(*) FROM throttle.apply_profile('sendblue_contacts', 'sender', 'pf-1') WHERE NOT created",
    );
    assert_eq!(again, 4, "applied again: nothing new");
    // The AI Agent plan counts follow-ups over a rolling 24 h; many lines at once.
    let n = count(
        &mut c,
        "SELECT count(*) FROM throttle.apply_profile('sendblue_contacts', 'sender', ARRAY['pf-2', 'pf-3'], 'ai_agent') WHERE created",
    );
    assert_eq!(n, 4);
    assert_eq!(
        rules(&mut c, "pf-2"),
        ["follow_up_contacts 200 per 24:00:00", "line_streak 150 sms"]
    );
    // Another class on a line that has one: refused, nothing changed.
    let e = c
        .batch_execute("SELECT * FROM throttle.apply_profile('sendblue_contacts', 'sender', 'pf-1', 'ai_agent')")
        .expect_err("classes would stack");
    assert_eq!(sqlstate(&e), "22023", "{e}");
    assert_eq!(rules(&mut c, "pf-1").len(), 4);
    c.batch_execute("SELECT * FROM throttle.apply_profile('whatsapp_pair', 'sender', 'pf-4')")
        .expect("pair rate");
    assert_eq!(rules(&mut c, "pf-4"), ["pair_rate 1 per 00:00:06 whatsapp"]);
    let summary: String = c
        .query_one(
            "SELECT summary FROM throttle.profiles WHERE profile = 'sendblue_contacts' AND class = 'blue_ocean' AND rule = 'new'",
            &[],
        )
        .expect("summary")
        .get(0);
    assert_eq!(
        summary,
        "contact rule new_contacts 50 a day from 03:00 America/New_York, at limit hold; default class"
    );
}

/// 12:00 in New York at least 28 hours ago (the day before the New York day of 16 hours
/// ago), as the time admissions are judged at: the test judges up to 16 hours after it, which
/// must not be past `throttle.max_future` (1 h) at any hour of the day the suite runs. (It
/// was yesterday's noon: between midnight and 03:00 New York, noon + 16 h was in the future.)
const NOON: &str =
    "(date_trunc('day', (now() - interval '16 hours') AT TIME ZONE 'America/New_York') - interval '12 hours')
                     AT TIME ZONE 'America/New_York'";

/// `throttle_admit(sender, 'att', NOON + offset, 1, channel, recipient)`: (admitted, retry_at
/// as epoch µs, blocked_by).
fn admit(
    c: &mut Client,
    sender: &str,
    recipient: &str,
    offset: &str,
    channel: &str,
) -> (bool, Option<i64>, Option<String>) {
    let r = c
        .query_one(
            &format!(
                "SELECT a.admitted, (extract(epoch FROM a.retry_at) * 1000000)::int8, a.blocked_by
                   FROM throttle.throttle_admit($1, 'att', {NOON} + $2::text::interval, 1, $3, $4) a"
            ),
            &[&sender, &offset, &channel, &recipient],
        )
        .expect("admit");
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn admissions_judge_contact_rules_at_their_time() {
    let server = Server::start("contacts-admit", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    line(
        &mut c,
        "ad-line",
        "('new_contacts', 50, NULL, NULL, NULL, NULL), ('follow_up_contacts', 200, NULL, NULL, NULL, NULL)",
    );
    let to = numbers("+1555600", 51);
    for r in &to[..50] {
        assert!(admit(&mut c, "ad-line", r, "0", "imessage").0, "{r}");
    }
    let (ok, retry, by) = admit(&mut c, "ad-line", &to[50], "0", "imessage");
    assert!(!ok, "the 51st new contact of the day");
    let reset = count(
        &mut c,
        &format!("SELECT (extract(epoch FROM (date_trunc('day', {NOON} AT TIME ZONE 'America/New_York') + interval '1 day 3 hours') AT TIME ZONE 'America/New_York') * 1000000)::int8"),
    );
    assert_eq!(retry, Some(reset), "retry at 03:00 New York");
    assert!(
        by.as_deref().unwrap_or("").contains("new_contacts"),
        "{by:?}"
    );
    // Counted today: free.
    assert!(admit(&mut c, "ad-line", &to[0], "1 hour", "imessage").0);
    // After 03:00 the 51st goes.
    assert!(admit(&mut c, "ad-line", &to[50], "15 hours", "imessage").0);
    // Wrote 23 h before: 100 messages, none counted (time moves on: the rate limit's
    // clock never goes back).
    c.batch_execute(&format!(
        "SELECT throttle.inbound('ad-line', '+15556009999', {NOON} + interval '16 hours' - interval '23 hours')"
    ))
    .expect("inbound");
    for _ in 0..100 {
        let a = admit(&mut c, "ad-line", "+15556009999", "16 hours", "imessage");
        assert!(a.0, "{a:?}");
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.contact_sent WHERE contact = '+15556009999' AND counted_as IS NOT NULL"),
        0
    );
    // A line with contact rules needs the recipient.
    let e = c
        .batch_execute(
            "SELECT throttle.throttle_admit('ad-line', 'att', now(), 1, 'imessage', NULL)",
        )
        .expect_err("no recipient");
    assert_eq!(sqlstate(&e), "22023", "{e}");
    // Unanswered: 5, then none until a reply; then one more.
    line(&mut c, "ad-un", "('unanswered', 5, NULL, NULL, NULL, NULL)");
    for k in 0..5 {
        assert!(
            admit(
                &mut c,
                "ad-un",
                "+15556100000",
                &format!("{k} seconds"),
                "imessage"
            )
            .0
        );
    }
    let (ok, retry, by) = admit(&mut c, "ad-un", "+15556100000", "10 seconds", "imessage");
    assert!(!ok && retry.is_none(), "until a reply: {by:?}");
    c.batch_execute(&format!(
        "SELECT throttle.inbound('ad-un', '+15556100000', {NOON} + interval '20 seconds')"
    ))
    .expect("a reply");
    assert!(admit(&mut c, "ad-un", "+15556100000", "30 seconds", "imessage").0);
    // The pair rate, at the admissions' own times: one every 6 s.
    line(
        &mut c,
        "ad-wa",
        "('pair_rate', 1, '6 seconds', NULL, NULL, NULL)",
    );
    let mut went = Vec::new();
    for k in 0..30 {
        let (ok, retry, _) = admit(
            &mut c,
            "ad-wa",
            "+15556200000",
            &format!("{k} seconds"),
            "whatsapp",
        );
        if ok {
            went.push(k);
        } else {
            assert!(retry.is_some());
        }
    }
    assert_eq!(went, [0, 6, 12, 18, 24]);
}

#[test]
fn concurrent_admissions_never_exceed_the_new_contact_cap() {
    let server = Server::start("contacts-admit-race", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    line(
        &mut c,
        "ar-line",
        "('new_contacts', 50, NULL, NULL, NULL, NULL)",
    );
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let mut k = server.connect();
            std::thread::spawn(move || -> usize {
                let mut n = 0;
                for i in 0..20 {
                    let ok: bool = k
                        .query_one(
                            "SELECT admitted FROM throttle.throttle_admit('ar-line', 'att', now(), 1, 'sms', $1)",
                            &[&format!("+1555{t:02}{i:04}")],
                        )
                        .expect("admit")
                        .get(0);
                    n += ok as usize;
                }
                n
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().expect("client")).sum();
    assert_eq!(total, 50, "exactly the cap, from 8 clients at once");
    assert_eq!(used(&mut c, "ar-line", "new_contacts"), 50);
}

#[test]
fn admissions_and_the_worker_count_a_line_together() {
    let server = Server::start("contacts-both", &[]);
    let mut c = server.connect();
    line(
        &mut c,
        "ab-line",
        "('new_contacts', 50, NULL, NULL, NULL, NULL)",
    );
    for r in numbers("+1555300", 30) {
        let ok: bool = c
            .query_one(
                "SELECT admitted FROM throttle.throttle_admit('ab-line', 'att', now(), 1, 'sms', $1)",
                &[&r],
            )
            .expect("admit")
            .get(0);
        assert!(ok);
    }
    let ids = enqueue(&mut c, "ab-line", &numbers("+1555301", 30), "sms");
    assert_eq!(wait_ready(&mut c, &ids, 20, 10), 20);
    assert_eq!(wait_held(&mut c, &ids, 10), 10);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ready_of(&mut c, &ids), 20, "50 in all");
    assert_eq!(used(&mut c, "ab-line", "new_contacts"), 50);
}

#[test]
fn a_client_holding_a_line_stalls_neither_the_worker_nor_other_lines() {
    let server = Server::start("contacts-tenant", &[]);
    let mut c = server.connect();
    line(&mut c, "tn-a", "('unanswered', 5, NULL, NULL, NULL, NULL)");
    line(&mut c, "tn-b", "('unanswered', 5, NULL, NULL, NULL, NULL)");
    // A webhook handler records an inbound message on line A and keeps its transaction open
    // (it holds line A's lock until it ends).
    let mut hook = server.connect();
    let mut tx = hook.transaction().expect("begin");
    tx.batch_execute("SELECT throttle.inbound('tn-a', '+15557100000')")
        .expect("inbound");
    let a = enqueue(&mut c, "tn-a", &numbers("+1555710", 3), "sms");
    let b = enqueue(&mut c, "tn-b", &numbers("+1555720", 3), "sms");
    // Line B goes; line A waits for the handler, and the worker keeps ticking meanwhile.
    assert_eq!(wait_ready(&mut c, &b, 3, 10), 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ready_of(&mut c, &a),
        0,
        "line A waits for the open transaction"
    );
    let later = enqueue(&mut c, "tn-b", &numbers("+1555721", 2), "sms");
    assert_eq!(wait_ready(&mut c, &later, 2, 10), 2);
    tx.commit().expect("commit");
    assert_eq!(wait_ready(&mut c, &a, 3, 10), 3, "line A goes once it ends");
}

/// Admitted of `recipients`, each admitted at NOON + `offset`, in one statement.
fn admit_all(c: &mut Client, sender: &str, recipients: &[String], offset: &str) -> i64 {
    c.query_one(
        &format!(
            "SELECT count(*) FILTER (WHERE (throttle.throttle_admit($1, 'att', {NOON} + $2::text::interval,
                                                                 1, 'sms', r)).admitted)
               FROM unnest($3::text[]) WITH ORDINALITY AS u(r, o)"
        ),
        &[&sender, &offset, &recipients],
    )
    .expect("admit")
    .get(0)
}

/// Contacts of `sender` counted as `kind` (1 new, 2 follow-up) in its rows.
fn counted_rows(c: &mut Client, sender: &str, kind: i16) -> i64 {
    count(
        c,
        &format!(
            "SELECT count(*) FROM throttle.contact_sent WHERE sender = '{sender}' AND counted_as = {kind}"
        ),
    )
}

#[test]
fn admissions_of_one_transaction_count_as_if_one_at_a_time() {
    let server = Server::start("contacts-txn", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    // Many admissions in one statement: exactly the cap, written once at commit, and the next
    // transaction goes on from there.
    line(
        &mut c,
        "tx-many",
        "('new_contacts', 5, NULL, NULL, NULL, NULL)",
    );
    let to = numbers("+1555810", 9);
    assert_eq!(admit_all(&mut c, "tx-many", &to[..8], "0"), 5);
    assert_eq!(counted_rows(&mut c, "tx-many", 1), 5, "written at commit");
    assert!(!admit(&mut c, "tx-many", &to[8], "1 minute", "sms").0);
    assert!(
        admit(&mut c, "tx-many", &to[0], "1 minute", "sms").0,
        "counted today: free"
    );

    // The windows move on within a transaction: what was counted is written, and the use is
    // read again for the new day.
    line(
        &mut c,
        "tx-day",
        "('new_contacts', 2, NULL, NULL, NULL, NULL)",
    );
    let to = numbers("+1555820", 5);
    c.batch_execute("BEGIN").expect("begin");
    assert_eq!(admit_all(&mut c, "tx-day", &to[..3], "0"), 2);
    assert_eq!(
        admit_all(&mut c, "tx-day", &to[2..5], "15 hours"),
        2,
        "after 03:00 New York, two more"
    );
    c.batch_execute("COMMIT").expect("commit");
    assert_eq!(counted_rows(&mut c, "tx-day", 1), 4);

    // A rolling window moves with every admission's time: each is judged on the use read
    // again after what the ones before counted is written.
    line(
        &mut c,
        "tx-roll",
        "('new_contacts', 3, '1 hour', NULL, NULL, NULL)",
    );
    let to = numbers("+1555825", 8);
    let admitted: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE (throttle.throttle_admit('tx-roll', 'att',
                            {NOON} + make_interval(secs => o::int), 1, 'sms', r)).admitted)
                   FROM unnest($1::text[]) WITH ORDINALITY AS u(r, o)"
            ),
            &[&to],
        )
        .expect("admit")
        .get(0);
    assert_eq!(admitted, 3, "3 in any hour");
    assert_eq!(counted_rows(&mut c, "tx-roll", 1), 3);

    // An inbound message in the same transaction is seen by the admissions after it.
    line(&mut c, "tx-in", "('unanswered', 2, NULL, NULL, NULL, NULL)");
    c.batch_execute("BEGIN").expect("begin");
    let one = vec!["+15558300000".to_string(); 3];
    assert_eq!(admit_all(&mut c, "tx-in", &one, "0"), 2);
    c.batch_execute(&format!(
        "SELECT throttle.inbound('tx-in', '+15558300000', {NOON} + interval '1 minute')"
    ))
    .expect("inbound");
    assert_eq!(
        admit_all(&mut c, "tx-in", &one, "2 minutes"),
        3,
        "a reply came"
    );
    c.batch_execute("COMMIT").expect("commit");

    // A savepoint rolled back releases the line's lock it took: what it counted is forgotten,
    // and what others count meanwhile is read afresh, never written over.
    line(
        &mut c,
        "tx-sub",
        "('new_contacts', 2, NULL, NULL, NULL, NULL)",
    );
    let to = numbers("+1555840", 4);
    c.batch_execute("BEGIN; SAVEPOINT a").expect("savepoint");
    assert_eq!(admit_all(&mut c, "tx-sub", &to[..1], "0"), 1);
    c.batch_execute("ROLLBACK TO SAVEPOINT a")
        .expect("rollback to");
    let mut other = server.connect();
    other
        .batch_execute("SET lock_timeout = '5s'")
        .expect("lock timeout");
    assert_eq!(
        admit_all(&mut other, "tx-sub", &to[1..3], "0"),
        2,
        "the line's lock went with the savepoint"
    );
    assert_eq!(
        admit_all(&mut c, "tx-sub", &to[3..4], "0"),
        0,
        "the other session's two are seen"
    );
    c.batch_execute("COMMIT").expect("commit");
    let rows: Vec<String> = c
        .query(
            "SELECT contact FROM throttle.contact_sent WHERE sender = 'tx-sub' ORDER BY contact",
            &[],
        )
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, to[1..3].to_vec());
}

#[test]
fn a_role_other_than_the_owner_admits_under_contact_rules_without_reading_their_tables() {
    let server = Server::start("contacts-role", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    line(
        &mut c,
        "rl-line",
        "('new_contacts', 3, NULL, NULL, NULL, NULL)",
    );
    c.batch_execute(
        "CREATE ROLE rl_app;
         GRANT USAGE ON SCHEMA throttle TO rl_app;
         CREATE SCHEMA rl_own AUTHORIZATION rl_app;
         SET ROLE rl_app",
    )
    .expect("a role");
    // The role's own `=` for text, first in its search path: it must never run as the
    // owner, who reads and writes the contact tables for the role.
    c.batch_execute(
        "CREATE FUNCTION rl_own.spy_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             IF current_user <> 'rl_app' THEN
                 RAISE EXCEPTION 'the role''s operator ran as %', current_user;
             END IF;
             RETURN a OPERATOR(pg_catalog.=) b;
         END $$;
         CREATE OPERATOR rl_own.= (LEFTARG = text, RIGHTARG = text, FUNCTION = rl_own.spy_eq);
         SET search_path = rl_own, pg_catalog, public",
    )
    .expect("an operator of the role's own");
    let to = numbers("+1555850", 5);
    assert_eq!(admit_all(&mut c, "rl-line", &to[..2], "0"), 2);
    // (Now the contact tables have rows for the operator to be called on.)
    assert_eq!(admit_all(&mut c, "rl-line", &to[2..], "0"), 1);
    let e = c
        .query("SELECT count(*) FROM throttle.contact_sent", &[])
        .expect_err("the contact tables stay the owner's");
    assert_eq!(sqlstate(&e), "42501");
    c.batch_execute("RESET ROLE; RESET search_path")
        .expect("reset role");
    assert_eq!(counted_rows(&mut c, "rl-line", 1), 3);
}

/// The recipients `sender` has state for, sorted.
fn contacts_of(c: &mut Client, sender: &str) -> Vec<String> {
    c.query(
        "SELECT contact FROM throttle.contact_sent WHERE sender = $1 ORDER BY contact",
        &[&sender],
    )
    .expect("contacts")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn counts_follow_commits_and_rollbacks_inside_procedures_and_exception_blocks() {
    let server = Server::start("contacts-txn-ends", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    for l in ["te-do", "te-exc", "te-proc", "te-rb"] {
        line(&mut c, l, "('new_contacts', 50, NULL, NULL, NULL, NULL)");
    }
    let admit = |line: &str, to: &str| {
        format!("PERFORM throttle.throttle_admit('{line}', 'att', now(), 1, 'sms', '{to}');")
    };
    // A COMMIT inside a DO block writes what came before it; the rest is written at the end.
    c.batch_execute(&format!(
        "DO $$ BEGIN {} COMMIT; {} END $$",
        admit("te-do", "+15558600001"),
        admit("te-do", "+15558600002")
    ))
    .expect("do");
    assert_eq!(
        contacts_of(&mut c, "te-do"),
        ["+15558600001", "+15558600002"]
    );
    // An exception block that fails forgets the line it locked; what comes after counts.
    c.batch_execute(&format!(
        "DO $$ BEGIN
             BEGIN {} RAISE EXCEPTION 'undone'; EXCEPTION WHEN raise_exception THEN NULL; END;
             {}
         END $$",
        admit("te-exc", "+15558600003"),
        admit("te-exc", "+15558600004")
    ))
    .expect("exception block");
    assert_eq!(contacts_of(&mut c, "te-exc"), ["+15558600004"]);
    // A procedure's COMMIT and ROLLBACK.
    c.batch_execute(&format!(
        "CREATE PROCEDURE te_proc() LANGUAGE plpgsql AS $$ BEGIN {} COMMIT; {} ROLLBACK; {} END $$",
        admit("te-proc", "+15558600005"),
        admit("te-proc", "+15558600006"),
        admit("te-proc", "+15558600007")
    ))
    .expect("procedure");
    // (Alone in its message: a CALL among other statements runs in a transaction block,
    // where it may not commit.)
    c.batch_execute("CALL te_proc()").expect("call");
    assert_eq!(
        contacts_of(&mut c, "te-proc"),
        ["+15558600005", "+15558600007"]
    );
    // A transaction rolled back writes nothing.
    c.batch_execute(
        "BEGIN; SELECT throttle.throttle_admit('te-rb', 'att', now(), 1, 'sms', '+15558600008'); ROLLBACK;",
    )
    .expect("rollback");
    assert!(contacts_of(&mut c, "te-rb").is_empty());
}

#[test]
fn a_transaction_past_10000_recipients_writes_what_it_counted_and_counts_on_exactly() {
    let server = Server::start("contacts-txn-bound", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('tb-line');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'tb-line', 1000000, '1 second');
         INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES ('sender', 'tb-line', 'new_contacts', 10500);",
    )
    .expect("configure");
    // One statement: past 10,000 kept recipients the transaction writes and reads again.
    let admitted: i64 = c
        .query_one(
            "SELECT count(*) FILTER (WHERE (throttle.throttle_admit('tb-line', 'att', now(), 1, 'sms',
                                                                   '+1555' || g)).admitted)
               FROM generate_series(1, 10600) g",
            &[],
        )
        .expect("admit")
        .get(0);
    assert_eq!(admitted, 10_500, "exactly the cap across the write");
    assert_eq!(counted_rows(&mut c, "tb-line", 1), 10_500);
}

/// Many recipients admitted in one statement under a pair rate: each recipient's row keeps
/// exactly its own recent sends (written for all of them at once, before commit), and the
/// next admission reads them back.
#[test]
fn a_statement_of_many_recipients_keeps_each_ones_own_recent_sends() {
    let server = Server::start("contacts-recent", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    line(
        &mut c,
        "rs-line",
        "('pair_rate', 2, '1 minute', NULL, NULL, NULL)",
    );
    c.batch_execute("UPDATE throttle.rate_limit SET rate = 1000000 WHERE scope_id = 'rs-line'")
        .expect("a rate that never binds");
    // Two sends to each of 300 recipients, at times of their own; the statement's start, as
    // µs since the Unix epoch, is what they are counted from.
    let base = count(
        &mut c,
        "WITH a AS (
             SELECT (throttle.throttle_admit('rs-line', 'att', now() + (g * 1000 + k * 1000000) * interval '1 microsecond',
                                              1, 'sms', '+1555700' || lpad(g::text, 4, '0'))).admitted AS ok
               FROM generate_series(1, 300) g, generate_series(0, 1) k)
         SELECT CASE WHEN bool_and(ok) AND count(*) = 600
                     THEN (extract(epoch FROM now()) * 1000000)::int8 ELSE -1 END FROM a",
    );
    assert!(base > 0, "every one of the 600 sends was admitted");
    let rows = c
        .query(
            "SELECT contact, array(SELECT (extract(epoch FROM t) * 1000000)::int8 FROM unnest(recent) AS t)
               FROM throttle.contact_sent WHERE sender = 'rs-line' ORDER BY contact",
            &[],
        )
        .expect("recent");
    assert_eq!(rows.len(), 300);
    for (i, r) in rows.iter().enumerate() {
        let g = i as i64 + 1;
        let recent: Vec<i64> = r.get(1);
        assert_eq!(
            recent,
            vec![base + g * 1000, base + g * 1000 + 1_000_000],
            "{}",
            r.get::<_, String>(0)
        );
    }
    // Read back: a third send within the minute is refused for each, until the first of its
    // two leaves the window.
    let third = count(
        &mut c,
        "SELECT count(*) FILTER (WHERE (throttle.throttle_admit('rs-line', 'att', now() + interval '2 seconds',
                                        1, 'sms', '+1555700' || lpad(g::text, 4, '0'))).admitted)
           FROM generate_series(1, 300) g",
    );
    assert_eq!(third, 0);
}

/// Wait (to a deadline) until the worker has made the contact filter ready.
fn filter_ready(c: &mut Client) {
    let ready = wait_for(
        c,
        "SELECT count(*) FROM throttle.contact_filter() WHERE ready",
        Duration::from_secs(30),
        |n| n == 1,
    );
    assert_eq!(ready, 1, "the contact filter is ready");
}

/// The filter that spares admissions a read of recipients never seen: a pair written in any
/// way (by an admission, or straight into the table) is read again, after a server start too
/// (the worker reads the tables into the new filter before it is used).
#[test]
fn the_contact_filter_never_spares_the_read_of_a_pair_that_was_written() {
    let mut server = Server::start("contacts-filter", &[]);
    let mut c = server.connect();
    line(
        &mut c,
        "cf-line",
        "('unanswered', 1, NULL, 'refuse', NULL, NULL)",
    );
    filter_ready(&mut c);
    let admit_now = |c: &mut Client, to: &str| -> bool {
        c.query_one(
            "SELECT admitted FROM throttle.throttle_admit('cf-line', 'att', now(), 1, 'sms', $1)",
            &[&to],
        )
        .expect("admit")
        .get(0)
    };
    // Written straight into the table: one message without a reply already.
    c.batch_execute(
        "INSERT INTO throttle.contact_sent (sender, contact, unanswered, last_sent_at)
         VALUES ('cf-line', '+15559100001', 1, now())",
    )
    .expect("a contact written directly");
    assert!(
        !admit_now(&mut c, "+15559100001"),
        "its unanswered count is read"
    );
    // Through admissions: the first to a new recipient goes, the second (in another
    // transaction, after the first was written) does not.
    assert!(admit_now(&mut c, "+15559100002"));
    assert!(!admit_now(&mut c, "+15559100002"));
    // After a server start (shared memory is new) the filter is built from the tables again.
    drop(c);
    server.restart("immediate");
    // For its first second a server refuses every admission (each limit counts as spent at
    // the start): past it, a refusal is the contact rule's.
    std::thread::sleep(Duration::from_millis(1200));
    let mut c = server.connect();
    filter_ready(&mut c);
    assert!(!admit_now(&mut c, "+15559100001"));
    assert!(!admit_now(&mut c, "+15559100002"));
    assert!(
        admit_now(&mut c, "+15559100003"),
        "a new recipient still goes"
    );
    let f = c
        .query_one(
            "SELECT bits_set, false_positive_rate FROM throttle.contact_filter()",
            &[],
        )
        .expect("filter");
    assert!(f.get::<_, i64>(0) > 0);
    assert!(f.get::<_, f64>(1) < 1e-6);
}

/// A recipient read as absent is first written with a plain insert; admitted again in the
/// same transaction after its window moved (which writes it before the line is read again),
/// it is written once more at commit as an update of that row, not a second insert.
#[test]
fn a_recipient_admitted_again_after_its_window_moved_in_one_transaction_keeps_one_row() {
    let server = Server::start("contacts-again", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    line(
        &mut c,
        "ag-line",
        "('new_contacts', 5, NULL, NULL, NULL, NULL)",
    );
    c.batch_execute("BEGIN").expect("begin");
    assert!(admit(&mut c, "ag-line", "+15559200001", "0", "sms").0);
    assert!(
        admit(&mut c, "ag-line", "+15559200001", "15 hours", "sms").0,
        "after 03:00 New York: a new day"
    );
    c.batch_execute("COMMIT")
        .expect("commit: one row for the recipient");
    let rows = c
        .query(
            &format!(
                "SELECT counted_at = {NOON} + interval '15 hours' FROM throttle.contact_sent
                  WHERE sender = 'ag-line' AND contact = '+15559200001'"
            ),
            &[],
        )
        .expect("rows");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get::<_, bool>(0), "counted on the second day");
}
