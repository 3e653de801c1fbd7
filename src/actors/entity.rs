//! One actor per entity: the single writer of its stream. It recovers from the latest snapshot plus later events in
//! `pre_start`, persists every change before acknowledging it, runs the side effects its state calls for, and
//! passivates after being idle with nothing left to do.
//!
//! Commands waiting in the mailbox are committed together: a command is decided against the state as it will be
//! once the commands before it are written (the actor applies their events at once, and reads wait for the write),
//! its events join a batch, and a `Flush` the actor sends itself (queued
//! behind whatever already waits) writes the whole batch in one commit. Every reply, a refusal included, is sent
//! only after that commit: if it fails, every command of the batch is answered `Unavailable`. One hot entity thus
//! takes as many commands per second as it gets, at one store write per mailbox-full.
//!
//! An actor wakes up on a timer only when something is due: the next time-bound command its state calls for, or
//! the end of its idle timeout.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::live::Usage;
use super::{Effects, Entity, EntityContext};
use crate::store::{Commit, EventRecord, Snapshot, StoreError};
use crate::telemetry::metrics::{
    ENTITY_COMMITS, ENTITY_COMMIT_COMMANDS, ENTITY_COMMIT_DURATION, ENTITY_HANDLER, ENTITY_MAILBOX_WAIT,
};

type Reply<A> = RpcReplyPort<Delivery<Result<A, EntityError<<A as crate::domain::Aggregate>::Error>>>>;
type AckReply<A> = RpcReplyPort<Delivery<Result<(), EntityError<<A as crate::domain::Aggregate>::Error>>>>;

/// Where a command's answer goes: with the entity's state after it, or only whether it took effect (no copy of
/// the state, which for a hot product holds every order in progress).
pub enum Answer<A: Entity> {
    State(Reply<A>),
    Ack(AckReply<A>),
}

impl<A: Entity> Answer<A> {
    /// The answer for a command that took effect, leaving `state`.
    fn done(&self, state: &A) -> Outcome<A> {
        match self {
            Answer::State(_) => Ok(Some(state.clone())),
            Answer::Ack(_) => Ok(None),
        }
    }

    fn send(self, outcome: Outcome<A>) {
        match self {
            Answer::State(reply) => {
                let missing = || EntityError::Unavailable(format!("{} answered without its state", A::KIND));
                let _ = reply.send(Delivery::Done(outcome.and_then(|state| state.ok_or_else(missing))));
            }
            Answer::Ack(reply) => drop(reply.send(Delivery::Done(outcome.map(drop)))),
        }
    }

    fn retry(self) {
        match self {
            Answer::State(reply) => drop(reply.send(Delivery::Retry)),
            Answer::Ack(reply) => drop(reply.send(Delivery::Retry)),
        }
    }
}

/// An entity's answer to a request, or `Retry`: the actor is passivating, so the request was not handled and must
/// go to its successor (the router re-sends it, as it does for a closed mailbox). Nothing a draining actor is asked
/// can start work that its stop would strand.
#[derive(Debug)]
pub enum Delivery<T> {
    Done(T),
    Retry,
}

/// When a request was sent, to measure how long it waited in the mailbox, and the span it was sent from, so the
/// entity's work on it joins the caller's trace.
pub struct Sent {
    at: Instant,
    span: Span,
}

impl Sent {
    pub fn now() -> Self {
        Self { at: Instant::now(), span: Span::current() }
    }
}

pub enum EntityMsg<A: Entity> {
    Execute(A::Command, Reply<A>, Sent),
    /// `Execute` for a caller that needs only to know that the command took effect.
    Apply(A::Command, AckReply<A>, Sent),
    Get(RpcReplyPort<Delivery<A>>, Sent),
    /// Answers once the entity has no effect pending or running (for instance a payment that has been decided).
    Settled(RpcReplyPort<Delivery<A>>),
    /// The outcome of the effect the actor started, from within the effect's span.
    EffectDone(Result<A::Command, String>, Span),
    /// Try the pending effect again after a failure.
    RetryEffect,
    /// Write the batch of commands decided since the last commit.
    Flush,
    /// A timer the actor set: run due commands; passivate when idle with nothing to do.
    Tick,
    /// The node is at its cap of live entities: passivate now unless there is work in flight.
    Passivate,
    /// Panics inside the handler, to prove that supervision and recovery lose nothing.
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
    effects: Arc<dyn Effects<A>>,
    _kind: PhantomData<fn() -> A>,
}

