//! One request through the plane: `ModelInfer` for a model with a native route is admitted,
//! forwarded as bytes to its backend and answered with a `server-timing` trailer; every
//! other request is forwarded as bytes to the python lane, its answer passed through.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::admission::{Admission, Slot};
use crate::api_keys::{self, ApiKeys};
use crate::config::{millis, Config, OverflowConfig, PolicyConfig, RouteConfig};
use crate::credential::{Credential, Credentials};
use crate::deadline;
use crate::grpc_status::{self, Status};
use crate::observed::{Observations, Observed};
use crate::policy::{self, LatencyWindow, Reason, Spill, Uniform};
use crate::scan::{self, Scan};
use crate::stats::{LaneStats, ModelStats, Phases, Reported};
use crate::timing::{self, Entries};
use crate::trace::{self, Ids, SpanRecord, Tracer};
use crate::upstream::{Body, BoxError, Reply, SendError, Upstream};
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
    /// Service times of its successful calls: spill-over's queue-wait estimate.
    pub service_times: LatencyWindow,
    /// A serverless backend's answers, for the warm-state estimator (else None).
    pub observed: Option<Observations>,
    /// The call credential every call carries (Cloud Run's ID token), else None.
    credential: Option<Arc<Credential>>,
    desc_total: String,
    desc_backend: String,
}

/// How a route picks among its members (`Route::members`).
pub enum Policy {
    /// One backend: no decision to count.
    Single,
    /// Weights of the members, in the config's order.
    Weighted { weights: Vec<u32>, uniform: Uniform },
    /// The members in order.
    Fallback,
    /// Member 0 is the primary; `overflow` in the config's order.
    Spillover {
        max_wait_s: f64,
        overflow: Vec<Overflow>,
    },
}

pub enum Overflow {
    /// The member at this index.
    Native(usize),
    /// A backend of the python lane (`Route::lane_members` index), pinned there.
    Lane(usize),
}

/// A natively routed model: its backends, its policy, and the gateway's metrics of its
/// requests (by the backend that answered, as the gateway labels them) and decisions.
pub struct Route {
    pub model: Arc<str>,
    pub members: Vec<Arc<Backend>>,
    pub policy: Policy,
    /// Spill-over members served by the python lane (decision labels, pins).
    pub lane_members: Vec<(Arc<str>, HeaderValue)>,
    /// One per member, then one for requests no backend was tried for (`none`).
    pub stats: Vec<ModelStats>,
    /// Attempts by target (members, then lane members) and reason (`Reason as usize`).
    pub decisions: Vec<[AtomicU64; 4]>,
    /// The attempts of a single or fallback route, in order.
    order: Vec<(usize, Reason)>,
}

/// The label the gateway gives a request no backend was tried for.
pub const NO_BACKEND: &str = "none";

impl Route {
    fn new(model: &str, config: &RouteConfig, backends: &HashMap<&str, Arc<Backend>>) -> Route {
        let member = |name: &str| Arc::clone(&backends[name]);
        let mut lane_members = Vec::new();
        let (members, policy): (Vec<Arc<Backend>>, Policy) = match config {
            RouteConfig::Backend(name) => (vec![member(name)], Policy::Single),
            RouteConfig::Policy(PolicyConfig::Fallback { order }) => {
                (order.iter().map(|n| member(n)).collect(), Policy::Fallback)
            }
            RouteConfig::Policy(PolicyConfig::Weighted { weights }) => {
                // A member of weight 0 receives none (`Weighted` leaves it out).
                let weighted: Vec<&(String, u32)> =
                    weights.iter().filter(|(_, w)| *w > 0).collect();
                (
                    weighted.iter().map(|(n, _)| member(n)).collect(),
                    Policy::Weighted {
                        weights: weighted.iter().map(|(_, w)| *w).collect(),
                        uniform: Uniform::seeded(),
                    },
                )
            }
            RouteConfig::Policy(PolicyConfig::Spillover {
                primary,
                overflow,
                max_queue_wait_ms,
            }) => {
                let mut members = vec![member(primary)];
                let overflow = overflow
                    .iter()
                    .map(|o| match o {
                        OverflowConfig::Native(n) => {
                            members.push(member(n));
                            Overflow::Native(members.len() - 1)
                        }
                        OverflowConfig::Lane(n) => {
                            let pin =
                                HeaderValue::from_str(n).unwrap_or(HeaderValue::from_static(""));
                            lane_members.push((Arc::from(n.as_str()), pin));
                            Overflow::Lane(lane_members.len() - 1)
                        }
                    })
                    .collect();
                let max_wait_s = max_queue_wait_ms / 1000.0;
                (
                    members,
                    Policy::Spillover {
                        max_wait_s,
                        overflow,
                    },
                )
            }
        };
        let order = match policy {
            Policy::Fallback => (0..members.len())
                .map(|i| {
                    (
                        i,
                        if i == 0 {
                            Reason::Primary
                        } else {
                            Reason::Fallback
                        },
                    )
                })
                .collect(),
            _ => vec![(0, Reason::Primary)],
        };
        Route {
            model: model.into(),
            stats: (0..=members.len()).map(|_| ModelStats::default()).collect(),
            decisions: (0..members.len() + lane_members.len())
                .map(|_| Default::default())
                .collect(),
            members,
            policy,
            lane_members,
            order,
        }
    }

