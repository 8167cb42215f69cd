//! `samkor_exact_sum(x)`: the sum of Float64 values, rounded once.
//!
//! DataFusion's `sum` rounds after every addition, so its last bits follow
//! the order of the rows and how they were split among partial aggregates:
//! the same query gives `8137.000000000002` from one plan and
//! `8136.999999999998` from another (files, or the same files through a
//! cluster; persons split by record key or not). Here each group keeps its
//! sum without error, as Shewchuk's non-overlapping partials (what Python's
//! `math.fsum` does: usually one to three numbers), partial states pass them
//! on unrounded, and the answer is the exact sum rounded to the nearest
//! double, ties to even. It is the same whatever the order and grouping.
//!
//! Values that are not finite are summed apart: the answer is their sum
//! (`inf`, `-inf` or `NaN`), as in DataFusion. A group whose partial totals
//! pass the range of a double gives ±`inf` (DataFusion's `sum` may give it or
//! not, by order). No value: null.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::keyed::each;

/// The function's SQL name.
pub const EXACT_SUM_FN: &str = "samkor_exact_sum";

/// A sum kept without rounding error.
#[derive(Debug, Clone, Default, PartialEq)]
struct ExactSum {
    /// Non-overlapping, in increasing magnitude; their exact sum is the sum.
    partials: Vec<f64>,
    /// The sum of the values that are not finite (0 if none).
    special: f64,
    seen: bool,
}

impl ExactSum {
    /// Adds `x` without error (Shewchuk's grow-expansion, as `math.fsum`).
    fn add(&mut self, x: f64) {
        self.seen = true;
        if !x.is_finite() {
            self.special += x;
            return;
        }
        let mut x = x;
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        if x.is_finite() {
            self.partials.push(x);
        } else {
            // The finite values' total passed the range of a double.
            self.special += x;
        }
    }

    /// Adds another sum's values.
    fn merge(&mut self, partials: &[f64], special: f64) {
        partials.iter().for_each(|&p| self.add(p));
        self.special += special;
        self.seen = true;
    }

    /// The exact sum rounded to the nearest double (ties to even); `None`
    /// without a value.
    fn value(&self) -> Option<f64> {
        if !self.seen {
            return None;
        }
        // 0 if there were none; otherwise ±inf or NaN (NaN != 0 too).
        if self.special != 0.0 {
            return Some(self.special);
        }
        // +0 for an exact zero, as DataFusion's sums (which start from +0) give.
        Some(0.0 + rounded(&self.partials))
    }

    /// The two state columns of `sums`.
    fn state_of(sums: &[ExactSum]) -> Vec<ArrayRef> {
        let values: Vec<f64> = sums.iter().flat_map(|s| s.partials.iter().copied()).collect();
        let offsets = OffsetBuffer::from_lengths(sums.iter().map(|s| s.partials.len()));
        let nulls = NullBuffer::from(sums.iter().map(|s| s.seen).collect::<Vec<_>>());
        let partials = ListArray::new(partial_field(), offsets, Arc::new(Float64Array::from(values)), Some(nulls));
        let specials: Float64Array = sums.iter().map(|s| Some(s.special)).collect();
        vec![Arc::new(partials), Arc::new(specials)]
    }

    /// Adds the state of row `row` of the two columns `state` (of [`Self::state_of`]).
    fn merge_row(&mut self, state: &[ArrayRef], row: usize) {
        let lists = state[0].as_list::<i32>();
        if lists.is_valid(row) {
            let partials = lists.value(row);
            self.merge(
                partials.as_primitive::<Float64Type>().values(),
                state[1].as_primitive::<Float64Type>().value(row),
            );
        }
    }
}

/// A partial of a state's list: never null (the list is, without a value).
fn partial_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Float64, false))
}

