//! Wall-clock time read off tokio's monotonic clock: timestamps never go backwards within a process, and tests can
//! pause and advance time (`tokio::time::pause`/`advance`) to expire reservations without sleeping.

use tokio::time::Instant;

use crate::domain::Timestamp;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_start: Timestamp,
    started: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self { wall_at_start: chrono::Utc::now(), started: Instant::now() }
    }

    pub fn now(&self) -> Timestamp {
        let elapsed = Instant::now().saturating_duration_since(self.started);
        self.wall_at_start + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
