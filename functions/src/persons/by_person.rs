//! `samkor_persons` over persons split among hash partitions of their
//! record key ([`crate::by_person`]): a partial aggregate's groups hold all
//! of their persons' rows, so its state is the group's cell (persons and
//! key) and the final adds cells. As for the companions, each partial
//! checks the record keys it sees belong to one partition and names it,
//! and the final refuses two cells of one group from the same partition.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use super::{PERSONS_FN, PersonsCell, PersonsGroups, cell};
use crate::by_person::{Merged, PartitionOf, merge_own_groups, unaggregated};

/// The fields of a partial state: the partition its persons belong to (null
/// when it saw none) and the group's cell, packed ([`PersonsCell::pack`]).
pub(super) fn state_fields() -> Vec<FieldRef> {
    vec![Arc::new(Field::new("partition", DataType::Int64, true)), Arc::new(Field::new("cell", DataType::Int64, false))]
}

/// Partial: a partition's persons per group. Final: cells added per group.
#[derive(Debug)]
pub(super) struct ByPersonGroups {
    inner: PersonsGroups,
    partition: PartitionOf,
    merged: Vec<Merged<PersonsCell>>,
}

impl ByPersonGroups {
    pub(super) fn new(partitions: usize) -> Self {
        ByPersonGroups { inner: PersonsGroups::default(), partition: PartitionOf::new(partitions), merged: Vec::new() }
    }
}

impl GroupsAccumulator for ByPersonGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.partition.check(values[0].as_primitive::<Int64Type>())?;
        self.inner.update_batch(values, group_indices, opt_filter, total_num_groups)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let cells: Int64Array = self.inner.groups.take(emit_to).iter_mut().map(|g| cell(g).pack()).collect();
        let partition: Int64Array = std::iter::repeat_n(self.partition.own(), cells.len()).collect();
        Ok(vec![Arc::new(partition), Arc::new(cells)])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        Merged::grow(&mut self.merged, total_num_groups, PersonsCell::default);
        let (partition, cells) = (values[0].as_primitive::<Int64Type>(), values[1].as_primitive::<Int64Type>());
        for (row, &g) in group_indices.iter().enumerate() {
            let merged = &mut self.merged[g];
            merged.note_partition(partition.is_valid(row).then(|| partition.value(row)), PERSONS_FN)?;
            let c = PersonsCell::unpack(cells.value(row));
            merged.value.persons += c.persons;
            merged.value.key = merged.value.key.wrapping_add(c.key);
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let own = self.inner.groups.runs.len();
        merge_own_groups(self, own)?;
        let merged = emit_to.take_needed(&mut self.merged);
        Ok(Arc::new(merged.into_iter().map(|m| m.value.pack()).collect::<Int64Array>()))
    }

    fn convert_to_state(&self, _values: &[ArrayRef], _opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        unaggregated(PERSONS_FN)
    }

    fn size(&self) -> usize {
        self.inner.size() + self.merged.capacity() * size_of::<Merged<PersonsCell>>() + self.partition.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<Option<i64>> {
        (0..300i64).map(|i| (i % 13 != 0).then_some((i * 7 % 61) * 104_729 - 3_000_000)).collect()
    }

    fn partition_of(key: i64) -> i64 {
        let mut p = PartitionOf::new(2);
        p.check(&Int64Array::from(vec![key])).expect("one key");
        p.own().expect("a key")
    }

    #[test]
    fn cells_of_split_persons_add_up_to_the_cell_of_the_lists() {
        let groups: Vec<usize> = (0..300).map(|i| i % 2).collect();
        let all: ArrayRef = Arc::new(Int64Array::from(keys()));
        let mut whole = PersonsGroups::default();
        whole.update_batch(&[all], &groups, None, 2).expect("update");
        let expected = whole.evaluate(EmitTo::All).expect("evaluate");
        let mut last = ByPersonGroups::new(2);
        for p in 0..2 {
            let rows: Vec<usize> = (0..300).filter(|&i| keys()[i].map_or(0, partition_of) == p).collect();
            let part: ArrayRef = Arc::new(rows.iter().map(|&i| keys()[i]).collect::<Int64Array>());
            let g: Vec<usize> = rows.iter().map(|&i| groups[i]).collect();
            let mut partial = ByPersonGroups::new(2);
            partial.update_batch(&[part], &g, None, 2).expect("update");
            last.merge_batch(&partial.state(EmitTo::All).expect("state"), &[0, 1], 2).expect("merge");
        }
        assert_eq!(&last.evaluate(EmitTo::All).expect("evaluate"), &expected);
        // Persons not split: a partial with both partitions' keys fails.
        let all: ArrayRef = Arc::new(Int64Array::from(keys()));
        assert!(ByPersonGroups::new(2).update_batch(&[all], &groups, None, 2).is_err());
    }
}
