//! Targets (remoteExec's targets, by identity) and their resolution to
//! recipients, given the sender, the connected identities and the groups.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::glob::Glob;
use crate::validate::{validate_server_id, NameError};

/// Whom a `send` is for (docs/PROTOCOL.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One server; it may be the sender itself.
    Server(String),
    /// Several servers; a name listed twice gets the event once.
    Servers(Vec<String>),
    /// The connected members of a config group, the sender excluded.
    Group(String),
    /// Every server but the sender.
    All,
    /// Every server, the sender too.
    Everyone,
    /// Every server but these and the sender.
    Except(Vec<String>),
}

/// Why a target cannot be resolved; the send is acked `invalid`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// `servers` with an empty list.
    #[error("the servers list is empty")]
    EmptyServers,
    /// A group the router's config does not define: its name, cut to 64
    /// characters when longer (then with its length), since the error goes
    /// back in an ack.
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    /// A named server that is not a valid identity.
    #[error("target names an invalid server id: {0}")]
    BadServerId(NameError),
}

/// The recipients a target resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients<'a> {
    /// The target named these servers, connected or not (deduplicated, in
    /// the order named). The router acks `not_found`, or queues, for the
    /// offline ones.
    Named(Vec<&'a str>),
    /// The target named no server: these are the connected identities it
    /// includes.
    Connected(Vec<&'a str>),
}

impl<'a> Recipients<'a> {
    /// The recipient ids.
    pub fn ids(&self) -> &[&'a str] {
        match self {
            Recipients::Named(v) | Recipients::Connected(v) => v,
        }
    }
}

/// The router's groups: a name, and the identity globs of its members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    groups: BTreeMap<String, Vec<Glob>>,
}

impl Groups {
    /// An empty set of groups.
    pub fn new() -> Groups {
        Groups::default()
    }

    /// Adds (or replaces) a group with the given member patterns.
    pub fn insert<I, S>(&mut self, name: impl Into<String>, patterns: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let globs = patterns
            .into_iter()
            .map(|p| Glob::new(p.as_ref()))
            .collect();
        self.groups.insert(name.into(), globs);
    }

