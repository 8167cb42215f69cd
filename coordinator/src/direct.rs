//! Direct access for care providers (DOMAIN.md rule 5): a care provider may
//! follow up the data its own unit reported, without a research project, in
//! aggregate, and may not learn whether its patient was treated elsewhere.
//!
//! ```text
//!  caller CN ── project "direct" ──▶ DirectAccess::authorize
//!                                      │  directory.toml: identity → hospital H
//!                                      │  node catalogues: tables whose holder opened them,
//!                                      ▼  with their unit column U
//!                                 Approval "direct:H": aggregates only, those tables with
//!                                 their non-identifying columns, rows U = H, default disclosure
//!                                      │
//!       DirectRule (one register only, open tables only), then ApprovalRule and the
//!       pushdown as for any project; every sub-query carries direct_unit = H and the node
//!       filters U = H at its scan again, pseudonymising in a domain of its own.
//! ```
//!
//! Refusals (`PermissionDenied`, in the audit log): `direct.directory` (the
//! identity is not bound to a hospital), `direct.project` (a project header
//! that names a unit itself), `direct.table` (a table not open for direct
//! access), `direct.linkage` (more than one register).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use samkor_policies::approval::{
    Approval, Disclosure, DisclosureDefaults, OutputKind, RestrictionKind, RowRestriction, TableGrant, Value,
};
use samkor_policies::directory::{DIRECT_PROJECT, DirectoryStore};
use samkor_proto::pb;

use crate::nodes::Federation;
use crate::policy::{Refusal, policy_error};

/// The prefix of the project of a synthesised direct-access approval
/// (`direct:<hospital>`); approval documents cannot have it (no `:` in ids).
const PREFIX: &str = "direct:";

