//! Where a served table's rows come from, other than files.
//!
//! A source is a DataFusion [`TableProvider`](datafusion::catalog::TableProvider)
//! with the table's *declared* schema (the identity-number column under its
//! own name). [`crate::table::ServedTable`] puts the same
//! [`PseudonymiseExec`](crate::table::PseudonymiseExec) above it as above a
//! file scan, so opt-outs, pseudonyms and the direct-access unit filter are
//! applied at the node whatever the source.

pub mod postgres;
pub mod postgres_tls;
