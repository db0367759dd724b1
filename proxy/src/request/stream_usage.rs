//! Asking a backend for a stream's usage when the client did not (`[usage]
//! request_stream_usage`, issue 15), and hiding the answer from the client.
//!
//! Request side ([`ask_at`]): a streamed `chat/completions` or `completions` body (`"stream":
//! true`) with no `stream_options` member gets `,"stream_options":{"include_usage":true}` before
//! its closing `}`. It looks only at a body routing already holds whole (read to find `model`,
//! and complete: typical chat bodies arrive in one read); a body still arriving, or one routed
//! by `x-model` (never read), goes unchanged. Cost for such a body: a `memmem` for `"stream"`,
//! then one `serde_json` pass that decodes top-level keys only (no allocation, `IgnoredAny`
//! for values) and one copy of the body with the member added (one allocation); the upstream
//! `Content-Length` is adjusted. A client that sends `stream_options` itself (even
//! `{"include_usage": false}` or `null`) decides alone: its body goes unchanged, and a stream
//! it asked no usage for counts no tokens.
//!
//! Response side ([`HideUsage`]): the usage event (`"choices": []` and a `"usage"` object) of a
//! stream we asked for is not forwarded; every other byte is, `[DONE]` included. Events are
//! found by their blank line; an event split across two upstream chunks before its `choices`
//! are visible is held back until they are (at most [`HOLD_CAP`] bytes). Cost per chunk: a
//! `memchr` pass for newlines and a `memmem` for `"choices"` per event; no allocation unless
//! the chunk changes around the hidden event (a slice when it is at either end, else one copy),
//! or an event has to be held.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// The member added to a streamed request body that asks for no usage.
pub const ASK: &[u8] = br#","stream_options":{"include_usage":true}"#;

/// Most bytes of one SSE event held back while it is not known whether it is the usage event
/// (one is a few hundred bytes); a longer event is forwarded.
pub const HOLD_CAP: usize = 4096;

/// Whether requests to `path` may carry `stream_options` (OpenAI's and vLLM's completions).
pub fn path_streams(path: &str) -> bool {
    matches!(path, "/v1/chat/completions" | "/v1/completions")
}

/// Where [`ASK`] goes in the complete request body `body`: the offset of its closing `}` when it
/// is a JSON object with `"stream": true` and no `stream_options` member, else `None` (the body
/// stays as it is: not JSON, not streamed, or the client chose its own stream options).
pub fn ask_at(body: &[u8]) -> Option<usize> {
    // Most bodies are not streamed: no full pass for them. (A key spelled with escapes is not
    // found here: such a body is left alone.)
    memmem::find(body, b"\"stream\"")?;
    let top: Top = serde_json::from_slice(body).ok()?;
    if !top.stream || top.options {
        return None;
    }
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
    (body[end] == b'}').then_some(end)
}

/// What [`ask_at`] needs of the top-level object.
#[derive(Debug, Default)]
struct Top {
    stream: bool,
    options: bool,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut top = Top::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                // The last one wins, as in the backends' parsers; not a boolean: not JSON we
                // change.
                Key::Stream => top.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
                Key::StreamOptions => {
                    map.next_value::<IgnoredAny>()?;
                    top.options = true;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// A top-level key, compared without allocating.
enum Key {
    Stream,
    StreamOptions,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "stream" => Key::Stream,
            "stream_options" => Key::StreamOptions,
            _ => Key::Other,
        })
    }
}

/// `body` with [`ASK`] inserted at `at` (from [`ask_at`]).
pub fn with_ask(body: &[u8], at: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + ASK.len());
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(ASK);
    out.extend_from_slice(&body[at..]);
    out.freeze()
}

/// What is known of the current event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    /// At its start, or held back in `held` (not known yet).
    #[default]
    Unknown,
    /// Not the usage event: forwarded to its end.
    Forward,
    /// The usage event: dropped to its end.
    Drop,
}

/// Removes the usage event from an SSE stream; see the module docs.
#[derive(Debug, Default)]
pub struct HideUsage {
    mode: Mode,
    /// The current event's bytes so far, while `mode` is `Unknown` across chunks.
    held: Vec<u8>,
    /// The current event's bytes end in a line break (a `\r` after it allowed).
    line_end: bool,
}

/// Is an event (or its start, `whole` false) the usage event?
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Usage,
    Other,
    Unknown,
}

