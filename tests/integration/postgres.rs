//! Nodes serving registers from a real PostgreSQL database (`crate::pg`):
//! opt-outs and pseudonyms at the node whatever the database returns,
//! filters pushed into the database's SQL, no identity number in any
//! statement the database sees, and one-line errors naming node, table and
//! problem. The correctness matrix and the attack suite run on such a
//! federation too (`matrix.rs`, `disclosure.rs`).

use std::collections::BTreeSet;
use std::path::Path;

use arrow::array::RecordBatch;
use datafusion::physical_plan::displayable;
use futures::TryStreamExt;
use samkor_node::access::Scope;
use samkor_node::{NodeConfig, NodeState};

use crate::common;
use crate::pg::{self, Postgres};

const PROJECT: &str = "P-1";

/// The node config of `register` in `dir` with `from` replaced by `to`.
fn config_with(dir: &Path, register: &str, from: &str, to: &str) -> NodeConfig {
    let path = dir.join(register).join("node.toml");
    let text = std::fs::read_to_string(&path).expect("node.toml");
    assert!(text.contains(from), "{} holds {from:?}", path.display());
    let mut config = NodeConfig::parse(&path, &text.replacen(from, to, 1)).expect("config parses");
    config.node.audit_log = dir.join(register).join("audit").join("pg-test.jsonl");
    // An ephemeral port: the config's port may be taken by a test running beside this one.
    config.node.listen = "127.0.0.1:0".parse().expect("addr");
    config
}

