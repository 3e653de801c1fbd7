//! Counting at the wire what a deployment asks of its servers, independently of the nodes' own counters:
//! - MongoDB: a TCP proxy in front of the server that reads each request's header (and an `OP_MSG`'s command
//!   name) as it passes, so the nodes' requests are counted by command;
//! - Kafka: the end offsets of every partition of the deployment's topics, before and after.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Requests that crossed the proxy, by command name (`hello` includes the driver's heartbeats).
#[derive(Clone, Default)]
pub struct MongoCount(Arc<Mutex<BTreeMap<String, u64>>>);

impl MongoCount {
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Requests from `after` to `before`, by command, without the driver's monitoring (`hello`, `isMaster`), which
/// runs on a timer whatever the load.
pub fn grown(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| !matches!(name.to_ascii_lowercase().as_str(), "hello" | "ismaster"))
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Starts a counting proxy to the MongoDB server of `uri` (`mongodb://host:port`); returns the URI to give the
/// nodes instead, and the count.
pub async fn mongo_proxy(uri: &str) -> (String, MongoCount) {
    let upstream = uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap().to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let count = MongoCount::default();
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { return };
            let (upstream, count) = (upstream.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else { return };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let answers = tokio::spawn(async move {
                    let mut client_write = client_write;
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                while let Ok(message) = read_message(&mut client_read).await {
                    *count.0.lock().unwrap().entry(command_name(&message)).or_default() += 1;
                    if server_write.write_all(&message).await.is_err() {
                        break;
                    }
                }
                answers.abort();
            });
        }
    });
    (format!("mongodb://{address}/?directConnection=true"), count)
}

async fn read_message(from: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await?;
    let total = i32::from_le_bytes(length) as usize;
    let mut message = vec![0u8; total.max(4)];
    message[..4].copy_from_slice(&length);
    from.read_exact(&mut message[4..]).await?;
    Ok(message)
}

/// The command an `OP_MSG` carries (the first key of its body section), or the opcode for anything else.
fn command_name(message: &[u8]) -> String {
    let opcode = message.get(12..16).map(|b| i32::from_le_bytes(b.try_into().unwrap())).unwrap_or(0);
    // OP_MSG: header (16), flag bits (4), then a kind-0 section: kind byte, BSON document (size 4, type 1, key).
    // With `COUNT_BY_COLLECTION` set, the collection a command names (a string value) is counted apart.
    if opcode == 2013 && message.get(20) == Some(&0) {
        if let Some(rest) = message.get(26..) {
            let end = rest.iter().position(|b| *b == 0).unwrap_or(0);
            let name = String::from_utf8_lossy(&rest[..end]).into_owned();
            let by_collection = std::env::var_os("COUNT_BY_COLLECTION").is_some();
            if by_collection && message.get(25) == Some(&2) {
                if let Some(value) = rest.get(end + 5..) {
                    let stop = value.iter().position(|b| *b == 0).unwrap_or(0);
                    return format!("{name} {}", String::from_utf8_lossy(&value[..stop]));
                }
            }
            return name;
        }
    }
    format!("opcode {opcode}")
}

/// The sum of the end offsets of every partition of every topic whose name starts with `prefix`: the records
/// produced to them so far.
pub fn kafka_records(brokers: &str, prefix: &str) -> BTreeMap<String, i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "wire-count").create().unwrap();
    let bound = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(None, bound).unwrap();
    // Every node's reply topic under one name.
    let mut merged = BTreeMap::new();
    for topic in metadata.topics().iter().filter(|t| t.name().starts_with(prefix)) {
        let name = topic.name().trim_start_matches(prefix).trim_start_matches('.');
        let key = if name.starts_with("replies.") { "replies" } else { name };
        let mut sum = 0;
        for partition in topic.partitions() {
            sum += consumer.fetch_watermarks(topic.name(), partition.id(), bound).unwrap().1;
        }
        *merged.entry(key.to_string()).or_insert(0) += sum;
    }
    merged
}
