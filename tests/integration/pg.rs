//! A throwaway PostgreSQL server for one test: Debian's binaries, a cluster
//! in a temporary directory, a free loopback port, stopped when dropped.
//!
//! A missing PostgreSQL installation fails the test loudly (install it with
//! `apt-get install -y postgresql`; `.ci/run` does). As root, the server runs
//! as the `postgres` user (the server refuses to run as root).

use std::path::PathBuf;
use std::process::Command;

/// A running server; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Run the binaries as this user (when the tests run as root).
    user: Option<String>,
    pub port: u16,
}

fn server_binaries() -> PathBuf {
    let mut found: Vec<PathBuf> = glob::glob("/usr/lib/postgresql/*/bin")
        .expect("glob pattern")
        .filter_map(Result::ok)
        .filter(|p| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: \
             these tests need a real database; install it with `apt-get install -y postgresql` (.ci/run does)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

impl Postgres {
    /// Creates a cluster and starts it; returns once it accepts connections.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// A server with TLS on (`cert`, `key`: its certificate and key, PEM) that
    /// refuses unencrypted TCP connections (`hostssl` only in pg_hba.conf);
    /// the Unix socket ([`Postgres::socket_url`]) stays open without TLS, for loading.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Postgres {
        Postgres::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&std::path::Path, &std::path::Path)>) -> Postgres {
        let bin = server_binaries();
        let dir = tempfile::Builder::new().prefix("samkor-pg-").tempdir().expect("tempdir");
        let user = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &user {
            let status = Command::new("chown").arg("-R").arg(user).arg(dir.path()).status().expect("chown");
            assert!(status.success(), "cannot give {} to the {user} user", dir.path().display());
        }
        let pg = Postgres { dir, bin, user, port: free_port() };
        pg.run(
            "initdb",
            &["-D", &pg.data(), "-U", "samkor", "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"],
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c log_statement=all -c log_parameter_max_length=-1",
            pg.port,
            pg.dir.path().display()
        );
        if let Some((cert, key)) = tls {
            // The server reads its key only if the key is private to the server's user.
            let (server_cert, server_key) = (pg.dir.path().join("server.pem"), pg.dir.path().join("server.key"));
            std::fs::copy(cert, &server_cert).expect("server certificate");
            std::fs::copy(key, &server_key).expect("server key");
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600)).expect("key mode");
            }
            let data = std::path::PathBuf::from(pg.data());
            std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
                .expect("pg_hba.conf");
            // In the config file, not on the command line, so a test can turn TLS off (ALTER SYSTEM, reload).
            let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("postgresql.conf");
            conf.push_str(&format!(
                "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nlog_connections = on\n",
                server_cert.display(),
                server_key.display()
            ));
            std::fs::write(data.join("postgresql.conf"), conf).expect("postgresql.conf");
            if let Some(user) = &pg.user {
                let status = Command::new("chown").arg("-R").arg(user).arg(pg.dir.path()).status().expect("chown");
                assert!(status.success(), "cannot give the TLS files to the {user} user");
            }
        }
        pg.run(
            "pg_ctl",
            &["-D", &pg.data(), "-l", &pg.log().display().to_string(), "-o", &options, "-w", "-t", "60", "start"],
        );
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The server's log: every statement it ran, with its parameters.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The connection string of the database (trust authentication on loopback).
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=samkor dbname=postgres", self.port)
    }

    /// The connection string over the server's Unix socket (no TLS needed there).
    pub fn socket_url(&self) -> String {
        format!("host={} port={} user=samkor dbname=postgres", self.dir.path().display(), self.port)
    }

    /// A client of the database (over the Unix socket).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.socket_url(), tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }

    /// Stops the server now (a database that goes down).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).output();
    }
}

/// A private copy of the synthetic federation with `registers` loaded into
/// `pg` and their nodes serving from it (the other registers from files).
pub async fn federation_dir(pg: &Postgres, registers: &[&str]) -> tempfile::TempDir {
    let dir = crate::common::private_copy();
    samkor::synth::postgres::load(dir.path(), &pg.socket_url(), registers)
        .await
        .expect("registers load into PostgreSQL");
    // The nodes connect over TCP, as a holder's node would.
    for register in registers {
        samkor::synth::postgres::serve_from_postgres(dir.path(), register, &pg.url()).expect("node config");
    }
    dir
}
