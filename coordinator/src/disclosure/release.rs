//! Applying disclosure control to a collected aggregate answer.
//!
//! ```text
//!   executed aggregate (parts + companions, one row per group)
//!     ─▶ facts per cell on the true values ─▶ decide (policies::disclosure)
//!     ─▶ released statistics from perturbed parts, withheld ones null
//!     ─▶ the upper query over the released cells (DataFusion, in memory)
//!     ─▶ cells computed from a withheld statistic null, `withheld` column, summary
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, new_null_array};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, nullif};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DataFusionError, Result};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::SessionContext;
use samkor_functions::PersonsCell;
use samkor_policies::approval::Approval;
use samkor_policies::differencing::CellPrint;
use samkor_policies::disclosure::{self as sdc, Additive, CellFacts, Role, RowFacts, ValueColumn};
use samkor_policies::perturbation::{VarianceKind, variance_from_parts};

use super::perturb::Noise;
use super::statistics::Kind;
use super::{Layout, METADATA_KEY, Mode, Origin, ROW_COLUMN, StatLayout, WITHHELD_COLUMN};

/// The disclosure summary of an answer: in the schema metadata, the audit log and the CLI.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub min_cell_persons: u32,
    pub dominance_n: u32,
    pub dominance_share: f64,
    pub round_counts_to: u32,
    /// Released numbers carry the cell-key perturbation (the table's parameters are not published).
    pub perturbed: bool,
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
            perturbed: (mode == "aggregate" || mode == "method") && d.perturbation,
            withheld: BTreeMap::new(),
            groups_withheld: 0,
        }
    }

    /// Counts a method's withheld rows by the rule its `withheld` column names.
    pub fn count_method_rows(&mut self, batches: &[RecordBatch]) {
        for b in batches {
            let Ok(i) = b.schema().index_of(super::WITHHELD_COLUMN) else { continue };
            let Some(text) = b.column(i).as_any().downcast_ref::<StringArray>() else { continue };
            for reason in text.iter().flatten() {
                let rule = reason.split(" (").next().unwrap_or(reason).to_owned();
                *self.withheld.entry(rule).or_default() += 1;
            }
        }
    }

    pub fn cells_withheld(&self) -> u64 {
        self.withheld.values().sum()
    }
}

/// A released aggregate answer.
#[derive(Debug)]
pub struct Released {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub summary: Summary,
    /// One fingerprint per released group, for the differencing flags.
    pub prints: Vec<CellPrint>,
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
        Mode::NoData | Mode::Microdata | Mode::Method => Schema::new_with_metadata(schema.fields().clone(), metadata),
    }
}

/// The summary for a released microdata or constant answer, as schema metadata.
pub fn annotate(schema: &SchemaRef, summary: &Summary) -> SchemaRef {
    let mut metadata = schema.metadata().clone();
    metadata.insert(METADATA_KEY.to_owned(), serde_json::to_string(summary).unwrap_or_default());
    Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata))
}

fn marker_name(fields: &[Field]) -> String {
    let mut name = WITHHELD_COLUMN.to_owned();
    while fields.iter().any(|f| f.name() == &name) {
        name.push('_');
    }
    name
}

/// The executed aggregate's columns, by name; a packed companion is a field
/// of its call's struct column.
struct Columns<'a> {
    batch: &'a RecordBatch,
    packed: &'a super::packed::PackedFields,
}

