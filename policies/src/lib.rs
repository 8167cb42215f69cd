//! samkor policies: approvals and disclosure rules as reviewable, versioned
//! data, and the decisions made from them. Pure: no server, no I/O beyond
//! reading the documents, testable on its own.

pub mod approval;
pub mod audit;
pub mod differencing;
pub mod directory;
pub mod disclosure;
pub mod perturbation;
pub mod toml_error;

pub use approval::{
    Approval, ApprovalError, ApprovalStore, CatalogueView, ColumnInfo, Disclosure, DisclosureDefaults, Generalisation,
    OutputKind, Problem, RestrictionKind, RowRestriction, TableGrant, Validity, Value,
};
pub use directory::{DIRECT_PROJECT, Directory, DirectoryError, DirectoryStore};
