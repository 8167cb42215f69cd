//! The holder's own assessment of a sub-query (DOMAIN.md rules 2 and 5): who
//! may ask, for which project, and what a care provider with direct access may
//! read. The coordinator checks the same things first; the node checks them
//! again because the coordinator could be compromised or misconfigured.
//!
//! ```text
//!   ticket + caller CN ─▶ admit ─▶ Scope::Project(p)      research project p
//!                            │     Scope::Direct { unit }  a care provider's own rows
//!                            └──▶ Refusal (holder.caller, holder.project, direct.project, direct.unit)
//!   at the scan (table.rs):     Refusal (holder.column, direct.table)
//! ```

use samkor_policies::DIRECT_PROJECT;
use samkor_proto::pb::SubQuery;

use crate::config::AccessSection;

/// A decision of the holder against a sub-query. The display is what the
/// caller sees: the rule, the reason and what to do; never a data value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "refused by rule holder.caller: node {register} answers sub-queries from the federation's coordinator only, not from {caller}"
    )]
    NotCoordinator { register: String, caller: String },
    #[error("refused by rule holder.project: the holder of {register} does not serve project {project}")]
    Project { register: String, project: String },
    #[error("refused by rule holder.column: the holder does not release column {table}.{column} to project {project}")]
    Withheld { table: String, column: String, project: String },
    #[error(
        "refused by rule direct.project: node {register} got a direct-access unit with project {project:?}; direct access runs as project {DIRECT_PROJECT:?} only"
    )]
    DirectProject { register: String, project: String },
    #[error(
        "refused by rule direct.unit: node {register} got project {DIRECT_PROJECT:?} without a reporting unit; direct access is only to one unit's own rows"
    )]
    DirectUnit { register: String },
    #[error(
        "refused by rule direct.table: the holder has not opened table {table} for direct access by care providers (open: {})",
        if open.is_empty() { "none".to_owned() } else { open.join(", ") }
    )]
    DirectTable { table: String, open: Vec<String> },
}

impl Refusal {
    /// The stable rule name, as written in the audit log.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::NotCoordinator { .. } => "holder.caller",
            Refusal::Project { .. } => "holder.project",
            Refusal::Withheld { .. } => "holder.column",
            Refusal::DirectProject { .. } => "direct.project",
            Refusal::DirectUnit { .. } => "direct.unit",
            Refusal::DirectTable { .. } => "direct.table",
        }
    }
}

/// Whom a sub-query runs for, once admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A research project the holder serves.
    Project(String),
    /// A care provider reading the rows its own unit reported.
    Direct { unit: String },
}

impl Scope {
    /// The project whose withheld columns apply (`direct` for direct access).
    pub fn project(&self) -> &str {
        match self {
            Scope::Project(p) => p,
            Scope::Direct { .. } => DIRECT_PROJECT,
        }
    }

    /// The pseudonym domain: the project, or for direct access one domain per
    /// register and unit, so that a care provider's pseudonyms can be linked
    /// neither to a research project's nor across registers.
    pub fn pseudonym_domain(&self, register: &str) -> String {
        match self {
            Scope::Project(p) => p.clone(),
            Scope::Direct { unit } => format!("{DIRECT_PROJECT}:{register}:{unit}"),
        }
    }

    /// The project as written in the node's audit log (`direct:<unit>` for direct access).
    pub fn audit_project(&self) -> String {
        match self {
            Scope::Project(p) => p.clone(),
            Scope::Direct { unit } => format!("{DIRECT_PROJECT}:{unit}"),
        }
    }

    /// The unit whose rows a direct-access sub-query may read.
    pub fn direct_unit(&self) -> Option<&str> {
        match self {
            Scope::Project(_) => None,
            Scope::Direct { unit } => Some(unit),
        }
    }
}

/// Decides whether `caller` may run `sub` here, and for whom.
///
/// A direct-access sub-query is governed by the holder's `direct_access`
/// tables (checked at the scan), not by its list of research projects.
pub fn admit(access: &AccessSection, register: &str, caller: &str, sub: &SubQuery) -> Result<Scope, Refusal> {
    if !access.coordinators.iter().any(|c| c == caller) {
        return Err(Refusal::NotCoordinator { register: register.to_owned(), caller: caller.to_owned() });
    }
    if !sub.direct_unit.is_empty() {
        if sub.project != DIRECT_PROJECT {
            return Err(Refusal::DirectProject { register: register.to_owned(), project: sub.project.clone() });
        }
        return Ok(Scope::Direct { unit: sub.direct_unit.clone() });
    }
    if sub.project == DIRECT_PROJECT {
        return Err(Refusal::DirectUnit { register: register.to_owned() });
    }
    if !access.serves(&sub.project) {
        return Err(Refusal::Project { register: register.to_owned(), project: sub.project.clone() });
    }
    Ok(Scope::Project(sub.project.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(project: &str, unit: &str) -> SubQuery {
        let mut q = samkor_proto::ticket::sub_query(project, "SELECT 1", "q");
        q.direct_unit = unit.to_owned();
        q
    }

    #[test]
    fn decisions_name_their_rule() {
        let access = AccessSection { projects: vec!["P-1".into()], ..Default::default() };
        let admit = |caller: &str, q: &SubQuery| admit(&access, "hip", caller, q);
        assert_eq!(admit("coordinator", &sub("P-1", "")), Ok(Scope::Project("P-1".into())));
        assert_eq!(admit("alice", &sub("P-1", "")).unwrap_err().rule(), "holder.caller");
        assert_eq!(admit("alice", &sub("direct", "Danderyd")).unwrap_err().rule(), "holder.caller");
        assert_eq!(admit("coordinator", &sub("P-2", "")).unwrap_err().rule(), "holder.project");
        assert_eq!(admit("coordinator", &sub("P-1", "Danderyd")).unwrap_err().rule(), "direct.project");
        assert_eq!(admit("coordinator", &sub("direct", "")).unwrap_err().rule(), "direct.unit");
        let direct = admit("coordinator", &sub("direct", "Danderyd")).expect("direct access");
        assert_eq!(direct.direct_unit(), Some("Danderyd"));
        assert_eq!(direct.pseudonym_domain("hip"), "direct:hip:Danderyd");
        assert_eq!(direct.audit_project(), "direct:Danderyd");
        let msg = Refusal::DirectTable { table: "prom".into(), open: vec!["operations".into()] }.to_string();
        assert_eq!(
            msg,
            "refused by rule direct.table: the holder has not opened table prom for direct access by care providers (open: operations)"
        );
    }
}
