//! The pure pieces of the route policies the plane serves among native backends, each
//! the gateway's own rule (`gateway/core/routing/`), so both planes decide alike:
//!
//! - `weighted`: weighted rendezvous hashing of the request id (`weighted.py`: the member
//!   with the highest `-weight / ln(u)`, `u` from BLAKE2b-64 of `member \0 id`), a
//!   weighted random pick (`random.choices`) without an id;
//! - `spillover`: the primary's expected queue wait (`queue_state.expected_wait_s`) from
//!   its admission counters and the mean of its last 256 service times (`LatencyWindow`),
//!   and the overflow choice (`Spillover.decide`);
//! - which outcomes move on to the next member (`outcomes.py`, `wire/status.py`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::grpc_status;

/// Why an attempt was made (`decisions.py`'s `Reason`, the names the counters use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Primary = 0,
    Weighted = 1,
    Spill = 2,
    Fallback = 3,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Primary,
        Reason::Weighted,
        Reason::Spill,
        Reason::Fallback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Primary => "primary",
            Reason::Weighted => "weighted",
            Reason::Spill => "spill",
            Reason::Fallback => "fallback",
        }
    }

    /// Whether the attempt's `backend` entry names the reason (not a route's first choice).
    pub fn in_timing(self) -> bool {
        matches!(self, Reason::Spill | Reason::Fallback)
    }
}

