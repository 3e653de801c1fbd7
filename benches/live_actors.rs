//! Memory of live entity actors: ACTORS carts (default 100,000), each started through the router by an add-to-cart
//! command (so each has recovered, written one commit and holds its state), in an in-process server on the embedded
//! store. Prints the process RSS before and after, the bytes per live cart actor, and the CPU the process uses
//! while they all sit idle.
//! Run: `cargo bench --bench live_actors` (optional env: ACTORS, CONCURRENCY).

#[path = "server/mod.rs"]
mod server;

use std::time::{Duration, Instant};

use commercex::app::Application;
use commercex::config::Config;
use commercex::domain::cart::{CartCommand, ProductAvailability};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let actors = env_or("ACTORS", 100_000);
    let concurrency = env_or("CONCURRENCY", 256);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.store.data_dir = dir.path().to_path_buf();
    config.auth.jwt_secret = "benchmark-secret-0123456789abcdef0123456789".into();
    config.actors.max_live_entities = actors + 1_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::with_listener(config, listener).await.unwrap();
    let carts = app.state().carts.router().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server::status_mib("self", "VmRSS:");

    let started = Instant::now();
    let mut next = 0;
    while next < actors {
        let batch = (next..actors.min(next + concurrency)).map(|i| {
            let carts = carts.clone();
            async move {
                let command = CartCommand::AddItem {
                    product_id: format!("prod-{}", i % 1_000),
                    quantity: 1,
                    product: ProductAvailability { available: 100, currency: "USD".into() },
                };
                carts.execute(&format!("user-{i}"), command).await.expect("the cart takes the item");
            }
        });
        next += futures_util::future::join_all(batch).await.len();
    }
    let elapsed = started.elapsed();
    let after = server::status_mib("self", "VmRSS:");
    println!(
        "{actors} cart actors started through the router, one commit each, in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        actors as f64 / elapsed.as_secs_f64()
    );
    println!(
        "RSS {before:.0} MiB before, {after:.0} MiB with them live: {:.0} bytes per live cart actor",
        (after - before) * 1024.0 * 1024.0 / actors as f64
    );
    let cpu = server::cpu_secs("self");
    tokio::time::sleep(Duration::from_secs(10)).await;
    println!(
        "idle for 10 s with {actors} live actors: {:.1}% of one core; RSS {:.0} MiB",
        100.0 * (server::cpu_secs("self") - cpu) / 10.0,
        server::status_mib("self", "VmRSS:")
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
