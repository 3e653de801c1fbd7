//! Addresses entities by id. The first message to an id starts its actor (which recovers from the store); a
//! message that finds the mailbox closed (passivated or killed actor) was never delivered and is re-sent to a fresh
//! actor. Every call has a deadline.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, ActorStatus, RpcReplyPort};
use tokio::time::Instant;

use super::entity::{Delivery, EntityError, EntityMsg, Sent};
use super::live::LiveMap;
use super::placement::{Host, Placement, RemoteError, Request};
use super::supervisor::{EnsureError, EntitySupervisor, SupervisorMsg};
use super::{Effects, Entity, EntityContext, RestartPolicy};

/// The longest any call waits, whatever it asks (a forwarded `Settled { timeout_ms: u64::MAX }` included): far
/// beyond any configured timeout, and far from overflowing a clock.
const LONGEST_CALL: Duration = Duration::from_secs(24 * 3600);

pub struct EntityRouter<A: Entity> {
    supervisor: ActorRef<SupervisorMsg<A>>,
    live: LiveMap<A>,
    call_timeout: Duration,
    /// Cluster mode: which entities this node hosts, and the way to the others.
    placement: Option<Arc<dyn Placement>>,
}

impl<A: Entity> Clone for EntityRouter<A> {
    fn clone(&self) -> Self {
        Self {
            supervisor: self.supervisor.clone(),
            live: self.live.clone(),
            call_timeout: self.call_timeout,
            placement: self.placement.clone(),
        }
    }
}

type Reply<A> = Result<A, EntityError<<A as crate::domain::Aggregate>::Error>>;

impl<A: Entity> EntityRouter<A> {
    pub async fn start(
        ctx: std::sync::Arc<EntityContext>,
        effects: std::sync::Arc<dyn Effects<A>>,
        policy: RestartPolicy,
        call_timeout: Duration,
    ) -> Result<Self, ractor::SpawnErr> {
        let live: LiveMap<A> = ctx.live_limit.register();
        let placement = ctx.placement.clone();
        let supervisor = EntitySupervisor::<A>::new(ctx, effects, live.clone(), policy);
        let (supervisor, _) = Actor::spawn(None, supervisor, ()).await?;
        Ok(Self { supervisor, live, call_timeout, placement })
    }

    /// Runs a command on the entity and returns its state after the command was persisted.
    pub async fn execute(&self, id: &str, command: A::Command) -> Reply<A> {
        if !self.hosts(id) {
            return match serde_json::to_value(&command) {
                Ok(command) => self.forward(id, Request::Execute { command }).await,
                Err(e) => Err(EntityError::Unavailable(format!("{} command not serializable: {e}", A::KIND))),
            };
        }
        self.execute_here(id, command).await
    }

    /// Runs a command on the entity and returns once it was persisted, without the state (no copy of it is made).
    pub async fn apply(&self, id: &str, command: A::Command) -> Result<(), EntityError<A::Error>> {
        if !self.hosts(id) {
            return self.execute(id, command).await.map(drop);
        }
        self.call(id, |reply| EntityMsg::Apply(command.clone(), reply, Sent::now())).await?
    }

    /// The entity's current state (a default state if it was never written).
    pub async fn get(&self, id: &str) -> Result<A, EntityError<A::Error>> {
        if !self.hosts(id) {
            return self.forward(id, Request::Get).await;
        }
        self.call(id, |reply| EntityMsg::Get(reply, Sent::now())).await
    }

    /// The entity's state once it has no side effect pending or running, waiting at most `timeout`.
    pub async fn settled(&self, id: &str, timeout: Duration) -> Result<A, EntityError<A::Error>> {
        if !self.hosts(id) {
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            return self.forward(id, Request::Settled { timeout_ms }).await;
        }
        self.settled_here(id, timeout).await
    }

    async fn execute_here(&self, id: &str, command: A::Command) -> Reply<A> {
        self.call(id, |reply| EntityMsg::Execute(command.clone(), reply, Sent::now())).await?
    }

