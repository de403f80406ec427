//! Client-side tests against a real server with pg_throttle preloaded: concurrency,
//! restarts and crashes, SQLSTATEs, shared-memory capacity, configuration changes.

use pg_throttle_tests::{assert_window_bound, sqlstate, Client, Server};
use std::time::{Duration, Instant};

/// Admit once; returns (admitted, the transaction time it was judged at, in µs).
fn admit(c: &mut Client, sender: &str, carrier: &str) -> (bool, i64) {
    let row = c
        .query_one(
            "SELECT admitted, (extract(epoch FROM now()) * 1000000)::bigint
               FROM throttle.throttle_admit($1, $2)",
            &[&sender, &carrier],
        )
        .expect("throttle_admit");
    (row.get(0), row.get(1))
}

#[test]
fn eight_clients_never_over_admit() {
    let server = Server::start("concurrency", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign) VALUES ('cc-1', 'cc-camp'), ('cc-2', 'cc-camp');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst) VALUES
            ('sender', 'cc-1', 20, '1 second', 5),
            ('sender', 'cc-2', 20, '1 second', 5),
            ('campaign', 'cc-camp', 30, '1 second', 10);",
    )
    .expect("configure");
    let run_for = Duration::from_secs(3);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let conninfo = server.conninfo();
            std::thread::spawn(move || {
                let mut c = Client::connect(&conninfo, postgres::NoTls).expect("connect");
                let start = Instant::now();
                let mut got = vec![];
                let mut calls = 0u64;
                while start.elapsed() < run_for {
                    let sender = if (calls + i) % 2 == 0 { "cc-1" } else { "cc-2" };
                    let (ok, ts) = admit(&mut c, sender, "att");
                    calls += 1;
                    if ok {
                        got.push((sender.to_string(), ts));
                    }
                }
                (got, calls)
            })
        })
        .collect();
    let mut all = vec![];
    let mut calls = 0;
    for h in handles {
        let (got, n) = h.join().expect("client thread");
        all.extend(got);
        calls += n;
    }
    let times = |s: &str| {
        all.iter()
            .filter(|(x, _)| x == s)
            .map(|(_, t)| *t)
            .collect::<Vec<_>>()
    };
    assert_window_bound("cc-1", &times("cc-1"), 20, 1_000_000, 5);
    assert_window_bound("cc-2", &times("cc-2"), 20, 1_000_000, 5);
    let camp: Vec<i64> = all.iter().map(|(_, t)| *t).collect();
    assert_window_bound("cc-camp", &camp, 30, 1_000_000, 10);
    // The clients asked far more often than allowed, and the limit was used, not starved.
    assert!(
        calls > 10 * camp.len() as u64,
        "{calls} calls for {} admissions",
        camp.len()
    );
    assert!(
        camp.len() >= 60,
        "only {} admitted in 3 s under a 30/s campaign limit",
        camp.len()
    );
}

#[test]
fn restarts_and_crashes_grant_no_fresh_burst() {
    let mut server = Server::start("restart", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('rs-line');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst) VALUES ('sender', 'rs-line', 20, '1 second', 20);",
    )
    .expect("configure");
    let mut times = vec![];
    for mode in ["fast", "immediate"] {
        let mut c = server.connect();
        for _ in 0..40 {
            let (ok, ts) = admit(&mut c, "rs-line", "att");
            if ok {
                times.push(ts);
            }
        }
        drop(c);
        server.restart(mode);
        let mut c = server.connect();
        for _ in 0..40 {
            let (ok, ts) = admit(&mut c, "rs-line", "att");
            if ok {
                times.push(ts);
            }
        }
        assert_window_bound(
            &format!("across a {mode} restart"),
            &times,
            20,
            1_000_000,
            20,
        );
    }
    assert!(times.len() >= 20, "the first burst was admitted");
    // A killed backend makes the postmaster reinitialise shared memory: the same holds.
    let mut victim = server.connect();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let mut c = server.connect();
    for _ in 0..40 {
        let (ok, ts) = admit(&mut c, "rs-line", "att");
        if ok {
            times.push(ts);
        }
    }
    let st = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(st.success());
    drop(victim);
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    let mut c = server.connect();
    for _ in 0..40 {
        let (ok, ts) = admit(&mut c, "rs-line", "att");
        if ok {
            times.push(ts);
        }
    }
    assert_window_bound("across a killed backend", &times, 20, 1_000_000, 20);
}

