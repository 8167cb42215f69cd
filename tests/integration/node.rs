//! The register node through a real Flight client over mutual TLS.

use std::collections::HashSet;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use futures::TryStreamExt;
use samkor::federation::{identity_files, node_config};
use samkor_node::pseudonym::FederationKey;
use samkor_proto::client::{NodeClient, NodeEndpoint, NodeError};
use samkor_proto::tls::TlsFiles;

use crate::common::{self, sorted_lines, synth_dir};

fn client_as(files: &TlsFiles, node: &samkor_node::RunningNode) -> NodeClient {
    let identity = files.load().expect("client identity");
    let endpoint = NodeEndpoint {
        name: node.state.register().to_owned(),
        addr: node.addr.to_string(),
        tls_domain: "localhost".into(),
        connect_timeout: Duration::from_secs(5),
    };
    NodeClient::new(endpoint, &identity).expect("client")
}

fn coordinator_client(node: &samkor_node::RunningNode) -> NodeClient {
    client_as(&identity_files(synth_dir(), "coordinator"), node)
}

async fn run(client: &NodeClient, project: &str, sql: &str) -> Result<Vec<RecordBatch>, NodeError> {
    let stream = client.query(project, sql, "test", None).await?;
    stream.try_collect().await.map_err(|e| client.stream_error(e))
}

fn strings(batches: &[RecordBatch], col: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = arrow::compute::cast(b.column(col), &arrow::datatypes::DataType::Utf8).expect("string column");
            let a = a.as_string::<i32>();
            (0..a.len()).map(|i| a.value(i).to_owned()).collect::<Vec<_>>()
        })
        .collect()
}

async fn start_node(dir: &std::path::Path, register: &str) -> samkor_node::RunningNode {
    samkor_node::start(node_config(dir, register, true).expect("config")).await.expect("node starts")
}

/// The local computation: raw Parquet read directly, opt-outs removed by SQL.
async fn raw_session(register: &str, table: &str) -> datafusion::prelude::SessionContext {
    let dir = synth_dir().join(register);
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_parquet("raw", dir.join(table).to_str().expect("utf8"), Default::default()).await.expect("parquet");
    let optouts: Vec<String> = std::fs::read_to_string(dir.join("optout.txt"))
        .expect("optout list")
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let batch = RecordBatch::try_from_iter([(
        "pnr",
        std::sync::Arc::new(arrow::array::StringArray::from(optouts)) as std::sync::Arc<dyn Array>,
    )])
    .expect("batch");
    ctx.register_batch("optout", batch).expect("optout table");
    ctx
}

#[tokio::test]
async fn catalogue_lists_tables_columns_and_documentation() {
    let node = start_node(synth_dir(), "hip").await;
    let cat = coordinator_client(&node).catalogue().await.expect("catalogue");
    assert_eq!(cat.register, "hip");
    assert!(cat.holder.contains("Höftprotesregistret"), "{}", cat.holder);
    let ops = cat.tables.iter().find(|t| t.name == "operations").expect("operations table");
    let names: Vec<&str> = ops.columns.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"person") && names.contains(&"fixation") && names.contains(&"op_date"), "{names:?}");
    assert!(!names.contains(&"pnr"), "the identity number is never offered: {names:?}");
    let person = ops.columns.iter().find(|c| c.name == "person").expect("person");
    assert!(person.person && person.identifying && person.description.contains("pseudonym"));
    let bmi = ops.columns.iter().find(|c| c.name == "bmi").expect("bmi");
    assert_eq!((bmi.data_type.as_str(), bmi.unit.as_str()), ("float64", "kg/m2"));
    let dx = ops.columns.iter().find(|c| c.name == "diagnosis").expect("diagnosis");
    assert!(dx.code_system.starts_with("ICD-10"), "{}", dx.code_system);
    assert!(cat.tables.iter().any(|t| t.name == "prom"));
    node.shutdown().await;
}

#[tokio::test]
async fn filtered_grouped_subquery_equals_local_parquet() {
    let node = start_node(synth_dir(), "lmr").await;
    let sql = "SELECT atc, count(*) AS n, round(sum(ddd), 6) AS total_ddd, count(DISTINCT {p}) AS persons \
               FROM {t} WHERE region IN ('Skåne', 'Gotland') AND disp_date >= DATE '2015-01-01' GROUP BY atc";
    let remote = run(&coordinator_client(&node), "P-1", &sql.replace("{p}", "person").replace("{t}", "dispensations"))
        .await
        .expect("node query");
    let ctx = raw_session("lmr", "dispensations").await;
    let local = ctx
        .sql(
            &(sql
                .replace("{p}", "pnr")
                .replace("{t}", "raw")
                .replace(" GROUP BY", " AND pnr NOT IN (SELECT pnr FROM optout) GROUP BY")),
        )
        .await
        .expect("plan")
        .collect()
        .await
        .expect("local");
    let (r, l) = (sorted_lines(&remote), sorted_lines(&local));
    assert!(r.len() > 10, "a meaningful number of groups: {r:?}");
    assert_eq!(r, l, "the node's aggregate equals the local computation on the Parquet files");
    node.shutdown().await;
}

