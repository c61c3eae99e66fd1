//! h2c connections to an upstream (a native backend or the python lane): one shared
//! HTTP/2 connection per upstream, multiplexing every request, reopened when it closes.
//! An address is `HOST:PORT` (TCP, no Nagle) or `unix:/path`.
//!
//! The client side is the `h2` crate itself rather than hyper's client: hyper sends a
//! request's HEADERS from the calling task and pipes its body from a task of its own, so
//! the connection flushes them in two writes and the backend wakes twice for a unary call.
//! `send` queues the headers and every body frame already in hand before it yields, so
//! they leave in one write; only a body still arriving is piped, with h2's flow control.

use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Request, Response};
use http_body::{Body as _, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::TlsConfig;
use crate::tls::Tls;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Flow-control windows large enough that a 5 MB message is not held back by
/// WINDOW_UPDATE round trips (shared with the server side in `plane.rs`).
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Body bytes `send` queues before its first yield; more waits for h2's send capacity.
const SEND_AT_ONCE: usize = 1 << 20;

#[derive(Debug, Clone)]
enum Addr {
    Tcp(String),
    Unix(PathBuf),
}

pub struct Upstream {
    pub address: String,
    addr: Addr,
    /// The `:authority` sent upstream.
    pub authority: String,
    /// TLS over the TCP connection (`tls.rs`); None: h2c.
    tls: Option<Tls>,
    conn: Mutex<Option<Connection>>,
}

/// Why `Upstream::send` got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection: the message names the address and why (unreachable, timed out, or
    /// the h2 handshake failed).
    Connect(String),
    /// The call failed on its connection: refused, reset, or the connection broke.
    Call(h2::Error),
}

/// A sender on one upstream connection, and whether that connection has ended.
#[derive(Clone)]
struct Connection {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Upstream {
    /// h2c to `address`.
    pub fn new(address: &str) -> Upstream {
        let (addr, authority) = match address.strip_prefix("unix:") {
            Some(path) => (Addr::Unix(PathBuf::from(path)), "localhost".to_owned()),
            None => (Addr::Tcp(address.to_owned()), address.to_owned()),
        };
        Upstream {
            address: address.to_owned(),
            addr,
            authority,
            tls: None,
            conn: Mutex::new(None),
        }
    }

