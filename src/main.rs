use std::process::ExitCode;

use anyhow::Context;
use commercex::cli::{self, Command};
use commercex::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("commercex: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let config = || Config::load(args.config.as_deref()).context("loading configuration");
    let outcome = match args.command {
        Command::Help => {
            println!("{}", cli::USAGE);
            Ok(())
        }
        Command::Version => {
            println!("commercex {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::CheckConfig => config().map(|config| print!("{}", config.masked_toml())),
        Command::SeedDemo => match config() {
            Ok(config) => seed_demo(config, args.force).await,
            Err(e) => Err(e),
        },
        Command::Serve => match config() {
            Ok(config) => serve(config).await,
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("commercex: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _traces = commercex::telemetry::init(&config).context("telemetry")?;
    let app = commercex::app::Application::build(config).await.context("starting commercex")?;
    app.run_until(commercex::app::shutdown_signal()).await
}

/// Builds the node without serving anyone (a listener on a free loopback port), seeds, and shuts down the usual way.
async fn seed_demo(config: Config, force: bool) -> anyhow::Result<()> {
    let _traces = commercex::telemetry::init(&config).context("telemetry")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app = commercex::app::Application::with_listener(config, listener).await.context("opening the store")?;
    let seeded = commercex::demo::seed(app.state(), force).await;
    app.run_until(async {}).await?;
    println!("{}", seeded?);
    Ok(())
}
