use clap::Parser;
use tracing::Level;

use kci_pull_agent::cli::{Cli, LogFormat};
use kci_pull_agent::run::run;

fn init_logging(format: LogFormat, verbose: u8, quiet: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = match (verbose, quiet) {
        (0, 0) => Level::INFO,
        (1, _) => Level::DEBUG,
        (v, _) if v >= 2 => Level::TRACE,
        (_, 1) => Level::WARN,
        _ => Level::ERROR,
    };
    // -v is the agent's own detail (one line per registry request); the HTTP and TLS
    // libraries' internals only at -vv.
    let libraries = if verbose >= 2 {
        Level::TRACE
    } else {
        level.min(Level::INFO)
    };
    let filter = Targets::new()
        .with_target("kci_pull_agent", LevelFilter::from_level(level))
        .with_default(LevelFilter::from_level(libraries));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    // https://no-color.org: a set, non-empty NO_COLOR turns colours off.
    let color = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    match format {
        LogFormat::Text => builder
            .with_writer(kci_pull_agent::pull::progress::log_writer)
            .without_time()
            .with_ansi(color)
            .finish()
            .with(filter)
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(filter)
            .init(),
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.common.log_format, cli.common.verbose, cli.common.quiet);
    if let Err(e) = run(&cli) {
        match cli.common.log_format {
            LogFormat::Text => {
                eprintln!("kci-pull-agent: error: {e}");
                eprintln!("kci-pull-agent: hint: {}", e.hint());
            }
            LogFormat::Json => tracing::error!(hint = %e.hint(), exit_code = e.exit_code(), "{e}"),
        }
        std::process::exit(e.exit_code());
    }
}