impl HideUsage {
    /// The chunk to forward instead of `chunk` (`None`: forward it as it is). At the end of the
    /// stream an event still held is let go (it had no blank line after it).
    pub fn filter(&mut self, chunk: &Bytes, end_of_stream: bool) -> Option<Bytes> {
        let mut out = Out::new(chunk);
        let mut pos = 0;
        while pos < chunk.len() {
            let end = self.event_end(chunk, pos);
            let stop = end.unwrap_or(chunk.len());
            let whole = end.is_some();
            match self.mode {
                Mode::Forward => out.keep(pos, stop),
                Mode::Drop => {}
                Mode::Unknown => {
                    let verdict = if self.held.is_empty() {
                        classify(&chunk[pos..stop], whole)
                    } else {
                        self.held.extend_from_slice(&chunk[pos..stop]);
                        classify(&self.held, whole)
                    };
                    match verdict {
                        Verdict::Usage => {
                            self.held.clear();
                            self.mode = Mode::Drop;
                        }
                        Verdict::Other => {
                            if self.held.is_empty() {
                                out.keep(pos, stop);
                            } else {
                                out.emit(&std::mem::take(&mut self.held));
                            }
                            self.mode = Mode::Forward;
                        }
                        Verdict::Unknown => {
                            if self.held.is_empty() {
                                self.held.extend_from_slice(&chunk[pos..stop]);
                            }
                            if self.held.len() > HOLD_CAP {
                                out.emit(&std::mem::take(&mut self.held));
                                self.mode = Mode::Forward;
                            }
                        }
                    }
                }
            }
            if whole {
                self.mode = Mode::Unknown;
            }
            pos = stop;
        }
        if end_of_stream && !self.held.is_empty() {
            out.emit(&std::mem::take(&mut self.held));
        }
        out.finish()
    }

    /// Bytes held back that must still go out: at the end of a stream that ended without a
    /// body chunk.
    pub fn release(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.held)))
    }

    /// The offset just past the blank line ending the current event, if it is in
    /// `chunk[from..]`.
    fn event_end(&mut self, chunk: &[u8], from: usize) -> Option<usize> {
        let mut i = from;
        while i < chunk.len() {
            if self.line_end {
                match chunk[i] {
                    b'\n' => {
                        self.line_end = false;
                        return Some(i + 1);
                    }
                    b'\r' => {
                        i += 1;
                        continue;
                    }
                    _ => self.line_end = false,
                }
            }
            let off = memchr::memchr(b'\n', &chunk[i..])?;
            i += off + 1;
            self.line_end = true;
        }
        None
    }
}

/// Whether `event` (all of it when `whole`) is the usage event: `"choices"` an empty array and
/// `"usage"` an object (Azure's first event has empty choices and no usage: forwarded).
fn classify(event: &[u8], whole: bool) -> Verdict {
    let unknown = if whole {
        Verdict::Other
    } else {
        Verdict::Unknown
    };
    let Some(choices) = value_of(event, b"\"choices\"") else {
        return unknown;
    };
    let Some(&open) = choices.first() else {
        return unknown;
    };
    if open != b'[' {
        return Verdict::Other;
    }
    match choices[1..].iter().find(|b| !b.is_ascii_whitespace()) {
        None => return unknown,
        Some(b']') => {}
        Some(_) => return Verdict::Other,
    }
    match value_of(event, b"\"usage\"").and_then(|v| v.first()) {
        Some(b'{') => Verdict::Usage,
        Some(_) => Verdict::Other,
        None => unknown,
    }
}

/// The bytes after the first `"name": ` (a member, not text that spells it) in `bytes`.
fn value_of<'a>(bytes: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    memmem::find_iter(bytes, name).find_map(|at| {
        let rest = &bytes[at + name.len()..];
        let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
        if rest[colon] != b':' {
            return None;
        }
        let rest = &rest[colon + 1..];
        let start = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        Some(&rest[start..])
    })
}

/// The forwarded bytes of one chunk: the chunk itself, one slice of it, or (rarely) a copy.
struct Out<'a> {
    chunk: &'a Bytes,
    /// The kept range while it is one run of `chunk`.
    run: Option<(usize, usize)>,
    /// A copy, once the output is more than one run.
    built: Option<BytesMut>,
}

impl<'a> Out<'a> {
    fn new(chunk: &'a Bytes) -> Self {
        Self {
            chunk,
            run: None,
            built: None,
        }
    }

