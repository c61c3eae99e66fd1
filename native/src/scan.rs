//! The model-name scanner: `ModelInferRequest.model_name` (field 1, length-delimited)
//! read out of a gRPC-framed request without decoding the message.
//!
//! A gRPC message is framed as 1 byte compressed flag + 4 bytes big-endian length +
//! the protobuf. The scanner walks the top-level fields of the protobuf, skipping each
//! by its length, so a 5 MB request costs the same few steps as a tiny one. It works on
//! a prefix of the body: it answers [`Scan::NeedMore`] until it has seen enough bytes
//! to decide, so the plane can route a request before the tensors have arrived.
//!
//! The first `model_name` found wins (clients write field 1 first; protobuf's
//! last-one-wins only matters for a message that repeats it, which Triton then judges).

/// The gRPC message prefix: compressed flag + big-endian length.
pub const PREFIX_LEN: usize = 5;

/// What a prefix of a request body says about its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The model name, read from the first message of the body.
    Found(String),
    /// Not enough bytes yet to decide.
    NeedMore,
    /// The name cannot be read (why, for logs and tests).
    Unscannable(&'static str),
}

const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;
const I32: u64 = 5;

/// Reads a varint at `pos` of `buf`: `Ok(Some((value, next)))`, `Ok(None)` if `buf`
/// ends inside it, `Err` if it is longer than 10 bytes.
fn varint(buf: &[u8], mut pos: usize) -> Result<Option<(u64, usize)>, &'static str> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let Some(&byte) = buf.get(pos) else {
            return Ok(None);
        };
        pos += 1;
        if shift == 63 && byte > 1 {
            return Err("varint overflows 64 bits");
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some((value, pos)));
        }
    }
    Err("varint longer than 10 bytes")
}

