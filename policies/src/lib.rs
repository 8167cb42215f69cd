//! samkor policies: approvals and disclosure rules as reviewable, versioned
//! data, and the decisions made from them. Pure: no server, no I/O beyond
//! reading the documents, testable on its own.

pub mod toml_error;
