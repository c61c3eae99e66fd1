//! One request through the plane: `ModelInfer` for a model with a native route is admitted,
//! forwarded as bytes to its backend and answered with a `server-timing` trailer; every
//! other request is forwarded as bytes to the python lane, its answer passed through.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::admission::{Admission, Slot};
use crate::config::{millis, Config};
use crate::deadline;
use crate::grpc_status::{self, Status};
use crate::scan::{self, Scan};
use crate::stats::{LaneStats, ModelStats, Phases};
use crate::timing;
use crate::trace::{self, Ids, SpanRecord, Tracer};
use crate::upstream::{Body, BoxError, Upstream};
use crate::validate::{self, Refusal};

pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// A client's pin to a backend by name (`allow_backend_pinning`): the Python gateway's
/// rule, so such a request goes to the lane.
pub const PIN_HEADER: &str = "x-infergw-backend";
/// Bytes read at most to find the model name; past it the request goes to the python lane.
const SCAN_LIMIT: usize = 16 << 20;

/// A native backend: its upstream, admission and counters.
pub struct Backend {
    pub name: Arc<str>,
    pub upstream: Upstream,
    pub admission: Admission,
    pub timeout: Option<Duration>,
    pub stats: LaneStats,
    desc_total: String,
    desc_backend: String,
}

/// A natively routed model: its backend and the gateway's metrics of its requests.
pub struct Route {
    pub model: Arc<str>,
    pub backend: Arc<Backend>,
    pub stats: ModelStats,
}

impl Route {
    /// Counts a request that ended with `code` in its backend's and its model's counters.
    fn record(&self, code: u8, phases: &Phases) {
        let lane = &self.backend.stats;
        lane.count(code);
        lane.total.observe(phases.total);
        if let Some(backend) = phases.backend {
            lane.backend.observe(backend);
        }
        self.stats.record(code, phases);
    }

    fn trailer(&self, phases: &Phases, code: u8) -> Option<HeaderValue> {
        let backend = &self.backend;
        let ok = code == grpc_status::OK;
        HeaderValue::from_str(&phases.trailer(&backend.desc_total, &backend.desc_backend, ok)).ok()
    }
}

impl Backend {
    /// The gateway's words for a backend it cannot reach (`wire/status.error_from_rpc`).
    fn unavailable(&self, why: &str) -> String {
        format!(
            "backend {} is unavailable: {why}",
            validate::py_repr(&self.name)
        )
    }
}

pub struct Lane {
    pub upstream: Upstream,
    pub stats: LaneStats,
}

/// What every request handler shares (read-only but for atomics and connections).
pub struct Shared {
    pub backends: Vec<Arc<Backend>>,
    pub routes: HashMap<String, Arc<Route>>,
    pub lane: Option<Arc<Lane>>,
    /// The gateway's `limits.max_message_bytes`: a larger request message is refused.
    max_message_bytes: usize,
    pub tracer: Arc<Tracer>,
}

impl Shared {
    pub fn new(config: &Config) -> Shared {
        let mut index = HashMap::new();
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, (name, b))| {
                index.insert(name.clone(), i);
                Arc::new(Backend {
                    name: name.as_str().into(),
                    upstream: Upstream::new(&b.address),
                    admission: Admission::new(
                        name,
                        b.max_concurrency,
                        b.max_queue,
                        millis(b.queue_timeout_ms),
                    ),
                    timeout: b.timeout_ms.map(millis),
                    stats: LaneStats::default(),
                    desc_total: format!("backend={name}"),
                    desc_backend: format!("backend={name};attempt=1"),
                })
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|(model, backend)| {
                let route = Route {
                    model: model.as_str().into(),
                    backend: Arc::clone(&backends[index[backend]]),
                    stats: ModelStats::default(),
                };
                (model.clone(), Arc::new(route))
            })
            .collect();
        let lane = config.python_lane.as_deref().map(|address| {
            Arc::new(Lane {
                upstream: Upstream::new(address),
                stats: LaneStats::default(),
            })
        });
        Shared {
            backends,
            routes,
            lane,
            max_message_bytes: config.max_message_bytes,
            tracer: Arc::new(Tracer::new(config.trace_all, config.max_span_records)),
        }
    }
}

fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never: Infallible| -> BoxError { match never {} })
        .boxed_unsync()
}