/// BLAKE2b with an 8-byte digest and no key (RFC 7693), as `hashlib.blake2b(data,
/// digest_size=8)`: the digest's bytes.
pub fn blake2b_64(data: &[u8]) -> [u8; 8] {
    const IV: [u64; 8] = [
        0x6a09e667f3bcc908,
        0xbb67ae8584caa73b,
        0x3c6ef372fe94f82b,
        0xa54ff53a5f1d36f1,
        0x510e527fade682d1,
        0x9b05688c2b3e6c1f,
        0x1f83d9abfb41bd6b,
        0x5be0cd19137e2179,
    ];
    const SIGMA: [[usize; 16]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
        [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
        [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
        [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
        [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
        [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
        [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
        [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
        [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    ];
    fn compress(h: &mut [u64; 8], block: &[u8; 128], t: u128, last: bool) {
        let m: [u64; 16] = std::array::from_fn(|i| {
            u64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().unwrap())
        });
        let mut v = [0u64; 16];
        v[..8].copy_from_slice(h);
        v[8..].copy_from_slice(&IV);
        v[12] ^= t as u64;
        v[13] ^= (t >> 64) as u64;
        if last {
            v[14] = !v[14];
        }
        let mut g = |a: usize, b: usize, c: usize, d: usize, x: u64, y: u64| {
            v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
            v[d] = (v[d] ^ v[a]).rotate_right(32);
            v[c] = v[c].wrapping_add(v[d]);
            v[b] = (v[b] ^ v[c]).rotate_right(24);
            v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
            v[d] = (v[d] ^ v[a]).rotate_right(16);
            v[c] = v[c].wrapping_add(v[d]);
            v[b] = (v[b] ^ v[c]).rotate_right(63);
        };
        for round in 0..12 {
            let s = &SIGMA[round % 10];
            g(0, 4, 8, 12, m[s[0]], m[s[1]]);
            g(1, 5, 9, 13, m[s[2]], m[s[3]]);
            g(2, 6, 10, 14, m[s[4]], m[s[5]]);
            g(3, 7, 11, 15, m[s[6]], m[s[7]]);
            g(0, 5, 10, 15, m[s[8]], m[s[9]]);
            g(1, 6, 11, 12, m[s[10]], m[s[11]]);
            g(2, 7, 8, 13, m[s[12]], m[s[13]]);
            g(3, 4, 9, 14, m[s[14]], m[s[15]]);
        }
        for i in 0..8 {
            h[i] ^= v[i] ^ v[i + 8];
        }
    }
    let mut h = IV;
    h[0] ^= 0x0101_0000 | 8; // depth 1, fanout 1, no key, 8-byte digest
    let mut t: u128 = 0;
    let mut rest = data;
    while rest.len() > 128 {
        let (block, tail) = rest.split_at(128);
        t += 128;
        compress(&mut h, block.try_into().unwrap(), t, false);
        rest = tail;
    }
    let mut last = [0u8; 128];
    last[..rest.len()].copy_from_slice(rest);
    t += rest.len() as u128;
    compress(&mut h, &last, t, true);
    h[0].to_le_bytes()
}

/// `weighted._score`: the member's rendezvous score for a request id.
pub fn score(request_id: &str, member: &str, weight: u32) -> f64 {
    let mut key = Vec::with_capacity(member.len() + 1 + request_id.len());
    key.extend_from_slice(member.as_bytes());
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    let digest = u64::from_be_bytes(blake2b_64(&key));
    let u = (digest as f64 + 0.5) / 18_446_744_073_709_551_616.0; // in (0, 1)
    -f64::from(weight) / u.ln()
}

/// The member a request with `request_id` goes to (`Weighted.choose`): the highest score,
/// the first of equals (Python's `max`).
pub fn rendezvous<'a>(
    request_id: &str,
    members: impl IntoIterator<Item = (&'a str, u32)>,
) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, (name, weight)) in members.into_iter().enumerate() {
        let s = score(request_id, name, weight);
        if s > best.1 {
            best = (i, s);
        }
    }
    best.0
}

/// `random.choices(members, weights)` for `r` uniform in [0, 1): the first member whose
/// cumulative weight exceeds `r * total` (`bisect_right`), at most the last.
pub fn weighted_pick(weights: &[u32], r: f64) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let x = r * total as f64;
    let mut cumulative = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        cumulative += u64::from(w);
        if cumulative as f64 > x {
            return i;
        }
    }
    weights.len().saturating_sub(1)
}

/// A lock-free source of uniform floats for picks without a request id (splitmix64).
pub struct Uniform(AtomicU64);

impl Uniform {
    pub fn seeded() -> Uniform {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x9e37_79b9);
        Uniform(AtomicU64::new(hasher.finish()))
    }

    /// In [0, 1).
    pub fn next(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The last `capacity` service times of a backend's successful attempts
/// (`latency.LatencyWindow`, 256 by default): spill-over reads their mean.
pub struct LatencyWindow {
    samples: Mutex<VecDeque<f64>>,
    capacity: usize,
}

pub const WINDOW: usize = 256;

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            samples: Mutex::new(VecDeque::with_capacity(WINDOW)),
            capacity: WINDOW,
        }
    }
}

impl LatencyWindow {
    pub fn add(&self, d: Duration) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(d.as_secs_f64());
    }

    /// The mean in seconds; None before the first sample.
    pub fn mean(&self) -> Option<f64> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.is_empty() {
            return None;
        }
        Some(samples.iter().sum::<f64>() / samples.len() as f64)
    }
}

/// `queue_state.expected_wait_s`: seconds a request arriving now would wait for a slot;
/// infinite when it must queue behind requests of unknown service time.
pub fn expected_wait_s(
    in_flight: usize,
    queued: usize,
    max_concurrency: usize,
    service_time_s: Option<f64>,
) -> f64 {
    if in_flight < max_concurrency && queued == 0 {
        return 0.0;
    }
    match service_time_s {
        None => f64::INFINITY,
        Some(s) => (queued + 1) as f64 * s / max_concurrency.max(1) as f64,
    }
}

/// Where spill-over sends a request (`Spillover.decide`, the primary not ejected).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spill {
    Primary,
    /// The overflow member at this index of the overflow list.
    Overflow(usize),
    /// RESOURCE_EXHAUSTED at once, with this retry-after: the primary cannot start it
    /// within its deadline and no overflow member is expected to answer in time.
    Refuse(f64),
}

