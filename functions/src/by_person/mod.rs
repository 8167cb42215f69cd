//! Person-keyed aggregates over persons split by partition.
//!
//! A grouped aggregate runs in two steps: a partial aggregate per input
//! partition, then a final one per group. Rows reach the partials in file
//! order (a person's rows in either), so each partial of `samkor_companions`
//! kept a table of its group's persons, handed them on as lists, and the
//! final inserted every person a second time to find those both had.
//!
//! [`partition_persons`] hash-partitions the partials' rows on the record
//! key instead (the classic way to count distinct values in parallel): every
//! person's rows then reach one partial, its groups' persons are complete,
//! and it hands on a summary per group (persons and cell key per condition,
//! the `n` largest totals, extreme keys, sums) that the final only adds.
//!
//! ```text
//!   before                                   after
//!   Final(group)                             Final(group)        adds summaries
//!    Repartition Hash(group)                  Repartition Hash(group)
//!     Partial: persons as lists  ◀─ merged     Partial: summaries per group
//!      … rows, any split                        Repartition Hash(record key)
//!                                                … rows
//! ```
//!
//! The partials check the split rather than trust it: each hashes the
//! record keys it sees as the repartitioning does and fails on a key of a
//! second partition ([`PartitionOf`]), and the final fails on two summaries
//! of one group from the same partition. A plan that does not split persons
//! fails; it never counts a person twice.
//!
//! `RepartitionExec` hands each partial its rows in the order they arrive
//! from all the input partitions, which changes from run to run. Where an
//! aggregate's answer follows that order (`samkor_moments`' Σx and Σx², the
//! companions' per-person totals of a magnitude; DataFusion's `sum` of
//! doubles, which the nodes replace by an exact sum), the split is [`SplitInOrderExec`]
//! instead, which gives each partial its rows in an order fixed by the data,
//! so that the same query over the same data gives the same answer. Where
//! every aggregate is a count, an extreme, an integer or exact sum, or
//! persons without a magnitude, `RepartitionExec` splits.
//!
//! A summary cannot be added to a row passed on unaggregated, so such a plan
//! runs in a task that never skips partial aggregation, returned with it
//! ([`Split::task`]).
//! It must not emit partial states early either, which DataFusion does only
//! under a bounded memory pool: plans of such a session are left as they
//! are (nodes run with an unbounded pool; the coordinator's is bounded), and
//! the check above would turn an early emit into an error, not a wrong count.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::hash_utils::create_hashes;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, internal_err};
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{AggregateUDF, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::repartition::{REPARTITION_RANDOM_STATE, RepartitionExec};
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::SessionConfig;

use crate::companions::{Companions, companions_by_person_udaf};
use crate::persons::{Persons, persons_by_person_udaf};

mod in_order;

pub use in_order::SplitInOrderExec;

#[cfg(test)]
mod tests;

/// Partitions a plan may split persons among (a partition is a bit in a
/// group's merged state).
pub const MAX_PARTITIONS: usize = 128;

/// A physical plan as [`partition_persons`] leaves it, and the task it runs in.
#[derive(Debug)]
pub struct Split {
    pub plan: Arc<dyn ExecutionPlan>,
    /// The session's task, or, where persons were split, one that never
    /// skips partial aggregation.
    pub task: Arc<TaskContext>,
    /// Whether persons were split anywhere in the plan.
    pub rewritten: bool,
}

/// Rewrites each grouped aggregate of `plan` with `samkor_companions` or
/// `samkor_persons` to run over persons split among the session's target
/// partitions, hash partitions of their record key; the plan must run in the
/// task returned with it. Left as they are: plans of a session with a
/// bounded memory pool, fewer than two partitions or more than
/// [`MAX_PARTITIONS`], aggregates without `GROUP BY`, and aggregates whose
/// functions count persons of different record keys or of an expression.
/// Beside a function whose answer follows the order of its rows
/// (DataFusion's sum or mean of doubles, `samkor_moments`, a magnitude's
/// per-person totals; see `order_free`) the split is [`SplitInOrderExec`].
pub fn partition_persons(plan: Arc<dyn ExecutionPlan>, state: &SessionState) -> Result<Split> {
    let partitions = state.config().target_partitions();
    // A bounded pool lets a partial hand on states early, two of one group.
    let unbounded = matches!(state.runtime_env().memory_pool.memory_limit(), MemoryLimit::Infinite);
    if !unbounded || !(2..=MAX_PARTITIONS).contains(&partitions) {
        return Ok(Split { plan, task: state.task_ctx(), rewritten: false });
    }
    let rewritten = plan.transform_up(|node| match rewrite(&node, partitions)? {
        Some(new) => Ok(Transformed::yes(new)),
        None => Ok(Transformed::no(node)),
    })?;
    let task = match rewritten.transformed {
        true => Arc::new(TaskContext::from(state).with_session_config(task_config(state.config()))),
        false => state.task_ctx(),
    };
    Ok(Split { plan: rewritten.data, task, rewritten: rewritten.transformed })
}

/// The settings a rewritten plan runs under: partial aggregation is never
/// skipped for rows passed on unaggregated (DataFusion does when a partial
/// finds nearly as many groups as rows).
fn task_config(config: &SessionConfig) -> SessionConfig {
    let mut config = config.clone();
    config.options_mut().execution.skip_partial_aggregation_probe_ratio_threshold = 1.0;
    config
}

/// `Final ← Repartition(group) ← Partial ← input` with companions, over
/// persons split: the partial's input repartitioned on the record key, the
/// companions of both steps summarised.
fn rewrite(node: &Arc<dyn ExecutionPlan>, partitions: usize) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(last) = node.downcast_ref::<AggregateExec>() else { return Ok(None) };
    let Some(between) = last.input().downcast_ref::<RepartitionExec>() else { return Ok(None) };
    let Some(partial) = between.input().downcast_ref::<AggregateExec>() else { return Ok(None) };
    let grouped = !partial.group_expr().expr().is_empty() && partial.group_expr().is_single();
    if *last.mode() != AggregateMode::FinalPartitioned
        || *partial.mode() != AggregateMode::Partial
        || !grouped
        || last.limit_options().is_some()
        || !matches!(between.partitioning(), Partitioning::Hash(..))
    {
        return Ok(None);
    }
    let Some(key) = record_key(partial.aggr_expr()) else { return Ok(None) };
    let input_schema = partial.input_schema();
    let any_order = partial.aggr_expr().iter().all(|a| order_free(a, &input_schema));
    let aggregates = partial
        .aggr_expr()
        .iter()
        .map(|a| match by_person(a) {
            true => summarised(a, partitions, &input_schema),
            false => Ok(Arc::clone(a)),
        })
        .collect::<Result<Vec<_>>>()?;
    let input = Arc::clone(partial.input());
    let split: Arc<dyn ExecutionPlan> = match any_order {
        true => Arc::new(RepartitionExec::try_new(input, Partitioning::Hash(vec![Arc::new(key)], partitions))?),
        false => Arc::new(SplitInOrderExec::new(input, Arc::new(key), partitions)),
    };
    let partial = AggregateExec::try_new(
        AggregateMode::Partial,
        partial.group_expr().clone(),
        aggregates.clone(),
        partial.filter_expr().to_vec(),
        split,
        input_schema,
    )?;
    let between = RepartitionExec::try_new(Arc::new(partial), between.partitioning().clone())?;
    let last = AggregateExec::try_new(
        *last.mode(),
        last.group_expr().clone(),
        aggregates,
        last.filter_expr().to_vec(),
        Arc::new(between),
        last.input_schema(),
    )?;
    Ok(Some(Arc::new(last)))
}

