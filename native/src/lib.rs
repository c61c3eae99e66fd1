//! infergw's native data plane (issue 13): gRPC over h2c forwarded as bytes on tokio +
//! hyper, driven from Python through PyO3 (`infergw._native`). See docs/native.md.

pub mod admission;
pub mod api_keys;
pub mod config;
pub mod connections;
pub mod credential;
pub mod deadline;
pub mod forward;
pub mod grpc_frame;
pub mod grpc_status;
pub mod handover;
pub mod health;
pub mod http_passthrough;
pub mod observed;
pub mod passthrough;
pub mod plane;
pub mod policy;
mod python;
pub mod scan;
pub mod server_tls;
pub mod sidecar_stats;
pub mod stats;
pub mod timing;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod validate;
