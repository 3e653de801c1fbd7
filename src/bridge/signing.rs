//! HMAC-SHA256 signatures of what the nodes of a deployment send each other through Kafka, with the key
//! `cluster.secret`:
//! - a forwarded call on `{prefix}.commands` and its answer on `{prefix}.replies.{node}` carry a `sig` field over
//!   every other field (`crate::cluster::node`);
//! - every event record published by the Kafka bus carries a [`HEADER`] over its topic, key and payload, and the
//!   bus's consumers drop a record whose signature is missing or wrong before any sink sees it.
//!
//! What is signed is a canonical encoding, never re-serialized JSON: a domain tag (so a signature made for one kind of
//! message is worthless for another), the number of fields, then each field as its length (8 bytes, big-endian)
//! followed by its bytes. A signature travels as 64 lower-case hex digits and is checked with
//! [`Mac::verify_slice`], a constant-time comparison.
//!
//! Without a secret nothing is signed and nothing is checked (a single process on the Kafka bus with
//! `cluster.secret` empty); a cluster always has one (`cluster.secret` is required with `cluster.enabled`).
//!
//! A refused message is counted in [`CLUSTER_REFUSED`] by channel and reason (closed sets: [`Channel`],
//! [`Refusal`]) and logged at `warn`, at most once every [`WARN_EVERY`] per channel.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::telemetry::metrics::CLUSTER_REFUSED;

type HmacSha256 = Hmac<Sha256>;

/// Shortest accepted `cluster.secret`, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// The Kafka header holding an event record's signature.
pub const HEADER: &str = "commercex-sig";
/// Refusals are logged at most this often per channel (each one is counted).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a signature is for: the tag that starts every signed encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A forwarded call on the commands topic.
    Envelope,
    /// The answer to a forwarded call, on the caller's reply topic.
    Answer,
    /// A domain event record on an event topic.
    Event,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        match self {
            Domain::Envelope => b"commercex.envelope.v1",
            Domain::Answer => b"commercex.answer.v1",
            Domain::Event => b"commercex.event.v1",
        }
    }
}

/// Signs and checks with one secret. Cloning is cheap (the keyed state is copied, not the secret re-derived).
#[derive(Clone)]
pub struct Signer {
    keyed: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<secret>)")
    }
}

impl Signer {
    /// `None` for an empty secret: nothing is signed or checked then.
    pub fn new(secret: &str) -> Option<Self> {
        if secret.is_empty() {
            return None;
        }
        // HMAC takes a key of any length; this never fails.
        let keyed = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).ok()?;
        Some(Self { keyed })
    }

    fn mac(&self, domain: Domain, fields: &[&[u8]]) -> HmacSha256 {
        fn part(mac: &mut HmacSha256, bytes: &[u8]) {
            mac.update((bytes.len() as u64).to_be_bytes().as_slice());
            mac.update(bytes);
        }
        let mut mac = self.keyed.clone();
        part(&mut mac, domain.tag());
        part(&mut mac, (fields.len() as u64).to_be_bytes().as_slice());
        for &field in fields {
            part(&mut mac, field);
        }
        mac
    }

    /// The signature of `fields` for `domain`: 64 lower-case hex digits.
    pub fn sign(&self, domain: Domain, fields: &[&[u8]]) -> String {
        crate::auth::tokens::hex(&self.mac(domain, fields).finalize().into_bytes())
    }

    /// Whether `signature` is the signature of `fields` for `domain`, compared in constant time.
    pub fn verify(&self, domain: Domain, fields: &[&[u8]], signature: &str) -> bool {
        let Some(tag) = unhex(signature) else { return false };
        self.mac(domain, fields).verify_slice(&tag).is_ok()
    }

    /// The [`HEADER`] value of an event record.
    pub fn sign_event(&self, topic: &str, key: &[u8], payload: &[u8]) -> String {
        self.sign(Domain::Event, &[topic.as_bytes(), key, payload])
    }

    /// Checks an event record's [`HEADER`] value (`None`: the record has none).
    pub fn verify_event(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        let Some(signature) = signature.filter(|s| !s.is_empty()) else { return Err(Refusal::Unsigned) };
        let signature = std::str::from_utf8(signature).map_err(|_| Refusal::Signature)?;
        if self.verify(Domain::Event, &[topic.as_bytes(), key, payload], signature) {
            Ok(())
        } else {
            Err(Refusal::Signature)
        }
    }
}

/// Bytes of a hex string (either case); `None` if it is not one.
fn unhex(text: &str) -> Option<Vec<u8>> {
    fn nibble(digit: u8) -> Option<u8> {
        char::from(digit).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [high, low] => Some((nibble(*high)? << 4) | nibble(*low)?),
            _ => None,
        })
        .collect()
}

/// Where a refused message came from: the `channel` label of [`CLUSTER_REFUSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A forwarded call on `{prefix}.commands`.
    Commands,
    /// An answer on this node's `{prefix}.replies.{node}`.
    Answers,
    /// An event record on `{prefix}.{kind}`.
    Events,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Commands => "commands",
            Channel::Answers => "answers",
            Channel::Events => "events",
        }
    }

    fn index(self) -> usize {
        match self {
            Channel::Commands => 0,
            Channel::Answers => 1,
            Channel::Events => 2,
        }
    }
}

/// Why a message was refused: the `reason` label of [`CLUSTER_REFUSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature at all.
    Unsigned,
    /// A signature that does not match (another key, or any field altered).
    Signature,
    /// A call whose deadline has passed (its caller has answered 503 already; normal for a request that waited
    /// through a handover).
    Expired,
    /// A call whose deadline lies further ahead than any node sets one.
    Deadline,
    /// A call whose reply topic is not its sender's own, or whose sender is not a valid node id.
    ReplyTo,
    /// Not a readable message at all.
    Malformed,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Unsigned,
        Refusal::Signature,
        Refusal::Expired,
        Refusal::Deadline,
        Refusal::ReplyTo,
        Refusal::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::Deadline => "deadline",
            Refusal::ReplyTo => "reply_to",
            Refusal::Malformed => "malformed",
        }
    }
}

