//! The read-only web console: federation status, approvals, audit review and
//! open comparisons for register holders, ethics reviewers and authorities.
//!
//! ```text
//!  browser (this machine) ──HTTP, loopback only──▶ console (axum, askama pages, SVG drawn here)
//!        one-time login link ─▶ session cookie          │ same process
//!                                                       ├─▶ coordinator engine: node status, catalogue,
//!                                                       │   approvals; open comparisons as ordinary SQL
//!                                                       │   (approval + disclosure control + audit)
//!                                                       ├─▶ audit logs: coordinator, nodes, console (verified)
//!                                                       └─▶ console access log (every page, login, refusal)
//! ```
//!
//! The console is a listener of the coordinator (`samkor console --config
//! console.toml` runs the coordinator named in that file with the console
//! beside it): it needs the live engine, and an audit log has one writer.
//! See `docs/console.md` for roles, login and the security headers.

pub mod auth;
pub mod comparisons;
pub mod config;
pub mod funnel;
mod logs;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use samkor_coordinator::engine::Engine;
use samkor_coordinator::flightsql::CoordinatorService;
use samkor_policies::audit::{AuditEntry, AuditLog, Decision};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{ConsoleConfig, Role, User};

/// The Content-Security-Policy of every response: nothing but this origin's
/// own stylesheet, no script at all, no framing, forms only to this origin.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}; choose another `listen` port in the console config")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot create the directory of the console's audit log {}: {source}", path.display())]
    AuditDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0}")]
    Audit(#[from] samkor_policies::audit::AuditError),
}

/// Why a login link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0:?} is not a user of this console; add a [[users]] entry with its roles to the console config")]
    UnknownUser(String),
}

/// What the pages share.
#[derive(Debug)]
pub(crate) struct Console {
    pub(crate) config: ConsoleConfig,
    pub(crate) engine: Arc<Engine>,
    pub(crate) service: CoordinatorService,
    pub(crate) auth: auth::Auth,
    pub(crate) access: AuditLog,
    pub(crate) logs: logs::LogCache,
    pub(crate) status: pages::StatusBoard,
    /// `host:port` values a request's Host header may carry.
    pub(crate) hosts: Vec<String>,
    pub(crate) tls: bool,
    next_request: std::sync::atomic::AtomicU64,
}

/// A running console.
#[derive(Debug)]
pub struct RunningConsole {
    pub addr: SocketAddr,
    console: Arc<Console>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    poller: JoinHandle<()>,
    verifier: JoinHandle<()>,
    verified: tokio::sync::watch::Receiver<bool>,
}

impl RunningConsole {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A fresh one-time login link for `user` (valid 15 minutes).
    pub fn login_link(&self, user: &str) -> Result<String, LinkError> {
        if self.console.config.user(user).is_none() {
            return Err(LinkError::UnknownUser(user.to_owned()));
        }
        Ok(format!("{}/login?token={}", self.url(), self.console.auth.issue_login(user)))
    }

    /// Returns once every audit log the console shows has been verified in
    /// full for the first time (the console does it in the background as it
    /// starts; until then a page that needs a log waits for its read).
    pub async fn logs_verified(&self) {
        let mut verified = self.verified.clone();
        let _ = verified.wait_for(|done| *done).await;
    }

    /// The console's own access log.
    pub fn access_log(&self) -> &std::path::Path {
        self.console.access.path()
    }

    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.poller.abort();
        self.verifier.abort();
        let _ = (&mut self.task).await;
    }

    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Starts the console beside a running coordinator's `engine`.
