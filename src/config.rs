//! Configuration: defaults in code, an optional TOML file, then `COMMERCEX__SECTION__KEY` environment overrides.
//!
//! Every key is documented in the root `config.toml`. A bad or unknown value fails at start-up with the key named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const ENV_PREFIX: &str = "COMMERCEX__";
const MAX_RECHECK_AFTER_MS: u64 = 86_400_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    pub actors: ActorsConfig,
    pub cache: CacheConfig,
    pub checkout: CheckoutConfig,
    pub payments: PaymentsConfig,
    pub notifications: NotificationsConfig,
    pub bus: BusConfig,
    pub redis: RedisConfig,
    pub cluster: ClusterConfig,
    pub chaos: ChaosConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub media: MediaConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    /// Origins allowed by CORS; empty disables CORS, `["*"]` allows any origin.
    pub cors_allowed_origins: Vec<String>,
    /// Requests per minute per client address on signup/signin.
    pub auth_rate_limit_per_minute: u32,
    /// Requests per minute per client address on refresh (every open tab of a shop refreshes on its own).
    pub refresh_rate_limit_per_minute: u32,
    /// Proxies whose `X-Forwarded-For`/`Forwarded` is believed, to tell the client behind them (CIDRs).
    pub trusted_proxies: Vec<crate::netaddr::Cidr>,
    /// A request head (request line and headers) must arrive whole within this time, from the connection's start or
    /// from the first byte of a later request on it.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight is closed after this long (open WebSockets are never idle).
    pub keep_alive_timeout_ms: u64,
    /// A response that cannot be written for this long (the client does not read it) closes its connection.
    pub send_timeout_ms: u64,
    /// Open connections (WebSockets included); past it new connections get a 503 and are closed.
    pub max_connections: usize,
    /// Open connections from one client address (an IPv6 /64); trusted proxies are not counted.
    pub max_connections_per_client: usize,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC secret for access tokens; empty means "generate one per data directory".
    pub jwt_secret: String,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// Always mark auth cookies `Secure`; otherwise they are `Secure` when the request came over HTTPS (as a
    /// TLS-terminating proxy says with `X-Forwarded-Proto` or `Forwarded`).
    pub cookie_secure: bool,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// Threads that hash and verify passwords; 0 means one per core.
    pub hash_workers: usize,
    /// Hashing jobs allowed to wait for a thread; past that, sign-up/sign-in answer 503 with `Retry-After`.
    pub hash_queue: usize,
    /// Sign-in attempts per minute per account, from any address.
    pub signin_attempts_per_account_per_minute: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_admin: Option<BootstrapAdmin>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapAdmin {
    pub email: String,
    pub password: String,
}

/// Everything but the JWT secret, which is never shown.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.jwt_secret.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &secret)
            .field("access_token_ttl_secs", &self.access_token_ttl_secs)
            .field("refresh_token_ttl_secs", &self.refresh_token_ttl_secs)
            .field("cookie_secure", &self.cookie_secure)
            .field("argon2_memory_kib", &self.argon2_memory_kib)
            .field("argon2_iterations", &self.argon2_iterations)
            .field("hash_workers", &self.hash_workers)
            .field("hash_queue", &self.hash_queue)
            .field("signin_attempts_per_account_per_minute", &self.signin_attempts_per_account_per_minute)
            .field("bootstrap_admin", &self.bootstrap_admin)
            .finish()
    }
}

impl std::fmt::Debug for BootstrapAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAdmin").field("email", &self.email).field("password", &"<redacted>").finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub data_dir: PathBuf,
    /// Write a snapshot of an entity every this many events.
    pub snapshot_every: u64,
    /// Memory the embedded store may keep of its file's pages, in MiB.
    pub cache_mib: u64,
    pub mongodb: MongoConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// One `redb` file in `store.data_dir`: nothing else to run, one process.
    Embedded,
    /// A MongoDB deployment shared by every process.
    Mongodb,
}

