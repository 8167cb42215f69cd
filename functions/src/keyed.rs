//! Per-group state keyed by record keys, shared by the aggregate functions
//! that look at persons (`samkor_persons`, `samkor_companions`).
//!
//! A group's persons are [`Runs`]: up to [`SMALL`] distinct record keys in a
//! hash table (it stays in the processor's caches), beyond that (record
//! key, value) pairs appended as rows arrive and compacted now and then by a
//! radix sort on the key, equal keys combined into one entry. A hash table of
//! ten million persons spends most of its time waiting for memory (every
//! insert a cache and TLB miss, measured as three quarters of a `count(*)`
//! over ten million persons); the radix sort reads and writes memory in
//! order. A buffer never grows past twice its distinct keys plus
//! [`MIN_RUN`], so memory follows the persons, not the rows. Once the
//! groups' state passes [`BEYOND_CACHE`] bytes (no longer in the last-level
//! cache, where each insert waits for memory), a group switches to runs at
//! [`SMALL_BEYOND_CACHE`] keys.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, ListArray, PrimitiveArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, Field};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{Accumulator, EmitTo, GroupsAccumulator};

/// Entries a buffer may hold before its first compaction.
pub(crate) const MIN_RUN: usize = 4096;

/// How a value of a key that appears again combines with the first.
pub(crate) trait Combine: Copy + Default {
    fn combine(&mut self, other: Self);
}

impl Combine for () {
    fn combine(&mut self, _other: ()) {}
}

/// Totals per key (the tests' runs of values).
#[cfg(test)]
impl Combine for f64 {
    fn combine(&mut self, other: f64) {
        *self += other;
    }
}

/// Distinct keys a group keeps in a hash table before it switches to sorted runs.
pub(crate) const SMALL: usize = 1 << 16;

/// Bytes of state beyond which the groups' tables no longer share the
/// processor's last-level cache: every insert then waits for memory.
const BEYOND_CACHE: isize = 16 << 20;

/// Distinct keys a group keeps in a hash table when the state is beyond the
/// cache: a larger group switches to sorted runs, read and written in order.
const SMALL_BEYOND_CACHE: usize = 1 << 13;

/// Bytes of state beyond which the groups' tables no longer share the
/// processor's second-level cache: a batch's pairs are then pushed group by
/// group ([`Combining`]).
const SPREAD_BEYOND: isize = 1 << 20;

/// Groups up to which a batch's rows per group are counted ([`Groups::reserve_rows`]).
const FEW_GROUPS: usize = 1024;

