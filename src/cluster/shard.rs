//! The shard of an entity: the partition Kafka's default partitioner gives its id, so the commands topic, the
//! event topics and the consumer group's assignment all agree on where an entity lives.

/// Kafka's `Utils.murmur2` (the Java client's key hash, also librdkafka's `murmur2_random` for keyed records).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// What an entity is placed by: its id, except for an order's payment (`pay-{order id}`), which lives on its order's
/// shard, so that a checkout's charge and its wait for the outcome are calls within one node. The other entities a
/// checkout touches are placed by their own ids: a cart by its user, a product and a coupon by themselves, since
/// many orders share them (placing them with any one order would make that shard hot).
pub fn routing_key(id: &str) -> &str {
    match id.strip_prefix("pay-") {
        Some(order) if order.starts_with("ord_") => order,
        _ => id,
    }
}

/// The partition, out of `partitions`, of a record keyed `key`.
pub fn partition(key: &[u8], partitions: i32) -> i32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as i32;
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Java client's own test vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as i32, expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn a_payment_is_placed_with_its_order() {
        assert_eq!(routing_key("pay-ord_1f2e"), "ord_1f2e");
        for other in ["ord_1f2e", "usr_1", "pay-x", "prod_1", "SUMMER"] {
            assert_eq!(routing_key(other), other);
        }
    }

    #[test]
    fn partitions_are_within_range_and_spread() {
        let mut counts = [0; 6];
        for i in 0..6000 {
            let p = partition(format!("ord_{i}").as_bytes(), 6);
            counts[usize::try_from(p).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
