//! The sidecar's REST half on the plane (`infergw sidecar --http-upstream` on the native
//! data plane): every HTTP/1.1 request goes to the one upstream's REST endpoint (OIP's or
//! TF Serving's) with its method, path, query, headers and body as sent, and the upstream's
//! answer comes back as it gave it: bodies are bytes here (the binary tensor extension
//! included), never decoded, re-encoded or decompressed.
//!
//! What it does is what the Python proxy does (`gateway/sidecar/http_proxy.py`):
//! - hop-by-hop headers and `host` are not forwarded, either way, and header names keep
//!   the case they came in (as aiohttp keeps it); the upstream
//!   connections are kept alive in a pool (hyper-util's client);
//! - a request body over `max_message_bytes` is 413 naming the limit: a declared length at
//!   once, before anything is forwarded, a chunked body when its count passes the limit
//!   (the upstream request is abandoned). The rest of the body is read and dropped for at
//!   most `LINGER` before the answer (aiohttp's and nginx's lingering close): a connection
//!   closed with the client's bytes unread is reset, and a client still sending would
//!   never read its 413;
//! - a response of known length up to `BUFFER_RESPONSES_UP_TO` is read whole, so that
//!   `Server-Timing` (`backend`, `total`, after the upstream's own) covers the full round
//!   trip; a larger or chunked one streams through, its entries ending at the upstream's
//!   headers (`desc=headers`), the last moment a header can still be sent;
//! - errors of its own are in the shape OIP and TF Serving share, `{"error": "..."}`:
//!   upstream unreachable -> 503, upstream dropping the connection before its answer was
//!   whole -> 502; an answer broken off mid-stream closes the client's connection, which
//!   is what a client of the upstream itself would have seen;
//! - every call is counted by `HTTP {method}` and status, and inference calls (OIP's
//!   `/infer`, TF Serving's `:predict`/`:classify`/`:regress`) per model too
//!   (`sidecar_stats.rs`). Statuses are HTTP's (`CLIENT_CLOSED` for a client gone before
//!   its answer): Python gives them the Python sidecar's labels;
//! - traced calls (Python's SDK is on) leave the Python proxy's two spans as a record.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::config::SidecarConfig;
use crate::grpc_status;
use crate::sidecar_stats::{Counted, Outcome, SidecarStats};
use crate::timing::{self, Entries};
use crate::trace::{self, Ids, SpanRecord, Tracer};
use crate::upstream::{Body, BoxError};

/// Responses of a known length up to this are read whole before they are answered (the
/// Python proxy's bound too): a 5 MB answer read whole cost the client ~1.6 ms more than
/// streamed (docs/native.md), to time a loopback copy.
pub const BUFFER_RESPONSES_UP_TO: u64 = 1 << 20;
/// The status a call is counted with when its client went away before the answer
/// (nginx's "client closed request"); Python shows it as CANCELLED, as on gRPC.
pub const CLIENT_CLOSED: u16 = 499;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused body is read (and dropped) before its 413 goes out.
const LINGER: Duration = Duration::from_secs(2);
const POOL_IDLE: Duration = Duration::from_secs(60);
/// The Python proxy's `HOP_BY_HOP`: never forwarded, in either direction.
pub const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

