//! TLS and mTLS for the listeners: the certificate, key and client CA of `server.grpc.tls` and
//! `server.http.tls` read from PEM files into a rustls `ServerConfig` on the process's one crypto
//! provider (aws-lc-rs), swapped whole on reload, and the `heimdall_tls_*` metrics.
//!
//! A listener's configuration sits in an `ArcSwap`; each handshake takes the current one. A
//! reload builds a complete new configuration (certificate, key and client verifier together)
//! and swaps it in only when everything in it is valid, so a handshake never sees a new
//! certificate with an old CA or a key that does not match, and broken files leave the old
//! configuration serving. A reload follows a change of the files' contents (`file_watch`) or
//! SIGHUP.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::config::ServerConfig;
use crate::config::tls::{TlsConfig, TlsVersion};
use crate::file_watch::{Changes, Hangups};

/// The port a TLS configuration belongs to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Port {
    /// The ext_authz gRPC port: HTTP/2 only.
    Grpc,
    /// The HTTP side port: HTTP/2 and HTTP/1.1.
    Http,
}

impl Port {
    /// The `listener` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }

    /// Where its settings are in the configuration file.
    const fn field(self) -> &'static str {
        match self {
            Self::Grpc => "server.grpc.tls",
            Self::Http => "server.http.tls",
        }
    }

    /// What ALPN offers: gRPC needs HTTP/2 (Envoy's cluster negotiates `h2`).
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Self::Grpc => vec![b"h2".to_vec()],
            Self::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

