//! The command line: `serve`, `check-config`, `token`; with the `devtools` feature (default)
//! also `mock-cv-api` and `demo`.

#[cfg(feature = "devtools")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;

#[derive(Parser, Debug)]
#[command(name = "cvgate", version, about = "Reverse proxy that stops mass downloading of CVs")]
pub struct Cli {
    /// Log lines on stderr as `text` (default) or `json` (one object a line, for log pipelines);
    /// also `CVGATE_LOG_FORMAT`. Levels and filters: `CVGATE_LOG` (e.g. `info`,
    /// `cvgate=debug`). Colours only on a terminal, and never with `NO_COLOR` set.
    #[arg(long, global = true, env = "CVGATE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Validate a config file: print every error with its key and line; exit 1 when invalid.
    CheckConfig {
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Run the stand-in CV API (demo, tests, benches).
    #[cfg(feature = "devtools")]
    MockCvApi {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Compress every CV answer in this coding whatever the client asked (gzip, br, zstd,
        /// deflate; any other name labels plain bytes with it), like a backend with compression forced on.
        #[arg(long)]
        force_encoding: Option<String>,
        /// Name of the search answer's result array (a backend that changed its JSON).
        #[arg(long, default_value = "results")]
        results_key: String,
    },
    /// DEV ONLY: mint a token signed with the demo HS256 key from the config file.
    Token {
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
        /// Employer account (the `sub` claim).
        #[arg(long)]
        account: String,
        /// KvK number of the organisation (8 digits).
        #[arg(long)]
        org: Option<String>,
        /// Assurance level (`acr`).
        #[arg(long, default_value = "urn:etoegang:core:assurance-class:loa3")]
        acr: String,
        /// Lifetime, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Seed the first-seen times (probation) from audit logs, so nobody who used the site before
    /// starts on probation: files (`.gz` too) or `-` for stdin; written to `seen.jsonl` beside
    /// the block file (with Redis, the next start of a replica shares them).
    ImportSeen {
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// What a candidate config would have done to recorded traffic: replay audit logs (`.gz`
    /// too, `-` for stdin) through its decision path on a simulated clock, in memory, and
    /// compare with the recorded decisions (and with `--against`'s). Progress on stderr.
    Simulate {
        /// The candidate config.
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
        /// A second config replayed beside the candidate (e.g. the running one).
        #[arg(long)]
        against: Option<PathBuf>,
        /// First-seen times (probation) as the proxy kept them (`seen.jsonl`).
        #[arg(long)]
        seen: Option<PathBuf>,
        /// The report as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replay the 4 May 2024 incident, its evasions and legitimate use through the real proxy
    /// on a manual clock, and print what got through.
    #[cfg(feature = "devtools")]
    Demo {
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
        /// Machine-readable report on stdout (no progress bar).
        #[arg(long)]
        json: bool,
        /// Afterwards keep the proxy and the mock CV API up on the config's ports, for curl.
        #[arg(long)]
        serve: bool,
        /// Fewer requests, same shape.
        #[arg(long)]
        fast: bool,
        /// The mock CV API gzips every answer whatever cvgate asks (counting after decoding).
        #[arg(long)]
        upstream_compress: bool,
    },
}

fn init_logging(default: &str, format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CVGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        "json" => fmt.json().flatten_event(true).with_current_span(false).try_init(),
        _ => fmt.with_ansi(ansi).try_init(),
    };
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// Run the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo starts a proxy per scenario: their info lines (and the block warnings the replayed
    // attacks are meant to trigger) would bury the table; its report shows them.
    #[cfg(feature = "devtools")]
    let quiet = matches!(cli.command, Command::Demo { .. } | Command::Simulate { .. });
    #[cfg(not(feature = "devtools"))]
    let quiet = matches!(cli.command, Command::Simulate { .. });
    init_logging(if quiet { "error" } else { "info" }, &cli.log_format);
    match cli.command {
        #[cfg(feature = "devtools")]
        Command::Demo { config, json, serve, fast, upstream_compress } => {
            let opts =
                crate::devtools::demo::DemoOptions { fast, progress: true, upstream_compress, ..Default::default() };
            match runtime().block_on(crate::devtools::demo::main(config, json, serve, opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cvgate demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate { config, against, seen, json, files } => {
            let opts = crate::simulate::Options { config, against, files, seen, progress_every: 1_000_000 };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            match rt.block_on(crate::simulate::run(&opts)) {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print!("{}", report.render());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cvgate simulate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config } => match runtime().block_on(crate::server::serve(&config, Arc::new(SystemClock))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cvgate: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                if c.raw.dev_mode {
                    eprintln!(
                        "{}: warning: dev_mode is on (dev HS256 tokens accepted): never in production",
                        config.display()
                    );
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        #[cfg(feature = "devtools")]
        Command::MockCvApi { listen, force_encoding, results_key } => {
            match runtime().block_on(crate::devtools::mock_api::run(
                listen,
                crate::devtools::mock_api::MockOptions { force_encoding, results_key },
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cvgate mock-cv-api: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ImportSeen { config, files } => match import_seen(&config, &files) {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cvgate import-seen: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Token { config, account, org, acr, ttl } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let ttl = match crate::duration::parse(&ttl) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("cvgate token: --ttl: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match crate::policy::identity::mint_from_config(
                &cfg.raw.identity,
                &account,
                org.as_deref(),
                &acr,
                ttl,
                SystemClock.now(),
            ) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cvgate token: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `cvgate import-seen`: read the audit files into the first-seen list beside the block file.
fn import_seen(config: &std::path::Path, files: &[PathBuf]) -> anyhow::Result<String> {
    let cfg = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let blocks = cfg
        .blocks
        .file
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("blocks.file is null: nowhere to keep first-seen times"))?;
    let path = blocks.with_file_name("seen.jsonl");
    let seen = crate::policy::probation::FirstSeen::default();
    let before = seen.load(&path)?;
    let mut total = crate::policy::probation::Imported::default();
    for f in files {
        let input = crate::simulate::input::open(f)?;
        let r = crate::policy::probation::import_audit(input, &seen)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        eprintln!("{}: {} lines, {} subjects set earlier, {} skipped", f.display(), r.lines, r.changed, r.skipped);
        total.lines += r.lines;
        total.changed += r.changed;
        total.skipped += r.skipped;
    }
    seen.save_if_changed(&path)?;
    Ok(format!(
        "{}: {} subjects ({} before); {} lines read, {} skipped",
        path.display(),
        seen.len(),
        before,
        total.lines,
        total.skipped
    ))
}