async fn open_error(config: NodeConfig) -> String {
    let e = NodeState::open(config).await.expect_err("the node must not start").to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_out_person_is_absent_when_the_database_serves_and_filters_the_rows() {
    let pg = Postgres::start();
    let dir = pg::federation_dir(&pg, &["hip"]).await;
    let db = pg.client().await;
    let out = common::opted_out(dir.path(), "hip");

    // An operation of an opted-out person, found without sending any identity number to the database.
    let rows = db.query("SELECT pnr, hospital, op_date::text FROM hip.operations", &[]).await.expect("rows");
    let all_pnrs: BTreeSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    let hit = rows.iter().find(|r| out.contains(&r.get::<_, String>(0))).expect("an opted-out person has an operation");
    let (hospital, date): (String, String) = (hit.get(1), hit.get(2));
    let year: i32 = date[..4].parse().expect("year");
    let same: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, String>(1) == hospital && r.get::<_, String>(2).starts_with(&date[..4]))
        .map(|r| r.get::<_, String>(0))
        .collect();
    let kept: Vec<String> = same.iter().filter(|p| !out.contains(*p)).cloned().collect();
    assert!(same.len() > kept.len(), "the database holds the opted-out person's row under the filter");

    let state = NodeState::open(samkor::federation::node_config(dir.path(), "hip", true).expect("config"))
        .await
        .expect("node opens on the database");
    let ctx = state.session(&Scope::Project(PROJECT.into()), None).expect("session");
    let filter =
        format!("hospital = '{hospital}' AND op_date >= DATE '{year}-01-01' AND op_date < DATE '{}-01-01'", year + 1);
    let sql = format!("SELECT person FROM operations WHERE {filter}");

    // The filter runs in the database, below the pseudonymiser.
    let plan = ctx.sql(&sql).await.expect("plan").create_physical_plan().await.expect("physical plan");
    let shown = displayable(plan.as_ref()).indent(true).to_string();
    let scan =
        shown.lines().find(|l| l.contains("PostgresScanExec")).unwrap_or_else(|| panic!("a database scan:\n{shown}"));
    assert!(
        scan.contains("(\"hospital\" = $1::text)")
            && scan.contains("(\"op_date\" >= $2::date)")
            && scan.contains("(\"op_date\" < $3::date)"),
        "filters pushed: {scan}"
    );
    let pseudonymise = shown.find("PseudonymiseExec").expect("pseudonymiser in the plan");
    assert!(pseudonymise < shown.find("PostgresScanExec").expect("scan"), "pseudonymiser above the scan:\n{shown}");

    let batches = ctx.sql(&sql).await.expect("plan").collect().await.expect("answer");
    let served: BTreeSet<String> = common::strings(&batches, 0).into_iter().collect();
    let pseudonyms = |pnrs: &[String]| common::pseudonyms(dir.path(), PROJECT, pnrs);
    assert_eq!(served, pseudonyms(&kept), "exactly the persons who did not opt out, pseudonymised");
    let excluded = pseudonyms(&[hit.get::<_, String>(0)]);
    assert!(served.is_disjoint(&excluded), "the opted-out person is absent");

    // Aggregates run at the node, after the opt-outs are dropped; so do filters on the pseudonym.
    let count = format!("SELECT count(*) FROM operations WHERE {filter}");
    let batches = ctx.sql(&count).await.expect("plan").collect().await.expect("answer");
    assert_eq!(common::rows(&batches), vec![vec![kept.len().to_string()]]);
    let one = served.iter().next().expect("a served person");
    let by_person = format!("SELECT count(*) FROM operations WHERE person = '{one}'");
    let batches = ctx.sql(&by_person).await.expect("plan").collect().await.expect("answer");
    assert_ne!(common::rows(&batches), vec![vec!["0".to_owned()]]);

    // Direct access: the unit filter goes into the database and is applied again at the node.
    let direct = state.session(&Scope::Direct { unit: hospital.clone() }, None).expect("direct session");
    let sql = "SELECT hospital, count(*) FROM operations GROUP BY hospital";
    let plan = direct.sql(sql).await.expect("plan").create_physical_plan().await.expect("physical plan");
    let shown = displayable(plan.as_ref()).indent(true).to_string();
    assert!(shown.contains("WHERE (\"hospital\" = $1::text)"), "unit filter pushed:\n{shown}");
    let batches = direct.sql(sql).await.expect("plan").collect().await.expect("answer");
    let own =
        rows.iter().filter(|r| r.get::<_, String>(1) == hospital && !out.contains(&r.get::<_, String>(0))).count();
    assert_eq!(common::rows(&batches), vec![vec![hospital.clone(), own.to_string()]], "own unit only, opt-outs out");

    // Every statement the database ran, with its parameters, is in its log: no identity number among them.
    drop(db);
    let log = std::fs::read_to_string(pg.log()).expect("server log");
    assert!(log.contains("FROM \"hip\".\"operations\" WHERE"), "the node's statements are in the log");
    let leaked: Vec<&String> = all_pnrs.iter().filter(|p| log.contains(p.as_str())).collect();
    assert!(leaked.is_empty(), "{} identity numbers reached the database's statements", leaked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_name_node_table_and_problem() {
    let pg = Postgres::start();
    let dir = pg::federation_dir(&pg, &["hip"]).await;
    let db = pg.client().await;
    db.batch_execute(
        "CREATE VIEW hip.no_bmi AS SELECT pnr, op_id, op_date, hospital, region, side, diagnosis, fixation, asa, \
           reoperation, reop_date FROM hip.operations;
         CREATE VIEW hip.date_as_text AS SELECT pnr, op_id, op_date::text AS op_date, hospital, region, side, diagnosis, \
           fixation, asa, bmi, reoperation, reop_date FROM hip.operations;",
    )
    .await
    .expect("views");
    let relation = "relation = \"hip.operations\"";

    let e = open_error(config_with(dir.path(), "hip", relation, "relation = \"hip.nope\"")).await;
    assert!(
        e.contains("node hip, table operations: the relation hip.nope does not exist in the PostgreSQL database given by the file "),
        "{e}"
    );
    let e = open_error(config_with(dir.path(), "hip", relation, "relation = \"hip.no_bmi\"")).await;
    assert!(
        e.contains("node hip, table operations: column bmi is declared in the config but missing from hip.no_bmi in the PostgreSQL database"),
        "{e}"
    );
    let e = open_error(config_with(dir.path(), "hip", relation, "relation = \"hip.date_as_text\"")).await;
    assert!(
        e.contains("node hip, table operations: column op_date is declared as date32 but hip.date_as_text.op_date in the PostgreSQL database is text"),
        "{e}"
    );
    let e = open_error(config_with(
        dir.path(),
        "hip",
        "connection_file = \"postgres.conn\"",
        "connection_env = \"SAMKOR_TEST_UNSET_PG\"",
    ))
    .await;
    assert!(e.contains("node hip, table operations: the database connection string is to come from the environment variable SAMKOR_TEST_UNSET_PG, which is not set"), "{e}");

    // A column whose type changes while the node runs: the next scan says so.
    let state = NodeState::open(samkor::federation::node_config(dir.path(), "hip", true).expect("config"))
        .await
        .expect("node opens");
    db.batch_execute("DROP VIEW hip.no_bmi, hip.date_as_text; ALTER TABLE hip.operations ALTER COLUMN asa TYPE text")
        .await
        .expect("alter");
    let ctx = state.session(&Scope::Project(PROJECT.into()), None).expect("session");
    let e = ctx
        .sql("SELECT asa, count(*) FROM operations GROUP BY asa")
        .await
        .expect("plan")
        .collect()
        .await
        .expect_err("scan fails");
    let e = e.to_string();
    assert!(
        e.contains("node hip, table operations: column asa is declared as int32 but hip.operations.asa in the PostgreSQL database is text"),
        "{e}"
    );

    // The database is down when the node starts; the password in the connection string is never shown.
    std::fs::write(dir.path().join("hip").join("postgres.conn"), format!("{} password=hunter2-never-shown", pg.url()))
        .expect("connection file");
    pg.stop();
    let e = open_error(samkor::federation::node_config(dir.path(), "hip", true).expect("config")).await;
    assert!(
        e.contains("node hip, table operations: cannot connect to the PostgreSQL database given by the file ")
            && e.contains("postgres.conn: error connecting to server"),
        "{e}"
    );
    assert!(!e.contains("hunter2") && !e.contains("port="), "the connection string stays secret: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lost_mid_query_is_one_line_naming_node_and_table() {
    let pg = Postgres::start();
    let dir = pg::federation_dir(&pg, &["hip"]).await;
    let db = pg.client().await;
    // Rows, then a wait that only ends when the connection is terminated.
    db.batch_execute(
        "CREATE VIEW hip.slow AS SELECT * FROM hip.operations \
         UNION ALL SELECT * FROM hip.operations WHERE (SELECT true FROM pg_sleep(600))",
    )
    .await
    .expect("view");
    let config = config_with(dir.path(), "hip", "relation = \"hip.operations\"", "relation = \"hip.slow\"");
    let node = samkor_node::start(config).await.expect("node starts");
    let client = common::node_client(dir.path(), "coordinator", &node);
    let query = tokio::spawn(async move {
        let stream =
            client.query(PROJECT, "SELECT region, count(*) FROM operations GROUP BY region", "lost-1", None).await;
        match stream {
            Err(e) => Err(e.to_string()),
            Ok(s) => s.try_collect::<Vec<RecordBatch>>().await.map_err(|e| client.stream_error(e).to_string()),
        }
    });
    let mut terminated = false;
    for _ in 0..600 {
        let rows = db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'samkor-node hip' AND state = 'active' AND query LIKE '%\"hip\".\"slow\"%'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        if rows.iter().any(|r| r.get::<_, bool>(0)) {
            terminated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(terminated, "the node's scan never showed up in pg_stat_activity");
    let e = query.await.expect("query task").expect_err("the sub-query must fail");
    assert!(
        e.contains(
            "node hip, table operations: the connection to the PostgreSQL database was lost during the sub-query"
        ),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    node.shutdown().await;
}

/// TLS from the node to the database: a server with a certificate from our
/// own CA that refuses unencrypted TCP; a node with `sslmode=verify-full` and
/// that CA as `ca_file` answers; a node trusting another CA, one asking for
/// no TLS, and one asking for TLS from a server without it fail at start
/// with one line naming node, table and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reaches_the_database_over_verified_tls_and_names_tls_failures() {
    let certs = tempfile::tempdir().expect("tempdir");
    samkor::certs::init(&certs.path().join("db"), &[], &["postgres-db"]).expect("database certificate");
    samkor::certs::init(&certs.path().join("other"), &[], &[]).expect("another CA");
    let db_ca = certs.path().join("db").join("ca.pem");
    let other_ca = certs.path().join("other").join("ca.pem");
    let pg = Postgres::start_tls(
        &certs.path().join("db").join("postgres-db.pem"),
        &certs.path().join("db").join("postgres-db.key"),
    );
    let dir = pg::federation_dir(&pg, &["hip"]).await;
    let conn = dir.path().join("hip").join("postgres.conn");
    let section = "connection_file = \"postgres.conn\"";
    let with_ca = |ca: &Path| format!("{section}, ca_file = {:?}", ca.display().to_string());
    // Both tables of hip (operations, prom) are in the database: set every postgres section.
    let config_with = |dir: &Path, register: &str, from: &str, to: &str| {
        let path = dir.join(register).join("node.toml");
        let text = std::fs::read_to_string(&path).expect("node.toml");
        assert!(text.matches(from).count() == 2, "{} holds {from:?} twice", path.display());
        let mut config = NodeConfig::parse(&path, &text.replace(from, to)).expect("config parses");
        config.node.audit_log = dir.join(register).join("audit").join("pg-test.jsonl");
        // An ephemeral port: the config's port may be taken by a test running beside this one.
        config.node.listen = "127.0.0.1:0".parse().expect("addr");
        config
    };

    // verify-full with the CA that signed the server's certificate: the node starts and answers.
    std::fs::write(&conn, format!("{} sslmode=verify-full", pg.url())).expect("connection file");
    let node =
        samkor_node::start(config_with(dir.path(), "hip", section, &with_ca(&db_ca))).await.expect("node starts");
    let client = common::node_client(dir.path(), "coordinator", &node);
    let stream = client
        .query(PROJECT, "SELECT count(*) FROM operations", "tls-1", None)
        .await
        .expect("the node answers over TLS");
    let batches: Vec<RecordBatch> = stream.try_collect().await.expect("answer");
    let n: i64 = common::rows(&batches)[0][0].parse().expect("a count");
    assert!(n > 0, "rows were served");
    node.shutdown().await;
    let log = std::fs::read_to_string(pg.log()).expect("server log");
    assert!(
        log.lines().any(|l| l.contains("application_name=samkor-node hip") && l.contains("SSL enabled")),
        "the node's connections were encrypted"
    );

    // A CA that did not sign the server's certificate (a development CA of the same name, another key):
    // refused at start, saying why.
    let e = open_error(config_with(dir.path(), "hip", section, &with_ca(&other_ca))).await;
    assert!(
        e.contains("node hip, table operations: the certificate of the PostgreSQL server given by the file ")
            && e.contains(
                "is not trusted: it is not signed by the key of the CA in `ca_file`; check that `ca_file` is the CA"
            ),
        "{e}"
    );
    // verify-full without a CA.
    let e = open_error(config_with(dir.path(), "hip", section, section)).await;
    assert!(
        e.contains("node hip, table operations: the connection string from the file ")
            && e.contains("asks for sslmode=verify-full, which needs `ca_file`"),
        "{e}"
    );
    // No TLS asked for: this server refuses unencrypted connections.
    std::fs::write(&conn, format!("{} sslmode=disable", pg.url())).expect("connection file");
    let e = open_error(config_with(dir.path(), "hip", section, section)).await;
    assert!(
        e.contains("node hip, table operations: cannot connect to the PostgreSQL database given by the file ")
            && e.contains("no encryption"),
        "{e}"
    );
    let e = open_error(config_with(dir.path(), "hip", section, &with_ca(&db_ca))).await;
    assert!(
        e.contains("`ca_file` is set but the connection string from the file ") && e.contains("does not ask for TLS"),
        "{e}"
    );

    // TLS asked for from a server that has it turned off.
    let db = pg.client().await;
    db.batch_execute("ALTER SYSTEM SET ssl = off").await.expect("ssl off");
    db.query("SELECT pg_reload_conf()", &[]).await.expect("reload");
    std::fs::write(&conn, format!("{} sslmode=verify-full", pg.url())).expect("connection file");
    let mut refused = String::new();
    for _ in 0..100 {
        // The server applies a reload asynchronously: wait until it no longer offers TLS.
        match samkor_node::NodeState::open(config_with(dir.path(), "hip", section, &with_ca(&db_ca))).await {
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(e) => {
                refused = e.to_string();
                break;
            }
        }
    }
    assert!(
        refused.contains("node hip, table operations: the PostgreSQL server given by the file ")
            && refused
                .contains("does not offer TLS, but the connection string asks for sslmode=verify-full; turn on `ssl`"),
        "{refused}"
    );
}
