//! The rewrite, compared as plan text, and its plans' answers.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::physical_plan::{collect, displayable};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::partition_persons;

/// Two partitions of rows: a region, a record key (a person's rows in both
/// partitions), another key, a value.
fn session(target_partitions: usize) -> SessionContext {
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("rk", DataType::Int64, true),
        Field::new("other", DataType::Int64, true),
        Field::new("x", DataType::Float64, true),
    ]));
    let batch = |offset: i64| {
        let rows = 0..500i64;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                rows.clone().map(|i| Some(["Skåne", "Gotland", "Uppsala"][(i % 3) as usize])).collect::<StringArray>(),
            ),
            Arc::new(rows.clone().map(|i| (i % 7 != 0).then_some((i + offset) % 97 * 7_919)).collect::<Int64Array>()),
            Arc::new(rows.clone().map(|i| Some(i % 13)).collect::<Int64Array>()),
            Arc::new(rows.map(|i| (i % 4 != 0).then_some((i % 23) as f64)).collect::<Float64Array>()),
        ];
        RecordBatch::try_new(schema.clone(), columns).expect("batch")
    };
    let table = MemTable::try_new(schema.clone(), vec![vec![batch(0)], vec![batch(31)]]).expect("table");
    let config = SessionConfig::new().with_target_partitions(target_partitions);
    let ctx = SessionContext::new_with_config(config);
    ctx.register_table("t", Arc::new(table)).expect("register");
    crate::register(&ctx, None);
    ctx
}

/// The plan of `sql`, rewritten, and its text.
async fn rewritten(ctx: &SessionContext, sql: &str) -> (super::Split, String) {
    let plan = ctx.sql(sql).await.expect("sql").create_physical_plan().await.expect("plan");
    let split = partition_persons(plan, &ctx.state()).expect("rewrite");
    let text = displayable(split.plan.as_ref()).indent(false).to_string();
    (split, text)
}

const COMPANIONS: &str = "SELECT region, count(*) AS n, samkor_companions(rk, 2, true, x > 3, abs(x)) AS c \
                          FROM t GROUP BY region ORDER BY region";

#[tokio::test]
async fn the_partials_input_is_split_on_the_record_key_and_both_steps_summarise() {
    let ctx = session(2);
    let (split, text) = rewritten(&ctx, COMPANIONS).await;
    assert!(split.rewritten);
    let companions = "samkor_companions(t.rk,Int64(2),Boolean(true),t.x > Int64(3),abs(t.x))";
    let expected = format!(
        "SortPreservingMergeExec: [region@0 ASC NULLS LAST]
  ProjectionExec: expr=[region@0 as region, count(Int64(1))@1 as n, {companions}@2 as c]
    SortExec: expr=[region@0 ASC NULLS LAST], preserve_partitioning=[true]
      AggregateExec: mode=FinalPartitioned, gby=[region@0 as region], aggr=[count(Int64(1)), {companions}]
        RepartitionExec: partitioning=Hash([region@0], 2), input_partitions=2
          AggregateExec: mode=Partial, gby=[region@0 as region], aggr=[count(Int64(1)), {companions}]
            SplitInOrderExec: partitioning=Hash([rk@1], 2), input_partitions=2, inputs in turn
              DataSourceExec: partitions=2, partition_sizes=[1, 1]
"
    );
    assert_eq!(text, expected);
}

const PERSONS: &str = "SELECT region, count(*) AS n, samkor_persons(rk) AS p, min(rk) AS lo, max(rk) AS hi \
                       FROM t GROUP BY region ORDER BY region";

#[tokio::test]
async fn persons_alone_are_split_too() {
    let (split, text) = rewritten(&session(2), PERSONS).await;
    assert!(split.rewritten);
    let expected = "SortPreservingMergeExec: [region@0 ASC NULLS LAST]
  ProjectionExec: expr=[region@0 as region, count(Int64(1))@1 as n, samkor_persons(t.rk)@2 as p, min(t.rk)@3 as lo, max(t.rk)@4 as hi]
    SortExec: expr=[region@0 ASC NULLS LAST], preserve_partitioning=[true]
      AggregateExec: mode=FinalPartitioned, gby=[region@0 as region], aggr=[count(Int64(1)), samkor_persons(t.rk), min(t.rk), max(t.rk)]
        RepartitionExec: partitioning=Hash([region@0], 2), input_partitions=2
          AggregateExec: mode=Partial, gby=[region@0 as region], aggr=[count(Int64(1)), samkor_persons(t.rk), min(t.rk), max(t.rk)]
            RepartitionExec: partitioning=Hash([rk@1], 2), input_partitions=2
              DataSourceExec: partitions=2, partition_sizes=[1, 1]
";
    assert_eq!(text, expected);
}

