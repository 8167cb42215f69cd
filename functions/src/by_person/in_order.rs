//! The split of rows by record key that hands each partial its rows in an
//! order fixed by the data, not by the timing of its inputs.
//!
//! `RepartitionExec` passes on each batch as it comes from whichever input
//! partition is ready first, so a partial's rows arrive in an order that
//! changes from run to run. A floating-point sum beside the persons (a
//! `sum(ddd)`, a mean's moments, a person's total for dominance) follows
//! that order in its last bits. [`SplitInOrderExec`] hashes each row's record
//! key as `RepartitionExec` does (the partials check it,
//! [`super::PartitionOf`]), and each output takes its parts of the inputs'
//! batches in turn: batch 0 of input 0, batch 0 of input 1, …, batch 1 of
//! input 0, … An input that has ended drops out of the turn. Each input
//! partition gives its batches in file order, so every output's rows come
//! in the same order in every run, and the split answers exactly as the
//! plan without it does from run to run.
//!
//! Each input runs as its own task, as far ahead of its outputs as
//! [`AHEAD`] batches; an output waiting for one input's next batch holds the
//! others only that far. There is no deadlock: an input blocked on an output
//! is ahead of the batch that output waits for.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::hash_utils::create_hashes;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::REPARTITION_RANDOM_STATE;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc::{Receiver, Sender, channel};

/// Batches an input may run ahead of the slowest of its outputs.
const AHEAD: usize = 4;

/// Rows hash-partitioned on their record key into `partitions` outputs,
/// each taking the inputs' batches in turn (module docs).
#[derive(Debug)]
pub struct SplitInOrderExec {
    input: Arc<dyn ExecutionPlan>,
    key: Arc<dyn PhysicalExpr>,
    partitions: usize,
    properties: Arc<PlanProperties>,
    /// The outputs of the running execution not yet asked for.
    running: Mutex<Option<Running>>,
}

type Part = Result<RecordBatch>;

/// One execution: per output, its receiver from each input, in turn order.
struct Running {
    outputs: Vec<Option<Vec<Receiver<Part>>>>,
    tasks: Arc<Vec<SpawnedTask<()>>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("outputs", &self.outputs.len()).finish()
    }
}

impl SplitInOrderExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, key: Arc<dyn PhysicalExpr>, partitions: usize) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::Hash(vec![Arc::clone(&key)], partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        SplitInOrderExec { input, key, partitions, properties, running: Mutex::new(None) }
    }

    /// Starts an execution: a task per input partition.
    fn start(&self, context: &Arc<TaskContext>) -> Result<Running> {
        let inputs = self.input.output_partitioning().partition_count();
        let mut outputs: Vec<Vec<Receiver<Part>>> = (0..self.partitions).map(|_| Vec::new()).collect();
        let mut tasks = Vec::with_capacity(inputs);
        for i in 0..inputs {
            let stream = self.input.execute(i, Arc::clone(context))?;
            let mut senders = Vec::with_capacity(self.partitions);
            for output in &mut outputs {
                let (tx, rx) = channel(AHEAD);
                senders.push(tx);
                output.push(rx);
            }
            let feeding = SpawnedTask::spawn(feed(stream, Arc::clone(&self.key), senders.clone()));
            tasks.push(SpawnedTask::spawn(watch(feeding, senders)));
        }
        Ok(Running { outputs: outputs.into_iter().map(Some).collect(), tasks: Arc::new(tasks) })
    }
}