    /// HTTP/2 over TLS to `address` (`HOST:PORT`) as `config` says; the error names a
    /// file that cannot be read, or a bad name.
    pub fn with_tls(address: &str, config: &TlsConfig) -> Result<Upstream, String> {
        let Some((host, _)) = address.rsplit_once(':') else {
            return Err(format!("tls needs a HOST:PORT address, not {address:?}"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Upstream {
            tls: Some(Tls::new(config, host)?),
            ..Upstream::new(address)
        })
    }

    /// The `:scheme` of its calls.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Sends `request` and waits for the response's headers. The headers and the body
    /// frames already in hand are queued before the first yield (one write, see the module
    /// doc); a body still arriving is piped by a task of its own. A request body that fails
    /// resets the upstream stream, so the backend sees the call end.
    ///
    /// A shared connection found unusable before anything was sent (the upstream's GOAWAY
    /// came, or it broke) is replaced, and the request goes once more on the new one: it
    /// never left, and h2 keeps a connection that said GOAWAY open while a sender exists.
    pub async fn send(
        &self,
        request: Request<Body>,
        deadline: Option<Instant>,
    ) -> Result<Response<Reply>, SendError> {
        let (parts, mut body) = request.into_parts();
        let ends = body.is_end_stream();
        let mut sender = loop {
            let (connection, fresh) = self.connection(deadline).await?;
            match connection.sender.clone().ready().await {
                Ok(sender) => break sender,
                Err(e) => {
                    // A connection-level error: nothing of this request was sent.
                    connection.closed.store(true, Ordering::Release);
                    if fresh {
                        return Err(SendError::Call(e));
                    }
                }
            }
        };
        // An error here is this request's own (its headers, say): the connection stays.
        let (response, mut stream) = sender
            .send_request(Request::from_parts(parts, ()), ends)
            .map_err(SendError::Call)?;
        if !ends && !send_ready_frames(&mut body, &mut stream) {
            tokio::spawn(pipe(body, stream));
        }
        match response.await {
            Ok(response) => Ok(response.map(Reply::new)),
            Err(e) => Err(SendError::Call(e)),
        }
    }

    /// The shared connection, and whether it was opened for this call; connects first if
    /// there is none (bounded by `deadline` and a connect timeout).
    async fn connection(&self, deadline: Option<Instant>) -> Result<(Connection, bool), SendError> {
        let mut conn = self.conn.lock().await;
        if let Some(open) = conn.as_ref() {
            if !open.closed.load(Ordering::Acquire) {
                return Ok((open.clone(), false));
            }
        }
        *conn = None;
        let limit = Instant::now() + CONNECT_TIMEOUT;
        let limit = deadline.map_or(limit, |d| d.min(limit));
        let opened = tokio::time::timeout_at(limit, self.connect())
            .await
            .map_err(|_| format!("connecting to {} timed out", self.address))
            .and_then(|connected| connected)
            .map_err(SendError::Connect)?;
        *conn = Some(opened.clone());
        Ok((opened, true))
    }

    async fn connect(&self) -> Result<Connection, String> {
        let unreachable = |e: std::io::Error| format!("upstream {} unreachable: {e}", self.address);
        match &self.addr {
            Addr::Tcp(hostport) => {
                // An IP address connects without a resolver thread; a name is looked up.
                let stream = match hostport.parse::<std::net::SocketAddr>() {
                    Ok(addr) => tokio::net::TcpStream::connect(addr).await,
                    Err(_) => tokio::net::TcpStream::connect(hostport.as_str()).await,
                }
                .map_err(unreachable)?;
                let _ = stream.set_nodelay(true);
                match &self.tls {
                    Some(tls) => {
                        let stream = tls.connect(stream).await.map_err(|e| {
                            format!("TLS handshake with {} failed: {e}", self.address)
                        })?;
                        self.handshake(stream).await
                    }
                    None => self.handshake(stream).await,
                }
            }
            Addr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?;
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<Connection, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| format!("h2 handshake with {} failed: {e}", self.address))?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            let _ = connection.await;
            ended.store(true, Ordering::Release);
        });
        Ok(Connection { sender, closed })
    }
}

/// Sends the body frames that are ready now (up to `SEND_AT_ONCE` bytes); `true` when the
/// body is over (sent whole, or failed and the stream reset).
fn send_ready_frames(body: &mut Body, stream: &mut SendStream<Bytes>) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut sent = 0;
    while sent < SEND_AT_ONCE {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Pending => return false,
            Poll::Ready(frame) => {
                sent += frame.as_ref().map_or(0, |f| match f {
                    Ok(f) => f.data_ref().map_or(0, Bytes::len),
                    Err(_) => 0,
                });
                if send_frame(frame, body.is_end_stream(), stream) {
                    return true;
                }
            }
        }
    }
    false
}

/// Sends one polled frame; `true` when the body is over (sent whole, failed and the
/// stream reset, or the stream already gone).
fn send_frame(
    frame: Option<Result<Frame<Bytes>, BoxError>>,
    last: bool,
    stream: &mut SendStream<Bytes>,
) -> bool {
    let sent = match frame {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => stream.send_data(data, last).map(|()| last),
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => stream.send_trailers(trailers).map(|()| true),
                Err(_) => Ok(false), // a frame kind h2 has no use for
            },
        },
        None => stream.send_data(Bytes::new(), true).map(|()| true),
        Some(Err(_)) => {
            stream.send_reset(Reason::CANCEL);
            Ok(true)
        }
    };
    sent.unwrap_or(true) // an error: the stream is gone (reset by the upstream)
}