    /// The backend label of `stats[i]`.
    pub fn label(&self, i: usize) -> &str {
        self.members.get(i).map_or(NO_BACKEND, |b| &b.name)
    }

    /// The label of a decision target (`decisions[i]`).
    pub fn target(&self, i: usize) -> &str {
        match self.members.get(i) {
            Some(b) => &b.name,
            None => &self.lane_members[i - self.members.len()].0,
        }
    }

    fn decide(&self, target: usize, reason: Reason) {
        if !matches!(self.policy, Policy::Single) {
            self.decisions[target][reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The attempts a request makes, in order, each only if the one before failed in a
    /// way that moves on (`policy::moves_on`).
    fn plan(&self, request_id: Option<&str>, deadline: Option<Instant>) -> Plan<'_> {
        match &self.policy {
            Policy::Single | Policy::Fallback => Plan::Members(&self.order),
            Policy::Weighted { weights, uniform } => {
                let pick = match request_id {
                    Some(id) if !id.is_empty() => policy::rendezvous(
                        id,
                        self.members
                            .iter()
                            .map(|b| &*b.name)
                            .zip(weights.iter().copied()),
                    ),
                    _ => policy::weighted_pick(weights, uniform.next()),
                };
                Plan::Owned([(pick, Reason::Weighted), (pick, Reason::Weighted)], 1)
            }
            Policy::Spillover {
                max_wait_s,
                overflow,
            } => {
                let primary = &self.members[0];
                let admission = &primary.admission;
                let wait = policy::expected_wait_s(
                    admission.in_flight(),
                    admission.queued(),
                    admission.max_concurrency(),
                    primary.service_times.mean(),
                );
                let left =
                    deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64());
                let expected: Vec<Option<f64>> = overflow
                    .iter()
                    .map(|o| match o {
                        Overflow::Native(i) => {
                            Some(self.members[*i].service_times.mean().unwrap_or(0.0))
                        }
                        Overflow::Lane(_) => None,
                    })
                    .collect();
                match policy::spill(wait, *max_wait_s, left, &expected) {
                    Spill::Primary => Plan::Members(&self.order),
                    Spill::Refuse(retry_after_s) => Plan::Refuse(Status {
                        code: grpc_status::RESOURCE_EXHAUSTED,
                        message: format!(
                            "backend {} cannot start the request within its deadline and no overflow backend is expected to answer in time",
                            validate::py_repr(&primary.name)
                        ),
                        retry_after_s: Some(retry_after_s.ceil().max(1.0) as u64),
                    }),
                    Spill::Overflow(i) => match overflow[i] {
                        // A spilled request the member cannot serve goes back to the primary.
                        Overflow::Native(m) => Plan::Owned([(m, Reason::Spill), (0, Reason::Fallback)], 2),
                        Overflow::Lane(l) => Plan::Lane(l),
                    },
                }
            }
        }
    }

    /// Counts a request that ended with `code` (the gateway's series under the label of
    /// the backend last tried, `attempted`, else `none`).
    fn record(&self, code: u8, phases: &Phases, attempted: Option<usize>, prior: &[Tried]) {
        let stats = &self.stats[attempted.unwrap_or(self.members.len())];
        stats.record(code, phases);
        for tried in prior {
            stats.observe_attempt(code, tried.queue, tried.backend);
        }
        // The plane's own per-backend counters: the backend tried last, else the first.
        let lane = &self.members[attempted.unwrap_or(0)].stats;
        lane.count(code);
        lane.total.observe(phases.total);
        if let Some(backend) = phases.backend {
            lane.backend.observe(backend);
        }
    }
}

/// What a request tries: members in order (each a fallback of the one before), a backend
/// of the python lane, or nothing (refused at once).
enum Plan<'a> {
    Members(&'a [(usize, Reason)]),
    Owned([(usize, Reason); 2], usize),
    Lane(usize),
    Refuse(Status),
}

/// An attempt that failed and moved on: its entries in the trailer and the phases.
struct Tried {
    member: usize,
    desc: String,
    queue: Option<Duration>,
    backend: Option<Duration>,
}

impl Tried {
    /// An attempt that moved on after its queue, before any backend call: no entry.
    fn queued(member: usize, queue: Duration) -> Tried {
        Tried {
            member,
            desc: String::new(),
            queue: Some(queue),
            backend: None,
        }
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

    /// `backend=NAME;attempt=N[;reason=R]`, the `backend` entry's description.
    fn desc(&self, attempt: usize, reason: Reason) -> Desc {
        if attempt == 1 && !reason.in_timing() {
            return Desc::First;
        }
        let mut desc = format!("backend={};attempt={attempt}", self.name);
        if reason.in_timing() {
            desc.push_str(";reason=");
            desc.push_str(reason.as_str());
        }
        Desc::Own(desc)
    }
}

/// An attempt's `backend` description: the backend's first-attempt one, or its own.
enum Desc {
    First,
    Own(String),
}

impl Desc {
    fn of<'a>(&'a self, backend: &'a Backend) -> &'a str {
        match self {
            Desc::First => &backend.desc_backend,
            Desc::Own(s) => s,
        }
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
    /// The gateway's `auth`: the keys a natively served call must present (None: no auth).
    api_keys: Option<Arc<ApiKeys>>,
}

impl Shared {
    /// The error names a backend whose TLS files cannot be used.
    pub fn new(
        config: &Config,
        credentials: &Credentials,
        api_keys: Option<Arc<ApiKeys>>,
    ) -> Result<Shared, String> {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|(name, b)| {
                Ok(Arc::new(Backend {
                    name: name.as_str().into(),
                    upstream: match &b.tls {
                        Some(tls) => Upstream::with_tls(&b.address, tls)
                            .map_err(|e| format!("backends.{name}.{e}"))?,
                        None => Upstream::new(&b.address),
                    },
                    admission: Admission::new(
                        name,
                        b.max_concurrency,
                        b.max_queue,
                        millis(b.queue_timeout_ms),
                    ),
                    timeout: b.timeout_ms.map(millis),
                    stats: LaneStats::default(),
                    service_times: LatencyWindow::default(),
                    observed: b.serverless.then(Observations::default),
                    credential: credentials.get(name).cloned(),
                    desc_total: format!("backend={name}"),
                    desc_backend: format!("backend={name};attempt=1"),
                }))
            })
            .collect::<Result<_, String>>()?;
        let by_name: HashMap<&str, Arc<Backend>> = config
            .backends
            .keys()
            .map(String::as_str)
            .zip(backends.iter().cloned())
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|(model, route)| (model.clone(), Arc::new(Route::new(model, route, &by_name))))
            .collect();
        let lane = config.python_lane.as_deref().map(|address| {
            Arc::new(Lane {
                upstream: Upstream::new(address),
                stats: LaneStats::default(),
            })
        });
        Ok(Shared {
            backends,
            routes,
            lane,
            max_message_bytes: config.max_message_bytes,
            tracer: Arc::new(Tracer::new(config.trace_all, config.max_span_records)),
            api_keys,
        })
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
        // Refused before the body is read, as the Python plane's interceptor refuses it
        // (a ModelInfer call it would pass on to the lane is judged the same there).
        if let Some(keys) = &shared.api_keys {
            if !keys.admits(request.headers()) {
                let refused = Status::new(grpc_status::UNAUTHENTICATED, api_keys::MESSAGE);
                return Ok(refused.response(empty(), None));
            }
        }
        return Ok(infer(shared, request, start).await);
    }
    let (parts, body) = request.into_parts();
    Ok(to_lane(
        &shared,
        Request::from_parts(parts, boxed(body)),
        start,
        false,
    )
    .await)
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
        return to_lane(
            &shared,
            Request::from_parts(parts, boxed(prefix)),
            start,
            false,
        )
        .await;
    };
    native(&shared, &route, parts, prefix, start, scanning).await
}