/// Whether a project header asks for direct access: `direct` itself, or an
/// attempt to name the unit (`direct:<hospital>`), which is refused.
pub fn is_direct(project: &str) -> bool {
    project == DIRECT_PROJECT || project.get(..PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

/// The hospital of a direct-access approval; `None` for a research project.
pub fn unit_of(approval: &Approval) -> Option<&str> {
    approval.project.strip_prefix(PREFIX)
}

fn refuse(rule: &'static str, message: String) -> Refusal {
    Refusal { rule, message }
}

/// The care-provider directory of the federation, if it offers direct access.
#[derive(Debug)]
pub struct DirectAccess {
    directory: Option<DirectoryStore>,
}

impl DirectAccess {
    pub fn new(directory: Option<DirectoryStore>) -> Self {
        DirectAccess { directory }
    }

    /// Admits `identity` to direct access (`project` is [`is_direct`]) and
    /// makes the approval it runs under, from the directory as it is now and
    /// the catalogues of the nodes that have answered.
    pub fn authorize(
        &self,
        identity: &str,
        project: &str,
        federation: &Federation,
        defaults: &DisclosureDefaults,
    ) -> Result<Arc<Approval>, Refusal> {
        if project != DIRECT_PROJECT {
            return Err(refuse(
                "direct.project",
                format!(
                    "project {project:?} is not valid: a care provider names the project {DIRECT_PROJECT:?}; its hospital is taken from the federation's care-provider directory, never from the request"
                ),
            ));
        }
        let Some(store) = &self.directory else {
            return Err(refuse(
                "direct.directory",
                "this federation offers no direct access for care providers (no care-provider directory is configured); researchers name their approved project".into(),
            ));
        };
        let directory = store.current().map_err(|e| {
            tracing::error!(error = %e, "care-provider directory unusable; direct access closed");
            refuse(
                "direct.directory",
                "the federation's care-provider directory cannot be read right now, so direct access is closed; the operator has been alerted".into(),
            )
        })?;
        let Some(hospital) = directory.hospital_of(identity) else {
            return Err(refuse(
                "direct.directory",
                format!(
                    "{identity} is not bound to a hospital in the federation's care-provider directory; ask the federation's operator to register your certificate with your hospital, or name your approved research project instead"
                ),
            ));
        };
        let catalogues: Vec<(String, Arc<crate::nodes::NodeCatalogue>)> =
            federation.nodes.iter().filter_map(|n| n.catalogue().map(|c| (n.register.clone(), c))).collect();
        let approval = approval_for(
            identity,
            hospital,
            catalogues.iter().map(|(r, c)| (r.as_str(), &c.raw)),
            defaults,
            store.file(),
        );
        Ok(Arc::new(approval))
    }
}

/// The approval a care provider's direct access runs under: aggregates only,
/// every table a holder opened for direct access with its non-identifying
/// columns, only the rows whose unit column is `hospital`, and the
/// federation's default disclosure settings.
pub fn approval_for<'a>(
    identity: &str,
    hospital: &str,
    catalogues: impl IntoIterator<Item = (&'a str, &'a pb::Catalogue)>,
    defaults: &DisclosureDefaults,
    directory: &std::path::Path,
) -> Approval {
    let mut tables = Vec::new();
    for (register, catalogue) in catalogues {
        for t in &catalogue.tables {
            let unit = t.direct_unit_column.as_str();
            if unit.is_empty() || !t.columns.iter().any(|c| c.name == unit && !c.identifying) {
                continue;
            }
            tables.push(TableGrant {
                register: register.to_owned(),
                table: t.name.clone(),
                columns: t.columns.iter().filter(|c| !c.identifying).map(|c| c.name.clone()).collect(),
                rows: vec![RowRestriction {
                    column: unit.to_owned(),
                    kind: RestrictionKind::In(vec![Value::Str(hospital.to_owned())]),
                }],
                generalise: Default::default(),
            });
        }
    }
    Approval {
        file: directory.to_owned(),
        project: format!("{PREFIX}{hospital}"),
        title: format!("Direct access of {hospital} to the data it reported"),
        ethics_reference: "no ethics approval: a care provider's follow-up of its own data".into(),
        ethics_authority: String::new(),
        principal_investigator: identity.to_owned(),
        members: BTreeSet::from([identity.to_owned()]),
        purpose: "Follow-up of the care provider's own reported data".into(),
        valid_from: NaiveDate::MIN,
        valid_until: NaiveDate::MAX,
        outputs: BTreeSet::from([OutputKind::Aggregate]),
        disclosure: Disclosure::from_defaults(defaults),
        tables,
    }
}

/// The direct-access rule of one query, run before the approval rule: only
/// tables open for direct access, and only one register (no linkage, so a
/// care provider cannot learn about its patients' care elsewhere).
#[derive(Debug)]
pub struct DirectRule {
    approval: Arc<Approval>,
}

/// The rule for `approval` if it is a direct-access approval.
pub fn rule_for(approval: &Arc<Approval>) -> Option<Arc<dyn OptimizerRule + Send + Sync>> {
    unit_of(approval)
        .map(|_| Arc::new(DirectRule { approval: approval.clone() }) as Arc<dyn OptimizerRule + Send + Sync>)
}

impl DirectRule {
    fn check(&self, plan: &LogicalPlan) -> Result<()> {
        let mut registers = BTreeSet::new();
        let mut closed = None;
        plan.apply_with_subqueries(|p| {
            if let LogicalPlan::TableScan(scan) = p
                && let Some(register) = scan.table_name.schema()
            {
                let name = format!("{register}.{}", scan.table_name.table());
                if self.approval.grant(&name).is_none() {
                    closed = Some(name);
                    return Ok(TreeNodeRecursion::Stop);
                }
                registers.insert(register.to_owned());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if let Some(table) = closed {
            let open: Vec<String> = self.approval.tables.iter().map(TableGrant::qualified_name).collect();
            let open = if open.is_empty() { "none at the moment".to_owned() } else { open.join(", ") };
            return Err(policy_error(refuse(
                "direct.table",
                format!("table {table} is not open for direct access by care providers (open: {open})"),
            )));
        }
        if registers.len() > 1 {
            let registers: Vec<String> = registers.into_iter().collect();
            return Err(policy_error(refuse(
                "direct.linkage",
                format!(
                    "direct access reads one register at a time, and this query reads {}; linking registers needs a research project with an approval",
                    registers.join(" and ")
                ),
            )));
        }
        Ok(())
    }
}

impl OptimizerRule for DirectRule {
    fn name(&self) -> &str {
        "samkor_direct_access"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        if !crate::pushdown::contains_federated(&plan) {
            self.check(&plan)?;
        }
        Ok(Transformed::no(plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, identifying: bool) -> pb::Column {
        pb::Column { name: name.into(), data_type: "utf8".into(), identifying, ..Default::default() }
    }

    #[test]
    fn the_approval_grants_open_tables_own_rows_aggregates_only() {
        let hip = pb::Catalogue {
            register: "hip".into(),
            tables: vec![
                pb::Table {
                    name: "operations".into(),
                    columns: vec![column("person", true), column("hospital", false), column("fixation", false)],
                    direct_unit_column: "hospital".into(),
                    ..Default::default()
                },
                pb::Table { name: "prom".into(), columns: vec![column("person", true)], ..Default::default() },
            ],
            ..Default::default()
        };
        let a = approval_for(
            "dora",
            "Danderyd",
            [("hip", &hip)],
            &DisclosureDefaults::default(),
            std::path::Path::new("d.toml"),
        );
        assert_eq!(a.project, "direct:Danderyd");
        assert_eq!(unit_of(&a), Some("Danderyd"));
        assert!(a.is_member("dora") && !a.is_member("alice"));
        assert!(a.allows(OutputKind::Aggregate) && !a.allows(OutputKind::PseudonymisedMicrodata));
        assert_eq!(a.tables.len(), 1, "prom is not open");
        let g = a.grant("hip.operations").expect("operations");
        assert!(g.has_column("fixation") && g.has_column("hospital") && !g.has_column("person"));
        assert_eq!(g.rows[0].kind, RestrictionKind::In(vec![Value::Str("Danderyd".into())]));
        assert_eq!(a.disclosure, Disclosure::from_defaults(&DisclosureDefaults::default()));
    }

    #[test]
    fn direct_headers_are_recognised() {
        assert!(is_direct("direct") && is_direct("direct:Danderyd") && is_direct("DIRECT:x"));
        assert!(!is_direct("P-1") && !is_direct("directors") && !is_direct("Direct"));
        let none = DirectAccess::new(None);
        let fed = Federation { nodes: Vec::new() };
        let d = DisclosureDefaults::default();
        assert_eq!(none.authorize("dora", "direct:Danderyd", &fed, &d).unwrap_err().rule, "direct.project");
        assert_eq!(none.authorize("dora", "direct", &fed, &d).unwrap_err().rule, "direct.directory");
    }
}
