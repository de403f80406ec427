//! Limits as providers count them, against real servers: at most N in every window of the
//! period (the first after idle included), full speed inside that bound, shares of a shared
//! limit by cost, and live changes that take effect at once. Every window is judged by the
//! independent checker, not by the limiter's own arithmetic.

use pg_throttle_tests::checker::{cost_shares, jain, max_window, window_ok, Event};
use pg_throttle_tests::{count, wait_for, Client, Server};
use std::time::{Duration, Instant};

const SEC: i64 = 1_000_000;

/// Released messages of `senders` (or all) on `channel` as checker events.
fn released(c: &mut Client, channel: Option<&str>) -> Vec<Event<String>> {
    c.query(
        "SELECT (extract(epoch FROM released_at) * 1000000)::int8, cost, sender
           FROM throttle.ready WHERE $1::text IS NULL OR channel = $1",
        &[&channel],
    )
    .expect("ready")
    .iter()
    .map(|r| Event::new(r.get(0), r.get::<_, i32>(1) as u64, r.get(2)))
    .collect()
}

fn enqueue(c: &mut Client, sql: &str) -> usize {
    c.query(sql, &[]).expect("enqueue").len()
}

/// AT&T class T through the shipped profile, from idle, with a backlog: 75 SMS and 50 MMS a
/// minute per campaign. The old default (burst = rate) let 149 SMS through the first 60 s.
#[test]
fn att_class_t_from_idle_never_passes_75_sms_or_50_mms_a_minute() {
    let server = Server::start("fid-att", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign, sender_type)
              SELECT 'ft-' || g, 'ft-camp', 'long_code' FROM generate_series(1, 5) g;
         SELECT count(*) FROM throttle.apply_profile('att_10dlc', 'campaign', 'ft-camp', 'T');",
    )
    .expect("configure");
    let n = enqueue(
        &mut c,
        "INSERT INTO throttle.pending (sender, carrier, channel)
         SELECT 'ft-' || (1 + g % 5), 'att', CASE WHEN g % 4 = 0 THEN 'mms' ELSE 'sms' END
           FROM generate_series(1, 400) g RETURNING id",
    );
    assert_eq!(n, 400);
    // Two windows' worth of each: the first at once, the second a minute later.
    let done = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(75),
        |n| n >= 150 + 100,
    );
    assert_eq!(done, 250, "75 + 75 SMS and 50 + 50 MMS");
    let sms = released(&mut c, Some("sms"));
    let mms = released(&mut c, Some("mms"));
    if let Err(v) = window_ok(&sms, 75, 60 * SEC) {
        panic!("SMS: {v}");
    }
    if let Err(v) = window_ok(&mms, 50, 60 * SEC) {
        panic!("MMS: {v}");
    }
    // Full speed inside the bound: each window's allowance goes at once, the second as soon
    // as the first is a minute old.
    for (what, ev, n) in [("SMS", &sms, 75usize), ("MMS", &mms, 50)] {
        let mut t: Vec<i64> = ev.iter().map(|e| e.t_us).collect();
        t.sort();
        assert_eq!(t.len(), 2 * n, "{what}");
        assert!(
            t[n - 1] - t[0] < SEC,
            "{what}: first window spread over {} µs",
            t[n - 1] - t[0]
        );
        let gap = t[n] - t[n - 1];
        assert!(
            (59 * SEC..61 * SEC).contains(&gap),
            "{what}: the second window came {gap} µs after the first"
        );
    }
    assert_eq!(max_window(&sms, 60 * SEC).0, 75);
}

/// Twilio short code, 100 MPS counted in segments: never more than 100 segments in a second.
#[test]
fn twilio_short_code_never_passes_100_segments_a_second() {
    let server = Server::start("fid-sc", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, sender_type) VALUES ('ft-sc', 'short_code');
         SELECT count(*) FROM throttle.apply_profile('twilio_short_code', 'sender', 'ft-sc');",
    )
    .expect("configure");
    // 300 messages of 1, 2 and 3 segments: 600 segments, six seconds' worth.
    let n = enqueue(
        &mut c,
        "INSERT INTO throttle.pending (sender, carrier, cost)
         SELECT 'ft-sc', 'tmobile', 1 + g % 3 FROM generate_series(1, 300) g RETURNING id",
    );
    assert_eq!(n, 300);
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(15),
        |n| n == 300,
    );
    let ev = released(&mut c, None);
    if let Err(v) = window_ok(&ev, 100, SEC) {
        panic!("{v}");
    }
    // Full speed inside the bound: every whole second from the first release gets the 100,
    // less at most what a message of 3 leaves unused at the end of a window.
    let t0 = ev.iter().map(|e| e.t_us).min().unwrap_or(0);
    let shares = cost_shares(&ev, t0, t0 + 5 * SEC);
    let five: u64 = shares.values().sum();
    assert!(five >= 5 * 98, "{five} segments in the first five seconds");
}

