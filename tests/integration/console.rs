//! The web console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver with fantoccini), against real
//! nodes and a real coordinator. One screenshot per page goes to
//! `target/console-screenshots/`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use samkor::console::{ConsoleConfig, RunningConsole};
use samkor::federation::{LocalFederation, LocalOptions};
use samkor_policies::audit::{self, AuditEntry, AuditLog, Decision};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the console tests need Debian's chromium and chromium-driver \
         (apt-get install -y chromium chromium-driver; .ci/run installs them)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run chromedriver ({e}): install Debian's chromium-driver (apt-get install -y chromium chromium-driver)")
        });
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on port {port} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                     "--disable-dev-shm-usage", "--window-size=1400,1100"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Waits (up to 20 s) until the browser has navigated to a URL containing `part`.
async fn wait_for_url(c: &Client, part: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = c.current_url().await.expect("url");
        if url.as_str().contains(part) {
            return;
        }
        assert!(Instant::now() < deadline, "the browser did not reach a URL with {part:?}; it is at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn body(c: &Client) -> String {
    c.find(Locator::Css("body")).await.expect("body").text().await.expect("text")
}

async fn login(c: &Client, console: &RunningConsole, user: &str) {
    c.goto(&console.login_link(user).expect("link")).await.expect("open login link");
    c.find(Locator::Id("login")).await.expect("login button").click().await.expect("log in");
    let who = match c.wait().at_most(Duration::from_secs(20)).for_element(Locator::Id("who")).await {
        Ok(e) => e.text().await.expect("name"),
        Err(e) => panic!("not logged in as {user} ({e}); the page says: {}", body(c).await),
    };
    assert_eq!(who, user);
}

async fn logout(c: &Client) {
    c.find(Locator::Css("form.logout button")).await.expect("logout button").click().await.expect("log out");
    wait_for_url(c, "/login").await;
    assert!(body(c).await.contains("Log in first"), "logged out");
}

/// A plain HTTP/1.1 request to the console: (status, headers lowercased, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the console");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A session cookie for `user` obtained the way a browser does (GET the link, POST the form).
fn session(console: &RunningConsole, user: &str) -> String {
    let link = console.login_link(user).expect("link");
    let token = link.split("token=").nth(1).expect("token");
    let origin = console.url();
    let (status, headers, _) = http(
        console.addr,
        "POST",
        "/login",
        &[("Origin", &origin), ("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={token}"),
    );
    assert_eq!(status, 303);
    let cookie = header(&headers, "set-cookie").expect("session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    cookie.split(';').next().expect("name=value").to_owned()
}

const EXPIRING: &str = r#"project = "E-soon"
title = "An approval about to run out"
ethics_reference = "Dnr 2026-09999-01"
ethics_authority = "Etikprövningsmyndigheten"
principal_investigator = "carol"
members = ["alice"]
purpose = "Show the expiry warning."
valid_from = 2020-01-01
valid_until = UNTIL
outputs = ["aggregate"]

[[tables]]
table = "hip.operations"
columns = ["person", "op_date", "region"]
generalise = { op_date = "year" }
  [[tables.rows]]
  column = "region"
  in = ["Skåne"]
"#;

/// Reversed dates on line 8: refused with file and line.
const BROKEN: &str = "project = \"X-broken\"\ntitle = \"t\"\nethics_reference = \"r\"\nethics_authority = \"a\"\n\
principal_investigator = \"alice\"\npurpose = \"p\"\nvalid_from = 2025-01-01\nvalid_until = 2024-01-01\n\
outputs = [\"aggregate\"]\n\n[[tables]]\ntable = \"hip.operations\"\ncolumns = [\"region\"]\n";

struct Setup {
    federation: LocalFederation,
    console: RunningConsole,
    config: ConsoleConfig,
}

/// Persons in the console's federation: enough for hospitals and regions
/// whose counts pass disclosure control over a run of years.
const CONSOLE_PERSONS: u64 = 40_000;

/// A synthetic federation for the console tests (generated once per run),
/// with approvals for the console's queries, one about to expire, one expired
/// and one that does not pass its checks.
fn console_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = super::common::shared_temp_dir("samkor-console-");
        let registers = samkor::federation::REGISTERS;
        samkor::certs::init(&dir.join("certs"), &registers, &["alice", "bob"]).expect("certificates");
        samkor::certs::write_federation_key(&dir.join("federation.key")).expect("federation key");
        samkor::synth::generate(&samkor::synth::SynthOptions { out: dir.clone(), persons: CONSOLE_PERSONS, seed: 11 })
            .expect("synthetic registers");
        samkor::federation::write_full_approval(&dir, "P-1", &["alice"], &["aggregate"], false).expect("approval");
        let approvals = dir.join("approvals");
        std::fs::write(approvals.join("open-comparisons.toml"), samkor::console::OPEN_COMPARISONS_APPROVAL)
            .expect("approval");
        let soon = chrono::Utc::now().date_naive() + chrono::Days::new(10);
        std::fs::write(approvals.join("E-soon.toml"), EXPIRING.replace("UNTIL", &soon.to_string())).expect("approval");
        let past = EXPIRING.replace("UNTIL", "2021-12-31").replace("E-soon", "E-past");
        std::fs::write(approvals.join("E-past.toml"), past).expect("approval");
        std::fs::write(approvals.join("X-broken.toml"), BROKEN).expect("approval");
        dir
    })
}

