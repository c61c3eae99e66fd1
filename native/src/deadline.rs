//! `grpc-timeout`: the client's deadline, read on the way in and passed on as the time
//! that remains (gRPC over HTTP/2: at most 8 digits and a unit, H M S m u n).

use std::time::Duration;

pub const HEADER: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value; None if malformed (the header is then ignored).
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats `remaining` in the finest unit that fits 8 digits (rounded up, so a
/// deadline is never passed on as already gone while time remains).
pub fn format(remaining: Duration) -> String {
    let micros = remaining.as_nanos().div_ceil(1000);
    if micros < 100_000_000 {
        return format!("{micros}u");
    }
    let millis = remaining.as_nanos().div_ceil(1_000_000);
    if millis < 100_000_000 {
        return format!("{millis}m");
    }
    format!("{}S", remaining.as_secs().min(99_999_999))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in [
            &b""[..],
            b"m",
            b"123456789m",
            b"12x",
            b"-1m",
            b"1.5S",
            "١m".as_bytes(),
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(format(Duration::from_micros(1500)), "1500u");
        assert_eq!(format(Duration::from_nanos(1)), "1u");
        assert_eq!(format(Duration::from_secs(1000)), "1000000m");
        assert_eq!(format(Duration::from_secs(10_000_000)), "10000000S");
        let d = Duration::from_millis(12_345);
        assert!(parse(format(d).as_bytes()).unwrap() >= d);
    }

    #[test]
    fn property_arbitrary_header_values_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 12) as usize;
            let alphabet = b"0123456789HMSmun x-";
            let value: Vec<u8> = (0..len)
                .map(|i| alphabet[((x >> (i * 5)) % alphabet.len() as u64) as usize])
                .collect();
            if let Some(d) = parse(&value) {
                assert!(
                    parse(format(d).as_bytes()).unwrap() >= d.min(Duration::from_secs(99_999_999))
                );
            }
        }
    }
}
