//! Log files in the mod's `logs/` folder, one per concern:
//!
//! - `connection.log`: connecting, the router's welcome, disconnects,
//!   reconnects, and what the client library and QUIC report;
//! - `events.log`: one line per event sent or received (name, id, peer,
//!   size; never the payload, which may hold anything);
//! - `errors.log`: every warning and error, from any of the above.
//!
//! A writer thread owns the files: the game thread and the runtime only hand
//! it finished lines through a bounded channel (a full channel drops the
//! line and counts it; the count is written to `errors.log` later). Each
//! line is written as soon as it arrives, so nothing waits in a buffer when
//! the process ends: the game has no unload hook. A file that reaches
//! `max_bytes` is rotated (`events.log` → `events.1.log` → …), keeping
//! `keep` old files, so the folder holds at most `3 × (keep + 1) × max_bytes`.
//!
//! No secrets: key files are named by path, never read into a log line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use tracing::level_filters::LevelFilter;
use tracing::Dispatch;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// Lines that may wait for the writer thread.
const CHANNEL_LINES: usize = 4096;

/// Where and how much to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogSettings {
    /// The folder of the log files; created if missing.
    pub(crate) dir: PathBuf,
    /// A file is rotated when it reaches this size.
    pub(crate) max_bytes: u64,
    /// Rotated files kept per log.
    pub(crate) keep: usize,
}

/// One of the log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFile {
    Connection,
    Events,
    Errors,
}

impl LogFile {
    const ALL: [LogFile; 3] = [LogFile::Connection, LogFile::Events, LogFile::Errors];

    fn stem(self) -> &'static str {
        match self {
            LogFile::Connection => "connection",
            LogFile::Events => "events",
            LogFile::Errors => "errors",
        }
    }
}

/// The handle the rest of the extension logs through.
#[derive(Clone)]
pub(crate) struct Logs {
    dispatch: Dispatch,
    dropped: Arc<AtomicU64>,
    dir: PathBuf,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs").field("dir", &self.dir).finish()
    }
}

