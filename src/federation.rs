//! A whole federation in one process: the nodes of a `samkor synth` directory
//! and a coordinator, on loopback with the development certificates. Used by
//! `samkor demo`, the integration tests and the benchmarks.

use std::path::{Path, PathBuf};

use samkor_coordinator::{CoordinatorConfig, RunningCoordinator};
use samkor_node::{NodeConfig, RunningNode};
use samkor_proto::tls::{TlsFiles, TlsIdentity};

/// The registers `samkor synth` writes.
pub const REGISTERS: [&str; 5] = ["hip", "npr", "lmr", "dors", "pop"];

/// Why a local federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0}")]
    NodeConfig(#[from] samkor_node::config::ConfigError),
    #[error("node {register}: {source}")]
    Node { register: String, source: samkor_node::StartError },
    #[error("{0}")]
    CoordinatorConfig(#[from] samkor_coordinator::config::ConfigError),
    #[error("coordinator: {0}")]
    Coordinator(#[from] samkor_coordinator::server::StartError),
    #[error("{0}")]
    Tls(#[from] samkor_proto::tls::TlsError),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Settings of a local federation.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Bind every server to an ephemeral loopback port (tests) instead of the configs' ports.
    pub ephemeral_ports: bool,
    /// Registers whose nodes are started (the coordinator still lists all five).
    pub start: Vec<String>,
    pub query_timeout_secs: u64,
    pub memory_limit_mb: u64,
    pub node_retry_secs: u64,
    /// Addresses of nodes not started here (register → host:port), e.g. a node run as its own process.
    pub addresses: Vec<(String, String)>,
    /// The federation's cell-key perturbation of aggregate answers (on by
    /// default; off where a test compares answers with exact pooled ones).
    pub perturbation: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            ephemeral_ports: true,
            start: REGISTERS.iter().map(|r| (*r).to_owned()).collect(),
            query_timeout_secs: 300,
            memory_limit_mb: 2048,
            node_retry_secs: 1,
            addresses: Vec::new(),
            perturbation: true,
        }
    }
}

/// Loads the node config of `register` in a synth directory. `ephemeral`
/// (tests, benchmarks, the demo): a free port, and an audit log of its own
/// (`<register>/audit/node-<pid>-<n>.jsonl`), since several nodes of one
/// register may run on one directory at once and a log has one writer.
pub fn node_config(dir: &Path, register: &str, ephemeral: bool) -> Result<NodeConfig, FederationError> {
    let mut config = NodeConfig::load(&dir.join(register).join("node.toml"))?;
    if ephemeral {
        config.node.listen = "127.0.0.1:0".parse().expect("valid address");
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = format!("node-{}-{n}.jsonl", std::process::id());
        config.node.audit_log = config.path.parent().unwrap_or(dir).join("audit").join(log);
    }
    Ok(config)
}

/// The coordinator config for nodes at `addresses` (register, host:port).
pub fn coordinator_toml(listen: &str, addresses: &[(String, String)], options: &LocalOptions) -> String {
    let mut s = format!(
        "# samkor coordinator of the synthetic federation\n\
         [coordinator]\nlisten = \"{listen}\"\nmemory_limit_mb = {}\nspill_dir = \"spill\"\n\
         query_timeout_secs = {}\nnode_retry_secs = {}\n\n\
         [tls]\ncert = \"certs/coordinator.pem\"\nkey = \"certs/coordinator.key\"\nca = \"certs/ca.pem\"\n\n\
         [governance]\napprovals_dir = \"approvals\"\naudit_log = \"audit/coordinator.log\"\n\
         directory = \"directory.toml\"\n",
        options.memory_limit_mb, options.query_timeout_secs, options.node_retry_secs
    );
    if !options.perturbation {
        s.push_str("\n[disclosure]\nperturbation = false\n");
    }
    for (register, addr) in addresses {
        s.push_str(&format!("\n[[nodes]]\nregister = \"{register}\"\naddress = \"{addr}\"\n"));
    }
    s
}

/// The TLS files of a user (or the coordinator, or a node) in a synth directory.
pub fn identity_files(dir: &Path, name: &str) -> TlsFiles {
    let certs = dir.join("certs");
    TlsFiles {
        cert: certs.join(crate::certs::cert_file(name)),
        key: certs.join(crate::certs::key_file(name)),
        ca: certs.join("ca.pem"),
    }
}

/// Nodes and a coordinator running in this process.
#[derive(Debug)]
pub struct LocalFederation {
    pub dir: PathBuf,
    pub nodes: Vec<RunningNode>,
    pub coordinator: RunningCoordinator,
}

impl LocalFederation {
    /// Starts the nodes named in `options.start`, then the coordinator.
    pub async fn start(dir: &Path, options: &LocalOptions) -> Result<LocalFederation, FederationError> {
        let mut nodes = Vec::new();
        let mut addresses = Vec::new();
        for register in REGISTERS {
            let config = node_config(dir, register, options.ephemeral_ports)?;
            if options.start.iter().any(|s| s == register) {
                let node = samkor_node::start(config)
                    .await
                    .map_err(|source| FederationError::Node { register: register.to_owned(), source })?;
                addresses.push((register.to_owned(), node.addr.to_string()));
                nodes.push(node);
            } else if let Some((_, addr)) = options.addresses.iter().find(|(r, _)| r == register) {
                addresses.push((register.to_owned(), addr.clone()));
            } else {
                // Not started: give the coordinator an address where nothing listens.
                let unused = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr());
                let addr = unused.map(|a| a.to_string()).unwrap_or_else(|_| config.node.listen.to_string());
                addresses.push((register.to_owned(), addr));
            }
        }
        let listen = if options.ephemeral_ports { "127.0.0.1:0" } else { "127.0.0.1:47100" };
        let mut toml = coordinator_toml(listen, &addresses, options);
        if options.ephemeral_ports {
            // Several federations may share a directory (tests): one audit log each.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            toml = toml.replace(
                "audit_log = \"audit/coordinator.log\"",
                &format!("audit_log = \"audit/coordinator-{}-{n}.log\"", std::process::id()),
            );
        }
        let config = CoordinatorConfig::parse(&dir.join("coordinator.toml"), &toml)?;
        let coordinator = samkor_coordinator::start(config).await?;
        Ok(LocalFederation { dir: dir.to_owned(), nodes, coordinator })
    }

    /// `host:port` of the coordinator.
    pub fn coordinator_addr(&self) -> String {
        self.coordinator.addr.to_string()
    }

    /// A user's TLS identity.
    pub fn identity(&self, user: &str) -> Result<TlsIdentity, FederationError> {
        Ok(identity_files(&self.dir, user).load()?)
    }

    /// A client for `user` in `project`.
    pub async fn client(&self, user: &str, project: &str) -> Result<crate::client::Client, crate::client::ClientError> {
        let identity = self.identity(user).map_err(|e| crate::client::ClientError::Protocol(e.to_string()))?;
        crate::client::Client::connect(&self.coordinator_addr(), &identity, project).await
    }

    pub fn node(&self, register: &str) -> Option<&RunningNode> {
        self.nodes.iter().find(|n| n.state.register() == register)
    }

    /// Stops everything.
    pub async fn shutdown(self) {
        self.coordinator.shutdown().await;
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// The same registers pooled in one local DataFusion session, for comparison:
/// every table of every register read straight from its files, identity
/// numbers pseudonymised for `project` and opt-outs removed exactly as the
/// nodes do, under the same `<register>.<table>` names. Nothing is federated.
pub async fn pooled_session(dir: &Path, project: &str) -> Result<datafusion::prelude::SessionContext, FederationError> {
    use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider};
    use std::sync::Arc;
    let mut config = datafusion::prelude::SessionConfig::new()
        .with_default_catalog_and_schema(samkor_coordinator::engine::CATALOG, "public");
    config.options_mut().execution.parquet.schema_force_view_types = false;
    let ctx = datafusion::prelude::SessionContext::new_with_config(config);
    samkor_functions::register_user_functions(&ctx);
    let catalog = MemoryCatalogProvider::new();
    for register in REGISTERS {
        let state = samkor_node::NodeState::open(node_config(dir, register, true)?)
            .await
            .map_err(|source| FederationError::Node { register: register.to_owned(), source })?;
        let schema = MemorySchemaProvider::new();
        let tables = state.project_tables(project).map_err(|e| FederationError::Node {
            register: register.to_owned(),
            source: samkor_node::StartError::OptOut(e),
        })?;
        for (name, provider) in tables {
            schema.register_table(name, provider).expect("fresh schema");
        }
        catalog.register_schema(register, Arc::new(schema) as Arc<dyn SchemaProvider>).expect("memory catalog");
    }
    ctx.register_catalog(samkor_coordinator::engine::CATALOG, Arc::new(catalog));
    Ok(ctx)
}