/// Sends each batch of `input`, split by the partition of its rows' record
/// keys, to the outputs (a part to each, empty or not, so that every output
/// counts the input's batches alike).
async fn feed(mut input: SendableRecordBatchStream, key: Arc<dyn PhysicalExpr>, outputs: Vec<Sender<Part>>) {
    let mut hashes = Vec::new();
    while let Some(batch) = input.next().await {
        match batch.and_then(|b| split(&b, &key, outputs.len(), &mut hashes)) {
            Ok(parts) => {
                let mut listening = false;
                for (output, part) in outputs.iter().zip(parts) {
                    listening |= output.send(Ok(part)).await.is_ok();
                }
                if !listening {
                    return;
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for output in &outputs {
                    let _ = output.send(Err(DataFusionError::Shared(Arc::clone(&e)))).await;
                }
                return;
            }
        }
    }
}

/// Waits for an input's task; if it panicked, its outputs get an error
/// after the parts it sent (a closed channel alone would read as the
/// input's end, and its remaining rows would be missing, not an error).
async fn watch(feeding: SpawnedTask<()>, outputs: Vec<Sender<Part>>) {
    if let Err(e) = feeding.join().await {
        let e = Arc::new(DataFusionError::Execution(format!("an input of a split by record key failed: {e}")));
        for output in &outputs {
            let _ = output.send(Err(DataFusionError::Shared(Arc::clone(&e)))).await;
        }
    }
}

/// `batch`'s rows by the partition of their record key: the hash of
/// `RepartitionExec`'s hash partitioning, modulo the partitions.
fn split(
    batch: &RecordBatch,
    key: &Arc<dyn PhysicalExpr>,
    partitions: usize,
    hashes: &mut Vec<u64>,
) -> Result<Vec<RecordBatch>> {
    let keys = key.evaluate(batch)?.into_array(batch.num_rows())?;
    hashes.clear();
    hashes.resize(keys.len(), 0);
    create_hashes([keys.as_ref() as &dyn Array], REPARTITION_RANDOM_STATE.random_state(), hashes)?;
    let mut rows: Vec<Vec<u32>> = (0..partitions).map(|_| Vec::with_capacity(keys.len() / partitions + 1)).collect();
    for (row, hash) in hashes.iter().enumerate() {
        rows[(hash % partitions as u64) as usize].push(row as u32);
    }
    rows.into_iter().map(|r| Ok(take_record_batch(batch, &UInt32Array::from(r))?)).collect()
}

/// One output: the inputs' parts taken in turn.
struct InTurn {
    schema: SchemaRef,
    /// Per input, its receiver, `None` once it has ended.
    inputs: Vec<Option<Receiver<Part>>>,
    turn: usize,
    /// The inputs' tasks, stopped when every output is dropped.
    _tasks: Arc<Vec<SpawnedTask<()>>>,
}

impl Stream for InTurn {
    type Item = Part;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Part>> {
        let this = &mut *self;
        loop {
            if this.inputs.iter().all(Option::is_none) {
                return Poll::Ready(None);
            }
            let at = this.turn;
            let next = (at + 1) % this.inputs.len();
            let Some(input) = &mut this.inputs[at] else {
                this.turn = next;
                continue;
            };
            match input.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.inputs[at] = None,
                Poll::Ready(Some(Err(e))) => {
                    // The answer is lost: nothing after the error.
                    this.inputs.iter_mut().for_each(|i| *i = None);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(part))) => {
                    this.turn = next;
                    if part.num_rows() > 0 {
                        return Poll::Ready(Some(Ok(part)));
                    }
                    continue;
                }
            }
            this.turn = next;
        }
    }
}

impl RecordBatchStream for InTurn {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

impl DisplayAs for SplitInOrderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SplitInOrderExec: partitioning=Hash([{}], {}), input_partitions={}, inputs in turn",
            self.key,
            self.partitions,
            self.input.output_partitioning().partition_count()
        )
    }
}

