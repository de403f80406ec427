//! Upgrading a database from the released 0.1.0, 0.2.0, 0.3.0, 0.4.0, 0.5.0, 0.6.0 and 0.7.0 (their install scripts kept in
//! sql/) with `ALTER EXTENSION pg_throttle UPDATE`, through the chain of upgrade scripts:
//! everything in it is kept, the old default burst becomes window-exact, the schema is the
//! same as a fresh install's, and it works.

use pg_throttle_tests::{count, wait_for, Client, Server};
use std::time::Duration;

/// The extension's schema as the catalogs describe it: tables' columns and constraints,
/// indexes, views, functions (with their bodies where they are SQL or PL/pgSQL), triggers and
/// types, one line each, sorted. Two databases with the same lines have the same schema.
fn schema_of(c: &mut Client) -> Vec<String> {
    let sql = "
        SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = 'throttle' AND a.attnum > 0 AND NOT a.attisdropped
           AND c.relkind IN ('r', 'v', 'p', 'c')
        UNION ALL
        SELECT 'constraint ' || c.relname || ' ' || pg_get_constraintdef(k.oid)
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'throttle'
        UNION ALL
        SELECT 'index ' || pg_get_indexdef(i.indexrelid)
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'throttle'
        UNION ALL
        SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'throttle' AND c.relkind = 'v'
        UNION ALL
        SELECT 'function ' || p.oid::regprocedure::text || ' returns ' || pg_get_function_result(p.oid)
               || ' ' || p.provolatile::text || p.proisstrict::text || p.prosecdef::text
               || CASE WHEN l.lanname = 'c' THEN ' ' || p.prosrc ELSE ' ' || md5(p.prosrc) END
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          JOIN pg_language l ON l.oid = p.prolang WHERE n.nspname = 'throttle'
        UNION ALL
        SELECT 'trigger ' || pg_get_triggerdef(t.oid)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'throttle' AND NOT t.tgisinternal
        UNION ALL
        SELECT 'type ' || t.typname || ' ' || coalesce(
                   (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid), '')
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'throttle'
           AND (t.typtype = 'e' OR (t.typtype = 'c' AND EXISTS (
                   SELECT 1 FROM pg_class k WHERE k.oid = t.typrelid AND k.relkind = 'c')))
        UNION ALL
        SELECT 'grant ' || c.relname || ' ' || coalesce(c.relacl::text, '')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'throttle' AND c.relkind IN ('r', 'v', 'S')
        UNION ALL
        SELECT 'policy ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || coalesce(qual, '')
               || ' ' || coalesce(with_check, '')
          FROM pg_policies WHERE schemaname = 'throttle'
        UNION ALL
        SELECT 'relation ' || c.relname || ' rls ' || c.relrowsecurity::text || ' '
               || coalesce(c.reloptions::text, '')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'throttle' AND c.relkind IN ('r', 'v')
        UNION ALL
        SELECT 'profile_rule ' || r::text FROM throttle.profile_rule r
        ORDER BY 1";
    c.query(sql, &[])
        .expect("schema")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The version this build installs.
const CURRENT: &str = "0.8.0";

/// The schema of `c`'s database is exactly a fresh install's (made in a new database).
fn assert_same_as_fresh(server: &Server, c: &mut Client, db: &str) {
    let upgraded = schema_of(c);
    c.batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create db");
    let mut f = postgres::Client::connect(
        &server
            .conninfo()
            .replace("dbname=postgres", &format!("dbname={db}")),
        postgres::NoTls,
    )
    .expect("connect fresh");
    f.batch_execute("CREATE EXTENSION pg_throttle")
        .expect("fresh install");
    let fresh = schema_of(&mut f);
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|l| !fresh.contains(l)).collect();
    let only_fresh: Vec<&String> = fresh.iter().filter(|l| !upgraded.contains(l)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "schemas differ\nonly after the upgrade:\n{}\nonly in a fresh install:\n{}",
        only_upgraded
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        only_fresh
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn version(c: &mut Client) -> String {
    c.query_one(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_throttle'",
        &[],
    )
    .expect("version")
    .get(0)
}

/// A server (worker off) whose database has pg_throttle `old` installed.
fn server_with(name: &str, old: &str) -> (Server, Client) {
    let server = Server::start(name, &["throttle.worker_enabled = off"]);
    let mut c = server.connect();
    c.batch_execute(&format!(
        "DROP EXTENSION pg_throttle; CREATE EXTENSION pg_throttle VERSION '{old}'"
    ))
    .expect("install the old version");
    assert_eq!(version(&mut c), old);
    (server, c)
}

/// Switch the worker on (it was off while the test set things up).
fn worker_on(c: &mut Client) {
    c.batch_execute("ALTER SYSTEM SET throttle.worker_enabled = on")
        .expect("worker on");
    c.batch_execute("SELECT pg_reload_conf()").expect("reload");
}

fn pending_ids(c: &mut Client) -> Vec<i64> {
    c.query("SELECT id FROM throttle.pending ORDER BY id", &[])
        .expect("pending")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A server with `old` installed, a sender with three messages waiting, updated to CURRENT:
/// the messages kept and the schema a fresh install's.
fn updated_with_three_messages(
    name: &str,
    old: &str,
    sender: &str,
    fresh: &str,
) -> (Server, Client) {
    let (server, mut c) = server_with(name, old);
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender) VALUES ('{sender}');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', '{sender}', 100, '1 second');
         INSERT INTO throttle.pending (sender, carrier, recipient)
         SELECT '{sender}', 'att', '+1555000000' || g FROM generate_series(1, 3) g;"
    ))
    .expect("fill the old version");
    let before = pending_ids(&mut c);
    c.batch_execute("ALTER EXTENSION pg_throttle UPDATE")
        .expect("ALTER EXTENSION UPDATE");
    assert_eq!(version(&mut c), CURRENT);
    assert_eq!(pending_ids(&mut c), before, "every message kept");
    assert_same_as_fresh(&server, &mut c, fresh);
    (server, c)
}

