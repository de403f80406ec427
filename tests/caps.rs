//! Calendar caps, local-time release, queue caps and expiry against real servers.

use pg_throttle_tests::{count, sqlstate, wait_for, Client, Server};
use postgres::fallible_iterator::FallibleIterator;
use std::time::Duration;

/// A daily cap whose reset, in Los Angeles, is a few seconds from now: the "23:59 Pacific"
/// of the issue, without waiting for midnight. Messages over the cap wait for the reset and
/// go right after it; usage is in the table and survives an immediate shutdown.
#[test]
fn a_cap_hit_just_before_the_reset_releases_after_it_and_usage_survives_a_crash() {
    let mut server = Server::start("caps-reset", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) VALUES ('cr-1', 'acme');
         INSERT INTO throttle.cap (name, scope, scope_id, cap, period, reset_at, time_zone)
         SELECT 'acme daily', 'brand', 'acme', 5, 'day',
                (date_trunc('second', now() AT TIME ZONE 'America/Los_Angeles') + interval '6 seconds')::time,
                'America/Los_Angeles';",
    )
    .expect("configure");
    let reset: i64 = count(
        &mut c,
        "SELECT (extract(epoch FROM window_end) * 1000000)::int8 FROM throttle.cap_state",
    );
    let now_us: i64 = count(&mut c, "SELECT (extract(epoch FROM now()) * 1000000)::int8");
    // 5 to 6 s after the configuring statement, less what this one came later (a busy machine
    // took 9 ms there once): enough for the first 5 to go and the rest to be seen waiting.
    assert!(
        (2_500_000..=6_100_000).contains(&(reset - now_us)),
        "reset {} µs away",
        reset - now_us
    );
    c.batch_execute("SELECT throttle.enqueue('cr-1', 'tmobile') FROM generate_series(1, 8)")
        .expect("enqueue");
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(2),
        |n| n == 5,
    );
    assert_eq!(n, 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.ready"),
        5,
        "over the cap"
    );
    assert_eq!(count(&mut c, "SELECT used FROM throttle.cap_state"), 5);

    // A crash: usage is in the table, counted with the release.
    drop(c);
    server.restart("immediate");
    let mut c = server.connect();
    let used: i64 = count(
        &mut c,
        "SELECT coalesce(sum(used), 0)::int8 FROM throttle.cap_usage",
    );
    assert_eq!(used, 5, "usage survives an immediate shutdown");

    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(10),
        |n| n == 8,
    );
    assert_eq!(n, 8, "the rest goes after the reset");
    let early: i64 = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.ready WHERE released_at < to_timestamp({reset} / 1000000.0)"
        ),
    );
    assert_eq!(early, 5, "only the cap's 5 went before the reset");
    // The new window counted the other 3.
    let windows: Vec<(i64, i64)> = c
        .query(
            "SELECT (extract(epoch FROM window_start) * 1000000)::int8, used FROM throttle.cap_usage ORDER BY 1",
            &[],
        )
        .expect("usage")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(windows.len(), 2);
    assert_eq!(windows[1], (reset, 3));
}

