//! Benchmarks against a real server. Prints figures; never passes or fails on time.
//!
//!   cargo run --release -p pg_throttle_tests --bin bench -- [SECTION ...] [--rows N] [--runs N]
//!       [--caps] [--window] [--conf 'name = value'] [--baseline FILE] [--save FILE]
//!
//! Sections: admit, throughput, accuracy, latency, scale, enqueue, delivery, clients, fidelity;
//! `release` is throughput, accuracy, latency, scale and enqueue. With no section, every
//! section but fidelity runs (5-7 minutes on 2 cores); fidelity alone takes over 3
//! minutes (180 s of releases), so it runs only when named. `--rows`, `--runs`, `--caps`,
//! `--window` and `--conf` shape the admit section.
//!
//! After the sections, one summary table: each figure, this build's value, the ceiling it
//! is compared with (measured in the same run: texteq rows/s, `SELECT 1` tps, raw move
//! rows/s, what the limits allow), the ratio, the previous release's figure from
//! `bench/baseline-0.3.0.tsv` (or `--baseline FILE`), and the issue's target where there is
//! one. `--save FILE` writes this run's figures in the baseline's format (for the next
//! release's baseline).
//!
//! The extension must be installed (scripts/bench.sh does it).

use pg_throttle_tests::checker::{window_ok, Event};
use pg_throttle_tests::{window_violation, Client, Server};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every section a run with no section names runs, in this order. Not fidelity: it takes
/// over 3 minutes on its own (see the module's doc).
const EVERY: [&str; 8] = [
    "admit",
    "throughput",
    "accuracy",
    "latency",
    "scale",
    "enqueue",
    "delivery",
    "clients",
];

/// The sections `release` names.
const RELEASE: [&str; 5] = ["throughput", "accuracy", "latency", "scale", "enqueue"];

struct Args {
    which: Vec<String>,
    rows: i64,
    runs: usize,
    /// Extra postgresql.conf lines for the admission benchmark's server.
    conf: Vec<String>,
    /// Admission benchmark: every campaign also has a daily calendar cap (leases).
    caps: bool,
    /// Admission benchmark: window-exact limits (burst NULL, the default) instead of token
    /// buckets with a burst.
    window: bool,
    /// The previous release's figures (default bench/baseline-0.3.0.tsv).
    baseline: PathBuf,
    /// Write this run's figures here, in the baseline's format.
    save: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        which: vec![],
        rows: 300_000,
        runs: 5,
        conf: vec![],
        caps: false,
        window: false,
        baseline: Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the repository")
            .join("bench/baseline-0.3.0.tsv"),
        save: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--rows" => a.rows = it.next().and_then(|v| v.parse().ok()).expect("--rows N"),
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--conf" => a.conf.push(it.next().expect("--conf 'name = value'")),
            "--caps" => a.caps = true,
            "--window" => a.window = true,
            "--baseline" => a.baseline = it.next().expect("--baseline FILE").into(),
            "--save" => a.save = Some(it.next().expect("--save FILE").into()),
            _ => a.which.push(x),
        }
    }
    if a.which.is_empty() {
        a.which = EVERY.iter().map(|w| w.to_string()).collect();
    }
    a
}

fn main() {
    let a = args();
    let mut sections: Vec<&str> = vec![];
    for w in &a.which {
        match w.as_str() {
            "release" => sections.extend(RELEASE),
            "all" => sections.extend(EVERY),
            w if EVERY.contains(&w) || w == "fidelity" || w == "contacts" => sections.push(w),
            other => {
                eprintln!("unknown benchmark {other}: expected admit, throughput, accuracy, latency, scale, enqueue, delivery, clients, fidelity, contacts, release (the five release sections) or all");
                std::process::exit(2);
            }
        }
    }
    let started = Instant::now();
    let library = installed_library();
    println!("pg_throttle library under test: {library}");
    let mut s = Summary::default();
    for w in sections {
        let t = Instant::now();
        match w {
            "admit" => bench_admit(&a, &mut s),
            "throughput" => release_throughput(&mut s),
            "accuracy" => release_accuracy(&mut s),
            "latency" => release_latency(&mut s),
            "scale" => {
                release_scale(&mut s);
                platform_scale(&mut s);
            }
            "enqueue" => enqueue_throughput(&mut s),
            "delivery" => delivery(&mut s),
            "clients" => clients(&mut s),
            "fidelity" => fidelity(&mut s),
            "contacts" => contacts_scale(&mut s),
            _ => unreachable!(),
        }
        println!("   ({w}: {:.0} s)", t.elapsed().as_secs_f64());
    }
    s.print(&a.baseline, started.elapsed());
    let after = installed_library();
    println!("pg_throttle library under test: {library}");
    if after != library {
        println!("NOTE: the installed library changed during the run (now {after}): servers started after that ran the new one");
    }
    if let Some(path) = &a.save {
        s.save(path);
    }
}

// ---------------------------------------------------------------------------------------
// The summary table and the previous release's figures.

/// What a figure is compared with, measured in the same run.
struct Ceiling {
    name: &'static str,
    value: f64,
    unit: &'static str,
    /// The figure as a share of the ceiling, in % (the median of per-round ratios where the
    /// section measures in rounds, so that the machine's drift hits both alike).
    ratio: f64,
}

/// One line of the summary table. Its keys in the baseline file: `{section}: {what}` for the
/// value, `{section}: {ceiling}` for the ceiling's, `{section}: {what} / {ceiling}` for the
/// ratio.
struct Figure {
    section: &'static str,
    what: String,
    value: f64,
    unit: &'static str,
    ceiling: Option<Ceiling>,
    /// The issue's target for the ratio, in %.
    target: Option<f64>,
}

impl Figure {
    fn key(&self) -> String {
        format!("{}: {}", self.section, self.what)
    }
}

#[derive(Default)]
struct Summary {
    figures: Vec<Figure>,
}

impl Summary {
    /// A figure with no ceiling (a latency, CPU per row, a count).
    fn value(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) {
        self.figures.push(Figure {
            section,
            what: what.into(),
            value,
            unit,
            ceiling: None,
            target: None,
        });
    }

    /// A figure beside the ceiling it is compared with; `ratio` in %.
    #[allow(clippy::too_many_arguments)]
    fn ratio(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        value: f64,
        unit: &'static str,
        ceiling: (&'static str, f64),
        ratio: f64,
        target: Option<f64>,
    ) {
        self.figures.push(Figure {
            section,
            what: what.into(),
            value,
            unit,
            ceiling: Some(Ceiling {
                name: ceiling.0,
                value: ceiling.1,
                unit,
                ratio,
            }),
            target,
        });
    }

    /// Every figure of the run as `key<TAB>value<TAB>unit` lines (the baseline's format).
    fn lines(&self) -> Vec<(String, f64, &'static str)> {
        let mut out: Vec<(String, f64, &'static str)> = vec![];
        for f in &self.figures {
            out.push((f.key(), f.value, f.unit));
            if let Some(c) = &f.ceiling {
                let key = format!("{}: {}", f.section, c.name);
                if !out.iter().any(|(k, _, _)| *k == key) {
                    out.push((key, c.value, c.unit));
                }
                out.push((format!("{} / {}", f.key(), c.name), c.ratio, "%"));
            }
        }
        out
    }

    fn save(&self, path: &Path) {
        let mut text = "# pg_throttle figures written by the bench (--save): figure, value, unit\n"
            .to_string();
        for (k, v, u) in self.lines() {
            // Whole above 1,000, to 0.001 below: enough for every figure's noise.
            let v = if v.abs() >= 1000.0 {
                format!("{v:.0}")
            } else {
                format!("{}", (v * 1000.0).round() / 1000.0)
            };
            text.push_str(&format!("{k}\t{v}\t{u}\n"));
        }
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("figures written to {}", path.display());
    }

    fn print(&self, baseline_path: &Path, wall: Duration) {
        let (base, note) = match std::fs::read_to_string(baseline_path) {
            Ok(text) => (
                parse_baseline(&text),
                format!("{}", baseline_path.display()),
            ),
            Err(e) => (
                HashMap::new(),
                format!("none: {}: {e}", baseline_path.display()),
            ),
        };
        let old = |key: &str| base.get(key).map(|(v, u)| fmt_value(*v, u));
        println!();
        println!("== summary: this build against the ceiling measured in the same run (ratio: median of per-round ratios where measured in rounds)");
        println!("   0.3.0: its ratio (its figure vs its ceiling), from {note}");
        println!(
            "{:<44} {:>20}  {:<30} {:>8}  {:<38} target",
            "figure", "this build", "ceiling (same run)", "ratio", "0.3.0"
        );
        for f in &self.figures {
            let this = fmt_value(f.value, f.unit);
            let (ceiling, ratio, was) = match &f.ceiling {
                Some(c) => {
                    let ratio_key = format!("{} / {}", f.key(), c.name);
                    let ceiling_key = format!("{}: {}", f.section, c.name);
                    let number = base.get(&f.key()).map(|(v, _)| group(*v));
                    let was = match (old(&ratio_key), number, old(&ceiling_key)) {
                        (Some(r), Some(v), Some(c)) => format!("{r} ({v} vs {c})"),
                        (Some(r), Some(_), None) => {
                            format!("{r} ({})", old(&f.key()).expect("known"))
                        }
                        (Some(r), None, _) => r,
                        (None, ..) => old(&f.key()).unwrap_or_else(|| "-".into()),
                    };
                    (
                        format!("{} {}", c.name, fmt_value(c.value, c.unit)),
                        fmt_value(c.ratio, "%"),
                        was,
                    )
                }
                None => (
                    "-".into(),
                    "-".into(),
                    old(&f.key()).unwrap_or_else(|| "-".into()),
                ),
            };
            let target = f.target.map(|t| format!(">= {t:.0} %")).unwrap_or_default();
            let line = format!(
                "{:<44} {this:>20}  {ceiling:<30} {ratio:>8}  {was:<38} {target}",
                f.key()
            );
            println!("{}", line.trim_end());
        }
        println!("whole run: {:.0} s", wall.as_secs_f64());
    }
}

/// `figure<TAB>value<TAB>unit` lines; lines starting with `#` and blank lines are skipped.
fn parse_baseline(text: &str) -> HashMap<String, (f64, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split('\t');
            let key = f.next()?.trim().to_string();
            let value = f.next()?.trim().parse().ok()?;
            let unit = f.next().unwrap_or("").trim().to_string();
            Some((key, (value, unit)))
        })
        .collect()
}