pub fn forward_headers(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `(model, protocol)` when `path` is an inference call, else None: the Python proxy's
/// `INFERENCE_PATHS`, `/v2/models/M[/versions/V]/infer` (`rest`) and
/// `/v1/models/M[/versions/N|/labels/L]:predict|classify|regress` (`tfserving-rest`).
/// The model is percent-decoded, as aiohttp decodes the path it matches.
pub fn inference_of(path: &str) -> Option<(String, &'static str)> {
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let rest = rest.strip_suffix("/infer")?;
        let (model, version) = match rest.split_once('/') {
            None => (rest, None),
            Some((model, tail)) => (model, Some(tail.strip_prefix("versions/")?)),
        };
        let version_ok = version.is_none_or(|v| !v.is_empty() && !v.contains('/'));
        return (!model.is_empty() && version_ok).then(|| (percent_decoded(model), "rest"));
    }
    let rest = path.strip_prefix("/v1/models/")?;
    let (head, verb) = rest.rsplit_once(':')?;
    if !matches!(verb, "predict" | "classify" | "regress") {
        return None;
    }
    let (model, tail) = match head.split_once('/') {
        None => (head, None),
        Some((model, tail)) => (model, Some(tail)),
    };
    let tail_ok = tail.is_none_or(|t| match t.split_once('/') {
        Some(("versions", v)) => !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()),
        Some(("labels", l)) => !l.is_empty() && !l.contains('/'),
        _ => false,
    });
    (!model.is_empty() && !model.contains(':') && tail_ok)
        .then(|| (percent_decoded(model), "tfserving-rest"))
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub struct HttpSidecar {
    /// The upstream's `HOST:PORT`.
    pub address: String,
    client: Client<HttpConnector, Body>,
    pub max_message_bytes: u64,
    pub stats: SidecarStats,
    pub tracer: Arc<Tracer>,
}

impl Counted for HttpSidecar {
    fn upstream(&self) -> &str {
        &self.address
    }

    fn stats(&self) -> &SidecarStats {
        &self.stats
    }
}

impl HttpSidecar {
    pub fn new(config: &SidecarConfig, tracer: Arc<Tracer>) -> HttpSidecar {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .http1_preserve_header_case(true) // as the client wrote them (connections.rs)
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector);
        HttpSidecar {
            address: config.upstream.clone(),
            client,
            max_message_bytes: config.max_message_bytes,
            stats: SidecarStats::default(),
            tracer,
        }
    }

    fn too_large(&self, declared: Option<u64>) -> String {
        let amount = declared.map_or(String::new(), |n| format!(" of {n} bytes"));
        format!(
            "request body{amount} exceeds the limit of {} bytes",
            self.max_message_bytes
        )
    }
}

/// The hyper service of a REST sidecar plane: never fails, every error is an answer.
pub async fn handle(
    side: Arc<HttpSidecar>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let inference = inference_of(path);
    let mut call = Call {
        method: format!("HTTP {}", parts.method),
        span_name: format!("{} {path}", parts.method),
        inference,
        side: side.clone(),
        start,
        trace: None,
        done: false,
    };
    let declared = content_length(&parts.headers);
    if let Some(n) = declared.filter(|&n| n > side.max_message_bytes) {
        // A client waiting for `100 Continue` sends no body: nothing to linger for.
        if !parts.headers.contains_key(EXPECT) {
            linger(Some(body)).await;
        }
        let message = side.too_large(Some(n));
        return Ok(call.fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            grpc_status::RESOURCE_EXHAUSTED,
            &message,
        ));
    }
    let mut headers = parts.headers;
    forward_headers(&mut headers);
    call.trace = side
        .tracer
        .begin(&mut headers)
        .map(|ids| (ids, trace::unix_now()));
    let refused = Arc::new(Mutex::new(None));
    let body = Limited {
        inner: Some(body),
        seen: 0,
        limit: side.max_message_bytes,
        refused: refused.clone(),
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match Uri::builder()
        .scheme("http")
        .authority(side.address.as_str())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => {
            // The client's target cannot be re-addressed to the upstream: its mistake.
            let message = "infergw sidecar: the request target is not a path";
            return Ok(call.fail(
                StatusCode::BAD_REQUEST,
                grpc_status::INVALID_ARGUMENT,
                message,
            ));
        }
    };
    let mut outgoing = Request::new(body.boxed_unsync());
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    *outgoing.extensions_mut() = parts.extensions; // the header names' case, among them
    let backend_start = Instant::now();
    let answered = side.client.request(outgoing).await;
    let response = match answered {
        Ok(response) => response,
        Err(_) if refused.lock().is_ok_and(|r| r.is_some()) => {
            linger(refused.lock().ok().and_then(|mut r| r.take()).flatten()).await;
            let message = side.too_large(None);
            return Ok(call.fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                grpc_status::RESOURCE_EXHAUSTED,
                &message,
            ));
        }
        Err(e) if e.is_connect() => {
            let message = format!("infergw sidecar: upstream {} is unreachable", side.address);
            return Ok(call.fail(
                StatusCode::SERVICE_UNAVAILABLE,
                grpc_status::UNAVAILABLE,
                &message,
            ));
        }
        Err(_) => return Ok(call.closed()),
    };
    let (mut parts, incoming) = response.into_parts();
    forward_headers(&mut parts.headers);
    let status = parts.status.as_u16();
    // No body at all (HEAD, 204, 304): answered at once, as a read-whole one is; else
    // hyper need not poll a streamed body, and its call would count as abandoned.
    let at_once = incoming.is_end_stream()
        || content_length(&parts.headers).is_some_and(|n| n <= BUFFER_RESPONSES_UP_TO);
    if !at_once {
        let backend = backend_start.elapsed();
        call.timing(&mut parts.headers, backend, "headers");
        let streamed = Streamed {
            inner: incoming,
            call,
            status,
            backend: (backend_start, backend),
        };
        return Ok(Response::from_parts(parts, streamed.boxed_unsync()));
    }
    let whole = match incoming.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(call.closed()),
    };
    let backend = backend_start.elapsed();
    call.timing(&mut parts.headers, backend, "");
    call.record(status, Some((backend_start, backend)), grpc_status::OK);
    Ok(Response::from_parts(parts, full(whole)))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| -> BoxError { match never {} })
        .boxed_unsync()
}

