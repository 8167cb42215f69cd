//! Approvals enforced with real nodes and coordinator; the holders' own
//! assessment at the node; the audit trail.

use arrow::array::AsArray;
use samkor::client::ClientError;
use samkor_policies::audit;

use crate::common::{self, synth_dir};

pub(crate) fn refused(result: Result<impl std::fmt::Debug, ClientError>, rule: &str) -> String {
    let err = result.expect_err("must be refused");
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("rule {rule}")), "expected rule {rule}: {msg}");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_and_when() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", "G-bob").await.expect("connect");
    let msg = refused(c.query("SELECT count(*) FROM hip.operations").await, "approval.member");
    assert!(msg.contains("alice is not a member of project G-bob"), "{msg}");
    let mut c = fed.client("alice", "G-expired").await.expect("connect");
    let msg = refused(c.query("SELECT count(*) FROM hip.operations").await, "approval.expired");
    assert!(msg.contains("expired after 2021-12-31"), "{msg}");
    let mut c = fed.client("alice", "G-future").await.expect("connect");
    refused(c.query("SELECT count(*) FROM hip.operations").await, "approval.not_yet_valid");
    let mut c = fed.client("alice", "no-such-project").await.expect("connect");
    refused(c.query("SELECT count(*) FROM hip.operations").await, "approval.exists");
    // Bob is a member of G-bob.
    let mut c = fed.client("bob", "G-bob").await.expect("connect");
    c.query("SELECT fixation, count(*) FROM hip.operations GROUP BY fixation").await.expect("bob may");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_columns_are_refused_through_every_construct() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", "G-narrow").await.expect("connect");
    let cases = [
        ("projection", "SELECT avg(bmi) FROM hip.operations", "bmi"),
        ("filter", "SELECT count(*) FROM hip.operations WHERE asa > 2", "asa"),
        (
            "join key",
            "SELECT count(*) FROM hip.operations o JOIN dors.deaths d ON d.person = o.person AND d.underlying_cause = o.region",
            "dors.deaths.underlying_cause",
        ),
        ("group", "SELECT asa, count(*) FROM hip.operations GROUP BY asa", "asa"),
        ("order", "SELECT region, count(*) FROM hip.operations GROUP BY region ORDER BY max(bmi)", "bmi"),
        (
            "window",
            "SELECT region, count(*), rank() OVER (ORDER BY avg(bmi)) FROM hip.operations GROUP BY region",
            "bmi",
        ),
        (
            "subquery",
            "SELECT count(*) FROM hip.operations WHERE person IN (SELECT person FROM hip.operations WHERE reoperation)",
            "reoperation",
        ),
        (
            "scalar subquery",
            "SELECT region, count(*) FROM hip.operations WHERE op_date > (SELECT max(reop_date) FROM hip.operations) GROUP BY region",
            "reop_date",
        ),
        ("cte", "WITH x AS (SELECT side FROM hip.operations) SELECT side, count(*) FROM x GROUP BY side", "side"),
        ("having", "SELECT region, count(*) FROM hip.operations GROUP BY region HAVING avg(asa) > 2", "asa"),
    ];
    for (construct, sql, column) in cases {
        let msg = refused(c.query(sql).await, "approval.column");
        let qualified = if column.contains('.') { column.to_owned() } else { format!("hip.operations.{column}") };
        assert!(msg.contains(&qualified), "{construct}: {msg}");
    }
    // SELECT * reaches every column.
    let mut micro = fed.client("alice", "G-micro").await.expect("connect");
    let msg = refused(micro.query("SELECT * FROM hip.operations").await, "approval.column");
    assert!(msg.contains("is not in the approval"), "{msg}");
    // information_schema is not offered; the Flight SQL catalogue shows approved columns only.
    let err = c.query("SELECT * FROM information_schema.columns").await.expect_err("no information_schema");
    assert!(!err.to_string().contains("bmi"), "{err}");
    let mut sql = c.flight_sql().clone();
    let info = sql
        .get_tables(arrow_flight::sql::CommandGetTables { include_schema: true, ..Default::default() })
        .await
        .expect("tables");
    let batches: Vec<_> = futures::TryStreamExt::try_collect(
        sql.do_get(info.endpoint[0].ticket.clone().expect("ticket")).await.expect("get"),
    )
    .await
    .expect("batches");
    let names: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name("table_name").expect("names").as_string::<i32>().clone();
            (0..arrow::array::Array::len(&a)).map(move |i| a.value(i).to_owned())
        })
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["deaths", "operations"], "only approved tables");
    let i = names.iter().position(|n| n == "operations").expect("operations");
    let bytes = batches[0].column_by_name("table_schema").expect("schema").as_binary::<i32>().value(i).to_vec();
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(&bytes).expect("schema");
    let mut columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    columns.sort();
    assert_eq!(columns, vec!["fixation", "hospital", "op_date", "person", "region"], "only approved columns");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unapproved_registers_and_output_kinds_are_refused() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", "G-narrow").await.expect("connect");
    let msg = refused(c.query("SELECT count(*) FROM lmr.dispensations").await, "approval.register");
    assert!(msg.contains("register lmr"), "{msg}");
    let msg = refused(c.query("SELECT count(*) FROM hip.prom").await, "approval.table");
    assert!(msg.contains("hip.prom"), "{msg}");
    refused(c.query("SELECT person, op_date FROM hip.operations").await, "approval.output_kind");
    refused(c.query("SELECT op_date, count(*) OVER () FROM hip.operations").await, "approval.output_kind");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_restrictions_reach_the_nodes_and_are_honoured() {
    let fed = common::exact_federation().await;
    let mut c = fed.client("alice", "G-narrow").await.expect("connect");
    let sql = "SELECT o.fixation, count(*) AS n, count(d.death_date) AS died FROM hip.operations o \
               LEFT JOIN dors.deaths d ON d.person = o.person GROUP BY o.fixation";
    let (_, got) = c.query(sql).await.expect("answer");
    let pooled = samkor::federation::pooled_session(synth_dir(), "G-narrow").await.expect("pooled");
    let restricted = sql.replace(
        "hip.operations o",
        "(SELECT * FROM hip.operations WHERE op_date BETWEEN DATE '2012-01-01' AND DATE '2016-12-31') o",
    );
    let want = pooled.sql(&restricted).await.expect("plan").collect().await.expect("pooled answer");
    let (released, exact) = common::released_vs_pooled(&got, &want);
    assert_eq!(released, exact, "released cells equal the restricted pooled answer");
    let unrestricted = pooled.sql(sql).await.expect("plan").collect().await.expect("pooled");
    assert_ne!(exact, common::rows(&unrestricted), "the restriction changes the answer");
    let (_, plan) = c.query(&format!("EXPLAIN {sql}")).await.expect("explain");
    let text = arrow::util::pretty::pretty_format_batches(&plan).expect("format").to_string();
    let hip = text.lines().find(|l| l.contains("name=hip")).expect("hip sub-query");
    assert!(hip.contains("2012-01-01") && hip.contains("2016-12-31"), "the node gets the restriction: {hip}");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_reload_and_expire_while_the_coordinator_runs() {
    let fed = common::federation().await;
    let project = format!("G-late-{}", std::process::id());
    let path = synth_dir().join("approvals").join(format!("{project}.toml"));
    let mut c = fed.client("alice", &project).await.expect("connect");
    refused(c.query("SELECT count(*) FROM hip.operations").await, "approval.exists");
    let approval = std::fs::read_to_string(synth_dir().join("approvals/G-narrow.toml"))
        .expect("read")
        .replace("project = \"G-narrow\"", &format!("project = \"{project}\""));
    std::fs::write(&path, &approval).expect("write");
    let (_, b) = c.query("SELECT count(*) FROM hip.operations").await.expect("approved now, same connection");
    assert!(b[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0) > 0);
    std::fs::write(&path, approval.replace("valid_until = 2099-12-31", "valid_until = 2022-06-30")).expect("write");
    refused(c.query("SELECT count(*) FROM hip.operations").await, "approval.expired");
    std::fs::remove_file(&path).expect("remove");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_in_the_audit_log() {
    let fed = common::federation().await;
    let mut c = fed.client("alice", "G-narrow").await.expect("connect");
    c.query("SELECT fixation, count(*) FROM hip.operations GROUP BY fixation").await.expect("answer");
    let _ = c.query("SELECT avg(bmi) FROM hip.operations").await.expect_err("refused");
    let log = fed.coordinator.engine.audit().path().to_owned();
    let report = audit::verify(&log).expect("chain intact");
    assert_eq!(report.records, 2);
    let records = audit::read_all(&log).expect("read").records;
    assert_eq!(records[0].decision, audit::Decision::Accepted);
    assert_eq!(records[0].identity, "alice");
    assert_eq!(records[0].project, "G-narrow");
    assert!(records[0].rows_released > 0 && records[0].cells_released == 2 * records[0].rows_released);
    assert!(records[0].columns.contains(&"hip.operations.fixation".to_owned()), "{:?}", records[0].columns);
    assert!(!records[0].plan_digest.is_empty());
    assert_eq!(records[1].decision, audit::Decision::Refused);
    assert_eq!(records[1].rule, "approval.column");
    assert_eq!(records[1].rows_released, 0);
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_has_the_last_word() {
    // A holder that serves only P-1 and withholds a column from it.
    let copy = common::private_copy();
    let toml = copy.path().join("dors/node.toml");
    let text = std::fs::read_to_string(&toml).expect("read");
    let text = text.replacen(
        "[tls]",
        "[access]\ncoordinators = [\"coordinator\"]\nprojects = [\"P-1\"]\nwithhold = { \"P-1\" = [\"deaths.underlying_cause\"] }\n\n[tls]",
        1,
    );
    std::fs::write(&toml, text).expect("write");
    let fed = samkor::federation::LocalFederation::start(copy.path(), &Default::default()).await.expect("federation");
    // The coordinator admits P-2 (approved), the dors holder does not.
    let mut p2 = fed.client("alice", "P-2").await.expect("connect");
    let err = p2.query("SELECT count(*) FROM dors.deaths").await.expect_err("holder refuses");
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("holder.project") && err.to_string().contains("dors"), "{err}");
    let mut p1 = fed.client("alice", "P-1").await.expect("connect");
    p1.query("SELECT count(*) FROM dors.deaths").await.expect("P-1 is served");
    let err = p1
        .query("SELECT underlying_cause, count(*) FROM dors.deaths GROUP BY underlying_cause")
        .await
        .expect_err("withheld column");
    assert!(err.to_string().contains("holder.column") && err.to_string().contains("deaths.underlying_cause"), "{err}");
    // A caller that is not the coordinator, going to the node directly.
    let client = common::node_client(copy.path(), "alice", fed.node("dors").expect("dors"));
    let err = client.query("P-1", "SELECT count(*) FROM deaths", "q", None).await.expect_err("not the coordinator");
    let status = err.status().expect("node status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("holder.caller"), "{err}");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sub_query_is_in_the_node_audit_log() {
    // A holder that serves P-1 only.
    let copy = common::private_copy();
    let toml = copy.path().join("dors/node.toml");
    let text = std::fs::read_to_string(&toml).expect("read");
    std::fs::write(&toml, text.replacen("[tls]", "[access]\nprojects = [\"P-1\"]\n\n[tls]", 1)).expect("write");
    let fed = samkor::federation::LocalFederation::start(copy.path(), &Default::default()).await.expect("federation");
    let mut p1 = fed.client("alice", "P-1").await.expect("connect");
    let (_, answer) = p1.query("SELECT region, count(*) FROM dors.deaths GROUP BY region").await.expect("served");
    let groups: usize = answer.iter().map(|b| b.num_rows()).sum();
    let mut p2 = fed.client("alice", "P-2").await.expect("connect");
    refused(p2.query("SELECT count(*) FROM dors.deaths").await, "holder.project");
    let node = fed.node("dors").expect("dors");
    let direct = common::node_client(copy.path(), "alice", node);
    direct.query("P-1", "SELECT count(*) FROM deaths", "q-alice", None).await.expect_err("not the coordinator");

    let log = node.audit.path().to_owned();
    // The stream-end record is written after the rows have left, in the background.
    let mut records = common::audit_records(&log, 4).await;
    let report = audit::verify(&log).expect("the node's chain verifies");
    assert_eq!(report.records, 4, "served (decision + stream end), refused project, refused caller");
    // Its place among the refusals depends on timing; compare in the order of the queries.
    records.sort_by_key(|r| (r.rule.starts_with("holder."), r.rule.as_str() == "holder.caller"));
    assert!(records.iter().all(|r| r.actor == "node:dors" && r.registers == vec!["dors".to_owned()]));
    let served = &records[0];
    assert_eq!(
        (served.decision, served.identity.as_str(), served.project.as_str()),
        (audit::Decision::Accepted, "coordinator", "P-1")
    );
    assert!(served.sql.contains("GROUP BY") && !served.query_id.is_empty(), "{served:?}");
    // The pseudonym is read to count the persons behind each cell.
    assert_eq!(served.columns, vec!["dors.deaths.person".to_owned(), "dors.deaths.region".to_owned()]);
    assert_eq!(served.rows_released, 0, "the decision is written before any row leaves");
    let end = &records[1];
    assert_eq!(
        (end.decision, end.rule.as_str(), end.query_id.as_str()),
        (audit::Decision::Accepted, audit::RULE_STREAM_END, served.query_id.as_str())
    );
    assert_eq!(end.rows_released, groups as u64);
    // region, the count, and hidden: the persons behind it with their cell
    // key, the least and the largest record key of the group.
    assert_eq!(end.cells_released, 5 * groups as u64);
    assert_eq!(
        (records[2].decision, records[2].rule.as_str(), records[2].project.as_str()),
        (audit::Decision::Refused, "holder.project", "P-2")
    );
    assert_eq!(
        (records[3].decision, records[3].rule.as_str(), records[3].identity.as_str()),
        (audit::Decision::Refused, "holder.caller", "alice")
    );
    assert_eq!(records[3].query_id, "q-alice");
    // The review commands read a node's log as they read the coordinator's.
    let verified = samkor::audit_cli::verify(&log).expect("verify command");
    assert!(verified.contains("4 records, chain intact"), "{verified}");
    let review = samkor::audit_cli::report(&log, Some("2000-01-01"), None, &[]).expect("report");
    let alice_row = review.lines().find(|l| l.contains("alice")).expect("alice in the review");
    assert!(alice_row.contains("P-1"), "{alice_row}");
    fed.shutdown().await;
}

/// The per-query cost of policy checking at the coordinator: the admission
/// (`Engine::authorize`: approval lookup with reload check, membership,
/// validity; for direct access the directory and the synthesised approval)
/// and the planning rules (`samkor_direct_access`, `samkor_approval`), as
/// the difference between optimizing the same plan in the same session with
/// and without those rules. Medians of interleaved runs. A measurement, not a
/// check:
/// `cargo test --release --test integration policy_check_cost -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run on demand in release mode"]
async fn policy_check_cost() {
    use std::time::{Duration, Instant};
    const RUNS: usize = 400;
    fn median(mut v: Vec<Duration>) -> f64 {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e6
    }
    let fed = common::federation().await;
    let engine = fed.coordinator.engine.clone();
    let cases = [
        (
            "G-narrow",
            "alice",
            "SELECT o.fixation, count(*) AS n, count(d.death_date) AS died FROM hip.operations o LEFT JOIN dors.deaths d ON d.person = o.person GROUP BY o.fixation",
        ),
        (
            "P-1",
            "alice",
            "SELECT region, fixation, count(*) FROM hip.operations WHERE asa > 2 GROUP BY region, fixation",
        ),
        ("direct", "dora", "SELECT fixation, count(*) FROM hip.operations GROUP BY fixation"),
    ];
    println!("policy checking per query (median of {RUNS}, µs):");
    for (project, user, sql) in cases {
        let approval = engine.authorize(user, project).expect("admitted");
        let scope = samkor_coordinator::executor::QueryScope {
            project: project.to_owned(),
            query_id: "cost".into(),
            traceparent: None,
            span: tracing::Span::none(),
            direct_unit: None,
        };
        let ctx = engine.session(scope, approval, std::sync::Arc::default()).ctx;
        let plan = ctx.sql(sql).await.expect("plan").logical_plan().clone();
        let with = ctx.state();
        let rules: Vec<_> = with
            .optimizers()
            .iter()
            .filter(|r| !matches!(r.name(), "samkor_approval" | "samkor_direct_access"))
            .cloned()
            .collect();
        assert_eq!(rules.len() + if project == "direct" { 2 } else { 1 }, with.optimizers().len());
        let without = datafusion::execution::session_state::SessionStateBuilder::new_from_existing(with.clone())
            .with_optimizer_rules(rules)
            .build();
        let (mut admit, mut planned, mut bare) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let t = Instant::now();
            engine.authorize(user, project).expect("admitted");
            admit.push(t.elapsed());
            let t = Instant::now();
            with.optimize(&plan).expect("optimize with the policy rules");
            planned.push(t.elapsed());
            let t = Instant::now();
            without.optimize(&plan).expect("optimize without");
            bare.push(t.elapsed());
        }
        let (admit, planned, bare) = (median(admit), median(planned), median(bare));
        println!(
            "  {project:9} admission {admit:7.1}  optimize with rules {planned:8.1}  without {bare:8.1}  policy overhead {:7.1}",
            admit + planned - bare
        );
    }
    fed.shutdown().await;
}
