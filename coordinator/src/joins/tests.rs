//! The join rewrite, compared as plan text (as DataFusion's optimizer rules are tested).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::MemTable;
use datafusion::optimizer::{Optimizer, OptimizerContext};
use datafusion::prelude::SessionContext;

use super::JoinOnPseudonymBytes;

async fn session() -> SessionContext {
    let ctx = SessionContext::new();
    for (register, table, column) in [("hip", "operations", "fixation"), ("dors", "deaths", "death_date")] {
        ctx.catalog("datafusion")
            .expect("default catalog")
            .register_schema(register, Arc::new(MemorySchemaProvider::new()))
            .expect("schema");
        let schema = Arc::new(Schema::new(vec![
            Field::new("person", DataType::Utf8, true),
            Field::new(column, DataType::Utf8, true),
        ]));
        let t = MemTable::try_new(schema, vec![vec![]]).expect("table");
        ctx.register_table(format!("{register}.{table}"), Arc::new(t)).expect("register");
    }
    ctx
}

/// The plan of `sql` after DataFusion's rules, then the rewrite alone.
async fn rewritten(sql: &str) -> (String, String) {
    let ctx = session().await;
    let plan = ctx.state().optimize(ctx.sql(sql).await.expect("plan").logical_plan()).expect("optimize");
    let before = plan.display_indent().to_string();
    let optimizer = Optimizer::with_rules(vec![Arc::new(JoinOnPseudonymBytes)]);
    let after = optimizer.optimize(plan, &OptimizerContext::new(), |_, _| {}).expect("rewrite");
    (before, after.display_indent().to_string())
}

#[tokio::test]
async fn person_keys_become_pseudonym_bytes_below_the_join() {
    let (_, after) = rewritten(
        "SELECT o.fixation, count(*) FROM hip.operations o JOIN dors.deaths d ON d.person = o.person GROUP BY o.fixation",
    )
    .await;
    assert_eq!(
        after,
        "Projection: o.fixation, count(Int64(1)) AS count(*)\
         \n  Aggregate: groupBy=[[o.fixation]], aggr=[[count(Int64(1))]]\
         \n    Projection: o.fixation\
         \n      Projection: o.person, o.fixation, d.person\
         \n        Inner Join: __samkor_join_l0 = __samkor_join_r0\
         \n          Projection: o.person, o.fixation, samkor_pseudonym_bytes(o.person) AS __samkor_join_l0\
         \n            SubqueryAlias: o\
         \n              TableScan: hip.operations projection=[person, fixation]\
         \n          Projection: d.person, samkor_pseudonym_bytes(d.person) AS __samkor_join_r0\
         \n            SubqueryAlias: d\
         \n              TableScan: dors.deaths projection=[person]"
    );
}

/// With DataFusion's rules after it (as the coordinator runs them), the text
/// no one reads above the join is dropped: only the bytes cross it.
#[tokio::test]
async fn text_no_longer_read_is_dropped_by_the_rules_after() {
    let ctx = session().await;
    let sql = "SELECT o.fixation, count(*) FROM hip.operations o JOIN dors.deaths d ON d.person = o.person GROUP BY o.fixation";
    let plan = ctx.state().optimize(ctx.sql(sql).await.expect("plan").logical_plan()).expect("optimize");
    let mut rules: Vec<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> =
        vec![Arc::new(JoinOnPseudonymBytes)];
    rules.extend(Optimizer::new().rules);
    let after = Optimizer::with_rules(rules).optimize(plan, &OptimizerContext::new(), |_, _| {}).expect("rewrite");
    let text = after.display_indent().to_string();
    let join = text.lines().position(|l| l.contains("Inner Join: __samkor_join_l0 = __samkor_join_r0")).expect(&text);
    let above: Vec<&str> = text.lines().take(join).collect();
    assert!(above.iter().all(|l| !l.contains("person")), "{text}");
    assert!(text.contains("samkor_pseudonym_bytes(o.person) AS __samkor_join_l0"), "{text}");
}

#[tokio::test]
async fn semi_joins_and_subquery_aliases_pass_person_through() {
    let (_, after) = rewritten(
        "SELECT count(*) FROM hip.operations WHERE person IN (SELECT p FROM (SELECT person AS p FROM dors.deaths) x)",
    )
    .await;
    assert!(after.contains("LeftSemi Join: __samkor_join_l0 = __samkor_join_r0"), "{after}");
    assert!(after.contains("samkor_pseudonym_bytes(__correlated_sq_1.p) AS __samkor_join_r0"), "{after}");
}

#[tokio::test]
async fn keys_computed_from_a_person_or_of_other_columns_keep_their_text() {
    for sql in [
        "SELECT count(*) FROM hip.operations o JOIN dors.deaths d ON upper(d.person) = upper(o.person)",
        "SELECT count(*) FROM hip.operations o JOIN dors.deaths d ON d.death_date = o.fixation",
        "SELECT count(*) FROM hip.operations o JOIN (SELECT upper(person) AS person FROM dors.deaths) d ON d.person = o.person",
    ] {
        let (before, after) = rewritten(sql).await;
        assert_eq!(after, before, "{sql}");
        assert!(!after.contains("samkor_pseudonym_bytes"), "{sql}: {after}");
    }
}
