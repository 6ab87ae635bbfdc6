//! `send`: whatever `Send::decode` accepts re-encodes (`encode`) to bytes that
//! decode to an equal send, canonically; `peek_id` never panics and agrees
//! with the decoder (the id of a success, the id carried by an error); the
//! payload is shared with the input, not copied; the borrowed decode the
//! router uses (`SendRef`) agrees with the owned one, field for field and
//! error for error; validation and resolution of a decoded send agree and
//! never panic.
#![no_main]

use bytes::Bytes;
use icom_protocol::{Send, SendRef, NIL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let peek = Send::peek_id(data);
    let borrowed = SendRef::decode(data);
    let send = match Send::decode(&buf) {
        Ok(send) => send,
        Err(e) => {
            assert_eq!(peek, e.id, "peek_id and the error's id disagree: {e}");
            assert_eq!(borrowed.err(), Some(e), "the borrowed decode disagrees");
            return;
        }
    };
    let r = borrowed.expect("the borrowed decode failed where the owned one did not");
    assert_eq!(
        (
            r.id,
            r.to.to_target(),
            r.event,
            r.data,
            &r.persist,
            r.ttl_ms,
            r.reply_to
        ),
        (
            send.id,
            send.to.clone(),
            send.event.as_str(),
            &send.data[..],
            &send.persist,
            send.ttl_ms,
            send.reply_to
        ),
        "the borrowed decode disagrees"
    );
    assert_eq!(peek, Some(send.id), "peek_id and decode disagree");

    // `data` is a slice of the input (zero-copy), or nil when absent.
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let p = send.data.as_ptr() as usize;
    assert!(
        (range.contains(&p) && p + send.data.len() <= range.end) || send.data[..] == *NIL,
        "data is neither a slice of the input nor nil"
    );

    let encoded = send.encode();
    let again = Send::decode(&Bytes::from(encoded.clone())).expect("a re-encoded send decodes");
    icom_fuzz::assert_send_eq(&send, &again);
    assert_eq!(again.encode(), encoded, "the encoding is not canonical");
    assert_eq!(Send::peek_id(&encoded), Some(send.id));

    // Prefixes of the canonical encoding: never a send; the id once it is in.
    let id_end = icom_fuzz::send_id_end(send.id);
    for cut in icom_fuzz::cuts(encoded.len()).chain([id_end - 1, id_end]) {
        if cut >= encoded.len() {
            continue;
        }
        let prefix = &encoded[..cut];
        let err =
            Send::decode(&Bytes::copy_from_slice(prefix)).expect_err("a strict prefix decoded");
        let expected = (cut >= id_end).then_some(send.id);
        assert_eq!(err.id, expected, "error id at cut {cut}");
        assert_eq!(Send::peek_id(prefix), expected, "peek_id at cut {cut}");
    }

    // Validation and resolution of whatever decoded.
    let groups = icom_fuzz::groups();
    let valid = send.validate(&groups);
    if valid.is_ok() {
        assert!(send.id != 0 && send.ttl_ms != Some(0));
        assert!(send.to.validate(&groups).is_ok());
    }
    icom_fuzz::check_resolution(&send.to);
});
