//! Client connections and their limits, as the gateway's gRPC port has them (`listen`),
//! for a port speaking HTTP/2 (gRPC) or HTTP/1.1 (the sidecar's REST half):
//! at most `max_connections` at once (one more is closed as it arrives, so its client
//! sees UNAVAILABLE), a connection with no call for `idle_timeout` is sent GOAWAY (its
//! client reconnects on its next call; HTTP/1.1: it is closed), and on stop every
//! connection is sent GOAWAY (HTTP/1.1: closed once its request in flight is answered)
//! and given the grace period to finish its calls.
//!
//! A call is in flight from its request to the end of its response body (a stream
//! included), so a connection carrying a long stream is never idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::server_tls::{Alpn, ServerTls, HANDSHAKE_TIMEOUT};
use crate::upstream::{Body, BoxError};

/// The `listen` settings of the gateway's gRPC port: its limits (None: no limit), and
/// its certificates (None: h2c).
#[derive(Clone, Default)]
pub struct Limits {
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<Duration>,
    pub tls: Option<Arc<ServerTls>>,
}

/// What a port speaks, with hyper's settings for its connections.
#[derive(Clone)]
pub enum Protocol {
    Http2(http2::Builder<TokioExecutor>),
    Http1(http1::Builder),
}

impl Protocol {
    /// HTTP/1.1 with keep-alive; a connection that has not sent a whole request head
    /// `header_timeout` after it became idle is closed (hyper's `header_read_timeout`).
    /// The case of header names is kept (HTTP says it does not matter; a proxy in front
    /// of a server that thinks otherwise should not be the one to change it).
    pub fn http1(header_timeout: Duration) -> Protocol {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .preserve_header_case(true)
            .keep_alive(true);
        Protocol::Http1(builder)
    }

    fn alpn(&self) -> Alpn {
        match self {
            Protocol::Http2(_) => Alpn::H2,
            Protocol::Http1(_) => Alpn::Http11,
        }
    }
}

/// Calls in flight on one connection, and when the last one ended.
struct Activity {
    active: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    /// How long the connection has had no call (zero while one is in flight).
    fn idle_for(&self) -> Duration {
        if self.active.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .map_or(Duration::ZERO, |last| last.elapsed())
    }
}

/// Held by a call until its response body ends (or is dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> InFlight {
        activity.active.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut last) = self.0.last.lock() {
            *last = Instant::now();
        }
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its call in flight.
pub struct Tracked {
    inner: Body,
    _call: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Accepts connections until `stop` says how long the last ones may take, serving each
/// with `protocol` and `handle`; returns once every connection closed or the grace ended.
pub async fn serve<H, F>(
    listener: TcpListener,
    protocol: Protocol,
    limits: Limits,
    handle: H,
    stop: tokio::sync::oneshot::Receiver<Duration>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (closing, closing_rx) = watch::channel(false);
    // Every connection task holds a sender: the channel closes when the last one ends.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::pin!(stop);
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: wait, do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if limits.max_connections.is_some_and(|max| count.load(Ordering::Acquire) >= max) {
                    drop(stream); // refused: the client sees the connection closed
                    continue;
                }
                count.fetch_add(1, Ordering::AcqRel);
                let connection = Connection {
                    _open: open.clone(),
                };
                let serving = Serving {
                    slot: Some(Slot(count.clone())),
                    protocol: protocol.clone(),
                    idle: limits.idle_timeout,
                    handle: handle.clone(),
                    closing: closing_rx.clone(),
                };
                // TLS on: never plaintext (`start` refuses to serve before a first set).
                let acceptor = match &limits.tls {
                    None => None,
                    Some(tls) => match tls.acceptor(protocol.alpn()) {
                        Some(acceptor) => Some(acceptor),
                        None => continue,
                    },
                };
                tokio::spawn(connection.run(stream, acceptor, serving));
            }
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
        }
    };
    drop(listener); // no new connections from here on
    let _ = closing.send(true);
    drop(open);
    let _ = tokio::time::timeout(grace, all_closed.recv()).await;
}

/// One client connection's task (the drain waits for the last one to end).
struct Connection {
    _open: mpsc::Sender<()>,
}

/// A connection's place in the `max_connections` count: released when its task ends, or
/// as soon as it is sent GOAWAY for idleness, so that its client's reconnect is not
/// refused while the old connection finishes closing.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a connection is served once its bytes are HTTP (after any TLS handshake).
struct Serving<H> {
    slot: Option<Slot>,
    protocol: Protocol,
    idle: Option<Duration>,
    handle: H,
    closing: watch::Receiver<bool>,
}

impl Connection {
    /// The TLS handshake first with an `acceptor` (at most `HANDSHAKE_TIMEOUT`; a failed
    /// one closes the connection), then the connection's calls.
    async fn run<H, F>(self, stream: TcpStream, acceptor: Option<TlsAcceptor>, serving: Serving<H>)
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let _ = stream.set_nodelay(true);
        match acceptor {
            None => serving.serve(stream).await,
            Some(acceptor) => {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                if let Ok(Ok(stream)) = handshake.await {
                    serving.serve(stream).await;
                }
            }
        }
        drop(self);
    }
}

impl<H, F> Serving<H>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Serving {
            slot,
            protocol,
            idle,
            handle,
            closing,
        } = self;
        let activity = Arc::new(Activity {
            active: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        });
        let calls = activity.clone();
        let service = service_fn(move |request| {
            let call = InFlight::new(&calls);
            let response = handle(request);
            async move {
                let response = response.await;
                Ok::<_, std::convert::Infallible>(
                    response.map(|inner| Tracked { inner, _call: call }),
                )
            }
        });
        let io = TokioIo::new(io);
        match protocol {
            Protocol::Http2(builder) => {
                let connection = builder.serve_connection(io, service);
                drive(connection, idle, &activity, closing, slot).await;
            }
            Protocol::Http1(builder) => {
                let connection = builder.serve_connection(io, service);
                drive(connection, idle, &activity, closing, slot).await;
            }
        }
    }
}

/// Runs `connection` to its end: shut down gracefully when the port closes or the
/// connection has been idle for `idle` (which gives up its `slot` at once).
async fn drive<C: GracefulConnection>(
    connection: C,
    idle: Option<Duration>,
    activity: &Activity,
    mut closing: watch::Receiver<bool>,
    mut slot: Option<Slot>,
) {
    tokio::pin!(connection);
    // One timer per connection (none per call): it wakes when the connection would
    // have been idle for `idle`, and is pushed back while calls keep it busy.
    let check = tokio::time::sleep(idle.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(check);
    let mut shutting = *closing.borrow();
    if shutting {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            _ = connection.as_mut() => break,
            changed = closing.changed(), if !shutting => {
                if changed.is_err() || *closing.borrow() {
                    connection.as_mut().graceful_shutdown();
                    shutting = true;
                }
            }
            () = &mut check, if idle.is_some() && !shutting => {
                let idle = idle.unwrap_or_default();
                let idle_for = activity.idle_for();
                if idle_for >= idle {
                    connection.as_mut().graceful_shutdown(); // GOAWAY: the client reconnects
                    shutting = true;
                    drop(slot.take());
                } else {
                    check.as_mut().reset(Instant::now() + (idle - idle_for));
                }
            }
        }
    }
}