#[test]
fn bad_input_gets_a_real_sqlstate_and_changes_nothing() {
    let server = Server::start("errors", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('er-line');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst) VALUES ('sender', 'er-line', 1, '1 hour', 1);
         CREATE ROLE app LOGIN;",
    )
    .expect("configure");
    let cases = [
        ("SELECT throttle.throttle_admit(NULL, 'att')", "22004"),
        ("SELECT throttle.throttle_admit('er-line', NULL)", "22004"),
        ("SELECT throttle.throttle_admit('', 'att')", "22023"),
        ("SELECT throttle.throttle_admit('er-line', 'att', now(), 0)", "22023"),
        ("SELECT throttle.throttle_admit('er-line', 'att', now(), -3)", "22023"),
        ("SELECT throttle.throttle_admit('er-line', 'att', 'infinity')", "22023"),
        ("SELECT throttle.throttle_admit('er-line', 'att', '-infinity')", "22023"),
        ("SELECT throttle.throttle_admit('er-line', 'att', now(), 1, NULL)", "22004"),
        ("SELECT throttle.throttle_admit('nobody', 'att')", "42704"),
        ("INSERT INTO throttle.rate_limit (scope, scope_id, rate) VALUES ('sender', 'x', 0)", "22023"),
        ("INSERT INTO throttle.rate_limit (scope, scope_id, rate) VALUES ('sender', 'x', -1)", "22023"),
        ("INSERT INTO throttle.rate_limit (scope, scope_id, rate) VALUES ('sender', 'x', 'NaN')", "22P02"),
        ("INSERT INTO throttle.rate_limit (scope, scope_id, rate, burst) VALUES ('sender', 'x', 1, 0)", "22023"),
        ("INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'x', 1, '0 s')", "22023"),
        ("INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'x', 1, '-1 s')", "22023"),
        ("INSERT INTO throttle.rate_limit (scope, scope_id, rate) VALUES ('galaxy', 'x', 1)", "22P02"),
        ("INSERT INTO throttle.sender (sender) VALUES ('')", "23514"),
    ];
    for (sql, code) in cases {
        let e = c.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), code, "{sql}: {e}");
    }
    // Nothing above changed the configuration, and the session is still usable.
    let n: i64 = c
        .query_one("SELECT count(*) FROM throttle.rate_limit", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    // An application role may admit but not change limits.
    let mut app = postgres::Client::connect(
        &server.conninfo().replace("user=postgres", "user=app"),
        postgres::NoTls,
    )
    .expect("connect as app");
    app.query_one(
        "SELECT admitted FROM throttle.throttle_admit('er-line', 'att')",
        &[],
    )
    .expect("app may admit");
    let e = app
        .batch_execute("UPDATE throttle.rate_limit SET rate = 1000000")
        .expect_err("app may not change limits");
    assert_eq!(sqlstate(&e), "42501");
    // The trigger function cannot be misused to crash the server.
    c.batch_execute(
        "CREATE TABLE not_pending (a int, b int, c int, d int);
         CREATE TRIGGER misuse AFTER INSERT ON not_pending FOR EACH STATEMENT EXECUTE FUNCTION throttle.pending_changed();",
    )
    .expect("create trigger");
    let e = c
        .batch_execute("INSERT INTO not_pending VALUES (1, 2, 3, 4)")
        .expect_err("misused trigger");
    assert_eq!(sqlstate(&e), "XX000", "{e}");
    c.batch_execute(
        "DROP TRIGGER misuse ON not_pending;
         CREATE TRIGGER misuse AFTER INSERT ON not_pending FOR EACH ROW EXECUTE FUNCTION throttle.pending_changed();",
    )
    .expect("row trigger");
    let e = c
        .batch_execute("INSERT INTO not_pending VALUES (1, 2, 3, 4)")
        .expect_err("misused trigger");
    assert_eq!(sqlstate(&e), "XX000", "{e}");
    let alive: i32 = c.query_one("SELECT 1", &[]).expect("still up").get(0);
    assert_eq!(alive, 1);
    // Without shared_preload_libraries the functions say so.
    let bare = Server::start_with("nopreload", false, &[]);
    let mut c = bare.connect();
    c.batch_execute(
        "CREATE EXTENSION pg_throttle; INSERT INTO throttle.sender (sender) VALUES ('np')",
    )
    .expect("create extension without preload");
    let e = c
        .batch_execute("SELECT throttle.try_admit('np', 'att')")
        .expect_err("not preloaded");
    assert_eq!(sqlstate(&e), "55000");
}

