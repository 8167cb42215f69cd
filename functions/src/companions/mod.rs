//! `samkor_companions(record_key, n, c₁, …, c_m, x₁, …, x_d)`: the person
//! companions of one output aggregate in one pass over one state per group.
//!
//! Disclosure control asks of every cell the persons behind it under several
//! conditions (the cell, a conditional count, the persons with a non-zero
//! value, a complement) and, per sum of a magnitude, the `n` largest persons'
//! totals. Each was its own aggregate with its own table of record keys: one
//! hash insert per row per companion, and as many lists of keys passed from
//! the partial aggregates to their merge. Here a group keeps each person once
//! ([`crate::keyed`]) with
//!
//! * a bit per condition `c_i` (true in at least one of the person's rows), and
//! * per magnitude `x_j` the person's total Σx_j and a bit saying the person
//!   has a value (a person without one takes no rank).
//!
//! The result is a struct: `p_i` (Int64) the persons with `c_i` and their cell
//! key, packed as [`crate::PersonsCell`]; `t_j` (Float64) the sum of the `n`
//! largest totals of `x_j`, null where nobody has a value; `lo` and `hi`
//! (Int64) the least and largest record key kept, null where none is; `s_j`
//! (Float64) the sum of `x_j` over every row, with or without a record key,
//! null where no row has a value. Each equals `samkor_persons(CASE WHEN c_i
//! THEN rk END)`, the sum of the `n` largest per-person totals of `x_j`
//! (ranking only persons with a value), `min(rk)` and `max(rk)` when a
//! condition is `true`, and `sum(x_j)`. Rows without a record key, or with
//! no condition true and no value, add no person.
//!
//! ```text
//!   samkor_companions(rk, 5, true, bmi IS NOT NULL, abs(bmi))
//!       → {p0: persons of the cell, p1: persons with a bmi, t0: top-5 Σ|bmi|,
//!          lo, hi: least and largest record key, s0: Σ|bmi|}
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, StructArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

mod by_person;

use crate::PersonsCell;
use crate::keyed::{Combine, Combining, Groups, OneGroup, PerGroup, Runs, each, list_array};

/// The function's SQL name.
pub const COMPANIONS_FN: &str = "samkor_companions";
/// Conditions one call takes at most.
pub const MAX_CONDITIONS: usize = 32;
/// Magnitudes one call takes at most (more go to a second call).
pub const MAX_MAGNITUDES: usize = 4;

/// One person of a group: a bit per condition (low 32 bits), a bit per
/// magnitude with a value (high 32 bits), and the totals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<const D: usize> {
    bits: u64,
    totals: [f64; D],
}

impl<const D: usize> Default for Entry<D> {
    fn default() -> Self {
        Entry { bits: 0, totals: [0.0; D] }
    }
}

impl<const D: usize> Combine for Entry<D> {
    fn combine(&mut self, other: Self) {
        self.bits |= other.bits;
        for (t, o) in self.totals.iter_mut().zip(other.totals) {
            *t += o;
        }
    }
}

/// The number of conditions and magnitudes of a call, from its argument types.
fn shape(args: &[DataType]) -> Result<(usize, usize)> {
    let usage = "(record key, persons n, conditions…, magnitudes…)";
    let [DataType::Int64, DataType::Int64, rest @ ..] = args else {
        return plan_err!("{COMPANIONS_FN} takes {usage}, not {args:?}");
    };
    let m = rest.iter().take_while(|t| **t == DataType::Boolean).count();
    let d = rest.len() - m;
    if rest[m..].iter().any(|t| *t != DataType::Float64) {
        return plan_err!(
            "{COMPANIONS_FN} takes {usage} with Boolean conditions before Float64 magnitudes, not {args:?}"
        );
    }
    if m + d == 0 || m > MAX_CONDITIONS || d > MAX_MAGNITUDES {
        return plan_err!(
            "{COMPANIONS_FN} takes 1 to {MAX_CONDITIONS} conditions and up to {MAX_MAGNITUDES} magnitudes, not {m} and {d}"
        );
    }
    Ok((m, d))
}