/// A figure in its unit: rates and counts whole with thousands separators, shares to 0.1.
fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "%" => format!("{v:.1} %"),
        "ms" => format!("{v:.2} ms"),
        "µs/row" => format!("{v:.1} µs/row"),
        "x" => format!("{v:.2}x"),
        "" => format!("{v:.3}"),
        _ => format!("{} {unit}", group(v)),
    }
}

/// A whole number with thousands separators: 1,000,000.
fn group(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    let sign = if v < 0.0 && digits != "0" { "-" } else { "" };
    format!("{sign}{out}")
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

fn bench_admit(a: &Args, s: &mut Summary) {
    let mut conf = vec!["shared_buffers = '256MB'", "jit = off"];
    conf.extend(a.conf.iter().map(String::as_str));
    let server = Server::start("bench-admit", &conf);
    let mut c = server.connect();
    let (kind, burst_1, burst_2) = if a.window {
        ("window-exact limits", "NULL", "NULL")
    } else {
        ("token buckets", "100", "4500")
    };
    println!(
        "== throttle_admit from one backend: {} rows over 10,000 senders, {kind}, median of {} runs",
        a.rows, a.runs
    );
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender, campaign)
              SELECT 'bench-' || g, 'camp-' || (g % 100) FROM generate_series(1, 10000) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst)
              SELECT 'sender', 'bench-' || g, 100, '1 second', {burst_1}::int8 FROM generate_series(1, 10000) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, carrier, rate, per, burst)
              SELECT 'campaign', 'camp-' || g, 'att', 4500, '1 minute', {burst_2}::int8 FROM generate_series(0, 99) g;
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
    if a.caps {
        println!("   (every campaign also has a daily calendar cap of 100,000,000: admissions spend leases)");
        c.batch_execute(
            "INSERT INTO throttle.cap (scope, scope_id, cap, time_zone)
                  SELECT 'campaign', 'camp-' || g, 100000000, 'America/Los_Angeles' FROM generate_series(0, 99) g",
        )
        .expect("caps");
    }
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
    // The summary's names, and the issue's targets: try_admit at least 45 % of texteq, the
    // full answer at least 25 %.
    let variant = match (a.caps, a.window) {
        (false, false) => "",
        (true, false) => " [caps]",
        (false, true) => " [window]",
        (true, true) => " [caps, window]",
    };
    let figures = [
        ("noop plpgsql", None),
        ("try_admit", Some(45.0)),
        ("full answer", Some(25.0)),
    ];
    for (((name, _), (speeds, _)), (what, target)) in
        shapes.iter().zip(&results).skip(1).zip(figures)
    {
        let ratios: Vec<f64> = speeds
            .iter()
            .zip(ceiling)
            .map(|(s, c)| 100.0 * s / c)
            .collect();
        let ratio = median(ratios);
        println!("  {name:<38} {ratio:>6.1} %");
        s.ratio(
            "admit",
            format!("{what}{variant}"),
            median(speeds.clone()),
            "rows/s",
            ("texteq", median(ceiling.clone())),
            ratio,
            target,
        );
    }
}

// ---------------------------------------------------------------------------------------
// The release engine.

