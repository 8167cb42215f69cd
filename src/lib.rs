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

/// The allocator of every process built on this crate: the binary (nodes,
/// coordinator, workers, the CLI), the benches and the integration tests.
/// Planning and exchanging many small structures made glibc's `malloc` and
/// `free` 15 % of the CPU of a count of no rows.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod audit_cli;
pub mod certs;
pub mod client;
pub mod console;
pub mod demo;
pub mod federation;
pub mod output;
pub mod policy_cli;
pub mod synth;