/// Over-cap messages with at_cap = defer_local go at 08:00 in the recipient's zone (from the
/// area code) once the cap has reset; a number with no North American area code at 08:00
/// in the cap's own zone.
#[test]
fn over_the_cap_to_212_goes_at_eight_in_new_york_and_to_808_at_eight_in_honolulu() {
    let server = Server::start("caps-local", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) VALUES ('cl-1', 'tmo-brand');
         INSERT INTO throttle.cap (scope, scope_id, carrier, cap, period, time_zone, at_cap, local_time)
         VALUES ('brand', 'tmo-brand', 'tmobile', 3, 'day', 'America/Los_Angeles', 'defer_local', '08:00');",
    )
    .expect("configure");
    // Two segments each, in one statement: the first fits the cap of 3, the second finds it
    // full in the middle of the worker's batch, and the rest of the queue waits with it.
    c.batch_execute(
        "SELECT throttle.enqueue('cl-1', 'tmobile', r, cost => 2)
           FROM unnest(ARRAY['+13105550100', '+1 (212) 555-0100', '+18085550100', '+442071234567']) r;",
    )
    .expect("enqueue");
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(3),
        |n| n == 1,
    );
    assert_eq!(n, 1);
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.pending WHERE not_before IS NOT NULL",
        Duration::from_secs(3),
        |n| n == 3,
    );
    assert_eq!(n, 3, "all three deferred");
    // The expected instants, computed by PostgreSQL itself: the first 08:00 local at or
    // after midnight Pacific.
    let rows = c
        .query(
            "WITH reset AS (SELECT window_end AS r FROM throttle.cap_state),
                  want AS (
                    SELECT z.recipient,
                           CASE WHEN ((r AT TIME ZONE z.zone)::date + time '08:00') AT TIME ZONE z.zone >= r
                                THEN ((r AT TIME ZONE z.zone)::date + time '08:00') AT TIME ZONE z.zone
                                ELSE ((r AT TIME ZONE z.zone)::date + 1 + time '08:00') AT TIME ZONE z.zone END AS at
                      FROM reset, (VALUES ('+1 (212) 555-0100', 'America/New_York'),
                                          ('+18085550100', 'Pacific/Honolulu'),
                                          ('+442071234567', 'America/Los_Angeles')) z(recipient, zone))
             SELECT w.recipient, p.not_before = w.at, p.not_before::text, w.at::text
               FROM want w JOIN throttle.pending p USING (recipient) ORDER BY 1",
            &[],
        )
        .expect("compare");
    assert_eq!(rows.len(), 3);
    for r in rows {
        let (who, same, got, want): (String, bool, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert!(same, "{who}: not_before {got}, want {want}");
    }
    // Nothing else goes before then.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&mut c, "SELECT count(*) FROM throttle.ready"), 1);
    assert_eq!(count(&mut c, "SELECT used FROM throttle.cap_state"), 2);
}

/// Refuse dead-letters with the cap's error code; exempt campaigns pass; thresholds are
/// announced once each with NOTIFY; expired messages carry their error code.
#[test]
fn refusal_exemption_warnings_and_expiry_codes() {
    let server = Server::start("caps-misc", &[]);
    let mut c = server.connect();
    let mut listener = server.connect();
    listener
        .batch_execute("LISTEN throttle_cap")
        .expect("listen");
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign, brand, expiry_error_code) VALUES
             ('cm-sale', 'sale', 'b1', NULL), ('cm-vote', 'political', 'b1', NULL),
             ('cm-slow', NULL, NULL, '1158'), ('cm-slow2', NULL, NULL, NULL);
         INSERT INTO throttle.cap (name, scope, scope_id, cap, at_cap, error_code, warn_at)
         VALUES ('b1 daily', 'brand', 'b1', 4, 'refuse', '542', '{50,100}');
         INSERT INTO throttle.cap_exemption (cap_id, campaign)
         SELECT cap_id, 'political' FROM throttle.cap WHERE name = 'b1 daily';
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst) VALUES
             ('sender', 'cm-slow', 1, '1 hour', 1), ('sender', 'cm-slow2', 1, '1 hour', 1);",
    )
    .expect("configure");
    c.batch_execute(
        "SELECT throttle.enqueue('cm-sale', 'tmobile') FROM generate_series(1, 6);
         SELECT throttle.enqueue('cm-vote', 'tmobile') FROM generate_series(1, 6);",
    )
    .expect("enqueue");
    let n = wait_for(
        &mut c,
        "SELECT (SELECT count(*) FROM throttle.ready) + (SELECT count(*) FROM throttle.dead)",
        Duration::from_secs(3),
        |n| n == 12,
    );
    assert_eq!(n, 12);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.ready WHERE sender = 'cm-sale'"
        ),
        4
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.ready WHERE sender = 'cm-vote'"
        ),
        6,
        "the political campaign is exempt"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.dead WHERE sender = 'cm-sale' AND error_code = '542'
                AND reason LIKE '%b1 daily%'"
        ),
        2
    );
    assert_eq!(count(&mut c, "SELECT used FROM throttle.cap_state"), 4);
    // 50 % and 100 %, once each.
    std::thread::sleep(Duration::from_millis(200));
    listener.batch_execute("SELECT 1").expect("poll");
    let mut seen: Vec<i64> = Vec::new();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(Duration::from_millis(500));
    while let Ok(Some(n)) = it.next() {
        let v: serde_like::Note = serde_like::parse(n.payload());
        assert_eq!(v.cap, "b1 daily");
        seen.push(v.percent);
    }
    seen.sort();
    assert_eq!(seen, vec![50, 100]);

    // Expiry: the sender's own code, else throttle.expiry_error_code (30036).
    c.batch_execute(
        "SELECT throttle.enqueue('cm-slow', 'att') FROM generate_series(1, 2);
         SELECT throttle.enqueue('cm-slow2', 'att') FROM generate_series(1, 2);
         UPDATE throttle.pending SET expires_at = now() + interval '300 ms';",
    )
    .expect("enqueue");
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.dead WHERE reason = 'expired before release'",
        Duration::from_secs(3),
        |n| n == 2,
    );
    assert_eq!(n, 2, "one of each sender was released, the other expired");
    let codes: Vec<(String, String)> = c
        .query(
            "SELECT sender, error_code FROM throttle.dead WHERE reason = 'expired before release' ORDER BY 1",
            &[],
        )
        .expect("codes")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("cm-slow".to_string(), "1158".to_string()),
            ("cm-slow2".to_string(), "30036".to_string())
        ]
    );
}

