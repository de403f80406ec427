//! One tenant cannot stop, slow, read or spend another's; nothing sleeps forever; the edges
//! of the lifecycle keep messages. Each attack runs as a role with only what PUBLIC and the
//! tenant model give it, then another tenant's messages must still go out on schedule.

use pg_throttle_tests::{count, sqlstate, wait_for, Client, Server};
use std::time::{Duration, Instant};

fn connect_as(server: &Server, role: &str, db: &str) -> Client {
    let info = server
        .conninfo()
        .replace("user=postgres", &format!("user={role}"))
        .replace("dbname=postgres", &format!("dbname={db}"));
    postgres::Client::connect(&info, postgres::NoTls).expect("connect as a tenant")
}

/// The SQLSTATE of a statement that must fail.
fn fails(c: &mut Client, sql: &str) -> (String, String) {
    let e = c.batch_execute(sql).expect_err(sql);
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    (sqlstate(&e), msg)
}

/// Enqueue `n` messages for `sender` as `c`'s role; their ids.
fn enqueue(c: &mut Client, sender: &str, n: i64) -> Vec<i64> {
    c.query(
        "INSERT INTO throttle.pending (sender, carrier) SELECT $1, 'att' FROM generate_series(1, $2::int8) RETURNING id",
        &[&sender, &n],
    )
    .expect("enqueue")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Wait until every id is in throttle.ready (as the superuser); how long it took.
fn released(c: &mut Client, ids: &[i64], deadline: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM throttle.ready WHERE id = ANY($1)",
                &[&ids],
            )
            .expect("count ready")
            .get(0);
        if n == ids.len() as i64 {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < deadline,
            "{n} of {} released after {:?}",
            ids.len(),
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_tenant_cannot_stop_read_or_spend_another() {
    let server = Server::start("tenants", &[]);
    let mut admin = server.connect();
    admin
        .batch_execute(
            "CREATE ROLE tenant_a LOGIN; CREATE ROLE tenant_b LOGIN;
             INSERT INTO throttle.sender (sender, account) VALUES ('a-1', 'acct-a'), ('b-1', 'acct-b');
             INSERT INTO throttle.account_role (account, role) VALUES ('acct-a', 'tenant_a'), ('acct-b', 'tenant_b');
             INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'b-1', 500, '1 second');
             INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'a-1', 1, '1 hour');",
        )
        .expect("tenants");
    let mut a = connect_as(&server, "tenant_a", "postgres");
    let mut b = connect_as(&server, "tenant_b", "postgres");

    // Ids cannot be chosen: one far ahead of the sequence is replaced by the next one.
    let chosen = 1_000_000i64;
    let id: i64 = a
        .query_one(
            "INSERT INTO throttle.pending (id, sender, carrier) OVERRIDING SYSTEM VALUE VALUES ($1, 'a-1', 'att') RETURNING id",
            &[&chosen],
        )
        .expect("insert with a chosen id")
        .get(0);
    assert_ne!(id, chosen, "the id comes from the sequence");
    // Times and identifiers are checked at enqueue, and never echoed whole.
    let (code, _) = fails(
        &mut a,
        "INSERT INTO throttle.pending (sender, carrier, not_before) VALUES ('a-1', 'att', 'infinity')",
    );
    assert_eq!(code, "22023");
    let (code, _) = fails(
        &mut a,
        "INSERT INTO throttle.pending (sender, carrier, enqueued_at) VALUES ('a-1', 'att', '-infinity')",
    );
    assert_eq!(code, "22023");
    let (code, msg) = fails(
        &mut a,
        "INSERT INTO throttle.pending (sender, carrier) VALUES ('a-1', repeat('x', 1000000))",
    );
    assert_eq!(code, "22023");
    assert!(msg.len() < 200, "the message is short: {}", msg.len());
    let (code, msg) = fails(
        &mut a,
        "SELECT throttle.throttle_admit('a-1', repeat('y', 1000000))",
    );
    assert_eq!(code, "22023");
    assert!(msg.len() < 200);
    let (code, _) = fails(
        &mut a,
        "SELECT throttle.throttle_admit('a-1', 'att', now(), 1, 'SMS!! ; --')",
    );
    assert_eq!(code, "22023");
    // No table can be locked against the worker and the other tenants.
    for t in ["ready", "pending", "dead", "sender", "rate_limit"] {
        let (code, _) = fails(
            &mut a,
            &format!("BEGIN; LOCK TABLE throttle.{t} IN ACCESS EXCLUSIVE MODE"),
        );
        assert_eq!(code, "42501", "LOCK throttle.{t}");
        a.batch_execute("ROLLBACK").expect("rollback");
    }
    // Another tenant's senders: no enqueue, no admission, no explanation.
    let (code, _) = fails(
        &mut a,
        "INSERT INTO throttle.pending (sender, carrier) VALUES ('b-1', 'att')",
    );
    assert_eq!(code, "42501");
    let (code, _) = fails(&mut a, "SELECT throttle.throttle_admit('b-1', 'att')");
    assert_eq!(code, "42501");
    let (code, _) = fails(&mut a, "SELECT throttle.try_admit('b-1', 'att')");
    assert_eq!(code, "42501");
    let (code, _) = fails(&mut a, "SELECT * FROM throttle.explain_sender('b-1')");
    assert_eq!(code, "42501");
    let (code, _) = fails(&mut a, "SELECT * FROM throttle.explain_sender('nobody')");
    assert_eq!(code, "42704");
    // Its own sender it may admit.
    a.batch_execute("SELECT throttle.try_admit('a-1', 'att')")
        .expect("own admission");
    // An enqueuing transaction left open does not keep a new queue cap from counting.
    a.batch_execute("BEGIN; INSERT INTO throttle.pending (sender, carrier) VALUES ('a-1', 'att')")
        .expect("open enqueue");
    admin
        .batch_execute(
            "INSERT INTO throttle.queue_cap (scope, scope_id, max_waiting) VALUES ('account', 'acct-b', 5000)",
        )
        .expect("queue cap");

    // Tenant b's messages go out at their rate, within a second of schedule (1,000 at 500/s
    // under a new limit: 500 at once, 500 a second later), while tenant a's transaction is
    // still open.
    let t0 = Instant::now();
    let ids = loop {
        match b.query(
            "INSERT INTO throttle.pending (sender, carrier) SELECT 'b-1', 'att' FROM generate_series(1, 1000) RETURNING id",
            &[],
        ) {
            Ok(rows) => break rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(),
            Err(e) if sqlstate(&e) == "55000" && t0.elapsed() < Duration::from_secs(3) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("tenant b cannot enqueue: {e}"),
        }
    };
    let took = released(&mut admin, &ids, Duration::from_secs(4));
    // On schedule: a new limit has its 500 at once and 500 more a second later.
    eprintln!("figure: tenant b's 1,000 at 500/s under the attacks took {took:?} (schedule 1 s)");
    assert!(
        took <= Duration::from_secs(3),
        "1,000 at 500/s took {took:?}"
    );
    a.batch_execute("ROLLBACK").expect("rollback");

    // Each reads and takes only its own.
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM throttle.ready WHERE sender <> 'a-1'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM throttle.ready WHERE sender = 'b-1'"
        ),
        1000
    );
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM throttle.pending WHERE sender = 'b-1'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FILTER (WHERE sender <> 'a-1') FROM throttle.take(100)"
        ),
        0,
        "take() gives a only its own"
    );
    assert_eq!(
        count(
            &mut a,
            "SELECT count(*) FROM throttle.queue_state WHERE sender = 'b-1'"
        ),
        0
    );
    let (code, _) = fails(&mut a, "DELETE FROM throttle.ready");
    assert_eq!(code, "42501");
    let (code, _) = fails(&mut a, "SELECT * FROM throttle.take_for(10, 12345)");
    assert_eq!(code, "42501", "a made-up ticket names nobody");
    let taken: Vec<String> = b
        .query("SELECT sender FROM throttle.take(1000)", &[])
        .expect("take")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(taken.len(), 1000);
    assert!(taken.iter().all(|s| s == "b-1"));
}

