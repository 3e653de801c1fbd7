//! The load generator behind `commercex-load`: drives one node or a cluster over the public HTTP API and the
//! notification WebSocket, as shoppers would, and reports what the service sustained.
//!
//! | module       | job |
//! |--------------|-----|
//! | [`args`]     | the command line |
//! | [`setup`]    | the catalog the load shops from (created or reused) and the users, signed up a few at a time |
//! | [`scenario`] | one simulated user: the action mix, carts, checkouts followed until paid |
//! | [`listener`] | a user's notification WebSocket, read by its own task |
//! | [`api`]      | requests and answers, tokens |
//! | [`stats`]    | latency histograms, errors by answer, orders settled, the final report |
//! | [`cost`]     | the nodes' cost counters (MongoDB, Kafka, Redis, forwarded calls) per paid order |
//!
//! A run: check every node answers `/health`, prepare the catalog on the first node, sign up the users (user `i`
//! on node `i % nodes`), then let every user loop over the mix for the duration. At its end no user starts
//! another action; orders in flight get up to [`DRAIN`] to settle, and the report covers the whole window.

pub mod api;
pub mod args;
pub mod cost;
pub mod listener;
pub mod scenario;
pub mod setup;
pub mod stats;

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use api::Api;
use args::Options;
use scenario::Context;
use stats::{Recorder, Report, Totals};

/// After the duration, how long orders in flight may take to settle before the report.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Where a run is: users act while `Running`, only follow their orders while `Draining`, and stop at `Done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("{url} does not answer `GET /health`: {error}")]
    Unreachable { url: String, error: String },
    #[error("{what}: the server answered {status} {body}")]
    Refused { what: String, status: u16, body: String },
    #[error("{what}: {error}")]
    Transport { what: String, error: String },
    #[error("{what}: unexpected answer {body}")]
    Unexpected { what: String, body: String },
    #[error(
        "the catalog holds {found} of the {wanted} load products, and creating the others needs an admin: pass \
         --admin-email and --admin-password (or set {} and {}), or ask for --products {found}",
        args::ADMIN_EMAIL_VAR,
        args::ADMIN_PASSWORD_VAR
    )]
    AdminRequired { found: usize, wanted: usize },
    #[error("interrupted before the load started")]
    Interrupted,
}

/// The live progress line on stderr: rewritten in place on a terminal, one line a second otherwise.
pub struct Progress;

impl Progress {
    fn tty() -> bool {
        std::io::stderr().is_terminal()
    }

