//! The plane's configuration, given by Python as JSON (docs/native.md). Python validates
//! the gateway's YAML; this is a second, narrower check of what the plane itself needs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `HOST:PORT` to listen on (port 0: any free port, returned by `start`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where every request the plane does not serve itself goes: `HOST:PORT` or
    /// `unix:/path` (h2c). None: such requests get UNIMPLEMENTED.
    #[serde(default)]
    pub python_lane: Option<String>,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Model name -> its route for `ModelInfer`: a backend name or a policy among
    /// native backends.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// The plane's threads: 1 (default) is one thread running every task, the cheapest per
    /// request on a small machine; more is tokio's multi-thread runtime.
    #[serde(default = "default_workers")]
    pub worker_threads: usize,
    /// The gateway's `limits.max_message_bytes`: a larger request message is
    /// RESOURCE_EXHAUSTED before any backend sees it.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Trace every request (Python's SDK is on, or Triton's splits are wanted); off, no
    /// trace header is touched. `Plane.set_trace_all` changes it while running.
    #[serde(default)]
    pub trace_all: bool,
    /// Span records kept for Python to drain (the oldest are dropped past it).
    #[serde(default = "default_max_span_records")]
    pub max_span_records: usize,
    /// Client connections open at once (`listen.max_connections`); more are closed as
    /// they arrive. None: no limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// A connection with no call this long is sent GOAWAY (`listen.idle_timeout_s`).
    #[serde(default)]
    pub idle_timeout_ms: Option<f64>,
    /// The sidecar (`infergw sidecar` on the plane): every call goes to this one upstream
    /// and health is answered natively; no backends, routes or python lane with it.
    #[serde(default)]
    pub sidecar: Option<SidecarConfig>,
    /// TLS only on `listen` (`server_tls.rs`): the certificates come from
    /// `Plane.set_server_tls`, and the plane does not start without them.
    #[serde(default)]
    pub tls: bool,
    /// Natively served calls need an API key (`api_keys.rs`): the digests come from
    /// `Plane.set_api_keys`; none set, none is admitted.
    #[serde(default)]
    pub api_keys: bool,
}

/// The sidecar's upstream and limit (`gateway/sidecar/app.py`'s `SidecarConfig`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// `grpc`: `HOST:PORT` or `unix:/path` of the upstream's gRPC (h2c) endpoint;
    /// `http`: `HOST:PORT` of its REST endpoint (HTTP/1.1).
    pub upstream: String,
    /// The largest request message (gRPC: its declared length) or body (REST) accepted.
    #[serde(default = "default_sidecar_max_message_bytes")]
    pub max_message_bytes: u64,
    /// Which half of the sidecar this plane is: its gRPC port or its REST port.
    #[serde(default)]
    pub protocol: SidecarProtocol,
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SidecarProtocol {
    /// h2c (or h2 over TLS) in and out (`passthrough.rs`).
    #[default]
    Grpc,
    /// HTTP/1.1 in and out (`http_passthrough.rs`).
    Http,
}

/// A model's route: one native backend, or a policy (`gateway/core/routing/config.py`'s
/// keys, narrowed to what the plane serves).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RouteConfig {
    Backend(String),
    Policy(PolicyConfig),
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PolicyConfig {
    /// `[name, weight]` pairs in the config's order (the order breaks ties, as in Python).
    Weighted {
        weights: Vec<(String, u32)>,
    },
    Fallback {
        order: Vec<String>,
    },
    Spillover {
        primary: String,
        overflow: Vec<OverflowConfig>,
        max_queue_wait_ms: f64,
    },
}

/// A spill-over member: a native backend, or one of the python lane's, reached by pinning
/// it with `x-infergw-backend` (the lane then sends it to that backend's own stack).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum OverflowConfig {
    Native(String),
    Lane(String),
}

impl RouteConfig {
    /// The native backends the route names.
    pub fn native_members(&self) -> Vec<&str> {
        match self {
            RouteConfig::Backend(b) => vec![b],
            RouteConfig::Policy(PolicyConfig::Weighted { weights }) => {
                weights.iter().map(|(n, _)| n.as_str()).collect()
            }
            RouteConfig::Policy(PolicyConfig::Fallback { order }) => {
                order.iter().map(String::as_str).collect()
            }
            RouteConfig::Policy(PolicyConfig::Spillover {
                primary, overflow, ..
            }) => std::iter::once(primary.as_str())
                .chain(overflow.iter().filter_map(|o| match o {
                    OverflowConfig::Native(n) => Some(n.as_str()),
                    OverflowConfig::Lane(_) => None,
                }))
                .collect(),
        }
    }

