//! A `ModelInferRequest` checked as the Python gateway checks one before any backend sees
//! it (`wire/oip_proto.request_from_proto`, then `GatewayService.validate`), with the same
//! messages: every input finds its data, declared shape x datatype matches the bytes
//! sent, typed `contents` hold as many values as the shape needs, no input twice.
//!
//! Why the plane checks at all: a tensor whose bytes do not match its shape can take the
//! backend down (Triton 2.51's python-backend stub dies on one, and every later call to
//! that model fails), and the gateway's clients are promised INVALID_ARGUMENT for it.
//!
//! The message is read where it lies, in the chunks it arrived in: nothing is copied but
//! names, datatypes and shapes, so a 5 MB tensor costs a few steps. BYTES tensors are
//! walked element by element (their 4-byte lengths), as the gateway does.

use bytes::Bytes;

/// Input parameter naming a Triton shared-memory region: such an input has no data here.
const SHARED_MEMORY_REGION: &[u8] = b"shared_memory_region";
/// The gateway's guard against absurd shapes (`vocab/datatypes.MAX_ELEMENTS`).
const MAX_ELEMENTS: u128 = 1 << 40;
/// `sorted(vocab.datatypes.DATATYPES)`, as the gateway's message lists them.
const DATATYPES: [&str; 13] = [
    "BOOL", "BYTES", "FP16", "FP32", "FP64", "INT16", "INT32", "INT64", "INT8", "UINT16", "UINT32",
    "UINT64", "UINT8",
];

/// Why a request is refused: `Malformed` (not a ModelInferRequest) or `Invalid` (a
/// well-formed request the gateway would refuse), each INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Malformed(&'static str),
    Invalid(String),
}

impl Refusal {
    pub fn message(&self) -> String {
        match self {
            Refusal::Malformed(why) => format!("malformed ModelInferRequest: {why}"),
            Refusal::Invalid(message) => message.clone(),
        }
    }
}

type Parse<T> = Result<T, Refusal>;

/// Checks the protobuf of one message (`message_len` bytes after `skip` bytes of
/// `chunks`, i.e. after the gRPC prefix).
pub fn check(chunks: &[Bytes], skip: usize, message_len: usize) -> Result<(), Refusal> {
    let mut reader = Reader::new(chunks, skip, message_len)?;
    let request = Request::parse(&mut reader)?;
    request.check()
}

/// Bytes of one (sub)message over the chunks they arrived in, read without copying.
#[derive(Clone)]
struct Reader<'a> {
    chunks: &'a [Bytes],
    chunk: usize,
    offset: usize,
    left: usize,
}

impl<'a> Reader<'a> {
    fn new(chunks: &'a [Bytes], skip: usize, len: usize) -> Parse<Reader<'a>> {
        let total: usize = chunks.iter().map(Bytes::len).sum();
        if skip.checked_add(len).is_none_or(|end| end > total) {
            return Err(Refusal::Malformed(
                "message shorter than its declared length",
            ));
        }
        let mut reader = Reader {
            chunks,
            chunk: 0,
            offset: 0,
            left: total,
        };
        reader.skip(skip)?;
        reader.left = len;
        Ok(reader)
    }

    fn is_empty(&self) -> bool {
        self.left == 0
    }

    fn byte(&mut self) -> Parse<u8> {
        if self.left == 0 {
            return Err(Refusal::Malformed("truncated message"));
        }
        while self.offset == self.chunks[self.chunk].len() {
            self.chunk += 1;
            self.offset = 0;
        }
        let byte = self.chunks[self.chunk][self.offset];
        self.offset += 1;
        self.left -= 1;
        Ok(byte)
    }

    fn skip(&mut self, mut n: usize) -> Parse<()> {
        if n > self.left {
            return Err(Refusal::Malformed("field longer than its message"));
        }
        self.left -= n;
        while n > 0 {
            let here = self.chunks[self.chunk].len() - self.offset;
            if here == 0 {
                self.chunk += 1;
                self.offset = 0;
                continue;
            }
            let step = here.min(n);
            self.offset += step;
            n -= step;
        }
        Ok(())
    }

    /// The next `n` bytes as a reader of their own; this one moves past them.
    fn split(&mut self, n: usize) -> Parse<Reader<'a>> {
        let mut sub = self.clone();
        self.skip(n)?;
        sub.left = n;
        Ok(sub)
    }

