//! `samkor_top_sum(record_key, x, n)`: the sum of the `n` largest per-person
//! totals of `x` in a group, for the dominance rule (the `n` persons who
//! contribute most to a sum, against the sum of all persons).
//!
//! One pass in the aggregate itself: per group a table of record key →
//! Σx, merged across partitions as lists, ranked when the group is
//! evaluated. Rows whose key or `x` is null are not counted: a person with no
//! value in the group (outside a `CASE` condition) has no total and takes no
//! rank. Null where no person has a value. The coordinator passes `|x|`, so
//! totals are non-negative.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

use crate::keyed::{KeyMap, drop_first, each, emitted, list_array};

/// The function's SQL name.
pub const TOP_SUM_FN: &str = "samkor_top_sum";

#[derive(Debug, PartialEq, Eq, Hash)]
struct TopSum {
    signature: Signature,
}

/// The aggregate function.
pub fn top_sum_udaf() -> AggregateUDF {
    let types = vec![DataType::Int64, DataType::Float64, DataType::Int64];
    AggregateUDF::from(TopSum { signature: Signature::exact(types, Volatility::Immutable) })
}

/// `n`, which must be a constant.
fn top_n(args: &AccumulatorArgs) -> Result<usize> {
    let literal = args.exprs.get(2).and_then(|e| e.downcast_ref::<Literal>());
    match literal.map(|l| l.value()) {
        Some(ScalarValue::Int64(Some(n))) if *n > 0 => Ok(*n as usize),
        _ => plan_err!("{TOP_SUM_FN} takes a positive constant number of persons"),
    }
}

impl AggregateUDFImpl for TopSum {
    fn name(&self) -> &str {
        TOP_SUM_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::Int64, DataType::Float64, DataType::Int64] => Ok(DataType::Float64),
            other => plan_err!("{TOP_SUM_FN} takes (record key, value, persons), not {other:?}"),
        }
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(TopSumAccumulator(TopSumGroups::new(top_n(&args)?))))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(TopSumGroups::new(top_n(&args)?)))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
        Ok(vec![
            Arc::new(Field::new("record_keys", list(DataType::Int64), true)),
            Arc::new(Field::new("totals", list(DataType::Float64), true)),
        ])
    }
}

/// Per (group, record key) the running total.
#[derive(Debug)]
struct TopSumGroups {
    n: usize,
    totals: KeyMap<(usize, i64), f64>,
    groups: usize,
}

impl TopSumGroups {
    fn new(n: usize) -> TopSumGroups {
        TopSumGroups { n, totals: KeyMap::default(), groups: 0 }
    }

    fn add(&mut self, group: usize, key: i64, x: f64) {
        *self.totals.entry((group, key)).or_insert(0.0) += x;
    }

    /// Per group of the first `n`, its persons' totals (keys in the same order).
    fn per_group(&self, n: usize) -> Vec<Vec<(i64, f64)>> {
        let mut out = vec![Vec::new(); n];
        for (&(g, k), &t) in &self.totals {
            if g < n {
                out[g].push((k, t));
            }
        }
        out
    }

    fn values(&self, n: usize) -> ArrayRef {
        let top = self.n;
        Arc::new(Float64Array::from_iter(self.per_group(n).into_iter().map(|mut persons| {
            if persons.is_empty() {
                return None;
            }
            let k = top.min(persons.len());
            persons.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            Some(persons[..k].iter().map(|p| p.1).sum::<f64>())
        })))
    }

    fn lists(&self, n: usize) -> Vec<ArrayRef> {
        let groups = self.per_group(n);
        let lengths: Vec<usize> = groups.iter().map(Vec::len).collect();
        let (keys, totals): (Vec<i64>, Vec<f64>) = groups.into_iter().flatten().unzip();
        vec![list_array::<Int64Type>(keys, lengths.clone()), list_array::<Float64Type>(totals, lengths)]
    }

    fn forget(&mut self, emit_to: EmitTo) {
        match emit_to {
            EmitTo::All => {
                self.totals.clear();
                self.groups = 0;
            }
            EmitTo::First(n) => {
                drop_first(&mut self.totals, n);
                self.groups = self.groups.saturating_sub(n);
            }
        }
    }

