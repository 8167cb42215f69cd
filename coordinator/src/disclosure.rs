//! Statistical disclosure control as a visible plan rewrite.
//!
//! ```text
//!   optimized, approved plan ──▶ classify the output
//!        │   rows of individuals ─▶ pseudonymised microdata (approval must allow it;
//!        │                          no identifying column)
//!        │   no register data    ─▶ released as is
//!        ▼   one aggregate table
//!   rewrite: below the output aggregate every row keeps its persons (the
//!   project pseudonyms, carried up through projections, joins, unions and
//!   inner aggregates); the aggregate gets hidden companions per group and per
//!   statistic: distinct persons behind it, persons outside a conditional
//!   count, the largest persons' share of a sum; they ride up to the root
//!   next to the columns they describe, and travel to the nodes with the
//!   other aggregates (visible in EXPLAIN as `__samkor_*`).
//!        ▼
//!   answer collected ──▶ samkor_policies::disclosure::decide ──▶ withheld cells
//!   become null, marked in the `withheld` column; summary in the schema metadata
//! ```
//!
//! Refusals happen at planning, before any node is asked: identifying
//! aggregates (`min`, `max` unless approved for the column, `first_value`,
//! `array_agg`, `string_agg`, …), grouping by a person or an identifying
//! column, several aggregate tables in one answer (differencing between
//! them), window functions over aggregated cells, and plan shapes whose
//! persons cannot be traced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, nullif};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DataFusionError, Result};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::min_max::max_udaf;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{
    Aggregate, Expr, JoinType, LogicalPlan, Projection, SubqueryAlias, TableScan, TableScanBuilder, Union, lit, when,
};
use samkor_policies::approval::{Approval, OutputKind};
use samkor_policies::disclosure::{self as sdc, Additive, CellFacts, Role, RowFacts, ValueColumn};

use crate::policy::{Refusal, policy_error};

/// What the catalogue says of one column, as far as disclosure is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColumnFacts {
    /// The project pseudonym.
    pub person: bool,
    /// Reveals or nearly reveals who a person is (birth date).
    pub identifying: bool,
    /// A magnitude with a unit (income, DDD, BMI): sums and means of it are
    /// subject to the dominance rule.
    pub magnitude: bool,
}

/// Column facts of every federated table: `"hip.operations"` → column → facts.
pub type CatalogueFacts = HashMap<String, HashMap<String, ColumnFacts>>;

/// The name of the per-row marker column added to aggregate answers.
pub const WITHHELD_COLUMN: &str = "withheld";
/// Schema metadata key holding the disclosure summary (JSON).
pub const METADATA_KEY: &str = "samkor.disclosure";

const PREFIX: &str = "__samkor_";

/// Aggregate functions that summarise many persons.
const SAFE_AGGREGATES: &[&str] = &[
    "count", "sum", "avg", "mean", "median", "stddev", "stddev_pop", "var", "var_pop", "corr", "covar_samp",
    "covar_pop", "approx_distinct", "approx_median", "approx_percentile_cont", "approx_percentile_cont_with_weight",
    "percentile_cont", "grouping", "bool_and", "bool_or", "regr_slope", "regr_intercept", "regr_count", "regr_r2",
    "regr_avgx", "regr_avgy", "regr_sxx", "regr_syy", "regr_sxy",
];
/// Aggregate functions that return one person's value.
const IDENTIFYING_AGGREGATES: &[&str] = &[
    "min", "max", "first_value", "last_value", "nth_value", "array_agg", "string_agg", "any_value", "bit_and",
    "bit_or", "bit_xor",
];

/// How an answer is released.
#[derive(Debug, Clone)]
pub enum Mode {
    /// No register data in the answer (constants, `EXPLAIN`).
    NoData,
    /// Rows of individuals keyed by the project pseudonym.
    Microdata,
    /// One aggregate table under disclosure control.
    Aggregate(Layout),
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::NoData => "no_data",
            Mode::Microdata => "pseudonymised_microdata",
            Mode::Aggregate(_) => "aggregate",
        }
    }
}

/// Where the hidden facts of an aggregate answer are in the plan's output.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The answer's own columns are the first `visible` ones.
    pub visible: usize,
    pub roles: Vec<Role>,
    /// Persons behind each row's existence: the least non-zero of these columns.
    pub row: Vec<usize>,
    /// Per column, the persons behind each cell: the least non-zero of these columns.
    pub persons: Vec<Vec<usize>>,
    /// Per column, the persons outside a conditional count: the least non-zero of these.
    pub complement: Vec<Vec<usize>>,
    /// (largest persons' contribution, total) per column.
    pub dominance: Vec<Option<(usize, usize)>>,
    /// For grouping sets: per grouping key, `count(key)` (a null key whose
    /// count is not zero was aggregated away: the row is a margin).
    pub margin: Option<Vec<usize>>,
    /// Hidden copies of the grouping keys, in grouping order.
    pub keys: Vec<usize>,
}

/// The plan to run and how to release its answer.
#[derive(Debug)]
pub struct Controlled {
    pub plan: LogicalPlan,
    pub mode: Mode,
}

/// What the rewrite needs to know.
#[derive(Debug)]
pub struct Context<'a> {
    pub approval: &'a Approval,
    pub catalogue: &'a CatalogueFacts,
}

fn refusal(rule: &'static str, message: String) -> DataFusionError {
    policy_error(Refusal { rule, message })
}

/// Classifies the answer of `plan` and rewrites it so that its disclosure can be controlled.
pub fn control(plan: LogicalPlan, cx: &Context<'_>) -> Result<Controlled> {
    if let LogicalPlan::Explain(explain) = &plan {
        // EXPLAIN shows plans, not data: check and rewrite the plan it describes.
        let inner = control(explain.plan.as_ref().clone(), cx)?;
        let mut explain = explain.clone();
        explain.plan = Arc::new(inner.plan);
        return Ok(Controlled { plan: LogicalPlan::Explain(explain), mode: Mode::NoData });
    }
    refuse_scalar_subqueries(&plan)?;
    let rw = Rewriter { cx, next: AtomicUsize::new(0) };
    match rw.shape(&plan)? {
        Shape::NoData => Ok(Controlled { plan, mode: Mode::NoData }),
        Shape::Rows => {
            rw.check_microdata(&plan)?;
            Ok(Controlled { plan, mode: Mode::Microdata })
        }
        Shape::Aggregate => {
            let (plan, track) = rw.output(plan)?;
            let (plan, layout) = rw.finish(plan, track)?;
            Ok(Controlled { plan, mode: Mode::Aggregate(layout) })
        }
    }
}