/// When each channel last warned, and how many refusals it has not logged since.
static WARNED: [Mutex<(Option<Instant>, u64)>; 3] =
    [Mutex::new((None, 0)), Mutex::new((None, 0)), Mutex::new((None, 0))];

/// Counts a refused message, and logs it at `warn` unless its channel did so within [`WARN_EVERY`].
pub fn refused(channel: Channel, reason: Refusal, detail: &str) {
    metrics::counter!(CLUSTER_REFUSED, "channel" => channel.as_str(), "reason" => reason.as_str()).increment(1);
    let unlogged = {
        let mut warned = WARNED[channel.index()].lock().unwrap_or_else(|p| p.into_inner());
        if warned.0.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            warned.1 += 1;
            return;
        }
        let unlogged = warned.1;
        *warned = (Some(Instant::now()), 0);
        unlogged
    };
    tracing::warn!(
        channel = channel.as_str(),
        reason = reason.as_str(),
        detail,
        refused_unlogged_before = unlogged,
        "refused a message on the Kafka topics (see commercex_cluster_refused_total)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-cluster-secret-of-at-least-32-characters";

    #[test]
    fn a_signature_holds_only_for_the_same_key_domain_and_fields() {
        let signer = Signer::new(SECRET).unwrap();
        let fields: [&[u8]; 3] = [b"a", b"bc", b""];
        let sig = signer.sign(Domain::Envelope, &fields);
        assert_eq!(sig.len(), 64);
        assert!(sig.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(signer.verify(Domain::Envelope, &fields, &sig));
        assert!(signer.verify(Domain::Envelope, &fields, &sig.to_ascii_uppercase()), "hex in either case");
        assert!(!signer.verify(Domain::Answer, &fields, &sig), "another domain");
        let other = Signer::new("another-secret-of-at-least-32-characters").unwrap();
        assert!(!other.verify(Domain::Envelope, &fields, &sig), "another key");
        // Moving bytes from one field to the next changes the encoding (each field is length-prefixed).
        let moved: [&[u8]; 3] = [b"ab", b"c", b""];
        let fewer: [&[u8]; 2] = [b"a", b"bc"];
        let more: [&[u8]; 4] = [b"a", b"bc", b"", b""];
        assert!(!signer.verify(Domain::Envelope, &moved, &sig));
        assert!(!signer.verify(Domain::Envelope, &fewer, &sig), "a field fewer");
        assert!(!signer.verify(Domain::Envelope, &more, &sig), "a field more");
        let (longer, not_hex) = (format!("{sig}00"), format!("+{}", &sig[1..]));
        for bad in ["", "zz", &sig[..62], longer.as_str(), not_hex.as_str()] {
            assert!(!signer.verify(Domain::Envelope, &fields, bad), "{bad}");
        }
        let mut flipped = sig.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        assert!(!signer.verify(Domain::Envelope, &fields, std::str::from_utf8(&flipped).unwrap()));
    }

    /// Signatures are checked by `Mac::verify_slice` (a constant-time comparison), never compared as text.
    #[test]
    fn signatures_are_compared_in_constant_time() {
        assert!(include_str!("signing.rs").contains("self.mac(domain, fields).verify_slice(&tag).is_ok()"));
        for (file, text) in [
            ("cluster/node.rs", include_str!("../cluster/node.rs")),
            ("kafka/consumer.rs", include_str!("kafka/consumer.rs")),
        ] {
            for compared in ["sig ==", "sig !=", "signature ==", "signature !=", "== signature", "!= signature"] {
                assert!(!text.contains(compared), "{file} compares signatures with `{compared}`");
            }
        }
    }

    #[test]
    fn no_secret_no_signer() {
        assert!(Signer::new("").is_none());
        assert_eq!(format!("{:?}", Signer::new(SECRET).unwrap()), "Signer(<secret>)", "the secret is never shown");
    }

    #[test]
    fn event_records_are_signed_over_topic_key_and_payload() {
        let signer = Signer::new(SECRET).unwrap();
        let sig = signer.sign_event("shop.product", b"p1", b"{}");
        let sig = Some(sig.as_bytes());
        assert_eq!(signer.verify_event("shop.product", b"p1", b"{}", sig), Ok(()));
        assert_eq!(signer.verify_event("shop.product", b"p1", b"{}", None), Err(Refusal::Unsigned));
        assert_eq!(signer.verify_event("shop.product", b"p1", b"{}", Some(b"".as_slice())), Err(Refusal::Unsigned));
        assert_eq!(signer.verify_event("shop.order", b"p1", b"{}", sig), Err(Refusal::Signature));
        assert_eq!(signer.verify_event("shop.product", b"p2", b"{}", sig), Err(Refusal::Signature));
        assert_eq!(signer.verify_event("shop.product", b"p1", b"{ }", sig), Err(Refusal::Signature));
        let not_text = Some([0xffu8, 0xfe].as_slice());
        assert_eq!(signer.verify_event("shop.product", b"p1", b"{}", not_text), Err(Refusal::Signature));
    }

    #[test]
    fn labels_are_a_closed_set() {
        let reasons: Vec<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons, ["unsigned", "signature", "expired", "deadline", "reply_to", "malformed"]);
        for channel in [Channel::Commands, Channel::Answers, Channel::Events] {
            assert_eq!(
                ["commands", "answers", "events"][channel.index()],
                channel.as_str(),
                "each channel has its own warning slot"
            );
        }
    }
}
