//! The node configuration file (`node.toml`): which register this node serves,
//! its tables and their documentation, and where its secrets live.
//!
//! Paths are relative to the directory of the config file. Loading checks the
//! structure (unknown keys, types, duplicates); [`crate::server`] checks the
//! files themselves when the node starts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::DataType;
use samkor_proto::tls::TlsFiles;
use serde::Deserialize;

/// Why a config file was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read node config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("node config {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("node config {}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
}

/// A parsed and checked node config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The config file itself.
    pub path: PathBuf,
    pub node: NodeSection,
    pub tls: TlsFiles,
    pub access: AccessSection,
    pub tables: Vec<TableConfig>,
    /// The holder's own cluster of workers, if the node's scans run there.
    pub cluster: Option<ClusterSection>,
}

/// `[cluster]`: the holder's workers (`samkor worker`) that scan this node's
/// file tables. See docs/architecture.md, "A node in front of a cluster".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Workers' URLs (`https://host:port`), on loopback or the holder's
    /// private network. The node reaches them over mutual TLS with its own
    /// certificate; each worker's certificate must carry `host`.
    pub workers: Vec<String>,
    /// The tables scanned on the workers; default every Parquet or CSV table.
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    /// A worker that does not complete a connection, or does not answer the
    /// connection's keep-alive pings, within this many seconds is lost (its
    /// sub-query fails naming it, rather than waiting for the coordinator's
    /// query timeout).
    #[serde(default = "default_worker_timeout")]
    pub worker_timeout_secs: u64,
}

fn default_worker_timeout() -> u64 {
    20
}

