//! Sticky number pools against a real server: every recipient sees one line, lines share new
//! recipients, each line keeps its own rate in every window, concurrent first messages agree
//! on one line, a new recipient goes to the line with the most headroom, a line that leaves
//! reassigns its recipients once; capacity planning in lines;
//! old contact state is pruned.

use pg_throttle_tests::{count, sqlstate, wait_for, Server};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A pool of `lines` lines, each at `rate` per second (window-exact).
fn pool(c: &mut postgres::Client, name: &str, lines: usize, rate: i64) -> Vec<String> {
    let senders: Vec<String> = (0..lines).map(|i| format!("{name}-line-{i}")).collect();
    c.execute("INSERT INTO throttle.pool (pool) VALUES ($1)", &[&name])
        .expect("pool");
    for s in &senders {
        c.execute(
            "INSERT INTO throttle.sender (sender, sender_type) VALUES ($1, 'imessage')",
            &[s],
        )
        .expect("line");
        c.execute(
            "INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', $1, $2, '1 second')",
            &[s, &rate],
        )
        .expect("rate");
        c.execute(
            "INSERT INTO throttle.pool_line (pool, sender) VALUES ($1, $2)",
            &[&name, s],
        )
        .expect("pool line");
    }
    senders
}

#[test]
fn every_recipient_sees_one_line_and_each_line_keeps_its_rate() {
    sticky_pool(10);
}

/// The same at Sendblue's 1 message per second per line: 1,000 messages to 300 recipients
/// through 5 lines drain in about 200 s (too long for the suite: `cargo test -p
/// pg_throttle_tests --test pools -- --ignored`).
#[test]
#[ignore]
fn at_one_per_second_the_pool_drains_in_about_200_s() {
    sticky_pool(1);
}

/// 1,000 messages to 300 recipients through a pool of 5 lines at `rate` per second each.
fn sticky_pool(rate: i64) {
    let server = Server::start("pools-sticky", &[]);
    let mut c = server.connect();
    let lines = pool(&mut c, "p5", 5, rate);
    let t = Instant::now();
    // 1,000 messages to 300 recipients, named by the pool: (id, line, recipient).
    let rows: Vec<(i64, String, String)> = c
        .query(
            "INSERT INTO throttle.pending (pool, carrier, channel, recipient)
             SELECT 'p5', 'att', 'imessage', '+1555800' || lpad((g % 300)::text, 4, '0')
               FROM generate_series(0, 999) g ORDER BY g
             RETURNING id, sender, recipient",
            &[],
        )
        .expect("enqueue through the pool")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), 1000);
    let mut line_of: HashMap<&str, &str> = HashMap::new();
    for (_, line, to) in &rows {
        let first = line_of.entry(to.as_str()).or_insert(line.as_str());
        assert_eq!(*first, line.as_str(), "{to} sees one line");
    }
    // New recipients were spread over the lines.
    let mut per_line: HashMap<&str, usize> = HashMap::new();
    for l in line_of.values() {
        *per_line.entry(l).or_default() += 1;
    }
    assert_eq!(per_line.len(), 5);
    assert!(per_line.values().all(|&n| n == 60), "{per_line:?}");
    // A later message to a recipient goes through its line, even with the others idle.
    let (line, to): (String, String) = {
        let r = c
            .query_one(
                "INSERT INTO throttle.pending (pool, carrier, recipient) VALUES ('p5', 'att', '+15558000007')
                 RETURNING sender, recipient",
                &[],
            )
            .expect("one more");
        (r.get(0), r.get(1))
    };
    assert_eq!(line_of[to.as_str()], line.as_str());
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(60 + 1200 / rate as u64),
        |n| n == 1001,
    );
    assert_eq!(n, 1001);
    let drained = t.elapsed();
    // Each line at most `rate` in every 1 s window (released_at is the time judged).
    for l in &lines {
        let times: Vec<i64> = c
            .query(
                "SELECT (extract(epoch FROM released_at) * 1000000)::int8 FROM throttle.ready
                  WHERE sender = $1 ORDER BY released_at",
                &[l],
            )
            .expect("times")
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (i, &s) in times.iter().enumerate() {
            let inside = times[i..]
                .iter()
                .take_while(|&&u| u < s + 1_000_000)
                .count();
            assert!(
                inside as i64 <= rate,
                "{l}: {inside} in the second from {s}"
            );
        }
    }
    // The pool's throughput is the sum of its lines': 1,001 at 5 × rate per second (the
    // busiest line sets the pace: each has 60 recipients, about 200 messages).
    let busiest = count(
        &mut c,
        "SELECT max(n) FROM (SELECT count(*) AS n FROM throttle.ready GROUP BY sender) x",
    );
    eprintln!("drained 1,001 in {drained:?}; busiest line {busiest}");
    assert!(
        drained < Duration::from_secs_f64(busiest as f64 / rate as f64 + 8.0),
        "{drained:?} for {busiest} on the busiest line"
    );
}

