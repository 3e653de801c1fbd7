//! Pure domain rules: entities, the commands they accept, the events they emit and how events change state.
//!
//! Nothing here performs I/O or knows about actors, HTTP or storage; every rule is unit- and property-tested.

pub mod cart;
pub mod coupon;
pub mod currency;
pub mod order;
pub mod payment;
pub mod product;
pub mod text;
pub mod user;

#[cfg(test)]
mod saga_properties;

use std::fmt::Debug;

use serde::{de::DeserializeOwned, Serialize};

pub(crate) use text::required_text;

pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// An event-sourced entity: `decide` validates a command against the current state and returns the events that
/// record its effect; `apply` folds an event into the state. `apply` never fails: events are facts.
pub trait Aggregate: Clone + Default + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stream prefix, also the actor kind (`product`, `cart`).
    const KIND: &'static str;
    /// Serializable so that a command can travel to the node hosting the entity.
    type Command: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Event: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Error: std::error::Error + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    fn decide(&self, id: &str, command: &Self::Command, now: Timestamp) -> Result<Vec<Self::Event>, Self::Error>;
    fn apply(&mut self, event: &Self::Event);
    /// The public name of an event, e.g. `product.created`.
    fn event_type(event: &Self::Event) -> &'static str;
}

/// The name of a field or status inside a domain error: usually a literal, read back as an owned string when the
/// error travelled between nodes.
pub type Name = std::borrow::Cow<'static, str>;
