//! Hostile input: truncated, garbage, over-long, wrongly typed and deeply
//! nested bytes give a typed error, never a panic, and are never sized by an
//! untrusted length.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use icom_protocol::{
    decode_control, frame_len, split_frame, Control, DecodeError, Deliver, Groups, Persist, Ping,
    Send, SendRef, Target, TargetRef, MAX_DEPTH, MAX_FRAME_LEN,
};
use serde_json::{json, Value};

fn mp(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap()
}

fn good_send() -> Vec<u8> {
    Send {
        id: 77,
        to: Target::Server("b".into()),
        event: "e".into(),
        data: Bytes::from(mp(&json!([1, 2, 3]))),
        persist: None,
        ttl_ms: None,
        reply_to: None,
    }
    .encode()
}

#[test]
fn every_truncation_of_a_send_is_an_error_with_the_id_once_read() {
    let bytes = good_send();
    for cut in 0..bytes.len() {
        let err = Send::decode(&Bytes::copy_from_slice(&bytes[..cut])).unwrap_err();
        // The id (77) sits right after `{"send": {"id":`; once those bytes
        // are in, the error carries it.
        let id_end = 1 + 5 + 1 + 3 + 1;
        if cut >= id_end {
            assert_eq!(err.id, Some(77), "cut at {cut}");
            assert_eq!(Send::peek_id(&bytes[..cut]), Some(77));
        } else {
            assert_eq!(err.id, None, "cut at {cut}");
        }
    }
    assert!(Send::decode(&Bytes::from(bytes)).is_ok());
}