/// Why a `[cluster] workers` entry is not a worker URL.
fn worker_url(entry: &str) -> Result<url::Url, String> {
    let tls_only =
        "workers are reached over mutual TLS only (start each with `samkor worker --cert … --key … --ca … --node …`)";
    let url = match url::Url::parse(entry) {
        Ok(u) if u.scheme() == "https" => u,
        Ok(u) if u.scheme() == "http" => {
            return Err(format!(
                "[cluster] worker {entry:?} is plain http://: {tls_only}; write https://{}",
                entry.trim_start_matches("http://")
            ));
        }
        _ => {
            return Err(format!(
                "[cluster] worker {entry:?} is not a worker URL: write it as https://host:port; {tls_only}"
            ));
        }
    };
    let bad = |why: &str| Err(format!("[cluster] worker {entry:?} {why}: write it as https://host:port"));
    match url.host() {
        None => return bad("has no host"),
        Some(url::Host::Ipv4(ip)) if ip.is_unspecified() => return bad("is not an address a worker listens on"),
        Some(url::Host::Ipv6(ip)) if ip.is_unspecified() => return bad("is not an address a worker listens on"),
        Some(_) => {}
    }
    if url.port() == Some(0) {
        return bad("has port 0");
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.path() != "/" {
        return bad("holds more than a host and a port");
    }
    Ok(url)
}

impl ClusterSection {
    /// The workers' URLs (checked when the config was loaded).
    pub fn worker_urls(&self) -> Vec<url::Url> {
        self.workers.iter().map(|w| worker_url(w).expect("checked at config load")).collect()
    }

    /// Whether `table` is scanned on the workers.
    pub fn scans(&self, table: &TableConfig) -> bool {
        table.postgres.is_none() && self.tables.as_ref().is_none_or(|t| t.contains(&table.name))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Register name; the SQL schema the tables appear under (`hip`, `npr`, …).
    pub register: String,
    /// The authority that holds the register.
    pub holder: String,
    #[serde(default)]
    pub description: String,
    /// Address to listen on, e.g. `127.0.0.1:47101` (port 0 picks a free port).
    pub listen: SocketAddr,
    /// File holding the federation's pseudonymisation key (64 hex digits).
    pub pseudonym_key_file: PathBuf,
    /// How pseudonyms are computed: `"aes256-v2"` (default) or `"hmac-sha256-v1"`
    /// (the scheme before samkor 0.2). Every node of a federation must use the
    /// same scheme; see docs/architecture.md for migrating.
    #[serde(default)]
    pub pseudonym_scheme: crate::pseudonym::PseudonymScheme,
    /// File listing opted-out identity numbers, one per line.
    pub opt_out_file: PathBuf,
    /// The node's own audit log: one hash-chained record per sub-query
    /// decision (JSON lines, `docs/audit.md`); created if missing.
    pub audit_log: PathBuf,
    /// MiB of memory for the identity columns of the node's Parquet files
    /// and their record keys (24 bytes a row; `crate::identities`); 0
    /// decodes them in every scan.
    #[serde(default = "identity_cache_mib")]
    pub identity_cache_mib: u64,
}

fn identity_cache_mib() -> u64 {
    crate::identities::DEFAULT_BUDGET_MIB
}

/// The holder's own assessment: who may ask, for which projects, and which
/// columns it withholds from a project. It can only narrow what an approval allows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    /// Certificate identities allowed to send sub-queries (the federation's coordinator).
    #[serde(default = "default_coordinators")]
    pub coordinators: Vec<String>,
    /// Projects this holder serves; `"*"` serves every project the coordinator admits.
    #[serde(default = "default_projects")]
    pub projects: Vec<String>,
    /// Per project, columns (`table.column`) this holder does not release to it.
    #[serde(default)]
    pub withhold: std::collections::BTreeMap<String, Vec<String>>,
    /// Tables opened for direct access by care providers, each with the column
    /// naming the reporting unit (`{ operations = "hospital" }`): a care
    /// provider reads only the rows its own unit reported. Tables not listed
    /// are closed to direct access.
    #[serde(default)]
    pub direct_access: std::collections::BTreeMap<String, String>,
}

fn default_coordinators() -> Vec<String> {
    vec!["coordinator".to_owned()]
}

fn default_projects() -> Vec<String> {
    vec!["*".to_owned()]
}

impl Default for AccessSection {
    fn default() -> Self {
        AccessSection {
            coordinators: default_coordinators(),
            projects: default_projects(),
            withhold: Default::default(),
            direct_access: Default::default(),
        }
    }
}

impl AccessSection {
    /// Whether the holder serves `project`.
    pub fn serves(&self, project: &str) -> bool {
        self.projects.iter().any(|p| p == "*" || p == project)
    }

    /// The unit column of `table` if the holder opened it for direct access.
    pub fn direct_unit_column(&self, table: &str) -> Option<&str> {
        self.direct_access.get(table).map(String::as_str)
    }

    /// Whether `table.column` is withheld from `project`.
    pub fn withholds(&self, project: &str, table: &str, column: &str) -> bool {
        self.withhold.get(project).is_some_and(|cols| cols.iter().any(|c| c == &format!("{table}.{column}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Parquet,
    Csv,
    /// A table or view in a PostgreSQL database (`postgres = { … }`).
    Postgres,
}

/// Where a PostgreSQL-backed table lives. The connection string (which may
/// hold a password) is never written in the node config: it is read from an
/// environment variable or from a file only the node's user can read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// The table or view, optionally schema-qualified (`hip.operations`).
    pub relation: String,
    /// Environment variable holding the connection string.
    #[serde(default)]
    pub connection_env: Option<String>,
    /// File holding the connection string, relative to the config file.
    #[serde(default)]
    pub connection_file: Option<PathBuf>,
    /// The CA certificate(s) (PEM) the database server's certificate must
    /// chain to, relative to the config file; needed for `sslmode=verify-ca`
    /// and `verify-full` in the connection string, checked with `require` too.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl PostgresSection {
    /// The relation as (schema, name); the schema is `None` when unqualified.
    pub fn relation_parts(&self) -> (Option<&str>, &str) {
        match self.relation.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, self.relation.as_str()),
        }
    }
}

fn is_sql_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub format: FileFormat,
    /// A file, a directory or a glob, relative to the config file (Parquet and CSV).
    #[serde(default)]
    pub path: String,
    /// The database table of a `format = "postgres"` table.
    #[serde(default)]
    pub postgres: Option<PostgresSection>,
    /// The column holding the personal identity number.
    pub person_column: String,
    /// The holder's statement that no identity number appears in more than
    /// one row (a population register, a death register). The node checks it
    /// at start (and refuses to start if it is false) and again whenever the
    /// files change; while it holds, a cell's persons are counted as its rows
    /// (`one_per_person`). Parquet and CSV tables only.
    #[serde(default)]
    pub one_row_per_person: bool,
    pub columns: Vec<ColumnConfig>,
}

impl TableConfig {
    /// Whether `column` is the identity-number column.
    pub fn is_person(&self, column: &ColumnConfig) -> bool {
        column.name == self.person_column
    }

    /// The name a column has outside the node: the identity-number column is
    /// the project pseudonym `person`, the others keep their names.
    pub fn exposed_name<'a>(&self, column: &'a ColumnConfig) -> &'a str {
        if self.is_person(column) { samkor_proto::PERSON_COLUMN } else { &column.name }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub code_system: Option<String>,
    #[serde(default)]
    pub identifying: bool,
}