fn refuse_scalar_subqueries(plan: &LogicalPlan) -> Result<()> {
    let mut found = false;
    plan.apply_with_subqueries(|p| {
        for e in p.expressions() {
            e.apply(|e| {
                if matches!(e, Expr::ScalarSubquery(_)) {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    if found {
        return Err(refusal(
            "disclosure.subquery",
            "a scalar subquery's value cannot be traced to the persons behind it; write it as a join".into(),
        ));
    }
    Ok(())
}

enum Shape {
    NoData,
    Rows,
    Aggregate,
}

/// Nodes that keep the rows of their input (and their meaning) on the way to the output.
fn pass_through(plan: &LogicalPlan) -> Option<&LogicalPlan> {
    match plan {
        LogicalPlan::Projection(p) => Some(&p.input),
        LogicalPlan::Filter(f) => Some(&f.input),
        LogicalPlan::Sort(s) => Some(&s.input),
        LogicalPlan::Limit(l) => Some(&l.input),
        LogicalPlan::SubqueryAlias(a) => Some(&a.input),
        LogicalPlan::Repartition(r) => Some(&r.input),
        _ => None,
    }
}

fn reads_data(plan: &LogicalPlan) -> bool {
    plan.exists(|p| Ok(matches!(p, LogicalPlan::TableScan(_) | LogicalPlan::Extension(_)))).unwrap_or(true)
}

/// The source columns a column of `plan`'s output is computed from.
fn lineage(plan: &LogicalPlan, idx: usize) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    lineage_into(plan, idx, &mut out);
    out
}

fn refs_lineage(input: &LogicalPlan, e: &Expr, out: &mut BTreeSet<(String, String)>) {
    for c in e.column_refs() {
        if let Ok(i) = input.schema().index_of_column(c) {
            lineage_into(input, i, out);
        }
    }
}

fn lineage_into(plan: &LogicalPlan, idx: usize, out: &mut BTreeSet<(String, String)>) {
    match plan {
        LogicalPlan::TableScan(scan) => {
            if let (Some(schema), Some((_, field))) = (scan.table_name.schema(), plan.schema().iter().nth(idx)) {
                out.insert((format!("{schema}.{}", scan.table_name.table()), field.name().clone()));
            }
        }
        LogicalPlan::Projection(p) => {
            if let Some(e) = p.expr.get(idx) {
                refs_lineage(&p.input, e, out);
            }
        }
        LogicalPlan::Window(w) => {
            let n = w.input.schema().fields().len();
            if idx < n {
                lineage_into(&w.input, idx, out);
            } else if let Some(e) = w.window_expr.get(idx - n) {
                refs_lineage(&w.input, e, out);
            }
        }
        LogicalPlan::Aggregate(a) => {
            let groups = grouping_set_to_exprlist(&a.group_expr).unwrap_or_default();
            let gid = usize::from(is_grouping_set(a));
            if idx < groups.len() {
                refs_lineage(&a.input, groups[idx], out);
            } else if idx >= groups.len() + gid
                && let Some(e) = a.aggr_expr.get(idx - groups.len() - gid)
            {
                refs_lineage(&a.input, e, out);
            }
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => lineage_into(&j.left, idx, out),
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => lineage_into(&j.right, idx, out),
                _ if idx < left => lineage_into(&j.left, idx, out),
                _ => lineage_into(&j.right, idx - left, out),
            }
        }
        LogicalPlan::Union(u) => {
            for input in &u.inputs {
                lineage_into(input, idx, out);
            }
        }
        other => {
            if let Some(input) = pass_through(other) {
                lineage_into(input, idx, out);
            } else if let [input] = other.inputs().as_slice()
                && idx < input.schema().fields().len()
            {
                lineage_into(input, idx, out);
            }
        }
    }
}

fn is_grouping_set(a: &Aggregate) -> bool {
    matches!(a.group_expr.as_slice(), [Expr::GroupingSet(_)])
}

/// Persons available in a rewritten row-level plan.
#[derive(Debug, Clone, Default)]
struct Persons {
    /// Pseudonym columns, each with the table it comes from and whether it is
    /// null-extended by an outer join.
    cols: Vec<PersonCol>,
    /// Columns holding a lower bound of the distinct persons behind a row
    /// that summarises several (an inner aggregate).
    counts: Vec<Column>,
}

#[derive(Debug, Clone)]
struct PersonCol {
    col: Column,
    table: String,
    optional: bool,
}

impl Persons {
    fn requalify(self, alias: &datafusion::common::TableReference) -> Persons {
        let q = |c: Column| Column::new(Some(alias.clone()), c.name);
        Persons {
            cols: self.cols.into_iter().map(|p| PersonCol { col: q(p.col), ..p }).collect(),
            counts: self.counts.into_iter().map(q).collect(),
        }
    }
}

/// Where a column of the output chain comes from.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    Key,
    Agg(usize),
    Derived(BTreeSet<usize>),
    Constant,
}

/// The hidden facts of one output column.
#[derive(Debug, Clone)]
struct Cell {
    origin: Origin,
    additive: Option<Additive>,
    persons: Vec<Column>,
    complement: Vec<Column>,
    dominance: Option<(Column, Column)>,
}

/// The hidden facts of the output chain, by column (one per original output column).
#[derive(Debug, Clone)]
struct Track {
    cells: Vec<Cell>,
    row: Vec<Column>,
    margin: Option<Vec<Column>>,
    keys: Vec<Column>,
}

impl Track {
    /// Every hidden column the chain carries, once each.
    fn hidden(&self) -> Vec<Column> {
        let mut out: Vec<Column> = Vec::new();
        for c in &self.cells {
            extend_unique(&mut out, &c.persons);
            extend_unique(&mut out, &c.complement);
            if let Some((a, b)) = &c.dominance {
                extend_unique(&mut out, &[a.clone(), b.clone()]);
            }
        }
        extend_unique(&mut out, &self.row);
        extend_unique(&mut out, self.margin.as_deref().unwrap_or_default());
        extend_unique(&mut out, &self.keys);
        out
    }

    fn requalify(self, alias: &datafusion::common::TableReference) -> Track {
        let q = |c: Column| Column::new(Some(alias.clone()), c.name);
        Track {
            cells: self
                .cells
                .into_iter()
                .map(|c| Cell {
                    persons: c.persons.into_iter().map(q).collect(),
                    complement: c.complement.into_iter().map(q).collect(),
                    dominance: c.dominance.map(|(a, b)| (q(a), q(b))),
                    ..c
                })
                .collect(),
            row: self.row.into_iter().map(q).collect(),
            margin: self.margin.map(|m| m.into_iter().map(q).collect()),
            keys: self.keys.into_iter().map(q).collect(),
        }
    }
}

struct Rewriter<'a> {
    cx: &'a Context<'a>,
    next: AtomicUsize,
}

fn col_expr(c: &Column) -> Expr {
    Expr::Column(c.clone())
}

/// Adds `cols` to a projection's expressions unless already there as themselves.
fn with_passthrough(mut exprs: Vec<Expr>, cols: &[Column]) -> Vec<Expr> {
    for c in cols {
        if !exprs.iter().any(|e| matches!(e, Expr::Column(x) if x == c)) {
            exprs.push(col_expr(c));
        }
    }
    exprs
}

impl Rewriter<'_> {
    fn name(&self, what: &str) -> String {
        format!("{PREFIX}{what}{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// What the catalogue says of a column; a column the approval generalises
    /// (birth date to year) no longer identifies anyone when it gets here.
    fn facts(&self, table: &str, column: &str) -> ColumnFacts {
        let mut facts = self.cx.catalogue.get(table).and_then(|t| t.get(column)).copied().unwrap_or_default();
        if self.cx.approval.grant(table).is_some_and(|g| g.generalises(column)) {
            facts.identifying = false;
        }
        facts
    }

    fn is_person(&self, source: &(String, String)) -> bool {
        self.facts(&source.0, &source.1).person
    }

    /// Whether an aggregate's grouping keeps one row per person.
    fn grouped_by_person(&self, a: &Aggregate) -> Result<bool> {
        let groups = grouping_set_to_exprlist(&a.group_expr)?;
        Ok(groups.iter().any(|g| match g {
            Expr::Column(c) => a
                .input
                .schema()
                .index_of_column(c)
                .map(|i| lineage(&a.input, i).iter().any(|s| self.is_person(s)))
                .unwrap_or(false),
            _ => false,
        }))
    }

    fn shape(&self, plan: &LogicalPlan) -> Result<Shape> {
        let mut node = plan;
        while let Some(input) = pass_through(node) {
            node = input;
        }
        if !reads_data(node) {
            return Ok(Shape::NoData);
        }
        if let LogicalPlan::Aggregate(a) = node {
            if self.grouped_by_person(a)? {
                if self.cx.approval.allows(OutputKind::PseudonymisedMicrodata) {
                    return Ok(Shape::Rows);
                }
                return Err(refusal(
                    "disclosure.identifying_group",
                    "grouping by the person pseudonym gives one row per person; aggregate over persons instead (count(DISTINCT person), or group by a characteristic)".into(),
                ));
            }
            return Ok(Shape::Aggregate);
        }
        let tables = node.inputs().iter().filter(|i| self.reaches_aggregate(i)).count();
        if tables > 0 {
            if matches!(node, LogicalPlan::Window(_)) {
                return Err(refusal(
                    "disclosure.window_over_aggregate",
                    "window functions over aggregated cells (running totals, shares of a total) are not released; compute them from the released cells".into(),
                ));
            }
            if matches!(node, LogicalPlan::Union(_) | LogicalPlan::Join(_)) && tables == node.inputs().len() {
                return Err(refusal(
                    "disclosure.one_table",
                    "an answer may hold one aggregate table: cells of several tables in one answer can be subtracted from each other; run each table as its own query (use GROUP BY ROLLUP/CUBE for margins)".into(),
                ));
            }
        }
        Ok(Shape::Rows)
    }

    fn reaches_aggregate(&self, plan: &LogicalPlan) -> bool {
        let mut node = plan;
        while let Some(input) = pass_through(node) {
            node = input;
        }
        match node {
            LogicalPlan::Aggregate(a) => !self.grouped_by_person(a).unwrap_or(true),
            LogicalPlan::Union(_) | LogicalPlan::Join(_) | LogicalPlan::Window(_) => {
                node.inputs().iter().any(|i| self.reaches_aggregate(i))
            }
            _ => false,
        }
    }

    /// Row-level output: the approval must allow microdata and no identifying column may leave.
    fn check_microdata(&self, plan: &LogicalPlan) -> Result<()> {
        let project = &self.cx.approval.project;
        if !self.cx.approval.allows(OutputKind::PseudonymisedMicrodata) {
            return Err(refusal(
                "approval.output_kind",
                format!(
                    "project {project} may release aggregates only, and this query returns rows of individual records; aggregate them (GROUP BY … with counts or statistics)"
                ),
            ));
        }
        for (i, field) in plan.schema().fields().iter().enumerate() {
            for (table, column) in lineage(plan, i) {
                let facts = self.facts(&table, &column);
                // The pseudonym is the one person column that may leave.
                if facts.identifying && !facts.person {
                    return Err(refusal(
                        "disclosure.identifying_column",
                        format!(
                            "output column {} is computed from {table}.{column}, which identifies persons; release a generalised column instead (e.g. the birth year)",
                            field.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    // ----- row level: make the persons behind every row available --------------------

    fn expose(&self, plan: LogicalPlan) -> Result<(LogicalPlan, Persons)> {
        match plan {
            LogicalPlan::TableScan(scan) => self.expose_scan(scan),
            LogicalPlan::Projection(p) => {
                let (input, persons) = self.expose(Arc::unwrap_or_clone(p.input))?;
                let mut exprs = p.expr;
                let mut out = Persons::default();
                let add = |c: &Column, exprs: &mut Vec<Expr>| -> Column {
                    if exprs.iter().any(|e| matches!(e, Expr::Column(x) if x == c)) {
                        return c.clone();
                    }
                    let name = self.name("p");
                    exprs.push(col_expr(c).alias(&name));
                    Column::from_name(name)
                };
                for pc in &persons.cols {
                    let col = add(&pc.col, &mut exprs);
                    out.cols.push(PersonCol { col, ..pc.clone() });
                }
                for c in &persons.counts {
                    let col = add(c, &mut exprs);
                    out.counts.push(col);
                }
                Ok((LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input))?), out))
            }
            LogicalPlan::SubqueryAlias(a) => {
                let (input, persons) = self.expose(Arc::unwrap_or_clone(a.input))?;
                let persons = persons.requalify(&a.alias);
                Ok((LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(input), a.alias)?), persons))
            }
            LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Repartition(_) => {
                let input = plan.inputs()[0].clone();
                let (input, persons) = self.expose(input)?;
                Ok((plan.with_new_exprs(plan.expressions(), vec![input])?, persons))
            }
            LogicalPlan::Join(ref j) => {
                let join_type = j.join_type;
                let (left, lp) = self.expose(j.left.as_ref().clone())?;
                let (right, rp) = self.expose(j.right.as_ref().clone())?;
                let optional = |p: Persons, nullable: bool| Persons {
                    cols: p.cols.into_iter().map(|c| PersonCol { optional: c.optional || nullable, ..c }).collect(),
                    counts: p.counts,
                };
                let (mut persons, other) = match join_type {
                    JoinType::Inner => (optional(lp, false), Some(optional(rp, false))),
                    JoinType::Left => (optional(lp, false), Some(optional(rp, true))),
                    JoinType::Right => (optional(lp, true), Some(optional(rp, false))),
                    JoinType::Full => (optional(lp, true), Some(optional(rp, true))),
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => (lp, None),
                    JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => (rp, None),
                };
                let filtering_side = match join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => Some(right.clone()),
                    JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => Some(left.clone()),
                    _ => None,
                };
                if let Some(o) = other {
                    persons.cols.extend(o.cols);
                    persons.counts.extend(o.counts);
                }
                let joined = plan.with_new_exprs(plan.expressions(), vec![left, right])?;
                match filtering_side {
                    // A semi or anti join keeps rows depending on the other side: the
                    // persons of that side bound what the answer can tell of them
                    // (`WHERE EXISTS (… one person …)` must not pass as a large count).
                    Some(side) => self.bound_by(joined, side, persons),
                    None => Ok((joined, persons)),
                }
            }
            LogicalPlan::Aggregate(a) => {
                if self.grouped_by_person(&a)? {
                    let groups = grouping_set_to_exprlist(&a.group_expr)?;
                    let mut persons = Persons::default();
                    for (i, g) in groups.iter().enumerate() {
                        if let Expr::Column(c) = g
                            && let Ok(idx) = a.input.schema().index_of_column(c)
                            && let Some(src) = lineage(&a.input, idx).into_iter().find(|s| self.is_person(s))
                        {
                            let (q, f) = a.schema.qualified_field(i);
                            persons.cols.push(PersonCol { col: Column::new(q.cloned(), f.name()), table: src.0, optional: false });
                        }
                    }
                    // The other aggregates of a per-person row summarise that person only.
                    let plan = LogicalPlan::Aggregate(a);
                    return Ok((plan, persons));
                }
                // An inner aggregate's values reach the answer through filters and
                // joins: the same functions are refused as at the output.
                for e in &a.aggr_expr {
                    self.check_aggregate(e, &a.input, &self.cx.approval.project)?;
                }
                let (input, persons) = self.expose(Arc::unwrap_or_clone(a.input))?;
                let mut aggr = a.aggr_expr;
                let mut out = Persons::default();
                for bound in self.persons_expr(&persons, None, &[]) {
                    let name = self.name("n");
                    aggr.push(bound.alias(&name));
                    out.counts.push(Column::from_name(name));
                }
                let plan = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), a.group_expr, aggr)?);
                Ok((plan, out))
            }
            LogicalPlan::Union(u) => self.expose_union(u),
            LogicalPlan::Distinct(_) => Err(refusal(
                "disclosure.untraceable",
                "DISTINCT ON cannot be traced to the persons behind each row; use GROUP BY".into(),
            )),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Ok((plan, Persons::default())),
            other => Err(refusal(
                "disclosure.untraceable",
                format!(
                    "the persons behind this query's cells cannot be traced through a {} step; simplify the query",
                    other.display().to_string().split(':').next().unwrap_or("plan")
                ),
            )),
        }
    }

    fn expose_scan(&self, scan: TableScan) -> Result<(LogicalPlan, Persons)> {
        let Some(register) = scan.table_name.schema() else {
            return Ok((LogicalPlan::TableScan(scan), Persons::default()));
        };
        let table = format!("{register}.{}", scan.table_name.table());
        let source_schema = scan.source.schema();
        let person = source_schema.fields().iter().position(|f| self.facts(&table, f.name()).person);
        let Some(person) = person else {
            return Ok((LogicalPlan::TableScan(scan), Persons::default()));
        };
        let name = source_schema.field(person).name().clone();
        let col = Column::new(Some(scan.table_name.clone()), &name);
        let persons = Persons { cols: vec![PersonCol { col, table, optional: false }], counts: vec![] };
        match &scan.projection {
            Some(p) if !p.contains(&person) => {
                let mut p = p.clone();
                p.push(person);
                let scan = TableScanBuilder::new(scan.table_name, scan.source)
                    .with_projection(Some(p))
                    .with_filters(scan.filters)
                    .with_fetch(scan.fetch)
                    .build()?;
                Ok((LogicalPlan::TableScan(scan), persons))
            }
            _ => Ok((LogicalPlan::TableScan(scan), persons)),
        }
    }

    /// Adds the distinct persons of `side` (which decides which rows of
    /// `plan` are kept) as a bound on every row of `plan`.
    fn bound_by(&self, plan: LogicalPlan, side: LogicalPlan, mut persons: Persons) -> Result<(LogicalPlan, Persons)> {
        let (side, side_persons) = self.expose(side)?;
        let bounds = self.persons_expr(&side_persons, None, &[]);
        if bounds.is_empty() {
            return Ok((plan, persons));
        }
        let names: Vec<String> = bounds.iter().map(|_| self.name("s")).collect();
        let aggr = bounds.into_iter().zip(&names).map(|(b, n)| b.alias(n)).collect();
        let side = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(side), vec![], aggr)?);
        let alias = self.name("side");
        let side = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(side), alias.as_str())?);
        let joined = datafusion::logical_expr::LogicalPlanBuilder::from(plan).cross_join(side)?.build()?;
        persons.counts.extend(names.into_iter().map(|n| Column::new(Some(alias.clone()), n)));
        Ok((joined, persons))
    }

    fn expose_union(&self, u: Union) -> Result<(LogicalPlan, Persons)> {
        let exposed: Vec<(LogicalPlan, Persons)> =
            u.inputs.into_iter().map(|i| self.expose(Arc::unwrap_or_clone(i))).collect::<Result<_>>()?;
        let np = exposed.iter().map(|(_, p)| p.cols.len()).max().unwrap_or(0);
        let nc = exposed.iter().map(|(_, p)| p.counts.len()).max().unwrap_or(0);
        let visible = u.schema.fields().len();
        let mut inputs = Vec::new();
        let mut tables = vec![String::new(); np];
        for (plan, persons) in exposed {
            let mut exprs: Vec<Expr> = (0..visible).map(|i| Expr::Column(Column::from(plan.schema().qualified_field(i)))).collect();
            for (j, table) in tables.iter_mut().enumerate() {
                let e = match persons.cols.get(j).or(persons.cols.last()) {
                    Some(pc) => {
                        table.clone_from(&pc.table);
                        col_expr(&pc.col)
                    }
                    None => lit(datafusion::common::ScalarValue::Utf8(None)),
                };
                exprs.push(e.alias(format!("{PREFIX}up{j}")));
            }
            for j in 0..nc {
                let e = match persons.counts.get(j).or(persons.counts.last()) {
                    Some(c) => col_expr(c),
                    None => lit(datafusion::common::ScalarValue::Int64(None)),
                };
                exprs.push(e.alias(format!("{PREFIX}uc{j}")));
            }
            inputs.push(Arc::new(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?)));
        }
        let union = LogicalPlan::Union(Union::try_new_with_loose_types(inputs)?);
        let field = |i: usize| Column::from(union.schema().qualified_field(i));
        let persons = Persons {
            cols: (0..np).map(|j| PersonCol { col: field(visible + j), table: tables[j].clone(), optional: true }).collect(),
            counts: (0..nc).map(|j| field(visible + np + j)).collect(),
        };
        Ok((union, persons))
    }

    /// Lower bounds on the distinct persons behind the rows of a group that
    /// satisfy `cond` (all rows when `None`): one distinct count per pseudonym
    /// column and the largest inner-aggregate bound per bound column; the
    /// least non-zero of them is the cell's persons (taken when the answer is
    /// released). Person columns null-extended by an outer join count only
    /// when the statistic reads their table (`tables`).
    fn persons_expr(&self, persons: &Persons, cond: Option<&Expr>, tables: &[String]) -> Vec<Expr> {
        let guarded = |e: Expr| match cond {
            Some(c) => when(c.clone(), e).end().expect("CASE with one branch"),
            None => e,
        };
        let mut chosen: Vec<&PersonCol> =
            persons.cols.iter().filter(|p| !p.optional || tables.contains(&p.table)).collect();
        if chosen.is_empty() {
            chosen = persons.cols.iter().collect();
        }
        let mut parts: Vec<Expr> = chosen
            .into_iter()
            .map(|p| {
                Expr::AggregateFunction(AggregateFunction::new_udf(
                    count_udaf(),
                    vec![guarded(col_expr(&p.col))],
                    true,
                    None,
                    vec![],
                    None,
                ))
            })
            .collect();
        parts.extend(persons.counts.iter().map(|c| {
            Expr::AggregateFunction(AggregateFunction::new_udf(max_udaf(), vec![guarded(col_expr(c))], false, None, vec![], None))
        }));
        parts
    }

    // ----- the output chain: from the root down to the one aggregate ------------------

    fn output(&self, plan: LogicalPlan) -> Result<(LogicalPlan, Track)> {
        match plan {
            LogicalPlan::Aggregate(a) => self.output_aggregate(a),
            LogicalPlan::Projection(p) => {
                let (input, track) = self.output(Arc::unwrap_or_clone(p.input))?;
                let input_schema = input.schema().clone();
                let mut cells = Vec::new();
                for e in &p.expr {
                    let refs: Vec<usize> = e
                        .column_refs()
                        .into_iter()
                        .filter_map(|c| input_schema.index_of_column(c).ok())
                        .filter(|i| *i < track.cells.len())
                        .collect();
                    let plain = matches!(e.clone().unalias_nested().data, Expr::Column(_));
                    let cell = if plain && refs.len() == 1 {
                        track.cells[refs[0]].clone()
                    } else {
                        derive(&track, &refs)
                    };
                    cells.push(cell);
                }
                let exprs = with_passthrough(p.expr, &track.hidden());
                let track = Track { cells, ..track };
                Ok((LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input))?), track))
            }
            LogicalPlan::Filter(f) => {
                let refs: Vec<Column> = f.predicate.column_refs().into_iter().cloned().collect();
                let (input, mut track) = self.output(Arc::unwrap_or_clone(f.input.clone()))?;
                if track.margin.is_some() {
                    return Err(margins_cut());
                }
                // A row kept by a condition on a cell tells about the cell: the
                // row is then only as safe as the cell.
                for c in refs {
                    if let Ok(i) = input.schema().index_of_column(&c)
                        && let Some(cell) = track.cells.get(i)
                    {
                        let persons = cell.persons.clone();
                        extend_unique(&mut track.row, &persons);
                    }
                }
                Ok((LogicalPlan::Filter(datafusion::logical_expr::Filter::try_new(f.predicate, Arc::new(input))?), track))
            }
            LogicalPlan::Sort(s) => {
                let (input, track) = self.output(Arc::unwrap_or_clone(s.input.clone()))?;
                if track.margin.is_some() && s.fetch.is_some() {
                    return Err(margins_cut());
                }
                Ok((LogicalPlan::Sort(datafusion::logical_expr::Sort { input: Arc::new(input), ..s }), track))
            }
            LogicalPlan::Limit(l) => {
                let (input, track) = self.output(Arc::unwrap_or_clone(l.input.clone()))?;
                if track.margin.is_some() {
                    return Err(margins_cut());
                }
                Ok((LogicalPlan::Limit(datafusion::logical_expr::Limit { input: Arc::new(input), ..l }), track))
            }
            LogicalPlan::SubqueryAlias(a) => {
                let (input, track) = self.output(Arc::unwrap_or_clone(a.input))?;
                let track = track.requalify(&a.alias);
                Ok((LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(input), a.alias)?), track))
            }
            LogicalPlan::Repartition(r) => {
                let (input, track) = self.output(Arc::unwrap_or_clone(r.input.clone()))?;
                Ok((LogicalPlan::Repartition(datafusion::logical_expr::Repartition { input: Arc::new(input), ..r }), track))
            }
            other => Err(refusal(
                "disclosure.untraceable",
                format!("unexpected plan step {} above the aggregate", other.display()),
            )),
        }
    }

    fn output_aggregate(&self, a: Aggregate) -> Result<(LogicalPlan, Track)> {
        let project = &self.cx.approval.project;
        let groups: Vec<Expr> = grouping_set_to_exprlist(&a.group_expr)?.into_iter().cloned().collect();
        for g in &groups {
            for c in g.column_refs() {
                let Ok(i) = a.input.schema().index_of_column(c) else { continue };
                for (table, column) in lineage(&a.input, i) {
                    let facts = self.facts(&table, &column);
                    if facts.person || facts.identifying {
                        return Err(refusal(
                            "disclosure.identifying_group",
                            format!(
                                "grouping by {table}.{column} identifies persons; group by a coarser characteristic (e.g. birth_year, region)"
                            ),
                        ));
                    }
                }
            }
        }
        let mut facts_of = Vec::new();
        for e in &a.aggr_expr {
            facts_of.push(self.check_aggregate(e, &a.input, project)?);
        }
        let grouping_set = is_grouping_set(&a);
        let (input, persons) = self.expose(Arc::unwrap_or_clone(a.input))?;
        let mut aggr = a.aggr_expr.clone();
        let mut cache: HashMap<String, Column> = HashMap::new();
        let mut hidden = |exprs: Vec<Expr>, what: &str, aggr: &mut Vec<Expr>| -> Vec<Column> {
            exprs
                .into_iter()
                .map(|e| {
                    let key = e.schema_name().to_string();
                    if let Some(c) = cache.get(&key) {
                        return c.clone();
                    }
                    let name = self.name(what);
                    aggr.push(e.alias(&name));
                    let c = Column::from_name(name);
                    cache.insert(key, c.clone());
                    c
                })
                .collect()
        };
        let group_persons = hidden(self.persons_expr(&persons, None, &[]), "g", &mut aggr);
        let mut dominance_args: Vec<Expr> = Vec::new();
        let ngroups = groups.len();
        let gid = usize::from(grouping_set);
        let mut cells: Vec<Cell> = (0..ngroups + gid)
            .map(|_| Cell { origin: Origin::Key, additive: None, persons: vec![], complement: vec![], dominance: None })
            .collect();
        for (i, f) in facts_of.iter().enumerate() {
            let cond = f.condition.as_ref();
            let persons_e = self.persons_expr(&persons, cond, &f.tables);
            let complement_e = match &f.complement {
                Some(c) => self.persons_expr(&persons, Some(c), &f.tables),
                None => vec![],
            };
            let dominance = f.magnitude.as_ref().map(|arg| {
                let guarded = match cond {
                    Some(c) => when(c.clone(), arg.clone()).end().expect("CASE with one branch"),
                    None => arg.clone(),
                };
                dominance_args.push(guarded);
                let n = dominance_args.len() - 1;
                (Column::from_name(format!("{PREFIX}dt{n}")), Column::from_name(format!("{PREFIX}ds{n}")))
            });
            cells.push(Cell {
                origin: Origin::Agg(i),
                additive: f.additive,
                persons: hidden(persons_e, "a", &mut aggr),
                complement: hidden(complement_e, "c", &mut aggr),
                dominance,
            });
        }
        // Which keys a row of a grouping-sets answer aggregates away (a
        // margin): its key is null although the key has values in its rows
        // (`count(key) > 0`). `grouping()` would say it directly, but it does
        // not survive the SQL round trip to a node.
        let margin = if grouping_set {
            let counts = groups
                .iter()
                .map(|g| {
                    Expr::AggregateFunction(AggregateFunction::new_udf(count_udaf(), vec![g.clone()], false, None, vec![], None))
                })
                .collect();
            Some(hidden(counts, "m", &mut aggr))
        } else {
            None
        };
        let dominance_input = (!dominance_args.is_empty()).then(|| input.clone());
        let plan = Aggregate::try_new(Arc::new(input), a.group_expr, aggr)?;
        let schema = plan.schema.clone();
        let mut plan = LogicalPlan::Aggregate(plan);
        if let Some(input) = dominance_input {
            if grouping_set {
                return Err(refusal(
                    "disclosure.dominance_margins",
                    "sums and means of magnitudes cannot be checked for dominance in ROLLUP/CUBE/GROUPING SETS margins; query the margins as separate GROUP BYs".into(),
                ));
            }
            plan = self.with_dominance(plan, input, &groups, &persons, &dominance_args)?;
        }
        let keys: Vec<Column> = (0..ngroups)
            .map(|i| {
                let (q, f) = schema.qualified_field(i);
                Column::new(q.cloned(), f.name())
            })
            .collect();
        let track = Track { cells, row: group_persons, margin, keys };
        Ok((plan, track))
    }

    /// Joins the aggregate with its dominance companions: per group, for each
    /// magnitude `x`, the sum of |x| of the `dominance_n` persons who
    /// contribute most (`__samkor_dtN`) and of all persons (`__samkor_dsN`):
    ///
    /// ```text
    ///  input ─ GROUP BY keys, person: s = Σ|x| ─ row_number() OVER (PARTITION BY keys ORDER BY s DESC)
    ///        ─ GROUP BY keys: Σ s for rank ≤ n, Σ s ─┐
    ///  aggregate ───────────── LEFT JOIN on keys (null-safe) ─ project
    /// ```
    /// Both sides go to the node as SQL when the input is one register's.
    fn with_dominance(
        &self,
        aggregate: LogicalPlan,
        input: LogicalPlan,
        groups: &[Expr],
        persons: &Persons,
        args: &[Expr],
    ) -> Result<LogicalPlan> {
        use datafusion::common::NullEquality;
        use datafusion::functions_aggregate::sum::sum_udaf;
        use datafusion::logical_expr::{ExprFunctionExt, LogicalPlanBuilder, cast};
        let Some(person) = persons.cols.iter().find(|p| !p.optional).or(persons.cols.first()) else {
            // Rows that summarise several persons (inner aggregates): no per-person sums.
            return Err(refusal(
                "disclosure.dominance_untraceable",
                "a sum or mean of a magnitude over pre-aggregated rows cannot be checked for dominance; aggregate the rows of individuals directly".into(),
            ));
        };
        let sum = |e: Expr| Expr::AggregateFunction(AggregateFunction::new_udf(sum_udaf(), vec![e], false, None, vec![], None));
        let key_names: Vec<String> = (0..groups.len()).map(|j| format!("{PREFIX}k{j}")).collect();
        let mut by_person: Vec<Expr> = groups.iter().zip(&key_names).map(|(g, n)| g.clone().alias(n)).collect();
        by_person.push(col_expr(&person.col).alias(format!("{PREFIX}person")));
        let shares: Vec<Expr> = args
            .iter()
            .enumerate()
            .map(|(i, a)| sum(datafusion::functions::math::expr_fn::abs(cast(a.clone(), DataType::Float64))).alias(format!("{PREFIX}s{i}")))
            .collect();
        let per_person = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), by_person, shares)?);
        let keys: Vec<Expr> = key_names.iter().map(|n| Expr::Column(Column::from_name(n))).collect();
        let ranks: Vec<Expr> = (0..args.len())
            .map(|i| {
                datafusion::functions_window::expr_fn::row_number()
                    .partition_by(keys.clone())
                    .order_by(vec![Expr::Column(Column::from_name(format!("{PREFIX}s{i}"))).sort(false, true)])
                    .build()
                    .map(|e| e.alias(format!("{PREFIX}r{i}")))
            })
            .collect::<Result<_>>()?;
        let ranked = LogicalPlan::Window(datafusion::logical_expr::Window::try_new(ranks, Arc::new(per_person))?);
        let n = i64::from(self.cx.approval.disclosure.dominance_n.max(1));
        let mut totals = Vec::new();
        for i in 0..args.len() {
            let s = Expr::Column(Column::from_name(format!("{PREFIX}s{i}")));
            let r = Expr::Column(Column::from_name(format!("{PREFIX}r{i}")));
            let top = when(r.lt_eq(lit(n)), s.clone()).end()?;
            totals.push(sum(top).alias(format!("{PREFIX}dt{i}")));
            totals.push(sum(s).alias(format!("{PREFIX}ds{i}")));
        }
        let dominance = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(ranked), keys, totals)?);
        let alias = self.name("dom");
        let dominance = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(dominance), alias.as_str())?);
        let left: Vec<Column> = (0..groups.len()).map(|j| Column::from(aggregate.schema().qualified_field(j))).collect();
        let right: Vec<Column> = key_names.iter().map(|n| Column::new(Some(alias.clone()), n)).collect();
        let mut exprs: Vec<Expr> = aggregate.schema().columns().into_iter().map(Expr::Column).collect();
        for i in 0..args.len() {
            for what in ["dt", "ds"] {
                let name = format!("{PREFIX}{what}{i}");
                exprs.push(Expr::Column(Column::new(Some(alias.clone()), &name)).alias(&name));
            }
        }
        let joined = if groups.is_empty() {
            LogicalPlanBuilder::from(aggregate).cross_join(dominance)?.build()?
        } else {
            LogicalPlanBuilder::from(aggregate)
                .join_detailed(dominance, JoinType::Left, (left, right), None, NullEquality::NullEqualsNull)?
                .build()?
        };
        Ok(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(joined))?))
    }

    /// Refuses identifying aggregates and says what the hidden companions of an allowed one are.
    fn check_aggregate(&self, e: &Expr, input: &LogicalPlan, project: &str) -> Result<AggFacts> {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e.clone().unalias_nested().data else {
            return Err(refusal("disclosure.untraceable", format!("unexpected aggregate expression {e}")));
        };
        let name = func.name().to_lowercase();
        let AggregateFunctionParams { args, distinct, filter, .. } = params;
        let sources: BTreeSet<(String, String)> = args
            .iter()
            .chain(filter.iter().map(|f| f.as_ref()))
            .flat_map(|a| a.column_refs().into_iter().cloned().collect::<Vec<_>>())
            .filter_map(|c| input.schema().index_of_column(&c).ok())
            .flat_map(|i| lineage(input, i))
            .collect();
        if IDENTIFYING_AGGREGATES.contains(&name.as_str()) {
            // min/max of values that no register column stands behind (counts
            // of inner groups, which carry their own persons) reveal no one's value.
            let extreme = name == "min" || name == "max";
            let approved = extreme
                && (sources.is_empty()
                    || (matches!(args.as_slice(), [Expr::Column(_)])
                        && sources.iter().all(|(t, c)| self.cx.approval.disclosure.allows_min_max(t, c))));
            if !approved {
                let hint = if name == "min" || name == "max" {
                    " (the approval may allow min/max on named columns: disclosure.allow_min_max)"
                } else {
                    ""
                };
                return Err(refusal(
                    "disclosure.identifying_aggregate",
                    format!("{name}() returns one person's value and is not released for project {project}{hint}; use counts, means, medians or percentiles"),
                ));
            }
        } else if !SAFE_AGGREGATES.contains(&name.as_str()) {
            return Err(refusal(
                "disclosure.unknown_aggregate",
                format!("{name}() is not a statistic that disclosure control knows how to protect; use count, sum, avg, median, stddev or percentiles"),
            ));
        }
        let data_args: Vec<&Expr> = args.iter().filter(|a| !a.column_refs().is_empty()).collect();
        let mut cond: Vec<Expr> = filter.iter().map(|f| f.as_ref().clone()).collect();
        for a in &data_args {
            cond.push((*a).clone().is_not_null());
            if name == "sum" {
                cond.push((*a).clone().not_eq(lit(0i64)));
            }
        }
        let condition = cond.into_iter().reduce(Expr::and);
        let indicator = data_args.iter().any(|a| {
            a.exists(|e| Ok(matches!(e, Expr::Case(_)))).unwrap_or(false)
        });
        let additive = match name.as_str() {
            "count" if !distinct => Some(Additive::Count),
            "sum" if !distinct => Some(Additive::Sum),
            _ => None,
        };
        // A conditional count (FILTER, or of a column that may be null) or an
        // indicator sum (CASE) can be subtracted from the group's total.
        let conditional = match name.as_str() {
            "count" => filter.is_some() || !data_args.is_empty(),
            "sum" => filter.is_some() || indicator,
            _ => false,
        };
        let complement = if conditional { condition.clone().map(|c| c.is_not_true()) } else { None };
        let magnitude = matches!(name.as_str(), "sum" | "avg" | "mean")
            .then(|| data_args.first().map(|a| (*a).clone()))
            .flatten()
            .filter(|_| sources.iter().any(|(t, c)| self.facts(t, c).magnitude));
        let tables = sources.into_iter().map(|(t, _)| t).collect();
        Ok(AggFacts { condition, complement, additive, magnitude, tables })
    }

    /// The root: the answer's columns first, the hidden facts after them,
    /// located by name in the root's schema.
    fn finish(&self, plan: LogicalPlan, track: Track) -> Result<(LogicalPlan, Layout)> {
        let visible = track.cells.len();
        let schema = plan.schema().clone();
        let at = |c: &Column| -> Result<usize> { schema.index_of_column(c) };
        let all = |cols: &[Column]| -> Result<Vec<usize>> { cols.iter().map(at).collect() };
        let mut roles = Vec::new();
        let mut persons = Vec::new();
        let mut complement = Vec::new();
        let mut dominance = Vec::new();
        for cell in &track.cells {
            persons.push(all(&cell.persons)?);
            complement.push(all(&cell.complement)?);
            dominance.push(match &cell.dominance {
                Some((t, s)) => Some((at(t)?, at(s)?)),
                None => None,
            });
            roles.push(match &cell.origin {
                Origin::Key => Role::Key,
                Origin::Constant => Role::Constant,
                Origin::Agg(a) => Role::Value(ValueColumn { additive: cell.additive, depends_on: vec![*a] }),
                Origin::Derived(d) => Role::Value(ValueColumn { additive: None, depends_on: d.iter().copied().collect() }),
            });
        }
        let margin = match &track.margin {
            Some(m) => Some(all(m)?),
            None => None,
        };
        let layout = Layout { visible, roles, row: all(&track.row)?, persons, complement, dominance, margin, keys: all(&track.keys)? };
        Ok((plan, layout))
    }
}

