//! `samkor_persons(record_key)`: the distinct persons behind a cell and the
//! cell's key, in one pass over one 64-bit column.
//!
//! A cell's key is the sum of its distinct persons' record keys modulo 2³²
//! (the low 32 bits of each record key), so the same set of persons has the
//! same key whatever the query, its order or its partitioning. The result
//! packs both into one `Int64`: persons in the high 32 bits, key in the low
//! 32 ([`PersonsCell::unpack`]); the coordinator unpacks it before anything
//! is released. Rows whose argument is null (a `CASE` without a match) are
//! not counted.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility};

/// The function's SQL name.
pub const PERSONS_FN: &str = "samkor_persons";

/// What `samkor_persons` says of one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PersonsCell {
    /// Distinct persons.
    pub persons: u64,
    /// Σ record keys mod 2³².
    pub key: u32,
}

impl PersonsCell {
    pub fn pack(self) -> i64 {
        ((self.persons.min(i32::MAX as u64) as i64) << 32) | i64::from(self.key)
    }

    pub fn unpack(v: i64) -> PersonsCell {
        PersonsCell { persons: (v >> 32).max(0) as u64, key: (v & 0xffff_ffff) as u32 }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Persons {
    signature: Signature,
}

/// The aggregate function.
pub fn persons_udaf() -> AggregateUDF {
    AggregateUDF::from(Persons { signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable) })
}

impl AggregateUDFImpl for Persons {
    fn name(&self) -> &str {
        PERSONS_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::Int64] => Ok(DataType::Int64),
            other => plan_err!("{PERSONS_FN} takes a record key, not {other:?}"),
        }
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(PersonsAccumulator::default()))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let item = Arc::new(Field::new_list_field(DataType::Int64, true));
        Ok(vec![Arc::new(Field::new("record_keys", DataType::List(item), true))])
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }
}

#[derive(Debug, Default)]
struct PersonsAccumulator {
    keys: HashSet<i64>,
}

impl PersonsAccumulator {
    fn insert(&mut self, array: &ArrayRef) {
        let values = array.as_primitive::<Int64Type>();
        if values.null_count() == 0 {
            self.keys.extend(values.values().iter().copied());
        } else {
            self.keys.extend(values.iter().flatten());
        }
    }

    fn cell(&self) -> PersonsCell {
        let key = self.keys.iter().fold(0u32, |acc, k| acc.wrapping_add(*k as u32));
        PersonsCell { persons: self.keys.len() as u64, key }
    }
}

impl Accumulator for PersonsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if let Some(array) = values.first() {
            self.insert(array);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.cell().pack())))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.keys.capacity() * (size_of::<i64>() + 1)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.keys.iter().map(|k| ScalarValue::Int64(Some(*k))).collect();
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int64))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(lists) = states.first() else { return Ok(()) };
        let lists = lists.as_list::<i32>();
        for i in 0..lists.len() {
            if !lists.is_null(i) {
                self.insert(&lists.value(i));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn cell(batches: &[Vec<Option<i64>>]) -> PersonsCell {
        let mut acc = PersonsAccumulator::default();
        for b in batches {
            let a: ArrayRef = Arc::new(Int64Array::from(b.clone()));
            acc.update_batch(&[a]).expect("update");
        }
        PersonsCell::unpack(match acc.evaluate().expect("evaluate") {
            ScalarValue::Int64(Some(v)) => v,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn counts_distinct_keys_and_sums_them_once() {
        let c = cell(&[vec![Some(5), Some(7), None, Some(5)], vec![Some(-1)]]);
        assert_eq!(c.persons, 3);
        assert_eq!(c.key, 5u32.wrapping_add(7).wrapping_add(u32::MAX));
    }

    #[test]
    fn partitioning_does_not_change_the_cell() {
        let whole = cell(&[vec![Some(1), Some(2), Some(3), Some(2)]]);
        let mut a = PersonsAccumulator::default();
        a.update_batch(&[Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef]).expect("update");
        let mut b = PersonsAccumulator::default();
        b.update_batch(&[Arc::new(Int64Array::from(vec![3, 2])) as ArrayRef]).expect("update");
        let state = b.state().expect("state");
        let lists: Vec<ArrayRef> = state.iter().map(|s| s.to_array().expect("array")).collect();
        a.merge_batch(&lists).expect("merge");
        assert_eq!(
            PersonsCell::unpack(match a.evaluate().unwrap() {
                ScalarValue::Int64(Some(v)) => v,
                _ => unreachable!(),
            }),
            whole
        );
    }

    #[test]
    fn pack_round_trips() {
        let c = PersonsCell { persons: 123_456, key: 0xdead_beef };
        assert_eq!(PersonsCell::unpack(c.pack()), c);
    }
}
