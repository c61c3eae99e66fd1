//! The sidecar's counters, in the shape of the Python sidecar's metrics
//! (`gateway/sidecar/metrics.py`): every call by method and final status, and for
//! inference calls the per-phase histograms by model, protocol and status. Model names
//! come from clients, so one becomes a label only once the upstream has answered OK for
//! it, up to `MAX_MODEL_LABELS`; until then it is `_other` (the Python rule). Method
//! names come from clients too: at most `MAX_METHODS` of them, the rest `_other`.
//!
//! The status of a call is its gRPC code (the gRPC half) or its HTTP status (the REST
//! half, `http_passthrough.rs`); Python turns either into the label the Python sidecar
//! gives, by its one table.
//!
//! One mutex, taken once per call at its end (uncontended: the plane runs on one thread
//! by default); Python reads a snapshot at scrape time.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::stats::Histogram;

pub const OTHER: &str = "_other";
pub const MAX_MODEL_LABELS: usize = 1000;
pub const MAX_METHODS: usize = 1024;
/// The phases the sidecar measures, in `server-timing` order.
pub const PHASES: [&str; 3] = ["decode", "backend", "total"];

/// One finished call.
pub struct Outcome<'a> {
    pub method: &'a str,
    /// A gRPC code or an HTTP status.
    pub status: u16,
    /// Answered as asked (gRPC OK, HTTP below 400): the model has become a label.
    pub ok: bool,
    /// `Some((protocol, model))` for an inference method (model: as read, if it was).
    pub inference: Option<(&'static str, Option<&'a str>)>,
    /// Durations of `PHASES`, those measured.
    pub phases: [Option<Duration>; 3],
}

#[derive(Default)]
struct Phases {
    requests: u64,
    histograms: [Histogram; 3],
}

#[derive(Default)]
struct Inner {
    /// Per method, its calls by status (a handful each: a short list beats a map).
    methods: HashMap<String, Vec<(u16, u64)>>,
    inference: HashMap<(String, &'static str, u16), Phases>,
    models: HashSet<String>,
}

#[derive(Default)]
pub struct SidecarStats(Mutex<Inner>);

/// A sidecar half as Python's scrape reads it: its upstream and its counters.
pub trait Counted: Send + Sync {
    fn upstream(&self) -> &str;
    fn stats(&self) -> &SidecarStats;
}

/// A histogram read out: counts per bucket (the last +Inf) and the sum in seconds.
pub type HistogramSnapshot = (Vec<u64>, f64);

/// One inference label set read out.
pub struct InferenceRow {
    pub model: String,
    pub protocol: &'static str,
    pub status: u16,
    pub requests: u64,
    /// `(phase, histogram)` for the phases observed at least once.
    pub phases: Vec<(&'static str, HistogramSnapshot)>,
}

pub struct Snapshot {
    /// `(method, [(status, count)])`, statuses in order.
    pub methods: Vec<(String, Vec<(u16, u64)>)>,
    pub inference: Vec<InferenceRow>,
}

impl SidecarStats {
    pub fn record(&self, outcome: &Outcome<'_>) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Inner {
            methods,
            inference,
            models,
        } = &mut *inner;
        let counts = match methods.get_mut(outcome.method) {
            Some(counts) => counts,
            None => {
                let key = if methods.len() < MAX_METHODS {
                    outcome.method
                } else {
                    OTHER
                };
                methods.entry(key.to_owned()).or_default()
            }
        };
        match counts
            .iter_mut()
            .find(|(status, _)| *status == outcome.status)
        {
            Some((_, n)) => *n += 1,
            None => counts.push((outcome.status, 1)),
        }
        let Some((protocol, model)) = outcome.inference else {
            return;
        };
        let label = model_label(models, model, outcome.ok);
        let phases = inference
            .entry((label, protocol, outcome.status))
            .or_default();
        phases.requests += 1;
        for (histogram, duration) in phases.histograms.iter().zip(outcome.phases) {
            if let Some(duration) = duration {
                histogram.observe(duration);
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let methods = inner
            .methods
            .iter()
            .map(|(method, counts)| {
                let mut by_status = counts.clone();
                by_status.sort_unstable();
                (method.clone(), by_status)
            })
            .collect();
        let inference = inner
            .inference
            .iter()
            .map(|((model, protocol, status), p)| InferenceRow {
                model: model.clone(),
                protocol,
                status: *status,
                requests: p.requests,
                phases: PHASES
                    .iter()
                    .zip(&p.histograms)
                    .map(|(&name, h)| (name, h.snapshot()))
                    .filter(|(_, (counts, _))| counts.iter().any(|&n| n > 0))
                    .collect(),
            })
            .collect();
        Snapshot { methods, inference }
    }
}

/// The Python sidecar's rule: a model is its own label once it has answered OK.
fn model_label(models: &mut HashSet<String>, model: Option<&str>, ok: bool) -> String {
    match model {
        Some(m) if !m.is_empty() => {
            if models.contains(m) {
                m.to_owned()
            } else if ok && models.len() < MAX_MODEL_LABELS {
                models.insert(m.to_owned());
                m.to_owned()
            } else {
                OTHER.to_owned()
            }
        }
        _ => OTHER.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: u16 = 0;

    fn infer<'a>(model: Option<&'a str>, code: u16) -> Outcome<'a> {
        Outcome {
            method: "/inference.GRPCInferenceService/ModelInfer",
            status: code,
            ok: code == OK,
            inference: Some(("grpc", model)),
            phases: [
                None,
                Some(Duration::from_micros(500)),
                Some(Duration::from_millis(1)),
            ],
        }
    }

    #[test]
    fn labels_follow_the_python_rule() {
        let stats = SidecarStats::default();
        stats.record(&infer(Some("identity"), 5)); // not found yet: _other
        stats.record(&infer(Some("identity"), OK)); // now a label
        stats.record(&infer(Some("identity"), 5)); // and it stays one
        stats.record(&infer(None, OK));
        let snap = stats.snapshot();
        let mut rows: Vec<_> = snap
            .inference
            .iter()
            .map(|r| (r.model.as_str(), r.status, r.requests))
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            vec![
                ("_other", 0, 1),
                ("_other", 5, 1),
                ("identity", 0, 1),
                ("identity", 5, 1)
            ]
        );
        let phases: Vec<_> = snap.inference[0].phases.iter().map(|p| p.0).collect();
        assert_eq!(phases, vec!["backend", "total"]); // decode never measured
        assert_eq!(snap.methods.len(), 1);
        assert_eq!(snap.methods[0].1, vec![(0, 2), (5, 2)]);
    }

    #[test]
    fn method_names_are_bounded() {
        let stats = SidecarStats::default();
        for i in 0..MAX_METHODS + 10 {
            let method = format!("/x.Y/M{i}");
            stats.record(&Outcome {
                method: &method,
                status: 12,
                ok: false,
                inference: None,
                phases: [None; 3],
            });
        }
        let snap = stats.snapshot();
        assert_eq!(snap.methods.len(), MAX_METHODS + 1);
        let other = snap.methods.iter().find(|m| m.0 == OTHER).unwrap();
        assert_eq!(other.1, vec![(12, 10)]);
    }
}