#[test]
fn update_from_0_1_0_keeps_everything_and_matches_a_fresh_install() {
    let (server, mut c) = server_with("upgrade", "0.1.0");
    // Fill it as a 0.1.0 user would: senders, limits (the old default burst, and a chosen
    // one), a cap with usage, a queue cap, and messages waiting.
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign, brand, account, sender_type)
              SELECT 'up-' || g, 'up-camp', 'up-brand', 'up-acct', 'long_code' FROM generate_series(1, 3) g;
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per)
              VALUES ('up line', 'sender', 'up-1', 2, '1 second');
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per, burst)
              VALUES ('up camp', 'campaign', 'up-camp', 100, '1 minute', 5);
         INSERT INTO throttle.cap (name, scope, scope_id, cap, period, reset_at, time_zone)
              VALUES ('up brand daily', 'brand', 'up-brand', 1000, 'day', '00:00', 'America/Los_Angeles');
         INSERT INTO throttle.cap_usage (cap_id, window_start, window_end, used, leased)
              SELECT cap_id, w.window_start, w.window_end, 7, 0
                FROM throttle.cap, LATERAL throttle.cap_window('day', '00:00', 'America/Los_Angeles', now()) w;
         INSERT INTO throttle.pending (sender, carrier) SELECT 'up-' || (1 + g % 3), 'att' FROM generate_series(1, 12) g;
         -- Created after the messages: the worker, switched off here, counts them at its start.
         INSERT INTO throttle.queue_cap (name, scope, scope_id, max_waiting)
              VALUES ('up account queue', 'account', 'up-acct', 50);",
    )
    .expect("fill 0.1.0");
    let pending_before = pending_ids(&mut c);
    assert_eq!(pending_before.len(), 12);

    c.batch_execute("ALTER EXTENSION pg_throttle UPDATE")
        .expect("ALTER EXTENSION UPDATE");
    assert_eq!(version(&mut c), CURRENT);

    // Everything is still there; the old default burst is now window-exact, a chosen one kept.
    assert_eq!(count(&mut c, "SELECT count(*) FROM throttle.sender"), 3);
    let bursts: Vec<(String, Option<i64>)> = c
        .query(
            "SELECT name, burst FROM throttle.rate_limit ORDER BY name",
            &[],
        )
        .expect("limits")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        bursts,
        vec![
            ("up camp".to_string(), Some(5)),
            ("up line".to_string(), None)
        ]
    );
    assert_eq!(count(&mut c, "SELECT used FROM throttle.cap_state"), 7);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.sender WHERE weight = 1"
        ),
        3
    );
    let pending_after = pending_ids(&mut c);
    assert_eq!(pending_after, pending_before);

    // The same schema as a fresh install.
    assert_same_as_fresh(&server, &mut c, "fresh");

    // And it works: the worker releases the waiting messages under the upgraded limits.
    worker_on(&mut c);
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(10),
        |n| n == 12,
    );
    assert_eq!(n, 12);
    assert_eq!(count(&mut c, "SELECT used FROM throttle.cap_state"), 7 + 12);
    assert_eq!(
        count(&mut c, "SELECT waiting FROM throttle.queue_cap_state"),
        0,
        "the queue cap counted them and gave their places back"
    );
    // Admission answers under the upgraded limits: the campaign's token bucket (burst 5, 100
    // a minute) is spent by the twelve just released, and says so.
    let r = c
        .query_one(
            "SELECT admitted, blocked_by, retry_at IS NOT NULL FROM throttle.throttle_admit('up-2', 'att')",
            &[],
        )
        .expect("admit");
    let (admitted, by, when): (bool, Option<String>, bool) = (r.get(0), r.get(1), r.get(2));
    assert!(
        !admitted && by.as_deref() == Some("up camp") && when,
        "{admitted} {by:?} {when}"
    );
}

