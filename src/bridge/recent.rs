//! Bounded memories of what was seen recently: ids, for dropping repeats that arrive soon after the original, and
//! values by key, for what a later event needs of an earlier one.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};
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

/// The last `capacity` values inserted, by key. Memory grows with the values held, not with the capacity.
pub struct RecentMap<K, V> {
    order: VecDeque<K>,
    values: HashMap<K, V>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> RecentMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self { order: VecDeque::new(), values: HashMap::new(), capacity }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.values.get(key).cloned()
    }

    /// Remembers `value` under `key` (replacing what was there), forgetting the oldest key when full.
    pub fn insert(&mut self, key: K, value: V) {
        if self.values.insert(key.clone(), value).is_some() {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.values.remove(&oldest);
            }
        }
        self.order.push_back(key);
    }
}

#[cfg(test)]
mod tests {
    use super::{RecentIds, RecentMap};

    #[test]
    fn recent_values_forget_the_oldest_beyond_capacity() {
        let mut recent = RecentMap::new(2);
        recent.insert("a", 1);
        recent.insert("b", 2);
        recent.insert("a", 3);
        assert_eq!((recent.get("a"), recent.get("b")), (Some(3), Some(2)));
        recent.insert("c", 4);
        assert_eq!((recent.get("a"), recent.get("b"), recent.get("c")), (None, Some(2), Some(4)));
        assert_eq!(recent.values.len(), 2);
    }

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