    async fn settled_here(&self, id: &str, timeout: Duration) -> Result<A, EntityError<A::Error>> {
        let router = Self { call_timeout: timeout, ..self.clone() };
        router.call(id, EntityMsg::Settled).await
    }

    /// Whether this node hosts the entity: always, unless entities are spread over a cluster.
    pub fn hosts(&self, id: &str) -> bool {
        self.placement.as_ref().is_none_or(|p| p.is_local(id))
    }

    /// Runs the call on the node hosting the entity.
    async fn forward(&self, id: &str, request: Request) -> Result<A, EntityError<A::Error>> {
        let Some(placement) = &self.placement else {
            return Err(EntityError::Unavailable(format!("{} {id} is hosted nowhere", A::KIND)));
        };
        match placement.forward(A::KIND, id, request).await {
            Ok(state) => serde_json::from_value(state).map_err(|e| {
                EntityError::Unavailable(format!("{} {id}: unreadable state from its node: {e}", A::KIND))
            }),
            Err(RemoteError::Rejected { error }) => match serde_json::from_value(error) {
                Ok(error) => Err(EntityError::Rejected(error)),
                Err(e) => {
                    Err(EntityError::Unavailable(format!("{} {id}: unreadable refusal from its node: {e}", A::KIND)))
                }
            },
            Err(RemoteError::Unavailable { reason }) => Err(EntityError::Unavailable(reason)),
        }
    }