    pub fn show(line: &str) {
        if Self::tty() {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    /// A message on a line of its own, in place of the progress line.
    pub fn note(line: &str) {
        if Self::tty() {
            eprintln!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Runs the load described by `options` until its duration passes or `interrupt` completes (ctrl-c), and returns
/// the report. Fails only when the run cannot start: a node unreachable, the catalog or the users not set up.
pub async fn run(options: Options, interrupt: impl Future<Output = ()>) -> Result<Report, LoadError> {
    tokio::pin!(interrupt);
    let http = reqwest::Client::builder()
        .timeout(api::REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(options.users.max(16))
        .build()
        .map_err(|e| LoadError::Client(api::chain(&e)))?;
    let apis: Vec<Api> = options.urls.iter().map(|url| Api::new(http.clone(), url.clone())).collect();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let ws_users = (options.users as f64 * options.ws_share).round() as usize;
    Progress::note(&format!(
        "run {run}: {} users ({ws_users} with a WebSocket) on {} for {:?}, mix {}",
        options.users,
        options.urls.join(", "),
        options.duration,
        options.mix
    ));

    let setup = async {
        for api in &apis {
            match api.get("/health", None).await {
                Ok(a) if a.is_success() => {}
                Ok(a) => return Err(LoadError::Unreachable { url: api.base().into(), error: a.describe() }),
                Err(e) => return Err(LoadError::Unreachable { url: api.base().into(), error: api::chain(&e) }),
            }
        }
        let catalog = setup::catalog(&apis[0], options.products, options.admin.as_ref()).await?;
        Progress::note(&format!("catalog: {} load products ({} created)", catalog.products.len(), catalog.created));
        let signed_up = setup::sign_up(&apis, options.users, &run, options.signup_concurrency).await?;
        Ok((catalog, signed_up))
    };
    let (catalog, signed_up) = tokio::select! {
        ready = setup => ready?,
        _ = &mut interrupt => return Err(LoadError::Interrupted),
    };
    let setup_report = stats::Setup {
        users: signed_up.users.len(),
        signup_secs: signed_up.elapsed.as_secs_f64(),
        signup_retries: signed_up.retries,
        signup_latency: signed_up.latency.summary(),
        products_created: catalog.created,
        products_reused: catalog.reused,
    };

    let recorder = Arc::new(Recorder::default());
    let context = Arc::new(Context {
        recorder: recorder.clone(),
        catalog: Arc::new(catalog),
        mix: options.mix.clone(),
        think: options.think,
        run,
    });
    let metrics_before = cost::scrape(&http, &options.metrics).await?;
    let (phase, phase_rx) = watch::channel(Phase::Running);
    let users = signed_up.users.len();
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut shoppers = JoinSet::new();
    for (i, user) in signed_up.users.into_iter().enumerate() {
        // Spread the sockets evenly over the users, and so over the nodes.
        let with_socket = (i + 1) * ws_users / users > i * ws_users / users;
        shoppers.spawn(scenario::shop(user, with_socket, context.clone(), phase_rx.clone()));
    }
    let progress = tokio::spawn(show_progress(recorder.clone(), started, phase_rx));

    let interrupted = tokio::select! {
        _ = tokio::time::sleep(options.duration) => false,
        _ = &mut interrupt => true,
    };
    phase.send_replace(Phase::Draining);
    let all_done = async { while shoppers.join_next().await.is_some() {} };
    let drained = if interrupted {
        tokio::time::timeout(DRAIN, all_done).await.is_ok()
    } else {
        tokio::select! {
            finished = tokio::time::timeout(DRAIN, all_done) => finished.is_ok(),
            _ = &mut interrupt => false,
        }
    };
    if !drained {
        phase.send_replace(Phase::Done);
        while shoppers.join_next().await.is_some() {}
    }
    let window = started.elapsed();
    let cpu = cpu_before.zip(cpu_seconds()).map(|(before, after)| 100.0 * (after - before) / window.as_secs_f64());
    progress.abort();
    let _ = progress.await;
    Progress::note(&format!("finished after {:.1} s", window.as_secs_f64()));

    let (operations, errors, orders) = recorder.report(window);
    let requests = recorder.totals().requests;
    let cost = if options.metrics.is_empty() {
        Vec::new()
    } else {
        cost::growth(&metrics_before, &cost::scrape(&http, &options.metrics).await?, orders.paid)
    };
    Ok(Report {
        urls: options.urls,
        users,
        ws_users,
        setup: setup_report,
        duration_secs: window.as_secs_f64(),
        interrupted,
        client_cpu_percent: cpu,
        requests,
        requests_per_sec: requests as f64 / window.as_secs_f64(),
        operations,
        errors,
        orders,
        cost,
    })
}

/// Every second: elapsed time, requests per second over that second, errors, orders paid.
async fn show_progress(recorder: Arc<Recorder>, started: Instant, phase: watch::Receiver<Phase>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last, mut last_at) = (Totals::default(), Instant::now());
    loop {
        tick.tick().await;
        let now = recorder.totals();
        let secs = last_at.elapsed().as_secs_f64();
        let unsettled = now.placed.saturating_sub(now.paid + now.failed);
        let draining = if *phase.borrow() == Phase::Running { "" } else { "  draining" };
        Progress::show(&format!(
            "{:>4.0} s  {:>6.0} req/s  errors {}  orders paid {} ({:.0}/s), failed {}, in flight {unsettled}{draining}",
            started.elapsed().as_secs_f64(),
            (now.requests - last.requests) as f64 / secs,
            now.errors,
            now.paid,
            (now.paid - last.paid) as f64 / secs,
            now.failed,
        ));
        (last, last_at) = (now, Instant::now());
    }
}

/// CPU time this process has used (user and system), on Linux.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are the 12th and
    // 13th, in clock ticks of 1/100 s (USER_HZ).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