#[test]
fn rows_of_unregistered_senders_cost_the_others_nothing() {
    let server = Server::start("parked", &[]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('real-1');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'real-1', 500, '1 second');
         CREATE ROLE ordinary LOGIN;",
    )
    .expect("configure");
    // A role with only PUBLIC's rights (no tenant model) loads rows nobody will register.
    let mut ordinary = connect_as(&server, "ordinary", "postgres");
    ordinary
        .batch_execute(
            "INSERT INTO throttle.pending (sender, carrier) SELECT 'ghost-' || g, 'att' FROM generate_series(1, 200000) g",
        )
        .expect("load");
    // Let the worker see them, then change the configuration (it looks at what waits).
    let parked = wait_for(
        &mut c,
        "SELECT parked_queues FROM throttle.worker_state()",
        Duration::from_secs(20),
        |n| n == 200_000,
    );
    assert_eq!(parked, 200_000);
    c.batch_execute("INSERT INTO throttle.sender (sender) VALUES ('real-2')")
        .expect("config change");
    let ids = enqueue(&mut c, "real-1", 1000);
    let took = released(&mut c, &ids, Duration::from_secs(4));
    eprintln!("figure: 1,000 at 500/s beside 200,000 parked rows took {took:?} (schedule 1 s)");
    assert!(
        took <= Duration::from_secs(3),
        "1,000 at 500/s took {took:?}"
    );
    // A ghost that registers is released.
    let ghost: Vec<i64> = c
        .query(
            "SELECT id FROM throttle.pending WHERE sender = 'ghost-7'",
            &[],
        )
        .expect("ghost")
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.batch_execute("INSERT INTO throttle.sender (sender) VALUES ('ghost-7')")
        .expect("register");
    released(&mut c, &ghost, Duration::from_secs(5));
}

