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

fn free_port() -> u16 {
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
        let mut s = Server {
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
            let st = Command::new("chmod")
                .arg("0700")
                .arg(&s.datadir)
                .status()
                .expect("chmod");
            assert!(st.success());
        }
        let out = s.run(
            "initdb",
            &[
                "-D",
                s.datadir.to_str().expect("utf8 path"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = vec![
            format!("port = {}", s.port),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", s.datadir.display()),
            "fsync = off".to_string(),
            "max_connections = 50".to_string(),
            "log_min_messages = warning".to_string(),
        ];
        if preload {
            conf.push("shared_preload_libraries = 'pg_throttle'".into());
        }
        conf.extend(extra_conf.iter().map(|c| c.to_string()));
        s.append_conf(&conf.join("\n"));
        s.pg_ctl_start();
        if preload {
            let mut c = s.connect();
            c.batch_execute("CREATE EXTENSION pg_throttle")
                .expect("CREATE EXTENSION pg_throttle");
        }
        s
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
        let out = self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        );
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
