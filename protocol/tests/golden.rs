//! Golden tests: every example of docs/PROTOCOL.md §8 encodes to bytes that decode
//! to exactly the JSON shape shown there, and that shape, written as
//! MessagePack by another encoder, decodes back to the same message.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use icom_protocol::{
    decode_control, encode_frame, split_frame, Ack, AckCode, AckError, Control, Deliver, Forget,
    Hello, Limits, Persist, Ping, Pong, Presence, Replayed, Roster, RosterEntry, Send, Target,
    Welcome, Who,
};
use serde_json::{json, Value};

fn as_json(msgpack: &[u8]) -> Value {
    rmp_serde::from_slice(msgpack).expect("valid MessagePack")
}

fn msgpack_of(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap()
}

fn check_control(msg: Control, shape: Value) {
    let frame = encode_frame(&msg);
    let (body, used) = split_frame(&frame).unwrap().unwrap();
    assert_eq!(used, frame.len());
    assert_eq!(
        as_json(body),
        shape,
        "{} encodes to the §8 shape",
        msg.name()
    );
    let back = decode_control(&msgpack_of(&shape)).unwrap();
    assert_eq!(back, Some(msg), "the §8 shape decodes");
}

#[test]
fn control_messages_match_section_8() {
    check_control(
        Control::Hello(Hello {
            protocol: 1,
            agent: "icom-extension/0.1.0".into(),
            replace: None,
        }),
        json!({"hello": {"protocol": 1, "agent": "icom-extension/0.1.0"}}),
    );
    check_control(
        Control::Hello(Hello {
            protocol: 1,
            agent: "icom/0.1.0".into(),
            replace: Some(false),
        }),
        json!({"hello": {"protocol": 1, "agent": "icom/0.1.0", "replace": false}}),
    );
    check_control(
        Control::Welcome(Welcome {
            session_id: "4f1c2a9e-0000-4000-8000-000000000000".into(),
            server_id: "eu-1".into(),
            groups: vec!["eu".into()],
            peers: vec!["us-1".into()],
            limits: Limits {
                max_event_bytes: 1_048_576,
                max_streams: 1024,
            },
            features: Some(vec!["replace".into(), "who".into()]),
        }),
        json!({"welcome": {"session_id": "4f1c2a9e-0000-4000-8000-000000000000",
            "server_id": "eu-1", "groups": ["eu"], "peers": ["us-1"],
            "limits": {"max_event_bytes": 1048576, "max_streams": 1024},
            "features": ["replace", "who"]}}),
    );
    check_control(
        Control::Replayed(Replayed { count: 2 }),
        json!({"replayed": {"count": 2}}),
    );
    check_control(
        Control::Ack(Ack {
            id: 1_732_233_600_000_001,
            ok: false,
            delivered: 0,
            queued: 0,
            persist_id: None,
            error: Some(AckError {
                code: AckCode::NotFound,
                message: "server 'us-2' is not connected".into(),
            }),
        }),
        json!({"ack": {"id": 1732233600000001u64, "ok": false, "delivered": 0, "queued": 0,
            "error": {"code": "not_found", "message": "server 'us-2' is not connected"}}}),
    );
    check_control(
        Control::Ack(Ack {
            id: 9,
            ok: true,
            delivered: 3,
            queued: 1,
            persist_id: Some("restart-notice".into()),
            error: None,
        }),
        json!({"ack": {"id": 9, "ok": true, "delivered": 3, "queued": 1,
            "persist_id": "restart-notice"}}),
    );
    check_control(
        Control::Presence(Presence {
            server_id: "us-1".into(),
            online: true,
        }),
        json!({"presence": {"server_id": "us-1", "online": true}}),
    );
    check_control(
        Control::Forget(Forget {
            id: 1_732_233_600_000_003,
            persist_id: "restart-notice".into(),
        }),
        json!({"forget": {"id": 1732233600000003u64, "persist_id": "restart-notice"}}),
    );
    check_control(
        Control::Ping(Ping { nonce: 7 }),
        json!({"ping": {"nonce": 7}}),
    );
    check_control(
        Control::Pong(Pong { nonce: 7 }),
        json!({"pong": {"nonce": 7}}),
    );
    check_control(
        Control::Who(Who {
            id: 1_732_233_600_000_004,
            after: None,
        }),
        json!({"who": {"id": 1732233600000004u64}}),
    );
    check_control(
        Control::Roster(Roster {
            id: 1_732_233_600_000_004,
            servers: vec![
                RosterEntry {
                    server_id: "eu-2".into(),
                    router: Some("eu-a".into()),
                },
                RosterEntry {
                    server_id: "us-1".into(),
                    router: Some("us-a".into()),
                },
            ],
            more: false,
        }),
        json!({"roster": {"id": 1732233600000004u64, "servers": [
            {"server_id": "eu-2", "router": "eu-a"}, {"server_id": "us-1", "router": "us-a"}],
            "more": false}}),
    );
}

#[test]
fn new_optional_fields_are_absent_from_older_peers_and_nil_is_absent() {
    // A welcome from a router before `features`: no feature.
    let old = json!({"welcome": {"session_id": "s", "server_id": "eu-1", "groups": [],
        "peers": [], "limits": {"max_event_bytes": 1024, "max_streams": 1024}}});
    let Some(Control::Welcome(w)) = decode_control(&msgpack_of(&old)).unwrap() else {
        panic!("a welcome");
    };
    assert!(!w.has("who") && !w.has("replace"));
    let mut nil = old.clone();
    nil["welcome"]["features"] = Value::Null;
    let Some(Control::Welcome(w)) = decode_control(&msgpack_of(&nil)).unwrap() else {
        panic!("a welcome");
    };
    assert_eq!(w.features, None);
    // A hello with `replace: nil` is a hello without it.
    let hello = json!({"hello": {"protocol": 1, "agent": "a", "replace": null}});
    assert_eq!(
        decode_control(&msgpack_of(&hello)).unwrap(),
        Some(Control::Hello(Hello {
            protocol: 1,
            agent: "a".into(),
            replace: None
        }))
    );
}