#[tokio::test]
async fn pseudonyms_link_within_a_project_and_not_across_projects() {
    let dir = synth_dir();
    let (hip, pop) = (start_node(dir, "hip").await, start_node(dir, "pop").await);
    let (hc, pc) = (coordinator_client(&hip), coordinator_client(&pop));
    let hip_p1: HashSet<String> =
        strings(&run(&hc, "P-1", "SELECT DISTINCT person FROM operations").await.expect("hip"), 0)
            .into_iter()
            .collect();
    let hip_p2: HashSet<String> =
        strings(&run(&hc, "P-2", "SELECT DISTINCT person FROM operations").await.expect("hip"), 0)
            .into_iter()
            .collect();
    let pop_p1: HashSet<String> =
        strings(&run(&pc, "P-1", "SELECT person FROM persons").await.expect("pop"), 0).into_iter().collect();
    assert!(hip_p1.len() > 100, "{}", hip_p1.len());
    assert!(hip_p1.is_subset(&pop_p1), "every hip patient links to the population register within a project");
    assert!(hip_p1.is_disjoint(&hip_p2), "projects get unlinkable pseudonyms");
    assert_eq!(hip_p1.len(), hip_p2.len());
    // Never the identity number, nor anything containing it.
    let raw = raw_session("pop", "persons").await;
    let pnrs = strings(&raw.sql("SELECT pnr FROM raw").await.expect("plan").collect().await.expect("pnrs"), 0);
    for p in pop_p1.iter() {
        assert!(!p.chars().any(|c| c.is_ascii_digit()), "pseudonym {p} contains a digit");
    }
    let pnr_set: HashSet<&String> = pnrs.iter().collect();
    assert!(pop_p1.iter().all(|p| !pnr_set.contains(p)));
    // The node's pseudonym is the documented keyed hash.
    let key = FederationKey::load(&dir.join("federation.key")).expect("key");
    let expected: HashSet<String> = pnrs.iter().map(|p| key.for_project("P-1").pseudonym(p)).collect();
    assert!(pop_p1.is_subset(&expected));
    hip.shutdown().await;
    pop.shutdown().await;
}

#[tokio::test]
async fn opted_out_persons_never_leave_the_node() {
    let dir = synth_dir();
    let node = start_node(dir, "hip").await;
    let key = FederationKey::load(&dir.join("federation.key")).expect("key").for_project("P-1");
    let optouts: Vec<String> = std::fs::read_to_string(dir.join("hip/optout.txt"))
        .expect("list")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect();
    assert!(!optouts.is_empty());
    let hidden: HashSet<String> = optouts.iter().map(|p| key.pseudonym(p)).collect();
    let client = coordinator_client(&node);
    let served = strings(&run(&client, "P-1", "SELECT person FROM operations").await.expect("rows"), 0);
    assert!(served.iter().all(|p| !hidden.contains(p)), "an opted-out person was served");
    let raw = raw_session("hip", "operations").await;
    let in_data = raw
        .sql("SELECT count(*) FROM raw WHERE pnr IN (SELECT pnr FROM optout)")
        .await
        .expect("plan")
        .collect()
        .await
        .expect("count");
    let opted_rows = in_data[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0);
    assert!(opted_rows > 0, "the synthetic data has opted-out hip patients");
    let total = raw.sql("SELECT count(*) FROM raw").await.expect("plan").collect().await.expect("count");
    let total = total[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0);
    assert_eq!(served.len() as i64, total - opted_rows);
    node.shutdown().await;
}

