//! `samkor demo`: a synthetic federation on this machine and a short showcase.
//!
//! The federation (five registers, development certificates, a federation key)
//! is generated once into a cache directory; every run starts the five nodes
//! and a coordinator on loopback and asks the questions real users ask, and two
//! that an attacker would, under disclosure control.

use std::path::{Path, PathBuf};

use crate::federation::{LocalFederation, LocalOptions, REGISTERS};

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo directory {}: {reason}", dir.display())]
    Prepare { dir: PathBuf, reason: String },
    #[error("{0}")]
    Federation(#[from] crate::federation::FederationError),
    #[error("{title}: {source}")]
    Query { title: String, source: crate::client::ClientError },
    #[error("{0}")]
    Output(#[from] crate::output::OutputError),
}

/// The project the demo's researcher works in.
pub const DEMO_PROJECT: &str = "demo-hip-outcomes";
/// The demo's researcher.
pub const DEMO_USER: &str = "alice";

/// One showcase question.
#[derive(Debug)]
pub struct Showcase {
    pub who: &'static str,
    pub title: &'static str,
    pub sql: &'static str,
}

/// The questions the demo asks.
pub const SHOWCASE: &[Showcase] = &[
    Showcase {
        who: "A researcher",
        title: "90-day mortality after primary hip replacement, by fixation (hip ⋈ dors)",
        sql: "SELECT o.fixation,
       count(*) AS operations,
       sum(CASE WHEN d.death_date <= o.op_date + INTERVAL '90 days' THEN 1 ELSE 0 END) AS deaths_90d,
       round(100.0 * sum(CASE WHEN d.death_date <= o.op_date + INTERVAL '90 days' THEN 1 ELSE 0 END) / count(*), 2) AS mortality_pct
FROM hip.operations o
LEFT JOIN dors.deaths d ON d.person = o.person
GROUP BY o.fixation
ORDER BY o.fixation",
    },
    Showcase {
        who: "A register holder",
        title: "Coverage of the hip register: share of patient-register hip replacements 2020-2023 found in hip, per region (npr ⋈ hip); a count of missing registrations under 5 is withheld with the cells it can be computed from",
        sql: "WITH npr_hip AS (
  SELECT person, hospital, region, admit_date FROM npr.inpatient
  WHERE procedure IN ('NFB29', 'NFB39', 'NFB49', 'NFB59') AND date_part('year', admit_date) BETWEEN 2020 AND 2023
)
SELECT n.region,
       count(*) AS npr_episodes,
       count(o.op_id) AS found_in_hip,
       round(100.0 * count(o.op_id) / count(*), 1) AS coverage_pct
FROM npr_hip n
LEFT JOIN hip.operations o
  ON o.person = n.person AND o.hospital = n.hospital
 AND o.op_date BETWEEN n.admit_date AND n.admit_date + INTERVAL '1 day'
GROUP BY n.region
ORDER BY coverage_pct, n.region",
    },
    Showcase {
        who: "An authority",
        title: "Open comparison: reoperation rate after primary hip replacement, per region (hip only, aggregated at the node)",
        sql: "SELECT region,
       count(*) AS operations,
       sum(CASE WHEN reoperation THEN 1 ELSE 0 END) AS reoperations,
       round(100.0 * avg(CASE WHEN reoperation THEN 1.0 ELSE 0.0 END), 2) AS reoperation_pct
FROM hip.operations
GROUP BY region
ORDER BY region",
    },
    Showcase {
        who: "A researcher",
        title: "Ten-year reoperations per hospital with the national total (ROLLUP): small hospitals are withheld, and so is one more cell wherever the total would give a withheld one back",
        sql: "SELECT hospital,
       count(*) AS operations,
       sum(CASE WHEN reoperation THEN 1 ELSE 0 END) AS reoperations
FROM hip.operations
WHERE region = 'Stockholm'
GROUP BY ROLLUP(hospital)
ORDER BY hospital NULLS LAST",
    },
    Showcase {
        who: "An authority",
        title: "Open comparison: one-year mortality per hospital standardised for sex and age (SMR, indirect standardisation, with funnel limits; docs/statistics.md)",
        sql: "SELECT unit AS hospital, observed, round(expected, 1) AS expected, round(smr, 2) AS smr,
       round(ci_lower, 2) AS ci_lower, round(ci_upper, 2) AS ci_upper,
       round(limit998_upper, 2) AS limit998_upper, signal, withheld
FROM smr('
  SELECT o.hospital AS unit,
         CASE WHEN d.death_date <= o.op_date + INTERVAL ''365 days'' THEN 1 ELSE 0 END AS outcome,
         p.sex, age_band(p.birth_date, o.op_date, 10) AS age
  FROM hip.operations o JOIN pop.persons p ON p.person = o.person
  LEFT JOIN dors.deaths d ON d.person = o.person')
ORDER BY smr DESC NULLS LAST",
    },
    Showcase {
        who: "A register holder",
        title: "Survival after hip replacement by ASA class, Kaplan-Meier in one-year bands (a step shows at least 5 deaths)",
        sql: "SELECT stratum AS asa, time AS days, at_risk, events, round(survival, 3) AS survival,
       round(ci_lower, 3) AS ci_lower, round(ci_upper, 3) AS ci_upper, withheld
FROM kaplan_meier('
  SELECT o.op_date AS start_date, d.death_date AS event_date, DATE ''2024-12-31'' AS censor_date,
         CASE WHEN o.asa >= 3 THEN ''ASA 3-4'' ELSE ''ASA 1-2'' END AS stratum
  FROM hip.operations o LEFT JOIN dors.deaths d ON d.person = o.person', 365)
ORDER BY asa, days",
    },
    Showcase {
        who: "A researcher",
        title: "Logistic model of 90-day mortality (hip ⋈ dors ⋈ pop): fitted by IRLS, each iteration one federated aggregate; no row leaves a node",
        sql: "SELECT term, round(estimate, 3) AS estimate, round(std_error, 3) AS std_error,
       round(p_value, 4) AS p_value, round(exp(estimate), 2) AS odds_ratio, n, iterations, withheld
FROM glm('
  SELECT CASE WHEN d.death_date <= o.op_date + INTERVAL ''90 days'' THEN 1 ELSE 0 END AS died,
         p.sex, age_years(p.birth_date, o.op_date) AS age, o.asa, o.bmi, p.education,
         date_part(''year'', o.op_date) AS year
  FROM hip.operations o JOIN pop.persons p ON p.person = o.person
  LEFT JOIN dors.deaths d ON d.person = o.person',
  'died ~ sex + age + C(asa) + bmi + education + year', 'binomial')",
    },
    Showcase {
        who: "Someone trying to single out one patient",
        title: "The age and income of the person behind one operation (hip ⋈ pop)",
        sql: "SELECT count(*) AS persons, avg(2024 - p.birth_year) AS age, avg(p.income) AS income
FROM hip.operations o JOIN pop.persons p ON p.person = o.person
WHERE o.op_id = 1",
    },
    Showcase {
        who: "Someone trying to single out one patient",
        title: "The highest income in each region",
        sql: "SELECT region, max(income) AS highest FROM pop.persons GROUP BY region",
    },
];

/// The default cache directory of the demo federation.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SAMKOR_DEMO_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("samkor").join("demo")
}

/// The log of the demo's in-process servers, in the demo directory.
pub const LOG_FILE: &str = "demo.log";
/// The stamp of a complete demo directory.
const STAMP: &str = "READY";

fn stamp(persons: u64, seed: u64) -> String {
    // `format` changes when the generated files change (2: node audit logs, direct access).
    format!("persons={persons} seed={seed} format=2\n")
}

/// Whether `dir` holds a complete demo federation of this size and seed.
pub fn is_prepared(dir: &Path, persons: u64, seed: u64) -> bool {
    std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s == stamp(persons, seed))
}

