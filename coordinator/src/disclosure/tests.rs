//! Plan rewrites of disclosure control, compared as plan text (as DataFusion's
//! optimizer rules are tested), over a small in-memory catalogue: no federation.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use samkor_policies::approval::{self, Approval, DisclosureDefaults};

use super::{CatalogueFacts, ColumnFacts, Context, Mode, control};

const APPROVAL: &str = r#"
project = "T-1"
title = "Plan tests"
ethics_reference = "Dnr 2026-1"
ethics_authority = "Etikprövningsmyndigheten"
principal_investigator = "alice"
members = ["alice"]
purpose = "Test the disclosure rewrite."
valid_from = 2026-01-01
valid_until = 2026-12-31
outputs = ["aggregate"]

[[tables]]
table = "hip.operations"
columns = ["person", "region", "bmi", "reoperation", "birth_date", "op_date"]
"#;

fn approval() -> Approval {
    approval::parse(std::path::Path::new("t.toml"), APPROVAL, &DisclosureDefaults::default(), None).expect("approval")
}

fn facts() -> CatalogueFacts {
    let mut table = std::collections::HashMap::new();
    table.insert("person".to_owned(), ColumnFacts { person: true, identifying: true, magnitude: false });
    table.insert("bmi".to_owned(), ColumnFacts { magnitude: true, ..ColumnFacts::default() });
    table.insert("birth_date".to_owned(), ColumnFacts { identifying: true, ..ColumnFacts::default() });
    let mut facts = CatalogueFacts::new();
    facts.insert("hip.operations".to_owned(), table);
    facts
}

