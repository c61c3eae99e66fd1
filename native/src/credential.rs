//! A call credential that Python keeps fresh (Cloud Run's Google ID token): the header
//! every call to its backend carries, and until when it may be sent.
//!
//! Python fetches and refreshes the token (google-auth's credential chain is Python's);
//! the plane only holds the newest one. A backend whose credential is missing or past its
//! time is UNAVAILABLE at the call, as the Python backend is when it has no token: sending
//! an expired token would only get the client Cloud Run's UNAUTHENTICATED. The value is
//! marked sensitive (HPACK never indexes it, `Debug` hides it) and no error names it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;

/// The credentials of a config's backends, by backend name: made once with the plane and
/// kept across its starts, so Python can set the first before the plane serves.
pub type Credentials = HashMap<String, Arc<Credential>>;

pub fn credentials(config: &Config) -> Result<Credentials, String> {
    let mut credentials = Credentials::new();
    for (name, backend) in &config.backends {
        if let Some(header) = &backend.credential_header {
            let credential = Credential::new(header)
                .map_err(|e| format!("plane config: backends.{name}.{e}"))?;
            credentials.insert(name.clone(), Arc::new(credential));
        }
    }
    Ok(credentials)
}

pub struct Credential {
    header: HeaderName,
    current: RwLock<Option<(HeaderValue, SystemTime)>>,
}

impl Credential {
    /// A credential sent in `header` (e.g. `authorization`), none held yet.
    pub fn new(header: &str) -> Result<Credential, String> {
        let header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| format!("credential_header {header:?} is not a header name"))?;
        Ok(Credential {
            header,
            current: RwLock::new(None),
        })
    }

    /// Holds `value` for the calls until `good_until`. The error does not repeat the value.
    pub fn set(&self, value: &str, good_until: SystemTime) -> Result<(), &'static str> {
        let mut value =
            HeaderValue::from_str(value).map_err(|_| "the credential is not a header value")?;
        value.set_sensitive(true);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((value, good_until));
        Ok(())
    }

    /// Forgets the value held (no call is sent until a new one is set).
    pub fn clear(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Puts the credential on a call's `headers`, replacing the client's own (which is
    /// never passed on); the error says why there is none to put.
    pub fn apply(&self, headers: &mut HeaderMap, now: SystemTime) -> Result<(), &'static str> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some((value, until)) if now < *until => {
                headers.insert(self.header.clone(), value.clone());
                Ok(())
            }
            Some(_) => Err("its credential (an ID token) has expired and no fresh one came"),
            None => Err("no credential (an ID token) for it yet"),
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &str = "Bearer eyJhbGciOi.secret.sig";

    #[test]
    fn a_call_gets_the_value_held_until_its_time_and_the_clients_own_is_replaced() {
        let credential = Credential::new("authorization").unwrap();
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer client"));
        let none = credential.apply(&mut headers, now).unwrap_err();
        assert!(none.contains("no credential"), "{none}");
        assert_eq!(headers["authorization"], "Bearer client"); // untouched: the call fails

        credential
            .set(SECRET, now + Duration::from_secs(60))
            .unwrap();
        credential.apply(&mut headers, now).unwrap();
        assert_eq!(headers.get_all("authorization").iter().count(), 1);
        assert_eq!(headers["authorization"], SECRET);
        assert!(headers["authorization"].is_sensitive());

        let later = now + Duration::from_secs(61);
        let expired = credential.apply(&mut HeaderMap::new(), later).unwrap_err();
        assert!(expired.contains("expired"), "{expired}");
        credential.clear();
        assert!(credential.apply(&mut HeaderMap::new(), now).is_err());
    }

    #[test]
    fn neither_errors_nor_debug_show_the_value() {
        let credential = Credential::new("authorization").unwrap();
        let bad = credential
            .set("Bearer a\nb secret", SystemTime::now())
            .unwrap_err();
        assert!(!bad.contains("secret"), "{bad}");
        credential
            .set(SECRET, SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        let shown = format!("{credential:?}");
        assert!(
            !shown.contains("secret") && shown.contains("authorization"),
            "{shown}"
        );
        assert!(Credential::new("not a header").is_err());
    }
}