    fn varint(&mut self) -> Parse<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            if shift == 63 && byte > 1 {
                return Err(Refusal::Malformed("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Refusal::Malformed("varint longer than 10 bytes"))
    }

    fn u32_le(&mut self) -> Parse<u32> {
        let mut bytes = [0u8; 4];
        for b in &mut bytes {
            *b = self.byte()?;
        }
        Ok(u32::from_le_bytes(bytes))
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut copy = self.clone();
        let mut out = Vec::with_capacity(self.left);
        while let Ok(byte) = copy.byte() {
            out.push(byte);
        }
        out
    }

    fn string(&self) -> Parse<String> {
        String::from_utf8(self.to_vec()).map_err(|_| Refusal::Malformed("string is not UTF-8"))
    }

    /// The next field: its number and value, None at the end of the message.
    fn field(&mut self) -> Parse<Option<(u64, Value<'a>)>> {
        if self.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(Refusal::Malformed("field number 0"));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| Refusal::Malformed("length overflows"))?;
                Value::Len(self.split(len)?)
            }
            5 => {
                self.skip(4)?;
                Value::Fixed32
            }
            _ => return Err(Refusal::Malformed("unsupported wire type")),
        };
        Ok(Some((number, value)))
    }
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Fixed32,
    Len(Reader<'a>),
}

/// What the checks need of a request: its model, inputs and raw contents.
struct Request<'a> {
    model: String,
    inputs: Vec<Input<'a>>,
    raw: Vec<Reader<'a>>,
}

struct Input<'a> {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    shared_memory: bool,
    /// `InferTensorContents` occurrences (protobuf merges repeated ones).
    contents: Vec<Reader<'a>>,
}