fn result_fields(m: usize, d: usize) -> Fields {
    let persons = (0..m).map(|i| Field::new(format!("p{i}"), DataType::Int64, false));
    let tops = (0..d).map(|j| Field::new(format!("t{j}"), DataType::Float64, true));
    let extremes = ["lo", "hi"].map(|name| Field::new(name, DataType::Int64, true));
    let sums = (0..d).map(|j| Field::new(format!("s{j}"), DataType::Float64, true));
    persons.chain(tops).chain(extremes).chain(sums).collect()
}

/// Where the fields of a call with `m` conditions and `d` magnitudes are in its struct.
pub mod field {
    /// The persons of condition `i`.
    pub fn persons(i: usize) -> usize {
        i
    }
    /// The sum of the largest persons' totals of magnitude `j`.
    pub fn top(m: usize, j: usize) -> usize {
        m + j
    }
    /// The least record key.
    pub fn least_key(m: usize, d: usize) -> usize {
        m + d
    }
    /// The largest record key.
    pub fn largest_key(m: usize, d: usize) -> usize {
        m + d + 1
    }
    /// The sum of magnitude `j` over every row.
    pub fn sum(m: usize, d: usize, j: usize) -> usize {
        m + d + 2 + j
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Companions {
    signature: Signature,
    /// Over persons split among this many hash partitions of their record
    /// key ([`crate::by_person`]): partial states are summaries, not lists.
    pub(crate) partitions: Option<usize>,
}

/// The aggregate function.
pub fn companions_udaf() -> AggregateUDF {
    companions_over(None)
}

/// The aggregate function over persons split among `partitions` hash
/// partitions of their record key ([`crate::by_person`]).
pub(crate) fn companions_by_person_udaf(partitions: usize) -> AggregateUDF {
    companions_over(Some(partitions))
}

fn companions_over(partitions: Option<usize>) -> AggregateUDF {
    AggregateUDF::from(Companions { signature: Signature::user_defined(Volatility::Immutable), partitions })
}

/// The accumulator of `D` magnitudes, grouped or not, over persons split
/// among `partitions` or not.
fn accumulator<const D: usize>(
    m: usize,
    n: usize,
    grouped: bool,
    partitions: Option<usize>,
) -> Result<Box<dyn std::any::Any>> {
    let groups = CompanionGroups::<D> { m, n, groups: Groups::default(), sums: Vec::new() };
    Ok(match (grouped, partitions) {
        (true, None) => Box::new(Box::new(groups) as Box<dyn GroupsAccumulator>),
        (false, None) => Box::new(Box::new(OneGroup(groups)) as Box<dyn Accumulator>),
        (true, Some(p)) => Box::new(Box::new(by_person::ByPersonGroups::new(groups, p)) as Box<dyn GroupsAccumulator>),
        (false, Some(_)) => return plan_err!("{COMPANIONS_FN} over partitioned persons needs a GROUP BY"),
    })
}

/// `(m, d, n)` of a call being executed.
fn call_shape(args: &AccumulatorArgs) -> Result<(usize, usize, usize)> {
    let types: Vec<DataType> = args.expr_fields.iter().map(|f| f.data_type().clone()).collect();
    let (m, d) = shape(&types)?;
    let literal = args.exprs.get(1).and_then(|e| e.downcast_ref::<Literal>());
    match literal.map(|l| l.value()) {
        Some(ScalarValue::Int64(Some(n))) if *n > 0 => Ok((m, d, *n as usize)),
        _ => plan_err!("{COMPANIONS_FN} takes a positive constant number of persons"),
    }
}

fn build(args: &AccumulatorArgs, grouped: bool, partitions: Option<usize>) -> Result<Box<dyn std::any::Any>> {
    let (m, d, n) = call_shape(args)?;
    match d {
        0 => accumulator::<0>(m, n, grouped, partitions),
        1 => accumulator::<1>(m, n, grouped, partitions),
        2 => accumulator::<2>(m, n, grouped, partitions),
        3 => accumulator::<3>(m, n, grouped, partitions),
        _ => accumulator::<MAX_MAGNITUDES>(m, n, grouped, partitions),
    }
}

impl AggregateUDFImpl for Companions {
    fn name(&self) -> &str {
        COMPANIONS_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        shape(args)?;
        Ok(args.to_vec())
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let (m, d) = shape(args)?;
        Ok(DataType::Struct(result_fields(m, d)))
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(*build(&args, false, self.partitions)?.downcast::<Box<dyn Accumulator>>().expect("built ungrouped"))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(*build(&args, true, self.partitions)?.downcast::<Box<dyn GroupsAccumulator>>().expect("built grouped"))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if self.partitions.is_some() {
            return Ok(by_person::state_fields());
        }
        let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
        Ok(vec![
            Arc::new(Field::new("record_keys", list(DataType::Int64), true)),
            Arc::new(Field::new("bits", list(DataType::Int64), true)),
            Arc::new(Field::new("totals", list(DataType::Float64), true)),
            Arc::new(Field::new("sums", list(DataType::Float64), true)),
        ])
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        let DataType::Struct(fields) = data_type else {
            return plan_err!("{COMPANIONS_FN} returns a struct, not {data_type}");
        };
        let columns: Vec<ArrayRef> = fields
            .iter()
            .map(|f| -> ArrayRef {
                match (f.data_type(), f.is_nullable()) {
                    // No persons; no record key.
                    (DataType::Int64, false) => Arc::new(Int64Array::from(vec![0])),
                    (DataType::Int64, true) => Arc::new(Int64Array::from(vec![None::<i64>])),
                    _ => Arc::new(Float64Array::from(vec![None::<f64>])),
                }
            })
            .collect();
        ScalarValue::try_from_array(&StructArray::new(fields.clone(), columns, None), 0)
    }
}

/// Per group, each person's conditions and totals.
#[derive(Debug)]
struct CompanionGroups<const D: usize> {
    /// Conditions.
    m: usize,
    /// Persons whose totals are summed.
    n: usize,
    groups: Groups<Entry<D>>,
    /// Per group, the sums of the magnitudes over every row.
    sums: Vec<Sums<D>>,
}

/// A group's Σx_j over its rows with a value (a record key or not), and a
/// bit per magnitude that has one.
#[derive(Debug, Clone, Copy)]
struct Sums<const D: usize> {
    total: [f64; D],
    seen: u32,
}

impl<const D: usize> Default for Sums<D> {
    fn default() -> Self {
        Sums { total: [0.0; D], seen: 0 }
    }
}

impl<const D: usize> Sums<D> {
    fn add(&mut self, j: usize, x: f64) {
        self.total[j] += x;
        self.seen |= 1 << j;
    }

    fn get(&self, j: usize) -> Option<f64> {
        (self.seen >> j & 1 == 1).then_some(self.total[j])
    }
}

impl<const D: usize> CompanionGroups<D> {
    /// The struct of each group's cells, top sums, extreme keys and sums
    /// (`sums` of the same groups; a group missing there has none).
    fn values(&self, groups: &mut [Runs<Entry<D>>], sums: &[Sums<D>]) -> ArrayRef {
        let summaries: Vec<Summary<D>> = groups.iter_mut().map(|g| self.summary(g)).collect();
        self.struct_of(&summaries, sums)
    }

    /// What a group's persons give its cell.
    fn summary(&self, group: &mut Runs<Entry<D>>) -> Summary<D> {
        Summary::of(group.distinct(), self.m, self.n)
    }

    /// The result struct of groups summarised (`sums` of the same groups; a
    /// group missing there has none).
    fn struct_of(&self, summaries: &[Summary<D>], sums: &[Sums<D>]) -> ArrayRef {
        let rows = summaries.len();
        let persons = (0..self.m)
            .map(|i| -> ArrayRef { Arc::new(summaries.iter().map(|s| s.cells[i].pack()).collect::<Int64Array>()) });
        let tops =
            (0..D).map(|j| -> ArrayRef { Arc::new(summaries.iter().map(|s| s.top_sum(j)).collect::<Float64Array>()) });
        let least: ArrayRef = Arc::new(summaries.iter().map(|s| s.least).collect::<Int64Array>());
        let largest: ArrayRef = Arc::new(summaries.iter().map(|s| s.largest).collect::<Int64Array>());
        let row_sums = (0..D).map(|j| -> ArrayRef {
            Arc::new((0..rows).map(|i| sums.get(i).copied().unwrap_or_default().get(j)).collect::<Float64Array>())
        });
        let columns: Vec<ArrayRef> = persons.chain(tops).chain([least, largest]).chain(row_sums).collect();
        Arc::new(StructArray::new(result_fields(self.m, D), columns, None))
    }

    /// Each group's record keys, bits and totals (`D` a person), and its
    /// sums (`D`, null where no row has a value), as lists.
    fn lists(groups: &mut [Runs<Entry<D>>], sums: &[Sums<D>]) -> Vec<ArrayRef> {
        let (mut keys, mut bits, mut totals) = (Vec::new(), Vec::new(), Vec::new());
        let mut lengths = Vec::with_capacity(groups.len());
        for g in groups {
            let entries = g.distinct();
            lengths.push(entries.len());
            for (k, e) in entries {
                keys.push(*k);
                bits.push(e.bits as i64);
                totals.extend_from_slice(&e.totals);
            }
        }
        let total_lengths = lengths.iter().map(|l| l * D).collect();
        let group_sums: Vec<Sums<D>> = (0..lengths.len()).map(|i| sums.get(i).copied().unwrap_or_default()).collect();
        vec![
            list_array::<Int64Type>(keys, lengths.clone()),
            list_array::<Int64Type>(bits, lengths),
            list_array::<Float64Type>(totals, total_lengths),
            sums_list(&group_sums),
        ]
    }

    /// Each row's bits, column by column a word of rows at a time: a
    /// condition's bit where it is true (not null), a magnitude's where it has
    /// a value.
    fn bits(&self, conditions: &[&BooleanArray], magnitudes: &[&Float64Array], rows: usize) -> Vec<u64> {
        fn set(bits: &mut [u64], bit: u64, on: &BooleanBuffer) {
            on.set_indices().for_each(|row| bits[row] |= bit);
        }
        let mut bits = vec![0u64; rows];
        for (i, c) in conditions.iter().enumerate() {
            match c.nulls() {
                Some(n) => set(&mut bits, 1 << i, &(c.values() & n.inner())),
                None => set(&mut bits, 1 << i, c.values()),
            }
        }
        for (j, x) in magnitudes.iter().enumerate() {
            match x.nulls() {
                Some(n) => set(&mut bits, 1 << (32 + j), n.inner()),
                None => bits.iter_mut().for_each(|b| *b |= 1 << (32 + j)),
            }
        }
        bits
    }

    /// The magnitude columns of a batch.
    fn magnitudes<'v>(&self, values: &'v [ArrayRef]) -> Vec<&'v Float64Array> {
        values[2 + self.m..].iter().map(|x| x.as_primitive::<Float64Type>()).collect()
    }

