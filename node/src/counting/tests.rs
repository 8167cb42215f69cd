//! Which plans count persons on identity numbers or key them at the scan,
//! compared as plan text where the rewrite matters.

use super::*;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

async fn plan(sql: &str) -> LogicalPlan {
    let schema = Arc::new(Schema::new(vec![
        Field::new("person", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("ddd", DataType::Float64, true),
    ]));
    let ctx = SessionContext::new();
    samkor_functions::register(&ctx, Some(RecordKeySecret([3; 16])));
    ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("table"))).expect("register");
    ctx.sql(sql).await.expect("plan").logical_plan().clone()
}

#[tokio::test]
async fn only_plain_person_counts_qualify() {
    for sql in [
        "SELECT region, count(*), count(DISTINCT person) AS p FROM t GROUP BY region",
        "SELECT count(person) FROM t WHERE region = 'x'",
        "SELECT region, count(DISTINCT CASE WHEN ddd > 1 THEN person END) FROM t GROUP BY region",
        "SELECT \"region\", count(DISTINCT \"person\") FROM (SELECT \"person\", \"region\" FROM \"t\" WHERE \"ddd\" > 0) AS \"x\" GROUP BY \"region\"",
        "SELECT region, count(DISTINCT person), min(rk) FROM (SELECT person, region, samkor_record_key(person) AS rk FROM t) x GROUP BY region",
        "SELECT region, sum(ddd), samkor_persons(samkor_record_key(person)) FROM t GROUP BY region",
        "SELECT samkor_pseudonym_bytes(person) AS b, samkor_record_key(person) AS rk, region FROM t",
        "SELECT region, count(DISTINCT person), samkor_companions(rk, 1, true, person IS NOT NULL, person IS NULL) \
         FROM (SELECT person, region, samkor_record_key(person) AS rk FROM t) x GROUP BY region",
    ] {
        assert!(person_only_counted(&plan(sql).await), "{sql}");
    }
    for sql in [
        "SELECT person FROM t",
        "SELECT person AS p FROM t",
        "SELECT region, count(*) FROM t WHERE person = 'x' GROUP BY region",
        "SELECT person, count(*) FROM t GROUP BY person",
        "SELECT count(DISTINCT upper(person)) FROM t",
        "SELECT count(DISTINCT CASE WHEN person > 'a' THEN person END) FROM t",
        "SELECT count(DISTINCT CASE WHEN ddd > 1 THEN person ELSE 'x' END) FROM t",
        "SELECT approx_distinct(person) FROM t",
        "SELECT max(person) FROM t",
        "SELECT count(*) FROM t a JOIN t b ON a.person = b.person",
        "SELECT count(*) FROM (SELECT DISTINCT person FROM t) d",
        "SELECT count(DISTINCT person) FROM (SELECT person FROM t UNION ALL SELECT region AS person FROM t) u",
        "SELECT region AS person, count(*) FROM t GROUP BY region",
        "SELECT count(DISTINCT person) FROM t WHERE region IN (SELECT region FROM t WHERE person = 'x')",
        "SELECT person, samkor_record_key(person) AS rk FROM t",
        "SELECT count(*) FROM t WHERE samkor_record_key(person) > 0",
        "SELECT samkor_record_key(upper(person)) AS rk, count(*) FROM t GROUP BY 1",
        "SELECT region, samkor_persons(samkor_record_key(person)) FROM t GROUP BY region, person",
        "SELECT person IS NULL AS p, count(*) FROM t GROUP BY person IS NULL",
        "SELECT count(DISTINCT person) FROM t WHERE person IS NOT NULL AND person > 'a'",
    ] {
        assert!(!person_only_counted(&plan(sql).await), "{sql}");
    }
}

