//! Provider feedback against a real server: a throttling error slows the limit the message
//! came through (limit_state, explain and a NOTIFY say why) and it comes back in steps; a "done
//! for the day" error holds the scope until its reset; rules are data (an `ignore` row turns a
//! shipped one off; bad rows are refused).

use pg_throttle_tests::{count, sqlstate, wait_for, Client, Server};
use postgres::fallible_iterator::FallibleIterator;
use std::time::Duration;

fn enqueue(c: &mut Client, sender: &str, carrier: &str, n: i32) -> Vec<i64> {
    c.query(
        "INSERT INTO throttle.pending (sender, carrier, recipient)
         SELECT $1, $2, '+1555040' || lpad(g::text, 4, '0') FROM generate_series(1, $3) g RETURNING id",
        &[&sender, &carrier, &n],
    )
    .expect("enqueue")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Wait until `ids` are all in ready, then read them; (id, attempt).
fn read_all(c: &mut Client, ids: &[i64]) -> Vec<(i64, i32)> {
    let list = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let n = wait_for(
        c,
        &format!("SELECT count(*) FROM throttle.ready WHERE id IN ({list})"),
        Duration::from_secs(15),
        |n| n == ids.len() as i64,
    );
    assert_eq!(n, ids.len() as i64, "{ids:?} released");
    let mut got: Vec<(i64, i32)> = c
        .query(
            &format!(
                "SELECT id, attempt FROM throttle.read(1000, '1 minute') WHERE id IN ({list})"
            ),
            &[],
        )
        .expect("read")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    got.sort();
    got
}

fn failed(c: &mut Client, id: i64, code: &str) -> String {
    c.query_one(
        "SELECT throttle.ack($1::bigint, 'failed', NULL, $2::text)",
        &[&id, &code],
    )
    .expect("ack failed")
    .get(0)
}

/// The notifications `c` has received, waiting up to half a second for the first.
fn notes(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let mut notes = c.notifications();
    let mut it = notes.timeout_iter(Duration::from_millis(500));
    while let Ok(Some(n)) = it.next() {
        out.push(n.payload().to_string());
    }
    out
}

#[test]
fn a_429_slows_the_limit_it_came_through_and_it_comes_back_in_steps() {
    let server = Server::start("fb_slow", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('f-1');
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per, burst)
              VALUES ('f-1 line', 'sender', 'f-1', 100, '1 minute', 10);
         -- Ours, before the shipped 429 rule: a short cool-down and recovery.
         INSERT INTO throttle.feedback_rule (name, error_code, scope, cool_down, recovery)
              VALUES ('test 429', '429', 'sender', '2 seconds', '2 seconds');",
    )
    .expect("configure");
    let mut ops = server.connect();
    ops.batch_execute("LISTEN throttle_feedback")
        .expect("listen");
    let ids = enqueue(&mut c, "f-1", "att", 3);
    let got = read_all(&mut c, &ids);
    assert!(got.iter().all(|r| r.1 == 1));
    assert_eq!(failed(&mut c, ids[0], "429"), "retry");
    let rate = count(
        &mut c,
        "SELECT rate FROM throttle.rate_limit WHERE name = 'f-1 line'",
    );
    assert_eq!(rate, 50, "halved");
    let b = count(
        &mut c,
        "SELECT burst FROM throttle.rate_limit WHERE name = 'f-1 line'",
    );
    assert_eq!(b, 5, "its burst too");
    let why: String = c
        .query_one(
            "SELECT slowed FROM throttle.limit_state WHERE name = 'f-1 line' AND configured_rate = 100",
            &[],
        )
        .expect("limit_state says why")
        .get(0);
    assert!(
        why.starts_with("slowed to 50 (50 % of 100) by provider error 429"),
        "{why}"
    );
    let heard = notes(&mut ops);
    assert!(
        heard
            .iter()
            .any(|p| p.contains("\"slowed\"") && p.contains("\"429\"")),
        "{heard:?}"
    );
    // A second error within the cool-down: what the slower rate let through; kept at 50.
    assert_eq!(failed(&mut c, ids[1], "429"), "retry");
    assert_eq!(
        count(
            &mut c,
            "SELECT rate FROM throttle.rate_limit WHERE name = 'f-1 line'"
        ),
        50
    );
    assert_eq!(
        count(&mut c, "SELECT errors::bigint FROM throttle.limit_feedback"),
        2
    );
    // The throttled message goes back at once, and that attempt did not count.
    let again = read_all(&mut c, &ids[..1]);
    assert_eq!(again, vec![(ids[0], 1)], "the same attempt again");
    // Messages waiting under the slowed limit: explain says why.
    let waiting = enqueue(&mut c, "f-1", "att", 20);
    let last = *waiting.last().expect("ids");
    let detail: String = c
        .query_one(
            "SELECT string_agg(detail, ' | ') FROM throttle.explain($1)",
            &[&last],
        )
        .expect("explain")
        .get(0);
    assert!(
        detail.contains("slowed to 50 (configured 100) by provider error 429"),
        "{detail}"
    );
    // Back to 100 in steps over the recovery, after the cool-down.
    let back = wait_for(
        &mut c,
        "SELECT rate FROM throttle.rate_limit WHERE name = 'f-1 line'",
        Duration::from_secs(20),
        |r| r == 100,
    );
    assert_eq!(back, 100, "recovered");
    assert_eq!(
        count(
            &mut c,
            "SELECT burst FROM throttle.rate_limit WHERE name = 'f-1 line'"
        ),
        10
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.limit_feedback"),
        0
    );
    assert!(
        notes(&mut ops).iter().any(|p| p.contains("\"recovered\"")),
        "operators hear of the recovery"
    );
}

