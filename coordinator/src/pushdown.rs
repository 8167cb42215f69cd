//! Which part of a query each node computes.
//!
//! A logical optimizer rule, run after DataFusion's own rules, that finds the
//! largest sub-plans reading from one register only and hands each to that
//! register's `datafusion-federation` SQL provider (which unparses it to SQL
//! for the node). Its effect is visible in `EXPLAIN` as `VirtualExecutionPlan
//! name=<register> … base_sql=…`.
//!
//! Unlike `datafusion-federation`'s generic rule it pushes only plan shapes
//! whose SQL round trip is known to keep their meaning (the correctness
//! matrix in `tests/matrix/` checks this): scans, filters, projections,
//! aggregates, windows, sorts, limits and table aliases. Joins (null-aware
//! anti joins and null-equal keys lose their semantics when unparsed, self
//! joins lose their qualifiers), set operations, ordered aggregates
//! (`string_agg(… ORDER BY …)`, `first_value(… ORDER BY …)`) and plans with
//! subquery expressions run at the coordinator instead, on the pushed-down
//! inputs.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, SubqueryAlias};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion_federation::{FederationProviderRef, get_table_source};

/// Where a sub-plan's data comes from.
enum Source {
    /// No table at all (constants, `VALUES`).
    Nothing,
    /// Only tables of one register.
    One(FederationProviderRef),
    /// Several registers, local tables, or a part already federated.
    Mixed,
}

fn same(a: &FederationProviderRef, b: &FederationProviderRef) -> bool {
    a.name() == b.name() && a.compute_context() == b.compute_context()
}

/// The rule. Add it last to the optimizer's rules.
#[derive(Debug, Default)]
pub struct PushdownRule;

impl OptimizerRule for PushdownRule {
    fn name(&self) -> &str {
        "samkor_pushdown"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        if contains_federated(&plan) {
            // Already done in an earlier optimizer pass.
            return Ok(Transformed::no(plan));
        }
        self.federate_root(plan, config).map(Transformed::yes)
    }
}

/// Whether part of `plan` was already handed to a node (an earlier optimizer pass).
pub(crate) fn contains_federated(plan: &LogicalPlan) -> bool {
    plan.exists(|p| Ok(matches!(p, LogicalPlan::Extension(e) if e.node.name() == "Federated"))).unwrap_or(false)
}

impl PushdownRule {
    fn federate_root(&self, plan: LogicalPlan, config: &dyn OptimizerConfig) -> Result<LogicalPlan> {
        let (plan, source) = self.visit(plan, config)?;
        match source {
            Source::One(provider) => federate(&provider, plan, config, false),
            Source::Nothing | Source::Mixed => Ok(plan),
        }
    }

    fn visit(&self, plan: LogicalPlan, config: &dyn OptimizerConfig) -> Result<(LogicalPlan, Source)> {
        match &plan {
            LogicalPlan::TableScan(scan) => {
                return Ok(match get_table_source(&scan.source)? {
                    Some(source) => {
                        let provider = source.federation_provider();
                        (plan, Source::One(provider))
                    }
                    None => (plan, Source::Mixed),
                });
            }
            LogicalPlan::Extension(_) => return Ok((plan, Source::Mixed)),
            _ => {}
        }
        let inputs: Vec<LogicalPlan> = plan.inputs().into_iter().cloned().collect();
        let visited = inputs.into_iter().map(|i| self.visit(i, config)).collect::<Result<Vec<_>>>()?;
        let mut combined = Source::Nothing;
        for (_, s) in &visited {
            combined = match (combined, s) {
                (Source::Mixed, _) | (_, Source::Mixed) => Source::Mixed,
                (Source::Nothing, Source::Nothing) => Source::Nothing,
                (Source::Nothing, Source::One(p)) => Source::One(p.clone()),
                (Source::One(p), Source::Nothing) => Source::One(p),
                (Source::One(a), Source::One(b)) => {
                    if same(&a, b) {
                        Source::One(a)
                    } else {
                        Source::Mixed
                    }
                }
            };
        }
        if let Source::One(provider) = &combined
            && pushable(&plan)?
        {
            // Keep climbing, on the inputs as visited (an alias below may
            // have been given its projection).
            let inputs: Vec<LogicalPlan> = visited.into_iter().map(|(input, _)| input).collect();
            let plan = if inputs.is_empty() { plan } else { plan.with_new_exprs(plan.expressions(), inputs)? };
            let plan = match plan {
                // A filter directly below an alias is unparsed with the
                // base table's qualifier; a projection in between makes
                // the alias a derived table.
                LogicalPlan::SubqueryAlias(a) if !matches!(a.input.as_ref(), LogicalPlan::Projection(_)) => {
                    let input = wrap_projection(Arc::unwrap_or_clone(a.input))?;
                    LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(input), a.alias)?)
                }
                other => other,
            };
            return Ok((plan, Source::One(provider.clone())));
        }
        // Cut here: every single-register input becomes a node sub-query.
        let new_inputs = visited
            .into_iter()
            .map(|(input, source)| match source {
                Source::One(provider) => federate(&provider, input, config, true),
                Source::Nothing | Source::Mixed => Ok(input),
            })
            .collect::<Result<Vec<_>>>()?;
        let plan = plan.with_new_exprs(plan.expressions(), new_inputs)?;
        // Subqueries left in expressions are planned the same way.
        let plan = plan
            .map_subqueries(|sub| {
                if contains_federated(&sub) {
                    Ok(Transformed::no(sub))
                } else {
                    self.federate_root(sub, config).map(Transformed::yes)
                }
            })?
            .data;
        Ok((plan, Source::Mixed))
    }
}

/// Hands a single-register sub-plan to its register's provider.
fn federate(
    provider: &FederationProviderRef,
    plan: LogicalPlan,
    config: &dyn OptimizerConfig,
    wrap: bool,
) -> Result<LogicalPlan> {
    let Some(optimizer) = provider.optimizer() else { return Ok(plan) };
    // A bare aggregate is unparsed with its aggregates before its keys: an
    // explicit projection keeps the column order the coordinator expects.
    let plan = if wrap || matches!(plan, LogicalPlan::Aggregate(_)) { wrap_projection(plan)? } else { plan };
    optimizer.optimize(plan, config, |_, _| {})
}

/// Puts an explicit projection of all columns on top of `plan`.
fn wrap_projection(plan: LogicalPlan) -> Result<LogicalPlan> {
    if matches!(plan, LogicalPlan::Projection(_)) {
        return Ok(plan);
    }
    let exprs = plan.schema().columns().into_iter().map(Expr::Column).collect();
    Ok(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?))
}

/// Whether a node's meaning survives the SQL round trip to a node.
fn pushable(plan: &LogicalPlan) -> Result<bool> {
    let shape_ok = matches!(
        plan,
        LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(_))
    );
    if !shape_ok {
        return Ok(false);
    }
    let mut ok = true;
    for e in plan.expressions() {
        e.apply(|e| {
            let bad = match e {
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) | Expr::OuterReferenceColumn(..) => {
                    true
                }
                Expr::AggregateFunction(AggregateFunction { params, .. }) => {
                    !params.order_by.is_empty() || params.null_treatment.is_some()
                }
                _ => false,
            };
            if bad {
                ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    Ok(ok)
}