/// An approval document granting every table and column of the synthetic
/// federation in `dir` to `project` (for demos and tests; a real approval
/// lists only what the project needs). With `min_max`, MIN and MAX may be
/// released on every column that does not identify a person.
pub fn full_approval_toml(
    dir: &Path,
    project: &str,
    members: &[&str],
    outputs: &[&str],
    min_max: bool,
) -> Result<String, FederationError> {
    let quote = |items: &[&str]| items.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ");
    let mut s = format!(
        "project = {project:?}\ntitle = \"Synthetic federation: every register\"\n\
         ethics_reference = \"Dnr 2026-00000-01\"\nethics_authority = \"Etikprövningsmyndigheten\"\n\
         principal_investigator = {:?}\nmembers = [{}]\n\
         purpose = \"Demonstration and testing on synthetic data only.\"\n\
         valid_from = 2020-01-01\nvalid_until = 2099-12-31\noutputs = [{}]\n",
        members.first().copied().unwrap_or("alice"),
        quote(members),
        quote(outputs)
    );
    let mut tables = String::new();
    let mut extremes: Vec<String> = Vec::new();
    for register in REGISTERS {
        let config = node_config(dir, register, true)?;
        for t in &config.tables {
            extremes.extend(
                t.columns
                    .iter()
                    .filter(|c| !t.is_person(c) && !c.identifying)
                    .map(|c| format!("{register}.{}.{}", t.name, c.name)),
            );
            let columns: Vec<String> = t.columns.iter().map(|c| t.exposed_name(c).to_owned()).collect();
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            tables.push_str(&format!(
                "\n[[tables]]\ntable = \"{register}.{}\"\ncolumns = [{}]\n",
                t.name,
                quote(&columns)
            ));
        }
    }
    if min_max {
        let extremes: Vec<&str> = extremes.iter().map(String::as_str).collect();
        s.push_str(&format!("\n[disclosure]\nallow_min_max = [{}]\n", quote(&extremes)));
    }
    s.push_str(&tables);
    Ok(s)
}

/// Writes `approvals/<project>.toml` with [`full_approval_toml`].
pub fn write_full_approval(
    dir: &Path,
    project: &str,
    members: &[&str],
    outputs: &[&str],
    min_max: bool,
) -> Result<(), FederationError> {
    let text = full_approval_toml(dir, project, members, outputs, min_max)?;
    let approvals = dir.join("approvals");
    std::fs::create_dir_all(&approvals).map_err(|e| FederationError::Write { path: approvals.clone(), source: e })?;
    let path = approvals.join(format!("{project}.toml"));
    std::fs::write(&path, text).map_err(|source| FederationError::Write { path, source })
}