/// `Spillover.decide` for `overflow` members given as their expected latency (a native
/// member: the mean of its service times, 0 before any; never cold) or None (a member of
/// the python lane, whose warm-state estimate only the lane has: taken as warm and fitting).
/// `left`: the client's remaining deadline in seconds.
pub fn spill(wait_s: f64, max_wait_s: f64, left_s: Option<f64>, overflow: &[Option<f64>]) -> Spill {
    if wait_s <= max_wait_s {
        return Spill::Primary;
    }
    // Warm members that fit come first, in order; a native member is never cold, and a
    // lane member is taken as warm: so the first one that fits.
    let fits = |expected: &Option<f64>| match (expected, left_s) {
        (Some(e), Some(left)) => *e <= left,
        _ => true,
    };
    if let Some(i) = overflow.iter().position(fits) {
        return Spill::Overflow(i);
    }
    match left_s {
        Some(left) if wait_s.is_finite() && wait_s > left => Spill::Refuse(wait_s.max(1.0)),
        _ => Spill::Primary,
    }
}

/// Whether a member's failure moves the request on to the next member (`Outcome.moves_on`
/// of the error the gateway makes of it, `wire/status.error_from_rpc`): UNAVAILABLE, the
/// backend refusing the gateway's credentials (UNAUTHENTICATED, PERMISSION_DENIED: the
/// gateway's Unavailable), RESOURCE_EXHAUSTED but a size limit without retry-after
/// (PayloadTooLarge, the client's), and DEADLINE_EXCEEDED while the client's deadline
/// still had time (a per-try timeout).
pub fn moves_on(code: u8, retry_after: bool, message: &str, out_of_time: bool) -> bool {
    match code {
        grpc_status::UNAVAILABLE | UNAUTHENTICATED | PERMISSION_DENIED => true,
        grpc_status::RESOURCE_EXHAUSTED => retry_after || !is_size_limit(message),
        grpc_status::DEADLINE_EXCEEDED => !out_of_time,
        _ => false,
    }
}

const PERMISSION_DENIED: u8 = 7;
const UNAUTHENTICATED: u8 = 16;

/// A size-limit message: the gateway's `PayloadTooLarge` or gRPC's own check.
fn is_size_limit(message: &str) -> bool {
    let ours = message
        .split_once(" bytes exceeds the limit of ")
        .is_some_and(|(head, tail)| {
            let size = head.rsplit(" of ").next().unwrap_or("");
            !size.is_empty()
                && size.bytes().all(|b| b.is_ascii_digit())
                && tail.bytes().next().is_some_and(|b| b.is_ascii_digit())
        });
    ours || message.contains("larger than max (")
}

/// `ModelInferRequest.id` (field 3) from the first message of a body whose bytes are
/// `chunks` (gRPC prefix first): `Some(id)` once known, None if more bytes are needed.
/// A whole message is read as protobuf does (the last `id` wins, "" if none); of a
/// message still arriving, the first `id` before the tensors (a field numbered 5 or
/// more: encoders write fields in number order) is taken, "" if a tensor comes first.
pub fn request_id(chunks: &[bytes::Bytes]) -> Option<String> {
    let bytes = Cursor::new(chunks);
    let declared =
        u32::from_be_bytes([bytes.at(1)?, bytes.at(2)?, bytes.at(3)?, bytes.at(4)?]) as usize;
    let start = crate::scan::PREFIX_LEN;
    let end = start + declared;
    let complete = bytes.len >= end;
    let limit = end.min(bytes.len);
    let mut pos = start;
    let mut id: Option<Vec<u8>> = None;
    while pos < limit {
        let (key, next) = bytes.varint(pos, limit)?;
        let (number, wire_type) = (key >> 3, key & 7);
        if !complete && number >= 5 {
            break;
        }
        pos = match wire_type {
            0 => bytes.varint(next, limit)?.1,
            1 => next + 8,
            5 => next + 4,
            2 => {
                let (size, from) = bytes.varint(next, limit)?;
                let to = from.checked_add(usize::try_from(size).ok()?)?;
                if number == 3 {
                    if to > limit {
                        return complete.then(String::new); // malformed: Triton judges it
                    }
                    id = Some(bytes.slice(from, to));
                    if !complete {
                        break;
                    }
                }
                to
            }
            _ => return Some(String::new()), // unreadable: the checks refuse it
        };
    }
    if !complete && pos >= limit && id.is_none() {
        return None; // the fields before the tensors are not all here yet
    }
    Some(String::from_utf8_lossy(&id.unwrap_or_default()).into_owned())
}

