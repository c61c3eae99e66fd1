//! The `server-timing` trailer, in the names and descriptions the Python gateway uses
//! (DESIGN section 2, `wire/server_timing.py`): durations in milliseconds with three
//! decimals; a description that is not a bare token is quoted.
//!
//! A native route answers `total;dur=X;desc="backend=NAME", queue;dur=Y;desc="backend=NAME",
//! backend;dur=Z;desc="backend=NAME;attempt=1"`, as the gateway's Admission and Attempt
//! policies and `InferenceService.finish` do.

use std::fmt::Write;
use std::time::Duration;

use crate::stats::Phases;

/// The trailing metadata key.
pub const TRAILER: &str = "server-timing";

/// Server-Timing entries, formatted as the Python gateway formats them.
#[derive(Default)]
pub struct Entries(String);

impl Entries {
    pub fn add(&mut self, name: &str, dur: Duration, desc: &str) -> &mut Self {
        if !self.0.is_empty() {
            self.0.push_str(", ");
        }
        let ms = dur.as_secs_f64() * 1000.0;
        let _ = write!(self.0, "{name};dur={ms:.3}");
        if !desc.is_empty() {
            self.0.push_str(";desc=");
            quote_into(&mut self.0, desc);
        }
        self
    }

    pub fn finish(self) -> String {
        self.0
    }
}

impl Phases {
    /// The trailer value of a native route's request, in the gateway's order: `decode`,
    /// `queue` and `backend` when they happened, `total` naming the backend when `ok`
    /// (as `InferenceService.finish` does).
    pub fn trailer(&self, desc_total: &str, desc_backend: &str, ok: bool) -> String {
        let mut entries = Entries::default();
        entries.add("decode", self.decode, "");
        if let Some(queue) = self.queue {
            entries.add("queue", queue, desc_total);
        }
        if let Some(backend) = self.backend {
            entries.add("backend", backend, desc_backend);
        }
        entries.add("total", self.total, if ok { desc_total } else { "" });
        entries.finish()
    }
}

fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn quote_into(out: &mut String, value: &str) {
    if is_token(value) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_python_format() {
        let mut e = Entries::default();
        e.add("total", Duration::from_micros(1234), "backend=triton")
            .add("queue", Duration::from_nanos(500), "backend=triton")
            .add(
                "backend",
                Duration::from_millis(1),
                "backend=triton;attempt=1",
            )
            .add("x", Duration::ZERO, "")
            .add("y", Duration::ZERO, "tok")
            .add("z", Duration::ZERO, r#"a"b\c"#);
        assert_eq!(
            e.finish(),
            r#"total;dur=1.234;desc="backend=triton", queue;dur=0.001;desc="backend=triton", backend;dur=1.000;desc="backend=triton;attempt=1", x;dur=0.000, y;dur=0.000;desc=tok, z;dur=0.000;desc="a\"b\\c""#
        );
    }
}
