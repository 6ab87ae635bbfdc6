//! Commands that send: `send`, `broadcast`, `send_to`, `request`, `reply`,
//! `forget`, and Forge's `send_event` (the same as `send`).
//!
//! Each returns at once with a ticket (an id, as a string); the router's
//! answer comes later as an `ack` callback with that id (`request`: a
//! `reply` callback). A mistake in the arguments is the command's own
//! error (return code 9 with a sentence), so it shows where it was made.

use arma_rs::{Context, Group};
use icom_client::SendOptions;
use icom_protocol::Target;

use crate::args::{self, Arg, ArgError};
use crate::guard::guard;
use crate::state::{icom, Icom};

/// The longest `request` timeout, in seconds.
const MAX_TIMEOUT_SECS: u64 = 3600;

/// Adds this module's commands to the `icom` group.
pub(crate) fn group(group: Group) -> Group {
    group
        .command("send", send)
        .command("send_event", send)
        .command("broadcast", broadcast)
        .command("send_to", send_to)
        .command("request", request)
        .command("reply", reply)
        .command("forget", forget)
}

fn send(ctx: Context, server: Arg, event: Arg, data: Arg) -> Result<String, String> {
    guard("send", || {
        let icom = icom(&ctx)?;
        refused(icom, "send", || {
            let target = Target::Server(args::server(&server)?);
            let event = args::event(&event)?;
            Ok((target, event))
        })
        .and_then(|(target, event)| {
            let data = icom.data(data.0).map_err(|e| icom.refuse("send", e))?;
            icom.send(target, event, data, SendOptions::new())
        })
    })
}

fn broadcast(ctx: Context, event: Arg, data: Arg) -> Result<String, String> {
    guard("broadcast", || {
        let icom = icom(&ctx)?;
        let event = refused(icom, "broadcast", || args::event(&event))?;
        let data = icom.data(data.0).map_err(|e| icom.refuse("broadcast", e))?;
        icom.send(Target::All, event, data, SendOptions::new())
    })
}

fn send_to(
    ctx: Context,
    target: Arg,
    event: Arg,
    data: Arg,
    options: Arg,
) -> Result<String, String> {
    guard("send_to", || {
        let icom = icom(&ctx)?;
        let (target, event, options) = refused(icom, "send_to", || {
            Ok((
                args::target(&target)?,
                args::event(&event)?,
                args::options(&options)?,
            ))
        })?;
        let data = icom.data(data.0).map_err(|e| icom.refuse("send_to", e))?;
        let options = SendOptions {
            persist: options.persist,
            ttl: options.ttl,
        };
        icom.send(target, event, data, options)
    })
}

fn request(
    ctx: Context,
    server: Arg,
    event: Arg,
    data: Arg,
    timeout: Arg,
) -> Result<String, String> {
    guard("request", || {
        let icom = icom(&ctx)?;
        let (server, event, timeout) = refused(icom, "request", || {
            Ok((
                args::server(&server)?,
                args::event(&event)?,
                args::seconds(&timeout, "timeout", MAX_TIMEOUT_SECS)?,
            ))
        })?;
        let data = icom.data(data.0).map_err(|e| icom.refuse("request", e))?;
        icom.request(server, event, data, timeout)
    })
}

fn reply(ctx: Context, request: Arg, data: Arg) -> Result<String, String> {
    guard("reply", || {
        let icom = icom(&ctx)?;
        let (id, from) = refused(icom, "reply", || args::request(&request))?;
        let data = icom.data(data.0).map_err(|e| icom.refuse("reply", e))?;
        icom.reply(id, &from, data)
            .map_err(|e| icom.refuse("reply", e))
    })
}

fn forget(ctx: Context, persist_id: Arg) -> Result<String, String> {
    guard("forget", || {
        let icom = icom(&ctx)?;
        let persist_id = refused(icom, "forget", || args::persist_id(&persist_id))?;
        icom.forget(persist_id)
    })
}