impl EncodeLabelValue for Port {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// A TLS file heimdall cannot use: the setting, the path and what is wrong with it (never the
/// file's content, which may be a key).
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{field}` (`{}`): {problem}", path.display())]
pub struct TlsError {
    pub field: String,
    pub path: PathBuf,
    pub problem: String,
}

impl TlsError {
    fn new(port: Port, name: &str, path: &Path, problem: impl Into<String>) -> Self {
        Self {
            field: format!("{}.{name}", port.field()),
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A listener's TLS: the files it reads and the configuration in use.
pub struct ServerTls {
    port: Port,
    files: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    metrics: TlsMetrics,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("port", &self.port)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files of `files` for `port`; any problem is an error naming the setting.
    pub fn load(port: Port, files: &TlsConfig, metrics: TlsMetrics) -> Result<Self, TlsError> {
        let loaded = load(port, files)?;
        metrics.set_expiry(port, loaded.not_after);
        Ok(Self {
            port,
            files: files.clone(),
            current: ArcSwap::from_pointee(loaded.config),
            metrics,
        })
    }

    /// The port this serves.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The files it reads.
    fn paths(&self) -> Vec<PathBuf> {
        [&self.files.cert_file, &self.files.key_file]
            .into_iter()
            .chain(&self.files.client_ca_file)
            .cloned()
            .collect()
    }

    /// An acceptor with the configuration in use now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Counts a handshake that failed or did not finish in time.
    pub(crate) fn handshake_failed(&self) {
        self.metrics
            .handshake_failures
            .get_or_create(&ListenerLabels {
                listener: self.port,
            })
            .inc();
    }

    /// Reads the files again and serves them from the next handshake on; with any problem the
    /// configuration in use stays. Logs and counts the outcome either way.
    pub async fn reload(&self) -> Result<(), TlsError> {
        let (port, files) = (self.port, self.files.clone());
        let loaded = tokio::task::spawn_blocking(move || load(port, &files))
            .await
            .unwrap_or_else(|e| {
                Err(TlsError::new(
                    port,
                    "cert_file",
                    &self.files.cert_file,
                    format!("reading the files failed: {e}"),
                ))
            });
        let outcome = match loaded {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded.config));
                self.metrics.set_expiry(port, loaded.not_after);
                tracing::info!(
                    listener = port.as_str(),
                    not_after = loaded.not_after,
                    "TLS certificate reloaded"
                );
                Ok(())
            }
            Err(error) => {
                tracing::warn!(
                    listener = port.as_str(),
                    %error,
                    "TLS reload refused; the certificate already loaded keeps serving"
                );
                Err(error)
            }
        };
        self.metrics
            .reloads
            .get_or_create(&ReloadLabels {
                listener: port,
                outcome: if outcome.is_ok() {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
            })
            .inc();
        outcome
    }
}

/// The TLS of both ports, each `None` when it speaks plaintext.
#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    pub grpc: Option<Arc<ServerTls>>,
    pub http: Option<Arc<ServerTls>>,
}

impl ListenerTls {
    /// Reads the files of `server.grpc.tls` and `server.http.tls`; registers the metrics.
    pub fn load(server: &ServerConfig, registry: &mut Registry) -> Result<Self, TlsError> {
        let metrics = TlsMetrics::new(registry);
        let load = |port, files: &Option<TlsConfig>| {
            files
                .as_ref()
                .map(|files| ServerTls::load(port, files, metrics.clone()).map(Arc::new))
                .transpose()
        };
        Ok(Self {
            grpc: load(Port::Grpc, &server.grpc.tls)?,
            http: load(Port::Http, &server.http.tls)?,
        })
    }

    /// The ports that speak TLS.
    pub fn all(&self) -> Vec<Arc<ServerTls>> {
        self.grpc.iter().chain(&self.http).cloned().collect()
    }
}

/// Reloads the listeners' certificates; each keeps its old one when its files are
/// broken. Returns whether all reloaded.
pub async fn reload_certificates(listeners: &[Arc<ServerTls>]) -> bool {
    let mut all = true;
    for listener in listeners {
        all &= listener.reload().await.is_ok();
    }
    all
}

/// How late a change the kernel does not report (a replaced parent directory, a network file
/// system) is seen.
const WATCH_POLL: Duration = Duration::from_secs(30);

/// Reloads a listener's certificates when one of its files has new contents (an atomic rename,
/// a Kubernetes Secret's `..data` symlink swap) and every listener's on SIGHUP, until the task
/// is aborted.
pub async fn reload_on_change(listeners: Vec<Arc<ServerTls>>) {
    let mut paths: Vec<PathBuf> = Vec::new();
    for path in listeners.iter().flat_map(|l| l.paths()) {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    let mut changes = Changes::new(paths, WATCH_POLL).await;
    let mut hangup = Hangups::new("TLS");
    loop {
        tokio::select! {
            changed = changes.next() => {
                let affected: Vec<Arc<ServerTls>> = listeners
                    .iter()
                    .filter(|l| l.paths().iter().any(|p| changed.contains(p)))
                    .cloned()
                    .collect();
                tracing::info!(files = ?changed, "TLS files changed; reloading");
                reload_certificates(&affected).await;
            }
            () = hangup.recv() => {
                tracing::info!("SIGHUP: reloading TLS certificates");
                reload_certificates(&listeners).await;
            }
        }
    }
}

/// A configuration ready to serve and its certificate's expiry.
struct Loaded {
    config: rustls::ServerConfig,
    /// The leaf certificate's notAfter, in seconds since the Unix epoch.
    not_after: i64,
}

fn load(port: Port, files: &TlsConfig) -> Result<Loaded, TlsError> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certificates(port, "cert_file", &files.cert_file)?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::new(port, "cert_file", &files.cert_file, "no PEM certificate"))?;
    let not_after = not_after(leaf).ok_or_else(|| {
        TlsError::new(
            port,
            "cert_file",
            &files.cert_file,
            "the first certificate is not a readable X.509 certificate",
        )
    })?;
    let key = read_key(port, &files.key_file)?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        TlsError::new(
            port,
            "key_file",
            &files.key_file,
            format!("unusable private key: {e}"),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        TlsError::new(
            port,
            "key_file",
            &files.key_file,
            format!(
                "the private key does not match the certificate in `{}` ({e})",
                files.cert_file.display()
            ),
        )
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match files.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| {
            TlsError::new(
                port,
                "min_version",
                &files.cert_file,
                format!("not supported: {e}"),
            )
        })?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => builder.with_client_cert_verifier(client_verifier(
            port,
            ca_file,
            Arc::clone(&provider),
        )?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    config.alpn_protocols = port.alpn();
    Ok(Loaded { config, not_after })
}

/// Every certificate in a PEM file, in order; an error if there is none.
fn read_certificates(
    port: Port,
    name: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |problem: String| TlsError::new(port, name, path, problem);
    let bytes = std::fs::read(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not a PEM certificate file: {e}")))?;
    if certificates.is_empty() {
        return Err(error(
            "no PEM certificate (`BEGIN CERTIFICATE`) in it".into(),
        ));
    }
    Ok(certificates)
}

/// The first private key of a PEM file. The PEM parser's own errors are not passed on: they
/// may quote a line of the file.
fn read_key(port: Port, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let error = |problem: String| TlsError::new(port, "key_file", path, problem);
    let bytes = std::fs::read(path).map_err(|e| error(format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        error("no PEM private key (`BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`) in it".into())
    })
}

/// Requires client certificates that chain to a CA of `ca_file`.
fn client_verifier(
    port: Port,
    ca_file: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let error = |problem: String| TlsError::new(port, "client_ca_file", ca_file, problem);
    let mut roots = rustls::RootCertStore::empty();
    for (index, certificate) in read_certificates(port, "client_ca_file", ca_file)?
        .into_iter()
        .enumerate()
    {
        roots
            .add(certificate)
            .map_err(|e| error(format!("certificate {} is not a usable CA: {e}", index + 1)))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| error(format!("cannot verify clients with it: {e}")))
}

/// The leaf certificate's notAfter in seconds since the Unix epoch: Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity
/// SEQUENCE { notBefore, notAfter }, … }, … } (RFC 5280, 4.1).
fn not_after(certificate: &CertificateDer<'_>) -> Option<i64> {
    use simple_asn1::ASN1Block;
    let blocks = simple_asn1::from_der(certificate).ok()?;
    let Some(ASN1Block::Sequence(_, certificate)) = blocks.first() else {
        return None;
    };
    let Some(ASN1Block::Sequence(_, tbs)) = certificate.first() else {
        return None;
    };
    let skip = usize::from(matches!(tbs.first(), Some(ASN1Block::Explicit(..))));
    let Some(ASN1Block::Sequence(_, validity)) = tbs.get(skip + 3) else {
        return None;
    };
    match validity.get(1)? {
        ASN1Block::UTCTime(_, time) | ASN1Block::GeneralizedTime(_, time) => {
            Some(time.assume_utc().unix_timestamp())
        }
        _ => None,
    }
}

/// Serves the one certificate of a configuration; a reload replaces the whole configuration.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Self::Success => "success",
            Self::Failure => "failure",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Port,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    listener: Port,
    outcome: Outcome,
}

/// The `heimdall_tls_` metrics; families, so a listener without TLS exports nothing.
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    reloads: Family<ReloadLabels, Counter>,
    expiry: Family<ListenerLabels, Gauge>,
    handshake_failures: Family<ListenerLabels, Counter>,
}

impl TlsMetrics {
    /// Registers under `heimdall_tls_`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("heimdall_tls");
        r.register(
            "reloads",
            "Certificate reloads (file change or SIGHUP) by listener and outcome; a failure keeps the old certificate",
            metrics.reloads.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the certificate a listener serves, in seconds since the Unix epoch",
            metrics.expiry.clone(),
        );
        r.register(
            "handshake_failures",
            "TLS handshakes refused or not finished within header_read_timeout, by listener",
            metrics.handshake_failures.clone(),
        );
        metrics
    }

    fn set_expiry(&self, port: Port, not_after: i64) {
        self.expiry
            .get_or_create(&ListenerLabels { listener: port })
            .set(not_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_helpers::tls::{TestCa, write_pem};

    fn files(dir: &Path, cert: &str, key: &str, ca: Option<&str>) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join(cert),
            key_file: dir.join(key),
            client_ca_file: ca.map(|ca| dir.join(ca)),
            min_version: TlsVersion::Tls12,
        }
    }

    fn error(files: &TlsConfig) -> TlsError {
        load(Port::Grpc, files).err().expect("refused")
    }

    #[test]
    fn valid_files_load_with_alpn_and_expiry() {
        let dir = crate::test_helpers::tls::temp_dir("tls-unit-valid");
        let ca = TestCa::new("unit CA");
        let server = ca.server_cert();
        write_pem(&dir, "server", &server);
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        let loaded = load(
            Port::Grpc,
            &files(&dir, "server.crt", "server.key", Some("ca.crt")),
        )
        .unwrap();
        assert_eq!(loaded.config.alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(loaded.not_after, server.not_after);
        let http = load(Port::Http, &files(&dir, "server.crt", "server.key", None)).unwrap();
        assert_eq!(http.config.alpn_protocols.len(), 2);
    }

    #[test]
    fn every_broken_file_is_refused_naming_field_and_path() {
        let dir = crate::test_helpers::tls::temp_dir("tls-unit-broken");
        let ca = TestCa::new("unit CA");
        write_pem(&dir, "server", &ca.server_cert());
        write_pem(&dir, "other", &ca.server_cert());
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("garbage.pem"), "not pem at all\n").unwrap();

        let e = error(&files(&dir, "missing.crt", "server.key", None));
        assert_eq!(e.field, "server.grpc.tls.cert_file");
        assert!(e.to_string().contains("missing.crt"), "{e}");
        assert!(e.problem.contains("cannot read"), "{e}");

        let e = error(&files(&dir, "garbage.pem", "server.key", None));
        assert_eq!(e.field, "server.grpc.tls.cert_file");
        assert!(e.problem.contains("no PEM certificate"), "{e}");

        let e = error(&files(&dir, "server.crt", "server.crt", None));
        assert_eq!(e.field, "server.grpc.tls.key_file");
        assert!(e.problem.contains("no PEM private key"), "{e}");

        let e = error(&files(&dir, "server.crt", "other.key", None));
        assert_eq!(e.field, "server.grpc.tls.key_file");
        assert!(e.problem.contains("does not match"), "{e}");

        let e = error(&files(
            &dir,
            "server.crt",
            "server.key",
            Some("garbage.pem"),
        ));
        assert_eq!(e.field, "server.grpc.tls.client_ca_file");
        assert!(e.problem.contains("no PEM certificate"), "{e}");

        let e = error(&files(
            &dir,
            "server.crt",
            "server.key",
            Some("nothing.pem"),
        ));
        assert_eq!(e.field, "server.grpc.tls.client_ca_file");
        assert!(e.to_string().contains("nothing.pem"), "{e}");
    }

    #[test]
    fn key_errors_never_quote_the_key_file() {
        let dir = crate::test_helpers::tls::temp_dir("tls-unit-quote");
        let ca = TestCa::new("unit CA");
        let server = ca.server_cert();
        write_pem(&dir, "server", &server);
        // A key whose PEM armour is cut off: the parser would quote what it read.
        let key = server.key_pem.replace("-----END PRIVATE KEY-----", "");
        std::fs::write(dir.join("cut.key"), &key).unwrap();
        let e = error(&files(&dir, "server.crt", "cut.key", None));
        let shown = e.to_string();
        let body = key.lines().nth(1).unwrap();
        assert!(!shown.contains(body), "{shown}");
    }
}
