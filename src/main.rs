//! The `samkor` binary: one command, several roles.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Federated statistics over health and population registers.
#[derive(Debug, Parser)]
#[command(
    name = "samkor",
    version,
    about,
    after_help = "Start with `samkor demo`: a synthetic federation on this machine and a showcase. \
                  README.md shows how to run one by hand.\n\
                  Logs: SAMKOR_LOG (e.g. SAMKOR_LOG=debug), in colour on a terminal unless NO_COLOR is set.\n\
                  Exit status: 0 done, 1 failed or refused (the reason on standard error), 2 wrong usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a deterministic synthetic federation: five registers with Parquet
    /// data, node configs, development certificates and a federation key.
    Synth(SynthArgs),
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a register node.
    Node(NodeArgs),
    /// Run one of a holder's workers, which scan a node's files for it (`[cluster]` in node.toml).
    Worker(WorkerArgs),
    /// Run the coordinator.
    Coordinator(CoordinatorArgs),
    /// Run the coordinator with its read-only web console beside it (loopback only; prints login links).
    Console(ConsoleArgs),
    /// Run a SQL query through a coordinator.
    Query(QueryArgs),
    /// Generate (once) and start a demo federation on this machine, and run a short showcase.
    Demo(DemoArgs),
    /// Approval documents.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate every approval document in DIR (offline), optionally against a federation's node configs.
    Check {
        dir: PathBuf,
        /// A federation directory (one sub-directory per register with its node.toml).
        #[arg(long)]
        federation: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain; points at the first bad record.
    Verify { file: PathBuf },
    /// List records in a readable table.
    Show {
        file: PathBuf,
        #[arg(long)]
        project: Option<String>,
        /// RFC 3339 time or YYYY-MM-DD.
        #[arg(long)]
        since: Option<String>,
    },
    /// The recurring access review: per identity and project, refusals, expiring approvals.
    /// Covers the whole log unless --since/--until narrow it.
    Report {
        file: PathBuf,
        /// Start of the period (inclusive): RFC 3339 time or YYYY-MM-DD. Default: the first record.
        #[arg(long)]
        since: Option<String>,
        /// End of the period (exclusive): RFC 3339 time, or YYYY-MM-DD to include that day. Default: the last record.
        #[arg(long)]
        until: Option<String>,
        /// The approvals directory, for approvals that expired or are about to.
        #[arg(long)]
        approvals: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct CoordinatorArgs {
    /// The coordinator's config file.
    #[arg(long, env = "SAMKOR_COORDINATOR_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ConsoleArgs {
    /// The console's config file (names the coordinator config, users and roles; docs/console.md).
    #[arg(long, env = "SAMKOR_CONSOLE_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct IdentityArgs {
    /// Your certificate (PEM), issued by the federation CA.
    #[arg(long, env = "SAMKOR_CERT")]
    cert: PathBuf,
    /// Your private key (PEM).
    #[arg(long, env = "SAMKOR_KEY")]
    key: PathBuf,
    /// The federation CA certificate (PEM).
    #[arg(long, env = "SAMKOR_CA")]
    ca: PathBuf,
}

#[derive(Debug, clap::Args)]
struct QueryArgs {
    /// Coordinator address, HOST:PORT (e.g. 127.0.0.1:47100).
    #[arg(long, env = "SAMKOR_COORDINATOR")]
    coordinator: String,
    /// The approved project the query runs for; `direct` for a care provider's own hospital's data.
    #[arg(long, env = "SAMKOR_PROJECT")]
    project: String,
    #[command(flatten)]
    identity: IdentityArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: samkor::output::Format,
    /// Write the result to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Read the SQL from this file.
    #[arg(long, conflicts_with = "sql")]
    file: Option<PathBuf>,
    /// The SQL query (or --file).
    sql: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Where the synthetic federation is generated (once) and kept
    /// [default: $XDG_CACHE_HOME/samkor/demo, or ~/.cache/samkor/demo].
    #[arg(long, env = "SAMKOR_DEMO_DIR")]
    dir: Option<PathBuf>,
    /// Number of synthetic persons. A different number (or seed) than the
    /// directory holds regenerates it in place: one federation is kept, not one per size.
    #[arg(long, default_value_t = 200_000)]
    persons: u64,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the federation running after the showcase and print how to connect.
    #[arg(long)]
    serve: bool,
    /// Remove the demo directory (data, certificates, audit logs, server log) and exit.
    #[arg(long, conflicts_with = "serve")]
    clean: bool,
}

#[derive(Debug, clap::Args)]
struct SynthArgs {
    /// Output directory (one sub-directory per register).
    #[arg(long, env = "SAMKOR_SYNTH_OUT")]
    out: PathBuf,
    /// Number of persons in the population.
    #[arg(long, default_value_t = 100_000)]
    persons: u64,
    /// Seed; the same seed and size give the same data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The coordinator's port; the nodes get the next five (hip, npr, lmr, dors, pop).
    #[arg(long, env = "SAMKOR_SYNTH_BASE_PORT", default_value_t = samkor::synth::BASE_PORT, value_parser = clap::value_parser!(u16).range(1..=65530))]
    base_port: u16,
    /// Also load the registers into this PostgreSQL database (a connection
    /// string, e.g. `host=localhost user=samkor dbname=registers`) and make
    /// the nodes serve from it; the string goes to `<register>/postgres.conn`.
    #[arg(long, env = "SAMKOR_SYNTH_POSTGRES", hide_env_values = true)]
    postgres: Option<String>,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Issue more certificates (e.g. for a holder's workers) from the development CA in DIR.
    Issue {
        /// The directory `certs init` wrote (holds ca.pem and ca.key); the certificates go there.
        #[arg(long)]
        dir: PathBuf,
        /// Certificate names (the common name is the identity), e.g. worker-lmr-1.
        #[arg(required = true, value_delimiter = ',')]
        names: Vec<String>,
    },
    /// Create a development CA and certificates for a coordinator, nodes and users.
    Init {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Registers to issue node certificates for (`node-<register>`).
        #[arg(long, value_delimiter = ',', default_value = "hip,npr,lmr,dors,pop")]
        nodes: Vec<String>,
        /// Users to issue certificates for (the common name is the identity).
        #[arg(long, value_delimiter = ',', default_value = "alice,bob")]
        users: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The node's config file.
    #[arg(long, env = "SAMKOR_NODE_CONFIG")]
    config: PathBuf,
    /// Listen on this address instead of the config's `listen`.
    #[arg(long, env = "SAMKOR_NODE_LISTEN")]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    /// Address to listen on: loopback or one address of the holder's private network
    /// (port 0 picks a free port; the address is printed).
    #[arg(long, env = "SAMKOR_WORKER_LISTEN")]
    listen: std::net::SocketAddr,
    /// The directory holding the node's data files; the worker reads nothing outside it.
    #[arg(long, env = "SAMKOR_WORKER_DATA")]
    data: PathBuf,
    /// The worker's certificate (PEM), issued by the federation CA and carrying the host
    /// the node dials (`samkor certs issue`). Required: a worker serves only over mutual TLS.
    #[arg(long, env = "SAMKOR_WORKER_CERT")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = "SAMKOR_WORKER_KEY")]
    key: Option<PathBuf>,
    /// The federation CA certificate (PEM); the node's client certificate must chain to it.
    #[arg(long, env = "SAMKOR_WORKER_CA")]
    ca: Option<PathBuf>,
    /// Certificate name of the holder's node that may send plans (e.g. node-lmr); repeat or
    /// separate with commas for several.
    #[arg(long = "node", value_name = "NAME", env = "SAMKOR_WORKER_NODES", value_delimiter = ',')]
    nodes: Vec<String>,
}

const REGISTERS: [&str; 5] = ["hip", "npr", "lmr", "dors", "pop"];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().thread_stack_size(8 << 20).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("samkor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The demo's in-process servers log to a file in the demo directory, so
    // the showcase and the connection snippet stay readable.
    let log_file = match &cli.command {
        Command::Demo(args) if !args.clean => match demo_setup(args) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("samkor: {}", one_message(&e));
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    // The OTLP exporter needs the runtime to exist.
    let telemetry = runtime.block_on(async { init_tracing(log_file) });
    let result = runtime.block_on(run(cli));
    if let Some(provider) = telemetry {
        let _ = provider.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`samkor query … | head`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("samkor: {}", one_message(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: our messages often quote their cause already.
fn one_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Prints a command's text; a closed pipe (`| head`) is an error for `main` to end quietly on, not a panic.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Logs to standard error (`SAMKOR_LOG`, an `EnvFilter`), in colour only on a
/// terminal (and without `NO_COLOR`); with `log_file`, the log goes there and
/// only warnings reach standard error. With the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported over OTLP/gRPC.
fn init_tracing(log_file: Option<std::fs::File>) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || EnvFilter::try_from_env("SAMKOR_LOG").unwrap_or_else(|_| EnvFilter::new("warn,samkor=info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let terminal = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let (terminal, file) = match log_file {
        None => (terminal.with_filter(filter()), None),
        Some(file) => (
            terminal.with_filter(EnvFilter::new("warn")),
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(file))
                    .with_ansi(false)
                    .with_filter(filter()),
            ),
        ),
    };
    let provider =
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("samkor").build())
                    .build(),
            ),
            Err(e) => {
                eprintln!("samkor: OpenTelemetry export disabled: {e}");
                None
            }
        });
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(p.tracer("samkor")).with_filter(filter())
    });
    let _ = tracing_subscriber::registry().with(terminal).with(file).with(otel).try_init();
    provider
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth(args) => synth(args).await,
        Command::Certs { command: CertsCommand::Init { out, nodes, users } } => {
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let users: Vec<&str> = users.iter().map(String::as_str).collect();
            samkor::certs::init(&out, &nodes, &users)?;
            println!("development CA and certificates written to {}", out.display());
            Ok(())
        }
        Command::Certs { command: CertsCommand::Issue { dir, names } } => {
            samkor::certs::issue(&dir, &names)?;
            println!("certificates for {} written to {}", names.join(", "), dir.display());
            Ok(())
        }
        Command::Node(args) => node(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Coordinator(args) => coordinator(args).await,
        Command::Console(args) => console(args).await,
        Command::Query(args) => query(args).await,
        Command::Demo(args) => demo(args).await,
        Command::Policy { command: PolicyCommand::Check { dir, federation } } => {
            let report = samkor::policy_cli::check(&dir, federation.as_deref()).map_err(anyhow::Error::msg)?;
            print_out(&report)
        }
        Command::Audit { command } => audit(command),
    }
}

async fn synth(args: SynthArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let certs = args.out.join("certs");
    if !certs.join("ca.pem").exists() {
        let mut users = vec!["alice", "bob"];
        users.extend(samkor::synth::care_providers());
        samkor::certs::init(&certs, &REGISTERS, &users)?;
    }
    let key = args.out.join("federation.key");
    if !key.exists() {
        samkor::certs::write_federation_key(&key)?;
    }
    write_coordinator_config(&args.out, args.base_port)?;
    let summary = samkor::synth::generate(&samkor::synth::SynthOptions {
        out: args.out.clone(),
        persons: args.persons,
        seed: args.seed,
    })?;
    samkor::synth::move_ports(&args.out, args.base_port)?;
    samkor::federation::write_full_approval(&args.out, samkor::demo::DEMO_PROJECT, &["alice"], &["aggregate"], false)?;
    let node_logs: Vec<(String, PathBuf)> =
        REGISTERS.iter().map(|r| ((*r).to_owned(), PathBuf::from(r).join("audit.jsonl"))).collect();
    samkor::console::write_local_files(&args.out, &node_logs)?;
    let mut table = comfy_table::Table::new();
    table.set_header(["register", "table", "rows", "files"]);
    for t in &summary.tables {
        table.add_row([t.register.clone(), t.table.clone(), t.rows.to_string(), t.files.to_string()]);
    }
    println!("{table}");
    println!(
        "{} persons (seed {}), {} opt-outs, written to {} in {:.1} s",
        args.persons,
        args.seed,
        summary.opted_out,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(url) = &args.postgres {
        let loaded = samkor::synth::postgres::load(&args.out, url, &REGISTERS).await?;
        let rows: u64 = loaded.iter().map(|l| l.rows).sum();
        println!(
            "loaded {rows} rows into {} tables of the PostgreSQL database; the node configs now serve from it \
             (connection string in <register>/{})",
            loaded.len(),
            samkor::synth::postgres::CONNECTION_FILE
        );
    }
    Ok(())
}

/// Ctrl-C, listened for from the moment this is called. Tokio's `ctrl_c()`
/// installs its handler only when first polled, so a line printed before the
/// wait ("Press Ctrl-C to stop.") could be answered by a signal that still
/// killed the process the default way; call this before printing it.
fn interrupt() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupts = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
        Ok(async move {
            interrupts.recv().await;
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let mut config = samkor_node::NodeConfig::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.node.listen = listen;
    }
    let node = samkor_node::start(config).await?;
    let interrupted = interrupt()?;
    println!("node {} listening on {} (mutual TLS 1.3)", node.state.register(), node.addr);
    tokio::select! {
        r = node.wait() => r.context("the node server stopped")?,
        _ = interrupted => println!("stopping"),
    }
    Ok(())
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let options = samkor_node::worker::WorkerOptions {
        listen: args.listen,
        data: args.data,
        cert: args.cert,
        key: args.key,
        ca: args.ca,
        nodes: args.nodes,
    };
    let worker = samkor_node::worker::start(&options).await?;
    let interrupted = interrupt()?;
    println!("worker listening on {} (mutual TLS 1.3, for {} only)", worker.addr, options.nodes.join(", "));
    tokio::select! {
        r = worker.wait() => r.context("the worker server stopped")?,
        _ = interrupted => println!("stopping"),
    }
    Ok(())
}

/// The coordinator config of a synth directory, with the nodes' configured ports.
fn write_coordinator_config(out: &std::path::Path, base_port: u16) -> anyhow::Result<()> {
    let addresses: Vec<(String, String)> = samkor::synth::ports(base_port)
        .into_iter()
        .map(|(r, port)| (r.to_owned(), format!("127.0.0.1:{port}")))
        .collect();
    let options = samkor::federation::LocalOptions::default();
    let text = samkor::federation::coordinator_toml(&format!("127.0.0.1:{base_port}"), &addresses, &options);
    std::fs::create_dir_all(out)?;
    let path = out.join("coordinator.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let config = samkor_coordinator::CoordinatorConfig::load(&args.config)?;
    let running = samkor_coordinator::start(config).await?;
    let interrupted = interrupt()?;
    println!("coordinator serving Flight SQL on {} (mutual TLS 1.3)", running.addr);
    tokio::select! {
        r = running.wait() => r.context("the coordinator stopped")?,
        _ = interrupted => println!("stopping"),
    }
    Ok(())
}

async fn console(args: ConsoleArgs) -> anyhow::Result<()> {
    let config = samkor::console::ConsoleConfig::load(&args.config)?;
    let coordinator = samkor_coordinator::CoordinatorConfig::load(&config.coordinator)?;
    let running = samkor_coordinator::start(coordinator).await?;
    let interrupted = interrupt()?;
    println!("coordinator serving Flight SQL on {} (mutual TLS 1.3)", running.addr);
    let users: Vec<String> = config.users.iter().map(|u| u.name.clone()).collect();
    let console = samkor::console::start(config, running.engine.clone()).await?;
    println!("console on {} (loopback only). One-time login links, valid 15 minutes:", console.url());
    for user in users {
        println!("  {user}: {}", console.login_link(&user)?);
    }
    println!("Type a user's name and Enter for a new link.");
    let (tx, mut names) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.blocking_send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    let links = async {
        while let Some(name) = names.recv().await {
            match console.login_link(&name) {
                Ok(link) => println!("  {name}: {link}"),
                Err(e) => println!("  {e}"),
            }
        }
        // Standard input closed: keep serving.
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = running.wait() => r.context("the coordinator stopped")?,
        _ = links => {}
        _ = interrupted => println!("stopping"),
    }
    console.shutdown().await;
    Ok(())
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let sql = match (&args.sql, &args.file) {
        (Some(sql), None) => sql.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        _ => anyhow::bail!("give the SQL as an argument or with --file"),
    };
    let files = samkor_proto::tls::TlsFiles { cert: args.identity.cert, key: args.identity.key, ca: args.identity.ca };
    let identity = files.load()?;
    let run = async {
        let mut client = samkor::client::Client::connect(&args.coordinator, &identity, &args.project).await?;
        client.query(&sql).await
    };
    tokio::pin!(run);
    let result = tokio::select! {
        r = &mut run => r,
        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_message("running at the nodes…");
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            let r = tokio::select! {
                r = &mut run => r,
                _ = tokio::signal::ctrl_c() => { spinner.finish_and_clear(); anyhow::bail!("cancelled"); }
            };
            spinner.finish_and_clear();
            r
        }
    };
    let (schema, batches) = result?;
    samkor::output::write(args.format, &schema, &batches, args.out.as_deref())?;
    Ok(())
}

/// Before logging starts: says where the demo keeps its files, generates the
/// federation if needed and opens the server log in the demo directory.
fn demo_setup(args: &DemoArgs) -> anyhow::Result<std::fs::File> {
    let dir = args.dir.clone().unwrap_or_else(samkor::demo::default_dir);
    let started = std::time::Instant::now();
    if !samkor::demo::is_prepared(&dir, args.persons, args.seed) {
        println!(
            "Generating a synthetic federation of {} persons (seed {}) in {} (once for this size and seed; a different --persons or --seed replaces it)…",
            args.persons,
            args.seed,
            dir.display()
        );
    }
    if samkor::demo::prepare(&dir, args.persons, args.seed)? {
        println!("Generated in {:.1} s.", started.elapsed().as_secs_f64());
    }
    let log = dir.join(samkor::demo::LOG_FILE);
    let file =
        std::fs::File::create(&log).with_context(|| format!("cannot write the demo's server log {}", log.display()))?;
    println!("{}", samkor::demo::where_things_are(&dir));
    Ok(file)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(samkor::demo::default_dir);
    if args.clean {
        println!("{}", samkor::demo::clean(&dir)?);
        return Ok(());
    }
    let federation = samkor::demo::start(&dir).await?;
    println!(
        "samkor demo: five register nodes (hip, npr, lmr, dors, pop) and a coordinator on loopback, mutual TLS 1.3."
    );
    println!(
        "Synthetic data only. The researcher is `{}`, project `{}`.",
        samkor::demo::DEMO_USER,
        samkor::demo::DEMO_PROJECT
    );
    println!(
        "Every answer passes disclosure control: cells count distinct persons, and cells of fewer than 5 are withheld (shown as ..)."
    );
    samkor::demo::showcase(&federation).await?;
    if args.serve {
        println!(
            "\nFlight SQL endpoint: grpc+tls://{} (client certificates in {}/certs)",
            federation.coordinator_addr(),
            dir.display()
        );
        println!("Connect from Python (pip install adbc-driver-flightsql pyarrow pandas):\n");
        println!("{}", samkor::demo::python_snippet(&dir, &federation.coordinator_addr()));
        println!(
            "\nOr from the CLI:\n  samkor query --coordinator {} --project {} --cert {d}/certs/alice.pem --key {d}/certs/alice.key --ca {d}/certs/ca.pem \"SELECT count(*) FROM pop.persons\"",
            federation.coordinator_addr(),
            samkor::demo::DEMO_PROJECT,
            d = dir.display()
        );
        let console = samkor::demo::serve_console(&dir, &federation).await?;
        println!("\nWeb console: {} (loopback only). One-time login links, valid 15 minutes:", console.url());
        for user in ["rita", "hanna"] {
            println!("  {user}: {}", console.login_link(user)?);
        }
        let interrupted = interrupt()?;
        println!("\nPress Ctrl-C to stop.");
        interrupted.await;
        console.shutdown().await;
    }
    federation.shutdown().await;
    Ok(())
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    let text = match command {
        AuditCommand::Verify { file } => samkor::audit_cli::verify(&file),
        AuditCommand::Show { file, project, since } => {
            samkor::audit_cli::show(&file, project.as_deref(), since.as_deref())
        }
        AuditCommand::Report { file, since, until, approvals } => {
            let summaries: Vec<samkor::audit_cli::ApprovalSummary> = match approvals {
                Some(dir) => {
                    let (found, problems) = samkor_policies::approval::load_dir(
                        &dir,
                        &samkor_policies::approval::DisclosureDefaults::default(),
                        None,
                    );
                    for p in problems {
                        eprintln!("samkor: {p}");
                    }
                    found
                        .into_iter()
                        .map(|a| samkor::audit_cli::ApprovalSummary {
                            project: a.project,
                            title: a.title,
                            valid_until: a.valid_until,
                        })
                        .collect()
                }
                None => Vec::new(),
            };
            samkor::audit_cli::report(&file, since.as_deref(), until.as_deref(), &summaries)
        }
    };
    print_out(&text.map_err(anyhow::Error::msg)?)
}
