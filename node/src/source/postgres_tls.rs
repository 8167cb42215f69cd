//! TLS from the node to its PostgreSQL database, on the project's rustls
//! (ring provider) through `tokio-postgres-rustls`.
//!
//! The connection string's `sslmode` decides, with libpq's names and meanings:
//!
//! | `sslmode`        | TLS | the server's certificate is checked                              |
//! |------------------|-----|------------------------------------------------------------------|
//! | absent, disable  | no  | (plain connection, as before TLS was supported)                  |
//! | require          | yes | against `ca_file` if given (chain only), else not at all         |
//! | verify-ca        | yes | chain up to `ca_file`                                            |
//! | verify-full      | yes | chain up to `ca_file`, and the host name/IP of the connection    |
//! | prefer, allow    | refused: they fall back to a plain connection without saying so  |
//!
//! `tokio-postgres` itself knows only `disable`/`prefer`/`require`, so the
//! mode is taken out of the string here and the certificate checks are made
//! by the rustls client configuration. The CA is a file named in the table's
//! `postgres` section (`ca_file`), not a `sslrootcert` in the secret string.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the connection string asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "prefer" | "allow" => Err(format!(
                "sslmode={value} would fall back to an unencrypted connection without saying so; \
                 use sslmode=verify-full (with `ca_file`) or require, or sslmode=disable where the network is trusted"
            )),
            _ => Err("sslmode must be one of disable, require, verify-ca, verify-full".to_owned()),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One `key=value` pair of a libpq keyword/value string: byte span, key, value.
struct Pair<'a> {
    start: usize,
    end: usize,
    key: &'a str,
    value: String,
}

/// Splits a keyword/value connection string (libpq rules: values unquoted
/// up to white space, or single-quoted; `\` escapes the next character).
fn pairs(text: &str) -> Result<Vec<Pair<'_>>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= bytes.len() {
            return Ok(out);
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[start..i];
        i = skip_ws(i);
        if bytes.get(i) != Some(&b'=') {
            return Err(format!("missing `=` after the keyword {key:?}"));
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err("a quoted value has no closing quote".to_owned()),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1]);
                        i += 2;
                    }
                    Some(&b) => {
                        value.push(b);
                        i += 1;
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
        }
        let value = String::from_utf8_lossy(&value).into_owned();
        out.push(Pair { start, end: i, key, value });
    }
}

/// Checks a keyword the node handles itself; the mode for `sslmode`.
fn keyword(key: &str, value: &str) -> Result<Option<SslMode>, String> {
    match key {
        "sslmode" => SslMode::parse(value).map(Some),
        "sslrootcert" => Err("give the CA of the database server's certificate as `ca_file` in the table's \
                              postgres section, not as sslrootcert in the connection string"
            .to_owned()),
        "sslcert" | "sslkey" | "sslpassword" => {
            Err(format!("{key}: client certificates to the database are not supported; authenticate with a password"))
        }
        _ => Ok(None),
    }
}

/// The connection string without `sslmode` (and the mode it named). Handles
/// both the keyword/value form and the `postgres://` URL form. Never quotes
/// the string (it may hold a password).
pub fn take_sslmode(text: &str) -> Result<(String, Option<SslMode>), String> {
    let text = text.trim();
    let mut mode = None;
    if let Some(rest) = text.strip_prefix("postgres://").or_else(|| text.strip_prefix("postgresql://")) {
        let scheme = &text[..text.len() - rest.len()];
        let Some((head, query)) = rest.split_once('?') else {
            return Ok((text.to_owned(), None));
        };
        let mut kept = Vec::new();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match keyword(key, value)? {
                Some(m) => mode = Some(m),
                None => kept.push(param),
            }
        }
        let rebuilt =
            if kept.is_empty() { format!("{scheme}{head}") } else { format!("{scheme}{head}?{}", kept.join("&")) };
        return Ok((rebuilt, mode));
    }
    let mut rebuilt = String::with_capacity(text.len());
    let mut last = 0;
    for pair in pairs(text)? {
        if let Some(m) = keyword(pair.key, &pair.value)? {
            mode = Some(m);
            rebuilt.push_str(&text[last..pair.start]);
            last = pair.end;
        }
    }
    rebuilt.push_str(&text[last..]);
    Ok((rebuilt.trim().to_owned(), mode))
}