async fn session() -> SessionContext {
    let ctx = SessionContext::new();
    samkor_functions::register_user_functions(&ctx);
    let hip = Arc::new(MemorySchemaProvider::new());
    ctx.catalog("datafusion").expect("default catalog").register_schema("hip", hip).expect("schema");
    let schema = Arc::new(Schema::new(vec![
        Field::new("person", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("bmi", DataType::Float64, true),
        Field::new("reoperation", DataType::Boolean, true),
        Field::new("birth_date", DataType::Date32, true),
        Field::new("op_date", DataType::Date32, true),
    ]));
    let table = MemTable::try_new(schema, vec![vec![]]).expect("table");
    ctx.register_table("hip.operations", Arc::new(table)).expect("register");
    ctx
}

/// The rewritten (executed) plan and the query kept above the aggregate, as text.
async fn rewrite(sql: &str) -> datafusion::common::Result<(String, String)> {
    let ctx = session().await;
    let plan = ctx.state().optimize(ctx.sql(sql).await?.logical_plan())?;
    let (approval, catalogue) = (approval(), facts());
    let controlled = control(plan, &Context { approval: &approval, catalogue: &catalogue })?;
    let Mode::Aggregate(layout) = &controlled.mode else { panic!("an aggregate answer: {sql}") };
    Ok((controlled.plan.display_indent().to_string(), layout.upper.display_indent().to_string()))
}

fn refused_by(sql_result: datafusion::common::Result<(String, String)>) -> String {
    let e = sql_result.expect_err("refused");
    let text = e.to_string();
    let start = text.find("refused by rule ").expect("a refusal") + "refused by rule ".len();
    text[start..].split(':').next().expect("rule").to_owned()
}

#[tokio::test]
async fn a_count_counts_persons_by_their_record_keys() {
    let (plan, upper) = rewrite("SELECT count(*) AS n FROM hip.operations").await.expect("rewrite");
    assert_eq!(
        plan,
        "Aggregate: groupBy=[[]], aggr=[[count(Int64(1)) AS __samkor_v4, samkor_persons(__samkor_rk0) AS __samkor_g1, \
         min(__samkor_rk0) AS __samkor_kmin2, max(__samkor_rk0) AS __samkor_kmax3]]\
         \n  Projection: hip.operations.person, samkor_record_key(hip.operations.person) AS __samkor_rk0\
         \n    TableScan: hip.operations projection=[person]"
    );
    assert_eq!(upper, "Projection: count(Int64(1)) AS count(*) AS n, __samkor_row\n  EmptyRelation: rows=0");
}

#[tokio::test]
async fn a_mean_becomes_its_parts_and_the_derived_share_runs_above() {
    let sql = "SELECT region, 100.0 * avg(CASE WHEN reoperation THEN 1.0 ELSE 0.0 END) AS pct \
               FROM hip.operations GROUP BY region";
    let (plan, upper) = rewrite(sql).await.expect("rewrite");
    assert!(!plan.contains("avg("), "no mean is computed, only its parts:\n{plan}");
    // Count, Σx, Σx², least, largest, largest |x|: fields of one call.
    assert_eq!(plan.matches("samkor_moments(CAST(CASE WHEN").count(), 1, "{plan}");
    for part in ["count(", "sum(", "min(CAST", "max(CAST", "max(abs"] {
        assert!(!plan.contains(part), "{part} is a field of samkor_moments:\n{plan}");
    }
    // Persons with the indicator 0 are counted too (the share's other count).
    assert!(plan.contains("ELSE Float64(0) END = Int64(0)) AS __samkor_pm"), "{plan}");
    assert!(!plan.contains("samkor_persons("), "every person companion in one call: {plan}");
    assert!(upper.starts_with("Projection: hip.operations.region, Float64(100) * avg("), "{upper}");
    assert!(upper.ends_with("EmptyRelation: rows=0"), "{upper}");
}

#[tokio::test]
async fn a_sum_of_a_magnitude_gets_its_dominance_companions() {
    let (plan, _) = rewrite("SELECT region, sum(bmi) AS s FROM hip.operations GROUP BY region").await.expect("rewrite");
    // In the aggregate itself: no second pass, window or join.
    let guarded = "abs(CAST(CASE WHEN hip.operations.bmi IS NOT NULL AND hip.operations.bmi != Int64(0) THEN hip.operations.bmi END AS Float64))";
    let present = "hip.operations.bmi IS NOT NULL AND hip.operations.bmi != Int64(0)";
    assert!(
        plan.contains(&format!(
            "samkor_companions(__samkor_rk0, Int64(2), Boolean(true), {present}, {guarded}) AS __samkor_pm"
        )),
        "{plan}"
    );
    // Everyone's total and the least and largest record key are fields of the same call.
    assert!(!plan.contains("AS __samkor_ds") && !plan.contains("min(__samkor_rk0)"), "{plan}");
    assert!(!plan.contains("Join") && !plan.contains("row_number"), "{plan}");
    assert_eq!(plan.matches("Aggregate:").count(), 1, "{plan}");
}

#[tokio::test]
async fn a_quantile_becomes_the_protected_window_mean() {
    let sql =
        "SELECT region, percentile_cont(0.25) WITHIN GROUP (ORDER BY bmi) AS q FROM hip.operations GROUP BY region";
    let (plan, _) = rewrite(sql).await.expect("rewrite");
    assert!(
        plan.contains("samkor_quantile(CAST(hip.operations.bmi AS Float64), __samkor_rk0, Float64(0.25), Int64(5))"),
        "{plan}"
    );
    assert!(!plan.contains("percentile_cont"), "{plan}");
}

#[tokio::test]
async fn refusals_name_their_rule() {
    let cases = [
        ("SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY bmi) FROM hip.operations", "disclosure.extreme_quantile"),
        ("SELECT region, bool_or(reoperation) FROM hip.operations GROUP BY region", "disclosure.identifying_aggregate"),
        ("SELECT corr(bmi, bmi) FROM hip.operations", "disclosure.unknown_aggregate"),
        ("SELECT person, count(*) FROM hip.operations GROUP BY person", "disclosure.identifying_group"),
    ];
    for (sql, rule) in cases {
        assert_eq!(refused_by(rewrite(sql).await), rule, "{sql}");
    }
}

/// A snapped generalisation of the birth date is a group like any other:
/// the aggregate groups by it, and the persons are traced as for any group.
#[tokio::test]
async fn an_age_band_at_an_event_is_a_group() {
    let (plan, _) = rewrite(
        "SELECT age_band(birth_date, op_date, 10) AS age, count(*) AS n FROM hip.operations GROUP BY age_band(birth_date, op_date, 10)",
    )
    .await
    .expect("rewrite");
    let aggregate = plan.lines().find(|l| l.trim_start().starts_with("Aggregate:")).expect("an aggregate");
    assert!(
        aggregate.contains("groupBy=[[age_band(hip.operations.birth_date, hip.operations.op_date, Int64(10))]]"),
        "{plan}"
    );
    assert!(plan.contains("samkor_persons(__samkor_rk0) AS __samkor_g"), "persons are counted per band: {plan}");
}

/// Unsnapped uses of the birth date stay refused, each by its rule.
#[tokio::test]
async fn unsnapped_birth_dates_are_refused() {
    let narrow =
        rewrite("SELECT age_band(birth_date, op_date, 2) AS a, count(*) AS n FROM hip.operations GROUP BY 1").await;
    assert_eq!(refused_by(narrow), "disclosure.generalisation");
    let day =
        rewrite("SELECT age_years(birth_date, DATE '2024-06-01') AS a, count(*) AS n FROM hip.operations GROUP BY 1")
            .await;
    assert_eq!(refused_by(day), "disclosure.generalisation");
    let new_year =
        rewrite("SELECT age_years(birth_date, DATE '2024-01-01') AS a, count(*) AS n FROM hip.operations GROUP BY 1")
            .await;
    assert!(new_year.is_ok(), "1 January is a snapped date");
    let free = rewrite(
        "SELECT CASE WHEN birth_date < DATE '1950-03-02' THEN 1 ELSE 0 END AS a, count(*) AS n FROM hip.operations GROUP BY 1",
    )
    .await;
    assert_eq!(refused_by(free), "disclosure.identifying_group");
}

/// Every person companion of the output aggregate is a field of one call per
/// record key (four magnitudes a call), under its own hidden name.
#[tokio::test]
async fn person_companions_are_fields_of_one_call_per_record_key() {
    let ctx = session().await;
    let sql = "SELECT region, count(*) AS n, sum(bmi) AS a, sum(bmi * 2) AS b, sum(bmi + 1) AS c, \
               sum(CASE WHEN reoperation THEN bmi END) AS d, avg(bmi * 3) AS e FROM hip.operations GROUP BY region";
    let plan = ctx.state().optimize(ctx.sql(sql).await.expect("plan").logical_plan()).expect("optimize");
    let (approval, catalogue) = (approval(), facts());
    let controlled = control(plan, &Context { approval: &approval, catalogue: &catalogue }).expect("rewrite");
    let Mode::Aggregate(layout) = &controlled.mode else { panic!("an aggregate answer") };
    let text = controlled.plan.display_indent().to_string();
    assert!(!text.contains("samkor_persons(") && !text.contains("samkor_top_sum("), "{text}");
    assert_eq!(text.matches("samkor_companions(").count(), 2, "five magnitudes: four and one: {text}");
    // The cell's persons, every statistic's persons and dominance totals resolve to fields.
    let names: Vec<&String> = layout
        .row
        .iter()
        .chain(layout.stats.iter().flat_map(|s| s.parts.persons.iter().chain(&s.parts.nonzero)))
        .chain(layout.stats.iter().filter_map(|s| s.parts.dominance_names.as_ref().map(|d| &d.0)))
        .collect();
    assert!(names.len() >= 13, "{names:?}");
    for name in &names {
        let (column, field) = layout.packed.get(*name).unwrap_or_else(|| panic!("{name} is packed: {text}"));
        assert!(text.contains(&format!("AS {column}")), "{column} in {text}");
        assert!(*field < 32 + 4, "{name}: {field}");
    }
    let tops: std::collections::BTreeSet<&(String, usize)> =
        layout.stats.iter().filter_map(|s| s.parts.dominance_names.as_ref()).map(|d| &layout.packed[&d.0]).collect();
    assert_eq!(tops.len(), 5, "each magnitude its own field: {tops:?}");
    // Everyone's total of a magnitude is a field of the call that ranks its
    // persons; the least and largest record key are fields of the first call.
    assert!(!text.contains("AS __samkor_ds") && !text.contains("min(__samkor_rk"), "{text}");
    for (top, total) in layout.stats.iter().filter_map(|s| s.parts.dominance_names.as_ref()) {
        let (top, total) = (&layout.packed[top], &layout.packed[total]);
        assert!(top.0 == total.0 && top.1 != total.1, "{top:?} {total:?}");
    }
    let (least, largest) = layout.fingerprint.as_ref().expect("a fingerprint");
    let (least, largest) = (&layout.packed[least], &layout.packed[largest]);
    assert!(least.0 == largest.0 && least.1 + 1 == largest.1, "{least:?} {largest:?}");
}

/// `count(DISTINCT person)` is the cell's persons companion, released from
/// it: no second distinct count over the pseudonyms. Over an expression of
/// the person column it stays a count of its own.
#[tokio::test]
async fn a_distinct_count_of_persons_is_their_companion() {
    let ctx = session().await;
    let (approval, catalogue) = (approval(), facts());
    let rewritten = |sql: &'static str| {
        let ctx = ctx.clone();
        let (approval, catalogue) = (approval.clone(), catalogue.clone());
        async move {
            let plan = ctx.state().optimize(ctx.sql(sql).await.expect("plan").logical_plan()).expect("optimize");
            let controlled = control(plan, &Context { approval: &approval, catalogue: &catalogue }).expect("rewrite");
            let Mode::Aggregate(layout) = controlled.mode else { panic!("an aggregate answer") };
            (controlled.plan.display_indent().to_string(), layout)
        }
    };
    let (plan, layout) =
        rewritten("SELECT region, count(DISTINCT person) AS p, count(*) AS n FROM hip.operations GROUP BY region")
            .await;
    assert!(!plan.contains("count(DISTINCT"), "{plan}");
    let p = &layout.stats[0].parts;
    assert!(p.value_is_persons && p.value.is_none() && p.persons.len() == 1, "{p:?}");
    assert!(plan.contains("hip.operations.person IS NOT NULL"), "the persons with a person: {plan}");
    assert!(!layout.stats[1].parts.value_is_persons, "count(*) is a count of rows");

    for sql in [
        "SELECT region, count(DISTINCT substr(person, 1, 4)) AS p FROM hip.operations GROUP BY region",
        "SELECT region, count(DISTINCT person) FILTER (WHERE bmi > 30) AS p FROM hip.operations GROUP BY region",
    ] {
        let (plan, layout) = rewritten(sql).await;
        let p = &layout.stats[0].parts;
        assert!(!p.value_is_persons && p.value.is_some(), "{sql}: {plan}");
    }
}
