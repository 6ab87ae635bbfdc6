use bytes::Bytes;
use icom_protocol::Target;

use super::*;
use crate::store::{encode, Header};

fn persistent(id: &str, target: Target, from: &str, wire: &str) -> Bytes {
    Bytes::from(encode(&Stored {
        header: Header {
            kind: Kind::Persistent {
                persist_id: id.into(),
                target,
            },
            from: from.into(),
            expires_ms: None,
        },
        wire: Bytes::copy_from_slice(wire.as_bytes()),
    }))
}

fn queued(recipient: &str, wire: &str, expires_ms: Option<u64>) -> Bytes {
    Bytes::from(encode(&Stored {
        header: Header {
            kind: Kind::Queued {
                recipient: recipient.into(),
            },
            from: "x".into(),
            expires_ms,
        },
        wire: Bytes::copy_from_slice(wire.as_bytes()),
    }))
}

fn wires(due: &[Due]) -> Vec<&[u8]> {
    due.iter().map(|d| &d.wire[..]).collect()
}

fn limits() -> StoreLimits {
    StoreLimits {
        max_bytes: 100,
        max_persistent: 2,
        queue_events: 2,
        queue_bytes: 30,
        cache_bytes: 0,
    }
}

#[test]
fn tokens_are_hex_and_round_trip() {
    assert_eq!(token("a.b *"), "612e62202a");
    assert_eq!(unhex(&token("jip-ü.x")).as_deref(), Some("jip-ü.x"));
    assert_eq!(unhex("6"), None);
    assert_eq!(unhex("zz"), None);
    assert_eq!(persistent_tail("p1"), "jip.7031");
    assert_eq!(queued_tail("s", "u1"), "q.73.u1");
}

#[test]
fn replace_forget_and_stored_order() {
    let g = Groups::new();
    let mut m = Mirror::default();
    let a = persistent_tail("a");
    let b = persistent_tail("b");
    m.apply(1, &a, &persistent("a", Target::All, "x", "A1"))
        .unwrap();
    m.apply(
        2,
        &b,
        &persistent("b", Target::Server("y".into()), "x", "B"),
    )
    .unwrap();
    assert_eq!(
        m.apply(3, "sync.r1", &Bytes::new()).unwrap(),
        Applied::Nothing
    );
    assert_eq!(
        m.apply(4, &a, &persistent("a", Target::All, "x", "A2"))
            .unwrap(),
        Applied::Persistent
    );
    assert_eq!(wires(&m.due_for("y", &g, 0)), vec![&b"B"[..], b"A2"]);
    assert!(m.due_for("x", &g, 0).is_empty(), "all excludes the sender");
    // A deletion on a's subject removes it; a stale message changes nothing.
    m.apply(5, &a, &Bytes::new()).unwrap();
    assert!(!m.has_persistent("a"));
    assert_eq!(
        m.apply(4, &a, &persistent("a", Target::All, "x", "A2"))
            .unwrap(),
        Applied::Nothing
    );
    assert_eq!(wires(&m.due_for("y", &g, 0)), vec![&b"B"[..]]);
    // Its bytes: the event, the persist id, and the target's name.
    assert_eq!(m.counts(), (1, 0, 1 + 1 + 2));
    assert_eq!(m.applied(), 5);
}

#[test]
fn queued_copies_are_deleted_by_subject_and_expire() {
    let g = Groups::new();
    let mut m = Mirror::default();
    let t1 = queued_tail("r", "u1");
    let t2 = queued_tail("r", "u2");
    assert_eq!(
        m.apply(1, &t1, &queued("r", "1", Some(100))).unwrap(),
        Applied::Queued {
            recipient: "r".into()
        }
    );
    m.apply(2, &t2, &queued("r", "2", None)).unwrap();
    let due = m.due_for("r", &g, 50);
    assert_eq!(wires(&due), vec![&b"1"[..], b"2"]);
    assert!(due.iter().all(|d| d.queued));
    assert_eq!(m.queued_tail_of(2), Some(t2.as_str()));
    assert_eq!(m.get(2).map(|s| &s.wire[..]), Some(&b"2"[..]));
    m.apply(3, &t2, &Bytes::new()).unwrap();
    assert_eq!(m.queued_tail_of(2), None);
    assert_eq!(wires(&m.due_for("r", &g, 50)), vec![&b"1"[..]]);
    assert!(m.due_for("r", &g, 100).is_empty(), "expired is not due");
    assert_eq!(m.sweep(100), 1);
    assert_eq!(m.counts(), (0, 0, 0));
}