#[tokio::test]
async fn opt_out_list_reloads_without_restart() {
    let copy = common::private_copy();
    let node = start_node(copy.path(), "dors").await;
    let client = client_as(&identity_files(copy.path(), "coordinator"), &node);
    let count = |batches: Vec<RecordBatch>| batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0);
    let before = count(run(&client, "P-1", "SELECT count(*) FROM deaths").await.expect("count"));
    // Pick a person who is in the register and not yet opted out.
    let raw = datafusion::prelude::SessionContext::new();
    raw.register_parquet("d", copy.path().join("dors/deaths").to_str().expect("utf8"), Default::default())
        .await
        .expect("parquet");
    let list_path = copy.path().join("dors/optout.txt");
    let list = std::fs::read_to_string(&list_path).expect("list");
    let pnrs =
        strings(&raw.sql("SELECT pnr FROM d ORDER BY pnr").await.expect("plan").collect().await.expect("rows"), 0);
    let victim = pnrs.iter().find(|p| !list.contains(p.as_str())).expect("a person to opt out").clone();
    std::fs::write(&list_path, format!("{list}{victim}\n")).expect("append");
    let after = count(run(&client, "P-1", "SELECT count(*) FROM deaths").await.expect("count"));
    assert_eq!(after, before - 1, "the new opt-out applies to the next query");
    // A list that becomes unreadable fails closed, naming no person.
    std::fs::write(&list_path, "not a number\n").expect("corrupt");
    let err = run(&client, "P-1", "SELECT count(*) FROM deaths").await.expect_err("fails closed");
    let status = err.status().expect("a status from the node");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{err}");
    assert!(status.message().contains("opt-out list"), "{err}");
    node.shutdown().await;
}

#[tokio::test]
async fn clients_without_a_federation_certificate_are_refused() {
    let node = start_node(synth_dir(), "pop").await;
    let real_ca = synth_dir().join("certs/ca.pem");
    // A certificate from another CA.
    let rogue = TlsFiles {
        cert: common::rogue_dir().join("mallory.pem"),
        key: common::rogue_dir().join("mallory.key"),
        ca: real_ca.clone(),
    };
    let err = client_as(&rogue, &node).catalogue().await.expect_err("rogue certificate refused");
    assert!(matches!(err, NodeError::Unreachable { .. } | NodeError::Status { .. }), "{err}");
    let err = run(&client_as(&rogue, &node), "P-1", "SELECT count(*) FROM persons").await.expect_err("refused");
    assert!(!err.to_string().contains("persons |"), "no data in the refusal");
    // No client certificate at all.
    samkor_proto::tls::install_crypto_provider();
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(&real_ca).expect("ca"));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", node.addr))
        .expect("endpoint")
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost"))
        .expect("tls")
        .connect_lazy();
    let mut flight = arrow_flight::FlightClient::new(channel);
    let result = flight.do_action(arrow_flight::Action::new("catalogue", "")).await;
    assert!(result.is_err(), "a client without a certificate gets nothing");
    node.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_errors_that_say_which() {
    let node = start_node(synth_dir(), "hip").await;
    let client = coordinator_client(&node);
    let message = |e: NodeError| {
        let s = e.status().expect("status from the node").clone();
        (s.code(), s.message().to_owned())
    };
    let (code, msg) = message(run(&client, "P-1", "SELECT * FROM operationz").await.expect_err("unknown table"));
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("operationz"), "{msg}");
    let (code, msg) =
        message(run(&client, "P-1", "SELECT shoe_size FROM operations").await.expect_err("unknown column"));
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("shoe_size"), "{msg}");
    let (_, msg) = message(run(&client, "P-1", "SELECT pnr FROM operations").await.expect_err("no identity numbers"));
    assert!(msg.contains("pnr"), "{msg}");
    let (code, msg) = message(run(&client, "", "SELECT count(*) FROM operations").await.expect_err("no project"));
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("names no project"), "{msg}");
    let (code, _) = message(
        run(&client, "P-1", "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'").await.expect_err("no DDL"),
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    let (code, msg) = message(run(&client, "P-1", "SELECT 1 +").await.expect_err("syntax"));
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.starts_with("node hip: "), "{msg}");
    assert!(msg.contains("sql parser error: ") && !msg.contains("ParserError("), "text, not debug form: {msg}");
    node.shutdown().await;
}

async fn start_error(dir: &std::path::Path, register: &str) -> String {
    let config = samkor_node::NodeConfig::load(&dir.join(register).join("node.toml"));
    match config {
        Err(e) => e.to_string(),
        Ok(mut c) => {
            if c.node.listen.port() != 0 && std::net::TcpListener::bind(c.node.listen).is_ok() {
                c.node.listen = "127.0.0.1:0".parse().expect("addr");
            }
            samkor_node::start(c).await.expect_err("must refuse to start").to_string()
        }
    }
}

