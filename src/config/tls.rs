//! The `tls` block of a listener (`server.grpc.tls`, `server.http.tls`): certificate, key and
//! optional client CA files. Pure data; `crate::tls` reads the files and serves them.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// TLS on a listener. Absent: the listener speaks plaintext. The files are read at start-up
/// (a missing, unreadable or malformed one is refused) and again when their contents change
/// (a rename over them, a Secret's `..data` swap) or on SIGHUP; a reload with
/// broken files is refused and the certificate already loaded keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate first, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1). Never logged.
    pub key_file: PathBuf,
    /// PEM file with the CA certificates that sign client certificates. Set: every client
    /// must present a certificate that chains to one of them (mTLS), or the handshake fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_their_numbers_and_default_to_1_2() {
        let tls: TlsConfig =
            serde_yaml_ng::from_str("cert_file: c.pem\nkey_file: k.pem\nmin_version: \"1.3\"\n")
                .unwrap();
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        let tls: TlsConfig =
            serde_yaml_ng::from_str("cert_file: c.pem\nkey_file: k.pem\n").unwrap();
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert!(tls.client_ca_file.is_none());
        let err = serde_yaml_ng::from_str::<TlsConfig>(
            "cert_file: c.pem\nkey_file: k.pem\nmin_version: \"1.1\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("1.1"), "{err}");
        assert!(
            serde_yaml_ng::from_str::<TlsConfig>("cert_file: c.pem\nkey: k.pem\n").is_err(),
            "unknown fields are refused"
        );
    }
}
