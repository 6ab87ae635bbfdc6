//! Commands about the connection: `connect`, `disconnect`, `status`,
//! `peers`, `version`.
//!
//! `icom:peers` answers at once with the other servers connected, as the
//! extension knows them, as a JSON array of server ids; when that is longer
//! than one callback carries, the answer is a handle instead,
//! `{"handle", "size", "pages"}`, whose pages `icom:fetch` returns.
//!
//! `icom:connect [address, server_id]` has the argument order of Forge's
//! ICOM, so that its missions port by changing the extension's name. Both
//! may be empty: an empty address dials the `router` of `icom.toml`; the
//! identity always comes from the certificate, and a non-empty `server_id`
//! that differs from it is reported (an `error` callback, code `identity`).
//! The outcome arrives as `state` callbacks.

use arma_rs::{Context, Group};

use crate::args::{self, Arg};
use crate::guard::guard;
use crate::state::{icom, VERSION};

/// Adds this module's commands to the `icom` group.
pub(crate) fn group(group: Group) -> Group {
    group
        .command("connect", connect)
        .command("disconnect", disconnect)
        .command("status", status)
        .command("peers", peers)
        .command("version", version)
}

fn connect(ctx: Context, address: Arg, server_id: Arg) -> Result<String, String> {
    guard("connect", || {
        let icom = icom(&ctx)?;
        let address = Some(address.0.trim().to_owned()).filter(|a| !a.is_empty());
        let expected = if server_id.0.trim().is_empty() {
            None
        } else {
            Some(args::server(&server_id).map_err(|e| icom.refuse("connect", e.to_string()))?)
        };
        icom.connect(address, expected)
            .map_err(|e| icom.refuse("connect", e))
    })
}

fn disconnect(ctx: Context) -> Result<String, String> {
    guard("disconnect", || Ok(icom(&ctx)?.disconnect()))
}

fn status(ctx: Context) -> Result<String, String> {
    guard("status", || Ok(icom(&ctx)?.status()))
}

fn peers(ctx: Context) -> Result<String, String> {
    guard("peers", || {
        let icom = icom(&ctx)?;
        icom.peers().map_err(|e| icom.refuse("peers", e))
    })
}