/// The sum of non-overlapping partials in increasing magnitude, correctly
/// rounded (the last step of `math.fsum`).
fn rounded(p: &[f64]) -> f64 {
    let Some(mut n) = p.len().checked_sub(1) else { return 0.0 };
    let mut hi = p[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = p[n];
        hi = x + y;
        lo = y - (hi - x);
        if lo != 0.0 {
            break;
        }
    }
    // Half-way between two doubles: the partials below decide the direction.
    if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        if y == x - hi {
            hi = x;
        }
    }
    hi
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ExactSumFunction {
    signature: Signature,
}

/// The aggregate function.
pub fn exact_sum_udaf() -> AggregateUDF {
    AggregateUDF::from(ExactSumFunction { signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable) })
}

impl AggregateUDFImpl for ExactSumFunction {
    fn name(&self) -> &str {
        EXACT_SUM_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneSum(ExactSums::default())))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(ExactSums::default()))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new("exact_sum_partials", DataType::List(partial_field()), true)),
            Arc::new(Field::new("exact_sum_special", DataType::Float64, false)),
        ])
    }
}

/// Per group, its [`ExactSum`].
#[derive(Debug, Default)]
struct ExactSums {
    sums: Vec<ExactSum>,
    /// Partials held by all groups (for `size`, which DataFusion asks after
    /// every batch: not a pass over the groups).
    partials: usize,
}

impl ExactSums {
    fn add(&mut self, group: usize, x: f64) {
        let sum = &mut self.sums[group];
        let before = sum.partials.len();
        sum.add(x);
        self.partials = self.partials + sum.partials.len() - before;
    }

    fn take(&mut self, emit_to: EmitTo) -> Vec<ExactSum> {
        let taken = emit_to.take_needed(&mut self.sums);
        self.partials -= taken.iter().map(|s| s.partials.len()).sum::<usize>();
        taken
    }

    fn merge_rows(&mut self, values: &[ArrayRef], group: impl Fn(usize) -> usize) {
        for row in 0..values[0].len() {
            let g = group(row);
            let before = self.sums[g].partials.len();
            self.sums[g].merge_row(values, row);
            self.partials = self.partials + self.sums[g].partials.len() - before;
        }
    }
}

impl GroupsAccumulator for ExactSums {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.sums.resize_with(total_num_groups, ExactSum::default);
        each(values[0].as_primitive::<Float64Type>(), opt_filter, |row, x| self.add(group_indices[row], x));
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let sums = self.take(emit_to);
        Ok(Arc::new(sums.iter().map(ExactSum::value).collect::<Float64Array>()))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(ExactSum::state_of(&self.take(emit_to)))
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.sums.resize_with(total_num_groups, ExactSum::default);
        self.merge_rows(values, |row| group_indices[row]);
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let mut sums = vec![ExactSum::default(); values[0].len()];
        each(values[0].as_primitive::<Float64Type>(), opt_filter, |row, x| sums[row].add(x));
        Ok(ExactSum::state_of(&sums))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.sums.capacity() * size_of::<ExactSum>() + self.partials * size_of::<f64>()
    }
}

/// The accumulator of an aggregate without groups.
#[derive(Debug)]
struct OneSum(ExactSums);