#[test]
fn concurrent_first_messages_to_a_recipient_agree_on_one_line() {
    let server = Server::start("pools-race", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    pool(&mut c, "p8", 8, 1);
    for round in 0..5 {
        let to = format!("+1555900000{round}");
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let mut k = server.connect();
                let b = barrier.clone();
                let to = to.clone();
                std::thread::spawn(move || -> String {
                    let mut tx = k.transaction().expect("begin");
                    b.wait();
                    let line: String = tx
                        .query_one(
                            "INSERT INTO throttle.pending (pool, carrier, recipient) VALUES ('p8', 'att', $1) RETURNING sender",
                            &[&to],
                        )
                        .expect("enqueue")
                        .get(0);
                    tx.commit().expect("commit");
                    line
                })
            })
            .collect();
        let chosen: HashSet<String> = handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect();
        assert_eq!(chosen.len(), 1, "round {round}: {chosen:?}");
        let assigned = count(
            &mut c,
            &format!("SELECT count(*) FROM throttle.pool_assignment WHERE recipient = '{to}'"),
        );
        assert_eq!(assigned, 1);
    }
}

#[test]
fn a_line_that_leaves_the_pool_reassigns_its_recipients_once() {
    let server = Server::start("pools-leave", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    pool(&mut c, "p3", 3, 1);
    c.batch_execute("SELECT throttle.enqueue_pool('p3', 'att', '+15559100000')")
        .expect("enqueue through the pool");
    let first: String = c
        .query_one(
            "SELECT sender FROM throttle.pool_assignment WHERE recipient = '+15559100000'",
            &[],
        )
        .expect("assigned")
        .get(0);
    c.execute(
        "DELETE FROM throttle.pool_line WHERE pool = 'p3' AND sender = $1",
        &[&first],
    )
    .expect("the line leaves");
    let next: String = c
        .query_one(
            "INSERT INTO throttle.pending (pool, carrier, recipient) VALUES ('p3', 'att', '+15559100000') RETURNING sender",
            &[],
        )
        .expect("again")
        .get(0);
    assert_ne!(next, first);
    let (now, previous): (String, Option<String>) = {
        let r = c
            .query_one(
                "SELECT sender, previous FROM throttle.pool_assignment WHERE recipient = '+15559100000'",
                &[],
            )
            .expect("assignment");
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (now.as_str(), previous.as_deref()),
        (next.as_str(), Some(first.as_str()))
    );
    // And it stays there.
    for _ in 0..3 {
        let again: String = c
            .query_one(
                "INSERT INTO throttle.pending (pool, carrier, recipient) VALUES ('p3', 'att', '+15559100000') RETURNING sender",
                &[],
            )
            .expect("again")
            .get(0);
        assert_eq!(again, next);
    }
    // Bad input: clear errors, nothing written.
    c.execute("INSERT INTO throttle.pool (pool) VALUES ('empty')", &[])
        .expect("an empty pool");
    for (sql, state) in [
        ("INSERT INTO throttle.pending (pool, carrier, recipient) VALUES ('nope', 'att', '+1')", "22023"),
        ("INSERT INTO throttle.pending (pool, carrier, recipient) VALUES ('empty', 'att', '+1')", "22023"),
        ("INSERT INTO throttle.pending (pool, carrier) VALUES ('p3', 'att')", "22023"),
        ("INSERT INTO throttle.pending (pool, sender, carrier, recipient) VALUES ('p3', 'x', 'att', '+1')", "22023"),
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), state, "{sql}: {e}");
    }
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.pool_assignment"),
        1
    );
}

