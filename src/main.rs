//! The `callgate` command: run | check | sign | journal | version, plus
//! `completions` and `manpage`, generated from these same definitions for
//! the Debian package. Exit codes: 0 on success, 1 when `check` finds
//! problems or `run` cannot start, 2 on bad usage (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// mimalloc instead of glibc's malloc: measured in docs/performance.md
/// (*The allocator*).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

#[derive(Debug, clap::Args)]
struct JournalFilter {
    /// Gateway file (its [journal] dir and rules are used).
    #[arg(short = 'c', long = "config", default_value = "callgate.toml")]
    config: PathBuf,
    /// Only this route.
    #[arg(long)]
    route: Option<String>,
    /// Only arrivals that ended with this outcome (`forwarded`,
    /// `upstream_error`, ..., or `unfinished` for no recorded outcome).
    #[arg(long)]
    outcome: Option<String>,
    /// Only arrivals since this RFC 3339 time, or this long ago (`24h`).
    #[arg(long)]
    since: Option<String>,
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// Show what arrived and how each delivery ended, oldest first.
    List {
        #[command(flatten)]
        filter: JournalFilter,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send journaled events that were never delivered to their upstream
    /// again (verified again first; events already delivered are skipped),
    /// through the running gateway's admin API (`admin.token_file`); with
    /// the memory store it refuses to run without it.
    Redeliver {
        #[command(flatten)]
        filter: JournalFilter,
        /// Only this event id.
        #[arg(long)]
        event_id: Option<String>,
        /// Show what would be sent, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
    ///
    /// Prints `ok: N routes`, or every problem as PATH:LINE: message (exit
    /// 1). Writes nothing. Warnings (demo keys, allow lists open to
    /// everybody, certificates about to expire) go to stderr.
    Check {
        /// Gateway file.
        #[arg(short = 'c', long = "config", default_value = "callgate.toml")]
        config: PathBuf,
        /// Also print the effective configuration (defaults filled in,
        /// paths resolved, secrets never printed), like `nginx -T`.
        #[arg(long)]
        dump: bool,
    },
    /// Print a signed sample notification for testing a deployment.
    Sign(callgate::sign::SignArgs),
    /// Inspect the delivery journal, or redeliver from it.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Print version and build information.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (callgate.1, callgate-run.1, ...) into DIR, as
    /// the Debian package installs them.
    #[command(hide = true)]
    Manpage { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The one TLS provider for every rustls user in the process (Redis over
    // rediss:// included): aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command.unwrap_or(Command::Run {
        config: PathBuf::from("callgate.toml"),
    }) {
        Command::Version => {
            println!("{}", callgate::version_line());
            ExitCode::SUCCESS
        }
        Command::Check { config, dump } => match callgate::config::load(&config) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    eprintln!("{w}");
                }
                if dump {
                    print!("{}", callgate::dump::render(&loaded));
                }
                println!("ok: {} routes", loaded.snapshot.routes.len());
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
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "callgate",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Manpage { dir } => match clap_mangen::generate_to(Cli::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("callgate manpage: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Journal { command } => journal(command),
    }
}

fn journal(command: JournalCommand) -> ExitCode {
    let filter = match &command {
        JournalCommand::List { filter, .. } | JournalCommand::Redeliver { filter, .. } => filter,
    };
    let loaded = match callgate::config::load(&filter.config) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let Some(jc) = loaded.config.journal.clone() else {
        eprintln!(
            "callgate journal: the journal is disabled in {}",
            filter.config.display()
        );
        return ExitCode::FAILURE;
    };
    match command {
        JournalCommand::List { json, filter } => list(&jc.dir, &filter, json),
        JournalCommand::Redeliver {
            event_id,
            dry_run,
            filter,
        } => {
            let selection = callgate::redeliver::Selection {
                event_id,
                route: filter.route,
                outcome: filter.outcome,
                since: filter.since,
                dry_run,
            };
            redeliver(&loaded, &jc.dir, &selection)
        }
    }
}

fn list(dir: &std::path::Path, filter: &JournalFilter, json: bool) -> ExitCode {
    let now = callgate::clock::unix_now();
    let since = match filter
        .since
        .as_deref()
        .map(|s| callgate::journal::parse_since(s, now))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("callgate journal: --since {e}");
            return ExitCode::FAILURE;
        }
    };
    let (arrivals, _) = match callgate::journal::arrivals(dir) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("callgate journal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let selected = callgate::journal::Filter {
        route: filter.route.clone(),
        outcome: filter.outcome.clone(),
        since,
    };
    if !json {
        println!(
            "{:<20} {:<16} {:<10} {:<36} {:<14} {:<7} CLIENT",
            "TIME (UTC)", "ROUTE", "PROVIDER", "EVENT ID", "OUTCOME", "ATTEMPT"
        );
    }
    for a in arrivals.iter().filter(|a| selected.matches(a)) {
        let r = &a.received;
        let outcome = callgate::journal::outcome_label(a);
        if json {
            let v = serde_json::json!({
                "unix": r.unix, "route": r.route, "provider": r.provider, "merchant": r.merchant, "event_id": r.event_id,
                "client": r.client, "outcome": outcome, "attempt": r.attempt,
                "status": a.outcome.as_ref().map(|o| o.status),
            });
            println!("{v}");
        } else {
            let t = chrono::DateTime::from_timestamp(r.unix, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            println!(
                "{t:<20} {:<16} {:<10} {:<36} {:<14} {:<7} {}",
                r.route, r.provider, r.event_id, outcome, r.attempt, r.client
            );
        }
    }
    ExitCode::SUCCESS
}

/// Redelivers through the running gateway's admin API when a token is
/// configured; with Redis (shared by every process) it may also run here.
/// With the memory store it refuses to run anywhere but in the gateway.
fn redeliver(
    loaded: &callgate::config::Setup,
    dir: &std::path::Path,
    selection: &callgate::redeliver::Selection,
) -> ExitCode {
    use callgate::config::StoreKind;
    use callgate::redeliver::{self, ApiError};
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let config = &loaded.config;
    let memory = config.replay.store == StoreKind::Memory;
    runtime.block_on(async {
        if let (Some(admin), Some(token)) = (config.admin, &config.admin_token) {
            match redeliver::via_admin(admin.addr, &token.token, selection).await {
                Ok(report) => return print_report(&report),
                Err(ApiError::NothingMatches) => return nothing_to_redeliver(),
                Err(e @ ApiError::Unreachable { .. }) if !memory => {
                    eprintln!("callgate journal redeliver: {e}; redelivering here through the shared Redis store");
                }
                Err(e @ ApiError::Unreachable { .. }) => {
                    // Only when nothing answered: a gateway that answered
                    // is running, and starting it is not the remedy.
                    eprintln!("callgate journal redeliver: {e}");
                    eprintln!(
                        "callgate journal redeliver: with replay.store = \"memory\" only the running gateway knows what was delivered: start it, then run this again"
                    );
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("callgate journal redeliver: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else if memory {
            eprintln!(
                "callgate journal redeliver: with replay.store = \"memory\" the replay store lives inside the running gateway, \
                 and a redelivery from here could not stop the platform's next retry from being delivered again. \
                 Set admin.token_file in {} (and admin.addr) so this command can redeliver through the gateway.",
                config.file.display()
            );
            return ExitCode::FAILURE;
        }
        let state = match callgate::server::build_state(
            config,
            loaded.snapshot.clone(),
            callgate::forward::default_client(),
            "redeliver",
        ) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("callgate journal redeliver: {e}");
                return ExitCode::FAILURE;
            }
        };
        let report = match redeliver::run(&state, dir, selection).await {
            Ok(r) => r,
            Err(callgate::redeliver::SelectError::NothingMatches) => return nothing_to_redeliver(),
            Err(e) => {
                eprintln!("callgate journal redeliver: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(j) = &state.journal {
            j.flush().await;
        }
        print_report(&report)
    })
}

/// No journaled arrival matches the selection: nothing is undelivered
/// there, which is not a failure (the README's exit 1 is for an event that
/// could not be delivered), e.g. `--outcome unfinished` run from cron.
fn nothing_to_redeliver() -> ExitCode {
    eprintln!("callgate journal redeliver: no journaled arrival matches: nothing to redeliver");
    ExitCode::SUCCESS
}

/// The tokio runtime `run` and `journal redeliver` work in; `None` (and a
/// message) when it cannot start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("callgate: cannot start the runtime: {e}"))
        .ok()
}

fn print_report(report: &callgate::redeliver::Report) -> ExitCode {
    for l in &report.results {
        println!("{} {}: {}", l.route, l.event_id, l.result);
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn args_is_curl(args: &callgate::sign::SignArgs) -> bool {
    args.provider.is_curl()
}

fn run(config: &std::path::Path, format: LogFormat) -> ExitCode {
    // No transparent huge pages for this process, before anything else
    // allocates much: mimalloc asks for them on its arenas (MADV_HUGEPAGE),
    // and the kernel then zeroes each new 2 MiB page inside the page fault
    // of whichever request first touches it. On a virtual machine that
    // took 10-40 ms on a worker thread, the longest stalls profiled in the
    // p99 at half load (docs/performance.md, *Eighth round*); 4 KiB pages
    // spread the same work out, and a fresh process holds a third less.
    let thp = rustix::thread::disable_transparent_huge_pages(true);
    // AWS-LC seeds its random generator from CPU jitter on the process's
    // first call: 33-52 ms here (`cargo run --release --example
    // first_random`), which landed on a worker thread inside the first
    // request that drew a request id or the first TLS handshake. Pay it
    // now; a thread's own first call after this costs microseconds.
    let _ = aws_lc_rs::rand::fill(&mut [0u8; 8]);
    let open_files = raise_open_files_limit();
    let Some(_log_guard) = init_logging(format) else {
        return ExitCode::FAILURE;
    };
    if let Err(e) = thp {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off (prctl PR_SET_THP_DISABLE); a request may stall while the kernel zeroes a 2 MiB page");
    }
    match open_files {
        Ok(Some((from, to))) => {
            tracing::info!(
                from,
                to,
                "open-files limit (RLIMIT_NOFILE) raised to its hard limit"
            )
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit (RLIMIT_NOFILE) to its hard limit")
        }
    }
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
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
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

/// Raises the soft open-files limit (`RLIMIT_NOFILE`) to the hard one, as
/// a server that holds many connections should: the usual soft default
/// (1024) is far below `limits.max_connections`, and accept fails for
/// every client, platforms included, once it is reached (the connection
/// limits would never be). Returns the limit before and after, when it
/// changed.
fn raise_open_files_limit() -> std::io::Result<Option<(u64, u64)>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited: nothing to raise, or nothing to raise it to.
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return Ok(None);
    };
    if hard <= soft {
        return Ok(None);
    }
    setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    )?;
    Ok(Some((soft, hard)))
}

/// SIGHUP, SIGTERM and SIGINT, caught from before the gateway starts.
/// SIGXFSZ is caught too, and ignored: a journal write past a file-size
/// limit (`ulimit -f`, systemd `LimitFSIZE=`) then fails with EFBIG and
/// the notification is refused with 503 (`journal_unavailable`), instead
/// of the signal's default killing the process mid-request. SIGUSR1 is
/// caught and answered with a warning: it is the "reopen your log files"
/// signal of nginx and others, so a logrotate `postrotate` copied from them
/// sends it, and its default action killed callgate (every notification in
/// flight cut off). callgate opens no log file to reopen: stdout is rotated
/// with `copytruncate` (README, *Logs*). SIGUSR2 likewise: nginx's
/// "upgrade the binary" signal, which callgate has no use for; its default
/// action killed callgate without a drain.
struct Signals {
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    _xfsz: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            _xfsz: signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw()))?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
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
                _ = self.usr1.recv() => {
                    tracing::warn!("SIGUSR1 ignored: callgate opens no log file to reopen (it logs to stdout); rotate a stdout file with logrotate's copytruncate");
                }
                _ = self.usr2.recv() => {
                    tracing::warn!("SIGUSR2 ignored: callgate has no binary upgrade; to run a new binary, start it after SIGTERM has drained this one");
                }
                _ = self.term.recv() => { tracing::info!("SIGTERM: draining"); return; }
                _ = self.int.recv() => { tracing::info!("SIGINT: draining"); return; }
            }
        }
    }
}

fn init_logging(format: LogFormat) -> Option<callgate::log_writer::LogGuard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CALLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Batched by one writer thread (a request's line is a copy, not a
    // wake-up of another thread); not lossy: a stalled stdout slows
    // logging down rather than dropping lines. A write that fails (a
    // full disk) drops its lines and says so on stderr, never failing a
    // request.
    let (writer, guard) = match callgate::log_writer::batched(std::io::stdout(), std::io::stderr())
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("callgate: cannot start the log writer: {e}");
            return None;
        }
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    match format {
        // The JSON format's keys, written without its per-piece adaptor.
        LogFormat::Json => builder.event_format(callgate::log_format::JsonLine).init(),
        // The default format's text line, written without `core::fmt` per piece.
        LogFormat::Text => builder
            .event_format(callgate::log_format::TextLine::default())
            .init(),
    }
    Some(guard)
}