/// Generates the federation into `dir` unless a complete one for the same size
/// and seed is there; one of another size or seed is replaced, not kept beside it.
pub fn prepare(dir: &Path, persons: u64, seed: u64) -> Result<bool, DemoError> {
    if is_prepared(dir, persons, seed) {
        return Ok(false);
    }
    let want = stamp(persons, seed);
    let stamp = dir.join(STAMP);
    let fail = |reason: String| DemoError::Prepare { dir: dir.to_owned(), reason };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let mut users = vec![DEMO_USER, "bob"];
    users.extend(crate::synth::care_providers());
    crate::certs::init(&dir.join("certs"), &REGISTERS, &users).map_err(|e| fail(e.to_string()))?;
    crate::certs::write_federation_key(&dir.join("federation.key")).map_err(|e| fail(e.to_string()))?;
    crate::synth::generate(&crate::synth::SynthOptions { out: dir.to_owned(), persons, seed })
        .map_err(|e| fail(e.to_string()))?;
    crate::federation::write_full_approval(dir, DEMO_PROJECT, &[DEMO_USER], &["aggregate"], false)
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(&stamp, want).map_err(|e| fail(e.to_string()))?;
    Ok(true)
}

/// The first lines of the demo: where its files are, how big, how to remove them.
pub fn where_things_are(dir: &Path) -> String {
    let size = dir_size(dir).map(|bytes| format!("{}; ", human_size(bytes))).unwrap_or_default();
    let clean = if dir == default_dir() {
        "samkor demo --clean".to_owned()
    } else {
        format!("samkor demo --dir {} --clean", dir.display())
    };
    format!(
        "Demo data, certificates and audit logs: {d} ({size}each run adds its audit logs; remove it all with `{clean}`).\n\
         Server logs: {log} (only warnings are shown here; more detail with SAMKOR_LOG=debug).",
        d = dir.display(),
        log = dir.join(LOG_FILE).display()
    )
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 10_000_000 => format!("{:.0} MB", b as f64 / 1e6),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{:.0} kB", (b as f64 / 1e3).ceil()),
    }
}

