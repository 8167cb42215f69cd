//! Per-group state keyed by record keys, shared by the aggregate functions
//! that look at persons (`samkor_persons`, `samkor_top_sum`).
//!
//! Record keys are outputs of a keyed pseudo-random function, so hashing them
//! again (SipHash, DataFusion's `RandomState`) buys nothing: one multiply
//! spreads their bits over the table. Each group's state is one small hash
//! table; the group accumulators keep them in a vector indexed by DataFusion's
//! group index and hand them over as lists in the partial aggregates' state.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, ListArray, PrimitiveArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, Field};
use datafusion::logical_expr::EmitTo;

/// A hasher for values that are already uniformly distributed.
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(29) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

pub(crate) type KeyBuild = BuildHasherDefault<KeyHasher>;
pub(crate) type KeyMap<K, V> = std::collections::HashMap<K, V, KeyBuild>;

/// Calls `f(group, value)` for every row with a value that the filter (a
/// `FILTER (WHERE …)` clause) keeps.
pub(crate) fn each<T: ArrowPrimitiveType>(
    group_indices: &[usize],
    values: &PrimitiveArray<T>,
    filter: Option<&BooleanArray>,
    mut f: impl FnMut(usize, T::Native),
) {
    let raw = values.values();
    for (row, &group) in group_indices.iter().enumerate() {
        if values.is_valid(row) && filter.is_none_or(|m| m.is_valid(row) && m.value(row)) {
            f(group, raw[row]);
        }
    }
}

/// Removes the entries of the first `n` groups and renumbers the rest from 0
/// (what `EmitTo::First(n)` asks after emitting them).
pub(crate) fn drop_first<V>(map: &mut KeyMap<(usize, i64), V>, n: usize) {
    let old = std::mem::take(map);
    map.reserve(old.len());
    for ((g, k), v) in old {
        if g >= n {
            map.insert((g - n, k), v);
        }
    }
}

/// How many groups an `EmitTo` covers.
pub(crate) fn emitted(emit_to: EmitTo, groups: usize) -> usize {
    match emit_to {
        EmitTo::All => groups,
        EmitTo::First(n) => n.min(groups),
    }
}
/// A list array: `lengths[i]` consecutive `values` per row, no null rows.
pub(crate) fn list_array<T: ArrowPrimitiveType>(values: Vec<T::Native>, lengths: Vec<usize>) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(T::DATA_TYPE, true));
    let values: PrimitiveArray<T> = PrimitiveArray::from_iter_values(values);
    Arc::new(ListArray::new(field, OffsetBuffer::from_lengths(lengths), Arc::new(values), None::<NullBuffer>))
}
