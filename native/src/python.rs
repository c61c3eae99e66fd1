//! The Python surface, `infergw._native`: one class, `Plane`. Its methods release the GIL
//! while they wait; the plane's threads never take it.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::config::Config;
use crate::forward::Shared;
use crate::plane::{self, Running};
use crate::stats::{Histogram, LaneStats, BUCKETS_S};

/// The native data plane. ``Plane(config_json)``; ``start() -> port``; ``stop(grace_s)``;
/// ``stats() -> dict``.
#[pyclass(module = "infergw._native", frozen)]
struct Plane {
    config: Config,
    running: Mutex<Option<Running>>,
    /// The counters of the last start (kept after stop, for a final scrape).
    last: Mutex<Option<std::sync::Arc<Shared>>>,
}

#[pymethods]
impl Plane {
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        let config = Config::from_json(config_json).map_err(PyValueError::new_err)?;
        Ok(Plane {
            config,
            running: Mutex::new(None),
            last: Mutex::new(None),
        })
    }

    /// Binds and starts serving on the plane's own threads; the bound port. A second call
    /// while running returns the same port.
    fn start(&self, py: Python<'_>) -> PyResult<u16> {
        py.detach(|| {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(running) = running.as_ref() {
                return Ok(running.port);
            }
            let started = plane::start(&self.config).map_err(PyOSError::new_err)?;
            let port = started.port;
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(started.shared.clone());
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

    /// The bound port while running, else None.
    #[getter]
    fn port(&self) -> Option<u16> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.as_ref().map(|r| r.port)
    }

    /// Counters since the last start: ``{"bounds_s": [...], "backends": {name: lane},
    /// "python_lane": lane | None}``; a lane is ``{"requests": {grpc code: n}, "total",
    /// "queue", "backend": {"counts": [...], "sum_s": s}}`` (histogram counts per bucket,
    /// the last one +Inf), and a backend adds ``address``, ``in_flight`` and ``queued``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        out.set_item("bounds_s", BUCKETS_S.to_vec())?;
        let backends = PyDict::new(py);
        let mut lane = None;
        let shared = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(shared) = shared {
            for backend in &shared.backends {
                let d = lane_dict(py, &backend.stats)?;
                d.set_item("address", &backend.upstream.address)?;
                d.set_item("in_flight", backend.admission.in_flight())?;
                d.set_item("queued", backend.admission.queued())?;
                backends.set_item(&backend.name, d)?;
            }
            if let Some(l) = &shared.lane {
                let d = lane_dict(py, &l.stats)?;
                d.set_item("address", &l.upstream.address)?;
                lane = Some(d);
            }
        }
        out.set_item("backends", backends)?;
        out.set_item("python_lane", lane)?;
        Ok(out)
    }
}

fn histogram_dict<'py>(py: Python<'py>, h: &Histogram) -> PyResult<Bound<'py, PyDict>> {
    let (counts, sum) = h.snapshot();
    let d = PyDict::new(py);
    d.set_item("counts", counts)?;
    d.set_item("sum_s", sum)?;
    Ok(d)
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
