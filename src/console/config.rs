//! The console configuration file (`console.toml`): where the console
//! listens, who may use it with which roles, and which audit logs it shows.
//!
//! ```toml
//! coordinator = "coordinator.toml"   # the coordinator this console runs beside (same process)
//! listen = "127.0.0.1:47180"          # loopback only: a browser on this machine
//! audit_log = "audit/console.jsonl"   # every console access (hash-chained, as the coordinator's)
//! query_identity = "console"          # open comparisons run as this identity ...
//! query_project = "open-comparisons"  # ... for this approved project (disclosure-controlled like any query)
//! session_minutes = 480
//!
//! [[users]]
//! name = "rita"                        # as written in approvals and audit logs
//! roles = ["reviewer"]                 # approvals, the coordinator's log, the console's own log
//!
//! [[users]]
//! name = "hanna"
//! roles = ["holder:hip"]               # the hip node's log
//!
//! [[node_logs]]
//! register = "hip"
//! path = "hip/audit.jsonl"             # a copy or read-only mount of the holder's log
//! ```
//! Paths are relative to the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a console config was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read console config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("console config {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error(
        "console config {}: listen = {addr} is not a loopback address; the console has no TLS and \
         logs in by links printed on this machine, so it listens on 127.0.0.1 or ::1 only \
         (put a TLS-terminating proxy in front for anything else)",
        path.display()
    )]
    NotLoopback { path: PathBuf, addr: SocketAddr },
    #[error("console config {}: user {user:?}: unknown role {role:?}; use \"reviewer\" or \"holder:<register>\"", path.display())]
    Role { path: PathBuf, user: String, role: String },
    #[error("console config {}: user {user:?} is listed twice", path.display())]
    DuplicateUser { path: PathBuf, user: String },
    #[error("console config {}: user names must be 1 to 64 letters, digits, '-', '_' or '.', not {user:?}", path.display())]
    BadUser { path: PathBuf, user: String },
    #[error("console config {}: session_minutes must be between 1 and 1440", path.display())]
    Session { path: PathBuf },
}

/// What a user of the console may open.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Ethics reviewers and the federation's auditors: the approvals, the
    /// coordinator's audit log and access review, the console's own log.
    Reviewer,
    /// A register holder: its own node's audit log and access review.
    Holder(String),
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s.split_once(':') {
            None if s == "reviewer" => Some(Role::Reviewer),
            Some(("holder", register)) if !register.is_empty() => Some(Role::Holder(register.to_owned())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Reviewer => f.write_str("reviewer"),
            Role::Holder(r) => write!(f, "holder:{r}"),
        }
    }
}

/// A person who may log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub roles: Vec<Role>,
}

/// A node's audit log as the console reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLog {
    pub register: String,
    pub path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    coordinator: PathBuf,
    listen: SocketAddr,
    audit_log: PathBuf,
    #[serde(default = "default_identity")]
    query_identity: String,
    #[serde(default = "default_project")]
    query_project: String,
    #[serde(default = "default_session")]
    session_minutes: u32,
    #[serde(default = "default_poll")]
    status_poll_secs: u64,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    node_logs: Vec<NodeLog>,
}

fn default_identity() -> String {
    "console".to_owned()
}
fn default_project() -> String {
    "open-comparisons".to_owned()
}
fn default_session() -> u32 {
    480
}
fn default_poll() -> u64 {
    15
}

/// A parsed and checked console config (paths resolved against its file).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub path: PathBuf,
    /// The coordinator config the console runs beside.
    pub coordinator: PathBuf,
    /// Loopback address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The console's own access log.
    pub audit_log: PathBuf,
    /// Identity and project the open comparisons are queried as.
    pub query_identity: String,
    pub query_project: String,
    pub session_minutes: u32,
    /// How often each node is asked for its catalogue (up/down, last contact).
    pub status_poll_secs: u64,
    pub users: Vec<User>,
    pub node_logs: Vec<NodeLog>,
}