/// The hyper service: never fails, every error is a gRPC status.
pub async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    if is_native_candidate(request.uri().path(), request.headers(), &shared) {
        return Ok(infer(shared, request, start).await);
    }
    let (parts, body) = request.into_parts();
    Ok(to_lane(&shared, Request::from_parts(parts, boxed(body)), start).await)
}

/// A ModelInfer call the plane may serve itself: it has routes, and the client did not pin
/// a backend (pins are the lane's to honour).
fn is_native_candidate(path: &str, headers: &HeaderMap, shared: &Shared) -> bool {
    path == MODEL_INFER && !shared.routes.is_empty() && !headers.contains_key(PIN_HEADER)
}

fn client_deadline(headers: &HeaderMap, start: Instant) -> Option<Instant> {
    let timeout = deadline::parse(headers.get(deadline::HEADER)?.as_bytes())?;
    start.checked_add(timeout)
}

/// Reads the body until the model name is known (or cannot be): the chunks read, whether
/// the body ended, what the scan said, and the time scanning took (not the waits).
async fn read_prefix(body: &mut Incoming) -> Result<(Prefixed, Scan, Duration), hyper::Error> {
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut joined = BytesMut::new();
    let mut trailers = None;
    let mut ended = false;
    let mut scanning = Duration::ZERO;
    let scan = loop {
        let seen: &[u8] = match chunks.len() {
            0 => &[],
            1 => &chunks[0],
            _ => &joined,
        };
        let scan_start = Instant::now();
        let scan = if ended {
            match scan::model_name(seen) {
                Scan::NeedMore => Scan::Unscannable("body ended inside the message"),
                other => other,
            }
        } else {
            scan::model_name(seen)
        };
        scanning += scan_start.elapsed();
        if scan != Scan::NeedMore {
            break scan;
        }
        if seen.len() > SCAN_LIMIT {
            break Scan::Unscannable("model_name not within the scan limit");
        }
        match body.frame().await {
            None => ended = true,
            Some(frame) => match frame?.into_data() {
                Ok(data) => {
                    if !chunks.is_empty() {
                        if joined.is_empty() {
                            joined.extend_from_slice(&chunks[0]);
                        }
                        joined.extend_from_slice(&data);
                    }
                    chunks.push_back(data);
                }
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                }
            },
        }
    };
    Ok((
        Prefixed {
            chunks,
            trailers,
            rest: None,
            ended,
        },
        scan,
        scanning,
    ))
}

async fn infer(shared: Arc<Shared>, request: Request<Incoming>, start: Instant) -> Response<Body> {
    let (parts, mut body) = request.into_parts();
    let (mut prefix, scan, scanning) = match read_prefix(&mut body).await {
        Ok(read) => read,
        Err(e) => {
            return Status::new(grpc_status::CANCELLED, format!("request body: {e}"))
                .response(empty(), None)
        }
    };
    if !prefix.ended {
        prefix.rest = Some(body);
    }
    let route = match &scan {
        Scan::Found(model) => shared.routes.get(model.as_str()).cloned(),
        _ => None,
    };
    let Some(route) = route else {
        if shared.lane.is_none() {
            if let Scan::Unscannable(why) = scan {
                return Status::new(
                    grpc_status::INVALID_ARGUMENT,
                    format!("cannot read model_name from the request: {why}"),
                )
                .response(empty(), None);
            }
        }
        return to_lane(&shared, Request::from_parts(parts, boxed(prefix)), start).await;
    };
    native(&shared, &route, parts, prefix, start, scanning).await
}

