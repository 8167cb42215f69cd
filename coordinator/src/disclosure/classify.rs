//! What an answer is: no data, rows of individuals, or one aggregate table;
//! and the checks that refuse a query before anything is rewritten.

use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use samkor_policies::approval::OutputKind;

use super::Rewriter;
use super::lineage::{lineage, pass_through, reads_data};
use super::rules::Rule;

pub(super) enum Shape {
    NoData,
    Rows,
    Aggregate,
}

/// Refuses scalar subqueries left after decorrelation (their value cannot be
/// traced to persons) and any use of disclosure control's own functions.
pub(super) fn refuse_untraceable_expressions(plan: &LogicalPlan) -> Result<()> {
    let mut found: Option<Result<()>> = None;
    plan.apply_with_subqueries(|p| {
        for e in p.expressions() {
            e.apply(|e| {
                let outcome = match e {
                    Expr::ScalarSubquery(_) => Some(Err(Rule::Subquery.refuse(
                        "a scalar subquery's value cannot be traced to the persons behind it; write it as a join",
                    ))),
                    Expr::ScalarFunction(f) if samkor_functions::INTERNAL_FUNCTIONS.contains(&f.name()) => {
                        Some(Err(internal(f.name())))
                    }
                    Expr::AggregateFunction(f) if samkor_functions::INTERNAL_FUNCTIONS.contains(&f.func.name()) => {
                        Some(Err(internal(f.func.name())))
                    }
                    _ => None,
                };
                if outcome.is_some() {
                    found = outcome;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    found.unwrap_or(Ok(()))
}

fn internal(name: &str) -> datafusion::common::DataFusionError {
    Rule::InternalFunction.refuse(format!(
        "{name}() belongs to disclosure control, which adds it to plans itself; remove it from the query"
    ))
}

/// The narrowest age band a query may ask for, in years.
pub(super) const MIN_AGE_BAND_YEARS: i64 = 5;

impl Rewriter<'_> {
    /// The generalisations of a birth date (`samkor_functions::GENERALISING_FUNCTIONS`)
    /// are non-identifying only with snapped arguments: an age band's width a
    /// constant of at least [`MIN_AGE_BAND_YEARS`] years, and the date an age is
    /// taken at either a column that identifies nobody (an event's date) or a
    /// constant 1 January (any other constant day would split birth cohorts
    /// at a day of the attacker's choosing).
    pub(super) fn check_generalisations(&self, plan: &LogicalPlan) -> Result<()> {
        let mut found: Result<()> = Ok(());
        plan.apply_with_subqueries(|p| {
            for e in p.expressions() {
                e.apply(|e| {
                    if let Expr::ScalarFunction(f) = e
                        && samkor_functions::GENERALISING_FUNCTIONS.contains(&f.name())
                        && let Some(input) = p.inputs().first()
                        && let Err(refusal) = self.check_generalisation(f.name(), &f.args, input)
                    {
                        found = Err(refusal);
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
            }
            Ok(if found.is_err() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
        })?;
        found
    }

    fn check_generalisation(&self, name: &str, args: &[Expr], input: &LogicalPlan) -> Result<()> {
        use datafusion::common::ScalarValue;
        if name == samkor_functions::AGE_BAND_FN {
            let width = match args.get(2) {
                Some(Expr::Literal(v, _)) => v.cast_to(&datafusion::arrow::datatypes::DataType::Int64).ok(),
                _ => None,
            };
            match width {
                Some(ScalarValue::Int64(Some(w))) if w >= MIN_AGE_BAND_YEARS => {}
                _ => {
                    return Err(Rule::Generalisation.refuse(format!(
                        "the width of age_band must be a constant number of years, at least {MIN_AGE_BAND_YEARS} (e.g. age_band(birth_date, op_date, 5)); use age_years for whole years"
                    )));
                }
            }
        }
        let Some(at) = args
            .get(1)
            .filter(|_| name != samkor_functions::BIRTH_YEAR_FN && name != samkor_functions::BIRTH_DECADE_FN)
        else {
            return Ok(());
        };
        if let Expr::Literal(v, _) = at {
            let january_first = match v.cast_to(&datafusion::arrow::datatypes::DataType::Date32) {
                Ok(ScalarValue::Date32(Some(d))) => datafusion::arrow::temporal_conversions::date32_to_datetime(d)
                    .is_some_and(|t| t.format("%m-%d").to_string() == "01-01"),
                _ => false,
            };
            if january_first {
                return Ok(());
            }
            return Err(Rule::Generalisation.refuse(format!(
                "{name} at a constant date must be at a 1 January (an age on another day splits birth cohorts at that day); use the date of an event or DATE 'YYYY-01-01'"
            )));
        }
        for (table, column) in super::lineage::expr_lineage(input, at) {
            let facts = self.facts(&table, &column);
            if facts.identifying || facts.person {
                return Err(Rule::Generalisation.refuse(format!(
                    "{name} is taken at a date computed from {table}.{column}, which identifies persons; take it at the date of an event or a 1 January"
                )));
            }
        }
        Ok(())
    }

    /// Whether an aggregate's grouping keeps one row per person.
    pub(super) fn grouped_by_person(&self, a: &Aggregate) -> Result<bool> {
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

    pub(super) fn shape(&self, plan: &LogicalPlan) -> Result<Shape> {
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
                return Err(Rule::IdentifyingGroup.refuse(
                    "grouping by the person pseudonym gives one row per person; aggregate over persons instead (count(DISTINCT person), or group by a characteristic)",
                ));
            }
            return Ok(Shape::Aggregate);
        }
        let tables = node.inputs().iter().filter(|i| self.reaches_aggregate(i)).count();
        if tables > 0 {
            if matches!(node, LogicalPlan::Window(_)) {
                return Err(Rule::WindowOverAggregate.refuse(
                    "window functions over aggregated cells (running totals, shares of a total) are not released; compute them from the released cells",
                ));
            }
            if matches!(node, LogicalPlan::Union(_) | LogicalPlan::Join(_)) && tables == node.inputs().len() {
                return Err(Rule::OneTable.refuse(
                    "an answer may hold one aggregate table: cells of several tables in one answer can be subtracted from each other; run each table as its own query (use GROUP BY ROLLUP/CUBE for margins)",
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
    pub(super) fn check_microdata(&self, plan: &LogicalPlan) -> Result<()> {
        let project = &self.cx.approval.project;
        if !self.cx.approval.allows(OutputKind::PseudonymisedMicrodata) {
            return Err(Rule::OutputKind.refuse(format!(
                "project {project} may release aggregates only, and this query returns rows of individual records; aggregate them (GROUP BY … with counts or statistics)"
            )));
        }
        for (i, field) in plan.schema().fields().iter().enumerate() {
            for (table, column) in lineage(plan, i) {
                let facts = self.facts(&table, &column);
                // The pseudonym is the one person column that may leave.
                if facts.identifying && !facts.person {
                    return Err(Rule::IdentifyingColumn.refuse(format!(
                        "output column {} is computed from {table}.{column}, which identifies persons; release a generalised column instead (e.g. the birth year)",
                        field.name()
                    )));
                }
            }
        }
        Ok(())
    }
}