impl ExecutionPlan for SplitInOrderExec {
    fn name(&self) -> &str {
        "SplitInOrderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        f(&self.key)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("SplitInOrderExec takes one child");
        }
        Ok(Arc::new(SplitInOrderExec::new(children.swap_remove(0), Arc::clone(&self.key), self.partitions)))
    }

    /// Output `partition` of the running execution; the first output asked
    /// for a second time starts another.
    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition >= self.partitions {
            return internal_err!("SplitInOrderExec has {} partitions, not {}", self.partitions, partition + 1);
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.as_ref().is_none_or(|r| r.outputs[partition].is_none()) {
            *running = Some(self.start(&context)?);
        }
        let run = running.as_mut().expect("started above");
        let inputs = run.outputs[partition].take().expect("not taken yet");
        Ok(Box::pin(InTurn {
            schema: self.input.schema(),
            inputs: inputs.into_iter().map(Some).collect(),
            turn: 0,
            _tasks: Arc::clone(&run.tasks),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("rk", DataType::Int64, true), Field::new("n", DataType::Int64, false)]))
    }

    /// A batch of rows `from..from + 40`: record key `(i * 7919) % 101`, `n` = i.
    fn batch(from: i64) -> RecordBatch {
        let rows = from..from + 40;
        let keys: Int64Array = rows.clone().map(|i| (i % 9 != 0).then_some(i * 7_919 % 101)).collect();
        RecordBatch::try_new(schema(), vec![Arc::new(keys), Arc::new(Int64Array::from_iter_values(rows))])
            .expect("batch")
    }

    /// Two input partitions of three batches, each batch after a pause of
    /// its partition's `delays`.
    fn plan(delays: [u64; 2], panics: bool) -> Arc<dyn ExecutionPlan> {
        let partitions: Vec<Vec<RecordBatch>> =
            (0..2).map(|i| (0..3).map(|b| batch(1000 * i + 40 * b)).collect()).collect();
        let input = MemorySourceConfig::try_new_exec(&partitions, schema(), None).expect("memory");
        let delayed = Arc::new(Delayed { input, delays, panics });
        Arc::new(SplitInOrderExec::new(delayed, Arc::new(Column::new("rk", 0)), 3))
    }

    /// Each input partition's batches come after a pause of its own; with
    /// `panics`, input 1 panics after its first batch.
    #[derive(Debug)]
    struct Delayed {
        input: Arc<dyn ExecutionPlan>,
        delays: [u64; 2],
        panics: bool,
    }

    impl DisplayAs for Delayed {
        fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Delayed")
        }
    }

    impl ExecutionPlan for Delayed {
        fn name(&self) -> &str {
            "Delayed"
        }
        fn properties(&self) -> &Arc<PlanProperties> {
            self.input.properties()
        }
        fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
            vec![&self.input]
        }
        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
        ) -> Result<TreeNodeRecursion> {
            Ok(TreeNodeRecursion::Continue)
        }
        fn with_new_children(self: Arc<Self>, _c: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
            Ok(self)
        }
        fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
            let delay = Duration::from_millis(self.delays[partition]);
            let panics = self.panics && partition == 1;
            let input = self.input.execute(partition, context)?;
            let slowed = input.enumerate().then(move |(i, b)| async move {
                tokio::time::sleep(delay).await;
                assert!(!(panics && i > 0), "an input that fails");
                b
            });
            Ok(Box::pin(RecordBatchStreamAdapter::new(self.input.schema(), slowed)))
        }
    }

    /// Each output's batches, the outputs read together.
    async fn read(plan: Arc<dyn ExecutionPlan>) -> Vec<Vec<Result<RecordBatch>>> {
        let context = Arc::new(TaskContext::default());
        let read = (0..3).map(|p| plan.execute(p, Arc::clone(&context)).expect("execute").collect::<Vec<_>>());
        futures::future::join_all(read).await
    }

    /// Each output's `n`s in the order they came.
    async fn outputs(plan: Arc<dyn ExecutionPlan>) -> Vec<Vec<i64>> {
        let ns = |b: Result<RecordBatch>| b.expect("batch").column(1).as_primitive::<Int64Type>().values().to_vec();
        read(plan).await.into_iter().map(|o| o.into_iter().flat_map(ns).collect()).collect()
    }

    #[tokio::test]
    async fn each_output_takes_the_inputs_batches_in_turn_whichever_comes_first() {
        let first_slow = outputs(plan([20, 0], false)).await;
        let second_slow = outputs(plan([0, 20], false)).await;
        assert_eq!(first_slow, second_slow, "the same order however the inputs are timed");
        // Output by output: batch 0 of input 0, of input 1, batch 1 of input 0, …
        let keys = |from: i64| (from..from + 40).map(move |i| (i, (i % 9 != 0).then_some(i * 7_919 % 101)));
        let order: Vec<(i64, Option<i64>)> =
            (0..3).flat_map(|b| keys(40 * b).chain(keys(1000 + 40 * b))).collect::<Vec<_>>();
        let keys_column = Int64Array::from(order.iter().map(|(_, k)| *k).collect::<Vec<_>>());
        let mut hashes = vec![0; order.len()];
        create_hashes([&keys_column as &dyn Array], REPARTITION_RANDOM_STATE.random_state(), &mut hashes)
            .expect("hashes");
        for (p, got) in first_slow.iter().enumerate() {
            let expected: Vec<i64> =
                order.iter().zip(&hashes).filter(|(_, h)| **h % 3 == p as u64).map(|((n, _), _)| *n).collect();
            assert_eq!(got, &expected, "output {p}");
        }
        assert_eq!(first_slow.iter().map(Vec::len).sum::<usize>(), 240, "every row once");
    }

    #[tokio::test]
    async fn an_input_that_panics_ends_every_output_in_an_error_not_early() {
        for output in read(plan([0, 5], true)).await {
            let last = output.last().expect("something");
            assert!(last.as_ref().is_err_and(|e| e.to_string().contains("split by record key failed")), "{last:?}");
        }
    }
}
