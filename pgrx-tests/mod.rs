//! `#[pg_test]`s: the SQL surface inside a real backend. Each test rolls back its rows, but
//! shared memory does not roll back: every test uses its own senders and limits, and times
//! from `now() + 10 minutes` (past the moment the test server's fresh buckets fill up).

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    fn one<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn admitted(sender: &str, carrier: &str, offset_ms: i64, cost: i32, channel: &str) -> bool {
        one::<bool>(&format!(
            "SELECT admitted FROM throttle.throttle_admit('{sender}', '{carrier}', \
             now() + interval '10 minutes' + {offset_ms} * interval '1 ms', {cost}, '{channel}')"
        ))
        .expect("admitted is never null")
    }

    fn limit_id(name: &str) -> i64 {
        one::<i64>(&format!(
            "SELECT limit_id FROM throttle.rate_limit WHERE name = '{name}'"
        ))
        .expect("limit exists")
    }

    #[pg_test]
    fn admits_up_to_the_burst_then_names_the_blocker_and_the_time() {
        run("INSERT INTO throttle.sender (sender, campaign) VALUES ('t1-line', 't1-camp')");
        run(
            "INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per, burst)
             VALUES ('t1-line-2ps', 'sender', 't1-line', 2, '1 second', 2),
                    ('t1-camp-att', 'campaign', 't1-camp', 600, '1 minute', 600)",
        );
        assert!(admitted("t1-line", "att", 0, 1, "sms"));
        assert!(admitted("t1-line", "att", 0, 1, "sms"));
        let (ok, blocked, wait_ms) = Spi::get_three::<bool, i64, f64>(
            "SELECT admitted, blocked_limit,
                    extract(epoch FROM retry_at - (now() + interval '10 minutes'))::float8 * 1000
               FROM throttle.throttle_admit('t1-line', 'att', now() + interval '10 minutes')",
        )
        .expect("spi");
        assert_eq!(ok, Some(false));
        assert_eq!(blocked, Some(limit_id("t1-line-2ps")));
        // Two per second with a burst of two: after two at t, the next is due at t + 500 ms.
        assert_eq!(wait_ms, Some(500.0));
        assert!(!admitted("t1-line", "att", 499, 1, "sms"));
        assert!(admitted("t1-line", "att", 500, 1, "sms"));
        let by = one::<String>(
            "SELECT blocked_by FROM throttle.throttle_admit('t1-line', 'att', now() + interval '10 minutes' + interval '500 ms')",
        );
        assert_eq!(by.as_deref(), Some("t1-line-2ps"));
    }

    #[pg_test]
    fn refusal_debits_no_limit_and_carriers_are_separate() {
        run("INSERT INTO throttle.sender (sender, campaign) VALUES ('t2-a', 't2-camp'), ('t2-b', 't2-camp')");
        run(
            "INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per, burst) VALUES
             ('t2-a', 'sender', 't2-a', 10, '1 second', 10),
             ('t2-b', 'sender', 't2-b', 10, '1 second', 10)",
        );
        run(
            "INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, rate, per, burst)
             VALUES ('t2-camp-att', 'campaign', 't2-camp', 'att', 1, '1 minute', 1)",
        );
        assert!(admitted("t2-a", "att", 0, 1, "sms"));
        // The campaign's AT&T budget is spent: t2-b is refused and its own limit keeps 10 tokens.
        assert!(!admitted("t2-b", "att", 0, 1, "sms"));
        let left = one::<i64>(&format!(
            "SELECT available FROM throttle.bucket_state(now() + interval '10 minutes') WHERE limit_id = {}",
            limit_id("t2-b")
        ));
        assert_eq!(left, Some(10));
        // The campaign limit is for AT&T only.
        assert!(admitted("t2-b", "tmobile", 0, 1, "sms"));
    }

    #[pg_test]
    fn channel_and_sender_type_narrow_a_limit() {
        run("INSERT INTO throttle.sender (sender, account, sender_type) VALUES ('t3-sc', 't3-acct', 'short_code'),
             ('t3-tf', 't3-acct', 'toll_free')");
        run("INSERT INTO throttle.rate_limit (name, scope, scope_id, sender_type, channel, rate, per, burst) VALUES
             ('t3-mms-sc', 'account', 't3-acct', 'short_code', 'mms', 1, '1 second', 1),
             ('t3-mms-tf', 'account', 't3-acct', 'toll_free', 'mms', 1, '1 second', 1)");
        assert!(admitted("t3-sc", "att", 0, 1, "mms"));
        assert!(!admitted("t3-sc", "att", 0, 1, "mms"));
        // SMS is not limited here, and the toll-free MMS queue is its own.
        assert!(admitted("t3-sc", "att", 0, 1, "sms"));
        assert!(admitted("t3-tf", "att", 0, 1, "mms"));
        let n = one::<i32>("SELECT limits FROM throttle.throttle_admit('t3-sc', 'att', now() + interval '10 minutes', 1, 'sms')");
        assert_eq!(n, Some(0));
    }

    #[pg_test]
    fn cost_counts_segments() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t4-sc')");
        run("INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per) VALUES ('t4', 'sender', 't4-sc', 100, '1 second')");
        assert!(admitted("t4-sc", "att", 0, 60, "sms"));
        let (ok, headroom) = Spi::get_two::<bool, i64>(
            "SELECT admitted, headroom FROM throttle.throttle_admit('t4-sc', 'att', now() + interval '10 minutes', 60)",
        )
        .expect("spi");
        assert_eq!((ok, headroom), (Some(false), Some(40)));
        assert!(admitted("t4-sc", "att", 0, 40, "sms"));
        // More than the burst can never pass: retry_at is NULL.
        let (ok, retry) = Spi::get_two::<bool, TimestampWithTimeZone>(
            "SELECT admitted, retry_at FROM throttle.throttle_admit('t4-sc', 'att', now() + interval '10 minutes', 101)",
        )
        .expect("spi");
        assert_eq!((ok, retry), (Some(false), None));
    }

    #[pg_test]
    fn changing_a_rate_keeps_the_bucket_state() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t5-line')");
        run("INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per) VALUES ('t5', 'sender', 't5-line', 10, '1 minute')");
        for _ in 0..10 {
            assert!(admitted("t5-line", "att", 0, 1, "sms"));
        }
        assert!(!admitted("t5-line", "att", 0, 1, "sms"));
        // Raising the rate and burst takes effect at once but mints no tokens.
        run("UPDATE throttle.rate_limit SET rate = 6000, burst = 6000 WHERE name = 't5'");
        assert!(!admitted("t5-line", "att", 0, 1, "sms"));
        // At the new rate one token is due after 10 ms.
        assert!(admitted("t5-line", "att", 10, 1, "sms"));
        // Lowering it releases nothing either: at 20 ms one token has accrued at the old
        // rate, and from then on one an hour.
        run("UPDATE throttle.rate_limit SET rate = 1, burst = 1, per = '1 hour' WHERE name = 't5'");
        let passed = [20, 30, 1_000, 60_000]
            .iter()
            .filter(|&&t| admitted("t5-line", "att", t, 1, "sms"))
            .count();
        assert_eq!(passed, 1);
    }

    #[pg_test]
    fn a_sender_without_limits_is_admitted() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t6-free')");
        let (ok, headroom) = Spi::get_two::<bool, i64>(
            "SELECT admitted, headroom FROM throttle.throttle_admit('t6-free', 'att')",
        )
        .expect("spi");
        assert_eq!((ok, headroom), (Some(true), None));
    }

    #[pg_test]
    fn boolean_form_filters_rows() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t7-line')");
        run("INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst) VALUES ('sender', 't7-line', 1, '1 second', 3)");
        let n = one::<i64>(
            "SELECT count(*) FROM generate_series(1, 10) g
              WHERE throttle.try_admit('t7-line', 'att', now() + interval '10 minutes')",
        );
        assert_eq!(n, Some(3));
    }

    #[pg_test]
    fn limit_state_shows_the_bucket() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t8-line')");
        run("INSERT INTO throttle.rate_limit (name, scope, scope_id, rate, per) VALUES ('t8', 'sender', 't8-line', 5, '1 second')");
        assert!(admitted("t8-line", "att", 0, 2, "sms"));
        let in_memory = one::<bool>("SELECT in_memory FROM throttle.limit_state WHERE name = 't8'");
        assert_eq!(in_memory, Some(true));
        let (live, max) = Spi::get_two::<i64, i64>(
            "SELECT live_buckets, max_buckets FROM throttle.shmem_usage()",
        )
        .expect("spi");
        assert!(live.unwrap_or(0) >= 1);
        assert_eq!(max, Some(100_000));
    }

    #[pg_test(error = "unknown sender \"t9-nobody\"")]
    fn unknown_sender_is_an_error() {
        run("SELECT throttle.throttle_admit('t9-nobody', 'att')");
    }

    #[pg_test(error = "sender must not be null")]
    fn null_sender_is_an_error() {
        run("SELECT throttle.throttle_admit(NULL, 'att')");
    }

    #[pg_test(error = "carrier must not be empty")]
    fn empty_carrier_is_an_error() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t10')");
        run("SELECT throttle.throttle_admit('t10', '')");
    }

    #[pg_test(error = "cost must be between 1 and 1000000, got 0")]
    fn zero_cost_is_an_error() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t11')");
        run("SELECT throttle.try_admit('t11', 'att', now(), 0)");
    }

    #[pg_test(error = "ts must be finite")]
    fn infinite_time_is_an_error() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t12')");
        run("SELECT throttle.try_admit('t12', 'att', 'infinity')");
    }

    #[pg_test(error = "ts is too far in the future")]
    fn far_future_time_is_an_error() {
        run("INSERT INTO throttle.sender (sender) VALUES ('t13')");
        run("SELECT throttle.try_admit('t13', 'att', now() + interval '2 hours')");
    }

    #[pg_test(error = "rate must be between 1 and 1000000000, got 0")]
    fn zero_rate_is_refused() {
        run("INSERT INTO throttle.rate_limit (scope, scope_id, rate) VALUES ('sender', 'x', 0)");
    }

    #[pg_test(error = "burst must be between 1 and 1000000000, got -5")]
    fn negative_burst_is_refused() {
        run("INSERT INTO throttle.rate_limit (scope, scope_id, rate, burst) VALUES ('sender', 'x', 1, -5)");
    }

    #[pg_test(error = "per must not be given in months or years, got 1 mon")]
    fn monthly_period_is_refused() {
        run("INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', 'x', 1, '1 month')");
    }

    #[pg_test]
    fn area_codes_map_to_real_zones() {
        assert_eq!(
            one::<String>("SELECT array_to_string(zones, ',') FROM throttle.area_code_zone WHERE area_code = '212'").as_deref(),
            Some("America/New_York")
        );
        assert_eq!(
            one::<String>("SELECT array_to_string(zones, ',') FROM throttle.area_code_zone WHERE area_code = '808'").as_deref(),
            Some("Pacific/Honolulu")
        );
        // Every zone is one PostgreSQL knows, and the table covers the NANP.
        let unknown = one::<i64>(
            "SELECT count(*) FROM throttle.area_code_zone, unnest(zones) z
              WHERE z NOT IN (SELECT name FROM pg_timezone_names)",
        );
        assert_eq!(unknown, Some(0));
        let n = one::<i64>("SELECT count(*) FROM throttle.area_code_zone").unwrap_or(0);
        assert!(n > 300, "only {n} area codes");
    }

    #[pg_test]
    fn cap_windows_follow_daylight_saving() {
        // Midnight-to-midnight in Los Angeles: 23 hours on the spring-forward day, 25 on the
        // fall-back day, 24 otherwise.
        for (day, hours) in [
            ("2026-03-08 12:00", 23),
            ("2026-11-01 12:00", 25),
            ("2026-11-22 12:00", 24),
        ] {
            let h = one::<i64>(&format!(
                "SELECT (extract(epoch FROM window_end - window_start) / 3600)::int8
                   FROM throttle.cap_window('day', '00:00', 'America/Los_Angeles',
                                            timestamptz '{day} America/Los_Angeles')"
            ));
            assert_eq!(h, Some(hours), "{day}");
        }
        // A cap hit at 23:59 Pacific resets at the next midnight Pacific.
        let end = one::<bool>(
            "SELECT window_end = timestamptz '2026-11-23 00:00 America/Los_Angeles'
               FROM throttle.cap_window('day', '00:00', 'America/Los_Angeles',
                                        timestamptz '2026-11-22 23:59 America/Los_Angeles')",
        );
        assert_eq!(end, Some(true));
    }

    #[pg_test]
    fn next_local_time_from_the_area_code() {
        let ok = one::<bool>(
            "SELECT throttle.next_local_time(z.zones, timestamptz '2026-11-23 00:00 America/Los_Angeles', '08:00')
                    = timestamptz '2026-11-23 08:00 America/New_York'
               FROM throttle.area_code_zone z WHERE z.area_code = throttle.area_code('+1 212 555 0100')",
        );
        assert_eq!(ok, Some(true));
        let ok = one::<bool>(
            "SELECT throttle.next_local_time(z.zones, timestamptz '2026-11-23 00:00 America/Los_Angeles', '08:00')
                    = timestamptz '2026-11-23 08:00 Pacific/Honolulu'
               FROM throttle.area_code_zone z WHERE z.area_code = throttle.area_code('808-555-0100')",
        );
        assert_eq!(ok, Some(true));
        assert_eq!(
            one::<String>("SELECT throttle.area_code('+442071234567')"),
            None
        );
    }

    #[pg_test(error = "calendar caps need the release worker running in this database")]
    fn caps_without_the_worker_here_are_an_error_not_a_free_pass() {
        // The test database is not the one the worker serves (throttle.database_name).
        run("INSERT INTO throttle.sender (sender, brand) VALUES ('tc-line', 'tc-brand')");
        run("INSERT INTO throttle.cap (scope, scope_id, cap) VALUES ('brand', 'tc-brand', 10)");
        admitted("tc-line", "tmobile", 0, 1, "sms");
    }

    #[pg_test]
    fn each_of_thousands_of_plans_in_one_session_finds_its_own_limits() {
        // 3,000 senders, each with a window-exact limit of its own size (1 to 5 an hour), two
        // carriers each: 6,000 plans, the session's plan table grown many times over within
        // one statement. A plan found for the wrong sender would admit its count, not this
        // one's.
        run("INSERT INTO throttle.sender (sender) SELECT 'tp-' || i FROM generate_series(1, 3000) i");
        run(
            "INSERT INTO throttle.rate_limit (scope, scope_id, rate, per)
             SELECT 'sender', 'tp-' || i, 1 + i % 5, '1 hour' FROM generate_series(1, 3000) i",
        );
        let wrong = one::<i64>(
            "WITH a AS (
                 SELECT i, count(*) FILTER (WHERE throttle.try_admit('tp-' || i, c,
                            now() + interval '10 minutes' + k * interval '1 ms')) AS n
                   FROM generate_series(1, 6) k, generate_series(1, 3000) i,
                        unnest(ARRAY['att', 'tmobile']) c
                  GROUP BY i)
             SELECT count(*) FROM a WHERE n <> 1 + i % 5",
        );
        assert_eq!(wrong, Some(0));
    }

    #[pg_test]
    fn each_answer_of_a_statement_carries_its_own_headroom_and_limits() {
        // After a session's first call the answers come from its fast path, from the second
        // admission (and the second refusal by one limit) copied from a template row: each
        // must still say what this call left (the fewest units left in any of its limits), how
        // many limits applied (two to AT&T: the line's and its campaign's; one to T-Mobile),
        // and, when refused, what blocked it and when the same call would pass (5 an hour
        // with a burst of 5: the next unit 720 s after the fifth).
        run("INSERT INTO throttle.sender (sender, campaign) VALUES ('t7-line', 't7-camp')");
        run(
            "INSERT INTO throttle.rate_limit (name, scope, scope_id, carrier, rate, per, burst) VALUES
             ('t7-line', 'sender', 't7-line', NULL, 5, '1 hour', 5),
             ('t7-camp', 'campaign', 't7-camp', 'att', 100, '1 hour', 100)",
        );
        let answers = one::<String>(
            "SELECT string_agg(format('%s/%s/%s/%s/%s', (a).admitted, (a).headroom, (a).limits, (a).blocked_by,
                                      extract(epoch FROM (a).retry_at - (now() + interval '10 minutes'))::int),
                               ' ' ORDER BY k)
               FROM (SELECT k, throttle.throttle_admit('t7-line', CASE WHEN k % 2 = 0 THEN 'att' ELSE 'tmobile' END,
                                                       now() + interval '10 minutes') AS a
                       FROM generate_series(1, 9) k) s",
        );
        assert_eq!(
            answers.as_deref(),
            Some(
                "t/4/1// t/3/2// t/2/1// t/1/2// t/0/1// f/0/2/t7-line/720 f/0/1/t7-line/720 \
                 f/0/2/t7-line/720 f/0/1/t7-line/720"
            )
        );
    }

    /// The state an admission reads of a recipient it has not seen in its transaction yet:
    /// straight from the tables' primary keys, it is what the statement reads, for every mix
    /// of NULLs, counts and recent sends, and for recipients only one table (or neither)
    /// knows.
    #[pg_test]
    fn a_recipients_state_read_from_the_keys_is_what_the_statement_reads() {
        run("INSERT INTO throttle.contact_sent
                    (sender, contact, counted_as, counted_at, unanswered, unanswered_since, recent, last_sent_at)
             VALUES ('tp-line', 'tp-a', 1, now() - interval '1 hour', 3, now() - interval '2 hours',
                     ARRAY[now() - interval '10 s', now() - interval '5 s'], now()),
                    ('tp-line', 'tp-b', NULL, NULL, 0, NULL, '{}', now()),
                    ('tp-line', 'tp-c', 2, now() - interval '1 minute', 7, NULL, ARRAY[now()], now()),
                    ('tp-line', 'tp-e', 1, NULL, -4, now(), '{}', now()),
                    ('tp-other', 'tp-f', 2, now(), 1, NULL, '{}', now())");
        run(
            "INSERT INTO throttle.contact_inbound (sender, contact, last_inbound_at)
             VALUES ('tp-line', 'tp-a', now() - interval '3 hours'),
                    ('tp-line', 'tp-d', now() - interval '1 day'),
                    ('tp-other', 'tp-a', now())",
        );
        let mut known = 0;
        let no_row = crate::limiter::contact::Contact {
            unstored: true,
            ..Default::default()
        };
        for (r, unstored) in [
            ("tp-a", false),
            ("tp-b", false),
            ("tp-c", false),
            ("tp-d", true),
            ("tp-e", false),
            ("tp-f", true),
            ("tp-none", true),
        ] {
            let _latest = crate::backend::LatestSnapshot::push();
            let direct = crate::contact_probe::contact("tp-line", r);
            let statement = Spi::connect(|c| crate::contacts::read_one_contact(&c, "tp-line", r))
                .expect("the statement reads");
            assert_eq!(direct.as_ref(), Some(&statement), "recipient {r}");
            // Whether the pair has a row of what was sent (its first write is then an update).
            assert_eq!(statement.unstored, unstored, "recipient {r}");
            known += usize::from(statement != no_row && statement != Default::default());
        }
        // The rows were seen: four of the seven have state on this line (tp-b's row holds
        // nothing but what an unknown recipient has; tp-f is another line's).
        assert_eq!(known, 4);
    }
}
