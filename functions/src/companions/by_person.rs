//! `samkor_companions` over persons split among hash partitions of their
//! record key ([`crate::by_person`]). A partial aggregate then holds every
//! row of its persons and no other partial holds any of them, so a group's
//! persons there are complete: its state is the group's [`Summary`] (per
//! condition the persons and their key, per magnitude the `n` largest
//! totals, the extreme keys) and its sums, and the final aggregate adds
//! summaries instead of inserting every person a second time.
//!
//! Each partial checks that every record key it sees belongs to one
//! partition ([`PartitionOf`]) and names it in its state; the final refuses
//! to add two summaries of one group from the same partition. A plan that
//! did not split the persons fails instead of counting a person twice.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use super::{COMPANIONS_FN, CompanionGroups, Summary, Sums};
use crate::PersonsCell;
use crate::by_person::{Merged, PartitionOf, merge_own_groups, unaggregated};

/// The fields of a partial state: the partition its persons belong to
/// (null when it saw none), the cells of the conditions (packed as
/// [`PersonsCell`]), `n` slots per magnitude for the largest totals (null
/// where fewer persons have a value), the extreme keys, the sums.
pub(super) fn state_fields() -> Vec<FieldRef> {
    let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
    [
        Field::new("partition", DataType::Int64, true),
        Field::new("cells", list(DataType::Int64), true),
        Field::new("tops", list(DataType::Float64), true),
        Field::new("least", DataType::Int64, true),
        Field::new("largest", DataType::Int64, true),
        Field::new("sums", list(DataType::Float64), true),
    ]
    .into_iter()
    .map(Arc::new)
    .collect()
}

/// Partial: the persons of one partition per group, summarised when handed
/// on. Final: the summaries and sums added per group.
#[derive(Debug)]
pub(super) struct ByPersonGroups<const D: usize> {
    inner: CompanionGroups<D>,
    partition: PartitionOf,
    merged: Vec<Merged<(Summary<D>, Sums<D>)>>,
}

impl<const D: usize> ByPersonGroups<D> {
    pub(super) fn new(inner: CompanionGroups<D>, partitions: usize) -> Self {
        ByPersonGroups { inner, partition: PartitionOf::new(partitions), merged: Vec::new() }
    }

    /// The partial state of summarised groups.
    fn arrays(&self, summaries: &[Summary<D>], sums: &[Sums<D>]) -> Vec<ArrayRef> {
        let (rows, m, n) = (summaries.len(), self.inner.m, self.inner.n);
        let partition: ArrayRef = Arc::new(std::iter::repeat_n(self.partition.own(), rows).collect::<Int64Array>());
        let cells: Vec<Option<i64>> = summaries.iter().flat_map(|s| s.cells.iter().map(|c| Some(c.pack()))).collect();
        let tops = summaries.iter().flat_map(|s| s.tops.iter().flat_map(|t| (0..n).map(|k| t.get(k).copied())));
        let least: ArrayRef = Arc::new(summaries.iter().map(|s| s.least).collect::<Int64Array>());
        let largest: ArrayRef = Arc::new(summaries.iter().map(|s| s.largest).collect::<Int64Array>());
        let sums = sums.iter().flat_map(|s| (0..D).map(|j| s.get(j)));
        vec![
            partition,
            lists(Arc::new(Int64Array::from(cells)), m, rows),
            lists(Arc::new(tops.collect::<Float64Array>()), D * n, rows),
            least,
            largest,
            lists(Arc::new(sums.collect::<Float64Array>()), D, rows),
        ]
    }