/// Record keys are outputs of a keyed pseudo-random function: one multiply
/// spreads them over a table (no second keyed hash needed).
#[derive(Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i64(&mut self, v: i64) {
        self.0 = (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type KeyMap<V> = std::collections::HashMap<i64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// A group's (record key, value) pairs; after [`Runs::distinct`] one entry
/// per key, values combined.
#[derive(Debug, Clone)]
pub(crate) enum Runs<V> {
    Small(KeyMap<V>),
    Large {
        items: Vec<(i64, V)>,
        /// The first `clean` entries are compacted (distinct keys).
        clean: usize,
    },
}

impl<V> Default for Runs<V> {
    fn default() -> Self {
        Runs::Small(KeyMap::default())
    }
}

impl<V: Combine> Runs<V> {
    /// Adds a pair, a table turning into sorted runs past `small` keys;
    /// returns how many bytes the state grew by (negative when it shrank),
    /// for the accumulator's size.
    #[inline(always)]
    pub(crate) fn push(&mut self, key: i64, value: V, small: usize) -> isize {
        let before = self.size() as isize;
        match self {
            Runs::Small(map) => {
                map.entry(key).and_modify(|v| v.combine(value)).or_insert(value);
                if map.len() > small {
                    let items: Vec<(i64, V)> = map.drain().collect();
                    *self = Runs::Large { clean: items.len(), items };
                }
            }
            Runs::Large { items, clean } => {
                items.push((key, value));
                if items.len() >= (2 * *clean).max(MIN_RUN) {
                    compact(items, clean);
                }
            }
        }
        self.size() as isize - before
    }

    /// Room for `additional` more keys without growing step by step (a
    /// table doubles and moves every key each time it fills).
    fn reserve(&mut self, additional: usize) {
        match self {
            Runs::Small(map) => map.reserve(additional.min(SMALL + 1 - map.len().min(SMALL))),
            Runs::Large { items, .. } => items.reserve(additional),
        }
    }

    /// One entry per key, in no particular order.
    pub(crate) fn distinct(&mut self) -> &[(i64, V)] {
        if let Runs::Small(map) = self {
            let items: Vec<(i64, V)> = map.drain().collect();
            *self = Runs::Large { clean: items.len(), items };
        }
        match self {
            Runs::Large { items, clean } => {
                compact(items, clean);
                items
            }
            Runs::Small(_) => unreachable!("converted above"),
        }
    }

    pub(crate) fn size(&self) -> usize {
        match self {
            Runs::Small(map) => map.capacity() * (size_of::<(i64, V)>() + 1),
            Runs::Large { items, .. } => items.capacity() * size_of::<(i64, V)>(),
        }
    }
}

fn compact<V: Combine>(items: &mut Vec<(i64, V)>, clean: &mut usize) {
    if *clean == items.len() {
        return;
    }
    radsort::sort_by_key(items, |e| e.0);
    items.dedup_by(|later, first| {
        let same = later.0 == first.0;
        if same {
            first.1.combine(later.1);
        }
        same
    });
    *clean = items.len();
    if items.capacity() > 4 * items.len().max(MIN_RUN) {
        items.shrink_to((2 * *clean).max(MIN_RUN));
    }
}

/// The groups' [`Runs`] with their bytes counted as they change:
/// DataFusion asks for the size after every batch, so it may not cost a pass
/// over the groups (an inner aggregate has one group per person).
#[derive(Debug)]
pub(crate) struct Groups<V> {
    pub(crate) runs: Vec<Runs<V>>,
    bytes: isize,
    /// [`Pending`]'s buffers, kept from batch to batch (allocated afresh,
    /// two buffers of a batch's pairs cost more page faults than they saved).
    scratch: Scratch<V>,
}

/// A batch's pairs as they came, and ordered by group.
type Scratch<V> = (Vec<(u32, i64, V)>, Vec<(i64, V)>);

impl<V> Default for Groups<V> {
    fn default() -> Self {
        Groups { runs: Vec::new(), bytes: 0, scratch: (Vec::new(), Vec::new()) }
    }
}

impl<V: Combine> Groups<V> {
    /// Inlined, so that a value built in registers is stored into its slot
    /// from there: passed through a copy on the stack and read back wider
    /// than it was written, every push stalled on store forwarding.
    #[inline(always)]
    pub(crate) fn push(&mut self, group: usize, key: i64, value: V) {
        let small = if self.bytes > BEYOND_CACHE { SMALL_BEYOND_CACHE } else { SMALL };
        self.bytes += self.runs[group].push(key, value, small);
    }

    /// Room in `group` for `additional` more keys: an upper bound known
    /// before they arrive (a list merged in, the rows of a batch).
    pub(crate) fn reserve(&mut self, group: usize, additional: usize) {
        let before = self.runs[group].size() as isize;
        self.runs[group].reserve(additional);
        self.bytes += self.runs[group].size() as isize - before;
    }

    /// Reserves, in each of a few groups, room for its rows of a batch. With
    /// many groups (one per person in an inner aggregate) the count would
    /// cost more than the growth it saves.
    pub(crate) fn reserve_rows(&mut self, group_indices: &[usize], total_groups: usize) {
        if total_groups > FEW_GROUPS {
            return;
        }
        let mut rows = vec![0usize; total_groups];
        group_indices.iter().for_each(|&g| rows[g] += 1);
        for (g, n) in rows.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            self.reserve(g, n);
        }
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
        let scratch =
            self.scratch.0.capacity() * size_of::<(u32, i64, V)>() + self.scratch.1.capacity() * size_of::<(i64, V)>();
        self.runs.capacity() * size_of::<Runs<V>>() + self.bytes.max(0) as usize + scratch
    }
}

/// Groups one run of a key combines in before its pairs are pushed.
const RUN_GROUPS: usize = 16;

