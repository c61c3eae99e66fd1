//! W3C trace context for native routes, and the span records handed to Python.
//!
//! A traced request continues the client's `traceparent` (or starts a trace), gets the
//! ids of two spans, the gateway's SERVER span (`infer {model}`) and its CLIENT span for
//! the backend call (`backend {name}`), and the backend receives a `traceparent` naming
//! the CLIENT span, so Triton's own spans join the trace (and the gateway's per-request
//! Triton split finds them). The plane exports nothing itself: each traced request leaves
//! a [`SpanRecord`] with its real times in a bounded queue that Python drains and exports
//! through the OpenTelemetry SDK (`gateway/native_traces.py`).
//!
//! The validity rules are the gateway's (`gateway/core/tracing.valid_traceparent`): an
//! invalid `traceparent` is ignored and its `tracestate` dropped with it.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
const MAX_TRACEPARENT: usize = 256;
const MAX_TRACESTATE: usize = 512;

/// A client's trace context worth continuing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

/// Parses a `traceparent` value as the gateway does: version-traceid-parentid-flags in
/// lower-case hex; version `ff` and all-zero ids are invalid; version 00 has no more
/// fields, a later version may append `-...`.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() > MAX_TRACEPARENT || value.len() < 55 {
        return None;
    }
    let hex = |part: &[u8]| -> Option<u128> {
        if part
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            u128::from_str_radix(std::str::from_utf8(part).ok()?, 16).ok()
        } else {
            None
        }
    };
    let (version, trace_id, span_id, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let rest = &value[55..];
    let version = hex(version)?;
    let valid_rest =
        rest.is_empty() || (rest[0] == b'-' && rest.iter().all(|b| (b' '..=b'~').contains(b)));
    if version == 0xff || (version == 0 && !rest.is_empty()) || !valid_rest {
        return None;
    }
    let (trace_id, span_id, flags) = (hex(trace_id)?, hex(span_id)?, hex(flags)?);
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id: span_id as u64,
        flags: flags as u8,
    })
}

/// The ids of one traced request.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub trace_id: u128,
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<u64>,
    pub server: u64,
    pub client: u64,
    pub flags: u8,
}

impl Ids {
    /// The `traceparent` the backend gets: the CLIENT span's.
    pub fn backend_traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.client, self.flags
        )
    }
}

/// Random non-zero ids (SipHash with std's random keys over a counter: unique and
/// unpredictable enough for span ids, no dependency).
#[derive(Default)]
pub struct IdSource {
    keys: std::collections::hash_map::RandomState,
    counter: AtomicU64,
}

impl IdSource {
    pub fn next(&self) -> u64 {
        loop {
            let mut hasher = self.keys.build_hasher();
            hasher.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
            let id = hasher.finish();
            if id != 0 {
                return id;
            }
        }
    }
}

/// One traced request, with unix times in nanoseconds, for Python to export.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub ids: Ids,
    /// The gRPC method a sidecar forwarded (its SERVER span's name); "" for the gateway's
    /// `infer {model}`.
    pub method: Arc<str>,
    pub model: Arc<str>,
    pub backend: Arc<str>,
    pub start_ns: u64,
    /// The backend call, when there was one.
    pub backend_ns: Option<(u64, u64)>,
    pub end_ns: u64,
    pub code: u8,
}

impl SpanRecord {
    /// A sidecar's call (gRPC or REST half) to its one upstream: started at `unix_start`
    /// (unix time), the upstream call from/to these offsets into it, ended `total` in.
    pub fn sidecar(
        ids: Ids,
        unix_start: Duration,
        method: &str,
        model: &str,
        upstream: Option<(Duration, Duration)>,
        total: Duration,
        code: u8,
    ) -> SpanRecord {
        let unix = |d: Duration| (unix_start + d).as_nanos() as u64;
        SpanRecord {
            ids,
            method: method.into(),
            model: model.into(),
            backend: "upstream".into(),
            start_ns: unix(Duration::ZERO),
            backend_ns: upstream.map(|(from, to)| (unix(from), unix(to))),
            end_ns: unix(total),
            code,
        }
    }
}

/// What the plane traces, and the records waiting for Python (bounded: the oldest go
/// first when Python does not keep up, and are counted).
pub struct Tracer {
    /// Trace every request (Python's SDK is on, or Triton's splits are wanted); off, the
    /// plane touches no trace header: a client's `traceparent` reaches the backend as it
    /// came, as on the Python plane without an SDK (ids of spans nobody exports would
    /// leave holes in the client's trace).
    pub all: AtomicBool,
    ids: IdSource,
    records: Mutex<VecDeque<SpanRecord>>,
    capacity: usize,
    pub dropped: AtomicU64,
}

