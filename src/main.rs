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
        Command::Check { config } => match callgate::config::load(&config) {
            Ok(loaded) => {
                println!("ok: {} routes", loaded.rules.len());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
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
    match &args.provider {
        callgate::sign::SignProvider::Alipay(a) => a.curl.is_some(),
        callgate::sign::SignProvider::Unionpay(a) => a.curl.is_some(),
        callgate::sign::SignProvider::Jdpay(a) => a.curl.is_some(),
    }
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
        let gateway = match callgate::server::start(loaded).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("callgate: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = wait_for_signals(&gateway).await {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
async fn wait_for_signals(gateway: &callgate::server::Gateway) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading rules");
                let _ = gateway.reload();
            }
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); return Ok(()); }
        }
    }
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
