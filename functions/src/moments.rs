//! `samkor_moments(x)`: the parts disclosure control reads of a sum, mean or
//! spread of `x`, in one pass and one state per group.
//!
//! A statistic over values is released from its parts (the values present,
//! Σx, Σx²) and judged by their range (least, largest, largest |x|). Each was
//! its own aggregate: six argument expressions evaluated and six accumulators
//! per batch, and six aggregates to plan at the coordinator and again at the
//! node. Here one state per group keeps all six, and the result is a struct
//! whose fields equal, bit for bit, the aggregates they replace:
//!
//! ```text
//!   samkor_moments(x) → {n: count(x), s: sum(x), q: sum(x * x),
//!                        lo: min(x), hi: max(x), sc: max(abs(x))}
//! ```
//!
//! Sums add in row order and partial states in arrival order, as DataFusion's
//! `sum` does; least and largest follow the total order of floats, as its
//! `min` and `max` do. Fields other than `n` are null where no value is present.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::keyed::each;

/// The function's SQL name.
pub const MOMENTS_FN: &str = "samkor_moments";

/// The result's fields, in order: the values present, Σx, Σx², least, largest, largest |x|.
pub const MOMENT_FIELDS: [&str; 6] = ["n", "s", "q", "lo", "hi", "sc"];

fn fields() -> Fields {
    MOMENT_FIELDS
        .iter()
        .map(|&name| match name {
            "n" => Field::new(name, DataType::Int64, false),
            _ => Field::new(name, DataType::Float64, true),
        })
        .collect()
}

/// The parts of one group.
#[derive(Debug, Clone, Copy)]
struct Cell {
    n: i64,
    s: f64,
    q: f64,
    lo: f64,
    hi: f64,
    sc: f64,
}

impl Default for Cell {
    fn default() -> Self {
        Cell { n: 0, s: 0.0, q: 0.0, lo: 0.0, hi: 0.0, sc: 0.0 }
    }
}

impl Cell {
    #[inline]
    fn add(&mut self, x: f64) {
        self.merge(Cell { n: 1, s: x, q: x * x, lo: x, hi: x, sc: x.abs() });
    }

    #[inline]
    fn merge(&mut self, o: Cell) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            // Sums start from +0 as DataFusion's do: a first value of −0 sums to +0.
            *self = Cell { s: 0.0 + o.s, q: 0.0 + o.q, ..o };
            return;
        }
        self.n += o.n;
        self.s += o.s;
        self.q += o.q;
        if o.lo.total_cmp(&self.lo).is_lt() {
            self.lo = o.lo;
        }
        if o.hi.total_cmp(&self.hi).is_gt() {
            self.hi = o.hi;
        }
        if o.sc.total_cmp(&self.sc).is_gt() {
            self.sc = o.sc;
        }
    }
}

/// The six columns of `cells`: the result's fields, and the partial state.
fn columns(cells: &[Cell]) -> Vec<ArrayRef> {
    let present = NullBuffer::from(cells.iter().map(|c| c.n > 0).collect::<Vec<bool>>());
    let float = |f: fn(&Cell) -> f64| -> ArrayRef {
        Arc::new(Float64Array::new(cells.iter().map(f).collect(), Some(present.clone())))
    };
    vec![
        Arc::new(Int64Array::from_iter_values(cells.iter().map(|c| c.n))),
        float(|c| c.s),
        float(|c| c.q),
        float(|c| c.lo),
        float(|c| c.hi),
        float(|c| c.sc),
    ]
}

/// Merges partial states (the six columns) row by row into `cell(row)`.
fn merge_states(states: &[ArrayRef], mut cell: impl FnMut(usize) -> Option<usize>, cells: &mut [Cell]) {
    let n = states[0].as_primitive::<Int64Type>();
    let f: Vec<&Float64Array> = states[1..].iter().map(|a| a.as_primitive::<Float64Type>()).collect();
    for row in 0..n.len() {
        if n.is_null(row) || n.value(row) == 0 {
            continue;
        }
        if let Some(g) = cell(row) {
            cells[g].merge(Cell {
                n: n.value(row),
                s: f[0].value(row),
                q: f[1].value(row),
                lo: f[2].value(row),
                hi: f[3].value(row),
                sc: f[4].value(row),
            });
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Moments {
    signature: Signature,
}

/// The aggregate function.
pub fn moments_udaf() -> AggregateUDF {
    AggregateUDF::from(Moments { signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable) })
}

impl AggregateUDFImpl for Moments {
    fn name(&self) -> &str {
        MOMENTS_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::Float64] => Ok(DataType::Struct(fields())),
            other => plan_err!("{MOMENTS_FN} takes one Float64 value, not {other:?}"),
        }
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneCell(MomentGroups::default())))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(MomentGroups::default()))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(fields().iter().map(|f| Arc::new(f.as_ref().clone().with_name(format!("moments_{}", f.name())))).collect())
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        let array = StructArray::new(fields(), columns(&[Cell::default()]), None);
        ScalarValue::try_from_array(&array, 0)
    }
}