async fn native(
    shared: &Shared,
    route: &Arc<Route>,
    mut parts: http::request::Parts,
    mut prefix: Prefixed,
    start: Instant,
    scanning: Duration,
) -> Response<Body> {
    let backend = &route.backend;
    let max_message_bytes = shared.max_message_bytes;
    let client_deadline = client_deadline(&parts.headers, start);
    let trace = shared.tracer.begin(&mut parts.headers).map(|ids| Traced {
        ids,
        unix_start: trace::unix_now(),
        tracer: shared.tracer.clone(),
    });
    let call = Arc::new(Call::new(route.clone(), start, trace));
    call.add(scanning);
    // Until the response body takes over the counting: a client gone while queued or
    // waiting for the backend's headers counts CANCELLED.
    let pending = Pending {
        call: &call,
        armed: AtomicBool::new(true),
    };
    let fail = |status: Status, queue: Option<Duration>| {
        pending.armed.store(false, Ordering::Relaxed);
        let phases = Phases {
            decode: call.decode(),
            queue,
            backend: None,
            total: start.elapsed(),
        };
        call.end(status.code, &phases);
        let mut response = status.response(empty(), None);
        if let Some(value) = route.trailer(&phases, status.code) {
            response.headers_mut().append(timing::TRAILER, value);
        }
        response
    };
    // The message's size from its gRPC prefix, then the gateway's checks: at once when
    // the whole message is here (a tiny request, before admission), else as it streams
    // to the backend (the last chunk goes on only once the message passed).
    let declared = prefix.declared_len();
    if declared > max_message_bytes {
        let message = format!(
            "request message of {declared} bytes exceeds the limit of {max_message_bytes} bytes"
        );
        return fail(Status::new(grpc_status::RESOURCE_EXHAUSTED, message), None);
    }
    let body = if prefix.buffered_len() >= scan::PREFIX_LEN + declared {
        let check_start = Instant::now();
        let verdict = validate::check(prefix.chunks.make_contiguous(), scan::PREFIX_LEN, declared);
        call.add(check_start.elapsed());
        if let Err(refusal) = verdict {
            return fail(invalid(&refusal), None);
        }
        boxed(prefix)
    } else {
        boxed(Checking::new(prefix, declared, call.clone()))
    };
    let slot = match backend.admission.acquire(client_deadline).await {
        Ok(slot) => slot,
        Err(status) => return fail(status, Some(start.elapsed())),
    };
    let backend_start = Instant::now();
    let queue = backend_start - start;
    backend.stats.queue.observe(queue);
    let attempt_deadline = backend.timeout.and_then(|t| backend_start.checked_add(t));
    let deadline = match (client_deadline, attempt_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut headers = parts.headers;
    if let Some(deadline) = deadline {
        let remaining = deadline.saturating_duration_since(backend_start);
        if remaining.is_zero() {
            let status = Status::new(
                grpc_status::DEADLINE_EXCEEDED,
                "deadline exceeded before the backend call",
            );
            return fail(status, Some(queue));
        }
        if let Ok(value) = HeaderValue::from_str(&deadline::format(remaining)) {
            headers.insert(deadline::HEADER, value);
        }
    }
    let upstream = &backend.upstream;
    let request = match outgoing(&parts.method, &parts.uri, headers, upstream, body) {
        Ok(request) => request,
        Err(status) => return fail(status, Some(queue)),
    };
    let sent = async {
        let mut sender = upstream.sender(deadline).await?;
        sender
            .ready()
            .await
            .map_err(|e| format!("upstream {}: {e}", upstream.address))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("upstream {}: {e}", upstream.address))
    };
    // No timer of our own here (one per request cost a wake-up of the runtime's driver,
    // an eventfd write and an extra epoll_wait): the backend enforces the `grpc-timeout`
    // passed on above and answers DEADLINE_EXCEEDED itself, as gRPC servers do, and the
    // client gives up at its deadline, which resets the stream and so the backend call.
    let response = match sent.await {
        Ok(response) => response,
        Err(message) => {
            // A refused streamed message: its body stopped the upstream call.
            let status = match call.refusal.get() {
                Some(refusal) => invalid(refusal),
                None => Status::new(grpc_status::UNAVAILABLE, backend.unavailable(&message)),
            };
            return fail(status, Some(queue));
        }
    };
    let mut timed = Timed {
        inner: None,
        start,
        backend_start,
        queue,
        owner: Owner::Route(call.clone()),
        slot: Some(slot),
        done: false,
    };
    let (mut parts, incoming) = response.into_parts();
    if grpc_status::code_of(&parts.headers).is_some() || incoming.is_end_stream() {
        // Trailers-only (an error from the backend): its headers are its trailers.
        pending.armed.store(false, Ordering::Relaxed);
        timed.finish(&mut parts.headers);
        return Response::from_parts(parts, empty());
    }
    pending.armed.store(false, Ordering::Relaxed);
    timed.inner = Some(incoming);
    Response::from_parts(parts, boxed(timed))
}

/// The request to send upstream: the client's, with an absolute URI for the upstream.
fn outgoing(
    method: &http::Method,
    uri: &Uri,
    headers: HeaderMap,
    upstream: &Upstream,
    body: Body,
) -> Result<Request<Body>, Status> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme("http")
        .authority(upstream.authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|e| Status::new(grpc_status::INTERNAL, format!("upstream uri: {e}")))?;
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request.headers_mut().remove(http::header::HOST);
    Ok(request)
}