#[tokio::test]
async fn split_persons_give_the_answers_of_the_lists() {
    let sums =
        "SELECT region, sum(x) AS s, avg(x) AS a, samkor_persons(rk) AS p FROM t GROUP BY region ORDER BY region";
    for sql in [COMPANIONS, PERSONS, sums] {
        for partitions in [2, 3] {
            let ctx = session(partitions);
            let plain = ctx.sql(sql).await.expect("sql").collect().await.expect("run");
            let (split, _) = rewritten(&ctx, sql).await;
            let split = collect(split.plan, split.task).await.expect("run");
            let text = |b| pretty_format_batches(b).expect("format").to_string();
            assert_eq!(text(&split), text(&plain), "{partitions} partitions: {sql}");
        }
    }
}

#[tokio::test]
async fn plans_it_cannot_split_are_left_as_they_are() {
    let ctx = session(2);
    for sql in [
        // Persons of two record keys.
        "SELECT region, samkor_companions(rk, 2, true), samkor_companions(other, 2, true) FROM t GROUP BY region",
        "SELECT region, samkor_companions(rk, 2, true), samkor_persons(other) FROM t GROUP BY region",
        // Persons of an expression.
        "SELECT region, samkor_persons(CASE WHEN x > 3 THEN rk END) FROM t GROUP BY region",
        // No GROUP BY.
        "SELECT samkor_companions(rk, 2, true) FROM t",
        // No companions.
        "SELECT region, count(*), sum(x) FROM t GROUP BY region",
    ] {
        let before = ctx.sql(sql).await.expect("sql").create_physical_plan().await.expect("plan");
        let text = displayable(before.as_ref()).indent(false).to_string();
        let (split, after) = rewritten(&ctx, sql).await;
        assert!(!split.rewritten, "{sql}");
        assert_eq!(after, text, "{sql}");
    }
    // Counts, extremes and sums of integers do not depend on the order:
    // split as they come.
    let exact = "SELECT region, count(x) AS n, sum(other) AS s, min(x) AS lo, samkor_exact_sum(x) AS e, \
                 samkor_persons(rk) AS p FROM t GROUP BY region";
    let (split, text) = rewritten(&ctx, exact).await;
    assert!(split.rewritten && text.contains("RepartitionExec: partitioning=Hash([rk@"), "{text}");
    // A sum or mean of floating-point numbers, or a magnitude's totals: their
    // last bits follow the order of the rows, so the split takes the inputs
    // in turn.
    for sql in [
        "SELECT region, sum(x) AS s, samkor_persons(rk) AS p FROM t GROUP BY region",
        "SELECT region, avg(other) AS a, samkor_persons(rk) AS p FROM t GROUP BY region",
        "SELECT region, samkor_moments(x) AS m, samkor_persons(rk) AS p FROM t GROUP BY region",
        "SELECT region, count(*) AS n, samkor_companions(rk, 2, true, abs(x)) AS c FROM t GROUP BY region",
    ] {
        let (split, text) = rewritten(&ctx, sql).await;
        assert!(split.rewritten && text.contains("SplitInOrderExec: partitioning=Hash([rk@"), "{sql}: {text}");
        assert!(!text.contains("RepartitionExec: partitioning=Hash([rk@"), "{sql}: {text}");
    }
    // One partition: nothing to split among.
    let (split, _) = rewritten(&session(1), COMPANIONS).await;
    assert!(!split.rewritten);
}

#[tokio::test]
async fn a_session_with_a_bounded_memory_pool_keeps_the_lists() {
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    let unbounded = session(2);
    let runtime = RuntimeEnvBuilder::new().with_memory_limit(64 << 20, 1.0).build_arc().expect("runtime");
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(unbounded.state())
        .with_runtime_env(runtime)
        .build();
    let bounded = SessionContext::new_with_state(state);
    let (split, _) = rewritten(&bounded, COMPANIONS).await;
    assert!(!split.rewritten, "a partial may emit early under a bounded pool");
}

#[tokio::test]
async fn a_split_plan_runs_in_a_task_that_never_skips_partial_aggregation() {
    let skips = |split: &super::Split| {
        split.task.session_config().options().execution.skip_partial_aggregation_probe_ratio_threshold < 1.0
    };
    let ctx = session(2);
    let (split, _) = rewritten(&ctx, COMPANIONS).await;
    assert!(split.rewritten && !skips(&split));
    let (kept, _) = rewritten(&ctx, "SELECT region, count(*) FROM t GROUP BY region").await;
    assert!(!kept.rewritten && skips(&kept), "the session's own task");
}
