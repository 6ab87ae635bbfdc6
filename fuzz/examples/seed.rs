//! Writes the committed seed corpora (`corpus/<target>/`) and the libFuzzer
//! dictionaries (`dict/<target>.dict`): a handful of valid messages per
//! target, plus a few hand-made edge shapes the encoders never produce
//! (fields out of order, nil fields, unknown fields, wide integer forms).
//!
//! Run from anywhere: `cargo run --manifest-path fuzz/Cargo.toml --example seed`.
//! Deterministic; it only (over)writes its own files.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use icom_protocol::{
    encode_frame, Ack, AckCode, Control, Deliver, Forget, Hello, Limits, Persist, Ping, Pong,
    Presence, Replayed, Roster, RosterEntry, Send, Target, Welcome, Who, NIL,
};

/// A minimal MessagePack writer for the hand-made seeds.
mod mp {
    pub fn map(out: &mut Vec<u8>, n: u8) {
        assert!(n < 16);
        out.push(0x80 | n);
    }
    pub fn array(out: &mut Vec<u8>, n: u8) {
        assert!(n < 16);
        out.push(0x90 | n);
    }
    pub fn str(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 256);
        if s.len() < 32 {
            out.push(0xa0 | s.len() as u8);
        } else {
            out.extend_from_slice(&[0xd9, s.len() as u8]);
        }
        out.extend_from_slice(s.as_bytes());
    }
    /// A uint in its widest form (valid, but not what the encoder writes).
    pub fn u64_wide(out: &mut Vec<u8>, v: u64) {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn small(out: &mut Vec<u8>, v: u8) {
        assert!(v < 128);
        out.push(v);
    }
    pub fn nil(out: &mut Vec<u8>) {
        out.push(0xc0);
    }
}

/// Payloads: one MessagePack value each, of every kind.
fn payloads() -> Vec<(&'static str, Vec<u8>)> {
    let mut deep = vec![0x91; 60];
    deep.push(0xc0);
    let mut str16 = vec![0xda, 0x01, 0x00];
    str16.extend(std::iter::repeat_n(b'x', 256));
    let mut map = Vec::new();
    mp::map(&mut map, 3);
    mp::str(&mut map, "a");
    map.push(0xcb);
    map.extend_from_slice(&1.5f64.to_be_bytes());
    mp::str(&mut map, "b");
    map.extend_from_slice(&[0x92, 0xc3, 0xc0]);
    mp::str(&mut map, "neg");
    map.push(0xd3);
    map.extend_from_slice(&(-5_000_000_000i64).to_be_bytes());
    vec![
        ("nil", NIL.to_vec()),
        ("array", vec![0x93, 0x01, 0x02, 0x03]),
        ("map", map),
        ("bin", vec![0xc4, 0x03, 0x01, 0x02, 0x03]),
        ("ext", vec![0xd6, 0xff, 0x00, 0x00, 0x00, 0x01]),
        ("str16", str16),
        ("deep", deep),
        ("float32", vec![0xca, 0x3f, 0x80, 0x00, 0x00]),
    ]
}

fn targets() -> Vec<(&'static str, Target)> {
    let s = |v: &str| v.to_owned();
    vec![
        ("all", Target::All),
        ("everyone", Target::Everyone),
        ("server", Target::Server(s("us-1"))),
        (
            "servers",
            Target::Servers(vec![s("eu-1"), s("us-2"), s("eu-1")]),
        ),
        ("group", Target::Group(s("eu"))),
        ("except", Target::Except(vec![s("us-1"), s("solo")])),
    ]
}

