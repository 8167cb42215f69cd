//! TLS 1.3 with mutual authentication, for every connection in a federation.
//!
//! Every party (coordinator, nodes, users) holds a certificate issued by the
//! federation CA. Servers accept only TLS 1.3 and only clients whose certificate
//! chains to that CA; the caller's identity is the common name of its certificate
//! ([`peer_identity`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A TLS handshake that has not finished after this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS material could not be used. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} file {} holds no PEM certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("key file {} holds no PEM private key: {reason}", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error("CA file {} is not a usable certificate authority: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("certificate {} and key {} do not form a TLS identity: {reason}", cert.display(), key.display())]
    BadIdentity { cert: PathBuf, key: PathBuf, reason: String },
}

/// The three files that make up a party's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TlsFiles {
    /// Certificate (PEM), issued by the federation CA.
    pub cert: PathBuf,
    /// Private key (PEM) of `cert`.
    pub key: PathBuf,
    /// The federation CA certificate (PEM); peers must chain to it.
    pub ca: PathBuf,
}

/// TLS material read from disk and checked.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    files: TlsFiles,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    ca: Vec<CertificateDer<'static>>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

fn certs(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.to_owned() });
    }
    Ok(certs)
}

impl TlsFiles {
    /// Resolves relative paths against `base` (the directory of the config file).
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        TlsFiles { cert: base.join(&self.cert), key: base.join(&self.key), ca: base.join(&self.ca) }
    }

    /// Reads and checks the files.
    pub fn load(&self) -> Result<TlsIdentity, TlsError> {
        let cert_pem = read("certificate", &self.cert)?;
        let key_pem = read("key", &self.key)?;
        let ca_pem = read("CA", &self.ca)?;
        let certs = certs("certificate", &self.cert, &cert_pem)?;
        let ca = certs_ca(&self.ca, &ca_pem)?;
        let id = TlsIdentity { files: self.clone(), cert_pem, key_pem, ca_pem, certs, ca };
        // Building a server config checks that key and certificate belong together.
        id.server_config()?;
        Ok(id)
    }
}

fn certs_ca(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs("CA", path, pem)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| TlsError::NoKey { path: self.files.key.clone(), reason: e.to_string() })
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone()).map_err(|e| TlsError::BadCa { path: self.files.ca.clone(), reason: e.to_string() })?;
        }
        Ok(roots)
    }

    /// A server configuration: TLS 1.3 only, a client certificate issued by the
    /// federation CA required, HTTP/2 negotiated for gRPC.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = provider();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider.clone())
                .build()
                .map_err(|e| TlsError::BadCa { path: self.files.ca.clone(), reason: e.to_string() })?;
        let bad_identity = |reason: String| TlsError::BadIdentity {
            cert: self.files.cert.clone(),
            key: self.files.key.clone(),
            reason,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad_identity(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key()?)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => bad_identity(
                    "the key is not the private key of this certificate (they belong to different pairs)".into(),
                ),
                other => bad_identity(other.to_string()),
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration for tonic channels: presents this identity and trusts
    /// only the federation CA. `domain` is the name the server's certificate must carry.
    pub fn client_config(&self, domain: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(domain)
    }

    /// The common name of this identity's own certificate.
    pub fn common_name(&self) -> Option<String> {
        self.certs.first().and_then(|c| common_name(c))
    }
}

/// The common name of a DER certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// The authenticated identity of the caller: the common name of its client
/// certificate. `None` when the request did not arrive over mutual TLS.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    certs.first().and_then(|c| common_name(c))
}

/// Accepts TCP connections on `listener` and completes TLS handshakes
/// concurrently, yielding the established streams for
/// `tonic::transport::Server::serve_with_incoming`. A failed handshake (no
/// certificate, wrong CA, TLS 1.2) is logged and the connection dropped.
/// The accept loop ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> + Send + 'static {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Installs ring as the process-wide rustls crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_files_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files =
            TlsFiles { cert: dir.path().join("c.pem"), key: dir.path().join("k.pem"), ca: dir.path().join("ca.pem") };
        let e = files.load().unwrap_err().to_string();
        assert!(e.starts_with("cannot read certificate file ") && e.contains("c.pem"), "{e}");
        std::fs::write(&files.cert, "not a certificate").expect("write");
        std::fs::write(&files.key, "nope").expect("write");
        std::fs::write(&files.ca, "nope").expect("write");
        let e = files.load().unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate") && e.contains("c.pem"), "{e}");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).expect("cert");
        let files =
            TlsFiles { cert: dir.path().join("c.pem"), key: dir.path().join("k.pem"), ca: dir.path().join("ca.pem") };
        std::fs::write(&files.cert, a.cert.pem()).expect("write");
        std::fs::write(&files.key, b.signing_key.serialize_pem()).expect("write");
        std::fs::write(&files.ca, a.cert.pem()).expect("write");
        let e = files.load().unwrap_err().to_string();
        assert!(e.contains("do not form a TLS identity"), "{e}");
    }
}