impl Logs {
    /// Starts the writer thread and builds the subscriber that feeds it.
    pub(crate) fn start(settings: LogSettings) -> Logs {
        let (tx, rx) = sync_channel::<(LogFile, Vec<u8>)>(CHANNEL_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let dir = settings.dir.clone();
        {
            let counter = dropped.clone();
            let spawned = std::thread::Builder::new()
                .name("icom-logs".into())
                .spawn(move || write_lines(&settings, &rx, &counter));
            if spawned.is_err() {
                // No thread, no log files: lines are dropped and counted.
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let sink = |file| Sink {
            file,
            tx: tx.clone(),
            dropped: dropped.clone(),
        };
        let connection = Targets::new()
            .with_target("icom::connection", LevelFilter::INFO)
            .with_target("icom_client", LevelFilter::INFO)
            .with_target("quinn", LevelFilter::WARN)
            .with_target("rustls", LevelFilter::WARN);
        let events = Targets::new().with_target("icom::events", LevelFilter::INFO);
        let errors = Targets::new().with_default(LevelFilter::WARN);
        let subscriber = tracing_subscriber::registry()
            .with(layer(sink(LogFile::Connection)).with_filter(connection))
            .with(layer(sink(LogFile::Events)).with_filter(events))
            .with(layer(sink(LogFile::Errors)).with_filter(errors));
        Logs {
            dispatch: Dispatch::new(subscriber),
            dropped,
            dir,
        }
    }

    /// Runs `f` with this log as the thread's subscriber (for the game thread,
    /// which the extension does not own).
    pub(crate) fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        tracing::dispatcher::with_default(&self.dispatch, f)
    }

    /// Makes this log the subscriber of the calling thread for its whole life
    /// (for the threads the extension owns).
    pub(crate) fn adopt_thread(&self) {
        // The guard would restore the previous default on drop; the thread
        // keeps this one until it ends.
        std::mem::forget(tracing::dispatcher::set_default(&self.dispatch));
    }

    /// Lines dropped because the writer fell behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

fn layer<S>(sink: Sink) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(true)
        .with_writer(sink)
}

/// Where one layer's lines go.
#[derive(Clone)]
struct Sink {
    file: LogFile,
    tx: SyncSender<(LogFile, Vec<u8>)>,
    dropped: Arc<AtomicU64>,
}

/// One formatted line, sent to the writer thread when it is dropped.
struct Line<'a> {
    sink: &'a Sink,
    buf: Vec<u8>,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            sink: self,
            buf: Vec::with_capacity(160),
        }
    }
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        match self.sink.tx.try_send((self.sink.file, line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.sink.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread: appends each line at once, rotates by size.
fn write_lines(settings: &LogSettings, rx: &Receiver<(LogFile, Vec<u8>)>, dropped: &AtomicU64) {
    let mut files: Vec<Rotating> = LogFile::ALL
        .iter()
        .map(|f| Rotating::new(&settings.dir, f.stem(), settings.max_bytes, settings.keep))
        .collect();
    let mut reported = 0;
    while let Ok((file, line)) = rx.recv() {
        files[file as usize].append(&line);
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped != reported {
            let note = format!(
                "{} lines were dropped because the log writer fell behind\n",
                now_dropped - reported
            );
            files[LogFile::Errors as usize].append(note.as_bytes());
            reported = now_dropped;
        }
    }
}

/// A log file that rotates by size.
struct Rotating {
    dir: PathBuf,
    stem: &'static str,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
}

impl Rotating {
    fn new(dir: &Path, stem: &'static str, max_bytes: u64, keep: usize) -> Rotating {
        Rotating {
            dir: dir.to_owned(),
            stem,
            max_bytes: max_bytes.max(1024),
            keep,
            file: None,
            size: 0,
        }
    }

    fn path(&self, n: usize) -> PathBuf {
        if n == 0 {
            self.dir.join(format!("{}.log", self.stem))
        } else {
            self.dir.join(format!("{}.{n}.log", self.stem))
        }
    }

    fn append(&mut self, line: &[u8]) {
        if self.file.is_none() {
            self.open();
        }
        let Some(file) = self.file.as_mut() else {
            return; // the folder cannot be written: nothing to do but go on
        };
        if file.write_all(line).is_ok() {
            self.size += line.len() as u64;
        }
        if self.size >= self.max_bytes {
            self.rotate();
        }
    }

    fn open(&mut self) {
        let _ = std::fs::create_dir_all(&self.dir);
        let path = self.path(0);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    }

    fn rotate(&mut self) {
        self.file = None;
        if self.keep == 0 {
            let _ = std::fs::remove_file(self.path(0));
        } else {
            let _ = std::fs::remove_file(self.path(self.keep));
            for n in (0..self.keep).rev() {
                let _ = std::fs::rename(self.path(n), self.path(n + 1));
            }
        }
        self.open();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_default()
    }

    fn wait_for(dir: &Path, name: &str, needle: &str) -> String {
        for _ in 0..200 {
            let text = read(dir, name);
            if text.contains(needle) {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{name} never held {needle:?}: {:?}", read(dir, name));
    }

    #[test]
    fn lines_go_to_their_files() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = Logs::start(LogSettings {
            dir: tmp.path().join("logs"),
            max_bytes: 1 << 20,
            keep: 2,
        });
        logs.scope(|| {
            tracing::info!(target: "icom::connection", router = "r:9090", "connected");
            tracing::info!(target: "icom::events", event = "supply_drop", "sent");
            tracing::warn!(target: "icom::connection", "lost the router");
            tracing::debug!(target: "icom::events", "not logged");
        });
        let dir = tmp.path().join("logs");
        let errors = wait_for(&dir, "errors.log", "lost the router");
        assert!(!errors.contains("supply_drop"));
        let connection = wait_for(&dir, "connection.log", "lost the router");
        assert!(connection.contains("connected"));
        assert!(connection.contains("router=\"r:9090\""));
        let events = wait_for(&dir, "events.log", "supply_drop");
        assert!(!events.contains("not logged"));
    }

    #[test]
    fn files_rotate_and_stay_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let mut file = Rotating::new(tmp.path(), "events", 1024, 2);
        let line = [b'x'; 100];
        for _ in 0..100 {
            file.append(&line);
        }
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["events.1.log", "events.2.log", "events.log"]);
        for name in &names {
            assert!(std::fs::metadata(tmp.path().join(name)).unwrap().len() <= 1100);
        }
    }
}
