//! Finds the top-level `"model"` string in a JSON request body as it streams in.
//!
//! OpenAI requests are routed by their body's `model` field, and that field may come anywhere in
//! the object: the openai Python SDK writes `messages` first, so with a long prompt `model` sits
//! megabytes in. [`ModelScanner`] is a resumable, allocation-light state machine fed one body
//! chunk at a time; it stops as soon as the field is known, so the proxy holds back only the bytes
//! that routing strictly needs. It checks the JSON structure it walks (enough to reject garbage
//! with a clear message) but decodes nothing except object keys at depth 1 and the model string.
//! String contents are skipped with `memchr`, which keeps a 1 MiB prompt to a few hundred
//! microseconds.

use memchr::memchr2;

/// Longest model name accepted; longer values are rejected as invalid.
pub const MAX_MODEL_LEN: usize = 256;
/// Keys longer than this cannot be `model`; only this many bytes of a key are kept.
const KEY_KEEP: usize = 8;

/// What a fed chunk told us.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Keep feeding.
    NeedMore,
    /// The model name (already unescaped).
    Found(String),
}

/// Why a body cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("request body is not valid JSON: {0}")]
    Malformed(&'static str),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("`model` must be a string")]
    ModelNotString,
    #[error("`model` is longer than {MAX_MODEL_LEN} bytes")]
    ModelTooLong,
    #[error("request body has no `model` field")]
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `{`.
    Start,
    /// Inside the top-level object, before a key (or `}` when `first`).
    Key { first: bool },
    /// Inside a depth-1 key string.
    KeyStr { escape: Escape },
    /// After a key, before `:`.
    Colon,
    /// After `:`, before a value.
    Value,
    /// Inside the model string value.
    ModelStr { escape: Escape },
    /// Inside a string being skipped (a value, or one nested deeper).
    SkipStr { escaped: bool },
    /// Inside a nested object/array, `depth` levels below the top-level object.
    Nested { depth: u32 },
    /// Inside a scalar literal (number, true, false, null) at depth 1.
    Literal,
    /// After a depth-1 value, before `,` or `}`.
    AfterValue,
    /// The top-level object closed without a model.
    Closed,
}

/// Escape-sequence progress inside a decoded string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// Just saw `\`.
    Backslash,
    /// Inside `\uXXXX`: digits seen so far and their value.
    Unicode {
        digits: u8,
        value: u32,
    },
}

/// Incremental `model` finder; see the module docs.
#[derive(Debug)]
pub struct ModelScanner {
    state: State,
    /// Where a skipped string or nested value returns to.
    nested_return: Option<u32>,
    key: [u8; KEY_KEEP],
    key_len: usize,
    key_overflow: bool,
    model: Vec<u8>,
}

