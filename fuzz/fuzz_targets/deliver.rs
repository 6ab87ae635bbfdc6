//! `deliver`: whatever `Deliver::decode` accepts re-encodes (`encode`) to
//! bytes that decode to an equal delivery, canonically; the payload is
//! shared with the input; strict prefixes of an encoding never decode.
#![no_main]

use bytes::Bytes;
use icom_protocol::{Deliver, NIL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let Ok(deliver) = Deliver::decode(&buf) else {
        return;
    };

    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let p = deliver.data.as_ptr() as usize;
    assert!(
        (range.contains(&p) && p + deliver.data.len() <= range.end) || deliver.data[..] == *NIL,
        "data is neither a slice of the input nor nil"
    );

    let encoded = deliver.encode();
    let again =
        Deliver::decode(&Bytes::from(encoded.clone())).expect("a re-encoded deliver decodes");
    assert_eq!(deliver.from, again.from, "from");
    assert_eq!(deliver.id, again.id, "id");
    assert_eq!(deliver.event, again.event, "event");
    assert_eq!(deliver.data[..], again.data[..], "data");
    assert_eq!(deliver.persist_id, again.persist_id, "persist_id");
    assert_eq!(deliver.reply_to, again.reply_to, "reply_to");
    assert_eq!(deliver.sent_ms, again.sent_ms, "sent_ms");
    assert_eq!(deliver, again);
    assert_eq!(again.encode(), encoded, "the encoding is not canonical");

    for cut in icom_fuzz::cuts(encoded.len()) {
        assert!(
            Deliver::decode(&Bytes::copy_from_slice(&encoded[..cut])).is_err(),
            "a strict prefix (cut at {cut}) decoded"
        );
    }
});