/// The line of each of `recipients` (enqueued one at a time through `pool`), by line.
fn picks(c: &mut postgres::Client, pool: &str, recipients: &[String]) -> HashMap<String, usize> {
    let mut by_line = HashMap::new();
    for r in recipients {
        let id: i64 = c
            .query_one("SELECT throttle.enqueue_pool($1, 'att', $2)", &[&pool, r])
            .expect("enqueue_pool")
            .get(0);
        let line: String = c
            .query_one("SELECT sender FROM throttle.pending WHERE id = $1", &[&id])
            .expect("its line")
            .get(0);
        *by_line.entry(line).or_insert(0) += 1;
    }
    by_line
}

#[test]
fn a_new_recipient_goes_to_the_line_with_the_most_headroom() {
    let server = Server::start("pools-headroom", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    // Contact caps: line a takes on 2 new contacts a day, line b 50; both 1,000/s. Each new
    // recipient goes where the wait behind what is queued is shortest, then where more
    // contact room is left: b, a, b, a, and once a has no room left, b.
    let lines = pool(&mut c, "ph", 2, 1000);
    c.batch_execute(&format!(
        "INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES
             ('sender', '{}', 'new_contacts', 2), ('sender', '{}', 'new_contacts', 50)",
        lines[0], lines[1]
    ))
    .expect("rules");
    let recipients: Vec<String> = (0..6).map(|i| format!("+15557100{i:03}")).collect();
    let by_line = picks(&mut c, "ph", &recipients);
    assert_eq!(by_line.get(&lines[0]), Some(&2), "{by_line:?}");
    assert_eq!(by_line.get(&lines[1]), Some(&4), "{by_line:?}");
    let room: Vec<(String, Option<i64>, i64)> = c
        .query(
            "SELECT sender, contact_room, queued FROM throttle.pool_headroom('ph')",
            &[],
        )
        .expect("pool_headroom")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        room,
        vec![
            (lines[1].clone(), Some(46), 4),
            (lines[0].clone(), Some(0), 2)
        ]
    );
    // The rate: line c has 10 messages queued at 1/s, line d none. Five new recipients all
    // go to d (its wait stays under c's 10 s), where counting recipients alone alternated.
    let lines = pool(&mut c, "pr", 2, 1);
    c.execute(
        "INSERT INTO throttle.pending (sender, carrier, recipient)
         SELECT $1, 'att', '+15557200' || lpad(g::text, 3, '0') FROM generate_series(1, 10) g",
        &[&lines[0]],
    )
    .expect("backlog");
    let recipients: Vec<String> = (0..5).map(|i| format!("+15557300{i:03}")).collect();
    let by_line = picks(&mut c, "pr", &recipients);
    assert_eq!(by_line.get(&lines[1]), Some(&5), "{by_line:?}");
}