fn q1(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn set_worker(c: &mut Client, on: bool) {
    c.batch_execute(&format!("ALTER SYSTEM SET throttle.worker_enabled = {on}"))
        .expect("worker switch");
    c.batch_execute("SELECT pg_reload_conf()").expect("reload");
    if !on {
        // Let the worker finish the tick it may be in before anything is measured.
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Released so far (from the worker's counter in shared memory: no table scan).
fn released_so_far(c: &mut Client) -> i64 {
    q1(c, "SELECT released FROM throttle.worker_state()")
}

/// Wait until the worker has released `target` rows in all; returns the seconds it took.
fn drain(c: &mut Client, target: i64, limit: Duration) -> f64 {
    let t = Instant::now();
    while released_so_far(c) < target && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed().as_secs_f64()
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The release worker's process id (waits up to 10 s for it to start).
fn worker_pid(c: &mut Client) -> i32 {
    let pid = pg_throttle_tests::wait_for(
        c,
        "SELECT coalesce(max(pid), 0)::int8 FROM pg_stat_activity WHERE backend_type = 'pg_throttle'",
        Duration::from_secs(10),
        |p| p > 0,
    );
    assert!(pid > 0, "no pg_throttle worker in pg_stat_activity");
    pid as i32
}

const BENCH_CONF: [&str; 4] = [
    "shared_buffers = '512MB'",
    "jit = off",
    "max_wal_size = '4GB'",
    "synchronous_commit = off",
];

fn release_throughput(s: &mut Summary) {
    let rows: i64 = 200_000;
    println!(
        "== release throughput, limits wide open: {rows} rows over 100 senders, batches of 1,000"
    );
    let server = Server::start("bench-release", &BENCH_CONF);
    let mut c = server.connect();
    let pid = worker_pid(&mut c);
    c.batch_execute(
        "CREATE TABLE raw_pending (LIKE throttle.pending INCLUDING ALL);
         CREATE TABLE raw_ready (LIKE throttle.ready INCLUDING ALL);
         INSERT INTO throttle.sender (sender) SELECT 'tp-' || g FROM generate_series(1, 100) g;",
    )
    .expect("set up");
    let fill_raw = format!(
        "TRUNCATE raw_pending, raw_ready;
         INSERT INTO raw_pending (sender, carrier) SELECT 'tp-' || (1 + g % 100), 'att' FROM generate_series(1, {rows}) g;"
    );
    // The raw SQL ceiling, in two good shapes: both keep the index plan.
    let shapes = [
        ("ceiling: DELETE id = ANY(ARRAY(SELECT … LIMIT 1000)) → INSERT", "
            WITH m AS (DELETE FROM raw_pending WHERE id = ANY(ARRAY(
                         SELECT id FROM raw_pending ORDER BY id LIMIT 1000)) RETURNING *)
            INSERT INTO raw_ready SELECT m.id, m.sender, m.carrier, m.channel, m.recipient, m.cost, m.priority,
                   m.payload, m.not_before, m.expires_at, m.enqueued_at, now() FROM m"),
        ("ceiling: the same with a keyset cursor (id > last)", "
            WITH m AS (DELETE FROM raw_pending WHERE id = ANY(ARRAY(
                         SELECT id FROM raw_pending WHERE id > $1 ORDER BY id LIMIT 1000)) RETURNING *),
                 i AS (INSERT INTO raw_ready SELECT m.id, m.sender, m.carrier, m.channel, m.recipient, m.cost, m.priority,
                   m.payload, m.not_before, m.expires_at, m.enqueued_at, now() FROM m RETURNING id)
            SELECT coalesce(max(id), -1) FROM i"),
    ];
    // Rounds interleave the shapes so that the machine's drift hits them alike; the ratio is
    // the median of the per-round ratios to the best raw shape of that round.
    // Per shape, then the worker, then the best raw shape of each round.
    let mut speeds: Vec<Vec<f64>> = vec![vec![]; shapes.len() + 2];
    let mut ratios = vec![];
    let mut cpu_per_row = vec![];
    for _round in 0..5 {
        for (k, (_, sql)) in shapes.iter().enumerate() {
            c.batch_execute(&fill_raw).expect("fill");
            c.batch_execute("VACUUM ANALYZE raw_pending")
                .expect("vacuum");
            let t = Instant::now();
            if sql.contains("$1") {
                let stmt = c.prepare(sql).expect("prepare");
                let mut last: i64 = 0;
                loop {
                    let next: i64 = c.query_one(&stmt, &[&last]).expect("move").get(0);
                    if next < 0 {
                        break;
                    }
                    last = next;
                }
            } else {
                while c.execute(*sql, &[]).expect("move") > 0 {}
            }
            speeds[k].push(rows as f64 / t.elapsed().as_secs_f64());
        }
        set_worker(&mut c, false);
        c.batch_execute(&format!(
            "TRUNCATE throttle.ready;
             INSERT INTO throttle.pending (sender, carrier) SELECT 'tp-' || (1 + g % 100), 'att' FROM generate_series(1, {rows}) g;"
        ))
        .expect("fill");
        c.batch_execute("VACUUM ANALYZE throttle.pending")
            .expect("vacuum");
        let before = released_so_far(&mut c);
        let cpu = cpu_seconds(pid);
        set_worker(&mut c, true);
        let secs = drain(&mut c, before + rows, Duration::from_secs(120));
        cpu_per_row.push(
            1e6 * (cpu_seconds(pid) - cpu) / (released_so_far(&mut c) - before).max(1) as f64,
        );
        let ours = rows as f64 / secs;
        speeds[shapes.len()].push(ours);
        let best = speeds[..shapes.len()]
            .iter()
            .map(|v| *v.last().expect("measured"))
            .fold(0.0, f64::max);
        ratios.push(100.0 * ours / best);
        speeds[shapes.len() + 1].push(best);
    }
    for (k, (name, _)) in shapes.iter().enumerate() {
        println!(
            "  {name:<62} {:>10.0} rows/s median",
            median(speeds[k].clone())
        );
    }
    println!(
        "  {:<62} {:>10.0} rows/s median",
        "pg_throttle worker (pending → ready, every row admitted)",
        median(speeds[shapes.len()].clone())
    );
    let min = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
    let ratio = median(ratios);
    let cpu = median(cpu_per_row);
    println!("  ratio to the best raw shape, median of 5 interleaved rounds: {ratio:.1} % (lowest {min:.1} %)");
    println!("  worker CPU per released row: {cpu:.1} µs (median of the rounds)");
    // The issue's target: the worker moves rows at least 80 % as fast as raw SQL.
    s.ratio(
        "throughput",
        "worker",
        median(speeds[shapes.len()].clone()),
        "rows/s",
        ("best raw", median(speeds[shapes.len() + 1].clone())),
        ratio,
        Some(80.0),
    );
    s.value("throughput", "worker CPU per released row", cpu, "µs/row");
}

fn release_accuracy(s: &mut Summary) {
    println!("== accuracy: 1,000 senders at 1/s + campaign 4,500/min (window-exact) on AT&T, 60 s backlog");
    let server = Server::start("bench-accuracy", &BENCH_CONF);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign) SELECT 'ac-' || g, 'ac-camp' FROM generate_series(1, 1000) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per)
              SELECT 'sender', 'ac-' || g, 1, '1 second' FROM generate_series(1, 1000) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, carrier, rate, per)
              VALUES ('campaign', 'ac-camp', 'att', 4500, '1 minute');",
    )
    .expect("set up");
    set_worker(&mut c, false);
    c.batch_execute(
        "INSERT INTO throttle.pending (sender, carrier) SELECT 'ac-' || (1 + g % 1000), 'att' FROM generate_series(1, 60000) g",
    )
    .expect("backlog");
    c.batch_execute("VACUUM ANALYZE throttle.pending")
        .expect("vacuum");
    let pid = worker_pid(&mut c);
    let (r0, cpu0) = (released_so_far(&mut c), cpu_seconds(pid));
    set_worker(&mut c, true);
    std::thread::sleep(Duration::from_secs(62));
    set_worker(&mut c, false);
    // The worker's CPU over the whole run, parked rows and all, per row it released.
    let released = released_so_far(&mut c) - r0;
    let cpu_per_row = 1e6 * (cpu_seconds(pid) - cpu0) / released.max(1) as f64;
    let rows = c
        .query(
            "SELECT sender, (extract(epoch FROM released_at) * 1000000)::int8 FROM throttle.ready",
            &[],
        )
        .expect("ready");
    let mut all: Vec<i64> = rows.iter().map(|r| r.get::<_, i64>(1)).collect();
    all.sort();
    let t0 = all.first().copied().unwrap_or(0);
    let in60: Vec<i64> = all
        .iter()
        .copied()
        .filter(|&t| t < t0 + 60_000_000)
        .collect();
    // At most 4,500 in any minute, the first included.
    let max = 4500.0;
    let mut by: std::collections::HashMap<String, Vec<i64>> = std::collections::HashMap::new();
    for r in &rows {
        by.entry(r.get(0)).or_default().push(r.get(1));
    }
    // Both limits are window-exact: each sender at most 1 in any second (its releases 1 s
    // apart or more), the campaign at most 4,500 in any minute (the worker releases a
    // tick's rows at one time: a token bucket's reading of the campaign would flag those).
    let mut violations = by
        .values()
        .filter(|t| window_violation(t, 1, 1_000_000, 1).is_some())
        .count();
    let campaign: Vec<Event<u8>> = all.iter().map(|&t| Event::new(t, 1, 0)).collect();
    if let Err(v) = window_ok(&campaign, 4500, 60_000_000) {
        println!("  campaign: {v}");
        violations += 1;
    }
    let shares: Vec<usize> = by
        .values()
        .map(|t| t.iter().filter(|&&x| x < t0 + 60_000_000).count())
        .collect();
    println!(
        "  campaign: released {} in the first 60 s; most allowed {max:.0}: {:.2} % of it",
        in60.len(),
        100.0 * in60.len() as f64 / max
    );
    println!(
        "  per sender in those 60 s: min {} max {} (fair share {:.1}); senders' own maximum 61 each",
        shares.iter().min().unwrap_or(&0),
        shares.iter().max().unwrap_or(&0),
        in60.len() as f64 / 1000.0
    );
    println!("  window violations found by the independent checker (1,001 keys): {violations}");
    println!("  worker CPU per released row: {cpu_per_row:.1} µs ({released} released in 62 s, 60,000 waiting at the start)");
    s.ratio(
        "accuracy",
        "campaign released in the first 60 s",
        in60.len() as f64,
        "rows",
        ("allowed", max),
        100.0 * in60.len() as f64 / max,
        None,
    );
    s.value("accuracy", "window violations", violations as f64, "count");
    s.value(
        "accuracy",
        "worker CPU per released row",
        cpu_per_row,
        "µs/row",
    );
}

fn release_latency(s: &mut Summary) {
    println!("== latency from enqueue to ready, unthrottled: 2,000 single-row enqueues at ~500/s");
    let server = Server::start("bench-latency", &BENCH_CONF);
    let mut c = server.connect();
    c.batch_execute("INSERT INTO throttle.sender (sender) VALUES ('lt-line')")
        .expect("set up");
    let stmt = c
        .prepare("INSERT INTO throttle.pending (sender, carrier, payload) VALUES ('lt-line', 'att', jsonb_build_object('t', (extract(epoch FROM clock_timestamp()) * 1000000)::int8))")
        .expect("prepare");
    let start = Instant::now();
    for i in 0..2000u32 {
        c.execute(&stmt, &[]).expect("enqueue");
        let due = start + Duration::from_micros(2000 * (i as u64 + 1));
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    // From the commit-side clock reading at insert to the release time (same server clock).
    let row = c
        .query_one(
            "SELECT count(*),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l)::float8
               FROM (SELECT ((extract(epoch FROM released_at) * 1000000 - (payload->>'t')::int8) / 1000.0)::float8 AS l
                       FROM throttle.ready) x",
            &[],
        )
        .expect("latency");
    let (n, p50, p99, mx): (i64, f64, f64, f64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    println!("  {n} released: p50 {p50:.2} ms, p99 {p99:.2} ms, max {mx:.2} ms");
    s.value("latency", "p50", p50, "ms");
    s.value("latency", "p99", p99, "ms");
}

/// Scale: a large backlog over many senders, each limited to 1 per 10 s. The section's
/// size; the heading says it.
const SCALE_PENDING: i64 = 1_000_000;
const SCALE_SENDERS: i64 = 100_000;

fn release_scale(s: &mut Summary) {
    let (pending, senders) = (SCALE_PENDING, SCALE_SENDERS);
    let allowed = senders as f64 / 10.0;
    println!(
        "== scale: {} pending over {} senders, each limited to 1 per 10 s",
        group(pending as f64),
        group(senders as f64)
    );
    let server = Server::start(
        "bench-scale",
        &[
            "shared_buffers = '512MB'",
            "jit = off",
            "max_wal_size = '4GB'",
            "synchronous_commit = off",
            "throttle.max_buckets = 200000",
        ],
    );
    let mut c = server.connect();
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender) SELECT 'sc-' || g FROM generate_series(1, {senders}) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst)
              SELECT 'sender', 'sc-' || g, 1, '10 seconds', 1 FROM generate_series(1, {senders}) g;"
    ))
    .expect("set up");
    set_worker(&mut c, false);
    let t = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO throttle.pending (sender, carrier) SELECT 'sc-' || (1 + g % {senders}), 'att' FROM generate_series(1, {pending}) g"
    ))
    .expect("fill");
    c.batch_execute("VACUUM ANALYZE throttle.pending")
        .expect("vacuum");
    println!("  filled in {:.1} s", t.elapsed().as_secs_f64());
    let pid = worker_pid(&mut c);
    set_worker(&mut c, true);
    // The first seconds release every sender's burst (one each); from then on each sender
    // may release one row per 10 s: senders / 10 per second in all. Measure over two whole
    // periods, once the phases of the senders have settled.
    std::thread::sleep(Duration::from_secs(15));
    let (r0, c0, t0) = (released_so_far(&mut c), cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let (r1, c1, secs) = (
        released_so_far(&mut c),
        cpu_seconds(pid),
        t0.elapsed().as_secs_f64(),
    );
    let left = q1(&mut c, "SELECT count(*) FROM throttle.pending");
    let rate = (r1 - r0) as f64 / secs;
    let cpu_per_row = 1e6 * (c1 - c0) / (r1 - r0).max(1) as f64;
    println!(
        "  steady state over {secs:.1} s: {rate:.0} released/s (the limits allow {allowed:.0}/s), worker CPU {:.2} s per second, {cpu_per_row:.1} µs per released row, {left} still pending",
        (c1 - c0) / secs
    );
    s.ratio(
        "scale",
        "released",
        rate,
        "rows/s",
        ("allowed", allowed),
        100.0 * rate / allowed,
        None,
    );
    s.value(
        "scale",
        "worker CPU per released row",
        cpu_per_row,
        "µs/row",
    );
}

