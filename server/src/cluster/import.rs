//! Growing from one router to a cluster: `icom-server --import-store DIR`
//! copies a single router's store (persistent events and offline queues,
//! DIR/icom.redb) into the cluster's shared store, in stored order, so
//! that a community keeps its JIP queue.
//!
//! A copy of what is still stored replaces itself: a persistent event by
//! its id, and a queued copy by a subject made of its place in the file
//! and its bytes. But a copy delivered (and deleted) since the first
//! import would come back with a second. So a successful import leaves a
//! note beside the file ([`IMPORTED_FILE`]: when, into which stream, how
//! many), and a second import of that directory is refused unless asked
//! for again (`--import-again`). The store file itself is left as it was.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::mirror::{persistent_tail, queued_tail};
use super::vault::Vault;
use super::{link, ClusterError};
use crate::clock::now_ms;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::Table;
use crate::store::{encode, Kind, Store, STORE_FILE};

/// The note an import leaves in the directory it imported.
pub const IMPORTED_FILE: &str = "icom.redb.imported";

/// What an import copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Persistent events.
    pub persistent: usize,
    /// Copies queued for offline servers.
    pub queued: usize,
    /// Why the note ([`IMPORTED_FILE`]) could not be written, if it could
    /// not (the import itself succeeded).
    pub note_error: Option<String>,
}

/// Copies the store in `data_dir` into the shared store of `config`'s
/// cluster, and leaves a note saying so ([`IMPORTED_FILE`]). The router
/// that owns `data_dir` must be stopped (the file is locked while it
/// runs). A directory that was imported before is refused unless `again`.
///
/// # Errors
/// [`ClusterError`]: no `[cluster]`, no store file, imported before (and
/// not `again`), NATS unreachable, or a write refused (the message says
/// which event, and how many were copied before it).
pub async fn import_store(
    config: &Config,
    data_dir: &Path,
    again: bool,
) -> Result<Imported, ClusterError> {
    let cfg = config
        .cluster
        .clone()
        .ok_or_else(|| ClusterError::new("importing needs a [cluster] section (or --nats)"))?;
    let file = data_dir.join(STORE_FILE);
    if !file.is_file() {
        return Err(ClusterError::new(format!(
            "no store to import: {} does not exist",
            file.display()
        )));
    }
    let note = data_dir.join(IMPORTED_FILE);
    if !again {
        if let Ok(before) = std::fs::read_to_string(&note) {
            return Err(ClusterError::new(format!(
                "{} was imported before ({}: {}); importing it again would bring back \
                 the queued copies delivered since. To import it anyway, add --import-again",
                file.display(),
                note.display(),
                before.lines().next().unwrap_or("").trim()
            )));
        }
    }
    let store = Store::open(data_dir, config.store)
        .map_err(|e| ClusterError::new(format!("{e} (is its router still running?)")))?;
    let records = store.export(now_ms());
    drop(store);
    let gauge = Metrics::new().cluster.link_up.clone();
    let link = link::connect(&cfg, config.limits.max_event_bytes, gauge).await?;
    let started = Instant::now();
    while !link.up.load(Ordering::Acquire) {
        if started.elapsed() > cfg.connect_timeout.max(Duration::from_secs(1)) {
            return Err(ClusterError::new(format!(
                "NATS not reachable at {:?}",
                cfg.urls
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let vault = Vault::new(
        &cfg,
        config,
        link.client.clone(),
        Arc::new(Table::default()),
        link.up.clone(),
        link.connects.clone(),
    );
    vault.prepare().await?;
    let mut done = Imported {
        persistent: 0,
        queued: 0,
        note_error: None,
    };
    for (seq, record) in records {
        let tail = match &record.header.kind {
            Kind::Persistent { persist_id, .. } => persistent_tail(persist_id),
            Kind::Queued { recipient } => {
                queued_tail(recipient, &format!("r{seq}-{:016x}", fnv(&record.wire)))
            }
        };
        let ttl = record
            .header
            .expires_ms
            .map(|e| Duration::from_secs(e.saturating_sub(now_ms()).div_ceil(1000).max(1)));
        vault
            .publish(&tail, Bytes::from(encode(&record)), ttl)
            .await
            .map_err(|e| {
                ClusterError::new(format!(
                    "record {seq}: {e} (copied before it: {} persistent, {} queued)",
                    done.persistent, done.queued
                ))
            })?;
        match record.header.kind {
            Kind::Persistent { .. } => done.persistent += 1,
            Kind::Queued { .. } => done.queued += 1,
        }
    }
    let _ = link.client.flush().await;
    // Not the NATS URLs: they may hold credentials.
    let text = format!(
        "imported at {} (Unix ms) into the cluster store of prefix '{}': \
         {} persistent events, {} queued copies\n",
        now_ms(),
        cfg.prefix,
        done.persistent,
        done.queued
    );
    done.note_error = write_note(&note, &text)
        .err()
        .map(|e| format!("cannot write {}: {e}", note.display()));
    Ok(done)
}

/// Writes `text` to `path` whole or not at all.
fn write_note(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("imported.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// FNV-1a, 64 bits: a stable name for a record's bytes.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