/// Per group, its [`Cell`].
#[derive(Debug, Default)]
struct MomentGroups {
    cells: Vec<Cell>,
}

impl GroupsAccumulator for MomentGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.cells.resize(total_num_groups, Cell::default());
        let cells = &mut self.cells;
        each(values[0].as_primitive::<Float64Type>(), opt_filter, |row, x| cells[group_indices[row]].add(x));
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let cells = emit_to.take_needed(&mut self.cells);
        Ok(Arc::new(StructArray::new(fields(), columns(&cells), None)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(columns(&emit_to.take_needed(&mut self.cells)))
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.cells.resize(total_num_groups, Cell::default());
        merge_states(values, |row| Some(group_indices[row]), &mut self.cells);
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let mut cells = vec![Cell::default(); values[0].len()];
        each(values[0].as_primitive::<Float64Type>(), opt_filter, |row, x| cells[row].add(x));
        Ok(columns(&cells))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.cells.capacity() * size_of::<Cell>()
    }
}

/// The accumulator of an aggregate without groups.
#[derive(Debug)]
struct OneCell(MomentGroups);

impl Accumulator for OneCell {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.update_batch(values, &vec![0; values[0].len()], None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.cells.resize(1, Cell::default());
        ScalarValue::try_from_array(&StructArray::new(fields(), columns(&self.0.cells), None), 0)
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.cells.resize(1, Cell::default());
        columns(&self.0.cells).iter().map(|a| ScalarValue::try_from_array(a, 0)).collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.cells.resize(1, Cell::default());
        merge_states(states, |_| Some(0), &mut self.0.cells);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    /// Every field equals the aggregate it replaces, bit for bit, grouped and
    /// not, over several partitions (partial states merged), with nulls,
    /// negative zero, infinities and a group without values.
    #[tokio::test]
    async fn each_field_is_the_aggregate_it_replaces() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let mut partitions = Vec::new();
        let mut state = 7u64;
        for p in 0..3 {
            let (mut g, mut x) = (Vec::new(), Vec::new());
            for i in 0..5000 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                g.push((state >> 33) as i64 % 7);
                x.push(match (i + p) % 97 {
                    0 => None,
                    1 => Some(-0.0),
                    2 if p == 1 => Some(f64::INFINITY),
                    _ => Some(((state >> 11) as f64 / (1u64 << 53) as f64 - 0.3) * 1e3),
                });
            }
            g.push(99);
            x.push(None);
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(g)), Arc::new(Float64Array::from(x))],
            )
            .expect("batch");
            partitions.push(vec![batch]);
        }
        let ctx = SessionContext::new();
        ctx.register_udaf(moments_udaf());
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, partitions).expect("table"))).expect("register");
        for group in ["GROUP BY g ORDER BY g", ""] {
            let key = if group.is_empty() { "" } else { "g, " };
            let sql = format!(
                "SELECT {key}m['n'] AS n, m['s'] AS s, m['q'] AS q, m['lo'] AS lo, m['hi'] AS hi, m['sc'] AS sc, \
                 c, s2, q2, lo2, hi2, sc2 FROM (SELECT {key}samkor_moments(x) AS m, count(x) AS c, sum(x) AS s2, \
                 sum(x * x) AS q2, min(x) AS lo2, max(x) AS hi2, max(abs(x)) AS sc2 FROM t {group})"
            );
            let batches = ctx.sql(&sql).await.expect("plan").collect().await.expect("run");
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, if group.is_empty() { 1 } else { 8 });
            let first = usize::from(!group.is_empty());
            for b in &batches {
                for (i, field) in MOMENT_FIELDS.iter().enumerate() {
                    let (ours, theirs) = (b.column(first + i), b.column(first + 6 + i));
                    let (ours, theirs) = (
                        datafusion::arrow::compute::cast(ours, &DataType::Float64).expect("cast"),
                        datafusion::arrow::compute::cast(theirs, &DataType::Float64).expect("cast"),
                    );
                    let (ours, theirs) = (ours.as_primitive::<Float64Type>(), theirs.as_primitive::<Float64Type>());
                    for r in 0..b.num_rows() {
                        assert_eq!(ours.is_null(r), theirs.is_null(r), "{field} null in row {r}");
                        if !ours.is_null(r) {
                            assert_eq!(
                                ours.value(r).to_bits(),
                                theirs.value(r).to_bits(),
                                "{field} in row {r}: {} vs {}",
                                ours.value(r),
                                theirs.value(r)
                            );
                        }
                    }
                }
            }
        }
    }
}
