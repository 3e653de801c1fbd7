//! Where entities live when several nodes share the work. The router asks its [`Placement`] whether this node hosts
//! an entity; if not, the call travels to the node that does as a [`Request`] and comes back as JSON. The cluster
//! (`crate::cluster`) implements it over Kafka; without a placement every entity is hosted here.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A router call, as it travels to the node hosting the entity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// A command, serialized as the entity kind's command type.
    Execute {
        command: serde_json::Value,
    },
    Get,
    Settled {
        timeout_ms: u64,
    },
}

/// Why a forwarded call has no state to show.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum RemoteError {
    /// The domain refused the command: the kind's error type, serialized.
    Rejected { error: serde_json::Value },
    /// Retryable: the hosting node did not answer in time, no node hosts the shard right now, or the entity could
    /// not answer there.
    Unavailable { reason: String },
}

#[async_trait]
pub trait Placement: Send + Sync {
    /// Whether this node hosts the entity now.
    fn is_local(&self, id: &str) -> bool;
    /// Runs `request` on the node hosting the entity and returns the entity's state there, as JSON.
    async fn forward(&self, kind: &'static str, id: &str, request: Request) -> Result<serde_json::Value, RemoteError>;
}

/// One kind of entity as the cluster serves it: requests forwarded by other nodes, and giving back entities whose
/// shard moved to another node.
#[async_trait]
pub trait Host: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Runs a forwarded request on this node (refused as unavailable if the entity is not hosted here).
    async fn serve(&self, id: &str, request: Request) -> Result<serde_json::Value, RemoteError>;
    /// Drains and stops every live entity this node no longer hosts; returns how many.
    async fn release_moved(&self, timeout: std::time::Duration) -> usize;
}