impl Columns<'_> {
    fn get(&self, name: &str) -> Result<ArrayRef> {
        let (column, field) = match self.packed.get(name) {
            Some((column, field)) => (column.as_str(), Some(*field)),
            None => (name, None),
        };
        let lost = || DataFusionError::Internal(format!("disclosure control lost its hidden column {name}"));
        let array = self.batch.column(self.batch.schema().index_of(column).map_err(|_| lost())?);
        match field {
            None => Ok(array.clone()),
            Some(f) => datafusion::arrow::array::AsArray::as_struct_opt(array)
                .and_then(|s| s.columns().get(f))
                .cloned()
                .ok_or_else(lost),
        }
    }

    fn ints(&self, name: &str) -> Result<Int64Array> {
        let a = cast(&self.get(name)?, &DataType::Int64)?;
        Ok(a.as_any().downcast_ref::<Int64Array>().expect("cast to Int64").clone())
    }

    fn floats(&self, name: &str) -> Result<Float64Array> {
        let a = cast(&self.get(name)?, &DataType::Float64)?;
        Ok(a.as_any().downcast_ref::<Float64Array>().expect("cast to Float64").clone())
    }

    fn all_ints(&self, names: &[String]) -> Result<Vec<Int64Array>> {
        names.iter().map(|n| self.ints(n)).collect()
    }

    fn maybe_floats(&self, name: &Option<String>) -> Result<Option<Float64Array>> {
        name.as_deref().map(|n| self.floats(n)).transpose()
    }
}

/// The least non-zero of several packed person counts of row `r`: persons
/// 0 when all are zero, `None` when there is no count at all (no person data).
fn least(candidates: &[Int64Array], r: usize) -> Option<PersonsCell> {
    if candidates.is_empty() {
        return None;
    }
    let cells = candidates.iter().filter(|a| !a.is_null(r)).map(|a| PersonsCell::unpack(a.value(r)));
    Some(cells.filter(|c| c.persons > 0).min_by_key(|c| c.persons).unwrap_or_default())
}

/// The persons of packed person counts, as numbers (0 where there is none).
fn persons_counted(packed: &Int64Array) -> Float64Array {
    packed.iter().map(|v| Some(v.map_or(0, |v| PersonsCell::unpack(v).persons) as f64)).collect()
}

fn at(a: &Option<Float64Array>, r: usize) -> Option<f64> {
    a.as_ref().and_then(|a| (!a.is_null(r)).then(|| a.value(r)))
}

/// The columns of one statistic, read out of the executed aggregate.
struct StatColumns {
    value: Option<Float64Array>,
    n: Option<Float64Array>,
    s: Option<Float64Array>,
    q: Option<Float64Array>,
    min: Option<Float64Array>,
    max: Option<Float64Array>,
    scale: Option<Float64Array>,
    persons: Vec<Int64Array>,
    nonzero: Vec<Int64Array>,
    complement: Vec<Int64Array>,
    dominance: Option<(Float64Array, Float64Array)>,
}

impl StatColumns {
    fn read(cols: &Columns<'_>, stat: &StatLayout) -> Result<StatColumns> {
        let p = &stat.parts;
        let dominance = match &p.dominance_names {
            Some((t, s)) => Some((cols.floats(t)?, cols.floats(s)?)),
            None => None,
        };
        Ok(StatColumns {
            value: match stat.kind {
                Kind::Count if p.value_is_persons => Some(persons_counted(&cols.ints(&p.persons[0])?)),
                Kind::Extreme | Kind::Exact if !is_number(cols, &p.value)? => None,
                _ => cols.maybe_floats(&p.value)?,
            },
            n: cols.maybe_floats(&p.n)?,
            s: cols.maybe_floats(&p.s)?,
            q: cols.maybe_floats(&p.q)?,
            min: cols.maybe_floats(&p.min)?,
            max: cols.maybe_floats(&p.max)?,
            scale: cols.maybe_floats(&p.scale)?,
            persons: cols.all_ints(&p.persons)?,
            nonzero: cols.all_ints(&p.nonzero)?,
            complement: cols.all_ints(&p.complement)?,
            dominance,
        })
    }

