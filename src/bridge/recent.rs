//! A bounded memory of recently seen ids, for dropping repeats that arrive soon after the original.

use std::borrow::Borrow;
use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

/// The last `capacity` ids inserted. Memory grows with the ids held, not with the capacity.
pub struct RecentIds<T> {
    order: VecDeque<T>,
    ids: HashSet<T>,
    capacity: usize,
}

impl<T: Eq + Hash + Clone> RecentIds<T> {
    pub fn new(capacity: usize) -> Self {
        Self { order: VecDeque::new(), ids: HashSet::new(), capacity }
    }

    pub fn contains<Q>(&self, id: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.ids.contains(id)
    }

    /// Remembers `id`, forgetting the oldest one when full; false when it was remembered already.
    pub fn insert(&mut self, id: T) -> bool {
        if self.ids.contains(&id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self.order.push_back(id.clone());
        self.ids.insert(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::RecentIds;

    #[test]
    fn recent_ids_forget_the_oldest_beyond_capacity() {
        let mut recent = RecentIds::new(2);
        assert!(recent.insert("a"));
        assert!(recent.insert("b"));
        assert!(!recent.insert("a"), "a repeat");
        assert!(recent.contains("a") && recent.contains("b"));
        assert!(recent.insert("c"));
        assert!(!recent.contains("a"), "the oldest is forgotten");
        assert!(recent.contains("b") && recent.contains("c"));
        assert_eq!(recent.order.len(), 2);
    }
}