impl Default for ModelScanner {
    fn default() -> Self {
        Self::new()
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl ModelScanner {
    pub fn new() -> Self {
        Self {
            state: State::Start,
            nested_return: None,
            key: [0; KEY_KEEP],
            key_len: 0,
            key_overflow: false,
            model: Vec::new(),
        }
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Scan, ScanError> {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::Start => {
                    if b == b'{' {
                        self.state = State::Key { first: true };
                    } else if !is_ws(b) && !self.is_bom_byte(b) {
                        return Err(ScanError::NotAnObject);
                    }
                }
                State::Key { first } => {
                    if b == b'"' {
                        self.key_len = 0;
                        self.key_overflow = false;
                        self.state = State::KeyStr {
                            escape: Escape::None,
                        };
                    } else if b == b'}' && first {
                        self.state = State::Closed;
                    } else if !is_ws(b) {
                        return Err(ScanError::Malformed("expected an object key"));
                    }
                }
                State::KeyStr { escape } => {
                    let (next, done) = self.string_byte(escape, b, Target::Key)?;
                    self.state = if done {
                        State::Colon
                    } else {
                        State::KeyStr { escape: next }
                    };
                }
                State::Colon => {
                    if b == b':' {
                        self.state = State::Value;
                    } else if !is_ws(b) {
                        return Err(ScanError::Malformed("expected ':' after an object key"));
                    }
                }
                State::Value => {
                    if is_ws(b) {
                        // keep skipping
                    } else if self.key_is_model() {
                        if b != b'"' {
                            return Err(ScanError::ModelNotString);
                        }
                        self.model.clear();
                        self.state = State::ModelStr {
                            escape: Escape::None,
                        };
                    } else {
                        self.state = match b {
                            b'"' => {
                                self.nested_return = None;
                                State::SkipStr { escaped: false }
                            }
                            b'{' | b'[' => State::Nested { depth: 1 },
                            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => State::Literal,
                            _ => return Err(ScanError::Malformed("expected a value")),
                        };
                    }
                }
                State::ModelStr { escape } => {
                    let (next, done) = self.string_byte(escape, b, Target::Model)?;
                    if done {
                        let model = std::mem::take(&mut self.model);
                        return String::from_utf8(model)
                            .map(Scan::Found)
                            .map_err(|_| ScanError::Malformed("`model` is not valid UTF-8"));
                    }
                    self.state = State::ModelStr { escape: next };
                }
                State::SkipStr { escaped } => {
                    if escaped {
                        self.state = State::SkipStr { escaped: false };
                    } else {
                        // Fast path: jump to the next quote or backslash.
                        match memchr2(b'"', b'\\', &chunk[i..]) {
                            None => return Ok(Scan::NeedMore),
                            Some(off) => {
                                i += off;
                                if chunk[i] == b'\\' {
                                    self.state = State::SkipStr { escaped: true };
                                } else {
                                    self.state = match self.nested_return.take() {
                                        Some(depth) => State::Nested { depth },
                                        None => State::AfterValue,
                                    };
                                }
                            }
                        }
                    }
                }
                State::Nested { depth } => match b {
                    b'"' => {
                        self.nested_return = Some(depth);
                        self.state = State::SkipStr { escaped: false };
                    }
                    b'{' | b'[' => self.state = State::Nested { depth: depth + 1 },
                    b'}' | b']' => {
                        self.state = if depth == 1 {
                            State::AfterValue
                        } else {
                            State::Nested { depth: depth - 1 }
                        }
                    }
                    _ => {}
                },
                State::Literal => {
                    if b == b',' {
                        self.state = State::Key { first: false };
                    } else if b == b'}' {
                        self.state = State::Closed;
                    } else if is_ws(b) {
                        self.state = State::AfterValue;
                    } else if !b.is_ascii_alphanumeric() && !matches!(b, b'.' | b'-' | b'+') {
                        return Err(ScanError::Malformed("invalid literal"));
                    }
                }
                State::AfterValue => {
                    if b == b',' {
                        self.state = State::Key { first: false };
                    } else if b == b'}' {
                        self.state = State::Closed;
                    } else if !is_ws(b) {
                        return Err(ScanError::Malformed("expected ',' or '}'"));
                    }
                }
                State::Closed => {
                    if !is_ws(b) {
                        return Err(ScanError::Malformed("trailing data after the object"));
                    }
                }
            }
            i += 1;
        }
        Ok(Scan::NeedMore)
    }

    /// Called at end of body when no model was found.
    pub fn finish(&self) -> ScanError {
        match self.state {
            State::Start => ScanError::NotAnObject,
            State::Closed => ScanError::Missing,
            _ => ScanError::Malformed("unexpected end of body"),
        }
    }

    fn is_bom_byte(&self, b: u8) -> bool {
        // A UTF-8 BOM (EF BB BF) before the object is tolerated.
        matches!(b, 0xEF | 0xBB | 0xBF)
    }

    fn key_is_model(&self) -> bool {
        !self.key_overflow && &self.key[..self.key_len] == b"model"
    }

    fn push(&mut self, target: Target, bytes: &[u8]) -> Result<(), ScanError> {
        match target {
            Target::Key => {
                for &b in bytes {
                    if self.key_len < KEY_KEEP {
                        self.key[self.key_len] = b;
                        self.key_len += 1;
                    } else {
                        self.key_overflow = true;
                    }
                }
            }
            Target::Model => {
                if self.model.len() + bytes.len() > MAX_MODEL_LEN {
                    return Err(ScanError::ModelTooLong);
                }
                self.model.extend_from_slice(bytes);
            }
        }
        Ok(())
    }

    /// One byte of a decoded string; returns the next escape state and whether it closed.
    fn string_byte(
        &mut self,
        escape: Escape,
        b: u8,
        target: Target,
    ) -> Result<(Escape, bool), ScanError> {
        match escape {
            Escape::None => match b {
                b'"' => return Ok((Escape::None, true)),
                b'\\' => return Ok((Escape::Backslash, false)),
                0x00..=0x1f => return Err(ScanError::Malformed("control character in a string")),
                _ => self.push(target, &[b])?,
            },
            Escape::Backslash => {
                let decoded = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        return Ok((
                            Escape::Unicode {
                                digits: 0,
                                value: 0,
                            },
                            false,
                        ))
                    }
                    _ => return Err(ScanError::Malformed("invalid escape in a string")),
                };
                self.push(target, &[decoded])?;
            }
            Escape::Unicode { digits, value } => {
                let d = (b as char)
                    .to_digit(16)
                    .ok_or(ScanError::Malformed("invalid \\u escape"))?;
                let value = value * 16 + d;
                if digits < 3 {
                    return Ok((
                        Escape::Unicode {
                            digits: digits + 1,
                            value,
                        },
                        false,
                    ));
                }
                // Lone surrogates cannot be a routable name; encode U+FFFD instead.
                let c = char::from_u32(value).unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut buf = [0u8; 4];
                self.push(target, c.encode_utf8(&mut buf).as_bytes())?;
            }
        }
        Ok((Escape::None, false))
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Key,
    Model,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8]) -> Result<String, ScanError> {
        let mut s = ModelScanner::new();
        match s.feed(body)? {
            Scan::Found(m) => Ok(m),
            Scan::NeedMore => Err(s.finish()),
        }
    }

    /// Feeds one byte at a time: every state must survive a chunk boundary anywhere.
    fn scan_bytewise(body: &[u8]) -> Result<String, ScanError> {
        let mut s = ModelScanner::new();
        for b in body.chunks(1) {
            if let Scan::Found(m) = s.feed(b)? {
                return Ok(m);
            }
        }
        Err(s.finish())
    }

    #[test]
    fn finds_model_first_or_last() {
        for body in [
            &br#"{"model":"demo","messages":[]}"#[..],
            br#"{"messages":[{"role":"user","content":"hi \"model\": {x}"}],"model":"demo"}"#,
            br#" { "stream" : true , "n": -1.5e3, "x": null, "model" : "demo" } "#,
            br#"{"nested":{"model":"wrong"},"model":"demo"}"#,
            br#"{"a":[["model"],{"b":"}"}],"model":"demo"}"#,
        ] {
            assert_eq!(scan_all(body).as_deref(), Ok("demo"), "{body:?}");
            assert_eq!(scan_bytewise(body).as_deref(), Ok("demo"), "{body:?}");
        }
    }

    #[test]
    fn decodes_escapes_in_key_and_value() {
        let body = br#"{"mod\u0065l":"org\/m\u00e9\"x"}"#;
        assert_eq!(scan_bytewise(body).as_deref(), Ok("org/m\u{e9}\"x"));
    }

    #[test]
    fn long_keys_are_not_model() {
        assert_eq!(
            scan_all(br#"{"modelling":"x","model_x":"y"}"#),
            Err(ScanError::Missing)
        );
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(scan_all(b"[1,2]"), Err(ScanError::NotAnObject));
        assert_eq!(scan_all(b""), Err(ScanError::NotAnObject));
        assert_eq!(scan_all(br#"{"model":5}"#), Err(ScanError::ModelNotString));
        assert_eq!(scan_all(br#"{"a":1}"#), Err(ScanError::Missing));
        assert_eq!(scan_all(b"{}"), Err(ScanError::Missing));
        assert!(matches!(
            scan_all(br#"{"a":1"#),
            Err(ScanError::Malformed(_))
        ));
        assert!(matches!(
            scan_all(br#"{"a" 1}"#),
            Err(ScanError::Malformed(_))
        ));
        assert!(matches!(
            scan_all(b"{model: 1}"),
            Err(ScanError::Malformed(_))
        ));
        let long = format!(r#"{{"model":"{}"}}"#, "x".repeat(MAX_MODEL_LEN + 1));
        assert_eq!(scan_all(long.as_bytes()), Err(ScanError::ModelTooLong));
    }

    #[test]
    fn model_after_a_megabyte_prompt() {
        let prompt = "lorem \\\"ipsum\\\" {[ ".repeat(60_000);
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"{prompt}"}}],"stream":false,"model":"big"}}"#
        );
        assert!(body.len() > 1 << 20);
        let mut s = ModelScanner::new();
        let mut found = None;
        for chunk in body.as_bytes().chunks(16 * 1024) {
            if let Scan::Found(m) = s.feed(chunk).expect("valid") {
                found = Some(m);
            }
        }
        assert_eq!(found.as_deref(), Some("big"));
    }
}