pub async fn start(config: ConsoleConfig, engine: Arc<Engine>) -> Result<RunningConsole, StartError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen, source })?;
    if let Some(parent) = config.audit_log.parent() {
        std::fs::create_dir_all(parent).map_err(|source| StartError::AuditDir { path: parent.to_owned(), source })?;
    }
    let (access, recovery) = AuditLog::open_recovering(&config.audit_log, "console")?;
    if let Some(r) = recovery {
        tracing::warn!(quarantine = %r.quarantine.display(), "the console's audit log ended in a torn record; set aside and recorded");
    }
    let port = addr.port();
    let hosts = vec![format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")];
    let console = Arc::new(Console {
        service: CoordinatorService::new(engine.clone()),
        auth: auth::Auth::new(Duration::from_secs(u64::from(config.session_minutes) * 60)),
        status: pages::StatusBoard::default(),
        logs: logs::LogCache::default(),
        access,
        engine,
        hosts,
        tls: false,
        next_request: std::sync::atomic::AtomicU64::new(1),
        config,
    });
    pages::poll_once(&console).await;
    let poller = tokio::spawn(pages::poll_nodes(console.clone()));
    let (verified_tx, verified) = tokio::sync::watch::channel(false);
    let verifier = tokio::spawn(keep_logs_verified(console.clone(), verified_tx));
    let app = pages::routes()
        .layer(axum::middleware::from_fn_with_state(console.clone(), gate))
        .layer(axum::middleware::from_fn(secure_headers))
        .with_state(console.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    tracing::info!(%addr, "console serving on loopback");
    Ok(RunningConsole { addr, console, shutdown: Some(tx), task, poller, verifier, verified })
}

/// Verifies every log the console shows, now and every
/// [`logs::FULL_VERIFY_EVERY`], off the pages' path (`logs` module docs).
async fn keep_logs_verified(console: Arc<Console>, verified: tokio::sync::watch::Sender<bool>) {
    let mut paths = vec![console.engine.audit().path().to_owned(), console.config.audit_log.clone()];
    paths.extend(console.config.node_logs.iter().map(|n| n.path.clone()));
    let mut every = tokio::time::interval(logs::FULL_VERIFY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for path in &paths {
            let c = console.clone();
            let p = path.clone();
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || c.logs.reverify(&p)).await {
                Ok(Ok(loaded)) => tracing::debug!(
                    path = %path.display(),
                    records = loaded.records.len(),
                    intact = loaded.problem.is_none(),
                    ms = started.elapsed().as_millis() as u64,
                    "audit log verified in full"
                ),
                // A node's log may not exist yet; the page says so when asked.
                Ok(Err(e)) => tracing::debug!(path = %path.display(), error = %e, "audit log not verified"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "audit log verification stopped"),
            }
        }
        verified.send_replace(true);
    }
}

/// The logged-in user of a request (set by [`gate`]).
#[derive(Debug, Clone)]
pub(crate) struct Visitor(pub(crate) Option<User>);

/// What a handler tells the access log about its response.
#[derive(Debug, Clone)]
pub(crate) struct AccessNote {
    pub(crate) rule: &'static str,
    pub(crate) reason: String,
    /// Records, rows or approvals shown.
    pub(crate) shown: u64,
    pub(crate) registers: Vec<String>,
    /// The identity to record when the request had no session yet (a login).
    pub(crate) as_user: Option<String>,
}

impl AccessNote {
    pub(crate) fn new(rule: &'static str, reason: impl Into<String>) -> AccessNote {
        AccessNote { rule, reason: reason.into(), shown: 0, registers: Vec::new(), as_user: None }
    }
}

/// Every request: Host must be this loopback listener (no DNS rebinding),
/// POSTs must come from this origin (CSRF), the session is resolved, and the
/// access is recorded in the console's audit log before the response leaves;
/// if it cannot be recorded, nothing is shown.
async fn gate(State(console): State<Arc<Console>>, mut request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
    if !console.hosts.contains(&host) {
        return (StatusCode::MISDIRECTED_REQUEST, "this console answers only at its own loopback address")
            .into_response();
    }
    let path = request.uri().path().to_owned();
    if path == "/static/console.css" {
        return next.run(request).await;
    }
    let method = request.method().clone();
    if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
        let origin = request.headers().get(header::ORIGIN).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let site = request.headers().get("sec-fetch-site").and_then(|h| h.to_str().ok()).unwrap_or_default();
        let scheme = if console.tls { "https" } else { "http" };
        // Under `Referrer-Policy: no-referrer` browsers send `Origin: null` even for
        // same-origin forms; then the browser's own `Sec-Fetch-Site` (which no page
        // can set) must say same-origin.
        let same_origin = origin == format!("{scheme}://{host}") || (origin == "null" && site == "same-origin");
        if !same_origin {
            let note =
                AccessNote::new("console.origin", "a form was sent from another origin (or without Origin); refused");
            let response =
                (StatusCode::FORBIDDEN, "refused: this form must be sent from the console's own pages").into_response();
            return console.record(None, &method, &path, "", response, Some(note));
        }
    }
    let user = request
        .headers()
        .get(header::COOKIE)
        .and_then(|h| h.to_str().ok())
        .and_then(auth::session_cookie)
        .and_then(|id| console.auth.session_user(id))
        .and_then(|name| console.config.user(&name).cloned());
    // Never log a login token.
    let query = if path == "/login" { String::new() } else { request.uri().query().unwrap_or_default().to_owned() };
    request.extensions_mut().insert(Visitor(user.clone()));
    let response = next.run(request).await;
    console.record(user.as_ref(), &method, &path, &query, response, None)
}