/// Two short codes under one account limit of 100 segments a second, every message of two
/// segments: 50 segments a second each (it used to be 428 messages against 25).
#[test]
fn two_short_codes_share_an_account_limit_by_segments() {
    let server = Server::start("fid-fair", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, account, sender_type)
              VALUES ('ft-a', 'ft-acct', 'short_code'), ('ft-b', 'ft-acct', 'short_code');
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per)
              VALUES ('ft account', 'account', 'ft-acct', 100, '1 second');",
    )
    .expect("configure");
    let n = enqueue(
        &mut c,
        "INSERT INTO throttle.pending (sender, carrier, cost)
         SELECT CASE WHEN g % 2 = 0 THEN 'ft-a' ELSE 'ft-b' END, 'att', 2
           FROM generate_series(1, 1000) g RETURNING id",
    );
    assert_eq!(n, 1000);
    // Six seconds of backlog for both, then judge the five whole seconds from the first.
    std::thread::sleep(Duration::from_secs(6));
    let ev = released(&mut c, None);
    if let Err(v) = window_ok(&ev, 100, SEC) {
        panic!("{v}");
    }
    let t0 = ev.iter().map(|e| e.t_us).min().expect("released");
    let shares = cost_shares(&ev, t0, t0 + 5 * SEC);
    let per_s: Vec<f64> = ["ft-a", "ft-b"]
        .iter()
        .map(|s| *shares.get(*s).unwrap_or(&0) as f64 / 5.0)
        .collect();
    for (s, x) in ["ft-a", "ft-b"].iter().zip(&per_s) {
        assert!((45.0..=55.0).contains(x), "{s}: {x} segments/s ({per_s:?})");
    }
    let j = jain(&per_s);
    assert!(j >= 0.99, "Jain's index {j} ({per_s:?})");
}

/// Raising a limit wakes what waits on it: 1 a minute raised to 100 a second releases the
/// three waiting messages within a second, not a minute later.
#[test]
fn raising_a_limit_wakes_what_waits_on_it() {
    let server = Server::start("fid-raise", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('ft-r');
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per)
              VALUES ('ft-r line', 'sender', 'ft-r', 1, '1 minute');",
    )
    .expect("configure");
    let n = enqueue(
        &mut c,
        "INSERT INTO throttle.pending (sender, carrier) SELECT 'ft-r', 'att' FROM generate_series(1, 4) RETURNING id",
    );
    assert_eq!(n, 4);
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(3),
        |n| n == 1,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.ready"),
        1,
        "1 a minute"
    );
    let t = Instant::now();
    c.batch_execute(
        "UPDATE throttle.rate_limit SET rate = 100, per = '1 second' WHERE name = 'ft-r line'",
    )
    .expect("raise");
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(5),
        |n| n == 4,
    );
    assert_eq!(n, 4);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
}

/// Raising a daily cap releases what it held now, not at the reset.
#[test]
fn raising_a_daily_cap_releases_what_it_held_at_once() {
    let server = Server::start("fid-cap", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) VALUES ('ft-c', 'ft-brand');
         INSERT INTO throttle.cap (name, scope, scope_id, cap, period, reset_at, time_zone)
              VALUES ('ft brand daily', 'brand', 'ft-brand', 3, 'day', '00:00', 'America/Los_Angeles');",
    )
    .expect("configure");
    let n = enqueue(
        &mut c,
        "INSERT INTO throttle.pending (sender, carrier) SELECT 'ft-c', 'tmobile' FROM generate_series(1, 10) RETURNING id",
    );
    assert_eq!(n, 10);
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(3),
        |n| n == 3,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.ready"),
        3,
        "the cap holds"
    );
    let t = Instant::now();
    c.batch_execute("UPDATE throttle.cap SET cap = 10 WHERE name = 'ft brand daily'")
        .expect("raise");
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(5),
        |n| n == 10,
    );
    assert_eq!(n, 10);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(count(&mut c, "SELECT used FROM throttle.cap_state"), 10);
}

