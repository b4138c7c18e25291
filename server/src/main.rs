//! `crsql-sync`: `serve` (the hub), `sync` (a client for any SQLite file),
//! `status`, `hash-token`. See docs/server.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use crsql_sync::{auth, client, hub, status, tls};

#[derive(Parser)]
#[command(
    name = "crsql-sync",
    version,
    about = "Sync hub and client for crsql_stream databases"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the hub: one database per tenant, clients at ws://ADDR/<tenant>.
    Serve {
        /// Directory of the tenant databases (<tenant>.db), created if missing.
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0: any free port).
        #[arg(long)]
        listen: SocketAddr,
        /// Directory of schema files <tenant>.sql, run when a tenant is
        /// created and again at every open (must be idempotent).
        #[arg(long)]
        schema_dir: Option<PathBuf>,
        /// Auth file (TOML): tenants, token hashes, writers. Without it every
        /// tenant is open.
        #[arg(long)]
        auth: Option<PathBuf>,
        /// TLS certificate chain (PEM); with --tls-key, serve wss://.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Largest frame accepted, in bytes.
        #[arg(long, default_value_t = 4 << 20)]
        max_frame: usize,
        /// Packages sent to a client ahead of its acknowledgements.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Seconds a client may take to read one frame before it is dropped.
        #[arg(long, default_value_t = 60)]
        write_timeout: u64,
        /// Scale-out: NATS server URL (nats://HOST:PORT, JetStream enabled).
        /// Hubs with the same --nats serve the same tenants and exchange
        /// what their clients push (docs/server.md).
        #[arg(long)]
        nats: Option<String>,
        /// How long JetStream keeps a package ("90s", "12h", "7d"); a hub
        /// away for longer resyncs from a peer hub.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        nats_max_age: Duration,
    },
    /// Sync a SQLite file with a hub: push and pull until caught up (--once)
    /// or stay connected, reconnecting with backoff.
    Sync {
        /// The database (its CRRs must match the tenant's schema).
        #[arg(long)]
        db: PathBuf,
        /// ws://HOST:PORT/<tenant> or wss://…; repeat it (or separate with
        /// commas) for the hubs of a cluster: a lost connection moves on to
        /// the next one.
        #[arg(long = "url", required = true, value_delimiter = ',')]
        url: Vec<String>,
        /// Token (or set CRSQL_SYNC_TOKEN).
        #[arg(long, env = "CRSQL_SYNC_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Stop once everything is pushed and pulled.
        #[arg(long)]
        once: bool,
        /// Trust this CA certificate (PEM) too, e.g. a self-signed hub's.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Give up after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Milliseconds between looks for local commits.
        #[arg(long, default_value_t = 50)]
        poll_ms: u64,
        /// Progress bar: auto (when stdout is a terminal), always, never.
        #[arg(long, default_value = "auto")]
        progress: String,
    },
    /// Streams, peers, positions and lag of a database.
    Status {
        #[arg(long)]
        db: PathBuf,
    },
    /// Print the sha256 of a token, as the auth file stores it.
    HashToken { token: String },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CRSQL_SYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            data,
            listen,
            schema_dir,
            auth,
            tls_cert,
            tls_key,
            max_frame,
            window,
            write_timeout,
            nats,
            nats_max_age,
        } => {
            let auth = match auth.map(|p| auth::Auth::load(&p)).transpose() {
                Ok(a) => a,
                Err(e) => return fail(&e, 1),
            };
            let tls = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => match tls::server_config(&c, &k) {
                    Ok(t) => Some(t),
                    Err(e) => return fail(&e, 1),
                },
                _ => None,
            };
            if max_frame < 4096 {
                return fail("--max-frame must be at least 4096 bytes", 1);
            }
            let cfg = hub::Config {
                data_dir: data,
                schema_dir,
                listen,
                auth,
                tls,
                max_frame,
                window,
                write_timeout: Duration::from_secs(write_timeout.max(1)),
                nats: nats.map(|url| hub::nats::NatsConfig {
                    url,
                    max_age: nats_max_age,
                }),
                shutdown_grace: Duration::from_secs(10),
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}"), 1),
            };
            match rt.block_on(hub::serve(cfg, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e, 1),
            }
        }
        Cmd::Sync {
            db,
            url,
            token,
            once,
            ca_cert,
            timeout,
            poll_ms,
            progress,
        } => {
            let progress = match progress.as_str() {
                "auto" => client::stdout_is_terminal(),
                "always" => true,
                "never" => false,
                other => {
                    return fail(
                        &format!("--progress must be auto, always or never, got {other:?}"),
                        1,
                    )
                }
            };
            let opts = client::SyncOptions {
                db,
                urls: url,
                token,
                once,
                ca_cert,
                window: 8,
                poll: Duration::from_millis(poll_ms.max(1)),
                timeout: (timeout > 0).then(|| Duration::from_secs(timeout)),
                progress,
                max_frame: 64 << 20,
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}"), 1),
            };
            let r = rt.block_on(async {
                tokio::select! {
                    r = client::sync(opts) => r,
                    _ = shutdown_signal() => Ok(()),
                }
            });
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ client::SyncError::Refused(..)) => fail(&e.to_string(), 2),
                Err(e) => fail(&e.to_string(), 1),
            }
        }
        Cmd::Status { db } => match status::report(&db) {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, 1),
        },
        Cmd::HashToken { token } => {
            println!("{}", auth::token_hash_hex(token.as_bytes()));
            ExitCode::SUCCESS
        }
    }
}

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("crsql-sync: {msg}");
    ExitCode::from(code)
}

/// SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("signal received: shutting down");
}