// ---------------------------------------------------------------------------------------
// A messaging platform on one server, beside the same shape at a hundredth of its size.

/// One platform: `lines` lines (senders) with the Sendblue line profile, one brand per ten
/// lines with the T-Mobile daily cap (class high), one campaign per five lines with AT&T
/// class A. Returns the server and the seconds its configuration took.
fn platform(name: &str, lines: i64) -> (Server, f64) {
    let server = Server::start(
        name,
        &[
            "shared_buffers = '512MB'",
            "jit = off",
            "max_wal_size = '4GB'",
            "synchronous_commit = off",
            "throttle.max_buckets = 400000",
            "throttle.max_queue_caps = 110000",
            "throttle.max_cap_leases = 16384",
            "throttle.preload_senders = 200000",
            // Huge pages where the machine has them reserved (vm.nr_hugepages), as a platform
            // would configure: see the README's "At platform scale".
            "huge_pages = try",
        ],
    );
    let mut c = server.connect();
    let (brands, campaigns) = (lines / 10, lines / 5);
    let t = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender, campaign, brand, account)
              SELECT 'pl-' || g, 'pc-' || (g % {campaigns}), 'pb-' || (g % {brands}), 'pa-' || (g % 1000)
                FROM generate_series(1, {lines}) g;
         SELECT count(*) FROM throttle.apply_profile('sendblue_line', 'sender',
                ARRAY(SELECT 'pl-' || g FROM generate_series(1, {lines}) g));
         SELECT count(*) FROM throttle.apply_profile('tmobile_brand', 'brand',
                ARRAY(SELECT 'pb-' || g FROM generate_series(0, {brands} - 1) g), 'high');
         SELECT count(*) FROM throttle.apply_profile('att_10dlc', 'campaign',
                ARRAY(SELECT 'pc-' || g FROM generate_series(0, {campaigns} - 1) g), 'A');"
    ))
    .expect("configure the platform");
    let secs = t.elapsed().as_secs_f64();
    // The worker counts the queue caps; then it stays off until the release is measured.
    let counted = pg_throttle_tests::wait_for(
        &mut c,
        "SELECT used FROM throttle.shmem_tables() WHERE setting = 'throttle.max_queue_caps'",
        Duration::from_secs(120),
        |n| n == lines,
    );
    assert_eq!(counted, lines, "queue caps counted");
    (server, secs)
}

/// Huge pages the machine has taken or reserved (HugePages_Total - HugePages_Free +
/// HugePages_Rsvd), MB.
fn huge_pages_used_mb() -> i64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> i64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("HugePages_Total:") - field("HugePages_Free:") + field("HugePages_Rsvd:"))
        * field("Hugepagesize:")
        / 1024
}

/// Private memory of a backend, kB (RssAnon: not the shared memory it maps).
fn private_kb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Rows/s of admitting lines 1..=`lines` once per second for `reps` seconds of `ts` (each
/// line's 1/s lets every admission through) to `carrier`: AT&T (the line's rate and its
/// campaign's) or T-Mobile (the line's rate and its brand's daily cap, through leases);
/// `round` moves the seconds on.
fn platform_admit(c: &mut Client, carrier: &str, lines: i64, reps: i64, round: i64) -> f64 {
    let sql = format!(
        "SELECT count(*) FILTER (WHERE throttle.try_admit('pl-' || l, '{carrier}',
                       now() + make_interval(secs => {round} * 200 + r)))
           FROM generate_series(0, {reps} - 1) r, generate_series(1, {lines}) l"
    );
    let t = Instant::now();
    let admitted = q1(c, &sql);
    let rate = (lines * reps) as f64 / t.elapsed().as_secs_f64();
    if admitted != lines * reps {
        println!("  NOTE: {admitted} of {} admissions passed", lines * reps);
    }
    rate
}

/// Rows/s of 100-row INSERTs over every line in turn into `table`, for 3 s.
fn platform_enqueue(c: &mut Client, table: &str, lines: i64) -> f64 {
    let stmt = c
        .prepare(&format!(
            "INSERT INTO {table} (sender, carrier)
             SELECT 'pl-' || (1 + ($1::int8 * 100 + g) % {lines}), 'verizon' FROM generate_series(1, 100) g"
        ))
        .expect("prepare");
    let t = Instant::now();
    let mut k: i64 = 0;
    while t.elapsed() < Duration::from_secs(3) {
        c.execute(&stmt, &[&k]).expect("enqueue");
        k += 1;
    }
    (k * 100) as f64 / t.elapsed().as_secs_f64()
}

/// Released rows/s and worker µs of CPU per released row, with `per_line` messages waiting
/// on every line (every queue due: the worker is the bottleneck), over 6 s after 2.
fn platform_release(c: &mut Client, lines: i64, per_line: i64) -> (f64, f64) {
    c.batch_execute(&format!(
        "TRUNCATE throttle.ready;
         DELETE FROM throttle.pending;
         INSERT INTO throttle.pending (sender, carrier)
              SELECT 'pl-' || l, CASE WHEN l % 2 = 0 THEN 'att' ELSE 'tmobile' END
                FROM generate_series(1, {per_line}) r, generate_series(1, {lines}) l;"
    ))
    .expect("fill");
    c.batch_execute("VACUUM ANALYZE throttle.pending")
        .expect("vacuum");
    let pid = worker_pid(c);
    let before = released_so_far(c);
    set_worker(c, true);
    // Until it has found every queue and released from them, and a second more.
    let t = Instant::now();
    while released_so_far(c) == before && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "  first release {:.1} s after the worker was switched on",
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (r0, c0, t0) = (released_so_far(c), cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(6));
    let (r1, c1) = (released_so_far(c), cpu_seconds(pid));
    let secs = t0.elapsed().as_secs_f64();
    set_worker(c, false);
    (
        (r1 - r0) as f64 / secs,
        1e6 * (c1 - c0) / (r1 - r0).max(1) as f64,
    )
}

