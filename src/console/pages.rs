//! The console's pages: handlers, the data each template shows, and who may
//! open what (`Role`s from the console config).
//!
//! | page | who |
//! |---|---|
//! | `/` federation status and catalogue | every user |
//! | `/comparisons` open comparisons | every user |
//! | `/approvals` | reviewers |
//! | `/audit?log=coordinator`, `log=console`, their access reviews | reviewers |
//! | `/audit?log=node:<register>`, its access review | the holder of that register |

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use samkor_coordinator::flightsql::Caller;
use samkor_policies::approval::{Approval, RestrictionKind, Validity};
use samkor_policies::audit::AuditRecord;

use super::comparisons::{self, By, INDICATORS};
use super::config::{Role, User};
use super::logs::{self, Filter, PAGE};
use super::{AccessNote, Console, Visitor, auth, funnel};

type Shared = State<Arc<Console>>;
type Params = Query<HashMap<String, String>>;

/// Approvals expiring within this many days are highlighted.
const EXPIRY_HIGHLIGHT_DAYS: u32 = 30;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/", get(status))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/approvals", get(approvals))
        .route("/audit", get(audit))
        .route("/audit/review", get(review))
        .route("/audit/review.txt", get(review_file))
        .route("/comparisons", get(comparisons))
        .route("/static/console.css", get(stylesheet))
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("console.css")).into_response()
}

// ----- layout, refusals -------------------------------------------------------------

/// What the page frame shows.
#[derive(Debug)]
pub(crate) struct Layout {
    title: String,
    page: &'static str,
    user: Option<String>,
    roles: String,
    reviewer: bool,
    any_log: bool,
}

fn layout(console: &Console, user: Option<&User>, title: impl Into<String>, page: &'static str) -> Layout {
    Layout {
        title: title.into(),
        page,
        user: user.map(|u| u.name.clone()),
        roles: user
            .map(|u| {
                if u.roles.is_empty() {
                    "no roles".to_owned()
                } else {
                    u.roles.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                }
            })
            .unwrap_or_default(),
        reviewer: user.is_some_and(is_reviewer),
        any_log: user.is_some_and(|u| !logs_for(console, u).is_empty()),
    }
}

fn is_reviewer(u: &User) -> bool {
    u.roles.contains(&Role::Reviewer)
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct Message {
    layout: Layout,
    heading: String,
    class: &'static str,
    text: String,
    show_form: bool,
    token: String,
    login_user: String,
}

fn message(console: &Console, user: Option<&User>, heading: &str, class: &'static str, text: String) -> Message {
    Message {
        layout: layout(console, user, heading, ""),
        heading: heading.to_owned(),
        class,
        text,
        show_form: false,
        token: String::new(),
        login_user: String::new(),
    }
}

fn render(status: StatusCode, template: &impl Template, note: AccessNote) -> Response {
    match template.render() {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            r.extensions_mut().insert(note);
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            let mut r =
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error in the console (please report)").into_response();
            r.extensions_mut().insert(AccessNote::new("console.page", format!("template failed: {e}")));
            r
        }
    }
}

/// The user, or the page that says to log in first.
fn logged_in(console: &Console, visitor: &Visitor) -> Result<User, Box<Response>> {
    match &visitor.0 {
        Some(u) => Ok(u.clone()),
        None => Err(Box::new(render(
            StatusCode::UNAUTHORIZED,
            &message(
                console,
                None,
                "Log in first",
                "warn",
                "This console has no passwords: log in with a one-time link printed by `samkor console` \
                 (or `samkor demo --serve`) on this machine."
                    .to_owned(),
            ),
            AccessNote::new("console.session", "no valid session"),
        ))),
    }
}

/// A page the user's roles do not open.
fn refused(console: &Console, user: &User, what: &str, needs: &str) -> Response {
    let text = format!(
        "{} may not open {what}: it needs the role {needs}, and {}'s roles are: {}. \
         Roles are assigned in the console config (rule console.role).",
        user.name,
        user.name,
        if user.roles.is_empty() {
            "none".to_owned()
        } else {
            user.roles.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        }
    );
    render(
        StatusCode::FORBIDDEN,
        &message(console, Some(user), "Not for your role", "broken", text),
        AccessNote::new("console.role", format!("{what} needs {needs}")),
    )
}

// ----- login ------------------------------------------------------------------------

