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

/// Rows per second of each query (each must scan `rows` rows), measured in interleaved
/// rounds so that the machine's drift hits every shape alike: returns per shape the rates of
/// each round (after one warm-up round) and the rows the last run passed. `{ts}` in a query
/// becomes a time 10 s past the previous query's, so every query finds refilled buckets.
fn interleaved(
    c: &mut postgres::Client,
    shapes: &[(&str, &str)],
    rows: i64,
    runs: usize,
) -> Vec<(Vec<f64>, i64)> {
    let mut out: Vec<(Vec<f64>, i64)> = shapes.iter().map(|_| (vec![], 0)).collect();
    for round in 0..=runs {
        for (i, (_, sql)) in shapes.iter().enumerate() {
            // Each shape and round gets its own time, so each starts from refilled buckets.
            // A literal, so it is a constant in the plan like texteq's absent third argument.
            let at = 10 * (round * shapes.len() + i);
            let ts: String = c
                .query_one(
                    &format!("SELECT (now() + interval '{at} seconds')::text"),
                    &[],
                )
                .expect("time")
                .get(0);
            let q = sql.replace("{ts}", &format!("'{ts}'::timestamptz"));
            let t = Instant::now();
            let n: i64 = c.query_one(q.as_str(), &[]).expect(sql).get(0);
            let secs = t.elapsed().as_secs_f64();
            out[i].1 = n;
            if round > 0 {
                out[i].0.push(rows as f64 / secs);
            }
        }
    }
    out
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
    let results = interleaved(&mut c, &shapes, a.rows, a.runs);
    for ((name, _), (speeds, n)) in shapes.iter().zip(&results) {
        let min = speeds.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "{name:<40} {:>12.0} rows/s median  {:>12.0} min   (rows passing: {n})",
            median(speeds.clone()),
            min
        );
    }
    println!("ratio to the texteq ceiling (median of the per-round ratios):");
    let ceiling = &results[0].0;
    for ((name, _), (speeds, _)) in shapes.iter().zip(&results).skip(1) {
        let ratios: Vec<f64> = speeds
            .iter()
            .zip(ceiling)
            .map(|(s, c)| 100.0 * s / c)
            .collect();
        println!("  {name:<38} {:>6.1} %", median(ratios));
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
