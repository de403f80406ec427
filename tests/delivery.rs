//! At-least-once delivery against a real server: read with a visibility timeout, ack with the
//! outcome, a consumer killed between read and ack, retries with a back-off through the limits
//! again, dead after the last attempt, late and stale acks, tenants, and bad input.

use pg_throttle_tests::{assert_window_bound, count, sqlstate, wait_for, Client, Server};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A sender with `rate` messages per second.
fn sender(c: &mut Client, sender: &str, rate: i32) {
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender) VALUES ('{sender}');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst)
         VALUES ('sender', '{sender}', {rate}, '1 second', 1);"
    ))
    .expect("configure a sender");
}

/// Enqueue `n` messages of `sender`; their ids.
fn enqueue(c: &mut Client, sender: &str, n: i32) -> Vec<i64> {
    c.query(
        "INSERT INTO throttle.pending (sender, carrier, recipient)
         SELECT $1, 'att', '+1555010' || lpad(g::text, 4, '0') FROM generate_series(1, $2) g RETURNING id",
        &[&sender, &n],
    )
    .expect("enqueue")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn list(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Wait until `n` of `ids` are in `table`.
fn wait_in(c: &mut Client, table: &str, ids: &[i64], n: i64, secs: u64) {
    let got = wait_for(
        c,
        &format!(
            "SELECT count(*) FROM throttle.{table} WHERE id IN ({})",
            list(ids)
        ),
        Duration::from_secs(secs),
        |v| v == n,
    );
    assert_eq!(got, n, "{n} of {ids:?} in {table} within {secs} s");
}

/// Read up to `n` of `ids` (polling to a deadline until `n` were read); (id, attempt,
/// released_at µs) of each.
fn read(c: &mut Client, ids: &[i64], n: usize, visibility: &str) -> Vec<(i64, i32, i64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        for r in c
            .query(
                "SELECT id, attempt, (extract(epoch FROM released_at) * 1e6)::bigint
                   FROM throttle.read(100, $1::text::interval) WHERE id = ANY($2)",
                &[&visibility, &ids],
            )
            .expect("read")
        {
            got.push((r.get(0), r.get(1), r.get(2)));
        }
        if got.len() < n {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(got.len(), n, "read {n} of {ids:?}");
    got.sort();
    got
}

fn ack(c: &mut Client, id: i64, outcome: &str, code: Option<&str>) -> String {
    c.query_one(
        "SELECT throttle.ack($1::bigint, $2::text, 'prov-' || $1::bigint::text, $3::text)",
        &[&id, &outcome, &code],
    )
    .expect("ack")
    .get(0)
}

/// Where each of `ids` is (one table each, or a failure).
fn assert_each_once(c: &mut Client, ids: &[i64], table: &str) {
    let l = list(ids);
    for t in ["pending", "ready", "inflight", "sent", "dead"] {
        let n = count(
            c,
            &format!("SELECT count(*) FROM throttle.{t} WHERE id IN ({l})"),
        );
        let want = if t == table { ids.len() as i64 } else { 0 };
        assert_eq!(n, want, "messages in throttle.{t}");
    }
}

#[test]
fn read_then_ack_sent_records_each_message_once() {
    let server = Server::start("deliver_sent", &[]);
    let mut c = server.connect();
    sender(&mut c, "d-1", 1000);
    let ids = enqueue(&mut c, "d-1", 20);
    wait_in(&mut c, "ready", &ids, 20, 10);
    let got = read(&mut c, &ids, 20, "1 minute");
    assert!(got.iter().all(|r| r.1 == 1), "first attempt: {got:?}");
    assert_each_once(&mut c, &ids, "inflight");
    // Read again: they are invisible.
    let again = count(&mut c, "SELECT count(*) FROM throttle.read(100)");
    assert_eq!(again, 0, "a message in flight is read once");
    // Half acknowledged one at a time, half in one statement.
    for &id in &ids[..10] {
        assert_eq!(ack(&mut c, id, "sent", None), "sent");
    }
    let results: Vec<String> = c
        .query(
            "SELECT result FROM throttle.ack_many($1::bigint[], ARRAY['sent'], ARRAY(SELECT 'prov-' || i FROM unnest($1::bigint[]) i))",
            &[&ids[10..].to_vec()],
        )
        .expect("ack a batch")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(results, vec!["sent".to_string(); 10]);
    // Mixed outcomes in one call: the sent one recorded, the rejected one dead, an unknown
    // id refused (P0002) and nothing of the call kept.
    let more = enqueue(&mut c, "d-1", 2);
    wait_in(&mut c, "ready", &more, 2, 10);
    read(&mut c, &more, 2, "1 minute");
    let e = c
        .query(
            "SELECT * FROM throttle.ack_many(ARRAY[$1::bigint, $2::bigint, 987654321], ARRAY['sent', 'rejected', 'sent'])",
            &[&more[0], &more[1]],
        )
        .expect_err("an unknown id");
    assert_eq!(sqlstate(&e), "P0002");
    assert_each_once(&mut c, &more, "inflight");
    let mixed: Vec<String> = c
        .query(
            "SELECT result FROM throttle.ack_many(ARRAY[$1::bigint, $2::bigint], ARRAY['sent', 'rejected'], NULL, ARRAY[NULL, '21211'])",
            &[&more[0], &more[1]],
        )
        .expect("mixed outcomes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(mixed, ["sent", "dead"]);
    assert_each_once(&mut c, &more[..1], "sent");
    assert_each_once(&mut c, &more[1..], "dead");
    assert_each_once(&mut c, &ids, "sent");
    let with_ids = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.sent WHERE id IN ({}) AND provider_message_id = 'prov-' || id AND attempts = 1",
            list(&ids)
        ),
    );
    assert_eq!(with_ids, 20, "each with its provider's id and one attempt");
    // Acknowledged again (a retried HTTP call): still sent, nothing doubled.
    assert_eq!(ack(&mut c, ids[0], "sent", None), "sent");
    assert_each_once(&mut c, &ids, "sent");
    let shown = count(
        &mut c,
        "SELECT sent_last_hour FROM throttle.delivery_state WHERE sender = 'd-1'",
    );
    assert_eq!(shown, 21, "delivery_state counts what was sent");
}

#[test]
fn a_consumer_killed_between_read_and_ack_gets_its_messages_back_once() {
    let server = Server::start("deliver_kill", &[]);
    let mut c = server.connect();
    sender(&mut c, "d-2", 1000);
    let ids = enqueue(&mut c, "d-2", 10);
    wait_in(&mut c, "ready", &ids, 10, 10);
    // A consumer process reads (and commits), then hangs before it acknowledges; killed.
    let mut consumer = Command::new("psql")
        .arg(server.conninfo())
        .args([
            "-X",
            "-q",
            "-c",
            "SELECT count(*) FROM throttle.read(100, '2 seconds')",
            "-c",
            "SELECT pg_sleep(600)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a consumer");
    wait_in(&mut c, "inflight", &ids, 10, 10);
    consumer.kill().expect("SIGKILL the consumer");
    let _ = consumer.wait();
    // Back in its queue after the visibility timeout, released again, read again: attempt 2.
    let got = read(&mut c, &ids, 10, "1 minute");
    assert!(got.iter().all(|r| r.1 == 2), "second attempt: {got:?}");
    for &id in &ids {
        assert_eq!(ack(&mut c, id, "sent", None), "sent");
    }
    assert_each_once(&mut c, &ids, "sent");
    let twice = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.sent WHERE id IN ({}) AND attempts = 2",
            list(&ids)
        ),
    );
    assert_eq!(twice, 10, "the attempts are counted");
}

#[test]
fn failed_messages_retry_through_the_limits_and_die_after_the_last_attempt() {
    let server = Server::start(
        "deliver_retry",
        &["throttle.max_attempts = 3", "throttle.retry_backoff = 100"],
    );
    let mut c = server.connect();
    // 2 a second, burst 1: every release, the retries' too, keeps to it.
    sender(&mut c, "d-3", 2);
    let ids = enqueue(&mut c, "d-3", 3);
    let mut released = Vec::new();
    for attempt in 1..=3 {
        let got = read(&mut c, &ids, 3, "1 minute");
        assert!(
            got.iter().all(|r| r.1 == attempt),
            "attempt {attempt}: {got:?}"
        );
        released.extend(got.iter().map(|r| r.2));
        for &(id, ..) in &got {
            let want = if attempt < 3 { "retry" } else { "dead" };
            assert_eq!(ack(&mut c, id, "failed", Some("500")), want);
        }
        if attempt < 3 {
            let waiting = count(
                &mut c,
                &format!(
                    "SELECT count(*) FROM throttle.inflight WHERE id IN ({}) AND last_error = '500'",
                    list(&ids)
                ),
            );
            assert_eq!(waiting, 3, "waiting for their retry, with the error");
            // A second outcome for the same attempt is stale and changes nothing.
            assert_eq!(ack(&mut c, ids[0], "failed", Some("503")), "stale");
        }
    }
    assert_window_bound("releases and re-releases", &released, 2, 1_000_000, 1);
    assert_each_once(&mut c, &ids, "dead");
    let why = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.dead WHERE id IN ({}) AND reason = 'failed 3 times' AND error_code = '500'",
            list(&ids)
        ),
    );
    assert_eq!(why, 3, "dead with the last error");
    let attempts_left = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.attempt WHERE id IN ({})",
            list(&ids)
        ),
    );
    assert_eq!(attempts_left, 0, "no attempt counts left behind");
}

