//! `grpc.health.v1.Health` answered by the plane from statuses Python pushes in
//! (`Plane.set_health`): the sidecar's poller (`gateway/sidecar/health.py`) stays in
//! Python, probes never wait for the GIL. `Check` answers the current status (NOT_FOUND
//! for a service never set, as grpcio's servicer); `Watch` streams the status on every
//! change, natively, over a tokio watch channel (SERVICE_UNKNOWN while a service is
//! unknown). `enter_graceful_shutdown` turns every service NOT_SERVING for good and ends
//! the `Watch` streams, so they do not hold a drain for its whole grace period.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};

use crate::grpc_frame::{field_str, frame};
use crate::grpc_status::{self, Status};
use crate::scan::PREFIX_LEN;
use crate::upstream::{Body, BoxError};

pub const CHECK: &str = "/grpc.health.v1.Health/Check";
pub const WATCH: &str = "/grpc.health.v1.Health/Watch";
pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;
pub const SERVICE_UNKNOWN: i32 = 3;
const NOT_FOUND: u8 = 5;
/// A HealthCheckRequest is a service name: anything larger is not one.
const REQUEST_LIMIT: usize = 64 << 10;

/// The health statuses by service name.
pub struct Health {
    statuses: watch::Sender<BTreeMap<String, i32>>,
    closing: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            statuses: watch::channel(BTreeMap::new()).0,
            closing: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Sets `service`'s status (ignored after `enter_graceful_shutdown`); `Watch` streams
    /// of that service see a change.
    pub fn set(&self, service: &str, status: i32) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        self.statuses
            .send_if_modified(|m| m.insert(service.to_owned(), status) != Some(status));
    }

    pub fn get(&self, service: &str) -> Option<i32> {
        self.statuses.borrow().get(service).copied()
    }

    /// Every service NOT_SERVING for good; open `Watch` streams send it and end.
    pub fn enter_graceful_shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        self.statuses
            .send_modify(|m| m.values_mut().for_each(|s| *s = NOT_SERVING));
    }

    /// Answers `path` (CHECK or WATCH) for the request `body`.
    pub async fn answer(self: &Arc<Self>, path: &str, body: Incoming) -> Response<Body> {
        let service = match read_service(body).await {
            Ok(service) => service,
            Err(status) => return status.response(empty(), None),
        };
        let (tx, rx) = mpsc::channel(2);
        if path == CHECK {
            let Some(status) = self.get(&service) else {
                return Status::new(NOT_FOUND, "").response(empty(), None);
            };
            let _ = tx.try_send(frame(&encode(status)));
        } else {
            tokio::spawn(watch(self.clone(), service, tx));
        }
        replies(rx)
    }
}

/// One `Watch` stream: the current status, then each change, until the client leaves
/// or the health service shuts down (after sending its NOT_SERVING).
async fn watch(health: Arc<Health>, service: String, tx: mpsc::Sender<Bytes>) {
    let mut statuses = health.statuses.subscribe();
    let mut last = None;
    loop {
        let status = statuses
            .borrow_and_update()
            .get(&service)
            .copied()
            .unwrap_or(SERVICE_UNKNOWN);
        if last != Some(status) {
            if tx.send(frame(&encode(status))).await.is_err() {
                return;
            }
            last = Some(status);
        }
        if health.closing.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            changed = statuses.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// `HealthCheckResponse { status }` (proto3: 0 is omitted).
fn encode(status: i32) -> Vec<u8> {
    match u8::try_from(status) {
        Ok(0) | Err(_) => vec![],
        Ok(s) => vec![0x08, s],
    }
}

async fn read_service(body: Incoming) -> Result<String, Status> {
    let bad = |why: &str| {
        Status::new(
            grpc_status::INVALID_ARGUMENT,
            format!("HealthCheckRequest: {why}"),
        )
    };
    let bytes = Limited::new(body, REQUEST_LIMIT)
        .collect()
        .await
        .map_err(|e| bad(&e.to_string()))?
        .to_bytes();
    if bytes.len() < PREFIX_LEN || bytes[0] != 0 {
        return Err(bad("not one uncompressed message"));
    }
    let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let msg = &bytes[PREFIX_LEN..];
    if msg.len() != declared {
        return Err(bad("not one uncompressed message"));
    }
    Ok(field_str(msg, &[1]).unwrap_or_default().to_owned())
}

fn empty() -> Body {
    Replies {
        rx: None,
        trailers: None,
    }
    .boxed_unsync()
}

/// Replies as they come, then `grpc-status: 0`.
fn replies(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = Response::new(
        Replies {
            rx: Some(rx),
            trailers: Some(trailers),
        }
        .boxed_unsync(),
    );
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

struct Replies {
    rx: Option<mpsc::Receiver<Bytes>>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Replies {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(rx) = self.rx.as_mut() {
            if let Some(data) = ready!(rx.poll_recv(cx)) {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            self.rx = None;
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_shutdown() {
        let health = Health::default();
        assert_eq!(health.get(""), None);
        health.set("", SERVING);
        health.set("inference.GRPCInferenceService", NOT_SERVING);
        assert_eq!(health.get(""), Some(SERVING));
        let rx = health.statuses.subscribe();
        health.set("", SERVING); // unchanged: no wake-up for watchers
        assert!(!rx.has_changed().unwrap());
        health.enter_graceful_shutdown();
        assert!(rx.has_changed().unwrap());
        health.set("", SERVING); // ignored from now on
        assert_eq!(health.get(""), Some(NOT_SERVING));
        assert_eq!(
            health.get("inference.GRPCInferenceService"),
            Some(NOT_SERVING)
        );
    }

    #[test]
    fn responses_encode_like_protobuf() {
        assert_eq!(encode(SERVING), vec![0x08, 1]);
        assert_eq!(encode(SERVICE_UNKNOWN), vec![0x08, 3]);
        assert_eq!(encode(0), Vec::<u8>::new());
    }
}