    /// The facts disclosure control decides this statistic's cell on (true values).
    fn facts(&self, stat: &StatLayout, r: usize) -> CellFacts {
        let persons = least(&self.persons, r).map(|c| c.persons);
        let nonzero = least(&self.nonzero, r).map(|c| c.persons);
        let complement = least(&self.complement, r).map(|c| c.persons);
        let mut facts = CellFacts {
            value: if stat.additive.is_some() { at(&self.value, r) } else { None },
            persons: match (persons, nonzero) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            complement,
            dominance: self
                .dominance
                .as_ref()
                .and_then(|(t, s)| (!t.is_null(r) && !s.is_null(r)).then(|| (t.value(r), s.value(r)))),
            class: None,
        };
        if let Kind::Quantile { p } = stat.kind
            && let Some(n) = persons
        {
            // At least k persons on each side of the rank.
            let below = (n as f64 * p).floor() as u64;
            let above = (n as f64 * (1.0 - p)).floor() as u64;
            facts.persons = Some(n.min(below).min(above));
        }
        facts.class = self.class(stat, r, facts.persons, complement);
        facts
    }

    /// The least count of a value, where the statistic gives the counts of its values.
    fn class(&self, stat: &StatLayout, r: usize, persons: Option<u64>, complement: Option<u64>) -> Option<u64> {
        if !matches!(stat.kind, Kind::Sum | Kind::Mean | Kind::Spread { .. }) {
            return None;
        }
        if stat.indicator {
            // Persons with the indicator and persons without it.
            return Some(persons?.min(complement.unwrap_or(0)));
        }
        let (n, s, q, a, b) = (at(&self.n, r)?, at(&self.s, r)?, at(&self.q, r)?, at(&self.min, r)?, at(&self.max, r)?);
        if n <= 0.0 {
            return None;
        }
        if a == b {
            // Everyone present has the same value: a mean or spread tells it.
            return (!matches!(stat.kind, Kind::Sum)).then_some(0);
        }
        // Σ(x − a)(b − x) = 0 exactly when every value is a or b: then n, Σx give both counts.
        let spread = -q + (a + b) * s - n * a * b;
        if spread.abs() <= 1e-9 * n * (b - a) * (b - a) {
            let at_b = ((s - n * a) / (b - a)).round().max(0.0);
            return Some((at_b.min(n - at_b)).max(0.0) as u64);
        }
        None
    }

    /// The released value of a statistic not withheld: from perturbed parts.
    fn released(&self, stat: &StatLayout, r: usize, noise: &Noise) -> Option<f64> {
        let key = |c: &[Int64Array]| least(c, r).map(|c| c.key).unwrap_or(0);
        let scale = at(&self.scale, r).unwrap_or(0.0);
        let sum = |v: f64, keys: &[Int64Array]| {
            if stat.indicator { noise.count(v, key(keys)) } else { noise.magnitude(v, scale, key(keys), stat.stream) }
        };
        match stat.kind {
            Kind::Count => at(&self.value, r).map(|v| noise.count(v, key(&self.persons))),
            Kind::Sum => at(&self.value, r).map(|v| sum(v, &self.persons)),
            Kind::Mean => {
                let n = noise.count(at(&self.n, r)?, key(&self.persons));
                let s = sum(at(&self.s, r)?, &self.nonzero);
                (n > 0.0).then(|| s / n)
            }
            Kind::Spread { population, root } => {
                let n = noise.count(at(&self.n, r)?, key(&self.persons));
                let s = sum(at(&self.s, r)?, &self.nonzero);
                let q = noise.magnitude(at(&self.q, r)?, scale * scale, key(&self.nonzero), stat.stream ^ 0x9e37_79b9);
                let kind = if population { VarianceKind::Population } else { VarianceKind::Sample };
                let v = variance_from_parts(n.max(0.0) as u64, s, q, kind)?;
                Some(if root { v.sqrt() } else { v })
            }
            Kind::Quantile { .. } | Kind::Extreme | Kind::Exact => at(&self.value, r),
        }
    }
}

fn is_number(cols: &Columns<'_>, name: &Option<String>) -> Result<bool> {
    Ok(match name {
        Some(n) => cols.get(n)?.data_type().is_numeric(),
        None => false,
    })
}

fn text(array: &ArrayRef) -> Result<Vec<Option<String>>> {
    let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
    Ok((0..array.len()).map(|r| (!array.is_null(r)).then(|| f.value(r).to_string())).collect())
}

