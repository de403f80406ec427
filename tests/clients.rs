//! The example senders (`examples/python`, psycopg 3; `examples/node`, node-postgres) against a
//! real server and the fake provider (`examples/fake_provider.py`), which throttles (429)
//! 30 % of the requests and fails (500) 10 %. Each example enqueues through a full queue cap
//! (PT429: it waits and retries), and two of its sender processes drain the queue: every
//! message ends sent exactly once (the provider accepted it once, throttle.sent holds it once)
//! or dead, none is left anywhere else, and the 429s slowed the sender's limit (limit_state
//! says why).
//!
//! Python needs psycopg 3 (`scripts/setup.sh` installs Debian's python3-psycopg), Node the
//! `pg` package (`scripts/setup.sh` runs `npm ci` in `examples/node`).

use pg_throttle_tests::{count, Server};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The system Python (Debian's python3-psycopg is installed for it).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Kills the child when dropped (a failed assertion leaves no process behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for `child` to exit within `secs`; its success.
fn finish(child: &mut Child, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{what} failed: {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still runs after {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_example(name: &str, client: &[&str]) {
    let server = Server::start(
        name,
        &["throttle.retry_backoff = 50", "throttle.max_attempts = 5"],
    );
    let mut c = server.connect();
    let sender = format!("{name}-line");
    c.batch_execute(&format!(
        "INSERT INTO throttle.sender (sender) VALUES ('{sender}');
         INSERT INTO throttle.rate_limit (scope, scope_id, rate, per) VALUES ('sender', '{sender}', 300, '1 second');
         INSERT INTO throttle.queue_cap (scope, scope_id, max_waiting) VALUES ('sender', '{sender}', 40);"
    ))
    .expect("configure");
    let dsn = format!("postgresql://postgres@127.0.0.1:{}/postgres", server.port);
    let port = free_port();
    let log = server.datadir().with_extension("accepted");
    let _ = std::fs::remove_file(&log);
    let _provider = Killed(
        Command::new(python())
            .arg(examples().join("fake_provider.py"))
            .args([
                "--port",
                &port.to_string(),
                "--throttle",
                "0.3",
                "--error",
                "0.1",
            ])
            .arg("--log")
            .arg(&log)
            .spawn()
            .expect("start the fake provider"),
    );
    // Enqueue 300 through a queue cap of 40: the example waits out PT429.
    let out = Command::new(client[0])
        .args(&client[1..])
        .args(["enqueue", &dsn, &sender, "300"])
        .output()
        .expect("run the example's enqueue");
    assert!(
        out.status.success(),
        "enqueue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().expect("an id"))
        .collect();
    assert_eq!(ids.len(), 300, "every message enqueued");
    let url = format!("http://127.0.0.1:{port}/messages");
    // Wait for the provider to listen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the fake provider does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two sender processes drain it.
    let mut senders: Vec<Killed> = (0..2)
        .map(|_| {
            Killed(
                Command::new(client[0])
                    .args(&client[1..])
                    .args(["send", &dsn, &url, "--exit-when-done"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start a sender"),
            )
        })
        .collect();
    for s in &mut senders {
        finish(&mut s.0, "a sender", 180);
    }
    let list = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for t in ["pending", "ready", "inflight"] {
        let n = count(
            &mut c,
            &format!("SELECT count(*) FROM throttle.{t} WHERE id IN ({list})"),
        );
        assert_eq!(n, 0, "nothing left in throttle.{t}");
    }
    let sent: Vec<i64> = c
        .query(
            &format!("SELECT id FROM throttle.sent WHERE id IN ({list}) ORDER BY id"),
            &[],
        )
        .expect("sent")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dead = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM throttle.dead WHERE id IN ({list}) AND error_code IN ('429', '500') AND reason = 'failed 5 times'"
        ),
    );
    assert_eq!(
        sent.len() as i64 + dead,
        300,
        "every message sent or dead after its last attempt"
    );
    // The provider accepted each sent message once, and no other.
    let mut accepted: HashMap<i64, u32> = HashMap::new();
    for l in std::fs::read_to_string(&log)
        .expect("the provider's log")
        .lines()
    {
        *accepted.entry(l.parse().expect("an id")).or_default() += 1;
    }
    let mut once: Vec<i64> = accepted.keys().copied().collect();
    once.sort_unstable();
    assert_eq!(
        once, sent,
        "the provider accepted exactly what throttle.sent holds"
    );
    assert!(accepted.values().all(|&n| n == 1), "each once");
    let retried = count(
        &mut c,
        &format!("SELECT count(*) FROM throttle.sent WHERE id IN ({list}) AND attempts > 1"),
    );
    assert!(
        retried > 0,
        "the provider failed some, sent on a later attempt"
    );
    // The provider's 429s slowed the sender's limit (the shipped rule for 429): the view says
    // by how much and why.
    let r = c
        .query_one(
            "SELECT rate, configured_rate, slowed FROM throttle.limit_state
              WHERE scope = 'sender' AND scope_id = $1",
            &[&sender],
        )
        .expect("limit_state");
    let (rate, configured, why): (i64, i64, Option<String>) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(configured, 300);
    assert!(rate < 300, "the effective rate dropped: {rate}");
    let why = why.unwrap_or_default();
    assert!(why.contains("by provider error 429"), "{why}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_python_example_sends_each_message_once_or_dead() {
    let script = examples().join("python/sender.py");
    run_example("client_py", &[python(), script.to_str().expect("path")]);
}

#[test]
fn the_node_example_sends_each_message_once_or_dead() {
    let script = examples().join("node/sender.js");
    run_example("client_js", &["node", script.to_str().expect("path")]);
}