#[tokio::test]
async fn node_refuses_to_start_with_one_clear_line() {
    let copy = common::private_copy();
    let dir = copy.path();
    // Malformed key.
    std::fs::write(dir.join("federation.key"), "0123").expect("write");
    let e = start_error(dir, "dors").await;
    assert!(
        e.starts_with("pseudonymisation key file ") && e.contains("federation.key") && e.contains("expected 64"),
        "{e}"
    );
    samkor::certs::write_federation_key(&dir.join("federation.key")).expect("key");
    // A declared type that does not match the data.
    let toml_path = dir.join("dors/node.toml");
    let original = std::fs::read_to_string(&toml_path).expect("read");
    let edited =
        original.replacen("name = \"death_date\"\n  type = \"date32\"", "name = \"death_date\"\n  type = \"int64\"", 1);
    assert_ne!(edited, original, "test edits the death_date type");
    std::fs::write(&toml_path, &edited).expect("write");
    let e = start_error(dir, "dors").await;
    assert!(e.contains("column death_date is declared as int64 but the data files") && e.contains("Date32"), "{e}");
    // A declared column missing from the files.
    std::fs::write(&toml_path, original.replacen("name = \"underlying_cause\"", "name = \"cause_of_death\"", 1))
        .expect("write");
    let e = start_error(dir, "dors").await;
    assert!(e.contains("column cause_of_death is declared in the config but missing from the data files"), "{e}");
    // No data files.
    std::fs::write(&toml_path, original.replacen("path = \"deaths/*.parquet\"", "path = \"nowhere/*.parquet\"", 1))
        .expect("write");
    let e = start_error(dir, "dors").await;
    assert!(e.contains("table deaths: no data files match") && e.contains("nowhere"), "{e}");
    // A corrupt data file.
    std::fs::write(&toml_path, &original).expect("restore");
    let part = std::fs::read_dir(dir.join("dors/deaths")).expect("dir").next().expect("a file").expect("entry").path();
    std::fs::write(&part, b"PAR1 this is not parquet").expect("corrupt");
    let e = start_error(dir, "dors").await;
    assert!(e.contains("table deaths: cannot read the data files"), "{e}");
    // Missing opt-out list.
    std::fs::remove_file(dir.join("npr/optout.txt")).expect("remove");
    let e = start_error(dir, "npr").await;
    assert!(e.starts_with("cannot read opt-out list ") && e.contains("optout.txt"), "{e}");
    // Wrong key file for TLS.
    std::fs::write(dir.join("certs/node-pop.key"), "garbage").expect("write");
    let e = start_error(dir, "pop").await;
    assert!(e.contains("node-pop.key"), "{e}");
    // Port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = samkor_node::NodeConfig::load(&dir.join("hip/node.toml")).expect("config");
    c.node.listen = taken.local_addr().expect("addr");
    let e = samkor_node::start(c).await.expect_err("port in use").to_string();
    assert!(e.starts_with(&format!("cannot listen on {}", taken.local_addr().expect("addr"))), "{e}");
    assert_eq!(e.lines().count(), 1, "one line: {e}");
}

fn i64s(batches: &[RecordBatch], col: usize) -> Vec<i64> {
    strings(batches, col).iter().map(|v| v.parse().expect("integer")).collect()
}

#[tokio::test]
async fn persons_only_counted_are_counted_on_identity_numbers_with_the_same_answer() {
    let dir = synth_dir();
    let node = start_node(dir, "hip").await;
    let client = coordinator_client(&node);
    // The shape of disclosure control's hidden companions: persons only counted.
    let counted = "SELECT region, count(*) AS n, count(DISTINCT person) AS p, \
                   count(DISTINCT CASE WHEN reoperation THEN person END) AS pr \
                   FROM operations WHERE asa > 2 GROUP BY region ORDER BY region";
    let plan = strings(&run(&client, "P-1", &format!("EXPLAIN {counted}")).await.expect("explain"), 1).join("\n");
    assert!(plan.contains("identity number (counted only)"), "{plan}");
    // Filters on other columns run below the pseudonymiser: in the Parquet
    // scan (rows filtered while decoding) or in a FilterExec under it.
    let below = &plan[plan.find("PseudonymiseExec").expect("pseudonymiser")..];
    let above = &plan[..plan.find("PseudonymiseExec").expect("pseudonymiser")];
    assert!(!above.contains("FilterExec") && below.contains("asa@"), "{plan}");
    let served = run(&client, "P-1", counted).await.expect("counts");
    let raw = raw_session("hip", "operations").await;
    let expected = raw
        .sql(
            "SELECT region, count(*) AS n, count(DISTINCT pnr) AS p, count(DISTINCT CASE WHEN reoperation THEN pnr END) AS pr \
             FROM raw WHERE asa > 2 AND pnr NOT IN (SELECT pnr FROM optout) GROUP BY region ORDER BY region",
        )
        .await
        .expect("plan")
        .collect()
        .await
        .expect("raw counts");
    assert_eq!(sorted_lines(&served), sorted_lines(&expected));
    assert!(i64s(&served, 2).iter().sum::<i64>() > 0);
    // Any other use of the person keeps the pseudonym: grouping by a function of it, or releasing it.
    for sql in [
        "SELECT count(DISTINCT person) AS p, min(person) AS m FROM operations",
        "SELECT substr(person, 1, 1) AS s, count(DISTINCT person) AS p FROM operations GROUP BY substr(person, 1, 1)",
    ] {
        let plan = strings(&run(&client, "P-1", &format!("EXPLAIN {sql}")).await.expect("explain"), 1).join("\n");
        assert!(!plan.contains("counted only") && plan.contains("PseudonymiseExec"), "{sql}: {plan}");
        let batches = run(&client, "P-1", sql).await.expect("rows");
        for v in strings(&batches, if sql.contains("min(") { 1 } else { 0 }) {
            assert!(v.bytes().all(|c| (b'a'..=b'p').contains(&c)), "{sql}: a value is not a pseudonym");
        }
    }
    node.shutdown().await;
}