impl Accumulator for OneSum {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.update_batch(values, &vec![0; values[0].len()], None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.0.sums.first().and_then(ExactSum::value)))
    }

    fn size(&self) -> usize {
        GroupsAccumulator::size(&self.0)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.sums.resize_with(1, ExactSum::default);
        ExactSum::state_of(&self.0.sums).iter().map(|a| ScalarValue::try_from_array(a, 0)).collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.sums.resize_with(1, ExactSum::default);
        self.0.merge_rows(states, |_| 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(values: &[f64]) -> Option<f64> {
        let mut s = ExactSum::default();
        values.iter().for_each(|&x| s.add(x));
        s.value()
    }

    /// A small deterministic generator of awkward values (decimals, wide
    /// exponents, cancellation).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let digits = (state >> 40) as f64 / 10.0;
                let scale = [1.0, 1e-3, 1e9, 1e-12, 7.0][(state % 5) as usize];
                if state & 1 == 0 { digits * scale } else { -digits * scale * 0.999 }
            })
            .collect()
    }

    #[test]
    fn the_sum_is_rounded_once_whatever_the_order_and_grouping() {
        assert_eq!(exact(&[0.1; 10]), Some(1.0), "the naive sum gives 0.9999999999999999");
        assert_eq!(exact(&[1e100, 1.0, -1e100, 1e-100]), Some(1.0));
        assert_eq!(exact(&[2f64.powi(53), 1.0, 2f64.powi(-60)]), Some(2f64.powi(53) + 2.0), "a tie broken by the rest");
        assert_eq!(exact(&[2f64.powi(53), 1.0]), Some(2f64.powi(53)), "a tie, to even");
        let xs = values(5_000, 7);
        let forward = exact(&xs);
        let mut reversed = xs.clone();
        reversed.reverse();
        assert_eq!(exact(&reversed), forward);
        // Split in three partial states, merged in another order.
        let states: Vec<ExactSum> = xs
            .chunks(1_700)
            .map(|c| {
                let mut s = ExactSum::default();
                c.iter().for_each(|&x| s.add(x));
                s
            })
            .collect();
        let mut merged = ExactSum::default();
        for s in states.iter().rev() {
            merged.merge(&s.partials, s.special);
        }
        assert_eq!(merged.value(), forward);
        // Against the same sum in 128-bit integers: multiples of 2^40 beside
        // multiples of 2^-10, which a running double cannot hold together.
        let fixed: Vec<f64> = (0..2_000i64)
            .map(|i| {
                let k = (i * 7_919 % 100_003 - 50_000) as f64;
                if i % 3 == 0 { k * 2f64.powi(40) } else { k / 1024.0 }
            })
            .collect();
        let scaled: i128 = fixed.iter().map(|&x| (x * 1024.0) as i128).sum();
        assert_eq!(exact(&fixed), Some(scaled as f64 / 1024.0), "i128 to f64 rounds to nearest, ties to even");
        assert_ne!(exact(&fixed), Some(fixed.iter().sum()), "the running sum rounds on the way");
    }

    #[test]
    fn no_value_is_null_and_values_that_are_not_finite_are_summed_apart() {
        assert_eq!(exact(&[]), None);
        assert_eq!(exact(&[0.0]), Some(0.0));
        assert_eq!(exact(&[1.0, f64::INFINITY, 2.0]), Some(f64::INFINITY));
        assert!(exact(&[f64::INFINITY, f64::NEG_INFINITY]).is_some_and(f64::is_nan));
        assert_eq!(exact(&[f64::MAX, f64::MAX]), Some(f64::INFINITY));
    }

    #[test]
    fn grouped_states_merge_to_the_sums_of_the_groups() {
        let xs = values(3_000, 11);
        let array: ArrayRef = Arc::new(Float64Array::from(xs.clone()));
        let groups: Vec<usize> = (0..xs.len()).map(|i| i % 3).collect();
        let (mut left, mut right, mut total) = (ExactSums::default(), ExactSums::default(), ExactSums::default());
        let half = |first: bool| BooleanArray::from((0..xs.len()).map(|i| (i < 1_000) == first).collect::<Vec<_>>());
        left.update_batch(std::slice::from_ref(&array), &groups, Some(&half(true)), 3).expect("update");
        right.update_batch(std::slice::from_ref(&array), &groups, Some(&half(false)), 3).expect("update");
        total.merge_batch(&right.state(EmitTo::All).expect("state"), &[0, 1, 2], 3).expect("merge");
        total.merge_batch(&left.state(EmitTo::All).expect("state"), &[0, 1, 2], 3).expect("merge");
        let got = total.evaluate(EmitTo::All).expect("evaluate");
        for g in 0..3 {
            let of_group: Vec<f64> = xs.iter().zip(&groups).filter(|(_, h)| **h == g).map(|(x, _)| *x).collect();
            assert_eq!(got.as_primitive::<Float64Type>().value(g), exact(&of_group).expect("values"), "group {g}");
        }
        assert_eq!(total.partials, 0, "every group emitted");
    }
}
