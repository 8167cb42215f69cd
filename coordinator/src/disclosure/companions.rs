//! The output: the one aggregate of the answer gets its hidden parts and
//! companions; the query above it (projections, HAVING, ORDER BY, LIMIT) is
//! kept aside and run again at release over the released cells, so that every
//! derived number is computed from released (perturbed, suppressed) values.
//!
//! ```text
//!   SELECT 100.0 * sum(r) / count(*) AS pct … GROUP BY h HAVING count(*) > 20
//!        upper:  Projection(pct) ─ Filter(count(*) > 20) ─ [released cells]
//!        lower:  Aggregate(h; count(*), sum(r), persons, complements, keys, …)  → nodes
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, Result, TableReference};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{
    Aggregate, AggregateUDF, EmptyRelation, Expr, Filter, Limit, LogicalPlan, Projection, Repartition, Sort,
    SubqueryAlias, cast, lit,
};

use samkor_functions::{MOMENT_FIELDS, moments_udaf};

use super::lineage::{expr_lineage, is_grouping_set};
use super::packed::{PackedFields, Packer};
use super::rules::Rule;
use super::statistics::{Kind, Stat, filtered};
use super::{Layout, Origin, Parts, ROW_COLUMN, Rewriter, StatLayout, col_expr};

fn agg(func: Arc<AggregateUDF>, arg: Expr, distinct: bool) -> Expr {
    Expr::AggregateFunction(AggregateFunction::new_udf(func, vec![arg], distinct, None, vec![], None))
}

fn float(e: Expr) -> Expr {
    cast(e, DataType::Float64)
}

/// The upper part of the query while it is walked down to the aggregate.
struct Upper {
    plan: LogicalPlan,
    /// Per output column, what it is computed from.
    origins: Vec<Origin>,
    /// The hidden row number of the released cells, as this level names it.
    row: Column,
    /// The answer has grouping-set margins (they may not be filtered or cut).
    grouping_sets: bool,
    /// The upper query keeps some groups only (HAVING, WHERE, LIMIT).
    subset: bool,
}

fn margins_cut() -> datafusion::common::DataFusionError {
    Rule::MarginsFiltered.refuse(
        "HAVING, LIMIT or a filter over ROLLUP/CUBE/GROUPING SETS would let the margins give back the rows removed; filter before grouping instead",
    )
}

/// A column computed from several columns: what it is computed from.
fn derive(origins: &[Origin], refs: &[usize]) -> Origin {
    let mut aggs = BTreeSet::new();
    let mut keys = 0;
    for &i in refs {
        match &origins[i] {
            Origin::Key => keys += 1,
            Origin::Constant => {}
            Origin::Agg(a) => aggs.extend(a.iter().copied()),
        }
    }
    if !aggs.is_empty() {
        Origin::Agg(aggs)
    } else if keys > 0 {
        Origin::Key
    } else {
        Origin::Constant
    }
}