/// A tiny parser for the NOTIFY payload (the tests crate has no JSON dependency).
mod serde_like {
    pub struct Note {
        pub cap: String,
        pub percent: i64,
    }

    fn field<'a>(s: &'a str, name: &str) -> &'a str {
        let key = format!("\"{name}\" : ");
        let at = s.find(&key).map(|i| i + key.len()).unwrap_or_else(|| {
            let key = format!("\"{name}\":");
            s.find(&key).map(|i| i + key.len()).expect("field")
        });
        let rest = s[at..].trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end].trim()
    }

    pub fn parse(s: &str) -> Note {
        Note {
            cap: field(s, "cap").trim_matches('"').to_string(),
            percent: field(s, "percent").parse().expect("percent"),
        }
    }
}

/// Queue caps: an enqueue over the cap fails with PT429 and changes nothing; a rollback, a
/// release and a delete give places back; eight clients at once never overfill it; a cap
/// derived from rate × validity.
#[test]
fn queue_caps_refuse_with_their_own_sqlstate_and_never_overfill() {
    let server = Server::start("caps-queue", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, account) VALUES ('qc-line', NULL), ('qc-a', 'acct'), ('qc-b', 'acct');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst) VALUES
             ('sender', 'qc-line', 1, '1 hour', 1),
             ('account', 'acct', 2, '1 hour', 1);
         INSERT INTO throttle.queue_cap (name, scope, scope_id, max_waiting, error_code)
             VALUES ('line queue', 'sender', 'qc-line', 3, '21611');
         -- 2 per hour for 10 hours: 20.
         INSERT INTO throttle.queue_cap (name, scope, scope_id, validity)
             VALUES ('account queue', 'account', 'acct', '10 hours');",
    )
    .expect("configure");
    // The worker counts the caps; until then an enqueue says so (55000).
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.queue_cap_state WHERE counted",
        Duration::from_secs(5),
        |n| n == 2,
    );
    assert_eq!(n, 2);
    assert_eq!(
        count(
            &mut c,
            "SELECT max_waiting FROM throttle.queue_cap_state WHERE name = 'account queue'"
        ),
        20
    );
    // One goes at once (burst 1); then three wait: the cap of 3 is reached. (A message is
    // counted when it is enqueued: four in one statement would not fit.)
    c.batch_execute("SELECT throttle.enqueue('qc-line', 'att')")
        .expect("enqueue");
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(3),
        |n| n == 1,
    );
    // The worker uncounts what it moved just after its commit: wait for that too, not only
    // for the row to show in ready.
    wait_for(
        &mut c,
        "SELECT coalesce(sum(waiting), 0)::int8 FROM throttle.queue_cap_counts()",
        Duration::from_secs(3),
        |n| n == 0,
    );
    let e = c
        .batch_execute("SELECT throttle.enqueue('qc-line', 'att') FROM generate_series(1, 4)")
        .expect_err("four do not fit in three places");
    assert_eq!(sqlstate(&e), "PT429", "{e}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM throttle.pending"), 0);
    c.batch_execute("SELECT throttle.enqueue('qc-line', 'att') FROM generate_series(1, 3)")
        .expect("three fit");
    let e = c
        .batch_execute("SELECT throttle.enqueue('qc-line', 'att')")
        .expect_err("over the cap");
    assert_eq!(sqlstate(&e), "PT429", "{e}");
    let db = e.as_db_error().expect("db error");
    assert!(db.message().contains("line queue"), "{}", db.message());
    let detail = db.detail().unwrap_or_default();
    assert!(
        detail.contains("max_waiting: 3") && detail.contains("21611"),
        "{detail}"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.pending"),
        3,
        "nothing changed"
    );
    // A statement that would go over fails whole.
    let e = c
        .batch_execute("INSERT INTO throttle.pending (sender, carrier) VALUES ('qc-b', 'att'), ('qc-line', 'att')")
        .expect_err("over");
    assert_eq!(sqlstate(&e), "PT429");
    assert_eq!(count(&mut c, "SELECT count(*) FROM throttle.pending"), 3);
    assert_eq!(
        count(
            &mut c,
            "SELECT waiting FROM throttle.queue_cap_state WHERE name = 'account queue'"
        ),
        0,
        "the failed statement's row gave its place back"
    );
    // A delete frees a place at commit; a rolled-back delete does not.
    c.batch_execute(
        "BEGIN; DELETE FROM throttle.pending WHERE id = (SELECT min(id) FROM throttle.pending); ROLLBACK;",
    )
    .expect("rolled back");
    assert!(c
        .batch_execute("SELECT throttle.enqueue('qc-line', 'att')")
        .is_err());
    c.batch_execute(
        "DELETE FROM throttle.pending WHERE id = (SELECT min(id) FROM throttle.pending)",
    )
    .expect("delete");
    c.batch_execute("SELECT throttle.enqueue('qc-line', 'att')")
        .expect("a place was freed");
    // A savepoint rolled back gives its places back.
    c.batch_execute(
        "BEGIN; SAVEPOINT s; SELECT throttle.enqueue('qc-a', 'att') FROM generate_series(1, 5);
         ROLLBACK TO SAVEPOINT s; COMMIT;",
    )
    .expect("savepoint");
    assert_eq!(
        count(
            &mut c,
            "SELECT waiting FROM throttle.queue_cap_state WHERE name = 'account queue'"
        ),
        0
    );

    // Eight clients race for the account's 20 places (one is released at once: 21 fit).
    let mut threads = Vec::new();
    for i in 0..8 {
        let info = server.conninfo();
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&info, postgres::NoTls).expect("connect");
            let mut ok = 0;
            for _ in 0..10 {
                let sender = if i % 2 == 0 { "qc-a" } else { "qc-b" };
                match c.execute("SELECT throttle.enqueue($1, 'att')", &[&sender]) {
                    Ok(_) => ok += 1,
                    Err(e) => assert_eq!(sqlstate(&e), "PT429", "{e}"),
                }
            }
            ok
        }));
    }
    let ok: i64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    let waiting = count(
        &mut c,
        "SELECT count(*) FROM throttle.pending WHERE sender IN ('qc-a', 'qc-b')",
    );
    assert!(waiting <= 20, "{waiting} waiting over a cap of 20");
    assert!((20..=21).contains(&ok), "{ok} enqueued");
    assert_eq!(
        count(
            &mut c,
            "SELECT waiting FROM throttle.queue_cap_state WHERE name = 'account queue'"
        ),
        waiting,
        "the count matches the table"
    );
}