#[tokio::test]
async fn record_keys_from_identity_numbers_equal_those_from_pseudonyms() {
    let dir = synth_dir();
    let node = start_node(dir, "hip").await;
    let client = coordinator_client(&node);
    // Disclosure control's shape: record keys under the scan, only counted and summed above.
    let counted = "SELECT region, count(DISTINCT person) AS p, samkor_persons(rk) AS cell, min(rk) AS lo, max(rk) AS hi \
                   FROM (SELECT person, region, samkor_record_key(person) AS rk FROM operations WHERE asa > 1) AS o \
                   GROUP BY region ORDER BY region";
    let plan = strings(&run(&client, "P-1", &format!("EXPLAIN {counted}")).await.expect("explain"), 1).join("\n");
    assert!(plan.contains("identity number (counted only)"), "{plan}");
    assert!(plan.contains("samkor_record_key_of_identity_number(person"), "{plan}");
    let served = run(&client, "P-1", counted).await.expect("cells");
    // The same keys where the pseudonym leaves too (no rewrite), aggregated here.
    let sent = "SELECT person, region, samkor_record_key(person) AS rk FROM operations WHERE asa > 1";
    let plan = strings(&run(&client, "P-1", &format!("EXPLAIN {sent}")).await.expect("explain"), 1).join("\n");
    assert!(!plan.contains("counted only") && !plan.contains("of_identity_number"), "{plan}");
    let rows = run(&client, "P-1", sent).await.expect("rows");
    let mut cells: std::collections::BTreeMap<String, std::collections::BTreeMap<String, i64>> = Default::default();
    for ((person, region), rk) in strings(&rows, 0).into_iter().zip(strings(&rows, 1)).zip(i64s(&rows, 2)) {
        cells.entry(region).or_default().insert(person, rk);
    }
    // A cell's persons, its packed cell (count and key) and extreme keys.
    let summary = |persons: &std::collections::BTreeMap<String, i64>| {
        let key = persons.values().fold(0u32, |k, rk| k.wrapping_add(*rk as u32));
        let cell = samkor_functions::PersonsCell { persons: persons.len() as u64, key }.pack();
        let (lo, hi) = (persons.values().min().expect("a person"), persons.values().max().expect("a person"));
        format!("{cell} {lo} {hi}")
    };
    let expected: Vec<String> =
        cells.iter().map(|(region, persons)| format!("{region} {} {}", persons.len(), summary(persons))).collect();
    let got: Vec<String> = (0..served.iter().map(|b| b.num_rows()).sum::<usize>())
        .map(|i| {
            let field = |c: usize| strings(&served, c)[i].clone();
            format!("{} {} {} {} {}", field(0), field(1), field(2), field(3), field(4))
        })
        .collect();
    assert!(expected.len() > 3, "several regions: {expected:?}");
    assert_eq!(got, expected);
    // Record keys alone: computed at the scan as the person column, the same cells.
    let keyed = "SELECT region, samkor_persons(rk) AS cell, min(rk) AS lo, max(rk) AS hi \
                 FROM (SELECT person, region, samkor_record_key(person) AS rk FROM operations WHERE asa > 1) AS o \
                 GROUP BY region ORDER BY region";
    let plan = strings(&run(&client, "P-1", &format!("EXPLAIN {keyed}")).await.expect("explain"), 1).join("\n");
    assert!(plan.contains("record key (at the scan)") && !plan.contains("of_identity_number"), "{plan}");
    let served = run(&client, "P-1", keyed).await.expect("cells");
    let got: Vec<String> = (0..served.iter().map(|b| b.num_rows()).sum::<usize>())
        .map(|i| {
            let field = |c: usize| strings(&served, c)[i].clone();
            format!("{} {} {} {}", field(0), field(1), field(2), field(3))
        })
        .collect();
    let without_counts: Vec<String> =
        cells.iter().map(|(region, persons)| format!("{region} {}", summary(persons))).collect();
    assert_eq!(got, without_counts);
    // A join's side: the pseudonym's bytes and the record key, both from the
    // bytes computed at the scan, equal those of the pseudonyms.
    let at_scan = "SELECT samkor_pseudonym_bytes(person) AS b, samkor_record_key(person) AS rk FROM operations";
    let plan = strings(&run(&client, "P-1", &format!("EXPLAIN {at_scan}")).await.expect("explain"), 1).join("\n");
    assert!(plan.contains("pseudonym bytes (at the scan)"), "{plan}");
    let of_pseudonyms =
        "SELECT person, samkor_pseudonym_bytes(person) AS b, samkor_record_key(person) AS rk FROM operations";
    let pairs = |batches: &[RecordBatch], from: usize| -> std::collections::BTreeSet<(String, String)> {
        let shown = |b: &RecordBatch, c: usize, row: usize| {
            datafusion::arrow::util::display::array_value_to_string(b.column(c), row).expect("shown")
        };
        let rows = batches.iter().flat_map(|b| (0..b.num_rows()).map(move |row| (b, row)));
        rows.map(|(b, row)| (shown(b, from, row), shown(b, from + 1, row))).collect()
    };
    let derived = pairs(&run(&client, "P-1", at_scan).await.expect("rows"), 0);
    assert!(derived.len() > 100, "{} persons", derived.len());
    assert_eq!(derived, pairs(&run(&client, "P-1", of_pseudonyms).await.expect("rows"), 1));
    node.shutdown().await;
}