/// Why the TLS settings of a table cannot be used (the caller adds node and table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSetupError {
    /// `verify-ca`/`verify-full` without `ca_file`.
    NoCaFile(SslMode),
    /// `ca_file` with a plain connection.
    CaWithoutTls,
    /// The CA file cannot be read or holds no usable certificate.
    CaFile { path: String, reason: String },
}

/// How the node reaches one table's database: the parsed connection and the
/// TLS connector (none for a plain connection).
#[derive(Clone)]
pub struct Link {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub tls: Option<MakeRustlsConnect>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connection string.
        f.debug_struct("Link").field("mode", &self.mode).finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_ca(path: &Path) -> Result<rustls::RootCertStore, TlsSetupError> {
    let bad = |reason: String| TlsSetupError::CaFile { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
        roots.add(cert).map_err(|e| bad(format!("not a usable CA certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(bad("it holds no PEM certificate".to_owned()));
    }
    Ok(roots)
}

impl Link {
    /// The link for `config` (already stripped of `sslmode`) in `mode`, with
    /// the CA of `ca_file` when given.
    pub fn new(
        mut config: tokio_postgres::Config,
        mode: SslMode,
        ca_file: Option<&Path>,
    ) -> Result<Link, TlsSetupError> {
        let roots = match (mode, ca_file) {
            (SslMode::Disable, Some(_)) => return Err(TlsSetupError::CaWithoutTls),
            (SslMode::Disable, None) => {
                config.ssl_mode(WireMode::Disable);
                return Ok(Link { config, mode, tls: None });
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => return Err(TlsSetupError::NoCaFile(mode)),
            (_, Some(path)) => Some(Arc::new(read_ca(path)?)),
            (SslMode::Require, None) => None,
        };
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            Some(roots) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| {
                        TlsSetupError::CaFile {
                            path: ca_file.map(|p| p.display().to_string()).unwrap_or_default(),
                            reason: e.to_string(),
                        }
                    })?;
                if mode == SslMode::VerifyFull { webpki } else { Arc::new(ChainOnly(webpki)) }
            }
            None => Arc::new(Unauthenticated(provider.clone())),
        };
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::CaFile { path: String::new(), reason: e.to_string() })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What libpq 17 sends; servers before 17 ignore it.
        client.alpn_protocols = vec![b"postgresql".to_vec()];
        config.ssl_mode(WireMode::Require);
        Ok(Link { config, mode, tls: Some(MakeRustlsConnect::new(client)) })
    }
}

/// `verify-ca` (and `require` with a CA): the chain must end at the CA, the
/// name in the certificate is not compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        // The chain is checked before the name: a name error means the chain was good.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without a CA (libpq's meaning): encrypted, the server not
/// authenticated. The handshake signatures are still checked against the
/// certificate the server presents.
#[derive(Debug)]
struct Unauthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What went wrong in a TLS connection attempt, if it was TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server answered the TLS request with "no".
    ServerWithoutTls,
    /// The server's certificate did not pass the check (reason in rustls' words).
    Untrusted(String),
    /// Another handshake failure.
    Handshake(String),
}

/// Classifies a connection error as a TLS problem.
pub fn tls_failure(e: &tokio_postgres::Error) -> Option<TlsFailure> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(match r {
                rustls::Error::InvalidCertificate(c) => TlsFailure::Untrusted(certificate_problem(c)),
                other => TlsFailure::Handshake(other.to_string()),
            });
        }
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(match r {
                rustls::Error::InvalidCertificate(c) => TlsFailure::Untrusted(certificate_problem(c)),
                other => TlsFailure::Handshake(other.to_string()),
            });
        }
        // tokio-postgres' own words when the server declines the TLS request.
        if s.to_string() == "server does not support TLS" {
            return Some(TlsFailure::ServerWithoutTls);
        }
        source = s.source();
    }
    None
}