/// A lease that throttle_admit took and does not spend comes back: the worker's queue under
/// the same cap is not held until the reset.
#[test]
fn an_idle_lease_does_not_strand_queued_messages() {
    // Idle after 2 s: long enough that the lease is surely still held when it is looked at
    // right after the admission, even on a loaded machine.
    let server = Server::start("fid-lease", &["throttle.lease_idle = 2000"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('ft-l');
         INSERT INTO throttle.cap (name, scope, scope_id, cap, period, reset_at, time_zone)
              VALUES ('ft line daily', 'sender', 'ft-l', 10, 'day', '00:00', 'UTC');",
    )
    .expect("configure");
    // One direct admission: it leases more than it spends.
    let admitted: bool = c
        .query_one(
            "SELECT admitted FROM throttle.throttle_admit('ft-l', 'att')",
            &[],
        )
        .expect("admit")
        .get(0);
    assert!(admitted);
    let leased = count(&mut c, "SELECT leased FROM throttle.cap_state");
    assert!(leased > 1, "leased {leased}");
    let n = enqueue(
        &mut c,
        "INSERT INTO throttle.pending (sender, carrier) SELECT 'ft-l', 'att' FROM generate_series(1, 9) RETURNING id",
    );
    assert_eq!(n, 9);
    let t = Instant::now();
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(8),
        |n| n == 9,
    );
    assert_eq!(n, 9, "the unspent lease came back to the queue");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // One admitted directly and nine released: the cap, exactly. (cap_state reads the
    // leases in shared memory and the usage table at two instants: while the worker takes an
    // idle lease back, for the length of its tick, the lease's part is in neither. Seen once
    // under load: 9. So it is read until it settles.)
    let settled = wait_for(
        &mut c,
        "SELECT used + leased FROM throttle.cap_state",
        Duration::from_secs(5),
        |n| n == 10,
    );
    assert_eq!(settled, 10);
    let again: bool = c
        .query_one(
            "SELECT admitted FROM throttle.throttle_admit('ft-l', 'att')",
            &[],
        )
        .expect("admit")
        .get(0);
    assert!(!again, "the cap is spent");
}

/// Simulated time through throttle_admit's own timestamp: a call every 100 ms for 10 minutes
/// against 240 a minute admits at most 240 in every 60 s window and at least 98 % of 2,400.
#[test]
fn ten_simulated_minutes_of_admissions_respect_every_window() {
    let server = Server::start("fid-sim", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('ft-sim');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'ft-sim', 240, '1 minute');",
    )
    .expect("configure");
    let rows = c
        .query(
            "SELECT g * 100000::int8
               FROM generate_series(0, 5999) g,
                    LATERAL throttle.throttle_admit('ft-sim', 'att', now() + g * interval '100 ms') a
              WHERE a.admitted
              ORDER BY g",
            &[],
        )
        .expect("simulate");
    let ev: Vec<Event<String>> = rows
        .iter()
        .map(|r| Event::new(r.get(0), 1, "ft-sim".to_string()))
        .collect();
    if let Err(v) = window_ok(&ev, 240, 60 * SEC) {
        panic!("{v}");
    }
    assert!(ev.len() >= 2352, "admitted {} of 2,400", ev.len());
}