#[test]
fn update_from_0_2_0_keeps_messages_and_dead_letters_impossible_times() {
    let (server, mut c) = server_with("upgrade2", "0.2.0");
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, account, weight) VALUES ('u2-1', 'u2-acct', 3);
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per)
              VALUES ('u2 line', 'sender', 'u2-1', 5, '1 second');
         INSERT INTO throttle.pending (sender, carrier) SELECT 'u2-1', 'att' FROM generate_series(1, 5);
         -- 0.2.0 took an infinite time; such a row can never be released.
         INSERT INTO throttle.pending (sender, carrier, not_before) VALUES ('u2-1', 'att', 'infinity');",
    )
    .expect("fill 0.2.0");
    let before = pending_ids(&mut c);
    assert_eq!(before.len(), 6);
    c.batch_execute("ALTER EXTENSION pg_throttle UPDATE")
        .expect("ALTER EXTENSION UPDATE");
    assert_eq!(version(&mut c), CURRENT);
    let after = pending_ids(&mut c);
    assert_eq!(after.len(), 5, "the five real messages stay");
    assert!(after.iter().all(|id| before.contains(id)));
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.dead WHERE reason LIKE 'a time out of range%'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT weight::int8 FROM throttle.sender WHERE sender = 'u2-1'"
        ),
        3
    );
    assert_same_as_fresh(&server, &mut c, "fresh2");
    // And it works: the worker releases the five under the kept limit.
    worker_on(&mut c);
    let n = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(10),
        |n| n == 5,
    );
    assert_eq!(n, 5);
}

#[test]
fn update_from_0_3_0_keeps_queue_caps_counted_and_sizes_them_by_the_setting() {
    let (server, mut c) = server_with("upgrade3", "0.3.0");
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('u3-1');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'u3-1', 1, '1 hour');
         INSERT INTO throttle.queue_cap (scope, scope_id, max_waiting) VALUES ('sender', 'u3-1', 3);",
    )
    .expect("fill 0.3.0");
    worker_on(&mut c);
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.queue_cap_state WHERE counted",
        Duration::from_secs(10),
        |n| n == 1,
    );
    c.batch_execute("INSERT INTO throttle.pending (sender, carrier) VALUES ('u3-1', 'att')")
        .expect("one goes at once");
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(10),
        |n| n == 1,
    );
    // ... and is uncounted (just after the worker's commit).
    wait_for(
        &mut c,
        "SELECT coalesce(sum(waiting), 0)::int8 FROM throttle.queue_cap_counts()",
        Duration::from_secs(10),
        |n| n == 0,
    );
    c.batch_execute("INSERT INTO throttle.pending (sender, carrier) SELECT 'u3-1', 'att' FROM generate_series(1, 3)")
        .expect("three wait (1 an hour)");
    c.batch_execute("ALTER EXTENSION pg_throttle UPDATE")
        .expect("ALTER EXTENSION UPDATE");
    assert_eq!(version(&mut c), CURRENT);
    // The cap still counts its three: a fourth is refused.
    let e = c
        .batch_execute("INSERT INTO throttle.pending (sender, carrier) VALUES ('u3-1', 'att')")
        .expect_err("the queue cap is full");
    assert_eq!(pg_throttle_tests::sqlstate(&e), "PT429", "{e}");
    let size = count(
        &mut c,
        "SELECT size FROM throttle.shmem_tables() WHERE setting = 'throttle.max_queue_caps'",
    );
    assert_eq!(size, 10_000, "the default size");
    assert_same_as_fresh(&server, &mut c, "fresh3");
}

