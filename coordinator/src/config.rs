//! The coordinator configuration file (`coordinator.toml`).
//!
//! ```toml
//! [coordinator]
//! listen = "127.0.0.1:47100"
//! memory_limit_mb = 2048        # DataFusion memory pool shared by all queries
//! spill_dir = "spill"           # large joins and aggregates spill here
//! query_timeout_secs = 300
//! node_retry_secs = 5           # how often an unreachable node is retried
//!
//! [tls]
//! cert = "certs/coordinator.pem"
//! key = "certs/coordinator.key"
//! ca = "certs/ca.pem"
//!
//! [governance]
//! approvals_dir = "approvals"   # one approval document per project
//! audit_log = "audit/coordinator.log"
//! directory = "directory.toml"  # care providers with direct access (optional)
//!
//! [[nodes]]
//! register = "hip"
//! address = "127.0.0.1:47101"
//! ```
//! Paths are relative to the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use samkor_proto::tls::TlsFiles;
use serde::Deserialize;

/// Why a config file was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read coordinator config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("coordinator config {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("coordinator config {}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    pub listen: SocketAddr,
    #[serde(default = "default_memory_mb")]
    pub memory_limit_mb: u64,
    #[serde(default)]
    pub spill_dir: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    pub query_timeout_secs: u64,
    #[serde(default = "default_retry")]
    pub node_retry_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub node_connect_timeout_secs: u64,
}

fn default_memory_mb() -> u64 {
    2048
}
fn default_timeout() -> u64 {
    300
}
fn default_retry() -> u64 {
    5
}
fn default_connect_timeout() -> u64 {
    5
}

/// Where the approvals and the audit log live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceSection {
    /// Directory of approval documents (one TOML file per project), reloaded on change.
    pub approvals_dir: PathBuf,
    /// The coordinator's audit log (JSON lines, hash-chained).
    pub audit_log: PathBuf,
    /// The care-provider directory (identity → hospital) for direct access;
    /// without it the federation offers no direct access.
    #[serde(default)]
    pub directory: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The register the node serves; its SQL schema name.
    pub register: String,
    /// `host:port` of the node.
    pub address: String,
    /// The name the node's certificate carries.
    #[serde(default = "default_domain")]
    pub tls_domain: String,
}

fn default_domain() -> String {
    "localhost".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    coordinator: CoordinatorSection,
    tls: TlsFiles,
    governance: GovernanceSection,
    #[serde(default)]
    nodes: Vec<NodeEntry>,
}

/// A parsed and checked coordinator config.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub path: PathBuf,
    pub coordinator: CoordinatorSection,
    pub tls: TlsFiles,
    pub governance: GovernanceSection,
    pub nodes: Vec<NodeEntry>,
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: samkor_policies::toml_error::one_line(&e),
        })?;
        let invalid = |problem: String| ConfigError::Invalid { path: path.to_owned(), problem };
        if raw.nodes.is_empty() {
            return Err(invalid("no [[nodes]]: list the register nodes this coordinator federates".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for n in &raw.nodes {
            if !seen.insert(&n.register) {
                return Err(invalid(format!("node for register {:?} is listed twice", n.register)));
            }
        }
        if raw.coordinator.memory_limit_mb == 0 {
            return Err(invalid("memory_limit_mb must be at least 1".into()));
        }
        if raw.coordinator.query_timeout_secs == 0 {
            return Err(invalid("query_timeout_secs must be at least 1".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut coordinator = raw.coordinator;
        coordinator.spill_dir = coordinator.spill_dir.map(|d| base.join(d));
        let governance = GovernanceSection {
            approvals_dir: base.join(&raw.governance.approvals_dir),
            audit_log: base.join(&raw.governance.audit_log),
            directory: raw.governance.directory.map(|d| base.join(d)),
        };
        Ok(CoordinatorConfig { path: path.to_owned(), coordinator, tls: raw.tls.relative_to(base), governance, nodes: raw.nodes })
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_secs(self.coordinator.query_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[coordinator]
listen = "127.0.0.1:0"
query_timeout_secs = 30

[tls]
cert = "certs/coordinator.pem"
key = "certs/coordinator.key"
ca = "certs/ca.pem"

[governance]
approvals_dir = "approvals"
audit_log = "audit/coordinator.log"

[[nodes]]
register = "hip"
address = "127.0.0.1:47101"
"#;

    #[test]
    fn parses_and_resolves() {
        let c = CoordinatorConfig::parse(Path::new("/fed/coordinator.toml"), GOOD).expect("valid");
        assert_eq!(c.tls.ca, Path::new("/fed/certs/ca.pem"));
        assert_eq!(c.nodes[0].tls_domain, "localhost");
        assert_eq!(c.coordinator.memory_limit_mb, 2048);
        assert_eq!(c.governance.directory, None, "no direct access unless configured");
        let c = CoordinatorConfig::parse(
            Path::new("/fed/coordinator.toml"),
            &GOOD.replace("[governance]", "[governance]\ndirectory = \"directory.toml\""),
        )
        .expect("valid");
        assert_eq!(c.governance.directory.as_deref(), Some(Path::new("/fed/directory.toml")));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let p = Path::new("/fed/coordinator.toml");
        let e = CoordinatorConfig::parse(p, &GOOD.replace("[[nodes]]", "[[node]]")).unwrap_err().to_string();
        assert!(e.contains("unknown field `node`"), "{e}");
        let e = CoordinatorConfig::parse(p, &format!("{GOOD}\n[[nodes]]\nregister = \"hip\"\naddress = \"x:1\"\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "coordinator config /fed/coordinator.toml: node for register \"hip\" is listed twice");
        let e = CoordinatorConfig::parse(p, &GOOD.replace("query_timeout_secs = 30", "query_timeout_secs = 0"))
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("query_timeout_secs must be at least 1"), "{e}");
    }
}
