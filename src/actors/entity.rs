//! One actor per entity: the single writer of its stream. It recovers from the latest snapshot plus later events in
//! `pre_start`, persists every change before acknowledging it, and passivates after being idle.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use super::{Entity, EntityContext};
use crate::store::{Commit, EventRecord, Snapshot, StoreError};

pub enum EntityMsg<A: Entity> {
    Execute(A::Command, RpcReplyPort<Result<A, EntityError<A::Error>>>),
    Get(RpcReplyPort<A>),
    /// Periodic self-check: passivate when idle for longer than the configured timeout.
    IdleCheck,
    /// Panics inside the handler, to prove that supervision and recovery lose nothing.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// Why a command did not take effect.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EntityError<E> {
    /// The domain refused the command; nothing changed.
    #[error(transparent)]
    Rejected(E),
    /// The entity could not answer (store down, actor crashed or restarting, timeout). Retryable; for an
    /// interrupted command the caller cannot know whether it was applied, so commands should be safe to retry.
    #[error("entity unavailable: {0}")]
    Unavailable(String),
}

pub struct EntityActor<A: Entity> {
    ctx: Arc<EntityContext>,
    _kind: PhantomData<fn() -> A>,
}

impl<A: Entity> EntityActor<A> {
    pub fn new(ctx: Arc<EntityContext>) -> Self {
        Self { ctx, _kind: PhantomData }
    }
}

pub struct EntityState<A: Entity> {
    id: String,
    stream: String,
    aggregate: A,
    seq: u64,
    snapshot_seq: u64,
    last_active: Instant,
    idle_timer: JoinHandle<()>,
}

pub fn stream_name<A: Entity>(id: &str) -> String {
    format!("{}:{id}", A::KIND)
}

/// Rebuilds an aggregate from its history. Returns the state and the sequence number it is at.
pub fn recover<A: Entity>(history: crate::store::History) -> Result<(A, u64, u64), StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let (mut aggregate, mut seq) = match &history.snapshot {
        Some(s) => (serde_json::from_value::<A>(s.state.clone()).map_err(corrupt)?, s.seq),
        None => (A::default(), 0),
    };
    let snapshot_seq = seq;
    for record in history.events {
        if record.seq != seq + 1 {
            return Err(StoreError::Corrupt(format!("{} follows sequence {seq}", record.id)));
        }
        let event: A::Event = serde_json::from_value(record.payload).map_err(corrupt)?;
        aggregate.apply(&event);
        seq = record.seq;
    }
    Ok((aggregate, seq, snapshot_seq))
}

impl<A: Entity> Actor for EntityActor<A> {
    type Msg = EntityMsg<A>;
    type State = EntityState<A>;
    type Arguments = String;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, id: String) -> Result<Self::State, ActorProcessingErr> {
        let stream = stream_name::<A>(&id);
        let started = Instant::now();
        let history = self.ctx.store.history(&stream).await?;
        let replayed = history.events.len();
        let (aggregate, seq, snapshot_seq) = recover::<A>(history)?;
        tracing::debug!(%stream, seq, replayed, elapsed_us = started.elapsed().as_micros() as u64, "entity recovered");
        let period = (self.ctx.idle_timeout / 4).max(std::time::Duration::from_millis(10));
        let idle_timer = myself.send_interval(period, || EntityMsg::IdleCheck);
        Ok(EntityState { id, stream, aggregate, seq, snapshot_seq, last_active: Instant::now(), idle_timer })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.idle_timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EntityMsg::Execute(command, reply) => {
                state.last_active = Instant::now();
                self.execute(command, reply, state).await
            }
            EntityMsg::Get(reply) => {
                state.last_active = Instant::now();
                let _ = reply.send(state.aggregate.clone());
                Ok(())
            }
            EntityMsg::IdleCheck => {
                if state.last_active.elapsed() >= self.ctx.idle_timeout {
                    tracing::debug!(stream = %state.stream, "passivating idle entity");
                    state.idle_timer.abort();
                    // Drain: messages already queued are still served; later senders see a closed mailbox and the
                    // router starts a fresh actor for them.
                    myself.drain()?;
                }
                Ok(())
            }
            #[cfg(feature = "fault-injection")]
            EntityMsg::Panic => panic!("injected fault in {}", state.stream),
        }
    }
}

impl<A: Entity> EntityActor<A> {
    async fn execute(
        &self,
        command: A::Command,
        reply: RpcReplyPort<Result<A, EntityError<A::Error>>>,
        state: &mut EntityState<A>,
    ) -> Result<(), ActorProcessingErr> {
        let now = chrono::Utc::now();
        let events = match state.aggregate.decide(&state.id, &command, now) {
            Ok(events) => events,
            Err(rejection) => {
                let _ = reply.send(Err(EntityError::Rejected(rejection)));
                return Ok(());
            }
        };
        if events.is_empty() {
            let _ = reply.send(Ok(state.aggregate.clone()));
            return Ok(());
        }
        let mut next = state.aggregate.clone();
        let mut records = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            next.apply(event);
            let seq = state.seq + 1 + i as u64;
            records.push(EventRecord {
                id: format!("{}/{seq}", state.stream),
                stream: state.stream.clone(),
                seq,
                event_type: A::event_type(event).to_string(),
                recorded_at: now,
                payload: serde_json::to_value(event)?,
            });
        }
        let new_seq = state.seq + records.len() as u64;
        let snapshot = (new_seq - state.snapshot_seq >= self.ctx.snapshot_every)
            .then(|| serde_json::to_value(&next).map(|s| Snapshot { seq: new_seq, state: s }))
            .transpose()?;
        let snapshotted = snapshot.is_some();
        let commit = Commit {
            stream: state.stream.clone(),
            expected_seq: state.seq,
            events: records,
            snapshot,
            read_model: next.read_model(),
        };
        match self.ctx.store.commit(commit).await {
            Ok(()) => {
                state.aggregate = next;
                state.seq = new_seq;
                if snapshotted {
                    state.snapshot_seq = new_seq;
                }
                self.ctx.committed.notify_one();
                let _ = reply.send(Ok(state.aggregate.clone()));
                Ok(())
            }
            Err(err) => {
                // A refused or failed write leaves this actor unsure of what the store holds (another writer won, or
                // a remote store applied the write before failing). Stop; the next message recovers from the store.
                let _ = reply.send(Err(EntityError::Unavailable(err.to_string())));
                Err(Box::new(err))
            }
        }
    }
}