#[test]
fn rows_written_without_the_trigger_are_found_by_the_timer() {
    let server = Server::start("rescan", &["throttle.rescan_interval = '2s'"]);
    let mut c = server.connect();
    c.batch_execute("INSERT INTO throttle.sender (sender) VALUES ('r-1')")
        .expect("sender");
    // Let the worker go idle.
    std::thread::sleep(Duration::from_millis(500));
    // As logical replication applies rows: no trigger fires.
    let mut tx = c.transaction().expect("tx");
    tx.batch_execute("SET LOCAL session_replication_role = replica")
        .expect("replica");
    let id: i64 = tx
        .query_one(
            "INSERT INTO throttle.pending (sender, carrier) VALUES ('r-1', 'att') RETURNING id",
            &[],
        )
        .expect("insert")
        .get(0);
    tx.commit().expect("commit");
    let took = released(&mut c, &[id], Duration::from_secs(4));
    eprintln!(
        "figure: a row written without the trigger went after {took:?} (rescan_interval 2 s)"
    );
    assert!(
        took <= Duration::from_secs(3),
        "rescan_interval 2 s, took {took:?}"
    );

    // Insert, delete and insert again in one transaction: the second row is seen at once.
    let mut tx = c.transaction().expect("tx");
    tx.batch_execute(
        "INSERT INTO throttle.pending (sender, carrier) VALUES ('r-1', 'att');
         DELETE FROM throttle.pending WHERE sender = 'r-1';",
    )
    .expect("insert and delete");
    let id: i64 = tx
        .query_one(
            "INSERT INTO throttle.pending (sender, carrier) VALUES ('r-1', 'att') RETURNING id",
            &[],
        )
        .expect("insert again")
        .get(0);
    tx.commit().expect("commit");
    let took = released(&mut c, &[id], Duration::from_secs(3));
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // COPY and throttle.enqueue() add rows through the same trigger: released at once.
    let max: i64 = c
        .query_one("SELECT coalesce(max(id), 0) FROM throttle.ready", &[])
        .expect("max")
        .get(0);
    let mut w = c
        .copy_in("COPY throttle.pending (sender, carrier) FROM STDIN")
        .expect("copy");
    std::io::Write::write_all(&mut w, b"r-1\tatt\nr-1\tatt\n").expect("copy rows");
    w.finish().expect("copy done");
    let mut ids: Vec<i64> = c
        .query(
            "SELECT id FROM throttle.pending WHERE id > $1 UNION ALL SELECT id FROM throttle.ready WHERE id > $1",
            &[&max],
        )
        .expect("copied ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 2);
    ids.push(
        c.query_one("SELECT throttle.enqueue('r-1', 'att')", &[])
            .expect("enqueue()")
            .get(0),
    );
    let took = released(&mut c, &ids, Duration::from_secs(3));
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn an_idle_worker_is_healthy_and_its_figures_fall_to_zero() {
    let server = Server::start("idle", &["throttle.rescan_interval = '1s'"]);
    let mut c = server.connect();
    c.batch_execute("INSERT INTO throttle.sender (sender) VALUES ('i-1')")
        .expect("sender");
    let ids = enqueue(&mut c, "i-1", 500);
    released(&mut c, &ids, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(4));
    let r = c
        .query_one(
            "SELECT healthy, seconds_since_tick, queues, released_per_s, late_ms, released
               FROM throttle.worker_state()",
            &[],
        )
        .expect("worker_state");
    let (healthy, since, queues, per_s, late, n): (bool, f64, i64, f64, f64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    assert!(healthy);
    assert!(since < 2.5, "an idle worker still ticks: {since} s");
    assert_eq!(queues, 0);
    assert!(
        per_s < 500.0 / 4.0 + 1.0,
        "the rate falls while idle: {per_s}"
    );
    assert!(late < 1000.0, "released on time: {late} ms late");
    assert_eq!(n, 500);
}

#[test]
fn drop_extension_keeps_queued_messages_unless_told() {
    let server = Server::start("dropext", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    enqueue(&mut c, "d-1", 3);
    let (code, msg) = fails(&mut c, "DROP EXTENSION pg_throttle");
    assert_eq!(code, "55006", "{msg}");
    assert_eq!(count(&mut c, "SELECT count(*) FROM throttle.pending"), 3);
    c.batch_execute("SET throttle.drop_with_messages = on; DROP EXTENSION pg_throttle")
        .expect("drop when told");
    c.batch_execute("RESET throttle.drop_with_messages; CREATE EXTENSION pg_throttle; DROP EXTENSION pg_throttle")
        .expect("an empty queue drops");
}

#[test]
fn dropping_the_workers_database_works_and_the_worker_comes_back() {
    let server = Server::start("dropdb", &["throttle.database_name = 'app'"]);
    let mut c = server.connect();
    c.batch_execute("CREATE DATABASE app").expect("create app");
    let mut app = connect_as(&server, "postgres", "app");
    app.batch_execute(
        "CREATE EXTENSION pg_throttle; INSERT INTO throttle.sender (sender) VALUES ('x-1')",
    )
    .expect("extension in app");
    let ids = enqueue(&mut app, "x-1", 5);
    released(&mut app, &ids, Duration::from_secs(10));
    drop(app);
    c.batch_execute("DROP DATABASE app")
        .expect("DROP DATABASE of the worker's database");
    c.batch_execute("CREATE DATABASE app")
        .expect("create again");
    let mut app = connect_as(&server, "postgres", "app");
    app.batch_execute(
        "CREATE EXTENSION pg_throttle; INSERT INTO throttle.sender (sender) VALUES ('x-1')",
    )
    .expect("extension again");
    let ids = enqueue(&mut app, "x-1", 5);
    released(&mut app, &ids, Duration::from_secs(15));
}

#[test]
fn a_queue_cap_sized_by_validity_needs_a_rate_limit() {
    let server = Server::start("qcap", &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    let (code, _) = fails(
        &mut c,
        "INSERT INTO throttle.queue_cap (scope, scope_id, validity) VALUES ('campaign', 'none', '4 hours')",
    );
    assert_eq!(code, "22023");
    c.batch_execute(
        "INSERT INTO throttle.rate_limit (scope, scope_id, rate) VALUES ('campaign', 'some', 10);
         INSERT INTO throttle.queue_cap (scope, scope_id, validity) VALUES ('campaign', 'some', '4 hours');",
    )
    .expect("sized by the campaign's rate");
}

#[test]
fn a_lock_held_by_a_client_delays_the_worker_but_never_stops_it() {
    let server = Server::start("locked", &[]);
    let mut c = server.connect();
    c.batch_execute("INSERT INTO throttle.sender (sender) VALUES ('l-1')")
        .expect("sender");
    let ids = enqueue(&mut c, "l-1", 3);
    released(&mut c, &ids, Duration::from_secs(5));
    let pid = count(&mut c, "SELECT pid::int8 FROM throttle.worker_state()");
    // A role trusted with more than PUBLIC holds a lock the worker needs.
    let mut holder = server.connect();
    holder
        .batch_execute("BEGIN; LOCK TABLE throttle.ready IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let ids = enqueue(&mut c, "l-1", 3);
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM throttle.pending"),
        3,
        "nothing moved while the lock is held"
    );
    holder.batch_execute("ROLLBACK").expect("unlock");
    released(&mut c, &ids, Duration::from_secs(5));
    let r = c
        .query_one(
            "SELECT pid::int8, failed_ticks, healthy FROM throttle.worker_state()",
            &[],
        )
        .expect("worker_state");
    let (now_pid, failed, healthy): (i64, i64, bool) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(
        now_pid, pid,
        "the same worker: it reported and retried, it did not restart"
    );
    assert!(failed >= 1, "the failed ticks are counted");
    assert!(healthy);
}

#[test]
fn buckets_of_deleted_limits_leave_shared_memory() {
    let server = Server::start("sweep", &["throttle.rescan_interval = '1s'"]);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) SELECT 'w-' || g FROM generate_series(1, 20) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) SELECT 'sender', 'w-' || g, 5, '200 milliseconds' FROM generate_series(1, 20) g;
         SELECT throttle.try_admit('w-' || g, 'att') FROM generate_series(1, 20) g;",
    )
    .expect("admit");
    assert!(count(&mut c, "SELECT live_buckets FROM throttle.shmem_usage()") >= 20);
    c.batch_execute("DELETE FROM throttle.rate_limit")
        .expect("delete");
    let live = wait_for(
        &mut c,
        "SELECT live_buckets FROM throttle.shmem_usage()",
        Duration::from_secs(5),
        |n| n == 0,
    );
    assert_eq!(live, 0);
}
