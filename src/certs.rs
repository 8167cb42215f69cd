//! `samkor certs init`: a development certificate authority and certificates
//! for a coordinator, the nodes and named users, plus a federation
//! pseudonymisation key. For demos and tests only: a real federation uses
//! certificates from its own CA and a key generated and held by the holders.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot generate certificate {name}: {source}")]
    Generate { name: String, source: rcgen::Error },
    #[error("name {0:?} is not usable in a certificate: use letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("cannot read {}: {source}; `samkor certs init` writes the CA there", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} with {} is not a usable CA: {source}", cert.display(), key.display())]
    BadCa { cert: PathBuf, key: PathBuf, source: rcgen::Error },
}

/// The file names `init` writes, relative to its output directory.
pub fn cert_file(name: &str) -> String {
    format!("{name}.pem")
}
pub fn key_file(name: &str) -> String {
    format!("{name}.key")
}
/// Certificate name of a node serving `register`.
pub fn node_name(register: &str) -> String {
    format!("node-{register}")
}
/// Certificate name of the coordinator.
pub const COORDINATOR: &str = "coordinator";

fn write(path: &Path, contents: &[u8], secret: bool) -> Result<(), CertsError> {
    let err = |source| CertsError::Write { path: path.to_owned(), source };
    std::fs::write(path, contents).map_err(err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

fn check_name(name: &str) -> Result<(), CertsError> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(CertsError::BadName(name.to_owned())) }
}

/// Writes `ca.pem`/`ca.key`, `coordinator.pem/.key`, `node-<r>.pem/.key` for
/// each register and `<user>.pem/.key` for each user into `out`. Every
/// certificate is valid for `localhost`, 127.0.0.1 and ::1, with its name as
/// common name (the identity the services see).
pub fn init(out: &Path, registers: &[&str], users: &[&str]) -> Result<(), CertsError> {
    std::fs::create_dir_all(out).map_err(|source| CertsError::Write { path: out.to_owned(), source })?;
    let gen_err = |name: &str| {
        let name = name.to_owned();
        move |source| CertsError::Generate { name: name.clone(), source }
    };
    let ca_key = KeyPair::generate().map_err(gen_err("ca"))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("ca"))?;
    ca_params.distinguished_name.push(DnType::CommonName, "samkor development CA");
    ca_params.distinguished_name.push(DnType::OrganizationName, "samkor federation (development)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(gen_err("ca"))?;
    write(&out.join("ca.pem"), ca_cert.pem().as_bytes(), false)?;
    write(&out.join("ca.key"), ca_key.serialize_pem().as_bytes(), true)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names: Vec<String> = vec![COORDINATOR.to_owned()];
    names.extend(registers.iter().map(|r| node_name(r)));
    names.extend(users.iter().map(|u| (*u).to_owned()));
    sign(out, &issuer, &names)
}

/// Issues certificates for `names` (e.g. a holder's workers) from the CA
/// that `init` wrote to `dir` (`ca.pem`, `ca.key`), into `dir`. Like
/// `init`'s, each is valid for `localhost`, 127.0.0.1 and ::1 and its name.
pub fn issue(dir: &Path, names: &[String]) -> Result<(), CertsError> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CertsError::Read { path: path.to_owned(), source })
    };
    let bad = |source| CertsError::BadCa { cert: cert.clone(), key: key.clone(), source };
    let ca_key = KeyPair::from_pem(&read(&key)?).map_err(bad)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&cert)?, ca_key).map_err(bad)?;
    sign(dir, &issuer, names)
}

fn sign(out: &Path, issuer: &Issuer<'_, KeyPair>, names: &[String]) -> Result<(), CertsError> {
    let gen_err = |name: &str| {
        let name = name.to_owned();
        move |source| CertsError::Generate { name: name.clone(), source }
    };
    for name in names {
        check_name(name)?;
        let key = KeyPair::generate().map_err(gen_err(name))?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), name.clone()]).map_err(gen_err(name))?;
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, issuer).map_err(gen_err(name))?;
        write(&out.join(cert_file(name)), cert.pem().as_bytes(), false)?;
        write(&out.join(key_file(name)), key.serialize_pem().as_bytes(), true)?;
    }
    Ok(())
}

/// Writes a fresh random 256-bit federation pseudonymisation key (64 hex digits).
pub fn write_federation_key(path: &Path) -> Result<(), CertsError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| CertsError::Write { path: path.to_owned(), source: e.into() })?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    write(path, format!("{hex}\n").as_bytes(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_loadable_federation() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &["hip"], &["alice"]).expect("certs");
        for f in ["ca.pem", "ca.key", "coordinator.pem", "node-hip.key", "alice.pem"] {
            assert!(dir.path().join(f).is_file(), "{f} missing");
        }
        let files = samkor_proto::tls::TlsFiles {
            cert: dir.path().join("alice.pem"),
            key: dir.path().join("alice.key"),
            ca: dir.path().join("ca.pem"),
        };
        let id = files.load().expect("usable identity");
        assert_eq!(id.common_name().as_deref(), Some("alice"));
        let e = init(dir.path(), &[], &["bad name"]).unwrap_err().to_string();
        assert_eq!(e, "name \"bad name\" is not usable in a certificate: use letters, digits, '-', '_' or '.'");
        issue(dir.path(), &["worker-hip-1".to_owned()]).expect("a certificate from the same CA");
        let files = samkor_proto::tls::TlsFiles {
            cert: dir.path().join("worker-hip-1.pem"),
            key: dir.path().join("worker-hip-1.key"),
            ca: dir.path().join("ca.pem"),
        };
        assert_eq!(files.load().expect("usable identity").common_name().as_deref(), Some("worker-hip-1"));
        let e = issue(&dir.path().join("absent"), &["w".to_owned()]).unwrap_err().to_string();
        assert!(e.starts_with("cannot read ") && e.contains("absent/ca.key"), "{e}");
        let key = dir.path().join("federation.key");
        write_federation_key(&key).expect("key");
        assert_eq!(std::fs::read_to_string(&key).expect("read").trim().len(), 64);
    }
}
