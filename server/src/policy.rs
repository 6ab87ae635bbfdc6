//! The policy: a CfgRemoteExec for the cluster, keyed by certificate
//! identity. Which sender may send which event to which recipients, and
//! who may persist.

use icom_protocol::{Glob, Groups};
use serde::{Deserialize, Serialize};

/// `[policy]` as written in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyFile {
    /// `closed`, `whitelist` or `open`.
    pub mode: Mode,
    /// Identities (globs) for which everything is allowed.
    pub trusted: Vec<String>,
    /// Whether persisting is allowed where a rule does not say (and in `open`).
    pub persist: bool,
    /// The whitelist's rules, tried in order.
    pub rule: Vec<RuleFile>,
}

/// One `[[policy.rule]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuleFile {
    /// A name for logs and acks; defaults to `rule N`.
    pub name: Option<String>,
    /// Sender globs or `group:NAME`; empty means anyone.
    pub senders: Vec<String>,
    /// Event-name globs; empty means any event.
    pub events: Vec<String>,
    /// Recipient globs or `group:NAME`; every resolved recipient must
    /// match; empty means anyone.
    pub targets: Vec<String>,
    /// Whether the sender may set `persist`; defaults to the policy's.
    pub persist: Option<bool>,
}

/// How the policy treats a sender that is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nothing is routed.
    Closed,
    /// Only what a rule allows.
    Whitelist,
    /// Everything.
    #[default]
    Open,
}

impl Default for PolicyFile {
    fn default() -> Self {
        PolicyFile {
            mode: Mode::Open,
            trusted: Vec::new(),
            persist: true,
            rule: Vec::new(),
        }
    }
}

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    mode: Mode,
    trusted: Vec<Glob>,
    persist: bool,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    senders: Vec<Matcher>,
    events: Vec<Glob>,
    targets: Vec<Matcher>,
    persist: bool,
}

#[derive(Debug, Clone)]
enum Matcher {
    Glob(Glob),
    Group(String),
}

/// What the policy decided, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Refused, with the reason (naming the rule that refused, or saying
    /// that none allowed it).
    Deny(String),
}

/// One send, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The sender's identity.
    pub sender: &'a str,
    /// The event name.
    pub event: &'a str,
    /// Every resolved recipient.
    pub recipients: &'a [&'a str],
    /// Whether the send asks to persist.
    pub persist: bool,
}

