//! The `callgate` command: run | check | sign | version. Exit codes: 0 on
//! success, 1 when `check` finds problems or `run` cannot start, 2 on bad
//! usage (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "callgate",
    version,
    about = "Payment-callback security gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format for `run`: text, or json (one JSON object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CALLGATE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve with a gateway file (the default command).
    Run {
        /// Gateway file.
        #[arg(short = 'c', long = "config", default_value = "callgate.toml")]
        config: PathBuf,
    },
    /// Validate a gateway file, its rule files, keys and certificates.
    Check {
        /// Gateway file.
        #[arg(short = 'c', long = "config", default_value = "callgate.toml")]
        config: PathBuf,
    },
    /// Print a signed sample notification for testing a deployment.
    Sign(callgate::sign::SignArgs),
    /// Print version and build information.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        config: PathBuf::from("callgate.toml"),
    }) {
        Command::Version => {
            println!("{}", callgate::version_line());
            ExitCode::SUCCESS
        }
        Command::Check { config } => {
            init_check_logging();
            match callgate::config::load(&config) {
                Ok(loaded) => {
                    println!("ok: {} routes", loaded.rules.len());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Sign(args) => match callgate::sign::run(&args) {
            Ok(out) => {
                use std::io::{IsTerminal, Write};
                let mut stdout = std::io::stdout();
                let _ = stdout.write_all(out.as_bytes());
                // A newline only for humans: `> file` must hold the exact body.
                if stdout.is_terminal() || args_is_curl(&args) {
                    let _ = stdout.write_all(b"\n");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("callgate sign: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => run(&config, cli.log_format),
    }
}

fn args_is_curl(args: &callgate::sign::SignArgs) -> bool {
    args.provider.curl().is_some()
}

fn run(config: &std::path::Path, format: LogFormat) -> ExitCode {
    let _log_guard = init_logging(format);
    let loaded = match callgate::config::load(config) {
        Ok(l) => l,
        Err(errors) => {
            for p in &errors.0 {
                tracing::error!(problem = %p, "invalid configuration");
            }
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Signal handlers first: a SIGHUP or SIGTERM that arrives right after
        // "callgate serving" must not meet the default action (exit).
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let gateway = match callgate::server::start(loaded).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("callgate: {e}");
                return ExitCode::FAILURE;
            }
        };
        signals.wait(&gateway).await;
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGHUP, SIGTERM and SIGINT, caught from before the gateway starts.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
    async fn wait(mut self, gateway: &callgate::server::Gateway) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading rules");
                    let _ = gateway.reload();
                }
                _ = self.term.recv() => { tracing::info!("SIGTERM: draining"); return; }
                _ = self.int.recv() => { tracing::info!("SIGINT: draining"); return; }
            }
        }
    }
}

/// `check` prints load-time warnings (an expired certificate, say) on
/// stderr, one plain line each, next to its problems.
fn init_check_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CALLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .init();
}

fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CALLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Not lossy: a full buffer slows logging down rather than dropping lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
    guard
}
