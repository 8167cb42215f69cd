//! Enforcing a project's ethics approval on a query, before anything is sent
//! to a node.
//!
//! * [`admit`]: the caller is a member and the approval is valid today.
//! * [`ApprovalRule`], an optimizer rule run after DataFusion's rules and
//!   before the pushdown: every table read must be granted, every column read
//!   from it (projected or filtered, wherever the query mentions it, `SELECT *`
//!   included) must be granted, the output kind must be allowed, and the
//!   approval's row restrictions become filters right above the scans, so they
//!   travel to the nodes with the sub-queries (visible in `EXPLAIN`).
//!
//! A refusal names the rule and the table or column the caller itself wrote;
//! it never shows data or columns the caller may not see.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{Expr, Filter, Limit, LogicalPlan, Projection, TableScan, TableScanBuilder, lit};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use samkor_policies::approval::{Approval, Generalisation, RestrictionKind, RowRestriction, Validity, Value};

/// A decision against the query. `rule` is a stable name, also written to the audit log.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("refused by rule {rule}: {message}")]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
}

fn refuse(rule: &'static str, message: String) -> Refusal {
    Refusal { rule, message }
}

/// Checks who asks and when, against the project's approval.
pub fn admit(
    approval: Option<Arc<Approval>>,
    identity: &str,
    project: &str,
    today: NaiveDate,
) -> Result<Arc<Approval>, Refusal> {
    let Some(approval) = approval else {
        return Err(refuse(
            "approval.exists",
            format!(
                "project {project:?} has no valid approval in this federation; check the project id or ask the federation's approval office"
            ),
        ));
    };
    if !approval.is_member(identity) {
        return Err(refuse(
            "approval.member",
            format!(
                "{identity} is not a member of project {project}; the principal investigator can have you added to the approval"
            ),
        ));
    }
    match approval.validity(today) {
        Validity::Valid => Ok(approval),
        Validity::NotYetValid { from } => Err(refuse(
            "approval.not_yet_valid",
            format!("the approval of project {project} ({}) is valid from {from}", approval.ethics_reference),
        )),
        Validity::Expired { until } => Err(refuse(
            "approval.expired",
            format!(
                "the approval of project {project} ({}) expired after {until}; a renewed approval is needed",
                approval.ethics_reference
            ),
        )),
    }
}

/// What a query read, for the audit log.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    pub registers: BTreeSet<String>,
    /// `register.table.column`.
    pub columns: BTreeSet<String>,
}

/// The approval rule of one query.
#[derive(Debug)]
pub struct ApprovalRule {
    approval: Arc<Approval>,
    touched: Arc<Mutex<Touched>>,
}

impl ApprovalRule {
    pub fn new(approval: Arc<Approval>, touched: Arc<Mutex<Touched>>) -> Self {
        ApprovalRule { approval, touched }
    }

    fn check_scan(&self, scan: TableScan) -> Result<Transformed<LogicalPlan>> {
        let Some(register) = scan.table_name.schema().map(str::to_owned) else {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        };
        let table = scan.table_name.table().to_owned();
        let name = format!("{register}.{table}");
        let project = &self.approval.project;
        let Some(grant) = self.approval.grant(&name) else {
            let registered = self.approval.tables.iter().any(|g| g.register == register);
            let (rule, what) = if registered { ("approval.table", "table") } else { ("approval.register", "register") };
            let shown = if registered { name.clone() } else { register.clone() };
            return Err(policy_error(refuse(
                rule,
                format!("{what} {shown} is not in the approval of project {project}"),
            )));
        };
        let schema = scan.source.schema();
        let mut read: BTreeSet<String> = match &scan.projection {
            Some(p) => p.iter().map(|i| schema.field(*i).name().clone()).collect(),
            None => schema.fields().iter().map(|f| f.name().clone()).collect(),
        };
        for f in &scan.filters {
            read.extend(f.column_refs().into_iter().map(|c| c.name.clone()));
        }
        for c in &read {
            if !grant.has_column(c) {
                return Err(policy_error(refuse(
                    "approval.column",
                    format!("column {name}.{c} is not in the approval of project {project}"),
                )));
            }
        }
        {
            let mut t = self.touched.lock().expect("touched lock");
            t.registers.insert(register.clone());
            t.columns.extend(read.iter().map(|c| format!("{name}.{c}")));
        }
        let wanted: Vec<usize> = match &scan.projection {
            Some(p) => p.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let generalised = wanted.iter().any(|i| grant.generalises(schema.field(*i).name()));
        if grant.rows.is_empty() && !generalised {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        // Row restrictions: filter right above the scan (reading the restricted
        // columns too), on the raw values. Generalisations: the projection back
        // to what the query asked for replaces each generalised column by its
        // coarse form under the same name, so nothing above (the query's own
        // filters included, lifted out of the scan) sees the raw value.
        let mut projection = wanted.clone();
        for r in &grant.rows {
            let i = schema.index_of(&r.column)?;
            if !projection.contains(&i) {
                projection.push(i);
            }
        }
        let (lifted, raw_filters): (Vec<Expr>, Vec<Expr>) =
            scan.filters.iter().cloned().partition(|f| f.column_refs().iter().any(|c| grant.generalises(&c.name)));
        let fetch = scan.fetch;
        let widened = TableScanBuilder::new(scan.table_name.clone(), scan.source.clone())
            .with_projection(Some(projection))
            .with_filters(raw_filters)
            .build()?;
        let qualifier = widened.table_name.clone();
        let mut plan = LogicalPlan::TableScan(widened);
        if let Some(predicate) = grant.rows.iter().map(|r| restriction_expr(r, &qualifier)).reduce(Expr::and) {
            plan = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(plan))?);
        }
        let back: Vec<Expr> = wanted
            .iter()
            .map(|i| {
                let name = schema.field(*i).name();
                let column = Expr::Column(datafusion::common::Column::new(Some(qualifier.clone()), name));
                match grant.generalise.get(name) {
                    Some(g) => generalised_expr(*g, column).alias_qualified(Some(qualifier.clone()), name),
                    None => column,
                }
            })
            .collect();
        plan = LogicalPlan::Projection(Projection::try_new(back, Arc::new(plan))?);
        if let Some(predicate) = lifted.into_iter().reduce(Expr::and) {
            plan = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(plan))?);
        }
        if let Some(n) = fetch {
            plan =
                LogicalPlan::Limit(Limit { skip: None, fetch: Some(Box::new(lit(n as i64))), input: Arc::new(plan) });
        }
        Ok(Transformed::yes(plan))
    }
}