impl<A: Entity> EntityActor<A> {
    pub fn new(ctx: Arc<EntityContext>, effects: Arc<dyn Effects<A>>) -> Self {
        Self { ctx, effects, _kind: PhantomData }
    }
}

/// The most commands one commit takes; a fuller mailbox is written in several.
const MAX_BATCH: usize = 256;

/// The shortest timer the actor sets, so a state that stays due cannot spin.
const MIN_WAKE: Duration = Duration::from_millis(10);

/// A command's answer: the state after it when the caller asked for it.
type Outcome<A> = Result<Option<A>, EntityError<<A as crate::domain::Aggregate>::Error>>;

/// Commands decided but not yet written: their events, their answers, and the reads that arrived meanwhile. The
/// actor's state already includes the batch's events; if the commit fails, the actor stops and that state is gone.
struct Batch<A: Entity> {
    events: Vec<EventRecord>,
    replies: Vec<(Answer<A>, Outcome<A>)>,
    /// Reads answered once the batch is written, so no one sees state that is not durable yet.
    readers: Vec<RpcReplyPort<Delivery<A>>>,
    /// Commands in the batch, with or without events.
    commands: usize,
    /// The span of the command that opened the batch: its commit is traced there.
    span: Span,
}

pub struct EntityState<A: Entity> {
    id: String,
    stream: String,
    aggregate: A,
    seq: u64,
    snapshot_seq: u64,
    last_active: Instant,
    /// The timer set to wake the actor, and when it fires.
    wake: Option<(Instant, JoinHandle<()>)>,
    batch: Option<Batch<A>>,
    effect_running: bool,
    effect_failures: u32,
    waiters: Vec<RpcReplyPort<Delivery<A>>>,
    usage: Arc<Usage>,
    /// Passivation has begun: requests still queued are answered `Retry`.
    draining: bool,
    /// The span of the last message that changed the state: the effect it calls for runs in a child of it.
    trace: Span,
}

impl<A: Entity> EntityState<A> {
    fn settled(&self) -> bool {
        !self.effect_running && self.aggregate.next_effect().is_none()
    }

    /// Nothing in flight: no effect pending or running, nobody waiting, no time-bound state.
    fn can_passivate(&self) -> bool {
        self.batch.is_none() && self.settled() && self.waiters.is_empty() && !self.aggregate.keep_alive()
    }

    fn cancel_wake(&mut self) {
        if let Some((_, timer)) = self.wake.take() {
            timer.abort();
        }
    }
}

pub fn stream_name<A: Entity>(id: &str) -> String {
    format!("{}:{id}", A::KIND)
}

