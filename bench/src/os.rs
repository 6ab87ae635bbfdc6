//! What the bench reads from the operating system (Linux `/proc`): CPU
//! time of a process or of the threads of this one that carry a name (and
//! the runtimes whose threads carry one), a process's resident memory and
//! its open file descriptors. Elsewhere these read as unknown (`None`),
//! and the report says so.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Runtime;

/// A process to measure: this one, or another by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proc {
    /// The bench's own process.
    Own,
    /// Another process (the spawned router).
    Pid(u32),
}

impl Proc {
    fn dir(self) -> PathBuf {
        match self {
            Proc::Own => PathBuf::from("/proc/self"),
            Proc::Pid(pid) => PathBuf::from(format!("/proc/{pid}")),
        }
    }

    /// User + system CPU time of the whole process, threads that ended
    /// included.
    pub(crate) fn cpu(self) -> Option<Duration> {
        cpu_of_stat(&std::fs::read_to_string(self.dir().join("stat")).ok()?)
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
    pub(crate) fn memory(self) -> Option<Memory> {
        let status = std::fs::read_to_string(self.dir().join("status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].split_whitespace().next()?.parse().ok()
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    /// Open file descriptors.
    pub(crate) fn fds(self) -> Option<u64> {
        Some(std::fs::read_dir(self.dir().join("fd")).ok()?.count() as u64)
    }
}

/// A runtime whose threads are all named `name`, kept alive for the whole
/// run so that their CPU time stays countable. One thread is a
/// current-thread runtime on a thread of its own, as `icom-server` starts
/// for `workers = 1`; more are a multi-thread runtime.
pub(crate) fn router_runtime(name: &str, threads: usize) -> anyhow::Result<OwnRuntime> {
    let context = || format!("starting the {name} runtime");
    if threads <= 1 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name(name)
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()
            .with_context(context)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_background();
            })
            .with_context(context)?;
        return Ok(OwnRuntime {
            handle,
            own: Own::Thread(Some(stop)),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .thread_keep_alive(Duration::from_secs(24 * 3600))
        .enable_all()
        .build()
        .with_context(context)?;
    Ok(OwnRuntime {
        handle: runtime.handle().clone(),
        own: Own::Runtime(Some(runtime)),
    })
}

/// A runtime the bench starts beside its own (a router's, the sink's).
/// Dropped anywhere, even inside the bench's runtime when a scenario fails
/// after starting it, it shuts down in the background: dropping a runtime
/// there the usual way blocks, which tokio refuses with a panic.
pub(crate) struct OwnRuntime {
    handle: tokio::runtime::Handle,
    own: Own,
}

/// How an [`OwnRuntime`] is held.
enum Own {
    /// A multi-thread runtime.
    Runtime(Option<Runtime>),
    /// A current-thread runtime that its own thread drives until told to
    /// stop.
    Thread(Option<tokio::sync::oneshot::Sender<()>>),
}

impl std::ops::Deref for OwnRuntime {
    type Target = tokio::runtime::Handle;

    fn deref(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        match &mut self.own {
            Own::Runtime(rt) => {
                if let Some(rt) = rt.take() {
                    rt.shutdown_background();
                }
            }
            Own::Thread(stop) => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
            }
        }
    }
}

/// A process's resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    /// `VmRSS`, KiB.
    pub(crate) rss_kib: u64,
    /// `VmHWM`, the peak of `VmRSS`, KiB.
    pub(crate) peak_kib: u64,
}

/// User + system CPU time of this process's threads whose name (`comm`,
/// at most 15 bytes) starts with `prefix`. Threads that have ended are not
/// counted: the runtimes measured this way keep their threads alive.
pub(crate) fn threads_cpu(prefix: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        if let Some(cpu) = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|s| cpu_of_stat(&s))
        {
            total += cpu;
        }
    }
    Some(total)
}

/// utime + stime (fields 14 and 15 of `stat`, in clock ticks). The
/// command name may hold spaces and parentheses: count from the last `)`.
fn cpu_of_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let tick = clock_tick_hz();
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / tick as f64,
    ))
}

/// Clock ticks per second, the unit of `stat`'s CPU times (100 on Linux).
#[cfg(unix)]
fn clock_tick_hz() -> u64 {
    // SAFETY: sysconf reads a constant and has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

#[cfg(not(unix))]
fn clock_tick_hz() -> u64 {
    100
}

/// Raises this process's open-file limit to its hard limit, so that a
/// thousand clients (a UDP socket each) fit; returns the new soft limit.
#[cfg(unix)]
pub(crate) fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    Some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
pub(crate) fn raise_fd_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1";
        let hz = clock_tick_hz() as f64;
        assert_eq!(cpu_of_stat(stat), Some(Duration::from_secs_f64(300.0 / hz)));
    }

    #[tokio::test]
    async fn a_runtime_of_its_own_can_be_dropped_inside_another() {
        // As when a scenario fails after its in-process router started: a
        // plain `Runtime` dropped here would panic ("Cannot drop a runtime
        // in a context where blocking is not allowed").
        for threads in [1, 2] {
            let own = router_runtime("icom-test-rt", threads).unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel();
            own.spawn(async move { tx.send(7).unwrap() });
            assert_eq!(rx.await.unwrap(), 7);
            drop(own);
        }
        // The current-thread runtime's thread ends once it is dropped.
        let named = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter(|t| {
                    let comm = t.as_ref().unwrap().path().join("comm");
                    std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "icom-test-rt1")
                })
                .count()
        };
        // (A thread takes its name once it runs: wait for it.)
        let becomes = |want: usize| async move {
            for _ in 0..250 {
                if named() == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        };
        let own = router_runtime("icom-test-rt1", 1).unwrap();
        assert!(becomes(1).await, "the runtime runs on a thread of its own");
        drop(own);
        assert!(becomes(0).await, "the runtime's thread ended");
    }

    #[test]
    fn this_process_is_measurable() {
        assert!(Proc::Own.cpu().is_some());
        assert!(Proc::Own.memory().is_some_and(|m| m.peak_kib >= m.rss_kib));
        assert!(Proc::Own.fds().is_some_and(|n| n >= 3));
    }
}