#[test]
fn a_542_holds_the_brand_on_that_carrier_until_the_reset() {
    let server = Server::start("fb_hold", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) VALUES ('f-2', 'B2');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'f-2', 100, '1 second');",
    )
    .expect("configure");
    let ids = enqueue(&mut c, "f-2", "tmobile", 1);
    read_all(&mut c, &ids);
    assert_eq!(failed(&mut c, ids[0], "542"), "retry");
    let held = count(
        &mut c,
        "SELECT count(*) FROM throttle.feedback_hold
          WHERE scope = 'brand' AND scope_id = 'B2' AND carrier = 'tmobile' AND until > now()",
    );
    assert_eq!(held, 1, "the brand is held on T-Mobile");
    // The message is back in its queue and held there: explain names the hold.
    let back = wait_for(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.pending WHERE id = {}",
            ids[0]
        ),
        Duration::from_secs(10),
        |n| n == 1,
    );
    assert_eq!(back, 1);
    let names: String = c
        .query_one(
            "SELECT string_agg(name, ' | ') FROM throttle.explain($1)",
            &[&ids[0]],
        )
        .expect("explain")
        .get(0);
    assert!(names.contains("feedback/542/brand:B2"), "{names}");
    // The same brand on another carrier goes.
    let att = enqueue(&mut c, "f-2", "att", 1);
    read_all(&mut c, &att);
    // A second 542 meanwhile makes no second hold.
    let more = enqueue(&mut c, "f-2", "att", 1);
    read_all(&mut c, &more);
    c.batch_execute(&format!(
        "UPDATE throttle.inflight SET carrier = 'tmobile' WHERE id = {}",
        more[0]
    ))
    .expect("as if it went to T-Mobile");
    assert_eq!(failed(&mut c, more[0], "542"), "retry");
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.feedback_hold"),
        1
    );
    // The reset comes (simulated: the hold's end moved to now, then the worker told).
    c.batch_execute(
        "UPDATE throttle.feedback_hold SET until = now() - interval '1 second';
         SELECT throttle.note_config_change();",
    )
    .expect("the reset");
    let gone = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.cap WHERE name LIKE 'feedback/542/%'",
        Duration::from_secs(10),
        |n| n == 0,
    );
    assert_eq!(gone, 0, "the hold ended at the reset");
    let released = read_all(&mut c, &ids);
    assert_eq!(released.len(), 1, "the held message goes");
}

#[test]
fn rules_are_data_an_ignore_row_turns_one_off_and_bad_rows_are_refused() {
    let server = Server::start("fb_rules", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('f-3');
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per) VALUES ('f-3 line', 'sender', 'f-3', 100, '1 second');
         INSERT INTO throttle.feedback_rule (name, error_code, action) VALUES ('no 429 here', '429', 'ignore');",
    )
    .expect("configure");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.feedback_rule WHERE shipped"
        ),
        5,
        "the shipped rules"
    );
    let ids = enqueue(&mut c, "f-3", "att", 1);
    read_all(&mut c, &ids);
    assert_eq!(failed(&mut c, ids[0], "429"), "retry");
    assert_eq!(
        count(
            &mut c,
            "SELECT rate FROM throttle.rate_limit WHERE name = 'f-3 line'"
        ),
        100,
        "ignored"
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.limit_feedback"),
        0
    );
    for (sql, state) in [
        (
            "INSERT INTO throttle.feedback_rule (error_code, factor) VALUES ('x', 1.5)",
            "22023",
        ),
        (
            "INSERT INTO throttle.feedback_rule (error_code, min_factor) VALUES ('x', 0)",
            "22023",
        ),
        (
            "INSERT INTO throttle.feedback_rule (error_code, cool_down) VALUES ('x', '0')",
            "22023",
        ),
        (
            "INSERT INTO throttle.feedback_rule (error_code, time_zone) VALUES ('x', 'Mars/Base')",
            "22023",
        ),
        (
            "INSERT INTO throttle.feedback_rule (error_code, action) VALUES ('x', 'explode')",
            "22P02",
        ),
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), state, "{sql}");
    }
    c.batch_execute(
        "CREATE ROLE app LOGIN; SET ROLE app; SELECT count(*) FROM throttle.feedback_rule;
         SELECT count(*) FROM throttle.limit_feedback; SELECT count(*) FROM throttle.feedback_hold;",
    )
    .expect("everyone reads them");
    for sql in [
        "INSERT INTO throttle.feedback_rule (error_code) VALUES ('x')",
        "UPDATE throttle.limit_feedback SET factor = 1",
        "SELECT throttle.feedback_step()",
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}");
    }
}
