//! Commands the addon's callback handler uses: `fetch` pulls a page of a
//! large payload, `ready` returns credit for handled callbacks.
//!
//! A callback whose JSON would not fit the game's output buffer arrives as
//! `large` with `{"kind", "handle", "size", "pages"}`; SQF calls
//! `icom:fetch [handle, page]` for pages 0 to pages − 1 and joins them. A
//! payload leaves the store once each page was fetched, or when it expires.

use arma_rs::{Context, Group};

use crate::args::{self, Arg};
use crate::guard::guard;
use crate::state::icom;

/// The most credit one `ready` may return.
const MAX_CREDIT: usize = 1_000_000;

/// Adds this module's commands to the `icom` group.
pub(crate) fn group(group: Group) -> Group {
    group.command("fetch", fetch).command("ready", ready)
}

fn fetch(ctx: Context, handle: Arg, page: Arg) -> Result<String, String> {
    guard("fetch", || {
        let icom = icom(&ctx)?;
        let handle =
            args::id(&handle, "payload handle").map_err(|e| icom.refuse("fetch", e.to_string()))?;
        let page = page.as_str().trim().parse::<usize>().map_err(|_| {
            icom.refuse(
                "fetch",
                format!("bad page {:?}: expected a page number from 0", page.0),
            )
        })?;
        icom.fetch(handle, page)
            .map_err(|e| icom.refuse("fetch", e))
    })
}

fn ready(ctx: Context, count: Arg) -> Result<String, String> {
    guard("ready", || {
        let icom = icom(&ctx)?;
        let n = count
            .as_str()
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| (n as usize).min(MAX_CREDIT))
            .ok_or_else(|| {
                icom.refuse(
                    "ready",
                    format!("bad count {:?}: expected a number of callbacks", count.0),
                )
            })?;
        icom.ready(n);
        Ok(String::new())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arma_rs::testing::Result as Handled;
    use icom_client::{Client, ClientConfig};
    use icom_tests::TestCluster;
    use serde_json::Value;

    use crate::testing::{callback, extension, files_config};

    #[test]
    fn fetch_of_nothing_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension(dir.path(), None);
        let (out, code) = ext.call("icom:fetch", Some(vec!["\"7\"".into(), "0".into()]));
        assert_eq!(code, 9);
        assert!(out.contains("no payload 7"), "{out}");
        let (out, code) = ext.call("icom:fetch", Some(vec!["x".into(), "0".into()]));
        assert_eq!(code, 9);
        assert!(out.contains("payload handle"), "{out}");
        let (out, code) = ext.call("icom:fetch", Some(vec!["7".into(), "-1".into()]));
        assert_eq!(code, 9);
        assert!(out.contains("bad page"), "{out}");
    }

    #[test]
    fn ready_takes_a_count() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension(dir.path(), None);
        assert_eq!(
            ext.call("icom:ready", Some(vec!["12".into()])),
            (String::new(), 0)
        );
        let (out, code) = ext.call("icom:ready", Some(vec!["many".into()]));
        assert_eq!(code, 9);
        assert!(out.contains("bad count"), "{out}");
        let status = ext.call("icom:status", None).0;
        assert!(status.contains("\"credit\":true"), "{status}");
    }

    /// The game takes 10 callbacks, then stops returning credit: the
    /// extension keeps at most its bound waiting, sheds the rest, counts it,
    /// logs it, and says so once credit comes back.
    #[test]
    fn a_game_that_stops_draining_sheds_and_says_so() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cluster = rt.block_on(TestCluster::start());
        let dir = tempfile::tempdir().unwrap();
        let me = cluster.client_files("slow-game");
        let config = files_config(
            dir.path(),
            &format!("router = \"{}\"", me.addr),
            &me,
            "[limits]\ncallbacks = 50\nwindow = 10\ncredit_timeout_ms = 600000\n",
        );
        let ext = extension(dir.path(), Some(config));
        assert_eq!(ext.call("icom:ready", Some(vec!["0".into()])).1, 0);
        assert_eq!(
            ext.call("icom:connect", Some(vec!["".into(), "".into()])).1,
            0
        );
        // Take the state callbacks up to "connected"; the rest of the
        // window is what the game will take of the events.
        let mut taken = 0;
        loop {
            let state = callback(&ext, "state", Duration::from_secs(10));
            taken += 1;
            if state["state"] == "connected" {
                break;
            }
        }
        let fits = 10 - taken;

        let peer = cluster.client_files("fast-peer");
        let (peer, _events) = rt
            .block_on(Client::connect(ClientConfig::new(
                peer.addr.to_string(),
                "localhost",
                peer.ca,
                peer.cert,
                peer.key,
            )))
            .unwrap();
        rt.block_on(async {
            for n in 0..300u32 {
                peer.send("slow-game", "tick", n).await.unwrap();
            }
        });
        // Everything arrived: `fits` handed over, 50 waiting, the rest shed.
        // An event is counted as received a moment before it is queued or
        // shed, so wait until two readings 20 ms apart agree.
        let mut status: Value = Value::Null;
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(20));
            let now: Value = serde_json::from_str(&ext.call("icom:status", None).0).unwrap();
            let settled = now["received"] == 300
                && now["shed"] == status["shed"]
                && now["callbacks"] == status["callbacks"];
            status = now;
            if settled {
                break;
            }
        }
        assert_eq!(status["received"], 300, "{status}");
        assert_eq!(status["callbacks"]["queued"], 50, "{status}");
        assert_eq!(status["callbacks"]["in_flight"], 10, "{status}");
        // Every event was handed over (the window of 10 less the state
        // callbacks it holds: `fits`, give or take a late state callback),
        // is waiting (the bound of 50), or was shed and counted.
        let shed = status["shed"]["event"].as_u64().unwrap_or(0);
        let most = 300 - 50 - fits as u64 + 1;
        assert!((most - 2..=most).contains(&shed), "{status}");
        assert_eq!(status["shed"]["total"], shed, "{status}");

        // Credit again: the first callback after it is the shed notice.
        let handed = ext.callback_handler(
            |_, _, _| Handled::<(), ()>::Continue,
            Duration::from_millis(300),
        );
        assert_eq!(handed, Handled::Timeout);
        assert_eq!(ext.call("icom:ready", Some(vec!["10".into()])).1, 0);
        let notice = callback(&ext, "error", Duration::from_secs(5));
        assert_eq!(notice["code"], "shed");
        assert!(
            notice["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{shed} dropped")),
            "{notice}"
        );
        let errors = dir.path().join("logs/errors.log");
        for _ in 0..200 {
            if std::fs::read_to_string(&errors).is_ok_and(|t| t.contains("shedding")) {
                rt.block_on(peer.close());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("errors.log: {:?}", std::fs::read_to_string(&errors));
    }
}
