//! Faults on purpose, in one mechanism for tests and operators:
//! - named fault points: code passes `check("before_commit:order.paid")`, and a point armed (`arm(point, n)`) panics
//!   inside the actor's handler the next `n` times. Tests arm them; the check is one atomic load while none is armed;
//! - the chaos switch (`[chaos]` in the config, off by default, announced with a warning at start-up and every
//!   minute while on): kills random live entity actors at a rate, delays or fails a share of the journal's store
//!   calls and of the bus's publishes, and in a cluster makes the node drop out of the group for a while, so an
//!   operator can watch a loaded deployment lose nothing. [`Chaos::set_enabled`] turns it on or off while running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ChaosConfig;

#[derive(Default)]
pub struct FaultPoints {
    any_armed: AtomicBool,
    armed: Mutex<HashMap<String, u32>>,
    fired: Mutex<Vec<String>>,
}

impl FaultPoints {
    /// Makes the next `times` passes through `point` panic.
    pub fn arm(&self, point: &str, times: u32) {
        self.armed.lock().unwrap_or_else(|p| p.into_inner()).insert(point.to_string(), times);
        self.any_armed.store(true, Ordering::SeqCst);
    }

    /// The points that fired so far, in order.
    pub fn fired(&self) -> Vec<String> {
        self.fired.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn check(&self, point: &str) {
        self.check_with(|| point.to_string());
    }

    /// [`FaultPoints::check`] with the point's name made only when some point is armed (it is checked on every
    /// event an entity commits).
    pub fn check_with(&self, point: impl FnOnce() -> String) {
        if !self.any_armed.load(Ordering::Relaxed) {
            return;
        }
        let point = point();
        let point = point.as_str();
        let fire = {
            let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
            match armed.get_mut(point) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        if fire {
            self.fired.lock().unwrap_or_else(|p| p.into_inner()).push(point.to_string());
            panic!("fault point `{point}` fired");
        }
    }
}

/// The chaos switch; see the module docs.
pub struct Chaos {
    config: ChaosConfig,
    enabled: AtomicBool,
    injected: Injected,
}

/// How many faults the chaos switch injected, by kind.
#[derive(Debug, Default)]
pub struct Injected {
    pub kills: std::sync::atomic::AtomicU64,
    pub store_delays: std::sync::atomic::AtomicU64,
    pub store_failures: std::sync::atomic::AtomicU64,
    pub bus_failures: std::sync::atomic::AtomicU64,
    pub drop_outs: std::sync::atomic::AtomicU64,
}

fn count(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Chaos {
    pub fn new(config: &ChaosConfig) -> Arc<Self> {
        Arc::new(Self {
            config: config.clone(),
            enabled: AtomicBool::new(config.enabled),
            injected: Injected::default(),
        })
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
        if on {
            tracing::warn!(settings = ?self.config, "CHAOS IS ON: faults are being injected on purpose");
        } else {
            tracing::warn!("chaos is off");
        }
    }

    /// What was injected so far.
    pub fn injected(&self) -> &Injected {
        &self.injected
    }

    pub fn is_on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Before a journal call: maybe waits `store_delay_ms`, maybe fails (the caller reports the store unavailable).
    pub async fn store_call(&self, what: &str) -> Result<(), String> {
        if !self.is_on() {
            return Ok(());
        }
        let (delay, fail) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen_bool(self.config.store_delay_share.clamp(0.0, 1.0)),
                rng.gen_bool(self.config.store_fail_share.clamp(0.0, 1.0)),
            )
        };
        if delay {
            count(&self.injected.store_delays);
            tokio::time::sleep(Duration::from_millis(self.config.store_delay_ms)).await;
        }
        if fail {
            count(&self.injected.store_failures);
            tracing::info!(call = what, "chaos: store call failed on purpose");
            return Err(format!("chaos: {what} failed on purpose"));
        }
        Ok(())
    }

    /// Before a publish: maybe fails (the outbox keeps the events and publishes them again).
    pub fn bus_call(&self) -> Result<(), String> {
        if self.is_on() && rand::thread_rng().gen_bool(self.config.bus_fail_share.clamp(0.0, 1.0)) {
            count(&self.injected.bus_failures);
            tracing::info!("chaos: publish failed on purpose");
            return Err("chaos: publish failed on purpose".into());
        }
        Ok(())
    }

    /// In a cluster: whether to drop out of the group now, and for how long. Asked about once a second.
    pub fn drop_out(&self) -> Option<Duration> {
        let every = self.config.drop_out_every_secs;
        if !self.is_on() || every == 0 || !rand::thread_rng().gen_bool((1.0 / every as f64).min(1.0)) {
            return None;
        }
        count(&self.injected.drop_outs);
        Some(Duration::from_secs(self.config.drop_out_secs))
    }

    /// Kills random live entity actors at `kill_actors_per_minute` while chaos is on, and repeats the warning that
    /// it is on every minute.
    pub fn spawn(self: &Arc<Self>, targets: Vec<Arc<dyn Killable>>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let chaos = self.clone();
        if chaos.is_on() {
            tracing::warn!(settings = ?chaos.config, "CHAOS IS ON: faults are being injected on purpose");
        }
        tokio::spawn(async move {
            let per_minute = chaos.config.kill_actors_per_minute;
            let tick = if per_minute == 0 { Duration::from_secs(60) } else { Duration::from_secs(60) / per_minute };
            let mut warned = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = stop.changed() => break,
                }
                if !chaos.is_on() {
                    continue;
                }
                if warned.elapsed() >= Duration::from_secs(60) {
                    tracing::warn!("CHAOS IS ON");
                    warned = tokio::time::Instant::now();
                }
                if per_minute == 0 || targets.is_empty() {
                    continue;
                }
                let (kind, pick) = {
                    let mut rng = rand::thread_rng();
                    (rng.gen_range(0..targets.len()), rng.gen::<usize>())
                };
                if let Some(id) = targets[kind].kill_any(pick) {
                    count(&chaos.injected.kills);
                    tracing::warn!(kind = targets[kind].kind(), %id, "chaos: entity actor killed on purpose");
                }
            }
        })
    }
}

/// Entity actors the chaos switch may kill.
pub trait Killable: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Kills the live actor at position `pick` (modulo how many are live), as a crash would; its id, if any.
    fn kill_any(&self, pick: usize) -> Option<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_point_fires_as_often_as_asked_then_never() {
        let points = FaultPoints::default();
        points.check("x");
        points.arm("x", 2);
        for _ in 0..2 {
            assert!(std::panic::catch_unwind(|| points.check("x")).is_err());
        }
        points.check("x");
        points.check("y");
        assert_eq!(points.fired(), ["x", "x"]);
    }

    #[tokio::test]
    async fn chaos_fails_what_it_is_told_to_only_while_on() {
        let config =
            ChaosConfig { enabled: false, store_fail_share: 1.0, bus_fail_share: 1.0, ..ChaosConfig::default() };
        let chaos = Chaos::new(&config);
        assert!(chaos.store_call("commit").await.is_ok() && chaos.bus_call().is_ok(), "off: nothing happens");
        chaos.set_enabled(true);
        assert!(chaos.store_call("commit").await.is_err());
        assert!(chaos.bus_call().is_err());
        assert_eq!(chaos.drop_out(), None, "no drop-out unless asked for");
        let half = Chaos::new(&ChaosConfig { enabled: true, store_fail_share: 0.5, ..ChaosConfig::default() });
        let mut failed = 0;
        for _ in 0..1000 {
            failed += usize::from(half.store_call("commit").await.is_err());
        }
        assert!((400..600).contains(&failed), "{failed}");
    }
}