/// Appends the columns of `more` not yet in `to`.
fn extend_unique(to: &mut Vec<Column>, more: &[Column]) {
    for c in more {
        if !to.contains(c) {
            to.push(c.clone());
        }
    }
}

/// A column computed from several columns of the chain: its persons are the least of theirs.
fn derive(track: &Track, refs: &[usize]) -> Cell {
    let mut aggs = BTreeSet::new();
    let mut all_keys = true;
    let mut persons = Vec::new();
    let mut complement = Vec::new();
    for &i in refs {
        let c = &track.cells[i];
        match &c.origin {
            Origin::Key | Origin::Constant => {}
            Origin::Agg(a) => {
                aggs.insert(*a);
                all_keys = false;
            }
            Origin::Derived(d) => {
                aggs.extend(d.iter().copied());
                all_keys = false;
            }
        }
        extend_unique(&mut persons, &c.persons);
        extend_unique(&mut complement, &c.complement);
    }
    let origin = if refs.is_empty() {
        Origin::Constant
    } else if all_keys {
        persons.clear();
        Origin::Key
    } else {
        Origin::Derived(aggs)
    };
    Cell { origin, additive: None, persons, complement, dominance: None }
}

fn margins_cut() -> DataFusionError {
    refusal(
        "disclosure.margins_filtered",
        "HAVING, LIMIT or a filter over ROLLUP/CUBE/GROUPING SETS would let the margins give back the rows removed; filter before grouping instead".into(),
    )
}

