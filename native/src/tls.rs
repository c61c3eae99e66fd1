//! TLS to an upstream: a Triton started with `--grpc-use-ssl` (mutual TLS too), with the
//! settings of the Python backend's `tls` (`backends/triton.py` `ClientTls`): the CA file
//! that signs the server (else the system's roots), a client certificate and key, and the
//! name to check the server's certificate against (else the address's host). rustls on
//! `ring` (no C toolchain beyond what `ring` builds), ALPN `h2` as gRPC requires.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::TlsConfig;

/// How to open TLS to one upstream.
pub struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    /// Reads the files `config` names; `host` is the address's host, the name checked
    /// when `config.server_name` is not set. The error names the file and why.
    pub fn new(config: &TlsConfig, host: &str) -> Result<Tls, String> {
        let roots = match &config.ca_file {
            Some(file) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(file)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("tls: ca_file {file}: {e}"))?;
                }
                roots
            }
            None => system_roots()?,
        };
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?
                .with_root_certificates(roots);
        let mut client = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("tls: key_file {key}: {e}"))?;
                builder
                    .with_client_auth_cert(certificates(cert)?, key)
                    .map_err(|e| format!("tls: cert_file {cert}: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("tls: cert_file and key_file go together (mutual TLS)".into()),
        };
        client.alpn_protocols = vec![b"h2".to_vec()];
        let name = config.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| format!("tls: server name {name:?}: {e}"))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    /// The TLS handshake over `io`; the server must agree to `h2`.
    pub async fn connect<T>(&self, io: T) -> std::io::Result<TlsStream<T>>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.connector.connect(self.server_name.clone(), io).await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(std::io::Error::other(
                "the server did not agree to HTTP/2 (ALPN h2)",
            ));
        }
        Ok(stream)
    }
}

fn certificates(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls: {file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("tls: {file}: no certificate in it"));
    }
    Ok(certs)
}

/// The system's root certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured, as OpenSSL
/// and grpc do).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(format!("tls: no system root certificates found {why}"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(config: TlsConfig) -> String {
        Tls::new(&config, "127.0.0.1").err().expect("an error")
    }

    #[test]
    fn files_that_cannot_be_used_are_named() {
        let missing = "/nonexistent/ca.pem";
        let e = error(TlsConfig {
            ca_file: Some(missing.into()),
            ..TlsConfig::default()
        });
        assert!(e.contains(missing), "{e}");
        let empty = std::env::temp_dir().join(format!("infergw-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let path = empty.to_string_lossy().into_owned();
        let e = error(TlsConfig {
            ca_file: Some(path.clone()),
            ..TlsConfig::default()
        });
        assert!(e.contains(&path) && e.contains("no certificate"), "{e}");
        std::fs::remove_file(&empty).unwrap();
        let e = error(TlsConfig {
            cert_file: Some("c.pem".into()),
            ..TlsConfig::default()
        });
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn the_system_roots_do_and_a_bad_name_does_not() {
        // A bare TLS config verifies against the system's roots (ca-certificates).
        assert!(Tls::new(&TlsConfig::default(), "example.com").is_ok());
        let e = error(TlsConfig {
            server_name: Some("not a name!".into()),
            ..TlsConfig::default()
        });
        assert!(e.contains("server name"), "{e}");
    }
}
