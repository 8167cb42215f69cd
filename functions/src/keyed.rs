//! Per-group state keyed by record keys, shared by the aggregate functions
//! that look at persons (`samkor_persons`, `samkor_top_sum`).
//!
//! A group's persons are kept as [`Runs`]: (record key, value) pairs appended
//! as rows arrive and compacted now and then by a radix sort on the key,
//! equal keys combined into one entry. A hash table of ten million persons
//! spends most of its time waiting for memory (every insert a cache and TLB
//! miss, measured as three quarters of a `count(*)` over ten million persons);
//! the radix sort reads and writes memory in order. A buffer never grows past
//! twice its distinct keys plus [`MIN_RUN`], so memory follows the persons,
//! not the rows.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, ListArray, PrimitiveArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, Field};
use datafusion::logical_expr::EmitTo;

/// Entries a buffer may hold before its first compaction.
pub(crate) const MIN_RUN: usize = 4096;

/// How a value of a key that appears again combines with the first.
pub(crate) trait Combine: Copy + Default {
    fn combine(&mut self, other: Self);
}

impl Combine for () {
    fn combine(&mut self, _other: ()) {}
}

impl Combine for f64 {
    fn combine(&mut self, other: f64) {
        *self += other;
    }
}

/// A group's (record key, value) pairs; after [`Runs::distinct`] one entry
/// per key, values combined.
#[derive(Debug, Default, Clone)]
pub(crate) struct Runs<V> {
    items: Vec<(i64, V)>,
    /// The first `clean` entries are compacted (distinct keys).
    clean: usize,
}

impl<V: Combine> Runs<V> {
    /// Adds a pair; returns how many bytes the buffer grew by (or, after a
    /// compaction, shrank by: negative), for the accumulator's size.
    pub(crate) fn push(&mut self, key: i64, value: V) -> isize {
        let before = self.items.capacity();
        self.items.push((key, value));
        if self.items.len() >= (2 * self.clean).max(MIN_RUN) {
            self.compact();
        }
        (self.items.capacity() as isize - before as isize) * size_of::<(i64, V)>() as isize
    }

    fn compact(&mut self) {
        if self.clean == self.items.len() {
            return;
        }
        radsort::sort_by_key(&mut self.items, |e| e.0);
        self.items.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1.combine(later.1);
            }
            same
        });
        self.clean = self.items.len();
        if self.items.capacity() > 4 * self.items.len().max(MIN_RUN) {
            self.items.shrink_to((2 * self.clean).max(MIN_RUN));
        }
    }

    /// One entry per key (in an order that depends only on the keys).
    pub(crate) fn distinct(&mut self) -> &[(i64, V)] {
        self.compact();
        &self.items
    }

    pub(crate) fn size(&self) -> usize {
        self.items.capacity() * size_of::<(i64, V)>()
    }
}

/// The groups' [`Runs`] with their bytes counted as they change:
/// DataFusion asks for the size after every batch, so it may not cost a pass
/// over the groups (an inner aggregate has one group per person).
#[derive(Debug)]
pub(crate) struct Groups<V> {
    pub(crate) runs: Vec<Runs<V>>,
    bytes: isize,
}

impl<V> Default for Groups<V> {
    fn default() -> Self {
        Groups { runs: Vec::new(), bytes: 0 }
    }
}

impl<V: Combine> Groups<V> {
    pub(crate) fn push(&mut self, group: usize, key: i64, value: V) {
        self.bytes += self.runs[group].push(key, value);
    }

    /// Makes sure there is a group for every index below `total`.
    pub(crate) fn grow(&mut self, total: usize) {
        if self.runs.len() < total {
            self.runs.resize_with(total, Runs::default);
        }
    }

    /// The groups an `EmitTo` hands over, taken out.
    pub(crate) fn take(&mut self, emit_to: EmitTo) -> Vec<Runs<V>> {
        let taken = match emit_to {
            EmitTo::All => std::mem::take(&mut self.runs),
            EmitTo::First(n) => {
                let rest = self.runs.split_off(n.min(self.runs.len()));
                std::mem::replace(&mut self.runs, rest)
            }
        };
        self.bytes = if self.runs.is_empty() { 0 } else { self.runs.iter().map(|r| r.size() as isize).sum() };
        taken
    }

    pub(crate) fn size(&self) -> usize {
        self.runs.capacity() * size_of::<Runs<V>>() + self.bytes.max(0) as usize
    }
}

/// Calls `f(row, value)` for every row with a value that the filter (a
/// `FILTER (WHERE …)` clause) keeps.
pub(crate) fn each<T: ArrowPrimitiveType>(
    values: &PrimitiveArray<T>,
    filter: Option<&BooleanArray>,
    mut f: impl FnMut(usize, T::Native),
) {
    let raw = values.values();
    for (row, &v) in raw.iter().enumerate() {
        if values.is_valid(row) && filter.is_none_or(|m| m.is_valid(row) && m.value(row)) {
            f(row, v);
        }
    }
}

/// A list array: `lengths[i]` consecutive `values` per row, no null rows.
pub(crate) fn list_array<T: ArrowPrimitiveType>(values: Vec<T::Native>, lengths: Vec<usize>) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(T::DATA_TYPE, true));
    let values: PrimitiveArray<T> = PrimitiveArray::from_iter_values(values);
    Arc::new(ListArray::new(field, OffsetBuffer::from_lengths(lengths), Arc::new(values), None::<NullBuffer>))
}

/// Calls `f(row, values)` for each non-null list of a list array.
pub(crate) fn each_list<T: ArrowPrimitiveType>(lists: &ArrayRef, mut f: impl FnMut(usize, &[T::Native])) {
    use datafusion::arrow::array::AsArray;
    let lists = lists.as_list::<i32>();
    let values = lists.values().as_primitive::<T>().values();
    let offsets = lists.offsets();
    for row in 0..lists.len() {
        if !lists.is_null(row) {
            f(row, &values[offsets[row] as usize..offsets[row + 1] as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_combine_equal_keys_and_stay_bounded() {
        let mut runs = Runs::<f64>::default();
        for i in 0..100_000i64 {
            runs.push(i % 1000 - 500, 1.0);
            assert!(runs.items.len() < 2 * 1000 + MIN_RUN, "bounded by the distinct keys");
        }
        let d = runs.distinct();
        assert_eq!(d.len(), 1000);
        assert!(d.iter().all(|(_, t)| *t == 100.0));
    }
}
