//! Shared fixtures and checks for the ICOM/1 fuzz targets.
//!
//! Every target asserts properties of what decodes (round trips, agreement
//! between decoders), not only the absence of panics: a failed assertion is
//! a crash, which libFuzzer saves under `fuzz/artifacts/<target>/`.

use icom_protocol::{Groups, Recipients, Send, Target};

/// The identities connected to the router in every resolution.
pub const CONNECTED: [&str; 6] = ["eu-1", "eu-2", "us-1", "us-2", "solo", "é-1"];

/// The senders every target is resolved for: connected ones and one that
/// is not (a stored persistent event resolved for a later connection).
pub const SENDERS: [&str; 3] = ["eu-1", "solo", "offline-9"];

/// The router's groups: globs with and without wildcards, an empty group,
/// a catch-all and a group whose name is not a valid identity.
pub fn groups() -> Groups {
    let mut g = Groups::new();
    g.insert("eu", ["eu-*"]);
    g.insert("us", ["us-?"]);
    g.insert("everybody", ["*"]);
    g.insert("empty", Vec::<String>::new());
    g.insert("lit", ["solo", "us-2"]);
    g.insert("odd name!", ["*-1"]);
    g
}

/// The length of the canonical encoding's prefix up to and including the
/// id: `{"send": {"id": <id>` (the canonical encoding writes the id first,
/// and a send has at most 7 fields, so its field map is a fixmap).
pub fn send_id_end(id: u64) -> usize {
    let uint_len = match id {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    };
    1 + (1 + 4) + 1 + (1 + 2) + uint_len
}

/// A few cut points strictly inside a buffer of `len` bytes: cheap enough
/// to decode on every run, spread enough to hit every field.
pub fn cuts(len: usize) -> impl Iterator<Item = usize> {
    [
        0,
        1,
        len / 4,
        len / 2,
        len * 3 / 4,
        len.saturating_sub(2),
        len.saturating_sub(1),
    ]
    .into_iter()
    .filter(move |c| *c < len)
}

/// Resolves `target` for every sender against the fixed connected set and
/// groups, and checks the result against `validate` and `includes`.
pub fn check_resolution(target: &Target) {
    let groups = groups();
    let valid = target.validate(&groups);
    for sender in SENDERS {
        let resolved = target
            .as_ref()
            .resolve(sender, CONNECTED.iter().copied(), &groups);
        match (&valid, resolved) {
            (Err(v), Err(r)) => assert_eq!(*v, r, "validate and resolve disagree"),
            (Ok(()), Err(r)) => panic!("validate accepted {target:?}, resolve refused: {r}"),
            (Err(v), Ok(r)) => panic!("validate refused {target:?} ({v}), resolve gave {r:?}"),
            (Ok(()), Ok(Recipients::Named(ids))) => {
                assert!(target.is_named(), "{target:?} resolved to named recipients");
                let named: Vec<&str> = match target {
                    Target::Server(id) => vec![id.as_str()],
                    Target::Servers(ids) => ids.iter().map(String::as_str).collect(),
                    _ => unreachable!(),
                };
                // Deduplicated, in the order first named, none left out.
                let mut expected: Vec<&str> = Vec::new();
                for id in named {
                    if !expected.contains(&id) {
                        expected.push(id);
                    }
                }
                assert_eq!(ids, expected, "named recipients of {target:?}");
                for id in &ids {
                    assert!(target.includes(id, sender, &groups));
                }
            }
            (Ok(()), Ok(Recipients::Connected(ids))) => {
                assert!(
                    !target.is_named(),
                    "{target:?} resolved to connected recipients"
                );
                // Exactly the connected identities the target includes, in
                // connection order.
                let expected: Vec<&str> = CONNECTED
                    .iter()
                    .copied()
                    .filter(|c| target.includes(c, sender, &groups))
                    .collect();
                assert_eq!(
                    ids, expected,
                    "connected recipients of {target:?} from {sender}"
                );
                if ids.contains(&sender) {
                    assert_eq!(*target, Target::Everyone, "{target:?} included its sender");
                }
                match target {
                    Target::All => assert_eq!(
                        ids.len(),
                        CONNECTED.len() - usize::from(CONNECTED.contains(&sender))
                    ),
                    Target::Everyone => assert_eq!(ids, CONNECTED),
                    Target::Group(g) => {
                        for id in &ids {
                            assert_eq!(groups.contains(g, id), Some(true));
                        }
                    }
                    Target::Except(except) => {
                        for id in &ids {
                            assert!(!except.iter().any(|e| e == id));
                        }
                    }
                    Target::Server(_) | Target::Servers(_) => unreachable!(),
                }
            }
        }
    }
}

/// Field-by-field equality of two sends, with the payload compared as bytes.
pub fn assert_send_eq(a: &Send, b: &Send) {
    assert_eq!(a.id, b.id, "id");
    assert_eq!(a.to, b.to, "to");
    assert_eq!(a.event, b.event, "event");
    assert_eq!(a.data[..], b.data[..], "data");
    assert_eq!(a.persist, b.persist, "persist");
    assert_eq!(a.ttl_ms, b.ttl_ms, "ttl_ms");
    assert_eq!(a.reply_to, b.reply_to, "reply_to");
    assert_eq!(a, b);
}
