//! The real `icom-server` binary as a child process: start it, read its log
//! lines, signal it, and wait (bounded) for it to exit.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

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

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
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
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                if line.contains(needle) {
                    return line;
                }
                seen.push(line);
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