#[test]
fn rejected_dies_now_and_retry_after_is_the_providers() {
    let server = Server::start("deliver_reject", &[]);
    let mut c = server.connect();
    sender(&mut c, "d-4", 1000);
    let ids = enqueue(&mut c, "d-4", 2);
    read(&mut c, &ids, 2, "1 minute");
    assert_eq!(ack(&mut c, ids[0], "rejected", Some("21211")), "dead");
    let dead = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.dead WHERE id = {} AND error_code = '21211' AND reason LIKE 'rejected by the provider%'",
            ids[0]
        ),
    );
    assert_eq!(dead, 1);
    let r: String = c
        .query_one(
            "SELECT throttle.ack($1, 'failed', NULL, '429', '1 hour')",
            &[&ids[1]],
        )
        .expect("ack with retry_after")
        .get(0);
    assert_eq!(r, "retry");
    let later = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.inflight WHERE id = {} AND visible_at > now() + interval '59 minutes'",
            ids[1]
        ),
    );
    assert_eq!(later, 1, "back only after the provider's Retry-After");
}

#[test]
fn an_ack_after_the_visibility_timeout_keeps_the_message_from_going_twice() {
    let server = Server::start("deliver_late", &[]);
    let mut c = server.connect();
    sender(&mut c, "d-5", 1000);
    // Held by a later not_before once back in its queue? No: it goes back as it was; the
    // worker releases it again, and the late ack takes it out of ready (or pending).
    let ids = enqueue(&mut c, "d-5", 1);
    read(&mut c, &ids, 1, "200 milliseconds");
    wait_for(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.inflight WHERE id = {}",
            ids[0]
        ),
        Duration::from_secs(10),
        |n| n == 0,
    );
    assert_eq!(ack(&mut c, ids[0], "sent", None), "sent");
    assert_each_once(&mut c, &ids, "sent");
}