impl Rewriter<'_> {
    /// Splits the plan at its one aggregate: returns the executed (lower) plan and its layout.
    pub(super) fn split(&self, plan: LogicalPlan) -> Result<(LogicalPlan, Layout)> {
        let mut lower = None;
        let upper = self.upper(plan, &mut lower)?;
        let (plan, mut layout) = lower.expect("the walk ends at the aggregate");
        layout.visible = upper.origins.len() - 1;
        layout.origins = upper.origins[..layout.visible].to_vec();
        layout.upper = upper.plan;
        layout.upper_row = upper.row;
        layout.subset = upper.subset;
        if upper.grouping_sets && layout.margin.is_none() {
            layout.margin = Some(vec![]);
        }
        Ok((plan, layout))
    }

    fn upper(&self, plan: LogicalPlan, lower: &mut Option<(LogicalPlan, Layout)>) -> Result<Upper> {
        match plan {
            LogicalPlan::Aggregate(a) => {
                let schema = a.schema.clone();
                let groups = grouping_set_to_exprlist(&a.group_expr)?.len();
                let gid = usize::from(is_grouping_set(&a));
                let grouping_sets = gid == 1;
                let (plan, layout) = self.output_aggregate(a)?;
                *lower = Some((plan, layout));
                let mut fields: Vec<(Option<TableReference>, Arc<datafusion::arrow::datatypes::Field>)> = schema
                    .iter()
                    .map(|(q, f)| (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(true))))
                    .collect();
                fields.push((
                    None,
                    Arc::new(datafusion::arrow::datatypes::Field::new(ROW_COLUMN, DataType::Int64, false)),
                ));
                let placeholder = DFSchema::new_with_metadata(fields, HashMap::new())?;
                let plan =
                    LogicalPlan::EmptyRelation(EmptyRelation { produce_one_row: false, schema: Arc::new(placeholder) });
                let mut origins: Vec<Origin> = (0..groups + gid).map(|_| Origin::Key).collect();
                origins.extend((0..schema.fields().len() - groups - gid).map(|i| Origin::Agg(BTreeSet::from([i]))));
                origins.push(Origin::Constant);
                Ok(Upper { plan, origins, row: Column::from_name(ROW_COLUMN), grouping_sets, subset: false })
            }
            LogicalPlan::Projection(p) => {
                let input_schema = p.input.schema().clone();
                let below = self.upper(Arc::unwrap_or_clone(p.input), lower)?;
                let mut origins = Vec::new();
                for e in &p.expr {
                    let refs: Vec<usize> =
                        e.column_refs().into_iter().filter_map(|c| input_schema.index_of_column(c).ok()).collect();
                    let plain = matches!(e.clone().unalias_nested().data, Expr::Column(_));
                    origins.push(if plain && refs.len() == 1 {
                        below.origins[refs[0]].clone()
                    } else {
                        derive(&below.origins, &refs)
                    });
                }
                let mut exprs = p.expr;
                exprs.push(col_expr(&below.row));
                origins.push(Origin::Constant);
                let plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(below.plan))?);
                Ok(Upper { plan, origins, ..below })
            }
            LogicalPlan::Filter(f) => {
                let below = self.upper(Arc::unwrap_or_clone(f.input), lower)?;
                if below.grouping_sets {
                    return Err(margins_cut());
                }
                let plan = LogicalPlan::Filter(Filter::try_new(f.predicate, Arc::new(below.plan))?);
                Ok(Upper { plan, subset: true, ..below })
            }
            LogicalPlan::Sort(s) => {
                let below = self.upper(Arc::unwrap_or_clone(s.input), lower)?;
                if below.grouping_sets && s.fetch.is_some() {
                    return Err(margins_cut());
                }
                // Withheld cells are null: they sort after every released
                // one, never by their true values.
                let schema = below.plan.schema().clone();
                let expr = s
                    .expr
                    .into_iter()
                    .map(|mut e| {
                        let refs: Vec<usize> =
                            e.expr.column_refs().into_iter().filter_map(|c| schema.index_of_column(c).ok()).collect();
                        if matches!(derive(&below.origins, &refs), Origin::Agg(_)) {
                            e.nulls_first = false;
                        }
                        e
                    })
                    .collect();
                let subset = below.subset || s.fetch.is_some();
                let plan = LogicalPlan::Sort(Sort { expr, input: Arc::new(below.plan), fetch: s.fetch });
                Ok(Upper { plan, subset, ..below })
            }
            LogicalPlan::Limit(l) => {
                let below = self.upper(Arc::unwrap_or_clone(l.input), lower)?;
                if below.grouping_sets {
                    return Err(margins_cut());
                }
                let plan = LogicalPlan::Limit(Limit { skip: l.skip, fetch: l.fetch, input: Arc::new(below.plan) });
                Ok(Upper { plan, subset: true, ..below })
            }
            LogicalPlan::SubqueryAlias(a) => {
                let below = self.upper(Arc::unwrap_or_clone(a.input), lower)?;
                let row = Column::new(Some(a.alias.clone()), below.row.name.clone());
                let plan = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(below.plan), a.alias)?);
                Ok(Upper { plan, row, ..below })
            }
            LogicalPlan::Repartition(r) => {
                let below = self.upper(Arc::unwrap_or_clone(r.input), lower)?;
                let plan = LogicalPlan::Repartition(Repartition {
                    input: Arc::new(below.plan),
                    partitioning_scheme: r.partitioning_scheme,
                });
                Ok(Upper { plan, ..below })
            }
            other => {
                Err(Rule::Untraceable.refuse(format!("unexpected plan step {} above the aggregate", other.display())))
            }
        }
    }

    /// The output aggregate, rewritten to compute every statistic's parts and
    /// companions instead of the statistics themselves.
    fn output_aggregate(&self, a: Aggregate) -> Result<(LogicalPlan, Layout)> {
        let groups: Vec<Expr> = grouping_set_to_exprlist(&a.group_expr)?.into_iter().cloned().collect();
        for g in &groups {
            for (table, column) in expr_lineage(&a.input, g) {
                let facts = self.facts(&table, &column);
                if facts.person || facts.identifying {
                    return Err(Rule::IdentifyingGroup.refuse(format!(
                        "grouping by {table}.{column} identifies persons; group by a coarser characteristic (e.g. birth_year, region)"
                    )));
                }
            }
        }
        let stats: Vec<Stat> = a.aggr_expr.iter().map(|e| self.statistic(e, &a.input)).collect::<Result<_>>()?;
        let own_persons: Vec<bool> =
            stats.iter().zip(&a.aggr_expr).map(|(s, e)| counts_own_persons(s, e, &a.input)).collect();
        let grouping_set = is_grouping_set(&a);
        let aggregate_schema = a.schema.clone();
        let (input, persons) = self.expose(Arc::unwrap_or_clone(a.input))?;
        let n = i64::from(self.cx.approval.disclosure.dominance_n.max(1));
        let mut hidden = Hidden {
            rw: self,
            aggr: Vec::new(),
            cache: HashMap::new(),
            pairs: HashMap::new(),
            packer: Packer::new(n),
            moments: HashMap::new(),
            moment_fields: PackedFields::new(),
        };
        let row = hidden.all(self.persons_expr(&persons, None, &[]), "g");
        let fingerprint = persons.primary().map(|p| hidden.extremes(&col_expr(&p.col)));
        let k = i64::from(self.cx.approval.disclosure.min_cell_persons.max(1));
        let mut layouts = Vec::new();
        for (i, (stat, original)) in stats.iter().zip(&a.aggr_expr).enumerate() {
            let mut parts = Parts::default();
            let x = stat.x.clone().map(|x| filtered(stat.filter.as_ref(), x));
            let tables = &stat.tables;
            match stat.kind {
                Kind::Count | Kind::Extreme | Kind::Exact => {
                    // `count(DISTINCT person)` over the one record key: its
                    // persons under `person IS NOT NULL` are the value.
                    parts.value_is_persons = own_persons[i]
                        && persons.counts.is_empty()
                        && matches!(persons.cols.as_slice(), [p] if stat.tables == [p.table.clone()]);
                    if !parts.value_is_persons {
                        parts.value = Some(hidden.one(original.clone().unalias_nested().data, "v"));
                    }
                    parts.persons = hidden.all(self.persons_expr(&persons, stat.condition.as_ref(), tables), "a");
                }
                Kind::Quantile { p } => {
                    let x = x.clone().expect("a quantile has an argument");
                    let Some(rk) = persons.primary() else {
                        return Err(Rule::Untraceable.refuse("a quantile over pre-aggregated rows cannot be traced to persons; compute it over the rows of individuals"));
                    };
                    let q = samkor_functions::quantile_udaf().call(vec![float(x), col_expr(&rk.col), lit(p), lit(k)]);
                    parts.value = Some(hidden.one(q, "q"));
                    parts.persons = hidden.all(self.persons_expr(&persons, stat.present.as_ref(), tables), "a");
                }
                Kind::Sum | Kind::Mean | Kind::Spread { .. } => {
                    let x = x.clone().expect("a sum has an argument");
                    if stat.kind == Kind::Sum {
                        parts.value = Some(hidden.one(original.clone().unalias_nested().data, "v"));
                        parts.persons = hidden.all(self.persons_expr(&persons, stat.condition.as_ref(), tables), "a");
                    } else {
                        parts.persons = hidden.all(self.persons_expr(&persons, stat.present.as_ref(), tables), "a");
                        let nonzero =
                            stat.present.clone().map(|p| p.and(stat.x.clone().expect("argument").not_eq(lit(0i64))));
                        parts.nonzero = hidden.all(self.persons_expr(&persons, nonzero.as_ref(), tables), "z");
                    }
                    if stat.distinct {
                        parts.n = Some(hidden.one(agg(count_udaf(), x.clone(), true), "n"));
                        parts.s = Some(hidden.one(agg(sum_udaf(), float(x.clone()), true), "s"));
                        parts.q = Some(hidden.one(agg(sum_udaf(), float(x.clone()) * float(x.clone()), true), "q"));
                        parts.min = Some(hidden.one(agg(min_udaf(), float(x.clone()), false), "lo"));
                        parts.max = Some(hidden.one(agg(max_udaf(), float(x.clone()), false), "hi"));
                        parts.scale = Some(hidden.one(
                            agg(max_udaf(), datafusion::functions::math::expr_fn::abs(float(x.clone())), false),
                            "sc",
                        ));
                    } else {
                        let [n, s, q, lo, hi, sc] = hidden.moments(float(x.clone()));
                        (parts.n, parts.s, parts.q) = (Some(n), Some(s), Some(q));
                        (parts.min, parts.max, parts.scale) = (Some(lo), Some(hi), Some(sc));
                    }
                    if stat.magnitude {
                        let guarded = match stat.condition.as_ref().or(stat.present.as_ref()) {
                            Some(c) => filtered(Some(c), stat.x.clone().expect("argument")),
                            None => stat.x.clone().expect("argument"),
                        };
                        let (rk, magnitude) = self.dominance(&persons, guarded)?;
                        parts.dominance_names = Some(hidden.top(&rk, magnitude));
                    }
                }
            }
            if let Some(c) = &stat.complement {
                parts.complement = hidden.all(self.persons_expr(&persons, Some(c), tables), "c");
            }
            layouts.push(StatLayout {
                kind: stat.kind,
                indicator: stat.indicator,
                additive: stat.additive,
                parts,
                index: i,
                stream: stat.stream,
            });
        }
        // Which keys a row of a grouping-sets answer aggregates away (a
        // margin): its key is null although the key has values in its rows
        // (`count(key) > 0`). `grouping()` would say it directly, but it does
        // not survive the SQL round trip to a node.
        let margin = grouping_set.then(|| {
            groups.iter().map(|g| hidden.one(agg(count_udaf(), g.clone(), false), "m")).collect::<Vec<String>>()
        });
        let (aggr, packed) = hidden.finish();
        let mut plan = LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), a.group_expr, aggr)?);
        if grouping_set {
            // The internal grouping id does not survive the SQL round trip to a
            // node; release rebuilds it from the margins.
            let keep: Vec<Expr> = plan
                .schema()
                .columns()
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i != groups.len())
                .map(|(_, c)| Expr::Column(c))
                .collect();
            plan = LogicalPlan::Projection(Projection::try_new(keep, Arc::new(plan))?);
        }
        let mut layout = Layout::new(aggregate_schema, groups.len(), grouping_set, layouts, row, fingerprint, margin);
        layout.packed = packed;
        Ok((plan, layout))
    }
}