/// Rebuilds an aggregate from its history. Returns the state, the sequence it is at and its snapshot's sequence.
pub fn recover<A: Entity>(history: crate::store::History) -> Result<(A, u64, u64), StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let (mut aggregate, mut seq) = match history.snapshot {
        Some(s) => (serde_json::from_value::<A>(s.state).map_err(corrupt)?, s.seq),
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
    type Arguments = (String, Arc<Usage>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (id, usage): (String, Arc<Usage>),
    ) -> Result<Self::State, ActorProcessingErr> {
        let stream = stream_name::<A>(&id);
        let started = Instant::now();
        let history = self.ctx.store.history(&stream).await?;
        let replayed = history.events.len();
        let (aggregate, seq, snapshot_seq) = recover::<A>(history)?;
        tracing::debug!(%stream, seq, replayed, elapsed_us = started.elapsed().as_micros() as u64, "entity recovered");
        Ok(EntityState {
            id,
            stream,
            aggregate,
            seq,
            snapshot_seq,
            last_active: Instant::now(),
            wake: None,
            batch: None,
            effect_running: false,
            effect_failures: 0,
            waiters: Vec::new(),
            usage,
            draining: false,
            trace: Span::none(),
        })
    }

    async fn post_start(&self, myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        // A recovered entity in the middle of a saga resumes on its own.
        self.start_effect(&myself, state);
        self.set_wake(&myself, state);
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.cancel_wake();
        // A batch not written when the actor stops (its handler failed) was not acknowledged either.
        if let Some(batch) = state.batch.take() {
            for (answer, _) in batch.replies {
                answer.send(Err(EntityError::Unavailable("entity stopped".into())));
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.draining {
            match msg {
                EntityMsg::Execute(_, reply, _) => Answer::<A>::State(reply).retry(),
                EntityMsg::Apply(_, reply, _) => Answer::<A>::Ack(reply).retry(),
                EntityMsg::Get(reply, _) | EntityMsg::Settled(reply) => drop(reply.send(Delivery::Retry)),
                _ => {}
            }
            return Ok(());
        }
        let request =
            matches!(msg, EntityMsg::Execute(..) | EntityMsg::Apply(..) | EntityMsg::Get(..) | EntityMsg::Settled(_));
        let parent = match &msg {
            EntityMsg::Execute(.., sent) | EntityMsg::Apply(.., sent) | EntityMsg::Get(_, sent) => {
                metrics::histogram!(ENTITY_MAILBOX_WAIT, "kind" => A::KIND).record(sent.at.elapsed().as_secs_f64());
                Some(&sent.span)
            }
            EntityMsg::EffectDone(_, span) => Some(span),
            EntityMsg::Flush => state.batch.as_ref().map(|batch| &batch.span),
            _ => None,
        };
        let span = match parent {
            Some(parent) => tracing::info_span!(parent: parent, "entity", kind = A::KIND, entity_id = %state.id),
            None => Span::none(),
        };
        if matches!(msg, EntityMsg::Execute(..) | EntityMsg::Apply(..) | EntityMsg::EffectDone(..)) {
            state.trace = span.clone();
        }
        let started = Instant::now();
        // Boxed: an idle actor's task then holds a pointer rather than room for the largest handler future.
        Box::pin(self.handle_msg(&myself, msg, state).instrument(span)).await?;
        metrics::histogram!(ENTITY_HANDLER, "kind" => A::KIND).record(started.elapsed().as_secs_f64());
        if state.draining {
            return Ok(());
        }
        let idle = state.can_passivate();
        state.usage.set_busy(!idle);
        // A request that found no entity (a read, or a command that was refused) leaves no actor behind.
        if request && idle && state.seq == 0 {
            return passivate(&myself, state);
        }
        self.set_wake(&myself, state);
        Ok(())
    }
}

/// Stops the actor once its mailbox is empty; requests still queued get `Retry` and reach its successor.
fn passivate<A: Entity>(myself: &ActorRef<EntityMsg<A>>, state: &mut EntityState<A>) -> Result<(), ActorProcessingErr> {
    state.draining = true;
    state.cancel_wake();
    myself.drain()?;
    Ok(())
}

impl<A: Entity> EntityActor<A> {
    async fn handle_msg(
        &self,
        myself: &ActorRef<EntityMsg<A>>,
        msg: EntityMsg<A>,
        state: &mut EntityState<A>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EntityMsg::Execute(command, reply, _) => {
                state.last_active = Instant::now();
                self.execute(myself, command, Some(Answer::State(reply)), state).await
            }
            EntityMsg::Apply(command, reply, _) => {
                state.last_active = Instant::now();
                self.execute(myself, command, Some(Answer::Ack(reply)), state).await
            }
            EntityMsg::Get(reply, _) => {
                state.last_active = Instant::now();
                match &mut state.batch {
                    Some(batch) => batch.readers.push(reply),
                    None => drop(reply.send(Delivery::Done(state.aggregate.clone()))),
                }
                Ok(())
            }
            EntityMsg::Settled(reply) => {
                state.last_active = Instant::now();
                if state.settled() && state.batch.is_none() {
                    let _ = reply.send(Delivery::Done(state.aggregate.clone()));
                } else {
                    state.waiters.push(reply);
                }
                Ok(())
            }
            EntityMsg::EffectDone(outcome, _) => {
                state.effect_running = false;
                match outcome {
                    Ok(command) => {
                        state.effect_failures = 0;
                        self.execute(myself, command, None, state).await
                    }
                    Err(error) => {
                        state.effect_failures += 1;
                        let backoff = Duration::from_millis(50u64 << state.effect_failures.min(7));
                        tracing::warn!(stream = %state.stream, %error, retry_in_ms = backoff.as_millis() as u64, "effect failed");
                        myself.send_after(backoff, || EntityMsg::RetryEffect);
                        Ok(())
                    }
                }
            }
            EntityMsg::RetryEffect => {
                self.start_effect(myself, state);
                Ok(())
            }
            EntityMsg::Flush => self.flush(myself, state).await,
            EntityMsg::Tick => self.tick(myself, state).await,
            EntityMsg::Passivate => {
                if state.can_passivate() {
                    tracing::debug!(stream = %state.stream, "passivating to stay under the live entity cap");
                    passivate(myself, state)?;
                }
                Ok(())
            }
            EntityMsg::Panic => panic!("injected fault in {}", state.stream),
        }
    }

    async fn tick(
        &self,
        myself: &ActorRef<EntityMsg<A>>,
        state: &mut EntityState<A>,
    ) -> Result<(), ActorProcessingErr> {
        if state.wake.as_ref().is_some_and(|(at, _)| *at <= Instant::now()) {
            state.wake = None;
        }
        if state.batch.is_some() {
            // The flush already queued comes first; the timer is set again after it.
            return Ok(());
        }
        if let Some(command) = state.aggregate.due(self.ctx.clock.now()) {
            return self.execute(myself, command, None, state).await;
        }
        // An entity nobody ever wrote (started by a restart, or by a caller that gave up) does not wait for the idle
        // timeout either.
        let idle = state.last_active.elapsed() >= self.ctx.idle_timeout || state.seq == 0;
        if idle && state.can_passivate() {
            tracing::debug!(stream = %state.stream, "passivating idle entity");
            passivate(myself, state)?;
        }
        Ok(())
    }

    /// Sets the timer for the earliest of: the next due command, and the end of the idle timeout of an entity that
    /// could passivate. A timer already set for earlier stays; when it fires, the actor checks and sets the next.
    fn set_wake(&self, myself: &ActorRef<EntityMsg<A>>, state: &mut EntityState<A>) {
        if state.draining || state.batch.is_some() {
            return;
        }
        let now = Instant::now();
        let due = state.aggregate.next_due().map(|at| {
            let wait = (at - self.ctx.clock.now()).to_std().unwrap_or_default();
            now + wait.max(MIN_WAKE)
        });
        let idle = state.can_passivate().then(|| {
            let at = if state.seq == 0 { now } else { state.last_active + self.ctx.idle_timeout };
            at.max(now + MIN_WAKE)
        });
        let Some(at) = due.into_iter().chain(idle).min() else { return };
        if state.wake.as_ref().is_some_and(|(set, _)| *set <= at) {
            return;
        }
        state.cancel_wake();
        let actor = myself.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let _ = actor.cast(EntityMsg::Tick);
        });
        state.wake = Some((at, timer));
    }

    /// Starts the effect the state calls for, unless one is already running. The effect runs in its own task and
    /// reports back with `EffectDone`, even if it panics.
    fn start_effect(&self, myself: &ActorRef<EntityMsg<A>>, state: &mut EntityState<A>) {
        // With a batch pending, the effect is computed from the state once it is written.
        if state.effect_running || state.batch.is_some() {
            return;
        }
        let Some(effect) = state.aggregate.next_effect() else { return };
        state.effect_running = true;
        let (effects, id, myself) = (self.effects.clone(), state.id.clone(), myself.clone());
        tracing::debug!(stream = %state.stream, ?effect, "starting effect");
        let span =
            tracing::info_span!(parent: &state.trace, "effect", kind = A::KIND, entity_id = %id, effect = ?effect);
        let work = async move {
            let run = async move { effects.run(&id, effect).await }.in_current_span();
            let outcome = match tokio::spawn(run).await {
                Ok(outcome) => outcome,
                Err(e) => Err(format!("effect task failed: {e}")),
            };
            // If this actor is gone, its successor recomputes the effect from the persisted state.
            let _ = myself.cast(EntityMsg::EffectDone(outcome, Span::current()));
        };
        tokio::spawn(work.instrument(span));
    }

    /// Decides a command against the state as the pending batch leaves it and adds its events and its answer to the
    /// batch, which is written by the next `Flush` (or at once when full). With no batch pending, an answer that
    /// writes nothing is sent at once.
    async fn execute(
        &self,
        myself: &ActorRef<EntityMsg<A>>,
        command: A::Command,
        reply: Option<Answer<A>>,
        state: &mut EntityState<A>,
    ) -> Result<(), ActorProcessingErr> {
        let now = self.ctx.clock.now();
        let current = &state.aggregate;
        let outcome = current.decide(&state.id, &command, now);
        let events = match outcome {
            Ok(events) if !events.is_empty() => events,
            Ok(_) | Err(_) => {
                let accepted = outcome.is_ok();
                let outcome = match outcome {
                    Ok(_) => reply.as_ref().map_or(Ok(None), |answer| answer.done(current)),
                    Err(rejection) => {
                        if reply.is_none() {
                            // An effect's outcome should always be accepted; retry later rather than stall the saga.
                            tracing::warn!(stream = %state.stream, %rejection, "effect outcome refused by the entity");
                            state.effect_failures += 1;
                            myself.send_after(Duration::from_millis(50u64 << state.effect_failures.min(7)), || {
                                EntityMsg::RetryEffect
                            });
                        }
                        Err(EntityError::Rejected(rejection))
                    }
                };
                match (reply, &mut state.batch) {
                    (Some(reply), Some(batch)) => {
                        batch.replies.push((reply, outcome));
                        batch.commands += 1;
                    }
                    (Some(reply), None) => reply.send(outcome),
                    (None, _) => {}
                }
                if state.batch.is_none() && accepted {
                    self.after_change(myself, state);
                }
                return Ok(());
            }
        };
        let batch = match &mut state.batch {
            Some(batch) => batch,
            None => {
                myself.cast(EntityMsg::Flush)?;
                let span = Span::current();
                state.batch.insert(Batch {
                    events: Vec::new(),
                    replies: Vec::new(),
                    readers: Vec::new(),
                    commands: 0,
                    span,
                })
            }
        };
        for event in &events {
            state.aggregate.apply(event);
            let seq = state.seq + 1 + batch.events.len() as u64;
            batch.events.push(EventRecord {
                id: format!("{}/{seq}", state.stream),
                stream: state.stream.clone(),
                seq,
                event_type: A::event_type(event).to_string(),
                recorded_at: now,
                payload: serde_json::to_value(event)?,
            });
        }
        batch.commands += 1;
        if let Some(reply) = reply {
            let outcome = reply.done(&state.aggregate);
            batch.replies.push((reply, outcome));
        }
        if batch.commands >= MAX_BATCH {
            return self.flush(myself, state).await;
        }
        Ok(())
    }

    /// Writes the pending batch in one commit, then sends its answers.
    async fn flush(
        &self,
        myself: &ActorRef<EntityMsg<A>>,
        state: &mut EntityState<A>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(batch) = state.batch.take() else { return Ok(()) };
        let Batch { events: records, replies, readers, commands, .. } = batch;
        let next = &state.aggregate;
        for record in &records {
            self.ctx.faults.check_with(|| format!("before_commit:{}", record.event_type));
        }
        let new_seq = state.seq + records.len() as u64;
        let snapshot = (new_seq - state.snapshot_seq >= self.ctx.snapshot_every)
            .then(|| serde_json::to_value(next).map(|s| Snapshot { seq: new_seq, state: s }))
            .transpose()?;
        let snapshotted = snapshot.is_some();
        let types: Vec<String> = records.iter().map(|r| r.event_type.clone()).collect();
        let commit = Commit {
            stream: state.stream.clone(),
            expected_seq: state.seq,
            events: records,
            snapshot,
            read_model: next.read_model(),
            active: next.next_effect().is_some() || next.keep_alive(),
        };
        let started = Instant::now();
        let written = self.ctx.store.commit(commit).await;
        let result = match &written {
            Ok(()) => "ok",
            Err(StoreError::Conflict { .. }) => "conflict",
            Err(_) => "error",
        };
        metrics::counter!(ENTITY_COMMITS, "kind" => A::KIND, "result" => result).increment(1);
        metrics::histogram!(ENTITY_COMMIT_DURATION, "kind" => A::KIND).record(started.elapsed().as_secs_f64());
        metrics::histogram!(ENTITY_COMMIT_COMMANDS, "kind" => A::KIND).record(commands as f64);
        match written {
            Ok(()) => {
                state.seq = new_seq;
                state.aggregate.committed(&types);
                if snapshotted {
                    state.snapshot_seq = new_seq;
                }
                self.ctx.committed.notify_one();
                for observer in &self.ctx.observers {
                    observer.committed(&state.stream).await;
                }
                for event_type in &types {
                    self.ctx.faults.check_with(|| format!("after_commit:{event_type}"));
                }
                for (answer, outcome) in replies {
                    answer.send(outcome);
                }
                for reader in readers {
                    let _ = reader.send(Delivery::Done(state.aggregate.clone()));
                }
                self.after_change(myself, state);
                Ok(())
            }
            Err(err) => {
                // A refused or failed write leaves this actor unsure of what the store holds (another writer won, or
                // a remote store applied the write before failing). Stop; the next message recovers from the store.
                for (answer, _) in replies {
                    answer.send(Err(EntityError::Unavailable(err.to_string())));
                }
                Err(Box::new(err))
            }
        }
    }

    fn after_change(&self, myself: &ActorRef<EntityMsg<A>>, state: &mut EntityState<A>) {
        self.start_effect(myself, state);
        if state.settled() {
            for waiter in state.waiters.drain(..) {
                let _ = waiter.send(Delivery::Done(state.aggregate.clone()));
            }
        }
    }
}