impl Policy {
    /// Compiles the file form. Unknown `group:` names are an error.
    ///
    /// # Errors
    /// A message naming the rule and the unknown group.
    pub fn new(file: &PolicyFile, groups: &Groups) -> Result<Policy, String> {
        let rules = file
            .rule
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = r.name.clone().unwrap_or_else(|| format!("rule {}", i + 1));
                let matchers = |list: &[String], field: &str| -> Result<Vec<Matcher>, String> {
                    list.iter()
                        .map(|s| match s.strip_prefix("group:") {
                            Some(g) if groups.exists(g) => Ok(Matcher::Group(g.to_owned())),
                            Some(g) => {
                                Err(format!("policy {name}: {field} names unknown group '{g}'"))
                            }
                            None => Ok(Matcher::Glob(Glob::new(s))),
                        })
                        .collect()
                };
                Ok(Rule {
                    senders: matchers(&r.senders, "senders")?,
                    targets: matchers(&r.targets, "targets")?,
                    events: r.events.iter().map(|e| Glob::new(e)).collect(),
                    persist: r.persist.unwrap_or(file.persist),
                    name,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Policy {
            mode: file.mode,
            trusted: file.trusted.iter().map(|t| Glob::new(t)).collect(),
            persist: file.persist,
            rules,
        })
    }

    /// An open policy that allows everything (the default).
    pub fn open() -> Policy {
        Policy {
            mode: Mode::Open,
            trusted: Vec::new(),
            persist: true,
            rules: Vec::new(),
        }
    }

    /// Decides one send.
    pub fn check(&self, req: &Request<'_>, groups: &Groups) -> Verdict {
        if self.is_trusted(req.sender) {
            return Verdict::Allow;
        }
        match self.mode {
            Mode::Closed => Verdict::Deny("the policy is closed: nothing is routed".into()),
            Mode::Open if req.persist && !self.persist => {
                Verdict::Deny("the policy does not allow persistent events".into())
            }
            Mode::Open => Verdict::Allow,
            Mode::Whitelist => {
                let Some(rule) = self.rules.iter().find(|r| r.allows(req, groups)) else {
                    return Verdict::Deny(format!(
                        "no policy rule allows '{}' to send '{}' to {}",
                        req.sender,
                        req.event,
                        describe(req.recipients)
                    ));
                };
                if req.persist && !rule.persist {
                    return Verdict::Deny(format!(
                        "policy {} does not allow '{}' to persist '{}'",
                        rule.name, req.sender, req.event
                    ));
                }
                Verdict::Allow
            }
        }
    }

    /// Whether [`Policy::check`] reads a request's recipients: only the
    /// whitelist does, so the router lists them only for it.
    pub fn reads_recipients(&self) -> bool {
        self.mode == Mode::Whitelist
    }

    /// Whether `sender` may persist at all, and so may `forget`.
    pub fn may_persist(&self, sender: &str, groups: &Groups) -> bool {
        if self.is_trusted(sender) {
            return true;
        }
        match self.mode {
            Mode::Closed => false,
            Mode::Open => self.persist,
            Mode::Whitelist => self
                .rules
                .iter()
                .any(|r| r.persist && r.senders_match(sender, groups)),
        }
    }

    fn is_trusted(&self, sender: &str) -> bool {
        self.trusted.iter().any(|g| g.matches(sender))
    }
}

impl Rule {
    fn allows(&self, req: &Request<'_>, groups: &Groups) -> bool {
        self.senders_match(req.sender, groups)
            && (self.events.is_empty() || self.events.iter().any(|g| g.matches(req.event)))
            && (self.targets.is_empty()
                || req
                    .recipients
                    .iter()
                    .all(|r| self.targets.iter().any(|m| m.matches(r, groups))))
    }

