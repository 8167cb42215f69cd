//! The care-provider directory: which certificate identities may follow up
//! their own reported data without a research project (DOMAIN.md rule 5), and
//! the reporting unit (hospital) each is bound to.
//!
//! ```toml
//! # directory.toml, named by `[governance] directory` in coordinator.toml
//! [[providers]]
//! identity = "dora"        # the certificate's common name
//! hospital = "Danderyd"    # the reporting unit, exactly as written in the registers
//! ```
//!
//! Such a caller names the project [`DIRECT_PROJECT`]; the coordinator turns
//! the entry into an approval of its own (aggregates only, its unit's rows
//! only) and every node filters the rows again. The file is checked at load
//! (file, line and problem) and re-read when it changes ([`DirectoryStore`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;
use toml::Spanned;

/// The project a care provider names for direct access to its own reported
/// data. Reserved: never the id of an approval.
pub const DIRECT_PROJECT: &str = "direct";

/// Why a directory file was refused. Every message names the file, and the
/// line where it can be pointed to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read the care-provider directory {}: {reason}", file.display())]
    Read { file: PathBuf, reason: String },
    #[error("care-provider directory {}: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    #[error("care-provider directory {}: line {line}: {field} is empty", file.display())]
    Empty { file: PathBuf, line: usize, field: &'static str },
    #[error("care-provider directory {}: line {line}: {field} {value:?} has a control character or more than 128 characters", file.display())]
    Malformed { file: PathBuf, line: usize, field: &'static str, value: String },
    #[error(
        "care-provider directory {}: line {line}: identity {identity:?} is listed twice (first on line {first}); an identity is bound to one hospital",
        file.display()
    )]
    Duplicate { file: PathBuf, line: usize, identity: String, first: usize },
}

/// One care provider's binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The certificate's common name.
    pub identity: String,
    /// The reporting unit, as written in the registers' unit columns.
    pub hospital: String,
    /// Line of the entry in the file.
    pub line: usize,
}

/// A checked directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directory {
    pub file: PathBuf,
    providers: BTreeMap<String, Provider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    #[serde(default)]
    providers: Vec<RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    identity: Spanned<String>,
    hospital: Spanned<String>,
}

impl Directory {
    /// Reads and checks a directory file.
    pub fn load(file: &Path) -> Result<Directory, DirectoryError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| DirectoryError::Read { file: file.to_owned(), reason: e.to_string() })?;
        Self::parse(file, &text)
    }

    /// Parses and checks directory text; `file` is used in messages.
    pub fn parse(file: &Path, text: &str) -> Result<Directory, DirectoryError> {
        let raw: RawDirectory = toml::from_str(text)
            .map_err(|e| DirectoryError::Syntax { file: file.to_owned(), message: crate::toml_error::one_line(&e) })?;
        let line_of = |s: &Spanned<String>| crate::toml_error::line_at(text, s.span().start);
        let mut providers: BTreeMap<String, Provider> = BTreeMap::new();
        for p in raw.providers {
            for (field, value) in [("identity", &p.identity), ("hospital", &p.hospital)] {
                let line = line_of(value);
                let v = value.get_ref();
                if v.trim().is_empty() {
                    return Err(DirectoryError::Empty { file: file.to_owned(), line, field });
                }
                if v.chars().count() > 128 || v.chars().any(char::is_control) {
                    return Err(DirectoryError::Malformed { file: file.to_owned(), line, field, value: v.clone() });
                }
            }
            let line = line_of(&p.identity);
            let identity = p.identity.into_inner();
            if let Some(first) = providers.get(&identity) {
                return Err(DirectoryError::Duplicate { file: file.to_owned(), line, identity, first: first.line });
            }
            let provider = Provider { identity: identity.clone(), hospital: p.hospital.into_inner(), line };
            providers.insert(identity, provider);
        }
        Ok(Directory { file: file.to_owned(), providers })
    }

    /// The hospital `identity` is bound to, if it is a care provider.
    pub fn hospital_of(&self, identity: &str) -> Option<&str> {
        self.providers.get(identity).map(|p| p.hospital.as_str())
    }

    /// Every binding, by identity.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }
}