/// Parses arguments; a mistake is logged and returned as the error text.
fn refused<T>(
    icom: &Icom,
    command: &str,
    parse: impl FnOnce() -> Result<T, ArgError>,
) -> Result<T, String> {
    parse().map_err(|e| icom.refuse(command, e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::testing::{callback, extension, test_config};

    fn strs(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn sending_before_connect_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension(dir.path(), None);
        for (cmd, args) in [
            ("icom:send", strs(&["eu-2", "supply_drop", "{}"])),
            ("icom:send_event", strs(&["eu-2", "supply_drop", "{}"])),
            ("icom:broadcast", strs(&["alert", "null"])),
            ("icom:send_to", strs(&["all", "alert", "1", ""])),
            ("icom:request", strs(&["eu-2", "bank", "{}", "5"])),
            ("icom:forget", strs(&["restart-notice"])),
        ] {
            let (out, code) = ext.call(cmd, args);
            assert_eq!(code, 9, "{cmd}: {out}");
            assert!(out.contains("icom:connect"), "{cmd}: {out}");
        }
    }

    #[test]
    fn bad_arguments_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension(dir.path(), None);
        for (cmd, args, needle) in [
            ("icom:send", strs(&["a b", "e", "{}"]), "bad server id"),
            ("icom:send", strs(&["eu-2", "", "{}"]), "bad event name"),
            (
                "icom:send",
                strs(&["eu-2", "e", "{'a':1}"]),
                "not valid JSON",
            ),
            ("icom:send", strs(&["eu-2", "e", "[1,"]), "not valid JSON"),
            ("icom:broadcast", strs(&["e", "{\"a\":}"]), "not valid JSON"),
            ("icom:send_to", strs(&["[]", "e", "1", ""]), "bad target"),
            (
                "icom:send_to",
                strs(&["all", "e", "1", "{\"ttl\":0}"]),
                "bad options",
            ),
            (
                "icom:send_to",
                strs(&["all", "e", "1", "{\"jip\":1}"]),
                "bad options",
            ),
            (
                "icom:request",
                strs(&["eu-2", "e", "1", "0"]),
                "bad timeout",
            ),
            (
                "icom:request",
                strs(&["eu-2", "e", "1", "soon"]),
                "bad timeout",
            ),
            ("icom:reply", strs(&["17", "1"]), "bad request id"),
            (
                "icom:reply",
                strs(&["17@eu-2", "1"]),
                "no received event 17@eu-2",
            ),
            ("icom:forget", strs(&[""]), "bad persist id"),
        ] {
            let (out, code) = ext.call(cmd, args.clone());
            assert_eq!(code, 9, "{cmd} {args:?}: {out}");
            assert!(out.contains(needle), "{cmd} {args:?}: {out}");
        }
        // too deep
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let (out, code) = ext.call("icom:broadcast", strs(&["e", &deep]));
        assert_eq!(code, 9);
        assert!(out.contains("nested deeper"), "{out}");
        // wrong argument counts: arma-rs's 2x codes
        assert_eq!(ext.call("icom:send", strs(&["a", "b"])).1, 22);
        assert_eq!(ext.call("icom:send_to", strs(&["a"])).1, 21);
        // and the refusals are logged
        let errors = dir.path().join("logs/errors.log");
        for _ in 0..200 {
            if std::fs::read_to_string(&errors).is_ok_and(|t| t.contains("bad persist id")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("errors.log: {:?}", std::fs::read_to_string(&errors));
    }

    #[test]
    fn an_overlong_argument_is_refused_with_a_sentence_that_fits() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension(dir.path(), None);
        let long = "x".repeat(11_000);
        let many: Vec<String> = (0..1_000)
            .map(|i| format!("\"server-{i}\""))
            .chain(["\"a b\"".to_owned()])
            .collect();
        let many = format!("[{}]", many.join(","));
        for (cmd, args, needle) in [
            (
                "icom:forget",
                strs(&[&format!("\"{long}\"")]),
                "bad persist id",
            ),
            ("icom:send", strs(&["eu-2", &long, "{}"]), "bad event name"),
            ("icom:send", strs(&[&long, "e", "{}"]), "bad server id"),
            ("icom:send_to", strs(&[&many, "e", "1", ""]), "bad target"),
            (
                "icom:send_to",
                strs(&["all", "e", "1", &format!("{{\"persist\":\"{long}\"}}")]),
                "bad persist id",
            ),
        ] {
            // Before, the sentence repeated the whole argument: longer than
            // the output buffer, it came back as code 4 and no text.
            let (out, code) = ext.call(cmd, args);
            assert_eq!(code, 9, "{cmd}: {} bytes", out.len());
            assert!(out.contains(needle), "{cmd}: {out}");
            assert!(
                out.contains("(11000 bytes)") || out.contains("\"a b\""),
                "{cmd}: {out}"
            );
            assert!(out.len() < 1000, "{cmd}: {} bytes", out.len());
        }
    }

    #[test]
    fn a_send_that_cannot_reach_the_router_gets_a_failed_ack() {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(
            dir.path(),
            "127.0.0.1:9",
            "eu-1",
            "[queue]\ntimeout_ms = 200\n",
        );
        let ext = extension(dir.path(), Some(config));
        assert_eq!(ext.call("icom:connect", strs(&["", ""])).1, 0);
        let (ticket, code) = ext.call(
            "icom:send",
            strs(&["\"eu-2\"", "\"supply_drop\"", "\"{\"\"x\"\":1}\""]),
        );
        assert_eq!(code, 0, "{ticket}");
        let ack = callback(&ext, "ack", Duration::from_secs(10));
        assert_eq!(ack["id"], ticket.as_str());
        assert_eq!(ack["ok"], false);
        assert_eq!(ack["error"]["code"], "timeout", "{ack}");
        // a request fails the same way, as its reply
        let (ticket, code) = ext.call("icom:request", strs(&["eu-2", "bank", "{}", "0.5"]));
        assert_eq!(code, 0, "{ticket}");
        let reply = callback(&ext, "reply", Duration::from_secs(10));
        assert_eq!(reply["id"], ticket.as_str());
        assert!(reply["error"]["code"].is_string(), "{reply}");
    }
}
