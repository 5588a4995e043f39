//! Test certificates made at run time with rcgen (CAs, server and client certificates; no key
//! material in the repository), files written the way a Secret rotation writes them (atomic
//! rename), and a rustls client that reports what a handshake with a heimdall port gave.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::process::{fail, fresh_dir};

/// How long a test handshake (and the read after it) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate authority for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate issued by a [`TestCa`], with its key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    /// notAfter, in seconds since the Unix epoch; distinct for every certificate issued.
    pub not_after: i64,
}

fn must<T>(result: Result<T, rcgen::Error>, what: &str) -> T {
    result.unwrap_or_else(|e| fail(&format!("{what}: {e}")))
}

/// Validity from an hour ago to 30 days ahead, plus a per-certificate number of seconds, so
/// two certificates tell apart by their notAfter too.
fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after =
        now + time::Duration::days(30) + time::Duration::seconds(i64::from(super::unique_id()));
}

impl TestCa {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = must(CertificateParams::new(Vec::<String>::new()), "CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params);
        let key = must(KeyPair::generate(), "CA key");
        Self {
            issuer: must(CertifiedIssuer::self_signed(params, key), "CA certificate"),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `heimdall` (the SNI of envoy/envoy-mtls.yaml), `localhost`,
    /// `127.0.0.1` and `::1`.
    pub fn server_cert(&self) -> IssuedCert {
        self.issue(
            "heimdall",
            &["heimdall", "localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate for `name`.
    pub fn client_cert(&self, name: &str) -> IssuedCert {
        self.issue(name, &[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> IssuedCert {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = must(CertificateParams::new(sans), "certificate params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let not_after = params.not_after.unix_timestamp();
        let key = must(KeyPair::generate(), "certificate key");
        let cert = must(params.signed_by(&key, &self.issuer), "certificate");
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            not_after,
        }
    }
}

/// A fresh directory for a test's certificate files.
pub fn temp_dir(prefix: &str) -> PathBuf {
    fresh_dir(prefix).unwrap_or_else(|e| fail(&e))
}

/// Writes `<stem>.crt` and `<stem>.key` in `dir`, each by an atomic rename of a temporary file,
/// as a Secret update or cert-manager's rotation replaces them.
pub fn write_pem(dir: &Path, stem: &str, cert: &IssuedCert) {
    write_atomically(&dir.join(format!("{stem}.crt")), &cert.cert_pem);
    write_atomically(&dir.join(format!("{stem}.key")), &cert.key_pem);
}

/// Writes `text` to a temporary file next to `path`, then renames it over `path`.
pub fn write_atomically(path: &Path, text: &str) {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .unwrap_or_else(|e| fail(&format!("write {}: {e}", path.display())));
}

/// A directory laid out as the kubelet mounts a Secret: `tls.crt -> ..data/tls.crt`,
/// `..data -> ..v1`; [`SecretDir::publish`] writes a new `..vN` and swaps `..data` to it in one
/// rename, so every file changes at once, as in a cert-manager rotation.
pub struct SecretDir {
    dir: PathBuf,
    version: u32,
}

impl SecretDir {
    /// An empty directory; nothing is mounted until the first [`SecretDir::publish`].
    pub fn new(prefix: &str) -> Self {
        Self {
            dir: temp_dir(prefix),
            version: 0,
        }
    }

    /// The path a configuration names, e.g. `path("tls.crt")`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Publishes `files` (name, contents) as the Secret's new version.
    pub fn publish(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let staged = self.dir.join(&version);
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir(&staged)?;
            for (name, contents) in files {
                std::fs::write(staged.join(name), contents)?;
                let link = self.dir.join(name);
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
                }
            }
            let swap = self.dir.join("..data_tmp");
            std::os::unix::fs::symlink(&version, &swap)?;
            std::fs::rename(&swap, self.dir.join("..data"))
        })();
        result.unwrap_or_else(|e| fail(&format!("publish {}: {e}", staged.display())));
    }
}

/// What a TLS connection to a port gave: the server's certificate and the ALPN protocol.
#[derive(Debug)]
pub struct Handshake {
    pub peer_cert: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
}

/// Connects to `addr` over TLS as `localhost`, trusting `ca`, offering ALPN `h2`, presenting
/// `client` if given; then sends the HTTP/2 preface and reads the server's first bytes, so that
/// a client certificate refused after the handshake (TLS 1.3 checks it then) shows as an error
/// here. `Err` carries rustls' or the socket's error.
pub async fn handshake(
    addr: SocketAddr,
    ca: &TestCa,
    client: Option<&IssuedCert>,
) -> std::io::Result<Handshake> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_unbounded(addr, ca, client))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
}

async fn handshake_unbounded(
    addr: SocketAddr,
    ca: &TestCa,
    client: Option<&IssuedCert>,
) -> std::io::Result<Handshake> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).map_err(std::io::Error::other)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            use rustls::pki_types::pem::PemObject as _;
            let cert = CertificateDer::from(client.der.clone());
            let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
                .map_err(std::io::Error::other)?;
            builder
                .with_client_auth_cert(vec![cert], key)
                .map_err(std::io::Error::other)?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    tls.flush().await?;
    let mut first = [0u8; 9];
    tls.read_exact(&mut first).await?;
    let (_, session) = tls.get_ref();
    Ok(Handshake {
        peer_cert: session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.to_vec())
            .unwrap_or_default(),
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// The TLS alert inside a handshake error, if that is what it is.
pub fn alert_of(error: &std::io::Error) -> Option<rustls::AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}
