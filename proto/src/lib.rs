//! The samkor wire protocol, shared by the coordinator and the register nodes.
//!
//! ```text
//!  researcher ──Flight SQL──▶ coordinator ──Flight do_get(Ticket = SubQuery)──▶ node
//!                                   ◀──────── Arrow record batches ─────────────┘
//!                                   ──Flight do_action("catalogue")──▶ node ──▶ Catalogue
//! ```
//!
//! * [`pb`]: the protobuf messages of `proto/samkor.proto` (versioned tickets, catalogue).
//! * [`ticket`]: encoding and validation of node sub-query tickets.
//! * [`tls`]: TLS 1.3 with mutual authentication for every connection of the federation.
//! * [`headers`]: the gRPC metadata keys the services agree on.

pub mod client;
pub mod ticket;
pub mod tls;
pub mod trace;

/// Generated protobuf messages (`samkor.v1`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/samkor.v1.rs"));
}

/// gRPC metadata keys.
pub mod headers {
    /// The research project a Flight SQL call runs for.
    pub const PROJECT: &str = "x-samkor-project";
    /// W3C trace context, propagated from the coordinator to the nodes.
    pub const TRACEPARENT: &str = "traceparent";
}

/// The Flight action that returns a node's [`pb::Catalogue`].
pub const CATALOGUE_ACTION: &str = "catalogue";

/// Name of the column that carries the project pseudonym in every register table.
pub const PERSON_COLUMN: &str = "person";