/// throttle_admit honours calendar caps through leases: never more than the cap, even from
/// several clients at once, and the refusal names the cap and its reset.
#[test]
fn throttle_admit_honours_calendar_caps_through_leases() {
    let server = Server::start("caps-admit", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, account) SELECT 'ca-' || i, 'ca-acct' FROM generate_series(1, 50) i;
         INSERT INTO throttle.cap (name, scope, scope_id, cap, period, time_zone)
         VALUES ('ca hourly', 'account', 'ca-acct', 700, 'hour', 'America/New_York');",
    )
    .expect("configure");
    let mut threads = Vec::new();
    for t in 0..4 {
        let info = server.conninfo();
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&info, postgres::NoTls).expect("connect");
            let r = c
                .query_one(
                    "SELECT count(*) FILTER (WHERE throttle.try_admit('ca-' || (i % 50 + 1), 'att'))
                       FROM generate_series($1::int, $1::int + 299) i",
                    &[&(t * 300)],
                )
                .expect("admit");
            r.get::<_, i64>(0)
        }));
    }
    let admitted: i64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(admitted, 700, "exactly the cap, from 1,200 attempts");
    let row = c
        .query_one(
            "SELECT admitted, blocked_limit, blocked_by,
                    retry_at = (SELECT window_end FROM throttle.cap_state)
               FROM throttle.throttle_admit('ca-1', 'att')",
            &[],
        )
        .expect("refused");
    let (ok, limit, by, at_reset): (bool, i64, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(!ok);
    let cap_id = count(&mut c, "SELECT cap_id FROM throttle.cap");
    assert_eq!(limit, -cap_id);
    assert_eq!(by, "ca hourly");
    assert!(at_reset, "retry at the reset");
    let (used, leased): (i64, i64) = {
        let r = c
            .query_one("SELECT used, leased FROM throttle.cap_usage", &[])
            .expect("usage");
        (r.get(0), r.get(1))
    };
    assert_eq!(used + leased, 700, "leases are counted in the table");
    let (unspent, leased_now): (i64, i64) = {
        let r = c
            .query_one("SELECT leased_unspent, leased FROM throttle.cap_state", &[])
            .expect("state");
        (r.get(0), r.get(1))
    };
    assert_eq!((unspent, leased_now), (0, 700), "every lease was spent");
    // A time in the next window is judged there, and does not open this one.
    c.batch_execute("SET throttle.max_future = '2h'")
        .expect("set");
    let next: bool = c
        .query_one(
            "SELECT admitted FROM throttle.throttle_admit('ca-1', 'att',
                 (SELECT window_end FROM throttle.cap_state) + interval '1 minute')",
            &[],
        )
        .expect("next window")
        .get(0);
    assert!(next, "the next window has room");
    let now_ok: bool = c
        .query_one(
            "SELECT admitted FROM throttle.throttle_admit('ca-1', 'att')",
            &[],
        )
        .expect("this window")
        .get(0);
    assert!(!now_ok, "this window is still full");
    // A cost more than the whole window allows is never admitted.
    let never: Option<String> = c
        .query_one(
            "SELECT retry_at::text FROM throttle.throttle_admit('ca-1', 'att', now(), 701)",
            &[],
        )
        .expect("never")
        .get(0);
    assert_eq!(never, None);
}