async fn to_lane(shared: &Shared, request: Request<Body>, start: Instant) -> Response<Body> {
    let Some(lane) = &shared.lane else {
        let status = Status::new(
            12,
            format!(
                "{}: not served natively and no python lane",
                request.uri().path()
            ),
        );
        return status.response(empty(), None);
    };
    let fail = |status: Status| {
        lane.stats.count(status.code);
        lane.stats.total.observe(start.elapsed());
        status.response(empty(), None)
    };
    let deadline = client_deadline(request.headers(), start);
    let (parts, body) = request.into_parts();
    let request = match outgoing(
        &parts.method,
        &parts.uri,
        parts.headers,
        &lane.upstream,
        body,
    ) {
        Ok(request) => request,
        Err(status) => return fail(status),
    };
    let sent = async {
        let mut sender = lane.upstream.sender(deadline).await?;
        sender
            .ready()
            .await
            .map_err(|e| format!("python lane: {e}"))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| format!("python lane: {e}"))
    };
    let response = match sent.await {
        Ok(response) => response,
        Err(message) => return fail(Status::new(grpc_status::UNAVAILABLE, message)),
    };
    let (parts, incoming) = response.into_parts();
    if let Some(code) = grpc_status::code_of(&parts.headers) {
        lane.stats.count(code);
        lane.stats.total.observe(start.elapsed());
        return Response::from_parts(parts, empty());
    }
    let timed = Timed {
        inner: Some(incoming),
        start,
        backend_start: start,
        queue: Duration::ZERO,
        owner: Owner::Lane(lane.clone()),
        slot: None,
        done: false,
    };
    Response::from_parts(parts, boxed(timed))
}

/// The request body sent upstream: the chunks read to find the model name, then the rest
/// of the client's body as it arrives.
struct Prefixed {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Incoming>,
    ended: bool,
}

impl Prefixed {
    fn buffered_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// The first message's length from its gRPC prefix (the scan found a name, so the
    /// prefix is here).
    fn declared_len(&self) -> usize {
        let mut prefix = [0u8; scan::PREFIX_LEN];
        let bytes = self
            .chunks
            .iter()
            .flat_map(|c| c.iter())
            .take(scan::PREFIX_LEN);
        for (slot, byte) in prefix.iter_mut().zip(bytes) {
            *slot = *byte;
        }
        u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize
    }
}

fn invalid(refusal: &Refusal) -> Status {
    Status::new(grpc_status::INVALID_ARGUMENT, refusal.message())
}

/// One native request, shared by its handler (which answers) and its bodies (one checks
/// a streamed message, one ends the call): its route, what checking it found (the
/// refusal, if any, and the time spent scanning and checking: the `decode` entry), and
/// its trace.
struct Call {
    route: Arc<Route>,
    start: Instant,
    refusal: OnceLock<Refusal>,
    decode_ns: AtomicU64,
    trace: Option<Traced>,
}

/// A traced request's ids, its start in unix time, and where its record goes.
struct Traced {
    ids: Ids,
    unix_start: Duration,
    tracer: Arc<Tracer>,
}

impl Call {
    fn new(route: Arc<Route>, start: Instant, trace: Option<Traced>) -> Call {
        Call {
            route,
            start,
            refusal: OnceLock::new(),
            decode_ns: AtomicU64::new(0),
            trace,
        }
    }

    /// The request ended with `code`: its counters, and its span record when traced.
    fn end(&self, code: u8, phases: &Phases) {
        self.route.record(code, phases);
        let Some(traced) = &self.trace else {
            return;
        };
        let unix = |d: Duration| (traced.unix_start + d).as_nanos() as u64;
        // The backend call starts when the queue ends (`queue` is measured from the start).
        let backend_ns = phases.backend.map(|backend| {
            let queued = phases.queue.unwrap_or(Duration::ZERO);
            (unix(queued), unix(queued + backend))
        });
        traced.tracer.push(SpanRecord {
            ids: traced.ids,
            method: "".into(),
            model: self.route.model.clone(),
            backend: self.route.backend.name.clone(),
            start_ns: unix(Duration::ZERO),
            backend_ns,
            end_ns: unix(phases.total),
            code,
        });
    }