impl ConsoleConfig {
    pub fn load(path: &Path) -> Result<ConsoleConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as if read from `path` (relative paths resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<ConsoleConfig, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: samkor_policies::toml_error::one_line(&e),
        })?;
        if !raw.listen.ip().is_loopback() {
            return Err(ConfigError::NotLoopback { path: path.to_owned(), addr: raw.listen });
        }
        if !(1..=1440).contains(&raw.session_minutes) {
            return Err(ConfigError::Session { path: path.to_owned() });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut users: Vec<User> = Vec::new();
        for u in raw.users {
            let ok = !u.name.is_empty()
                && u.name.len() <= 64
                && u.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(ConfigError::BadUser { path: path.to_owned(), user: u.name });
            }
            if users.iter().any(|x| x.name == u.name) {
                return Err(ConfigError::DuplicateUser { path: path.to_owned(), user: u.name });
            }
            let mut roles = Vec::new();
            for r in &u.roles {
                let role = Role::parse(r).ok_or_else(|| ConfigError::Role {
                    path: path.to_owned(),
                    user: u.name.clone(),
                    role: r.clone(),
                })?;
                roles.push(role);
            }
            roles.sort();
            roles.dedup();
            users.push(User { name: u.name, roles });
        }
        Ok(ConsoleConfig {
            path: path.to_owned(),
            coordinator: base.join(raw.coordinator),
            listen: raw.listen,
            audit_log: base.join(raw.audit_log),
            query_identity: raw.query_identity,
            query_project: raw.query_project,
            session_minutes: raw.session_minutes,
            status_poll_secs: raw.status_poll_secs.max(1),
            users,
            node_logs: raw
                .node_logs
                .into_iter()
                .map(|n| NodeLog { register: n.register, path: base.join(n.path) })
                .collect(),
        })
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
coordinator = "coordinator.toml"
listen = "127.0.0.1:0"
audit_log = "audit/console.jsonl"

[[users]]
name = "rita"
roles = ["reviewer"]

[[users]]
name = "hanna"
roles = ["holder:hip", "holder:hip"]

[[node_logs]]
register = "hip"
path = "hip/audit.jsonl"
"#;

    #[test]
    fn parses_roles_and_resolves_paths() {
        let c = ConsoleConfig::parse(Path::new("/fed/console.toml"), GOOD).expect("valid");
        assert_eq!(c.coordinator, Path::new("/fed/coordinator.toml"));
        assert_eq!(c.audit_log, Path::new("/fed/audit/console.jsonl"));
        assert_eq!(c.user("rita").expect("rita").roles, [Role::Reviewer]);
        assert_eq!(c.user("hanna").expect("hanna").roles, [Role::Holder("hip".into())]);
        assert_eq!(c.node_logs[0].path, Path::new("/fed/hip/audit.jsonl"));
        assert_eq!((c.query_identity.as_str(), c.query_project.as_str()), ("console", "open-comparisons"));
    }

    #[test]
    fn refuses_what_would_widen_access() {
        let open = GOOD.replace("127.0.0.1:0", "0.0.0.0:8080");
        let e = ConsoleConfig::parse(Path::new("c.toml"), &open).expect_err("not loopback");
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        let role = GOOD.replace("\"reviewer\"", "\"admin\"");
        let e = ConsoleConfig::parse(Path::new("c.toml"), &role).expect_err("unknown role");
        assert!(e.to_string().contains("unknown role \"admin\""), "{e}");
        let typo = GOOD.replace("audit_log", "audit_logg");
        let e = ConsoleConfig::parse(Path::new("c.toml"), &typo).expect_err("unknown field");
        assert!(e.to_string().contains("line"), "{e}");
        let twice = format!("{GOOD}\n[[users]]\nname = \"rita\"\n");
        assert!(matches!(ConsoleConfig::parse(Path::new("c.toml"), &twice), Err(ConfigError::DuplicateUser { .. })));
    }
}
