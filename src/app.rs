//! Wiring and lifecycle: builds the store, the entity runtime, the services and the HTTP app; runs until the
//! shutdown signal, then stops intake, drains every entity actor and flushes the outbox.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;

use crate::actors::live::LiveLimit;
use crate::actors::resumer::Resumer;
use crate::actors::{EntityContext, EntityRouter, NoEffects, RestartPolicy};
use crate::auth::password::PasswordHasher;
use crate::auth::tokens::{random_token, TokenKeys};
use crate::auth::AuthService;
use crate::bridge::chaos::ChaosBus;
use crate::bridge::kafka::{KafkaBus, KafkaSecurity, KafkaSettings};
use crate::bridge::outbox::OutboxRelay;
use crate::bridge::signing::Signer;
use crate::bridge::{EventBus, InProcessBus, Sinks};
use crate::cache::{InProcessCache, ProductCache, RedisCache};
use crate::carts::Carts;
use crate::catalog::{Catalog, ProductCacheInvalidation, ProductEffects};
use crate::clock::Clock;
use crate::cluster::ClusterNode;
use crate::config::Config;
use crate::config::{BusBackend, StoreBackend};
use crate::domain::cart::Cart;
use crate::domain::coupon::CouponState;
use crate::domain::order::OrderState;
use crate::domain::payment::PaymentState;
use crate::domain::product::ProductState;
use crate::faults::{Chaos, FaultPoints, Killable};
use crate::http::{self, AppServices, AppState, Dependencies};
use crate::media::MediaStore;
use crate::notify::{Emailer, NotificationHub, Notifier, RecordingMailer, Remembered, StoredNotifications};
use crate::orders::{CheckoutPolicy, OrderSaga, Orders};
use crate::payments::{PaymentEffects, PaymentProvider, SimulatedProvider};
use crate::ratelimit::{Budgets, RateLimits};
use crate::redis_client::RedisClient;
use crate::store::chaos::ChaosEventStore;
use crate::store::embedded::{CloseWatch, EmbeddedStore};
use crate::store::mongo::MongoStore;
use crate::store::redis::RedisRevocations;
use crate::store::EventStore;
use crate::store::RevocationStore;
use crate::store::{EventRecord, Store};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for each background task, and for the bus to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often active entities (sagas in progress, reservations to expire) are checked to be running.
const RESUME_EVERY: Duration = Duration::from_secs(5);

pub struct Application {
    listener: TcpListener,
    /// `telemetry.metrics_addr`, when metrics have a listener of their own.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    /// Lets shutdown wait until the embedded store's file is closed.
    store_closed: Option<CloseWatch>,
    bus: Arc<dyn EventBus>,
    stop_background: watch::Sender<bool>,
    /// The background tasks, by name, for shutdown to wait on (and name the one that does not stop).
    background: Vec<(&'static str, JoinHandle<()>)>,
}

impl Application {
    /// Binds `http.addr` and builds everything.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.http.addr)
            .await
            .with_context(|| format!("cannot listen on http.addr = {}", config.http.addr))?;
        Self::with_listener(config, listener).await
    }

    /// Builds everything around an already bound listener (tests bind port 0), with the simulated payment provider.
    pub async fn with_listener(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        // It keeps a key for twice the longest a payment waits before asking about it again.
        let retention = 2 * Duration::from_millis(config.payments.recheck_after_ms);
        let latency = Duration::from_millis(config.payments.simulated_latency_ms);
        let provider = Arc::new(SimulatedProvider::with_retention(latency, retention));
        Self::with_provider(config, listener, provider).await
    }

