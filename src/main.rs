//! The `ipcgate` command line. All the work is in the library; this file parses
//! flags and reports errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipcgate::ca::{Ca, KeyType, LeafSpec};

#[derive(Parser)]
#[command(
    name = "ipcgate",
    version,
    about = "mTLS and per-method gRPC authorization in front of local services"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway until SIGINT or SIGTERM.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Self-contained demo: temporary CA and certs, a backend, the gateway, and
    /// allowed and denied calls. Exits 0 when everything behaved as expected.
    Demo {
        /// Keep serving after the calls and print how to call the gateway.
        #[arg(long)]
        keep_running: bool,
        /// Work in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Manage the local CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Issue certificates from the local CA.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Work with authorization policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create a CA: <dir>/ca.pem and <dir>/ca.key (0600).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "ipcgate local CA")]
        cn: String,
        #[arg(long, value_enum, default_value_t)]
        key_type: KeyType,
        /// Lifetime, e.g. 3650d.
        #[arg(long, value_parser = ttl, default_value = "3650d")]
        ttl: Duration,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Issue a leaf certificate: <out>.pem and <out>.key (0600).
    Issue(IssueArgs),
}

#[derive(Args)]
struct IssueArgs {
    #[arg(long)]
    ca_dir: PathBuf,
    /// Output path without extension.
    #[arg(long)]
    out: PathBuf,
    /// SPIFFE ID (URI SAN), repeatable.
    #[arg(long)]
    spiffe: Vec<String>,
    /// DNS name (DNS SAN), repeatable.
    #[arg(long)]
    dns: Vec<String>,
    /// Subject common name (defaults to the first DNS name or the last path
    /// segment of the SPIFFE ID).
    #[arg(long)]
    cn: Option<String>,
    /// For clients (clientAuth EKU).
    #[arg(long)]
    client: bool,
    /// For servers (serverAuth EKU).
    #[arg(long)]
    server: bool,
    /// Lifetime, e.g. 24h (default: 24h for clients, 90d for servers).
    #[arg(long, value_parser = ttl)]
    ttl: Option<Duration>,
    #[arg(long, value_enum, default_value_t)]
    key_type: KeyType,
    #[arg(long)]
    force: bool,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate policy files and summarize them; exits non-zero on any error.
    Check { files: Vec<PathBuf> },
}

fn ttl(s: &str) -> Result<Duration, String> {
    ipcgate::duration::parse(s)
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ipcgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve { config } => {
            init_tracing("info");
            let config = ipcgate::config::Config::load(&config)?;
            runtime()?.block_on(async {
                let gateway = ipcgate::Gateway::bind(config).await?;
                gateway.run(shutdown_signal()).await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { keep_running, dir } => {
            init_tracing("warn");
            let ok = runtime()?.block_on(ipcgate::demo::run(ipcgate::demo::DemoOptions {
                keep_running,
                dir,
            }))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Ca(CaCmd::Init {
            dir,
            cn,
            key_type,
            ttl,
            force,
        }) => {
            let ca = Ca::generate(&cn, ttl, key_type)?;
            let (c, k) = ca.save(&dir, force)?;
            println!(
                "CA certificate: {}\nCA key (0600): {}",
                c.display(),
                k.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cert(CertCmd::Issue(a)) => {
            let ca = Ca::load(&a.ca_dir)?;
            let issued = ca.issue(&LeafSpec {
                spiffe: a.spiffe,
                dns: a.dns,
                cn: a.cn,
                client: a.client,
                server: a.server,
                ttl: a.ttl,
                validity: None,
                key_type: a.key_type,
            })?;
            let (c, k) = issued.save(&a.out, a.force)?;
            println!("certificate: {}\nkey (0600): {}", c.display(), k.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Policy(PolicyCmd::Check { files }) => {
            if files.is_empty() {
                anyhow::bail!("give at least one policy file");
            }
            let mut ok = true;
            for f in &files {
                match ipcgate::policy::Policy::load(f) {
                    Ok(p) => {
                        let (d, a) = p.rule_counts();
                        println!(
                            "{}: ok: policy {:?} version {}, {d} deny rules, {a} allow rules",
                            f.display(),
                            p.name,
                            p.version
                        );
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ok = false;
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
