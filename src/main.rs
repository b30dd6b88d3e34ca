use clap::Parser;
use tracing::Level;

use kci_pull_agent::cli::{Cli, LogFormat};
use kci_pull_agent::run::run;

fn init_logging(format: LogFormat, verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => Level::INFO,
        (1, _) => Level::DEBUG,
        (v, _) if v >= 2 => Level::TRACE,
        (_, 1) => Level::WARN,
        _ => Level::ERROR,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_writer(kci_pull_agent::pull::progress::log_writer)
            .without_time()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
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
