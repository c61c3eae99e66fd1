//! The Python surface, `infergw._native`: one class, `Plane`. Its methods release the GIL
//! while they wait; the plane's threads never take it.

use std::os::fd::IntoRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::api_keys::Digest;
use crate::config::Config;
use crate::credential;
use crate::forward::{Route, Shared};
use crate::handover::Inbox;
use crate::plane::{self, Held, Running};
use crate::policy::Reason;
use crate::sidecar_stats::{Counted, HistogramSnapshot};
use crate::stats::{Histogram, LaneStats, ModelStats, BUCKETS_S};
use crate::timing;

/// What a start's counters live in: the gateway's lanes, and the sidecar's.
type Counters = (Arc<Shared>, Option<Arc<dyn Counted>>);

/// The native data plane. ``Plane(config_json)``; ``start() -> port``; ``stop(grace_s)``;
/// ``stats() -> dict``; for a sidecar, ``set_health(service, status)`` and
/// ``enter_graceful_shutdown()``.
#[pyclass(module = "infergw._native", frozen)]
struct Plane {
    config: Config,
    /// Health, credentials, certificates, API keys: kept across starts, settable before one.
    held: Held,
    /// Where Python hands over the listener it bound (``listener_inbox``), if it asked.
    inbox: Mutex<Option<Inbox>>,
    running: Mutex<Option<Running>>,
    /// The counters of the last start (kept after stop, for a final scrape).
    last: Mutex<Option<Counters>>,
}