/// The federation with the console beside its coordinator.
async fn setup(extra_users: &str, extra_logs: &[(&str, &Path)]) -> Setup {
    let dir = console_dir();
    // Without the cell-key perturbation: the plot is compared with the same
    // SQL asked by a researcher of another project, whose record keys (and so
    // whose noise) differ from the console's project by design.
    let options = LocalOptions { perturbation: false, ..LocalOptions::default() };
    let federation = LocalFederation::start(dir, &options).await.expect("federation starts");
    let hip = federation.node("hip").expect("hip node").audit.path().to_owned();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut text = format!(
        "coordinator = \"unused.toml\"\nlisten = \"127.0.0.1:0\"\naudit_log = \"audit/console-{}-{n}.jsonl\"\n\n\
         [[users]]\nname = \"rita\"\nroles = [\"reviewer\"]\n\n[[users]]\nname = \"hanna\"\nroles = [\"holder:hip\"]\n{extra_users}\n\
         [[node_logs]]\nregister = \"hip\"\npath = {:?}\n",
        std::process::id(),
        hip.display().to_string()
    );
    for (register, path) in extra_logs {
        text.push_str(&format!("\n[[node_logs]]\nregister = {register:?}\npath = {:?}\n", path.display().to_string()));
    }
    let config = ConsoleConfig::parse(&dir.join("console.toml"), &text).expect("console config");
    let console =
        samkor::console::start(config.clone(), federation.coordinator.engine.clone()).await.expect("console starts");
    Setup { federation, console, config }
}

/// The released rows of `sql` asked as a researcher with the same disclosure settings (P-1: defaults).
async fn answer_of(federation: &LocalFederation, sql: &str) -> Vec<samkor::console::comparisons::Row> {
    let mut client = federation.client("alice", "P-1").await.expect("client");
    let (_, batches) = client.query(sql).await.expect("the comparison's SQL answers for a researcher");
    samkor::console::comparisons::rows(&batches).expect("indicator rows")
}

