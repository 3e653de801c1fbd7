//! Memory of a real `commercex` process (release build, default argon2 parameters: 19 MiB per hash) through a
//! sign-up + sign-in flood: ACCOUNTS sign-ups, then as many sign-ins (half with a wrong password), CONCURRENCY at a
//! time. Prints the server's peak RSS (VmHWM), its RSS when idle afterwards, and how requests were answered
//! (`503 auth_busy` is the bounded queue refusing work; a real client retries after `Retry-After`).
//! Run: `cargo bench --bench auth_flood` (optional env: ACCOUNTS, CONCURRENCY).

#[path = "server/mod.rs"]
mod server;

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    busy: usize,
    other: Vec<u16>,
}

async fn flood(
    client: &reqwest::Client,
    base: &str,
    accounts: usize,
    concurrency: usize,
    path: &'static str,
    body: impl Fn(usize) -> serde_json::Value,
) -> Tally {
    let mut tally = Tally::default();
    let mut tasks = JoinSet::new();
    for i in 0..accounts {
        if tasks.len() >= concurrency {
            record(&mut tally, tasks.join_next().await);
        }
        let (client, url, body) = (client.clone(), format!("{base}{path}"), body(i));
        tasks.spawn(async move {
            let res = client.post(url).json(&body).send().await.unwrap();
            let status = res.status().as_u16();
            let code = res.json::<serde_json::Value>().await.unwrap_or_default()["error"]["code"].clone();
            (status, code == "auth_busy")
        });
    }
    while let Some(r) = tasks.join_next().await {
        record(&mut tally, Some(r));
    }
    tally
}

fn record(tally: &mut Tally, r: Option<Result<(u16, bool), tokio::task::JoinError>>) {
    match r.map(Result::unwrap) {
        Some((200 | 201 | 401, _)) => tally.ok += 1,
        Some((503, true)) => tally.busy += 1,
        Some((status, _)) => tally.other.push(status),
        None => {}
    }
}

#[tokio::main]
async fn main() {
    let accounts = env_or("ACCOUNTS", 1000);
    let concurrency = env_or("CONCURRENCY", 32);
    let server = server::Server::start(&[("COMMERCEX__HTTP__AUTH_RATE_LIMIT_PER_MINUTE", "100000000")]).await;
    let base = server.base.clone();
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let before = server.status_mib("VmRSS:");

    let t = Instant::now();
    let signups = flood(
        &client,
        &base,
        accounts,
        concurrency,
        "/api/users/signup",
        |i| json!({"email": format!("flood{i}@bench.test"), "password": "pass-word-1", "name": "Flood"}),
    )
    .await;
    let signup_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let signins = flood(&client, &base, accounts, concurrency, "/api/users/signin", |i| {
        let password = if i % 2 == 0 { "pass-word-1" } else { "wrong-pass-1" };
        json!({"email": format!("flood{i}@bench.test"), "password": password})
    })
    .await;
    let signin_secs = t.elapsed().as_secs_f64();
    let peak = server.status_mib("VmHWM:");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = server.status_mib("VmRSS:");

    println!("{accounts} sign-ups then {accounts} sign-ins, {concurrency} at a time, against the release binary");
    println!(
        "sign-ups: {} answered, {} refused 503 auth_busy, other {:?}, {:.0}/s answered",
        signups.ok,
        signups.busy,
        signups.other,
        signups.ok as f64 / signup_secs
    );
    println!(
        "sign-ins: {} answered, {} refused 503 auth_busy, other {:?}, {:.0}/s answered",
        signins.ok,
        signins.busy,
        signins.other,
        signins.ok as f64 / signin_secs
    );
    println!("server RSS: {before:.0} MiB at start, peak {peak:.0} MiB, {idle:.0} MiB idle afterwards");
}
