//! gRPC status codes and the errors the plane answers itself, in gRPC's own shape: a
//! trailers-only response (HTTP 200, `content-type: application/grpc`, `grpc-status`,
//! `grpc-message` percent-encoded as the gRPC HTTP/2 spec says).

use http::{HeaderMap, HeaderValue, Response};

pub const OK: u8 = 0;
pub const CANCELLED: u8 = 1;
pub const UNKNOWN: u8 = 2;
pub const INVALID_ARGUMENT: u8 = 3;
pub const DEADLINE_EXCEEDED: u8 = 4;
pub const RESOURCE_EXHAUSTED: u8 = 8;
pub const INTERNAL: u8 = 13;
pub const UNAVAILABLE: u8 = 14;
pub const UNAUTHENTICATED: u8 = 16;
/// Codes 0..=16: the size of a per-code counter array.
pub const CODES: usize = 17;

/// An error the plane answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub code: u8,
    pub message: String,
    /// `retry-after` in whole seconds (admission queue full).
    pub retry_after_s: Option<u64>,
}

impl Status {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The trailers-only response; `server_timing` is added when given.
    pub fn response<B>(&self, body: B, server_timing: Option<String>) -> Response<B> {
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        self.write(headers);
        if let Some(timing) = server_timing.and_then(|t| HeaderValue::from_str(&t).ok()) {
            headers.append("server-timing", timing);
        }
        response
    }

    fn write(&self, headers: &mut HeaderMap) {
        headers.insert("grpc-status", HeaderValue::from(u16::from(self.code)));
        if let Ok(message) = HeaderValue::from_str(&percent_encode(&self.message)) {
            headers.insert("grpc-message", message);
        }
        if let Some(seconds) = self.retry_after_s {
            headers.insert("retry-after", HeaderValue::from(seconds));
        }
    }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The status code in `headers` (trailers, or the headers of a trailers-only answer).
pub fn code_of(headers: &HeaderMap) -> Option<u8> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<u8>()
        .ok()
        .filter(|&c| usize::from(c) < CODES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_only_shape() {
        let mut status = Status::new(RESOURCE_EXHAUSTED, "full: 100% ünïcode");
        status.retry_after_s = Some(5);
        let response = status.response((), Some("total;dur=0.010".into()));
        let h = response.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "full: 100%25 %C3%BCn%C3%AFcode");
        assert_eq!(h["retry-after"], "5");
        assert_eq!(h["server-timing"], "total;dur=0.010");
        assert_eq!(code_of(h), Some(8));
    }

    #[test]
    fn codes_read_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(code_of(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("99"));
        assert_eq!(code_of(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(code_of(&h), Some(UNAVAILABLE));
    }
}