/// Whether `e` is `count(DISTINCT person)` of a register's person column as
/// scanned (no expression over it, no `FILTER`): the number of distinct
/// persons with a row in the cell, which the cell's persons companion counts
/// by record key anyway. Releasing that count instead of a second distinct
/// count over the pseudonyms makes the threshold and the released value one
/// number; two persons' 64-bit record keys coincide with probability below
/// n²/2⁶⁵ in a cell of n persons (3·10⁻⁶ at ten million).
fn counts_own_persons(stat: &Stat, e: &Expr, input: &LogicalPlan) -> bool {
    let one_arg = matches!(e.clone().unalias_nested().data, Expr::AggregateFunction(f) if f.params.args.len() == 1);
    stat.kind == Kind::Count
        && stat.distinct
        && stat.filter.is_none()
        && one_arg
        && matches!(&stat.x, Some(Expr::Column(c))
            if input.schema().index_of_column(c).is_ok_and(|i| crate::joins::plain_person(input, i)))
}

/// The hidden aggregates being added, each once, by name; the person
/// companions among them packed into one call per record key ([`Packer`]).
struct Hidden<'a, 'b> {
    rw: &'a Rewriter<'b>,
    aggr: Vec<Expr>,
    cache: HashMap<String, String>,
    /// The pairs of names of [`Hidden::top`] and [`Hidden::extremes`], by what they are of.
    pairs: HashMap<String, (String, String)>,
    packer: Packer,
    /// The parts of each `samkor_moments` call, by its argument.
    moments: HashMap<String, [String; 6]>,
    /// Where each part is: the call's struct column and its field.
    moment_fields: PackedFields,
}

