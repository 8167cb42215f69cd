//! samkor policies: approvals and disclosure rules as reviewable, versioned
//! data, and the decisions made from them. Pure: no server, no I/O beyond
//! reading the documents, testable on its own.

pub mod approval;
pub mod audit;
pub mod disclosure;
pub mod directory;
pub mod toml_error;

pub use approval::{
    Approval, ApprovalError, Generalisation, ApprovalStore, CatalogueView, ColumnInfo, Disclosure, DisclosureDefaults, OutputKind,
    Problem, RestrictionKind, RowRestriction, TableGrant, Validity, Value,
};
pub use directory::{DIRECT_PROJECT, Directory, DirectoryError, DirectoryStore};
