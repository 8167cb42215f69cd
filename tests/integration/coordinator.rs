//! The coordinator with real nodes: availability, failures, cancellation,
//! limits and the Flight SQL front door.

use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use futures::{StreamExt, TryStreamExt};
use samkor::client::ClientError;
use samkor::federation::{LocalOptions, REGISTERS};

use crate::common::{self, synth_dir};

/// Work that grows quadratically and runs entirely at the lmr node (a median
/// over a sliding window is recomputed for every row): slow enough to be interrupted.
const HEAVY: &str = "SELECT max(m) FROM (SELECT median(ddd) OVER (ORDER BY disp_date, ddd \
    ROWS BETWEEN 20000 PRECEDING AND CURRENT ROW) AS m FROM lmr.dispensations)";

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0)
}

/// Polls `cond` until it holds or `limit` passes.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_at_start_is_reported_and_joins_when_it_comes_back() {
    let options = LocalOptions {
        start: REGISTERS.iter().filter(|r| **r != "dors").map(|r| (*r).to_owned()).collect(),
        ..LocalOptions::default()
    };
    let fed = common::federation_with(&options).await;
    assert_eq!(fed.coordinator.unavailable_at_start.len(), 1);
    assert!(
        fed.coordinator.unavailable_at_start[0].contains("node dors"),
        "{:?}",
        fed.coordinator.unavailable_at_start
    );
    let mut client = fed.client("alice", "P-1").await.expect("connect");
    // Other registers work.
    let (_, b) = client.query("SELECT count(*) FROM hip.operations").await.expect("hip works");
    assert!(count(&b) > 0);
    // The missing one says so.
    let err = client.query("SELECT count(*) FROM dors.deaths").await.expect_err("dors is down");
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(err.to_string().contains("node dors") && err.to_string().contains("retry"), "{err}");
    // Start dors where the coordinator expects it; its tables appear.
    let addr = fed.coordinator.engine.federation().node("dors").expect("dors listed").client.addr().to_owned();
    let mut config = samkor::federation::node_config(synth_dir(), "dors", false).expect("config");
    config.node.listen = addr.parse().expect("addr");
    let node = samkor_node::start(config).await.expect("dors starts");
    let engine = fed.coordinator.engine.clone();
    assert!(
        eventually(Duration::from_secs(20), || engine
            .federation()
            .node("dors")
            .is_some_and(|n| n.catalogue().is_some()))
        .await,
        "dors's catalogue arrives"
    );
    let (_, b) = client.query("SELECT count(*) FROM dors.deaths").await.expect("dors works now");
    assert!(count(&b) > 0);
    node.shutdown().await;
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_query_fails_the_query_naming_it() {
    // lmr runs as its own process so that it can really be killed.
    let dir = synth_dir();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_samkor"))
        .args(["node", "--listen", "127.0.0.1:0", "--config"])
        .arg(dir.join("lmr/node.toml"))
        .env("SAMKOR_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node process");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("node prints its address")
        .expect("read")
        .expect("a line");
    let addr = line.split_whitespace().find(|w| w.starts_with("127.0.0.1:")).expect("address in the line").to_owned();
    let options = LocalOptions {
        start: REGISTERS.iter().filter(|r| **r != "lmr").map(|r| (*r).to_owned()).collect(),
        addresses: vec![("lmr".to_owned(), addr)],
        ..LocalOptions::default()
    };
    let fed = common::federation_with(&options).await;
    assert!(fed.coordinator.unavailable_at_start.is_empty(), "{:?}", fed.coordinator.unavailable_at_start);
    let mut client = fed.client("alice", "P-1").await.expect("connect");
    let query = tokio::spawn(async move { client.query(HEAVY).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().await.expect("kill the node");
    let result = tokio::time::timeout(Duration::from_secs(30), query).await.expect("the query ends").expect("task");
    let err = result.expect_err("no answer from a dead node");
    assert!(err.to_string().contains("lmr"), "the error names the node: {err}");
    assert!(matches!(err.code(), Some(tonic::Code::Unavailable | tonic::Code::Internal)), "{err:?}");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_query_cancels_the_node_subqueries() {
    let fed = common::federation().await;
    let lmr = fed.node("lmr").expect("lmr").state.clone();
    let mut client = fed.client("alice", "P-1").await.expect("connect");
    let running = tokio::spawn(async move { client.query(HEAVY).await });
    assert!(eventually(Duration::from_secs(20), || lmr.active_subqueries() > 0).await, "the node starts working");
    running.abort();
    assert!(
        eventually(Duration::from_secs(20), || lmr.active_subqueries() == 0).await,
        "the node's sub-query stops when the client goes away"
    );
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_the_time_limit_is_stopped_everywhere() {
    let fed = common::federation_with(&LocalOptions { query_timeout_secs: 1, ..LocalOptions::default() }).await;
    let lmr = fed.node("lmr").expect("lmr").state.clone();
    let mut client = fed.client("alice", "P-1").await.expect("connect");
    let started = Instant::now();
    let err = client.query(HEAVY).await.expect_err("times out");
    assert_eq!(err.code(), Some(tonic::Code::DeadlineExceeded), "{err}");
    assert!(err.to_string().contains("limit of 1 s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "stopped at the limit, not at the end of the work");
    assert!(eventually(Duration::from_secs(20), || lmr.active_subqueries() == 0).await, "node work stops too");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_cannot_fit_in_memory_names_the_limit() {
    let options = LocalOptions { memory_limit_mb: 1, perturbation: false, ..LocalOptions::default() };
    let fed = common::federation_with(&options).await;
    let mut client = fed.client("alice", "P-1").await.expect("connect");
    let err = client
        .query("SELECT count(*) FROM lmr.dispensations l JOIN npr.inpatient n ON l.person = n.person")
        .await
        .expect_err("a 1 MiB pool cannot hold the join");
    assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("limit of 1 MiB (memory_limit_mb)"), "{err}");
    // The coordinator is still there.
    let (_, b) = client.query("SELECT count(*) FROM pop.persons").await.expect("still serving");
    assert_eq!(count(&b) as u64 + opted_out("pop"), common::PERSONS);
    fed.shutdown().await;
}

fn opted_out(register: &str) -> u64 {
    std::fs::read_to_string(synth_dir().join(register).join("optout.txt"))
        .expect("list")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_are_clear_and_leave_the_coordinator_serving() {
    let fed = common::federation().await;
    let mut client = fed.client("alice", "P-1").await.expect("connect");
    let cases = [
        ("SELEC 1", "SELEC"),
        ("SELECT nope FROM hip.operations", "nope"),
        ("SELECT * FROM hip.nothing", "nothing"),
        ("SELECT * FROM xyz.operations", "xyz"),
        ("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'", "DDL not supported"),
        ("SELECT pnr FROM pop.persons", "pnr"),
    ];
    for (sql, needle) in cases {
        let err = client.query(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{sql}: {err}");
        assert!(err.to_string().to_lowercase().contains(&needle.to_lowercase()), "{sql}: {err}");
        assert_eq!(err.to_string().lines().count(), 1, "one line: {err}");
    }
    // A call without a project.
    let identity = fed.identity("alice").expect("identity");
    let mut bare = samkor::client::Client::connect(&fed.coordinator_addr(), &identity, "").await.expect("connect");
    // (An empty header value counts as no project.)
    let err = bare.query("SELECT 1").await.expect_err("no project");
    assert!(err.to_string().contains("x-samkor-project"), "{err}");
    let (_, b) = client.query("SELECT count(*) FROM hip.operations").await.expect("still serving");
    assert!(count(&b) > 0);
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_what_each_node_is_asked() {
    let fed = common::federation().await;
    let mut client = fed.client("alice", "P-1").await.expect("connect");
    let (_, b) = client
        .query("EXPLAIN SELECT region, count(*) FROM hip.operations WHERE asa >= 3 GROUP BY region")
        .await
        .expect("explain");
    let text = arrow::util::pretty::pretty_format_batches(&b).expect("format").to_string();
    assert!(text.contains("VirtualExecutionPlan name=hip"), "{text}");
    assert!(text.contains("GROUP BY") && text.contains("\"asa\" >= 3"), "aggregate and filter at the node: {text}");
    let (_, b) = client
        .query(
            "EXPLAIN SELECT o.fixation, count(*) FROM hip.operations o JOIN dors.deaths d ON d.person = o.person \
             WHERE o.asa > 2 GROUP BY o.fixation",
        )
        .await
        .expect("explain");
    let text = arrow::util::pretty::pretty_format_batches(&b).expect("format").to_string();
    assert!(text.contains("name=hip") && text.contains("name=dors"), "{text}");
    assert!(text.contains("HashJoinExec"), "the join runs at the coordinator: {text}");
    let hip_sql = text.lines().find(|l| l.contains("name=hip")).expect("hip line");
    assert!(
        hip_sql.contains("\"asa\" > 2") && !hip_sql.contains("bmi"),
        "only needed columns, filter pushed: {hip_sql}"
    );
    assert!(
        hip_sql.contains("samkor_pseudonym_bytes(\"o\".\"person\")") && !hip_sql.contains("\"o\".\"person\", "),
        "the node sends the join key as the pseudonym's 16 bytes, not its text: {hip_sql}"
    );
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_clients_browse_and_query() {
    let fed = common::federation().await;
    let mut client = fed.client("alice", "P-1").await.expect("connect");
    let mut sql = client.flight_sql().clone();
    let fetcher = sql.clone();
    let collect = |info: arrow_flight::FlightInfo| {
        let mut sql = fetcher.clone();
        async move {
            let ticket = info.endpoint[0].ticket.clone().expect("ticket");
            let batches: Vec<RecordBatch> =
                sql.do_get(ticket).await.expect("do_get").try_collect().await.expect("batches");
            batches
        }
    };
    let catalogs = collect(sql.get_catalogs().await.expect("catalogs")).await;
    assert_eq!(common::sorted_lines(&catalogs), vec!["| samkor       |"]);
    let schemas =
        collect(sql.get_db_schemas(arrow_flight::sql::CommandGetDbSchemas::default()).await.expect("schemas")).await;
    let schemas = common::sorted_lines(&schemas).join("\n");
    for r in REGISTERS {
        assert!(schemas.contains(r), "{schemas}");
    }
    let tables = collect(
        sql.get_tables(arrow_flight::sql::CommandGetTables { include_schema: true, ..Default::default() })
            .await
            .expect("tables"),
    )
    .await;
    let names: Vec<String> = tables
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name("table_name").expect("table_name").as_string::<i32>().clone();
            (0..a.len()).map(move |i| a.value(i).to_owned())
        })
        .collect();
    for t in ["operations", "prom", "inpatient", "dispensations", "deaths", "persons"] {
        assert!(names.iter().any(|n| n == t), "{t} in {names:?}");
    }
    assert!(tables[0].column_by_name("table_schema").is_some(), "schemas included");
    // A prepared statement.
    let mut prepared = sql.prepare("SELECT count(*) AS n FROM hip.operations".into(), None).await.expect("prepare");
    assert_eq!(prepared.dataset_schema().expect("schema").field(0).name(), "n");
    let info = prepared.execute().await.expect("execute");
    let b = collect(info).await;
    assert!(count(&b) > 0);
    prepared.close().await.expect("close");
    // Streaming a larger result arrives in several batches.
    let mut stream = client.query_stream("SELECT person, disp_date, atc FROM lmr.dispensations").await.expect("stream");
    let mut rows = 0;
    let mut batches = 0;
    while let Some(b) = stream.next().await {
        rows += b.expect("batch").num_rows();
        batches += 1;
    }
    assert!(batches > 1 && rows > 10_000, "{batches} batches, {rows} rows");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_refuses_clients_from_another_ca() {
    let fed = common::federation().await;
    let rogue = samkor_proto::tls::TlsFiles {
        cert: common::rogue_dir().join("mallory.pem"),
        key: common::rogue_dir().join("mallory.key"),
        ca: synth_dir().join("certs/ca.pem"),
    }
    .load()
    .expect("identity");
    let result = async {
        let mut c = samkor::client::Client::connect(&fed.coordinator_addr(), &rogue, "P-1").await?;
        c.query("SELECT count(*) FROM pop.persons").await
    }
    .await;
    match result {
        Err(ClientError::Connect { .. } | ClientError::Refused { .. } | ClientError::Protocol(_)) => {}
        other => panic!("a certificate from another CA must be refused: {other:?}"),
    }
    fed.shutdown().await;
}

/// Redeems a Flight SQL ticket; the answer's count, or the gRPC code of its failure.
async fn redeem(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    ticket: arrow_flight::Ticket,
) -> Result<i64, tonic::Code> {
    let code = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(s) => s.code(),
        _ => tonic::Code::Unknown,
    };
    let stream = client.do_get(ticket).await.map_err(code)?;
    let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(code)?;
    Ok(count(&batches))
}

/// The ticket with its statement handle's SQL replaced (the plan key kept).
fn with_sql(ticket: &arrow_flight::Ticket, sql: &str) -> arrow_flight::Ticket {
    use arrow_flight::sql::{Any, ProstMessageExt, TicketStatementQuery};
    use prost::Message;
    let any = Any::decode(ticket.ticket.clone()).expect("any");
    let t: TicketStatementQuery = any.unpack().expect("unpack").expect("a statement ticket");
    let mut handle = samkor_proto::pb::StatementHandle::decode(t.statement_handle).expect("handle");
    assert_eq!(handle.plan.len(), 16, "the ticket names a plan kept at the coordinator");
    handle.sql = sql.to_owned();
    let t = TicketStatementQuery { statement_handle: handle.encode_to_vec().into() };
    arrow_flight::Ticket::new(t.as_any().encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_statement_serves_only_its_caller_and_its_sql() {
    let fed = common::federation().await;
    let all = "SELECT count(*) AS n FROM hip.operations";
    let some = "SELECT count(*) AS n FROM hip.operations WHERE asa > 2";
    let mut alice = fed.client("alice", "P-1").await.expect("connect");
    let mut sql = alice.flight_sql().clone();
    let expected_all = count(&alice.query(all).await.expect("all").1);
    let expected_some = count(&alice.query(some).await.expect("some").1);
    assert!(expected_some < expected_all);

    let info = sql.execute(all.into(), None).await.expect("plan");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    // Another identity with the same ticket is checked afresh: bob is no member of P-1.
    let mut bob = fed.client("bob", "P-1").await.expect("connect");
    let mut bob_sql = bob.flight_sql().clone();
    assert_eq!(redeem(&mut bob_sql, ticket.clone()).await, Err(tonic::Code::PermissionDenied));
    // Its caller gets the answer, also a second time (then planned again).
    assert_eq!(redeem(&mut sql, ticket.clone()).await, Ok(expected_all));
    assert_eq!(redeem(&mut sql, ticket.clone()).await, Ok(expected_all));
    // A handle whose SQL was changed runs that SQL (the one audited), never the kept plan.
    let info = sql.execute(all.into(), None).await.expect("plan");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    assert_eq!(redeem(&mut sql, with_sql(&ticket, some)).await, Ok(expected_some));
    fed.shutdown().await;
}
