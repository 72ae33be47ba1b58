//! `sam`: the SAM client. Parses arguments and calls the library.

use clap::Parser;
use sam_client::cli::{self, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let json_out = cli.json;
    let result = sam_client::ClientPaths::from_env().and_then(|paths| {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(cli::run(cli, paths))
    });
    match result {
        Ok(out) => {
            cli::print(&out, json_out);
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            if json_out {
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "error,iroh=off,noq=off",
        1 => "info,iroh=warn,noq=warn",
        _ => "debug,iroh=info,noq=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