impl StoreBackend {
    /// The name used in the configuration and in `/ready`.
    pub fn name(self) -> &'static str {
        match self {
            StoreBackend::Embedded => "embedded",
            StoreBackend::Mongodb => "mongodb",
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoConfig {
    pub uri: String,
    pub database: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub backend: BusBackend,
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusBackend {
    /// Events reach this process's own subscribers only.
    InProcess,
    /// Events go through Kafka topics, so every process sees every write.
    Kafka,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Topics are `{topic_prefix}.{kind}`: `commercex.product`, `commercex.order`, ...
    pub topic_prefix: String,
    /// Partitions of each topic, used when the topics are created at start-up.
    pub partitions: u32,
    /// Consumer group shared by every process for what must happen once; each process also gets its own group.
    pub group_id: String,
    /// How every Kafka client (producer, consumers, admin) reaches the brokers.
    pub security_protocol: KafkaSecurityProtocol,
    /// With `sasl_*`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// Never shown (`Debug`, `check-config`).
    pub sasl_password: String,
    /// With `ssl` / `sasl_ssl`: PEM file of the CA that signed the brokers' certificates; empty: the system's.
    pub ssl_ca_location: String,
    /// With `ssl` / `sasl_ssl`: PEM files of this client's certificate and key (both or neither), for brokers that
    /// authenticate clients by certificate.
    pub ssl_certificate_location: String,
    pub ssl_key_location: String,
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurityProtocol {
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS (a PLAIN password travels in clear).
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl KafkaSecurityProtocol {
    /// The value of librdkafka's `security.protocol`.
    pub fn name(self) -> &'static str {
        match self {
            KafkaSecurityProtocol::Plaintext => "plaintext",
            KafkaSecurityProtocol::Ssl => "ssl",
            KafkaSecurityProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaSecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, KafkaSecurityProtocol::SaslPlaintext | KafkaSecurityProtocol::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, KafkaSecurityProtocol::Ssl | KafkaSecurityProtocol::SaslSsl)
    }
}

/// The SASL mechanisms `bus.kafka.sasl_mechanism` may name.
const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("group_id", &self.group_id)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &"<redacted>")
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .finish()
    }
}

impl KafkaConfig {
    /// The combinations of `security_protocol`, `sasl_*` and `ssl_*` that can work: SASL needs a mechanism, a user
    /// and a password, and SASL or TLS settings are refused where they would be ignored.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let protocol = self.security_protocol;
        let sasl = [
            ("bus.kafka.sasl_mechanism", &self.sasl_mechanism),
            ("bus.kafka.sasl_username", &self.sasl_username),
            ("bus.kafka.sasl_password", &self.sasl_password),
        ];
        if protocol.sasl() {
            if !SASL_MECHANISMS.contains(&self.sasl_mechanism.as_str()) {
                return Err(key_error(
                    "bus.kafka.sasl_mechanism",
                    format!(
                        "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with security_protocol = \"{}\"",
                        protocol.name()
                    ),
                ));
            }
            if let Some((key, _)) = sasl.iter().find(|(_, value)| value.is_empty()) {
                return Err(key_error(*key, format!("must be set with security_protocol = \"{}\"", protocol.name())));
            }
        } else if let Some((key, _)) = sasl.iter().find(|(_, value)| !value.is_empty()) {
            return Err(key_error(*key, "is used only with security_protocol = \"sasl_plaintext\" or \"sasl_ssl\""));
        }
        let tls = [
            ("bus.kafka.ssl_ca_location", &self.ssl_ca_location),
            ("bus.kafka.ssl_certificate_location", &self.ssl_certificate_location),
            ("bus.kafka.ssl_key_location", &self.ssl_key_location),
        ];
        if !protocol.tls() {
            if let Some((key, _)) = tls.iter().find(|(_, value)| !value.is_empty()) {
                return Err(key_error(*key, "is used only with security_protocol = \"ssl\" or \"sasl_ssl\""));
            }
        }
        if self.ssl_certificate_location.is_empty() != self.ssl_key_location.is_empty() {
            return Err(key_error(
                "bus.kafka.ssl_key_location",
                "set both ssl_certificate_location and ssl_key_location (a client certificate), or neither",
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Entities sharded over the nodes by Kafka partition; needs MongoDB and Kafka.
    pub enabled: bool,
    /// This node's name; empty: host name and HTTP port.
    pub node_id: String,
    /// How long a forwarded command may take before the caller gets a 503.
    pub request_timeout_ms: u64,
    /// How long the group waits for a silent node before its shards (and its share of the event partitions) move.
    pub session_timeout_ms: u64,
    /// Shared by every node, at least 32 characters; required when `enabled`. Signs (HMAC-SHA256) the requests and
    /// answers the nodes send each other, and every event on the Kafka bus (also without a cluster). Empty: events
    /// are neither signed nor checked. Never shown (`Debug`, `check-config`).
    pub secret: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: String::new(),
            request_timeout_ms: 5_000,
            session_timeout_ms: 10_000,
            secret: String::new(),
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("enabled", &self.enabled)
            .field("node_id", &self.node_id)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The longest `cluster.request_timeout_ms`: a call's deadline (and twice it, the furthest ahead a node accepts one)
/// stays a sane instant.
const MAX_CLUSTER_REQUEST_TIMEOUT_MS: u64 = 3_600_000;
/// The range of `cluster.session_timeout_ms` (Kafka brokers accept 6 s to 30 min by default).
const CLUSTER_SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=300_000;

impl Config {
    /// `cluster.node_id`, or the host name and HTTP port when it is empty.
    pub fn node_id(&self) -> String {
        if !self.cluster.node_id.is_empty() {
            return self.cluster.node_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into());
        let host: String = host.chars().map(|c| if node_id_char(c) { c } else { '-' }).collect();
        format!("{host}-{}", self.http.addr.port())
    }
}

fn node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-".contains(c)
}

/// Faults injected on purpose, to watch a loaded deployment lose nothing (`crate::faults::Chaos`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosConfig {
    pub enabled: bool,
    /// Random live entity actors killed per minute, as crashes.
    pub kill_actors_per_minute: u32,
    /// Share (0 to 1) of journal calls delayed by `store_delay_ms`.
    pub store_delay_share: f64,
    pub store_delay_ms: u64,
    /// Share (0 to 1) of journal calls that fail as if the store were unreachable.
    pub store_fail_share: f64,
    /// Share (0 to 1) of publishes to the bus that fail.
    pub bus_fail_share: f64,
    /// Cluster: on average once in this many seconds the node drops out of the group (0: never) ...
    pub drop_out_every_secs: u64,
    /// ... for this long.
    pub drop_out_secs: u64,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            kill_actors_per_minute: 0,
            store_delay_share: 0.0,
            store_delay_ms: 0,
            store_fail_share: 0.0,
            bus_fail_share: 0.0,
            drop_out_every_secs: 0,
            drop_out_secs: 15,
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Empty: cache, revocations and rate limits live in this process.
    pub url: String,
    /// Prefix of every key this deployment writes, so deployments can share one Redis.
    pub key_prefix: String,
}

/// `scheme://user:password@host` shown as `scheme://***@host`: URIs are never logged with their credentials.
pub fn redact_uri(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &uri[..scheme], &uri[at..]),
        _ => uri.to_string(),
    }
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig").field("uri", &redact_uri(&self.uri)).field("database", &self.database).finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_uri(&self.url))
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorsConfig {
    pub idle_timeout_secs: u64,
    pub call_timeout_ms: u64,
    pub max_restarts: u32,
    pub restart_window_secs: u64,
    /// Live entity actors on this node, all kinds together; past it the least recently used idle ones passivate.
    pub max_live_entities: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub product_ttl_secs: u64,
    pub product_capacity: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckoutConfig {
    /// How long stock stays reserved for an order that has not been paid; then the products release it. At most a
    /// week: products forget old outcomes by that bound.
    pub reservation_ttl_secs: u64,
    /// Checkouts a user may start per minute.
    pub checkouts_per_user_per_minute: u32,
    /// Orders a user may have in progress (placed, not yet paid or failed) at once.
    pub max_pending_orders_per_user: u32,
    /// Coupon codes a user may try at checkout per minute.
    pub coupon_attempts_per_user_per_minute: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// Latency of the simulated payment provider.
    pub simulated_latency_ms: u64,
    /// Deadline of one provider call; a timeout counts as a transient failure.
    pub timeout_ms: u64,
    /// Charge attempts before a payment that keeps failing transiently is looked up by its idempotency key (and
    /// failed if the provider holds no charge).
    pub max_attempts: u32,
    /// A payment failed because the provider held no charge under its key looks the key up again this long after,
    /// in case a request still in flight was captured late (a capture found then is refunded). At least as long as
    /// the provider may take to process a request it has received.
    pub recheck_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// A WebSocket client that did not authenticate by header or cookie must send its token within this time.
    pub ws_auth_timeout_ms: u64,
    /// Open notification sockets per user; the oldest is closed for a new one past it.
    pub max_sockets_per_user: usize,
    /// Open notification sockets per client address (an IPv6 /64), before authentication too.
    pub max_sockets_per_client: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter such as `info` or `commercex=debug,tower_http=info`; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Serve Prometheus metrics at `GET /metrics`.
    pub metrics: bool,
    /// Where `/metrics` is served: a listener of its own (loopback by default, so the public API does not show
    /// it); empty: on `http.addr` with the API.
    pub metrics_addr: String,
    /// Base URL of an OTLP/HTTP collector (`http://127.0.0.1:4318`); spans go to `{it}/v1/traces`. Empty: no
    /// traces are exported.
    pub otlp_endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    pub backend: MediaBackend,
    /// Largest accepted product image, in bytes.
    pub max_image_bytes: usize,
    /// Origins (`https://cdn.example.com`) besides this one the web app may show product images from.
    pub image_origins: Vec<String>,
    pub s3: S3Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaBackend {
    /// Files under `<store.data_dir>/media`.
    Local,
    /// An S3-compatible bucket (`media.s3`).
    S3,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// Empty: AWS itself. Otherwise the base URL of an S3-compatible server, addressed path-style.
    pub endpoint: String,
    /// Empty: taken from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or the instance's role).
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// `https://cdn.example.com` or `http://127.0.0.1:9000`: what a `Content-Security-Policy` source list may hold,
/// and nothing that could end or extend it.
fn is_origin(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")) else { return false };
    let (host, port) = rest.rsplit_once(':').map_or((rest, None), |(h, p)| (h, Some(p)));
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    host_ok && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            backend: MediaBackend::Local,
            max_image_bytes: 5 * 1024 * 1024,
            image_origins: Vec::new(),
            s3: S3Config::default(),
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: String::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { metrics: true, metrics_addr: "127.0.0.1:9464".into(), otlp_endpoint: String::new() }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            cors_allowed_origins: Vec::new(),
            auth_rate_limit_per_minute: 30,
            refresh_rate_limit_per_minute: 120,
            trusted_proxies: Vec::new(),
            header_read_timeout_ms: 10_000,
            keep_alive_timeout_ms: 60_000,
            send_timeout_ms: 30_000,
            max_connections: 10_000,
            max_connections_per_client: 256,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 7 * 24 * 3600,
            cookie_secure: false,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            hash_workers: 0,
            hash_queue: 32,
            signin_attempts_per_account_per_minute: 10,
            bootstrap_admin: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            data_dir: PathBuf::from("./data"),
            snapshot_every: 100,
            cache_mib: crate::store::embedded::DEFAULT_CACHE_MIB,
            mongodb: MongoConfig::default(),
        }
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self { uri: "mongodb://127.0.0.1:27017".into(), database: "commercex".into() }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self { backend: BusBackend::InProcess, kafka: KafkaConfig::default() }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "commercex".into(),
            partitions: 12,
            group_id: "commercex".into(),
            security_protocol: KafkaSecurityProtocol::Plaintext,
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            ssl_ca_location: String::new(),
            ssl_certificate_location: String::new(),
            ssl_key_location: String::new(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: String::new(), key_prefix: "commercex".into() }
    }
}

impl Default for ActorsConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 300,
            call_timeout_ms: 5_000,
            max_restarts: 5,
            restart_window_secs: 60,
            max_live_entities: 20_000,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { product_ttl_secs: 60, product_capacity: 10_000 }
    }
}

impl Default for CheckoutConfig {
    fn default() -> Self {
        Self {
            reservation_ttl_secs: 900,
            checkouts_per_user_per_minute: 10,
            max_pending_orders_per_user: 3,
            coupon_attempts_per_user_per_minute: 10,
        }
    }
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self { simulated_latency_ms: 20, timeout_ms: 2_000, max_attempts: 4, recheck_after_ms: 300_000 }
    }
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self { ws_auth_timeout_ms: 5_000, max_sockets_per_user: 5, max_sockets_per_client: 50 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: "text".into(), level: "info".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("{0}")]
    Usage(String),
}