    /// Whether a group of this name exists.
    pub fn exists(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// Whether `server` is a member of `group`; `None` for an unknown group.
    pub fn contains(&self, group: &str, server: &str) -> Option<bool> {
        self.groups
            .get(group)
            .map(|globs| globs.iter().any(|g| g.matches(server)))
    }

    /// The names of the groups `server` belongs to, sorted.
    pub fn groups_of(&self, server: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, globs)| globs.iter().any(|g| g.matches(server)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every group name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }
}

/// A [`Target`] whose names borrow the bytes it was decoded from: the
/// router resolves each `send`'s target without copying a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRef<'a> {
    /// See [`Target::Server`].
    Server(&'a str),
    /// See [`Target::Servers`].
    Servers(Vec<&'a str>),
    /// See [`Target::Group`].
    Group(&'a str),
    /// See [`Target::All`].
    All,
    /// See [`Target::Everyone`].
    Everyone,
    /// See [`Target::Except`].
    Except(Vec<&'a str>),
}

impl Target {
    /// The target with its names borrowed.
    pub fn as_ref(&self) -> TargetRef<'_> {
        fn list(ids: &[String]) -> Vec<&str> {
            ids.iter().map(String::as_str).collect()
        }
        match self {
            Target::Server(id) => TargetRef::Server(id),
            Target::Servers(ids) => TargetRef::Servers(list(ids)),
            Target::Group(g) => TargetRef::Group(g),
            Target::All => TargetRef::All,
            Target::Everyone => TargetRef::Everyone,
            Target::Except(ids) => TargetRef::Except(list(ids)),
        }
    }

    /// Whether the target names servers (`server`, `servers`), as opposed to
    /// selecting among connected ones.
    pub fn is_named(&self) -> bool {
        matches!(self, Target::Server(_) | Target::Servers(_))
    }

    /// See [`TargetRef::validate`].
    ///
    /// # Errors
    /// As [`TargetRef::validate`].
    pub fn validate(&self, groups: &Groups) -> Result<(), TargetError> {
        self.as_ref().validate(groups)
    }

    /// Whether the target includes `server` when `sender` sent it: for a
    /// stored persistent event, whether a server that connects now gets it.
    pub fn includes(&self, server: &str, sender: &str, groups: &Groups) -> bool {
        // The lists directly: a stored event's target is checked for every
        // server that connects, without building a borrowed list each time.
        match self {
            Target::Servers(ids) => ids.iter().any(|id| id == server),
            Target::Except(ids) => server != sender && !ids.iter().any(|id| id == server),
            _ => self.as_ref().includes(server, sender, groups),
        }
    }
}

impl<'a> TargetRef<'a> {
    /// The target with its names copied.
    pub fn to_target(&self) -> Target {
        let list = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect();
        match self {
            TargetRef::Server(id) => Target::Server((*id).to_owned()),
            TargetRef::Servers(ids) => Target::Servers(list(ids)),
            TargetRef::Group(g) => Target::Group((*g).to_owned()),
            TargetRef::All => Target::All,
            TargetRef::Everyone => Target::Everyone,
            TargetRef::Except(ids) => Target::Except(list(ids)),
        }
    }

    /// Whether the target names servers (`server`, `servers`), as opposed to
    /// selecting among connected ones.
    pub fn is_named(&self) -> bool {
        matches!(self, TargetRef::Server(_) | TargetRef::Servers(_))
    }

    /// Checks what can be checked without knowing who is connected.
    ///
    /// # Errors
    /// [`TargetError`] for an empty `servers` list, an unknown group or a
    /// named server id that cannot exist.
    pub fn validate(&self, groups: &Groups) -> Result<(), TargetError> {
        match self {
            TargetRef::Server(id) => validate_server_id(id).map_err(TargetError::BadServerId),
            TargetRef::Servers(ids) if ids.is_empty() => Err(TargetError::EmptyServers),
            TargetRef::Servers(ids) => ids
                .iter()
                .try_for_each(|id| validate_server_id(id).map_err(TargetError::BadServerId)),
            TargetRef::Group(g) if !groups.exists(g) => Err(TargetError::UnknownGroup(shown(g))),
            TargetRef::Group(_) | TargetRef::All | TargetRef::Everyone | TargetRef::Except(_) => {
                Ok(())
            }
        }
    }

    /// Resolves the target for `sender`, given every connected identity (the
    /// sender among them) and the groups.
    ///
    /// # Errors
    /// As [`TargetRef::validate`].
    pub fn resolve<I>(
        &self,
        sender: &str,
        connected: I,
        groups: &Groups,
    ) -> Result<Recipients<'a>, TargetError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        self.validate(groups)?;
        Ok(match self {
            TargetRef::Server(id) => Recipients::Named(vec![*id]),
            TargetRef::Servers(ids) => {
                let mut seen = BTreeSet::new();
                Recipients::Named(ids.iter().copied().filter(|id| seen.insert(*id)).collect())
            }
            _ => Recipients::Connected(
                connected
                    .into_iter()
                    .filter(|id| self.selects(id, sender, groups))
                    .collect(),
            ),
        })
    }

    /// See [`Target::includes`].
    pub fn includes(&self, server: &str, sender: &str, groups: &Groups) -> bool {
        match self {
            TargetRef::Server(id) => *id == server,
            TargetRef::Servers(ids) => ids.contains(&server),
            _ => self.selects(server, sender, groups),
        }
    }

    fn selects(&self, server: &str, sender: &str, groups: &Groups) -> bool {
        match self {
            TargetRef::Server(_) | TargetRef::Servers(_) => self.includes(server, sender, groups),
            TargetRef::Group(g) => server != sender && groups.contains(g, server) == Some(true),
            TargetRef::All => server != sender,
            TargetRef::Everyone => true,
            TargetRef::Except(ids) => server != sender && !ids.contains(&server),
        }
    }
}

/// A name from a peer as an error repeats it: at most 64 characters, and
/// then how long it was.
fn shown(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    match name.char_indices().nth(MAX_CHARS) {
        None => name.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes)", &name[..cut], name.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        let mut g = Groups::new();
        g.insert("eu", ["eu-*"]);
        g.insert("empty", Vec::<String>::new());
        g
    }

    const CONNECTED: [&str; 4] = ["eu-1", "eu-2", "us-1", "us-2"];

    fn resolve(t: &Target, sender: &str) -> Result<Recipients<'static>, TargetError> {
        // The test target outlives the call: leak it for a 'static borrow.
        let t: &'static Target = Box::leak(Box::new(t.clone()));
        t.as_ref().resolve(sender, CONNECTED, &groups())
    }