/// What the hidden companions of one statistic are.
#[derive(Debug)]
struct AggFacts {
    /// Rows that contribute to the value.
    condition: Option<Expr>,
    /// Rows outside a conditional count or indicator sum.
    complement: Option<Expr>,
    additive: Option<Additive>,
    /// The argument of a sum or mean of a magnitude (dominance rule).
    magnitude: Option<Expr>,
    /// Tables the statistic reads.
    tables: Vec<String>,
}

// ----- applying the decision to the collected answer ----------------------------------

/// The disclosure summary of an answer: in the schema metadata, the audit log and the CLI.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub min_cell_persons: u32,
    pub dominance_n: u32,
    pub dominance_share: f64,
    pub round_counts_to: u32,
    /// Withheld cells per reason.
    pub withheld: BTreeMap<String, u64>,
    /// Groups below the threshold whose keys were withheld too (merged into one row).
    pub groups_withheld: u64,
}

impl Summary {
    pub fn new(mode: &Mode, approval: &Approval) -> Summary {
        Summary::named(mode.name(), approval)
    }

    fn named(mode: &'static str, approval: &Approval) -> Summary {
        let d = &approval.disclosure;
        Summary {
            mode,
            min_cell_persons: d.min_cell_persons,
            dominance_n: d.dominance_n,
            dominance_share: d.dominance_share,
            round_counts_to: d.round_counts_to.max(1),
            withheld: BTreeMap::new(),
            groups_withheld: 0,
        }
    }

