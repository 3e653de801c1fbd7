//! The journal as the chaos switch sees it: every call may be delayed or fail on purpose (see `crate::faults`).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Commit, EventStore, History, OutboxEntry, OutboxScope, StoreError};
use crate::faults::Chaos;

pub struct ChaosEventStore {
    inner: Arc<dyn EventStore>,
    chaos: Arc<Chaos>,
}

impl ChaosEventStore {
    pub fn new(inner: Arc<dyn EventStore>, chaos: Arc<Chaos>) -> Self {
        Self { inner, chaos }
    }

    async fn before(&self, what: &str) -> Result<(), StoreError> {
        self.chaos.store_call(what).await.map_err(StoreError::Unavailable)
    }
}

#[async_trait]
impl EventStore for ChaosEventStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.before("commit").await?;
        self.inner.commit(commit).await
    }

    async fn history(&self, stream: &str) -> Result<History, StoreError> {
        self.before("history").await?;
        self.inner.history(stream).await
    }

    async fn outbox_pending(&self, limit: usize, scope: &OutboxScope) -> Result<Vec<OutboxEntry>, StoreError> {
        self.before("outbox_pending").await?;
        self.inner.outbox_pending(limit, scope).await
    }

    async fn outbox_ack(&self, positions: &[u64]) -> Result<(), StoreError> {
        self.before("outbox_ack").await?;
        self.inner.outbox_ack(positions).await
    }

    async fn active_streams(&self) -> Result<Vec<String>, StoreError> {
        self.before("active_streams").await?;
        self.inner.active_streams().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