    /// Makes sure there are sums for every group below `total`.
    fn grow_sums(&mut self, total: usize) {
        if self.sums.len() < total {
            self.sums.resize(total, Sums::default());
        }
    }

    /// Calls `f(row, key, entry)` for every row that adds something.
    fn rows(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>, mut f: impl FnMut(usize, i64, Entry<D>)) {
        let conditions: Vec<&BooleanArray> = values[2..2 + self.m].iter().map(|c| c.as_boolean()).collect();
        let magnitudes = self.magnitudes(values);
        let bits = self.bits(&conditions, &magnitudes, values[0].len());
        let x: [&[f64]; D] = std::array::from_fn(|j| magnitudes[j].values().as_ref());
        each(values[0].as_primitive::<Int64Type>(), opt_filter, |row, key| {
            let bits = bits[row];
            if bits == 0 {
                return;
            }
            // A magnitude without a value adds 0 (its bit stays clear).
            let totals = std::array::from_fn(|j| if bits >> (32 + j) & 1 == 1 { x[j][row] } else { 0.0 });
            f(row, key, Entry { bits, totals });
        });
    }
}

/// Adds each row's magnitudes to the sums of its group, `group(row)` (every
/// row the filter keeps, with or without a record key).
fn add_sums<const D: usize>(
    sums: &mut [Sums<D>],
    magnitudes: &[&Float64Array],
    opt_filter: Option<&BooleanArray>,
    group: impl Fn(usize) -> usize,
) {
    for (j, x) in magnitudes.iter().enumerate() {
        each(x, opt_filter, |row, v| sums[group(row)].add(j, v));
    }
}