/// Whether an aggregate's answer is the same whatever order its rows arrive
/// in: a count, a minimum or a maximum, a sum of integers or decimals, a sum
/// of doubles kept exact (`samkor_exact_sum`), or persons counted without a
/// magnitude. DataFusion's `sum` of doubles is not (its last bits follow the
/// order of the additions; the node replaces it, `samkor_node::exact_sums`),
/// nor are `samkor_moments` (Σx, Σx²) and the companions' per-person totals
/// of a magnitude; beside one, persons are split in order ([`SplitInOrderExec`]).
fn order_free(a: &AggregateFunctionExpr, schema: &Schema) -> bool {
    let exact = |t: &DataType| t.is_integer() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..));
    let no_float = || a.expressions().iter().all(|e| e.data_type(schema).is_ok_and(|t| t != DataType::Float64));
    match a.fun().name() {
        "count" | "min" | "max" | crate::EXACT_SUM_FN => true,
        "sum" => a.expressions().iter().all(|e| e.data_type(schema).is_ok_and(|t| exact(&t))),
        _ => by_person(a) && no_float(),
    }
}

/// The function over split persons that replaces an aggregate's, if it
/// counts persons over lists of record keys.
fn split_function(a: &AggregateFunctionExpr) -> Option<fn(usize) -> AggregateUDF> {
    if a.is_distinct() || !a.order_bys().is_empty() {
        return None;
    }
    let inner = a.fun().inner();
    if inner.downcast_ref::<Companions>().is_some_and(|c| c.partitions.is_none()) {
        return Some(companions_by_person_udaf);
    }
    if inner.downcast_ref::<Persons>().is_some_and(|p| p.partitions.is_none()) {
        return Some(persons_by_person_udaf);
    }
    None
}

/// Whether an aggregate counts persons over lists of record keys.
fn by_person(a: &AggregateFunctionExpr) -> bool {
    split_function(a).is_some()
}