fn control_seeds() -> Vec<(String, Vec<u8>)> {
    let s = |v: &str| v.to_owned();
    let messages = vec![
        (
            "hello",
            Control::Hello(Hello {
                protocol: 1,
                agent: s("icom-extension/0.1.0"),
                replace: Some(false),
            }),
        ),
        (
            "welcome",
            Control::Welcome(Welcome {
                session_id: s("6f1c2b7e-8d5a-4c3b-9e2f-0a1b2c3d4e5f"),
                server_id: s("eu-1"),
                groups: vec![s("eu"), s("everybody")],
                peers: vec![s("eu-2"), s("us-1")],
                limits: Limits {
                    max_event_bytes: 1 << 20,
                    max_streams: 1024,
                },
                features: Some(vec![s("replace"), s("who")]),
            }),
        ),
        ("replayed", Control::Replayed(Replayed { count: 3 })),
        (
            "ack-ok",
            Control::Ack(Ack {
                id: 77,
                ok: true,
                delivered: 2,
                queued: 1,
                persist_id: Some(s("p-1")),
                error: None,
            }),
        ),
        (
            "ack-failed",
            Control::Ack(Ack::failed(
                u64::MAX,
                AckCode::NotFound,
                "us-9 is not connected",
            )),
        ),
        (
            "ack-unknown-code",
            Control::Ack(Ack::failed(5, AckCode::Unknown, "?")),
        ),
        (
            "presence",
            Control::Presence(Presence {
                server_id: s("us-2"),
                online: false,
            }),
        ),
        (
            "forget",
            Control::Forget(Forget {
                id: 300,
                persist_id: s("motd"),
            }),
        ),
        ("ping", Control::Ping(Ping { nonce: 1 << 40 })),
        ("pong", Control::Pong(Pong { nonce: 7 })),
        (
            "who",
            Control::Who(Who {
                id: 301,
                after: Some(s("eu-2")),
            }),
        ),
        (
            "roster",
            Control::Roster(Roster {
                id: 301,
                servers: vec![
                    RosterEntry {
                        server_id: s("eu-3"),
                        router: Some(s("eu-a")),
                    },
                    RosterEntry {
                        server_id: s("us-1"),
                        router: None,
                    },
                ],
                more: true,
            }),
        ),
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut stream = Vec::new();
    for (name, msg) in &messages {
        let frame = encode_frame(msg);
        stream.extend_from_slice(&frame);
        seeds.push(((*name).into(), frame));
    }
    // Several frames back to back, as on a control stream.
    seeds.push(("stream".into(), stream));
    // A well-formed message of a name this version does not know.
    let mut future = Vec::new();
    mp::map(&mut future, 1);
    mp::str(&mut future, "future");
    mp::map(&mut future, 1);
    mp::str(&mut future, "x");
    mp::small(&mut future, 1);
    seeds.push(("unknown-name".into(), framed(&future)));
    // `ping` with its field as a wide uint and an unknown extra field.
    let mut ping = Vec::new();
    mp::map(&mut ping, 1);
    mp::str(&mut ping, "ping");
    mp::map(&mut ping, 2);
    mp::str(&mut ping, "later");
    mp::nil(&mut ping);
    mp::str(&mut ping, "nonce");
    mp::u64_wide(&mut ping, 9);
    seeds.push(("ping-wide".into(), framed(&ping)));
    // A frame announcing more body than follows, after a complete one.
    let mut partial = encode_frame(&Control::Pong(Pong { nonce: 1 }));
    partial.extend_from_slice(&[0, 0, 0, 40, 0x81]);
    seeds.push(("partial".into(), partial));
    seeds
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn send_seeds() -> Vec<(String, Vec<u8>)> {
    let base = Send {
        id: 1,
        to: Target::All,
        event: "chat".into(),
        data: Bytes::from_static(NIL),
        persist: None,
        ttl_ms: None,
        reply_to: None,
    };
    let mut seeds = Vec::new();
    for (i, (name, to)) in targets().into_iter().enumerate() {
        let send = Send {
            id: 1 + i as u64,
            to,
            ..base.clone()
        };
        seeds.push((format!("to-{name}"), send.encode()));
    }
    for (name, data) in payloads() {
        let send = Send {
            id: 1000,
            data: Bytes::from(data),
            ..base.clone()
        };
        seeds.push((format!("data-{name}"), send.encode()));
    }
    let full = Send {
        id: u64::MAX,
        to: Target::Servers(vec!["eu-1".into()]),
        event: "icom:reply".into(),
        data: Bytes::from_static(&[0x93, 0x01, 0x02, 0x03]),
        persist: Some(Persist::Id("motd".into())),
        ttl_ms: Some(60_000),
        reply_to: Some(42),
    };
    seeds.push(("all-fields".into(), full.encode()));
    let auto = Send {
        id: 70_000,
        persist: Some(Persist::Auto),
        ..base.clone()
    };
    seeds.push(("persist-auto".into(), auto.encode()));
    // Out of order, a nil field, an unknown field, a wide id.
    let mut odd = Vec::new();
    mp::map(&mut odd, 1);
    mp::str(&mut odd, "send");
    mp::map(&mut odd, 6);
    mp::str(&mut odd, "event");
    mp::str(&mut odd, "e");
    mp::str(&mut odd, "ttl_ms");
    mp::nil(&mut odd);
    mp::str(&mut odd, "future");
    mp::array(&mut odd, 2);
    mp::small(&mut odd, 1);
    mp::small(&mut odd, 2);
    mp::str(&mut odd, "to");
    mp::str(&mut odd, "everyone");
    mp::str(&mut odd, "data");
    mp::map(&mut odd, 0);
    mp::str(&mut odd, "id");
    mp::u64_wide(&mut odd, 5);
    seeds.push(("odd-order".into(), odd));
    seeds
}

fn deliver_seeds() -> Vec<(String, Vec<u8>)> {
    let base = Deliver {
        from: "eu-1".into(),
        id: 9,
        event: "chat".into(),
        data: Bytes::from_static(NIL),
        persist_id: None,
        reply_to: None,
        sent_ms: 1_700_000_000_000,
    };
    let mut seeds = vec![("minimal".to_owned(), base.encode())];
    for (name, data) in payloads() {
        let d = Deliver {
            data: Bytes::from(data),
            ..base.clone()
        };
        seeds.push((format!("data-{name}"), d.encode()));
    }
    let full = Deliver {
        from: "é-1".into(),
        id: u64::MAX,
        event: "x".repeat(40),
        data: Bytes::from_static(&[0xc4, 0x01, 0xff]),
        persist_id: Some("p-123".into()),
        reply_to: Some(300),
        sent_ms: 0,
    };
    seeds.push(("all-fields".into(), full.encode()));
    // Out of order, a nil field, an unknown field, no data (defaults to nil).
    let mut odd = Vec::new();
    mp::map(&mut odd, 1);
    mp::str(&mut odd, "deliver");
    mp::map(&mut odd, 6);
    mp::str(&mut odd, "sent_ms");
    mp::u64_wide(&mut odd, 12);
    mp::str(&mut odd, "persist_id");
    mp::nil(&mut odd);
    mp::str(&mut odd, "event");
    mp::str(&mut odd, "e");
    mp::str(&mut odd, "hops");
    mp::small(&mut odd, 3);
    mp::str(&mut odd, "id");
    mp::small(&mut odd, 4);
    mp::str(&mut odd, "from");
    mp::str(&mut odd, "us-2");
    seeds.push(("odd-order".into(), odd));
    seeds
}

fn target_json_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = targets()
        .into_iter()
        .map(|(name, t)| (name.to_owned(), serde_json::to_vec(&t).expect("json")))
        .collect();
    for (name, json) in [
        ("servers-empty", r#"{"servers": []}"#),
        ("group-unknown", r#"{"group": "nope"}"#),
        ("group-odd-name", r#"{"group": "odd name!"}"#),
        ("group-empty", r#"{"group": "empty"}"#),
        ("server-bad-id", r#"{"server": "bad id!"}"#),
        ("server-unicode", r#"{"server": "\u00e9-1"}"#),
        (
            "except-all",
            r#"{"except": ["eu-1","eu-2","us-1","us-2","solo","é-1"]}"#,
        ),
    ] {
        seeds.push((name.to_owned(), json.as_bytes().to_vec()));
    }
    seeds
}

/// A libFuzzer dictionary entry for a MessagePack string.
fn mp_token(s: &str) -> String {
    let mut bytes = Vec::new();
    mp::str(&mut bytes, s);
    let escaped: String = bytes.iter().map(|b| format!("\\x{b:02x}")).collect();
    format!("\"{escaped}\"\n")
}

fn json_token(s: &str) -> String {
    format!("\"\\\"{s}\\\"\"\n")
}

const CONTROL_WORDS: &[&str] = &[
    "hello",
    "welcome",
    "replayed",
    "ack",
    "presence",
    "forget",
    "ping",
    "pong",
    "who",
    "roster",
    "protocol",
    "agent",
    "replace",
    "features",
    "after",
    "servers",
    "router",
    "more",
    "session_id",
    "server_id",
    "groups",
    "peers",
    "limits",
    "max_event_bytes",
    "max_streams",
    "count",
    "id",
    "ok",
    "delivered",
    "queued",
    "persist_id",
    "error",
    "code",
    "message",
    "online",
    "nonce",
    "not_found",
    "forbidden",
    "too_large",
    "malformed",
    "congested",
    "invalid",
];
const SEND_WORDS: &[&str] = &[
    "send", "id", "to", "event", "data", "persist", "ttl_ms", "reply_to", "auto", "all",
    "everyone", "server", "servers", "group", "except", "eu", "eu-1", "us-1",
];
const DELIVER_WORDS: &[&str] = &[
    "deliver",
    "from",
    "id",
    "event",
    "data",
    "persist_id",
    "reply_to",
    "sent_ms",
];
const TARGET_WORDS: &[&str] = &[
    "all",
    "everyone",
    "server",
    "servers",
    "group",
    "except",
    "eu",
    "us",
    "everybody",
    "empty",
    "lit",
    "odd name!",
    "eu-1",
    "eu-2",
    "us-1",
    "us-2",
    "solo",
    "offline-9",
];

fn write_all(dir: &Path, seeds: &[(String, Vec<u8>)]) {
    fs::create_dir_all(dir).expect("create the corpus dir");
    for (name, bytes) in seeds {
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    write_all(&corpus.join("control_frame"), &control_seeds());
    write_all(&corpus.join("send"), &send_seeds());
    write_all(&corpus.join("deliver"), &deliver_seeds());
    write_all(&corpus.join("target_json"), &target_json_seeds());

    let dict = root.join("dict");
    fs::create_dir_all(&dict).expect("create the dict dir");
    let mp_dict = |words: &[&str]| words.iter().map(|w| mp_token(w)).collect::<String>();
    let header = "# Generated by `cargo run --example seed`: MessagePack-encoded keys and names.\n";
    for (target, words) in [
        ("control_frame", CONTROL_WORDS),
        ("send", SEND_WORDS),
        ("deliver", DELIVER_WORDS),
    ] {
        fs::write(
            dict.join(format!("{target}.dict")),
            format!("{header}{}", mp_dict(words)),
        )
        .expect("write a dict");
    }
    let json: String = TARGET_WORDS.iter().map(|w| json_token(w)).collect();
    fs::write(
        dict.join("target_json.dict"),
        format!("# Generated by `cargo run --example seed`: JSON keys and names.\n{json}\"[\"\n\"]\"\n\"{{\"\n\"}}\"\n\":\"\n\",\"\n\"null\"\n"),
    )
    .expect("write a dict");
    println!("{}: 4 dictionaries", dict.display());
}
