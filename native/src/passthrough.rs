//! The sidecar on the plane (`infergw sidecar` with the native data plane): every RPC to
//! the one upstream (h2c), forwarded as bytes, frame by frame, whatever its cardinality;
//! `grpc.health.v1.Health` answered by the plane itself (`health.rs`).
//!
//! What passes, as in the Python sidecar (`gateway/sidecar/grpc_proxy.py`): the client's
//! metadata minus connection-specific headers, the deadline (`grpc-timeout`, what
//! remains), a client's cancel (dropping the upstream stream resets it), the upstream's
//! headers, messages, status and trailers unchanged. What it adds: a `server-timing`
//! trailer after the upstream's (`decode` = reading the model name of an inference call's
//! first message, `backend` = the upstream call, `total`), and errors of its own: the
//! upstream unreachable or lost -> UNAVAILABLE naming it; a message whose 5-byte prefix
//! declares more than `max_message_bytes` -> RESOURCE_EXHAUSTED naming the limit (checked
//! as the prefixes pass, nothing buffered; the upstream stream is reset).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::SidecarConfig;
use crate::deadline;
use crate::grpc_frame::{field_str, Framing};
use crate::grpc_status::{self, Status};
use crate::health::{self, Health};
use crate::sidecar_stats::{Counted, Outcome, SidecarStats};
use crate::timing::{self, Entries};
use crate::trace::{self, Ids, SpanRecord, Tracer};
use crate::upstream::{Body, BoxError, Reply, SendError, Upstream};

/// Connection-specific headers (RFC 9113 8.2.2) and `host` are never forwarded, and
/// `grpc-timeout` is replaced by what remains of the deadline. The Python sidecar's
/// `HOP_BY_HOP` also drops `content-type`, `te`, `user-agent` and `grpc-(accept-)encoding`
/// because grpcio re-frames every message and sets its own; here the bytes go through as
/// sent (compressed ones included), so those framing headers go through with them.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    deadline::HEADER,
];

/// Inference methods: where the model name is (field path of the first message) and the
/// `protocol` label of their metrics (`methods.INFERENCE` in Python).
pub fn inference(method: &str) -> Option<(&'static str, &'static [u64])> {
    Some(match method {
        "/inference.GRPCInferenceService/ModelInfer" => ("grpc", &[1]),
        "/inference.GRPCInferenceService/ModelStreamInfer" => ("grpc-stream", &[1]),
        "/tensorflow.serving.PredictionService/Predict"
        | "/tensorflow.serving.PredictionService/Classify"
        | "/tensorflow.serving.PredictionService/Regress" => ("grpc", &[1, 1]),
        "/tensorflow.serving.PredictionService/MultiInference" => ("grpc", &[1, 1, 1]),
        _ => return None,
    })
}

/// The client's headers as sent upstream: hop-by-hop ones removed, `te` only as
/// `trailers` (the one value HTTP/2 allows).
pub fn forward_headers(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        headers.remove(http::header::TE);
    }
}

pub struct Sidecar {
    pub upstream: Upstream,
    pub max_message_bytes: u64,
    pub health: Arc<Health>,
    pub stats: SidecarStats,
    /// Traced calls' span records (`trace.rs`): the Python sidecar's SERVER span named
    /// after the method and its CLIENT span `backend upstream`.
    pub tracer: Arc<Tracer>,
}

impl Counted for Sidecar {
    fn upstream(&self) -> &str {
        &self.upstream.address
    }

    fn stats(&self) -> &SidecarStats {
        &self.stats
    }
}

impl Sidecar {
    pub fn new(config: &SidecarConfig, health: Arc<Health>, tracer: Arc<Tracer>) -> Sidecar {
        Sidecar {
            upstream: Upstream::new(&config.upstream),
            max_message_bytes: config.max_message_bytes,
            health,
            stats: SidecarStats::default(),
            tracer,
        }
    }

    fn too_large(&self, declared: u64) -> Status {
        Status::new(
            grpc_status::RESOURCE_EXHAUSTED,
            format!(
                "request message of {declared} bytes exceeds the limit of {} bytes",
                self.max_message_bytes
            ),
        )
    }
}

/// The hyper service of a sidecar plane: never fails, every error is a gRPC status.
pub async fn handle(
    side: Arc<Sidecar>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let path = request.uri().path();
    if path == health::CHECK || path == health::WATCH {
        let path = path.to_owned();
        return Ok(side.health.answer(&path, request.into_body()).await);
    }
    Ok(forward(side, request, start).await)
}

