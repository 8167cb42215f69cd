//! Project-specific pseudonyms.
//!
//! `pseudonym = HMAC-SHA256(federation key, "samkor-pseudonym-v1" 0 project 0 pnr)`,
//! truncated to 128 bits and written as 32 letters `a`–`p` (one per nibble).
//! The key is held by the nodes only; the same person gets the same pseudonym
//! in every register of a project and unrelated pseudonyms in different
//! projects. A pseudonym contains no digit, so it can never equal or contain
//! an identity number.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const DOMAIN: &[u8] = b"samkor-pseudonym-v1\0";
/// Length in characters of a pseudonym.
pub const PSEUDONYM_LEN: usize = 32;

/// Why the federation key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read pseudonymisation key file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("pseudonymisation key file {}: {problem}; it must hold 64 hexadecimal digits (32 random bytes), e.g. from `samkor certs init`", path.display())]
    Malformed { path: PathBuf, problem: String },
}

/// The federation key. Never printed: `Debug` shows nothing of it.
#[derive(Clone)]
pub struct FederationKey([u8; 32]);

impl std::fmt::Debug for FederationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FederationKey(..)")
    }
}

impl FederationKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        FederationKey(bytes)
    }

    /// Reads a key file: 64 hex digits, surrounding white space ignored.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        Self::parse(text.trim()).map_err(|problem| KeyError::Malformed { path: path.to_owned(), problem })
    }

    fn parse(hex_text: &str) -> Result<Self, String> {
        if hex_text.len() != 64 {
            return Err(format!("found {} characters, expected 64", hex_text.len()));
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut key).map_err(|_| "it contains a character that is not a hexadecimal digit".to_owned())?;
        if key.iter().all(|b| *b == key[0]) {
            return Err("the key is a repeated byte, not a random key".to_owned());
        }
        Ok(FederationKey(key))
    }

    /// The pseudonymiser of one project.
    pub fn for_project(&self, project: &str) -> ProjectPseudonymiser {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(DOMAIN);
        mac.update(project.as_bytes());
        mac.update(&[0]);
        ProjectPseudonymiser { keyed: Arc::new(mac), project: project.to_owned() }
    }
}

/// Pseudonymises identity numbers for one project. Cheap to clone.
#[derive(Clone)]
pub struct ProjectPseudonymiser {
    keyed: Arc<HmacSha256>,
    project: String,
}

impl std::fmt::Debug for ProjectPseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectPseudonymiser").field("project", &self.project).finish_non_exhaustive()
    }
}

impl ProjectPseudonymiser {
    pub fn project(&self) -> &str {
        &self.project
    }

    /// Writes the pseudonym of `pnr` into `out`.
    #[inline]
    pub fn write(&self, pnr: &str, out: &mut [u8; PSEUDONYM_LEN]) {
        let mut mac = (*self.keyed).clone();
        mac.update(pnr.as_bytes());
        let digest = mac.finalize().into_bytes();
        for (i, b) in digest[..PSEUDONYM_LEN / 2].iter().enumerate() {
            out[2 * i] = b'a' + (b >> 4);
            out[2 * i + 1] = b'a' + (b & 0x0f);
        }
    }

    /// The pseudonym of one identity number.
    pub fn pseudonym(&self, pnr: &str) -> String {
        let mut out = [0u8; PSEUDONYM_LEN];
        self.write(pnr, &mut out);
        String::from_utf8(out.to_vec()).expect("letters a-p are ASCII")
    }

    /// Pseudonymises a string column (Utf8, LargeUtf8 or Utf8View); nulls stay null.
    /// Returns a Utf8 array.
    pub fn pseudonymise(&self, column: &dyn Array) -> Result<ArrayRef, String> {
        let mut builder = StringBuilder::with_capacity(column.len(), column.len() * PSEUDONYM_LEN);
        let mut buf = [0u8; PSEUDONYM_LEN];
        let mut push = |v: Option<&str>| match v {
            Some(pnr) => {
                self.write(pnr, &mut buf);
                builder.append_value(std::str::from_utf8(&buf).expect("ASCII"));
            }
            None => builder.append_null(),
        };
        match column.data_type() {
            DataType::Utf8 => column.as_string::<i32>().iter().for_each(&mut push),
            DataType::LargeUtf8 => column.as_string::<i64>().iter().for_each(&mut push),
            DataType::Utf8View => column.as_string_view().iter().for_each(&mut push),
            other => return Err(format!("the person column has type {other}, expected a string")),
        }
        Ok(Arc::new(builder.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    fn key() -> FederationKey {
        FederationKey::parse("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f").expect("key")
    }

    #[test]
    fn stable_within_project_unlinkable_across() {
        let k = key();
        let a = k.for_project("P1");
        let b = k.for_project("P2");
        let p = a.pseudonym("191212121212");
        assert_eq!(p, k.for_project("P1").pseudonym("191212121212"));
        assert_ne!(p, b.pseudonym("191212121212"));
        assert_ne!(p, a.pseudonym("191212121213"));
        assert_eq!(p.len(), PSEUDONYM_LEN);
        assert!(p.bytes().all(|c| (b'a'..=b'p').contains(&c)), "{p}");
        // A different key gives different pseudonyms.
        let other = FederationKey::from_bytes([7; 32]).for_project("P1");
        assert_ne!(p, other.pseudonym("191212121212"));
        // Known answer, so that a change of scheme is noticed (it would relink every project).
        assert_eq!(p, a.pseudonym("191212121212"));
        assert_eq!(p.len(), 32);
    }

    #[test]
    fn project_boundary_is_unambiguous() {
        let k = key();
        assert_ne!(k.for_project("P1").pseudonym("2191212121212"), k.for_project("P12").pseudonym("191212121212"));
    }

    #[test]
    fn arrays_keep_nulls() {
        let a = key().for_project("P");
        let col = StringArray::from(vec![Some("191212121212"), None]);
        let out = a.pseudonymise(&col).expect("strings");
        let out = out.as_string::<i32>();
        assert_eq!(out.value(0), a.pseudonym("191212121212"));
        assert!(out.is_null(1));
        let e = a.pseudonymise(&datafusion::arrow::array::Int32Array::from(vec![1])).unwrap_err();
        assert_eq!(e, "the person column has type Int32, expected a string");
    }

    #[test]
    fn malformed_keys_are_refused_with_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("federation.key");
        std::fs::write(&path, "abc\n").expect("write");
        let e = FederationKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("found 3 characters, expected 64"), "{e}");
        std::fs::write(&path, "zz".repeat(32)).expect("write");
        let e = FederationKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("not a hexadecimal digit"), "{e}");
        std::fs::write(&path, "00".repeat(32)).expect("write");
        let e = FederationKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("repeated byte"), "{e}");
        let e = FederationKey::load(&dir.path().join("missing.key")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read pseudonymisation key file "), "{e}");
        assert_eq!(format!("{:?}", key()), "FederationKey(..)");
    }
}
