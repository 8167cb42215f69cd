//! The samkor coordinator: federated SQL over register nodes.
//!
//! ```text
//!  client (Flight SQL, CLI) ─▶ flightsql ─▶ engine ─▶ DataFusion + datafusion-federation
//!                                                 │
//!                     executor (one per register) ├─▶ node hip  (SQL sub-query, mTLS)
//!                                                 ├─▶ node npr
//!                                                 └─▶ …
//! ```
//! [`nodes`] keeps each node's catalogue (retrying nodes that are down),
//! [`engine`] plans a query in a per-query session that shares one memory
//! pool, [`flightsql`] serves it. [`policy`] enforces a project's approval,
//! [`direct`] turns a care provider's direct access into an approval of its own.

pub mod config;
pub mod direct;
pub mod disclosure;
pub mod engine;
pub mod executor;
pub mod flightsql;
pub mod infallible;
pub mod joins;
pub mod methods;
pub mod nodes;
pub mod policy;
pub mod pushdown;
pub mod server;

pub use config::CoordinatorConfig;
pub use server::{RunningCoordinator, start};