#[pymethods]
impl Plane {
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        let config = Config::from_json(config_json).map_err(PyValueError::new_err)?;
        let credentials = credential::credentials(&config).map_err(PyValueError::new_err)?;
        Ok(Plane {
            config,
            held: Held {
                credentials,
                ..Held::default()
            },
            inbox: Mutex::new(None),
            running: Mutex::new(None),
            last: Mutex::new(None),
        })
    }

    /// Starts serving on the plane's own threads the listener handed over
    /// (``listener_inbox``), else ``listen`` bound; the port. A second call while running
    /// returns the same port.
    fn start(&self, py: Python<'_>) -> PyResult<u16> {
        py.detach(|| {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(running) = running.as_ref() {
                return Ok(running.port);
            }
            let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take();
            let handed = match inbox.map(|inbox| inbox.take()).transpose() {
                Ok(Some(None)) => return Err(PyOSError::new_err("no listener was handed over")),
                Ok(handed) => handed.flatten(),
                Err(why) => return Err(PyOSError::new_err(why)),
            };
            let started =
                plane::start(&self.config, &self.held, handed).map_err(PyOSError::new_err)?;
            let port = started.port;
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((started.shared.clone(), started.sidecar.clone()));
            *running = Some(started);
            Ok(port)
        })
    }

    /// Stops accepting, lets requests in flight finish for at most ``grace_s`` seconds, then
    /// closes every connection and thread. Idempotent.
    #[pyo3(signature = (grace_s = 5.0))]
    fn stop(&self, py: Python<'_>, grace_s: f64) {
        let grace = Duration::try_from_secs_f64(grace_s.max(0.0)).unwrap_or(Duration::ZERO);
        py.detach(|| {
            let taken = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(mut running) = taken {
                running.stop(grace);
            }
        });
    }

    /// A Unix datagram socket to send the listening socket on (one, with SCM_RIGHTS:
    /// ``socket.send_fds``) before ``start``, which then serves it instead of binding
    /// ``listen``. The caller owns the descriptor returned and closes it once sent.
    fn listener_inbox(&self) -> PyResult<i32> {
        let (inbox, theirs) = Inbox::new().map_err(|e| PyOSError::new_err(e.to_string()))?;
        *self.inbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(inbox);
        Ok(theirs.into_raw_fd())
    }

    /// Every later call to ``backend`` carries ``value`` in the backend's
    /// ``credential_header`` until ``good_until_s`` (unix seconds; then it is UNAVAILABLE
    /// until a new value comes); ``None`` forgets the value. ValueError for a backend
    /// without a credential, or a value that is no header value (the error omits it).
    #[pyo3(signature = (backend, value, good_until_s = 0.0))]
    fn set_credential(
        &self,
        backend: &str,
        value: Option<&str>,
        good_until_s: f64,
    ) -> PyResult<()> {
        let Some(credential) = self.held.credentials.get(backend) else {
            let why = format!("backend '{backend}' has no credential_header");
            return Err(PyValueError::new_err(why));
        };
        match value {
            None => credential.clear(),
            Some(value) => {
                let until = Duration::try_from_secs_f64(good_until_s.max(0.0))
                    .map_or(UNIX_EPOCH, |d| UNIX_EPOCH + d);
                credential
                    .set(value, until)
                    .map_err(PyValueError::new_err)?;
            }
        }
        Ok(())
    }

    /// New connections are served TLS with ``chain`` and ``key`` (PEM) and, with
    /// ``client_ca``, must present a certificate it signed; established ones keep theirs.
    /// ValueError (saying which part, never its content) keeps the previous set.
    #[pyo3(signature = (chain, key, client_ca = None))]
    fn set_server_tls(&self, chain: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> PyResult<()> {
        self.held
            .tls
            .set(chain, key, client_ca)
            .map_err(PyValueError::new_err)
    }

    /// The SHA-256 digests of the API keys natively served calls are admitted with, in
    /// place of the last ones. ValueError for a digest that is not 32 bytes.
    fn set_api_keys(&self, digests: Vec<Vec<u8>>) -> PyResult<()> {
        let digests = digests
            .into_iter()
            .map(|d| Digest::try_from(d.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| PyValueError::new_err("an API key digest is 32 bytes (SHA-256)"))?;
        self.held.api_keys.set(digests);
        Ok(())
    }

    /// Sets what ``grpc.health.v1.Health`` answers for ``service`` (a
    /// ``HealthCheckResponse.ServingStatus``: 1 SERVING, 2 NOT_SERVING); ``Watch`` streams
    /// see the change. Ignored after ``enter_graceful_shutdown``.
    fn set_health(&self, service: &str, status: i32) {
        self.held.health.set(service, status);
    }

    /// Every health status NOT_SERVING for good, and ``Watch`` streams end (grpcio's
    /// ``HealthServicer.enter_graceful_shutdown``, plus the streams' end, so that they do
    /// not hold a drain for its whole grace period).
    fn enter_graceful_shutdown(&self) {
        self.held.health.enter_graceful_shutdown();
    }

    /// The bound port while running, else None.
    #[getter]
    fn port(&self) -> Option<u16> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.as_ref().map(|r| r.port)
    }

    /// Traces every request (``True``: Python's SDK is on, or Triton's splits are wanted)
    /// or none (``False``: trace headers pass through untouched).
    fn set_trace_all(&self, all: bool) {
        if let Some((shared, _)) = self.last.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            shared.tracer.all.store(all, Ordering::Relaxed);
        }
    }

    /// The span records of the traced requests since the last call, oldest first: tuples
    /// ``((trace_id, parent_span_id | None, server_span_id, client_span_id, flags),
    /// (method, model, backend), (start_ns, backend_start_ns | None, backend_end_ns |
    /// None, end_ns), grpc_code)``, ids in lower-case hex, times in unix nanoseconds,
    /// method "" but for a sidecar's calls; and how many were
    /// dropped since the start because Python did not drain them in time.
    fn take_spans(&self) -> (Vec<SpanTuple>, u64) {
        let Some((shared, _)) = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return (Vec::new(), 0);
        };
        let records = shared.tracer.take().into_iter().map(|r| {
            let ids = r.ids;
            (
                (
                    format!("{:032x}", ids.trace_id),
                    ids.parent.map(|p| format!("{p:016x}")),
                    format!("{:016x}", ids.server),
                    format!("{:016x}", ids.client),
                    ids.flags,
                ),
                (
                    r.method.to_string(),
                    r.model.to_string(),
                    r.backend.to_string(),
                ),
                (
                    r.start_ns,
                    r.backend_ns.map(|b| b.0),
                    r.backend_ns.map(|b| b.1),
                    r.end_ns,
                ),
                r.code,
            )
        });
        (
            records.collect(),
            shared.tracer.dropped.load(Ordering::Relaxed),
        )
    }

    /// The answers of serverless backends since the last call, oldest first:
    /// ``(backend, age_s, backend_s, coldstart_s | None, compute_s | None)``, ``age_s``
    /// seconds before this call; and how many were dropped since the last call because
    /// Python did not drain them in time.
    fn take_observations(&self) -> (Vec<Observation>, u64) {
        let Some((shared, _)) = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return (Vec::new(), 0);
        };
        let now = tokio::time::Instant::now();
        let (mut taken, mut dropped) = (Vec::new(), 0);
        for backend in &shared.backends {
            let Some(observed) = &backend.observed else {
                continue;
            };
            let (answers, lost) = observed.take();
            dropped += lost;
            let secs = |d: Duration| d.as_secs_f64();
            taken.extend(answers.into_iter().map(|o| {
                (
                    backend.name.to_string(),
                    secs(now.saturating_duration_since(o.at)),
                    secs(o.backend),
                    o.reported.coldstart().map(secs),
                    o.reported.compute().map(secs),
                )
            }));
        }
        taken.sort_by(|a, b| b.1.total_cmp(&a.1)); // the oldest (largest age) first
        (taken, dropped)
    }

    /// Counters since the last start: ``{"bounds_s": [...], "backends": {name: lane},
    /// "python_lane": lane | None}``; a lane is ``{"requests": {grpc code: n}, "total",
    /// "queue", "backend": {"counts": [...], "sum_s": s}}`` (histogram counts per bucket,
    /// the last one +Inf), and a backend adds ``address``, ``in_flight`` and ``queued``.
    /// ``"models": {model: {"backends": {backend: {grpc code: {"count": n, phase:
    /// histogram}}}, "decisions": {backend: {reason: n}}}}`` has the natively routed
    /// models' requests by the backend that answered and status, with the phases
    /// (``decode``, ``queue``, ``backend``, ``total``) their trailers named, and the route
    /// policies' decisions.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        out.set_item("bounds_s", BUCKETS_S.to_vec())?;
        let backends = PyDict::new(py);
        let models = PyDict::new(py);
        let mut lane = None;
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut sidecar = None;
        let mut tracing = false;
        if let Some((shared, side)) = last {
            tracing = shared.tracer.all.load(Ordering::Relaxed);
            if let Some(side) = side {
                sidecar = Some(sidecar_dict(py, &*side)?);
            }
            for backend in &shared.backends {
                let d = lane_dict(py, &backend.stats)?;
                d.set_item("address", &backend.upstream.address)?;
                d.set_item("in_flight", backend.admission.in_flight())?;
                d.set_item("queued", backend.admission.queued())?;
                backends.set_item(&*backend.name, d)?;
            }
            for (model, route) in &shared.routes {
                models.set_item(model, route_dict(py, route)?)?;
            }
            if let Some(l) = &shared.lane {
                let d = lane_dict(py, &l.stats)?;
                d.set_item("address", &l.upstream.address)?;
                lane = Some(d);
            }
        }
        out.set_item("backends", backends)?;
        out.set_item("python_lane", lane)?;
        out.set_item("trace_all", tracing)?;
        out.set_item("models", models)?;
        out.set_item("sidecar", sidecar)?;
        Ok(out)
    }
}

