//! TLS on the plane's own port (the gateway's `listen.tls`, the sidecar's `tls`): the
//! certificate chain, its key and, for mutual TLS, the CA that signs the clients, as PEM.
//! Python reads the files and re-reads them when they change (`gateway/tls.py`), and hands
//! each new set over (`Plane.set_server_tls`); a new connection takes the current set,
//! established ones keep theirs, as on the Python plane. rustls on `ring`, TLS 1.2 and 1.3,
//! ALPN `h2` on a gRPC port (a client offering no ALPN is served HTTP/2 too, as gRPC
//! servers do) and `http/1.1` on a REST port.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A handshake that has not finished by then is dropped: a client that connects and says
/// nothing holds no connection slot for longer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a port speaks, offered in the handshake's ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

/// One set of certificates, as each kind of port serves it.
#[derive(Clone)]
struct Acceptors {
    h2: TlsAcceptor,
    http11: TlsAcceptor,
}

/// The current certificates of the port (None until the first set).
#[derive(Default)]
pub struct ServerTls {
    current: RwLock<Option<Acceptors>>,
}

impl ServerTls {
    /// From now on, new connections are served with `chain` and `key`, and with
    /// `client_ca` must present a certificate it signed. The error says which part is
    /// wrong and why, never what it holds; the previous set stays.
    pub fn set(&self, chain: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<(), String> {
        let config = server_config(chain, key, client_ca)?;
        let with = |protocol: &[u8]| {
            let mut config = config.clone();
            config.alpn_protocols = vec![protocol.to_vec()];
            TlsAcceptor::from(Arc::new(config))
        };
        let acceptors = Acceptors {
            h2: with(b"h2"),
            http11: with(b"http/1.1"),
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(acceptors);
        Ok(())
    }

    /// What a new connection of a port speaking `alpn` is served with (None: no
    /// certificates yet).
    pub fn acceptor(&self, alpn: Alpn) -> Option<TlsAcceptor> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_ref().map(|a| match alpn {
            Alpn::H2 => a.h2.clone(),
            Alpn::Http11 => a.http11.clone(),
        })
    }
}

fn server_config(
    chain: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<ServerConfig, String> {
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("key: no private key in PEM ({e})"))?;
    let chain = certificates(chain, "certificate chain")?;
    let builder =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "client CA")? {
                roots.add(cert).map_err(|e| format!("client CA: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .map_err(|e| format!("client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in PEM"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_served_before_a_set_and_a_bad_set_keeps_none() {
        let tls = ServerTls::default();
        assert!(tls.acceptor(Alpn::H2).is_none());
        let err = tls.set(b"", b"", None).unwrap_err();
        assert!(err.starts_with("key: no private key in PEM"), "{err}");
        assert!(tls.acceptor(Alpn::Http11).is_none());
    }

    #[test]
    fn a_key_error_never_quotes_the_key() {
        let secret =
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = server_config(cert, secret, None).unwrap_err();
        assert!(err.starts_with("certificate and key: "), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
