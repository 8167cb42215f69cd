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

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::keyed::{Combining, Groups, OneGroup, PerGroup, Runs, each, each_list, list_array};

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

mod by_person;

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Persons {
    signature: Signature,
    /// Over persons split among this many hash partitions of their record
    /// key ([`crate::by_person`]): partial states are cells, not lists.
    pub(crate) partitions: Option<usize>,
}

/// The aggregate function.
pub fn persons_udaf() -> AggregateUDF {
    persons_over(None)
}

/// The aggregate function over persons split among `partitions` hash
/// partitions of their record key ([`crate::by_person`]).
pub(crate) fn persons_by_person_udaf(partitions: usize) -> AggregateUDF {
    persons_over(Some(partitions))
}

fn persons_over(partitions: Option<usize>) -> AggregateUDF {
    let signature = Signature::exact(vec![DataType::Int64], Volatility::Immutable);
    AggregateUDF::from(Persons { signature, partitions })
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
        if self.partitions.is_some() {
            return plan_err!("{PERSONS_FN} over partitioned persons needs a GROUP BY");
        }
        Ok(Box::new(OneGroup(PersonsGroups::default())))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(match self.partitions {
            None => Box::new(PersonsGroups::default()),
            Some(p) => Box::new(by_person::ByPersonGroups::new(p)),
        })
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if self.partitions.is_some() {
            return Ok(by_person::state_fields());
        }
        let item = Arc::new(Field::new_list_field(DataType::Int64, true));
        Ok(vec![Arc::new(Field::new("record_keys", DataType::List(item), true))])
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }
}

/// The persons of every group, one [`Runs`] of record keys a group.
#[derive(Debug, Default)]
struct PersonsGroups {
    groups: Groups<()>,
}

fn cell(runs: &mut Runs<()>) -> PersonsCell {
    let keys = runs.distinct();
    PersonsCell { persons: keys.len() as u64, key: keys.iter().fold(0u32, |acc, (k, _)| acc.wrapping_add(*k as u32)) }
}

/// The packed cells of `groups`.
fn values(groups: &mut [Runs<()>]) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(groups.iter_mut().map(|g| cell(g).pack())))
}

/// The distinct record keys of each group, one list a group.
fn lists(groups: &mut [Runs<()>]) -> ArrayRef {
    let (mut keys, mut lengths) = (Vec::new(), Vec::with_capacity(groups.len()));
    for g in groups {
        let distinct = g.distinct();
        lengths.push(distinct.len());
        keys.extend(distinct.iter().map(|(k, _)| *k));
    }
    list_array::<Int64Type>(keys, lengths)
}

impl GroupsAccumulator for PersonsGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.grow(total_num_groups);
        self.groups.reserve_rows(group_indices, total_num_groups);
        let keys = values[0].as_primitive::<Int64Type>();
        let mut combining = Combining::new(&mut self.groups, keys.values(), total_num_groups);
        each(keys, opt_filter, |row, k| combining.push(group_indices[row], k, ()));
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(values(&mut self.groups.take(emit_to)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![lists(&mut self.groups.take(emit_to))])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.groups.grow(total_num_groups);
        each_list::<Int64Type>(&values[0], |row, keys| {
            let g = group_indices[row];
            self.groups.reserve(g, keys.len());
            keys.iter().for_each(|k| self.groups.push(g, *k, ()));
        });
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let keys = values[0].as_primitive::<Int64Type>();
        let (mut kept, mut lengths) = (Vec::new(), vec![0usize; keys.len()]);
        each(keys, opt_filter, |row, k| {
            kept.push(k);
            lengths[row] = 1;
        });
        Ok(vec![list_array::<Int64Type>(kept, lengths)])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.size()
    }
}

impl PerGroup for PersonsGroups {
    type Value = ();

    fn groups(&mut self) -> &mut Groups<()> {
        &mut self.groups
    }

    fn values(&self, groups: &mut [Runs<()>]) -> ArrayRef {
        values(groups)
    }

    fn lists(&self, groups: &mut [Runs<()>]) -> Vec<ArrayRef> {
        vec![lists(groups)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(batches: &[Vec<Option<i64>>]) -> PersonsCell {
        let mut acc = OneGroup(PersonsGroups::default());
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
        let mut a = OneGroup(PersonsGroups::default());
        a.update_batch(&[Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef]).expect("update");
        let mut b = OneGroup(PersonsGroups::default());
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