/// Applies disclosure control to a collected aggregate answer.
pub async fn release(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    layout: &Layout,
    approval: &Approval,
) -> Result<Released> {
    let batch = concat_batches(schema, batches)?;
    let n = batch.num_rows();
    let cols = Columns { batch: &batch, packed: &layout.packed };
    let noise = Noise::for_approval(approval)?;
    let stats: Vec<StatColumns> = layout.stats.iter().map(|s| StatColumns::read(&cols, s)).collect::<Result<_>>()?;
    let keyed = layout.groups + usize::from(layout.grouping_set);
    let roles: Vec<Role> = (0..keyed)
        .map(|j| if j < layout.groups { Role::Key } else { Role::Constant })
        .chain(
            layout.stats.iter().map(|s| Role::Value(ValueColumn { additive: s.additive, depends_on: vec![s.index] })),
        )
        .collect();
    let row_persons = cols.all_ints(&layout.row)?;
    let keys: Vec<Vec<Option<String>>> = (0..layout.groups).map(|j| text(batch.column(j))).collect::<Result<_>>()?;
    let margins: Option<Vec<Int64Array>> = layout.margin.as_deref().map(|m| cols.all_ints(m)).transpose()?;
    let rows: Vec<RowFacts> = (0..n)
        .map(|r| RowFacts {
            persons: least(&row_persons, r).map(|c| c.persons),
            margin_mask: margins.as_ref().map(|counts| {
                counts
                    .iter()
                    .enumerate()
                    .filter(|(j, c)| keys[*j][r].is_none() && !c.is_null(r) && c.value(r) > 0)
                    .fold(0u64, |acc, (j, _)| acc | (1 << j))
            }),
            keys: keys.iter().map(|k| k[r].clone()).collect(),
            shown: (0..roles.len()).map(|j| keys.get(j).and_then(|k| k[r].clone())).collect(),
            cells: (0..keyed)
                .map(|_| CellFacts::default())
                .chain(layout.stats.iter().zip(&stats).map(|(s, c)| c.facts(s, r)))
                .collect(),
        })
        .collect();
    let outcome = sdc::decide(&roles, &rows, &approval.disclosure);

    // The statistics as released: from perturbed parts, withheld ones null.
    let mut columns: Vec<ArrayRef> = (0..layout.groups).map(|j| batch.column(j).clone()).collect();
    if layout.grouping_set {
        columns.push(grouping_id(layout, &rows)?);
    }
    for (i, (stat, c)) in layout.stats.iter().zip(&stats).enumerate() {
        let field = layout.aggregate.field(keyed + i);
        let withheld = |r: usize| outcome.rows[r].withheld[keyed + i].is_some();
        if matches!(stat.kind, Kind::Extreme | Kind::Exact)
            && let Some(name) = &stat.parts.value
        {
            // Not rebuilt from parts: the value as computed, withheld cells null.
            let mask = BooleanArray::from((0..n).map(withheld).collect::<Vec<bool>>());
            columns.push(cast(&nullif(&cols.get(name)?, &mask)?, field.data_type())?);
            continue;
        }
        let values: Float64Array = (0..n)
            .map(|r| {
                if withheld(r) {
                    return None;
                }
                match (stat.additive, c.released(stat, r, &noise)) {
                    (Some(Additive::Count), Some(v)) => {
                        Some(sdc::round_count(v.round() as i64, outcome.round_to) as f64)
                    }
                    (_, v) => v,
                }
            })
            .collect();
        let values: ArrayRef = Arc::new(values);
        let typed = if field.data_type().is_integer() {
            round_to_int(&values, field.data_type())?
        } else {
            cast(&values, field.data_type())?
        };
        columns.push(typed);
    }
    columns.push(Arc::new(Int64Array::from_iter_values(0..n as i64)));
    let keep = BooleanArray::from(outcome.rows.iter().map(|d| !d.collapsed).collect::<Vec<bool>>());
    let cells = cells_batch(layout, columns, &keep)?;

    let answer = run_upper(layout, cells).await?;
    let (schema, batch) = mark(layout, &answer, &outcome, keyed)?;
    let mut summary = Summary::named("aggregate", approval);
    summary.perturbed = noise.on();
    summary.withheld = outcome.counts.iter().map(|(r, n)| (r.name().to_owned(), *n)).collect();
    summary.groups_withheld = outcome.collapsed;
    let schema = annotate(&schema, &summary);
    let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
    let announced = if layout.subset { 0 } else { outcome.collapsed };
    let batches = with_merged_row(&schema, batch, announced, layout.visible)?;
    let prints = fingerprints(layout, &cols, &row_persons, &outcome)?;
    Ok(Released { schema, batches, summary, prints })
}

