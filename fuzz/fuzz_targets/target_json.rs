//! Targets as JSON (how config and tools write them): whatever parses
//! round-trips through JSON and through the wire encoding of a `send`, and
//! resolves against a fixed set of connected identities and groups without
//! panicking, consistently with `validate` and `includes`.
#![no_main]

use bytes::Bytes;
use icom_protocol::{Send, Target, NIL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = serde_json::from_slice::<Target>(data) else {
        return;
    };

    let json = serde_json::to_vec(&target).expect("a target serialises");
    let back: Target = serde_json::from_slice(&json).expect("a serialised target parses");
    assert_eq!(back, target, "JSON round trip");

    // The wire shape of the same target, inside a send.
    let send = Send {
        id: 1,
        to: target.clone(),
        event: "e".into(),
        data: Bytes::from_static(NIL),
        persist: None,
        ttl_ms: None,
        reply_to: None,
    };
    let decoded =
        Send::decode(&Bytes::from(send.encode())).expect("a send with this target decodes");
    assert_eq!(decoded.to, target, "wire round trip");

    icom_fuzz::check_resolution(&target);
});