    /// Row `row` of a partial state: its summary and sums.
    fn summary_at(&self, values: &[ArrayRef], row: usize) -> (Summary<D>, Sums<D>) {
        let (m, n) = (self.inner.m, self.inner.n);
        let at = |column: usize| values[column].as_list::<i32>().offsets()[row] as usize;
        let cells = values[1].as_list::<i32>().values().as_primitive::<Int64Type>();
        let tops = values[2].as_list::<i32>().values().as_primitive::<Float64Type>();
        let sums = values[5].as_list::<i32>().values().as_primitive::<Float64Type>();
        let optional = |a: &Int64Array| a.is_valid(row).then(|| a.value(row));
        let mut summary = Summary::empty(m);
        for (i, cell) in summary.cells.iter_mut().enumerate() {
            *cell = PersonsCell::unpack(cells.value(at(1) + i));
        }
        for (j, top) in summary.tops.iter_mut().enumerate() {
            let slots = at(2) + j * n..at(2) + (j + 1) * n;
            top.extend(slots.filter(|&k| tops.is_valid(k)).map(|k| tops.value(k)));
        }
        summary.least = optional(values[3].as_primitive::<Int64Type>());
        summary.largest = optional(values[4].as_primitive::<Int64Type>());
        let mut group_sums = Sums::default();
        for j in (0..D).filter(|j| sums.is_valid(at(5) + j)) {
            group_sums.add(j, sums.value(at(5) + j));
        }
        (summary, group_sums)
    }
}

/// `per_row` consecutive values per row.
fn lists(values: ArrayRef, per_row: usize, rows: usize) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    Arc::new(ListArray::new(field, OffsetBuffer::from_repeated_length(per_row, rows), values, None))
}

impl<const D: usize> GroupsAccumulator for ByPersonGroups<D> {
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
        let mut taken = self.inner.groups.take(emit_to);
        let mut sums = emit_to.take_needed(&mut self.inner.sums);
        sums.resize(taken.len(), Sums::default());
        let summaries: Vec<Summary<D>> = taken.iter_mut().map(|g| self.inner.summary(g)).collect();
        Ok(self.arrays(&summaries, &sums))
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        let m = self.inner.m;
        Merged::grow(&mut self.merged, total_num_groups, || (Summary::empty(m), Sums::default()));
        let partition = values[0].as_primitive::<Int64Type>();
        for (row, &g) in group_indices.iter().enumerate() {
            self.merged[g].note_partition(partition.is_valid(row).then(|| partition.value(row)), COMPANIONS_FN)?;
            let (summary, sums) = self.summary_at(values, row);
            let (merged, merged_sums) = &mut self.merged[g].value;
            merged.add(&summary, self.inner.n);
            (0..D).filter_map(|j| sums.get(j).map(|x| (j, x))).for_each(|(j, x)| merged_sums.add(j, x));
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let own = self.inner.groups.runs.len();
        merge_own_groups(self, own)?;
        let merged = emit_to.take_needed(&mut self.merged);
        let (summaries, sums): (Vec<Summary<D>>, Vec<Sums<D>>) = merged.into_iter().map(|m| m.value).unzip();
        Ok(self.inner.struct_of(&summaries, &sums))
    }

    fn convert_to_state(&self, _values: &[ArrayRef], _opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        unaggregated(COMPANIONS_FN)
    }

    fn size(&self) -> usize {
        let per_group =
            size_of::<Merged<(Summary<D>, Sums<D>)>>() + self.inner.m * size_of::<PersonsCell>() + D * self.inner.n * 8;
        self.inner.size() + self.merged.capacity() * per_group + self.partition.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyed::Groups;

    /// (group, record key, condition, magnitude).
    type Row = (usize, Option<i64>, Option<bool>, Option<f64>);

    /// Rows of three groups, a person's rows spread over groups and over the batch.
    fn rows() -> Vec<Row> {
        (0..400i64)
            .map(|i| {
                let key = (i * 7 % 53) * 1_000_003 - 20_000_000;
                let group = (i % 3) as usize;
                let x = (i % 11 != 0).then_some((i % 17) as f64 - 4.0);
                (group, (i % 29 != 0).then_some(key), (i % 5 != 0).then_some(i % 2 == 0), x)
            })
            .collect()
    }

    fn arrays(rows: &[Row]) -> (Vec<ArrayRef>, Vec<usize>) {
        let keys: ArrayRef = Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>());
        let n: ArrayRef = Arc::new(Int64Array::from(vec![2; rows.len()]));
        let always: ArrayRef = Arc::new(BooleanArray::from(vec![true; rows.len()]));
        let cond: ArrayRef = Arc::new(rows.iter().map(|r| r.2).collect::<BooleanArray>());
        let x: ArrayRef = Arc::new(rows.iter().map(|r| r.3).collect::<Float64Array>());
        (vec![keys, n, always, cond, x], rows.iter().map(|r| r.0).collect())
    }