/// A directory file, re-read whenever it changes (modification time or
/// length). Fails closed: while the file is missing or invalid, nobody has
/// direct access.
#[derive(Debug)]
pub struct DirectoryStore {
    file: PathBuf,
    state: Mutex<StoreState>,
}

type Stamp = Option<(Option<SystemTime>, u64)>;

#[derive(Debug)]
struct StoreState {
    stamp: Stamp,
    current: Result<Arc<Directory>, DirectoryError>,
}

fn stamp(file: &Path) -> Stamp {
    std::fs::metadata(file).ok().map(|m| (m.modified().ok(), m.len()))
}

impl DirectoryStore {
    /// Loads `file`; an unreadable or invalid file is an error here (at start-up).
    pub fn open(file: &Path) -> Result<DirectoryStore, DirectoryError> {
        let stamp = stamp(file);
        let directory = Directory::load(file)?;
        Ok(DirectoryStore {
            file: file.to_owned(),
            state: Mutex::new(StoreState { stamp, current: Ok(Arc::new(directory)) }),
        })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The directory as it is on disk now, or why it cannot be used.
    pub fn current(&self) -> Result<Arc<Directory>, DirectoryError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&self.file);
        if now != state.stamp || now.is_none() {
            state.stamp = now;
            state.current = Directory::load(&self.file).map(Arc::new);
        }
        state.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# care providers\n[[providers]]\nidentity = \"dora\"\nhospital = \"Danderyd\"\n\n[[providers]]\nidentity = \"erik\"\nhospital = \"Södersjukhuset\"\n";

    fn err(text: &str) -> String {
        Directory::parse(Path::new("fed/directory.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn binds_identities_to_hospitals() {
        let d = Directory::parse(Path::new("fed/directory.toml"), GOOD).expect("valid");
        assert_eq!(d.hospital_of("dora"), Some("Danderyd"));
        assert_eq!(d.hospital_of("erik"), Some("Södersjukhuset"));
        assert_eq!(d.hospital_of("alice"), None);
        assert_eq!(d.providers().map(|p| p.line).collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(Directory::parse(Path::new("d.toml"), "").expect("empty is valid").providers().count(), 0);
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        assert_eq!(
            err(&GOOD.replace("identity = \"erik\"", "identity = \"dora\"")),
            "care-provider directory fed/directory.toml: line 7: identity \"dora\" is listed twice (first on line 3); an identity is bound to one hospital"
        );
        assert_eq!(
            err(&GOOD.replace("\"Danderyd\"", "\" \"")),
            "care-provider directory fed/directory.toml: line 4: hospital is empty"
        );
        assert!(
            err(&GOOD.replace("\"Danderyd\"", "\"Dand\\teryd\""))
                .contains("line 4: hospital \"Dand\\teryd\" has a control character")
        );
        let e = err(&GOOD.replace("hospital = \"Danderyd\"", "unit = \"Danderyd\""));
        assert!(
            e.starts_with("care-provider directory fed/directory.toml: line 4, column 1: unknown field `unit`"),
            "{e}"
        );
        let e = err("[[providers]]\nidentity = \"dora\"\n");
        assert!(e.contains("missing field `hospital`"), "{e}");
        let e = Directory::load(Path::new("/nonexistent/directory.toml")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read the care-provider directory /nonexistent/directory.toml: "), "{e}");
    }

    #[test]
    fn the_store_follows_the_file_and_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("directory.toml");
        std::fs::write(&file, GOOD).expect("write");
        let store = DirectoryStore::open(&file).expect("open");
        assert_eq!(store.current().expect("valid").hospital_of("dora"), Some("Danderyd"));
        std::fs::write(&file, GOOD.replace("Danderyd", "Karolinska Huddinge")).expect("write");
        assert_eq!(store.current().expect("valid").hospital_of("dora"), Some("Karolinska Huddinge"));
        std::fs::write(&file, "[[providers]]\nidentity = \"dora\"\n").expect("write");
        assert!(store.current().is_err(), "an invalid file grants nothing");
        std::fs::remove_file(&file).expect("remove");
        assert!(matches!(store.current(), Err(DirectoryError::Read { .. })));
    }
}