    pub fn cells_withheld(&self) -> u64 {
        self.withheld.values().sum()
    }
}

/// The schema a client sees for an answer released in `mode`, known at
/// planning (Flight SQL `GetFlightInfo`): the settings in force are in its
/// metadata already; the stream's schema adds what was withheld.
pub fn released_schema(schema: &Schema, mode: &Mode, approval: &Approval) -> Schema {
    let summary = Summary::new(mode, approval);
    let mut metadata = schema.metadata().clone();
    metadata.insert(METADATA_KEY.to_owned(), serde_json::to_string(&summary).unwrap_or_default());
    match mode {
        Mode::Aggregate(layout) => {
            let mut fields: Vec<Field> =
                schema.fields().iter().take(layout.visible).map(|f| f.as_ref().clone().with_nullable(true)).collect();
            let name = marker_name(&fields);
            fields.push(Field::new(name, DataType::Utf8, true));
            Schema::new_with_metadata(fields, metadata)
        }
        Mode::NoData | Mode::Microdata => Schema::new_with_metadata(schema.fields().clone(), metadata),
    }
}

fn marker_name(fields: &[Field]) -> String {
    let mut name = WITHHELD_COLUMN.to_owned();
    while fields.iter().any(|f| f.name() == &name) {
        name.push('_');
    }
    name
}