fn certificate_problem(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match c {
        C::UnknownIssuer => "it is not signed by the CA in `ca_file`".to_owned(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it does not name the host of the connection string".to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".to_owned(),
        C::Revoked => "it is revoked".to_owned(),
        // Also what a different CA with the same name as the right one gives.
        C::BadSignature => "it is not signed by the key of the CA in `ca_file`".to_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_both_forms() {
        let (rest, mode) =
            take_sslmode("host=db.example port=5432 sslmode=verify-full user=samkor password='a b\\'c'").expect("ok");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(rest, "host=db.example port=5432  user=samkor password='a b\\'c'");
        let parsed: tokio_postgres::Config = rest.parse().expect("the rest parses");
        assert_eq!(parsed.get_password(), Some(&b"a b'c"[..]));
        let (rest, mode) = take_sslmode("host=h sslmode = 'require'").expect("ok");
        assert_eq!((rest.as_str(), mode), ("host=h", Some(SslMode::Require)));
        let (rest, mode) = take_sslmode("host=h user=u").expect("ok");
        assert_eq!((rest.as_str(), mode), ("host=h user=u", None));
        let (rest, mode) = take_sslmode("postgresql://u:p@h:5432/db?sslmode=verify-ca&application_name=x").expect("ok");
        assert_eq!((rest.as_str(), mode), ("postgresql://u:p@h:5432/db?application_name=x", Some(SslMode::VerifyCa)));
        let (rest, mode) = take_sslmode("postgres://h/db?sslmode=disable").expect("ok");
        assert_eq!((rest.as_str(), mode), ("postgres://h/db", Some(SslMode::Disable)));
        let e = take_sslmode("host=h password=secret sslmode=prefer").unwrap_err();
        assert!(e.contains("sslmode=prefer would fall back to an unencrypted connection"), "{e}");
        assert!(!e.contains("secret"));
        assert!(take_sslmode("host=h sslmode=verify").unwrap_err().contains("one of disable, require"));
        assert!(take_sslmode("host=h sslrootcert=/x.pem").unwrap_err().contains("`ca_file`"));
        assert!(take_sslmode("host=h password='open").unwrap_err().contains("no closing quote"));
    }

    #[test]
    fn verification_needs_a_ca_and_a_ca_needs_tls() {
        let config: tokio_postgres::Config = "host=h".parse().expect("config");
        assert_eq!(
            Link::new(config.clone(), SslMode::VerifyFull, None).unwrap_err(),
            TlsSetupError::NoCaFile(SslMode::VerifyFull)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        assert_eq!(Link::new(config.clone(), SslMode::Disable, Some(&ca)).unwrap_err(), TlsSetupError::CaWithoutTls);
        assert!(matches!(
            Link::new(config.clone(), SslMode::VerifyCa, Some(&ca)).unwrap_err(),
            TlsSetupError::CaFile { .. }
        ));
        std::fs::write(&ca, "not a certificate").expect("write");
        let e = Link::new(config.clone(), SslMode::VerifyCa, Some(&ca)).unwrap_err();
        assert!(matches!(&e, TlsSetupError::CaFile { reason, .. } if reason.contains("no PEM certificate")), "{e:?}");
        let plain = Link::new(config.clone(), SslMode::Disable, None).expect("plain");
        assert!(plain.tls.is_none() && plain.config.get_ssl_mode() == WireMode::Disable);
        let require = Link::new(config, SslMode::Require, None).expect("encrypted");
        assert!(require.tls.is_some() && require.config.get_ssl_mode() == WireMode::Require);
    }
}
