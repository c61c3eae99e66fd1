//! API keys for the calls the plane serves itself (the gateway's `auth`, `gateway/auth.py`):
//! a `ModelInfer` call presents `authorization: Bearer KEY` or `x-api-key: KEY`, and is
//! UNAUTHENTICATED without a key whose SHA-256 digest is one of those Python handed over
//! (`Plane.set_api_keys`; Python re-reads the keys file when it changes). The plane never
//! holds a key, only digests, and compares a presented key's digest with every digest, so
//! the time taken does not say which keys exist. Every other call goes to the python lane,
//! whose interceptor checks it as the Python plane does.

use std::sync::{Arc, RwLock};

use http::HeaderMap;
use ring::digest::{digest, SHA256};

/// One message for every refusal (a missing key, a wrong one), as `gateway/auth.py` has it.
pub const MESSAGE: &str = "missing or invalid API key";

pub type Digest = [u8; 32];

/// The digests of the accepted keys (none until the first set: nothing is admitted).
#[derive(Default)]
pub struct ApiKeys {
    digests: RwLock<Arc<[Digest]>>,
}

impl ApiKeys {
    pub fn set(&self, digests: Vec<Digest>) {
        *self.digests.write().unwrap_or_else(|e| e.into_inner()) = digests.into();
    }

    /// Whether the call presents an accepted key.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(key) = presented(headers) else {
            return false;
        };
        let candidate = digest(&SHA256, key);
        let digests = self
            .digests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        digests
            .iter()
            .fold(false, |found, d| found | same(candidate.as_ref(), d))
    }
}

/// `gateway/auth.py` `presented_key`: a Bearer credential, else `x-api-key`.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(authorization) = headers.get(http::header::AUTHORIZATION) {
        let value = authorization.as_bytes().trim_ascii();
        let (scheme, credential) = match value.iter().position(|&b| b == b' ') {
            Some(at) => (&value[..at], value[at + 1..].trim_ascii()),
            None => (value, &[][..]),
        };
        if scheme.eq_ignore_ascii_case(b"bearer") && !credential.is_empty() {
            return Some(credential);
        }
    }
    headers
        .get("x-api-key")
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty())
}

/// Equal digests, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &Digest) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(accepted: &[&str]) -> ApiKeys {
        let keys = ApiKeys::default();
        let digests = accepted
            .iter()
            .map(|k| digest(&SHA256, k.as_bytes()).as_ref().try_into().unwrap())
            .collect();
        keys.set(digests);
        keys
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn presented_keys_as_the_python_gateway_reads_them() {
        let keys = keys(&["k-1", "k-2"]);
        let cases: &[(&[(&'static str, &str)], bool)] = &[
            (&[("authorization", "Bearer k-1")], true),
            (&[("authorization", "bearer   k-2  ")], true),
            (&[("authorization", "  BEARER k-1")], true),
            (&[("x-api-key", "k-2")], true),
            (
                &[("authorization", "Basic k-1"), ("x-api-key", "k-1")],
                true,
            ),
            (&[("authorization", "Bearer"), ("x-api-key", "k-1")], true),
            (&[("authorization", "Bearer k-3")], false),
            (
                &[("authorization", "Bearer k-3"), ("x-api-key", "k-1")],
                false,
            ),
            (&[("authorization", "k-1")], false),
            (&[("x-api-key", " k-1")], false),
            (&[("x-api-key", "")], false),
            (&[], false),
        ];
        for (pairs, admitted) in cases {
            assert_eq!(keys.admits(&headers(pairs)), *admitted, "{pairs:?}");
        }
    }

    #[test]
    fn nothing_is_admitted_before_a_set_and_a_set_replaces_the_keys() {
        let none = ApiKeys::default();
        assert!(!none.admits(&headers(&[("x-api-key", "k-1")])));
        let rotated = keys(&["k-1"]);
        rotated.set(vec![digest(&SHA256, b"k-new").as_ref().try_into().unwrap()]);
        assert!(!rotated.admits(&headers(&[("x-api-key", "k-1")])));
        assert!(rotated.admits(&headers(&[("x-api-key", "k-new")])));
    }
}