/// Messages a defer_local cap held until 08:00 in the recipient's zone go at once when the cap
/// is raised: the hold was the cap's, and the cap has room now. A hold from an earlier window
/// (its local time falls inside the current window) keeps its local time.
#[test]
fn raising_a_defer_local_cap_lets_its_held_messages_go() {
    let server = Server::start("fid-local", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, brand) VALUES ('ft-dl', 'ft-dl-brand');
         -- The window resets 12 hours from now, wherever the clock is.
         INSERT INTO throttle.cap (name, scope, scope_id, cap, period, reset_at, time_zone, at_cap, local_time)
              SELECT 'ft dl daily', 'brand', 'ft-dl-brand', 2, 'day',
                     (now() AT TIME ZONE 'America/Los_Angeles' + interval '12 hours')::time,
                     'America/Los_Angeles', 'defer_local', '08:00';",
    )
    .expect("configure");
    let n = enqueue(
        &mut c,
        "INSERT INTO throttle.pending (sender, carrier, recipient)
         SELECT 'ft-dl', 'tmobile', '+12125550123' FROM generate_series(1, 5) RETURNING id",
    );
    assert_eq!(n, 5);
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.pending WHERE held_by IS NOT NULL",
        Duration::from_secs(3),
        |n| n == 3,
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM throttle.ready"), 2);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.pending WHERE not_before > now() + interval '1 hour'"
        ),
        3,
        "held until 08:00 New York"
    );
    let t = Instant::now();
    c.batch_execute("UPDATE throttle.cap SET cap = 10 WHERE name = 'ft dl daily'")
        .expect("raise");
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(5),
        |n| n == 5,
    );
    assert_eq!(n, 5);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    // A hold from the window before this one (its 08:00 falls inside the current window, which
    // has room): another configuration change does not let it go early.
    let earlier: i64 = c
        .query_one(
            "INSERT INTO throttle.pending (sender, carrier, recipient, not_before, held_by)
             SELECT 'ft-dl', 'tmobile', '+12125550123', now() + interval '10 minutes', cap_id
               FROM throttle.cap WHERE name = 'ft dl daily' RETURNING id",
            &[],
        )
        .expect("an earlier hold")
        .get(0);
    c.batch_execute("UPDATE throttle.cap SET cap = 12 WHERE name = 'ft dl daily'")
        .expect("another change");
    std::thread::sleep(Duration::from_millis(500));
    let still_held = format!(
        "SELECT count(*) FROM throttle.pending WHERE id = {earlier} AND not_before > now()"
    );
    assert_eq!(
        count(&mut c, &still_held),
        1,
        "a hold from an earlier window keeps its local time"
    );
}

/// One admission, and the time it was judged at (the transaction's start).
fn admit(c: &mut Client, sender: &str) -> Option<Event<String>> {
    let row = c
        .query_one(
            "SELECT admitted, (extract(epoch FROM now()) * 1000000)::int8 FROM throttle.throttle_admit($1, 'att')",
            &[&sender],
        )
        .expect("throttle_admit");
    row.get::<_, bool>(0)
        .then(|| Event::new(row.get(1), 1, sender.to_string()))
}

/// A window-exact limit across a fast and an immediate restart and a killed backend (each
/// of which loses shared memory): what went just before plus what goes just after still fits
/// every window.
#[test]
fn a_window_holds_across_restarts_and_a_killed_backend() {
    let mut server = Server::start("fid-restart", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('ft-rs');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'ft-rs', 20, '1 second');",
    )
    .expect("configure");
    drop(c);
    let mut ev = vec![];
    let burst = |server: &Server, ev: &mut Vec<Event<String>>| {
        let mut c = server.connect();
        ev.extend((0..40).filter_map(|_| admit(&mut c, "ft-rs")));
    };
    for mode in ["fast", "immediate"] {
        burst(&server, &mut ev);
        server.restart(mode);
        burst(&server, &mut ev);
        if let Err(v) = window_ok(&ev, 20, SEC) {
            panic!("across a {mode} restart: {v}");
        }
    }
    assert!(ev.len() >= 20, "the first window's 20 were admitted");
    let mut victim = server.connect();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    burst(&server, &mut ev);
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    drop(victim);
    std::thread::sleep(Duration::from_millis(500));
    burst(&server, &mut ev);
    if let Err(v) = window_ok(&ev, 20, SEC) {
        panic!("across a killed backend: {v}");
    }
}

/// Eight clients admitting at once against one window-exact group limit never pass it.
#[test]
fn eight_clients_never_pass_a_window() {
    let server = Server::start("fid-concurrent", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign) SELECT 'ft-cc-' || g, 'ft-cc' FROM generate_series(1, 8) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('campaign', 'ft-cc', 50, '1 second');",
    )
    .expect("configure");
    let all: Vec<Event<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=8)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let mut c = server.connect();
                    let sender = format!("ft-cc-{i}");
                    let t = Instant::now();
                    let mut ev = vec![];
                    while t.elapsed() < Duration::from_millis(2500) {
                        ev.extend(admit(&mut c, &sender));
                    }
                    ev
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    if let Err(v) = window_ok(&all, 50, SEC) {
        panic!("{v}");
    }
    // Full speed: the first window's 50, and about as many in each second after.
    assert!(all.len() >= 100, "admitted {} in 2.5 s", all.len());
}