#[tokio::test]
async fn a_filter_on_a_withheld_column_is_refused_like_reading_it() {
    let dir = synth_dir();
    let mut config = node_config(dir, "hip", true).expect("config");
    config.access.withhold.insert("P-1".into(), vec!["operations.asa".into()]);
    let node = samkor_node::start(config).await.expect("node starts");
    let client = coordinator_client(&node);
    // Only the filter reads `asa`: the pushed-down filter must be checked too.
    let e = run(&client, "P-1", "SELECT count(*) FROM operations WHERE asa > 2").await.unwrap_err();
    let status = e.status().expect("a refusal from the node");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(status.message().contains("asa"), "{e}");
    // Another project is not affected.
    run(&client, "P-2", "SELECT count(*) FROM operations WHERE asa > 2").await.expect("other project");
    node.shutdown().await;
}

#[tokio::test]
async fn the_pseudonym_scheme_is_configurable_and_stated_in_the_catalogue() {
    let dir = synth_dir();
    let key = FederationKey::load(&dir.join("federation.key")).expect("key");
    for scheme in samkor_node::pseudonym::PseudonymScheme::ALL {
        let mut config = node_config(dir, "dors", true).expect("config");
        config.node.pseudonym_scheme = scheme;
        let node = samkor_node::start(config).await.expect("node starts");
        let client = coordinator_client(&node);
        assert_eq!(client.catalogue().await.expect("catalogue").pseudonym_scheme, scheme.name());
        let served: HashSet<String> =
            strings(&run(&client, "P-1", "SELECT person FROM deaths").await.expect("rows"), 0).into_iter().collect();
        let raw = raw_session("dors", "deaths").await;
        let pnrs = raw
            .sql("SELECT pnr FROM raw WHERE pnr NOT IN (SELECT pnr FROM optout)")
            .await
            .expect("plan")
            .collect()
            .await
            .expect("rows");
        let expected: HashSet<String> =
            strings(&pnrs, 0).iter().map(|p| key.for_project_with(scheme, "P-1").pseudonym(p)).collect();
        assert_eq!(served, expected, "{scheme}");
        node.shutdown().await;
    }
}

/// A second file in `table_dir` repeating the first `n` rows of its first file.
/// The batches of a Parquet file, read directly.
fn parquet_batches(
    file: &std::path::Path,
    batch_size: usize,
) -> parquet::arrow::arrow_reader::ParquetRecordBatchReader {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(file).expect("open"))
        .expect("parquet")
        .with_batch_size(batch_size)
        .build()
        .expect("reader")
}

fn repeat_rows(table_dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let extra = table_dir.join("part-repeated.parquet");
    let first = std::fs::read_dir(table_dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| *p != extra)
        .expect("a data file");
    let batch = parquet_batches(&first, n).next().expect("a batch").expect("rows");
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&extra).expect("create"), batch.schema(), None)
            .expect("writer");
    writer.write(&batch.slice(0, n)).expect("write");
    writer.close().expect("close");
    extra
}