/// Reads on until the request id is known (weighted routes hash it); "" if the body
/// ends or fails first (the checks then judge the message).
async fn read_request_id(prefix: &mut Prefixed) -> String {
    loop {
        if let Some(id) = policy::request_id(prefix.chunks.make_contiguous()) {
            return id;
        }
        let Some(rest) = prefix.rest.as_mut() else {
            return String::new();
        };
        match rest.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => prefix.chunks.push_back(data),
                Err(frame) => {
                    prefix.trailers = frame.into_trailers().ok();
                    prefix.rest = None;
                    prefix.ended = true;
                }
            },
            None | Some(Err(_)) => {
                prefix.ended = true;
                if prefix.rest.as_ref().is_some_and(|r| !r.is_end_stream()) {
                    return String::new(); // a body error: the checks or the backend report it
                }
                prefix.rest = None;
            }
        }
    }
}

async fn native(
    shared: &Shared,
    route: &Arc<Route>,
    mut parts: http::request::Parts,
    mut prefix: Prefixed,
    start: Instant,
    scanning: Duration,
) -> Response<Body> {
    let max_message_bytes = shared.max_message_bytes;
    let client_deadline = client_deadline(&parts.headers, start);
    let request_id = match route.policy {
        Policy::Weighted { .. } => Some(read_request_id(&mut prefix).await),
        _ => None,
    };
    // The message's size from its gRPC prefix, then the gateway's checks: at once when
    // the whole message is here (a tiny request, before admission), else as it streams
    // to the backend (the last chunk goes on only once the message passed).
    let declared = prefix.declared_len();
    let mut checking = Duration::ZERO;
    let verdict = if declared > max_message_bytes {
        let message = format!(
            "request message of {declared} bytes exceeds the limit of {max_message_bytes} bytes"
        );
        Err(Status::new(grpc_status::RESOURCE_EXHAUSTED, message))
    } else if prefix.buffered_len() >= scan::PREFIX_LEN + declared {
        let check_start = Instant::now();
        let verdict = validate::check(prefix.chunks.make_contiguous(), scan::PREFIX_LEN, declared);
        checking = check_start.elapsed();
        verdict.map_err(|refusal| invalid(&refusal))
    } else {
        Ok(())
    };
    // Decided after the checks, as the gateway routes a request only once it is valid.
    let plan = match verdict {
        Ok(()) => route.plan(request_id.as_deref(), client_deadline),
        Err(status) => Plan::Refuse(status),
    };
    if let Plan::Lane(l) = plan {
        // Spilled to a backend of the python lane: pinned there, so the lane sends it to
        // that backend's own stack (no policy: it neither spills it back nor counts a
        // decision), and it counts the request itself (the plane counts the decision).
        let (name, pin) = &route.lane_members[l];
        route.decide(route.members.len() + l, Reason::Spill);
        debug_assert!(!name.is_empty());
        parts.headers.insert(PIN_HEADER, pin.clone());
        // The lane checks the message itself, as for any request it serves.
        return to_lane(
            shared,
            Request::from_parts(parts, boxed(prefix)),
            start,
            true,
        )
        .await;
    }
    let trace = shared.tracer.begin(&mut parts.headers).map(|ids| Traced {
        ids,
        unix_start: trace::unix_now(),
        tracer: shared.tracer.clone(),
    });
    let call = Arc::new(Call::new(route.clone(), start, trace));
    call.add(scanning + checking);
    // Until the response body takes over the counting: a client gone while queued or
    // waiting for the backend's headers counts CANCELLED.
    let pending = Pending {
        call: &call,
        armed: AtomicBool::new(true),
    };
    let fail = |status: Status, queue: Option<Duration>, backend: Option<(Duration, Duration)>| {
        pending.armed.store(false, Ordering::Relaxed);
        let phases = Phases {
            decode: call.decode(),
            queue,
            backend: backend.map(|b| b.1),
            total: start.elapsed(),
            reported: Reported::default(),
        };
        let value = call.end(status.code, &phases, backend.map(|b| b.0));
        let mut response = status.response(empty(), None);
        if let Some(value) = value {
            response.headers_mut().append(timing::TRAILER, value);
        }
        response
    };
    let steps: &[(usize, Reason)] = match &plan {
        Plan::Members(steps) => steps,
        Plan::Owned(steps, n) => &steps[..*n],
        Plan::Refuse(status) => return fail(status.clone(), None, None),
        Plan::Lane(_) => unreachable!("sent to the lane above"),
    };
    let body = if prefix.buffered_len() >= scan::PREFIX_LEN + declared {
        boxed(prefix)
    } else {
        boxed(Checking::new(prefix, declared, call.clone()))
    };
    // A route that may try again keeps what it sent until a backend answers.
    let (mut body, replay) = if steps.len() > 1 {
        (None, Some(Replay::new(body)))
    } else {
        (Some(body), None)
    };
    let out_of_time = || client_deadline.is_some_and(|d| Instant::now() >= d);
    let mut attempt = 0;
    for (step, &(member, reason)) in steps.iter().enumerate() {
        let last = step + 1 == steps.len();
        let backend = &route.members[member];
        let policy_route = !matches!(route.policy, Policy::Single);
        route.decide(member, reason);
        if policy_route {
            call.attempted(member); // the gateway labels a route's attempt from its start
        }
        attempt += 1;
        let desc = backend.desc(attempt, reason);
        let attempt_start = if step == 0 { start } else { Instant::now() };
        let slot = match backend.admission.acquire(client_deadline).await {
            Ok(slot) => slot,
            Err(status) => {
                let queue = attempt_start.elapsed();
                let retry_after = status.retry_after_s.is_some();
                if !last
                    && policy::moves_on(status.code, retry_after, &status.message, out_of_time())
                {
                    call.tried(Tried::queued(member, queue));
                    continue;
                }
                return fail(status, Some(queue), None);
            }
        };
        let backend_start = Instant::now();
        let queue = backend_start - attempt_start;
        backend.stats.queue.observe(queue);
        let attempt_deadline = backend.timeout.and_then(|t| backend_start.checked_add(t));
        let deadline = match (client_deadline, attempt_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut headers = if last {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        if let Some(deadline) = deadline {
            let remaining = deadline.saturating_duration_since(backend_start);
            if remaining.is_zero() {
                let status = Status::new(
                    grpc_status::DEADLINE_EXCEEDED,
                    "deadline exceeded before the backend call",
                );
                if !last && policy::moves_on(status.code, false, "", out_of_time()) {
                    call.tried(Tried::queued(member, queue));
                    continue;
                }
                return fail(status, Some(queue), None);
            }
            if let Ok(value) = HeaderValue::from_str(&deadline::format(remaining)) {
                headers.insert(deadline::HEADER, value);
            }
        }
        let authorized = match &backend.credential {
            Some(credential) => credential
                .apply(&mut headers, SystemTime::now())
                .map_err(str::to_owned),
            None => Ok(()),
        };
        call.attempted(member);
        let this_body = match (&replay, body.take()) {
            (Some(replay), _) => boxed(replay.attempt()),
            (None, Some(body)) => body,
            (None, None) => unreachable!("one attempt without a replay"),
        };
        let upstream = &backend.upstream;
        let request = match outgoing(&parts.method, &parts.uri, headers, upstream, this_body) {
            Ok(request) => request,
            Err(status) => return fail(status, Some(queue), None),
        };
        let sent = async {
            authorized?; // none: as if unreachable (a fallback moves on, as in Python)
            upstream.send(request, deadline).await.map_err(|e| match e {
                SendError::Connect(message) => message,
                SendError::Call(e) => format!("upstream {}: {e}", upstream.address),
            })
        };
        // No timer of our own here (one per request cost a wake-up of the runtime's driver,
        // an eventfd write and an extra epoll_wait): the backend enforces the `grpc-timeout`
        // passed on above and answers DEADLINE_EXCEEDED itself, as gRPC servers do, and the
        // client gives up at its deadline, which resets the stream and so the backend call.
        // An attempt the backend saw that failed in a way that moves on: counted, and its
        // trailer entry kept for the next member's.
        let moved_on = |code: u8, took: Duration| {
            backend.stats.count(code);
            backend.stats.backend.observe(took);
            call.tried(Tried {
                member,
                desc: desc.of(backend).to_owned(),
                queue: Some(queue),
                backend: Some(took),
            });
        };
        let response = match sent.await {
            Ok(response) => response,
            Err(message) => {
                drop(slot);
                let took = backend_start.elapsed();
                // A refused streamed message: its body stopped the upstream call.
                let status = match call.refusal.get() {
                    Some(refusal) => invalid(refusal),
                    None => Status::new(grpc_status::UNAVAILABLE, backend.unavailable(&message)),
                };
                let again = replay.as_ref().is_some_and(Replay::can_retry);
                if !last && again && call.refusal.get().is_none() && !out_of_time() {
                    moved_on(status.code, took);
                    continue;
                }
                // The gateway refuses a bad message before any backend call: no entry.
                let called = call.refusal.get().is_none();
                let offset = backend_start - start;
                call.current(desc);
                return fail(status, Some(queue), called.then_some((offset, took)));
            }
        };
        let (mut parts, incoming) = response.into_parts();
        let trailers_only =
            grpc_status::code_of(&parts.headers).is_some() || incoming.is_end_stream();
        if trailers_only && !last && replay.as_ref().is_some_and(Replay::can_retry) {
            // The backend refused it before answering anything (Triton's errors are
            // trailers-only): the next member may serve what the gateway moves on for.
            let headers = &parts.headers;
            let code = grpc_status::code_of(headers).unwrap_or(grpc_status::UNKNOWN);
            let message = headers
                .get("grpc-message")
                .map(|v| String::from_utf8_lossy(v.as_bytes()));
            let retry_after = headers.contains_key("retry-after");
            if policy::moves_on(
                code,
                retry_after,
                message.as_deref().unwrap_or(""),
                out_of_time(),
            ) {
                drop(slot);
                moved_on(code, backend_start.elapsed());
                continue;
            }
        }
        if let Some(replay) = &replay {
            replay.commit();
        }
        call.current(desc);
        let mut timed = Timed {
            inner: None,
            start,
            backend_start,
            queue,
            owner: Owner::Route(call.clone()),
            slot: Some(slot),
            done: false,
        };
        pending.armed.store(false, Ordering::Relaxed);
        if trailers_only {
            // Trailers-only (an error from the backend): its headers are its trailers.
            timed.finish(&mut parts.headers);
            return Response::from_parts(parts, empty());
        }
        timed.inner = Some(incoming);
        return Response::from_parts(parts, boxed(timed));
    }
    unreachable!("a plan has at least one step and its last one answers")
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
        .scheme(upstream.scheme())
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

/// Forwards a request to the python lane; `spilled`: a spill-over's, pinned to a backend
/// of the lane, whose `server-timing` then names the reason as the gateway's spill-over
/// would (`mark_spill`).
async fn to_lane(
    shared: &Shared,
    request: Request<Body>,
    start: Instant,
    spilled: bool,
) -> Response<Body> {
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
    let waiting = LaneWait {
        lane,
        start,
        armed: true,
    };
    let sent = lane.upstream.send(request, deadline).await;
    waiting.disarm();
    let response = match sent.map_err(|e| match e {
        SendError::Connect(message) => message,
        SendError::Call(e) => format!("python lane: {e}"),
    }) {
        Ok(response) => response,
        Err(message) => return fail(Status::new(grpc_status::UNAVAILABLE, message)),
    };
    let (mut parts, incoming) = response.into_parts();
    if let Some(code) = grpc_status::code_of(&parts.headers) {
        lane.stats.count(code);
        lane.stats.total.observe(start.elapsed());
        if spilled {
            mark_spill(&mut parts.headers);
        }
        return Response::from_parts(parts, empty());
    }
    let timed = Timed {
        inner: Some(incoming),
        start,
        backend_start: start,
        queue: Duration::ZERO,
        owner: Owner::Lane(lane.clone(), spilled),
        slot: None,
        done: false,
    };
    Response::from_parts(parts, boxed(timed))
}

/// Counts a lane request CANCELLED if its handler is dropped (the client left) before the
/// lane's response headers came; from them on, `Timed` or the trailers-only answer counts.
struct LaneWait<'a> {
    lane: &'a Lane,
    start: Instant,
    armed: bool,
}

impl LaneWait<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for LaneWait<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.lane.stats.count(grpc_status::CANCELLED);
            self.lane.stats.total.observe(self.start.elapsed());
        }
    }
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
/// refusal, if any, and the time spent scanning and checking: the `decode` entry), the
/// backend tried last and the attempts before it, and its trace.
struct Call {
    route: Arc<Route>,
    start: Instant,
    refusal: OnceLock<Refusal>,
    decode_ns: AtomicU64,
    trace: Option<Traced>,
    /// The member tried last (the gateway's backend label); `usize::MAX`: none yet.
    attempted: AtomicUsize,
    attempts: Mutex<Attempts>,
}

