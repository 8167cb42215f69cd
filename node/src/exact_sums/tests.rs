//! Which sums are summed exactly, compared as plan text, and their answers.

use super::*;
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

/// A table of ten rows of `0.1` (whose running sum is not 1.0) and an integer.
fn session() -> SessionContext {
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
        Field::new("n", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1; 10])),
            Arc::new(Float64Array::from(vec![0.1; 10])),
            Arc::new(Int64Array::from_iter_values(0..10)),
        ],
    )
    .expect("batch");
    let ctx = SessionContext::new();
    samkor_functions::register(&ctx, None);
    ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("table"))).expect("t");
    ctx
}

async fn rewritten(ctx: &SessionContext, sql: &str) -> LogicalPlan {
    exact_float_sums(ctx.sql(sql).await.expect("plan").logical_plan().clone()).expect("rewrite")
}

#[tokio::test]
async fn sums_of_doubles_are_summed_exactly_under_their_own_names() {
    let ctx = session();
    let sql = "SELECT g, sum(x) AS s, sum(x) FILTER (WHERE n > 2), sum(n), sum(DISTINCT x), count(*) FROM t GROUP BY g";
    let plan = rewritten(&ctx, sql).await;
    let expected = "Projection: t.g, sum(t.x) AS s, sum(t.x) FILTER (WHERE t.n > Int64(2)), sum(t.n), sum(DISTINCT t.x), count(Int64(1)) AS count(*)
  Aggregate: groupBy=[[t.g]], aggr=[[samkor_exact_sum(t.x) AS sum(t.x), samkor_exact_sum(t.x) FILTER (WHERE t.n > Int64(2)) AS sum(t.x) FILTER (WHERE t.n > Int64(2)), sum(t.n), sum(DISTINCT t.x), count(Int64(1))]]
    TableScan: t";
    assert_eq!(plan.display_indent().to_string(), expected);
    let out = ctx.execute_logical_plan(plan).await.expect("plan").collect().await.expect("run");
    let text = pretty_format_batches(&out).expect("format").to_string();
    // Ten and seven 0.1s, rounded once (a running sum gives 0.9999999999999999
    // for the ten; the seven's exact sum lies nearer 0.7000000000000001 than 0.7).
    assert!(text.contains("| 1 | 1.0 | 0.7000000000000001                     | 45       | 0.1 "), "{text}");
}

#[tokio::test]
async fn plans_without_sums_of_doubles_are_left_as_they_are() {
    let ctx = session();
    for sql in ["SELECT g, sum(n), avg(x) FROM t GROUP BY g", "SELECT x FROM t", "SELECT sum(DISTINCT x) FROM t"] {
        let before = ctx.sql(sql).await.expect("plan").logical_plan().clone();
        assert_eq!(rewritten(&ctx, sql).await, before, "{sql}");
    }
}