async fn forward(side: Arc<Sidecar>, request: Request<Incoming>, start: Instant) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let method = parts.uri.path().to_owned();
    let kind = inference(&method);
    let deadline = parts
        .headers
        .get(deadline::HEADER)
        .and_then(|v| deadline::parse(v.as_bytes()))
        .and_then(|t| start.checked_add(t));
    let call = Arc::new(CallState::default());
    let mut rpc = Rpc {
        side: side.clone(),
        method,
        protocol: kind.map(|k| k.0),
        call: call.clone(),
        start,
        backend_start: None,
        trace: None,
        done: false,
    };
    let mut headers = parts.headers;
    forward_headers(&mut headers);
    // Traced (an SDK is on in Python): the upstream gets the CLIENT span's traceparent.
    rpc.trace = side
        .tracer
        .begin(&mut headers)
        .map(|ids| (ids, trace::unix_now()));
    let body = Checked {
        inner: body,
        framing: Framing::default(),
        limit: side.max_message_bytes,
        model_path: kind.map(|k| k.1),
        call,
    };
    let upstream = &side.upstream;
    let backend_start = Instant::now();
    rpc.backend_start = Some(backend_start);
    if let Some(deadline) = deadline {
        let remaining = deadline.saturating_duration_since(backend_start);
        if remaining.is_zero() {
            let status = Status::new(
                grpc_status::DEADLINE_EXCEEDED,
                "deadline exceeded before the upstream call",
            );
            return rpc.fail(status);
        }
        if let Ok(value) = HeaderValue::from_str(&deadline::format(remaining)) {
            headers.insert(deadline::HEADER, value);
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match Uri::builder()
        .scheme("http")
        .authority(upstream.authority.as_str())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            let status = Status::new(grpc_status::INTERNAL, format!("upstream uri: {e}"));
            return rpc.fail(status);
        }
    };
    let mut outgoing = Request::new(body.map_err(Into::into).boxed_unsync());
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    let status = match upstream.send(outgoing, deadline).await {
        Ok(response) => Ok(response),
        Err(SendError::Connect(e)) => {
            let prefix = format!("upstream {} unreachable: ", upstream.address);
            let why = e.strip_prefix(&prefix).unwrap_or(&e);
            let message = format!(
                "infergw sidecar: upstream {} is unreachable: {why}",
                upstream.address
            );
            Err(Status::new(grpc_status::UNAVAILABLE, message))
        }
        Err(SendError::Call(e)) => Err(rpc.lost(&e)),
    };
    let response = match status {
        Ok(response) => response,
        Err(status) => return rpc.fail(status),
    };
    let (mut parts, incoming) = response.into_parts();
    if grpc_status::code_of(&parts.headers).is_some() || incoming.is_end_stream() {
        // Trailers-only (an error from the upstream): its headers are its trailers.
        rpc.finish(&mut parts.headers);
        return Response::from_parts(parts, empty());
    }
    let relay = Relay {
        inner: incoming,
        rpc,
    };
    Response::from_parts(parts, relay.boxed_unsync())
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never: Infallible| -> BoxError { match never {} })
        .boxed_unsync()
}

/// What the request side learns for the response side: the model name and how long
/// reading it took, and the declared size of a message over the limit.
#[derive(Default)]
struct CallState {
    model: OnceLock<String>,
    decode: OnceLock<Duration>,
    too_large: OnceLock<u64>,
}

/// One call's bookkeeping: its `server-timing` and its counters, recorded once (a call
/// dropped before its end, i.e. the client gone, counts CANCELLED).
struct Rpc {
    side: Arc<Sidecar>,
    method: String,
    protocol: Option<&'static str>,
    call: Arc<CallState>,
    start: Instant,
    backend_start: Option<Instant>,
    /// A traced call's ids and start in unix time.
    trace: Option<(Ids, Duration)>,
    done: bool,
}

impl Rpc {
    /// What the client gets for an upstream error: RESOURCE_EXHAUSTED if it came from the
    /// request side refusing a message over the limit, else UNAVAILABLE naming the upstream.
    fn lost(&self, error: &dyn std::fmt::Display) -> Status {
        match self.call.too_large.get() {
            Some(&declared) => self.side.too_large(declared),
            None => Status::new(
                grpc_status::UNAVAILABLE,
                format!(
                    "infergw sidecar: upstream {}: {error}",
                    self.side.upstream.address
                ),
            ),
        }
    }

    /// Records the call and appends `server-timing` to `trailers` (whose status it reads).
    fn finish(&mut self, trailers: &mut HeaderMap) {
        let code = grpc_status::code_of(trailers).unwrap_or(grpc_status::UNKNOWN);
        if let Some(value) = self.record(code) {
            trailers.append(timing::TRAILER, value);
        }
    }

    /// A trailers-only answer of the sidecar's own.
    fn fail(&mut self, status: Status) -> Response<Body> {
        let timing = self.record(status.code);
        let timing = timing.and_then(|t| t.to_str().ok().map(str::to_owned));
        status.response(empty(), timing)
    }

