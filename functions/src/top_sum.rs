//! `samkor_top_sum(record_key, x, n)`: the sum of the `n` largest per-person
//! totals of `x` in a group, for the dominance rule (the `n` persons who
//! contribute most to a sum, against the sum of all persons).
//!
//! One pass in the aggregate itself: per group the record keys with their
//! Σx ([`crate::keyed`]), merged across partitions as lists, ranked when the
//! group is evaluated. Rows whose key or `x` is null are not counted: a person with no
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

use crate::keyed::{Groups, OneGroup, PerGroup, Runs, each, each_list, list_array};

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
        Ok(Box::new(OneGroup(TopSumGroups::new(top_n(&args)?))))
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

/// Per group, the persons' running totals.
#[derive(Debug)]
struct TopSumGroups {
    n: usize,
    groups: Groups<f64>,
}

impl TopSumGroups {
    fn new(n: usize) -> TopSumGroups {
        TopSumGroups { n, groups: Groups::default() }
    }
}

/// The sum of the `n` largest totals of each group; null for a group without persons.
fn values(groups: &mut [Runs<f64>], n: usize) -> ArrayRef {
    let mut totals = Vec::new();
    Arc::new(Float64Array::from_iter(groups.iter_mut().map(|g| {
        totals.clear();
        totals.extend(g.distinct().iter().map(|(_, t)| *t));
        if totals.is_empty() {
            return None;
        }
        let k = n.min(totals.len());
        totals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        Some(totals[..k].iter().sum::<f64>())
    })))
}

/// Each group's record keys and totals, as two aligned lists a group.
fn lists(groups: &mut [Runs<f64>]) -> Vec<ArrayRef> {
    let (mut keys, mut totals, mut lengths) = (Vec::new(), Vec::new(), Vec::with_capacity(groups.len()));
    for g in groups {
        let distinct = g.distinct();
        lengths.push(distinct.len());
        keys.extend(distinct.iter().map(|e| e.0));
        totals.extend(distinct.iter().map(|e| e.1));
    }
    vec![list_array::<Int64Type>(keys, lengths.clone()), list_array::<Float64Type>(totals, lengths)]
}

impl GroupsAccumulator for TopSumGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.grow(total_num_groups);
        let (keys, x) = (values[0].as_primitive::<Int64Type>(), values[1].as_primitive::<Float64Type>());
        each(keys, opt_filter, |row, key| {
            if x.is_valid(row) {
                self.groups.push(group_indices[row], key, x.value(row));
            }
        });
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(values(&mut self.groups.take(emit_to), self.n))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(lists(&mut self.groups.take(emit_to)))
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.groups.grow(total_num_groups);
        let totals = values[1].as_list::<i32>();
        let totals = totals.values().as_primitive::<Float64Type>().values();
        let offsets = values[0].as_list::<i32>().offsets().clone();
        each_list::<Int64Type>(&values[0], |row, keys| {
            let (g, start) = (group_indices[row], offsets[row] as usize);
            for (i, k) in keys.iter().enumerate() {
                self.groups.push(g, *k, totals[start + i]);
            }
        });
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let (keys, x) = (values[0].as_primitive::<Int64Type>(), values[1].as_primitive::<Float64Type>());
        let (mut k, mut t, mut lengths) = (Vec::new(), Vec::new(), vec![0usize; keys.len()]);
        each(keys, opt_filter, |row, key| {
            if x.is_valid(row) {
                k.push(key);
                t.push(x.value(row));
                lengths[row] = 1;
            }
        });
        Ok(vec![list_array::<Int64Type>(k, lengths.clone()), list_array::<Float64Type>(t, lengths)])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.size()
    }
}

impl PerGroup for TopSumGroups {
    type Value = f64;

    fn groups(&mut self) -> &mut Groups<f64> {
        &mut self.groups
    }

    fn values(&self, groups: &mut [Runs<f64>]) -> ArrayRef {
        values(groups, self.n)
    }

    fn lists(&self, groups: &mut [Runs<f64>]) -> Vec<ArrayRef> {
        lists(groups)
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
        let mut acc = OneGroup(TopSumGroups::new(1));
        let k: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 1]));
        let x: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 3.0, 1.5]));
        acc.update_batch(&[k, x]).expect("update");
        assert_eq!(acc.evaluate().expect("evaluate"), ScalarValue::Float64(Some(3.0)));
    }
}