#[tokio::test(flavor = "multi_thread")]
async fn console_pages_in_a_real_browser() {
    // A tampered copy of a log, shown to the holder of lmr as a broken chain.
    let scratch = tempfile::tempdir().expect("tempdir");
    let tampered = scratch.path().join("lmr.jsonl");
    {
        let log = AuditLog::open(&tampered, "node:lmr").expect("log");
        for i in 0..6 {
            log.append(AuditEntry::accepted("coordinator", format!("q{i}"), format!("SELECT {i}")).project("P-1"))
                .expect("append");
        }
    }
    let text = std::fs::read_to_string(&tampered).expect("read").replacen("SELECT 3", "SELECT 4", 1);
    std::fs::write(&tampered, text).expect("tamper");

    let s = setup("\n[[users]]\nname = \"lars\"\nroles = [\"holder:lmr\"]\n", &[("lmr", &tampered)]).await;
    let (federation, console) = (&s.federation, &s.console);
    // Some queries on record: one answered, one refused.
    let mut alice = federation.client("alice", "P-1").await.expect("client");
    alice.query("SELECT region, count(*) AS n FROM hip.operations GROUP BY region").await.expect("answered");
    let mut bob = federation.client("bob", "P-1").await.expect("client");
    assert!(bob.query("SELECT count(*) FROM hip.operations").await.is_err(), "bob is not a member of P-1");

    let driver = driver();
    let c = browser(&driver).await;

    // Not logged in: every page says to log in.
    c.goto(&format!("{}/approvals", console.url())).await.expect("open");
    assert!(body(&c).await.contains("Log in first"));

    // --- the reviewer -------------------------------------------------------------------
    login(&c, console, "rita").await;
    let text = body(&c).await;
    assert!(text.contains("Federation status"), "{text}");
    for register in samkor::federation::REGISTERS {
        let row =
            c.find(Locator::XPath(&format!("//table[@id='nodes']//tr[td[1]='{register}']"))).await.expect("node row");
        let row = row.text().await.expect("row text");
        assert!(row.contains(" up "), "{register} is up: {row}");
    }
    assert!(text.contains("hip.operations") && text.contains("code system"), "catalogue shown");
    assert!(text.contains("ICD-10"), "code systems shown: {text}");
    shot(&c, "status").await;

    c.goto(&format!("{}/approvals", console.url())).await.expect("open");
    let expiring = c.find(Locator::Id("row-E-soon")).await.expect("E-soon row");
    assert_eq!(expiring.attr("class").await.expect("class").as_deref(), Some("expiring"));
    assert!(expiring.text().await.expect("text").contains("expires in 10 days"));
    assert_eq!(
        c.find(Locator::Id("row-E-past")).await.expect("E-past").attr("class").await.expect("class").as_deref(),
        Some("expired")
    );
    let problems = c.find(Locator::Id("problems")).await.expect("problems table").text().await.expect("text");
    assert!(problems.contains("X-broken.toml") && problems.contains("dates reversed"), "{problems}");
    let line =
        c.find(Locator::XPath("//table[@id='problems']//tr[td[contains(., 'X-broken')]]/td[2]")).await.expect("line");
    assert_eq!(line.text().await.expect("line"), "8");
    let text = body(&c).await;
    assert!(
        text.contains("region in \"Skåne\"") && text.contains("op_date to year"),
        "restrictions and generalisations"
    );
    assert!(text.contains("at least 5 persons per cell"), "disclosure settings");
    shot(&c, "approvals").await;

    c.goto(&format!("{}/audit?log=coordinator", console.url())).await.expect("open");
    let chain = c.find(Locator::Id("chain")).await.expect("chain").text().await.expect("text");
    assert!(chain.starts_with("Chain intact"), "{chain}");
    let records = c.find(Locator::Id("records")).await.expect("records").text().await.expect("text");
    assert!(records.contains("alice") && records.contains("bob") && records.contains("approval.member"), "{records}");
    assert!(c.find(Locator::Css("td.near")).await.is_ok(), "the near-identical-population column");
    // Follow a filter: refusals only.
    c.find(Locator::Id("f-outcome")).await.expect("outcome").select_by_value("refused").await.expect("select");
    c.find(Locator::Id("apply")).await.expect("apply").click().await.expect("filter");
    wait_for_url(&c, "outcome=refused").await;
    let decisions = c.find_all(Locator::Css("#records td.decision")).await.expect("cells");
    assert!(!decisions.is_empty(), "bob's refusal is listed");
    for d in decisions {
        assert_eq!(d.text().await.expect("text"), "refused");
    }
    shot(&c, "audit").await;
    c.find(Locator::LinkText("Access review")).await.expect("review link").click().await.expect("open review");
    wait_for_url(&c, "/audit/review?").await;
    let report = c.find(Locator::Id("report")).await.expect("report").text().await.expect("text");
    assert!(
        report.contains("== Queries per identity and project ==") && report.contains("approval.member"),
        "{report}"
    );
    assert!(report.contains("E-soon") && report.contains("expires in 10 days"), "{report}");
    shot(&c, "review").await;

    // Open comparisons: plotted values are the query's answer.
    let mut plotted = 0;
    let mut withheld = 0;
    for (indicator, by, year, through) in [
        ("mortality90", "region", 2010, 2024),
        ("reoperation", "hospital", 2019, 2019),
        ("coverage", "region", 2015, 2024),
    ] {
        c.goto(&format!("{}/comparisons?indicator={indicator}&by={by}&year={year}&through={through}", console.url()))
            .await
            .expect("open");
        let ind = samkor::console::comparisons::indicator(indicator).expect("indicator");
        let sql = samkor::console::comparisons::sql(
            ind,
            samkor::console::comparisons::By::parse(by).expect("by"),
            year,
            through,
        );
        assert_eq!(
            c.find(Locator::Id("sql")).await.expect("sql").prop("textContent").await.expect("sql").as_deref(),
            Some(sql.as_str())
        );
        let rows = answer_of(federation, &sql).await;
        let national = rows.iter().find(|r| r.unit.is_none() && !r.is_merged()).and_then(|r| r.percent);
        match national {
            Some(national) => {
                let line = c.find(Locator::Css("svg.funnel line.national")).await.expect("national line");
                let drawn: f64 =
                    line.attr("data-percent").await.expect("attr").expect("data-percent").parse().expect("number");
                assert_eq!(drawn, national);
            }
            None => {
                let text = c.find(Locator::Id("national")).await.expect("national").text().await.expect("text");
                assert!(text.contains("withheld by disclosure control"), "{text}");
                assert!(c.find(Locator::Css("svg.funnel")).await.is_err(), "no funnel without a national value");
            }
        }
        let mut circles = Vec::new();
        for e in c.find_all(Locator::Css("svg.funnel circle.unit")).await.expect("points") {
            let unit = e.attr("data-unit").await.expect("attr").expect("unit");
            let n: u64 = e.attr("data-denominator").await.expect("attr").expect("n").parse().expect("n");
            let p: f64 = e.attr("data-percent").await.expect("attr").expect("percent").parse().expect("percent");
            circles.push((unit, n, p));
        }
        let mut expected: Vec<(String, u64, f64)> = rows
            .iter()
            .filter(|r| national.is_some() && r.plottable())
            .map(|r| (r.unit.clone().expect("unit"), r.operations.expect("n"), r.percent.expect("percent")))
            .collect();
        circles.sort_by(|a, b| a.0.cmp(&b.0));
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(circles, expected, "{indicator} by {by}: the funnel draws exactly the released answer");
        let not_plotted = rows
            .iter()
            .filter(|r| (r.unit.is_some() || r.is_merged()) && (national.is_none() || !r.plottable()))
            .count();
        let marked = c.find_all(Locator::Css("#units tr.withheld")).await.expect("rows").len();
        assert_eq!(marked, not_plotted, "each withheld unit says it is not plotted");
        plotted += circles.len();
        withheld += not_plotted;
        shot(&c, &format!("comparisons-{indicator}-{by}")).await;
    }
    assert!(plotted > 0 && withheld > 0, "the pages show both plotted and withheld units ({plotted}, {withheld})");
    // The console's own queries are in the coordinator's log, as the console's identity.
    let coordinator_log = audit::read_all(federation.coordinator.engine.audit().path()).expect("coordinator log");
    assert!(coordinator_log.records.iter().any(|r| r.identity == "console"
        && r.project == "open-comparisons"
        && r.sql.contains("ROLLUP(o.region)")
        && r.decision == Decision::Accepted));
    logout(&c).await;

    // --- a register holder --------------------------------------------------------------
    login(&c, console, "hanna").await;
    c.goto(&format!("{}/approvals", console.url())).await.expect("open");
    let text = body(&c).await;
    assert!(text.contains("hanna may not open the approvals") && text.contains("reviewer"), "{text}");
    shot(&c, "refused").await;
    c.goto(&format!("{}/audit?log=coordinator", console.url())).await.expect("open");
    assert!(body(&c).await.contains("may not open the audit log \"coordinator\""));
    c.goto(&format!("{}/audit", console.url())).await.expect("open");
    let text = body(&c).await;
    assert!(text.contains("Node hip") && text.contains("Chain intact"), "{text}");
    let records = c.find(Locator::Id("records")).await.expect("records").text().await.expect("text");
    assert!(
        records.contains("coordinator") && records.contains("node.stream_end"),
        "the node's sub-queries: {records}"
    );
    shot(&c, "audit-node").await;
    logout(&c).await;

    // --- a holder whose log was tampered with ---------------------------------------------
    login(&c, console, "lars").await;
    c.goto(&format!("{}/audit?log=node:lmr", console.url())).await.expect("open");
    let chain = c.find(Locator::Id("chain")).await.expect("chain").text().await.expect("text");
    assert!(chain.contains("CHAIN BROKEN") && chain.contains("record 4 (line 4): hash does not match"), "{chain}");
    assert!(chain.contains("SELECT 4"), "the first bad record is shown: {chain}");
    shot(&c, "audit-broken").await;
    c.close().await.expect("close the browser");

    // --- headers, CSRF, Host, the download, the access log ---------------------------------
    let addr = console.addr;
    let cookie = session(console, "rita");
    let (status, headers, page) = http(addr, "GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200, "{page}");
    assert_eq!(header(&headers, "content-security-policy"), Some(samkor::console::CSP));
    assert!(!samkor::console::CSP.contains("script-src") && samkor::console::CSP.contains("default-src 'none'"));
    assert_eq!(header(&headers, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
    assert!(!page.contains("<script"), "no script anywhere");
    let (status, headers, file) =
        http(addr, "GET", "/audit/review.txt?log=coordinator&since=2000-01-01", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    assert!(header(&headers, "content-disposition").is_some_and(|d| d.starts_with("attachment;")));
    assert!(file.starts_with("ACCESS REVIEW: audit log ") && file.contains("== Refusals by rule =="), "{file}");
    let (status, _, _) = http(addr, "POST", "/logout", &[("Cookie", &cookie), ("Origin", "http://evil.example")], "");
    assert_eq!(status, 403, "a form from another origin is refused");
    let (status, _, _) = http(addr, "POST", "/logout", &[("Cookie", &cookie)], "");
    assert_eq!(status, 403, "a form without Origin is refused");
    let (status, _, _) =
        http(addr, "POST", "/logout", &[("Cookie", &cookie), ("Origin", "null"), ("Sec-Fetch-Site", "cross-site")], "");
    assert_eq!(status, 403, "an opaque origin from another site is refused");
    let (status, _, _) = http(addr, "GET", "/", &[("Cookie", &cookie), ("Host", "attacker.example:80")], "");
    assert_eq!(status, 421, "DNS rebinding: a foreign Host is refused");
    let (status, _, _) = http(addr, "GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200, "the session survived the refused forms");

    let access = audit::read_all(&s.config.audit_log).expect("console access log");
    assert!(access.problem.is_none(), "the console's log verifies");
    let r = &access.records;
    assert!(r.iter().any(|x| x.identity == "rita" && x.rule == "console.login" && x.decision == Decision::Accepted));
    assert!(r.iter().any(|x| x.identity == "hanna"
        && x.rule == "console.role"
        && x.decision == Decision::Refused
        && x.sql == "GET /approvals"));
    assert!(r.iter().any(|x| x.identity == "(not logged in)" && x.rule == "console.session"));
    assert!(r.iter().any(|x| x.rule == "console.origin" && x.decision == Decision::Refused));
    assert!(
        r.iter()
            .any(|x| x.identity == "rita" && x.sql.starts_with("GET /audit?log=coordinator") && x.rows_released > 0)
    );
    assert!(r.iter().all(|x| !x.sql.contains("token")), "login tokens are never logged");

    s.console.shutdown().await;
    s.federation.shutdown().await;
}

/// Page load with an audit log of 100 000 records (measurement, prints ms):
/// `cargo test --release --test integration console_page_load -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, prints page load times"]
async fn console_page_load_with_100k_records() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let big = scratch.path().join("npr.jsonl");
    let started = Instant::now();
    {
        let options = samkor_policies::audit::AuditOptions { sync: false, ..Default::default() };
        let (log, _) = AuditLog::open_with(&big, "node:npr", options).expect("log");
        for i in 0..100_000u64 {
            let who = ["coordinator", "coordinator", "mallory"][(i % 3) as usize];
            let e = if who == "mallory" {
                AuditEntry::refused(
                    who,
                    format!("q{i}"),
                    "SELECT * FROM npr.inpatient",
                    "holder.caller",
                    "not a coordinator",
                )
            } else {
                AuditEntry::accepted(who, format!("q{i}"), format!("SELECT hospital, count(*) FROM npr.inpatient WHERE admit_date > DATE '2020-01-01' AND los > {} GROUP BY hospital", i % 97))
                    .project(format!("P-{}", i % 12))
                    .registers(["npr"])
                    .columns(["npr.inpatient.hospital", "npr.inpatient.admit_date", "npr.inpatient.los"])
                    .released(21, 42, 3)
            };
            log.append(e).expect("append");
        }
    }
    println!(
        "generated 100 000 records in {:.1} s ({} MB)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&big).expect("meta").len() / 1_000_000
    );
    // The whole chain, read and verified as the console does at start (and every minute) in the background.
    let whole: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            let (contents, _) = samkor_policies::audit::read_all_at(&big).expect("readable");
            assert!(contents.problem.is_none() && contents.records.len() == 100_000);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let s = setup("\n[[users]]\nname = \"nils\"\nroles = [\"holder:npr\"]\n", &[("npr", &big)]).await;
    let t = Instant::now();
    s.console.logs_verified().await;
    let wait = t.elapsed().as_secs_f64() * 1000.0;
    let cookie = session(&s.console, "nils");
    let time = |path: &str| {
        let t = Instant::now();
        let (status, _, body) = http(s.console.addr, "GET", path, &[("Cookie", &cookie)], "");
        assert_eq!(status, 200, "{body}");
        t.elapsed().as_secs_f64() * 1000.0
    };
    let first = time("/audit?log=node:npr");
    let mut warm: Vec<f64> = (0..20).map(|_| time("/audit?log=node:npr")).collect();
    let mut filtered: Vec<f64> =
        (0..20).map(|_| time("/audit?log=node:npr&outcome=refused&identity=mallory&page=3")).collect();
    let mut deep: Vec<f64> = (0..5).map(|_| time("/audit?log=node:npr&page=999")).collect();
    let review = time("/audit/review?log=node:npr&since=2000-01-01");
    // After an append, only the new record is read and verified.
    {
        let options = samkor_policies::audit::AuditOptions { sync: false, ..Default::default() };
        let (log, _) = AuditLog::open_with(&big, "node:npr", options).expect("reopen");
        log.append(AuditEntry::accepted("coordinator", "q-new", "SELECT 1")).expect("append");
    }
    let appended = time("/audit?log=node:npr");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut whole = whole;
    println!(
        "audit log of 100 000 records: whole-chain verification (background) median {:.0} ms of 3, \
         console ready {wait:.0} ms after start",
        median(&mut whole)
    );
    println!(
        "audit page: first page {first:.1} ms; then median {:.1} ms unfiltered, \
         {:.1} ms filtered, {:.1} ms last page; access review {review:.0} ms; after one append {appended:.1} ms",
        median(&mut warm),
        median(&mut filtered),
        median(&mut deep)
    );
    s.console.shutdown().await;
    s.federation.shutdown().await;
}