impl Hidden<'_, '_> {
    fn one(&mut self, e: Expr, what: &str) -> String {
        let key = e.schema_name().to_string();
        if let Some(name) = self.cache.get(&key) {
            return name.clone();
        }
        let name = self.rw.name(what);
        if !self.packer.take(&e, &name) {
            self.aggr.push(e.alias(&name));
        }
        self.cache.insert(key, name.clone());
        name
    }

    /// The sum of the largest persons' totals of `magnitude` and its sum
    /// over every row (each once, by name).
    fn top(&mut self, rk: &Expr, magnitude: Expr) -> (String, String) {
        let key = format!("top({}, {})", rk.schema_name(), magnitude.schema_name());
        self.pair(key, ["dt", "ds"], |packer, [top, total]| packer.top(rk, magnitude, top, total))
    }

    /// The least and largest record key of `rk` (once).
    fn extremes(&mut self, rk: &Expr) -> (String, String) {
        let key = format!("extremes({})", rk.schema_name());
        self.pair(key, ["kmin", "kmax"], |packer, [least, largest]| packer.extremes(rk, least, largest))
    }

    /// Two hidden fields of a packed call, named once per `key` and given to
    /// the packer by `take`.
    fn pair(&mut self, key: String, what: [&str; 2], take: impl FnOnce(&mut Packer, [&str; 2])) -> (String, String) {
        if let Some(names) = self.pairs.get(&key) {
            return names.clone();
        }
        let names = (self.rw.name(what[0]), self.rw.name(what[1]));
        take(&mut self.packer, [&names.0, &names.1]);
        self.pairs.insert(key, names.clone());
        names
    }