/// DataFusion's `__grouping_id`: bit `n−1−j` set where grouping key `j` is aggregated away.
fn grouping_id(layout: &Layout, rows: &[RowFacts]) -> Result<ArrayRef> {
    let n = layout.groups;
    let ids: Int64Array = rows
        .iter()
        .map(|r| {
            let mask = r.margin_mask.unwrap_or(0);
            Some((0..n).filter(|j| mask & (1 << j) != 0).fold(0i64, |acc, j| acc | (1 << (n - 1 - j))))
        })
        .collect();
    Ok(cast(&ids, layout.aggregate.field(n).data_type())?)
}

fn round_to_int(a: &ArrayRef, t: &DataType) -> Result<ArrayRef> {
    let f = a.as_any().downcast_ref::<Float64Array>().expect("Float64");
    let rounded: Float64Array = f.iter().map(|v| v.map(f64::round)).collect();
    Ok(cast(&rounded, t)?)
}

/// The released cells as a batch in the output aggregate's schema (plus the row number).
fn cells_batch(layout: &Layout, columns: Vec<ArrayRef>, keep: &BooleanArray) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = layout
        .aggregate
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect();
    fields.push(Field::new(ROW_COLUMN, DataType::Int64, false));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok(filter_record_batch(&batch, keep)?)
}

/// The session the released rows are computed in: built once, as it holds
/// nothing of a query (each execution clones its state). A few released
/// cells in memory: one partition, no exchange between threads.
static RELEASE: std::sync::LazyLock<SessionContext> = std::sync::LazyLock::new(|| {
    SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(1))
});

/// Runs the query above the aggregate over the released cells.
async fn run_upper(layout: &Layout, cells: RecordBatch) -> Result<RecordBatch> {
    let schema = cells.schema();
    let table = MemTable::try_new(schema.clone(), vec![vec![cells]])?;
    let scan = LogicalPlanBuilder::scan("__samkor_released", provider_as_source(Arc::new(table)), None)?.build()?;
    let mut exprs: Vec<Expr> = layout
        .aggregate
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            Expr::Column(Column::new(Some("__samkor_released"), format!("c{i}"))).alias_qualified(q.cloned(), f.name())
        })
        .collect();
    exprs.push(Expr::Column(Column::new(Some("__samkor_released"), ROW_COLUMN)).alias(ROW_COLUMN));
    let released = LogicalPlanBuilder::from(scan).project(exprs)?.build()?;
    let plan = layout
        .upper
        .clone()
        .transform_up(|p| {
            Ok(match p {
                LogicalPlan::EmptyRelation(e) if e.schema.has_column_with_unqualified_name(ROW_COLUMN) => {
                    Transformed::yes(released.clone())
                }
                other => Transformed::yes(other.recompute_schema()?),
            })
        })?
        .data;
    // The upper query was optimized with the whole query: analyzed again
    // (the cells' types), planned physically, not optimized a second time.
    let state = RELEASE.state();
    let analyzed = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {})?;
    let out_schema: SchemaRef = Arc::new(analyzed.schema().as_arrow().clone());
    let physical = state.query_planner().create_physical_plan(&analyzed, &state).await?;
    let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
    Ok(concat_batches(&out_schema, &batches)?)
}