#[tokio::test]
async fn record_keys_come_from_identity_numbers_under_their_own_names() {
    let key = crate::pseudonym::FederationKey::from_bytes([5; 32]);
    let udf = IdentityFunctions::new(key.for_project("P"), RecordKeySecret([3; 16]));
    let sql = "SELECT region, count(DISTINCT person), samkor_persons(samkor_record_key(person)) \
               FROM (SELECT person, region, samkor_record_key(person) AS rk FROM t) x GROUP BY region";
    let rewritten = count_on_identity_numbers(plan(sql).await, &udf).expect("rewrite");
    let text = rewritten.display_indent().to_string();
    // Every call computes from identity numbers; the old name stays only as an output's name.
    assert!(text.contains("samkor_persons(samkor_record_key_of_identity_number(x.person)) AS "), "{text}");
    assert!(text.contains("samkor_record_key_of_identity_number(t.person) AS rk"), "{text}");
    assert!(!text.contains("samkor_record_key(t.person)"), "{text}");
    // The output keeps the names the coordinator asked for.
    let before = plan_names(&plan(sql).await);
    assert_eq!(plan_names(&rewritten), before);
    // A plan that sends the person out is left alone.
    let kept = plan("SELECT person, samkor_record_key(person) AS rk FROM t").await;
    let same = count_on_identity_numbers(kept.clone(), &udf).expect("rewrite");
    assert_eq!(same, kept);
}

fn plan_names(plan: &LogicalPlan) -> Vec<String> {
    plan.schema().fields().iter().map(|f| f.name().clone()).collect()
}

