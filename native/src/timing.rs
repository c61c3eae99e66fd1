//! The `server-timing` trailer, in the names and descriptions the Python gateway uses
//! (DESIGN section 2, `wire/server_timing.py`): durations in milliseconds with three
//! decimals; a description that is not a bare token is quoted.
//!
//! A native route answers `total;dur=X;desc="backend=NAME", queue;dur=Y;desc="backend=NAME",
//! backend;dur=Z;desc="backend=NAME;attempt=1"`, as the gateway's Admission and Attempt
//! policies and `InferenceService.finish` do.

use std::fmt::Write;
use std::time::Duration;

use crate::stats::{Phases, Reported};

/// The trailing metadata key.
pub const TRAILER: &str = "server-timing";

/// The phases a backend may report of itself (`vocab/timing.py` `BACKEND_REPORTED`), in
/// `Reported`'s order.
pub const REPORTED: [&str; 3] = ["coldstart", "backend_queue", "compute"];

/// The backend-reported phases in `server-timing` values (a Cloud Run container's
/// trailer): of each name (case-sensitive, as `wire/server_timing.py` compares them) the
/// last entry with a duration. Other names and malformed items are skipped; so is an
/// entry whose `dur` is missing, unparsable, negative or not finite (W3C's parsing would
/// give it 0; `parse_server_timing(timed_only=True)` skips it too): the plane never
/// reports a phase it was not told.
pub fn reported<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Reported {
    let mut reported = Reported::default();
    for value in values {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        for item in split_outside_quotes(value, ',') {
            let mut params = split_outside_quotes(item, ';');
            let name = params.next().unwrap_or("").trim();
            let Some(slot) = REPORTED.iter().position(|n| *n == name) else {
                continue;
            };
            let dur = params.find_map(|param| {
                let (key, value) = param.split_once('=')?;
                let ms: f64 = key
                    .trim()
                    .eq_ignore_ascii_case("dur")
                    .then_some(value.trim().trim_matches('"'))?
                    .parse()
                    .ok()?;
                (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0))
            });
            if let Some(dur) = dur {
                reported.0[slot] = Some(dur);
            }
        }
    }
    reported
}

/// `text` split at `sep` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, sep: char) -> impl Iterator<Item = &str> {
    let (mut quoted, mut escaped) = (false, false);
    text.split(move |c: char| {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => return c == sep && !quoted,
        }
        false
    })
}

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
        entries.reported(&self.reported);
        if let Some(backend) = self.backend {
            entries.add("backend", backend, desc_backend);
        }
        entries.add("total", self.total, if ok { desc_total } else { "" });
        entries.finish()
    }
}

impl Entries {
    /// The phases the backend reported, where the gateway puts them: after the attempt's
    /// `queue`, before its `backend`.
    pub fn reported(&mut self, reported: &Reported) -> &mut Self {
        for (name, dur) in REPORTED.iter().zip(reported.0) {
            if let Some(dur) = dur {
                self.add(name, dur, "");
            }
        }
        self
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

    #[test]
    fn the_backends_own_phases_are_read_from_its_trailer() {
        let ms = |n: f64| Some(Duration::from_secs_f64(n / 1000.0));
        let values: [&[u8]; 2] = [
            br#"coldstart;dur=470, total;dur=9;desc="a, b;dur=1", compute;desc="x;y";dur=1.5"#,
            br#"compute;dur="2.25", Compute;dur=9, backend_queue;dur=-1, backend_queue;dur=nan, backend_queue, queue;dur=3"#,
        ];
        // The last `compute` wins (a quoted duration too); another case, a negative, NaN
        // or missing duration and other names are skipped; commas and semicolons inside a
        // quoted desc split nothing.
        assert_eq!(reported(values).0, [ms(470.0), None, ms(2.25)]);
        assert_eq!(
            reported([b"\xff;dur=1".as_slice(), b"compute"]).0,
            [None; 3]
        );
        let phases = Phases {
            queue: Some(Duration::ZERO),
            backend: Some(Duration::from_millis(5)),
            reported: Reported([ms(470.0), None, ms(2.25)]),
            ..Phases::default()
        };
        assert_eq!(
            phases.trailer("backend=run", "backend=run;attempt=1", true),
            r#"decode;dur=0.000, queue;dur=0.000;desc="backend=run", coldstart;dur=470.000, compute;dur=2.250, backend;dur=5.000;desc="backend=run;attempt=1", total;dur=0.000;desc="backend=run""#
        );
    }
}