/// Configuration mistakes are refused with 22023 and a hint, changing nothing.
#[test]
fn bad_caps_are_refused() {
    let server = Server::start("caps-bad", &[]);
    let mut c = server.connect();
    for (sql, code) in [
        (
            "INSERT INTO throttle.cap (scope, scope_id, cap, time_zone) VALUES ('brand', 'b', 10, 'Mars/Olympus')",
            "22023",
        ),
        (
            "INSERT INTO throttle.cap (scope, scope_id, cap) VALUES ('brand', 'b', 0)",
            "22023",
        ),
        (
            "INSERT INTO throttle.cap (scope, scope_id, cap, warn_at) VALUES ('brand', 'b', 10, '{0}')",
            "22023",
        ),
        (
            "INSERT INTO throttle.cap (scope, scope_id, cap, overage_pct) VALUES ('brand', 'b', 10, -5)",
            "22023",
        ),
        (
            "INSERT INTO throttle.queue_cap (scope, scope_id) VALUES ('sender', 's')",
            "23514",
        ),
        ("SELECT throttle.next_local_time('{Nowhere/Land}', now(), '08:00')", "22023"),
        ("SELECT * FROM throttle.cap_window('week', '00:00', 'UTC', now())", "22023"),
        ("SELECT * FROM throttle.cap_window('day', '00:00', 'UTC', 'infinity')", "22023"),
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), code, "{sql}: {e}");
    }
    assert_eq!(count(&mut c, "SELECT count(*) FROM throttle.cap"), 0);
    assert_eq!(
        c.query_one("SELECT throttle.area_code('+1 212 555 0100')", &[])
            .expect("area code")
            .get::<_, Option<String>>(0)
            .as_deref(),
        Some("212")
    );
}

