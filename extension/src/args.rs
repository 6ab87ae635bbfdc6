//! Command arguments as the game passes them, and their parsing into what
//! the commands need. Every failure is a sentence a mission maker can act on.
//!
//! `callExtension` converts each argument with `str`: a string arrives
//! quoted, inner quotes doubled (`"he said ""hi"""`), a number bare (`5`).
//! arma-rs's own `String` refuses unquoted text in release builds and takes
//! it in debug builds; [`Arg`] takes both in every build, so that a number
//! given where text is expected, or text from a caller that does not quote,
//! still reads the same.

use std::time::Duration;

use arma_rs::{FromArma, FromArmaError};
use icom_protocol::{validate_event_name, validate_server_id, Persist, Target};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// One argument, with SQF's quoting taken off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Arg(pub(crate) String);

impl FromArma for Arg {
    fn from_arma(s: String) -> Result<Arg, FromArmaError> {
        Ok(Arg(unquote(s)))
    }
}

impl Arg {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Takes off the quotes `str` puts around a string and undoubles the
/// quotes inside; anything else is returned as it is.
pub(crate) fn unquote(s: String) -> String {
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) if inner.contains('"') => inner.replace("\"\"", "\""),
        Some(inner) => inner.to_owned(),
        None => s,
    }
}

/// A bad argument: the message says which one and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ArgError {
    /// The server id is not a valid identity.
    #[error("bad server id {:?}: {}", Shown(.0), .1)]
    Server(String, String),
    /// The event name is empty, too long or has control characters.
    #[error("bad event name {:?}: {}", Shown(.0), .1)]
    Event(String, String),
    /// The target is not one of the documented shapes.
    #[error("bad target {:?}: {}", Shown(.0), .1)]
    Target(String, String),
    /// The options are not a JSON map of the known keys.
    #[error("bad options {:?}: {}", Shown(.0), .1)]
    Options(String, String),
    /// A number of seconds that is not a positive number in range.
    #[error("bad {what} {:?}: expected seconds, a number above 0 and at most {max}", Shown(.text))]
    Seconds {
        /// Which argument.
        what: &'static str,
        /// What was given.
        text: String,
        /// The largest accepted value.
        max: u64,
    },
    /// An id that is not one ICOM handed out.
    #[error("bad {what} {:?}: {why}", Shown(.text))]
    Id {
        /// Which id.
        what: &'static str,
        /// What was given.
        text: String,
        /// What was expected.
        why: &'static str,
    },
    /// A persist id that is empty, too long or has control characters.
    #[error("bad persist id {:?}: {}", Shown(.0), .1)]
    PersistId(String, String),
}

/// How many characters of a bad argument its error repeats: enough to
/// recognise it, and the sentence stays far within the game's output
/// buffer (a longer one would come back as nothing, code 4).
const SHOWN_CHARS: usize = 64;

