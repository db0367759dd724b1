//! The prompt-prefix key of `lb = "prefix_affinity"`: a hash of the first messages of a chat
//! body (or of a completion's `prompt`), computed as the body streams in, beside the `model`
//! scan.
//!
//! What is hashed: `messages[0..k]` (`k` = `affinity.prefix_messages`, default 1: the system
//! prompt), or the `prompt` value, as raw JSON with the whitespace outside strings left out,
//! each message object's members hashed apart and summed, so `{"role":..,"content":..}` and
//! `{"content":..,"role":..}` (serializers differ) key alike; never more than the first
//! `affinity.prefix_bytes` bytes of the body (default 4096): a longer prefix is keyed by the
//! part inside the cap. So the key depends on the body's bytes only, never on how they were
//! split into chunks, and every proxy replica computes the same key for the same body. The
//! hash is 64-bit FNV-1a (`fnv`), a fixed, specified function (not std's `DefaultHasher`, which
//! may change between Rust releases). Strings are compared as sent (`\u00e9` is not `é`).
//!
//! How far it looks: when `messages` comes before `model` (the openai SDKs' order), the bytes
//! are already held for the model scan and hashing reads nothing more. When `model` comes first,
//! routing reads on (at most to `prefix_bytes` into the body) only for a `prefix_affinity`
//! route; no other route reads a byte more. The walker only tracks the top-level object's keys
//! and string and nesting state; the model scanner validates the JSON. Escaped key names
//! (`"m\u0065ssages"`) are not recognised: such a body simply has no key. No allocation.

use std::hash::Hasher;

use fnv::FnvHasher;
use memchr::memchr2;

/// What to hash (the proxy's `[affinity]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixScan {
    /// Bytes of the body looked at, at most.
    pub max_bytes: usize,
    /// Leading `messages` elements hashed.
    pub messages: u32,
}

/// Where the hasher is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// It needs more of the body.
    Pending,
    /// Finished: the key, or `None` when the body has no `messages` / `prompt` within the cap.
    Done(Option<u64>),
}

/// Which top-level key's value is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    Messages,
    Prompt,
}