/// Rows of a batch looked at to tell whether it is sorted by person.
const SAMPLED_ROWS: usize = 256;

/// Pushes (group, record key, value) into [`Groups`], combining a run of
/// pushes of one key first: a register sorted by person has a person's rows
/// one after another, and they cost one insert per group they touch, not one
/// each. Where at least half of a batch's first rows repeat the key of the
/// row before (sorted by person), a run combines across up to
/// [`RUN_GROUPS`] groups (a person's dispensations interleave their
/// substances); otherwise each pair is pushed as it comes ([`Runs`] combines
/// a key's pairs anyway; a run one row long cost a store and, at the next
/// row, a wider reload of it that stalled on store forwarding).
///
/// Over a few groups (up to [`FEW_GROUPS`], a cell's persons) whose state
/// is beyond [`SPREAD_BEYOND`], the pairs of a batch are held and pushed
/// group by group when this is dropped ([`Pending`]): inserted as they came,
/// every insert went to another group's table, and together the tables no
/// longer fit the processor's nearer caches (Skåne by ATC at 1 M persons:
/// 40 tables of about 4 700 persons a partition), so that most inserts
/// waited for memory. A smaller state pushes directly: there holding the
/// pairs cost more than it saved (the hip query at 1 M).
pub(crate) struct Combining<'a, V: Combine> {
    groups: &'a mut Groups<V>,
    key: i64,
    run: [(usize, V); RUN_GROUPS],
    len: usize,
    /// Whether the batch is sorted by person: runs combine; if not, each
    /// pair is pushed as it comes.
    sorted: bool,
    /// The batch's pairs, held to be pushed group by group (few groups).
    pending: Option<Pending<V>>,
}

impl<'a, V: Combine> Combining<'a, V> {
    /// Pushes into `groups` (`total_groups` of them) the pairs of a batch
    /// whose record keys are `keys`.
    pub(crate) fn new(groups: &'a mut Groups<V>, keys: &[i64], total_groups: usize) -> Self {
        let sample = &keys[..keys.len().min(SAMPLED_ROWS)];
        let repeats = sample.windows(2).filter(|w| w[0] == w[1]).count();
        let sorted = 2 * repeats >= sample.len().max(2);
        let spread = groups.bytes > SPREAD_BEYOND && (2..=FEW_GROUPS).contains(&total_groups);
        let pending = spread.then(|| Pending::new(std::mem::take(&mut groups.scratch), total_groups, keys.len()));
        Combining { groups, key: 0, run: [(0, V::default()); RUN_GROUPS], len: 0, sorted, pending }
    }

    #[inline]
    pub(crate) fn push(&mut self, group: usize, key: i64, value: V) {
        if !self.sorted {
            self.emit(group, key, value);
            return;
        }
        if key == self.key {
            if let Some((_, v)) = self.run[..self.len].iter_mut().find(|(g, _)| *g == group) {
                v.combine(value);
                return;
            }
            if self.len < RUN_GROUPS {
                self.run[self.len] = (group, value);
                self.len += 1;
                return;
            }
        }
        self.flush();
        self.key = key;
        self.run[0] = (group, value);
        self.len = 1;
    }

    #[inline(always)]
    fn emit(&mut self, group: usize, key: i64, value: V) {
        match &mut self.pending {
            Some(pending) => pending.hold(group, key, value),
            None => self.groups.push(group, key, value),
        }
    }

    fn flush(&mut self) {
        for i in 0..self.len {
            let (g, v) = self.run[i];
            self.emit(g, self.key, v);
        }
        self.len = 0;
    }
}

impl<V: Combine> Drop for Combining<'_, V> {
    fn drop(&mut self) {
        self.flush();
        if let Some(pending) = self.pending.take() {
            pending.push_into(self.groups);
        }
    }
}

/// A batch's (group, key, value) in arrival order, and each group's count.
struct Pending<V> {
    pairs: Vec<(u32, i64, V)>,
    ordered: Vec<(i64, V)>,
    counts: Vec<u32>,
}

impl<V: Combine> Pending<V> {
    fn new((mut pairs, ordered): Scratch<V>, groups: usize, rows: usize) -> Self {
        pairs.clear();
        pairs.reserve(rows);
        Pending { pairs, ordered, counts: vec![0; groups] }
    }