impl<'a> Request<'a> {
    fn parse(reader: &mut Reader<'a>) -> Parse<Request<'a>> {
        let mut request = Request {
            model: String::new(),
            inputs: Vec::new(),
            raw: Vec::new(),
        };
        while let Some((number, value)) = reader.field()? {
            match (number, value) {
                (1, Value::Len(r)) => request.model = r.string()?,
                (2 | 3, Value::Len(r)) => {
                    r.string()?; // model_version, id: strings, so UTF-8
                }
                (5, Value::Len(mut r)) => request.inputs.push(Input::parse(&mut r)?),
                (7, Value::Len(r)) => request.raw.push(r),
                _ => {} // parameters, outputs, unknown fields: not the checks' business
            }
        }
        Ok(request)
    }

    /// The gateway's checks in its order: each input finds its data (decode), then the
    /// request's validation (no input twice, bytes as declared).
    fn check(&self) -> Result<(), Refusal> {
        let model = &self.model;
        let mut data: Vec<Option<&Reader<'a>>> = Vec::with_capacity(self.inputs.len());
        let mut taken = 0;
        for input in &self.inputs {
            let name = &input.name;
            if input.shared_memory {
                if !input.contents.is_empty() {
                    return invalid(format!(
                        "unexpected 'content' provided when using shared memory for input \
                         tensor '{name}' for model '{model}'"
                    ));
                }
                data.push(None);
            } else if !input.contents.is_empty() && !self.raw.is_empty() {
                return invalid(format!(
                    "contents field must not be specified when using raw_input_contents for \
                     '{name}' for model '{model}'"
                ));
            } else if !input.contents.is_empty() {
                input.check_contents()?;
                data.push(None);
            } else if taken < self.raw.len() {
                data.push(Some(&self.raw[taken]));
                taken += 1;
            } else if self.raw.is_empty() && input.shape.contains(&0) {
                data.push(None); // a typed request of zero elements: nothing to send
            } else {
                return invalid(format!(
                    "unable to find data for input tensor '{name}' for model '{model}' in \
                     request."
                ));
            }
        }
        if taken < self.raw.len() {
            return invalid(format!(
                "{} raw_input_contents for {taken} inputs that take raw data for model \
                 '{model}'",
                self.raw.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (input, raw) in self.inputs.iter().zip(data) {
            if !seen.insert(input.name.as_str()) {
                return invalid(format!(
                    "input {} is given more than once",
                    py_repr(&input.name)
                ));
            }
            if !input.shared_memory && input.contents.is_empty() {
                input.check_bytes(raw.map_or(0, |r| r.left), raw)?;
            }
        }
        Ok(())
    }
}

impl<'a> Input<'a> {
    fn parse(reader: &mut Reader<'a>) -> Parse<Input<'a>> {
        let mut input = Input {
            name: String::new(),
            datatype: String::new(),
            shape: Vec::new(),
            shared_memory: false,
            contents: Vec::new(),
        };
        while let Some((number, value)) = reader.field()? {
            match (number, value) {
                (1, Value::Len(r)) => input.name = r.string()?,
                (2, Value::Len(r)) => input.datatype = r.string()?,
                (3, Value::Varint(dim)) => input.shape.push(dim as i64),
                (3, Value::Len(mut packed)) => {
                    while !packed.is_empty() {
                        input.shape.push(packed.varint()? as i64);
                    }
                }
                (4, Value::Len(mut entry)) => {
                    while let Some((number, value)) = entry.field()? {
                        if let (1, Value::Len(key)) = (number, value) {
                            input.shared_memory |= key.to_vec() == SHARED_MEMORY_REGION;
                        }
                    }
                }
                (5, Value::Len(r)) => input.contents.push(r),
                _ => {}
            }
        }
        Ok(input)
    }

    /// `_typed_to_raw`'s checks: a known datatype, a sane shape, as many values as it needs.
    fn check_contents(&self) -> Result<(), Refusal> {
        let what = format!("tensor {}", py_repr(&self.name));
        check_datatype(&self.datatype, &what)?;
        let count = element_count(&self.shape, &what)?;
        let found = self.count_values()?;
        if self.datatype == "FP16" {
            return invalid(format!(
                "{what}: FP16 data must be sent in raw_input_contents"
            ));
        }
        if found != count {
            return invalid(format!(
                "{what}: shape {} needs {count} elements, contents has {found}",
                py_list(&self.shape)
            ));
        }
        Ok(())
    }

    /// Values in the `InferTensorContents` field that carries this datatype (FP32's for
    /// an unknown one, as the gateway reads it), packed or not.
    fn count_values(&self) -> Parse<u128> {
        let (field, kind) = match self.datatype.as_str() {
            "BOOL" => (1, Kind::Varint),
            "INT8" | "INT16" | "INT32" => (2, Kind::Varint),
            "INT64" => (3, Kind::Varint),
            "UINT8" | "UINT16" | "UINT32" => (4, Kind::Varint),
            "UINT64" => (5, Kind::Varint),
            "FP64" => (7, Kind::Fixed(8)),
            "BYTES" => (8, Kind::Bytes),
            _ => (6, Kind::Fixed(4)),
        };
        let mut count = 0u128;
        for contents in &self.contents {
            let mut reader = contents.clone();
            while let Some((number, value)) = reader.field()? {
                if number != field {
                    continue;
                }
                count += match (kind, value) {
                    (Kind::Varint, Value::Varint(_))
                    | (Kind::Fixed(4), Value::Fixed32)
                    | (Kind::Fixed(8), Value::Fixed64)
                    | (Kind::Bytes, Value::Len(_)) => 1,
                    (Kind::Varint, Value::Len(mut packed)) => {
                        let mut n = 0;
                        while !packed.is_empty() {
                            packed.varint()?;
                            n += 1;
                        }
                        n
                    }
                    (Kind::Fixed(size), Value::Len(packed)) => {
                        if packed.left % size != 0 {
                            return Err(Refusal::Malformed("packed field of a partial value"));
                        }
                        (packed.left / size) as u128
                    }
                    _ => 0, // another wire type: an unknown field to protobuf
                };
            }
        }
        Ok(count)
    }

    /// `validate_tensor`: the bytes sent are what shape x datatype declares.
    fn check_bytes(&self, len: usize, raw: Option<&Reader<'a>>) -> Result<(), Refusal> {
        let what = format!("input {}", py_repr(&self.name));
        check_datatype(&self.datatype, &what)?;
        let count = element_count(&self.shape, &what)?;
        let shape = py_list(&self.shape);
        let Some(size) = element_size(&self.datatype) else {
            let found = match raw {
                Some(reader) => count_bytes_elements(reader.clone(), &what)?,
                None => 0,
            };
            if found != count {
                return invalid(format!(
                    "{what}: shape {shape} needs {count} BYTES elements, got {found}"
                ));
            }
            return Ok(());
        };
        let expected = count * size;
        if len as u128 != expected {
            return invalid(format!(
                "{what}: shape {shape} with datatype {} needs {expected} bytes, got {len}",
                self.datatype
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Varint,
    Fixed(usize),
    Bytes,
}

fn invalid<T>(message: String) -> Result<T, Refusal> {
    Err(Refusal::Invalid(message))
}

fn check_datatype(datatype: &str, what: &str) -> Result<(), Refusal> {
    if DATATYPES.contains(&datatype) {
        return Ok(());
    }
    let expected: Vec<String> = DATATYPES.iter().map(|d| py_repr(d)).collect();
    invalid(format!(
        "{what}: unsupported datatype {}; expected one of [{}]",
        py_repr(datatype),
        expected.join(", ")
    ))
}

fn element_size(datatype: &str) -> Option<u128> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None, // BYTES
    })
}

fn element_count(shape: &[i64], what: &str) -> Result<u128, Refusal> {
    let mut count: u128 = 1;
    for &dim in shape {
        if dim < 0 {
            return invalid(format!(
                "{what}: shape {} has a negative dimension",
                py_list(shape)
            ));
        }
        count *= dim as u128; // count <= 2^40 and dim < 2^63: no overflow
        if count > MAX_ELEMENTS {
            return invalid(format!("{what}: shape {} is too large", py_list(shape)));
        }
    }
    Ok(count)
}

/// `count_bytes_elements`: length-prefixed elements of OIP's raw BYTES layout.
fn count_bytes_elements(mut data: Reader<'_>, what: &str) -> Result<u128, Refusal> {
    let (end, mut offset, mut count) = (data.left, 0usize, 0u128);
    while offset < end {
        if offset + 4 > end {
            return invalid(format!(
                "{what}: truncated BYTES element length at offset {offset}"
            ));
        }
        let length = data.u32_le()? as usize;
        offset += 4 + length;
        if offset > end {
            return invalid(format!(
                "{what}: BYTES element overruns the data at offset {offset}"
            ));
        }
        data.skip(length)?;
        count += 1;
    }
    Ok(count)
}

/// Python's `repr()` of a str, as the gateway's messages quote names.
pub fn py_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` of a list of ints.
fn py_list(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn len_field(number: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn input(name: &str, datatype: &str, shape: &[i64], extra: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        len_field(1, name.as_bytes(), &mut t);
        len_field(2, datatype.as_bytes(), &mut t);
        let mut packed = Vec::new();
        for &d in shape {
            varint(d as u64, &mut packed);
        }
        len_field(3, &packed, &mut t);
        t.extend_from_slice(extra);
        t
    }

    fn request(inputs: &[&[u8]], raw: &[&[u8]]) -> Vec<u8> {
        let mut m = Vec::new();
        len_field(1, b"identity", &mut m);
        for i in inputs {
            len_field(5, i, &mut m);
        }
        for r in raw {
            len_field(7, r, &mut m);
        }
        m
    }

    fn verdict(message: &[u8]) -> Result<(), String> {
        check(&[Bytes::copy_from_slice(message)], 0, message.len()).map_err(|r| r.message())
    }

    #[test]
    fn the_gateways_checks_and_messages() {
        let fp32 = input("INPUT0", "FP32", &[1, 16], &[]);
        assert_eq!(verdict(&request(&[&fp32], &[&[0; 64]])), Ok(()));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                request(&[&fp32], &[&[0; 60]]),
                "input 'INPUT0': shape [1, 16] with datatype FP32 needs 64 bytes, got 60",
            ),
            (
                request(&[&fp32], &[]),
                "unable to find data for input tensor 'INPUT0' for model 'identity' in request.",
            ),
            (
                request(&[&fp32], &[&[0; 64], &[0; 4]]),
                "2 raw_input_contents for 1 inputs that take raw data for model 'identity'",
            ),
            (
                request(&[&fp32, &fp32], &[&[0; 64], &[0; 64]]),
                "input 'INPUT0' is given more than once",
            ),
            (
                request(&[&input("x", "FP32", &[-1], &[])], &[&[]]),
                "input 'x': shape [-1] has a negative dimension",
            ),
            (
                request(&[&input("x", "FP32", &[1 << 30, 1 << 30], &[])], &[&[]]),
                "input 'x': shape [1073741824, 1073741824] is too large",
            ),
            (
                request(&[&input("x", "BYTES", &[2], &[])], &[&[1, 0, 0, 0, b'a']]),
                "input 'x': shape [2] needs 2 BYTES elements, got 1",
            ),
            (
                request(&[&input("x", "BYTES", &[1], &[])], &[&[9, 0, 0, 0, b'a']]),
                "input 'x': BYTES element overruns the data at offset 13",
            ),
            (
                request(&[&input("x", "BYTES", &[1], &[])], &[&[1, 0]]),
                "input 'x': truncated BYTES element length at offset 0",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(verdict(&message), Err(expected.to_owned()));
        }
        let bad_type = verdict(&request(&[&input("x", "FP8", &[1], &[])], &[&[0]]));
        assert!(bad_type.unwrap_err().starts_with(
            "input 'x': unsupported datatype 'FP8'; expected one of ['BOOL', 'BYTES'"
        ));
    }

    #[test]
    fn typed_contents_shared_memory_and_empty_tensors() {
        let mut fp32s = Vec::new();
        len_field(6, &[0; 8], &mut fp32s); // two packed floats
        let mut contents = Vec::new();
        len_field(5, &fp32s, &mut contents);
        let two = input("x", "FP32", &[2], &contents);
        assert_eq!(verdict(&request(&[&two], &[])), Ok(()));
        assert_eq!(
            verdict(&request(&[&input("x", "FP32", &[3], &contents)], &[])),
            Err("tensor 'x': shape [3] needs 3 elements, contents has 2".into())
        );
        assert_eq!(
            verdict(&request(&[&two], &[&[0; 8]])),
            Err(
                "contents field must not be specified when using raw_input_contents for 'x' \
                 for model 'identity'"
                    .into()
            )
        );
        let mut ints = Vec::new();
        for v in [1u64, 300, 70000] {
            varint(2 << 3, &mut ints); // unpacked int_contents
            varint(v, &mut ints);
        }
        let mut contents = Vec::new();
        len_field(5, &ints, &mut contents);
        assert_eq!(
            verdict(&request(&[&input("i", "INT32", &[3], &contents)], &[])),
            Ok(())
        );
        let mut entry = Vec::new();
        len_field(1, SHARED_MEMORY_REGION, &mut entry);
        let mut params = Vec::new();
        len_field(4, &entry, &mut params);
        let shm = input("s", "FP32", &[1 << 20], &params);
        assert_eq!(verdict(&request(&[&shm], &[])), Ok(()));
        assert_eq!(
            verdict(&request(&[&input("e", "FP32", &[0, 4], &[])], &[])),
            Ok(())
        );
    }

    #[test]
    fn malformed_and_split_over_chunks() {
        let message = request(&[&input("x", "FP32", &[4], &[])], &[&[7; 16]]);
        for cut in 0..message.len() {
            let (a, b) = message.split_at(cut);
            let chunks = [
                Bytes::from_static(b"\0\0\0\0\0"),
                Bytes::copy_from_slice(a),
                Bytes::copy_from_slice(b),
            ];
            assert_eq!(check(&chunks, 5, message.len()), Ok(()), "cut at {cut}");
            // cut short, it is refused (or, cut after the name, a request of no inputs,
            // which Triton judges), and never panics
            let verdict = check(&chunks, 5, cut);
            assert!(
                verdict.is_err() || cut == 0 || cut == 10,
                "truncated at {cut}"
            );
        }
        assert!(matches!(verdict(&[0x0a, 0x05, b'a']), Err(m) if m.starts_with("malformed")));
        assert!(verdict(&[0x0a, 0x01, 0xff])
            .unwrap_err()
            .contains("not UTF-8"));
    }

    #[test]
    fn python_repr() {
        assert_eq!(py_repr("a"), "'a'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'\"\\\n"), "'a\\'\"\\\\\\n'");
        assert_eq!(py_repr("é\u{1}"), "'é\\x01'");
        let mut sorted = DATATYPES;
        sorted.sort_unstable();
        assert_eq!(sorted, DATATYPES);
    }

    #[test]
    fn no_input_panics() {
        // A bounded property test: random and bit-flipped requests are judged, never panic.
        let base = request(
            &[
                &input("x", "BYTES", &[2], &[]),
                &input("y", "INT64", &[1, 2], &[]),
            ],
            &[&[1, 0, 0, 0, b'a', 0, 0, 0, 0], &[0; 16]],
        );
        assert_eq!(verdict(&base), Ok(()));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % m.len();
                m[i] ^= 1 << (next() % 8);
            }
            let _ = verdict(&m);
            let len = (next() as usize) % 64;
            let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = verdict(&noise);
        }
    }
}
