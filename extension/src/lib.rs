//! The ICOM game extension: the library Arma 3 loads from `@icom/` as
//! `icom_x64.so` / `icom_x64.dll`, built with arma-rs.
//!
//! Every command is in the group `icom` (`"icom" callExtension ["icom:send",
//! [...]]`) and returns at once, with an id or a readable error; the network
//! runs on a tokio runtime that the extension owns, and results come back
//! through the arma-rs callback (name `icom`, function = the kind, data =
//! JSON text). This file only composes the command groups; each module owns
//! its commands and their tests, as in arma-rs-example.
//!
//! | command | arguments | returns |
//! |---|---|---|
//! | `connect` | address, server id (either may be `""`) | ticket |
//! | `disconnect` | | ticket |
//! | `status` | | JSON |
//! | `version` | | version |
//! | `send`, `send_event` | server, event, JSON | ticket (`ack` later) |
//! | `broadcast` | event, JSON | ticket (`ack` later) |
//! | `send_to` | target JSON, event, JSON, options JSON | ticket (`ack` later) |
//! | `request` | server, event, JSON, timeout seconds | ticket (`reply` later) |
//! | `reply` | request (`"<id>@<from>"`), JSON | ticket (`ack` later) |
//! | `forget` | persist id | ticket (`ack` later) |
//! | `fetch` | handle, page | one page of a large payload |
//! | `ready` | count | `""` (credit for handled callbacks) |

mod args;
mod bridge;
mod callback;
mod config;
mod connection;
mod events;
mod exchange;
mod fetch;
mod guard;
mod link;
mod locate;
mod logs;
mod outbox;
mod payloads;
mod requests;
mod state;

use arma_rs::{arma, Extension, Group};

/// The JSON ↔ MessagePack bridge with its default bounds, for the fuzz
/// targets (`fuzz/fuzz_targets/json_bridge.rs`). Not part of any API.
#[doc(hidden)]
pub mod fuzzing {
    /// JSON text (as `toJSON` writes it) to one MessagePack value.
    ///
    /// # Errors
    /// The bridge's error, as text.
    pub fn json_to_msgpack(text: &str) -> Result<Vec<u8>, String> {
        crate::bridge::json_to_msgpack(text, crate::bridge::Bounds::default())
            .map_err(|e| e.to_string())
    }

    /// One MessagePack value to JSON text (as `fromJSON` reads it).
    ///
    /// # Errors
    /// The bridge's error, as text.
    pub fn msgpack_to_json(bytes: &[u8]) -> Result<String, String> {
        crate::bridge::msgpack_to_json(bytes, crate::bridge::Bounds::default())
            .map_err(|e| e.to_string())
    }
}

#[arma]
fn init() -> Extension {
    let extension = build();
    state::Icom::attach(&extension, state::Setup::discover());
    extension
}

/// The extension's commands, without its state.
fn build() -> Extension {
    let icom = fetch::group(events::group(connection::group(Group::new())));
    Extension::build()
        .version(state::VERSION.into())
        .allow_no_args()
        .group("icom", icom)
        .finish()
}

/// Helpers for the modules' tests: an extension with its state, driven
/// through arma-rs's testing harness.
#[cfg(test)]
mod testing {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use arma_rs::testing::Result as Handled;
    use arma_rs::Value;

    use crate::state::{Icom, Setup};

    /// The extension, logging under `dir`, with `config` if given.
    pub(crate) fn extension(dir: &Path, config: Option<PathBuf>) -> arma_rs::testing::Extension {
        let extension = crate::build();
        Icom::attach(&extension, Setup::testing(dir, config));
        extension.testing()
    }

    /// The data of the next callback of `kind`, skipping others.
    pub(crate) fn callback(
        ext: &arma_rs::testing::Extension,
        kind: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let found = ext.callback_handler(
            |name, func, data| {
                assert_eq!(name, "icom");
                match (func == kind, data) {
                    (true, Some(Value::String(s))) => Handled::Ok(s),
                    _ => Handled::<String, ()>::Continue,
                }
            },
            timeout,
        );
        match found {
            Handled::Ok(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("no {kind} callback: {other:?}"),
        }
    }

    /// Writes an `icom.toml` into `dir` with the first line `routers`
    /// (`router = ...` or `routers = [...]`), the TLS files of `me`, and
    /// `extra` TOML; returns its path.
    pub(crate) fn files_config(
        dir: &Path,
        routers: &str,
        me: &icom_tests::ClientFiles,
        extra: &str,
    ) -> PathBuf {
        let path = dir.join("icom.toml");
        let text = format!(
            "{routers}\nserver_name = \"localhost\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n{extra}",
            me.ca.display().to_string(),
            me.cert.display().to_string(),
            me.key.display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes certificates for `id` and an `icom.toml` for `router` into
    /// `dir`, with `extra` TOML appended; returns the config's path.
    pub(crate) fn test_config(dir: &Path, router: &str, id: &str, extra: &str) -> PathBuf {
        let pki = icom_certs::testing::TestPki::new();
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        pki.write_to(&keys).unwrap();
        let client = pki.client(id);
        std::fs::write(keys.join("server.pem"), &client.cert_pem).unwrap();
        std::fs::write(keys.join("server.key"), &client.key_pem).unwrap();
        let path = dir.join("icom.toml");
        let text = format!(
            "router = \"{router}\"\nserver_name = \"localhost\"\nca = \"keys/ca.pem\"\n\
             cert = \"keys/server.pem\"\nkey = \"keys/server.key\"\nconnect_timeout_ms = 500\n\
             [reconnect]\ninitial_ms = 50\nmax_ms = 200\n{extra}"
        );
        std::fs::write(&path, text).unwrap();
        let _ = Duration::ZERO;
        path
    }
}