    /// Number of entity actors currently running on this node.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    pub fn is_running(&self) -> bool {
        self.supervisor.get_status() == ActorStatus::Running
    }

    /// Whether the entity's actor is running on this node.
    pub fn is_local(&self, id: &str) -> bool {
        self.local(id).is_some_and(|a| a.get_status() == ActorStatus::Running)
    }

    fn local(&self, id: &str) -> Option<ActorRef<EntityMsg<A>>> {
        self.live.get(id).map(|slot| slot.actor)
    }

    /// The id of the actor currently hosting the entity on this node, if any (fault tests).
    pub fn local_actor(&self, id: &str) -> Option<ractor::ActorId> {
        self.local(id).map(|a| a.get_id())
    }

    /// Kills the entity's actor outright, as a crash would (fault tests).
    pub fn kill(&self, id: &str) -> bool {
        self.local(id).map(|a| a.kill()).is_some()
    }

    /// Makes the entity's actor panic inside its message handler (fault tests).
    pub fn panic(&self, id: &str) -> bool {
        self.local(id).is_some_and(|a| a.cast(EntityMsg::Panic).is_ok())
    }

    async fn call<R: Send + 'static>(
        &self,
        id: &str,
        make: impl Fn(RpcReplyPort<Delivery<R>>) -> EntityMsg<A>,
    ) -> Result<R, EntityError<A::Error>> {
        let deadline = Instant::now() + self.call_timeout.min(LONGEST_CALL);
        let mut backoff = Duration::from_millis(1);
        loop {
            let actor = match self.live.get(id).filter(|s| s.actor.get_status() == ActorStatus::Running) {
                Some(slot) => {
                    slot.usage.touch();
                    Some(slot.actor)
                }
                None => self.ensure(id, deadline).await?,
            };
            if let Some(actor) = actor {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match actor.call(&make, Some(remaining)).await {
                    Ok(CallResult::Success(Delivery::Done(reply))) => return Ok(reply),
                    // The actor was passivating and did not handle it: its successor will.
                    Ok(CallResult::Success(Delivery::Retry)) => {}
                    Ok(CallResult::Timeout) => {
                        return Err(EntityError::Unavailable(format!("{} {id} did not answer in time", A::KIND)))
                    }
                    Ok(CallResult::SenderError) => {
                        return Err(EntityError::Unavailable(format!(
                            "{} {id} stopped while handling the request",
                            A::KIND
                        )))
                    }
                    // Not delivered: the actor was draining or gone. Safe to send again to its successor.
                    Err(_) => {}
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(EntityError::Unavailable(format!("{} {id} is restarting", A::KIND)));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Asks the supervisor for a running actor; `None` means "busy, retry".
    async fn ensure(
        &self,
        id: &str,
        deadline: Instant,
    ) -> Result<Option<ActorRef<EntityMsg<A>>>, EntityError<A::Error>> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let unavailable = |why: String| EntityError::Unavailable(format!("{} {id}: {why}", A::KIND));
        match self.supervisor.call(|r| SupervisorMsg::Ensure(id.to_string(), r), Some(remaining)).await {
            Ok(CallResult::Success(Ok(actor))) => Ok(Some(actor)),
            Ok(CallResult::Success(Err(EnsureError::Busy))) => Ok(None),
            Ok(CallResult::Success(Err(EnsureError::StartFailed(e)))) => Err(unavailable(e)),
            Ok(CallResult::Timeout) => Err(unavailable("start timed out".into())),
            Ok(CallResult::SenderError) | Err(_) => Err(unavailable("supervisor stopped".into())),
        }
    }

    /// Stops restarting, drains every entity (queued commands are still served), then stops the supervisor.
    pub async fn shutdown(&self, timeout: Duration) {
        let _ = self.supervisor.cast(SupervisorMsg::StopRestarting);
        let children = self.live.actors();
        let mut drains = tokio::task::JoinSet::new();
        for child in children {
            drains.spawn(async move { child.drain_and_wait(Some(timeout)).await });
        }
        while drains.join_next().await.is_some() {}
        let _ = self.supervisor.stop_and_wait(Some("shutdown".into()), Some(timeout)).await;
    }
}

#[async_trait]
impl<A: Entity> Host for EntityRouter<A> {
    fn kind(&self) -> &'static str {
        A::KIND
    }

    /// The caller bounds the request (the cluster clamps a wait for settling to `cluster.request_timeout_ms`);
    /// whatever it asks, no call here waits longer than [`LONGEST_CALL`].
    async fn serve(&self, id: &str, request: Request) -> Result<serde_json::Value, RemoteError> {
        if !self.hosts(id) {
            return Err(RemoteError::Unavailable { reason: format!("{} {id} moved to another node", A::KIND) });
        }
        let state = match request {
            Request::Execute { command } => match serde_json::from_value::<A::Command>(command) {
                Ok(command) => self.execute_here(id, command).await,
                Err(e) => {
                    return Err(RemoteError::Unavailable { reason: format!("unreadable {} command: {e}", A::KIND) })
                }
            },
            Request::Get => self.call(id, |reply| EntityMsg::Get(reply, Sent::now())).await,
            Request::Settled { timeout_ms } => self.settled_here(id, Duration::from_millis(timeout_ms)).await,
        };
        let unavailable = |e: serde_json::Error| RemoteError::Unavailable { reason: e.to_string() };
        match state {
            Ok(state) => serde_json::to_value(&state).map_err(unavailable),
            Err(EntityError::Rejected(error)) => {
                Err(RemoteError::Rejected { error: serde_json::to_value(&error).map_err(unavailable)? })
            }
            Err(EntityError::Unavailable(reason)) => Err(RemoteError::Unavailable { reason }),
        }
    }

    async fn release_moved(&self, timeout: Duration) -> usize {
        let moved = self.live.actors_where(|id| !self.hosts(id));
        let count = moved.len();
        let mut drains = tokio::task::JoinSet::new();
        for actor in moved {
            drains.spawn(async move { actor.drain_and_wait(Some(timeout)).await });
        }
        while drains.join_next().await.is_some() {}
        count
    }
}

impl<A: Entity> crate::faults::Killable for EntityRouter<A> {
    fn kind(&self) -> &'static str {
        A::KIND
    }

    fn kill_any(&self, pick: usize) -> Option<String> {
        let (id, actor) = self.live.nth(pick)?;
        actor.kill();
        Some(id)
    }
}