/// Per group, its `D` sums as a list (a value null where no row has one).
fn sums_list<const D: usize>(groups: &[Sums<D>]) -> ArrayRef {
    let values: Vec<Option<f64>> = groups.iter().flat_map(|s| (0..D).map(move |j| s.get(j))).collect();
    let lengths = vec![D; groups.len()];
    let field = Arc::new(Field::new_list_field(DataType::Float64, true));
    Arc::new(ListArray::new(field, OffsetBuffer::from_lengths(lengths), Arc::new(Float64Array::from(values)), None))
}

/// What a group's persons give its cell: per condition the persons and
/// their key, per magnitude the `n` largest totals of the persons with a
/// value, and the least and largest record key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary<const D: usize> {
    pub(crate) cells: Vec<PersonsCell>,
    pub(crate) tops: [Vec<f64>; D],
    pub(crate) least: Option<i64>,
    pub(crate) largest: Option<i64>,
}

impl<const D: usize> Summary<D> {
    /// No persons, under `m` conditions.
    pub(crate) fn empty(m: usize) -> Self {
        Summary {
            cells: vec![PersonsCell::default(); m],
            tops: std::array::from_fn(|_| Vec::new()),
            least: None,
            largest: None,
        }
    }

    /// Of a group's distinct persons.
    fn of(entries: &[(i64, Entry<D>)], m: usize, n: usize) -> Self {
        let mut s = Summary::empty(m);
        for (k, e) in entries {
            for (_, cell) in s.cells.iter_mut().enumerate().filter(|(i, _)| e.bits >> i & 1 == 1) {
                cell.persons += 1;
                cell.key = cell.key.wrapping_add(*k as u32);
            }
            for (j, top) in s.tops.iter_mut().enumerate().filter(|(j, _)| e.bits >> (32 + j) & 1 == 1) {
                top.push(e.totals[j]);
            }
        }
        s.least = entries.iter().map(|(k, _)| *k).min();
        s.largest = entries.iter().map(|(k, _)| *k).max();
        s.tops.iter_mut().for_each(|t| keep_largest(t, n));
        s
    }

