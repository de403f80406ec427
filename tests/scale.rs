//! At a messaging platform's scale, against real servers: 100,000 lines each with the
//! Sendblue line profile, and 10,000 brands each with a daily cap admitted from 8 clients.

use pg_throttle_tests::{count, sqlstate, wait_for, Server};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const LINES: i64 = 100_000;
/// When the messages of the line test may go: not while it runs.
const LATER: &str = "now() + interval '1 day'";

/// 100,000 lines, each with a queue cap of 1,500: every line takes messages (one each, in one
/// statement); sampled lines take exactly 1,500 and refuse the 1,501st with PT429.
#[test]
fn a_hundred_thousand_lines_each_hold_exactly_their_1500() {
    let server = Server::start(
        "scale-lines",
        &[
            "throttle.max_queue_caps = 100000",
            "throttle.max_buckets = 200000",
        ],
    );
    let mut c = server.connect();
    let t = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender) SELECT 'ln-' || g FROM generate_series(1, {LINES}) g;
         SELECT count(*) FROM throttle.apply_profile('sendblue_line', 'sender',
                ARRAY(SELECT 'ln-' || g FROM generate_series(1, {LINES}) g));"
    ))
    .expect("the line profile on every line");
    println!(
        "{LINES} lines configured in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let counted = wait_for(
        &mut c,
        "SELECT used FROM throttle.shmem_tables() WHERE setting = 'throttle.max_queue_caps'",
        Duration::from_secs(60),
        |n| n == LINES,
    );
    assert_eq!(counted, LINES, "the worker counts every line's queue cap");
    println!("counted at {:.1} s", t.elapsed().as_secs_f64());
    // Every message is scheduled for tomorrow: none leaves, what is enqueued stays counted.
    let n = c
        .execute(
            &format!("INSERT INTO throttle.pending (sender, carrier, not_before) SELECT 'ln-' || g, 'att', {LATER} FROM generate_series(1, {LINES}) g"),
            &[],
        )
        .expect("one message for every line");
    assert_eq!(n, LINES as u64);
    println!("one message per line at {:.1} s", t.elapsed().as_secs_f64());
    for line in [2, 777, 50_000, LINES] {
        let sender = format!("ln-{line}");
        let n = c
            .execute(
                &format!("INSERT INTO throttle.pending (sender, carrier, not_before) SELECT $1, 'att', {LATER} FROM generate_series(1, 1499)"),
                &[&sender],
            )
            .expect("up to 1,500");
        assert_eq!(n, 1499);
        let e = c
            .execute(
                &format!("INSERT INTO throttle.pending (sender, carrier, not_before) VALUES ($1, 'att', {LATER})"),
                &[&sender],
            )
            .expect_err("the 1,501st");
        assert_eq!(sqlstate(&e), "PT429", "{sender}: {e}");
        assert_eq!(
            count(
                &mut c,
                &format!("SELECT count(*) FROM throttle.pending WHERE sender = '{sender}'")
            ),
            1500
        );
    }
    // Every line counts exactly what it holds.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.queue_cap_counts() WHERE waiting = 1500"
        ),
        4
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM throttle.queue_cap_counts() WHERE waiting = 1"
        ),
        LINES - 4
    );
}

/// 10,000 brands, each with a daily cap of 3 on its line; 8 clients each try every brand's
/// line twice through throttle_admit at once: every brand admits exactly 3.
#[test]
fn ten_thousand_brand_caps_each_admit_exactly_their_cap_from_8_clients() {
    const BRANDS: usize = 10_000;
    const CAP: i64 = 3;
    let server = Server::start("scale-brands", &["throttle.max_cap_leases = 16384"]);
    let mut c = server.connect();
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender, brand) SELECT 'br-' || g, 'brand-' || g FROM generate_series(1, {BRANDS}) g;
         INSERT INTO throttle.cap (scope, scope_id, cap, time_zone)
              SELECT 'brand', 'brand-' || g, {CAP}, 'America/Los_Angeles' FROM generate_series(1, {BRANDS}) g;"
    ))
    .expect("brands and caps");
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let mut c = server.connect();
            std::thread::spawn(move || {
                // Each client in its own order.
                let mut lines: Vec<String> = (1..=BRANDS).map(|g| format!("br-{g}")).collect();
                lines.rotate_left(k * BRANDS / 8);
                lines.extend(lines.clone());
                let mut admitted: HashMap<String, i64> = HashMap::new();
                for chunk in lines.chunks(2_000) {
                    for r in c
                        .query(
                            "SELECT s, (throttle.throttle_admit(s, 'tmobile')).admitted FROM unnest($1::text[]) s",
                            &[&chunk.to_vec()],
                        )
                        .expect("admissions")
                    {
                        if r.get::<_, bool>(1) {
                            *admitted.entry(r.get(0)).or_default() += 1;
                        }
                    }
                }
                admitted
            })
        })
        .collect();
    let mut total: HashMap<String, i64> = HashMap::new();
    for t in threads {
        for (s, n) in t.join().expect("client") {
            *total.entry(s).or_default() += n;
        }
    }
    assert_eq!(total.len(), BRANDS, "every brand admitted some");
    let wrong: Vec<_> = total.iter().filter(|(_, &n)| n != CAP).take(5).collect();
    assert!(wrong.is_empty(), "brands not at exactly {CAP}: {wrong:?}");
}
