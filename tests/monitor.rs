//! Monitoring, explain and capacity planning against a real server.

use pg_throttle_tests::{count, sqlstate, wait_for, Server};
use std::time::Duration;

/// explain names the limit that holds a message and when it goes; explain_sender does the
/// same per queue; a released message and an unknown id say so.
#[test]
fn explain_says_which_limit_holds_a_message_and_until_when() {
    let server = Server::start("monitor-explain", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign) VALUES ('me-line', 'me-camp');
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per, burst) VALUES
             ('me line 1/s', 'sender', 'me-line', 1, '1 second', 1);
         INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, rate, per, burst) VALUES
             ('me camp att 600/min', 'campaign', 'me-camp', 'att', 600, '1 minute', 600);
         SELECT throttle.enqueue('me-line', 'att') FROM generate_series(1, 6);",
    )
    .expect("configure");
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(3),
        |n| n >= 1,
    );
    // The last of six on a 1/s line: four ahead of it (after the first went), about 5 s.
    let last: i64 = count(&mut c, "SELECT max(id) FROM throttle.pending");
    let rows = c
        .query(
            "SELECT kind, name, holds, extract(epoch FROM ready_at - now())::float8, detail
               FROM throttle.explain($1) WHERE kind IN ('queue', 'rate_limit') ORDER BY kind, name",
            &[&last],
        )
        .expect("explain");
    let held: Vec<(String, String, bool, f64, String)> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get::<_, Option<f64>>(3).unwrap_or(0.0),
                r.get(4),
            )
        })
        .collect();
    let queue = held.iter().find(|r| r.0 == "queue").expect("queue row");
    let ahead: i64 = count(
        &mut c,
        &format!("SELECT count(*) FROM throttle.pending WHERE id < {last}"),
    );
    assert!(
        queue.4.starts_with(&format!("{ahead} messages")),
        "{}",
        queue.4
    );
    let line = held
        .iter()
        .find(|r| r.1 == "me line 1/s")
        .expect("line row");
    assert!(line.2, "the 1/s line holds it");
    assert!(
        (ahead as f64 - 0.5..=ahead as f64 + 1.5).contains(&line.3),
        "ready in {} s with {ahead} ahead",
        line.3
    );
    let camp = held
        .iter()
        .find(|r| r.1 == "me camp att 600/min")
        .expect("campaign row");
    assert!(!camp.2 && camp.3 < 1.0, "the campaign has room: {camp:?}");

    let q = c
        .query_one(
            "SELECT waiting, held_by, last_id FROM throttle.explain_sender('me-line')",
            &[],
        )
        .expect("explain_sender");
    let (waiting, by, last_id): (i64, Option<String>, i64) = (q.get(0), q.get(1), q.get(2));
    assert_eq!(waiting, ahead + 1);
    assert_eq!(by.as_deref(), Some("rate_limit: me line 1/s"));
    assert_eq!(last_id, last);

    // An OTP at priority 10 goes first: it is the head, not the last.
    let otp: i64 = count(
        &mut c,
        "SELECT throttle.enqueue('me-line', 'att', priority => 10::int2)",
    );
    let (head, last_now): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT head_id, last_id FROM throttle.explain_sender('me-line')",
                &[],
            )
            .expect("explain_sender");
        (r.get(0), r.get(1))
    };
    assert_eq!((head, last_now), (otp, last));
    // A message of a sender nobody registered: the explanation says so.
    c.batch_execute("INSERT INTO throttle.pending (sender, carrier) VALUES ('me-nobody', 'att')")
        .expect("enqueue");
    let kind: String = c
        .query_one(
            "SELECT kind FROM throttle.explain((SELECT max(id) FROM throttle.pending WHERE sender = 'me-nobody')) WHERE holds",
            &[],
        )
        .expect("unregistered")
        .get(0);
    assert_eq!(kind, "sender");
    let first: i64 = count(&mut c, "SELECT min(id) FROM throttle.ready");
    let kind: String = c
        .query_one("SELECT kind FROM throttle.explain($1)", &[&first])
        .expect("released")
        .get(0);
    assert_eq!(kind, "released");
    let e = c
        .query("SELECT * FROM throttle.explain(123456789)", &[])
        .expect_err("unknown");
    assert_eq!(sqlstate(&e), "42704");
}

