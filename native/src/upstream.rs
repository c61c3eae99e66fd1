//! h2c connections to an upstream (a native backend or the python lane): one shared
//! HTTP/2 connection per upstream, multiplexing every request, reopened when it closes.
//! An address is `HOST:PORT` (TCP, no Nagle) or `unix:/path`.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Flow-control windows large enough that a 5 MB message is not held back by
/// WINDOW_UPDATE round trips (shared with the server side in `plane.rs`).
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    conn: Mutex<Option<SendRequest<Body>>>,
}

impl Upstream {
    pub fn new(address: &str) -> Upstream {
        let (addr, authority) = match address.strip_prefix("unix:") {
            Some(path) => (Addr::Unix(PathBuf::from(path)), "localhost".to_owned()),
            None => (Addr::Tcp(address.to_owned()), address.to_owned()),
        };
        Upstream {
            address: address.to_owned(),
            addr,
            authority,
            conn: Mutex::new(None),
        }
    }

    /// A sender on the shared connection, connecting first if there is none (bounded by
    /// `deadline` and a connect timeout).
    pub async fn sender(&self, deadline: Option<Instant>) -> Result<SendRequest<Body>, String> {
        let mut conn = self.conn.lock().await;
        if let Some(sender) = conn.as_ref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        *conn = None;
        let limit = Instant::now() + CONNECT_TIMEOUT;
        let limit = deadline.map_or(limit, |d| d.min(limit));
        let sender = tokio::time::timeout_at(limit, self.connect())
            .await
            .map_err(|_| format!("connecting to {} timed out", self.address))??;
        *conn = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<Body>, String> {
        let unreachable = |e: std::io::Error| format!("upstream {} unreachable: {e}", self.address);
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME);
        let handshake = |e: hyper::Error| format!("h2 handshake with {} failed: {e}", self.address);
        match &self.addr {
            Addr::Tcp(hostport) => {
                // An IP address connects without a resolver thread; a name is looked up.
                let stream = match hostport.parse::<std::net::SocketAddr>() {
                    Ok(addr) => tokio::net::TcpStream::connect(addr).await,
                    Err(_) => tokio::net::TcpStream::connect(hostport.as_str()).await,
                }
                .map_err(unreachable)?;
                let _ = stream.set_nodelay(true);
                let (sender, connection) = builder
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(handshake)?;
                tokio::spawn(connection);
                Ok(sender)
            }
            Addr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?;
                let (sender, connection) = builder
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(handshake)?;
                tokio::spawn(connection);
                Ok(sender)
            }
        }
    }
}
