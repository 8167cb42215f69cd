//! The samkor register node: a register holder's server.
//!
//! ```text
//!   node.toml ─▶ config ─▶ state (key, opt-out list, tables) ─▶ service (Arrow Flight, mTLS)
//!                                          │
//!        Parquet/CSV ─▶ table::PseudonymiseExec ─▶ DataFusion ─▶ record batches ─▶ coordinator
//! ```
//!
//! The identity number never passes the scan: [`table::PseudonymiseExec`]
//! drops opted-out persons and replaces the number by the project pseudonym
//! ([`pseudonym`]) before any operator sees a row. The holder's own decisions
//! are in [`access`] (who may ask, for which project, direct access of care
//! providers to their own unit's rows); every sub-query is recorded in the
//! node's hash-chained audit log ([`audit`]).

pub mod access;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod counting;
pub mod exact_sums;
pub mod identities;
pub mod one_per_person;
pub mod optout;
pub mod pseudonym;
pub mod server;
pub mod service;
pub mod source;
pub mod state;
pub mod table;
pub mod wire;
pub mod worker;

pub use config::NodeConfig;
pub use server::{RunningNode, start};
pub use state::{NodeState, StartError};