/// A session that meets many senders reads all their limits at once
/// (`throttle.preload_senders`); what it then plans with is what reading each sender alone
/// gives, over senders of every scope, sender type, carrier and channel.
#[test]
fn limits_read_at_once_are_those_read_one_sender_at_a_time() {
    let server = Server::start("monitor-preload", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign, brand, account, sender_type, weight)
         SELECT 'pre-' || g, 'pc-' || (g % 7), CASE WHEN g % 3 > 0 THEN 'pb-' || (g % 5) END,
                'pa-' || (g % 2), (ARRAY['long_code', 'short_code', NULL])[1 + g % 3], 1 + g % 4
           FROM generate_series(1, 80) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst)
         SELECT 'sender', 'pre-' || g, g, '1 second', CASE WHEN g % 2 = 0 THEN g END
           FROM generate_series(1, 80, 3) g;
         INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, rate, per)
         SELECT CASE WHEN g % 2 = 0 THEN 'camp ' || g END, 'campaign', 'pc-' || g, 'att', 100 + g, '1 minute'
           FROM generate_series(0, 6) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, channel, rate, per, burst)
         SELECT 'brand', 'pb-' || g, 'mms', 10 + g, '1 hour', 5 FROM generate_series(0, 4) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, sender_type, rate, per, each_sender)
         SELECT 'account', 'pa-' || g, 'short_code', 50 + g, '1 second', g = 0 FROM generate_series(0, 1) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per)
         VALUES ('account', 'pa-1', 1000, '1 day');",
    )
    .expect("configure");
    let plans = |c: &mut postgres::Client| -> Vec<String> {
        c.query(
            "SELECT s.sender || ' ' || k.carrier || ' ' || ch.channel || ': ' || p.limit_name || ' '
                    || p.volume || ' ' || p.time_needed
               FROM throttle.sender s, unnest(ARRAY['att', 'tmobile']) k(carrier),
                    unnest(ARRAY['sms', 'mms']) ch(channel),
                    LATERAL throttle.plan_capacity(s.sender, 1000, ARRAY[k.carrier], channel => ch.channel) p
              ORDER BY 1",
            &[],
        )
        .expect("plans")
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // 80 senders: past the first 32 read alone, the rest at once.
    let at_once = plans(&mut c);
    let mut alone = server.connect();
    alone
        .batch_execute("SET throttle.preload_senders = 0")
        .expect("one at a time");
    let one_by_one = plans(&mut alone);
    assert!(
        at_once.len() > 80 * 2 * 2,
        "limits and totals: {}",
        at_once.len()
    );
    assert_eq!(at_once, one_by_one);
}

/// Capacity planning from the same limits: time for a volume, and senders for a deadline.
#[test]
fn plan_capacity_answers_how_long_and_how_many_lines() {
    let server = Server::start("monitor-plan", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign) VALUES ('mp-line', 'mp-camp');
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per, burst) VALUES
             ('mp line 1/s', 'sender', 'mp-line', 1, '1 second', 1);
         INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, rate, per, burst) VALUES
             ('mp camp att 60/min', 'campaign', 'mp-camp', 'att', 60, '1 minute', 60);",
    )
    .expect("configure");
    // 3,600 to T-Mobile only: the line alone, 3,599 s after the first.
    let r = c
        .query_one(
            "SELECT extract(epoch FROM time_needed)::int8, senders_needed
               FROM throttle.plan_capacity('mp-line', 3600, ARRAY['tmobile'], deadline => '30 minutes')
              WHERE limit_name = 'total'",
            &[],
        )
        .expect("plan");
    let (secs, senders): (i64, Option<i64>) = (r.get(0), r.get(1));
    assert_eq!(secs, 3599);
    assert_eq!(senders, Some(2), "two lines finish 3,600 within 30 minutes");
    // Half of 7,200 to AT&T: the campaign's 60/min is shared; more lines do not help.
    let rows = c
        .query(
            "SELECT limit_name, scope, volume, extract(epoch FROM time_needed)::int8, note
               FROM throttle.plan_capacity('mp-line', 7200, ARRAY['att', 'tmobile'], deadline => '30 minutes')
              ORDER BY limit_name",
            &[],
        )
        .expect("plan");
    let camp = rows
        .iter()
        .find(|r| r.get::<_, String>(0) == "mp camp att 60/min")
        .expect("campaign row");
    assert_eq!(camp.get::<_, i64>(2), 3600);
    assert_eq!(camp.get::<_, i64>(3), (3600 - 60) * 60 / 60);
    let total = rows
        .iter()
        .find(|r| r.get::<_, String>(0) == "total")
        .expect("total row");
    assert!(
        total.get::<_, String>(4).contains("cannot be met"),
        "{}",
        total.get::<_, String>(4)
    );
    let e = c
        .query(
            "SELECT * FROM throttle.plan_capacity('mp-line', 10, ARRAY['att'], ARRAY[1, 2])",
            &[],
        )
        .expect_err("shares do not match");
    assert_eq!(sqlstate(&e), "22023");
    for bad in [
        "SELECT * FROM throttle.plan_capacity('mp-line', 10, ARRAY['att', 'tmobile'], ARRAY[1e308, 1e308])",
        "SELECT * FROM throttle.plan_capacity('mp-line', 10000000000000)",
        "SELECT * FROM throttle.plan_capacity('mp-line', 10, cost => 0)",
        "SELECT * FROM throttle.plan_capacity('mp-line', 10, deadline => '-1 hour')",
    ] {
        let e = c.query(bad, &[]).expect_err(bad);
        assert_eq!(sqlstate(&e), "22023", "{bad}");
    }
    let e = c
        .query("SELECT * FROM throttle.plan_capacity('nobody', 10)", &[])
        .expect_err("unknown sender");
    assert_eq!(sqlstate(&e), "42704");
    // STRICT: a NULL argument gives no rows, not an error.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.plan_capacity(NULL, 10)"
        ),
        0
    );
    // A message costing more than a burst never goes.
    let never: Option<f64> = c
        .query_one(
            "SELECT extract(epoch FROM time_needed)::float8 FROM throttle.plan_capacity('mp-line', 10, ARRAY['tmobile'], cost => 2)
              WHERE limit_name = 'mp line 1/s'",
            &[],
        )
        .expect("never")
        .get(0);
    assert_eq!(never, None);
}