#[derive(Default)]
struct Attempts {
    /// Attempts that failed and moved on, in order.
    prior: Vec<Tried>,
    /// The `backend` description of the attempt that answers.
    current: Option<Desc>,
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
            attempted: AtomicUsize::new(usize::MAX),
            attempts: Mutex::default(),
        }
    }

    fn attempted(&self, member: usize) {
        self.attempted.store(member, Ordering::Relaxed);
    }

    fn member(&self) -> Option<usize> {
        let m = self.attempted.load(Ordering::Relaxed);
        (m != usize::MAX).then_some(m)
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tried(&self, tried: Tried) {
        self.attempts().prior.push(tried);
    }

    fn current(&self, desc: Desc) {
        self.attempts().current = Some(desc);
    }

    /// The request ended with `code`: its counters, its span record when traced, and the
    /// `server-timing` value of its trailers. `backend_at`: when the answering attempt's
    /// call started, from the request's start.
    fn end(&self, code: u8, phases: &Phases, backend_at: Option<Duration>) -> Option<HeaderValue> {
        let member = self.member();
        let attempts = self.attempts();
        self.route.record(code, phases, member, &attempts.prior);
        let value = self.trailer(phases, code, member, &attempts);
        drop(attempts);
        let Some(traced) = &self.trace else {
            return value;
        };
        let unix = |d: Duration| (traced.unix_start + d).as_nanos() as u64;
        let backend_ns = phases
            .backend
            .zip(backend_at)
            .map(|(backend, at)| (unix(at), unix(at + backend)));
        let backend = match member {
            Some(m) => self.route.members[m].name.clone(),
            None => Arc::from(NO_BACKEND),
        };
        traced.tracer.push(SpanRecord {
            ids: traced.ids,
            method: "".into(),
            model: self.route.model.clone(),
            backend,
            start_ns: unix(Duration::ZERO),
            backend_ns,
            end_ns: unix(phases.total),
            code,
        });
        value
    }

    /// The gateway's entries: `decode`, each attempt's `queue` and `backend` in order,
    /// `total` naming the backend that answered when OK.
    fn trailer(
        &self,
        phases: &Phases,
        code: u8,
        member: Option<usize>,
        attempts: &Attempts,
    ) -> Option<HeaderValue> {
        let ok = code == grpc_status::OK;
        let members = &self.route.members;
        let text = match member.map(|m| &members[m]) {
            None => phases.trailer("", "", false),
            Some(b)
                if attempts.prior.is_empty() && !matches!(attempts.current, Some(Desc::Own(_))) =>
            {
                phases.trailer(&b.desc_total, &b.desc_backend, ok)
            }
            Some(b) => {
                let mut entries = Entries::default();
                entries.add("decode", phases.decode, "");
                for tried in &attempts.prior {
                    if let Some(queue) = tried.queue {
                        entries.add("queue", queue, &members[tried.member].desc_total);
                    }
                    if let Some(backend) = tried.backend {
                        entries.add("backend", backend, &tried.desc);
                    }
                }
                if let Some(queue) = phases.queue {
                    entries.add("queue", queue, &b.desc_total);
                }
                entries.reported(&phases.reported);
                if let Some(backend) = phases.backend {
                    let desc = attempts
                        .current
                        .as_ref()
                        .map_or(b.desc_backend.as_str(), |d| d.of(b));
                    entries.add("backend", backend, desc);
                }
                entries.add("total", phases.total, if ok { &b.desc_total } else { "" });
                entries.finish()
            }
        };
        HeaderValue::from_str(&text).ok()
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
            self.call.end(grpc_status::CANCELLED, &phases, None);
        }
    }
}