    /// Builds everything with the given payment provider.
    pub async fn with_provider(
        config: Config,
        listener: TcpListener,
        provider: Arc<dyn PaymentProvider>,
    ) -> anyhow::Result<Self> {
        let redis = match config.redis.url.as_str() {
            "" => None,
            url => Some(RedisClient::open(url, &config.redis.key_prefix).context("redis.url")?),
        };
        let (store, store_closed) = open_store(&config).await?;
        let secret = jwt_secret(&config)?;

        let cache_ttl = Duration::from_secs(config.cache.product_ttl_secs);
        let cache: Arc<dyn ProductCache> = match &redis {
            Some(redis) => Arc::new(RedisCache::new(redis.clone(), cache_ttl)),
            None => Arc::new(InProcessCache::new(cache_ttl, config.cache.product_capacity)),
        };
        let revocations: Arc<dyn RevocationStore> = match &redis {
            Some(redis) => Arc::new(RedisRevocations::new(redis.clone())),
            None => store.clone(),
        };
        let limits = RateLimits::new(
            redis.as_ref(),
            Budgets {
                auth_per_client: config.http.auth_rate_limit_per_minute,
                refresh_per_client: config.http.refresh_rate_limit_per_minute,
                signin_per_account: config.auth.signin_attempts_per_account_per_minute,
                checkout_per_user: config.checkout.checkouts_per_user_per_minute,
                coupon_per_user: config.checkout.coupon_attempts_per_user_per_minute,
            },
        );
        let kafka_settings = {
            let kafka = &config.bus.kafka;
            let partitions = i32::try_from(kafka.partitions).context("bus.kafka.partitions")?;
            let mut settings = KafkaSettings::new(&kafka.brokers, &kafka.topic_prefix, partitions, &kafka.group_id);
            settings.security = KafkaSecurity {
                protocol: kafka.security_protocol.name().to_string(),
                sasl_mechanism: kafka.sasl_mechanism.clone(),
                sasl_username: kafka.sasl_username.clone(),
                sasl_password: kafka.sasl_password.clone(),
                ssl_ca_location: kafka.ssl_ca_location.clone(),
                ssl_certificate_location: kafka.ssl_certificate_location.clone(),
                ssl_key_location: kafka.ssl_key_location.clone(),
            };
            // Signs the cluster's requests and answers, and every event on the Kafka bus.
            settings.signer = Signer::new(&config.cluster.secret);
            settings.session_timeout = Duration::from_millis(config.cluster.session_timeout_ms);
            settings
        };
        let chaos = Chaos::new(&config.chaos);
        let cluster = match config.cluster.enabled {
            false => None,
            true => {
                let (id, timeout) = (config.node_id(), Duration::from_millis(config.cluster.request_timeout_ms));
                let node =
                    ClusterNode::connect(&kafka_settings, &id, timeout, chaos.clone()).await.with_context(|| {
                        format!("cannot join the cluster through bus.kafka.brokers = {}", config.bus.kafka.brokers)
                    })?;
                Some(node)
            }
        };
        // The entities' journal, and the relay's outbox, as the chaos switch sees them (unchanged while it is off).
        let journal: Arc<dyn EventStore> = Arc::new(ChaosEventStore::new(store.clone(), chaos.clone()));
        let committed = Arc::new(Notify::new());
        let ctx = Arc::new(EntityContext {
            store: journal.clone(),
            committed: committed.clone(),
            observers: vec![Arc::new(ProductCacheInvalidation(cache.clone()))],
            snapshot_every: config.store.snapshot_every,
            idle_timeout: Duration::from_secs(config.actors.idle_timeout_secs),
            clock: Clock::new(),
            faults: Arc::new(FaultPoints::default()),
            chaos: chaos.clone(),
            live_limit: LiveLimit::new(config.actors.max_live_entities),
            placement: cluster.clone().map(|node| node as Arc<dyn crate::actors::placement::Placement>),
        });
        let policy = RestartPolicy {
            max_restarts: config.actors.max_restarts,
            window: Duration::from_secs(config.actors.restart_window_secs),
        };
        let timeout = config.call_timeout();
        let product_effects = ProductEffects { sales: store.clone() };
        let products =
            EntityRouter::<ProductState>::start(ctx.clone(), Arc::new(product_effects), policy, timeout).await?;
        let carts = EntityRouter::<Cart>::start(ctx.clone(), Arc::new(NoEffects), policy, timeout).await?;
        let coupons = EntityRouter::<CouponState>::start(ctx.clone(), Arc::new(NoEffects), policy, timeout).await?;
        let payment_effects = PaymentEffects {
            provider,
            timeout: Duration::from_millis(config.payments.timeout_ms),
            max_attempts: config.payments.max_attempts,
            recheck_after: Duration::from_millis(config.payments.recheck_after_ms),
        };
        let payments =
            EntityRouter::<PaymentState>::start(ctx.clone(), Arc::new(payment_effects), policy, timeout).await?;
        // A charge step waits for its payment through every attempt, with room to spare.
        let attempts = u64::from(config.payments.max_attempts);
        let payment_wait = Duration::from_millis(config.payments.timeout_ms * attempts * 2 + 5_000);
        let saga = OrderSaga {
            products: products.clone(),
            carts: carts.clone(),
            payments: payments.clone(),
            coupons: coupons.clone(),
            payment_wait,
        };
        let orders = EntityRouter::<OrderState>::start(ctx.clone(), Arc::new(saga), policy, timeout).await?;

        let catalog = Catalog::new(products.clone(), store.clone(), cache.clone());
        let carts_service = Carts::new(carts.clone(), catalog.clone());
        let orders_service = Orders::new(
            orders.clone(),
            coupons.clone(),
            carts_service.clone(),
            catalog.clone(),
            store.clone(),
            ctx.clock,
            CheckoutPolicy {
                reservation_ttl: Duration::from_secs(config.checkout.reservation_ttl_secs),
                checkouts: limits.checkout.clone(),
                coupon_codes: limits.coupon.clone(),
                max_pending_orders: config.checkout.max_pending_orders_per_user,
                live: ctx.live_limit.clone(),
            },
        );

        let hub = NotificationHub::new(1024);
        let watchers = hub.watchers();
        let remembered = Arc::new(Remembered::new(store.clone()));
        let stored = StoredNotifications::default();
        let notifier = Notifier::new(store.clone(), remembered.clone(), hub.clone(), stored.clone(), false);
        let keeper = Notifier::new(store.clone(), remembered.clone(), hub.clone(), stored, true);
        let emailer = Emailer {
            sales: remembered,
            users: store.clone(),
            mailer: Arc::new(RecordingMailer { store: store.clone() }),
        };
        let bus: Arc<dyn EventBus> = match config.bus.backend {
            BusBackend::InProcess => Arc::new(InProcessBus::new(4096)),
            BusBackend::Kafka => {
                let kafka = &config.bus.kafka;
                let bus = KafkaBus::connect(&kafka_settings)
                    .await
                    .with_context(|| format!("cannot use Kafka at bus.kafka.brokers = {}", kafka.brokers))?;
                tracing::info!(brokers = %kafka.brokers, prefix = %kafka.topic_prefix, "Kafka bridge ready");
                if kafka_settings.signer.is_none() {
                    tracing::warn!(
                        "cluster.secret is empty: events on Kafka are neither signed nor checked, so anything that \
                         can write to the event topics can make this process notify users and invalidate its cache"
                    );
                }
                Arc::new(bus)
            }
        };
        // Notifications are stored once per deployment (the keeper), and every process pushes them to the
        // WebSockets it holds (storing them first if its keeper has not: storing is idempotent by event); an email
        // is sent once per deployment.
        bus.attach(Sinks { every_process: vec![Arc::new(notifier)], once: vec![Arc::new(keeper), Arc::new(emailer)] })
            .await
            .context("attaching the notifier and the emailer to the bus")?;
        let (stop_background, stop) = watch::channel(false);
        let resume_now = match &cluster {
            Some(node) => {
                let hosts: Vec<Arc<dyn crate::actors::placement::Host>> = vec![
                    Arc::new(products.clone()),
                    Arc::new(carts.clone()),
                    Arc::new(coupons.clone()),
                    Arc::new(payments.clone()),
                    Arc::new(orders.clone()),
                ];
                node.serve(hosts).await.context("joining the cluster")?;
                node.assigned()
            }
            None => Arc::new(Notify::new()),
        };
        let resumer = Resumer::new(
            store.clone(),
            vec![
                Arc::new(products),
                Arc::new(carts),
                Arc::new(coupons.clone()),
                Arc::new(payments.clone()),
                Arc::new(orders),
            ],
        );
        let mut relay = OutboxRelay::new(journal, Arc::new(ChaosBus::new(bus.clone(), chaos.clone())), committed);
        if let Some(node) = &cluster {
            // Each event is published by the node hosting its entity, not by every node reading the shared outbox.
            let node = node.clone();
            relay = relay.scoped(crate::store::OutboxScope::Hosted(Arc::new(move |stream: &str| {
                node.shards().hosts(crate::bridge::kind_and_id(stream).1)
            })));
        }
        let killable: Vec<Arc<dyn Killable>> = vec![
            Arc::new(catalog.router().clone()),
            Arc::new(carts_service.router().clone()),
            Arc::new(coupons.clone()),
            Arc::new(payments.clone()),
            Arc::new(orders_service.router().clone()),
        ];
        // The process's metrics recorder, installed before anything records, and its upkeep.
        let metrics = config.telemetry.metrics.then(|| {
            crate::telemetry::metrics::handle();
            tokio::spawn(crate::telemetry::metrics::upkeep(stop.clone()))
        });
        let background = vec![
            ("outbox relay", relay.spawn(stop.clone())),
            ("cache invalidation", spawn_cache_invalidation(bus.subscribe(), catalog.clone(), stop.clone())),
            ("resumer", resumer.spawn(RESUME_EVERY, resume_now, stop.clone())),
            ("purge", spawn_purge(store.clone(), revocations.clone(), stop.clone())),
            ("chaos", chaos.spawn(killable, stop)),
        ];
        let background = background.into_iter().chain(metrics.map(|task| ("metrics upkeep", task))).collect();

        let (memory, iterations) = (config.auth.argon2_memory_kib, config.auth.argon2_iterations);
        let (workers, queue) = (config.hash_workers(), config.auth.hash_queue);
        let hasher = tokio::task::spawn_blocking(move || PasswordHasher::new(memory, iterations, workers, queue))
            .await?
            .context("auth.argon2_memory_kib / auth.argon2_iterations")?;
        let auth = Arc::new(AuthService::new(
            store.clone(),
            revocations.clone(),
            TokenKeys::new(&secret),
            hasher,
            config.auth.access_token_ttl_secs,
            config.auth.refresh_token_ttl_secs,
        ));
        if let Some(admin) = &config.auth.bootstrap_admin {
            if auth.ensure_admin(&admin.email, &admin.password).await.context("creating auth.bootstrap_admin")? {
                tracing::info!(email = %admin.email, "bootstrap admin account created");
            } else {
                // The email is taken: by the administrator an earlier start created, or by someone else, whom this
                // setting must not silently leave as the only way to an administrator that never comes.
                let email = crate::domain::user::normalize_email(&admin.email).context("auth.bootstrap_admin.email")?;
                let existing = store.user_by_email(&email).await.context("reading auth.bootstrap_admin's account")?;
                if existing.is_some_and(|u| u.role != crate::domain::user::Role::Admin) {
                    anyhow::bail!(
                        "auth.bootstrap_admin.email {email} belongs to an account that is not an administrator; \
                         choose another email for the bootstrap admin"
                    );
                }
            }
        }

        let media = MediaStore::from_config(&config.media, &config.store.data_dir).context("media.*")?;
        tracing::info!(backend = media.backend(), "media store ready");

        let state = AppState::new(AppServices {
            auth,
            catalog,
            carts: carts_service,
            orders: orders_service,
            coupons,
            payments,
            sales: store.clone(),
            notifications: store.clone(),
            hub,
            ws_auth_timeout: Duration::from_millis(config.notifications.ws_auth_timeout_ms),
            sockets: http::SocketLimits::new(
                config.notifications.max_sockets_per_user,
                config.notifications.max_sockets_per_client,
                watchers,
            ),
            ctx,
            limits,
            ready: Default::default(),
            dependencies: Arc::new(Dependencies {
                store_backend: config.store.backend.name(),
                store: store.clone(),
                revocations,
                bus: bus.clone(),
                cache,
            }),
            cookie_secure: config.auth.cookie_secure,
            http: Arc::new(config.http.clone()),
            cluster,
            metrics: config.telemetry.metrics && config.telemetry.metrics_addr.is_empty(),
            media,
            max_image_bytes: config.media.max_image_bytes,
            web_policy: http::web_policy(&config.media.image_origins),
        });
        let metrics_listener = match (config.telemetry.metrics, config.telemetry.metrics_addr.as_str()) {
            (false, _) | (true, "") => None,
            (true, addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on telemetry.metrics_addr {addr}"))?,
            ),
        };
        Ok(Self { listener, metrics_listener, state, store_closed, bus, stop_background, background })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served when it has a listener of its own (`telemetry.metrics_addr`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn bus(&self) -> Arc<dyn EventBus> {
        self.bus.clone()
    }

    /// Serves until `shutdown` completes, then stops gracefully: in-flight requests finish, no new ones are
    /// accepted, entity actors drain their mailboxes, and the outbox is flushed to the bus.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "commercex listening");
        let state = self.state.clone();
        let limits = http::server::Limits::from(state.http.as_ref()).fit_open_file_limit();
        let (stop_metrics, metrics_stopped) = watch::channel(false);
        let metrics = self.metrics_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics listening");
            }
            let mut stopped = metrics_stopped;
            let until = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tokio::spawn(async move {
                if let Err(error) =
                    axum::serve(listener, crate::telemetry::metrics::listener_app()).with_graceful_shutdown(until).await
                {
                    tracing::warn!(%error, "the metrics listener stopped");
                }
            })
        });
        http::server::serve(self.listener, http::app(self.state), limits, shutdown).await;
        let _ = stop_metrics.send(true);
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        tracing::info!("http intake stopped; draining entity actors");
        // A cluster node hands its shards over first: leaving the group drains them, and the others take them.
        if let Some(cluster) = &state.cluster {
            cluster.leave().await;
        }
        // Orders first: they are the ones calling the other entities. Each kind's drain is bounded by itself; the
        // bound here names a kind whose drain did not end at all.
        type Drain<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
        let drains: [(&str, Drain<'_>); 5] = [
            ("order", Box::pin(state.orders.router().shutdown(DRAIN_TIMEOUT))),
            ("payment", Box::pin(state.payments.shutdown(DRAIN_TIMEOUT))),
            ("coupon", Box::pin(state.coupons.shutdown(DRAIN_TIMEOUT))),
            ("cart", Box::pin(state.carts.router().shutdown(DRAIN_TIMEOUT))),
            ("product", Box::pin(state.catalog.router().shutdown(DRAIN_TIMEOUT))),
        ];
        for (kind, drain) in drains {
            if tokio::time::timeout(STOP_TIMEOUT, drain).await.is_err() {
                tracing::warn!(kind, timeout = ?STOP_TIMEOUT, "entity actors did not drain in time; left behind");
            }
        }
        drop(state);
        // Each step is bounded, so a SIGTERM always ends the process; a step that runs out of time is named in the
        // log. What it leaves is safe: events still in the outbox are published on the next start, and an event a
        // consumer did not mark handled is delivered again.
        let _ = self.stop_background.send(true);
        for (name, task) in self.background {
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                tracing::warn!(task = name, timeout = ?STOP_TIMEOUT, "a background task did not stop in time; left behind");
            }
        }
        // The relay has stopped: consumers finish the event in hand and commit, the producer delivers the rest.
        if tokio::time::timeout(STOP_TIMEOUT, self.bus.close()).await.is_err() {
            tracing::warn!(timeout = ?STOP_TIMEOUT, "the bus did not close in time; its consumers' last events come again");
        }
        // Actors release the store as their tasks wind down; wait for the file to be closed.
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        if let Some(closed) = &self.store_closed {
            while !closed.is_closed() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !closed.is_closed() {
                tracing::warn!("the store was still in use at the end of shutdown");
            }
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Drops cached products when their events arrive, including events committed by other nodes once the bus spans
/// several nodes.
fn spawn_cache_invalidation(
    mut events: broadcast::Receiver<EventRecord>,
    catalog: Catalog,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(e) => {
                        if let Some(id) = e.stream.strip_prefix("product:") {
                            catalog.invalidate(id).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "cache invalidation lagged"),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = stop.changed() => break,
            }
        }
    })
}

