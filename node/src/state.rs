//! Everything a running node knows: its config, key, opt-out list and tables,
//! and how it turns a project's request into a DataFusion session.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
    SchemaProvider, TableProvider,
};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use samkor_proto::pb;

use crate::access::Scope;
use crate::config::NodeConfig;
use crate::optout::{OptOutError, OptOutList};
use crate::pseudonym::{FederationKey, KeyError};
use crate::table::{ColumnsRead, DirectRows, ServedTable, TableError};

/// Why a node could not start. One line, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Tls(#[from] samkor_proto::tls::TlsError),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("{0}")]
    OptOut(#[from] OptOutError),
    #[error("node config {}: {source}", config.display())]
    Table { config: PathBuf, source: Box<TableError> },
    #[error("{0}")]
    Audit(#[from] samkor_policies::audit::AuditError),
    #[error("cannot create the directory {} of the audit log: {source}", path.display())]
    AuditDir { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot listen on {addr}: {source}; is another node running there? choose another `listen` address")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
}

/// A session's tables by name, as a scope sees them.
pub type NamedTables = Vec<(String, Arc<dyn TableProvider>)>;

/// The node's state, shared by all requests.
#[derive(Debug)]
pub struct NodeState {
    pub config: NodeConfig,
    key: FederationKey,
    opt_outs: OptOutList,
    tables: Vec<Arc<ServedTable>>,
    catalogue: pb::Catalogue,
    /// The DataFusion state every sub-query's session is cloned from, built
    /// once: building one registers every built-in function again (2 % of
    /// the CPU of a count of no rows).
    template: datafusion::execution::SessionState,
    active: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a sub-query as running until dropped (when its stream ends, fails
/// or is cancelled by the caller).
#[derive(Debug)]
pub struct ActiveGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl NodeState {
    /// Loads the key and the opt-out list and opens every table (checking its
    /// files against the config). TLS is checked by the server.
    pub async fn open(config: NodeConfig) -> Result<NodeState, StartError> {
        let key = FederationKey::load(&config.node.pseudonym_key_file)?;
        let opt_outs = OptOutList::open(&config.node.opt_out_file)?;
        // Files are listed again for every query (DataFusion keeps listings
        // forever by default): a register holder adds, rewrites and removes
        // files while the node runs. Footers and statistics stay cached, as
        // each is checked against the file's size and time of change.
        let caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(caches)
            .build_arc()
            .expect("constant runtime settings are valid");
        let probe = SessionContext::new_with_config_rt(session_config(&config.node.register), runtime.clone());
        let state = probe.state();
        let identities = Arc::new(crate::identities::IdentityCache::new(config.node.identity_cache_mib));
        let mut tables = Vec::with_capacity(config.tables.len());
        for t in &config.tables {
            let mut served = ServedTable::open(&config.node.register, t.clone(), &state, &identities)
                .await
                .map_err(|source| StartError::Table { config: config.path.clone(), source: Box::new(source) })?;
            if config.cluster.as_ref().is_some_and(|c| c.scans(t)) {
                served = served.scanned_on_cluster();
            }
            tables.push(Arc::new(served));
        }
        let cluster = match &config.cluster {
            // The node reaches its workers with its own certificate.
            Some(c) => Some(crate::cluster::Cluster::new(&config.node.register, c, &config.tls.load()?)),
            None => None,
        };
        if let Some(cluster) = &cluster {
            cluster.check_workers().await?;
        }
        let catalogue = catalogue(&config);
        // The state the tables were opened in serves as the template, unless
        // scans go to a cluster (whose planner the sessions need).
        let template = match &cluster {
            None => state,
            Some(cluster) => crate::cluster::session(cluster, session_config(&config.node.register), runtime).state(),
        };
        Ok(NodeState { config, key, opt_outs, tables, catalogue, template, active: Arc::default() })
    }

    pub fn register(&self) -> &str {
        &self.config.node.register
    }

    /// Sub-queries whose result stream is open now.
    pub fn active_subqueries(&self) -> usize {
        self.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Marks a sub-query as running until the guard is dropped.
    pub fn track(&self) -> ActiveGuard {
        self.active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ActiveGuard(self.active.clone())
    }

    pub fn catalogue(&self) -> &pb::Catalogue {
        &self.catalogue
    }

    /// The node's tables as one project sees them: pseudonymised, opt-outs removed
    /// (the opt-out list as it is now on disk).
    pub fn project_tables(&self, project: &str) -> Result<NamedTables, OptOutError> {
        self.tables_for(&Scope::Project(project.to_owned()), None)
    }

    /// The node's tables as `scope` sees them: pseudonymised in its domain,
    /// opt-outs removed, withheld columns refused, and for direct access only
    /// the unit's own rows of the tables the holder opened. Scans record the
    /// columns they read in `read`.
    pub fn tables_for(&self, scope: &Scope, read: Option<Arc<ColumnsRead>>) -> Result<NamedTables, OptOutError> {
        let opt_outs = self.opt_outs.current()?;
        let pseudonymiser =
            self.key.for_project_with(self.config.node.pseudonym_scheme, &scope.pseudonym_domain(self.register()));
        let access = &self.config.access;
        let project = scope.project();
        let open: Vec<String> = access.direct_access.keys().cloned().collect();
        Ok(self
            .tables
            .iter()
            .map(|t| {
                let withheld: Vec<String> = t
                    .exposed_schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .filter(|c| access.withholds(project, t.name(), c))
                    .collect();
                let mut table = t.for_project(pseudonymiser.clone(), opt_outs.clone()).withholding(project, withheld);
                if let Some(unit) = scope.direct_unit() {
                    table = table.direct(DirectRows {
                        unit: unit.to_owned(),
                        column: access.direct_unit_column(t.name()).map(str::to_owned),
                        open: open.clone(),
                    });
                }
                if let Some(read) = &read {
                    table = table.recording(read.clone());
                }
                let provider: Arc<dyn TableProvider> = Arc::new(table);
                (t.name().to_owned(), provider)
            })
            .collect())
    }

    /// A session in which `scope`'s SQL runs: the node's tables under the
    /// register's schema (also the default schema), nothing else.
    pub fn session(&self, scope: &Scope, read: Option<Arc<ColumnsRead>>) -> Result<SessionContext, OptOutError> {
        let tables = self.tables_for(scope, read)?;
        // A clone shares the template's catalogues: this session gets its own.
        let mut state = self.template.clone();
        state.register_catalog_list(own_catalogue(self.register()));
        let ctx = SessionContext::new_with_state(state);
        for (name, provider) in tables {
            ctx.register_table(name.as_str(), provider).expect("the default schema accepts tables");
        }
        let secret = self.key.record_key_secret(&scope.pseudonym_domain(self.register()));
        samkor_functions::register(&ctx, Some(secret));
        Ok(ctx)
    }

    /// `samkor_record_key` and `samkor_pseudonym_bytes` over the identity
    /// numbers of `scope`'s pseudonym domain, for plans that only count
    /// persons ([`crate::counting`]).
    pub fn identity_functions(&self, scope: &Scope) -> crate::counting::IdentityFunctions {
        let domain = scope.pseudonym_domain(self.register());
        crate::counting::IdentityFunctions::new(
            self.key.for_project_with(self.config.node.pseudonym_scheme, &domain),
            self.key.record_key_secret(&domain),
        )
    }
}

/// The catalogue of a node session.
const CATALOG: &str = "samkor";

/// An empty catalogue list with the default catalogue and schema of a node
/// session (`samkor.<register>`), where its tables are registered.
fn own_catalogue(register: &str) -> Arc<dyn CatalogProviderList> {
    let schema: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
    let catalog = MemoryCatalogProvider::new();
    catalog.register_schema(register, schema).expect("a memory catalogue accepts schemas");
    let list = MemoryCatalogProviderList::new();
    list.register_catalog(CATALOG.to_owned(), Arc::new(catalog));
    Arc::new(list)
}

/// The DataFusion settings of a node session.
pub fn session_config(register: &str) -> SessionConfig {
    let mut config =
        SessionConfig::new().with_default_catalog_and_schema(CATALOG, register).with_information_schema(false);
    // Strings stay Utf8 on the wire, as declared in the catalogue.
    config.options_mut().execution.parquet.schema_force_view_types = false;
    // Filters on non-person columns run below the pseudonymiser: they prune
    // row groups and pages, then a `FilterExec` drops rows right above the
    // scan. They are not evaluated inside the Parquet decoder (DataFusion's
    // default): at the selectivity of a region or a year the row selection
    // cost more than the decoding it saved (docs/architecture.md, "What
    // privacy costs in time": Skåne by ATC -18 %, one region -21 % without;
    // only a code held by 0.1 % of 8.4 M rows was 12 % faster with it).
    config.options_mut().execution.parquet.pushdown_filters = false;
    config
}

fn catalogue(config: &NodeConfig) -> pb::Catalogue {
    let tables = config
        .tables
        .iter()
        .map(|t| pb::Table {
            name: t.name.clone(),
            description: t.description.clone(),
            direct_unit_column: config.access.direct_unit_column(&t.name).unwrap_or_default().to_owned(),
            columns: t
                .columns
                .iter()
                .map(|c| {
                    let person = t.is_person(c);
                    pb::Column {
                        name: t.exposed_name(c).to_owned(),
                        data_type: c.data_type.name().to_owned(),
                        description: if person {
                            format!(
                                "Project pseudonym of the person (replaces {} at the node). {}",
                                c.name, c.description
                            )
                        } else {
                            c.description.clone()
                        },
                        unit: c.unit.clone().unwrap_or_default(),
                        code_system: c.code_system.clone().unwrap_or_default(),
                        identifying: c.identifying || person,
                        person,
                        nullable: true,
                    }
                })
                .collect(),
        })
        .collect();
    pb::Catalogue {
        register: config.node.register.clone(),
        holder: config.node.holder.clone(),
        description: config.node.description.clone(),
        tables,
        pseudonym_scheme: config.node.pseudonym_scheme.name().to_owned(),
    }
}
