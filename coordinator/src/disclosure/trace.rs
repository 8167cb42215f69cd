//! Row level: every row below the output aggregate keeps the persons behind
//! it, as their record keys (`samkor_record_key(person)`, computed at the
//! node right above the scan), carried up through projections, filters,
//! joins, unions, windows and inner aggregates.

use std::sync::Arc;

use datafusion::common::{Column, Result, ScalarValue, TableReference};
use datafusion::functions_aggregate::min_max::max_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, JoinType, LogicalPlan, LogicalPlanBuilder, Projection, SubqueryAlias, TableScan, TableScanBuilder,
    Union, lit, when,
};

use super::rules::Rule;
use super::{PREFIX, Rewriter, col_expr};

/// Persons available in a rewritten row-level plan.
#[derive(Debug, Clone, Default)]
pub(super) struct Persons {
    /// Record-key columns, each with the table it comes from and whether it
    /// is null-extended by an outer join.
    pub(super) cols: Vec<PersonCol>,
    /// Columns holding a packed person count (`samkor_persons`) of the
    /// persons behind a row that summarises several (an inner aggregate, a
    /// semi join's other side): a lower bound.
    pub(super) counts: Vec<Column>,
}

#[derive(Debug, Clone)]
pub(super) struct PersonCol {
    pub(super) col: Column,
    pub(super) table: String,
    pub(super) optional: bool,
}

impl Persons {
    fn requalify(self, alias: &TableReference) -> Persons {
        let q = |c: Column| Column::new(Some(alias.clone()), c.name);
        Persons {
            cols: self.cols.into_iter().map(|p| PersonCol { col: q(p.col), ..p }).collect(),
            counts: self.counts.into_iter().map(q).collect(),
        }
    }

    /// The record-key column that stands for the persons of a row (not
    /// null-extended, where there is one).
    pub(super) fn primary(&self) -> Option<&PersonCol> {
        self.cols.iter().find(|p| !p.optional).or(self.cols.first())
    }
}

fn aggregate(func: Arc<datafusion::logical_expr::AggregateUDF>, arg: Expr) -> Expr {
    Expr::AggregateFunction(AggregateFunction::new_udf(func, vec![arg], false, None, vec![], None))
}