    fn check(&self, model: &str, lane: bool) -> Result<(), String> {
        let bad = |why: String| Err(format!("plane config: routes.{model}: {why}"));
        let members = self.native_members();
        if members.is_empty() {
            return bad("no backends".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = members.iter().find(|m| !seen.insert(**m)) {
            return bad(format!("backend '{twice}' is named more than once"));
        }
        match self {
            RouteConfig::Policy(PolicyConfig::Weighted { weights })
                if weights.iter().all(|(_, w)| *w == 0) =>
            {
                return bad("no backend has a weight > 0".into());
            }
            RouteConfig::Policy(PolicyConfig::Spillover {
                overflow,
                max_queue_wait_ms,
                ..
            }) => {
                if overflow.is_empty() {
                    return bad("spillover needs an overflow backend".into());
                }
                if !max_queue_wait_ms.is_finite() || *max_queue_wait_ms < 0.0 {
                    return bad("max_queue_wait_ms must be >= 0".into());
                }
                let to_lane = overflow
                    .iter()
                    .any(|o| matches!(o, OverflowConfig::Lane(_)));
                if to_lane && !lane {
                    return bad("a lane overflow backend needs python_lane".into());
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// One native backend: a single h2c upstream with the gateway's admission settings
/// (the same names and defaults as `gateway/core/config.py`'s `BackendConfig`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `HOST:PORT` or `unix:/path` of the upstream's gRPC (h2c) endpoint.
    pub address: String,
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: f64,
    /// The per-request backend deadline (the client's, if shorter); null: the client's only.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: Option<f64>,
    /// A backend that scales to zero and reports its own phases (Cloud Run's container):
    /// its trailer's `coldstart`, `backend_queue` and `compute` join the plane's, and its
    /// answers are queued for the gateway's warm-state estimator (`observed.rs`).
    #[serde(default)]
    pub serverless: bool,
    /// TLS to the upstream (`tls.rs`); None: h2c.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The header of a call credential Python keeps fresh (`credential.rs`, Cloud Run's
    /// `authorization` ID token); every call carries it. None: no credential.
    #[serde(default)]
    pub credential_header: Option<String>,
}

/// A backend's TLS, as the Python backend's `tls` (`backends/triton.py` `ClientTls`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) the server's certificate must chain to; None: the system's.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM files of the client's certificate and key (mutual TLS), both or neither.
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    /// The name the server's certificate must carry; None: the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:0".into()
}
fn default_workers() -> usize {
    1
}
fn default_max_span_records() -> usize {
    65536
}
fn default_max_message_bytes() -> usize {
    64 << 20
}
fn default_sidecar_max_message_bytes() -> u64 {
    64 << 20
}
fn default_max_concurrency() -> usize {
    64
}
fn default_max_queue() -> usize {
    256
}
fn default_queue_timeout_ms() -> f64 {
    5000.0
}
fn default_timeout_ms() -> Option<f64> {
    Some(30000.0)
}

pub fn millis(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

impl Config {
    pub fn from_json(text: &str) -> Result<Config, String> {
        let config: Config =
            serde_json::from_str(text).map_err(|e| format!("plane config: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.worker_threads == 0 || self.worker_threads > 64 {
            return Err("plane config: worker_threads must be 1..=64".into());
        }
        if self.max_connections == Some(0) {
            return Err("plane config: max_connections must be >= 1".into());
        }
        if self
            .idle_timeout_ms
            .is_some_and(|t| !t.is_finite() || t <= 0.0)
        {
            return Err("plane config: idle_timeout_ms must be > 0".into());
        }
        for (name, backend) in &self.backends {
            if backend.max_concurrency == 0 {
                return Err(format!(
                    "plane config: backends.{name}.max_concurrency must be >= 1"
                ));
            }
            let times = [Some(backend.queue_timeout_ms), backend.timeout_ms];
            if times.iter().flatten().any(|t| !t.is_finite() || *t < 0.0) {
                return Err(format!(
                    "plane config: backends.{name}: times must be >= 0 ms"
                ));
            }
        }
        if let Some(sidecar) = &self.sidecar {
            if !self.backends.is_empty() || !self.routes.is_empty() || self.python_lane.is_some() {
                return Err(
                    "plane config: a sidecar forwards everything to its upstream: no backends, routes or python_lane with it"
                        .into(),
                );
            }
            if sidecar.max_message_bytes == 0 {
                return Err("plane config: sidecar.max_message_bytes must be >= 1".into());
            }
            if sidecar.protocol == SidecarProtocol::Http && sidecar.upstream.starts_with("unix:") {
                return Err("plane config: a REST sidecar's upstream is HOST:PORT".into());
            }
        }
        for (model, route) in &self.routes {
            route.check(model, self.python_lane.is_some())?;
            for backend in route.native_members() {
                if !self.backends.contains_key(backend) {
                    return Err(format!(
                        "plane config: routes.{model} names backend '{backend}', which is not in backends"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = Config::from_json(
            r#"{"backends": {"triton": {"address": "127.0.0.1:8001"}}, "routes": {"identity": "triton"}}"#,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        let b = &c.backends["triton"];
        assert_eq!((b.max_concurrency, b.max_queue), (64, 256));
        assert_eq!(b.timeout_ms, Some(30000.0));
        assert!(Config::from_json(r#"{"routes": {"m": "nope"}}"#).is_err());
        assert!(Config::from_json(r#"{"bogus": 1}"#).is_err());
        assert!(Config::from_json("not json").is_err());
        let c = Config::from_json(r#"{"backends": {"t": {"address": "x:1", "timeout_ms": null}}}"#);
        assert_eq!(c.unwrap().backends["t"].timeout_ms, None);
    }

    #[test]
    fn policy_routes() {
        let c = Config::from_json(
            r#"{"python_lane": "unix:/l", "backends": {"a": {"address": "x:1"}, "b": {"address": "x:2"}},
                "routes": {"w": {"kind": "weighted", "weights": [["b", 1], ["a", 3]]},
                           "f": {"kind": "fallback", "order": ["a", "b"]},
                           "s": {"kind": "spillover", "primary": "a", "max_queue_wait_ms": 5,
                                 "overflow": [{"native": "b"}, {"lane": "lambda"}]},
                           "p": "a"}}"#,
        )
        .unwrap();
        assert_eq!(c.routes["w"].native_members(), ["b", "a"]);
        assert_eq!(c.routes["s"].native_members(), ["a", "b"]);
        assert_eq!(c.routes["p"], RouteConfig::Backend("a".into()));
        let backends = r#""backends": {"a": {"address": "x:1"}, "b": {"address": "x:2"}}"#;
        for bad in [
            r#""routes": {"w": {"kind": "weighted", "weights": [["a", 0]]}}"#,
            r#""routes": {"f": {"kind": "fallback", "order": ["a", "a"]}}"#,
            r#""routes": {"f": {"kind": "fallback", "order": ["a", "nope"]}}"#,
            r#""routes": {"f": {"kind": "hedge", "backends": ["a", "b"]}}"#,
            r#""routes": {"f": {"kind": "fallback", "order": ["a"], "bogus": 1}}"#,
            r#""routes": {"s": {"kind": "spillover", "primary": "a", "max_queue_wait_ms": 5, "overflow": [{"lane": "l"}]}}"#,
            r#""routes": {"s": {"kind": "spillover", "primary": "a", "max_queue_wait_ms": -1, "overflow": [{"native": "b"}]}}"#,
        ] {
            assert!(
                Config::from_json(&format!("{{{backends}, {bad}}}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn sidecar_section() {
        let c = Config::from_json(r#"{"sidecar": {"upstream": "127.0.0.1:8001"}}"#).unwrap();
        let s = c.sidecar.unwrap();
        assert_eq!(
            (s.upstream.as_str(), s.max_message_bytes, s.protocol),
            ("127.0.0.1:8001", 64 << 20, SidecarProtocol::Grpc)
        );
        let c = Config::from_json(r#"{"sidecar": {"upstream": "x:8000", "protocol": "http"}}"#);
        assert_eq!(c.unwrap().sidecar.unwrap().protocol, SidecarProtocol::Http);
        for bad in [
            r#"{"sidecar": {"upstream": "x:1"}, "python_lane": "y:2"}"#,
            r#"{"sidecar": {"upstream": "x:1"}, "backends": {"t": {"address": "x:1"}}}"#,
            r#"{"sidecar": {"upstream": "x:1", "max_message_bytes": 0}}"#,
            r#"{"sidecar": {"upstream": "x:1", "bogus": 1}}"#,
            r#"{"sidecar": {}}"#,
            r#"{"sidecar": {"upstream": "x:1", "protocol": "h3"}}"#,
            r#"{"sidecar": {"upstream": "unix:/x", "protocol": "http"}}"#,
        ] {
            assert!(Config::from_json(bad).is_err(), "{bad}");
        }
    }
}
