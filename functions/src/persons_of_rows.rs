//! `samkor_persons_of_rows(record_key)`: [`samkor_persons`](crate::persons_udaf)
//! over rows known to be distinct persons.
//!
//! Where every row is a different person (a table holding one row per
//! identity number, read through filters and projections only), a cell's
//! distinct persons are its rows with a record key and its key is the sum of
//! those keys modulo 2³²: a count and a sum per group, no set of keys. The
//! result is packed as `samkor_persons` packs it, and equals it on such rows.
//! Only a node puts this function into a plan, after checking that the rows
//! are distinct persons (`samkor-node`'s `one_per_person`); it exists in no
//! session, so no query can call it.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::PersonsCell;
use crate::keyed::each;

/// The function's name (in plans and `EXPLAIN` only).
pub const PERSONS_OF_ROWS_FN: &str = "samkor_persons_of_rows";

#[derive(Debug, PartialEq, Eq, Hash)]
struct PersonsOfRows {
    signature: Signature,
}

/// The aggregate function.
pub fn persons_of_rows_udaf() -> AggregateUDF {
    AggregateUDF::from(PersonsOfRows { signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable) })
}

impl AggregateUDFImpl for PersonsOfRows {
    fn name(&self) -> &str {
        PERSONS_OF_ROWS_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [DataType::Int64] => Ok(DataType::Int64),
            other => plan_err!("{PERSONS_OF_ROWS_FN} takes a record key, not {other:?}"),
        }
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneCell(CellSums::default())))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(CellSums::default()))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new("persons", DataType::Int64, false)),
            Arc::new(Field::new("key", DataType::Int64, false)),
        ])
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }
}

/// Per group: the rows with a record key, and the sum of their keys mod 2³².
#[derive(Debug, Default)]
struct CellSums {
    persons: Vec<u64>,
    keys: Vec<u32>,
}

impl CellSums {
    fn grow(&mut self, groups: usize) {
        if self.persons.len() < groups {
            self.persons.resize(groups, 0);
            self.keys.resize(groups, 0);
        }
    }

    fn add(&mut self, group: usize, persons: u64, key: u32) {
        self.persons[group] += persons;
        self.keys[group] = self.keys[group].wrapping_add(key);
    }

    fn take(&mut self, emit_to: EmitTo) -> (Vec<u64>, Vec<u32>) {
        (emit_to.take_needed(&mut self.persons), emit_to.take_needed(&mut self.keys))
    }
}

fn int64s(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

impl GroupsAccumulator for CellSums {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let keys = values[0].as_primitive::<Int64Type>();
        if datafusion::arrow::array::Array::null_count(keys) == 0 && opt_filter.is_none() {
            for (&g, &k) in group_indices.iter().zip(keys.values()) {
                self.add(g, 1, k as u32);
            }
        } else {
            each(keys, opt_filter, |row, k| self.add(group_indices[row], 1, k as u32));
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let (persons, keys) = self.take(emit_to);
        Ok(int64s(persons.into_iter().zip(keys).map(|(persons, key)| PersonsCell { persons, key }.pack())))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (persons, keys) = self.take(emit_to);
        Ok(vec![int64s(persons.into_iter().map(|p| p as i64)), int64s(keys.into_iter().map(i64::from))])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.grow(total_num_groups);
        let (persons, keys) = (values[0].as_primitive::<Int64Type>(), values[1].as_primitive::<Int64Type>());
        for (row, &g) in group_indices.iter().enumerate() {
            self.add(g, persons.value(row) as u64, keys.value(row) as u32);
        }
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let keys = values[0].as_primitive::<Int64Type>();
        let (mut persons, mut sums) = (vec![0i64; keys.len()], vec![0i64; keys.len()]);
        each(keys, opt_filter, |row, k| {
            persons[row] = 1;
            sums[row] = i64::from(k as u32);
        });
        Ok(vec![int64s(persons.into_iter()), int64s(sums.into_iter())])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.persons.capacity() * 8 + self.keys.capacity() * 4
    }
}

/// The one-group form (an aggregate without `GROUP BY`).
#[derive(Debug)]
struct OneCell(CellSums);

impl Accumulator for OneCell {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let groups = vec![0; values[0].len()];
        self.0.update_batch(values, &groups, None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.grow(1);
        Ok(ScalarValue::Int64(Some(PersonsCell { persons: self.0.persons[0], key: self.0.keys[0] }.pack())))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.grow(1);
        Ok(vec![
            ScalarValue::Int64(Some(self.0.persons[0] as i64)),
            ScalarValue::Int64(Some(i64::from(self.0.keys[0]))),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let groups = vec![0; states[0].len()];
        self.0.merge_batch(states, &groups, 1)
    }
}

#[cfg(test)]
mod tests;