    /// Adds the summary of other persons (none of them among these).
    pub(crate) fn add(&mut self, other: &Summary<D>, n: usize) {
        for (cell, o) in self.cells.iter_mut().zip(&other.cells) {
            cell.persons += o.persons;
            cell.key = cell.key.wrapping_add(o.key);
        }
        for (top, o) in self.tops.iter_mut().zip(&other.tops) {
            top.extend_from_slice(o);
            keep_largest(top, n);
        }
        self.least = self.least.into_iter().chain(other.least).min();
        self.largest = self.largest.into_iter().chain(other.largest).max();
    }

    /// The sum of the largest totals of magnitude `j`, largest first (the
    /// same sum however the persons were split); `None` when nobody has a value.
    fn top_sum(&self, j: usize) -> Option<f64> {
        (!self.tops[j].is_empty()).then(|| self.tops[j].iter().sum())
    }
}

/// Keeps the `n` largest of `totals`, largest first.
fn keep_largest(totals: &mut Vec<f64>, n: usize) {
    if totals.len() > n {
        totals.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
        totals.truncate(n);
    }
    totals.sort_unstable_by(|a, b| b.total_cmp(a));
}

impl<const D: usize> GroupsAccumulator for CompanionGroups<D> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let mut groups = std::mem::take(&mut self.groups);
        groups.grow(total_num_groups);
        groups.reserve_rows(group_indices, total_num_groups);
        {
            let mut combining =
                Combining::new(&mut groups, values[0].as_primitive::<Int64Type>().values(), total_num_groups);
            self.rows(values, opt_filter, |row, key, e| combining.push(group_indices[row], key, e));
        }
        self.groups = groups;
        self.grow_sums(total_num_groups);
        let magnitudes = self.magnitudes(values);
        add_sums(&mut self.sums, &magnitudes, opt_filter, |row| group_indices[row]);
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let mut taken = self.groups.take(emit_to);
        let sums = emit_to.take_needed(&mut self.sums);
        Ok(self.values(&mut taken, &sums))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let mut taken = self.groups.take(emit_to);
        let sums = emit_to.take_needed(&mut self.sums);
        Ok(Self::lists(&mut taken, &sums))
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.grow_sums(total_num_groups);
        let sums = values[3].as_list::<i32>();
        let sum_values = sums.values().as_primitive::<Float64Type>();
        for (row, &g) in group_indices.iter().enumerate() {
            if sums.is_null(row) {
                continue;
            }
            let start = sums.offsets()[row] as usize;
            for j in 0..D {
                if sum_values.is_valid(start + j) {
                    self.sums[g].add(j, sum_values.value(start + j));
                }
            }
        }
        self.groups.grow(total_num_groups);
        let (keys, bits, totals) = (values[0].as_list::<i32>(), values[1].as_list::<i32>(), values[2].as_list::<i32>());
        let key_values = keys.values().as_primitive::<Int64Type>().values();
        let bit_values = bits.values().as_primitive::<Int64Type>().values();
        let total_values = totals.values().as_primitive::<Float64Type>().values();
        for (row, &g) in group_indices.iter().enumerate() {
            if keys.is_null(row) {
                continue;
            }
            let (start, end) = (keys.offsets()[row] as usize, keys.offsets()[row + 1] as usize);
            let (bits_start, totals_start) = (bits.offsets()[row] as usize, totals.offsets()[row] as usize);
            self.groups.reserve(g, end - start);
            for i in 0..end - start {
                let mut e = Entry::<D> { bits: bit_values[bits_start + i] as u64, ..Default::default() };
                e.totals.copy_from_slice(&total_values[totals_start + i * D..][..D]);
                self.groups.push(g, key_values[start + i], e);
            }
        }
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let rows = values[0].len();
        let (mut keys, mut bits, mut totals, mut lengths) = (Vec::new(), Vec::new(), Vec::new(), vec![0usize; rows]);
        self.rows(values, opt_filter, |row, key, e| {
            keys.push(key);
            bits.push(e.bits as i64);
            totals.extend_from_slice(&e.totals);
            lengths[row] = 1;
        });
        let total_lengths = lengths.iter().map(|l| l * D).collect();
        // Each row its own group's sums.
        let mut sums = vec![Sums::<D>::default(); rows];
        add_sums(&mut sums, &self.magnitudes(values), opt_filter, |row| row);
        Ok(vec![
            list_array::<Int64Type>(keys, lengths.clone()),
            list_array::<Int64Type>(bits, lengths),
            list_array::<Float64Type>(totals, total_lengths),
            sums_list(&sums),
        ])
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.groups.size() + self.sums.capacity() * size_of::<Sums<D>>()
    }
}