/// The record-key column every aggregate over persons counts persons of:
/// `None` when there is none, or they count different ones (or one of them
/// an expression).
fn record_key(aggregates: &[Arc<AggregateFunctionExpr>]) -> Option<Column> {
    let mut keys = aggregates.iter().filter(|a| by_person(a)).map(|a| {
        let first = a.expressions().into_iter().next()?;
        first.downcast_ref::<Column>().cloned()
    });
    let key = keys.next()??;
    keys.all(|k| k.as_ref() == Some(&key)).then_some(key)
}

/// The same aggregate, summarised over persons split among `partitions`.
fn summarised(
    a: &AggregateFunctionExpr,
    partitions: usize,
    input_schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<Arc<AggregateFunctionExpr>> {
    let function = split_function(a).expect("only aggregates over persons are summarised");
    let udaf = Arc::new(function(partitions));
    let mut builder = AggregateExprBuilder::new(udaf, a.expressions())
        .schema(Arc::clone(input_schema))
        .alias(a.name())
        .with_ignore_nulls(a.ignore_nulls());
    if let Some(display) = a.human_display() {
        builder = builder.human_display(display);
    }
    Ok(Arc::new(builder.build()?))
}

/// Before a split accumulator evaluates: the groups it aggregated itself and
/// never handed on (a single aggregate, no final) merged in as its own state.
pub(crate) fn merge_own_groups(acc: &mut dyn GroupsAccumulator, groups: usize) -> Result<()> {
    if groups > 0 {
        let state = acc.state(EmitTo::All)?;
        acc.merge_batch(&state, &(0..groups).collect::<Vec<_>>(), groups)?;
    }
    Ok(())
}

/// A split accumulator's answer when asked to pass rows on unaggregated: a
/// row's own state could not be added to another of its partition's.
pub(crate) fn unaggregated(function: &str) -> Result<Vec<ArrayRef>> {
    internal_err!(
        "{function} over partitioned persons cannot pass rows on unaggregated; \
         the plan must run in the task partition_persons returns with it"
    )
}

/// A group's partial states added up, with the partitions they came from.
#[derive(Debug, Clone)]
pub(crate) struct Merged<V> {
    pub(crate) value: V,
    /// A bit per partition added.
    partitions: u128,
}

impl<V> Merged<V> {
    /// Makes sure there is a group for every index below `total`.
    pub(crate) fn grow(merged: &mut Vec<Merged<V>>, total: usize, empty: impl Fn() -> V) {
        if merged.len() < total {
            merged.resize_with(total, || Merged { value: empty(), partitions: 0 });
        }
    }

    /// Notes a state of the persons of `partition` (`None`: it saw none)
    /// before it is added; fails on a second state from one partition.
    pub(crate) fn note_partition(&mut self, partition: Option<i64>, function: &str) -> Result<()> {
        let Some(p) = partition else { return Ok(()) };
        let bit = match u32::try_from(p) {
            Ok(p) if (p as usize) < MAX_PARTITIONS => 1u128 << p,
            _ => return internal_err!("{function}: a partial state names partition {p}"),
        };
        if self.partitions & bit != 0 {
            return internal_err!(
                "{function}: two partial states of one group come from persons of partition {p}; \
                 the persons were not split by partition, so they are not added"
            );
        }
        self.partitions |= bit;
        Ok(())
    }
}

/// The partition a partial aggregate's persons belong to, checked on every
/// record key it sees: the repartitioning's hash of the key, modulo the
/// partitions (DataFusion's `RepartitionExec`).
#[derive(Debug)]
pub(crate) struct PartitionOf {
    partitions: u64,
    own: Option<u64>,
    hashes: Vec<u64>,
}

impl PartitionOf {
    pub(crate) fn new(partitions: usize) -> Self {
        PartitionOf { partitions: partitions as u64, own: None, hashes: Vec::new() }
    }

    /// Fails on a record key of another partition than those before.
    pub(crate) fn check(&mut self, keys: &Int64Array) -> Result<()> {
        self.hashes.clear();
        self.hashes.resize(keys.len(), 0);
        create_hashes([keys as &dyn Array], REPARTITION_RANDOM_STATE.random_state(), &mut self.hashes)?;
        for (row, hash) in self.hashes.iter().enumerate() {
            if keys.is_null(row) {
                continue;
            }
            let partition = hash % self.partitions;
            match self.own {
                None => self.own = Some(partition),
                Some(own) if own == partition => {}
                Some(own) => {
                    return internal_err!(
                        "record keys of partitions {own} and {partition} of {} reached one partial aggregate; \
                         its persons are not split by partition",
                        self.partitions
                    );
                }
            }
        }
        Ok(())
    }

    /// The partition, once a record key was seen.
    pub(crate) fn own(&self) -> Option<i64> {
        self.own.map(|p| p as i64)
    }

    pub(crate) fn size(&self) -> usize {
        self.hashes.capacity() * size_of::<u64>()
    }
}
