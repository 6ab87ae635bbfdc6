//! Control frames: the input is a control-stream byte stream. Split it into
//! frames with `split_frame`, decode each body with `decode_control`, and
//! check that whatever decodes re-encodes (`encode_frame`) to a frame that
//! decodes to the same message, canonically. The whole input is also tried
//! as a single body, so bodies are fuzzed without a valid header too.
#![no_main]

use icom_protocol::{
    decode_control, encode_frame, frame_len, split_frame, Control, DecodeError, FRAME_HEADER_LEN,
    MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;

fn check_body(body: &[u8]) {
    let Ok(Some(msg)) = decode_control(body) else {
        return;
    };
    assert!(Control::NAMES.contains(&msg.name()));
    let frame = encode_frame(&msg);
    let (body2, used) = split_frame(&frame)
        .expect("an encoded frame splits")
        .expect("an encoded frame is complete");
    assert_eq!(used, frame.len(), "encode_frame wrote one whole frame");
    let again = decode_control(body2).expect("an encoded message decodes");
    assert_eq!(again.as_ref(), Some(&msg), "control round trip");
    // The encoding is canonical: re-encoding what it decoded to is a fixed point.
    assert_eq!(encode_frame(&msg), frame);
    // Every strict prefix of a frame is incomplete, and of a body an error.
    for cut in icom_fuzz::cuts(frame.len()) {
        assert_eq!(split_frame(&frame[..cut]), Ok(None), "frame cut at {cut}");
    }
    for cut in icom_fuzz::cuts(body2.len()) {
        assert!(decode_control(&body2[..cut]).is_err(), "body cut at {cut}");
    }
}

fuzz_target!(|data: &[u8]| {
    check_body(data);
    let mut buf = data;
    loop {
        match split_frame(buf) {
            Ok(None) => {
                // Incomplete: no header yet, or fewer body bytes than announced.
                if let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() {
                    let len = frame_len(*header).expect("split_frame accepted the header");
                    assert!(buf.len() < FRAME_HEADER_LEN + len);
                }
                break;
            }
            Err(e) => {
                let header = *buf
                    .first_chunk::<FRAME_HEADER_LEN>()
                    .expect("an error needs a header");
                let len = u32::from_be_bytes(header) as usize;
                assert!(len > MAX_FRAME_LEN);
                assert_eq!(
                    e,
                    DecodeError::FrameTooLong {
                        len,
                        max: MAX_FRAME_LEN
                    }
                );
                assert_eq!(frame_len(header), Err(e));
                break;
            }
            Ok(Some((body, used))) => {
                let header = *buf
                    .first_chunk::<FRAME_HEADER_LEN>()
                    .expect("a frame has a header");
                assert_eq!(frame_len(header), Ok(body.len()));
                assert_eq!(used, FRAME_HEADER_LEN + body.len());
                assert!(used <= buf.len());
                assert_eq!(body, &buf[FRAME_HEADER_LEN..used]);
                check_body(body);
                buf = &buf[used..];
            }
        }
    }
});