/// Bytes under `dir`.
fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

/// `samkor demo --clean`: removes the demo directory, refusing a directory
/// that is not one the demo wrote (it has no `READY` stamp and is not empty).
pub fn clean(dir: &Path) -> Result<String, DemoError> {
    let fail = |reason: String| DemoError::Prepare { dir: dir.to_owned(), reason };
    if !dir.exists() {
        return Ok(format!("nothing to remove: {} does not exist", dir.display()));
    }
    let empty = std::fs::read_dir(dir).map_err(|e| fail(e.to_string()))?.next().is_none();
    if !empty && !dir.join(STAMP).exists() {
        return Err(fail(format!(
            "it has no {STAMP} stamp, so it is not a demo directory this command removes; remove it yourself if you mean to"
        )));
    }
    let size = dir_size(dir).unwrap_or(0);
    std::fs::remove_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    Ok(format!("removed {} ({})", dir.display(), human_size(size)))
}

/// Starts the local federation of `dir`.
pub async fn start(dir: &Path) -> Result<LocalFederation, DemoError> {
    Ok(LocalFederation::start(dir, &LocalOptions::default()).await?)
}

/// Runs the showcase against a running federation, printing each question, its SQL and its answer.
pub async fn showcase(federation: &LocalFederation) -> Result<(), DemoError> {
    let mut client = federation
        .client(DEMO_USER, DEMO_PROJECT)
        .await
        .map_err(|source| DemoError::Query { title: "connect".into(), source })?;
    for (i, q) in SHOWCASE.iter().enumerate() {
        println!("\n── {}. {} asks: {}", i + 1, q.who, q.title);
        println!("{}\n", indent(q.sql));
        let started = std::time::Instant::now();
        let (schema, batches) = match client.query(q.sql).await {
            Ok(answer) => answer,
            Err(e) if e.code() == Some(tonic::Code::PermissionDenied) => {
                println!("{e}");
                continue;
            }
            Err(source) => {
                return Err(DemoError::Query { title: q.title.to_owned(), source });
            }
        };
        println!("{}", crate::output::table(&schema, &batches)?);
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        println!("{rows} rows in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
        if let Some(note) = crate::output::footnote(&schema) {
            println!("{note}");
        }
    }
    Ok(())
}

/// Starts the web console beside the demo's coordinator (docs/console.md):
/// reviewer `rita`, holder of hip `hanna`, open comparisons as `console`.
pub async fn serve_console(
    dir: &Path,
    federation: &LocalFederation,
) -> Result<crate::console::RunningConsole, DemoError> {
    let logs: Vec<(String, PathBuf)> =
        federation.nodes.iter().map(|n| (n.state.register().to_owned(), n.audit.path().to_owned())).collect();
    let fail = |reason: String| DemoError::Prepare { dir: dir.to_owned(), reason };
    let path = crate::console::write_local_files(dir, &logs).map_err(|e| fail(e.to_string()))?;
    let mut config = crate::console::ConsoleConfig::load(&path).map_err(|e| fail(e.to_string()))?;
    config.listen = "127.0.0.1:0".parse().expect("valid address");
    crate::console::start(config, federation.coordinator.engine.clone()).await.map_err(|e| fail(e.to_string()))
}

fn indent(sql: &str) -> String {
    sql.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// A Python snippet that queries the running demo with ADBC.
pub fn python_snippet(dir: &Path, addr: &str) -> String {
    let certs = dir.join("certs");
    format!(
        r#"import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions
certs = "{certs}"
read = lambda name: open(f"{{certs}}/{{name}}").read()
conn = flightsql.connect("grpc+tls://{addr}", db_kwargs={{
    DatabaseOptions.TLS_ROOT_CERTS.value: read("ca.pem"),
    DatabaseOptions.MTLS_CERT_CHAIN.value: read("{DEMO_USER}.pem"),
    DatabaseOptions.MTLS_PRIVATE_KEY.value: read("{DEMO_USER}.key"),
    DatabaseOptions.TLS_OVERRIDE_HOSTNAME.value: "localhost",
    "adbc.flight.sql.rpc.call_header.x-samkor-project": "{DEMO_PROJECT}",
}})
cur = conn.cursor()
cur.execute("SELECT region, count(*) AS operations FROM hip.operations GROUP BY region ORDER BY region")
print(cur.fetch_df())"#,
        certs = certs.display()
    )
}