    #[inline(always)]
    fn hold(&mut self, group: usize, key: i64, value: V) {
        self.pairs.push((group as u32, key, value));
        self.counts[group] += 1;
    }

    /// Orders the pairs by group (a counting sort: one pass to place each),
    /// then pushes each group's in arrival order.
    fn push_into(self, groups: &mut Groups<V>) {
        let Pending { pairs, mut ordered, counts } = self;
        let mut next: Vec<usize> = counts
            .iter()
            .scan(0usize, |start, &n| {
                let at = *start;
                *start += n as usize;
                Some(at)
            })
            .collect();
        ordered.clear();
        ordered.resize(pairs.len(), (0, V::default()));
        for &(g, k, v) in &pairs {
            let at = &mut next[g as usize];
            ordered[*at] = (k, v);
            *at += 1;
        }
        let mut start = 0;
        for (g, &n) in counts.iter().enumerate() {
            let end = start + n as usize;
            ordered[start..end].iter().for_each(|&(k, v)| groups.push(g, k, v));
            start = end;
        }
        groups.scratch = (pairs, ordered);
    }
}

/// What a group accumulator over [`Groups`] gives for its groups, without
/// taking them (an aggregate without `GROUP BY` is one group: [`OneGroup`]).
pub(crate) trait PerGroup: GroupsAccumulator {
    type Value: Combine;
    fn groups(&mut self) -> &mut Groups<Self::Value>;
    /// The result per group, one row each.
    fn values(&self, groups: &mut [Runs<Self::Value>]) -> ArrayRef;
    /// The partial state per group, one row each.
    fn lists(&self, groups: &mut [Runs<Self::Value>]) -> Vec<ArrayRef>;
}

/// The accumulator of an aggregate without groups: its group accumulator
/// with every row in group 0.
#[derive(Debug)]
pub(crate) struct OneGroup<G>(pub(crate) G);