impl Console {
    /// Appends the access to the console's log; a response whose access
    /// cannot be recorded is replaced by an error.
    fn record(
        &self,
        user: Option<&User>,
        method: &axum::http::Method,
        path: &str,
        query: &str,
        mut response: Response,
        note: Option<AccessNote>,
    ) -> Response {
        let note = note.or_else(|| response.extensions_mut().remove::<AccessNote>());
        let status = response.status();
        let decision = if status.is_success() || status.is_redirection() {
            Decision::Accepted
        } else if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
            Decision::Refused
        } else {
            Decision::Failed
        };
        let n = self.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = if query.is_empty() { format!("{method} {path}") } else { format!("{method} {path}?{query}") };
        let identity = user
            .map(|u| u.name.clone())
            .or_else(|| note.as_ref().and_then(|n| n.as_user.clone()))
            .unwrap_or_else(|| "(not logged in)".to_owned());
        let mut entry = AuditEntry::new(decision, identity, format!("console-{n}"), request).project("console");
        if let Some(note) = note {
            entry = entry.rule(note.rule).reason(note.reason).registers(note.registers).released(note.shown, 0, 0);
        } else if !status.is_success() && !status.is_redirection() {
            entry = entry.reason(format!("HTTP {status}"));
        }
        match self.access.append(entry) {
            Ok(_) => response,
            Err(e) => {
                tracing::error!(error = %e, "console access could not be recorded");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the console's audit log cannot record this access, so nothing is shown; see the console's log",
                )
                    .into_response()
            }
        }
    }
}

/// Security headers on every response.
async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response: Response<Body> = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    h.insert("permissions-policy", HeaderValue::from_static("camera=(), microphone=(), geolocation=()"));
    response
}

/// Files and links for running the console over a `samkor synth` or demo
/// directory: `console.toml` (users `rita`, reviewer; `hanna`, holder of
/// hip) and the approval `open-comparisons` for the console's queries.
/// Existing files are kept. `node_logs` are the nodes' current audit logs.
pub fn write_local_files(
    dir: &std::path::Path,
    node_logs: &[(String, std::path::PathBuf)],
) -> std::io::Result<std::path::PathBuf> {
    let approval = dir.join("approvals").join("open-comparisons.toml");
    if !approval.exists() {
        std::fs::create_dir_all(dir.join("approvals"))?;
        std::fs::write(&approval, OPEN_COMPARISONS_APPROVAL)?;
    }
    let path = dir.join("console.toml");
    let mut text = String::from(
        "# samkor console beside the coordinator of this directory (docs/console.md)\n\
         coordinator = \"coordinator.toml\"\nlisten = \"127.0.0.1:47180\"\naudit_log = \"audit/console.jsonl\"\n\
         query_identity = \"console\"\nquery_project = \"open-comparisons\"\n\n\
         [[users]]\nname = \"rita\"\nroles = [\"reviewer\"]\n\n\
         [[users]]\nname = \"hanna\"\nroles = [\"holder:hip\"]\n",
    );
    for (register, log) in node_logs {
        text.push_str(&format!("\n[[node_logs]]\nregister = {register:?}\npath = {:?}\n", log.display().to_string()));
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The approval the console's open comparisons run under in the synthetic
/// federation: the hip and death registers' columns the indicators need,
/// aggregates only, the console as the only member.
pub const OPEN_COMPARISONS_APPROVAL: &str = r#"project = "open-comparisons"
title = "Open comparisons of hip-replacement outcomes (web console)"
ethics_reference = "Dnr 2026-00000-02"
ethics_authority = "Etikprövningsmyndigheten"
principal_investigator = "console"
purpose = "Publish 90-day mortality, reoperation and register coverage for hip replacement per hospital and region, disclosure-controlled."
valid_from = 2020-01-01
valid_until = 2099-12-31
outputs = ["aggregate"]

[[tables]]
table = "hip.operations"
columns = ["person", "op_id", "op_date", "reoperation", "hospital", "region"]

[[tables]]
table = "npr.inpatient"
columns = ["person", "hospital", "region", "admit_date", "procedure"]

[[tables]]
table = "dors.deaths"
columns = ["person", "death_date"]
"#;