/// The coarse form of a column.
fn generalised_expr(g: Generalisation, column: Expr) -> Expr {
    use datafusion::functions::datetime::expr_fn::date_trunc;
    use datafusion::functions::unicode::expr_fn::left;
    match g {
        Generalisation::Year => datafusion::logical_expr::cast(
            date_trunc(lit("year"), column),
            datafusion::arrow::datatypes::DataType::Date32,
        ),
        Generalisation::Month => datafusion::logical_expr::cast(
            date_trunc(lit("month"), column),
            datafusion::arrow::datatypes::DataType::Date32,
        ),
        Generalisation::Code3 => left(column, lit(3i64)),
    }
}

fn value_lit(v: &Value) -> Expr {
    match v {
        Value::Date(d) => {
            let days = (*d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32;
            lit(ScalarValue::Date32(Some(days)))
        }
        Value::Int(i) => lit(*i),
        Value::Str(s) => lit(s.clone()),
    }
}

fn restriction_expr(r: &RowRestriction, qualifier: &datafusion::common::TableReference) -> Expr {
    let column = Expr::Column(datafusion::common::Column::new(Some(qualifier.clone()), &r.column));
    match &r.kind {
        RestrictionKind::In(values) => column.in_list(values.iter().map(value_lit).collect(), false),
        RestrictionKind::Range { from, until } => {
            let mut parts = Vec::new();
            match from {
                Bound::Included(v) => parts.push(column.clone().gt_eq(value_lit(v))),
                Bound::Excluded(v) => parts.push(column.clone().gt(value_lit(v))),
                Bound::Unbounded => {}
            }
            match until {
                Bound::Included(v) => parts.push(column.clone().lt_eq(value_lit(v))),
                Bound::Excluded(v) => parts.push(column.clone().lt(value_lit(v))),
                Bound::Unbounded => {}
            }
            // Rows whose restricted column is null satisfy no range.
            parts.into_iter().reduce(Expr::and).unwrap_or_else(|| column.is_not_null())
        }
    }
}

/// Wraps a refusal so that it survives DataFusion's error plumbing.
pub fn policy_error(r: Refusal) -> DataFusionError {
    DataFusionError::External(Box::new(r))
}

impl OptimizerRule for ApprovalRule {
    fn name(&self) -> &str {
        "samkor_approval"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        if crate::pushdown::contains_federated(&plan) {
            return Ok(Transformed::no(plan));
        }
        // Whether rows of individuals may leave is decided with disclosure control
        // (crate::disclosure), which sees the whole optimized plan.
        plan.transform_up_with_subqueries(|p| match p {
            LogicalPlan::TableScan(scan) => self.check_scan(scan),
            other => Ok(Transformed::no(other)),
        })
    }
}

/// Registers and their granted tables and columns, for catalogue calls.
pub fn visible_tables(approval: &Approval) -> BTreeMap<String, BTreeSet<String>> {
    approval.tables.iter().map(|g| (g.qualified_name(), g.columns.clone())).collect()
}
