//! `samkor_quantile(x, record_key, p, k)`: a quantile that is never one
//! person's own value.
//!
//! The rows are ordered by `x`; the window around the quantile's rank
//! (`p·(N−1)`, as `percentile_cont`) widens, one row at a time on alternate
//! sides, until it holds the values of at least `k` distinct persons
//! (record keys); the result is the mean of the values in the window. Null
//! when there are fewer than `k` persons. The coordinator replaces `median`,
//! `percentile_cont`, `approx_percentile_cont` and `approx_median` by it, and
//! releases it only where at least `k` persons lie on each side of the rank.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility};

/// The function's SQL name.
pub const QUANTILE_FN: &str = "samkor_quantile";

#[derive(Debug, PartialEq, Eq, Hash)]
struct Quantile {
    signature: Signature,
}

/// The aggregate function.
pub fn quantile_udaf() -> AggregateUDF {
    let types = vec![DataType::Float64, DataType::Int64, DataType::Float64, DataType::Int64];
    AggregateUDF::from(Quantile { signature: Signature::exact(types, Volatility::Immutable) })
}

impl AggregateUDFImpl for Quantile {
    fn name(&self) -> &str {
        QUANTILE_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::Float64, DataType::Int64, DataType::Float64, DataType::Int64] => Ok(DataType::Float64),
            other => plan_err!("{QUANTILE_FN} takes (value, record key, p, k), not {other:?}"),
        }
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(QuantileAccumulator::default()))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
        Ok(vec![
            Arc::new(Field::new("values", list(DataType::Float64), true)),
            Arc::new(Field::new("record_keys", list(DataType::Int64), true)),
            Arc::new(Field::new("p", DataType::Float64, true)),
            Arc::new(Field::new("k", DataType::Int64, true)),
        ])
    }
}

#[derive(Debug, Default)]
struct QuantileAccumulator {
    values: Vec<f64>,
    keys: Vec<i64>,
    p: Option<f64>,
    k: Option<i64>,
}

impl QuantileAccumulator {
    fn push(&mut self, x: &ArrayRef, rk: &ArrayRef) {
        let (x, rk) = (x.as_primitive::<Float64Type>(), rk.as_primitive::<Int64Type>());
        for (x, rk) in x.iter().zip(rk.iter()) {
            if let (Some(x), Some(rk)) = (x, rk)
                && !x.is_nan()
            {
                self.values.push(x);
                self.keys.push(rk);
            }
        }
    }

    fn first<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(a: &ArrayRef) -> Option<T::Native> {
        a.as_primitive::<T>().iter().flatten().next()
    }

    fn result(&self) -> Option<f64> {
        let (p, k) = (self.p?, usize::try_from(self.k?).ok()?.max(1));
        let mut order: Vec<usize> = (0..self.values.len()).collect();
        order.sort_by(|&a, &b| self.values[a].total_cmp(&self.values[b]).then(self.keys[a].cmp(&self.keys[b])));
        window_mean(&order.iter().map(|&i| (self.values[i], self.keys[i])).collect::<Vec<_>>(), p, k)
    }
}

/// The mean of the values in the narrowest window around rank `p·(N−1)` of
/// `sorted` that holds at least `k` distinct persons.
fn window_mean(sorted: &[(f64, i64)], p: f64, k: usize) -> Option<f64> {
    let n = sorted.len();
    if n == 0 || !(0.0..=1.0).contains(&p) {
        return None;
    }
    let pos = p * (n - 1) as f64;
    let (mut lo, mut hi) = (pos.floor() as usize, pos.ceil() as usize);
    let mut persons: HashSet<i64> = (lo..=hi).map(|i| sorted[i].1).collect();
    let mut left = pos - lo as f64 >= hi as f64 - pos;
    while persons.len() < k {
        let can_left = lo > 0;
        let can_right = hi + 1 < n;
        if !can_left && !can_right {
            return None;
        }
        if (left && can_left) || !can_right {
            lo -= 1;
            persons.insert(sorted[lo].1);
        } else {
            hi += 1;
            persons.insert(sorted[hi].1);
        }
        left = !left;
    }
    let window = &sorted[lo..=hi];
    Some(window.iter().map(|(x, _)| x).sum::<f64>() / window.len() as f64)
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [x, rk, p, k] = values else { return plan_err!("{QUANTILE_FN} takes four arguments") };
        self.push(x, rk);
        self.p = self.p.or_else(|| Self::first::<Float64Type>(p));
        self.k = self.k.or_else(|| Self::first::<Int64Type>(k));
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.result()))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.values.capacity() * 8 + self.keys.capacity() * 8
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.values.iter().map(|v| ScalarValue::Float64(Some(*v))).collect();
        let keys: Vec<ScalarValue> = self.keys.iter().map(|v| ScalarValue::Int64(Some(*v))).collect();
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Float64)),
            ScalarValue::List(ScalarValue::new_list_nullable(&keys, &DataType::Int64)),
            ScalarValue::Float64(self.p),
            ScalarValue::Int64(self.k),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [values, keys, p, k] = states else { return plan_err!("{QUANTILE_FN}: unexpected state") };
        let (values, keys) = (values.as_list::<i32>(), keys.as_list::<i32>());
        for i in 0..values.len() {
            if !values.is_null(i) && !keys.is_null(i) {
                self.push(&values.value(i), &keys.value(i));
            }
        }
        self.p = self.p.or_else(|| Self::first::<Float64Type>(p));
        self.k = self.k.or_else(|| Self::first::<Int64Type>(k));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_distinct_persons_is_a_mean_of_k_values() {
        let rows: Vec<(f64, i64)> = (1..=9).map(|i| (f64::from(i), i64::from(i))).collect();
        // Rank 4 (value 5); k = 3 takes 4, 5, 6.
        assert_eq!(window_mean(&rows, 0.5, 3), Some(5.0));
        // k = 2 at an even rank widens to one side: 5 and 4 (left first when centred).
        assert_eq!(window_mean(&rows, 0.5, 2), Some(4.5));
    }

    #[test]
    fn one_persons_many_rows_count_once() {
        // Persons 1 and 2 have three rows each around the middle; k = 3 must reach person 3.
        let rows = vec![(1.0, 3), (2.0, 1), (2.0, 1), (2.0, 1), (3.0, 2), (3.0, 2), (3.0, 2)];
        // The window widens from rank 3 alternately left and right until person 3 is in:
        // rows 0..=5, values 1, 2, 2, 2, 3, 3.
        let m = window_mean(&rows, 0.5, 3).expect("three persons");
        assert!((m - 13.0 / 6.0).abs() < 1e-12, "{m}");
        assert_eq!(window_mean(&rows, 0.5, 4), None);
    }

    #[test]
    fn extremes_are_not_one_persons_value() {
        let rows: Vec<(f64, i64)> = (0..20).map(|i| (f64::from(i) * 10.0, i64::from(i))).collect();
        let top = window_mean(&rows, 1.0, 5).expect("five persons");
        assert_eq!(top, (150.0 + 160.0 + 170.0 + 180.0 + 190.0) / 5.0);
    }
}