#[test]
fn update_from_0_4_0_keeps_the_queue_and_contact_rules_work_after() {
    let (_server, mut c) = updated_with_three_messages("upgrade4", "0.4.0", "u4-1", "fresh4");
    // A contact rule: one message without a reply. The three kept go (three recipients);
    // a second to the first recipient waits for a reply, and goes after one.
    c.batch_execute(
        "INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count)
         VALUES ('sender', 'u4-1', 'unanswered', 1)",
    )
    .expect("a contact rule");
    worker_on(&mut c);
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(10),
        |n| n == 3,
    );
    let id: i64 = c
        .query_one(
            "INSERT INTO throttle.pending (sender, carrier, recipient) VALUES ('u4-1', 'att', '+15550000001') RETURNING id",
            &[],
        )
        .expect("a second message")
        .get(0);
    let held = wait_for(
        &mut c,
        &format!("SELECT count(*) FROM throttle.pending WHERE id = {id} AND held_rule IS NOT NULL"),
        Duration::from_secs(10),
        |n| n == 1,
    );
    assert_eq!(held, 1, "held for a reply");
    c.batch_execute("SELECT throttle.inbound('u4-1', '+15550000001')")
        .expect("a reply");
    let n = wait_for(
        &mut c,
        &format!("SELECT count(*) FROM throttle.ready WHERE id = {id}"),
        Duration::from_secs(10),
        |n| n == 1,
    );
    assert_eq!(n, 1);
}

#[test]
fn update_from_0_5_0_keeps_the_queue_and_delivery_works_after() {
    let (_server, mut c) = updated_with_three_messages("upgrade5", "0.5.0", "u5-1", "fresh5");
    let before = pending_ids(&mut c);
    // The kept messages are released, read, and acknowledged: each ends in throttle.sent.
    worker_on(&mut c);
    wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(10),
        |n| n == 3,
    );
    let read: Vec<i64> = c
        .query(
            "SELECT id FROM throttle.read(10, '1 minute') ORDER BY id",
            &[],
        )
        .expect("read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(read, before, "every kept message read");
    for id in &read {
        let r: String = c
            .query_one(
                "SELECT throttle.ack($1::bigint, 'sent', 'p-' || $1::bigint::text)",
                &[id],
            )
            .expect("ack")
            .get(0);
        assert_eq!(r, "sent");
    }
    let sent: i64 = c
        .query_one(
            "SELECT count(*) FROM throttle.sent WHERE sender = 'u5-1'",
            &[],
        )
        .expect("sent")
        .get(0);
    assert_eq!(sent, 3);
}

#[test]
fn update_from_0_6_0_keeps_the_queue_and_pools_pick_by_headroom_after() {
    let (_server, mut c) = updated_with_three_messages("upgrade6", "0.6.0", "u6-1", "fresh6");
    // Two lines, one with room for a single new contact a day, the other for 50: the three
    // new recipients all go to the roomier line (0.6.0 alternated, and put two on the first,
    // over its cap: the second waited for the next day).
    c.batch_execute(
        "INSERT INTO throttle.pool (pool) VALUES ('u6p');
         INSERT INTO throttle.sender (sender) VALUES ('u6-a'), ('u6-b');
         INSERT INTO throttle.pool_line (pool, sender) VALUES ('u6p', 'u6-a'), ('u6p', 'u6-b');
         INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES
             ('sender', 'u6-a', 'new_contacts', 1), ('sender', 'u6-b', 'new_contacts', 50);",
    )
    .expect("pool");
    for i in 0..3 {
        c.query_one(
            "SELECT throttle.enqueue_pool('u6p', 'att', '+1555700000' || $1::int4::text)",
            &[&i],
        )
        .expect("enqueue_pool");
    }
    let on_a: i64 = c
        .query_one(
            "SELECT count(*) FROM throttle.pool_assignment WHERE pool = 'u6p' AND sender = 'u6-a'",
            &[],
        )
        .expect("assignments")
        .get(0);
    assert_eq!(on_a, 0);
}

