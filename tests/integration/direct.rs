//! Direct access for care providers (DOMAIN.md rule 5) with real nodes and
//! coordinator: only the caller's own hospital's rows, aggregates only, one
//! register at a time, and the node enforcing it on its own.

use std::collections::HashSet;

use arrow::array::{AsArray, RecordBatch};
use futures::TryStreamExt;
use samkor_policies::audit;
use samkor_proto::client::NodeClient;

use crate::common::{self, synth_dir};
use crate::governance::refused;

/// The hospital `dora` is bound to in the synthetic directory.
fn doras_hospital() -> &'static str {
    samkor::synth::care_provider_hospital("dora").expect("dora is a synthetic care provider")
}

async fn pooled(sql: &str) -> Vec<RecordBatch> {
    let pooled = samkor::federation::pooled_session(synth_dir(), "P-1").await.expect("pooled");
    pooled.sql(sql).await.expect("plan").collect().await.expect("pooled answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_access_sees_only_its_own_hospital() {
    let fed = common::exact_federation().await;
    let hospital = doras_hospital();
    let mut dora = fed.client("dora", "direct").await.expect("connect");
    for (register_sql, pooled_sql) in [
        (
            "SELECT count(*) AS n, avg(asa) AS asa FROM hip.operations",
            format!("SELECT count(*) AS n, avg(asa) AS asa FROM hip.operations WHERE hospital = '{hospital}'"),
        ),
        (
            "SELECT count(*) AS n, sum(length_of_stay) AS days FROM npr.inpatient",
            format!(
                "SELECT count(*) AS n, sum(length_of_stay) AS days FROM npr.inpatient WHERE hospital = '{hospital}'"
            ),
        ),
    ] {
        let (_, got) = dora.query(register_sql).await.expect("direct access answers");
        let want = pooled(&pooled_sql).await;
        // Disclosure control applies to direct access too: released cells equal the hospital's own.
        let (released, exact) = common::released_vs_pooled(&got, &want);
        assert_eq!(released, exact, "{register_sql}");
        let everyone = pooled(register_sql).await;
        assert_ne!(released, common::rows(&everyone), "other hospitals' rows are not counted: {register_sql}");
    }
    // Grouping by hospital shows one hospital: the others' rows never arrive.
    let (_, got) = dora.query("SELECT hospital, count(*) FROM hip.operations GROUP BY hospital").await.expect("answer");
    let hospitals: Vec<String> = got
        .iter()
        .flat_map(|b| {
            b.column(0).as_string::<i32>().iter().map(|h| h.expect("hospital").to_owned()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(hospitals, vec![hospital.to_owned()]);
    // The node got the restriction with its sub-query, and the unit in its ticket.
    let (_, plan) = dora.query("EXPLAIN SELECT count(*) FROM hip.operations").await.expect("explain");
    let text = arrow::util::pretty::pretty_format_batches(&plan).expect("format").to_string();
    assert!(text.lines().any(|l| l.contains("name=hip") && l.contains(hospital)), "{text}");

    // Aggregates only, open tables only, no pseudonyms, one register at a time.
    refused(dora.query("SELECT op_date, fixation FROM hip.operations").await, "approval.output_kind");
    let msg = refused(dora.query("SELECT count(*) FROM hip.prom").await, "direct.table");
    assert!(msg.contains("hip.prom") && msg.contains("hip.operations, npr.inpatient"), "{msg}");
    refused(dora.query("SELECT count(*) FROM dors.deaths").await, "direct.table");
    refused(dora.query("SELECT count(DISTINCT person) FROM hip.operations").await, "approval.column");
    let msg = refused(
        dora.query(
            "SELECT count(*) FROM hip.operations o JOIN npr.inpatient i ON i.hospital = o.hospital AND i.admit_date = o.op_date",
        )
        .await,
        "direct.linkage",
    );
    assert!(msg.contains("hip and npr"), "{msg}");
    refused(
        dora.query("SELECT count(*) FROM hip.operations WHERE op_date IN (SELECT admit_date FROM npr.inpatient)").await,
        "direct.linkage",
    );

    // Identities without a hospital, and a project header naming a unit.
    let mut erik = fed.client("erik", "direct").await.expect("connect");
    let msg = refused(erik.query("SELECT count(*) FROM hip.operations").await, "direct.directory");
    assert!(msg.contains("erik is not bound to a hospital") && msg.contains("operator"), "{msg}");
    let mut alice = fed.client("alice", "direct").await.expect("connect");
    refused(alice.query("SELECT count(*) FROM hip.operations").await, "direct.directory");
    let mut spoof = fed.client("dora", "direct:Sahlgrenska").await.expect("connect");
    let msg = refused(spoof.query("SELECT count(*) FROM hip.operations").await, "direct.project");
    assert!(!msg.contains(hospital), "the refusal does not tell the caller its own binding: {msg}");
    // A care provider is no research-project member.
    refused(
        fed.client("dora", "P-1").await.expect("connect").query("SELECT count(*) FROM hip.operations").await,
        "approval.member",
    );

    // Both logs hold the story; the node's names the unit it served.
    let records = audit::read_all(fed.coordinator.engine.audit().path()).expect("coordinator log").records;
    let rules: HashSet<&str> = records.iter().map(|r| r.rule.as_str()).collect();
    for rule in ["direct.table", "direct.linkage", "direct.directory", "direct.project"] {
        assert!(rules.contains(rule), "{rule} in {rules:?}");
    }
    // Answered direct-access queries are recorded under the unit they served.
    assert!(
        records.iter().any(|r| r.project == format!("direct:{hospital}") && r.decision == audit::Decision::Accepted),
        "the coordinator's log names direct:{hospital}"
    );
    let hip = fed.node("hip").expect("hip");
    let node_records = audit::read_all(hip.audit.path()).expect("node log").records;
    assert!(node_records.iter().all(|r| r.identity == "coordinator"));
    assert!(
        node_records
            .iter()
            .any(|r| r.project == format!("direct:{hospital}") && r.decision == audit::Decision::Accepted),
        "{node_records:?}"
    );
    audit::verify(hip.audit.path()).expect("node chain intact");
    fed.shutdown().await;
}

fn direct_sub(project: &str, unit: &str, sql: &str) -> samkor_proto::pb::SubQuery {
    let mut sub = samkor_proto::ticket::sub_query(project, sql, "direct-test");
    sub.direct_unit = unit.to_owned();
    sub
}

async fn send(
    client: &NodeClient,
    sub: &samkor_proto::pb::SubQuery,
) -> Result<Vec<RecordBatch>, samkor_proto::client::NodeError> {
    let stream = client.send(sub, None).await?;
    stream.try_collect().await.map_err(|e| client.stream_error(e))
}

fn strings(batches: &[RecordBatch]) -> HashSet<String> {
    batches
        .iter()
        .flat_map(|b| b.column(0).as_string::<i32>().iter().map(|v| v.expect("value").to_owned()).collect::<Vec<_>>())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_enforces_direct_access_without_the_coordinator() {
    // The coordinator's own certificate, straight to the node: what a
    // compromised coordinator could send.
    let node = samkor_node::start(samkor::federation::node_config(synth_dir(), "hip", true).expect("config"))
        .await
        .expect("hip starts");
    let client = common::node_client(synth_dir(), "coordinator", &node);
    let hospital = doras_hospital();

    // A table without a unit column is closed, whatever the coordinator says.
    let err =
        send(&client, &direct_sub("direct", hospital, "SELECT count(*) FROM prom")).await.expect_err("closed table");
    let status = err.status().expect("node status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(status.message().contains("rule direct.table") && status.message().contains("prom"), "{err}");
    // A direct unit on a research project's ticket, and direct access without a unit.
    let err = send(&client, &direct_sub("P-1", hospital, "SELECT count(*) FROM operations")).await.expect_err("mixed");
    assert!(err.status().expect("status").message().contains("rule direct.project"), "{err}");
    let err = send(&client, &direct_sub("direct", "", "SELECT count(*) FROM operations")).await.expect_err("no unit");
    assert!(err.status().expect("status").message().contains("rule direct.unit"), "{err}");

    // No row filter in the SQL: the node filters at its scan all the same.
    let got = send(&client, &direct_sub("direct", hospital, "SELECT DISTINCT hospital FROM operations"))
        .await
        .expect("served");
    assert_eq!(strings(&got), HashSet::from([hospital.to_owned()]));
    // Pseudonyms of direct access cannot be linked to a research project's.
    let direct = strings(
        &send(&client, &direct_sub("direct", hospital, "SELECT DISTINCT person FROM operations"))
            .await
            .expect("served"),
    );
    let research_sql = format!("SELECT DISTINCT person FROM operations WHERE hospital = '{hospital}'");
    let research = strings(&send(&client, &direct_sub("P-1", "", &research_sql)).await.expect("served"));
    assert_eq!(direct.len(), research.len(), "the same persons");
    assert!(direct.is_disjoint(&research), "in unrelated pseudonym domains");

    let records = audit::read_all(node.audit.path()).expect("node log").records;
    let refusals: Vec<&str> =
        records.iter().filter(|r| r.decision == audit::Decision::Refused).map(|r| r.rule.as_str()).collect();
    assert_eq!(refusals, vec!["direct.table", "direct.project", "direct.unit"]);
    audit::verify(node.audit.path()).expect("chain intact");
    node.shutdown().await;
}