#[test]
fn every_truncation_of_a_control_frame_is_incomplete_or_an_error() {
    let frame = icom_protocol::encode_frame(&Control::Ping(Ping { nonce: 1 << 40 }));
    for cut in 0..frame.len() {
        assert_eq!(split_frame(&frame[..cut]), Ok(None), "cut at {cut}");
    }
    let body = &frame[4..];
    for cut in 0..body.len() {
        assert!(decode_control(&body[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn over_long_frames_are_refused_from_the_header() {
    let too_long = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    assert_eq!(
        frame_len(too_long),
        Err(DecodeError::FrameTooLong {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
    assert!(split_frame(&[0xff, 0xff, 0xff, 0xff]).is_err());
    assert_eq!(
        frame_len((MAX_FRAME_LEN as u32).to_be_bytes()),
        Ok(MAX_FRAME_LEN)
    );
}

#[test]
fn garbage_is_a_typed_error() {
    let garbage: [&[u8]; 8] = [
        b"",
        b"\xc1",
        b"hello world",
        b"\xff\xff\xff",
        &[0x81, 0xa4, b's', b'e', b'n', b'd'],
        &[0x81, 0xa4, b's', b'e', b'n', b'd', 0x2a],
        &[0x82, 0xa1, b'a', 0x01, 0xa1, b'b', 0x02],
        &[
            0x81, 0xa4, b's', b'e', b'n', b'd', 0x81, 0xa2, b'i', b'd', 0xa1, 0xff,
        ],
    ];
    for (i, g) in garbage.into_iter().enumerate() {
        assert!(Send::decode(&Bytes::copy_from_slice(g)).is_err(), "{g:?}");
        assert!(
            Deliver::decode(&Bytes::copy_from_slice(g)).is_err(),
            "{g:?}"
        );
        // Two are well-formed messages of a name that is not a control
        // message: ignored there, by the rule for unknown names.
        if i == 5 || i == 7 {
            assert_eq!(decode_control(g), Ok(None), "{g:?}");
        } else {
            assert!(decode_control(g).is_err(), "{g:?}");
        }
    }
}

#[test]
fn wrong_types_are_errors() {
    for v in [
        json!({"send": {"id": "seven", "to": "all", "event": "e"}}),
        json!({"send": {"id": -1, "to": "all", "event": "e"}}),
        json!({"send": {"id": 1, "to": "nobody", "event": "e"}}),
        json!({"send": {"id": 1, "to": {"planet": "x"}, "event": "e"}}),
        json!({"send": {"id": 1, "to": {"servers": "a"}, "event": "e"}}),
        json!({"send": {"id": 1, "to": "all", "event": 5}}),
        json!({"send": {"id": 1, "to": "all", "event": "e", "ttl_ms": 5_000_000_000u64}}),
        json!({"send": {"id": 1, "to": "all", "event": "e", "persist": "forever"}}),
        json!({"send": {"id": 1, "to": "all"}}),
        json!({"send": [1, 2]}),
        json!({"deliver": {"id": 1, "to": "all", "event": "e"}}),
    ] {
        assert!(Send::decode(&Bytes::from(mp(&v))).is_err(), "{v}");
    }
    for v in [
        json!({"hello": {"protocol": "one", "agent": "x"}}),
        json!({"hello": {"agent": "x"}}),
        json!({"ping": {"nonce": -3}}),
        json!({"ack": {"id": 1}}),
        json!({"ping": 5}),
        json!([1, 2]),
        json!("ping"),
        json!({"ping": {"nonce": 1}, "pong": {"nonce": 1}}),
    ] {
        assert!(decode_control(&mp(&v)).is_err(), "{v}");
    }
}

#[test]
fn unknown_names_and_fields_are_ignored() {
    assert_eq!(
        decode_control(&mp(&json!({"subscribe": {"topic": "x"}}))),
        Ok(None)
    );
    assert_eq!(
        decode_control(&mp(
            &json!({"ping": {"nonce": 3, "added_later": [1, {"x": 2}]}})
        )),
        Ok(Some(Control::Ping(Ping { nonce: 3 })))
    );
    let s = Send::decode(&Bytes::from(mp(&json!({"send": {"id": 1, "to": "all",
        "event": "e", "priority": {"level": 9}, "ttl_ms": null}}))))
    .unwrap();
    assert_eq!(s.ttl_ms, None);
    assert_eq!(&s.data[..], &[0xc0], "absent data is nil");
}

/// The name of a `send`'s field is only compared with the known ones: a
/// name that is not UTF-8 is an unknown field, ignored; a value that must
/// be a string and is not UTF-8 is an error.
#[test]
fn send_field_names_that_are_not_utf8_are_unknown_fields() {
    let with = |key: &[u8], value: &[u8]| {
        // {"send": {"id": 9, "to": "all", <key>: <value>, "event": "e"}}
        let mut m = vec![0x81, 0xa4, b's', b'e', b'n', b'd', 0x84];
        m.extend_from_slice(&[
            0xa2, b'i', b'd', 0x09, 0xa2, b't', b'o', 0xa3, b'a', b'l', b'l',
        ]);
        m.push(0xa0 | key.len() as u8);
        m.extend_from_slice(key);
        m.extend_from_slice(value);
        m.extend_from_slice(&[0xa5, b'e', b'v', b'e', b'n', b't', 0xa1, b'e']);
        Bytes::from(m)
    };
    let s = Send::decode(&with(b"\xff\xfe", &[0x2a])).unwrap();
    assert_eq!((s.id, s.event.as_str()), (9, "e"));
    // The same bytes where a string value belongs.
    let bad_event = with(b"event", &[0xa2, 0xff, 0xfe]);
    assert_eq!(
        Send::decode(&bad_event)
            .map(|_| ())
            .map_err(|e| (e.id, e.error)),
        Err((Some(9), DecodeError::InvalidUtf8))
    );
    // And in a deliver: {"deliver": {"from": "a", "id": 1, <name>: 42,
    // "event": "e", "sent_ms": 5}}.
    let mut m = vec![0x81, 0xa7];
    m.extend_from_slice(b"deliver");
    m.extend_from_slice(&[0x85, 0xa4, b'f', b'r', b'o', b'm', 0xa1, b'a']);
    m.extend_from_slice(&[0xa2, b'i', b'd', 0x01, 0xa2, 0xff, 0xfe, 0x2a]);
    m.extend_from_slice(&[0xa5, b'e', b'v', b'e', b'n', b't', 0xa1, b'e']);
    m.extend_from_slice(&[0xa7, b's', b'e', b'n', b't', b'_', b'm', b's', 0x05]);
    let d = Deliver::decode(&Bytes::from(m)).unwrap();
    assert_eq!((d.from.as_str(), d.id, d.sent_ms), ("a", 1, 5));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = good_send();
    bytes.push(0xc0);
    assert_eq!(
        Send::decode(&Bytes::from(bytes)).unwrap_err().error,
        DecodeError::TrailingBytes(1)
    );
    let mut body = mp(&json!({"ping": {"nonce": 1}}));
    body.push(0);
    assert_eq!(decode_control(&body), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn deep_nesting_is_refused_without_recursion() {
    // {"send": {"id": 1, "to": "all", "event": "e", "data": [[[[...]]]]}}
    let mut bytes = Send {
        id: 1,
        to: Target::All,
        event: "e".into(),
        data: Bytes::from_static(&[0xc0]),
        persist: None,
        ttl_ms: None,
        reply_to: None,
    }
    .encode();
    bytes.pop();
    bytes.extend(std::iter::repeat_n(0x91u8, 1_000_000));
    bytes.push(0xc0);
    let err = Send::decode(&Bytes::from(bytes)).unwrap_err();
    assert_eq!(err.error, DecodeError::TooDeep { max: MAX_DEPTH });
    assert_eq!(err.id, Some(1));

    let mut ctrl = vec![0x81, 0xa4, b'p', b'i', b'n', b'g'];
    ctrl.extend(std::iter::repeat_n(0x91u8, 100_000));
    ctrl.push(0xc0);
    assert_eq!(
        decode_control(&ctrl),
        Err(DecodeError::TooDeep { max: MAX_DEPTH })
    );
}

#[test]
fn huge_claimed_counts_do_not_allocate() {
    // `servers` claims 2^32-1 entries in a 40-byte message.
    let mut bytes = mp(&json!({"send": {"id": 1, "event": "e", "to": {"servers": []}}}));
    let pos = bytes.iter().position(|b| *b == 0x90).unwrap();
    bytes.splice(pos..=pos, [0xdd, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        Send::decode(&Bytes::from(bytes)).unwrap_err().error,
        DecodeError::Truncated
    );
}

#[test]
fn semantic_checks_give_invalid() {
    let mut groups = Groups::new();
    groups.insert("eu", ["eu-*"]);
    let base = Send::decode(&Bytes::from(good_send())).unwrap();
    assert!(base.validate(&groups).is_ok());
    let bad = [
        Send {
            id: 0,
            ..base.clone()
        },
        Send {
            ttl_ms: Some(0),
            ..base.clone()
        },
        Send {
            event: String::new(),
            ..base.clone()
        },
        Send {
            event: "x".repeat(129),
            ..base.clone()
        },
        Send {
            event: "a\u{0}b".into(),
            ..base.clone()
        },
        Send {
            persist: Some(icom_protocol::Persist::Id(String::new())),
            ..base.clone()
        },
        Send {
            to: Target::Servers(vec![]),
            ..base.clone()
        },
        Send {
            to: Target::Group("nope".into()),
            ..base.clone()
        },
    ];
    for s in bad {
        assert!(s.validate(&groups).is_err(), "{s:?}");
    }
}

/// The router decodes each `send` as a `SendRef`: the same fields as the
/// owned decode, its names and payload pointing into the stream's bytes.
#[test]
fn the_borrowed_decode_is_the_owned_one_without_copies() {
    let targets = [
        Target::Server("b".into()),
        Target::Servers(vec!["a".into(), "b".into(), "a".into()]),
        Target::Group("eu".into()),
        Target::All,
        Target::Everyone,
        Target::Except(vec!["c".into()]),
    ];
    for (i, to) in targets.into_iter().enumerate() {
        let send = Send {
            id: 5 + i as u64,
            to,
            event: "hit".into(),
            data: Bytes::from_static(&[0x92, 0x01, 0xa1, b'x']),
            persist: (i % 2 == 0).then_some(Persist::Id("p-1".into())),
            ttl_ms: Some(900),
            reply_to: Some(3),
        };
        let bytes = send.encode();
        let within = |p: *const u8| bytes.as_ptr_range().contains(&p);
        let r = SendRef::decode(&bytes).unwrap();
        assert_eq!(
            (r.id, r.to.to_target(), r.event, r.data),
            (send.id, send.to.clone(), "hit", &send.data[..])
        );
        assert_eq!(
            (&r.persist, r.ttl_ms, r.reply_to),
            (&send.persist, Some(900), Some(3))
        );
        assert!(within(r.event.as_ptr()) && within(r.data.as_ptr()));
        match &r.to {
            TargetRef::Server(id) | TargetRef::Group(id) => assert!(within(id.as_ptr())),
            TargetRef::Servers(ids) | TargetRef::Except(ids) => {
                assert!(ids.iter().all(|id| within(id.as_ptr())));
            }
            TargetRef::All | TargetRef::Everyone => {}
        }
        assert_eq!(Send::decode(&Bytes::from(bytes.clone())).unwrap(), send);
    }
    // Absent data is nil, in both.
    let bytes = mp(&json!({"send": {"id": 1, "to": "all", "event": "e"}}));
    assert_eq!(SendRef::decode(&bytes).unwrap().data, &[0xc0]);
    // Errors carry the id read before the fault, as the owned decode's.
    let bad = mp(&json!({"send": {"id": 4, "to": {"server": 7}, "event": "e"}}));
    assert_eq!(SendRef::decode(&bad).unwrap_err().id, Some(4));
}