    fn keep(&mut self, from: usize, to: usize) {
        if let Some(built) = self.built.as_mut() {
            built.extend_from_slice(&self.chunk[from..to]);
            return;
        }
        match self.run {
            None => self.run = Some((from, to)),
            Some((start, end)) if end == from => self.run = Some((start, to)),
            Some(_) => {
                self.build();
                self.keep(from, to);
            }
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.build();
        if let Some(built) = self.built.as_mut() {
            built.extend_from_slice(bytes);
        }
    }

    /// Moves the run into a copy.
    fn build(&mut self) {
        if self.built.is_none() {
            let mut built = BytesMut::with_capacity(self.chunk.len());
            if let Some((start, end)) = self.run.take() {
                built.extend_from_slice(&self.chunk[start..end]);
            }
            self.built = Some(built);
        }
    }

    fn finish(self) -> Option<Bytes> {
        if let Some(built) = self.built {
            return Some(built.freeze());
        }
        match self.run {
            Some((0, end)) if end == self.chunk.len() => None,
            Some((start, end)) => Some(self.chunk.slice(start..end)),
            None => Some(Bytes::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_streamed_bodies_without_stream_options_are_asked() {
        let asked = |body: &str| ask_at(body.as_bytes()).map(|at| with_ask(body.as_bytes(), at));
        let body = r#"{"model":"m","messages":[{"role":"user","content":"\"stream\": false"}],"stream":true} "#;
        let out = asked(body).expect("asked");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "\"stream\": false");
        assert_eq!(out.len(), body.len() + ASK.len());
        for unchanged in [
            r#"{"model":"m","stream":false}"#,
            r#"{"model":"m"}"#,
            r#"{"model":"m","stream":null}"#,
            r#"{"model":"m","stream":"true"}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"stream_options":{},"model":"m","stream":true}"#,
            r#"{"stream_options":null,"model":"m","stream":true}"#,
            r#"{"model":"m","stream":true,"stream\u005foptions":{}}"#,
            r#"{"model":"m","tools":[{"stream":true}]}"#,
            r#"{"model":"m","stream":true"#,
            r#"{"model":"m","stream":true} x"#,
            r#"[{"stream":true}]"#,
        ] {
            assert_eq!(asked(unchanged), None, "{unchanged}");
        }
        // The last `stream` wins, as in the backends.
        assert!(asked(r#"{"stream":false,"model":"m","stream":true}"#).is_some());
    }

    const ROLE: &[u8] =
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n";
    const TOKEN: &[u8] =
        b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"choices\\\":[]\"}}],\"usage\":null}\n\n";
    const AZURE: &[u8] = b"data: {\"choices\":[],\"prompt_filter_results\":[]}\n\n";
    const USAGE: &[u8] = b"data: {\"id\":\"x\",\"choices\": [ ],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\r\n\r\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut hide = HideUsage::default();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let chunk = Bytes::copy_from_slice(c);
            let eos = i + 1 == chunks.len();
            match hide.filter(&chunk, eos) {
                None => out.extend_from_slice(&chunk),
                Some(b) => out.extend_from_slice(&b),
            }
        }
        out
    }

    #[test]
    fn the_usage_event_is_removed_wherever_the_stream_is_cut() {
        let stream = [ROLE, AZURE, TOKEN, USAGE, DONE].concat();
        let want = [ROLE, AZURE, TOKEN, DONE].concat();
        assert_eq!(run(&[&stream]), want);
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(run(&[a, b]), want, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), want);
        let sevens: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(run(&sevens), want);
    }

    #[test]
    fn chunks_without_the_usage_event_are_forwarded_as_they_are() {
        let mut hide = HideUsage::default();
        for event in [ROLE, AZURE, TOKEN, DONE] {
            assert_eq!(hide.filter(&Bytes::from_static(event), false), None);
        }
        // The usage event alone, or at an end of its chunk: no copy.
        let mut hide = HideUsage::default();
        assert_eq!(
            hide.filter(&Bytes::from_static(USAGE), false).as_deref(),
            Some(&b""[..])
        );
        let both = Bytes::from([USAGE, DONE].concat());
        let out = HideUsage::default().filter(&both, true).expect("changed");
        assert_eq!(&out[..], DONE);
        assert_eq!(out.as_ptr(), both[USAGE.len()..].as_ptr(), "a slice");
    }

    #[test]
    fn a_long_or_unterminated_event_is_let_go() {
        let long = format!("data: {{\"x\":\"{}\"", "a".repeat(HOLD_CAP));
        let mut hide = HideUsage::default();
        let out = hide
            .filter(&Bytes::from(long.clone()), false)
            .expect("held");
        assert_eq!(out.len(), long.len(), "over the cap: forwarded");
        let mut hide = HideUsage::default();
        assert_eq!(
            hide.filter(&Bytes::from_static(b"data: {\"id\""), false)
                .as_deref(),
            Some(&b""[..])
        );
        assert_eq!(hide.release().as_deref(), Some(&b"data: {\"id\""[..]));
    }
}