/// Whose counters a response counts in: a native route (with its request's checks, for
/// the `decode` entry) or the python lane (`true`: a request spill-over sent there).
enum Owner {
    Route(Arc<Call>),
    Lane(Arc<Lane>, bool),
}

/// The upstream's response body, passed through; at its trailers the request is over:
/// the slot is freed, the counters updated, and for a native route `server-timing` is
/// appended. Dropped before its end (client gone), it counts CANCELLED, and dropping the
/// upstream body resets the upstream stream: the backend sees the cancel.
struct Timed {
    inner: Option<Reply>,
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
        let reported = self.reported(trailers);
        if let Some(value) = self.record(code, reported) {
            trailers.append(timing::TRAILER, value);
        }
        if matches!(self.owner, Owner::Lane(_, true)) {
            mark_spill(trailers);
        }
    }

    /// What a serverless backend reported in its `server-timing` trailer, taken out of
    /// `trailers`: the client gets those phases in the plane's own entry, as the gateway
    /// gives them (`CloudRunBackend`). Any other upstream's trailers pass through as sent.
    fn reported(&self, trailers: &mut HeaderMap) -> Reported {
        let Owner::Route(call) = &self.owner else {
            return Reported::default();
        };
        let serverless = call
            .member()
            .is_some_and(|m| call.route.members[m].observed.is_some());
        if !serverless {
            return Reported::default();
        }
        let values: Vec<HeaderValue> = trailers.get_all(timing::TRAILER).iter().cloned().collect();
        trailers.remove(timing::TRAILER); // every value of it
        timing::reported(values.iter().map(HeaderValue::as_bytes))
    }

    /// Counts the request's end with `code`; for a native route, its `server-timing`.
    fn record(&self, code: u8, reported: Reported) -> Option<HeaderValue> {
        let now = Instant::now();
        let total = now - self.start;
        match &self.owner {
            Owner::Lane(lane, _) => {
                lane.stats.count(code);
                lane.stats.total.observe(total);
                None
            }
            Owner::Route(call) => {
                let backend = now - self.backend_start;
                let phases = Phases {
                    decode: call.decode(),
                    queue: Some(self.queue),
                    backend: Some(backend),
                    total,
                    reported,
                };
                if code == grpc_status::OK {
                    if let Some(m) = call.member() {
                        let member = &call.route.members[m];
                        member.service_times.add(backend);
                        if let Some(observed) = &member.observed {
                            observed.push(Observed {
                                at: now,
                                backend,
                                reported,
                            });
                        }
                    }
                }
                call.end(code, &phases, Some(self.backend_start - self.start))
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
                this.record(grpc_status::UNAVAILABLE, Reported::default());
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
            self.record(grpc_status::CANCELLED, Reported::default());
        }
    }
}