/// Incremental prefix hasher; see the module docs.
pub struct PrefixHasher {
    scan: PrefixScan,
    /// Body bytes consumed so far.
    seen: usize,
    /// Nesting depth (1: inside the top-level object).
    depth: u32,
    in_str: bool,
    escaped: bool,
    /// At depth 1, the next string is a key (not a value).
    want_key: bool,
    /// The depth-1 string being read is a key.
    in_key: bool,
    key: [u8; 8],
    key_len: usize,
    /// The key whose value comes next.
    field: Field,
    /// Hashing the value of `messages` / `prompt`.
    capturing: bool,
    /// Which of the two.
    captured_field: Field,
    /// Bytes hashed.
    captured: usize,
    /// Complete `messages` elements seen.
    elements: u32,
    /// The key so far: the raw bytes outside message objects, each message object's sum.
    hash: FnvHasher,
    /// Inside a message object: its members so far (sum of their hashes) and the one read now.
    message_open: bool,
    members: u64,
    member: FnvHasher,
    result: Prefix,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl PrefixHasher {
    pub fn new(scan: PrefixScan) -> Self {
        Self {
            scan,
            seen: 0,
            depth: 0,
            in_str: false,
            escaped: false,
            want_key: false,
            in_key: false,
            key: [0; 8],
            key_len: 0,
            field: Field::Other,
            capturing: false,
            captured_field: Field::Other,
            captured: 0,
            elements: 0,
            hash: FnvHasher::default(),
            message_open: false,
            members: 0,
            member: FnvHasher::default(),
            result: Prefix::Pending,
        }
    }

    /// The key, once known.
    pub fn result(&self) -> Prefix {
        self.result
    }

    /// At the end of the body: the key of what was read (a body cut short keys by its part).
    pub fn finish(&mut self) -> Option<u64> {
        if self.result == Prefix::Pending {
            self.end();
        }
        match self.result {
            Prefix::Done(key) => key,
            Prefix::Pending => None,
        }
    }

    fn end(&mut self) {
        if self.in_message() {
            // Cut at the cap inside a message: what was read of it counts.
            self.close_message();
        }
        let key = (self.capturing && self.captured > 0).then(|| self.hash.finish());
        self.result = Prefix::Done(key);
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Prefix {
        if self.result != Prefix::Pending {
            return self.result;
        }
        // Only the first `max_bytes` of the body count.
        let room = self.scan.max_bytes.saturating_sub(self.seen);
        let chunk = &chunk[..chunk.len().min(room)];
        let mut i = 0;
        while i < chunk.len() {
            if self.in_str {
                if self.escaped {
                    self.escaped = false;
                    self.take(&chunk[i..=i]);
                    i += 1;
                    continue;
                }
                match memchr2(b'"', b'\\', &chunk[i..]) {
                    None => {
                        self.string_bytes(&chunk[i..]);
                        i = chunk.len();
                    }
                    Some(off) => {
                        self.string_bytes(&chunk[i..i + off]);
                        let b = chunk[i + off];
                        self.take(&[b]);
                        if b == b'\\' {
                            self.escaped = true;
                            if self.in_key {
                                // An escaped key is none of ours.
                                self.key_len = usize::MAX / 2;
                            }
                        } else {
                            self.in_str = false;
                            if self.close_string() {
                                return self.result;
                            }
                        }
                        i += off + 1;
                    }
                }
                continue;
            }
            let b = chunk[i];
            i += 1;
            if is_ws(b) {
                continue;
            }
            if self.structural(b) {
                return self.result;
            }
        }
        self.seen += chunk.len();
        if self.seen >= self.scan.max_bytes {
            self.end();
        }
        self.result
    }

    /// Bytes inside a string (no quote or backslash among them).
    fn string_bytes(&mut self, bytes: &[u8]) {
        if self.in_key {
            for &b in bytes {
                if self.key_len < self.key.len() {
                    self.key[self.key_len] = b;
                }
                self.key_len = self.key_len.saturating_add(1);
            }
        }
        self.take(bytes);
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.capturing {
            if self.in_message() {
                self.member.write(bytes);
            } else {
                self.hash.write(bytes);
            }
            self.captured += bytes.len();
        }
    }

    /// Inside one object element of `messages` (its members hash apart).
    fn in_message(&self) -> bool {
        self.captured_field == Field::Messages && self.depth >= 3 && self.message_open
    }

    /// The member being read ends (`,` or `}` of the message object).
    fn close_member(&mut self) {
        let member = std::mem::take(&mut self.member).finish();
        self.members = self.members.wrapping_add(member);
    }

    /// The message object ends: its members' sum, whatever their order, goes into the key.
    fn close_message(&mut self) {
        self.close_member();
        self.message_open = false;
        let sum = std::mem::take(&mut self.members);
        self.hash.write(&sum.to_le_bytes());
    }

    /// A string closed; true when that finished the key.
    fn close_string(&mut self) -> bool {
        if self.in_key {
            self.in_key = false;
            let key = &self.key[..self.key_len.min(self.key.len())];
            self.field = match (self.key_len, key) {
                (8, b"messages") => Field::Messages,
                (6, b"prompt") => Field::Prompt,
                _ => Field::Other,
            };
            return false;
        }
        if self.capturing && self.depth == 1 {
            // A string `prompt` ended.
            self.end();
            return true;
        }
        false
    }

    /// A byte outside strings (not whitespace); true when that finished the key.
    fn structural(&mut self, b: u8) -> bool {
        if self.depth == 0 {
            if b == b'{' {
                self.depth = 1;
                self.want_key = true;
            }
            // Anything else: not an object (the model scan says so); nothing to hash yet.
            return false;
        }
        if self.depth == 1 && !self.capturing {
            match b {
                b'"' if self.want_key => {
                    self.in_str = true;
                    self.in_key = true;
                    self.key_len = 0;
                    self.want_key = false;
                }
                b':' => {}
                b',' => self.want_key = true,
                b'}' => {
                    self.end();
                    return true;
                }
                _ => {
                    // The first byte of a value.
                    self.capturing = matches!(
                        (self.field, b),
                        (Field::Messages, b'[') | (Field::Prompt, b'"' | b'[')
                    );
                    self.captured_field = self.field;
                    self.field = Field::Other;
                    if self.capturing && b == b'[' {
                        // The array's own bracket is not part of an element.
                        self.depth = 2;
                        return false;
                    }
                    self.take(&[b]);
                    match b {
                        b'"' => self.in_str = true,
                        b'{' | b'[' => self.depth += 1,
                        _ => {}
                    }
                }
            }
            return false;
        }
        // Inside a nested value (or the captured one).
        match b {
            b'"' => {
                self.take(&[b]);
                self.in_str = true;
            }
            b'{' if self.capturing && self.depth == 2 && self.captured_field == Field::Messages => {
                // A message object opens: its members are hashed one by one.
                self.depth = 3;
                self.message_open = true;
                self.members = 0;
                self.member = FnvHasher::default();
                self.captured += 1;
            }
            b',' if self.in_message() && self.depth == 3 => {
                self.close_member();
                self.captured += 1;
            }
            b'}' if self.in_message() && self.depth == 3 => {
                self.close_message();
                self.depth = 2;
                self.captured += 1;
            }
            b'{' | b'[' => {
                self.take(&[b]);
                self.depth += 1;
            }
            b'}' | b']' => {
                self.depth -= 1;
                if self.capturing && self.depth == 1 {
                    // The captured array closed.
                    self.end();
                    return true;
                }
                self.take(&[b]);
            }
            b',' if self.capturing && self.depth == 2 && self.captured_field == Field::Messages => {
                self.elements += 1;
                if self.elements >= self.scan.messages {
                    self.end();
                    return true;
                }
                self.take(&[b]);
            }
            _ => self.take(&[b]),
        }
        false
    }
}

/// The key of a session header's value (a different function of its bytes than any body key
/// only by accident; both are FNV-1a).
pub fn session_key(value: &[u8]) -> u64 {
    let mut h = FnvHasher::default();
    h.write(b"session:");
    h.write(value);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCAN: PrefixScan = PrefixScan {
        max_bytes: 4096,
        messages: 1,
    };

    fn key_with(scan: PrefixScan, body: &[u8], chunk: usize) -> Option<u64> {
        let mut h = PrefixHasher::new(scan);
        for c in body.chunks(chunk.max(1)) {
            if let Prefix::Done(k) = h.feed(c) {
                return k;
            }
        }
        h.finish()
    }

    fn key(body: &str) -> Option<u64> {
        key_with(SCAN, body.as_bytes(), body.len())
    }

    fn fnv(bytes: &[u8]) -> u64 {
        let mut h = FnvHasher::default();
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn hashes_the_first_message_without_whitespace() {
        let a = r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#;
        let b = "{ \"messages\" : [ {\"role\": \"system\",\n \"content\": \"be brief\"} , {\"role\":\"user\",\"content\":\"other\"}], \"model\":\"m\"}";
        assert!(key(a).is_some());
        assert_eq!(key(a), key(b), "same system prompt, other user message");
        let swapped = r#"{"messages":[{"content":"be brief","role":"system"}],"model":"m"}"#;
        assert_eq!(key(a), key(swapped), "member order does not matter");
        let other_role = r#"{"messages":[{"content":"be brief","role":"user"}],"model":"m"}"#;
        assert_ne!(key(a), key(other_role));
        let c = a.replace("be brief", "be long");
        assert_ne!(key(a), key(&c));
    }

    #[test]
    fn chunking_never_changes_the_key() {
        let body = br#"{"stream":true,"x":{"messages":[1]},"messages":[{"role":"system","content":"a \"quoted\" \\ prompt {[,"},{"role":"user","content":"q"}],"model":"m"}"#;
        let whole = key_with(SCAN, body, body.len());
        assert!(whole.is_some());
        for size in 1..body.len() {
            assert_eq!(key_with(SCAN, body, size), whole, "chunks of {size}");
        }
    }

    #[test]
    fn more_messages_and_prompts() {
        let two = PrefixScan {
            messages: 2,
            ..SCAN
        };
        let body = br#"{"messages":[{"c":"s"},{"c":"u1"},{"c":"u2"}]}"#;
        let first_two = br#"{"messages":[{"c":"s"},{"c":"u1"}]}"#;
        assert!(key_with(two, body, 7).is_some());
        assert_eq!(key_with(two, body, 7), key_with(two, first_two, 100));
        assert_ne!(key_with(two, body, 7), key_with(SCAN, body, 7), "k matters");
        let reordered = br#"{"messages":[{"c":"u1"},{"c":"s"}]}"#;
        assert_ne!(key_with(two, first_two, 9), key_with(two, reordered, 9));
        // Fewer elements than k: the whole array.
        let short = br#"{"messages":[{"c":"s"}]}"#;
        assert_eq!(key_with(two, short, 3), key_with(SCAN, body, 5));
        assert_eq!(
            key(r#"{"model":"m","prompt":"Once upon"}"#),
            Some(fnv(br#""Once upon""#))
        );
        assert_eq!(
            key(r#"{"prompt":["a", "b"],"model":"m"}"#),
            Some(fnv(br#""a","b""#))
        );
    }

    #[test]
    fn no_key_without_messages_or_prompt() {
        assert_eq!(key(r#"{"model":"m","input":"text"}"#), None);
        assert_eq!(key(r#"{"model":"m","messages":[]}"#), None);
        assert_eq!(key(r#"{"model":"m","messages":"x"}"#), None);
        assert_eq!(key(r#"{"model":"m","promptly":"x"}"#), None);
        assert_eq!(key("[1,2]"), None);
        assert_eq!(key(""), None);
    }

    #[test]
    fn looks_no_further_than_the_cap() {
        let cap = PrefixScan {
            max_bytes: 64,
            messages: 1,
        };
        let long = format!(
            r#"{{"messages":[{{"role":"system","content":"{}"}}],"model":"m"}}"#,
            "x".repeat(1000)
        );
        let other = long.replace("x\"}", "y\"}");
        let k = key_with(cap, long.as_bytes(), 10);
        assert!(k.is_some());
        assert_eq!(
            k,
            key_with(cap, other.as_bytes(), 1000),
            "differs past the cap"
        );
        let mut h = PrefixHasher::new(cap);
        assert_eq!(h.feed(&long.as_bytes()[..63]), Prefix::Pending);
        assert!(matches!(
            h.feed(&long.as_bytes()[63..]),
            Prefix::Done(Some(_))
        ));
        // `messages` starting past the cap: no key.
        let late = format!(r#"{{"pad":"{}","messages":[1]}}"#, "p".repeat(100));
        assert_eq!(key_with(cap, late.as_bytes(), 9), None);
    }
}
