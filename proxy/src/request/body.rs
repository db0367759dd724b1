//! The body bytes routing needs. For OpenAI routes without `x-model`, the body is read until
//! the model scanner ([`crate::request::model_scan`]) has found the top-level `model`, and no
//! further; the bytes read are held in [`Held`] and handed to the upstream first, so it receives
//! the body exactly as it arrived. Cost: no copy for a body that arrives in one chunk; one
//! buffer (sized by `Content-Length`) when the model comes after the first chunk. For a
//! `prefix_affinity` route the prompt prefix is hashed from the same chunks
//! ([`crate::request::prefix_hash`]); when `model` came first, [`read_prefix`] reads on, to
//! `affinity.prefix_bytes` into the body at most.

use bytes::{Bytes, BytesMut};
use pingora_error::Result;
use pingora_proxy::Session;

use crate::request::error::ProxyError;
use crate::request::model_scan::{ModelScanner, Scan};
use crate::request::prefix_hash::{Prefix, PrefixHasher};
use crate::request::target::content_length;

/// Body bytes read for routing, to be sent upstream before the rest of the body.
#[derive(Debug, Default)]
pub struct Held {
    bytes: Option<Bytes>,
    /// Whether this attempt still has to send them (reset per attempt, so retries resend).
    pending: bool,
}

impl Held {
    /// How many bytes are held.
    pub fn len(&self) -> usize {
        self.bytes.as_ref().map_or(0, Bytes::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes held (a hedged request sends them with the rest of its body).
    pub fn bytes(&self) -> Option<&Bytes> {
        self.bytes.as_ref()
    }

    /// Replaces the held bytes by a rewrite of them ([`crate::request::stream_usage`]).
    pub fn replace(&mut self, bytes: Bytes) {
        self.bytes = Some(bytes);
    }

    /// Holds `chunk` after the bytes already held.
    fn append(&mut self, chunk: Bytes) {
        self.bytes = Some(match self.bytes.take() {
            None => chunk,
            Some(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + chunk.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                joined.freeze()
            }
        });
    }

    /// Arms the held bytes for a new upstream attempt.
    pub fn rearm(&mut self) {
        self.pending = self.bytes.is_some();
    }

    /// Puts the held bytes in front of `body` (the next chunk pingora read, or `None` at end of
    /// body). A no-op once sent for this attempt.
    pub fn prepend_to(&mut self, body: &mut Option<Bytes>) {
        if !std::mem::take(&mut self.pending) {
            return;
        }
        let Some(held) = self.bytes.as_ref() else {
            return;
        };
        *body = Some(match body.take() {
            Some(next) if !next.is_empty() => {
                let mut joined = BytesMut::with_capacity(held.len() + next.len());
                joined.extend_from_slice(held);
                joined.extend_from_slice(&next);
                joined.freeze()
            }
            _ => held.clone(),
        });
    }
}

/// Reads the body until its top-level `model` is known. A body that cannot be routed (no
/// `model`, not JSON, over `limit`) fails with its [`ProxyError`] as the cause; a failed read
/// from the client fails with pingora's error, marked as the client's (downstream). Each chunk
/// is also fed to `prefix`, when given.
pub async fn model_from_body(
    session: &mut Session,
    limit: usize,
    held: &mut Held,
    mut prefix: Option<&mut PrefixHasher>,
) -> Result<String> {
    let mut scanner = ModelScanner::new();
    // One chunk is held as is; more are joined into one buffer (the filter API takes one).
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    loop {
        // A failed read is the client's (malformed chunked encoding, timeout, gone).
        let read = session.read_request_body().await.map_err(|e| e.into_down());
        let Some(chunk) = read? else {
            return Err(ProxyError::InvalidBody(scanner.finish()).into_pingora());
        };
        total += chunk.len();
        if total > limit {
            return Err(ProxyError::TooLarge(limit).into_pingora());
        }
        let scan = scanner.feed(&chunk);
        if let Some(p) = prefix.as_deref_mut() {
            p.feed(&chunk);
        }
        match (&mut joined, held.bytes.take()) {
            (Some(buf), _) => buf.extend_from_slice(&chunk),
            (None, None) => held.bytes = Some(chunk),
            (None, Some(first)) => {
                let cap = content_length(&session.req_header().headers)
                    .unwrap_or(first.len() + chunk.len());
                let mut buf = BytesMut::with_capacity(cap.max(first.len() + chunk.len()));
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&chunk);
                joined = Some(buf);
            }
        }
        match scan {
            Ok(Scan::NeedMore) => continue,
            Ok(Scan::Found(model)) => {
                if let Some(buf) = joined {
                    held.bytes = Some(buf.freeze());
                }
                return Ok(model);
            }
            Err(e) => return Err(ProxyError::InvalidBody(e).into_pingora()),
        }
    }
}

/// Reads on (after the model was found) until `prefix` knows the key: at most to its
/// `prefix_bytes` into the body, or to the end of a shorter body. The bytes read are held like
/// the model scan's. Returns the key (`None`: no `messages` / `prompt` within the cap).
pub async fn read_prefix(
    session: &mut Session,
    limit: usize,
    held: &mut Held,
    prefix: &mut PrefixHasher,
) -> Result<Option<u64>> {
    while prefix.result() == Prefix::Pending {
        if session.is_body_done() {
            break;
        }
        let read = session.read_request_body().await.map_err(|e| e.into_down());
        let Some(chunk) = read? else {
            break;
        };
        if held.len() + chunk.len() > limit {
            return Err(ProxyError::TooLarge(limit).into_pingora());
        }
        prefix.feed(&chunk);
        held.append(chunk);
    }
    Ok(prefix.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_go_first_once_per_attempt() {
        let mut h = Held {
            bytes: Some(Bytes::from_static(b"{\"model\":\"m\",")),
            pending: false,
        };
        h.rearm();
        let mut body = Some(Bytes::from_static(b"\"x\":1}"));
        h.prepend_to(&mut body);
        assert_eq!(body.as_deref(), Some(&b"{\"model\":\"m\",\"x\":1}"[..]));
        let mut next = Some(Bytes::from_static(b"more"));
        h.prepend_to(&mut next);
        assert_eq!(next.as_deref(), Some(&b"more"[..]));
        // A retry sends them again; at end of body they are the whole body.
        h.rearm();
        let mut end = None;
        h.prepend_to(&mut end);
        assert_eq!(end.as_deref(), Some(&b"{\"model\":\"m\","[..]));
    }

    #[test]
    fn appended_chunks_are_held_in_order() {
        let mut h = Held::default();
        h.append(Bytes::from_static(b"{\"model\":"));
        h.append(Bytes::from_static(b"\"m\"}"));
        h.rearm();
        let mut end = None;
        h.prepend_to(&mut end);
        assert_eq!(end.as_deref(), Some(&b"{\"model\":\"m\"}"[..]));
    }
}