    fn add(&self, d: Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.decode_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn decode(&self) -> Duration {
        Duration::from_nanos(self.decode_ns.load(Ordering::Relaxed))
    }
}

/// A request body call as it streams upstream: every chunk goes on as it arrives but
/// the one completing the message, which goes on only once the whole message passed the
/// gateway's checks. A refused message (or a body ending inside it) ends in an error,
/// which resets the upstream stream: the backend never sees a complete bad message.
struct Checking {
    inner: Prefixed,
    /// The message's chunks so far (shared, not copied).
    seen: Vec<Bytes>,
    buffered: usize,
    declared: usize,
    call: Arc<Call>,
    done: bool,
}

impl Checking {
    fn new(inner: Prefixed, declared: usize, call: Arc<Call>) -> Checking {
        Checking {
            inner,
            seen: Vec::new(),
            buffered: 0,
            declared,
            call,
            done: false,
        }
    }

    fn refuse(&mut self, refusal: Refusal) -> BoxError {
        self.done = true;
        self.seen.clear();
        let error = refusal.message().into();
        let _ = self.call.refusal.set(refusal);
        error
    }
}

impl http_body::Body for Checking {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if this.done {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => {
                let short = Refusal::Malformed("the body ended inside the message");
                return Poll::Ready(Some(Err(this.refuse(short))));
            }
        };
        let Some(data) = frame.data_ref() else {
            let short = Refusal::Malformed("the body ended inside the message");
            return Poll::Ready(Some(Err(this.refuse(short))));
        };
        this.buffered += data.len();
        this.seen.push(data.clone());
        if this.buffered >= scan::PREFIX_LEN + this.declared {
            let check_start = Instant::now();
            let verdict = validate::check(&this.seen, scan::PREFIX_LEN, this.declared);
            this.call.add(check_start.elapsed());
            if let Err(refusal) = verdict {
                return Poll::Ready(Some(Err(this.refuse(refusal))));
            }
            this.done = true;
            this.seen.clear();
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

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(rest) = self.rest.as_mut() {
            let frame = ready!(Pin::new(rest).poll_frame(cx));
            if frame.is_none() {
                self.rest = None;
            }
            return Poll::Ready(frame);
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + buffered);
                }
                out
            }
        }
    }
}

/// Counts a request CANCELLED if its handler is dropped while armed.
struct Pending<'a> {
    call: &'a Call,
    armed: AtomicBool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed.load(Ordering::Relaxed) {
            let phases = Phases {
                decode: self.call.decode(),
                total: self.call.start.elapsed(),
                ..Phases::default()
            };
            self.call.end(grpc_status::CANCELLED, &phases);
        }
    }
}

/// Whose counters a response counts in: a native route (with its request's checks, for
/// the `decode` entry) or the python lane.
enum Owner {
    Route(Arc<Call>),
    Lane(Arc<Lane>),
}

/// The upstream's response body, passed through; at its trailers the request is over:
/// the slot is freed, the counters updated, and for a native route `server-timing` is
/// appended. Dropped before its end (client gone), it counts CANCELLED, and dropping the
/// upstream body resets the upstream stream: the backend sees the cancel.
struct Timed {
    inner: Option<Incoming>,
    start: Instant,
    backend_start: Instant,
    queue: Duration,
    owner: Owner,
    slot: Option<Slot>,
    done: bool,
}

impl Timed {
    fn finish(&mut self, trailers: &mut HeaderMap) {
        self.done = true;
        self.slot = None;
        let code = grpc_status::code_of(trailers).unwrap_or(grpc_status::UNKNOWN);
        if let Some((route, phases)) = self.record(code) {
            if let Some(value) = route.trailer(&phases, code) {
                trailers.append(timing::TRAILER, value);
            }
        }
    }

    /// Counts the request's end with `code`; for a native route, its route and phases.
    fn record(&self, code: u8) -> Option<(&Route, Phases)> {
        let now = Instant::now();
        let total = now - self.start;
        match &self.owner {
            Owner::Lane(lane) => {
                lane.stats.count(code);
                lane.stats.total.observe(total);
                None
            }
            Owner::Route(call) => {
                let phases = Phases {
                    decode: call.decode(),
                    queue: Some(self.queue),
                    backend: Some(now - self.backend_start),
                    total,
                };
                call.end(code, &phases);
                Some((&call.route, phases))
            }
        }
    }
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    this.finish(&mut trailers);
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(e)) => {
                // The upstream broke mid-response: the client gets the stream reset.
                this.done = true;
                this.slot = None;
                this.record(grpc_status::UNAVAILABLE);
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                // Ended without trailers (not gRPC): close it with ours.
                let mut trailers = HeaderMap::new();
                this.finish(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        if !self.done && self.inner.is_some() {
            self.record(grpc_status::CANCELLED);
        }
    }
}
