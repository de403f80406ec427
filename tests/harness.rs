//! A throwaway PostgreSQL server for client-side tests and benchmarks.
//!
//! Each `Server` gets its own data directory, port and socket directory, runs with
//! `shared_preload_libraries = 'pg_throttle'` (the extension must be installed into the
//! server given by `PG_CONFIG`, default `pg_config`), and is stopped by its data directory
//! when dropped. PostgreSQL refuses to run as root: as root, the server runs as the user
//! named by `PG_THROTTLE_RUNAS` (default `postgres`) through `runuser`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls};

pub mod checker;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Server {
    pub datadir: PathBuf,
    pub port: u16,
    bindir: PathBuf,
    runas: Option<String>,
    running: bool,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn pg_bindir() -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .expect("run pg_config");
    assert!(out.status.success(), "pg_config --bindir failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A port no one listens on now, below Linux's range of ephemeral ports (32768-60999): a
/// port the kernel chose (`bind :0`) is one it may hand to a client connection's source port
/// a moment later, and the server's bind then fails. Checked by binding it; `pg_ctl_start`
/// moves to another if it is taken before the server binds it anyway.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for _ in 0..1000 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(k.wrapping_mul(7_919)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

impl Server {
    /// A new cluster with pg_throttle preloaded and created in database `postgres`.
    pub fn start(name: &str, extra_conf: &[&str]) -> Server {
        Self::start_with(name, true, extra_conf)
    }

    /// A new cluster; `preload` chooses whether pg_throttle is in shared_preload_libraries.
    pub fn start_with(name: &str, preload: bool, extra_conf: &[&str]) -> Server {
        let mut s = Self::empty(name);
        s.initdb();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            "fsync = off".to_string(),
            "max_connections = 50".to_string(),
            "log_min_messages = warning".to_string(),
        ];
        if preload {
            conf.push("shared_preload_libraries = 'pg_throttle'".into());
        }
        conf.extend(extra_conf.iter().map(|c| c.to_string()));
        s.append_conf(&conf.join("\n"));
        s.append_conf(&s.own_conf());
        s.pg_ctl_start();
        if preload {
            let mut c = s.connect();
            c.batch_execute("CREATE EXTENSION pg_throttle")
                .expect("CREATE EXTENSION pg_throttle");
        }
        s
    }

    /// A new cluster in this (empty) data directory: user postgres, trust, UTF8.
    fn initdb(&self) {
        self.run_ok(
            "initdb",
            &[
                "-D",
                self.datadir.to_str().expect("utf8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
    }

    /// A streaming-replication standby of this server (pg_basebackup), started.
    pub fn standby(&self, name: &str) -> Server {
        let mut s = Self::empty(name);
        let host = self.datadir.to_str().expect("utf8").to_string();
        let port = self.port.to_string();
        s.run_ok(
            "pg_basebackup",
            &[
                "-D",
                s.datadir.to_str().expect("utf8"),
                "-R",
                "-X",
                "stream",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                "postgres",
            ],
        );
        let _ = std::fs::remove_file(s.datadir.join("postmaster.pid"));
        s.append_conf(&s.own_conf());
        s.pg_ctl_start();
        s
    }

    /// A fresh data directory and port, owned by the server's user; nothing in it yet.
    fn empty(name: &str) -> Server {
        let base = std::env::var_os("PG_THROTTLE_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("pg_throttle_tests"));
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let datadir = base.join(format!("{name}-{}-{n}", std::process::id()));
        let runas = if is_root() {
            Some(std::env::var("PG_THROTTLE_RUNAS").unwrap_or_else(|_| "postgres".into()))
        } else {
            None
        };
        std::fs::create_dir_all(&base).expect("create test dir");
        let _ = std::fs::remove_dir_all(&datadir);
        std::fs::create_dir_all(&datadir).expect("create data dir");
        let s = Server {
            datadir,
            port: free_port(),
            bindir: pg_bindir(),
            runas,
            running: false,
        };
        if let Some(user) = &s.runas {
            let st = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&base)
                .arg(&s.datadir)
                .status()
                .expect("chown");
            assert!(st.success(), "chown the data directory to {user}");
        }
        let st = Command::new("chmod")
            .arg("0700")
            .arg(&s.datadir)
            .status()
            .expect("chmod");
        assert!(st.success());
        s
    }

    /// The lines that make this cluster its own: port and socket directory.
    fn own_conf(&self) -> String {
        format!(
            "port = {}\nunix_socket_directories = '{}'",
            self.port,
            self.datadir.display()
        )
    }

    fn run(&self, bin: &str, args: &[&str]) -> Output {
        let path = self.bindir.join(bin);
        let mut cmd = match &self.runas {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(&path);
                c
            }
            None => Command::new(&path),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {bin}: {e}"))
    }

    /// `pg_upgrade` this cluster (stopped first) into a new one of the same version with
    /// pg_throttle preloaded, keeping pg_upgrade's logs in the new data directory
    /// (`pg_upgrade_output.d`); the new cluster is started.
    pub fn pg_upgrade(&mut self, name: &str) -> Server {
        self.stop("fast");
        let mut new = Self::empty(name);
        new.initdb();
        new.append_conf("shared_preload_libraries = 'pg_throttle'\nfsync = off");
        let base = new.datadir.parent().expect("base dir").to_path_buf();
        let bindir = self.bindir.to_str().expect("utf8 path").to_string();
        let (old_port, new_port) = (self.port.to_string(), new.port.to_string());
        let out = {
            let path = self.bindir.join("pg_upgrade");
            let mut cmd = match &self.runas {
                Some(user) => {
                    let mut c = Command::new("runuser");
                    c.arg("-u").arg(user).arg("--").arg(&path);
                    c
                }
                None => Command::new(&path),
            };
            cmd.current_dir(&base)
                .args([
                    "-b",
                    &bindir,
                    "-B",
                    &bindir,
                    "-d",
                    self.datadir.to_str().expect("utf8 path"),
                    "-D",
                    new.datadir.to_str().expect("utf8 path"),
                    "-p",
                    &old_port,
                    "-P",
                    &new_port,
                    "-U",
                    "postgres",
                    "--retain",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("run pg_upgrade")
        };
        assert!(
            out.status.success(),
            "pg_upgrade failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        new.append_conf(&new.own_conf());
        new.pg_ctl_start();
        new
    }

    /// Run a PostgreSQL client program (pg_dump, pg_restore, ...) as the server's user;
    /// panic with its stderr if it fails.
    pub fn tool(&self, bin: &str, args: &[&str]) {
        self.run_ok(bin, args)
    }

    /// Run a PostgreSQL binary; panic with its stderr if it fails.
    fn run_ok(&self, bin: &str, args: &[&str]) {
        let out = self.run(bin, args);
        assert!(
            out.status.success(),
            "{bin} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Append lines to postgresql.conf.
    pub fn append_conf(&self, lines: &str) {
        use std::io::Write;
        let path = self.datadir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open postgresql.conf");
        writeln!(f, "\n{lines}").expect("write postgresql.conf");
    }

    fn log(&self) -> PathBuf {
        self.datadir.join("server.log")
    }

    fn pg_ctl_start(&mut self) {
        let data = self.datadir.to_str().expect("utf8").to_string();
        let log = self.log().to_str().expect("utf8").to_string();
        let mut out = self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        );
        // Another process took the port between its choice and the server's bind: another
        // one (the last `port` line of postgresql.conf wins).
        for _ in 0..5 {
            let taken = std::fs::read_to_string(self.log())
                .unwrap_or_default()
                .contains("Address already in use");
            if out.status.success() || !taken {
                break;
            }
            let _ = std::fs::remove_file(self.log());
            self.port = free_port();
            self.append_conf(&format!("port = {}", self.port));
            out = self.run(
                "pg_ctl",
                &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
            );
        }
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
        self.running = true;
    }

    /// Stop with `mode` (`fast`, `immediate`): immediate is a crash, nothing is flushed.
    pub fn stop(&mut self, mode: &str) {
        let data = self.datadir.to_str().expect("utf8").to_string();
        let out = self.run(
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "-t", "60", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    pub fn start_again(&mut self) {
        self.pg_ctl_start();
    }

    /// Stop (`mode`) and start again.
    pub fn restart(&mut self, mode: &str) {
        self.stop(mode);
        self.pg_ctl_start();
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.datadir.display(),
            self.port
        )
    }

    /// A client connection; retries briefly while the server finishes starting up.
    pub fn connect(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.conninfo(), NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("connect to {}: {e}", self.conninfo()),
            }
        }
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            let data = self.datadir.to_str().unwrap_or_default().to_string();
            let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
        if std::env::var_os("PG_THROTTLE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.datadir);
        }
    }
}

/// The SQLSTATE of a failed statement.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// Check that release (or admission) times respect a limit of `rate` per `per_us` with a
/// burst of `burst`: every window [a, b] holds at most `burst + rate × (b - a) / per_us`
/// events. Checked in O(n log n) as conformance to the equivalent virtual-scheduling rule
/// (GCRA) over the sorted times, in exact integers; returns the first offending time.
pub fn window_violation(times: &[i64], rate: i128, per_us: i128, burst: i128) -> Option<i64> {
    let mut t = times.to_vec();
    t.sort_unstable();
    // In time scaled by `rate`, one event costs `per_us`; an event at s conforms iff the
    // theoretical arrival time is at most (burst - 1) × per_us ahead of s.
    let mut tat: i128 = i128::MIN;
    for &x in &t {
        let s = x as i128 * rate;
        if tat != i128::MIN && tat - s > (burst - 1) * per_us {
            return Some(x);
        }
        tat = tat.max(s) + per_us;
    }
    None
}

/// Panic with `what` if `times` break the limit (see [`window_violation`]).
pub fn assert_window_bound(what: &str, times: &[i64], rate: i128, per_us: i128, burst: i128) {
    if let Some(at) = window_violation(times, rate, per_us, burst) {
        panic!("{what}: the limit {rate}/{per_us} µs burst {burst} is broken at {at} µs");
    }
}

#[cfg(test)]
mod tests {
    use super::window_violation;

    /// The fast check agrees with the definition (all pairs) on small cases.
    #[test]
    fn window_check_matches_all_pairs() {
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let (rate, per, burst) = (
                1 + (next() % 5) as i128,
                1000 + (next() % 3000) as i128,
                1 + (next() % 4) as i128,
            );
            let n = 1 + (next() % 12) as usize;
            let times: Vec<i64> = (0..n).map(|_| (next() % 5000) as i64).collect();
            let mut t = times.clone();
            t.sort();
            let mut ok = true;
            for i in 0..t.len() {
                for j in i..t.len() {
                    let k = (j - i + 1) as i128;
                    if k * per > burst * per + rate * (t[j] - t[i]) as i128 {
                        ok = false;
                    }
                }
            }
            assert_eq!(
                window_violation(&times, rate, per, burst).is_none(),
                ok,
                "{times:?} {rate}/{per} burst {burst}"
            );
        }
    }
}

/// Poll `sql` (one bigint) until `done` holds or the deadline passes; returns the last value.
pub fn wait_for(c: &mut Client, sql: &str, deadline: Duration, done: impl Fn(i64) -> bool) -> i64 {
    let end = Instant::now() + deadline;
    loop {
        let v: i64 = c.query_one(sql, &[]).map(|r| r.get(0)).unwrap_or(-1);
        if done(v) || Instant::now() > end {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one bigint `sql` returns.
pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).expect(sql).get(0)
}