/// The plan of `sql` over `persons`, a project table (identity numbers in
/// `pnr`, served as `person`), before any node rewrite.
async fn project_plan(sql: &str) -> LogicalPlan {
    let config: crate::config::TableConfig = toml::from_str(
        r#"
        name = "persons"
        format = "parquet"
        person_column = "pnr"
        columns = [
            { name = "pnr", type = "utf8" },
            { name = "region", type = "utf8" },
            { name = "sex", type = "utf8" },
        ]
        "#,
    )
    .expect("config");
    let declared = Arc::new(Schema::new(vec![
        Field::new("pnr", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("sex", DataType::Utf8, true),
    ]));
    let inner = Arc::new(MemTable::try_new(declared, vec![vec![]]).expect("table"));
    let served = Arc::new(crate::table::ServedTable::over(config, inner));
    let key = crate::pseudonym::FederationKey::from_bytes([5; 32]);
    let table = served.for_project(key.for_project("P"), Arc::default());
    let ctx = SessionContext::new();
    samkor_functions::register(&ctx, Some(RecordKeySecret([3; 16])));
    ctx.register_table("persons", Arc::new(table)).expect("register");
    ctx.sql(sql).await.expect("plan").logical_plan().clone()
}

fn functions() -> IdentityFunctions {
    let key = crate::pseudonym::FederationKey::from_bytes([5; 32]);
    IdentityFunctions::new(key.for_project("P"), RecordKeySecret([3; 16]))
}

#[tokio::test]
async fn record_keys_alone_are_computed_at_the_scan_as_the_person_column() {
    let sql = "SELECT sex, count(*) AS n, samkor_persons(rk) AS g, min(rk) AS lo FROM \
               (SELECT sex, samkor_record_key(person) AS rk FROM persons WHERE region = 'x') GROUP BY sex";
    let before = project_plan(sql).await;
    assert_eq!(derived_at_the_scans(&before), Some(Derived::RecordKey));
    let after = count_on_identity_numbers(before.clone(), &functions()).expect("rewrite");
    assert_eq!(
        after.display_indent().to_string(),
        "Projection: persons.sex, count(Int64(1)) AS count(*) AS n, samkor_persons(rk) AS g, min(rk) AS lo\
         \n  Aggregate: groupBy=[[persons.sex]], aggr=[[count(Int64(1)), samkor_persons(rk), min(rk)]]\
         \n    Projection: persons.sex, persons.person AS rk\
         \n      Filter: persons.region = Utf8(\"x\")\
         \n        TableScan: persons"
    );
    // The key is an Int64 from the scan up; the outputs keep their names and types.
    let scanned = after.inputs()[0].inputs()[0].inputs()[0].inputs()[0].schema();
    assert_eq!(scanned.field_with_unqualified_name("person").expect("person").data_type(), &DataType::Int64);
    assert_eq!(after.schema().as_arrow(), before.schema().as_arrow());
    // Keys under a condition and an alias of the scan: the same rewrite.
    let sql = "SELECT region, samkor_persons(CASE WHEN sex = 'F' THEN samkor_record_key(p.person) END) AS f \
               FROM persons AS p GROUP BY region";
    let after = count_on_identity_numbers(project_plan(sql).await, &functions()).expect("rewrite");
    let text = after.display_indent().to_string();
    // (The old expression stays only as the output's name.)
    assert!(text.contains("aggr=[[samkor_persons(CASE WHEN p.sex = Utf8(\"F\") THEN p.person END) AS "), "{text}");
    // Disclosure control's companions test the person's presence: on the key, the same test.
    let sql = "SELECT region, samkor_companions(rk, 2, true, person IS NOT NULL, person IS NOT NULL IS NOT TRUE) AS c \
               FROM (SELECT person, region, samkor_record_key(person) AS rk FROM persons) GROUP BY region";
    let before = project_plan(sql).await;
    assert_eq!(derived_at_the_scans(&before), Some(Derived::RecordKey));
    let text = count_on_identity_numbers(before, &functions()).expect("rewrite").display_indent().to_string();
    assert!(text.contains("Projection: persons.person, persons.region, persons.person AS rk"), "{text}");
    assert!(text.contains("persons.person IS NOT NULL, persons.person IS NOT NULL IS NOT TRUE)"), "{text}");
}

#[tokio::test]
async fn any_other_use_of_the_person_keeps_identity_numbers_or_pseudonyms() {
    for sql in [
        // A count of persons beside the keys: counted on identity numbers.
        "SELECT region, count(DISTINCT person) AS p, samkor_persons(samkor_record_key(person)) AS g FROM persons GROUP BY region",
        // The pseudonym's bytes beside a count of persons.
        "SELECT region, count(person) AS n, min(samkor_pseudonym_bytes(person)) AS b FROM persons GROUP BY region",
        "SELECT region, count(person) AS n, samkor_persons(samkor_record_key(person)) AS g FROM persons GROUP BY region",
    ] {
        let before = project_plan(sql).await;
        assert!(person_only_counted(&before) && derived_at_the_scans(&before).is_none(), "{sql}");
        let text = count_on_identity_numbers(before, &functions()).expect("rewrite").display_indent().to_string();
        assert!(!text.contains("persons.person AS "), "{sql}:\n{text}");
    }
    // The person leaving the node: nothing is rewritten.
    let sent = project_plan("SELECT person, samkor_record_key(person) AS rk FROM persons").await;
    assert_eq!(derived_at_the_scans(&sent), None);
    assert_eq!(count_on_identity_numbers(sent.clone(), &functions()).expect("rewrite"), sent);
    // A scan that is not a project table is never keyed.
    let other = plan("SELECT region, samkor_persons(samkor_record_key(person)) AS g FROM t GROUP BY region").await;
    assert!(person_only_counted(&other) && derived_at_the_scans(&other).is_none());
}

#[tokio::test]
async fn a_joins_bytes_and_record_keys_come_from_the_bytes_at_the_scan() {
    // A side of a join on the person under disclosure control: its key's bytes and its record keys.
    let sql = "SELECT o.region, o.rk, samkor_pseudonym_bytes(o.person) AS j FROM \
               (SELECT person, region, samkor_record_key(person) AS rk FROM persons) AS o";
    let before = project_plan(sql).await;
    assert_eq!(derived_at_the_scans(&before), Some(Derived::PseudonymBytes));
    let after = count_on_identity_numbers(before.clone(), &functions()).expect("rewrite");
    assert_eq!(
        after.display_indent().to_string(),
        "Projection: o.region, o.rk, o.person AS j\
         \n  SubqueryAlias: o\
         \n    Projection: persons.person, persons.region, samkor_record_key(persons.person) AS rk\
         \n      TableScan: persons"
    );
    let scanned = after.inputs()[0].inputs()[0].inputs()[0].schema();
    let person = scanned.field_with_unqualified_name("person").expect("person");
    assert_eq!(person.data_type(), &DataType::FixedSizeBinary(16));
    assert_eq!(after.schema().as_arrow(), before.schema().as_arrow());
}