async fn login_page(State(console): Shared, Extension(visitor): Extension<Visitor>, Query(q): Params) -> Response {
    let Some(token) = q.get("token") else {
        if visitor.0.is_some() {
            return Redirect::to("/").into_response();
        }
        return *logged_in(&console, &Visitor(None)).unwrap_err();
    };
    match console.auth.peek_login(token) {
        Some(user) => {
            let mut m = message(
                &console,
                None,
                "Log in",
                "",
                format!(
                    "This one-time link logs you in as {user}. It works once and expires 15 minutes after it was printed."
                ),
            );
            m.show_form = true;
            m.token = token.clone();
            m.login_user = user;
            render(StatusCode::OK, &m, AccessNote::new("console.login", "login page shown"))
        }
        None => render(
            StatusCode::UNAUTHORIZED,
            &message(
                &console,
                None,
                "Link not valid",
                "broken",
                "This login link is not valid: it was used already, it expired, or it was cut. \
                 Ask for a new one: `samkor console` prints one when the user's name is typed on its terminal."
                    .to_owned(),
            ),
            AccessNote::new("console.login", "login link not valid"),
        ),
    }
}

#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(console): Shared, Form(form): Form<LoginForm>) -> Response {
    let user = console.auth.redeem_login(&form.token).and_then(|u| console.config.user(&u).cloned());
    let Some(user) = user else {
        let mut r = render(
            StatusCode::UNAUTHORIZED,
            &message(
                &console,
                None,
                "Link not valid",
                "broken",
                "This login link was used already or expired.".to_owned(),
            ),
            AccessNote::new("console.login", "login link not valid"),
        );
        r.extensions_mut().insert(AccessNote::new("console.login", "login link not valid"));
        return r;
    };
    let id = console.auth.open_session(&user.name);
    let ttl = Duration::from_secs(u64::from(console.config.session_minutes) * 60);
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::set_cookie(&id, ttl, console.tls)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    let mut note = AccessNote::new("console.login", format!("{} logged in", user.name));
    note.as_user = Some(user.name.clone());
    r.extensions_mut().insert(note);
    r
}

async fn logout(State(console): Shared, headers: axum::http::HeaderMap) -> Response {
    if let Some(id) = headers.get(header::COOKIE).and_then(|h| h.to_str().ok()).and_then(auth::session_cookie) {
        console.auth.close_session(id);
    }
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&auth::clear_cookie(console.tls)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.extensions_mut().insert(AccessNote::new("console.logout", "logged out"));
    r
}

// ----- federation status -------------------------------------------------------------

/// The last contact with each node, kept by [`poll_nodes`].
#[derive(Debug, Default)]
pub(crate) struct StatusBoard {
    contacts: Mutex<HashMap<String, Contact>>,
}

#[derive(Debug, Clone)]
struct Contact {
    up: bool,
    last_contact: Option<DateTime<Utc>>,
    error: Option<String>,
}

/// Asks every node for its catalogue once (concurrently) and records the outcome.
pub(crate) async fn poll_once(console: &Console) {
    let rounds = console.engine.federation().nodes.iter().map(|n| async move {
        let r = tokio::time::timeout(Duration::from_secs(10), n.refresh()).await;
        (n.register.clone(), r)
    });
    for (register, result) in futures::future::join_all(rounds).await {
        let mut contacts = console.status.contacts.lock().unwrap_or_else(|p| p.into_inner());
        let previous = contacts.get(&register).and_then(|c| c.last_contact);
        let contact = match result {
            Ok(Ok(_)) => Contact { up: true, last_contact: Some(Utc::now()), error: None },
            Ok(Err(e)) => Contact { up: false, last_contact: previous, error: Some(e.to_string()) },
            Err(_) => Contact { up: false, last_contact: previous, error: Some("no answer within 10 s".to_owned()) },
        };
        contacts.insert(register, contact);
    }
}

/// Polls the nodes every `status_poll_secs` until the console stops.
pub(crate) async fn poll_nodes(console: Arc<Console>) {
    loop {
        tokio::time::sleep(Duration::from_secs(console.config.status_poll_secs)).await;
        poll_once(&console).await;
    }
}

#[derive(Debug)]
struct NodeView {
    register: String,
    holder: String,
    description: String,
    address: String,
    up: bool,
    last_contact: String,
    note: String,
    tables: Vec<TableView>,
}

#[derive(Debug)]
struct TableView {
    name: String,
    description: String,
    direct: String,
    columns: Vec<ColumnView>,
}