/// A bad argument as its error shows it: quoted, and cut after
/// [`SHOWN_CHARS`] characters, with its length.
pub(crate) struct Shown<'a>(pub(crate) &'a str);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(SHOWN_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// A server id (a certificate CN).
///
/// # Errors
/// [`ArgError::Server`].
pub(crate) fn server(arg: &Arg) -> Result<String, ArgError> {
    validate_server_id(arg.as_str())
        .map(|()| arg.0.clone())
        .map_err(|e| ArgError::Server(arg.0.clone(), e.to_string()))
}

/// An event name.
///
/// # Errors
/// [`ArgError::Event`].
pub(crate) fn event(arg: &Arg) -> Result<String, ArgError> {
    validate_event_name(arg.as_str())
        .map(|()| arg.0.clone())
        .map_err(|e| ArgError::Event(arg.0.clone(), e.to_string()))
}

/// A target, as JSON (`toJSON` of a string, array or HashMap):
/// - `"all"`, `"everyone"`: the keywords;
/// - `{"server": "a"}`, `{"servers": [...]}`, `{"group": "eu"}`,
///   `{"except": [...]}`: the maps of docs/PROTOCOL.md;
/// - any other string: that one server; an array of strings: those servers.
///
/// The bare words `all`, `everyone` and a bare server id are read the same.
///
/// # Errors
/// [`ArgError::Target`].
pub(crate) fn target(arg: &Arg) -> Result<Target, ArgError> {
    let text = arg.as_str().trim();
    let bad = |why: &str| ArgError::Target(arg.0.clone(), why.to_owned());
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        // Not JSON: a bare keyword or server id.
        Err(_) => Value::String(text.to_owned()),
    };
    let target = match value {
        Value::String(s) => match s.as_str() {
            "all" => Target::All,
            "everyone" => Target::Everyone,
            _ => Target::Server(s),
        },
        Value::Array(items) => Target::Servers(strings(items).ok_or_else(|| {
            bad("an array target must hold server ids (strings)")
        })?),
        Value::Object(_) => serde_json::from_value(value).map_err(|_| {
            bad(r#"expected {"server": id}, {"servers": [ids]}, {"group": name} or {"except": [ids]}"#)
        })?,
        _ => {
            return Err(bad(
                r#"expected "all", "everyone", a server id, an array of ids or a map"#,
            ))
        }
    };
    check_target(&target).map_err(|why| bad(&why))?;
    Ok(target)
}

fn strings(items: Vec<Value>) -> Option<Vec<String>> {
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// The checks the router would answer `invalid` for, made before sending
/// so that the mission maker sees them at once.
fn check_target(target: &Target) -> Result<(), String> {
    let ids: &[String] = match target {
        Target::Server(id) => std::slice::from_ref(id),
        Target::Servers(ids) if ids.is_empty() => return Err("the servers list is empty".into()),
        Target::Servers(ids) | Target::Except(ids) => ids,
        Target::Group(g) if g.is_empty() => return Err("the group name is empty".into()),
        Target::Group(_) | Target::All | Target::Everyone => &[],
    };
    for id in ids {
        validate_server_id(id).map_err(|e| format!("{:?}: {e}", Shown(id)))?;
    }
    Ok(())
}

/// The options of `send_to`, from a JSON map (empty text or `{}` for none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SendOptions {
    /// Store it for servers that connect later.
    pub(crate) persist: Option<Persist>,
    /// Keep it this long for offline named recipients.
    pub(crate) ttl: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsFile {
    #[serde(default)]
    persist: Option<Value>,
    #[serde(default)]
    ttl: Option<f64>,
}

/// The longest `ttl`: what fits `ttl_ms` (a u32 of milliseconds, ~49 days).
pub(crate) const MAX_TTL_SECS: u64 = u32::MAX as u64 / 1000;

/// Parses `send_to`'s options: `{"persist": true | "id" | false, "ttl": seconds}`.
///
/// `persist: true` lets the router choose the id (the ack carries it); a
/// string is a custom id, which a later persistent send replaces.
///
/// # Errors
/// [`ArgError::Options`] or [`ArgError::PersistId`].
pub(crate) fn options(arg: &Arg) -> Result<SendOptions, ArgError> {
    let text = arg.as_str().trim();
    if text.is_empty() {
        return Ok(SendOptions::default());
    }
    let bad = |why: String| ArgError::Options(arg.0.clone(), why);
    let file: OptionsFile = serde_json::from_str(text).map_err(|e| {
        bad(format!(
            "expected a map like {{\"persist\": true, \"ttl\": 60}} ({e})"
        ))
    })?;
    let persist = match file.persist {
        None | Some(Value::Null | Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(Persist::Auto),
        Some(Value::String(id)) => {
            icom_protocol::validate_persist_id(&id)
                .map_err(|e| ArgError::PersistId(id.clone(), e.to_string()))?;
            Some(Persist::Id(id))
        }
        Some(_) => return Err(bad("persist must be true, false or a persist id".into())),
    };
    let ttl = match file.ttl {
        None => None,
        Some(t) => Some(seconds_value(t, MAX_TTL_SECS).ok_or_else(|| {
            bad(format!(
                "ttl must be seconds above 0 and at most {MAX_TTL_SECS}"
            ))
        })?),
    };
    Ok(SendOptions { persist, ttl })
}

/// A number of seconds above 0 and at most `max`, at least 1 ms.
///
/// # Errors
/// [`ArgError::Seconds`].
pub(crate) fn seconds(arg: &Arg, what: &'static str, max: u64) -> Result<Duration, ArgError> {
    arg.as_str()
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| seconds_value(s, max))
        .ok_or_else(|| ArgError::Seconds {
            what,
            text: arg.0.clone(),
            max,
        })
}

fn seconds_value(s: f64, max: u64) -> Option<Duration> {
    if !(s > 0.0 && s <= max as f64) {
        return None;
    }
    Some(Duration::from_secs_f64(s).max(Duration::from_millis(1)))
}

/// An id ICOM handed out as a string (a command's result).
///
/// # Errors
/// [`ArgError::Id`].
pub(crate) fn id(arg: &Arg, what: &'static str) -> Result<u64, ArgError> {
    arg.as_str()
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| ArgError::Id {
            what,
            text: arg.0.clone(),
            why: "expected the id string ICOM returned",
        })
}

/// The request handle of a received event (`_meta get "request"`):
/// `"<id>@<from>"`.
///
/// # Errors
/// [`ArgError::Id`].
pub(crate) fn request(arg: &Arg) -> Result<(u64, String), ArgError> {
    let bad = || ArgError::Id {
        what: "request id",
        text: arg.0.clone(),
        why: "expected the \"request\" of the received event, like \"1732233600000001@eu-1\"",
    };
    let (id, from) = arg.as_str().trim().split_once('@').ok_or_else(bad)?;
    let id = id
        .parse::<u64>()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(bad)?;
    validate_server_id(from).map_err(|_| bad())?;
    Ok((id, from.to_owned()))
}

/// A persist id given to `forget`.
///
/// # Errors
/// [`ArgError::PersistId`].
pub(crate) fn persist_id(arg: &Arg) -> Result<String, ArgError> {
    icom_protocol::validate_persist_id(arg.as_str())
        .map(|()| arg.0.clone())
        .map_err(|e| ArgError::PersistId(arg.0.clone(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Arg {
        Arg(s.to_owned())
    }

    #[test]
    fn quoting_comes_off_as_str_put_it_on() {
        assert_eq!(unquote(r#""text""#.into()), "text");
        assert_eq!(unquote(r#""he said ""hi""""#.into()), r#"he said "hi""#);
        assert_eq!(unquote(r#""""#.into()), "");
        assert_eq!(unquote("5".into()), "5");
        assert_eq!(unquote("plain".into()), "plain");
        assert_eq!(unquote(r#"""#.into()), r#"""#);
        // toJSON of a HashMap, then str: what the game passes for data.
        assert_eq!(unquote(r#""{""a"":[1,""x""]}""#.into()), r#"{"a":[1,"x"]}"#);
    }

    #[test]
    fn targets() {
        assert_eq!(target(&a(r#""all""#)).unwrap(), Target::All);
        assert_eq!(target(&a("all")).unwrap(), Target::All);
        assert_eq!(target(&a(r#""everyone""#)).unwrap(), Target::Everyone);
        assert_eq!(target(&a("eu-1")).unwrap(), Target::Server("eu-1".into()));
        assert_eq!(
            target(&a(r#"{"server":"all"}"#)).unwrap(),
            Target::Server("all".into())
        );
        assert_eq!(
            target(&a(r#"["a","b"]"#)).unwrap(),
            Target::Servers(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            target(&a(r#"{"group":"eu"}"#)).unwrap(),
            Target::Group("eu".into())
        );
        assert_eq!(
            target(&a(r#"{"except":[]}"#)).unwrap(),
            Target::Except(vec![])
        );
        for bad in [
            "[]",
            "[1]",
            "5",
            r#"{"servers":[]}"#,
            r#"{"planet":"x"}"#,
            "bad id!",
            r#"{"server":"a b"}"#,
        ] {
            let err = target(&a(bad)).unwrap_err();
            assert!(err.to_string().starts_with("bad target"), "{bad}: {err}");
        }
    }

    #[test]
    fn options_parse() {
        assert_eq!(options(&a("")).unwrap(), SendOptions::default());
        assert_eq!(options(&a("{}")).unwrap(), SendOptions::default());
        let o = options(&a(r#"{"persist":true,"ttl":60}"#)).unwrap();
        assert_eq!(o.persist, Some(Persist::Auto));
        assert_eq!(o.ttl, Some(Duration::from_secs(60)));
        let o = options(&a(r#"{"persist":"restart-notice"}"#)).unwrap();
        assert_eq!(o.persist, Some(Persist::Id("restart-notice".into())));
        assert_eq!(options(&a(r#"{"persist":false}"#)).unwrap().persist, None);
        assert_eq!(
            options(&a(r#"{"ttl":0.0001}"#)).unwrap().ttl,
            Some(Duration::from_millis(1))
        );
        for bad in [
            r#"{"ttl":0}"#,
            r#"{"ttl":-1}"#,
            r#"{"ttl":1e12}"#,
            r#"{"persist":5}"#,
            r#"{"persist":""}"#,
            r#"{"persistent":true}"#,
            "[1]",
        ] {
            assert!(options(&a(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_and_ids() {
        assert_eq!(
            seconds(&a("2.5"), "timeout", 60).unwrap(),
            Duration::from_millis(2500)
        );
        for bad in ["0", "-1", "61", "x", "", "NaN", "inf"] {
            let err = seconds(&a(bad), "timeout", 60).unwrap_err();
            assert!(err.to_string().contains("timeout"), "{err}");
        }
        assert_eq!(
            id(&a("1732233600000001"), "id").unwrap(),
            1_732_233_600_000_001
        );
        assert!(id(&a("0"), "id").is_err());
        assert!(id(&a("1.7e15"), "id").is_err());
        assert_eq!(request(&a("17@eu-1")).unwrap(), (17, "eu-1".to_owned()));
        for bad in ["17", "@eu-1", "x@eu-1", "17@", "17@a b"] {
            assert!(request(&a(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(server(&a("eu-1")).is_ok());
        assert!(server(&a("")).is_err());
        assert!(event(&a("supply_drop")).is_ok());
        let err = event(&a("")).unwrap_err();
        assert!(err.to_string().starts_with("bad event name"), "{err}");
        assert!(event(&a(&"x".repeat(129))).is_err());
        assert!(persist_id(&a("restart-notice")).is_ok());
        assert!(persist_id(&a("")).is_err());
    }
}
