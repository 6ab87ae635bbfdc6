//! `json_bridge`: the game extension's JSON ↔ MessagePack bridge. Whatever
//! JSON text it accepts becomes MessagePack that converts back to JSON of
//! the same value; whatever bytes `msgpack_to_json` accepts become valid
//! JSON. Hostile input gives an error, never a panic.
#![no_main]

use icom::fuzzing::{json_to_msgpack, msgpack_to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The bytes as MessagePack, from the wire.
    if let Ok(json) = msgpack_to_json(data) {
        serde_json::from_str::<serde_json::Value>(&json)
            .unwrap_or_else(|e| panic!("the bridge wrote invalid JSON ({e}): {json}"));
    }
    // The bytes as JSON text, from the game.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(packed) = json_to_msgpack(text) else {
        return;
    };
    let back = msgpack_to_json(&packed).expect("the bridge reads what it wrote");
    if text.trim().is_empty() {
        assert_eq!(back, "null");
        return;
    }
    let want: serde_json::Value = serde_json::from_str(text).expect("accepted JSON parses");
    let got: serde_json::Value = serde_json::from_str(&back).expect("the bridge writes JSON");
    assert!(same(&want, &got), "round trip changed the value: {text} -> {back}");
});

/// Equal values; numbers compared as numbers (1 and 1.0 are the same value
/// to SQF, whose numbers are all floats).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Number, Object};
    match (a, b) {
        (Number(x), Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(p), Some(q), _, _) => p == q,
            (_, _, Some(p), Some(q)) => p == q,
            _ => x.as_f64() == y.as_f64(),
        },
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
