//! `samkor_persons_of_rows` equals `samkor_persons` on rows of distinct
//! persons, through DataFusion's partial and final aggregates.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::*;
use crate::persons_udaf;

/// Rows of distinct record keys (some null) in groups, over several partitions.
fn partitions() -> Vec<Vec<RecordBatch>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Utf8, false),
        Field::new("rk", DataType::Int64, true),
        Field::new("c", DataType::Boolean, false),
    ]));
    // Distinct keys spread over the whole i64 range (a multiplicative hash of the row).
    let key = |i: i64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as i64);
    (0..4)
        .map(|p| {
            let rows: Vec<i64> = (p * 2500..(p + 1) * 2500).collect();
            let g: ArrayRef = Arc::new(StringArray::from_iter_values(rows.iter().map(|i| format!("g{}", i % 7))));
            let rk: ArrayRef = Arc::new(Int64Array::from_iter(rows.iter().map(|&i| (i % 13 != 0).then(|| key(i)))));
            let c: ArrayRef =
                Arc::new(datafusion::arrow::array::BooleanArray::from_iter(rows.iter().map(|i| Some(i % 3 == 0))));
            vec![RecordBatch::try_new(schema.clone(), vec![g, rk, c]).expect("batch")]
        })
        .collect()
}

async fn session(skip_partial: bool) -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(3);
    if skip_partial {
        // Partial aggregates pass rows on as states at once (`convert_to_state`).
        let options = config.options_mut();
        options.execution.skip_partial_aggregation_probe_rows_threshold = 0;
        options.execution.skip_partial_aggregation_probe_ratio_threshold = 0.0;
    }
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udaf(persons_udaf());
    ctx.register_udaf(persons_of_rows_udaf());
    let parts = partitions();
    let t = MemTable::try_new(parts[0][0].schema(), parts).expect("table");
    ctx.register_table("t", Arc::new(t)).expect("register");
    ctx
}

async fn pairs(ctx: &SessionContext, sql: &str) -> Vec<(i64, i64)> {
    let out = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
    out.iter()
        .flat_map(|b| {
            let (a, b) =
                (b.column(0).as_primitive::<Int64Type>().clone(), b.column(1).as_primitive::<Int64Type>().clone());
            (0..a.len()).map(move |i| (a.value(i), b.value(i)))
        })
        .collect()
}

#[tokio::test]
async fn equals_samkor_persons_on_distinct_persons() {
    for skip_partial in [false, true] {
        let ctx = session(skip_partial).await;
        for sql in [
            "SELECT samkor_persons(rk), samkor_persons_of_rows(rk) FROM t GROUP BY g ORDER BY g",
            "SELECT samkor_persons(rk) FILTER (WHERE c), samkor_persons_of_rows(rk) FILTER (WHERE c) FROM t GROUP BY g ORDER BY g",
            "SELECT samkor_persons(CASE WHEN c THEN rk END), samkor_persons_of_rows(CASE WHEN c THEN rk END) FROM t GROUP BY g",
            "SELECT samkor_persons(rk), samkor_persons_of_rows(rk) FROM t",
            "SELECT samkor_persons(rk), samkor_persons_of_rows(rk) FROM t WHERE g = 'none'",
        ] {
            let got = pairs(&ctx, sql).await;
            assert!(!got.is_empty(), "{sql}");
            for (exact, by_rows) in &got {
                assert_eq!(
                    PersonsCell::unpack(*by_rows),
                    PersonsCell::unpack(*exact),
                    "{sql} (skip partial {skip_partial})"
                );
            }
            if !sql.contains("'none'") {
                assert!(got.iter().all(|(e, _)| PersonsCell::unpack(*e).persons > 100), "{sql}: {got:?}");
            }
        }
    }
}

#[test]
fn partial_emits_take_their_groups_only() {
    let keys: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(-1)]))];
    let mut acc = CellSums::default();
    acc.update_batch(&keys, &[0, 1, 1, 2], None, 3).expect("update");
    let first = acc.evaluate(EmitTo::First(2)).expect("evaluate");
    let cells: Vec<PersonsCell> =
        first.as_primitive::<Int64Type>().values().iter().map(|v| PersonsCell::unpack(*v)).collect();
    assert_eq!(cells, vec![PersonsCell { persons: 1, key: 1 }, PersonsCell { persons: 1, key: 2 }]);
    let state = acc.state(EmitTo::All).expect("state");
    let mut total = CellSums::default();
    total.merge_batch(&state, &[0], 1).expect("merge");
    total.merge_batch(&state, &[0], 1).expect("merge");
    let cell = PersonsCell::unpack(total.evaluate(EmitTo::All).expect("evaluate").as_primitive::<Int64Type>().value(0));
    assert_eq!(cell, PersonsCell { persons: 2, key: u32::MAX.wrapping_add(u32::MAX) });
}
