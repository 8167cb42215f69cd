//! Statistical disclosure control as a visible plan rewrite.
//!
//! ```text
//!   optimized, approved plan ──▶ classify the output (classify.rs)
//!        │   rows of individuals ─▶ pseudonymised microdata (approval must allow it;
//!        │                          no identifying column)
//!        │   no register data    ─▶ released as is
//!        ▼   one aggregate table
//!   split at the aggregate (companions.rs):
//!     lower: every row below it keeps its persons' record keys (trace.rs);
//!            each statistic becomes the additive parts it determines
//!            (statistics.rs) with hidden companions: persons and cell keys
//!            per part, complements, dominance (dominance.rs); computed at the
//!            nodes with the other aggregates (visible in EXPLAIN as `__samkor_*`)
//!     upper: the query above the aggregate, kept to be run at release
//!        ▼
//!   answer collected ──▶ release.rs: decide on the true values (threshold,
//!   complement, dominance, class, secondary; samkor_policies::disclosure),
//!   perturb the released parts by their cell keys (perturb.rs), rebuild the
//!   statistics from perturbed parts, run the upper query over the released
//!   cells; withheld cells null and marked in the `withheld` column
//! ```
//!
//! Refusals (rules.rs) happen at planning, before any node is asked, and
//! depend only on the query, the catalogue and the approval.

mod classify;
mod companions;
mod dominance;
mod lineage;
mod packed;
mod perturb;
mod release;
mod rules;
mod statistics;
mod trace;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::{Column, DFSchemaRef, Result};
use datafusion::logical_expr::{Expr, LogicalPlan};
use samkor_policies::approval::Approval;
use samkor_policies::disclosure::Additive;

pub use release::{Released, Summary, annotate, release, released_schema};
pub use rules::Rule;
pub use statistics::Kind;

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
/// The row number of a released cell, carried through the upper query.
const ROW_COLUMN: &str = "__samkor_row";

/// How an answer is released.
#[derive(Debug, Clone)]
pub enum Mode {
    /// No register data in the answer (constants, `EXPLAIN`).
    NoData,
    /// Rows of individuals keyed by the project pseudonym.
    Microdata,
    /// One aggregate table under disclosure control.
    Aggregate(Box<Layout>),
    /// Statistical methods' tables (`crate::methods`): released by their own steps and rules.
    Method,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::NoData => "no_data",
            Mode::Microdata => "pseudonymised_microdata",
            Mode::Aggregate(_) => "aggregate",
            Mode::Method => "method",
        }
    }
}

/// Where the parts and companions of one statistic are in the executed
/// aggregate's output, by column name.
#[derive(Debug, Clone, Default)]
pub struct Parts {
    /// The value as computed (count, sum, quantile, extreme, exact).
    pub value: Option<String>,
    /// The value is the persons count of `persons[0]` instead: a distinct
    /// count of a register's own person column is the count of the persons
    /// its cell is judged by, computed once (`companions.rs`).
    pub value_is_persons: bool,
    /// Rows with the argument present; Σx; Σx²; least and largest x; largest |x|.
    pub n: Option<String>,
    pub s: Option<String>,
    pub q: Option<String>,
    pub min: Option<String>,
    pub max: Option<String>,
    pub scale: Option<String>,
    /// Persons behind the value (packed persons and cell key; the least non-zero candidate counts).
    pub persons: Vec<String>,
    /// Persons with a non-zero argument (means and spreads: Σx's own persons).
    pub nonzero: Vec<String>,
    /// Persons outside a conditional count or an indicator sum.
    pub complement: Vec<String>,
    /// (largest persons' contribution, total), for magnitudes.
    pub dominance_names: Option<(String, String)>,
}

/// One statistic of the output aggregate.
#[derive(Debug, Clone)]
pub struct StatLayout {
    pub kind: Kind,
    pub indicator: bool,
    pub additive: Option<Additive>,
    pub parts: Parts,
    /// Its position among the aggregate's statistics.
    pub index: usize,
    /// What it sums, for the magnitude noise (see `perturb.rs`).
    pub stream: u32,
}

/// What a column of the upper query is computed from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Key,
    /// These statistics (indices into [`Layout::stats`]).
    Agg(BTreeSet<usize>),
    Constant,
}

/// How an aggregate answer is released.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The output aggregate's schema as the query wrote it (what the upper query reads).
    pub aggregate: DFSchemaRef,
    /// Grouping columns first in both schemas; then `__grouping_id` for grouping sets.
    pub groups: usize,
    pub grouping_set: bool,
    pub stats: Vec<StatLayout>,
    /// Persons behind each row's group (packed candidates).
    pub row: Vec<String>,
    /// Least and largest record key of the group's persons (differencing flags).
    pub fingerprint: Option<(String, String)>,
    /// For grouping sets: per grouping key, `count(key)` (a null key whose
    /// count is not zero was aggregated away: the row is a margin).
    pub margin: Option<Vec<String>>,
    /// The query above the aggregate, over a placeholder of the released cells.
    pub upper: LogicalPlan,
    /// The row-number column as the upper query's output names it.
    pub upper_row: Column,
    /// The answer's columns (the upper query's, without the row number).
    pub visible: usize,
    /// The upper query keeps some groups only: groups merged for their keys
    /// are not announced by a `*` row.
    pub subset: bool,
    pub origins: Vec<Origin>,
    /// Hidden columns that are fields of a `samkor_companions` struct column.
    pub(crate) packed: packed::PackedFields,
}

impl Layout {
    #[allow(clippy::too_many_arguments)]
    fn new(
        aggregate: DFSchemaRef,
        groups: usize,
        grouping_set: bool,
        stats: Vec<StatLayout>,
        row: Vec<String>,
        fingerprint: Option<(String, String)>,
        margin: Option<Vec<String>>,
    ) -> Layout {
        Layout {
            aggregate,
            groups,
            grouping_set,
            stats,
            row,
            fingerprint,
            margin,
            upper: LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(datafusion::common::DFSchema::empty()),
            }),
            upper_row: Column::from_name(ROW_COLUMN),
            visible: 0,
            subset: false,
            origins: vec![],
            packed: Default::default(),
        }
    }
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

/// Classifies the answer of `plan` and rewrites it so that its disclosure can be controlled.
pub fn control(plan: LogicalPlan, cx: &Context<'_>) -> Result<Controlled> {
    if let LogicalPlan::Explain(explain) = &plan {
        // EXPLAIN shows plans, not data: check and rewrite the plan it describes.
        let inner = control(explain.plan.as_ref().clone(), cx)?;
        let mut explain = explain.clone();
        explain.plan = Arc::new(inner.plan);
        return Ok(Controlled { plan: LogicalPlan::Explain(explain), mode: Mode::NoData });
    }
    classify::refuse_untraceable_expressions(&plan)?;
    let rw = Rewriter { cx, next: AtomicUsize::new(0) };
    rw.check_generalisations(&plan)?;
    match rw.shape(&plan)? {
        classify::Shape::NoData => Ok(Controlled { plan, mode: Mode::NoData }),
        classify::Shape::Rows => {
            rw.check_microdata(&plan)?;
            Ok(Controlled { plan, mode: Mode::Microdata })
        }
        classify::Shape::Aggregate => {
            let (plan, layout) = rw.split(plan)?;
            Ok(Controlled { plan, mode: Mode::Aggregate(Box::new(layout)) })
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

    fn is_person(&self, source: &lineage::Source) -> bool {
        self.facts(&source.0, &source.1).person
    }
}

#[cfg(test)]
mod tests;