fn platform_scale(s: &mut Summary) {
    const BIG: i64 = 100_000;
    const SMALL: i64 = 1_000;
    println!(
        "== a platform: {} lines with the Sendblue line profile (rate + queue cap), {} brands with the T-Mobile daily cap, {} campaigns with AT&T class A; beside the same at {} lines",
        group(BIG as f64),
        group((BIG / 10) as f64),
        group((BIG / 5) as f64),
        group(SMALL as f64)
    );
    let (big, big_secs) = platform("bench-platform", BIG);
    let (small, small_secs) = platform("bench-platform-small", SMALL);
    println!("  configured in {big_secs:.1} s (the small one in {small_secs:.2} s)");
    println!(
        "  huge pages reserved or in use on this machine: {} MB (0: the servers' shared memory is in 4 kB pages)",
        huge_pages_used_mb()
    );
    s.value("platform", "configuration of 100,000 lines", big_secs, "s");
    let (mut b, mut m) = (big.connect(), small.connect());
    let tables: Vec<(String, i64, i64, i64)> = b
        .query(
            "SELECT table_name, used, size, entry_bytes FROM throttle.shmem_tables()",
            &[],
        )
        .expect("tables")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let shared_mb: f64 = tables.iter().map(|t| (t.2 * t.3) as f64).sum::<f64>() / 1e6;
    for (name, used, size, _) in &tables {
        println!("  shared memory: {name:<20} {used:>8} of {size:>8}");
    }
    println!("  shared memory of pg_throttle's tables as sized: {shared_mb:.1} MB");
    // Release first: admissions below debit the lines' limits at times ahead of now.
    let (rel_b, cpu_b) = platform_release(&mut b, BIG, 10);
    let (rel_s, cpu_s) = platform_release(&mut m, SMALL, 1_000);
    println!(
        "  release with 1,000,000 waiting over 100,000 lines: {rel_b:.0} rows/s, worker {cpu_b:.1} µs per row; 1,000,000 over 1,000 lines: {rel_s:.0} rows/s, {cpu_s:.1} µs per row"
    );
    println!(
        "  tick cost per released row, 100,000 waiting queues against 1,000: {:.2}x (flat: 1)",
        cpu_b / cpu_s
    );
    s.value(
        "platform",
        "worker CPU per released row, 1 M over 100,000 lines",
        cpu_b,
        "µs/row",
    );
    s.value(
        "platform",
        "release rate, 1 M waiting over 100,000 lines (worker-bound)",
        rel_b,
        "rows/s",
    );
    s.value(
        "platform",
        "worker CPU per released row, 100,000 queues over 1,000",
        cpu_b / cpu_s,
        "x",
    );
    for c in [&mut b, &mut m] {
        c.batch_execute("DELETE FROM throttle.pending")
            .expect("empty the queue");
        // Calendar caps lease to throttle_admit through the worker.
        set_worker(c, true);
    }
    // A session's own memory once it has admitted for every line (and a backlog of none).
    let pid: i32 = b
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    let before = private_kb(pid);
    // Under rate limits: every line once (100,000 admissions) against 1,000 lines 100 times.
    // Under a brand's daily cap: one line of each brand (10,000 brands, each admission the
    // first of its brand in that second: a lease each) against the 1,000 lines 10 times.
    let paths = [
        (
            "att",
            "rate limits (line + AT&T campaign)",
            (BIG, 1),
            (SMALL, BIG / SMALL),
            0..4,
        ),
        (
            "tmobile",
            "a brand's daily cap (line + T-Mobile brand)",
            (BIG / 10, 1),
            (SMALL, 10),
            // Seconds of its own: a line's 1/s is for any carrier.
            5..8,
        ),
    ];
    for (carrier, what, big_n, small_n, rounds) in paths {
        let (mut big_rates, mut small_rates) = (vec![], vec![]);
        let first = rounds.start;
        for round in rounds {
            let rb = platform_admit(&mut b, carrier, big_n.0, big_n.1, round);
            let rs = platform_admit(&mut m, carrier, small_n.0, small_n.1, round);
            if round > first {
                big_rates.push(rb);
                small_rates.push(rs);
            }
        }
        let ratios: Vec<f64> = big_rates
            .iter()
            .zip(&small_rates)
            .map(|(x, y)| 100.0 * x / y)
            .collect();
        let (rb, rs) = (median(big_rates), median(small_rates));
        println!(
            "  try_admit under {what}: {rb:.0}/s at 100,000 lines, {rs:.0}/s at 1,000: {:.1} %",
            median(ratios.clone())
        );
        s.ratio(
            "platform",
            format!("admission, {carrier}, at 100,000 lines"),
            rb,
            "rows/s",
            ("1,000 lines", rs),
            median(ratios),
            Some(80.0),
        );
    }
    let per_backend_mb = (private_kb(pid) - before) / 1e3;
    println!("  a session's own memory after admitting for every line: +{per_backend_mb:.0} MB");
    s.value(
        "platform",
        "a session's memory for 100,000 lines",
        per_backend_mb,
        "MB",
    );
    // Enqueueing alone: releases would compete for the two cores. The release above left a
    // million deleted rows in pending's heap and indexes: vacuumed first (as autovacuum would
    // in time), so that the queue is compared with a fresh plain table, not its own bloat.
    for c in [&mut b, &mut m] {
        c.batch_execute("CREATE TABLE plain_pending (LIKE throttle.pending INCLUDING ALL)")
            .expect("plain table");
        set_worker(c, false);
        c.batch_execute("VACUUM throttle.pending").expect("vacuum");
    }
    let mut ratios = vec![];
    let (mut eb, mut es) = (vec![], vec![]);
    for _ in 0..3 {
        let (pb, ob) = (
            platform_enqueue(&mut b, "plain_pending", BIG),
            platform_enqueue(&mut b, "throttle.pending", BIG),
        );
        let (ps, os) = (
            platform_enqueue(&mut m, "plain_pending", SMALL),
            platform_enqueue(&mut m, "throttle.pending", SMALL),
        );
        eb.push(ob);
        es.push(os);
        ratios.push(100.0 * (ob / pb) / (os / ps));
        println!(
            "  enqueue round: {ob:.0} rows/s into pending vs {pb:.0} into a plain table at 100,000 lines; {os:.0} vs {ps:.0} at 1,000"
        );
    }
    let direct: Vec<f64> = eb.iter().zip(&es).map(|(b, m)| 100.0 * b / m).collect();
    let (eb, es) = (median(eb), median(es));
    println!(
        "  enqueue, 100-row INSERTs over every line, against a plain table on the same server: {eb:.0}/s at 100,000 lines, {es:.0}/s at 1,000: {:.1} % (each as a share of its plain table); {:.1} % (the rates themselves)",
        median(ratios.clone()),
        median(direct)
    );
    s.ratio(
        "platform",
        "enqueue at 100,000 lines",
        eb,
        "rows/s",
        ("1,000 lines", es),
        median(ratios),
        Some(80.0),
    );
}