/// A campaign exempted from a defer_local cap after its messages were held until a local
/// time: they go at once, not at 08:00.
#[test]
fn an_exemption_added_lets_held_messages_go() {
    let server = Server::start("caps-exempt", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand, campaign) VALUES ('ce-1', 'ce-brand', 'political');
         INSERT INTO throttle.cap (scope, scope_id, cap, period, time_zone, at_cap, local_time)
         VALUES ('brand', 'ce-brand', 1, 'day', 'America/Los_Angeles', 'defer_local', '08:00');",
    )
    .expect("configure");
    let ids: Vec<i64> = c
        .query(
            "SELECT throttle.enqueue('ce-1', 'tmobile', '+12125550100') FROM generate_series(1, 3)",
            &[],
        )
        .expect("enqueue")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let held = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.pending WHERE held_by IS NOT NULL",
        Duration::from_secs(5),
        |n| n == 2,
    );
    assert_eq!(held, 2, "one went, two are held until 08:00");
    c.batch_execute(
        "INSERT INTO throttle.cap_exemption (cap_id, campaign) SELECT cap_id, 'political' FROM throttle.cap",
    )
    .expect("exempt");
    let n = wait_for(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.ready WHERE id IN ({})",
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        Duration::from_secs(5),
        |n| n == 3,
    );
    assert_eq!(n, 3, "the exempt campaign's held messages went at once");
}

/// The Sendblue line profile (a rate and a queue cap of 1,500 per line) on 1,100 lines: more
/// queue caps than 0.3.0's fixed 1,024, counted in a table `throttle.max_queue_caps` sizes.
/// Past that size the error names the setting and nothing is created.
#[test]
fn a_line_profile_on_1100_lines_and_a_full_table_names_its_setting() {
    let server = Server::start("caps-many-lines", &["throttle.max_queue_caps = 1200"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) SELECT 'sb-' || g FROM generate_series(1, 1201) g;
         SELECT count(*) FROM throttle.apply_profile('sendblue_line', 'sender', ARRAY(SELECT 'sb-' || g FROM generate_series(1, 1100) g));",
    )
    .expect("the line profile on 1,100 lines");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.queue_cap"),
        1100
    );
    let size = count(
        &mut c,
        "SELECT size FROM throttle.shmem_tables() WHERE setting = 'throttle.max_queue_caps'",
    );
    assert_eq!(size, 1200);
    let counted = wait_for(
        &mut c,
        "SELECT used FROM throttle.shmem_tables() WHERE setting = 'throttle.max_queue_caps'",
        Duration::from_secs(10),
        |n| n == 1100,
    );
    assert_eq!(counted, 1100, "the worker counts every line's queue cap");
    // One line's queue holds exactly 1,500 (scheduled for tomorrow, so none leaves meanwhile).
    c.batch_execute("INSERT INTO throttle.pending (sender, carrier, not_before) SELECT 'sb-777', 'att', now() + interval '1 day' FROM generate_series(1, 1500)")
        .expect("1,500 fit");
    let e = c
        .batch_execute("INSERT INTO throttle.pending (sender, carrier, not_before) VALUES ('sb-777', 'att', now() + interval '1 day')")
        .expect_err("the 1,501st does not");
    assert_eq!(sqlstate(&e), "PT429", "{e}");
    // Another line's cap is found as well (the counts are searched, not scanned).
    c.batch_execute(
        "INSERT INTO throttle.pending (sender, carrier) VALUES ('sb-3', 'att'), ('sb-1100', 'att')",
    )
    .expect("other lines take messages");
    // 101 more lines do not fit: 53400, the setting named, nothing created.
    let e = c
        .batch_execute("SELECT count(*) FROM throttle.apply_profile('sendblue_line', 'sender', ARRAY(SELECT 'sb-' || g FROM generate_series(1101, 1201) g))")
        .expect_err("1,201 queue caps do not fit in 1,200");
    assert_eq!(sqlstate(&e), "53400", "{e}");
    let db = e.as_db_error().expect("a server error");
    assert!(
        db.message().contains("throttle.max_queue_caps"),
        "{}",
        db.message()
    );
    assert!(
        db.hint()
            .is_some_and(|h| h.contains("raise throttle.max_queue_caps")),
        "{db:?}"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.queue_cap"),
        1100
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.rate_limit"),
        1100
    );
}