/// Names the reason in a lane answer's `server-timing`, as the gateway's spill-over joins
/// an attempt's entries (`routing/attempts._join`): its first `backend` entry gets
/// `;reason=spill`, any later one (the backend's own retries) `;reason=retry`.
fn mark_spill(headers: &mut HeaderMap) {
    let Some(value) = headers.get(timing::TRAILER).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Ok(marked) = HeaderValue::from_str(&spill_reasons(value)) {
        headers.insert(timing::TRAILER, marked);
    }
}

fn spill_reasons(value: &str) -> String {
    let mut tries = 0;
    let entries: Vec<String> = value
        .split(", ")
        .map(|entry| {
            if !entry.starts_with("backend;")
                || !entry.ends_with("\"")
                || !entry.contains("desc=\"")
            {
                return entry.to_owned();
            }
            let why = if tries == 0 { "spill" } else { "retry" };
            tries += 1;
            format!("{};reason={why}\"", &entry[..entry.len() - 1])
        })
        .collect();
    entries.join(", ")
}

/// The request body of a route that may try another member: every chunk an attempt sent
/// is kept (refcounted `Bytes`, nothing copied) until a backend answers (`commit`), so the
/// next attempt resends the same bytes and then goes on with the rest of the client's body.
struct Replay(Arc<Mutex<Replayed>>);