fn enqueue_throughput(s: &mut Summary) {
    println!("== enqueue throughput from 8 clients, synchronous commit on (fsync on), 5 s each");
    let server = Server::start(
        "bench-enqueue",
        &[
            "shared_buffers = '512MB'",
            "jit = off",
            "fsync = on",
            "max_wal_size = '4GB'",
        ],
    );
    let mut c = server.connect();
    c.batch_execute(
        "CREATE TABLE plain_pending (LIKE throttle.pending INCLUDING ALL);
         INSERT INTO throttle.sender (sender) SELECT 'en-' || g FROM generate_series(1, 64) g;",
    )
    .expect("set up");
    // Releases would compete for the two cores: measure enqueueing alone.
    set_worker(&mut c, false);
    let run = |table: &str, rows_per_insert: usize| -> f64 {
        let values = (0..rows_per_insert)
            .map(|i| format!("('en-{}', 'att')", 1 + i % 64))
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!("INSERT INTO {table} (sender, carrier) VALUES {values}");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let conninfo = server.conninfo();
                let sql = sql.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(&conninfo, postgres::NoTls).expect("connect");
                    let stmt = c.prepare(&sql).expect("prepare");
                    let t = Instant::now();
                    let mut n = 0u64;
                    while t.elapsed() < Duration::from_secs(5) {
                        c.execute(&stmt, &[]).expect("insert");
                        n += rows_per_insert as u64;
                    }
                    n
                })
            })
            .collect();
        let n: u64 = handles.into_iter().map(|h| h.join().expect("client")).sum();
        n as f64 / 5.0
    };
    for rows in [1usize, 100] {
        let plain = run("plain_pending", rows);
        let ours = run("throttle.pending", rows);
        let plain2 = run("plain_pending", rows);
        let ours2 = run("throttle.pending", rows);
        let (p, o) = ((plain + plain2) / 2.0, (ours + ours2) / 2.0);
        println!(
            "  {rows:>3}-row INSERTs: plain table {p:>9.0} rows/s, throttle.pending {o:>9.0} rows/s: {:.1} %",
            100.0 * o / p
        );
        s.ratio(
            "enqueue",
            format!("throttle.pending, {rows}-row INSERTs"),
            o,
            "rows/s",
            (
                if rows == 1 {
                    "plain, 1-row"
                } else {
                    "plain, 100-row"
                },
                p,
            ),
            100.0 * o / p,
            None,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Delivery: consuming released messages at least once (read + ack) against at most once
// (take), and the worker putting back what was not acknowledged.

/// Messages per consuming round, and rounds (interleaved; medians).
const DELIVERY_ROWS: i64 = 20_000;
const DELIVERY_ROUNDS: usize = 3;

fn delivery(s: &mut Summary) {
    println!(
        "== delivery: one client consuming {DELIVERY_ROWS} released messages 100 at a time, {DELIVERY_ROUNDS} interleaved rounds"
    );
    let server = Server::start(
        "bench-delivery",
        &[
            "shared_buffers = '512MB'",
            "jit = off",
            "max_wal_size = '4GB'",
        ],
    );
    let mut c = server.connect();
    set_worker(&mut c, false);
    let mut next_id = 0i64;
    let mut fill = |c: &mut Client| {
        c.batch_execute(&format!(
            "INSERT INTO throttle.ready (id, sender, carrier, channel, recipient, cost, priority, payload, enqueued_at, released_at)
             SELECT g, 'dl-' || (g % 100), 'att', 'sms', '+1555' || g, 1, 0, '{{\"text\": \"hello\"}}', now(), now()
               FROM generate_series({}, {}) g",
            next_id + 1,
            next_id + DELIVERY_ROWS
        ))
        .expect("fill ready");
        c.batch_execute("VACUUM ANALYZE throttle.ready")
            .expect("vacuum");
        next_id += DELIVERY_ROWS;
    };
    let take = c
        .prepare("SELECT count(*) FROM throttle.take(100)")
        .expect("prepare");
    let read = c
        .prepare("SELECT array_agg(id) FROM throttle.read(100, '1 minute')")
        .expect("prepare");
    let ack_many = c
        .prepare("SELECT count(*) FROM throttle.ack_many($1::bigint[], ARRAY['sent'], ARRAY(SELECT 'p-' || i FROM unnest($1::bigint[]) i))")
        .expect("prepare");
    let ack = c
        .prepare("SELECT throttle.ack($1::bigint, 'sent', 'p-' || $1::bigint::text)")
        .expect("prepare");
    let (mut takes, mut batched, mut singles) = (vec![], vec![], vec![]);
    for _ in 0..DELIVERY_ROUNDS {
        fill(&mut c);
        let t = Instant::now();
        while c.query_one(&take, &[]).expect("take").get::<_, i64>(0) > 0 {}
        takes.push(DELIVERY_ROWS as f64 / t.elapsed().as_secs_f64());
        for per_message in [false, true] {
            fill(&mut c);
            let t = Instant::now();
            loop {
                let ids: Option<Vec<i64>> = c.query_one(&read, &[]).expect("read").get(0);
                let Some(ids) = ids else { break };
                if per_message {
                    for id in &ids {
                        c.query_one(&ack, &[id]).expect("ack");
                    }
                } else {
                    c.query_one(&ack_many, &[&ids]).expect("ack_many");
                }
            }
            let rate = DELIVERY_ROWS as f64 / t.elapsed().as_secs_f64();
            if per_message {
                singles.push(rate);
            } else {
                batched.push(rate);
            }
        }
    }
    let (tk, b, one) = (median(takes), median(batched), median(singles));
    println!("  take(100), at most once:                    {tk:>8.0} msgs/s");
    println!(
        "  read(100) + ack_many(100), at least once:   {b:>8.0} msgs/s ({:.1} % of take)",
        100.0 * b / tk
    );
    println!(
        "  read(100) + ack() per message:              {one:>8.0} msgs/s ({:.1} % of take)",
        100.0 * one / tk
    );
    s.ratio(
        "delivery",
        "read + ack_many, 100 a batch",
        b,
        "msgs/s",
        ("take(100)", tk),
        100.0 * b / tk,
        None,
    );
    s.ratio(
        "delivery",
        "read + ack per message",
        one,
        "msgs/s",
        ("take(100)", tk),
        100.0 * one / tk,
        None,
    );
    // The worker puts back messages whose visibility timeout passed (their senders are not
    // registered: they wait, parked, in pending afterwards).
    c.batch_execute(&format!(
        "INSERT INTO throttle.inflight (id, sender, carrier, channel, recipient, cost, priority, payload,
                                        enqueued_at, released_at, attempt, read_at, visible_at)
         SELECT g, 'dl-' || (g % 100), 'att', 'sms', '+1555' || g, 1, 0, NULL, now(), now(), 1, now(), now() - interval '1 second'
           FROM generate_series({}, {}) g",
        next_id + 1,
        next_id + DELIVERY_ROWS
    ))
    .expect("fill inflight");
    let pid = worker_pid(&mut c);
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    set_worker(&mut c, true);
    while q1(&mut c, "SELECT count(*) FROM throttle.inflight") > 0
        && t.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let back = q1(&mut c, "SELECT count(*) FROM throttle.pending");
    println!(
        "  not acknowledged in time, back to pending: {back} in {secs:.2} s: {:>8.0} msgs/s, {:.1} µs of worker CPU each",
        back as f64 / secs,
        1e6 * cpu / back.max(1) as f64
    );
    s.value(
        "delivery",
        "timed-out messages put back",
        back as f64 / secs,
        "msgs/s",
    );
    s.value(
        "delivery",
        "worker CPU per message put back",
        1e6 * cpu / back.max(1) as f64,
        "µs",
    );
}

// ---------------------------------------------------------------------------------------
// Many clients: admissions as statements of their own, beside `SELECT 1`, with pgbench.

/// Clients, threads and seconds of each pgbench run; rounds interleave the scripts.
const CLIENTS: u32 = 8;
const CLIENT_SECS: u32 = 5;
const CLIENT_ROUNDS: usize = 3;

/// A directory `pg_config` names (`PG_CONFIG`, default `pg_config`, as the harness).
fn pg_config(what: &str) -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = Command::new(&pg_config)
        .arg(what)
        .output()
        .expect("run pg_config");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Which build the servers load: the installed library's path, size and time.
fn installed_library() -> String {
    let lib = pg_config("--pkglibdir").join("pg_throttle.so");
    let size = std::fs::metadata(&lib).map(|m| m.len()).unwrap_or(0);
    let time = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC", "-r"])
        .arg(&lib)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{} ({size} bytes, {time})", lib.display())
}

/// The user PostgreSQL's binaries run as (as the harness runs them): as root, the server's.
fn runas() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    root.then(|| std::env::var("PG_THROTTLE_RUNAS").unwrap_or_else(|_| "postgres".into()))
}

/// Run pgbench (from the server's bin directory, as the server's user) with `script` for
/// `secs` seconds from `CLIENTS` clients on 2 threads, prepared statements, no vacuum;
/// returns its transactions per second.
fn pgbench(server: &Server, script: &Path, secs: u32) -> f64 {
    let bin = pg_config("--bindir").join("pgbench");
    let mut cmd = match runas() {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(user).arg("--").arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = cmd
        .args(["-n", "-M", "prepared", "-j", "2"])
        .args(["-c", &CLIENTS.to_string(), "-T", &secs.to_string()])
        .arg("-f")
        .arg(script)
        .arg("-h")
        .arg(server.datadir())
        .args(["-p", &server.port.to_string(), "-U", "postgres", "postgres"])
        .stdin(Stdio::null())
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "tps = 12345.678901 (without initial connection time)"
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {stdout}"))
}

fn clients(s: &mut Summary) {
    println!(
        "== {CLIENTS} clients, one statement per transaction (pgbench -M prepared -c {CLIENTS} -j 2): \
         one admission per statement beside SELECT 1, 10,000 senders with wide-open limits, \
         {CLIENT_ROUNDS} interleaved rounds of {CLIENT_SECS} s"
    );
    let server = Server::start(
        "bench-clients",
        &[
            "shared_buffers = '256MB'",
            "jit = off",
            "synchronous_commit = off",
        ],
    );
    let mut c = server.connect();
    // As the admit section, with limits that never bind: every admission is admitted.
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign)
              SELECT 'bench-' || g, 'camp-' || (g % 100) FROM generate_series(1, 10000) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per, burst)
              SELECT 'sender', 'bench-' || g, 1000, '1 second', 1000 FROM generate_series(1, 10000) g;
         INSERT INTO throttle.rate_limit (scope, scope_id, carrier, rate, per, burst)
              SELECT 'campaign', 'camp-' || g, 'att', 10000000, '1 minute', 10000000 FROM generate_series(0, 99) g;
         -- What the statement costs without any admission: a built-in that does nothing
         -- (texteq on the first two arguments), declared with try_admit's signature.
         CREATE FUNCTION noop_admit(text, text, timestamptz, integer DEFAULT 1, text DEFAULT 'sms')
              RETURNS boolean LANGUAGE internal VOLATILE AS 'texteq';",
    )
    .expect("set up");
    // Admissions are not releases: keep the worker off the two cores.
    set_worker(&mut c, false);
    let scripts = [
        ("SELECT 1", "SELECT 1;\n"),
        (
            "no-op with try_admit's signature",
            "\\set s random(1, 10000)\nSELECT noop_admit('bench-' || :s, 'att', now());\n",
        ),
        (
            "no-op after md5(sender)",
            "\\set s random(1, 10000)\nSELECT noop_admit(md5('bench-' || :s), 'att', now());\n",
        ),
        (
            "try_admit",
            "\\set s random(1, 10000)\nSELECT throttle.try_admit('bench-' || :s, 'att', now());\n",
        ),
        (
            "full answer",
            "\\set s random(1, 10000)\nSELECT (throttle.throttle_admit('bench-' || :s, 'att', now())).admitted;\n",
        ),
    ];
    let files: Vec<PathBuf> = scripts
        .iter()
        .enumerate()
        .map(|(i, (_, text))| {
            let f = server.datadir().join(format!("bench-clients-{i}.sql"));
            std::fs::write(&f, text).expect("write the pgbench script");
            f
        })
        .collect();
    // One short warm-up of each script, then rounds of each in turn.
    for f in &files {
        pgbench(&server, f, 2);
    }
    let mut tps: Vec<Vec<f64>> = vec![vec![]; scripts.len()];
    for _round in 0..CLIENT_ROUNDS {
        for (k, f) in files.iter().enumerate() {
            tps[k].push(pgbench(&server, f, CLIENT_SECS));
        }
    }
    let admitted = q1(
        &mut c,
        "SELECT count(*) FILTER (WHERE (throttle.throttle_admit('bench-1', 'att', now())).admitted)",
    );
    let ceiling = median(tps[0].clone());
    for (k, (name, _)) in scripts.iter().enumerate() {
        let min = tps[k].iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "  {name:<40} {:>10.0} tps median {min:>10.0} min",
            median(tps[k].clone())
        );
    }
    println!("ratio to SELECT 1 (median of the per-round ratios):");
    // The issue's target: one admission per statement at least 80 % of SELECT 1. The no-op
    // shows what the same statement reaches with no admission in it.
    for (k, target) in [(1, None), (2, None), (3, Some(80.0)), (4, None)] {
        let ratios: Vec<f64> = tps[k]
            .iter()
            .zip(&tps[0])
            .map(|(x, c)| 100.0 * x / c)
            .collect();
        let ratio = median(ratios);
        println!("  {:<38} {ratio:>6.1} %", scripts[k].0);
        s.ratio(
            "clients",
            format!("{} from {CLIENTS} clients", scripts[k].0),
            median(tps[k].clone()),
            "tps",
            ("SELECT 1", ceiling),
            ratio,
            target,
        );
    }
    if admitted != 1 {
        println!("  NOTE: an admission after the runs was refused: the limits bound, the figures include refusals");
    }
    // What each statement adds to the no-op's, measured in a loop in one backend (warm
    // caches, no scheduling): how much work a statement can add before the 8 clients' ratio
    // falls, and how much an admission is.
    let per_call = |c: &mut Client, call: &str| {
        let sender = "'bench-' || (1 + g % 10000)";
        let sql = format!(
            "SELECT count(*) FROM generate_series(1, 200000) g WHERE {}",
            call.replace("SENDER", sender)
        );
        let mut t = vec![];
        for _ in 0..3 {
            let t0 = Instant::now();
            q1(c, &sql);
            t.push(t0.elapsed().as_secs_f64() * 1e9 / 200_000.0);
        }
        median(t)
    };
    let noop = per_call(&mut c, "noop_admit(SENDER, 'att', now())");
    let md5 = per_call(&mut c, "noop_admit(md5(SENDER), 'att', now())");
    let try_admit = per_call(&mut c, "throttle.try_admit(SENDER, 'att', now())");
    println!(
        "  per call in a loop of one backend: no-op {noop:.0} ns; md5 adds {:.0} ns, try_admit adds {:.0} ns",
        md5 - noop,
        try_admit - noop
    );
}