/// The monitoring views answer, and every query of the postgres_exporter file runs.
#[test]
fn monitoring_views_and_exporter_queries_run() {
    let server = Server::start("monitor-views", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign, account) VALUES ('mv-line', 'mv-camp', 'mv-acct');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst) VALUES ('sender', 'mv-line', 2, '1 second', 1);
         INSERT INTO throttle.cap (scope, scope_id, cap) VALUES ('account', 'mv-acct', 1000);
         INSERT INTO throttle.queue_cap (scope, scope_id, max_waiting) VALUES ('campaign', 'mv-camp', 100);",
    )
    .expect("configure");
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.queue_cap_state WHERE counted",
        Duration::from_secs(5),
        |n| n == 1,
    );
    c.batch_execute("SELECT throttle.enqueue('mv-line', 'att') FROM generate_series(1, 10)")
        .expect("enqueue");
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(3),
        |n| n >= 3,
    );
    let waiting = count(&mut c, "SELECT count(*) FROM throttle.pending");
    assert_eq!(
        count(
            &mut c,
            "SELECT waiting FROM throttle.queue_state WHERE sender = 'mv-line'"
        ),
        waiting
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT waiting FROM throttle.group_queue_state WHERE scope = 'campaign' AND scope_id = 'mv-camp'"
        ),
        waiting
    );
    assert_eq!(
        count(&mut c, "SELECT waiting FROM throttle.queue_cap_state"),
        waiting
    );
    let released = count(&mut c, "SELECT count(*) FROM throttle.ready");
    assert_eq!(
        count(&mut c, "SELECT used FROM throttle.cap_state"),
        released
    );
    let soon: f64 = c
        .query_one(
            "SELECT extract(epoch FROM next_room_at - now())::float8 FROM throttle.limit_state",
            &[],
        )
        .expect("limit_state")
        .get(0);
    assert!(soon <= 0.6, "a 2/s limit has room within 0.5 s: {soon}");
    std::thread::sleep(Duration::from_millis(1500));
    let per_s: f64 = c
        .query_one("SELECT released_per_s FROM throttle.worker_state()", &[])
        .expect("worker_state")
        .get(0);
    assert!((1.0..=3.5).contains(&per_s), "released per second {per_s}");

    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../monitoring/postgres_exporter_queries.yaml"),
    )
    .expect("exporter queries");
    let queries: Vec<&str> = file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("query: \""))
        .map(|q| q.trim_end_matches('"'))
        .collect();
    assert_eq!(queries.len(), 5);
    // Every function, table, view and type of the extension says what it is.
    let undocumented: Vec<String> = c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
              WHERE p.pronamespace = 'throttle'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL
             UNION ALL
             SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relnamespace = 'throttle'::regnamespace AND c.relkind IN ('r', 'v')
                AND obj_description(c.oid, 'pg_class') IS NULL
             UNION ALL
             SELECT t.oid::regtype::text FROM pg_type t
              WHERE t.typnamespace = 'throttle'::regnamespace AND t.typtype IN ('e', 'c') AND t.typrelid = 0
                AND obj_description(t.oid, 'pg_type') IS NULL",
            &[],
        )
        .expect("comments")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(undocumented.is_empty(), "no COMMENT ON: {undocumented:?}");
    for q in queries {
        let rows = c.query(q, &[]).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(
            !rows.is_empty() || q.contains("queue_cap_state"),
            "{q} returned nothing"
        );
    }
}