/// Calendar-cap leases live in a table `throttle.max_cap_leases` sizes: with every entry
/// holding an unspent lease, an admission under one more cap is refused with 53400 and the
/// setting named (leases are not taken back meanwhile: lease_idle is long).
#[test]
fn a_full_lease_table_names_its_setting() {
    let server = Server::start(
        "caps-leases",
        &[
            "throttle.max_cap_leases = 16",
            "throttle.lease_idle = '10min'",
        ],
    );
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) SELECT 'lz-' || g, 'lzb-' || g FROM generate_series(1, 17) g;
         INSERT INTO throttle.cap (scope, scope_id, cap, time_zone)
              SELECT 'brand', 'lzb-' || g, 1000, 'America/New_York' FROM generate_series(1, 17) g;",
    )
    .expect("configure");
    for g in 1..=16 {
        let ok: bool = c
            .query_one(
                "SELECT (throttle.throttle_admit($1, 'att')).admitted",
                &[&format!("lz-{g}")],
            )
            .expect("admitted under its cap's lease")
            .get(0);
        assert!(ok, "lz-{g}");
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT used FROM throttle.shmem_tables() WHERE setting = 'throttle.max_cap_leases'"
        ),
        16
    );
    let e = c
        .query_one(
            "SELECT (throttle.throttle_admit('lz-17', 'att')).admitted",
            &[],
        )
        .expect_err("no lease entry left");
    assert_eq!(sqlstate(&e), "53400", "{e}");
    let db = e.as_db_error().expect("a server error");
    assert!(
        db.message().contains("throttle.max_cap_leases"),
        "{}",
        db.message()
    );
}

/// Whether one message of `sender` to AT&T is admitted now.
fn admitted(c: &mut Client, sender: &str) -> bool {
    c.query_one(
        "SELECT (throttle.throttle_admit($1, 'att')).admitted",
        &[&sender],
    )
    .expect("admit")
    .get(0)
}

/// A lease that no queued message and no other cap needs is kept past `throttle.lease_idle`:
/// the admissions that spend it later need no round trip to the worker. Once messages queue
/// under the cap, the idle lease comes back to them.
#[test]
fn a_lease_nobody_else_wants_is_kept_past_lease_idle() {
    let server = Server::start("caps-lease-kept", &["throttle.lease_idle = 100"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) VALUES ('lk-1', 'lkb');
         INSERT INTO throttle.cap (scope, scope_id, cap, time_zone) VALUES ('brand', 'lkb', 1000, 'UTC');",
    )
    .expect("configure");
    let admit = |c: &mut Client| -> bool {
        c.query_one(
            "SELECT (throttle.throttle_admit('lk-1', 'att')).admitted",
            &[],
        )
        .expect("admit")
        .get(0)
    };
    assert!(admit(&mut c));
    let unspent = count(&mut c, "SELECT leased_unspent FROM throttle.cap_state");
    assert!(unspent >= 5, "leased {unspent} unspent");
    // Ten times lease_idle: the lease is still there.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count(&mut c, "SELECT leased_unspent FROM throttle.cap_state"),
        unspent
    );
    let leased = count(&mut c, "SELECT leased FROM throttle.cap_state");
    for _ in 0..5 {
        assert!(admit(&mut c));
    }
    // Spent from the kept lease: nothing more was leased.
    assert_eq!(
        count(&mut c, "SELECT leased FROM throttle.cap_state"),
        leased
    );
    assert_eq!(
        count(&mut c, "SELECT leased_unspent FROM throttle.cap_state"),
        unspent - 5
    );
    // Messages queue under the cap, which the lease holds in part: they want its room, and
    // the idle lease comes back (the cap's 1,000, exactly, are released or admitted).
    let ids = c
        .query(
            "INSERT INTO throttle.pending (sender, carrier) SELECT 'lk-1', 'att' FROM generate_series(1, 1000) RETURNING id",
            &[],
        )
        .expect("enqueue");
    assert_eq!(ids.len(), 1000);
    let released = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(20),
        |n| n == 1000 - 6,
    );
    assert_eq!(released, 1000 - 6, "the lease came back to the queue");
    let settled = wait_for(
        &mut c,
        "SELECT leased_unspent FROM throttle.cap_state",
        Duration::from_secs(5),
        |n| n == 0,
    );
    assert_eq!(settled, 0);
}

