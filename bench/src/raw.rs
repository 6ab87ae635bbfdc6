//! `icom-bench tput --raw`: the router alone, between two peers that speak
//! ICOM/1 with bare QUIC (the test suite's `RawClient`): one task writes a
//! stream per event, one reads the acks, one accepts the deliveries. With
//! no client library around them, the peers cost as little as they can, so
//! what is left is the router's share. In-process routers only.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use icom_protocol::{Control, Deliver, Send, Target};
use tokio::sync::Semaphore;

use crate::cli::TputArgs;
use crate::env::Env;
use crate::payload::{self, EVENT};
use crate::pump::{finish_time, tput_report, Received, Sent};
use crate::report::Report;
use crate::router::Router;

/// Runs `tput --raw`: bare QUIC peers around the router.
///
/// # Errors
/// When a peer cannot connect or write.
pub(crate) async fn run(env: &Env, router: Router, args: &TputArgs) -> anyhow::Result<Report> {
    let _ = tput(&router, args.events / 10, args.size, args.window).await?;
    let before = router.usage();
    let started = Instant::now();
    let (sent, got) = tput(&router, args.events, args.size, args.window).await?;
    let elapsed = finish_time(&sent, std::slice::from_ref(&got)).saturating_duration_since(started);
    let after = router.usage();
    let link = "loopback, bare QUIC peers (--raw)";
    let mut report = tput_report(link, args, &sent, vec![got], elapsed);
    router.add_usage(&mut report, before, after, elapsed, args.events, "events");
    env.stop(router).await;
    Ok(report)
}

/// Sends `events` events of `size` bytes from `server_1` to `server_2`,
/// at most `window` delivered-or-acked-pending at once.
async fn tput(
    router: &Router,
    events: u64,
    size: usize,
    window: usize,
) -> anyhow::Result<(Sent, Received)> {
    let mut a = router.raw("server_1").await?;
    let b = router.raw("server_2").await?;
    let credit = Arc::new(Semaphore::new(window));
    let receiver = {
        let (conn, credit) = (b.conn.clone(), credit.clone());
        tokio::spawn(async move {
            let mut r = Received::default();
            while r.count < events {
                let Ok(mut s) = conn.accept_uni().await else {
                    break;
                };
                let Ok(bytes) = s.read_to_end(usize::MAX).await else {
                    break;
                };
                r.count += 1;
                r.last = Some(Instant::now());
                credit.add_permits(1);
                if let Some(age) = Deliver::decode(&Bytes::from(bytes))
                    .ok()
                    .and_then(|d| payload::age(&d.data))
                {
                    r.latency.push(age);
                }
            }
            r
        })
    };
    let conn = a.conn.clone();
    let acks = {
        tokio::spawn(async move {
            let mut s = Sent::default();
            while s.acked + s.failed < events {
                match a.next_control().await {
                    Ok(Control::Ack(ack)) if ack.ok => {
                        s.acked += 1;
                        s.deliveries += u64::from(ack.delivered);
                    }
                    Ok(Control::Ack(ack)) => {
                        s.failed += 1;
                        s.first_error
                            .get_or_insert_with(|| format!("{:?}", ack.error));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        s.first_error.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            s.done = Some(Instant::now());
            s
        })
    };
    let to = Target::Server("server_2".into());
    for id in 1..=events {
        credit.acquire().await.context("the window")?.forget();
        let send = Send {
            id,
            to: to.clone(),
            event: EVENT.into(),
            data: payload::stamped(size),
            persist: None,
            ttl_ms: None,
            reply_to: None,
        };
        let mut stream = conn.open_uni().await.context("opening a stream")?;
        stream
            .write_all(&send.encode())
            .await
            .context("writing an event")?;
        let _ = stream.finish();
    }
    let sent = acks.await?;
    let got = receiver.await?;
    Ok((sent, got))
}