    #[test]
    fn every_target_kind() {
        let s = |v: &str| v.to_owned();
        assert_eq!(
            resolve(&Target::Server(s("us-1")), "eu-1"),
            Ok(Recipients::Named(vec!["us-1"]))
        );
        assert_eq!(
            resolve(&Target::Server(s("eu-1")), "eu-1"),
            Ok(Recipients::Named(vec!["eu-1"]))
        );
        assert_eq!(
            resolve(&Target::Server(s("offline")), "eu-1"),
            Ok(Recipients::Named(vec!["offline"]))
        );
        assert_eq!(
            resolve(
                &Target::Servers(vec![s("us-1"), s("us-2"), s("us-1")]),
                "eu-1"
            ),
            Ok(Recipients::Named(vec!["us-1", "us-2"]))
        );
        assert_eq!(
            resolve(&Target::Servers(vec![]), "eu-1"),
            Err(TargetError::EmptyServers)
        );
        assert_eq!(
            resolve(&Target::Group(s("eu")), "eu-1"),
            Ok(Recipients::Connected(vec!["eu-2"]))
        );
        assert_eq!(
            resolve(&Target::Group(s("eu")), "us-1"),
            Ok(Recipients::Connected(vec!["eu-1", "eu-2"]))
        );
        assert_eq!(
            resolve(&Target::Group(s("empty")), "us-1"),
            Ok(Recipients::Connected(vec![]))
        );
        assert_eq!(
            resolve(&Target::Group(s("nope")), "us-1"),
            Err(TargetError::UnknownGroup(s("nope")))
        );
        // A long name is cut in the error, at a character's edge.
        let long = "é".repeat(100_000);
        let e = resolve(&Target::Group(long), "us-1").unwrap_err();
        assert_eq!(
            e,
            TargetError::UnknownGroup(format!("{}… (200000 bytes)", "é".repeat(64)))
        );
        assert_eq!(
            resolve(&Target::All, "eu-1"),
            Ok(Recipients::Connected(vec!["eu-2", "us-1", "us-2"]))
        );
        assert_eq!(
            resolve(&Target::Everyone, "eu-1"),
            Ok(Recipients::Connected(CONNECTED.to_vec()))
        );
        assert_eq!(
            resolve(&Target::Except(vec![s("us-2")]), "eu-1"),
            Ok(Recipients::Connected(vec!["eu-2", "us-1"]))
        );
        assert_eq!(
            resolve(&Target::Except(vec![]), "eu-1"),
            resolve(&Target::All, "eu-1")
        );
        assert!(matches!(
            resolve(&Target::Server(s("bad id!")), "eu-1"),
            Err(TargetError::BadServerId(_))
        ));
    }

    #[test]
    fn includes_matches_resolution() {
        let g = groups();
        assert!(Target::Group("eu".into()).includes("eu-9", "us-1", &g));
        assert!(!Target::Group("eu".into()).includes("eu-1", "eu-1", &g));
        assert!(Target::Everyone.includes("eu-1", "eu-1", &g));
        assert!(!Target::All.includes("eu-1", "eu-1", &g));
        assert!(Target::Server("eu-1".into()).includes("eu-1", "eu-1", &g));
        assert!(!Target::Except(vec!["x".into()]).includes("x", "y", &g));
        assert_eq!(g.groups_of("eu-3"), vec!["eu".to_owned()]);
    }
}
