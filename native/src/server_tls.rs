//! TLS on the plane's own port (the gateway's `listen.tls`, the sidecar's `tls`): the
//! certificate chain, its key and, for mutual TLS, the CA that signs the clients, as PEM.
//! Python reads the files and re-reads them when they change (`gateway/tls.py`), and hands
//! each new set over (`Plane.set_server_tls`); a new connection takes the current set,
//! established ones keep theirs, as on the Python plane. rustls on `ring`, TLS 1.2 and 1.3,
//! ALPN `h2` (a client offering no ALPN is served HTTP/2 too, as gRPC servers do).

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

/// The current certificates of the port (None until the first set).
#[derive(Default)]
pub struct ServerTls {
    current: RwLock<Option<TlsAcceptor>>,
}

impl ServerTls {
    /// From now on, new connections are served with `chain` and `key`, and with
    /// `client_ca` must present a certificate it signed. The error says which part is
    /// wrong and why, never what it holds; the previous set stays.
    pub fn set(&self, chain: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<(), String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(chain, key, client_ca)?));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
        Ok(())
    }

    /// What a new connection is served with (None: no certificates yet).
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
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
        assert!(tls.acceptor().is_none());
        let err = tls.set(b"", b"", None).unwrap_err();
        assert!(err.starts_with("key: no private key in PEM"), "{err}");
        assert!(tls.acceptor().is_none());
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