/// The rest of a request body, sent as it arrives and as fast as the upstream's window
/// lets it (one chunk beyond, as hyper does); stops when the upstream resets the stream.
async fn pipe(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        stream.reserve_capacity(1);
        if stream.capacity() == 0 {
            let room = poll_fn(|cx| loop {
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(0)) => continue,
                    Some(Ok(_)) => return Poll::Ready(true),
                    Some(Err(_)) | None => return Poll::Ready(false),
                }
            });
            if !room.await {
                return;
            }
        }
        let frame = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        });
        let Some(frame) = frame.await else {
            return; // the upstream reset the stream: nothing more to send
        };
        if send_frame(frame, body.is_end_stream(), &mut stream) {
            return;
        }
    }
}

/// An upstream response's body: its DATA (each chunk's window handed back as it is
/// read), then its trailers. Dropped early, with the request side done, h2 resets the
/// stream with CANCEL: the backend sees the cancel.
pub struct Reply {
    recv: RecvStream,
    data_done: bool,
    done: bool,
}

impl Reply {
    fn new(recv: RecvStream) -> Reply {
        let done = recv.is_end_stream();
        Reply {
            recv,
            data_done: done,
            done,
        }
    }
}

impl http_body::Body for Reply {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers: Result<Option<HeaderMap>, h2::Error> = ready!(this.recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(trailers.map(|t| t.map(Frame::trailers)).transpose())
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::channel::Channel;
    use http_body_util::{BodyExt, Full};
    use hyper::server::conn::http2 as server;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::sync::mpsc;

    use super::*;

    /// A real h2c server on 127.0.0.1:0 answering each request with the bytes it received
    /// and, in trailer `x-ended`, how the request body ended: `end`, `trailers` or `error`
    /// (also sent to `seen`).
    async fn echo_server(seen: mpsc::UnboundedSender<&'static str>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (io, _) = listener.accept().await.unwrap();
            let echo =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let mut body = request.into_body();
                        let (mut got, mut ended) = (Vec::new(), "end");
                        while let Some(frame) = body.frame().await {
                            match frame.map(|f| f.into_data()) {
                                Ok(Ok(data)) => got.extend_from_slice(&data),
                                Ok(Err(_)) => ended = "trailers",
                                Err(_) => {
                                    ended = "error";
                                    break;
                                }
                            }
                        }
                        let _ = seen.send(ended);
                        let mut trailers = HeaderMap::new();
                        trailers.insert("x-ended", ended.parse().unwrap());
                        let reply = Full::new(Bytes::from(got))
                            .map_err(|never: Infallible| match never {})
                            .with_trailers(async { Some(Ok::<_, Infallible>(trailers)) });
                        Ok::<_, Infallible>(Response::new(reply))
                    }
                });
            let _ = server::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), echo)
                .await;
        });
        Upstream::new(&address)
    }

    fn request(body: Body) -> Request<Body> {
        let mut request = Request::new(body);
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = "http://upstream/echo".parse().unwrap();
        request
    }

    async fn reply_of(upstream: &Upstream, body: Body) -> Result<(Vec<u8>, String), h2::Error> {
        let reply = match upstream.send(request(body), None).await {
            Ok(response) => response.into_body(),
            Err(SendError::Call(e)) => return Err(e),
            Err(SendError::Connect(e)) => panic!("{e}"),
        };
        let collected = reply.collect().await?;
        let ended = collected.trailers().and_then(|t| t.get("x-ended")).cloned();
        let ended = ended
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok((collected.to_bytes().to_vec(), ended))
    }

    #[tokio::test]
    async fn a_body_in_hand_and_the_replys_trailers_go_through() {
        let (seen, _) = mpsc::unbounded_channel();
        let upstream = echo_server(seen).await;
        let body = Full::new(Bytes::from_static(b"hello")).map_err(|n| match n {});
        let got = reply_of(&upstream, body.boxed_unsync()).await.unwrap();
        assert_eq!(got, (b"hello".to_vec(), "end".to_owned()));
        // The connection is shared: a second call goes on the same one.
        let body = Full::new(Bytes::from_static(b"again")).map_err(|n| match n {});
        assert_eq!(
            reply_of(&upstream, body.boxed_unsync()).await.unwrap().0,
            b"again"
        );
    }

    #[tokio::test]
    async fn a_body_still_arriving_is_piped_whole_with_its_trailers() {
        let (seen, _) = mpsc::unbounded_channel();
        let upstream = echo_server(seen).await;
        let (mut tx, body) = Channel::<Bytes, BoxError>::new(1);
        tokio::spawn(async move {
            for chunk in ["ab", "cd", "ef"] {
                tokio::time::sleep(Duration::from_millis(5)).await; // each one later
                tx.send_data(Bytes::from_static(chunk.as_bytes()))
                    .await
                    .unwrap();
            }
            tx.send_trailers(HeaderMap::new()).await.unwrap();
        });
        let got = reply_of(&upstream, body.boxed_unsync()).await.unwrap();
        assert_eq!(got, (b"abcdef".to_vec(), "trailers".to_owned()));
    }

    #[tokio::test]
    async fn a_failing_body_resets_the_upstream_stream() {
        let (seen, mut seen_rx) = mpsc::unbounded_channel();
        let upstream = echo_server(seen).await;
        let (mut tx, body) = Channel::<Bytes, BoxError>::new(1);
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(b"ab")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.abort("the client went away".into());
        });
        assert!(reply_of(&upstream, body.boxed_unsync()).await.is_err());
        assert_eq!(seen_rx.recv().await, Some("error"));
    }

    /// A real h2c server whose first connection, once its first call arrives, says GOAWAY
    /// and holds that call open until `release`: the connection stays open with GOAWAY
    /// said, as an upstream draining gracefully leaves it. Later connections answer at
    /// once. `connections` counts those accepted.
    async fn draining_server(
        release: Arc<tokio::sync::Notify>,
    ) -> (Upstream, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Upstream::new(&listener.local_addr().unwrap().to_string());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                let first = accepted.fetch_add(1, Ordering::SeqCst) == 0;
                let (called, release) = (Arc::new(tokio::sync::Notify::new()), release.clone());
                let on_call = called.clone();
                let answer =
                    hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                        let (on_call, release) = (on_call.clone(), release.clone());
                        async move {
                            if first {
                                on_call.notify_one();
                                release.notified().await;
                            }
                            let reply = Full::new(Bytes::from_static(b"ok"));
                            Ok::<_, Infallible>(Response::new(reply))
                        }
                    });
                tokio::spawn(async move {
                    let conn = server::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), answer);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = called.notified(), if first => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        });
        (upstream, connections)
    }

    #[tokio::test]
    async fn a_call_after_the_upstreams_goaway_goes_on_a_new_connection() {
        let release = Arc::new(tokio::sync::Notify::new());
        let (upstream, connections) = draining_server(release.clone()).await;
        let upstream = Arc::new(upstream);
        let held = {
            let upstream = upstream.clone();
            let body = Full::new(Bytes::from_static(b"held")).map_err(|n| match n {});
            tokio::spawn(async move { reply_of(&upstream, body.boxed_unsync()).await })
        };
        // Wait (bounded) until the client has seen the GOAWAY on the open connection.
        let seen = async {
            loop {
                let open = upstream.conn.lock().await.clone();
                if let Some(open) = open {
                    if open.sender.ready().await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), seen)
            .await
            .expect("the client never saw the GOAWAY");
        let body = Full::new(Bytes::from_static(b"next")).map_err(|n| match n {});
        let next = tokio::time::timeout(
            Duration::from_secs(5),
            reply_of(&upstream, body.boxed_unsync()),
        )
        .await
        .expect("a call after GOAWAY hung");
        assert_eq!(next.unwrap().0, b"ok");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        release.notify_one();
        assert_eq!(held.await.unwrap().unwrap().0, b"ok"); // the held call still ends well
    }
}