/// A span record for Python: ids, names, times, status (see `take_spans`).
/// `Plane.take_observations`' rows: backend, age, round trip, coldstart, compute (s).
type Observation = (String, f64, f64, Option<f64>, Option<f64>);

type SpanTuple = (
    (String, Option<String>, String, String, u8),
    (String, String, String),
    (u64, Option<u64>, Option<u64>, u64),
    u8,
);

/// ``{"upstream", "methods": {method: {status: n}}, "inference": [{"model", "protocol",
/// "status", "requests", "phases": {phase: histogram}}]}``; a status is a gRPC code, or an
/// HTTP status on the REST half.
fn sidecar_dict<'py>(py: Python<'py>, side: &dyn Counted) -> PyResult<Bound<'py, PyDict>> {
    let snapshot = side.stats().snapshot();
    let d = PyDict::new(py);
    d.set_item("upstream", side.upstream())?;
    let methods = PyDict::new(py);
    for (method, codes) in snapshot.methods {
        let by_code = PyDict::new(py);
        for (code, n) in codes {
            by_code.set_item(code, n)?;
        }
        methods.set_item(method, by_code)?;
    }
    d.set_item("methods", methods)?;
    let mut rows = Vec::with_capacity(snapshot.inference.len());
    for row in snapshot.inference {
        let r = PyDict::new(py);
        r.set_item("model", row.model)?;
        r.set_item("protocol", row.protocol)?;
        r.set_item("status", row.status)?;
        r.set_item("requests", row.requests)?;
        let phases = PyDict::new(py);
        for (name, histogram) in &row.phases {
            phases.set_item(*name, snapshot_dict(py, histogram)?)?;
        }
        r.set_item("phases", phases)?;
        rows.push(r);
    }
    d.set_item("inference", rows)?;
    Ok(d)
}

