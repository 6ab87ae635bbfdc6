//! Validation of the names that cross the wire: server identities (certificate
//! CNs), event names and persist ids (docs/PROTOCOL.md §1 and §3).

use thiserror::Error;

/// Longest server identity, in bytes.
pub const MAX_SERVER_ID_LEN: usize = 64;
/// Longest event name, in bytes.
pub const MAX_EVENT_NAME_LEN: usize = 128;
/// Longest persist id, in bytes.
pub const MAX_PERSIST_ID_LEN: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{what} is empty")]
    Empty {
        /// What kind of name it was.
        what: &'static str,
    },
    /// The name is longer than its limit.
    #[error("{what} is {len} bytes long, more than the limit of {max}")]
    TooLong {
        /// What kind of name it was.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The name holds a character it may not hold.
    #[error("{what} holds the character {ch:?}, which is not allowed ({rule})")]
    BadChar {
        /// What kind of name it was.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// The rule the name must follow.
        rule: &'static str,
    },
}

/// Checks a server identity (the CN of a client certificate) against
/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`.
///
/// # Errors
/// [`NameError`] naming the first rule the id breaks.
pub fn validate_server_id(id: &str) -> Result<(), NameError> {
    const WHAT: &str = "server id";
    const RULE: &str = "letters, digits, '_', '.', '-', starting with a letter or digit";
    let mut chars = id.chars();
    let Some(first) = chars.next() else {
        return Err(NameError::Empty { what: WHAT });
    };
    if id.len() > MAX_SERVER_ID_LEN {
        return Err(NameError::TooLong {
            what: WHAT,
            len: id.len(),
            max: MAX_SERVER_ID_LEN,
        });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadChar {
            what: WHAT,
            ch: first,
            rule: RULE,
        });
    }
    // Bytes first (every allowed character is one byte); the character
    // is decoded only to name it in the error.
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if id.as_bytes().iter().all(allowed) {
        return Ok(());
    }
    if let Some(ch) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(NameError::BadChar {
            what: WHAT,
            ch,
            rule: RULE,
        });
    }
    Ok(())
}

/// Checks an event name: 1 to 128 bytes of UTF-8 without control characters.
///
/// # Errors
/// [`NameError`] naming the first rule the name breaks.
pub fn validate_event_name(name: &str) -> Result<(), NameError> {
    validate_label(name, "event name", MAX_EVENT_NAME_LEN)
}

/// Checks a custom persist id: 1 to 128 bytes of UTF-8 without control
/// characters.
///
/// # Errors
/// [`NameError`] naming the first rule the id breaks.
pub fn validate_persist_id(id: &str) -> Result<(), NameError> {
    validate_label(id, "persist id", MAX_PERSIST_ID_LEN)
}

fn validate_label(s: &str, what: &'static str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    // ASCII (nearly every name) is checked by the byte; the control
    // characters beyond it (U+0080 to U+009F) need the characters.
    if s.is_ascii() && !s.bytes().any(|b| b.is_ascii_control()) {
        return Ok(());
    }
    if let Some(ch) = s.chars().find(|c| c.is_control()) {
        return Err(NameError::BadChar {
            what,
            ch,
            rule: "no control characters",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ids() {
        for ok in ["a", "eu-1", "server_1", "A.b-c_d", "0", &"x".repeat(64)] {
            assert_eq!(validate_server_id(ok), Ok(()), "{ok}");
        }
        assert!(matches!(
            validate_server_id(""),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            validate_server_id(&"x".repeat(65)),
            Err(NameError::TooLong { len: 65, .. })
        ));
        for bad in ["-a", "_a", ".a", "a b", "a/b", "é", "a\n", "a*"] {
            assert!(
                matches!(validate_server_id(bad), Err(NameError::BadChar { .. })),
                "{bad:?}"
            );
        }
        // The error names the character, not a byte of it.
        assert!(matches!(
            validate_server_id("eu-é1"),
            Err(NameError::BadChar { ch: 'é', .. })
        ));
    }

    #[test]
    fn event_names() {
        assert_eq!(validate_event_name("supply_drop"), Ok(()));
        assert_eq!(validate_event_name("héllo wörld ✓"), Ok(()));
        assert_eq!(validate_event_name(&"é".repeat(64)), Ok(()));
        assert!(validate_event_name(&"é".repeat(65)).is_err());
        assert!(validate_event_name("").is_err());
        assert!(validate_event_name("a\u{7}b").is_err());
        assert!(validate_event_name("a\u{85}b").is_err());
        assert!(validate_event_name("a\u{7f}b").is_err());
        assert!(validate_event_name("tab\there").is_err());
        assert!(validate_persist_id(&"p".repeat(129)).is_err());
    }
}
