//! Nothing acked is lost in cluster mode (docs/PROTOCOL.md §12.6): a
//! router SIGKILLed while it takes persistent and queued sends, and the
//! NATS node that leads the store's stream SIGKILLed likewise. Every send
//! acked `ok` reaches the late joiner; what was stored but not acked may
//! arrive too, and a copy may arrive twice: counted on a raw connection in
//! the first test; in the second the client library, which drops
//! duplicates by `(from, id)`, hands each event on once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client_support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use icom_protocol::{AckCode, Persist, Send, Target};
use icom_tests::{eventually, RawClient, Routers, WAIT};

/// Sends to the offline server `late`, in turn, a persistent event (its
/// own id) and a copy with a ttl, until the connection ends or `stop`;
/// the ids acked `ok` are recorded, and the codes of the others.
async fn load(
    mut c: RawClient,
    acked: Arc<Mutex<Vec<u64>>>,
    refused: Arc<Mutex<HashMap<AckCode, usize>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let data = Bytes::from(rmp_serde::to_vec("x").unwrap());
    for id in 1.. {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let base = icom_tests::send(id, Target::Server("late".into()), "load", data.clone());
        let s = if id % 2 == 0 {
            Send {
                persist: Some(Persist::Id(format!("p{id}"))),
                ..base
            }
        } else {
            Send {
                ttl_ms: Some(600_000),
                ..base
            }
        };
        match c.send(&s).await {
            Ok(ack) if ack.ok => acked.lock().unwrap().push(id),
            Ok(ack) => {
                let code = ack.error.map_or(AckCode::Unknown, |e| e.code);
                *refused.lock().unwrap().entry(code).or_default() += 1;
            }
            Err(_) => return,
        }
    }
}

/// The ids `late` is replayed, and how many came more than once.
async fn replayed_to_late(c: &mut RawClient) -> (BTreeSet<u64>, usize) {
    let got = c.replayed().await.unwrap();
    let mut ids = BTreeSet::new();
    let mut dups = 0;
    for d in got {
        assert_eq!(d.from, "sender");
        if !ids.insert(d.id) {
            dups += 1;
        }
    }
    (ids, dups)
}

type Load = (
    Arc<Mutex<Vec<u64>>>,
    Arc<Mutex<HashMap<AckCode, usize>>>,
    Arc<std::sync::atomic::AtomicBool>,
);

fn shared() -> Load {
    (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(HashMap::new())),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_sigkilled_under_durable_load_loses_nothing_it_acked() {
    let rs = Routers::start(3, 2).await;
    let (files, doomed) = rs.spawn_binary("doomed", "").await;
    let mut sender = RawClient::welcomed(files.addr(), files.pki(), "sender").await;
    assert!(sender.replayed().await.unwrap().is_empty());
    let (acked, refused, stop) = shared();
    let task = tokio::spawn(load(sender, acked.clone(), refused.clone(), stop));
    assert!(
        eventually(|| acked.lock().unwrap().len() >= 100).await,
        "the load did not get going: {:?}",
        refused.lock().unwrap()
    );
    doomed.signal("KILL");
    task.await.unwrap();
    let acked: Vec<u64> = acked.lock().unwrap().clone();

    let mut late = rs.router(0).raw("late").await;
    let (got, dups) = replayed_to_late(&mut late).await;
    let lost: Vec<&u64> = acked.iter().filter(|id| !got.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "acked and lost: {lost:?} ({} acked)",
        acked.len()
    );
    println!(
        "router killed: {} acked, {} replayed ({} stored but not acked), {dups} duplicates, refused {:?}",
        acked.len(),
        got.len(),
        got.len() - acked.len(),
        refused.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_sigkilled_under_durable_load_loses_nothing_acked() {
    let mut rs = Routers::start(3, 2).await;
    let mut sender = rs.router(0).raw("sender").await;
    assert!(sender.replayed().await.unwrap().is_empty());
    let (acked, refused, stop) = shared();
    let task = tokio::spawn(load(sender, acked.clone(), refused.clone(), stop.clone()));
    assert!(eventually(|| acked.lock().unwrap().len() >= 50).await);
    let leader = rs
        .nats
        .stream_leader("icom_store")
        .await
        .expect("the store's stream has a leader");
    rs.nats.kill(leader);
    let at_kill = acked.lock().unwrap().len();
    // Sends go on once another node leads the stream. Electing it can take
    // NATS several seconds on a loaded machine, and each send meanwhile
    // waits out the store's 5 s timeout: a longer bound than WAIT (a CI
    // run once saw two sends time out in WAIT).
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    while acked.lock().unwrap().len() < at_kill + 50 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sends acked after the leader died: {:?}",
            refused.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    task.await.unwrap();
    let acked: Vec<u64> = acked.lock().unwrap().clone();

    // The late joiner is the client library this time: it hands on each
    // event once, whatever came twice.
    let (_late, mut events) =
        client_support::connect_with(client_support::config(rs.router(1), "late")).await;
    let mut got: Vec<u64> = Vec::new();
    let want: BTreeSet<u64> = acked.iter().copied().collect();
    let all = tokio::time::timeout(WAIT, async {
        while !want.iter().all(|id| got.contains(id)) {
            got.push(client_support::next_event(&mut events).await.id);
        }
    })
    .await;
    // And nothing more than once after that.
    while let Ok(Some(e)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), events.next()).await
    {
        got.push(e.id);
    }
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    let lost: Vec<&u64> = want.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        all.is_ok() && lost.is_empty(),
        "acked and lost: {lost:?} ({} acked)",
        acked.len()
    );
    assert_eq!(unique.len(), got.len(), "the client handed on a duplicate");
    let refused = refused.lock().unwrap().clone();
    assert!(
        refused.keys().all(|c| *c == AckCode::Unreachable),
        "a send refused for another reason than the store's election: {refused:?}"
    );
    println!(
        "stream leader killed: {} acked, {} handed on by the client, refused {refused:?}",
        acked.len(),
        got.len(),
    );
}