#[test]
fn full_shared_memory_is_53400_and_keeps_live_buckets() {
    let server = Server::start("capacity", &["throttle.max_buckets = 1024"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) SELECT 'cap-' || g FROM generate_series(1, 1100) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst)
              SELECT 'sender', 'cap-' || g, 1, '1 day', 1 FROM generate_series(1, 1100) g;",
    )
    .expect("configure");
    let usage: i64 = c
        .query_one("SELECT max_buckets FROM throttle.shmem_usage()", &[])
        .expect("usage")
        .get(0);
    assert_eq!(usage, 1024);
    let mut admitted = 0;
    let mut full_at = None;
    // Far enough ahead that every new bucket has filled since the server started.
    for g in 1..=1100 {
        let r = c.query_one(
            "SELECT throttle.try_admit('cap-' || $1::int, 'att', now() + interval '30 minutes')",
            &[&g],
        );
        match r {
            Ok(row) => {
                assert!(row.get::<_, bool>(0), "cap-{g} refused");
                admitted += 1;
            }
            Err(e) => {
                assert_eq!(sqlstate(&e), "53400", "{e}");
                full_at.get_or_insert(g);
            }
        }
    }
    assert_eq!(admitted, 1024, "exactly max_buckets live buckets fit");
    assert_eq!(full_at, Some(1025));
    // The live buckets were not dropped: the first sender is still spent for the day.
    let again: bool = c
        .query_one(
            "SELECT throttle.try_admit('cap-1', 'att', now() + interval '30 minutes')",
            &[],
        )
        .expect("admit")
        .get(0);
    assert!(!again, "a live bucket was forgotten");
}

#[test]
fn a_limit_change_reaches_every_session() {
    let server = Server::start("config", &[]);
    let mut admin = server.connect();
    let mut app = server.connect();
    admin
        .batch_execute(
            "INSERT INTO throttle.sender (sender, campaign) VALUES ('cfg-line', 'cfg-camp')",
        )
        .expect("configure");
    // The app session caches "no limits" for the sender...
    for _ in 0..3 {
        assert!(admit(&mut app, "cfg-line", "att").0);
    }
    // ...until a committed change tells it otherwise.
    admin
        .batch_execute(
            "INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst) VALUES ('campaign', 'cfg-camp', 1, '1 hour', 1)",
        )
        .expect("add limit");
    let results: Vec<bool> = (0..3)
        .map(|_| admit(&mut app, "cfg-line", "att").0)
        .collect();
    assert_eq!(results, vec![true, false, false]);
    // An uncommitted change is not seen by others, and a rolled-back one never is.
    admin
        .batch_execute("BEGIN; DELETE FROM throttle.rate_limit;")
        .expect("begin");
    assert!(!admit(&mut app, "cfg-line", "att").0);
    admin.batch_execute("ROLLBACK").expect("rollback");
    assert!(!admit(&mut app, "cfg-line", "att").0);
}