/// The column types a node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Utf8,
    Int32,
    Int64,
    Float64,
    Boolean,
    Date32,
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Date32 => DataType::Date32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Utf8 => "utf8",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Boolean => "boolean",
            ColumnType::Date32 => "date32",
        }
    }

    /// Whether a type found in a data file can be served as this declared type.
    pub fn accepts(self, found: &DataType) -> bool {
        match self {
            ColumnType::Utf8 => matches!(found, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8),
            other => &other.arrow() == found,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: NodeSection,
    tls: TlsFiles,
    #[serde(default)]
    access: AccessSection,
    tables: Vec<TableConfig>,
    #[serde(default)]
    cluster: Option<ClusterSection>,
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl NodeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// Parses and checks config text; `path` is used for messages and to resolve relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: samkor_policies::toml_error::one_line(&e),
        })?;
        let invalid = |problem: String| ConfigError::Invalid { path: path.to_owned(), problem };
        if !is_identifier(&raw.node.register) {
            return Err(invalid(format!(
                "register name {:?} must be a lower-case identifier (letters, digits, '_')",
                raw.node.register
            )));
        }
        if raw.tables.is_empty() {
            return Err(invalid("no [[tables]]: a node must serve at least one table".into()));
        }
        let mut names = HashSet::new();
        for t in &raw.tables {
            if !is_identifier(&t.name) {
                return Err(invalid(format!("table name {:?} must be a lower-case identifier", t.name)));
            }
            if !names.insert(&t.name) {
                return Err(invalid(format!("table {:?} is declared twice", t.name)));
            }
            match (t.format, &t.postgres) {
                (FileFormat::Postgres, None) => {
                    return Err(invalid(format!(
                        "table {}: format \"postgres\" needs a `postgres = {{ relation = \"schema.table\", connection_env = \"VAR\" }}` (or connection_file)",
                        t.name
                    )));
                }
                (FileFormat::Postgres, Some(pg)) => {
                    if t.one_row_per_person {
                        return Err(invalid(format!(
                            "table {}: `one_row_per_person` applies to Parquet and CSV tables (the node checks the files); remove it",
                            t.name
                        )));
                    }
                    if !t.path.is_empty() {
                        return Err(invalid(format!("table {}: a postgres table has no `path`; remove it", t.name)));
                    }
                    let (schema, name) = pg.relation_parts();
                    if !schema.is_none_or(is_sql_identifier) || !is_sql_identifier(name) {
                        return Err(invalid(format!(
                            "table {}: postgres relation {:?} must be `table` or `schema.table` (letters, digits, '_')",
                            t.name, pg.relation
                        )));
                    }
                    if pg.connection_env.is_some() == pg.connection_file.is_some() {
                        return Err(invalid(format!(
                            "table {}: give the database connection string in exactly one of `connection_env` (an environment variable) or `connection_file` (a file readable only by the node), never in the config",
                            t.name
                        )));
                    }
                }
                (_, Some(_)) => {
                    return Err(invalid(format!("table {}: a `postgres` section needs format = \"postgres\"", t.name)));
                }
                (_, None) if t.path.is_empty() => {
                    return Err(invalid(format!("table {}: missing `path` to its data files", t.name)));
                }
                (_, None) => {}
            }
            let mut cols = HashSet::new();
            for c in &t.columns {
                if !is_identifier(&c.name) {
                    return Err(invalid(format!(
                        "table {}: column name {:?} must be a lower-case identifier",
                        t.name, c.name
                    )));
                }
                if c.name == samkor_proto::PERSON_COLUMN {
                    return Err(invalid(format!(
                        "table {}: column name {:?} is reserved for the project pseudonym; rename it",
                        t.name, c.name
                    )));
                }
                if !cols.insert(&c.name) {
                    return Err(invalid(format!("table {}: column {:?} is declared twice", t.name, c.name)));
                }
            }
            match t.columns.iter().find(|c| c.name == t.person_column) {
                None => {
                    return Err(invalid(format!(
                        "table {}: person_column {:?} is not among its declared columns",
                        t.name, t.person_column
                    )));
                }
                Some(c) if c.data_type != ColumnType::Utf8 => {
                    return Err(invalid(format!(
                        "table {}: person_column {:?} must have type utf8 (12-digit identity numbers), not {}",
                        t.name,
                        t.person_column,
                        c.data_type.name()
                    )));
                }
                Some(_) => {}
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut node = raw.node;
        node.pseudonym_key_file = base.join(&node.pseudonym_key_file);
        node.opt_out_file = base.join(&node.opt_out_file);
        node.audit_log = base.join(&node.audit_log);
        let tables: Vec<TableConfig> = raw
            .tables
            .into_iter()
            .map(|mut t| {
                if let Some(pg) = &mut t.postgres {
                    pg.connection_file = pg.connection_file.as_ref().map(|f| base.join(f));
                    pg.ca_file = pg.ca_file.as_ref().map(|f| base.join(f));
                } else {
                    t.path = base.join(&t.path).to_string_lossy().into_owned();
                }
                t
            })
            .collect();
        for (project, columns) in &raw.access.withhold {
            for c in columns {
                let known = c.split_once('.').is_some_and(|(t, col)| {
                    tables.iter().any(|tc: &TableConfig| {
                        tc.name == t
                            && tc.columns.iter().any(|cc| {
                                cc.name == col || (col == samkor_proto::PERSON_COLUMN && cc.name == tc.person_column)
                            })
                    })
                });
                if !known {
                    return Err(invalid(format!(
                        "access.withhold for project {project}: {c:?} is not a table.column of this node"
                    )));
                }
            }
        }
        for (table, column) in &raw.access.direct_access {
            let Some(t) = tables.iter().find(|t| &t.name == table) else {
                return Err(invalid(format!("access.direct_access: {table:?} is not a table of this node")));
            };
            match t.columns.iter().find(|c| &c.name == column) {
                None => {
                    return Err(invalid(format!(
                        "access.direct_access: table {table} has no column {column:?} to name the reporting unit"
                    )));
                }
                Some(c) if t.is_person(c) || c.identifying => {
                    return Err(invalid(format!(
                        "access.direct_access: the unit column of table {table} cannot be the identifying column {column:?}"
                    )));
                }
                Some(c) if c.data_type != ColumnType::Utf8 => {
                    return Err(invalid(format!(
                        "access.direct_access: the unit column {table}.{column} must have type utf8 (unit names), not {}",
                        c.data_type.name()
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(cluster) = &raw.cluster {
            if cluster.workers.is_empty() {
                return Err(invalid(
                    "[cluster] workers is empty: list the workers' addresses, or remove [cluster] to scan at the node"
                        .into(),
                ));
            }
            let mut seen = HashSet::new();
            for w in &cluster.workers {
                let url = worker_url(w).map_err(&invalid)?;
                if !seen.insert(url) {
                    return Err(invalid(format!("[cluster] worker {w} is listed twice")));
                }
            }
            if cluster.worker_timeout_secs == 0 {
                return Err(invalid("[cluster] worker_timeout_secs must be at least 1".into()));
            }
            for name in cluster.tables.iter().flatten() {
                match tables.iter().find(|t| &t.name == name) {
                    None => return Err(invalid(format!("[cluster] tables: {name:?} is not a table of this node"))),
                    Some(t) if t.postgres.is_some() => {
                        return Err(invalid(format!(
                            "[cluster] tables: {name} is served from PostgreSQL; only Parquet and CSV tables are scanned on workers"
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(NodeConfig {
            path: path.to_owned(),
            node,
            tls: raw.tls.relative_to(base),
            access: raw.access,
            tables,
            cluster: raw.cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
register = "hip"
holder = "Hip register"
listen = "127.0.0.1:0"
pseudonym_key_file = "../federation.key"
opt_out_file = "optout.txt"
audit_log = "audit.jsonl"

[tls]
cert = "c.pem"
key = "k.pem"
ca = "ca.pem"

[[tables]]
name = "operations"
format = "parquet"
path = "operations/*.parquet"
person_column = "pnr"
  [[tables.columns]]
  name = "pnr"
  type = "utf8"
  identifying = true
  [[tables.columns]]
  name = "bmi"
  type = "float64"
  unit = "kg/m2"
"#;

    fn err(text: &str) -> String {
        NodeConfig::parse(Path::new("/etc/samkor/node.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn good_config_resolves_paths() {
        let c = NodeConfig::parse(Path::new("/data/hip/node.toml"), GOOD).expect("valid");
        assert_eq!(c.node.register, "hip");
        assert_eq!(c.node.opt_out_file, Path::new("/data/hip/optout.txt"));
        assert_eq!(c.node.audit_log, Path::new("/data/hip/audit.jsonl"));
        assert!(c.access.direct_access.is_empty(), "closed to direct access unless the holder opens a table");
        assert_eq!(c.tls.ca, Path::new("/data/hip/ca.pem"));
        assert_eq!(c.tables[0].path, "/data/hip/operations/*.parquet");
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let e = err(&GOOD.replace("type = \"float64\"", "type = \"decimal\""));
        assert!(
            e.starts_with("node config /etc/samkor/node.toml: line 26, column 10: unknown variant `decimal`"),
            "{e}"
        );
        let e = err(&GOOD.replace("person_column = \"pnr\"", "person_column = \"pid\""));
        assert_eq!(
            e,
            "node config /etc/samkor/node.toml: table operations: person_column \"pid\" is not among its declared columns"
        );
        let e = err(&GOOD.replace("name = \"bmi\"", "name = \"pnr\""));
        assert_eq!(e, "node config /etc/samkor/node.toml: table operations: column \"pnr\" is declared twice");
        let e = err(&GOOD.replace("name = \"bmi\"", "name = \"person\""));
        assert!(e.contains("reserved for the project pseudonym"), "{e}");
        let e = err(&GOOD.replace("listen = \"127.0.0.1:0\"", "listen = \"somewhere\""));
        assert!(e.contains("line 5") && e.contains("invalid socket address"), "{e}");
        let e = err(&GOOD.replace("holder", "owner"));
        assert!(e.contains("unknown field `owner`"), "{e}");
        let e = err(&GOOD.replace("register = \"hip\"", "register = \"Hip Reg\""));
        assert!(e.contains("must be a lower-case identifier"), "{e}");
        let e = err(&GOOD.replace("audit_log = \"audit.jsonl\"\n", ""));
        assert!(e.contains("missing field `audit_log`"), "{e}");
        let direct = |setting: &str| {
            err(&GOOD.replacen("[tls]", &format!("[access]\ndirect_access = {{ {setting} }}\n\n[tls]"), 1))
        };
        assert_eq!(
            direct("prom = \"hospital\""),
            "node config /etc/samkor/node.toml: access.direct_access: \"prom\" is not a table of this node"
        );
        assert_eq!(
            direct("operations = \"hospital\""),
            "node config /etc/samkor/node.toml: access.direct_access: table operations has no column \"hospital\" to name the reporting unit"
        );
        assert!(direct("operations = \"pnr\"").contains("cannot be the identifying column \"pnr\""));
        assert!(direct("operations = \"bmi\"").ends_with("must have type utf8 (unit names), not float64"));
        let pg = |section: &str| {
            GOOD.replace(
                "format = \"parquet\"\npath = \"operations/*.parquet\"",
                &format!("format = \"postgres\"\n{section}"),
            )
        };
        let c = NodeConfig::parse(
            Path::new("/data/hip/node.toml"),
            &pg("postgres = { relation = \"hip.operations\", connection_file = \"pg.conn\" }"),
        )
        .expect("valid");
        let section = c.tables[0].postgres.as_ref().expect("postgres section");
        assert_eq!(section.connection_file.as_deref(), Some(Path::new("/data/hip/pg.conn")));
        assert_eq!(section.ca_file, None);
        let c = NodeConfig::parse(
            Path::new("/data/hip/node.toml"),
            &pg("postgres = { relation = \"hip.operations\", connection_file = \"pg.conn\", ca_file = \"../certs/db-ca.pem\" }"),
        )
        .expect("valid");
        let section = c.tables[0].postgres.as_ref().expect("postgres section");
        assert_eq!(section.ca_file.as_deref(), Some(Path::new("/data/hip/../certs/db-ca.pem")));
        assert_eq!(section.relation_parts(), (Some("hip"), "operations"));
        assert!(err(&pg("")).contains("format \"postgres\" needs a `postgres = "));
        assert!(err(&pg("postgres = { relation = \"hip.operations\" }")).contains("exactly one of `connection_env`"));
        let bad = err(&pg("postgres = { relation = \"hip.op; drop\", connection_env = \"X\" }"));
        assert!(bad.contains("must be `table` or `schema.table`"), "{bad}");
        assert!(
            err(&pg("postgres = { relation = \"t\", url = \"postgres://u:secret@h/db\" }"))
                .contains("unknown field `url`")
        );
        assert!(err(&GOOD.replace("path = \"operations/*.parquet\"\n", "")).contains("missing `path`"));
        let cluster = |section: &str| format!("{GOOD}\n[cluster]\n{section}\n");
        let c = NodeConfig::parse(
            Path::new("/data/hip/node.toml"),
            &cluster("workers = [\"https://127.0.0.1:50051\", \"https://worker-2.lmr.internal:50051\"]"),
        )
        .expect("valid");
        let section = c.cluster.as_ref().expect("cluster section");
        let urls: Vec<String> = section.worker_urls().iter().map(|u| u.authority().to_owned()).collect();
        assert_eq!(urls, ["127.0.0.1:50051", "worker-2.lmr.internal:50051"]);
        assert_eq!(section.worker_timeout_secs, 20);
        assert!(section.scans(&c.tables[0]), "every file table by default");
        assert!(err(&cluster("workers = []")).contains("[cluster] workers is empty"));
        assert_eq!(
            err(&cluster("workers = [\"http://127.0.0.1:5\"]")),
            "node config /etc/samkor/node.toml: [cluster] worker \"http://127.0.0.1:5\" is plain http://: workers are reached over mutual TLS only (start each with `samkor worker --cert … --key … --ca … --node …`); write https://127.0.0.1:5"
        );
        assert!(
            err(&cluster("workers = [\"127.0.0.1:5\"]")).contains("is not a worker URL: write it as https://host:port")
        );
        assert!(err(&cluster("workers = [\"https://0.0.0.0:5\"]")).contains("not an address a worker listens on"));
        assert!(err(&cluster("workers = [\"https://127.0.0.1:0\"]")).contains("has port 0"));
        assert!(err(&cluster("workers = [\"https://127.0.0.1:5/x\"]")).contains("more than a host and a port"));
        assert!(
            err(&cluster("workers = [\"https://127.0.0.1:5\", \"https://127.0.0.1:5/\"]")).contains("listed twice")
        );
        assert!(
            err(&cluster("workers = [\"https://127.0.0.1:5\"]\ntables = [\"prom\"]"))
                .contains("\"prom\" is not a table")
        );
        assert!(err(&cluster("workers = [\"https://127.0.0.1:5\"]\nworker_timeout_secs = 0")).contains("at least 1"));
        let e = NodeConfig::load(Path::new("/nonexistent/node.toml")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read node config /nonexistent/node.toml: "), "{e}");
    }
}
