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

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::keyed::{KeyMap, drop_first, each, emitted, list_array};

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

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(PersonsGroups::default()))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let item = Arc::new(Field::new_list_field(DataType::Int64, true));
        Ok(vec![Arc::new(Field::new("record_keys", DataType::List(item), true))])
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }
}

/// The persons of every group: one table of (group, record key) for all
/// groups, and per group its running cell (persons and key sum).
#[derive(Debug, Default)]
struct PersonsGroups {
    seen: KeyMap<(usize, i64), ()>,
    cells: Vec<PersonsCell>,
}

impl PersonsGroups {
    fn insert(&mut self, group: usize, key: i64) {
        if self.seen.insert((group, key), ()).is_none() {
            let cell = &mut self.cells[group];
            cell.persons += 1;
            cell.key = cell.key.wrapping_add(key as u32);
        }
    }

    fn grow(&mut self, total: usize) {
        if self.cells.len() < total {
            self.cells.resize(total, PersonsCell::default());
        }
    }

    /// The packed cells of the first `n` groups.
    fn values(&self, n: usize) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(self.cells[..n].iter().map(|c| c.pack())))
    }

    /// The record keys of each of the first `n` groups, one list a group.
    fn lists(&self, n: usize) -> ArrayRef {
        let lengths: Vec<usize> = self.cells[..n].iter().map(|c| c.persons as usize).collect();
        let mut starts: Vec<usize> = lengths
            .iter()
            .scan(0, |at, l| {
                let s = *at;
                *at += l;
                Some(s)
            })
            .collect();
        let mut keys = vec![0i64; lengths.iter().sum()];
        for &(g, k) in self.seen.keys() {
            if g < n {
                keys[starts[g]] = k;
                starts[g] += 1;
            }
        }
        list_array::<Int64Type>(keys, lengths)
    }

    fn forget(&mut self, emit_to: EmitTo) {
        match emit_to {
            EmitTo::All => {
                self.seen.clear();
                self.cells.clear();
            }
            EmitTo::First(n) => {
                drop_first(&mut self.seen, n);
                let _ = emit_to.take_needed(&mut self.cells);
            }
        }
    }

    fn merge_lists(&mut self, lists: &ArrayRef, group_of: impl Fn(usize) -> usize) {
        let lists = lists.as_list::<i32>();
        let keys = lists.values().as_primitive::<Int64Type>();
        let offsets = lists.offsets();
        for row in 0..lists.len() {
            if lists.is_null(row) {
                continue;
            }
            let g = group_of(row);
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                if keys.is_valid(i) {
                    self.insert(g, keys.value(i));
                }
            }
        }
    }
}

impl GroupsAccumulator for PersonsGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        each(group_indices, values[0].as_primitive::<Int64Type>(), opt_filter, |g, k| self.insert(g, k));
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let out = self.values(emitted(emit_to, self.cells.len()));
        self.forget(emit_to);
        Ok(out)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let out = self.lists(emitted(emit_to, self.cells.len()));
        self.forget(emit_to);
        Ok(vec![out])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.grow(total_num_groups);
        self.merge_lists(&values[0], |row| group_indices[row]);
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let keys = values[0].as_primitive::<Int64Type>();
        let rows: Vec<usize> = (0..keys.len()).collect();
        let (mut kept, mut lengths) = (Vec::new(), vec![0usize; keys.len()]);
        each(&rows, keys, opt_filter, |row, k| {
            kept.push(k);
            lengths[row] = 1;
        });
        Ok(vec![list_array::<Int64Type>(kept, lengths)])
    }

    fn size(&self) -> usize {
        size_of::<Self>()
            + self.seen.capacity() * (size_of::<(usize, i64)>() + 1)
            + self.cells.capacity() * size_of::<PersonsCell>()
    }
}

/// The accumulator of an aggregate without groups: one group.
#[derive(Debug, Default)]
struct PersonsAccumulator(PersonsGroups);

impl Accumulator for PersonsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let zeros = vec![0; values[0].len()];
        self.0.update_batch(values, &zeros, None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.grow(1);
        ScalarValue::try_from_array(&self.0.values(1), 0)
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.grow(1);
        Ok(vec![ScalarValue::try_from_array(&self.0.lists(1), 0)?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.grow(1);
        self.0.merge_lists(&states[0], |_| 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn cells(array: &ArrayRef) -> Vec<PersonsCell> {
        array.as_primitive::<Int64Type>().values().iter().map(|v| PersonsCell::unpack(*v)).collect()
    }

    #[test]
    fn groups_count_their_own_persons_through_partial_states_and_partial_emits() {
        let keys = |v: Vec<i64>| -> Vec<ArrayRef> { vec![Arc::new(Int64Array::from(v))] };
        // Partial aggregates on two partitions, merged into a final one.
        let mut left = PersonsGroups::default();
        left.update_batch(&keys(vec![1, 2, 1, 9]), &[0, 0, 1, 2], None, 3).expect("update");
        let mut right = PersonsGroups::default();
        let filter = BooleanArray::from(vec![true, true, false]);
        right.update_batch(&keys(vec![2, 3, 4]), &[1, 0, 0], Some(&filter), 2).expect("update");
        let mut total = PersonsGroups::default();
        total.merge_batch(&left.state(EmitTo::All).expect("state"), &[0, 1, 2], 3).expect("merge");
        total.merge_batch(&right.state(EmitTo::All).expect("state"), &[0, 1], 3).expect("merge");
        // Group 0: keys 1, 2, 3 (4 filtered out); group 1: 1, 2; group 2: 9.
        let first = cells(&total.evaluate(EmitTo::First(1)).expect("evaluate"));
        assert_eq!(first, vec![PersonsCell { persons: 3, key: 6 }]);
        let rest = cells(&total.evaluate(EmitTo::All).expect("evaluate"));
        assert_eq!(rest, vec![PersonsCell { persons: 2, key: 3 }, PersonsCell { persons: 1, key: 9 }]);
        // Rows passed on unaggregated give the same cells once merged.
        let mut direct = PersonsGroups::default();
        let state = left.convert_to_state(&keys(vec![5, 5, 6]), None).expect("convert");
        direct.merge_batch(&state, &[0, 0, 0], 1).expect("merge");
        assert_eq!(cells(&direct.evaluate(EmitTo::All).expect("evaluate")), vec![PersonsCell { persons: 2, key: 11 }]);
    }

    #[test]
    fn pack_round_trips() {
        let c = PersonsCell { persons: 123_456, key: 0xdead_beef };
        assert_eq!(PersonsCell::unpack(c.pack()), c);
    }
}
