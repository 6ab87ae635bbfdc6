//! What every scenario runs in: where the router runs ([`Placement`]),
//! the impairment link in front of it for a `wan` run, and the bench
//! clients, closed before the router stops. Scenarios take an [`Env`];
//! it knows none of them.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use icom_client::{Client, Events};
use icom_protocol::lock;

use crate::router::{Needs, Placement, Router};
use crate::wan::{Link, Wan};

/// The `icom-server` binary: as given, or beside this executable (cargo
/// builds both into `target/<profile>/`).
///
/// # Errors
/// When this executable's path is unknown.
pub(crate) fn server_bin(given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    Ok(exe.with_file_name(format!("icom-server{}", std::env::consts::EXE_SUFFIX)))
}

/// What every scenario needs: where the router runs, and the link to it.
pub(crate) struct Env {
    placement: Placement,
    /// Worker threads of an in-process router or sink.
    pub(crate) router_threads: usize,
    /// `--router-threads` if given: the workers of a spawned router.
    spawn_workers: Option<usize>,
    server_bin: Option<PathBuf>,
    wan: Option<Wan>,
    /// Every client [`Env::connect`] made, closed before the router stops.
    clients: std::sync::Mutex<Vec<Client>>,
}

impl Env {
    /// An environment with the router at `placement`, behind the
    /// impairment link `wan` if given. `server_bin` is `--server-bin`.
    pub(crate) fn new(
        placement: Placement,
        router_threads: Option<usize>,
        server_bin: Option<PathBuf>,
        wan: Option<Wan>,
    ) -> Env {
        Env {
            placement,
            router_threads: router_threads.unwrap_or_else(crate::router::default_workers),
            spawn_workers: router_threads,
            server_bin,
            wan,
            clients: std::sync::Mutex::default(),
        }
    }

    /// Starts the router, behind the proxy if this is a `wan` run.
    ///
    /// # Errors
    /// When the router or the proxy cannot be started.
    pub(crate) async fn router(&self, needs: Needs) -> anyhow::Result<Router> {
        let mut router = Router::start(&self.placement, needs).await?;
        if let Some(wan) = &self.wan {
            router.behind(wan.start(router.addr()).await?);
        }
        Ok(router)
    }

    /// Where a client dials to reach `addr`: through a proxy if this is a
    /// `wan` run (the proxy lives as long as the returned link).
    ///
    /// # Errors
    /// When the proxy cannot be started.
    pub(crate) async fn link_to(
        &self,
        addr: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, Option<Link>)> {
        match &self.wan {
            None => Ok((addr, None)),
            Some(wan) => {
                let link = wan.start(addr).await?;
                Ok((link.addr().unwrap_or(addr), Some(link)))
            }
        }
    }

    /// Connects a bench client as `id`, allowed `window` sends in flight.
    ///
    /// # Errors
    /// When it cannot connect.
    pub(crate) async fn connect(
        &self,
        router: &Router,
        id: &str,
        window: usize,
    ) -> anyhow::Result<(Client, Events)> {
        let mut config = router.client(id)?;
        config.max_in_flight = window.max(1);
        let (client, events) = Client::connect(config)
            .await
            .with_context(|| format!("connecting {id}"))?;
        lock(&self.clients).push(client.clone());
        if id == crate::cluster::SENDER {
            // Cross-router (--cluster): the sender comes last; its router
            // must know the receivers on the other one first.
            router.settled().await?;
        }
        Ok((client, events))
    }

    /// Closes the clients, then stops a router the bench started.
    pub(crate) async fn stop(&self, router: Router) {
        let clients = std::mem::take(&mut *lock(&self.clients));
        let closing: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(async move { c.close().await }))
            .collect();
        for c in closing {
            let _ = c.await;
        }
        router.stop().await;
    }

    /// How the report names the link between clients and router.
    pub(crate) fn wan_label(&self) -> String {
        self.wan
            .as_ref()
            .map_or_else(|| "loopback".to_owned(), Wan::label)
    }

    /// Where a router runs whose memory must be its own: a child process,
    /// or a remote router whose pid was given.
    ///
    /// # Errors
    /// For a remote router without `--router-pid`.
    pub(crate) fn own_process(&self) -> anyhow::Result<Placement> {
        match &self.placement {
            Placement::Remote(r) if r.pid.is_none() => {
                anyhow::bail!("measuring a remote router's memory needs --router-pid")
            }
            Placement::Remote(_) | Placement::Spawn(..) => Ok(self.placement.clone()),
            Placement::InProcess(_)
            | Placement::Cluster(..)
            | Placement::Naive(_)
            | Placement::Floor => Ok(Placement::Spawn(
                server_bin(self.server_bin.as_ref())?,
                self.spawn_workers,
            )),
        }
    }
}
