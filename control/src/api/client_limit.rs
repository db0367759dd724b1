//! The operator API's per-client-address request limit (`[admin] per_ip_rpm`, off by default):
//! a GCRA cell ([`multiverse_common::rate`]) per address (IPv6: per /64), 429 `RATE_LIMITED`
//! with `Retry-After` beyond it. The API is not a hot path: the cells live in a map behind a
//! mutex held for a lookup and a compare-and-swap, never across an await; addresses idle for a
//! minute are forgotten once the map holds many.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use multiverse_common::rate::Cell;

use super::{ApiError, ErrorCode};

/// Addresses kept before idle ones are dropped.
const PRUNE_AT: usize = 10_000;

/// Per-address cells.
pub struct ClientLimit {
    rpm: u64,
    origin: Instant,
    cells: Mutex<HashMap<IpAddr, Cell>>,
}

impl ClientLimit {
    pub fn new(rpm: u32) -> Self {
        ClientLimit {
            rpm: u64::from(rpm),
            origin: Instant::now(),
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// One request from `ip` at `now` (ns); the wait until it would be allowed, if refused.
    fn take(&self, ip: IpAddr, now: u64) -> Option<u64> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if cells.len() >= PRUNE_AT && !cells.contains_key(&ip) {
            cells.retain(|_, c| !c.idle(now));
        }
        let d = cells.entry(ip).or_default().take(self.rpm, 1, now);
        (!d.allowed).then_some(d.retry_after_ns)
    }
}

/// The address a limit counts: IPv4 as is, IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// Middleware: refuses a request over its address's rate (no address known: not limited).
pub async fn limit(
    State(limit): State<Option<Arc<ClientLimit>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(limit) = limit else {
        return next.run(req).await;
    };
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| bucket(c.0.ip()));
    let now = u64::try_from(limit.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
    if let Some(wait_ns) = ip.and_then(|ip| limit.take(ip, now)) {
        let secs = wait_ns.div_ceil(1_000_000_000).max(1);
        let mut resp = ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "more than {} requests a minute from this address; retry after {secs} s",
                limit.rpm
            ),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_limited_apart_and_v6_by_prefix() {
        let l = ClientLimit::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(l.take(a, 1), None);
        assert_eq!(l.take(a, 1), None);
        assert_eq!(l.take(a, 1), Some(30_000_000_000));
        assert_eq!(l.take("10.0.0.2".parse().expect("ip"), 1), None);
        let v6 = |s: &str| bucket(s.parse().expect("ip"));
        assert_eq!(v6("2001:db8::1"), v6("2001:db8::ffff:1"));
        assert_ne!(v6("2001:db8::1"), v6("2001:db8:0:1::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), a);
    }
}
