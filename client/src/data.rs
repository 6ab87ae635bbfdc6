//! Event payloads: anything serde can serialise becomes one MessagePack
//! value; [`MsgPack`] passes bytes that are already encoded.

use bytes::Bytes;
use serde::Serialize;
use thiserror::Error;

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum DataError {
    /// The value could not be serialised as MessagePack.
    #[error("cannot encode the data as MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The payload did not decode as the requested type.
    #[error("cannot decode the data: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// A payload that is already one MessagePack value, sent as it is.
///
/// The router checks that a `send` is well formed, so bytes that are not
/// exactly one MessagePack value are acked `malformed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgPack(pub Bytes);

impl MsgPack {
    /// MessagePack nil, the payload of an event without data.
    pub fn nil() -> MsgPack {
        MsgPack(Bytes::from_static(icom_protocol::NIL))
    }
}

/// What can be the `data` of an event: every `Serialize` type (structs
/// become maps with their field names, as in JSON; a `serde_json::Value`
/// works as it is), or pre-encoded [`MsgPack`].
pub trait ToData {
    /// Encodes the payload as one MessagePack value.
    ///
    /// # Errors
    /// [`DataError::Encode`] when serialisation fails.
    fn to_data(&self) -> Result<Bytes, DataError>;
}

impl<T: Serialize + ?Sized> ToData for T {
    fn to_data(&self) -> Result<Bytes, DataError> {
        Ok(Bytes::from(rmp_serde::to_vec_named(self)?))
    }
}

impl ToData for MsgPack {
    fn to_data(&self) -> Result<Bytes, DataError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct SupplyDrop {
        coords: [f64; 2],
    }

    #[test]
    fn structs_encode_with_field_names() {
        let bytes = SupplyDrop { coords: [1.5, 2.0] }.to_data().unwrap();
        let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(v, serde_json::json!({"coords": [1.5, 2.0]}));
    }

    #[test]
    fn msgpack_passes_through() {
        let raw = MsgPack(Bytes::from_static(&[0x93, 1, 2, 3]));
        assert_eq!(raw.to_data().unwrap(), raw.0);
        assert_eq!(MsgPack::nil().to_data().unwrap().as_ref(), &[0xc0]);
        assert_eq!("text".to_data().unwrap().as_ref(), b"\xa4text");
    }
}