    /// The count, Σx, Σx², least, largest and largest |x| of the Float64
    /// `x`, as fields of one `samkor_moments(x)` (each call once, by argument).
    fn moments(&mut self, x: Expr) -> [String; 6] {
        let key = x.schema_name().to_string();
        if let Some(names) = self.moments.get(&key) {
            return names.clone();
        }
        let column = self.rw.name("mo");
        let names = MOMENT_FIELDS.map(|f| self.rw.name(f));
        for (i, name) in names.iter().enumerate() {
            self.moment_fields.insert(name.clone(), (column.clone(), i));
        }
        self.aggr.push(moments_udaf().call(vec![x]).alias(&column));
        self.moments.insert(key, names.clone());
        names
    }

    /// The aggregate expressions, and where the packed companions and moments are.
    fn finish(self) -> (Vec<Expr>, PackedFields) {
        let Hidden { rw, mut aggr, packer, moment_fields, .. } = self;
        let (calls, mut packed) = packer.finish(|| rw.name("pm"));
        aggr.extend(calls);
        packed.extend(moment_fields);
        (aggr, packed)
    }

    fn all(&mut self, exprs: Vec<Expr>, what: &str) -> Vec<String> {
        exprs.into_iter().map(|e| self.one(e, what)).collect()
    }
}