/// A table declared to hold one row per person (pop.persons): a cell's
/// persons are counted as its rows, with the same cells as the sets give;
/// when its files change to hold a person twice the sets come back, and a
/// false declaration stops the node at start.
#[tokio::test]
async fn one_row_per_person_counts_rows_while_the_files_hold_it() {
    let copy = common::private_copy();
    let dir = copy.path();
    let node = start_node(dir, "pop").await;
    let client = client_as(&identity_files(dir, "coordinator"), &node);
    let cells = "SELECT region, samkor_persons(rk) AS cell FROM \
                 (SELECT region, samkor_record_key(person) AS rk FROM persons WHERE sex = 'F') AS p \
                 GROUP BY region ORDER BY region";
    let plan = |client: NodeClient| async move {
        strings(&run(&client, "P-1", &format!("EXPLAIN {cells}")).await.expect("explain"), 1).join("\n")
    };
    assert!(plan(client.clone()).await.contains("samkor_persons_of_rows("), "{}", plan(client.clone()).await);
    let by_rows = run(&client, "P-1", cells).await.expect("cells");
    // The cells from the record keys themselves, each person once.
    let keys = run(&client, "P-1", "SELECT region, samkor_record_key(person) AS rk FROM persons WHERE sex = 'F'")
        .await
        .expect("keys");
    let mut sets: std::collections::BTreeMap<String, std::collections::BTreeSet<i64>> = Default::default();
    for (region, rk) in strings(&keys, 0).into_iter().zip(i64s(&keys, 1)) {
        sets.entry(region).or_default().insert(rk);
    }
    let expected: Vec<String> = sets
        .iter()
        .map(|(region, keys)| {
            let key = keys.iter().fold(0u32, |k, rk| k.wrapping_add(*rk as u32));
            format!("{region} {}", samkor_functions::PersonsCell { persons: keys.len() as u64, key }.pack())
        })
        .collect();
    let lines = |b: &[RecordBatch]| -> Vec<String> {
        strings(b, 0).into_iter().zip(strings(b, 1)).map(|(r, c)| format!("{r} {c}")).collect()
    };
    assert!(expected.len() > 3, "{expected:?}");
    assert_eq!(lines(&by_rows), expected);
    // The files change: 50 persons now have two rows. Same persons, same cells, counted as sets.
    let extra = repeat_rows(&dir.join("pop/persons"), 50);
    let plan_now = plan(client.clone()).await;
    assert!(!plan_now.contains("samkor_persons_of_rows") && plan_now.contains("samkor_persons("), "{plan_now}");
    assert_eq!(lines(&run(&client, "P-1", cells).await.expect("cells")), expected);
    // One row per person again: rows again.
    std::fs::remove_file(&extra).expect("remove");
    assert!(plan(client.clone()).await.contains("samkor_persons_of_rows("));
    node.shutdown().await;
    // Declared, but false at start: the node does not start.
    repeat_rows(&dir.join("pop/persons"), 50);
    let e = start_error(dir, "pop").await;
    assert!(
        e.contains(
            "table persons: declared `one_row_per_person = true`, but 50 identity numbers appear in more than one row"
        ),
        "{e}"
    );
}

/// The rows of a table's files whose person has not opted out, read
/// directly from the files as they are now.
fn rows_kept(register_dir: &std::path::Path, table: &str) -> i64 {
    let list = std::fs::read_to_string(register_dir.join("optout.txt")).expect("opt-out list");
    let opted: HashSet<&str> = list.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let mut kept = 0;
    for file in std::fs::read_dir(register_dir.join(table)).expect("dir") {
        for batch in parquet_batches(&file.expect("entry").path(), 8192) {
            let batch = batch.expect("rows");
            let pnr = batch.column_by_name("pnr").expect("pnr");
            let pnr = arrow::compute::cast(pnr, &arrow::datatypes::DataType::Utf8).expect("text");
            kept += pnr.as_string::<i32>().iter().flatten().filter(|p| !opted.contains(p)).count() as i64;
        }
    }
    kept
}

