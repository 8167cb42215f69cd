//! The opt-out list: identity numbers whose rows never leave the node.
//!
//! The file holds one 12-digit identity number per line (`YYYYMMDDNNNC`, a
//! hyphen before the last four digits allowed); `#` starts a comment. It is
//! re-read whenever it changes on disk, checked at the start of every query,
//! so an opt-out takes effect without a restart. A list that cannot be read
//! fails the query (fail closed) rather than serving data it should hide.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Why the list could not be used. Never quotes an identity number.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OptOutError {
    #[error("cannot read opt-out list {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("opt-out list {} line {line}: not a 12-digit personal identity number", path.display())]
    Malformed { path: PathBuf, line: usize },
}

/// A set of opted-out persons, keyed by the identity number as an integer.
/// Every scanned row is looked up: a fast (non-SipHash) hasher, as in DataFusion.
pub type OptOutSet = datafusion::common::HashSet<u64>;

/// Parses a 12-digit identity number (`YYYYMMDDNNNC` or `YYYYMMDD-NNNC`).
#[inline]
pub fn pnr_key(pnr: &str) -> Option<u64> {
    let b = pnr.as_bytes();
    if b.len() == 12 {
        // The usual form, eight digits at a time.
        return crate::pseudonym::twelve_digits(b);
    }
    let mut v: u64 = 0;
    let mut digits = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                v = v * 10 + u64::from(c - b'0');
                digits += 1;
            }
            b'-' if i == 8 && b.len() == 13 => {}
            _ => return None,
        }
    }
    (digits == 12).then_some(v)
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    set: Arc<OptOutSet>,
}

/// The opt-out list of a node, reloaded on change.
#[derive(Debug)]
pub struct OptOutList {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl OptOutList {
    /// Opens and reads the list; fails if it is missing or malformed.
    pub fn open(path: &Path) -> Result<OptOutList, OptOutError> {
        let list =
            OptOutList { path: path.to_owned(), loaded: Mutex::new(Loaded { stamp: None, set: Arc::default() }) };
        list.current()?;
        Ok(list)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The list as it is on disk now (re-read only if the file changed).
    pub fn current(&self) -> Result<Arc<OptOutSet>, OptOutError> {
        let read_err = |e: std::io::Error| OptOutError::Read { path: self.path.clone(), reason: e.to_string() };
        let meta = std::fs::metadata(&self.path).map_err(read_err)?;
        let stamp = (meta.modified().map_err(read_err)?, meta.len());
        let mut loaded = self.loaded.lock().expect("opt-out lock poisoned");
        if loaded.stamp != Some(stamp) {
            let text = std::fs::read_to_string(&self.path).map_err(read_err)?;
            let set = parse(&self.path, &text)?;
            tracing::info!(path = %self.path.display(), persons = set.len(), "opt-out list loaded");
            *loaded = Loaded { stamp: Some(stamp), set: Arc::new(set) };
        }
        Ok(loaded.set.clone())
    }
}

fn parse(path: &Path, text: &str) -> Result<OptOutSet, OptOutError> {
    let mut set = OptOutSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let key = pnr_key(line).ok_or(OptOutError::Malformed { path: path.to_owned(), line: i + 1 })?;
        set.insert(key);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(pnr_key("191212121212"), Some(191212121212));
        assert_eq!(pnr_key("19121212-1212"), Some(191212121212));
        assert_eq!(pnr_key("1912121212"), None);
        assert_eq!(pnr_key("19121212+1212"), None);
        assert_eq!(pnr_key("1912121-21212"), None);
        assert_eq!(pnr_key("1912121-1212"), None);
        assert_eq!(pnr_key("19121212121a"), None);
        assert_eq!(pnr_key(" 19121212121"), None);
    }

    #[test]
    fn reloads_on_change_and_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("optout.txt");
        std::fs::write(&path, "# opted out\n191212121212\n\n").expect("write");
        let list = OptOutList::open(&path).expect("valid list");
        assert!(list.current().expect("list").contains(&191212121212));
        std::fs::write(&path, "191212121212\n19121212-1213 # added later\n").expect("write");
        assert_eq!(list.current().expect("list").len(), 2);
        std::fs::write(&path, "191212121212\n42\n").expect("write");
        let e = list.current().unwrap_err();
        assert_eq!(e, OptOutError::Malformed { path: path.clone(), line: 2 });
        assert!(!e.to_string().contains("42"), "never quote a line: {e}");
        std::fs::remove_file(&path).expect("remove");
        assert!(list.current().unwrap_err().to_string().starts_with("cannot read opt-out list"));
    }
}