/// While more than three quarters of the lease entries hold a lease, idle ones are taken
/// back even if nothing waits on their caps: a new cap finds an entry.
#[test]
fn idle_leases_come_back_when_the_lease_table_runs_short() {
    let server = Server::start(
        "caps-lease-crowd",
        &["throttle.max_cap_leases = 16", "throttle.lease_idle = 100"],
    );
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) SELECT 'lc-' || g, 'lcb-' || g FROM generate_series(1, 13) g;
         INSERT INTO throttle.cap (scope, scope_id, cap, time_zone)
              SELECT 'brand', 'lcb-' || g, 1000, 'UTC' FROM generate_series(1, 13) g;",
    )
    .expect("configure");
    let admit = |c: &mut Client, n: i32| admitted(c, &format!("lc-{n}"));
    // Twelve of sixteen entries: not crowded, the leases stay.
    for g in 1..=12 {
        assert!(admit(&mut c, g));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.cap_state WHERE leased_unspent > 0"
        ),
        12
    );
    // Thirteen: crowded, the twelve idle leases come back (the thirteenth, not idle yet when
    // the worker looks, may stay: twelve of sixteen are no longer crowded).
    assert!(admit(&mut c, 13));
    let left = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.cap_state WHERE leased_unspent > 0 AND scope_id <> 'lcb-13'",
        Duration::from_secs(5),
        |n| n == 0,
    );
    assert_eq!(left, 0, "idle leases taken back");
}

/// A cap lowered live takes back what its leases hold unspent at once, busy or idle: the
/// admissions after the change spend no more than the new cap allows.
#[test]
fn a_lowered_cap_takes_its_leases_back_at_once() {
    // Idle leases would never come back by themselves in this test.
    let server = Server::start("caps-lease-lowered", &["throttle.lease_idle = '10min'"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) VALUES ('ll-1', 'llb');
         INSERT INTO throttle.cap (scope, scope_id, cap, time_zone) VALUES ('brand', 'llb', 1000, 'UTC');",
    )
    .expect("configure");
    let admit = |c: &mut Client| -> bool {
        c.query_one(
            "SELECT (throttle.throttle_admit('ll-1', 'att')).admitted",
            &[],
        )
        .expect("admit")
        .get(0)
    };
    assert!(admit(&mut c));
    assert!(count(&mut c, "SELECT leased_unspent FROM throttle.cap_state") > 4);
    c.batch_execute("UPDATE throttle.cap SET cap = 5")
        .expect("lower the cap");
    let unspent = wait_for(
        &mut c,
        "SELECT leased_unspent FROM throttle.cap_state",
        Duration::from_secs(5),
        |n| n == 0,
    );
    assert_eq!(unspent, 0, "the lease came back");
    let admitted = (0..10).filter(|_| admit(&mut c)).count();
    assert_eq!(admitted, 4, "one before and four after: the new cap of 5");
    assert_eq!(
        count(
            &mut c,
            "SELECT used + leased - leased_unspent FROM throttle.cap_state"
        ),
        5
    );
}
