//! The extension's state, kept in arma-rs's `.state()`: the tokio runtime
//! it owns, the link to the router, the outbox and payload store, the logs,
//! and the operations the command modules call. Every operation returns at
//! once; whatever needs the network runs as a task on the runtime and
//! answers through a callback.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arma_rs::{ContextState, Extension};
use icom_client::SendOptions;
use icom_protocol::Target;
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::bridge;
use crate::callback::{Callback, Kind};
use crate::config::{self, Config, ConfigError, Limits};
use crate::exchange::{self, Data};
use crate::link::{self, Link, Opened, Shared};
use crate::locate;
use crate::logs::{LogSettings, Logs};
use crate::outbox::{self, Outbox};
use crate::payloads::Payloads;
use crate::requests::Requests;

/// The callback name every result comes back under.
pub(crate) const CALLBACK_NAME: &str = "icom";
/// The extension's version, as `icom:version` and the RPT log show it.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Payload JSON up to this size is converted on the game thread, so that a
/// mistake in it is the command's own error; longer JSON is converted on
/// the runtime (a mistake in it comes back in the `ack`).
const CONVERT_INLINE: usize = 16 * 1024;
/// Received events that `icom:reply` can still answer, and for how long.
const REPLYABLE: usize = 4096;
const REPLYABLE_AGE: Duration = Duration::from_secs(600);

/// What the extension finds when it loads.
#[derive(Debug)]
pub(crate) struct Setup {
    /// The folder the library was loaded from.
    pub(crate) library_dir: Option<PathBuf>,
    /// A config file to use instead of searching (tests).
    pub(crate) config_file: Option<PathBuf>,
    /// The config, as found and loaded at load time.
    pub(crate) config: Result<Config, ConfigError>,
    /// Where logs go when the config does not say (the mod's `logs/`).
    pub(crate) default_log_dir: PathBuf,
}

impl Setup {
    /// Looks at this process: where the library is, `ICOM_CONFIG`, the
    /// working directory.
    pub(crate) fn discover() -> Setup {
        let library_dir = locate::library_dir();
        let default_log_dir = library_dir
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default()
            .join("logs");
        let config = config::find_here(library_dir.as_deref())
            .and_then(|path| config::load(&path, &default_log_dir));
        Setup {
            library_dir,
            config_file: None,
            config,
            default_log_dir,
        }
    }

    /// A setup for tests: no config search, logs under `dir`.
    #[cfg(test)]
    pub(crate) fn testing(dir: &std::path::Path, config_file: Option<PathBuf>) -> Setup {
        let default_log_dir = dir.join("logs");
        let config = match &config_file {
            Some(path) => config::load(path, &default_log_dir),
            None => Err(ConfigError::NotFound(vec![])),
        };
        Setup {
            library_dir: None,
            config_file,
            config,
            default_log_dir,
        }
    }
}

/// The state.
pub(crate) struct Icom {
    runtime: Option<Runtime>,
    runtime_error: Option<String>,
    logs: Logs,
    shared: Arc<Shared>,
    link: Arc<Link>,
    payloads: Arc<Payloads>,
    permits: Arc<Semaphore>,
    limits: Limits,
    tickets: AtomicU64,
    config: Result<PathBuf, String>,
}

impl Icom {
    /// Builds the state and puts it into the extension, with the
    /// extension's callback as the outbox's way into the game.
    pub(crate) fn attach(extension: &Extension, setup: Setup) {
        let context = extension.context();
        let icom = Icom::start(setup, move |callback: Callback| {
            // The channel closes only when the extension is dropped, in tests.
            let _ = context.callback_data(CALLBACK_NAME, callback.kind.as_str(), callback.data);
        });
        extension.context().global().set(icom);
    }

