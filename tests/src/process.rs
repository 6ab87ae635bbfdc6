//! The real `icom-server` binary as a child process: the files it runs
//! from ([`RouterFiles`]), free ports for it, and the process itself
//! ([`RouterProcess`]): start it, read its log lines, look at it in
//! `/proc`, signal it, and wait (bounded) for it to exit.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use icom_certs::testing::TestPki;
use tempfile::TempDir;

/// A running router process; killed when dropped.
pub struct RouterProcess {
    child: Child,
    stderr_lines: Receiver<String>,
}

/// A UDP port on 127.0.0.1 that was free a moment ago (bound, read,
/// released).
///
/// # Panics
/// If no UDP socket can be bound.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("binding a UDP socket on 127.0.0.1")
        .port()
}

/// A UDP socket on 127.0.0.1 that never answers: dialled as a router, it
/// is one that is down without a word (no QUIC close, no stateless reset,
/// no ICMP), like a host that is gone. Silent for as long as it is kept.
///
/// # Panics
/// If no UDP socket can be bound.
pub fn silent_udp_socket() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket on 127.0.0.1")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, read,
/// released).
///
/// # Panics
/// If no TCP listener can be bound.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a TCP listener on 127.0.0.1")
        .port()
}

/// What `icom-server --config` runs from, in a temporary directory: a
/// fresh test PKI (`ca.pem`, `router.pem`, `router.key`, `crl.pem`, …) and
/// `icom-server.toml`, listening on a free UDP port of 127.0.0.1 with its
/// store in `data/`.
pub struct RouterFiles {
    dir: TempDir,
    pki: Arc<TestPki>,
    port: u16,
    config: PathBuf,
}

impl RouterFiles {
    /// Writes the PKI and the config; `extra` is TOML put before the
    /// `[tls]` table (top-level keys, or tables such as `[limits]`).
    ///
    /// # Panics
    /// If the files cannot be written.
    pub fn new(extra: &str) -> RouterFiles {
        RouterFiles::with_pki(Arc::new(TestPki::new()), extra)
    }

    /// The files of another router of the same cluster: the same CA and
    /// router name (`localhost`), its own port, data dir and `extra`.
    ///
    /// # Panics
    /// If the files cannot be written.
    pub fn sibling(&self, extra: &str) -> RouterFiles {
        RouterFiles::with_pki(self.pki.clone(), extra)
    }

    /// As [`RouterFiles::new`], with an existing PKI (another router's:
    /// a router of the same cluster).
    ///
    /// # Panics
    /// If the files cannot be written.
    pub fn with_pki(pki: Arc<TestPki>, extra: &str) -> RouterFiles {
        let dir = tempfile::tempdir().expect("a temp dir");
        pki.write_to(dir.path()).expect("writing the test PKI");
        let port = free_udp_port();
        let config = dir.path().join("icom-server.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n{extra}\n[tls]\nca = \"ca.pem\"\ncert = \"router.pem\"\nkey = \"router.key\"\ncrl = \"crl.pem\"\n"
            ),
        )
        .expect("writing the config file");
        RouterFiles {
            dir,
            pki,
            port,
            config,
        }
    }

    /// The temporary directory: the config's relative paths start here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The test PKI the router's certificate and the CRL come from.
    pub fn pki(&self) -> &TestPki {
        &self.pki
    }

    /// The config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The address the config listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The command `<bin> --config <config>`.
    pub fn command(&self, bin: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&self.config);
        cmd
    }
}

/// The resident set size of process `pid` in KiB, from
/// `/proc/<pid>/status`; 0 if it cannot be read (the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

impl RouterProcess {
    /// Starts `cmd` with stdout and stderr piped; a thread collects the
    /// log lines (stderr).
    ///
    /// # Panics
    /// If the process cannot start.
    pub fn spawn(cmd: &mut Command) -> RouterProcess {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting icom-server");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        RouterProcess {
            child,
            stderr_lines: rx,
        }
    }

    /// Starts `cmd` as [`RouterProcess::spawn`] does and waits for its
    /// `listening` line.
    ///
    /// # Panics
    /// As [`RouterProcess::spawn`] and [`RouterProcess::wait_log`].
    pub fn start(cmd: &mut Command) -> RouterProcess {
        let mut router = RouterProcess::spawn(cmd);
        router.wait_log("listening");
        router
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    ///
    /// # Panics
    /// If its status cannot be read.
    pub fn running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("reading the router's status")
            .is_none()
    }

    /// Its resident set size in KiB (see [`rss_kib`]).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// Takes the process's stdout (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits (at most 20 s) for a log line containing `needle` and returns
    /// it.
    ///
    /// # Panics
    /// If the process exits first or no such line comes; the panic shows
    /// the lines seen.
    pub fn wait_log(&mut self, needle: &str) -> String {
        self.log_until(needle).pop().unwrap_or_default()
    }

    /// As [`RouterProcess::wait_log`], returning every line read until
    /// that one, that one last.
    ///
    /// # Panics
    /// As [`RouterProcess::wait_log`].
    pub fn log_until(&mut self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                seen.extend(self.stderr_lines.try_iter());
                panic!(
                    "the router exited ({status}) before {needle:?}:\n{}",
                    seen.join("\n")
                );
            }
        }
        panic!("no log line containing {needle:?}:\n{}", seen.join("\n"));
    }

    /// Sends a signal by name (`TERM`, `SIGHUP`, ...), as `kill -s` does.
    ///
    /// # Panics
    /// If `kill` fails.
    pub fn signal(&self, sig: &str) {
        let sig = sig.trim_start_matches("SIG");
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -s {sig}");
    }

    /// Waits (bounded) for the process to exit; returns its status.
    ///
    /// # Panics
    /// If it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the router did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