/// How often expired refresh tokens and revocations are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Deletes expired refresh tokens and revocations at start and every [`PURGE_EVERY`], so that sign-ins and
/// sign-outs do not grow the store for good. Every process may do it: deleting what expired is idempotent.
fn spawn_purge(
    store: Arc<dyn Store>,
    revocations: Arc<dyn RevocationStore>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PURGE_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let now = chrono::Utc::now();
                    match tokio::try_join!(store.purge_expired_refresh_tokens(now), revocations.purge_expired(now)) {
                        Ok((0, 0)) => {}
                        Ok((tokens, revoked)) => tracing::info!(tokens, revoked, "purged expired refresh tokens and revocations"),
                        Err(error) => tracing::warn!(%error, "purging expired refresh tokens and revocations failed; trying again later"),
                    }
                }
                _ = stop.changed() => break,
            }
        }
    })
}

/// The configured store backend, and for the embedded one a way to know when its file is closed.
async fn open_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, Option<CloseWatch>)> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let (data_dir, cache_mib) = (config.store.data_dir.clone(), config.store.cache_mib);
            let open = move || EmbeddedStore::open_with_cache(&data_dir, cache_mib);
            let store = tokio::task::spawn_blocking(open).await?.with_context(|| {
                format!("cannot open the store in store.data_dir = {}", config.store.data_dir.display())
            })?;
            let closed = store.close_watch();
            Ok((Arc::new(store), Some(closed)))
        }
        StoreBackend::Mongodb => {
            let mongo = &config.store.mongodb;
            let store = MongoStore::connect(&mongo.uri, &mongo.database).await.with_context(|| {
                format!("cannot reach MongoDB at store.mongodb.uri = {}", crate::config::redact_uri(&mongo.uri))
            })?;
            tracing::info!(uri = %crate::config::redact_uri(&mongo.uri), database = %mongo.database, "MongoDB store ready");
            Ok((Arc::new(store), None))
        }
    }
}

/// The configured secret, or one generated once per data directory and kept in `jwt-secret` there.
fn jwt_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if !config.auth.jwt_secret.is_empty() {
        return Ok(config.auth.jwt_secret.as_bytes().to_vec());
    }
    let path = config.store.data_dir.join("jwt-secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let secret = existing.trim();
        if secret.len() >= 32 {
            return Ok(secret.as_bytes().to_vec());
        }
    }
    let secret = random_token();
    write_private(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    tracing::warn!(path = %path.display(), "auth.jwt_secret is not set: generated a random secret for this data directory");
    Ok(secret.into_bytes())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