#[test]
fn update_from_0_7_0_reads_into_the_contact_filter_what_0_7_0_wrote() {
    let (server, mut c) = server_with("upgrade7", "0.7.0");
    // A line whose contact was written under 0.7.0 (no trigger then): one message without
    // a reply, at the rule's limit.
    c.batch_execute(
        "INSERT INTO throttle.sender (sender) VALUES ('u7-1');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'u7-1', 100, '1 second');
         INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count, at_limit)
              VALUES ('sender', 'u7-1', 'unanswered', 1, 'refuse');
         INSERT INTO throttle.contact_sent (sender, contact, unanswered, last_sent_at)
              VALUES ('u7-1', '+15557700001', 1, now());",
    )
    .expect("fill 0.7.0");
    c.batch_execute("ALTER EXTENSION pg_throttle UPDATE")
        .expect("ALTER EXTENSION UPDATE");
    assert_eq!(version(&mut c), CURRENT);
    assert_same_as_fresh(&server, &mut c, "fresh7");
    worker_on(&mut c);
    let ready = wait_for(
        &mut c,
        "SELECT count(*) FROM throttle.contact_filter() WHERE ready",
        Duration::from_secs(30),
        |n| n == 1,
    );
    assert_eq!(ready, 1, "the worker made the filter ready");
    let admitted = |c: &mut Client, to: &str| -> bool {
        c.query_one(
            "SELECT admitted FROM throttle.throttle_admit('u7-1', 'att', now(), 1, 'sms', $1)",
            &[&to],
        )
        .expect("admit")
        .get(0)
    };
    assert!(
        !admitted(&mut c, "+15557700001"),
        "what 0.7.0 wrote is read"
    );
    assert!(admitted(&mut c, "+15557700002"));
    assert!(!admitted(&mut c, "+15557700002"));
}