impl<const D: usize> PerGroup for CompanionGroups<D> {
    type Value = Entry<D>;

    fn groups(&mut self) -> &mut Groups<Entry<D>> {
        &mut self.groups
    }

    fn values(&self, groups: &mut [Runs<Entry<D>>]) -> ArrayRef {
        CompanionGroups::values(self, groups, &self.sums)
    }

    fn lists(&self, groups: &mut [Runs<Entry<D>>]) -> Vec<ArrayRef> {
        Self::lists(groups, &self.sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persons_udaf;

    /// Rows: (group, record key, condition, magnitude).
    type Row = (usize, Option<i64>, Option<bool>, Option<f64>);

    fn arrays(rows: &[Row]) -> (Vec<ArrayRef>, Vec<usize>) {
        let keys: ArrayRef = Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>()));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![2; rows.len()]));
        let always: ArrayRef = Arc::new(BooleanArray::from(vec![true; rows.len()]));
        let cond: ArrayRef = Arc::new(BooleanArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>()));
        let x: ArrayRef = Arc::new(Float64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>()));
        (vec![keys, n, always, cond, x], rows.iter().map(|r| r.0).collect())
    }

    fn groups() -> CompanionGroups<1> {
        CompanionGroups { m: 2, n: 2, groups: Groups::default(), sums: Vec::new() }
    }

    /// One group's `(p0, p1, t0, lo, hi, s0)`.
    type Cell = (PersonsCell, PersonsCell, Option<f64>, Option<i64>, Option<i64>, Option<f64>);

    /// The cells in `columns`, the six values of one at `at`.
    fn cells_at(columns: &[ArrayRef], at: [usize; 6], rows: usize) -> Vec<Cell> {
        fn value<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(c: &ArrayRef, r: usize) -> Option<T::Native> {
            let c = c.as_primitive::<T>();
            c.is_valid(r).then(|| c.value(r))
        }
        let [p0, p1, t0, lo, hi, s0] = at.map(|i| &columns[i]);
        let persons = |c: &ArrayRef, r: usize| PersonsCell::unpack(c.as_primitive::<Int64Type>().value(r));
        let (float, int) = (value::<Float64Type>, value::<Int64Type>);
        (0..rows)
            .map(|r| (persons(p0, r), persons(p1, r), float(t0, r), int(lo, r), int(hi, r), float(s0, r)))
            .collect()
    }

    /// The cells of an evaluated struct (two conditions, one magnitude).
    fn cells(array: &ArrayRef) -> Vec<Cell> {
        let s = array.as_struct();
        let at = [0, 1, field::top(2, 0), field::least_key(2, 1), field::largest_key(2, 1), field::sum(2, 1, 0)];
        cells_at(s.columns(), at, s.len())
    }

    /// The same cells from `samkor_persons` per condition and, for the top
    /// sum, plain SQL (per-person totals ranked by a window), in a DataFusion session.
    async fn separate(rows: &[Row]) -> Vec<Cell> {
        use datafusion::arrow::array::UInt64Array;
        use datafusion::arrow::datatypes::Schema;
        use datafusion::arrow::record_batch::RecordBatch;
        let (values, groups) = arrays(rows);
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::UInt64, false),
            Field::new("rk", DataType::Int64, true),
            Field::new("c", DataType::Boolean, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let g: ArrayRef = Arc::new(UInt64Array::from(groups.iter().map(|g| *g as u64).collect::<Vec<_>>()));
        let batch =
            RecordBatch::try_new(schema, vec![g, values[0].clone(), values[3].clone(), values[4].clone()]).unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_udaf(persons_udaf());
        ctx.register_batch("t", batch).unwrap();
        let sql = "WITH totals AS (SELECT g, rk, sum(x) AS t FROM t WHERE rk IS NOT NULL AND x IS NOT NULL GROUP BY g, rk), \
                   ranked AS (SELECT g, t, row_number() OVER (PARTITION BY g ORDER BY t DESC) AS r FROM totals), \
                   tops AS (SELECT g, sum(t) AS largest FROM ranked WHERE r <= 2 GROUP BY g), \
                   cells AS (SELECT g, samkor_persons(rk) AS p, samkor_persons(CASE WHEN c THEN rk END) AS pc, \
                             min(rk) AS lo, max(rk) AS hi, sum(x) AS s FROM t GROUP BY g) \
                   SELECT cells.g, p, pc, largest, lo, hi, s FROM cells LEFT JOIN tops ON tops.g = cells.g ORDER BY cells.g";
        let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let out = datafusion::arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
        cells_at(out.columns(), [1, 2, 3, 4, 5, 6], out.num_rows())
    }

    const ROWS: &[Row] = &[
        // Group 0: person 1 twice (5 + 5, the condition once), person 2 (3), person 3 without a value.
        (0, Some(1), Some(true), Some(5.0)),
        (0, Some(1), Some(false), Some(5.0)),
        (0, Some(2), None, Some(3.0)),
        (0, Some(3), Some(true), None),
        (0, None, Some(true), Some(100.0)),
        // Group 1: person 4 only, no condition, no value; group 2: person 7 (2).
        (1, Some(4), Some(false), None),
        (2, Some(7), Some(false), Some(2.0)),
        (2, Some(2), Some(true), Some(4.0)),
    ];

    #[tokio::test]
    async fn one_state_gives_what_the_separate_aggregates_give() {
        let (values, g) = arrays(ROWS);
        let mut acc = groups();
        acc.update_batch(&values, &g, None, 3).expect("update");
        let got = cells(&acc.evaluate(EmitTo::All).expect("evaluate"));
        assert_eq!(got, separate(ROWS).await);
        assert_eq!(got[0].0, PersonsCell { persons: 3, key: 6 });
        assert_eq!(got[0].1, PersonsCell { persons: 2, key: 4 });
        assert_eq!(got[0].2, Some(13.0));
        assert_eq!(got[1].2, None, "nobody in group 1 has a value");
        // The extremes over the persons, the sum over every row (the one
        // without a record key too).
        assert_eq!((got[0].3, got[0].4, got[0].5), (Some(1), Some(3), Some(113.0)));
        assert_eq!((got[1].3, got[1].4, got[1].5), (Some(4), Some(4), None));
        // Arrays that are slices of larger ones (an offset into their buffers).
        let sliced: Vec<ArrayRef> = values.iter().map(|a| a.slice(1, ROWS.len() - 1)).collect();
        let mut acc = groups();
        acc.update_batch(&sliced, &g[1..], None, 3).expect("update");
        assert_eq!(cells(&acc.evaluate(EmitTo::All).expect("evaluate")), separate(&ROWS[1..]).await);
    }

    #[tokio::test]
    async fn partial_states_filters_and_unaggregated_rows_merge_to_the_same_cells() {
        let (values, g) = arrays(ROWS);
        let expected = cells(&{
            let mut acc = groups();
            acc.update_batch(&values, &g, None, 3).expect("update");
            acc.evaluate(EmitTo::All).expect("evaluate")
        });
        // Two partitions: the first three rows and the rest, merged.
        let (mut left, mut right, mut total) = (groups(), groups(), groups());
        let first = BooleanArray::from((0..ROWS.len()).map(|i| i < 3).collect::<Vec<_>>());
        let rest = BooleanArray::from((0..ROWS.len()).map(|i| i >= 3).collect::<Vec<_>>());
        left.update_batch(&values, &g, Some(&first), 3).expect("update");
        right.update_batch(&values, &g, Some(&rest), 3).expect("update");
        total.merge_batch(&left.state(EmitTo::All).expect("state"), &[0, 1, 2], 3).expect("merge");
        total.merge_batch(&right.state(EmitTo::First(2)).expect("state"), &[0, 1], 3).expect("merge");
        total.merge_batch(&right.state(EmitTo::All).expect("state"), &[2], 3).expect("merge");
        assert_eq!(cells(&total.evaluate(EmitTo::All).expect("evaluate")), expected);
        // Rows passed on unaggregated.
        let mut direct = groups();
        direct.merge_batch(&groups().convert_to_state(&values, None).expect("convert"), &g, 3).expect("merge");
        assert_eq!(cells(&direct.evaluate(EmitTo::All).expect("evaluate")), expected);
    }

    #[test]
    fn shapes_are_checked() {
        use DataType::{Boolean, Float64, Int64, Utf8};
        assert_eq!(shape(&[Int64, Int64, Boolean, Boolean, Float64]).expect("shape"), (2, 1));
        assert_eq!(shape(&[Int64, Int64, Float64]).expect("shape"), (0, 1));
        for bad in [vec![Int64, Int64], vec![Int64, Int64, Float64, Boolean], vec![Int64, Int64, Utf8], vec![Int64]] {
            assert!(shape(&bad).is_err(), "{bad:?}");
        }
        assert!(shape(&[vec![Int64, Int64], vec![Float64; MAX_MAGNITUDES + 1]].concat()).is_err());
        let empty = companions_udaf().inner().default_value(&DataType::Struct(result_fields(1, 1))).expect("default");
        assert!(matches!(empty, ScalarValue::Struct(_)));
    }
}
