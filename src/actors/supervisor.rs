//! Supervises every entity actor of one kind: starts them on demand (one per id), forgets them when they
//! passivate or are killed, and restarts crashed ones with exponential backoff up to a restart limit.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SupervisionEvent};

use super::entity::{EntityActor, EntityMsg};
use super::live::{LiveMap, Slot};
use super::{Effects, Entity, EntityContext, RestartPolicy};
use crate::telemetry::metrics::{ENTITIES_LIVE, ENTITY_CRASHES, ENTITY_PASSIVATIONS, ENTITY_RESTARTS, ENTITY_STARTS};

/// The exit reason ractor gives an actor that stopped by draining its mailbox.
const DRAINED: &str = "Drained";

pub enum SupervisorMsg<A: Entity> {
    /// Returns the running actor for an id, starting (and recovering) it if needed.
    Ensure(String, RpcReplyPort<Result<ActorRef<EntityMsg<A>>, EnsureError>>),
    /// Scheduled restart of a crashed entity.
    Restart(String),
    /// Shutdown has begun: stop restarting crashed entities.
    StopRestarting,
}

#[derive(Debug, Clone)]
pub enum EnsureError {
    /// The previous actor for this id is still stopping; try again shortly.
    Busy,
    /// Recovery failed (for instance the store is unreachable).
    StartFailed(String),
}

pub struct EntitySupervisor<A: Entity> {
    ctx: Arc<EntityContext>,
    effects: Arc<dyn Effects<A>>,
    live: LiveMap<A>,
    policy: RestartPolicy,
    _kind: PhantomData<fn() -> A>,
}

impl<A: Entity> EntitySupervisor<A> {
    pub fn new(ctx: Arc<EntityContext>, effects: Arc<dyn Effects<A>>, live: LiveMap<A>, policy: RestartPolicy) -> Self {
        Self { ctx, effects, live, policy, _kind: PhantomData }
    }
}

#[derive(Default)]
pub struct SupervisorState {
    ids: HashMap<ActorId, String>,
    failures: HashMap<String, VecDeque<Instant>>,
    stopping: bool,
}

fn is_serving(status: ActorStatus) -> bool {
    matches!(status, ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading)
}

impl<A: Entity> EntitySupervisor<A> {
    async fn ensure(
        &self,
        myself: &ActorRef<SupervisorMsg<A>>,
        id: &str,
        state: &mut SupervisorState,
    ) -> Result<ActorRef<EntityMsg<A>>, EnsureError> {
        if let Some(slot) = self.live.get(id) {
            return if is_serving(slot.actor.get_status()) { Ok(slot.actor) } else { Err(EnsureError::Busy) };
        }
        self.ctx.live_limit.make_room();
        let usage = self.live.new_usage();
        let (actor, _) = Actor::spawn_linked(
            None,
            EntityActor::<A>::new(self.ctx.clone(), self.effects.clone()),
            (id.to_string(), usage.clone()),
            myself.get_cell(),
        )
        .await
        .map_err(|e| {
            tracing::warn!(kind = A::KIND, id, error = %e, "entity failed to start");
            EnsureError::StartFailed(e.to_string())
        })?;
        state.ids.insert(actor.get_id(), id.to_string());
        self.live.insert(id.to_string(), Slot { actor: actor.clone(), usage });
        metrics::counter!(ENTITY_STARTS, "kind" => A::KIND).increment(1);
        metrics::gauge!(ENTITIES_LIVE, "kind" => A::KIND).set(self.live.len() as f64);
        Ok(actor)
    }

    fn forget(&self, cell: &ActorCell, state: &mut SupervisorState) -> Option<String> {
        let id = state.ids.remove(&cell.get_id())?;
        self.live.remove_actor(&id, cell.get_id());
        metrics::gauge!(ENTITIES_LIVE, "kind" => A::KIND).set(self.live.len() as f64);
        Some(id)
    }

    /// Records a failure and returns the backoff before the next restart, or `None` past the restart limit.
    fn next_restart(&self, id: &str, state: &mut SupervisorState) -> Option<Duration> {
        let now = Instant::now();
        let window = self.policy.window;
        state.failures.retain(|_, f| f.back().is_some_and(|t| now.duration_since(*t) <= window));
        let failures = state.failures.entry(id.to_string()).or_default();
        while failures.front().is_some_and(|t| now.duration_since(*t) > window) {
            failures.pop_front();
        }
        failures.push_back(now);
        let n = failures.len() as u32;
        (n <= self.policy.max_restarts).then(|| Duration::from_millis(20u64 << (n - 1).min(8)))
    }
}

impl<A: Entity> Actor for EntitySupervisor<A> {
    type Msg = SupervisorMsg<A>;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, _args: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Ensure(id, reply) => {
                // A caller that gave up (deadline, disconnect) must not leave an actor started for nothing.
                if reply.is_closed() {
                    return Ok(());
                }
                let result = self.ensure(&myself, &id, state).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::Restart(id) => {
                let running = self.live.get(&id).is_some();
                if !state.stopping && !running && self.ensure(&myself, &id, state).await.is_ok() {
                    metrics::counter!(ENTITY_RESTARTS, "kind" => A::KIND).increment(1);
                    tracing::info!(kind = A::KIND, %id, "entity restarted after failure");
                }
            }
            SupervisorMsg::StopRestarting => state.stopping = true,
        }
        Ok(())
    }

    // ractor's default stops the supervisor when any child exits; here a child exiting is routine (passivation)
    // or a failure to recover from, never a reason to take the other entities down.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            // Passivation and shutdown drain the actor; anything else (a kill) is abnormal.
            SupervisionEvent::ActorTerminated(cell, _, reason) if reason.as_deref() == Some(DRAINED) => {
                if let Some(id) = self.forget(&cell, state) {
                    metrics::counter!(ENTITY_PASSIVATIONS, "kind" => A::KIND).increment(1);
                    tracing::debug!(kind = A::KIND, %id, "entity passivated");
                }
                return Ok(());
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.unwrap_or_else(|| "stopped".into())),
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            _ => return Ok(()),
        };
        let Some(id) = self.forget(&cell, state) else { return Ok(()) };
        metrics::counter!(ENTITY_CRASHES, "kind" => A::KIND).increment(1);
        tracing::warn!(kind = A::KIND, %id, reason = %why, "entity actor exited abnormally");
        if state.stopping {
            return Ok(());
        }
        // Restart eagerly so an entity in the middle of a saga resumes without waiting for a message.
        match self.next_restart(&id, state) {
            Some(backoff) => {
                myself.send_after(backoff, move || SupervisorMsg::Restart(id));
            }
            None => {
                tracing::error!(kind = A::KIND, %id, "restart limit reached; entity starts again on its next message")
            }
        }
        Ok(())
    }
}