fn int_columns(batch: &RecordBatch, idx: &[usize]) -> Result<Vec<Int64Array>> {
    idx.iter()
        .map(|&i| {
            let a = cast(batch.column(i), &DataType::Int64)?;
            Ok(a.as_any().downcast_ref::<Int64Array>().expect("cast to Int64").clone())
        })
        .collect()
}

fn float_column(array: &ArrayRef) -> Option<Float64Array> {
    cast(array, &DataType::Float64).ok().map(|a| a.as_any().downcast_ref::<Float64Array>().expect("cast to Float64").clone())
}

/// The least non-zero of several person counts of row `r`: `Some(0)` when
/// all are zero, `None` when there is no count at all (no person data).
fn least_persons(columns: &[Int64Array], r: usize) -> Option<u64> {
    if columns.is_empty() {
        return None;
    }
    let least = columns.iter().filter(|a| !a.is_null(r)).map(|a| a.value(r)).filter(|v| *v > 0).map(|v| v as u64).min();
    Some(least.unwrap_or(0))
}

fn text(array: &ArrayRef) -> Result<Vec<Option<String>>> {
    let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
    Ok((0..array.len()).map(|r| (!array.is_null(r)).then(|| f.value(r).to_string())).collect())
}

/// Applies disclosure control to a collected aggregate answer.
pub fn release(batches: &[RecordBatch], schema: &SchemaRef, layout: &Layout, approval: &Approval) -> Result<(SchemaRef, Vec<RecordBatch>, Summary)> {
    let batch = concat_batches(schema, batches)?;
    let n = batch.num_rows();
    let row_persons = int_columns(&batch, &layout.row)?;
    let persons: Vec<Vec<Int64Array>> = layout.persons.iter().map(|i| int_columns(&batch, i)).collect::<Result<_>>()?;
    let complement: Vec<Vec<Int64Array>> =
        layout.complement.iter().map(|i| int_columns(&batch, i)).collect::<Result<_>>()?;
    let dominance: Vec<Option<(Float64Array, Float64Array)>> = layout
        .dominance
        .iter()
        .map(|d| d.and_then(|(t, s)| Some((float_column(batch.column(t))?, float_column(batch.column(s))?))))
        .collect();
    let values: Vec<Option<Float64Array>> = layout
        .roles
        .iter()
        .enumerate()
        .map(|(c, role)| match role {
            Role::Value(ValueColumn { additive: Some(_), .. }) => float_column(batch.column(c)),
            _ => None,
        })
        .collect();
    let shown: Vec<Vec<Option<String>>> =
        (0..layout.visible).map(|c| if matches!(layout.roles[c], Role::Key) { text(batch.column(c)) } else { Ok(vec![None; n]) }).collect::<Result<_>>()?;
    let keys: Vec<Vec<Option<String>>> = layout.keys.iter().map(|&k| text(batch.column(k))).collect::<Result<_>>()?;
    let margins: Option<Vec<Int64Array>> = match &layout.margin {
        Some(m) => Some(int_columns(&batch, m)?),
        None => None,
    };
    let rows: Vec<RowFacts> = (0..n)
        .map(|r| RowFacts {
            persons: least_persons(&row_persons, r),
            margin_mask: margins.as_ref().map(|counts| {
                counts
                    .iter()
                    .enumerate()
                    .filter(|(j, c)| keys[*j][r].is_none() && !c.is_null(r) && c.value(r) > 0)
                    .fold(0u64, |acc, (j, _)| acc | (1 << j))
            }),
            keys: keys.iter().map(|k| k[r].clone()).collect(),
            shown: shown.iter().map(|s| s[r].clone()).collect(),
            cells: (0..layout.visible)
                .map(|c| CellFacts {
                    value: values[c].as_ref().and_then(|v| (!v.is_null(r)).then(|| v.value(r))),
                    persons: least_persons(&persons[c], r),
                    complement: least_persons(&complement[c], r),
                    dominance: dominance[c].as_ref().and_then(|(t, s)| {
                        (!t.is_null(r) && !s.is_null(r)).then(|| (t.value(r), s.value(r)))
                    }),
                })
                .collect(),
        })
        .collect();
    let outcome = sdc::decide(&layout.roles, &rows, &approval.disclosure);

    // Withheld cells become null; released counts are rounded.
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(layout.visible + 1);
    for c in 0..layout.visible {
        let mask = BooleanArray::from((0..n).map(|r| outcome.rows[r].withheld[c].is_some()).collect::<Vec<bool>>());
        let mut array = nullif(batch.column(c), &mask)?;
        if outcome.round_to > 1
            && matches!(layout.roles[c], Role::Value(ValueColumn { additive: Some(Additive::Count), .. }))
            && let Some(ints) = array.as_any().downcast_ref::<Int64Array>()
        {
            let rounded: Int64Array = ints.iter().map(|v| v.map(|v| sdc::round_count(v, outcome.round_to))).collect();
            array = Arc::new(rounded);
        }
        columns.push(array);
    }
    let fields: Vec<Field> =
        schema.fields().iter().take(layout.visible).map(|f| f.as_ref().clone().with_nullable(true)).collect();
    let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
    let marks: StringArray = outcome
        .rows
        .iter()
        .map(|d| {
            let w: Vec<&str> = (0..layout.visible).filter(|&c| d.withheld[c].is_some()).map(|c| names[c]).collect();
            (!w.is_empty()).then(|| w.join(","))
        })
        .collect();
    columns.push(Arc::new(marks));
    let mut summary = Summary::named("aggregate", approval);
    summary.withheld = outcome.counts.iter().map(|(r, n)| (r.name().to_owned(), *n)).collect();
    summary.groups_withheld = outcome.collapsed;
    let mut out_fields = fields.clone();
    out_fields.push(Field::new(marker_name(&fields), DataType::Utf8, true));
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(METADATA_KEY.to_owned(), serde_json::to_string(&summary).unwrap_or_default());
    let out_schema = Arc::new(Schema::new_with_metadata(out_fields, metadata));
    let released = RecordBatch::try_new(out_schema.clone(), columns)?;
    // Groups whose keys would reveal something are merged into one row.
    let keep = BooleanArray::from(outcome.rows.iter().map(|d| !d.collapsed).collect::<Vec<bool>>());
    let mut released = filter_record_batch(&released, &keep)?;
    if outcome.collapsed > 0 {
        let mut merged: Vec<ArrayRef> = out_schema
            .fields()
            .iter()
            .take(layout.visible)
            .map(|f| datafusion::arrow::array::new_null_array(f.data_type(), 1))
            .collect();
        merged.push(Arc::new(StringArray::from(vec![Some("* (groups below the threshold)")])));
        let extra = RecordBatch::try_new(out_schema.clone(), merged)?;
        released = concat_batches(&out_schema, &[released, extra])?;
    }
    Ok((out_schema, vec![released], summary))
}

/// The summary for a released microdata or constant answer, as schema metadata.
pub fn annotate(schema: &SchemaRef, summary: &Summary) -> SchemaRef {
    let mut metadata = schema.metadata().clone();
    metadata.insert(METADATA_KEY.to_owned(), serde_json::to_string(summary).unwrap_or_default());
    Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata))
}