    /// Starts the logs, the runtime and the pump that hands callbacks to
    /// `deliver`.
    pub(crate) fn start(setup: Setup, deliver: impl Fn(Callback) + Send + Sync + 'static) -> Icom {
        let (limits, log_settings) = match &setup.config {
            Ok(c) => (c.limits, c.logs.clone()),
            Err(_) => (
                Limits::default(),
                LogSettings {
                    dir: setup.default_log_dir.clone(),
                    max_bytes: 1 << 20,
                    keep: 3,
                },
            ),
        };
        let logs = Logs::start(log_settings);
        let now = Instant::now();
        let outbox = Arc::new(Outbox::new(limits.outbox, now));
        let payloads = Arc::new(Payloads::new(limits.payloads));
        let shared = Arc::new(Shared {
            outbox: outbox.clone(),
            requests: Requests::new(REPLYABLE, REPLYABLE_AGE),
            bounds: limits.bridge,
            library_dir: setup.library_dir.clone(),
            config_file: setup.config_file.clone(),
            default_log_dir: setup.default_log_dir.clone(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let thread_logs = logs.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .thread_name("icom-rt")
            .enable_all()
            .on_thread_start(move || thread_logs.adopt_thread())
            .build();
        let (runtime, runtime_error) = match runtime {
            Ok(rt) => (Some(rt), None),
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(rt) = &runtime {
            rt.spawn(outbox::pump(outbox, payloads.clone(), deliver));
            let janitor = payloads.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    janitor.expire(Instant::now());
                }
            });
        }
        let config = setup
            .config
            .as_ref()
            .map(|c| c.file.clone())
            .map_err(ToString::to_string);
        logs.scope(|| {
            tracing::info!(
                target: "icom::connection",
                version = VERSION,
                library = ?locate::library_path(),
                "icom extension loaded"
            );
            match &config {
                Ok(path) => tracing::info!(target: "icom::connection", config = %path.display(), "config found"),
                Err(e) => tracing::warn!(target: "icom::connection", "no usable config yet: {e}"),
            }
            if let Some(e) = &runtime_error {
                tracing::error!(target: "icom::connection", "cannot start the network runtime: {e}");
            }
        });
        let permits = Arc::new(Semaphore::new(limits.commands_in_flight));
        Icom {
            runtime,
            runtime_error,
            logs,
            shared,
            link: Arc::new(Link::default()),
            payloads,
            permits,
            limits,
            tickets: AtomicU64::new(first_ticket()),
            config,
        }
    }

    /// `connect`: opens the session (config is read again, on the runtime).
    ///
    /// # Errors
    /// A session to another address runs, or the runtime did not start.
    pub(crate) fn connect(
        &self,
        address: Option<String>,
        expected_id: Option<String>,
    ) -> Result<String, String> {
        let rt = self.runtime()?;
        let ticket = self.ticket();
        match self.link.open(address, expected_id)? {
            Opened::New(session) => {
                rt.spawn(link::session(
                    self.shared.clone(),
                    self.link.clone(),
                    session,
                ));
            }
            Opened::Already => {
                let s = self.link.status();
                self.shared.push_state(json!({"state": s.state, "server_id": s.server_id, "router": s.router, "routers": s.routers}));
            }
        }
        Ok(ticket.to_string())
    }

    /// `disconnect`: closes the session, if any, and says `closed` at once
    /// (before any state of a session the mission starts next).
    pub(crate) fn disconnect(&self) -> String {
        if let Some(router) = self.link.close() {
            self.shared
                .push_state(json!({"state": "closed", "router": router}));
        }
        self.ticket().to_string()
    }

    /// `send`, `broadcast`, `send_to`.
    ///
    /// # Errors
    /// Not connected, too many commands waiting, or no runtime.
    pub(crate) fn send(
        &self,
        target: Target,
        event: String,
        data: Data,
        options: SendOptions,
    ) -> Result<String, String> {
        let rt = self.runtime()?;
        let rx = self.link.client()?;
        self.spawn(rt, |shared, ticket| {
            exchange::send(shared, rx, ticket, target, event, data, options)
        })
    }

    /// `request`: the answer is the `reply` callback.
    ///
    /// # Errors
    /// As [`Icom::send`].
    pub(crate) fn request(
        &self,
        server: String,
        event: String,
        data: Data,
        timeout: Duration,
    ) -> Result<String, String> {
        let rt = self.runtime()?;
        let rx = self.link.client()?;
        self.spawn(rt, |shared, ticket| {
            exchange::request(shared, rx, ticket, server, event, data, timeout)
        })
    }

    /// `reply` to the received event `id` from `from`.
    ///
    /// # Errors
    /// No such event remembered, too many commands waiting, or no runtime.
    pub(crate) fn reply(&self, id: u64, from: &str, data: Data) -> Result<String, String> {
        let rt = self.runtime()?;
        let request = self
            .shared
            .requests
            .find(id, from, Instant::now())
            .ok_or_else(|| {
                format!(
                    "no received event {id}@{from} to reply to (only the last {} events of the last {} s can be answered)",
                    self.shared.requests.capacity(),
                    self.shared.requests.age().as_secs()
                )
            })?;
        self.spawn(rt, |shared, ticket| {
            exchange::reply(shared, ticket, request, data)
        })
    }

    /// `forget` a persistent event.
    ///
    /// # Errors
    /// As [`Icom::send`].
    pub(crate) fn forget(&self, persist_id: String) -> Result<String, String> {
        let rt = self.runtime()?;
        let rx = self.link.client()?;
        self.spawn(rt, |shared, ticket| {
            exchange::forget(shared, rx, ticket, persist_id)
        })
    }

    /// `peers`: the other servers connected, as the extension knows them
    /// now (a JSON array; by handle when long).
    ///
    /// # Errors
    /// No room in the payload store for a long answer.
    pub(crate) fn peers(&self) -> Result<String, String> {
        let text = serde_json::Value::from(self.link.peers()).to_string();
        self.payloads
            .answer(text, self.limits.outbox.inline_bytes, Instant::now())
    }

    /// `fetch` one page of a large payload.
    ///
    /// # Errors
    /// No such payload or page.
    pub(crate) fn fetch(&self, handle: u64, page: usize) -> Result<String, String> {
        let text = self
            .payloads
            .page(handle, page, Instant::now())
            .map_err(|e| e.to_string())?;
        self.shared.outbox.nudge();
        Ok(text)
    }

    /// `ready`: the game handled `n` callbacks.
    pub(crate) fn ready(&self, n: usize) {
        self.shared.outbox.credit(n, Instant::now());
    }

    /// Converts a command's JSON payload; small ones at once.
    ///
    /// # Errors
    /// The JSON is invalid, too deep or too large.
    pub(crate) fn data(&self, text: String) -> Result<Data, String> {
        let bounds = self.limits.bridge;
        if text.len() > bounds.max_bytes {
            return Err(bridge::BridgeError::TooLarge {
                size: text.len(),
                max: bounds.max_bytes,
            }
            .to_string());
        }
        if text.len() <= CONVERT_INLINE {
            return bridge::json_to_msgpack(&text, bounds)
                .map(|b| Data::Ready(b.into()))
                .map_err(|e| e.to_string());
        }
        Ok(Data::Json(text))
    }

    /// `status`, as JSON.
    pub(crate) fn status(&self) -> String {
        let link = self.link.status();
        let out = self.shared.outbox.stats();
        let payloads = self.payloads.stats();
        let shed: serde_json::Map<String, serde_json::Value> = Kind::ALL
            .iter()
            .map(|k| (k.as_str().to_owned(), json!(out.shed[k.index()])))
            .chain([("total".to_owned(), json!(out.shed_total()))])
            .collect();
        json!({
            "version": VERSION,
            "state": link.state,
            "server_id": link.server_id,
            "router": link.router,
            "routers": link.routers,
            "peers": link.peers,
            "config": self.config.as_ref().map(|p| p.display().to_string()).ok(),
            "config_error": self.config.as_ref().err(),
            "runtime_error": self.runtime_error,
            "sent": self.shared.sent.load(Ordering::Relaxed),
            "received": self.shared.received.load(Ordering::Relaxed),
            "failed": self.shared.failed.load(Ordering::Relaxed),
            "commands_waiting": self.limits.commands_in_flight - self.permits.available_permits(),
            "callbacks": {
                "queued": out.queued,
                "queued_bytes": out.queued_bytes,
                "in_flight": out.in_flight,
                "window": self.limits.outbox.window,
                "credit": out.credit,
                "delivered": out.delivered,
                "credit_resets": out.credit_resets,
            },
            "shed": shed,
            "payloads": {"held": payloads.held, "bytes": payloads.bytes, "expired": payloads.expired},
            "logs": self.logs.dir().display().to_string(),
            "log_lines_dropped": self.logs.dropped(),
        })
        .to_string()
    }

    /// Logs a refused command in `errors.log` and hands the error back.
    pub(crate) fn refuse(&self, command: &str, error: String) -> String {
        self.logs.scope(|| {
            tracing::warn!(target: "icom::commands", command, "refused: {error}");
        });
        error
    }

    /// Runs a command's network work on `rt`, holding a command permit
    /// until it ends, and returns the ticket its answer comes back under.
    /// `work` is given the shared state and that ticket.
    ///
    /// # Errors
    /// Too many commands wait already.
    fn spawn<F>(
        &self,
        rt: &Runtime,
        work: impl FnOnce(Arc<Shared>, u64) -> F,
    ) -> Result<String, String>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let permit = self.permit()?;
        let ticket = self.ticket();
        let work = work(self.shared.clone(), ticket);
        rt.spawn(async move {
            let _permit = permit;
            work.await;
        });
        Ok(ticket.to_string())
    }

    fn runtime(&self) -> Result<&Runtime, String> {
        self.runtime.as_ref().ok_or_else(|| {
            format!(
                "the extension could not start its network runtime: {}",
                self.runtime_error.as_deref().unwrap_or("unknown error")
            )
        })
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, String> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            format!(
                "busy: {} commands already wait for the router; try again later",
                self.limits.commands_in_flight
            )
        })
    }

    fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed)
    }
}

/// The state of the extension that `ctx` belongs to.
///
/// # Errors
/// The state is missing (the extension was built without [`Icom::attach`]).
pub(crate) fn icom(ctx: &arma_rs::Context) -> Result<&Icom, String> {
    ctx.global()
        .get::<Icom>()
        .ok_or_else(|| "icom is not initialised".to_owned())
}

impl Drop for Icom {
    fn drop(&mut self) {
        // Never in the game (there is no unload); in tests, do not block.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Tickets (the ids commands return) rise from Unix ms × 1000, like event
/// ids, so that they keep rising across restarts.
fn first_ticket() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| {
            u64::try_from(d.as_millis())
                .unwrap_or(1)
                .saturating_mul(1000)
        })
        .max(1)
}
