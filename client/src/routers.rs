//! The routers of one cluster and the order the client dials them in: the
//! checked list ([`Routers`]), and [`Rotation`], which says which router
//! comes next and when a full round has failed, so that the backoff wait
//! falls between rounds, never between two routers of one round. No I/O
//! and no clock: the supervisor drives it.

use crate::error::ConfigError;

/// The most routers a client may be given.
pub const MAX_ROUTERS: usize = 32;

/// The longest router address accepted, in bytes (a DNS name is at most
/// 253, and a port).
const MAX_ADDRESS: usize = 300;

/// A checked, non-empty list of router addresses, each once, at most
/// [`MAX_ROUTERS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Routers(Vec<String>);

impl Routers {
    /// Checks `router` (one address) and `routers` (a list): exactly one
    /// of them must be given.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting at fault.
    pub(crate) fn parse(router: &str, routers: &[String]) -> Result<Routers, ConfigError> {
        let invalid =
            |setting: &'static str, detail: String| ConfigError::Invalid { setting, detail };
        let router = router.trim();
        match (router.is_empty(), routers.is_empty()) {
            (false, false) => {
                return Err(invalid(
                    "routers",
                    "both `router` and `routers` are given: give one router, or the list".into(),
                ))
            }
            (true, true) => {
                return Err(invalid(
                    "router",
                    "required: the router's host:port (or `routers`, a list)".into(),
                ))
            }
            (false, true) => return check_address("router", router).map(|a| Routers(vec![a])),
            (true, false) => {}
        }
        if routers.len() > MAX_ROUTERS {
            return Err(invalid(
                "routers",
                format!("{} addresses; at most {MAX_ROUTERS}", routers.len()),
            ));
        }
        let mut list: Vec<String> = Vec::with_capacity(routers.len());
        for address in routers {
            let address = check_address("routers", address)?;
            if list.contains(&address) {
                return Err(invalid("routers", format!("'{address}' is given twice")));
            }
            list.push(address);
        }
        Ok(Routers(list))
    }

    /// How many routers there are (at least one).
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Router `index`, counted round the list.
    pub(crate) fn get(&self, index: usize) -> &str {
        // `parse` never makes an empty list: the modulo is of at least 1
        // and the index within it.
        &self.0[index % self.0.len()]
    }

    /// The addresses, in order.
    pub(crate) fn into_vec(self) -> Vec<String> {
        self.0
    }
}

fn check_address(setting: &'static str, address: &str) -> Result<String, ConfigError> {
    let address = address.trim();
    let detail = if address.is_empty() {
        "an empty address".to_owned()
    } else if address.len() > MAX_ADDRESS {
        format!(
            "an address of {} bytes; at most {MAX_ADDRESS}",
            address.len()
        )
    } else {
        return Ok(address.to_owned());
    };
    Err(ConfigError::Invalid { setting, detail })
}

/// Where the client is in its list of routers, and how much of the
/// current round has failed.
///
/// A round tries each router once, going down the list from where the
/// last one left off and wrapping around. A lost connection counts as the
/// failure of its router, so the next router is dialled at once; only
/// when every router of the round failed is a backoff wait due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rotation {
    len: usize,
    /// The router to dial next, or the one connected to.
    current: usize,
    /// Failures since the round began.
    failed: usize,
}

impl Rotation {
    /// A rotation over `len` routers (at least one), at the first, with a
    /// round due: the first attempt waits the (short) first backoff delay,
    /// as any round does.
    pub(crate) fn new(len: usize) -> Rotation {
        let len = len.max(1);
        Rotation {
            len,
            current: 0,
            failed: len,
        }
    }

    /// The index of the router to dial next (or connected to).
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// Whether every router of the round failed: wait, then
    /// [`Rotation::new_round`].
    pub(crate) fn round_over(&self) -> bool {
        self.failed >= self.len
    }

    /// A new round begins (after the backoff wait).
    pub(crate) fn new_round(&mut self) {
        self.failed = 0;
    }

    /// Connected to router `index`.
    pub(crate) fn connected(&mut self, index: usize) {
        self.current = index % self.len;
        self.failed = 0;
    }

    /// The current router failed (an attempt, or the connection was lost):
    /// the next one in the list is due.
    pub(crate) fn failed(&mut self) {
        self.failed = self.failed.saturating_add(1);
        self.current = (self.current + 1) % self.len;
    }

    /// Try the same router again, as the start of a new round (after the
    /// long wait that follows `REPLACED`).
    pub(crate) fn again(&mut self) {
        self.failed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn one_router_or_a_list_not_both() {
        let one = Routers::parse(" a:1 ", &[]).unwrap();
        assert_eq!(one.into_vec(), ["a:1"]);
        let many = Routers::parse("", &list(&["a:1", "b:1"])).unwrap();
        assert_eq!(many.into_vec(), ["a:1", "b:1"]);
        for (router, routers, needle) in [
            ("a:1", list(&["b:1"]), "both"),
            ("", vec![], "required"),
            ("  ", vec![], "required"),
            ("", list(&["a:1", " "]), "empty"),
            ("", list(&["a:1", "a:1"]), "twice"),
        ] {
            let err = Routers::parse(router, &routers).unwrap_err().to_string();
            assert!(err.contains(needle), "{router:?} {routers:?}: {err}");
        }
        let too_many: Vec<String> = (0..=MAX_ROUTERS).map(|i| format!("r{i}:1")).collect();
        let err = Routers::parse("", &too_many).unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
        let long = format!("{}:1", "a".repeat(MAX_ADDRESS));
        assert!(Routers::parse(&long, &[]).is_err());
    }

    #[test]
    fn a_round_tries_each_router_once_then_waits() {
        let mut r = Rotation::new(3);
        // At the start a round is due: the first attempt waits, as ever.
        assert!(r.round_over());
        r.new_round();
        let mut dialled = Vec::new();
        while !r.round_over() {
            dialled.push(r.current());
            r.failed();
        }
        assert_eq!(dialled, [0, 1, 2]);
        // The next round starts where the list wrapped to.
        r.new_round();
        assert_eq!(r.current(), 0);
    }

    #[test]
    fn a_lost_connection_moves_on_at_once_and_wraps_around() {
        let mut r = Rotation::new(3);
        r.connected(2);
        assert_eq!(r.current(), 2);
        // The connection to 2 is lost: 0 is next, with no wait.
        r.failed();
        assert!(!r.round_over());
        assert_eq!(r.current(), 0);
        // 0 fails too, then 1: the round (2, 0, 1) is over.
        r.failed();
        assert_eq!(r.current(), 1);
        assert!(!r.round_over());
        r.failed();
        assert!(r.round_over());
        assert_eq!(r.current(), 2);
    }

    #[test]
    fn one_router_waits_before_every_attempt_as_before() {
        let mut r = Rotation::new(1);
        r.connected(0);
        r.failed();
        assert!(r.round_over());
        r.new_round();
        assert_eq!(r.current(), 0);
        r.failed();
        assert!(r.round_over());
    }

    #[test]
    fn after_replaced_the_same_router_is_tried_without_a_backoff_wait() {
        let mut r = Rotation::new(2);
        r.connected(1);
        r.again();
        assert_eq!(r.current(), 1);
        assert!(!r.round_over());
    }
}