/// Scans `body`, the bytes of a request body received so far (from its first byte).
pub fn model_name(body: &[u8]) -> Scan {
    if body.len() < PREFIX_LEN {
        return Scan::NeedMore;
    }
    if body[0] != 0 {
        return Scan::Unscannable("compressed message");
    }
    let declared = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let available = body.len() - PREFIX_LEN;
    let complete = available >= declared;
    let msg = &body[PREFIX_LEN..PREFIX_LEN + available.min(declared)];
    // Ran out of the bytes we have: wait for more, unless the message is all here.
    let short = |why: &'static str| {
        if complete {
            Scan::Unscannable(why)
        } else {
            Scan::NeedMore
        }
    };
    let mut pos = 0;
    while pos < msg.len() {
        let (key, next) = match varint(msg, pos) {
            Ok(Some(v)) => v,
            Ok(None) => return short("truncated field key"),
            Err(why) => return Scan::Unscannable(why),
        };
        pos = next;
        let (number, wire_type) = (key >> 3, key & 7);
        if number == 0 {
            return Scan::Unscannable("field number 0");
        }
        match wire_type {
            VARINT => match varint(msg, pos) {
                Ok(Some((_, next))) => pos = next,
                Ok(None) => return short("truncated varint"),
                Err(why) => return Scan::Unscannable(why),
            },
            I64 | I32 => pos += if wire_type == I64 { 8 } else { 4 },
            LEN => {
                let (size, next) = match varint(msg, pos) {
                    Ok(Some(v)) => v,
                    Ok(None) => return short("truncated length"),
                    Err(why) => return Scan::Unscannable(why),
                };
                let Some(end) = usize::try_from(size).ok().and_then(|s| next.checked_add(s)) else {
                    return Scan::Unscannable("length overflows");
                };
                if end > declared {
                    return Scan::Unscannable("field longer than its message");
                }
                if number == 1 {
                    let Some(name) = msg.get(next..end) else {
                        return Scan::NeedMore; // end <= declared: the rest is coming
                    };
                    return match std::str::from_utf8(name) {
                        Ok(name) => Scan::Found(name.to_owned()),
                        Err(_) => Scan::Unscannable("model_name is not UTF-8"),
                    };
                }
                pos = end;
            }
            _ => return Scan::Unscannable("unsupported wire type"),
        }
        if pos > declared {
            return Scan::Unscannable("field past the end of its message");
        }
    }
    short("no model_name")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn len_field(out: &mut Vec<u8>, number: u64, data: &[u8]) {
        put_varint(out, (number << 3) | LEN);
        put_varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(msg);
        out
    }

    /// A small deterministic generator (xorshift64*), so the property tests are bounded
    /// and repeatable without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// A valid ModelInferRequest with `name` and other fields in a random order.
    fn request(rng: &mut Rng, name: &str) -> Vec<u8> {
        let mut fields: Vec<Vec<u8>> = Vec::new();
        let mut f = Vec::new();
        len_field(&mut f, 1, name.as_bytes());
        fields.push(f);
        for _ in 0..rng.below(6) {
            let mut f = Vec::new();
            match rng.below(4) {
                0 => {
                    let n = rng.below(300) as usize;
                    len_field(&mut f, 2 + rng.below(6), &rng.bytes(n)); // version, id, inputs, ...
                }
                1 => {
                    put_varint(&mut f, ((3 + rng.below(100)) << 3) | VARINT);
                    put_varint(&mut f, rng.next());
                }
                2 => {
                    put_varint(&mut f, ((3 + rng.below(100)) << 3) | I64);
                    f.extend_from_slice(&rng.bytes(8));
                }
                _ => {
                    put_varint(&mut f, ((3 + rng.below(100)) << 3) | I32);
                    f.extend_from_slice(&rng.bytes(4));
                }
            }
            fields.push(f);
        }
        for i in (1..fields.len()).rev() {
            fields.swap(i, rng.below(i as u64 + 1) as usize);
        }
        framed(&fields.concat())
    }

    #[test]
    fn reads_the_name_of_a_request() {
        let mut msg = Vec::new();
        len_field(&mut msg, 1, b"identity");
        len_field(&mut msg, 8, &[7u8; 64]); // raw_input_contents
        assert_eq!(model_name(&framed(&msg)), Scan::Found("identity".into()));
    }

    #[test]
    fn the_name_after_the_tensors() {
        let mut msg = Vec::new();
        len_field(&mut msg, 8, &vec![1u8; 5 << 20]);
        len_field(&mut msg, 1, b"late");
        let body = framed(&msg);
        assert_eq!(model_name(&body[..1000]), Scan::NeedMore);
        assert_eq!(model_name(&body), Scan::Found("late".into()));
    }

    #[test]
    fn prefixes_need_more_then_find() {
        let mut msg = Vec::new();
        len_field(&mut msg, 1, b"identity");
        let body = framed(&msg);
        for cut in 0..body.len() {
            assert_eq!(model_name(&body[..cut]), Scan::NeedMore, "cut at {cut}");
        }
        assert_eq!(model_name(&body), Scan::Found("identity".into()));
    }

    #[test]
    fn bad_messages_are_unscannable() {
        assert!(matches!(model_name(&[1, 0, 0, 0, 0]), Scan::Unscannable(_)));
        assert_eq!(model_name(&framed(&[])), Scan::Unscannable("no model_name"));
        // A field whose length runs past the message's declared length (a lying length).
        let mut body = framed(&[0x0a, 0x7f, b'a']);
        body.truncate(8);
        assert!(matches!(model_name(&body), Scan::Unscannable(_)));
        // A group wire type, a non-UTF-8 name, a 11-byte varint.
        assert!(matches!(model_name(&framed(&[0x0b])), Scan::Unscannable(_)));
        assert!(matches!(
            model_name(&framed(&[0x0a, 1, 0xff])),
            Scan::Unscannable(_)
        ));
        assert!(matches!(
            model_name(&framed(&[0x80; 12])),
            Scan::Unscannable(_)
        ));
    }

    #[test]
    fn property_valid_requests_give_their_name_in_any_order() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..3000 {
            let len = rng.below(40) as usize;
            let name: String = (0..len)
                .map(|_| (b'a' + rng.below(26) as u8) as char)
                .collect();
            let body = request(&mut rng, &name);
            assert_eq!(model_name(&body), Scan::Found(name.clone()), "case {i}");
            // Any prefix either needs more or already found the same name.
            let cut = rng.below(body.len() as u64) as usize;
            match model_name(&body[..cut]) {
                Scan::NeedMore => {}
                Scan::Found(found) => assert_eq!(found, name, "case {i} cut {cut}"),
                other => panic!("case {i} cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn property_arbitrary_truncated_and_lying_bytes_never_panic() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for _ in 0..20_000 {
            let mut body = match rng.below(3) {
                0 => {
                    let n = rng.below(64) as usize;
                    rng.bytes(n)
                }
                1 => request(&mut rng, "model"),
                _ => {
                    let n = rng.below(64) as usize;
                    let mut b = framed(&rng.bytes(n));
                    b[0] = 0;
                    b
                }
            };
            // Flip bytes, lie about the length, or cut the body short.
            for _ in 0..rng.below(4) {
                if !body.is_empty() {
                    let at = rng.below(body.len() as u64) as usize;
                    body[at] = rng.next() as u8;
                }
            }
            if body.len() >= PREFIX_LEN && rng.below(2) == 0 {
                body[1..5].copy_from_slice(&(rng.next() as u32).to_be_bytes());
            }
            let cut = rng.below(body.len() as u64 + 1) as usize;
            let _ = model_name(&body[..cut]);
            let _ = model_name(&body);
        }
    }
}