    fn record(&mut self, code: u8) -> Option<HeaderValue> {
        self.done = true;
        let now = Instant::now();
        let decode = self.call.decode.get().copied();
        // A message refused for its size never had an upstream call of its own.
        let backend = match self.call.too_large.get() {
            Some(_) => None,
            None => self.backend_start.map(|t| now - t),
        };
        let total = now - self.start;
        let mut entries = Entries::default();
        for (name, dur) in [
            ("decode", decode),
            ("backend", backend),
            ("total", Some(total)),
        ] {
            if let Some(dur) = dur {
                entries.add(name, dur, "");
            }
        }
        let model = self.call.model.get().map(String::as_str);
        if let Some((ids, unix_start)) = self.trace {
            let upstream = backend.map(|b| (total - b, total)); // it ran until now
            let (method, model) = (self.method.as_str(), model.unwrap_or(""));
            let record = SpanRecord::sidecar(ids, unix_start, method, model, upstream, total, code);
            self.side.tracer.push(record);
        }
        self.side.stats.record(&Outcome {
            method: &self.method,
            status: code.into(),
            ok: code == grpc_status::OK,
            inference: self.protocol.map(|p| (p, model)),
            phases: [decode, backend, Some(total)],
        });
        HeaderValue::from_str(&entries.finish()).ok()
    }
}

impl Drop for Rpc {
    fn drop(&mut self) {
        if !self.done {
            self.record(grpc_status::CANCELLED);
        }
    }
}

/// The client's request body on its way upstream: each message's prefix checked against
/// the limit, the first message's model name read (inference methods). Over the limit,
/// it fails, which resets the upstream stream; the response side then answers
/// RESOURCE_EXHAUSTED.
struct Checked {
    inner: Incoming,
    framing: Framing,
    limit: u64,
    model_path: Option<&'static [u64]>,
    call: Arc<CallState>,
}

impl http_body::Body for Checked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let (call, path) = (&this.call, this.model_path);
            let first = this.framing.messages == 0;
            let checked = this.framing.feed(data, this.limit, |prefix| {
                let Some(path) = path.filter(|_| first && !prefix.compressed) else {
                    return;
                };
                let t0 = Instant::now();
                let end = prefix.offset.saturating_add(prefix.declared as usize);
                let message = &data[prefix.offset..end.min(data.len())];
                if let Some(model) = field_str(message, path) {
                    let _ = call.model.set(model.to_owned());
                }
                let _ = call.decode.set(t0.elapsed());
            });
            if let Err(declared) = checked {
                let _ = this.call.too_large.set(declared);
                return Poll::Ready(Some(Err("request message over the limit".into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's response body, passed through; its trailers get `server-timing`. If
/// the upstream breaks off (or the request side refused a message), the client gets
/// trailers with the sidecar's status instead of a reset stream.
struct Relay {
    inner: Reply,
    rpc: Rpc,
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.rpc.done {
            return Poll::Ready(None);
        }
        let mut trailers = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(trailers) => trailers,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => status_trailers(&this.rpc.lost(&e)),
            None => HeaderMap::new(), // ended without trailers (not gRPC): ours only
        };
        this.rpc.finish(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.rpc.done
    }
}

fn status_trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(u16::from(status.code)));
    if let Ok(message) = HeaderValue::from_str(&grpc_status::percent_encode(&status.message)) {
        trailers.insert("grpc-message", message);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "grpc-python/1.0"),
            ("grpc-encoding", "gzip"),
            ("grpc-accept-encoding", "identity,gzip"),
            ("grpc-timeout", "5S"),
            ("connection", "close"),
            ("keep-alive", "1"),
            ("proxy-connection", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "me"),
            ("x-custom", "value"),
            ("x-thing-bin", "AQI="),
            ("traceparent", "00-aa-bb-01"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        forward_headers(&mut h);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            vec![
                "content-type",
                "grpc-accept-encoding",
                "grpc-encoding",
                "te",
                "traceparent",
                "user-agent",
                "x-custom",
                "x-thing-bin"
            ]
        );
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        forward_headers(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn inference_methods() {
        assert_eq!(
            inference("/inference.GRPCInferenceService/ModelInfer"),
            Some(("grpc", &[1][..]))
        );
        assert_eq!(
            inference("/inference.GRPCInferenceService/ModelStreamInfer").map(|k| k.0),
            Some("grpc-stream")
        );
        assert_eq!(
            inference("/tensorflow.serving.PredictionService/MultiInference").map(|k| k.1),
            Some(&[1, 1, 1][..])
        );
        assert_eq!(
            inference("/inference.GRPCInferenceService/ServerLive"),
            None
        );
    }

    #[test]
    fn errors_name_the_limit() {
        let side = Sidecar::new(
            &SidecarConfig {
                upstream: "127.0.0.1:1".into(),
                max_message_bytes: 100,
                protocol: crate::config::SidecarProtocol::Grpc,
            },
            Arc::default(),
            Arc::new(Tracer::new(false, 1)),
        );
        let status = side.too_large(101);
        assert_eq!(status.code, grpc_status::RESOURCE_EXHAUSTED);
        assert_eq!(
            status.message,
            "request message of 101 bytes exceeds the limit of 100 bytes"
        );
        let t = status_trailers(&status);
        assert_eq!(t["grpc-status"], "8");
        assert_eq!(grpc_status::code_of(&t), Some(8));
    }
}