struct Replayed {
    source: Body,
    /// The chunks read from `source` so far (emptied by `commit` as they are sent).
    log: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// The source failed (the client's body, or a refused message): nothing to resend.
    failed: bool,
    keep: bool,
    /// The attempt whose body this is; an earlier attempt's body is cut off.
    generation: u64,
    /// How many of `log` the live attempt has sent.
    sent: usize,
}

impl Replay {
    fn new(source: Body) -> Replay {
        Replay(Arc::new(Mutex::new(Replayed {
            source,
            log: Vec::new(),
            trailers: None,
            ended: false,
            failed: false,
            keep: true,
            generation: 0,
            sent: 0,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Replayed> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body of the next attempt: from the first byte again.
    fn attempt(&self) -> Attempt {
        let mut state = self.state();
        state.generation += 1;
        state.sent = 0;
        Attempt {
            state: self.0.clone(),
            generation: state.generation,
            trailers_sent: false,
        }
    }

    /// Whether a next attempt can send the whole request again.
    fn can_retry(&self) -> bool {
        let state = self.state();
        state.keep && !state.failed
    }

    /// A backend answered: what is sent need not be kept any more.
    fn commit(&self) {
        let mut state = self.state();
        state.keep = false;
        let sent = state.sent;
        state.log[..sent].iter_mut().for_each(|c| *c = Bytes::new());
    }
}

/// One attempt's view of a `Replay`.
struct Attempt {
    state: Arc<Mutex<Replayed>>,
    generation: u64,
    trailers_sent: bool,
}

impl http_body::Body for Attempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let state = self.state.clone();
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        if state.generation != self.generation {
            return Poll::Ready(Some(Err("superseded by another attempt".into())));
        }
        if state.sent < state.log.len() {
            let i = state.sent;
            state.sent += 1;
            let chunk = if state.keep {
                state.log[i].clone()
            } else {
                std::mem::take(&mut state.log[i])
            };
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if state.failed {
            return Poll::Ready(Some(Err("the request body failed".into())));
        }
        if state.ended {
            if self.trailers_sent {
                return Poll::Ready(None);
            }
            self.trailers_sent = true;
            return Poll::Ready(state.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        match ready!(Pin::new(&mut state.source).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if state.keep {
                        state.log.push(data.clone());
                        state.sent += 1;
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    state.ended = true;
                    self.trailers_sent = true;
                    state.trailers = frame.into_trailers().ok();
                    Poll::Ready(state.trailers.clone().map(|t| Ok(Frame::trailers(t))))
                }
            },
            Some(Err(e)) => {
                state.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                state.ended = true;
                self.trailers_sent = true;
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_answer_names_the_spill() {
        let lane = r#"decode;dur=0.100, queue;dur=0.010;desc="backend=lambda", backend;dur=3.000;desc="backend=lambda;attempt=1", backend;dur=2.000;desc="backend=lambda;attempt=2", encode;dur=0.020, total;dur=5.500;desc="backend=lambda""#;
        assert_eq!(
            spill_reasons(lane),
            r#"decode;dur=0.100, queue;dur=0.010;desc="backend=lambda", backend;dur=3.000;desc="backend=lambda;attempt=1;reason=spill", backend;dur=2.000;desc="backend=lambda;attempt=2;reason=retry", encode;dur=0.020, total;dur=5.500;desc="backend=lambda""#
        );
        assert_eq!(spill_reasons("total;dur=1.000"), "total;dur=1.000");
    }

    async fn collect(body: Attempt) -> Result<Vec<u8>, BoxError> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_replay_resends_what_an_attempt_sent_then_the_rest() {
        let chunks = ["ab", "cd", "ef"].map(|c| Bytes::from_static(c.as_bytes()));
        let replay = Replay::new(boxed(Chunks(chunks.into())));
        // The first attempt sends two chunks, then fails.
        let mut first = replay.attempt();
        let a = first.frame().await.unwrap().unwrap().into_data().unwrap();
        let b = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!((&a[..], &b[..]), (&b"ab"[..], &b"cd"[..]));
        assert!(replay.can_retry());
        let second = replay.attempt();
        // The first attempt's body is cut off once the next one starts.
        assert!(first.frame().await.unwrap().is_err());
        replay.commit(); // (before anything of the second was sent: all kept for it)
        assert_eq!(collect(second).await.unwrap(), b"abcdef");
        assert!(!replay.can_retry());
    }

    struct Chunks(VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }
}