/// One call's bookkeeping: its `Server-Timing`, its counters and its span record, kept
/// once (a call dropped before its end, i.e. the client gone, counts `CLIENT_CLOSED`).
struct Call {
    side: Arc<HttpSidecar>,
    /// `HTTP {method}`, the counters' method.
    method: String,
    /// `{method} {path}`: what the span record carries (Python names the span from it).
    span_name: String,
    inference: Option<(String, &'static str)>,
    start: Instant,
    /// A traced call's ids and start in unix time.
    trace: Option<(Ids, Duration)>,
    done: bool,
}

impl Call {
    /// `backend` and `total` after the upstream's own entries (both with `desc`).
    fn timing(&self, headers: &mut HeaderMap, backend: Duration, desc: &str) {
        let mut entries = Entries::default();
        entries.add("backend", backend, desc);
        entries.add("total", self.start.elapsed(), desc);
        if let Ok(value) = HeaderValue::from_str(&entries.finish()) {
            headers.append(timing::TRAILER, value);
        }
    }

    /// An answer of the sidecar's own: `{"error": message}` with `total`.
    fn fail(&mut self, status: StatusCode, code: u8, message: &str) -> Response<Body> {
        let body = serde_json::json!({ "error": message }).to_string();
        let mut entries = Entries::default();
        entries.add("total", self.start.elapsed(), "");
        self.record(status.as_u16(), None, code);
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(value) = HeaderValue::from_str(&entries.finish()) {
            headers.insert(timing::TRAILER, value);
        }
        response
    }

    /// The upstream dropped the connection before its answer was whole (counted, as in
    /// Python, with `total` only).
    fn closed(&mut self) -> Response<Body> {
        let message = format!(
            "infergw sidecar: upstream {} closed the connection",
            self.side.address
        );
        self.fail(StatusCode::BAD_GATEWAY, grpc_status::UNAVAILABLE, &message)
    }

    /// Counts the call and leaves its span record; `code`: the gRPC code its spans get
    /// (OK unless the sidecar answered itself).
    fn record(&mut self, status: u16, backend: Option<(Instant, Duration)>, code: u8) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let total = self.start.elapsed();
        let backend_dur = backend.map(|(_, d)| d);
        let model = self.inference.as_ref().map(|(m, _)| m.as_str());
        if let Some((ids, unix_start)) = self.trace {
            let upstream = backend.map(|(at, took)| {
                let offset = at.saturating_duration_since(self.start);
                (offset, offset + took)
            });
            let (name, model) = (self.span_name.as_str(), model.unwrap_or(""));
            let record = SpanRecord::sidecar(ids, unix_start, name, model, upstream, total, code);
            self.side.tracer.push(record);
        }
        self.side.stats.record(&Outcome {
            method: &self.method,
            status,
            ok: status < 400,
            inference: self.inference.as_ref().map(|(m, p)| (*p, Some(m.as_str()))),
            phases: [None, backend_dur, Some(total)],
        });
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.record(CLIENT_CLOSED, None, grpc_status::CANCELLED);
    }
}