/// Random access over a body's chunks.
struct Cursor<'a> {
    chunks: &'a [bytes::Bytes],
    len: usize,
}

impl<'a> Cursor<'a> {
    fn new(chunks: &'a [bytes::Bytes]) -> Self {
        Cursor {
            chunks,
            len: chunks.iter().map(|c| c.len()).sum(),
        }
    }

    fn at(&self, mut i: usize) -> Option<u8> {
        for c in self.chunks {
            if i < c.len() {
                return Some(c[i]);
            }
            i -= c.len();
        }
        None
    }

    /// A varint at `pos` ending before `limit`: its value and the position after it.
    fn varint(&self, mut pos: usize, limit: usize) -> Option<(u64, usize)> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            if pos >= limit {
                return None;
            }
            let byte = self.at(pos)?;
            pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value, pos));
            }
        }
        None
    }

    fn slice(&self, from: usize, to: usize) -> Vec<u8> {
        (from..to).filter_map(|i| self.at(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn blake2b_matches_hashlib() {
        // hashlib.blake2b(data, digest_size=8).hexdigest()
        assert_eq!(hex(&blake2b_64(b"")), "e4a6a0577479b2b4");
        assert_eq!(hex(&blake2b_64(b"abc")), "d8bb14d833d59559");
        assert_eq!(hex(&blake2b_64(b"triton\0req-1")), "7362e93b4baa4607");
        let long: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        assert_eq!(hex(&blake2b_64(&long)), "d325a9e186fa61cc");
        assert_eq!(hex(&blake2b_64(&long[..128])), "c2d13df1b6617e82");
    }

    #[test]
    fn rendezvous_matches_weighted_py() {
        // weighted._score("req-1", "triton", 80) and the picks of weighted.Weighted.choose
        assert!((score("req-1", "triton", 80) - 100.39011639957512).abs() < 1e-9);
        let members = [("triton", 80), ("runtime", 20)];
        let picks: Vec<usize> = (0..8)
            .map(|i| rendezvous(&format!("req-{i}"), members))
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 0, 1, 0, 0, 0]);
        let to_a = (0..10_000)
            .filter(|i| rendezvous(&format!("r{i}"), [("a", 80), ("b", 20)]) == 0)
            .count();
        assert!((7_800..=8_200).contains(&to_a), "{to_a}");
    }

    #[test]
    fn weighted_pick_is_bisect_right_over_cumulative_weights() {
        assert_eq!(weighted_pick(&[80, 20], 0.0), 0);
        assert_eq!(weighted_pick(&[80, 20], 0.7999), 0);
        assert_eq!(weighted_pick(&[80, 20], 0.8), 1);
        assert_eq!(weighted_pick(&[80, 20], 0.99999), 1);
        let u = Uniform::seeded();
        let to_a = (0..10_000)
            .filter(|_| weighted_pick(&[3, 1], u.next()) == 0)
            .count();
        assert!((7_200..=7_800).contains(&to_a), "{to_a}");
    }

    #[test]
    fn queue_wait_estimate_is_queue_state_py() {
        assert_eq!(expected_wait_s(0, 0, 1, None), 0.0);
        assert_eq!(expected_wait_s(3, 0, 4, Some(1.0)), 0.0);
        assert_eq!(expected_wait_s(1, 0, 1, None), f64::INFINITY);
        assert_eq!(expected_wait_s(1, 0, 1, Some(0.002)), 0.002);
        assert_eq!(expected_wait_s(4, 3, 4, Some(0.01)), 0.01);
        assert_eq!(expected_wait_s(2, 1, 2, Some(0.004)), 0.004);
        let w = LatencyWindow::default();
        assert_eq!(w.mean(), None);
        for ms in 0..300 {
            w.add(Duration::from_millis(ms));
        }
        // The last 256: 44..=299 ms.
        assert!((w.mean().unwrap() - 0.1715).abs() < 1e-9);
    }

    #[test]
    fn spill_decides_as_spillover_py() {
        let native = [Some(0.010)];
        assert_eq!(spill(0.004, 0.005, None, &native), Spill::Primary);
        assert_eq!(spill(0.006, 0.005, None, &native), Spill::Overflow(0));
        assert_eq!(
            spill(f64::INFINITY, 0.005, None, &native),
            Spill::Overflow(0)
        );
        // The member does not fit the deadline: the next one, or the primary's queue, or
        // refused at once when the wait is known to be longer than the deadline.
        assert_eq!(
            spill(0.5, 0.005, Some(0.005), &[Some(0.01), None]),
            Spill::Overflow(1)
        );
        assert_eq!(
            spill(0.5, 0.005, Some(0.005), &[Some(0.01), Some(0.001)]),
            Spill::Overflow(1)
        );
        assert_eq!(
            spill(0.004, 0.001, Some(0.003), &native),
            Spill::Refuse(1.0)
        );
        assert_eq!(
            spill(2.5, 0.001, Some(2.0), &[Some(3.0)]),
            Spill::Refuse(2.5)
        );
        assert_eq!(spill(0.002, 0.001, Some(0.003), &native), Spill::Primary);
        assert_eq!(
            spill(f64::INFINITY, 0.001, Some(0.003), &native),
            Spill::Primary
        );
    }

    #[test]
    fn what_moves_on_is_outcomes_py() {
        assert!(moves_on(14, false, "connection refused", false));
        assert!(moves_on(16, false, "bad token", false));
        assert!(moves_on(8, true, "queue full", false));
        assert!(moves_on(8, false, "throttled", false));
        assert!(!moves_on(
            8,
            false,
            "request message of 70 bytes exceeds the limit of 64 bytes",
            false
        ));
        assert!(!moves_on(
            8,
            false,
            "Received message larger than max (9 vs. 4)",
            false
        ));
        assert!(moves_on(4, false, "", false));
        assert!(!moves_on(4, false, "", true));
        for code in [0, 2, 3, 5, 9, 12, 13] {
            assert!(!moves_on(code, false, "", false), "{code}");
        }
    }

    fn message(fields: &[(u64, &[u8])]) -> Vec<u8> {
        let mut msg = Vec::new();
        for (number, data) in fields {
            msg.push(((number << 3) | 2) as u8);
            msg.push(data.len() as u8);
            msg.extend_from_slice(data);
        }
        let mut framed = vec![0];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        framed
    }

    #[test]
    fn the_request_id_is_read_as_protobuf_does() {
        let b = |v: &[u8]| bytes::Bytes::copy_from_slice(v);
        let whole = message(&[(1, b"m"), (3, b"first"), (7, b"tensor"), (3, b"last")]);
        assert_eq!(request_id(&[b(&whole)]).as_deref(), Some("last"));
        // In chunks, the same.
        let (a, c) = whole.split_at(9);
        assert_eq!(request_id(&[b(a), b(c)]).as_deref(), Some("last"));
        // Still arriving: the first before the tensors.
        assert_eq!(request_id(&[b(&whole[..16])]).as_deref(), Some("first"));
        // The fields before the tensors not all here yet: more bytes needed.
        assert_eq!(request_id(&[b(&whole[..10])]), None);
        assert_eq!(request_id(&[b(&whole[..3])]), None);
        let no_id = message(&[(1, b"m"), (5, b"input"), (7, b"tensor")]);
        assert_eq!(request_id(&[b(&no_id)]).as_deref(), Some(""));
        assert_eq!(request_id(&[b(&no_id[..12])]).as_deref(), Some(""));
    }
}
