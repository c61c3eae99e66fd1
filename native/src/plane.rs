//! The plane: a tokio runtime on its own threads, a listener, one server connection per
//! client connection (`connections.rs`: limits, idle GOAWAY), HTTP/2 but for the REST
//! sidecar's HTTP/1.1; stopped by draining
//! (GOAWAY to every client, in-flight requests finish) for at most a grace period, then
//! closing everything.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api_keys::ApiKeys;
use crate::config::{millis, Config, SidecarProtocol};
use crate::connections::{self, Limits, Protocol};
use crate::credential::Credentials;
use crate::forward::{self, Shared};
use crate::health::Health;
use crate::http_passthrough::{self, HttpSidecar};
use crate::passthrough::{self, Sidecar};
use crate::server_tls::{Alpn, ServerTls};
use crate::sidecar_stats::Counted;
use crate::upstream::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};

pub struct Running {
    stop: Option<oneshot::Sender<Duration>>,
    serving: Option<Serving>,
    pub port: u16,
    pub shared: Arc<Shared>,
    /// Set when the plane is a sidecar (`config.sidecar`): its gRPC or its REST half.
    pub sidecar: Option<Arc<dyn Counted>>,
}

/// What Python keeps for the plane across its starts, and sets before one: the sidecar's
/// `grpc.health.v1` statuses, the backends' call credentials (`credential.rs`), the port's
/// certificates (`server_tls.rs`) and the API keys' digests (`api_keys.rs`).
#[derive(Default)]
pub struct Held {
    pub health: Arc<Health>,
    pub credentials: Credentials,
    pub tls: Arc<ServerTls>,
    pub api_keys: Arc<ApiKeys>,
}

/// What answers a request: the gateway's forwarding (native routes + python lane) or
/// the sidecar's passthrough, gRPC or REST.
#[derive(Clone)]
enum Handler {
    Gateway(Arc<Shared>),
    Sidecar(Arc<Sidecar>),
    HttpSidecar(Arc<HttpSidecar>),
}

/// Serves `handed` (the listener Python bound, `handover.rs`), else binds `config.listen`,
/// on a new runtime; returns once the port is bound.
///
/// One worker thread (`worker_threads: 1`) is a current-thread runtime on a thread of its
/// own: every task of a request (the client's connection, the upstream's) runs on it, so
/// no request pays for waking another thread. More workers: tokio's multi-thread runtime.
/// With `config.tls` it serves TLS only, and does not start before `held.tls` has
/// certificates; with `config.api_keys` natively served calls need a key.
pub fn start(
    config: &Config,
    held: &Held,
    handed: Option<std::net::TcpListener>,
) -> Result<Running, String> {
    let tls = match config.tls {
        true if held.tls.acceptor(Alpn::H2).is_none() => {
            return Err("tls is on and no certificate was set (set_server_tls)".into())
        }
        true => Some(held.tls.clone()),
        false => None,
    };
    let keys = config.api_keys.then(|| held.api_keys.clone());
    let shared = Arc::new(
        Shared::new(config, &held.credentials, keys).map_err(|e| format!("plane config: {e}"))?,
    );
    let (handler, sidecar): (Handler, Option<Arc<dyn Counted>>) = match &config.sidecar {
        None => (Handler::Gateway(shared.clone()), None),
        Some(s) if s.protocol == SidecarProtocol::Http => {
            let side = Arc::new(HttpSidecar::new(s, shared.tracer.clone()));
            (Handler::HttpSidecar(side.clone()), Some(side))
        }
        Some(s) => {
            let side = Arc::new(Sidecar::new(s, held.health.clone(), shared.tracer.clone()));
            (Handler::Sidecar(side.clone()), Some(side))
        }
    };
    let runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .thread_name("infergw-native")
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .thread_name("infergw-native")
            .enable_all()
            .build()
    }
    .map_err(|e| format!("plane runtime: {e}"))?;
    let listener = match handed {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(&config.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| format!("plane cannot listen on {}: {e}", config.listen))?,
    };
    let port = listener
        .local_addr()
        .map_err(|e| format!("plane listener: {e}"))?
        .port();
    let limits = Limits {
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout_ms.map(millis),
        tls,
    };
    let (stop, stopped) = oneshot::channel();
    let serving = if config.worker_threads == 1 {
        let handler = handler.clone();
        let thread = std::thread::Builder::new()
            .name("infergw-native".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = TcpListener::from_std(listener) {
                        serve(listener, handler, limits, stopped).await;
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(500));
            })
            .map_err(|e| format!("plane thread: {e}"))?;
        Serving::Thread(thread)
    } else {
        let _entered = runtime.enter();
        let listener =
            TcpListener::from_std(listener).map_err(|e| format!("plane listener: {e}"))?;
        let task = runtime.spawn(serve(listener, handler, limits, stopped));
        Serving::Runtime(runtime, task)
    };
    Ok(Running {
        serving: Some(serving),
        stop: Some(stop),
        port,
        shared,
        sidecar,
    })
}

enum Serving {
    /// A current-thread runtime, driven by its own thread until the plane stops.
    Thread(std::thread::JoinHandle<()>),
    /// A multi-thread runtime and the accept loop's task.
    Runtime(Runtime, JoinHandle<()>),
}

/// How long an idle HTTP/1.1 connection may wait for its next request head (aiohttp's
/// `keepalive_timeout`, which the Python REST half has).
const HTTP1_HEADER_TIMEOUT: Duration = Duration::from_secs(75);

async fn serve(
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
    stop: oneshot::Receiver<Duration>,
) {
    let protocol = match handler {
        Handler::HttpSidecar(_) => Protocol::http1(HTTP1_HEADER_TIMEOUT),
        Handler::Gateway(_) | Handler::Sidecar(_) => {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .max_concurrent_streams(1024);
            Protocol::Http2(builder)
        }
    };
    let handle = move |request| {
        let handler = handler.clone();
        async move {
            let answered = match handler {
                Handler::Gateway(shared) => forward::handle(shared, request).await,
                Handler::Sidecar(sidecar) => passthrough::handle(sidecar, request).await,
                Handler::HttpSidecar(side) => http_passthrough::handle(side, request).await,
            };
            match answered {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    };
    connections::serve(listener, protocol, limits, handle, stop).await;
}

impl Running {
    /// Drains for at most `grace`, then closes every connection and the runtime's threads.
    /// Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        match self.serving.take() {
            Some(Serving::Thread(thread)) => {
                let _ = thread.join();
            }
            Some(Serving::Runtime(runtime, task)) => {
                let _ = runtime.block_on(task);
                runtime.shutdown_timeout(Duration::from_millis(500));
            }
            None => {}
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}
