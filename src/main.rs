use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config_path = commercex::config::path_from_args(std::env::args().skip(1))?;
    let config = commercex::config::Config::load(config_path.as_deref()).context("loading configuration")?;
    commercex::telemetry::init(&config.log);
    let app = commercex::app::Application::build(config).await.context("starting commercex")?;
    app.run_until(commercex::app::shutdown_signal()).await
}