fn check_send(send: Send, shape: Value) {
    let bytes = send.encode();
    assert_eq!(as_json(&bytes), shape);
    let back = Send::decode(&Bytes::from(msgpack_of(&shape))).unwrap();
    assert_eq!(as_json(&back.data), as_json(&send.data));
    assert_eq!(
        back,
        Send {
            data: back.data.clone(),
            ..send
        }
    );
}

#[test]
fn sends_match_section_8() {
    let data = msgpack_of(&json!({"coords": [1234.5, 5678.9, 0.0]}));
    check_send(
        Send {
            id: 1_732_233_600_000_001,
            to: Target::Server("us-1".into()),
            event: "supply_drop".into(),
            data: data.into(),
            persist: None,
            ttl_ms: Some(60_000),
            reply_to: None,
        },
        json!({"send": {"id": 1732233600000001u64, "to": {"server": "us-1"},
            "event": "supply_drop", "data": {"coords": [1234.5, 5678.9, 0.0]}, "ttl_ms": 60000}}),
    );
    check_send(
        Send {
            id: 1_732_233_600_000_002,
            to: Target::All,
            event: "global_alert".into(),
            data: msgpack_of(&json!("restart in 5 min")).into(),
            persist: Some(Persist::Id("restart-notice".into())),
            ttl_ms: None,
            reply_to: None,
        },
        json!({"send": {"id": 1732233600000002u64, "to": "all", "event": "global_alert",
            "data": "restart in 5 min", "persist": {"id": "restart-notice"}}}),
    );
}

#[test]
fn every_target_and_persist_shape() {
    let cases = [
        (Target::Server("a".into()), json!({"server": "a"})),
        (
            Target::Servers(vec!["a".into(), "b".into()]),
            json!({"servers": ["a", "b"]}),
        ),
        (Target::Group("eu".into()), json!({"group": "eu"})),
        (Target::All, json!("all")),
        (Target::Everyone, json!("everyone")),
        (Target::Except(vec!["a".into()]), json!({"except": ["a"]})),
    ];
    for (target, shape) in cases {
        // JSON (the game side) and MessagePack agree on the shape.
        assert_eq!(serde_json::to_value(&target).unwrap(), shape);
        for persist in [None, Some(Persist::Auto), Some(Persist::Id("x".into()))] {
            let send = Send {
                id: 5,
                to: target.clone(),
                event: "e".into(),
                data: Bytes::from_static(&[0xc0]),
                persist: persist.clone(),
                ttl_ms: None,
                reply_to: Some(4),
            };
            let mut want = json!({"send": {"id": 5, "to": shape.clone(), "event": "e",
                "data": null, "reply_to": 4}});
            match &persist {
                Some(Persist::Auto) => want["send"]["persist"] = json!("auto"),
                Some(Persist::Id(x)) => want["send"]["persist"] = json!({"id": x}),
                None => {}
            }
            check_send(send, want);
        }
    }
}

#[test]
fn deliver_matches_section_8() {
    let d = Deliver {
        from: "eu-1".into(),
        id: 1_732_233_600_000_001,
        event: "supply_drop".into(),
        data: msgpack_of(&json!({"coords": [1234.5, 5678.9, 0.0]})).into(),
        persist_id: None,
        reply_to: None,
        sent_ms: 1_732_233_600_123,
    };
    let shape = json!({"deliver": {"from": "eu-1", "id": 1732233600000001u64,
        "event": "supply_drop", "data": {"coords": [1234.5, 5678.9, 0.0]},
        "sent_ms": 1732233600123u64}});
    assert_eq!(as_json(&d.encode()), shape);
    let back = Deliver::decode(&Bytes::from(msgpack_of(&shape))).unwrap();
    assert_eq!(as_json(&back.data), as_json(&d.data));
    assert_eq!(
        back,
        Deliver {
            data: back.data.clone(),
            ..d.clone()
        }
    );

    let full = Deliver {
        persist_id: Some("p".into()),
        reply_to: Some(3),
        ..d
    };
    assert_eq!(Deliver::decode(&Bytes::from(full.encode())).unwrap(), full);

    // Byte for byte, in the field order of section 8.
    let small = Deliver {
        from: "a".into(),
        id: 1,
        event: "e".into(),
        data: Bytes::from_static(&[0xc0]),
        persist_id: Some("p".into()),
        reply_to: Some(3),
        sent_ms: 5,
    };
    let mut want = b"\x81\xa7deliver\x87\xa4from\xa1a\xa2id\x01\xa5event\xa1e".to_vec();
    want.extend_from_slice(b"\xa4data\xc0\xaapersist_id\xa1p\xa8reply_to\x03\xa7sent_ms\x05");
    assert_eq!(small.encode(), want);
}

#[test]
fn payload_bytes_pass_through_untouched() {
    // A payload in a non-canonical encoding (a u8 written as uint64) must
    // come out byte for byte: the router never re-encodes it.
    let data: &[u8] = &[0x92, 0xcf, 0, 0, 0, 0, 0, 0, 0, 1, 0xa1, b'x'];
    let send = Send {
        id: 1,
        to: Target::All,
        event: "e".into(),
        data: Bytes::from_static(data),
        persist: None,
        ttl_ms: None,
        reply_to: None,
    };
    let decoded = Send::decode(&Bytes::from(send.encode())).unwrap();
    assert_eq!(&decoded.data[..], data);
}
