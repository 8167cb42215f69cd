//! The rewrite, compared as plan text (as DataFusion's optimizer rules are tested).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use samkor_functions::RecordKeySecret;

use super::count_persons_by_rows;

/// The plan of `sql` before and after the rewrite, `persons` holding one row per person.
async fn rewritten(sql: &str) -> (String, String) {
    let ctx = SessionContext::new();
    samkor_functions::register(&ctx, Some(RecordKeySecret([3; 16])));
    for table in ["persons", "visits"] {
        let schema = Arc::new(Schema::new(vec![
            Field::new("person", DataType::Utf8, true),
            Field::new("region", DataType::Utf8, true),
            Field::new("sex", DataType::Utf8, true),
        ]));
        ctx.register_table(table, Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("table"))).expect("register");
    }
    let plan = ctx.sql(sql).await.expect("plan").logical_plan().clone();
    let before = plan.display_indent().to_string();
    let distinct: HashSet<TableReference> = [TableReference::bare("persons")].into();
    let after = count_persons_by_rows(plan, &distinct).expect("rewrite").display_indent().to_string();
    (before, after)
}

#[tokio::test]
async fn disclosure_controls_cell_persons_become_row_counts() {
    let (_, after) = rewritten(
        "SELECT sex, count(*) AS n, samkor_persons(rk) AS g FROM \
         (SELECT sex, samkor_record_key(person) AS rk FROM persons WHERE region = 'x') GROUP BY sex",
    )
    .await;
    assert_eq!(
        after,
        "Projection: persons.sex, count(Int64(1)) AS count(*) AS n, samkor_persons(rk) AS g\
         \n  Aggregate: groupBy=[[persons.sex]], aggr=[[count(Int64(1)), samkor_persons_of_rows(rk) AS samkor_persons(rk)]]\
         \n    Projection: persons.sex, samkor_record_key(persons.person) AS rk\
         \n      Filter: persons.region = Utf8(\"x\")\
         \n        TableScan: persons"
    );
}

#[tokio::test]
async fn rows_reached_without_repeating_one_qualify() {
    for sql in [
        "SELECT region, samkor_persons(samkor_record_key(person)) FROM persons GROUP BY region",
        "SELECT samkor_persons(CASE WHEN sex = 'F' THEN rk END) FROM (SELECT sex, samkor_record_key(person) AS rk FROM persons) p",
        "SELECT samkor_persons(rk) FILTER (WHERE sex = 'F') FROM (SELECT sex, samkor_record_key(q.person) AS rk FROM (SELECT * FROM persons ORDER BY region LIMIT 10) q) p",
    ] {
        let (before, after) = rewritten(sql).await;
        assert!(!before.contains("samkor_persons_of_rows"), "{before}");
        assert!(after.contains("samkor_persons_of_rows("), "{sql}:\n{after}");
    }
}

#[tokio::test]
async fn anything_that_may_repeat_a_person_keeps_the_sets() {
    for sql in [
        // Another table: not declared, or not checked.
        "SELECT region, samkor_persons(samkor_record_key(person)) FROM visits GROUP BY region",
        // A join or a union repeats rows.
        "SELECT samkor_persons(samkor_record_key(a.person)) FROM persons a JOIN persons b ON a.region = b.region",
        "SELECT samkor_persons(rk) FROM (SELECT samkor_record_key(person) AS rk FROM persons UNION ALL SELECT samkor_record_key(person) FROM persons) u",
        // Not the record key of the person column.
        "SELECT samkor_persons(samkor_record_key(region)) FROM persons",
        "SELECT samkor_persons(rk) FROM (SELECT samkor_record_key(region) AS rk FROM persons) p",
        "SELECT samkor_persons(rk) FROM (SELECT samkor_record_key(p) AS rk FROM (SELECT region AS p FROM persons) x) y",
        // A constant for every row that fails the condition.
        "SELECT samkor_persons(CASE WHEN sex = 'F' THEN rk ELSE 1 END) FROM (SELECT sex, samkor_record_key(person) AS rk FROM persons) p",
        // Rows of an aggregate below.
        "SELECT samkor_persons(rk) FROM (SELECT min(samkor_record_key(person)) AS rk FROM persons GROUP BY region) g",
    ] {
        let (before, after) = rewritten(sql).await;
        assert_eq!(before, after, "{sql}");
    }
}
