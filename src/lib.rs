//! samkor: federated statistics over health and population registers.
//!
//! ```text
//!   samkor (this crate: CLI, synthetic registers, development certificates, demo)
//!     ├── samkor-coordinator ──▶ samkor-policies, samkor-proto
//!     └── samkor-node        ──▶ samkor-policies, samkor-proto
//! ```
//!
//! The binary's subcommands live in `main.rs`; this library holds what they and
//! the integration tests share.

pub mod audit_cli;
pub mod certs;
pub mod client;
pub mod console;
pub mod demo;
pub mod federation;
pub mod output;
pub mod policy_cli;
pub mod synth;