fn version() -> &'static str {
    VERSION
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arma_rs::testing::Result as Handled;
    use serde_json::Value;

    use crate::testing::{callback, extension, files_config, test_config};

    #[test]
    fn version_and_status_answer_without_a_connection() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension(dir.path(), None);
        let (out, code) = ext.call("icom:version", None);
        assert_eq!((out.as_str(), code), (env!("CARGO_PKG_VERSION"), 0));
        let (out, code) = ext.call("icom:status", None);
        assert_eq!(code, 0, "{out}");
        let status: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(status["state"], "idle");
        assert_eq!(status["shed"]["total"], 0);
        assert!(status["config_error"].is_string());
        // the no-argument form works too
        let (out, code) = ext.call("icom:status", Some(vec![]));
        assert_eq!(code, 0, "{out}");
        // nobody is known without a session
        assert_eq!(ext.call("icom:peers", None), ("[]".to_owned(), 0));
    }

    #[test]
    fn a_missing_config_is_reported_by_callback() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension(dir.path(), Some(dir.path().join("missing.toml")));
        let (ticket, code) = ext.call("icom:connect", Some(vec![r#""""#.into(), r#""""#.into()]));
        assert_eq!(code, 0, "{ticket}");
        assert!(ticket.parse::<u64>().is_ok(), "{ticket}");
        let error = callback(&ext, "error", Duration::from_secs(5));
        assert_eq!(error["code"], "config");
        let state = callback(&ext, "state", Duration::from_secs(5));
        assert_eq!(state["state"], "disconnected");
    }

    #[test]
    fn connect_reports_states_and_a_second_connect_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens there: the client keeps trying.
        let config = test_config(dir.path(), "127.0.0.1:9", "eu-1", "");
        let ext = extension(dir.path(), Some(config));
        let (_, code) = ext.call("icom:connect", Some(vec!["".into(), "eu-1".into()]));
        assert_eq!(code, 0);
        let state = callback(&ext, "state", Duration::from_secs(5));
        assert_eq!(state["state"], "connecting");
        assert_eq!(state["router"], "127.0.0.1:9");
        let (out, code) = ext.call("icom:connect", Some(vec!["".into(), "".into()]));
        assert_eq!(code, 0, "{out}");
        // another address while a session runs is an error
        let (out, code) = ext.call(
            "icom:connect",
            Some(vec![r#""127.0.0.1:10""#.into(), "".into()]),
        );
        assert_eq!(code, 9);
        assert!(out.contains("disconnect first"), "{out}");
        let (out, _) = ext.call("icom:disconnect", Some(vec![]));
        assert!(out.parse::<u64>().is_ok(), "{out}");
        let closed = ext.callback_handler(
            |_, func, data| match (func, data) {
                ("state", Some(arma_rs::Value::String(s))) if s.contains("\"closed\"") => {
                    Handled::Ok(())
                }
                _ => Handled::<(), ()>::Continue,
            },
            Duration::from_secs(10),
        );
        assert_eq!(closed, Handled::Ok(()));
    }

    /// With `routers = [silent, live]`, the extension dials the first, gives
    /// it up, connects to the second, and says which router it is on: in the
    /// `connected` state and in `status`.
    #[test]
    fn the_router_it_is_on_is_reported() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cluster = rt.block_on(icom_tests::TestCluster::start());
        let silent = icom_tests::silent_udp_socket();
        let (dead, live) = (
            silent.local_addr().unwrap().to_string(),
            cluster.addr().to_string(),
        );
        let dir = tempfile::tempdir().unwrap();
        let me = cluster.client_files("eu-1");
        let config = files_config(
            dir.path(),
            &format!("routers = [\"{dead}\", \"{live}\"]"),
            &me,
            "connect_timeout_ms = 1000\n",
        );
        let ext = extension(dir.path(), Some(config));
        let (_, code) = ext.call("icom:connect", Some(vec!["".into(), "".into()]));
        assert_eq!(code, 0);
        let connecting = callback(&ext, "state", Duration::from_secs(5));
        assert_eq!(connecting["state"], "connecting");
        assert_eq!(connecting["routers"], serde_json::json!([dead, live]));
        let connected = loop {
            let state = callback(&ext, "state", Duration::from_secs(20));
            if state["state"] == "connected" {
                break state;
            }
        };
        assert_eq!(connected["router"], live.as_str());
        assert_eq!(connected["server_id"], "eu-1");
        let status: Value = serde_json::from_str(&ext.call("icom:status", None).0).unwrap();
        assert_eq!(status["state"], "connected");
        assert_eq!(status["router"], live.as_str());
        assert_eq!(status["routers"], serde_json::json!([dead, live]));
        assert_eq!(ext.call("icom:disconnect", Some(vec![])).1, 0);
        drop(silent);
    }

    /// `disconnect` and `connect` in one frame, as a mission moving to
    /// another router does: the old session's `closed` comes before the new
    /// one's states, never after (the old client takes a while to close).
    #[test]
    fn a_reconnect_in_one_frame_ends_connected() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cluster = rt.block_on(icom_tests::TestCluster::start());
        let dir = tempfile::tempdir().unwrap();
        let me = cluster.client_files("eu-1");
        let config = files_config(
            dir.path(),
            &format!("routers = [\"{}\"]", cluster.addr()),
            &me,
            "",
        );
        let ext = extension(dir.path(), Some(config));
        let connected = |ext: &arma_rs::testing::Extension| loop {
            if callback(ext, "state", Duration::from_secs(20))["state"] == "connected" {
                break;
            }
        };
        assert_eq!(
            ext.call("icom:connect", Some(vec!["".into(), "".into()])).1,
            0
        );
        connected(&ext);
        assert_eq!(ext.call("icom:disconnect", Some(vec![])).1, 0);
        assert_eq!(
            ext.call("icom:connect", Some(vec!["".into(), "".into()])).1,
            0
        );
        let closed = callback(&ext, "state", Duration::from_secs(5));
        assert_eq!(closed["state"], "closed", "{closed}");
        assert_eq!(closed["router"], cluster.addr().to_string());
        connected(&ext);
        // Nothing after: the old session's close says nothing more.
        let late = ext.callback_handler(
            |_, func, data| match (func, data) {
                ("state", Some(arma_rs::Value::String(s))) => Handled::Ok(s),
                _ => Handled::<String, ()>::Continue,
            },
            Duration::from_secs(3),
        );
        assert!(!matches!(late, Handled::Ok(_)), "{late:?}");
        let status: Value = serde_json::from_str(&ext.call("icom:status", None).0).unwrap();
        assert_eq!(status["state"], "connected");
    }

    #[test]
    fn bad_arguments_get_readable_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension(dir.path(), None);
        let (out, code) = ext.call("icom:connect", Some(vec!["".into(), "bad id!".into()]));
        assert_eq!(code, 9);
        assert!(out.starts_with("bad server id"), "{out}");
        // wrong count: arma-rs answers 2x (x = the count given)
        let (_, code) = ext.call("icom:connect", Some(vec!["".into()]));
        assert_eq!(code, 21);
        let (_, code) = ext.call("icom:nonsense", Some(vec![]));
        assert_eq!(code, 1);
    }
}