    fn merge_lists(&mut self, states: &[ArrayRef], group_of: impl Fn(usize) -> usize) {
        let (keys, totals) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        let (k, t) = (keys.values().as_primitive::<Int64Type>(), totals.values().as_primitive::<Float64Type>());
        let offsets = keys.offsets();
        for row in 0..keys.len() {
            if keys.is_null(row) {
                continue;
            }
            let g = group_of(row);
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                self.add(g, k.value(i), t.value(i));
            }
        }
    }
}

impl GroupsAccumulator for TopSumGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups = self.groups.max(total_num_groups);
        let (keys, x) = (values[0].as_primitive::<Int64Type>(), values[1].as_primitive::<Float64Type>());
        let rows: Vec<usize> = (0..keys.len()).collect();
        each(&rows, keys, opt_filter, |row, key| {
            if x.is_valid(row) {
                self.add(group_indices[row], key, x.value(row));
            }
        });
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let out = self.values(emitted(emit_to, self.groups));
        self.forget(emit_to);
        Ok(out)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let out = self.lists(emitted(emit_to, self.groups));
        self.forget(emit_to);
        Ok(out)
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.groups = self.groups.max(total_num_groups);
        self.merge_lists(values, |row| group_indices[row]);
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let mut single = TopSumGroups::new(self.n);
        let rows: Vec<usize> = (0..values[0].len()).collect();
        single.update_batch(values, &rows, opt_filter, rows.len())?;
        Ok(single.lists(rows.len()))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.totals.capacity() * (size_of::<((usize, i64), f64)>() + 1)
    }
}

/// The accumulator of an aggregate without groups: one group.
#[derive(Debug)]
struct TopSumAccumulator(TopSumGroups);

impl Accumulator for TopSumAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let zeros = vec![0; values[0].len()];
        self.0.update_batch(values, &zeros, None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        ScalarValue::try_from_array(&self.0.values(1), 0)
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.lists(1).iter().map(|a| ScalarValue::try_from_array(a, 0)).collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.groups = 1;
        self.0.merge_lists(states, |_| 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn floats(a: &ArrayRef) -> Vec<Option<f64>> {
        a.as_primitive::<Float64Type>().iter().collect()
    }

    #[test]
    fn top_persons_totals_per_group_ignore_absent_values_and_survive_partial_states() {
        let batch = |k: Vec<i64>, x: Vec<Option<f64>>| -> Vec<ArrayRef> {
            vec![Arc::new(Int64Array::from(k)), Arc::new(Float64Array::from(x))]
        };
        let mut left = TopSumGroups::new(2);
        // Group 0: person 1 twice (5 + 5), person 2 (3), person 3 absent (null); group 1: person 4 (1).
        left.update_batch(
            &batch(vec![1, 1, 2, 3, 4], vec![Some(5.0), Some(5.0), Some(3.0), None, Some(1.0)]),
            &[0, 0, 0, 0, 1],
            None,
            3,
        )
        .expect("update");
        let mut right = TopSumGroups::new(2);
        right.update_batch(&batch(vec![2, 7], vec![Some(4.0), Some(2.0)]), &[0, 0], None, 1).expect("update");
        let mut total = TopSumGroups::new(2);
        total.merge_batch(&left.state(EmitTo::All).expect("state"), &[0, 1, 2], 3).expect("merge");
        total.merge_batch(&right.state(EmitTo::All).expect("state"), &[0], 3).expect("merge");
        // Group 0 totals: 10, 7, 2 → top two 17; group 1: 1; group 2: nobody.
        assert_eq!(floats(&total.evaluate(EmitTo::First(1)).expect("evaluate")), vec![Some(17.0)]);
        assert_eq!(floats(&total.evaluate(EmitTo::All).expect("evaluate")), vec![Some(1.0), None]);
    }

    #[test]
    fn without_groups_one_total() {
        let mut acc = TopSumAccumulator(TopSumGroups::new(1));
        let k: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 1]));
        let x: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 3.0, 1.5]));
        acc.update_batch(&[k, x]).expect("update");
        assert_eq!(acc.evaluate().expect("evaluate"), ScalarValue::Float64(Some(3.0)));
    }
}
