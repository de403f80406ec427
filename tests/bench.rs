//! Benchmarks against a real server. Prints figures; never passes or fails on time.
//!
//!   cargo run --release -p pg_throttle_tests --bin bench -- [admit] [--rows N] [--runs N]
//!
//! The extension must be installed (scripts/bench.sh does it).

use pg_throttle_tests::Server;
use std::time::Instant;

struct Args {
    which: Vec<String>,
    rows: i64,
    runs: usize,
}

fn args() -> Args {
    let mut a = Args {
        which: vec![],
        rows: 1_000_000,
        runs: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--rows" => a.rows = it.next().and_then(|v| v.parse().ok()).expect("--rows N"),
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            _ => a.which.push(x),
        }
    }
    if a.which.is_empty() {
        a.which.push("admit".into());
    }
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Rows per second of `sql` (which must scan `rows` rows), median of `runs` after a warm-up.
/// `{ts}` in the query is replaced by a time that moves on 10 s every run, so buckets refill.
fn rate(c: &mut postgres::Client, sql: &str, rows: i64, runs: usize) -> (f64, f64, i64) {
    let mut speeds = vec![];
    let mut last = 0;
    for run in 0..=runs {
        let q = sql.replace(
            "{ts}",
            &format!("(now() + interval '{} seconds')", 10 * run),
        );
        let t = Instant::now();
        let n: i64 = c.query_one(q.as_str(), &[]).expect(sql).get(0);
        let secs = t.elapsed().as_secs_f64();
        last = n;
        if run > 0 {
            speeds.push(rows as f64 / secs);
        }
    }
    let min = speeds.iter().cloned().fold(f64::INFINITY, f64::min);
    (median(speeds), min, last)
}

fn bench_admit(a: &Args) {
    let server = Server::start("bench-admit", &["shared_buffers = '256MB'", "jit = off"]);
    let mut c = server.connect();
    println!(
        "== throttle_admit from one backend: {} rows over 10,000 senders, median of {} runs",
        a.rows, a.runs
    );
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender, campaign)
              SELECT 'bench-' || g, 'camp-' || (g % 100) FROM generate_series(1, 10000) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst)
              SELECT 'sender', 'bench-' || g, 100, '1 second', 100 FROM generate_series(1, 10000) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, carrier, rate, per, burst)
              SELECT 'campaign', 'camp-' || g, 'att', 4500, '1 minute', 4500 FROM generate_series(0, 99) g;
         CREATE TABLE bench_input AS
              SELECT 'bench-' || (1 + g % 10000) AS sender,
                     CASE WHEN g % 4 = 0 THEN 'att' ELSE 'tmobile' END AS carrier
                FROM generate_series(1, {}) g;
         ANALYZE bench_input;
         CREATE FUNCTION noop_plpgsql(text, text, timestamptz) RETURNS boolean
              LANGUAGE plpgsql AS 'BEGIN RETURN true; END';
         SET max_parallel_workers_per_gather = 0;",
        a.rows
    ))
    .expect("set up");
    let shapes = [
        ("texteq(sender, carrier)  [ceiling]", "SELECT count(*) FROM bench_input WHERE NOT texteq(sender, carrier)"),
        ("noop plpgsql(sender, carrier, ts)", "SELECT count(*) FROM bench_input WHERE noop_plpgsql(sender, carrier, {ts})"),
        ("try_admit(sender, carrier, ts)", "SELECT count(*) FROM bench_input WHERE throttle.try_admit(sender, carrier, {ts})"),
        (
            "throttle_admit(...) full answer",
            "SELECT count(*) FROM bench_input WHERE (throttle.throttle_admit(sender, carrier, {ts})).admitted",
        ),
    ];
    let mut results = vec![];
    for (name, sql) in shapes {
        let (med, min, n) = rate(&mut c, sql, a.rows, a.runs);
        results.push((name, med));
        println!(
            "{name:<40} {:>12.0} rows/s median  {:>12.0} min   (rows passing: {n})",
            med, min
        );
    }
    let ceiling = results[0].1;
    println!("ratios to the texteq ceiling:");
    for (name, med) in &results[1..] {
        println!("  {name:<38} {:>6.1} %", 100.0 * med / ceiling);
    }
}

fn main() {
    let a = args();
    for w in a.which.clone() {
        match w.as_str() {
            "admit" => bench_admit(&a),
            other => {
                eprintln!("unknown benchmark {other}: expected admit");
                std::process::exit(2);
            }
        }
    }
}