#[test]
fn a_dump_and_restore_keeps_configuration_and_queue_and_counts_it_once() {
    let a = Server::start("dump-a", &["throttle.worker_enabled = off"]);
    let mut c = a.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, account, weight) SELECT 'd-' || g, 'd-acct', g FROM generate_series(1, 3) g;
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per) VALUES ('d acct', 'account', 'd-acct', 1, '1 hour');
         INSERT INTO throttle.cap (name, scope, scope_id, cap, period, reset_at, time_zone)
              VALUES ('d daily', 'account', 'd-acct', 1000, 'day', '00:00', 'UTC');
         INSERT INTO throttle.account_role (account, role) VALUES ('d-acct', 'postgres');
         INSERT INTO throttle.pending (sender, carrier, payload) SELECT 'd-' || (1 + g % 3), 'att', jsonb_build_object('n', g) FROM generate_series(1, 30) g;
         -- After the messages: with the worker off here, nobody counts them under it.
         INSERT INTO throttle.queue_cap (name, scope, scope_id, max_waiting) VALUES ('d queue', 'account', 'd-acct', 100);",
    )
    .expect("fill");
    let dump = a.datadir().join("dump.custom");
    let dump = dump.to_str().expect("utf8 path");
    let host = a.datadir().to_str().expect("utf8 path").to_string();
    let port = a.port.to_string();
    a.tool(
        "pg_dump",
        &[
            "-h", &host, "-p", &port, "-U", "postgres", "-Fc", "-f", dump, "postgres",
        ],
    );
    let config = |c: &mut Client| -> Vec<String> {
        c.query(
            "SELECT 'sender ' || s::text FROM (SELECT sender, account, weight FROM throttle.sender) s
             UNION ALL SELECT 'limit ' || l::text FROM (SELECT limit_id, name, scope, scope_id, rate, per, burst FROM throttle.rate_limit) l
             UNION ALL SELECT 'cap ' || k::text FROM (SELECT cap_id, name, cap, period, reset_at, time_zone FROM throttle.cap) k
             UNION ALL SELECT 'queue cap ' || q::text FROM (SELECT queue_cap_id, name, max_waiting FROM throttle.queue_cap) q
             UNION ALL SELECT 'tenant ' || t::text FROM throttle.account_role t
             UNION ALL SELECT 'pending ' || p::text FROM (SELECT id, sender, carrier, payload FROM throttle.pending) p
             ORDER BY 1",
            &[],
        )
        .expect("config")
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let before = config(&mut c);
    assert_eq!(
        before.iter().filter(|l| l.starts_with("pending")).count(),
        30
    );

    let b = Server::start("dump-b", &["throttle.worker_enabled = off"]);
    let mut d = b.connect();
    d.batch_execute("DROP EXTENSION pg_throttle; DROP SCHEMA throttle")
        .expect("an empty database");
    let bhost = b.datadir().to_str().expect("utf8 path").to_string();
    let bport = b.port.to_string();
    b.tool(
        "pg_restore",
        &[
            "-h",
            &bhost,
            "-p",
            &bport,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "--exit-on-error",
            dump,
        ],
    );
    assert_eq!(
        config(&mut d),
        before,
        "configuration and queue restored as they were"
    );
    let restored_max: i64 = d
        .query_one("SELECT max(id) FROM throttle.pending", &[])
        .expect("max")
        .get(0);
    // The worker runs (the account's 1 an hour holds every message: a new server starts
    // each limit as just spent) and counts the queue cap: each restored message once, so
    // exactly 70 more fit under its 100, with ids after the restored ones.
    worker_on(&mut d);
    let mut fitted = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match d.query_one(
            "INSERT INTO throttle.pending (sender, carrier) VALUES ('d-2', 'att') RETURNING id",
            &[],
        ) {
            Ok(row) => {
                let id: i64 = row.get(0);
                assert!(id > restored_max, "{id} after {restored_max}");
                fitted += 1
            }
            Err(e) if pg_throttle_tests::sqlstate(&e) == "PT429" => break,
            // The worker has not counted the queue cap yet.
            Err(e)
                if pg_throttle_tests::sqlstate(&e) == "55000"
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("enqueue: {e}"),
        }
    }
    assert_eq!(fitted, 70, "100 allowed, 30 waiting");
    assert_eq!(count(&mut d, "SELECT count(*) FROM throttle.ready"), 0);
}

/// Every file under `dir`, read as text (pg_upgrade's logs).
fn logs_under(dir: &std::path::Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push_str(&logs_under(&p));
            } else if let Ok(t) = std::fs::read_to_string(&p) {
                out.push_str(&t);
            }
        }
    }
    out
}

#[test]
fn pg_upgrade_keeps_everything_and_starts_no_worker_meanwhile() {
    let mut old = Server::start("pgup-old", &["throttle.worker_enabled = off"]);
    let mut c = old.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, account) VALUES ('pu-1', 'pu-acct');
         INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per) VALUES ('pu line', 'sender', 'pu-1', 2, '1 second');
         INSERT INTO throttle.account_role (account, role) VALUES ('pu-acct', 'postgres');
         INSERT INTO throttle.pending (sender, carrier) SELECT 'pu-1', 'att' FROM generate_series(1, 6);",
    )
    .expect("fill");
    let ids = pending_ids(&mut c);
    drop(c);
    let new = old.pg_upgrade("pgup-new");
    let logs = logs_under(&new.datadir().join("pg_upgrade_output.d"));
    assert!(
        logs.contains("listening on Unix socket"),
        "the servers' logs under pg_upgrade are kept"
    );
    assert!(
        !logs.contains("pg_throttle release worker"),
        "no worker runs under pg_upgrade: {}",
        logs.lines()
            .filter(|l| l.contains("pg_throttle"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut d = new.connect();
    assert_eq!(version(&mut d), CURRENT);
    assert_eq!(pending_ids(&mut d), ids, "the queue is kept");
    assert_eq!(
        count(&mut d, "SELECT count(*) FROM throttle.account_role"),
        1
    );
    // Its worker (enabled in the new cluster) releases them.
    let n = wait_for(
        &mut d,
        "SELECT count(*) FROM throttle.ready",
        Duration::from_secs(15),
        |n| n == 6,
    );
    assert_eq!(n, 6);
}