impl Tracer {
    pub fn new(all: bool, capacity: usize) -> Tracer {
        Tracer {
            all: AtomicBool::new(all),
            ids: IdSource::default(),
            records: Mutex::new(VecDeque::new()),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    /// The ids of a request with these headers, or None when tracing is off. The
    /// backend-bound `traceparent` (and a valid `tracestate`, else none) is set in
    /// `headers`; an invalid `traceparent` starts a new trace.
    pub fn begin(&self, headers: &mut HeaderMap) -> Option<Ids> {
        if !self.all.load(Ordering::Relaxed) {
            return None;
        }
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|v| parse_traceparent(v.as_bytes()));
        if parent.is_none() {
            headers.remove(TRACESTATE);
        }
        if let Some(state) = headers.get(TRACESTATE) {
            let ok = state.len() <= MAX_TRACESTATE
                && state.as_bytes().iter().all(|b| (b' '..=b'~').contains(b));
            if !ok {
                headers.remove(TRACESTATE);
            }
        }
        let ids = Ids {
            trace_id: match parent {
                Some(p) => p.trace_id,
                None => u128::from(self.ids.next()) << 64 | u128::from(self.ids.next()),
            },
            parent: parent.map(|p| p.span_id),
            server: self.ids.next(),
            client: self.ids.next(),
            flags: parent.map_or(1, |p| p.flags),
        };
        if let Ok(value) = HeaderValue::from_str(&ids.backend_traceparent()) {
            headers.insert(TRACEPARENT, value);
        }
        Some(ids)
    }

    pub fn push(&self, record: SpanRecord) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= self.capacity {
            records.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        records.push_back(record);
    }

    /// Every record so far, oldest first.
    pub fn take(&self) -> Vec<SpanRecord> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.drain(..).collect()
    }
}

/// Unix time now, in nanoseconds (the clock OpenTelemetry's timestamps use).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_rules_are_the_gateways() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(p.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!((p.span_id, p.flags), (0xb7ad6b7169203331, 1));
        let later = "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future";
        assert!(parse_traceparent(later.as_bytes()).is_some());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x", // 00 has no more
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", // upper case
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c8031+c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_traceparent(&[b'0'; 300]), None);
    }

    #[test]
    fn a_traced_request_continues_the_clients_trace() {
        let tracer = Tracer::new(false, 2);
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(tracer.begin(&mut headers).is_none()); // off: the client's context untouched
        assert_eq!(headers[TRACEPARENT], VALID);
        tracer.all.store(true, Ordering::Relaxed);
        headers.insert(TRACESTATE, HeaderValue::from_static("k=v"));
        let ids = tracer.begin(&mut headers).unwrap();
        assert_eq!(ids.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(ids.parent, Some(0xb7ad6b7169203331));
        assert!(ids.server != ids.client && ids.server != 0 && ids.client != 0);
        let sent = headers[TRACEPARENT].to_str().unwrap();
        assert_eq!(
            sent,
            format!("00-0af7651916cd43dd8448eb211c80319c-{:016x}-01", ids.client)
        );
        assert_eq!(headers[TRACESTATE], "k=v");
        // an invalid traceparent starts a trace, its state dropped
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        headers.insert(TRACESTATE, HeaderValue::from_static("k=v"));
        let ids = tracer.begin(&mut headers).unwrap();
        assert_eq!((ids.parent, ids.flags), (None, 1));
        assert!(!headers.contains_key(TRACESTATE));
        assert!(parse_traceparent(headers[TRACEPARENT].as_bytes()).is_some());
    }

    #[test]
    fn the_queue_is_bounded_and_counts_what_it_dropped() {
        let tracer = Tracer::new(true, 2);
        let ids = tracer.begin(&mut HeaderMap::new()).unwrap();
        for code in 0..3 {
            tracer.push(SpanRecord {
                ids,
                method: "".into(),
                model: "m".into(),
                backend: "b".into(),
                start_ns: 1,
                backend_ns: None,
                end_ns: 2,
                code,
            });
        }
        let codes: Vec<u8> = tracer.take().iter().map(|r| r.code).collect();
        assert_eq!(codes, vec![1, 2]);
        assert_eq!(tracer.dropped.load(Ordering::Relaxed), 1);
        assert!(tracer.take().is_empty());
    }
}
