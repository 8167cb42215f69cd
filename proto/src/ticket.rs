//! Node sub-query tickets: the bytes of an Arrow Flight `Ticket` are an encoded
//! [`SubQuery`](crate::pb::SubQuery). Decoding validates the version and the project.

use prost::Message;

use crate::pb::SubQuery;

/// The ticket format this build writes and accepts.
pub const TICKET_VERSION: u32 = 1;

/// Why a ticket was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("the ticket is not a samkor sub-query ({0}); send a samkor.v1.SubQuery")]
    Malformed(String),
    #[error(
        "ticket version {found} is not supported (this node speaks version {TICKET_VERSION}); upgrade the older side"
    )]
    Version { found: u32 },
    #[error("the request names no project; every query must run for an approved project")]
    NoProject,
    #[error("the project id {0:?} is not valid: use letters, digits, '-', '_' or '.', at most 64 characters")]
    BadProject(String),
    #[error("the sub-query carries no SQL")]
    NoSql,
    #[error("the direct-access unit of the ticket is not valid: at most 128 characters, no control characters")]
    BadDirectUnit,
}

/// A version-1 sub-query for a research project.
pub fn sub_query(project: &str, sql: &str, query_id: &str) -> SubQuery {
    SubQuery {
        version: TICKET_VERSION,
        project: project.to_owned(),
        sql: sql.to_owned(),
        query_id: query_id.to_owned(),
        direct_unit: String::new(),
    }
}

/// Builds a version-1 ticket.
pub fn encode(project: &str, sql: &str, query_id: &str) -> bytes::Bytes {
    sub_query(project, sql, query_id).encode_to_vec().into()
}

/// Decodes and validates a ticket.
pub fn decode(bytes: &[u8]) -> Result<SubQuery, TicketError> {
    let q = SubQuery::decode(bytes).map_err(|e| TicketError::Malformed(e.to_string()))?;
    if q.version != TICKET_VERSION {
        return Err(TicketError::Version { found: q.version });
    }
    validate_project(&q.project)?;
    if q.sql.trim().is_empty() {
        return Err(TicketError::NoSql);
    }
    if q.direct_unit.chars().count() > 128 || q.direct_unit.chars().any(char::is_control) {
        return Err(TicketError::BadDirectUnit);
    }
    Ok(q)
}

/// A project id is required and must be a short plain identifier.
pub fn validate_project(project: &str) -> Result<(), TicketError> {
    if project.is_empty() {
        return Err(TicketError::NoProject);
    }
    let ok = project.len() <= 64 && project.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(TicketError::BadProject(project.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = encode("P-2024-001", "SELECT 1", "q1");
        let q = decode(&t).expect("valid ticket");
        assert_eq!(q.project, "P-2024-001");
        assert_eq!(q.sql, "SELECT 1");
    }

    #[test]
    fn refusals_say_why() {
        let e = decode(&encode("", "SELECT 1", "q")).unwrap_err();
        assert_eq!(e.to_string(), "the request names no project; every query must run for an approved project");
        let e = decode(&encode("p; drop", "SELECT 1", "q")).unwrap_err();
        assert!(e.to_string().contains("is not valid"), "{e}");
        let mut q = sub_query("p", "x", "");
        q.version = 9;
        let e = decode(&q.encode_to_vec()).unwrap_err();
        assert_eq!(e, TicketError::Version { found: 9 });
        q.version = 1;
        q.sql = " ".into();
        assert_eq!(decode(&q.encode_to_vec()).unwrap_err(), TicketError::NoSql);
        assert!(matches!(decode(b"\xff\xff\xff").unwrap_err(), TicketError::Malformed(_)));
        q.sql = "SELECT 1".into();
        q.direct_unit = "Danderyd\n".into();
        assert_eq!(decode(&q.encode_to_vec()).unwrap_err(), TicketError::BadDirectUnit);
        q.direct_unit = "Södersjukhuset".into();
        assert_eq!(decode(&q.encode_to_vec()).expect("a unit name").direct_unit, "Södersjukhuset");
    }
}