    fn senders_match(&self, sender: &str, groups: &Groups) -> bool {
        self.senders.is_empty() || self.senders.iter().any(|m| m.matches(sender, groups))
    }
}

impl Matcher {
    fn matches(&self, id: &str, groups: &Groups) -> bool {
        match self {
            Matcher::Glob(g) => g.matches(id),
            Matcher::Group(name) => groups.contains(name, id) == Some(true),
        }
    }
}

fn describe(recipients: &[&str]) -> String {
    match recipients {
        [] => "nobody".into(),
        [one] => format!("'{one}'"),
        many if many.len() <= 5 => format!("'{}'", many.join("', '")),
        many => format!("'{}' and {} more", many[..5].join("', '"), many.len() - 5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        let mut g = Groups::new();
        g.insert("eu", ["eu-*"]);
        g.insert("hq", ["hq"]);
        g
    }

    fn policy(toml_text: &str) -> Policy {
        #[derive(Deserialize)]
        struct W {
            policy: PolicyFile,
        }
        let w: W = toml::from_str(toml_text).unwrap();
        Policy::new(&w.policy, &groups()).unwrap()
    }

    const WHITELIST: &str = r#"
        [policy]
        mode = "whitelist"
        trusted = ["admin-*"]
        [[policy.rule]]
        name = "supply"
        senders = ["group:eu", "us-1"]
        events = ["supply_*"]
        [[policy.rule]]
        name = "to-hq"
        events = ["report"]
        targets = ["group:hq"]
        [[policy.rule]]
        name = "alerts"
        senders = ["hq"]
        events = ["global_alert"]
        persist = false
    "#;

    /// The router lists recipients only for a policy that reads them: any
    /// other decides the same with none listed.
    #[test]
    fn only_the_whitelist_reads_recipients() {
        let g = groups();
        let closed = policy("[policy]\nmode = \"closed\"\ntrusted = [\"root\"]\n");
        let no_persist = policy("[policy]\nmode = \"open\"\npersist = false\n");
        let wl = policy(WHITELIST);
        assert!(wl.reads_recipients());
        // Whether "report" from "x" is allowed depends on its recipients.
        let req = |recipients| Request {
            sender: "x",
            event: "report",
            recipients,
            persist: false,
        };
        assert_eq!(wl.check(&req(&["hq"]), &g), Verdict::Allow);
        assert_ne!(wl.check(&req(&["eu-1"]), &g), Verdict::Allow);
        for p in [&Policy::open(), &closed, &no_persist] {
            assert!(!p.reads_recipients());
            for sender in ["x", "root"] {
                for persist in [false, true] {
                    let with = |recipients| Request {
                        sender,
                        event: "e",
                        recipients,
                        persist,
                    };
                    assert_eq!(p.check(&with(&["a", "b"]), &g), p.check(&with(&[]), &g));
                }
            }
        }
    }

    #[test]
    fn table() {
        let g = groups();
        let open = Policy::open();
        let closed = policy("[policy]\nmode = \"closed\"\ntrusted = [\"root\"]\n");
        let no_persist = policy("[policy]\nmode = \"open\"\npersist = false\n");
        let wl = policy(WHITELIST);
        let allow = Verdict::Allow;
        // (policy, sender, event, recipients, persist, allowed?, reason contains)
        type Case<'a> = (
            &'a Policy,
            &'a str,
            &'a str,
            &'a [&'a str],
            bool,
            bool,
            &'a str,
        );
        let cases: Vec<Case<'_>> = vec![
            (&open, "x", "anything", &["y"], true, true, ""),
            (&closed, "x", "e", &["y"], false, false, "closed"),
            (&closed, "root", "e", &["y"], true, true, ""),
            (&no_persist, "x", "e", &["y"], false, true, ""),
            (&no_persist, "x", "e", &["y"], true, false, "persistent"),
            (&wl, "admin-1", "whatever", &["z"], true, true, ""),
            (
                &wl,
                "eu-1",
                "supply_drop",
                &["us-9", "eu-2"],
                true,
                true,
                "",
            ),
            (&wl, "us-1", "supply_drop", &["eu-2"], false, true, ""),
            (
                &wl,
                "us-2",
                "supply_drop",
                &["eu-2"],
                false,
                false,
                "no policy rule allows 'us-2'",
            ),
            (
                &wl,
                "eu-1",
                "spawn",
                &["eu-2"],
                false,
                false,
                "no policy rule",
            ),
            (&wl, "us-2", "report", &["hq"], false, true, ""),
            (
                &wl,
                "us-2",
                "report",
                &["hq", "eu-1"],
                false,
                false,
                "no policy rule",
            ),
            (&wl, "hq", "global_alert", &["eu-1"], false, true, ""),
            (
                &wl,
                "hq",
                "global_alert",
                &["eu-1"],
                true,
                false,
                "policy alerts does not allow",
            ),
            (&wl, "us-2", "report", &[], false, true, ""),
        ];
        for (p, sender, event, recipients, persist, want, reason) in cases {
            let v = p.check(
                &Request {
                    sender,
                    event,
                    recipients,
                    persist,
                },
                &g,
            );
            if want {
                assert_eq!(v, allow, "{sender} {event} {recipients:?}");
            } else {
                match v {
                    Verdict::Deny(why) => assert!(why.contains(reason), "{why}"),
                    Verdict::Allow => panic!("{sender} {event} {recipients:?} was allowed"),
                }
            }
        }
        assert!(wl.may_persist("eu-1", &g));
        // "to-hq" has no senders (anyone) and persist defaults to allowed.
        assert!(wl.may_persist("zz", &g));
        let strict = policy(
            "[policy]\nmode = \"whitelist\"\npersist = false\n[[policy.rule]]\nsenders = [\"a\"]\n",
        );
        assert!(!strict.may_persist("a", &g));
        assert!(!closed.may_persist("x", &g));
        assert!(closed.may_persist("root", &g));
        assert!(!no_persist.may_persist("x", &g));
    }

    #[test]
    fn unknown_groups_are_refused() {
        let file = PolicyFile {
            rule: vec![RuleFile {
                senders: vec!["group:nope".into()],
                ..RuleFile::default()
            }],
            ..PolicyFile::default()
        };
        let e = Policy::new(&file, &groups()).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }
}
