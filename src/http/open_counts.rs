//! Open things counted per key, each held by a guard: connections per client address (the accept loop) and
//! notification sockets per user and per client address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Default)]
pub struct OpenCounts(Arc<Mutex<HashMap<String, usize>>>);

/// One open thing under a key; dropping it lets the key's count down.
pub struct Held {
    counts: OpenCounts,
    key: String,
}

impl OpenCounts {
    /// Counts one more under `key`, unless `max` are open already.
    pub fn try_hold(&self, key: &str, max: usize) -> Option<Held> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let open = counts.entry(key.to_string()).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(Held { counts: self.clone(), key: key.to_string() })
    }

    /// Whether anything is open under `key`.
    pub fn is_open(&self, key: &str) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).contains_key(key)
    }

    /// Whether anything is open under any key.
    pub fn any_open(&self) -> bool {
        !self.0.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = counts.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_maximum_and_forgets_itself_when_none_is_open() {
        let counts = OpenCounts::default();
        let a1 = counts.try_hold("a", 2).unwrap();
        let a2 = counts.try_hold("a", 2).unwrap();
        assert!(counts.try_hold("a", 2).is_none());
        let _b = counts.try_hold("b", 2).expect("keys are counted apart");
        drop(a1);
        let a3 = counts.try_hold("a", 2).expect("room again");
        drop((a2, a3));
        assert!(!counts.0.lock().unwrap().contains_key("a"), "no entry left behind");
    }
}