/// The client's body on its way upstream, counted against the limit; past it, it fails
/// (the upstream request is abandoned) and leaves the rest of the body in `refused`
/// (`Some(None)` if the client had sent it all), for `linger`.
struct Limited {
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    refused: Arc<Mutex<Option<Option<Incoming>>>>,
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            this.seen = this.seen.saturating_add(data.len() as u64);
            if this.seen > this.limit {
                let rest = this.inner.take().filter(|b| !b.is_end_stream());
                if let Ok(mut refused) = this.refused.lock() {
                    *refused = Some(rest);
                }
                return Poll::Ready(Some(Err("request body over the limit".into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// Reads what is left of a refused body and drops it, for at most `LINGER`.
async fn linger(body: Option<Incoming>) {
    let Some(mut body) = body else {
        return;
    };
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// A response streamed through; the call is counted when it ends (or is dropped: the
/// client went away). An upstream breaking off fails the body, and hyper closes the
/// client's connection.
struct Streamed {
    inner: Incoming,
    call: Call,
    status: u16,
    backend: (Instant, Duration),
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match polled {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => {
                // What the Python proxy counts too: the status the client already got.
                this.call
                    .record(this.status, Some(this.backend), grpc_status::UNAVAILABLE);
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.call
                    .record(this.status, Some(this.backend), grpc_status::OK);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_paths_are_the_python_proxys() {
        let cases = [
            ("/v2/models/identity/infer", Some(("identity", "rest"))),
            (
                "/v2/models/identity/versions/3/infer",
                Some(("identity", "rest")),
            ),
            ("/v2/models/a%20b/infer", Some(("a b", "rest"))),
            ("/v2/models/identity/ready", None),
            ("/v2/models//infer", None),
            ("/v2/models/identity/versions//infer", None),
            ("/v2/models/identity/other/3/infer", None),
            ("/v2/models/identity/versions/3/x/infer", None),
            ("/v1/models/half:predict", Some(("half", "tfserving-rest"))),
            (
                "/v1/models/half/versions/2:classify",
                Some(("half", "tfserving-rest")),
            ),
            (
                "/v1/models/half/labels/stable:regress",
                Some(("half", "tfserving-rest")),
            ),
            ("/v1/models/half/versions/x:predict", None),
            ("/v1/models/half/other/2:predict", None),
            ("/v1/models/half:explain", None),
            ("/v1/models/half", None),
            ("/v1/models/:predict", None),
            ("/metrics", None),
        ];
        for (path, want) in cases {
            let got = inference_of(path);
            assert_eq!(got.as_ref().map(|(m, p)| (m.as_str(), *p)), want, "{path}");
        }
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decoded("a%2Fb"), "a/b");
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%4"), "%zz%4");
        assert_eq!(percent_decoded("%C3%A9"), "é");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for name in HOP_BY_HOP {
            h.insert(name, HeaderValue::from_static("x"));
        }
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert(
            "inference-header-content-length",
            HeaderValue::from_static("12"),
        );
        h.insert("content-length", HeaderValue::from_static("40"));
        forward_headers(&mut h);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "content-length",
                "content-type",
                "inference-header-content-length"
            ]
        );
    }

    #[test]
    fn the_limit_message_is_the_python_ones() {
        let side = HttpSidecar::new(
            &SidecarConfig {
                upstream: "127.0.0.1:1".into(),
                max_message_bytes: 100,
                protocol: crate::config::SidecarProtocol::Http,
            },
            Arc::new(Tracer::new(false, 1)),
        );
        assert_eq!(
            side.too_large(Some(101)),
            "request body of 101 bytes exceeds the limit of 100 bytes"
        );
        assert_eq!(
            side.too_large(None),
            "request body exceeds the limit of 100 bytes"
        );
    }
}