#[test]
fn a_corrupt_record_is_an_error_and_skipped() {
    let mut m = Mirror::default();
    assert!(m
        .apply(
            1,
            &persistent_tail("a"),
            &Bytes::from_static(b"\0\0\0\x09xx")
        )
        .is_err());
    // A queued record on a persistent subject is refused too.
    assert!(m
        .apply(2, &persistent_tail("a"), &queued("r", "1", None))
        .is_err());
    assert_eq!(m.counts(), (0, 0, 0));
    assert_eq!(
        m.apply(3, "unknown.subject", &Bytes::from_static(b"x"))
            .unwrap(),
        Applied::Nothing
    );
    assert_eq!(m.applied(), 3);
}

#[test]
fn records_after_a_sequence_in_order() {
    let mut m = Mirror::default();
    m.apply(1, &queued_tail("r", "a"), &queued("r", "1", None))
        .unwrap();
    m.apply(
        2,
        &persistent_tail("p"),
        &persistent("p", Target::All, "x", "P"),
    )
    .unwrap();
    m.apply(3, &queued_tail("s", "b"), &queued("s", "3", None))
        .unwrap();
    let after: Vec<u64> = m.records_after(1).into_iter().map(|(s, _)| s).collect();
    assert_eq!(after, vec![2, 3]);
}

#[test]
fn bookings_hold_the_bounds_until_the_mirror_has_the_write() {
    let l = limits();
    let mut m = Mirror::default();
    let mut b = Booked::default();
    let p1 = b.persist(&m, &l, "a", 10).unwrap();
    b.send("m1", p1);
    let p2 = b.persist(&m, &l, "b", 10).unwrap();
    b.send("m2", p2);
    assert!(
        matches!(b.persist(&m, &l, "c", 10), Err(StoreError::Full(_))),
        "two in flight fill max_persistent"
    );
    // Stored at 1; the mirror is at 0: still held.
    b.stored("m1", 1, 0);
    assert!(b.persist(&m, &l, "c", 10).is_err());
    m.apply(
        1,
        &persistent_tail("a"),
        &persistent("a", Target::All, "x", "0123456789"),
    )
    .unwrap();
    b.reached(1);
    // 'a' is now in the mirror and no longer booked: replacing it is fine,
    // a third id is not.
    assert!(b.persist(&m, &l, "a", 10).is_ok());
    assert!(b.persist(&m, &l, "c", 10).is_err());

    let mut b = Booked::default();
    let q1 = b.queue(&m, &l, "r", 10).unwrap();
    b.send("q1", q1);
    let q2 = b.queue(&m, &l, "r", 10).unwrap();
    b.send("q2", q2);
    let e = b.queue(&m, &l, "r", 5).unwrap_err().to_string();
    assert!(e.contains("holds 2 events"), "{e}");
    b.failed("q1");
    let e = b.queue(&m, &l, "r", 25).unwrap_err().to_string();
    assert!(e.contains("is full"), "{e}");
    assert!(b.queue(&m, &l, "s", 25).is_ok(), "queues are per recipient");
    // 10 stored + 35 booked + 25 + 25 = 95 of 100.
    assert!(b.queue(&m, &l, "t", 25).is_ok());
    assert!(b.queue(&m, &l, "u", 25).is_ok());
    let e = b.queue(&m, &l, "v", 10).unwrap_err().to_string();
    assert!(e.contains("store is full"), "{e}");
}

#[test]
fn a_write_the_mirror_reads_before_its_ack_is_counted_once() {
    let l = limits();
    let mut m = Mirror::default();
    let mut b = Booked::default();
    let q = b.queue(&m, &l, "r", 10).unwrap();
    b.send("x", q);
    // The mirror reads the copy before the ack comes back.
    m.apply(7, &queued_tail("r", "u"), &queued("r", "0123456789", None))
        .unwrap();
    b.read("x");
    b.reached(7);
    // The ack changes nothing now; one stored, none on its way.
    b.stored("x", 7, 6);
    let q = b.queue(&m, &l, "r", 10).unwrap();
    b.send("y", q);
    let e = b.queue(&m, &l, "r", 5).unwrap_err().to_string();
    assert!(e.contains("(1 stored, 1 on their way)"), "{e}");
}
