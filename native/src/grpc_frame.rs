//! gRPC message framing read on the fly (1 byte compressed flag + 4 bytes big-endian
//! length + the message), and a string field looked up by its path in a protobuf prefix.
//! Used by the sidecar to check declared message sizes and read a model name without
//! buffering a body, and by its health service to read `HealthCheckRequest.service`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::scan::PREFIX_LEN;

/// Where a request stream is in its framing, fed chunk by chunk: each message's 5-byte
/// prefix is read (it may span chunks) and its declared length checked; the message
/// bytes themselves are skipped, never copied.
#[derive(Debug, Default)]
pub struct Framing {
    prefix: [u8; PREFIX_LEN],
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    /// Messages whose prefix has been read.
    pub messages: u64,
}

/// A prefix read by [`Framing::feed`]: the message starts at `offset` of the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub compressed: bool,
    pub declared: u64,
    pub offset: usize,
}

impl Framing {
    /// Consumes `chunk`; the first prefix found in it whose declared length is over `limit`
    /// is `Err`. `on_prefix` sees every prefix read (for the first message's model name).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        limit: u64,
        mut on_prefix: impl FnMut(Prefix),
    ) -> Result<(), u64> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let skip = self.remaining.min((chunk.len() - pos) as u64);
                self.remaining -= skip;
                pos += skip as usize;
                continue;
            }
            let take = (PREFIX_LEN - self.have).min(chunk.len() - pos);
            self.prefix[self.have..self.have + take].copy_from_slice(&chunk[pos..pos + take]);
            self.have += take;
            pos += take;
            if self.have < PREFIX_LEN {
                break;
            }
            self.have = 0;
            let p = &self.prefix;
            let declared = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
            if declared > limit {
                return Err(declared);
            }
            self.messages += 1;
            self.remaining = declared;
            on_prefix(Prefix {
                compressed: p[0] != 0,
                declared,
                offset: pos,
            });
        }
        Ok(())
    }
}

/// One uncompressed gRPC message, framed.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The string at `path` (field numbers, outermost first; every step length-delimited) in
/// `msg`, a protobuf or a prefix of one. The first occurrence wins; None if absent, not
/// within the bytes given, malformed or not UTF-8.
pub fn field_str<'a>(msg: &'a [u8], path: &[u64]) -> Option<&'a str> {
    let (&want, rest) = path.split_first()?;
    let mut pos = 0;
    while pos < msg.len() {
        let key = varint(msg, &mut pos)?;
        let (number, wire_type) = (key >> 3, key & 7);
        let skip = match wire_type {
            0 => {
                varint(msg, &mut pos)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(msg, &mut pos)?).ok()?;
                let end = pos.saturating_add(len);
                if number == want {
                    let inner = &msg[pos..end.min(msg.len())];
                    return if rest.is_empty() {
                        (end <= msg.len()).then(|| std::str::from_utf8(inner).ok())?
                    } else {
                        field_str(inner, rest)
                    };
                }
                len
            }
            _ => return None,
        };
        pos = pos.checked_add(skip)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn prefixes_across_chunks_and_the_limit() {
        let mut body = frame(b"hello").to_vec();
        body.extend_from_slice(&frame(&[7; 300]));
        body.extend_from_slice(&frame(b""));
        for split in 1..body.len() {
            let mut framing = Framing::default();
            let mut seen = vec![];
            for chunk in body.chunks(split) {
                framing.feed(chunk, 300, |p| seen.push(p.declared)).unwrap();
            }
            assert_eq!(seen, vec![5, 300, 0], "chunks of {split}");
            assert_eq!(framing.messages, 3);
        }
        let mut framing = Framing::default();
        assert_eq!(framing.feed(&body, 299, |_| {}), Err(300));
        // The offset is where the message starts in the chunk that completed its prefix.
        let mut offsets = vec![];
        Framing::default()
            .feed(&body, 1000, |p| offsets.push((p.offset, p.compressed)))
            .unwrap();
        assert_eq!(offsets, vec![(5, false), (15, false), (320, false)]);
    }

    #[test]
    fn declared_lengths_are_checked_without_the_message() {
        // A 4 GiB declaration is refused from its prefix alone.
        let mut framing = Framing::default();
        assert_eq!(
            framing.feed(&[1, 0xff, 0xff, 0xff, 0xff], 64 << 20, |_| {}),
            Err(u64::from(u32::MAX))
        );
    }

    #[test]
    fn string_fields_by_path() {
        let spec = len_field(1, b"resnet");
        let mut predict = vec![0x10, 0x96, 0x01]; // a varint field first
        predict.extend(len_field(1, &spec));
        predict.extend(len_field(2, &[0; 40]));
        assert_eq!(field_str(&predict, &[1, 1]), Some("resnet"));
        assert_eq!(field_str(&predict, &[1]), Some("\n\u{6}resnet")); // the submessage
        assert_eq!(field_str(&predict, &[3]), None);
        assert_eq!(
            field_str(&len_field(1, b"identity"), &[1]),
            Some("identity")
        );
        // A prefix that ends inside the name: not found (not a truncated name).
        let whole = len_field(1, b"identity");
        assert_eq!(field_str(&whole[..5], &[1]), None);
        assert_eq!(field_str(&[0xff; 12], &[1]), None);
        assert_eq!(field_str(&[0x0a, 0xff, 0xff, 0xff], &[1]), None);
    }

    #[test]
    fn property_never_panics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> ((i % 8) * 8)) as u8).collect();
            let _ = field_str(&bytes, &[1, 1]);
            let _ = field_str(&bytes, &[1]);
            let mut framing = Framing::default();
            let _ = framing.feed(&bytes, (x >> 40) % 1000, |p| {
                assert!(p.offset <= bytes.len())
            });
        }
    }
}