impl Rewriter<'_> {
    pub(super) fn expose(&self, plan: LogicalPlan) -> Result<(LogicalPlan, Persons)> {
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
                let filtering_side = match join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => Some((right.clone(), rp.clone())),
                    JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => Some((left.clone(), lp.clone())),
                    _ => None,
                };
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
                if let Some(o) = other {
                    persons.cols.extend(o.cols);
                    persons.counts.extend(o.counts);
                }
                let joined = plan.with_new_exprs(plan.expressions(), vec![left, right])?;
                match filtering_side {
                    // A semi or anti join keeps rows depending on the other side: the
                    // persons of that side bound what the answer can tell of them
                    // (`WHERE EXISTS (… one person …)` must not pass as a large count).
                    Some((side, side_persons)) => self.bound_by(joined, side, &side_persons, persons),
                    None => Ok((joined, persons)),
                }
            }
            LogicalPlan::Aggregate(a) => self.expose_aggregate(a),
            LogicalPlan::Union(u) => self.expose_union(u),
            LogicalPlan::Distinct(_) => {
                Err(Rule::Untraceable
                    .refuse("DISTINCT ON cannot be traced to the persons behind each row; use GROUP BY"))
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Ok((plan, Persons::default())),
            other => Err(Rule::Untraceable.refuse(format!(
                "the persons behind this query's cells cannot be traced through a {} step; simplify the query",
                other.display().to_string().split(':').next().unwrap_or("plan")
            ))),
        }
    }

    /// An inner aggregate: per person (its rows keep their person), or over
    /// persons (its rows carry a bound of the persons behind them).
    fn expose_aggregate(&self, a: Aggregate) -> Result<(LogicalPlan, Persons)> {
        let per_person = self.grouped_by_person(&a)?;
        if !per_person {
            // An inner aggregate's values reach the answer through filters and
            // joins: the same functions are refused as at the output.
            for e in &a.aggr_expr {
                self.statistic(e, &a.input)?;
            }
        }
        let (input, persons) = self.expose(Arc::unwrap_or_clone(a.input))?;
        let mut aggr = a.aggr_expr;
        let mut out = Persons::default();
        if per_person {
            // One row per person: its record key is the same on all its rows.
            for pc in &persons.cols {
                let name = self.name("rk");
                aggr.push(aggregate(max_udaf(), col_expr(&pc.col)).alias(&name));
                out.cols.push(PersonCol { col: Column::from_name(name), ..pc.clone() });
            }
        } else {
            for bound in self.persons_expr(&persons, None, &[]) {
                let name = self.name("n");
                aggr.push(bound.alias(&name));
                out.counts.push(Column::from_name(name));
            }
        }
        let plan = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), a.group_expr, aggr)?);
        Ok((plan, out))
    }

    /// A scan of a table with a person column: the node computes each row's
    /// record key right above the scan, from the project pseudonym.
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
        let person_col = Column::new(Some(scan.table_name.clone()), &name);
        let scan = match &scan.projection {
            Some(p) if !p.contains(&person) => {
                let mut p = p.clone();
                p.push(person);
                TableScanBuilder::new(scan.table_name, scan.source)
                    .with_projection(Some(p))
                    .with_filters(scan.filters)
                    .with_fetch(scan.fetch)
                    .build()?
            }
            _ => scan,
        };
        let scan = LogicalPlan::TableScan(scan);
        let rk = self.name("rk");
        let mut exprs: Vec<Expr> = scan.schema().columns().into_iter().map(Expr::Column).collect();
        let record_key = samkor_functions::record_key_udf(None).call(vec![col_expr(&person_col)]);
        exprs.push(record_key.alias(&rk));
        let plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(scan))?);
        let persons =
            Persons { cols: vec![PersonCol { col: Column::from_name(rk), table, optional: false }], counts: vec![] };
        Ok((plan, persons))
    }

    /// Adds the distinct persons of `side` (already exposed: it decides which
    /// rows of `plan` are kept) as a bound on every row of `plan`.
    fn bound_by(
        &self,
        plan: LogicalPlan,
        side: LogicalPlan,
        side_persons: &Persons,
        mut persons: Persons,
    ) -> Result<(LogicalPlan, Persons)> {
        let bounds = self.persons_expr(side_persons, None, &[]);
        if bounds.is_empty() {
            return Ok((plan, persons));
        }
        let names: Vec<String> = bounds.iter().map(|_| self.name("s")).collect();
        let aggr = bounds.into_iter().zip(&names).map(|(b, n)| b.alias(n)).collect();
        let side = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(side), vec![], aggr)?);
        let alias = self.name("side");
        let side = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(side), alias.as_str())?);
        let joined = LogicalPlanBuilder::from(plan).cross_join(side)?.build()?;
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
        let null = || lit(ScalarValue::Int64(None));
        for (plan, persons) in exposed {
            let mut exprs: Vec<Expr> =
                (0..visible).map(|i| Expr::Column(Column::from(plan.schema().qualified_field(i)))).collect();
            for (j, table) in tables.iter_mut().enumerate() {
                let e = match persons.cols.get(j).or(persons.cols.last()) {
                    Some(pc) => {
                        table.clone_from(&pc.table);
                        col_expr(&pc.col)
                    }
                    None => null(),
                };
                exprs.push(e.alias(format!("{PREFIX}up{j}")));
            }
            for j in 0..nc {
                let e = persons.counts.get(j).or(persons.counts.last()).map(col_expr).unwrap_or_else(null);
                exprs.push(e.alias(format!("{PREFIX}uc{j}")));
            }
            inputs.push(Arc::new(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(plan))?)));
        }
        let union = LogicalPlan::Union(Union::try_new_with_loose_types(inputs)?);
        let field = |i: usize| Column::from(union.schema().qualified_field(i));
        let persons = Persons {
            cols: (0..np)
                .map(|j| PersonCol { col: field(visible + j), table: tables[j].clone(), optional: true })
                .collect(),
            counts: (0..nc).map(|j| field(visible + np + j)).collect(),
        };
        Ok((union, persons))
    }

    /// The persons behind the rows of a group that satisfy `cond` (all rows
    /// when `None`), each candidate a packed `samkor_persons` value (persons
    /// and cell key): one per record-key column and the largest
    /// inner-aggregate bound per bound column; the least non-zero of them is
    /// the cell's persons (taken at release). Record-key columns null-extended
    /// by an outer join count only when the statistic reads their table (`tables`).
    pub(super) fn persons_expr(&self, persons: &Persons, cond: Option<&Expr>, tables: &[String]) -> Vec<Expr> {
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
            .map(|p| aggregate(Arc::new(samkor_functions::persons_udaf()), guarded(col_expr(&p.col))))
            .collect();
        parts.extend(persons.counts.iter().map(|c| aggregate(max_udaf(), guarded(col_expr(c)))));
        parts
    }
}