#[derive(Debug)]
struct ColumnView {
    name: String,
    data_type: String,
    description: String,
    unit: String,
    code_system: String,
    notes: String,
}

#[derive(Template)]
#[template(path = "console/status.html")]
struct StatusPage {
    layout: Layout,
    poll_secs: u64,
    now: String,
    nodes: Vec<NodeView>,
}

fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

async fn status(State(console): Shared, Extension(visitor): Extension<Visitor>) -> Response {
    let user = match logged_in(&console, &visitor) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let contacts = console.status.contacts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut nodes = Vec::new();
    for n in &console.engine.federation().nodes {
        let contact = contacts.get(&n.register);
        let cat = n.catalogue();
        let raw = cat.as_ref().map(|c| &c.raw);
        let tables = raw
            .map(|raw| {
                raw.tables
                    .iter()
                    .map(|t| TableView {
                        name: t.name.clone(),
                        description: t.description.clone(),
                        direct: t.direct_unit_column.clone(),
                        columns: t
                            .columns
                            .iter()
                            .map(|c| {
                                let mut notes = Vec::new();
                                if c.person {
                                    notes.push("the person (a project pseudonym, never the identity number)");
                                }
                                if c.identifying {
                                    notes.push("identifying");
                                }
                                if c.nullable {
                                    notes.push("may be empty");
                                }
                                ColumnView {
                                    name: c.name.clone(),
                                    data_type: c.data_type.clone(),
                                    description: c.description.clone(),
                                    unit: c.unit.clone(),
                                    code_system: c.code_system.clone(),
                                    notes: notes.join("; "),
                                }
                            })
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        nodes.push(NodeView {
            register: n.register.clone(),
            holder: raw.map(|r| r.holder.clone()).unwrap_or_default(),
            description: raw.map(|r| r.description.clone()).unwrap_or_default(),
            address: n.client.addr().to_owned(),
            up: contact.is_some_and(|c| c.up),
            last_contact: contact.and_then(|c| c.last_contact.as_ref().map(time)).unwrap_or_else(|| "never".to_owned()),
            note: contact.and_then(|c| c.error.clone()).unwrap_or_default(),
            tables,
        });
    }
    let up = nodes.iter().filter(|n| n.up).count();
    let page = StatusPage {
        layout: layout(&console, Some(&user), "Federation status", "status"),
        poll_secs: console.config.status_poll_secs,
        now: time(&Utc::now()),
        nodes,
    };
    let mut note = AccessNote::new("console.page", format!("federation status: {up} nodes up"));
    note.shown = page.nodes.len() as u64;
    render(StatusCode::OK, &page, note)
}

// ----- approvals ---------------------------------------------------------------------

#[derive(Debug)]
struct ProblemView {
    file: String,
    line: String,
    message: String,
}

/// Splits `file: line L: message` (or `file: line L, column C: message`).
fn split_problem(p: &str) -> ProblemView {
    let (file, rest) = p.split_once(": ").unwrap_or(("", p));
    let line = rest
        .strip_prefix("line ")
        .map(|r| r.chars().take_while(char::is_ascii_digit).collect::<String>())
        .unwrap_or_default();
    ProblemView { file: file.to_owned(), line, message: rest.to_owned() }
}

#[derive(Debug)]
struct ApprovalView {
    project: String,
    title: String,
    ethics: String,
    pi: String,
    members: String,
    purpose: String,
    valid_from: String,
    valid_until: String,
    status: String,
    class: &'static str,
    outputs: String,
    disclosure: String,
    file: String,
    tables: Vec<GrantView>,
}

#[derive(Debug)]
struct GrantView {
    name: String,
    columns: String,
    rows: String,
    generalise: String,
}

#[derive(Template)]
#[template(path = "console/approvals.html")]
struct ApprovalsPage {
    layout: Layout,
    dir: String,
    today: NaiveDate,
    problems: Vec<ProblemView>,
    approvals: Vec<ApprovalView>,
}

fn bound(b: &std::ops::Bound<samkor_policies::Value>) -> Option<String> {
    match b {
        std::ops::Bound::Included(v) | std::ops::Bound::Excluded(v) => Some(v.to_string()),
        std::ops::Bound::Unbounded => None,
    }
}

fn approval_view(a: &Approval, today: NaiveDate) -> ApprovalView {
    let (status, class) = match a.validity(today) {
        Validity::NotYetValid { from } => (format!("not yet valid (from {from})"), "future"),
        Validity::Expired { until } => (format!("expired {} days ago", (today - until).num_days()), "expired"),
        Validity::Valid if a.expires_within(today, EXPIRY_HIGHLIGHT_DAYS) => {
            let days = (a.valid_until - today).num_days();
            (if days == 0 { "expires today".to_owned() } else { format!("expires in {days} days") }, "expiring")
        }
        Validity::Valid => ("valid".to_owned(), "valid"),
    };
    let d = &a.disclosure;
    let mut disclosure = format!(
        "at least {} persons per cell; counts rounded to {}; dominance: the {} largest persons at most {} of a sum",
        d.min_cell_persons,
        d.round_counts_to.max(1),
        d.dominance_n,
        d.dominance_share
    );
    if !d.allow_min_max.is_empty() {
        disclosure.push_str(&format!(
            "; min/max allowed on {}",
            d.allow_min_max.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    ApprovalView {
        project: a.project.clone(),
        title: a.title.clone(),
        ethics: format!("{} ({})", a.ethics_reference, a.ethics_authority),
        pi: a.principal_investigator.clone(),
        members: a.members.iter().cloned().collect::<Vec<_>>().join(", "),
        purpose: a.purpose.clone(),
        valid_from: a.valid_from.to_string(),
        valid_until: a.valid_until.to_string(),
        status,
        class,
        outputs: a.outputs.iter().map(|o| o.name()).collect::<Vec<_>>().join(", "),
        disclosure,
        file: a.file.display().to_string(),
        tables: a
            .tables
            .iter()
            .map(|t| GrantView {
                name: t.qualified_name(),
                columns: t.columns.iter().cloned().collect::<Vec<_>>().join(", "),
                rows: t
                    .rows
                    .iter()
                    .map(|r| match &r.kind {
                        RestrictionKind::Range { from, until } => match (bound(from), bound(until)) {
                            (Some(f), Some(u)) => format!("{} from {f} until {u}", r.column),
                            (Some(f), None) => format!("{} from {f}", r.column),
                            (None, Some(u)) => format!("{} until {u}", r.column),
                            (None, None) => format!("{} (any)", r.column),
                        },
                        RestrictionKind::In(values) => format!(
                            "{} in {}",
                            r.column,
                            values.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                generalise: t
                    .generalise
                    .iter()
                    .map(|(c, g)| format!("{c} to {}", g.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .collect(),
    }
}

async fn approvals(State(console): Shared, Extension(visitor): Extension<Visitor>) -> Response {
    let user = match logged_in(&console, &visitor) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    if !is_reviewer(&user) {
        return refused(&console, &user, "the approvals", "reviewer");
    }
    let store = console.engine.approvals();
    let today = Utc::now().date_naive();
    let page = ApprovalsPage {
        layout: layout(&console, Some(&user), "Approvals", "approvals"),
        dir: store.dir().display().to_string(),
        today,
        problems: store.problems().iter().map(|p| split_problem(p)).collect(),
        approvals: store.all().iter().map(|a| approval_view(a, today)).collect(),
    };
    let mut note = AccessNote::new(
        "console.page",
        format!("{} approvals, {} problems", page.approvals.len(), page.problems.len()),
    );
    note.shown = page.approvals.len() as u64;
    render(StatusCode::OK, &page, note)
}

// ----- audit review ------------------------------------------------------------------

/// A log the user may read.
#[derive(Debug, Clone)]
struct LogChoice {
    key: String,
    label: String,
    path: std::path::PathBuf,
    register: Option<String>,
}

fn logs_for(console: &Console, user: &User) -> Vec<LogChoice> {
    let mut out = Vec::new();
    if is_reviewer(user) {
        out.push(LogChoice {
            key: "coordinator".into(),
            label: "Coordinator".into(),
            path: console.engine.audit().path().to_owned(),
            register: None,
        });
        out.push(LogChoice {
            key: "console".into(),
            label: "Console access".into(),
            path: console.config.audit_log.clone(),
            register: None,
        });
    }
    for n in &console.config.node_logs {
        if user.roles.contains(&Role::Holder(n.register.clone())) {
            out.push(LogChoice {
                key: format!("node:{}", n.register),
                label: format!("Node {}", n.register),
                path: n.path.clone(),
                register: Some(n.register.clone()),
            });
        }
    }
    out
}

/// The log named by `key` if the user may read it, or the refusal.
fn choose_log(console: &Console, user: &User, key: Option<&str>) -> Result<LogChoice, Box<Response>> {
    let choices = logs_for(console, user);
    let key = match key {
        Some(k) if !k.is_empty() => k,
        _ => match choices.first() {
            Some(c) => return Ok(c.clone()),
            None => {
                return Err(Box::new(refused(console, user, "any audit log", "reviewer or holder:<register>")));
            }
        },
    };
    if let Some(c) = choices.into_iter().find(|c| c.key == key) {
        return Ok(c);
    }
    let needs = match key.strip_prefix("node:") {
        Some(r) if console.config.node_logs.iter().any(|n| n.register == r) => {
            format!("holder:{r}")
        }
        Some(_) => {
            return Err(Box::new(render(
                StatusCode::NOT_FOUND,
                &message(
                    console,
                    Some(user),
                    "No such log",
                    "warn",
                    format!("This console is not configured with the log {key:?}."),
                ),
                AccessNote::new("console.page", "unknown log"),
            )));
        }
        None if key == "coordinator" || key == "console" => "reviewer".to_owned(),
        None => {
            return Err(Box::new(render(
                StatusCode::NOT_FOUND,
                &message(console, Some(user), "No such log", "warn", format!("There is no log {key:?}.")),
                AccessNote::new("console.page", "unknown log"),
            )));
        }
    };
    Err(Box::new(refused(console, user, &format!("the audit log {key:?}"), &needs)))
}

#[derive(Debug)]
struct RecordView {
    seq: u64,
    time: String,
    identity: String,
    project: String,
    decision: &'static str,
    rule: String,
    rows: u64,
    cells: u64,
    withheld: u64,
    near_identical: Option<String>,
    sql_short: String,
    sql: String,
    reason: String,
    registers: String,
    columns: String,
    disclosure: String,
    query_id: String,
    digest: String,
}

fn record_view(r: &AuditRecord) -> RecordView {
    let flat = r.sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let sql_short =
        if flat.chars().count() > 90 { format!("{}…", flat.chars().take(89).collect::<String>()) } else { flat };
    RecordView {
        seq: r.seq,
        time: r.time.get(..19).unwrap_or(&r.time).replace('T', " "),
        identity: r.identity.clone(),
        project: r.project.clone(),
        decision: r.decision.as_str(),
        rule: r.rule.clone(),
        rows: r.rows_released,
        cells: r.cells_released,
        withheld: r.cells_suppressed,
        near_identical: logs::near_identical(r),
        sql_short: if sql_short.is_empty() { "(no query)".to_owned() } else { sql_short },
        sql: r.sql.clone(),
        reason: r.reason.clone(),
        registers: r.registers.join(", "),
        columns: r.columns.join(", "),
        disclosure: if r.disclosure.is_null() { String::new() } else { r.disclosure.to_string() },
        query_id: r.query_id.clone(),
        digest: r.plan_digest.clone(),
    }
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    layout: Layout,
    logs: Vec<LogChoice>,
    log: String,
    label: String,
    path: String,
    broken: Option<BrokenView>,
    last_hash: Option<String>,
    total: usize,
    matched: usize,
    page: usize,
    pages: usize,
    identities: Vec<String>,
    projects: Vec<String>,
    rules: Vec<String>,
    outcomes: Vec<&'static str>,
    f_from: String,
    f_to: String,
    f_identity: String,
    f_project: String,
    f_outcome: String,
    f_rule: String,
    rows: Vec<RecordView>,
    prev_link: String,
    next_link: String,
    review_since: String,
}

#[derive(Debug)]
struct BrokenView {
    message: String,
    record: Option<u64>,
    line: Option<String>,
}

/// Percent-encodes a query-string value (everything but unreserved characters).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn non_empty(q: &HashMap<String, String>, k: &str) -> Option<String> {
    q.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn date(q: &HashMap<String, String>, k: &str) -> Option<NaiveDate> {
    non_empty(q, k).and_then(|v| NaiveDate::parse_from_str(&v, "%Y-%m-%d").ok())
}

async fn load(console: &Arc<Console>, path: std::path::PathBuf) -> Result<Arc<logs::Loaded>, String> {
    let c = console.clone();
    tokio::task::spawn_blocking(move || c.logs.load(&path)).await.map_err(|e| format!("reading the log failed: {e}"))?
}

async fn audit(State(console): Shared, Extension(visitor): Extension<Visitor>, Query(q): Params) -> Response {
    let user = match logged_in(&console, &visitor) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let choice = match choose_log(&console, &user, q.get("log").map(String::as_str)) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let loaded = match load(&console, choice.path.clone()).await {
        Ok(l) => l,
        Err(e) => {
            return render(
                StatusCode::SERVICE_UNAVAILABLE,
                &message(&console, Some(&user), "Log not readable", "broken", e.clone()),
                AccessNote::new("console.page", e),
            );
        }
    };
    let filter = Filter::new(
        date(&q, "from"),
        date(&q, "to"),
        non_empty(&q, "identity"),
        non_empty(&q, "project"),
        non_empty(&q, "outcome").as_deref().and_then(logs::parse_outcome),
        non_empty(&q, "rule"),
    );
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let (selected, matched) = logs::select(&loaded, &filter, page);
    let pages = matched.div_ceil(PAGE).max(1);
    let mut base = format!("/audit?log={}", enc(&choice.key));
    for (k, v) in [
        ("from", filter.from.map(|d| d.to_string())),
        ("to", filter.to.map(|d| d.to_string())),
        ("identity", filter.identity.clone()),
        ("project", filter.project.clone()),
        ("outcome", filter.outcome.map(|o| o.as_str().to_owned())),
        ("rule", filter.rule.clone()),
    ] {
        if let Some(v) = v {
            base.push_str(&format!("&{k}={}", enc(&v)));
        }
    }
    let rows: Vec<RecordView> = selected.iter().map(|r| record_view(r)).collect();
    let shown = rows.len() as u64;
    let view = AuditPage {
        layout: layout(&console, Some(&user), "Audit review", "audit"),
        logs: logs_for(&console, &user),
        log: choice.key.clone(),
        label: choice.label.clone(),
        path: choice.path.display().to_string(),
        broken: loaded.problem.as_ref().map(|b| BrokenView {
            message: b.message.clone(),
            record: b.record,
            line: b.line.clone(),
        }),
        last_hash: loaded.records.last().map(|r| r.hash.clone()),
        total: loaded.records.len(),
        matched,
        page,
        pages,
        identities: loaded.identities.iter().cloned().collect(),
        projects: loaded.projects.iter().filter(|p| !p.is_empty()).cloned().collect(),
        rules: loaded.rules.iter().filter(|p| !p.is_empty()).cloned().collect(),
        outcomes: vec!["accepted", "refused", "failed", "recovered"],
        f_from: filter.from.map(|d| d.to_string()).unwrap_or_default(),
        f_to: filter.to.map(|d| d.to_string()).unwrap_or_default(),
        f_identity: filter.identity.clone().unwrap_or_default(),
        f_project: filter.project.clone().unwrap_or_default(),
        f_outcome: filter.outcome.map(|o| o.as_str().to_owned()).unwrap_or_default(),
        f_rule: filter.rule.clone().unwrap_or_default(),
        rows,
        prev_link: format!("{base}&page={}", page.saturating_sub(1)),
        next_link: format!("{base}&page={}", page + 1),
        review_since: (Utc::now().date_naive() - chrono::Days::new(30)).to_string(),
    };
    let mut note = AccessNote::new(
        "console.page",
        format!(
            "audit log {}: {matched} of {} records match, chain {}",
            choice.key,
            view.total,
            if view.broken.is_some() { "BROKEN" } else { "intact" }
        ),
    );
    note.shown = shown;
    note.registers = choice.register.into_iter().collect();
    render(StatusCode::OK, &view, note)
}

#[derive(Template)]
#[template(path = "console/review.html")]
struct ReviewPage {
    layout: Layout,
    log: String,
    label: String,
    path: String,
    since: String,
    text: String,
}

/// The access review of `samkor audit report` for the chosen log.
async fn review_text(
    console: &Arc<Console>,
    user: &User,
    q: &HashMap<String, String>,
) -> Result<(LogChoice, String, String), Box<Response>> {
    let choice = choose_log(console, user, q.get("log").map(String::as_str))?;
    let since = date(q, "since").unwrap_or_else(|| Utc::now().date_naive() - chrono::Days::new(30)).to_string();
    let approvals: Vec<crate::audit_cli::ApprovalSummary> = console
        .engine
        .approvals()
        .all()
        .iter()
        .map(|a| crate::audit_cli::ApprovalSummary {
            project: a.project.clone(),
            title: a.title.clone(),
            valid_until: a.valid_until,
        })
        .collect();
    // The records the console keeps verified, not a second read of the file.
    let text = load(console, choice.path.clone()).await.and_then(|loaded| {
        let problem = loaded.problem.as_ref().map(|b| &b.message as &dyn std::fmt::Display);
        let today = Utc::now().date_naive();
        let period = crate::audit_cli::Period::parse(Some(&since), None)?;
        crate::audit_cli::report_of(&choice.path, &loaded.records, problem, &period, &approvals, today)
    });
    match text {
        Ok(text) => Ok((choice, since, text)),
        Err(e) => Err(Box::new(render(
            StatusCode::SERVICE_UNAVAILABLE,
            &message(console, Some(user), "Access review failed", "broken", e.clone()),
            AccessNote::new("console.review", e),
        ))),
    }
}

async fn review(State(console): Shared, Extension(visitor): Extension<Visitor>, Query(q): Params) -> Response {
    let user = match logged_in(&console, &visitor) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let (choice, since, text) = match review_text(&console, &user, &q).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let page = ReviewPage {
        layout: layout(&console, Some(&user), "Access review", "audit"),
        log: choice.key.clone(),
        label: choice.label.clone(),
        path: choice.path.display().to_string(),
        since: since.clone(),
        text,
    };
    let mut note = AccessNote::new("console.review", format!("access review of {} since {since}", choice.key));
    note.registers = choice.register.into_iter().collect();
    render(StatusCode::OK, &page, note)
}

async fn review_file(State(console): Shared, Extension(visitor): Extension<Visitor>, Query(q): Params) -> Response {
    let user = match logged_in(&console, &visitor) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let (choice, since, text) = match review_text(&console, &user, &q).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let name = format!("access-review-{}-since-{since}.txt", choice.key.replace(':', "-"));
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        text,
    )
        .into_response();
    let mut note =
        AccessNote::new("console.review", format!("access review of {} since {since} downloaded", choice.key));
    note.registers = choice.register.into_iter().collect();
    r.extensions_mut().insert(note);
    r
}

// ----- open comparisons --------------------------------------------------------------

#[derive(Debug)]
struct UnitRow {
    unit: String,
    operations: String,
    events: String,
    percent: String,
    note: String,
    class: &'static str,
}

#[derive(Template)]
#[template(path = "console/comparisons.html")]
struct ComparisonsPage {
    layout: Layout,
    indicators: Vec<(&'static str, &'static str)>,
    indicator_key: &'static str,
    title: &'static str,
    measure: &'static str,
    denominator: &'static str,
    events: &'static str,
    by: &'static str,
    year: i32,
    through: i32,
    period: String,
    years: Vec<i32>,
    identity: String,
    project: String,
    error: Option<String>,
    national: Option<String>,
    national_denominator: Option<u64>,
    svg: String,
    plotted: usize,
    units: usize,
    not_plotted: usize,
    rows: Vec<UnitRow>,
    sql: String,
}

fn shown<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "..".to_owned())
}

async fn comparisons(State(console): Shared, Extension(visitor): Extension<Visitor>, Query(q): Params) -> Response {
    let user = match logged_in(&console, &visitor) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let this_year = Utc::now().year();
    let years: Vec<i32> = (2010..=this_year).rev().collect();
    let indicator = q.get("indicator").and_then(|k| comparisons::indicator(k)).unwrap_or(&INDICATORS[0]);
    let by = q.get("by").and_then(|b| By::parse(b)).unwrap_or(By::Hospital);
    let year = q.get("year").and_then(|y| y.parse::<i32>().ok()).filter(|y| years.contains(y)).unwrap_or(this_year - 2);
    let through = q
        .get("through")
        .and_then(|y| y.parse::<i32>().ok())
        .filter(|y| years.contains(y) && *y >= year)
        .unwrap_or(year);
    let sql = comparisons::sql(indicator, by, year, through);
    let period = if through == year { year.to_string() } else { format!("{year}–{through}") };
    let caller = Caller {
        identity: console.config.query_identity.clone(),
        project: console.config.query_project.clone(),
        traceparent: None,
    };
    let mut page = ComparisonsPage {
        layout: layout(&console, Some(&user), "Open comparisons", "comparisons"),
        indicators: INDICATORS.iter().map(|i| (i.key, i.title)).collect(),
        indicator_key: indicator.key,
        title: indicator.title,
        measure: indicator.measure,
        denominator: indicator.denominator,
        events: indicator.events,
        by: by.column(),
        year,
        through,
        period: period.clone(),
        years,
        identity: caller.identity.clone(),
        project: caller.project.clone(),
        error: None,
        national: None,
        national_denominator: None,
        svg: String::new(),
        plotted: 0,
        units: 0,
        not_plotted: 0,
        rows: Vec::new(),
        sql: sql.clone(),
    };
    let answer = console.service.answer(caller, sql).await;
    let rows = match answer {
        Ok((_, batches)) => comparisons::rows(&batches).map_err(|e| e.to_string()),
        Err(status) => Err(format!("The coordinator did not answer the console's query: {}", status.message())),
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            page.error = Some(e.clone());
            return render(StatusCode::OK, &page, AccessNote::new("console.comparisons", e));
        }
    };
    let national = rows.iter().find(|r| r.unit.is_none() && !r.is_merged());
    let p0 = national.and_then(|r| r.percent);
    page.national = p0.map(|p| format!("{p:.2}"));
    page.national_denominator = national.and_then(|r| r.operations);
    let points: Vec<funnel::Point> = rows
        .iter()
        .filter(|r| r.plottable())
        .map(|r| funnel::Point {
            unit: r.unit.clone().unwrap_or_default(),
            denominator: r.operations.unwrap_or_default(),
            percent: r.percent.unwrap_or_default(),
        })
        .collect();
    let title = format!("{}, {period}, by {}", indicator.title, by.column());
    if let Some(p0) = p0 {
        page.svg =
            funnel::svg(&title, indicator.measure, &format!("Denominator ({})", indicator.denominator), &points, p0);
    }
    let unit_rows: Vec<&comparisons::Row> = rows.iter().filter(|r| r.unit.is_some() || r.is_merged()).collect();
    page.units = unit_rows.len();
    page.plotted = if p0.is_some() { points.len() } else { 0 };
    page.not_plotted = page.units - page.plotted;
    let mut by_unit: BTreeMap<&str, &funnel::Point> = BTreeMap::new();
    for p in &points {
        by_unit.insert(p.unit.as_str(), p);
    }
    page.rows = unit_rows
        .iter()
        .map(|r| {
            let plotted = p0.is_some() && r.plottable();
            let flag = match (p0, r.unit.as_deref().and_then(|u| by_unit.get(u))) {
                (Some(p0), Some(p)) if plotted => funnel::outlier(p, p0),
                _ => None,
            };
            UnitRow {
                unit: if r.is_merged() {
                    "(units below the threshold, merged)".to_owned()
                } else {
                    r.unit.clone().unwrap_or_default()
                },
                operations: shown(r.operations),
                events: shown(r.events),
                percent: shown(r.percent.map(|p| format!("{p:.2}"))),
                note: match (plotted, flag) {
                    (true, Some(f)) => format!("plotted; {f}"),
                    (true, None) => "plotted".to_owned(),
                    (false, _) if p0.is_none() => "not plotted (no national value)".to_owned(),
                    (false, _) => format!("withheld ({}), not plotted", r.withheld.join(", ")),
                },
                class: if !plotted {
                    "withheld"
                } else if flag.is_some() {
                    "outlier"
                } else {
                    ""
                },
            }
        })
        .collect();
    let mut note = AccessNote::new(
        "console.comparisons",
        format!("{title}: {} units plotted, {} withheld", page.plotted, page.not_plotted),
    );
    note.shown = page.units as u64;
    note.registers = vec!["hip".to_owned()];
    render(StatusCode::OK, &page, note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_split_into_file_line_and_message() {
        let p = split_problem("approvals/p-1.toml: line 12: dates reversed: valid_until …");
        assert_eq!((p.file.as_str(), p.line.as_str()), ("approvals/p-1.toml", "12"));
        assert!(p.message.starts_with("line 12: dates reversed"));
        let p = split_problem("approvals/x.toml: line 3, column 5: unknown field `titel`");
        assert_eq!(p.line, "3");
        let p = split_problem("approvals/y.toml: no [[tables]]");
        assert_eq!(p.line, "");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(enc("node:hip & x"), "node%3Ahip%20%26%20x");
    }
}