/// Nulls every answer cell computed from a withheld statistic and adds the `withheld` column.
fn mark(
    layout: &Layout,
    answer: &RecordBatch,
    outcome: &sdc::Outcome,
    keyed: usize,
) -> Result<(SchemaRef, RecordBatch)> {
    let out_schema = answer.schema();
    let row_idx =
        out_schema.fields().iter().rposition(|f| f.name() == &layout.upper_row.name).ok_or_else(|| {
            DataFusionError::Internal("disclosure control lost the row number of released cells".into())
        })?;
    let rows = cast(answer.column(row_idx), &DataType::Int64)?;
    let rows = rows.as_any().downcast_ref::<Int64Array>().expect("Int64");
    let withheld_stats: Vec<BTreeSet<usize>> = (0..answer.num_rows())
        .map(|r| {
            let a = rows.value(r) as usize;
            (0..layout.stats.len()).filter(|i| outcome.rows[a].withheld[keyed + i].is_some()).collect()
        })
        .collect();
    let is_withheld = |c: usize, r: usize| match &layout.origins[c] {
        Origin::Agg(set) => set.iter().any(|i| withheld_stats[r].contains(i)),
        Origin::Key | Origin::Constant => false,
    };
    let fields: Vec<Field> =
        out_schema.fields().iter().take(layout.visible).map(|f| f.as_ref().clone().with_nullable(true)).collect();
    let mut columns = Vec::with_capacity(layout.visible + 1);
    for c in 0..layout.visible {
        let mask = BooleanArray::from((0..answer.num_rows()).map(|r| is_withheld(c, r)).collect::<Vec<bool>>());
        columns.push(nullif(answer.column(c), &mask)?);
    }
    let marks: StringArray = (0..answer.num_rows())
        .map(|r| {
            let w: Vec<&str> =
                (0..layout.visible).filter(|&c| is_withheld(c, r)).map(|c| fields[c].name().as_str()).collect();
            (!w.is_empty()).then(|| w.join(","))
        })
        .collect();
    columns.push(Arc::new(marks));
    let mut out_fields = fields.clone();
    out_fields.push(Field::new(marker_name(&fields), DataType::Utf8, true));
    let schema = Arc::new(Schema::new(out_fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((schema, batch))
}

/// Groups whose keys would reveal something are merged into one last row.
fn with_merged_row(schema: &SchemaRef, batch: RecordBatch, collapsed: u64, visible: usize) -> Result<Vec<RecordBatch>> {
    if collapsed == 0 {
        return Ok(vec![batch]);
    }
    let mut merged: Vec<ArrayRef> =
        schema.fields().iter().take(visible).map(|f| new_null_array(f.data_type(), 1)).collect();
    merged.push(Arc::new(StringArray::from(vec![Some("* (groups below the threshold)")])));
    let extra = RecordBatch::try_new(schema.clone(), merged)?;
    Ok(vec![concat_batches(schema, &[batch, extra])?])
}

/// One fingerprint per released group: its persons, cell key and extreme record keys.
fn fingerprints(
    layout: &Layout,
    cols: &Columns<'_>,
    row_persons: &[Int64Array],
    outcome: &sdc::Outcome,
) -> Result<Vec<CellPrint>> {
    let Some((lo, hi)) = &layout.fingerprint else { return Ok(vec![]) };
    let (lo, hi) = (cols.ints(lo)?, cols.ints(hi)?);
    Ok((0..lo.len())
        .filter(|&r| !outcome.rows[r].collapsed && !lo.is_null(r) && !hi.is_null(r))
        .filter_map(|r| {
            let cell = least(row_persons, r)?;
            Some(CellPrint {
                persons: cell.persons,
                key: cell.key,
                min_rk: (lo.value(r) >> 32) as u32,
                max_rk: (hi.value(r) >> 32) as u32,
            })
        })
        .collect())
}