#[test]
fn plan_lines_and_plan_capacity_say_200_lines_for_10000_new_contacts_a_day() {
    let server = Server::start("pools-plan", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, account) VALUES ('pl-1', 'pl-acct');
         INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES
             ('account', 'pl-acct', 'new_contacts', 50), ('account', 'pl-acct', 'follow_up_contacts', 200);
         INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count, per) VALUES
             ('sender', 'pl-1', 'follow_up_contacts', 100, '12 hours');",
    )
    .expect("rules");
    let rows: Vec<(String, i64)> = c
        .query(
            "SELECT kind::text, lines_needed FROM throttle.plan_lines('pl-1', 10000, 1000) ORDER BY 2 DESC, 1",
            &[],
        )
        .expect("plan")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("new_contacts".to_string(), 200),
            ("follow_up_contacts".to_string(), 5),
            ("follow_up_contacts".to_string(), 5),
        ]
    );
    let e = c
        .batch_execute("SELECT * FROM throttle.plan_lines('pl-1', -1)")
        .expect_err("negative");
    assert_eq!(sqlstate(&e), "22023");
    // plan_capacity answers the same in its rows: each contact cap counts every message as a
    // contact, at the rule's pace per line; the total takes the most lines any row needs.
    c.batch_execute(
        "INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'pl-1', 1, '1 second')",
    )
    .expect("rate");
    // (A deadline under a window still lets each line take on one window's contacts: the
    // rolling 12 hours' 100, where a day's pace would be 200.)
    for (messages, deadline, rolling) in [
        (10_000i64, "1 day", 50),
        (70_000, "7 days", 50),
        (10_000, "1 hour", 100),
    ] {
        let rows: Vec<(String, String, Option<i64>)> = c
            .query(
                "SELECT limit_name, scope, senders_needed
                   FROM throttle.plan_capacity('pl-1', $1, ARRAY['att'], deadline => $2::text::interval)",
                &[&messages, &deadline],
            )
            .expect("plan_capacity")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let needed = |name: &str| {
            rows.iter()
                .find(|r| r.0.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name} in {rows:?}"))
                .2
        };
        assert_eq!(needed("new_contacts"), Some(200), "{deadline}: {rows:?}");
        assert_eq!(needed("total"), Some(200), "{deadline}: {rows:?}");
        let follow_ups: Vec<Option<i64>> = rows
            .iter()
            .filter(|r| r.0.starts_with("follow_up_contacts"))
            .map(|r| r.2)
            .collect();
        assert_eq!(
            follow_ups,
            vec![Some(50), Some(rolling)],
            "{deadline}: {rows:?}"
        );
        assert!(
            rows.iter().any(|r| r.1 == "account (each line)"),
            "{rows:?}"
        );
    }
}

#[test]
fn contact_state_older_than_the_retention_is_pruned() {
    let server = Server::start("pools-prune", &["throttle.contact_retention = '32d'"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('pr-1');
         INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES ('sender', 'pr-1', 'new_contacts', 50);
         SELECT throttle.inbound('pr-1', '+1555' || g, now() - interval '40 days') FROM generate_series(1, 1500) g;
         SELECT throttle.inbound('pr-1', '+1666' || g, now() - interval '1 day') FROM generate_series(1, 10) g;
         INSERT INTO throttle.contact_sent (sender, contact, counted_as, counted_at, last_sent_at)
         SELECT 'pr-1', '+1777' || g, 1, now() - interval '33 days', now() - interval '33 days' FROM generate_series(1, 1500) g;
         INSERT INTO throttle.contact_sent (sender, contact, counted_as, counted_at, last_sent_at)
         SELECT 'pr-1', '+1888' || g, 1, now(), now() FROM generate_series(1, 10) g;
         INSERT INTO throttle.inbound_message (message_id, sender, contact, received_at, recorded_at)
         SELECT 'old-' || g, 'pr-1', '+1999' || g, now() - interval '8 days', now() - interval '8 days'
           FROM generate_series(1, 1500) g;
         INSERT INTO throttle.inbound_message (message_id, sender, contact, received_at, recorded_at)
         SELECT 'new-' || g, 'pr-1', '+1999' || g, now() - interval '6 days', now() - interval '6 days'
           FROM generate_series(1, 10) g;
         SELECT pg_reload_conf();",
    )
    .expect("old and new state");
    let left = wait_for(
        &mut c,
        "SELECT (SELECT count(*) FROM throttle.contact_inbound) + (SELECT count(*) FROM throttle.contact_sent)
              + (SELECT count(*) FROM throttle.inbound_message)",
        Duration::from_secs(40),
        |n| n == 30,
    );
    assert_eq!(left, 30, "only the recent state and inbound ids are left");
    let ids: i64 = c
        .query_one(
            "SELECT count(*) FROM throttle.inbound_message WHERE message_id LIKE 'new-%'",
            &[],
        )
        .expect("ids")
        .get(0);
    assert_eq!(ids, 10, "a week's inbound ids are kept");
}