#[test]
fn bad_input_is_refused_with_its_sqlstate_and_changes_nothing() {
    let server = Server::start("deliver_bad", &[]);
    let mut c = server.connect();
    sender(&mut c, "d-6", 1000);
    let ids = enqueue(&mut c, "d-6", 2);
    wait_in(&mut c, "ready", &ids, 2, 10);
    for (sql, state) in [
        ("SELECT * FROM throttle.read(0)", "22023"),
        ("SELECT * FROM throttle.read(NULL)", "22023"),
        ("SELECT * FROM throttle.read(10, '0 seconds')", "22023"),
        ("SELECT * FROM throttle.read(10, '-1 second')", "22023"),
        ("SELECT throttle.ack(1, 'maybe')", "22023"),
        ("SELECT throttle.ack(NULL::bigint, 'sent')", "22023"),
        (
            "SELECT throttle.ack(1, 'sent', NULL, NULL, '1 second')",
            "22023",
        ),
        ("SELECT throttle.ack(987654321, 'sent')", "P0002"),
        ("SELECT throttle.extend(987654321, '1 minute')", "P0002"),
        (
            "SELECT * FROM throttle.ack_many(ARRAY[1,2], ARRAY['sent','sent','sent'])",
            "22023",
        ),
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), state, "{sql}");
    }
    assert_each_once(&mut c, &ids, "ready");
    // A stale attempt number is stale.
    let got = read(&mut c, &ids, 2, "1 minute");
    let r: String = c
        .query_one(
            "SELECT throttle.ack($1, 'failed', NULL, '500', NULL, 7)",
            &[&got[0].0],
        )
        .expect("ack")
        .get(0);
    assert_eq!(r, "stale");
    let until: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM throttle.extend($1, '2 hours') - now()))::bigint",
            &[&got[1].0],
        )
        .expect("extend")
        .get(0);
    assert!((7_000..=7_300).contains(&until), "extended: {until} s");
    // Consumers change these tables only through the functions.
    c.batch_execute(
        "CREATE ROLE app LOGIN; SET ROLE app;
         SELECT count(*) FROM throttle.inflight; SELECT count(*) FROM throttle.sent;",
    )
    .expect("consumers read the tables");
    for sql in [
        "DELETE FROM throttle.inflight",
        "UPDATE throttle.inflight SET visible_at = now()",
        "INSERT INTO throttle.sent SELECT * FROM throttle.sent",
        "SELECT * FROM throttle.attempt",
        "BEGIN; LOCK throttle.inflight",
    ] {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}");
    }
    c.batch_execute("ROLLBACK").expect("rollback");
}