impl<G: PerGroup + std::fmt::Debug + Sync + 'static> Accumulator for OneGroup<G> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let zeros = vec![0; values[0].len()];
        self.0.update_batch(values, &zeros, None, 1)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.groups().grow(1);
        let mut runs = std::mem::take(&mut self.0.groups().runs);
        let out = self.0.values(&mut runs);
        self.0.groups().runs = runs;
        ScalarValue::try_from_array(&out, 0)
    }

    fn size(&self) -> usize {
        GroupsAccumulator::size(&self.0)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.groups().grow(1);
        let mut runs = std::mem::take(&mut self.0.groups().runs);
        let out = self.0.lists(&mut runs);
        self.0.groups().runs = runs;
        out.iter().map(|a| ScalarValue::try_from_array(a, 0)).collect()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let zeros = vec![0; states[0].len()];
        self.0.merge_batch(states, &zeros, 1)
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
    if values.null_count() == 0 && filter.is_none() {
        // Every row: no test per row.
        raw.iter().enumerate().for_each(|(row, &v)| f(row, v));
        return;
    }
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
    fn combining_runs_of_a_key_gives_the_same_groups_in_both_modes() {
        // (group, key, value): runs of one key in one group, the same key in
        // another group between, a key that comes back later, and a run over
        // more groups than a run holds (groups interleaved and repeated).
        let mut pushes =
            vec![(0, 5, 1.0), (0, 5, 2.0), (1, 5, 4.0), (0, 5, 8.0), (0, 6, 16.0), (0, 6, 32.0), (1, 6, 64.0)];
        pushes.extend((0..3 * RUN_GROUPS).map(|i| ((i * 7) % (RUN_GROUPS + 3), 9, i as f64)));
        pushes.extend([(2, 5, 128.0), (2, 9, 256.0)]);
        let groups = RUN_GROUPS + 3;
        let mut direct = Groups::<f64>::default();
        direct.grow(groups);
        for &(g, k, v) in &pushes {
            direct.push(g, k, v);
        }
        let sorted_pairs = |groups: &mut Groups<f64>| -> Vec<Vec<(i64, f64)>> {
            groups
                .take(EmitTo::All)
                .iter_mut()
                .map(|r| {
                    let mut d = r.distinct().to_vec();
                    d.sort_by_key(|e| e.0);
                    d
                })
                .collect()
        };
        let want = sorted_pairs(&mut direct);
        assert_eq!(want[0][0], (5, 11.0));
        // Key 9 reaches group 2 at i = 3, 22 and 41 (7i ≡ 2 mod 19), and once more.
        assert_eq!(want[2], vec![(5, 128.0), (9, 3.0 + 22.0 + 41.0 + 256.0)]);
        // The batch's keys choose the mode: sorted by person or not; the
        // state's size whether pairs are held and pushed group by group.
        for (keys, sorted) in [(vec![7i64; 300], true), ((0..300).collect(), false), (vec![], false)] {
            for spread in [false, true] {
                let mut combined = Groups::<f64>::default();
                combined.grow(groups);
                // Twice: the second batch reuses the first's buffers.
                for batch in 0..2 {
                    combined.bytes = if spread { SPREAD_BEYOND + 1 } else { 0 };
                    let mut c = Combining::new(&mut combined, &keys, groups);
                    assert_eq!((c.sorted, c.pending.is_some()), (sorted, spread));
                    for &(g, k, v) in pushes.iter().filter(|p| p.1 != 9 || batch == 1) {
                        c.push(g, k, v);
                    }
                }
                let mut want = want.clone();
                want.iter_mut().flatten().filter(|(k, _)| *k != 9).for_each(|(_, v)| *v *= 2.0);
                assert_eq!(sorted_pairs(&mut combined), want, "sorted by person: {sorted}, spread: {spread}");
            }
        }
    }

    #[test]
    fn groups_switch_to_sorted_runs_sooner_once_the_state_is_beyond_the_cache() {
        let mut groups = Groups::<f64>::default();
        groups.grow(3);
        let push_keys = |groups: &mut Groups<f64>, group: usize, keys: std::ops::Range<i64>| {
            keys.for_each(|k| groups.push(group, k * 7919, 1.0));
        };
        // Group 1 passes the lower threshold while the state is small.
        push_keys(&mut groups, 1, 0..(SMALL_BEYOND_CACHE as i64 + 100));
        assert!(matches!(groups.runs[1], Runs::Small(_)), "a table while the state is small");
        // Group 0 grows the state beyond the cache (as sorted runs past SMALL).
        while groups.bytes <= BEYOND_CACHE {
            let n = groups.runs[0].size() as i64 / 16 + 1;
            push_keys(&mut groups, 0, n..2 * n + MIN_RUN as i64);
        }
        assert!(matches!(groups.runs[0], Runs::Large { .. }));
        // Now a group passing the lower threshold switches, and one below it does not.
        push_keys(&mut groups, 1, 0..(SMALL_BEYOND_CACHE as i64 + 200));
        push_keys(&mut groups, 2, 0..100);
        assert!(matches!(groups.runs[1], Runs::Large { .. }), "runs beyond the cache");
        assert!(matches!(groups.runs[2], Runs::Small(_)));
        // The same persons either way.
        let d = groups.runs[1].distinct();
        assert_eq!(d.len(), SMALL_BEYOND_CACHE + 200);
        assert!(d.iter().all(|(k, t)| *t == if (*k / 7919) < SMALL_BEYOND_CACHE as i64 + 100 { 2.0 } else { 1.0 }));
    }

    #[test]
    fn runs_combine_equal_keys_in_the_table_and_in_sorted_runs() {
        for distinct in [1000i64, 3 * SMALL as i64] {
            let mut runs = Runs::<f64>::default();
            for i in 0..10 * distinct {
                runs.push((i % distinct) * 7919 - distinct, 1.0, SMALL);
                if let Runs::Large { items, .. } = &runs {
                    assert!(items.len() < 2 * distinct as usize + MIN_RUN, "bounded by the distinct keys");
                }
            }
            assert_eq!(matches!(runs, Runs::Large { .. }), distinct as usize > SMALL);
            let d = runs.distinct();
            assert_eq!(d.len(), distinct as usize);
            assert!(d.iter().all(|(_, t)| *t == 10.0));
        }
    }
}