/// ``{"backends": {label: outcomes}, "decisions": {backend: {reason: n}}}``: a route's
/// requests by the backend that answered (or was tried last; ``none``: no backend was),
/// and its policy's attempts by backend and reason (none for a single backend).
fn route_dict<'py>(py: Python<'py>, route: &Route) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let backends = PyDict::new(py);
    for (i, stats) in route.stats.iter().enumerate() {
        let outcomes = outcomes_dict(py, stats)?;
        if !outcomes.is_empty() {
            backends.set_item(route.label(i), outcomes)?;
        }
    }
    d.set_item("backends", backends)?;
    let decisions = PyDict::new(py);
    for (i, counts) in route.decisions.iter().enumerate() {
        let by_reason = PyDict::new(py);
        for reason in Reason::ALL {
            let n = counts[reason as usize].load(Ordering::Relaxed);
            if n > 0 {
                by_reason.set_item(reason.as_str(), n)?;
            }
        }
        if !by_reason.is_empty() {
            decisions.set_item(route.target(i), by_reason)?;
        }
    }
    d.set_item("decisions", decisions)?;
    Ok(d)
}

/// A model's outcomes by gRPC code; a phase no request of the outcome had is left out.
fn outcomes_dict<'py>(py: Python<'py>, stats: &ModelStats) -> PyResult<Bound<'py, PyDict>> {
    let outcomes = PyDict::new(py);
    for (code, outcome) in stats.outcomes() {
        let d = PyDict::new(py);
        d.set_item("count", outcome.count.load(Ordering::Relaxed))?;
        let phases = [
            ("decode", &outcome.decode),
            ("queue", &outcome.queue),
            ("backend", &outcome.backend),
            ("total", &outcome.total),
        ];
        let reported = timing::REPORTED.into_iter().zip(&outcome.reported);
        for (phase, histogram) in phases.into_iter().chain(reported) {
            if histogram.snapshot().0.iter().any(|&n| n > 0) {
                d.set_item(phase, histogram_dict(py, histogram)?)?;
            }
        }
        outcomes.set_item(code, d)?;
    }
    Ok(outcomes)
}

fn snapshot_dict<'py>(py: Python<'py>, h: &HistogramSnapshot) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("counts", &h.0)?;
    d.set_item("sum_s", h.1)?;
    Ok(d)
}

fn histogram_dict<'py>(py: Python<'py>, h: &Histogram) -> PyResult<Bound<'py, PyDict>> {
    snapshot_dict(py, &h.snapshot())
}

fn lane_dict<'py>(py: Python<'py>, stats: &LaneStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let requests = PyDict::new(py);
    for (code, n) in stats.statuses().into_iter().enumerate() {
        if n > 0 {
            requests.set_item(code, n)?;
        }
    }
    d.set_item("requests", requests)?;
    d.set_item("total", histogram_dict(py, &stats.total)?)?;
    d.set_item("queue", histogram_dict(py, &stats.queue)?)?;
    d.set_item("backend", histogram_dict(py, &stats.backend)?)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Plane>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