    fn lists() -> CompanionGroups<1> {
        CompanionGroups { m: 2, n: 2, groups: Groups::default(), sums: Vec::new() }
    }

    fn by_person(partitions: usize) -> ByPersonGroups<1> {
        ByPersonGroups::new(lists(), partitions)
    }

    /// The partition a record key goes to among `partitions`.
    fn partition_of(key: i64, partitions: usize) -> i64 {
        let mut p = PartitionOf::new(partitions);
        p.check(&Int64Array::from(vec![key])).expect("one key");
        p.own().expect("a key")
    }

    /// The rows of partition `p` (those without a record key in partition 0).
    fn split(p: i64, partitions: usize) -> Vec<Row> {
        rows().into_iter().filter(|r| r.1.map_or(0, |k| partition_of(k, partitions)) == p).collect()
    }

    #[test]
    fn summaries_of_split_persons_add_up_to_the_cells_of_the_lists() {
        let (values, g) = arrays(&rows());
        let mut whole = lists();
        whole.update_batch(&values, &g, None, 3).expect("update");
        let expected = whole.evaluate(EmitTo::All).expect("evaluate");
        for partitions in [2, 3] {
            let mut last = by_person(partitions);
            for p in 0..partitions as i64 {
                let (values, g) = arrays(&split(p, partitions));
                let mut partial = by_person(partitions);
                partial.update_batch(&values, &g, None, 3).expect("update");
                let state = partial.state(EmitTo::All).expect("state");
                let groups = state[0].len();
                last.merge_batch(&state, &(0..groups).collect::<Vec<_>>(), 3).expect("merge");
            }
            assert_eq!(&last.evaluate(EmitTo::All).expect("evaluate"), &expected, "{partitions} partitions");
        }
        // One aggregate over the rows of one partition, evaluated directly.
        let (values, g) = arrays(&split(1, 2));
        let (mut single, mut plain) = (by_person(2), lists());
        single.update_batch(&values, &g, None, 3).expect("update");
        plain.update_batch(&values, &g, None, 3).expect("update");
        assert_eq!(&single.evaluate(EmitTo::All).expect("evaluate"), &plain.evaluate(EmitTo::All).expect("evaluate"));
    }

    #[test]
    fn persons_that_were_not_split_fail_rather_than_count_twice() {
        // A partial given persons of two partitions.
        let (values, g) = arrays(&rows());
        let err = by_person(2).update_batch(&values, &g, None, 3).expect_err("two partitions");
        assert!(err.to_string().contains("not split by partition"), "{err}");
        // Two partials of one partition (the same persons twice) for one group.
        let (values, g) = arrays(&split(0, 2));
        let mut partial = by_person(2);
        partial.update_batch(&values, &g, None, 3).expect("update");
        let state = partial.state(EmitTo::All).expect("state");
        let mut last = by_person(2);
        last.merge_batch(&state, &[0, 1, 2], 3).expect("first");
        let err = last.merge_batch(&state, &[0, 1, 2], 3).expect_err("the same partition again");
        assert!(err.to_string().contains("were not split by partition"), "{err}");
        // Rows passed on unaggregated cannot be summarised.
        assert!(by_person(2).convert_to_state(&values, None).is_err());
    }
}
