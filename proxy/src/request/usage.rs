//! Reads token counts from an OpenAI response as it streams past, without buffering it: the
//! `usage` object of a non-streamed body, or of the SSE chunk that carries it (the final one,
//! with `stream_options.include_usage`; vLLM's per-chunk cumulative counts work too, the last
//! value wins). The reader looks for the `"prompt_tokens"`, `"completion_tokens"` and
//! `"total_tokens"` members and their numbers; it keeps only the few bytes a member name or
//! number may be split across between two chunks. Inside a JSON string a quote is always
//! escaped, so text in a completion that spells a member name never matches.
//!
//! Every OpenAI-route response is read (issue 15): the counts go to
//! `tokens_total{model,endpoint,key,kind}` when the request ends, and charge the key's
//! tokens-per-minute cell in keys mode. Cost per response: no allocation (the carried tail is an
//! array in the request's context); per body chunk one `memmem` scan of the chunk (and of the
//! at most 96 bytes around the seam with the previous one) for the names' common end,
//! `_tokens"`, with a searcher built once per process; each hit's start is compared with the
//! three names.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Longest tail carried from one chunk to the next: a member name, the colon, spaces and a
/// number fit.
const CARRY: usize = 48;

/// What the three member names end with; a hit is one of them when it follows one of
/// [`STARTS`].
const END: &[u8] = b"_tokens\"";

/// The names' starts, with the slot of each in [`UsageReader::counts`].
const STARTS: [(&[u8], usize); 3] = [(b"\"prompt", 0), (b"\"completion", 1), (b"\"total", 2)];

/// The searcher for [`END`], built once (building one costs more than a scan of a body).
static FIND_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(END));

/// Token counts seen so far in one response.
#[derive(Debug, Clone)]
pub struct UsageReader {
    /// prompt, completion, total (the last value seen of each).
    counts: [Option<u64>; 3],
    /// The stream's last bytes (up to [`CARRY`]), held in place: no allocation per response.
    tail: [u8; CARRY],
    tail_len: usize,
}

impl Default for UsageReader {
    fn default() -> Self {
        Self {
            counts: [None; 3],
            tail: [0; CARRY],
            tail_len: 0,
        }
    }
}

impl UsageReader {
    /// Reads the next piece of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        let held = self.tail_len;
        if held > 0 {
            // Members split across the boundary: the end of the stream so far plus this
            // chunk's start.
            let take = chunk.len().min(CARRY);
            let mut joined = [0u8; 2 * CARRY];
            joined[..held].copy_from_slice(&self.tail[..held]);
            joined[held..held + take].copy_from_slice(&chunk[..take]);
            self.scan(&joined[..held + take]);
        }
        self.scan(chunk);
        // Keep the last CARRY bytes of the stream.
        if chunk.len() >= CARRY {
            self.tail.copy_from_slice(&chunk[chunk.len() - CARRY..]);
            self.tail_len = CARRY;
        } else {
            let keep = (held + chunk.len()).min(CARRY);
            let from_tail = keep - chunk.len();
            self.tail.copy_within(held - from_tail..held, 0);
            self.tail[from_tail..keep].copy_from_slice(chunk);
            self.tail_len = keep;
        }
    }

    /// Records every complete `"member": number` in `bytes` (the last one of each wins).
    fn scan(&mut self, bytes: &[u8]) {
        for at in FIND_END.find_iter(bytes) {
            let before = &bytes[..at];
            let Some(&(_, slot)) = STARTS.iter().find(|(start, _)| before.ends_with(start)) else {
                continue;
            };
            if let Some(n) = number_after(&bytes[at + END.len()..]) {
                self.counts[slot] = Some(n);
            }
        }
    }

    /// Tokens in (prompt) and out (completion) seen; `None` when the response had no usage.
    pub fn tokens(&self) -> Option<(u64, u64)> {
        let [prompt, completion, total] = self.counts;
        if prompt.is_none() && completion.is_none() && total.is_none() {
            return None;
        }
        let p = prompt.unwrap_or(0);
        let c = completion.unwrap_or_else(|| total.unwrap_or(0).saturating_sub(p));
        Some((p, c))
    }
}

/// The number after `: ` (with optional whitespace), if complete (a digit run followed by
/// something else than a digit).
fn number_after(bytes: &[u8]) -> Option<u64> {
    let mut i = 0;
    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    let start = i;
    let mut n: u64 = 0;
    while let Some(b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        i += 1;
    }
    // A number at the very end may continue in the next chunk: not complete yet.
    (i > start && i < bytes.len()).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(chunks: &[&[u8]]) -> Option<(u64, u64)> {
        let mut r = UsageReader::default();
        for c in chunks {
            r.feed(c);
        }
        r.tokens()
    }

    #[test]
    fn a_body_in_one_piece_or_split_anywhere_gives_the_same_counts() {
        let body: &[u8] = br#"{"id":"x","choices":[{"message":{"content":"say \"prompt_tokens\": 99"}}],"usage":{"prompt_tokens":12,"completion_tokens": 34,"total_tokens":46}}"#;
        assert_eq!(read(&[body]), Some((12, 34)));
        for cut in 1..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(read(&[a, b]), Some((12, 34)), "split at {cut}");
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(read(&bytes), Some((12, 34)));
    }

    #[test]
    fn sse_final_usage_chunk_and_embeddings() {
        let stream: &[&[u8]] = &[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n",
            b"data: [DONE]\n\n",
        ];
        assert_eq!(read(stream), Some((5, 7)));
        let emb: &[u8] = br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(read(&[emb]), Some((8, 0)));
        assert_eq!(read(&[b"{\"choices\":[]}"]), None);
        assert_eq!(read(&[b"{\"usage\":{\"total_tokens\":9}}"]), Some((0, 9)));
    }

    #[test]
    fn details_members_that_end_alike_are_not_counted() {
        // OpenAI's usage details end in `_tokens` too; only the three totals count, wherever
        // the body is split.
        let body: &[u8] = br#"{"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":7,"audio_prompt_tokens":9}}}"#;
        for cut in 1..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(read(&[a, b]), Some((10, 20)), "split at {cut}");
        }
        let only_details: &[u8] = br#"{"usage":{"cached_tokens":4,"xprompt_tokens":5}}"#;
        assert_eq!(read(&[only_details]), None);
    }
}