#[test]
fn tenants_read_and_acknowledge_only_their_own_senders() {
    let server = Server::start("deliver_tenants", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "CREATE ROLE ta LOGIN; CREATE ROLE tb LOGIN;
         INSERT INTO throttle.sender (sender, account) VALUES ('ta-1', 'A'), ('tb-1', 'B');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('account', 'A', 1000, '1 second'), ('account', 'B', 1000, '1 second');
         INSERT INTO throttle.account_role VALUES ('A', 'ta'), ('B', 'tb');",
    )
    .expect("tenants");
    let a = enqueue(&mut c, "ta-1", 3);
    let b = enqueue(&mut c, "tb-1", 3);
    wait_in(&mut c, "ready", &[a.clone(), b.clone()].concat(), 6, 10);
    c.batch_execute("SET ROLE ta").expect("as ta");
    let got = read(&mut c, &[a.clone(), b.clone()].concat(), 3, "1 minute");
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        a,
        "ta reads its own"
    );
    c.batch_execute("RESET ROLE; SET ROLE tb").expect("as tb");
    let theirs = count(&mut c, "SELECT count(*) FROM throttle.inflight");
    assert_eq!(theirs, 0, "tb sees none of ta's messages in flight");
    let e = c
        .query_one("SELECT throttle.ack($1::bigint, 'sent')", &[&a[0]])
        .expect_err("tb acks ta's message");
    assert_eq!(sqlstate(&e), "42501");
    let mine = read(&mut c, &b, 3, "1 minute");
    assert_eq!(mine.len(), 3);
    c.batch_execute("RESET ROLE").expect("reset");
    assert_each_once(&mut c, &a, "inflight");
}

#[test]
fn a_message_the_provider_refused_is_counted_once_by_the_contact_rules() {
    let server = Server::start("deliver_convo", &["throttle.retry_backoff = 50"]);
    let mut c = server.connect();
    sender(&mut c, "d-7", 1000);
    c.batch_execute(
        "INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES ('sender', 'd-7', 'unanswered', 2)",
    )
    .expect("at most 2 messages without a reply");
    let two: Vec<i64> = c
        .query(
            "INSERT INTO throttle.pending (sender, carrier, recipient)
             SELECT 'd-7', 'att', '+15550700001' FROM generate_series(1, 2) RETURNING id",
            &[],
        )
        .expect("enqueue")
        .iter()
        .map(|r| r.get(0))
        .collect();
    read(&mut c, &two, 2, "1 minute");
    for &id in &two {
        assert_eq!(ack(&mut c, id, "failed", Some("500")), "retry");
    }
    // Back for a second attempt: not held by the streak they made the first time.
    let again = read(&mut c, &two, 2, "1 minute");
    assert!(again.iter().all(|r| r.1 == 2), "{again:?}");
    for &id in &two {
        assert_eq!(ack(&mut c, id, "sent", None), "sent");
    }
    assert_eq!(
        count(
            &mut c,
            "SELECT unanswered::bigint FROM throttle.contact_sent WHERE sender = 'd-7' AND contact = '+15550700001'"
        ),
        2,
        "two messages, counted once each"
    );
    // A third is over the rule: held until a reply.
    let third: i64 = c
        .query_one(
            "INSERT INTO throttle.pending (sender, carrier, recipient) VALUES ('d-7', 'att', '+15550700001') RETURNING id",
            &[],
        )
        .expect("a third")
        .get(0);
    let held = wait_for(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.pending WHERE id = {third} AND held_rule IS NOT NULL"
        ),
        Duration::from_secs(10),
        |n| n == 1,
    );
    assert_eq!(held, 1, "held by the rule");
}