// ---------------------------------------------------------------------------------------
// Fidelity: every shipped profile under a backlog, judged by the independent checker.

/// One limit to judge: its name, count, period, and the SQL that selects the (time µs, cost,
/// queue) of every release it covered.
struct Judged {
    name: &'static str,
    n: u64,
    per_us: i64,
    sql: &'static str,
}

fn fidelity(s: &mut Summary) {
    use pg_throttle_tests::checker::Report;
    const RUN_S: u64 = 180;
    println!("== fidelity: every shipped profile from idle under a backlog for {RUN_S} s; worst window, utilisation over whole periods, Jain's index of cost shares");
    let server = Server::start("bench-fidelity", &BENCH_CONF);
    let mut c = server.connect();
    c.batch_execute(
        "INSERT INTO throttle.sender (sender, campaign, account, sender_type) VALUES
             ('fi-wa', NULL, NULL, 'whatsapp'),
             ('fi-sc', NULL, NULL, 'short_code'),
             ('fi-acct-1', NULL, 'fi-acct', 'short_code'), ('fi-acct-2', NULL, 'fi-acct', 'short_code'),
             ('fi-sb', NULL, NULL, 'imessage'),
             ('fi-vz', NULL, NULL, 'long_code');
         INSERT INTO throttle.sender (sender, campaign, sender_type)
              SELECT 'fi-t-' || g, 'fi-camp-t', 'long_code' FROM generate_series(1, 5) g;
         INSERT INTO throttle.sender (sender, campaign, sender_type)
              SELECT 'fi-e-' || g, 'fi-camp-e', 'long_code' FROM generate_series(1, 5) g;
         SELECT count(*) FROM throttle.apply_profile('whatsapp', 'sender', 'fi-wa');
         SELECT count(*) FROM throttle.apply_profile('twilio_short_code', 'sender', 'fi-sc');
         SELECT count(*) FROM throttle.apply_profile('twilio_account', 'account', 'fi-acct');
         SELECT count(*) FROM throttle.apply_profile('att_10dlc', 'campaign', 'fi-camp-t', 'T');
         SELECT count(*) FROM throttle.apply_profile('att_10dlc', 'campaign', 'fi-camp-e', 'E');
         SELECT count(*) FROM throttle.apply_profile('sendblue_line', 'sender', 'fi-sb');",
    )
    .expect("profiles");
    // Verizon's profile is new in 0.2.0: judge it only where it ships.
    let verizon = c
        .query_one(
            "SELECT count(*) FROM throttle.profile_rule WHERE profile = 'verizon_10dlc'",
            &[],
        )
        .map(|r| r.get::<_, i64>(0) > 0)
        .unwrap_or(false);
    if verizon {
        c.batch_execute("UPDATE throttle.sender SET campaign = 'fi-camp-vz' WHERE sender = 'fi-vz';
                         SELECT count(*) FROM throttle.apply_profile('verizon_10dlc', 'campaign', 'fi-camp-vz')")
            .expect("verizon");
    }
    set_worker(&mut c, false);
    // Backlogs that outlast the run, costs mixed where the rule counts segments.
    c.batch_execute(
        "INSERT INTO throttle.pending (sender, carrier) SELECT 'fi-wa', 'meta' FROM generate_series(1, 16000);
         INSERT INTO throttle.pending (sender, carrier, cost) SELECT 'fi-sc', 'tmobile', 1 + g % 3 FROM generate_series(1, 10000) g;
         -- Equal backlogs in segments (60,000 each: more than half of 3 minutes at 500/s), one
         -- sender's messages of 1 segment, the other's of 3.
         INSERT INTO throttle.pending (sender, carrier, cost)
              SELECT CASE WHEN g % 4 = 0 THEN 'fi-acct-2' ELSE 'fi-acct-1' END, 'tmobile',
                     CASE WHEN g % 4 = 0 THEN 3 ELSE 1 END FROM generate_series(1, 80000) g;
         INSERT INTO throttle.pending (sender, carrier, channel)
              SELECT 'fi-t-' || (1 + g % 5), 'att', CASE WHEN g % 4 = 0 THEN 'mms' ELSE 'sms' END FROM generate_series(1, 1000) g;
         INSERT INTO throttle.pending (sender, carrier, channel)
              SELECT 'fi-e-' || (1 + g % 5), 'att', CASE WHEN g % 3 = 0 THEN 'mms' ELSE 'sms' END FROM generate_series(1, 2000) g;
         INSERT INTO throttle.pending (sender, carrier) SELECT 'fi-sb', 'att' FROM generate_series(1, 400);
         INSERT INTO throttle.pending (sender, carrier, channel)
              SELECT 'fi-vz', 'verizon', CASE WHEN g % 2 = 0 THEN 'mms' ELSE 'sms' END FROM generate_series(1, 44000) g;",
    )
    .expect("backlog");
    c.batch_execute("VACUUM ANALYZE throttle.pending")
        .expect("vacuum");
    set_worker(&mut c, true);
    std::thread::sleep(Duration::from_secs(RUN_S + 2));
    set_worker(&mut c, false);
    const MIN: i64 = 60_000_000;
    const SEC: i64 = 1_000_000;
    let mut judged = vec![
        Judged {
            name: "whatsapp standard, 80/s per number",
            n: 80,
            per_us: SEC,
            sql: "sender = 'fi-wa'",
        },
        Judged {
            name: "twilio short code, 100 segments/s",
            n: 100,
            per_us: SEC,
            sql: "sender = 'fi-sc'",
        },
        Judged {
            name: "twilio account, SMS short codes 500 segments/s (costs 1 and 3)",
            n: 500,
            per_us: SEC,
            sql: "sender LIKE 'fi-acct-%'",
        },
        Judged {
            name: "att class T, 75 SMS/min per campaign",
            n: 75,
            per_us: MIN,
            sql: "sender LIKE 'fi-t-%' AND channel = 'sms'",
        },
        Judged {
            name: "att class T, 50 MMS/min per campaign",
            n: 50,
            per_us: MIN,
            sql: "sender LIKE 'fi-t-%' AND channel = 'mms'",
        },
        Judged {
            name: "att class E, 240 SMS/min per campaign",
            n: 240,
            per_us: MIN,
            sql: "sender LIKE 'fi-e-%' AND channel = 'sms'",
        },
        Judged {
            name: "att class E, 50 MMS/min per campaign",
            n: 50,
            per_us: MIN,
            sql: "sender LIKE 'fi-e-%' AND channel = 'mms'",
        },
        Judged {
            name: "sendblue line, 1/s",
            n: 1,
            per_us: SEC,
            sql: "sender = 'fi-sb'",
        },
    ];
    if verizon {
        judged.push(Judged {
            name: "verizon 10DLC, 6,000 SMS/min per number",
            n: 6000,
            per_us: MIN,
            sql: "sender = 'fi-vz' AND channel = 'sms'",
        });
        judged.push(Judged {
            name: "verizon 10DLC, 25 MMS/s per number",
            n: 25,
            per_us: SEC,
            sql: "sender = 'fi-vz' AND channel = 'mms'",
        });
    }
    let (mut over, mut lowest_use, mut lowest_jain) = (0, f64::INFINITY, f64::INFINITY);
    for j in judged {
        let rows = c
            .query(
                &format!(
                    "SELECT (extract(epoch FROM released_at) * 1000000)::int8, cost, sender
                       FROM throttle.ready WHERE {}",
                    j.sql
                ),
                &[],
            )
            .expect("ready");
        let ev: Vec<Event<String>> = rows
            .iter()
            .map(|r| Event::new(r.get(0), r.get::<_, i32>(1) as u64, r.get(2)))
            .collect();
        let t0 = ev.iter().map(|e| e.t_us).min().unwrap_or(0);
        // Whole periods inside the run, from the first release.
        let periods = ((RUN_S as i64 * SEC) / j.per_us).max(1);
        let report = Report::new(j.name, &ev, j.n, j.per_us, t0, t0 + periods * j.per_us);
        println!("  {report}");
        over += usize::from(!report.ok);
        lowest_use = lowest_use.min(report.utilisation);
        lowest_jain = lowest_jain.min(report.jain);
    }
    s.value("fidelity", "limits broken", over as f64, "count");
    s.value("fidelity", "lowest utilisation", lowest_use, "");
    s.value("fidelity", "lowest Jain's index", lowest_jain, "");
}

// ---------------------------------------------------------------------------------------
// Contact rules at scale (issue #10): admissions with contact rules against the same
// admissions without, and the worker's release with and without millions of idle contacts.

/// Idle contacts to add (PG_THROTTLE_BENCH_CONTACTS, default 10,000,000).
fn idle_contacts() -> i64 {
    std::env::var("PG_THROTTLE_BENCH_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000)
}

/// Admissions per second of `sql` (a count over a table of `rows` rows), median of 3 rounds
/// interleaved with `other`; returns both medians and the median of the per-round ratios.
fn admit_pair(c: &mut Client, sql: &str, other: &str, rows: i64) -> (f64, f64, f64) {
    let (mut a, mut b, mut r) = (vec![], vec![], vec![]);
    for _ in 0..3 {
        let t = Instant::now();
        q1(c, sql);
        let x = rows as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        q1(c, other);
        let y = rows as f64 / t.elapsed().as_secs_f64();
        a.push(x);
        b.push(y);
        r.push(100.0 * x / y);
    }
    (median(a), median(b), median(r))
}

/// Run the worker until the contact filter is ready (it reads the contact tables after a
/// server start, as in production, where the worker runs), then stop it again.
fn filter_ready(c: &mut Client) {
    set_worker(c, true);
    let t = Instant::now();
    while q1(
        c,
        "SELECT count(*) FROM throttle.contact_filter() WHERE ready",
    ) == 0
        && t.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    set_worker(c, false);
    println!(
        "  contact filter ready after {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        c.query_one(
            "SELECT format('%s of %s bits set, estimated false positives %s', bits_set, bytes * 8, round(false_positive_rate::numeric, 6)) FROM throttle.contact_filter()",
            &[],
        )
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_default()
    );
}

/// Release `n` messages to new recipients over the 1,000 lines with rules: rows/s and the
/// worker's CPU µs per row.
fn contacts_release(c: &mut Client, n: i64, tag: &str) -> (f64, f64) {
    c.batch_execute(&format!(
        "TRUNCATE throttle.ready;
         INSERT INTO throttle.pending (sender, carrier, recipient)
              SELECT 'cr-' || (g % 1000), 'att', '{tag}' || g FROM generate_series(1, {n}) g;"
    ))
    .expect("fill");
    c.batch_execute("VACUUM ANALYZE throttle.pending")
        .expect("vacuum");
    let pid = worker_pid(c);
    let (before, cpu0) = (released_so_far(c), cpu_seconds(pid));
    set_worker(c, true);
    let secs = drain(c, before + n, Duration::from_secs(300));
    let cpu1 = cpu_seconds(pid);
    let done = released_so_far(c) - before;
    set_worker(c, false);
    (done as f64 / secs, 1e6 * (cpu1 - cpu0) / done.max(1) as f64)
}

fn contacts_scale(s: &mut Summary) {
    let idle = idle_contacts();
    let rows: i64 = 20_000;
    println!(
        "== contact rules: 1,000 lines with new, follow-up and unanswered rules; admissions with and without them; release with 0 and {idle} idle contacts"
    );
    let mut conf = BENCH_CONF.to_vec();
    conf.push("throttle.worker_enabled = off");
    let server = Server::start("bench-contacts", &conf);
    let mut c = server.connect();
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender, account)
              SELECT p || g, CASE p WHEN 'na-' THEN 'plain' ELSE 'ruled' END
                FROM generate_series(0, 999) g, unnest(ARRAY['cr-', 'ca-', 'na-']) p;
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per)
              SELECT 'sender', sender, 1000000, '1 second' FROM throttle.sender;
         INSERT INTO throttle.contact_rule (scope, scope_id, kind, max_count) VALUES
              ('account', 'ruled', 'new_contacts', 1000000000),
              ('account', 'ruled', 'follow_up_contacts', 1000000000),
              ('account', 'ruled', 'unanswered', 1000000000);
         CREATE TABLE admit_ruled AS
              SELECT 'ca-' || (g % 1000) AS sender, '+1555' || g AS recipient FROM generate_series(1, {rows}) g;
         CREATE TABLE admit_plain AS
              SELECT 'na-' || (g % 1000) AS sender FROM generate_series(1, {rows}) g;
         ANALYZE admit_ruled; ANALYZE admit_plain;
         SET max_parallel_workers_per_gather = 0;"
    ))
    .expect("set up");
    filter_ready(&mut c);
    let ruled = format!(
        "SELECT count(*) FROM admit_ruled WHERE (throttle.throttle_admit(sender, 'att', now(), 1, 'sms', recipient || '-' || txid_current())).admitted"
    );
    let plain = "SELECT count(*) FROM admit_plain WHERE (throttle.throttle_admit(sender, 'att', now(), 1, 'sms')).admitted";
    let (with, without, ratio) = admit_pair(&mut c, &ruled, plain, rows);
    println!(
        "  throttle_admit with contact rules {with:>10.0} rows/s, without {without:>10.0} rows/s: {ratio:.1} % (median of per-round ratios)"
    );
    s.ratio(
        "contacts",
        "throttle_admit with contact rules",
        with,
        "rows/s",
        ("throttle_admit without", without),
        ratio,
        Some(30.0),
    );
    let (r0, cpu0) = contacts_release(&mut c, rows, "+1666");
    println!("  release with contact rules, no idle contacts: {r0:>10.0} rows/s, worker {cpu0:.1} µs CPU per row");
    let t = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO throttle.contact_sent (sender, contact, counted_as, counted_at, unanswered, last_sent_at)
              SELECT 'cr-' || (g % 1000), '+1999' || g, 1, now() - interval '10 days', 0, now() - interval '10 days'
                FROM generate_series(1, {idle}) g;
         INSERT INTO throttle.contact_inbound (sender, contact, last_inbound_at)
              SELECT 'cr-' || (g % 1000), '+1999' || g, now() - interval '20 days' FROM generate_series(1, {idle}) g;"
    ))
    .expect("idle contacts");
    for t in ["contact_sent", "contact_inbound"] {
        c.batch_execute(&format!("VACUUM ANALYZE throttle.{t}"))
            .expect("vacuum");
    }
    println!(
        "  ({idle} idle contacts written in {:.0} s)",
        t.elapsed().as_secs_f64()
    );
    let (r1, cpu1) = contacts_release(&mut c, rows, "+1777");
    println!("  release with contact rules, {idle} idle contacts: {r1:>10.0} rows/s, worker {cpu1:.1} µs CPU per row");
    s.ratio(
        "contacts",
        format!("release with {idle} idle contacts"),
        r1,
        "rows/s",
        ("release with none", r0),
        100.0 * r1 / r0,
        None,
    );
    s.value(
        "contacts",
        "worker CPU per row, no idle contacts",
        cpu0,
        "µs",
    );
    s.value(
        "contacts",
        format!("worker CPU per row, {idle} idle contacts"),
        cpu1,
        "µs",
    );
    filter_ready(&mut c);
    let (with2, without2, ratio2) = admit_pair(&mut c, &ruled, plain, rows);
    println!(
        "  with {idle} idle contacts: throttle_admit with contact rules {with2:>10.0} rows/s, without {without2:>10.0} rows/s: {ratio2:.1} %"
    );
}
