//! The request's id, `x-request-id`: the client's own when it sent a usable one, else one
//! generated here. It is sent upstream, returned on every response (the upstream's and the
//! proxy's own errors, streams included) and written on every log line about the request.
//!
//! The rule (`multiverse_common::request_id`, shared with the control plane's API): a client's
//! value is kept when it is one header of 1 to [`MAX_LEN`] visible ASCII bytes (`!` to `~`: no
//! spaces, no control bytes, nothing a log line or a header could be forged with); anything
//! else (empty, too long, other bytes, the header twice) is replaced.
//!
//! Cost per request: one header lookup; without a usable id, 128 bits from the thread's
//! random generator (a user-space ChaCha, no syscall), 32 hex digits on the stack and one small
//! allocation for the header value, which the upstream request and the response share (a
//! reference count each). The name is typed once ([`NAME`]): a lookup parses nothing and an
//! insert (upstream with a generated id, and on the response) allocates nothing for the name
//! (pingora-http patch, third_party/PATCHES.md). A kept id goes upstream with the client's
//! headers: no insert there.

use http::HeaderValue;
use multiverse_common::request_id::{self as rule, usable};
use pingora_http::{RequestHeader, StaticHeaderName};

pub use rule::{HEADER, MAX_LEN};

/// [`HEADER`] as a typed name: looked up and inserted without a parse or an allocation.
pub static NAME: StaticHeaderName = StaticHeaderName::new(HEADER);

/// A request's id, and whether it was generated (so the upstream request needs it added).
#[derive(Debug, Clone)]
pub struct RequestId {
    value: HeaderValue,
    generated: bool,
}

impl Default for RequestId {
    /// No id yet (before `request_filter`; shown as `-`).
    fn default() -> Self {
        Self {
            value: HeaderValue::from_static("-"),
            generated: false,
        }
    }
}

impl RequestId {
    /// The client's `x-request-id` when usable, else a new one.
    pub fn of(req: &RequestHeader) -> Self {
        let mut sent = req.headers.get_all(NAME.name()).iter();
        match (sent.next(), sent.next()) {
            (Some(v), None) if usable(v.as_bytes()) => Self {
                value: v.clone(),
                generated: false,
            },
            _ => Self::generate(),
        }
    }

    /// A new id: 128 random bits as 32 lowercase hex digits.
    pub fn generate() -> Self {
        Self {
            value: shared_value(rule::generate()),
            generated: true,
        }
    }

    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// The id as text (always visible ASCII).
    pub fn as_str(&self) -> &str {
        self.value.to_str().unwrap_or("-")
    }

    /// Adds the id to the upstream request when the client's headers do not carry it already.
    pub fn write_upstream(&self, req: &mut RequestHeader) -> pingora_error::Result<()> {
        if self.generated {
            req.insert_header(&NAME, self.value.clone())?;
        }
        Ok(())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header value of `bytes` (visible ASCII) in one allocation that its clones share (a
/// `Bytes` made from a `Vec` would allocate again on its first clone).
pub(crate) fn shared_value<const N: usize>(bytes: [u8; N]) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(bytes))
        .unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ids: &[&[u8]]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).expect("req");
        for id in ids {
            r.append_header(HEADER, HeaderValue::from_bytes(id).expect("value"))
                .expect("append");
        }
        r
    }

    #[test]
    fn a_usable_client_id_is_kept_and_not_added_again() {
        let id = RequestId::of(&req(&[b"abc-123_X.y:z/="]));
        assert_eq!(id.as_str(), "abc-123_X.y:z/=");
        let mut up = req(&[b"abc-123_X.y:z/="]);
        id.write_upstream(&mut up).expect("write");
        assert_eq!(up.headers.get_all(HEADER).iter().count(), 1);
        let longest = vec![b'a'; MAX_LEN];
        assert_eq!(RequestId::of(&req(&[&longest])).as_str().len(), MAX_LEN);
    }

    #[test]
    fn unusable_ids_are_replaced() {
        let too_long = vec![b'a'; MAX_LEN + 1];
        let bad: [&[&[u8]]; 5] = [
            &[b""],
            &[b"has space"],
            &[b"tab\there"],
            &[&too_long],
            &[b"one", b"two"],
        ];
        for ids in bad {
            let id = RequestId::of(&req(ids));
            assert_eq!(id.as_str().len(), 32, "{ids:?}");
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
            let mut up = req(ids);
            id.write_upstream(&mut up).expect("write");
            let sent: Vec<_> = up.headers.get_all(HEADER).iter().collect();
            assert_eq!(sent, vec![id.value()], "{ids:?}");
        }
    }

    #[test]
    fn generated_ids_differ_and_are_hex() {
        let a = RequestId::of(&req(&[]));
        let b = RequestId::of(&req(&[]));
        assert_ne!(a.as_str(), b.as_str());
    }
}