fn key_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key { key: key.into(), message: message.into() }
}

impl Config {
    /// Loads `path` (or `./config.toml` when it exists), then applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => Some(read_file(p)?),
            None => {
                let default = Path::new("config.toml");
                default.exists().then(|| read_file(default)).transpose()?
            }
        };
        Self::from_sources(file, std::env::vars())
    }

    /// The configuration as TOML, every key with its effective value, secrets masked: the JWT secret, the
    /// bootstrap admin's password, credentials in the MongoDB and Redis URIs, the S3 secret key, the Kafka SASL
    /// password and the cluster secret.
    pub fn masked_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.auth.jwt_secret.is_empty() {
            shown.auth.jwt_secret = format!("<masked: {} characters>", shown.auth.jwt_secret.len());
        }
        if let Some(admin) = shown.auth.bootstrap_admin.as_mut() {
            admin.password = "<masked>".into();
        }
        shown.store.mongodb.uri = redact_uri(&shown.store.mongodb.uri);
        shown.redis.url = redact_uri(&shown.redis.url);
        if !shown.media.s3.secret_access_key.is_empty() {
            shown.media.s3.secret_access_key = "<masked>".into();
        }
        if !shown.bus.kafka.sasl_password.is_empty() {
            shown.bus.kafka.sasl_password = "<masked>".into();
        }
        if !shown.cluster.secret.is_empty() {
            shown.cluster.secret = format!("<masked: {} characters>", shown.cluster.secret.len());
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
    }

    /// Builds a config from an optional parsed file and `COMMERCEX__*` variables; used by tests too.
    pub fn from_sources(
        file: Option<toml::Table>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let defaults = toml::Table::try_from(Config::default()).map_err(|e| key_error("<defaults>", e.to_string()))?;
        let mut merged = defaults.clone();
        if let Some(file) = file {
            merge(&mut merged, file);
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_from_env(&mut merged, &defaults, &path, &raw)?;
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let key = e.path().to_string();
            key_error(key, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("http.body_limit_bytes", self.http.body_limit_bytes as u64),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("http.auth_rate_limit_per_minute", u64::from(self.http.auth_rate_limit_per_minute)),
            ("http.header_read_timeout_ms", self.http.header_read_timeout_ms),
            ("http.keep_alive_timeout_ms", self.http.keep_alive_timeout_ms),
            ("http.send_timeout_ms", self.http.send_timeout_ms),
            ("http.max_connections", self.http.max_connections as u64),
            ("http.max_connections_per_client", self.http.max_connections_per_client as u64),
            ("http.refresh_rate_limit_per_minute", u64::from(self.http.refresh_rate_limit_per_minute)),
            (
                "auth.signin_attempts_per_account_per_minute",
                u64::from(self.auth.signin_attempts_per_account_per_minute),
            ),
            ("checkout.checkouts_per_user_per_minute", u64::from(self.checkout.checkouts_per_user_per_minute)),
            ("checkout.max_pending_orders_per_user", u64::from(self.checkout.max_pending_orders_per_user)),
            (
                "checkout.coupon_attempts_per_user_per_minute",
                u64::from(self.checkout.coupon_attempts_per_user_per_minute),
            ),
            ("notifications.max_sockets_per_user", self.notifications.max_sockets_per_user as u64),
            ("notifications.max_sockets_per_client", self.notifications.max_sockets_per_client as u64),
            ("auth.access_token_ttl_secs", self.auth.access_token_ttl_secs),
            ("auth.refresh_token_ttl_secs", self.auth.refresh_token_ttl_secs),
            ("auth.argon2_memory_kib", u64::from(self.auth.argon2_memory_kib)),
            ("auth.argon2_iterations", u64::from(self.auth.argon2_iterations)),
            ("store.snapshot_every", self.store.snapshot_every),
            ("store.cache_mib", self.store.cache_mib),
            ("actors.idle_timeout_secs", self.actors.idle_timeout_secs),
            ("actors.call_timeout_ms", self.actors.call_timeout_ms),
            ("actors.restart_window_secs", self.actors.restart_window_secs),
            ("actors.max_live_entities", self.actors.max_live_entities as u64),
            ("auth.hash_queue", self.auth.hash_queue as u64),
            ("cache.product_capacity", self.cache.product_capacity as u64),
            ("checkout.reservation_ttl_secs", self.checkout.reservation_ttl_secs),
            ("payments.timeout_ms", self.payments.timeout_ms),
            ("payments.max_attempts", u64::from(self.payments.max_attempts)),
            ("payments.recheck_after_ms", self.payments.recheck_after_ms),
            ("notifications.ws_auth_timeout_ms", self.notifications.ws_auth_timeout_ms),
            ("media.max_image_bytes", self.media.max_image_bytes as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(key_error(key, "must be greater than zero"));
            }
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 32 {
            return Err(key_error("auth.jwt_secret", "must be at least 32 characters (or empty to generate one)"));
        }
        if self.auth.refresh_token_ttl_secs <= self.auth.access_token_ttl_secs {
            return Err(key_error("auth.refresh_token_ttl_secs", "must be longer than auth.access_token_ttl_secs"));
        }
        let max_ttl = crate::domain::product::MAX_RESERVATION_TTL_SECS as u64;
        if self.checkout.reservation_ttl_secs > max_ttl {
            return Err(key_error("checkout.reservation_ttl_secs", format!("must be at most {max_ttl} (a week)")));
        }
        if self.payments.recheck_after_ms > MAX_RECHECK_AFTER_MS {
            return Err(key_error(
                "payments.recheck_after_ms",
                format!("must be at most {MAX_RECHECK_AFTER_MS} (a day)"),
            ));
        }
        if self.store.data_dir.as_os_str().is_empty() {
            return Err(key_error("store.data_dir", "must not be empty"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(key_error("log.level", format!("`{}` is not a valid log filter", self.log.level)));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(key_error("log.format", "must be `text` or `json`"));
        }
        if let Some(admin) = &self.auth.bootstrap_admin {
            crate::domain::user::normalize_email(&admin.email)
                .map_err(|e| key_error("auth.bootstrap_admin.email", e.to_string()))?;
            crate::domain::user::check_password(&admin.password, &admin.email)
                .map_err(|e| key_error("auth.bootstrap_admin.password", e.to_string()))?;
        }
        self.validate_backends()?;
        for origin in &self.http.cors_allowed_origins {
            if origin != "*" && origin.parse::<axum::http::HeaderValue>().is_err() {
                return Err(key_error("http.cors_allowed_origins", format!("`{origin}` is not a valid origin")));
            }
        }
        Ok(())
    }

    /// The backends: a setting that cannot work stops start-up with the key named.
    fn validate_backends(&self) -> Result<(), ConfigError> {
        if self.store.backend == StoreBackend::Mongodb {
            let uri = &self.store.mongodb.uri;
            if !uri.starts_with("mongodb://") {
                return Err(key_error(
                    "store.mongodb.uri",
                    "must be a `mongodb://` URI (list the hosts; SRV lookup is not built in)",
                ));
            }
            if self.auth.jwt_secret.is_empty() {
                // A generated secret lives in one process's data directory; processes sharing a database must agree.
                return Err(key_error("auth.jwt_secret", "must be set when store.backend = \"mongodb\""));
            }
            let db = &self.store.mongodb.database;
            let bad = |c: char| "/\\. \"$\0".contains(c);
            if db.is_empty() || db.len() > 63 || db.chars().any(bad) {
                return Err(key_error(
                    "store.mongodb.database",
                    "must be 1 to 63 characters without / \\ . space \" $",
                ));
            }
        }
        if self.bus.backend == BusBackend::Kafka {
            let kafka = &self.bus.kafka;
            if kafka
                .brokers
                .split(',')
                .any(|b| b.trim().rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
            {
                return Err(key_error("bus.kafka.brokers", "must be comma-separated `host:port` pairs"));
            }
            let topic_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
            if kafka.topic_prefix.is_empty()
                || kafka.topic_prefix.len() > 200
                || !kafka.topic_prefix.chars().all(topic_char)
            {
                return Err(key_error("bus.kafka.topic_prefix", "must be 1 to 200 of a-z A-Z 0-9 . _ -"));
            }
            if kafka.partitions == 0 {
                return Err(key_error("bus.kafka.partitions", "must be greater than zero"));
            }
            if kafka.group_id.is_empty() {
                return Err(key_error("bus.kafka.group_id", "must not be empty"));
            }
            kafka.validate_security()?;
        }
        for origin in &self.media.image_origins {
            if !is_origin(origin) {
                return Err(key_error(
                    "media.image_origins",
                    format!("`{origin}` is not an origin: scheme http or https, a host, an optional port, no path"),
                ));
            }
        }
        if self.media.backend == MediaBackend::S3 {
            let s3 = &self.media.s3;
            if s3.bucket.is_empty() {
                return Err(key_error("media.s3.bucket", "must be set when media.backend = \"s3\""));
            }
            let web = s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://");
            if !(s3.endpoint.is_empty() || web) {
                return Err(key_error("media.s3.endpoint", "must be an http(s) URL or empty (AWS)"));
            }
            if s3.access_key_id.is_empty() != s3.secret_access_key.is_empty() {
                return Err(key_error("media.s3.secret_access_key", "set both keys or neither"));
            }
        }
        if !CLUSTER_SESSION_TIMEOUT_MS.contains(&self.cluster.session_timeout_ms) {
            return Err(key_error("cluster.session_timeout_ms", "must be from 1000 to 300000"));
        }
        if self.cluster.enabled {
            if self.store.backend != StoreBackend::Mongodb {
                return Err(key_error(
                    "cluster.enabled",
                    "needs store.backend = \"mongodb\" (the nodes share one store)",
                ));
            }
            if self.bus.backend != BusBackend::Kafka {
                return Err(key_error(
                    "cluster.enabled",
                    "needs bus.backend = \"kafka\" (shards are Kafka partitions)",
                ));
            }
            let id = &self.cluster.node_id;
            if id.len() > 100 || !id.chars().all(node_id_char) {
                return Err(key_error("cluster.node_id", "must be at most 100 of a-z A-Z 0-9 . _ -"));
            }
            if self.cluster.request_timeout_ms == 0 {
                return Err(key_error("cluster.request_timeout_ms", "must be greater than zero"));
            }
            if self.cluster.request_timeout_ms > MAX_CLUSTER_REQUEST_TIMEOUT_MS {
                return Err(key_error(
                    "cluster.request_timeout_ms",
                    format!("must be at most {MAX_CLUSTER_REQUEST_TIMEOUT_MS} (an hour)"),
                ));
            }
            if self.cluster.secret.is_empty() {
                return Err(key_error(
                    "cluster.secret",
                    "must be set when cluster.enabled = true: at least 32 characters, the same on every node (the \
                     nodes sign the requests they send each other with it)",
                ));
            }
        }
        let min_secret = crate::bridge::signing::MIN_SECRET_LEN;
        if !self.cluster.secret.is_empty() && self.cluster.secret.len() < min_secret {
            return Err(key_error(
                "cluster.secret",
                format!("must be at least {min_secret} characters (or empty: events are then not signed)"),
            ));
        }
        let chaos = &self.chaos;
        for (key, share) in [
            ("chaos.store_delay_share", chaos.store_delay_share),
            ("chaos.store_fail_share", chaos.store_fail_share),
            ("chaos.bus_fail_share", chaos.bus_fail_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(key_error(key, "must be between 0 and 1"));
            }
        }
        let url = &self.redis.url;
        let redis_scheme = ["redis://", "redis+unix://"].iter().any(|p| url.starts_with(p));
        if !url.is_empty() && !redis_scheme {
            return Err(key_error("redis.url", "must be empty or a `redis://` or `redis+unix://` URL"));
        }
        if self.redis.key_prefix.is_empty() {
            return Err(key_error("redis.key_prefix", "must not be empty"));
        }
        Ok(())
    }

    /// Password-hashing threads: `auth.hash_workers`, or one per core when it is 0.
    pub fn hash_workers(&self) -> usize {
        match self.auth.hash_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    pub fn call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.actors.call_timeout_ms)
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax { path: path.into(), message: e.to_string() })
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets `path` from an environment string, typed like the default at that key (so `COMMERCEX__HTTP__ADDR=...`
/// stays a string and `..._TTL_SECS=60` becomes an integer).
fn set_from_env(
    target: &mut toml::Table,
    defaults: &toml::Table,
    path: &[String],
    raw: &str,
) -> Result<(), ConfigError> {
    let dotted = path.join(".");
    let (last, parents) = path.split_last().ok_or_else(|| key_error(&dotted, "empty key"))?;
    let mut table = target;
    let mut default_table = Some(defaults);
    for part in parents {
        default_table = default_table.and_then(|t| t.get(part)).and_then(|v| v.as_table());
        table = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| key_error(&dotted, "is not a section"))?;
    }
    let template = default_table.and_then(|t| t.get(last));
    let value = match template {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            raw.trim().parse().map_err(|_| key_error(&dotted, format!("`{raw}` is not an integer")))?,
        ),
        Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
            raw.trim().parse().map_err(|_| key_error(&dotted, format!("`{raw}` is not true/false")))?,
        ),
        Some(toml::Value::Array(_)) => {
            let items = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
            toml::Value::Array(items.map(|s| toml::Value::String(s.to_string())).collect())
        }
        _ => toml::Value::String(raw.to_string()),
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(c.http.addr.to_string(), "0.0.0.0:8000");
        assert_eq!(c.store.data_dir, PathBuf::from("./data"));
        assert!(c.auth.jwt_secret.is_empty());
    }

    #[test]
    fn env_overrides_file_with_types_of_the_default() {
        let file: toml::Table = "[http]\naddr = \"127.0.0.1:9000\"\n[actors]\nidle_timeout_secs = 10".parse().unwrap();
        let c = Config::from_sources(
            Some(file),
            env(&[("COMMERCEX__HTTP__ADDR", "127.0.0.1:18080"), ("COMMERCEX__ACTORS__CALL_TIMEOUT_MS", "250")]),
        )
        .unwrap();
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:18080");
        assert_eq!(c.actors.idle_timeout_secs, 10);
        assert_eq!(c.actors.call_timeout_ms, 250);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::from_sources(None, env(&[("COMMERCEX__HTTP__ADDR", "not-an-addr")])).unwrap_err();
        assert!(err.to_string().contains("http.addr"), "{err}");
        let err = Config::from_sources(None, env(&[("COMMERCEX__ACTORS__IDLE_TIMEOUT_SECS", "soon")])).unwrap_err();
        assert!(err.to_string().contains("actors.idle_timeout_secs"), "{err}");
        let file: toml::Table = "[http]\nadress = \"x\"".parse().unwrap();
        let err = Config::from_sources(Some(file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("adress"), "{err}");
        let err = Config::from_sources(None, env(&[("COMMERCEX__AUTH__JWT_SECRET", "short")])).unwrap_err();
        assert!(err.to_string().contains("auth.jwt_secret"), "{err}");
        let file: toml::Table =
            "[auth.bootstrap_admin]\nemail = \"root@example.com\"\npassword = \"x\"".parse().unwrap();
        let err = Config::from_sources(Some(file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("auth.bootstrap_admin.password"), "{err}");
    }

    #[test]
    fn the_jwt_secret_is_never_in_debug_output() {
        let secret = "a-jwt-secret-of-at-least-32-characters-0123";
        let c = Config::from_sources(None, env(&[("COMMERCEX__AUTH__JWT_SECRET", secret)])).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains(secret) && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn image_origins_and_trusted_proxies_are_checked() {
        let with = |key: &str, value: &str| Config::from_sources(None, env(&[(key, value)]));
        assert!(with("COMMERCEX__MEDIA__IMAGE_ORIGINS", "https://cdn.example.com,http://127.0.0.1:9000").is_ok());
        for bad in ["cdn.example.com", "https://cdn.example.com/x", "https://a.com; script-src *", "https://a.com:x"] {
            let err = with("COMMERCEX__MEDIA__IMAGE_ORIGINS", bad).unwrap_err();
            assert!(err.to_string().contains("media.image_origins"), "{bad}: {err}");
        }
        assert!(with("COMMERCEX__HTTP__TRUSTED_PROXIES", "10.0.0.0/8,2001:db8::/32,192.0.2.7").is_ok());
        let err = with("COMMERCEX__HTTP__TRUSTED_PROXIES", "10.0.0.0/33").unwrap_err();
        assert!(err.to_string().contains("http.trusted_proxies"), "{err}");
    }

    /// The documented root `config.toml` lists exactly the defaults of the code.
    #[test]
    fn root_config_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let documented = Config::from_sources(Some(read_file(&path).unwrap()), env(&[])).unwrap();
        let as_table = |c: &Config| toml::Table::try_from(c).unwrap();
        assert_eq!(as_table(&documented), as_table(&Config::default()));
        let text = std::fs::read_to_string(path).unwrap();
        fn check_documented(text: &str, path: &str, table: &toml::Table) {
            for (key, value) in table {
                match value.as_table() {
                    Some(inner) => {
                        assert!(text.contains(&format!("\n[{path}.{key}]")), "config.toml has no [{path}.{key}]");
                        check_documented(text, &format!("{path}.{key}"), inner);
                    }
                    None => assert!(text.contains(&format!("\n{key} =")), "config.toml does not document {path}.{key}"),
                }
            }
        }
        for (section, keys) in as_table(&Config::default()) {
            check_documented(&text, &section, keys.as_table().unwrap());
        }
        assert!(text.contains("[auth.bootstrap_admin]"));
    }

    #[test]
    fn cluster_mode_needs_mongodb_and_kafka_and_names_the_key() {
        let secret = ("COMMERCEX__AUTH__JWT_SECRET", "a-secret-of-at-least-thirty-two-characters");
        let on = ("COMMERCEX__CLUSTER__ENABLED", "true");
        let err = Config::from_sources(None, env(&[on])).unwrap_err().to_string();
        assert!(err.contains("cluster.enabled") && err.contains("mongodb"), "{err}");
        let mongo = ("COMMERCEX__STORE__BACKEND", "mongodb");
        let err = Config::from_sources(None, env(&[on, mongo, secret])).unwrap_err().to_string();
        assert!(err.contains("cluster.enabled") && err.contains("kafka"), "{err}");
        let kafka = ("COMMERCEX__BUS__BACKEND", "kafka");
        let err = Config::from_sources(None, env(&[on, mongo, secret, kafka])).unwrap_err().to_string();
        assert!(err.contains("cluster.secret") && err.contains("must be set"), "{err}");
        let cluster_secret = ("COMMERCEX__CLUSTER__SECRET", "a-cluster-secret-of-at-least-32-characters");
        let config = Config::from_sources(None, env(&[on, mongo, secret, kafka, cluster_secret])).unwrap();
        assert!(config.cluster.enabled);
        assert!(config.node_id().ends_with("-8000"), "{}", config.node_id());
        let share = Config::from_sources(None, env(&[("COMMERCEX__CHAOS__STORE_FAIL_SHARE", "1.5")]));
        assert!(share.unwrap_err().to_string().contains("chaos.store_fail_share"));
        let bad = ("COMMERCEX__CLUSTER__NODE_ID", "node one");
        let err =
            Config::from_sources(None, env(&[on, mongo, secret, kafka, cluster_secret, bad])).unwrap_err().to_string();
        assert!(err.contains("cluster.node_id"), "{err}");
        let short = ("COMMERCEX__CLUSTER__SECRET", "thirty-one-characters-is-short");
        let err = Config::from_sources(None, env(&[on, mongo, secret, kafka, short])).unwrap_err().to_string();
        assert!(err.contains("cluster.secret") && err.contains("at least 32"), "{err}");
        // A single process on the Kafka bus may set it too (its events are then signed); short is refused there too.
        assert!(Config::from_sources(None, env(&[kafka, cluster_secret])).is_ok());
        let err = Config::from_sources(None, env(&[kafka, short])).unwrap_err().to_string();
        assert!(err.contains("cluster.secret"), "{err}");
        let forever = ("COMMERCEX__CLUSTER__REQUEST_TIMEOUT_MS", "3600001");
        let err = Config::from_sources(None, env(&[on, mongo, secret, kafka, cluster_secret, forever]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.request_timeout_ms") && err.contains("at most"), "{err}");
    }

    #[test]
    fn kafka_security_settings_must_make_sense_together() {
        let kafka = ("COMMERCEX__BUS__BACKEND", "kafka");
        let with = |pairs: &[(&str, &str)]| {
            let mut all = vec![kafka];
            all.extend_from_slice(pairs);
            Config::from_sources(None, env(&all))
        };
        let refused = |pairs: &[(&str, &str)], key: &str| {
            let err = with(pairs).unwrap_err().to_string();
            assert!(err.contains(key), "{pairs:?}: {err}");
        };
        let sasl = ("COMMERCEX__BUS__KAFKA__SECURITY_PROTOCOL", "sasl_plaintext");
        let mechanism = ("COMMERCEX__BUS__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512");
        let user = ("COMMERCEX__BUS__KAFKA__SASL_USERNAME", "shop");
        let password = ("COMMERCEX__BUS__KAFKA__SASL_PASSWORD", "kafka-pass-word");
        let config = with(&[sasl, mechanism, user, password]).unwrap();
        assert_eq!(config.bus.kafka.security_protocol, KafkaSecurityProtocol::SaslPlaintext);
        assert_eq!(config.bus.kafka.security_protocol.name(), "sasl_plaintext");
        assert!(!format!("{config:?}").contains("kafka-pass-word"));
        refused(&[sasl, user, password], "bus.kafka.sasl_mechanism");
        refused(
            &[sasl, ("COMMERCEX__BUS__KAFKA__SASL_MECHANISM", "GSSAPI"), user, password],
            "bus.kafka.sasl_mechanism",
        );
        refused(&[sasl, mechanism, password], "bus.kafka.sasl_username");
        refused(&[sasl, mechanism, user], "bus.kafka.sasl_password");
        refused(&[user], "bus.kafka.sasl_username");
        refused(&[("COMMERCEX__BUS__KAFKA__SECURITY_PROTOCOL", "tls")], "bus.kafka.security_protocol");
        let ca = ("COMMERCEX__BUS__KAFKA__SSL_CA_LOCATION", "/etc/kafka/ca.pem");
        refused(&[ca], "bus.kafka.ssl_ca_location");
        refused(&[sasl, mechanism, user, password, ca], "bus.kafka.ssl_ca_location");
        let ssl = ("COMMERCEX__BUS__KAFKA__SECURITY_PROTOCOL", "ssl");
        assert!(with(&[ssl, ca]).is_ok());
        let cert = ("COMMERCEX__BUS__KAFKA__SSL_CERTIFICATE_LOCATION", "/etc/kafka/client.pem");
        refused(&[ssl, ca, cert], "bus.kafka.ssl_key_location");
        let key = ("COMMERCEX__BUS__KAFKA__SSL_KEY_LOCATION", "/etc/kafka/client.key");
        assert!(with(&[ssl, cert, key]).is_ok());
        let sasl_ssl = ("COMMERCEX__BUS__KAFKA__SECURITY_PROTOCOL", "sasl_ssl");
        assert!(with(&[sasl_ssl, ("COMMERCEX__BUS__KAFKA__SASL_MECHANISM", "PLAIN"), user, password, ca]).is_ok());
        assert_eq!(with(&[]).unwrap().bus.kafka.security_protocol, KafkaSecurityProtocol::Plaintext);
    }

    #[test]
    fn backends_are_checked_and_uris_are_never_shown_with_credentials() {
        let c = Config::from_sources(
            None,
            env(&[
                ("COMMERCEX__STORE__BACKEND", "mongodb"),
                ("COMMERCEX__STORE__MONGODB__URI", "mongodb://app:s3cret@db.internal:27017"),
                ("COMMERCEX__AUTH__JWT_SECRET", "a-secret-of-at-least-thirty-two-characters"),
                ("COMMERCEX__BUS__BACKEND", "kafka"),
                ("COMMERCEX__BUS__KAFKA__PARTITIONS", "6"),
                ("COMMERCEX__REDIS__URL", "redis://:hunter2@cache:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.store.backend, c.bus.backend, c.bus.kafka.partitions),
            (StoreBackend::Mongodb, BusBackend::Kafka, 6)
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("mongodb://***@db.internal:27017"), "{shown}");
        for (key, value, named) in [
            ("COMMERCEX__STORE__BACKEND", "postgres", "store.backend"),
            ("COMMERCEX__BUS__BACKEND", "rabbit", "bus.backend"),
        ] {
            let err = Config::from_sources(None, env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(named), "{err}");
        }
        let mongo = |k: &str, v: &str| {
            let secret = ("COMMERCEX__AUTH__JWT_SECRET", "a-secret-of-at-least-thirty-two-characters");
            Config::from_sources(None, env(&[("COMMERCEX__STORE__BACKEND", "mongodb"), secret, (k, v)]))
                .unwrap_err()
                .to_string()
        };
        assert!(mongo("COMMERCEX__STORE__MONGODB__URI", "http://x").contains("store.mongodb.uri"));
        assert!(mongo("COMMERCEX__STORE__MONGODB__DATABASE", "a.b").contains("store.mongodb.database"));
        assert!(mongo("COMMERCEX__STORE__MONGODB__URI", "mongodb+srv://cluster.example").contains("store.mongodb.uri"));
        let no_secret = Config::from_sources(None, env(&[("COMMERCEX__STORE__BACKEND", "mongodb")])).unwrap_err();
        assert!(no_secret.to_string().contains("auth.jwt_secret"), "{no_secret}");
        assert!(mongo("COMMERCEX__STORE__MONGODB__URI", "mongodb+srv://cluster.example").contains("store.mongodb.uri"));
        let no_secret = Config::from_sources(None, env(&[("COMMERCEX__STORE__BACKEND", "mongodb")])).unwrap_err();
        assert!(no_secret.to_string().contains("auth.jwt_secret"), "{no_secret}");
        let kafka = |k: &str, v: &str| {
            Config::from_sources(None, env(&[("COMMERCEX__BUS__BACKEND", "kafka"), (k, v)])).unwrap_err().to_string()
        };
        assert!(kafka("COMMERCEX__BUS__KAFKA__BROKERS", "localhost").contains("bus.kafka.brokers"));
        assert!(kafka("COMMERCEX__BUS__KAFKA__PARTITIONS", "0").contains("bus.kafka.partitions"));
        assert!(kafka("COMMERCEX__BUS__KAFKA__TOPIC_PREFIX", "a b").contains("bus.kafka.topic_prefix"));
        let err = Config::from_sources(None, env(&[("COMMERCEX__REDIS__URL", "localhost:6379")])).unwrap_err();
        assert!(err.to_string().contains("redis.url"), "{err}");
    }

    /// Every `COMMERCEX__` variable `docker-compose.yml` sets is a real key, and together they form a valid config.
    #[test]
    fn the_compose_file_sets_only_real_keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
        let text = std::fs::read_to_string(path).unwrap();
        let vars: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("COMMERCEX__").map(|rest| format!("COMMERCEX__{rest}")))
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap();
                let value = value.trim().trim_matches('"');
                // `${VAR:?...}` and `${VAR:-default}` are filled in by compose: stand in a valid value.
                let value = if value.starts_with("${") {
                    match name {
                        "COMMERCEX__AUTH__JWT_SECRET" | "COMMERCEX__CLUSTER__SECRET" => {
                            "a-secret-of-at-least-thirty-two-characters"
                        }
                        "COMMERCEX__AUTH__BOOTSTRAP_ADMIN__EMAIL" => "admin@example.com",
                        _ => "pass-word-1",
                    }
                } else {
                    value
                };
                (name.to_string(), value.to_string())
            })
            .collect();
        assert!(vars.len() >= 10, "{vars:?}");
        // Unknown keys are refused by name, so a misspelt variable in the compose file fails here.
        let misspelt = Config::from_sources(None, env(&[("COMMERCEX__STORE__MONGO__URI", "mongodb://x")]));
        assert!(misspelt.unwrap_err().to_string().contains("mongo"));
        let config = Config::from_sources(None, vars).expect("the compose environment is a valid config");
        assert_eq!((config.store.backend, config.bus.backend), (StoreBackend::Mongodb, BusBackend::Kafka));
        assert!(!config.redis.url.is_empty());
        assert!(config.cluster.enabled);
        assert_eq!(config.media.backend, MediaBackend::S3, "the nodes share one bucket of product images");
        assert_eq!(text.matches("<<: *commercex").count(), 3, "three nodes");
    }

    #[test]
    fn the_effective_configuration_is_shown_without_its_secrets() {
        let vars = env(&[
            ("COMMERCEX__AUTH__JWT_SECRET", "a-secret-of-at-least-thirty-two-characters"),
            ("COMMERCEX__AUTH__BOOTSTRAP_ADMIN__EMAIL", "root@example.com"),
            ("COMMERCEX__AUTH__BOOTSTRAP_ADMIN__PASSWORD", "admin-password-1"),
            ("COMMERCEX__STORE__MONGODB__URI", "mongodb://app:mongo-pass@db:27017"),
            ("COMMERCEX__REDIS__URL", "redis://:redis-pass@cache:6379"),
            ("COMMERCEX__CACHE__PRODUCT_TTL_SECS", "7"),
            ("COMMERCEX__MEDIA__S3__ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("COMMERCEX__MEDIA__S3__SECRET_ACCESS_KEY", "s3-secret-key"),
            ("COMMERCEX__BUS__KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
            ("COMMERCEX__BUS__KAFKA__SASL_MECHANISM", "PLAIN"),
            ("COMMERCEX__BUS__KAFKA__SASL_USERNAME", "shop"),
            ("COMMERCEX__BUS__KAFKA__SASL_PASSWORD", "kafka-pass-word"),
            ("COMMERCEX__CLUSTER__SECRET", "the-cluster-secret-of-the-deployment"),
        ]);
        let config = Config::from_sources(None, vars).unwrap();
        let shown = config.masked_toml();
        for secret in [
            "a-secret-of-at-least",
            "admin-password-1",
            "mongo-pass",
            "redis-pass",
            "s3-secret-key",
            "kafka-pass-word",
            "the-cluster-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        let debug = format!("{:?} {:?}", config.bus, config.cluster);
        for secret in ["kafka-pass-word", "the-cluster-secret"] {
            assert!(!debug.contains(secret), "{secret} shown in:\n{debug}");
        }
        assert!(shown.contains("<masked: 42 characters>") && shown.contains("mongodb://***@db:27017"), "{shown}");
        // Valid TOML with every section, each key at its effective value.
        let table: toml::Table = shown.parse().unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(table.keys().collect::<Vec<_>>(), defaults.keys().collect::<Vec<_>>());
        assert_eq!(table["cache"]["product_ttl_secs"].as_integer(), Some(7));
    }
}