/// A register holder adds, rewrites and removes data files while the node
/// runs: the next query reads the files as they are then (no listing or
/// footer kept from an earlier query), and the answers stay exact.
#[tokio::test]
async fn data_files_changed_while_running_are_read_as_they_are() {
    let copy = common::private_copy();
    let dir = copy.path();
    let node = start_node(dir, "hip").await;
    let client = client_as(&identity_files(dir, "coordinator"), &node);
    let count = |batches: Vec<RecordBatch>| batches[0].column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0);
    let sql = "SELECT count(*) FROM operations";
    let hip = dir.join("hip");
    let before = count(run(&client, "P-1", sql).await.expect("count"));
    assert_eq!(before, rows_kept(&hip, "operations"));
    let extra = repeat_rows(&hip.join("operations"), 50);
    let added = count(run(&client, "P-1", sql).await.expect("count"));
    assert!(added > before, "an added file is read: {before} rows before, {added} after");
    assert_eq!(added, rows_kept(&hip, "operations"));
    // Rewritten in place, with another length: its new footer and rows.
    repeat_rows(&hip.join("operations"), 100);
    let rewritten = count(run(&client, "P-1", sql).await.expect("count"));
    assert!(rewritten > added, "a rewritten file is read: {added} rows before, {rewritten} after");
    assert_eq!(rewritten, rows_kept(&hip, "operations"));
    std::fs::remove_file(&extra).expect("remove");
    assert_eq!(count(run(&client, "P-1", sql).await.expect("count")), before, "a removed file is not read");
    node.shutdown().await;
}

/// A node holds its files' identity columns in memory (the default;
/// `samkor_node::identities`): its scans read row numbers instead and take
/// the identity numbers from memory. The answers are those of a node that
/// decodes the column in every scan, opt-outs included, in every register
/// and every use of the person (pseudonyms released, counted at the node,
/// not read at all).
#[tokio::test]
async fn identity_numbers_from_memory_give_the_answers_decoding_gives() {
    let dir = synth_dir();
    let queries = [
        ("hip", "SELECT person, region, asa FROM operations WHERE asa > 2"),
        ("hip", "SELECT region, count(*) AS n, count(DISTINCT person) AS p FROM operations GROUP BY region"),
        ("hip", "SELECT count(*) AS n FROM operations"),
        (
            "lmr",
            "SELECT atc, count(DISTINCT person) AS p, round(sum(ddd), 3) AS d FROM dispensations WHERE region = 'Skåne' GROUP BY atc",
        ),
        ("lmr", "SELECT person, count(*) AS n FROM dispensations WHERE atc LIKE 'N06%' GROUP BY person"),
        // Record keys alone: keyed at the scan, from memory or computed there.
        (
            "hip",
            "SELECT region, samkor_persons(rk) AS cell, min(rk) AS lo, max(rk) AS hi \
             FROM (SELECT person, region, samkor_record_key(person) AS rk FROM operations WHERE asa > 1) AS o GROUP BY region",
        ),
        (
            "lmr",
            "SELECT atc, samkor_persons(samkor_record_key(person)) AS cell FROM dispensations WHERE region = 'Skåne' GROUP BY atc",
        ),
    ];
    for register in ["hip", "lmr"] {
        let cached = start_node(dir, register).await;
        let mut config = node_config(dir, register, true).expect("config");
        config.node.identity_cache_mib = 0;
        let decoded = samkor_node::start(config).await.expect("node starts");
        let (cached_client, decoded_client) = (coordinator_client(&cached), coordinator_client(&decoded));
        for (_, sql) in queries.iter().filter(|(r, _)| *r == register) {
            let explain = |client| async move {
                strings(&run(client, "P-1", &format!("EXPLAIN {sql}")).await.expect("explain"), 1).join("\n")
            };
            let plan = explain(&cached_client).await;
            assert!(plan.contains("identity numbers from memory by row number"), "{sql}: {plan}");
            assert!(!explain(&decoded_client).await.contains("from memory"), "{sql}");
            let keyed = sql.contains("samkor_persons");
            assert_eq!(plan.contains("record key (at the scan)"), keyed, "{sql}: {plan}");
            let from_memory = run(&cached_client, "P-1", sql).await.expect("from memory");
            let from_files = run(&decoded_client, "P-1", sql).await.expect("decoded");
            assert!(from_memory.iter().map(|b| b.num_rows()).sum::<usize>() > 0, "{sql}: no rows");
            // (A sum of decimals is rounded above: its last bits follow the order rows are added in.)
            assert_eq!(sorted_lines(&from_memory), sorted_lines(&from_files), "{sql}");
            if keyed {
                // Again: the keys now come from memory.
                let again = run(&cached_client, "P-1", sql).await.expect("from memory");
                assert_eq!(sorted_lines(&again), sorted_lines(&from_files), "{sql}");
            }
        }
        cached.shutdown().await;
        decoded.shutdown().await;
    }
    // Opted-out persons stay out.
    let node = start_node(dir, "hip").await;
    let client = coordinator_client(&node);
    let count = run(&client, "P-1", "SELECT count(*) FROM operations").await.expect("count");
    assert_eq!(i64s(&count, 0), vec![rows_kept(&dir.join("hip"), "operations")]);
    node.shutdown().await;
}
