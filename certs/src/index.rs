//! `index.json`: the record of every certificate a [`crate::CertDir`] issued,
//! and of which are revoked. The CRL is rebuilt from it, so it is the source of
//! truth for revocation.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Serial;

/// The version written into `index.json`.
const INDEX_VERSION: u32 = 1;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The router's certificate (EKU serverAuth).
    Router,
    /// A game server's client certificate (EKU clientAuth).
    Client,
}

/// One issued certificate, as recorded in `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Its serial number.
    pub serial: Serial,
    /// Router or client.
    pub kind: Kind,
    /// Its subject CN: the server id of a client certificate.
    pub common_name: String,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The certificate file, relative to the directory.
    pub cert_file: String,
    /// The private key file, relative to the directory.
    pub key_file: String,
    /// Whether it is revoked (listed in `crl.pem`).
    pub revoked: bool,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub revoked_at: Option<OffsetDateTime>,
}

/// The whole `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Index {
    /// Format version, [`INDEX_VERSION`].
    pub(crate) version: u32,
    /// The number of the last CRL written; the next one gets this plus one.
    pub(crate) crl_number: u64,
    /// Every certificate issued, oldest first.
    pub(crate) certs: Vec<IndexEntry>,
}

impl Index {
    /// An index with nothing issued yet, whose first CRL is number 1.
    pub(crate) fn new() -> Self {
        Self {
            version: INDEX_VERSION,
            crl_number: 0,
            certs: Vec::new(),
        }
    }

    /// The entry with this serial, if any.
    pub(crate) fn by_serial(&self, serial: &Serial) -> Option<&IndexEntry> {
        self.certs.iter().find(|e| &e.serial == serial)
    }

    /// The indices of the entries a revoke target names: the entry with that
    /// serial if `target` is one, otherwise every entry with that CN.
    pub(crate) fn matching(&self, target: &str) -> Vec<usize> {
        if let Ok(serial) = target.parse::<Serial>() {
            let by_serial: Vec<usize> = (0..self.certs.len())
                .filter(|&i| self.certs[i].serial == serial)
                .collect();
            if !by_serial.is_empty() {
                return by_serial;
            }
        }
        (0..self.certs.len())
            .filter(|&i| self.certs[i].common_name == target)
            .collect()
    }

    /// The revoked serials with their revocation times, for the CRL.
    pub(crate) fn revoked(&self) -> Vec<(Serial, OffsetDateTime)> {
        self.certs
            .iter()
            .filter(|e| e.revoked)
            .map(|e| (e.serial.clone(), e.revoked_at.unwrap_or(e.not_before)))
            .collect()
    }

    /// The index as pretty JSON, newline-terminated.
    pub(crate) fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        Ok(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cn: &str, serial: &str) -> IndexEntry {
        IndexEntry {
            serial: serial.parse().unwrap(),
            kind: Kind::Client,
            common_name: cn.to_owned(),
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH,
            cert_file: format!("{cn}.pem"),
            key_file: format!("{cn}.key"),
            revoked: false,
            revoked_at: None,
        }
    }

    #[test]
    fn json_round_trips_with_readable_fields() {
        let mut index = Index::new();
        index.certs.push(entry("dev-01", "4f01"));
        index.certs[0].revoked = true;
        index.certs[0].revoked_at = Some(OffsetDateTime::UNIX_EPOCH);
        let json = String::from_utf8(index.to_json().unwrap()).unwrap();
        assert!(json.contains("\"serial\": \"4f01\""), "{json}");
        assert!(json.contains("\"kind\": \"client\""), "{json}");
        assert!(
            json.contains("\"revoked_at\": \"1970-01-01T00:00:00Z\""),
            "{json}"
        );
        let back: Index = serde_json::from_str(&json).unwrap();
        assert_eq!(back, index);
    }

    #[test]
    fn a_serial_wins_over_a_cn_and_a_cn_matches_every_reissue() {
        let mut index = Index::new();
        index.certs.push(entry("cafe", "01"));
        index.certs.push(entry("other", "cafe"));
        index.certs.push(entry("cafe", "02"));
        assert_eq!(index.matching("cafe"), vec![1]);
        assert_eq!(index.matching("CA:FE"), vec![1]);
        assert_eq!(index.matching("other"), vec![1]);
        index.certs.remove(1);
        assert_eq!(index.matching("cafe"), vec![0, 1]);
        assert!(index.matching("nobody").is_empty());
    }
}
