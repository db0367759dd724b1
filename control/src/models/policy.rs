//! A model's routing policy: the checks every [`PolicySpec`] passes wherever it is written
//! (`[models.<name>]`, a backend's or an instance's `policy`, `PUT /admin/models/{name}/policy`),
//! the layering of several (an unset field falls through to the next layer) and the wire form
//! proxies receive.

use std::str::FromStr;

use multiverse_common::LbStrategy;
use multiverse_proto::discovery::v1 as pb;

pub use crate::store::PolicySpec;

/// Longest timeout accepted (one hour): a longer one is a typo, not a policy.
pub const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// Most retries accepted: each is another endpoint tried before the first byte.
pub const MAX_RETRIES: u32 = 10;
/// Longest admission queue accepted per model (per proxy).
pub const MAX_QUEUE: u32 = 100_000;

/// Why a policy is refused, by field (as the config file and the API spell it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct PolicyInvalid {
    pub field: &'static str,
    pub message: String,
}

/// Checks every field that is set.
pub fn validate(p: &PolicySpec) -> Result<(), PolicyInvalid> {
    if let Some(lb) = &p.lb {
        LbStrategy::from_str(lb).map_err(|e| PolicyInvalid {
            field: "lb",
            message: e.to_string(),
        })?;
    }
    if let Some(n) = p.max_retries {
        if n > MAX_RETRIES {
            return Err(PolicyInvalid {
                field: "max_retries",
                message: format!("{n} is more than {MAX_RETRIES}"),
            });
        }
    }
    if let Some(n) = p.queue_max {
        if n > MAX_QUEUE {
            return Err(PolicyInvalid {
                field: "queue_max",
                message: format!("{n} is more than {MAX_QUEUE}"),
            });
        }
    }
    for (field, v) in [
        ("queue_timeout_ms", p.queue_timeout_ms),
        ("connect_timeout_ms", p.connect_timeout_ms),
        ("first_byte_timeout_ms", p.first_byte_timeout_ms),
        ("idle_timeout_ms", p.idle_timeout_ms),
    ] {
        match v {
            Some(0) => {
                return Err(PolicyInvalid {
                    field,
                    message: "must be greater than 0 (leave it out for the proxy's default)".into(),
                })
            }
            Some(ms) if ms > MAX_TIMEOUT_MS => {
                return Err(PolicyInvalid {
                    field,
                    message: format!("{ms} is more than {MAX_TIMEOUT_MS} (one hour)"),
                })
            }
            _ => {}
        }
    }
    // 0 is "off", a value in its own right (it overrides a lower layer's hedging).
    if let Some(ms) = p.hedge_after_ms.filter(|ms| *ms > MAX_TIMEOUT_MS) {
        return Err(PolicyInvalid {
            field: "hedge_after_ms",
            message: format!("{ms} is more than {MAX_TIMEOUT_MS} (one hour)"),
        });
    }
    Ok(())
}

/// `upper` with its unset fields taken from `lower`.
pub fn layer(upper: &PolicySpec, lower: &PolicySpec) -> PolicySpec {
    PolicySpec {
        lb: upper.lb.clone().or_else(|| lower.lb.clone()),
        max_retries: upper.max_retries.or(lower.max_retries),
        connect_timeout_ms: upper.connect_timeout_ms.or(lower.connect_timeout_ms),
        first_byte_timeout_ms: upper.first_byte_timeout_ms.or(lower.first_byte_timeout_ms),
        idle_timeout_ms: upper.idle_timeout_ms.or(lower.idle_timeout_ms),
        queue_max: upper.queue_max.or(lower.queue_max),
        queue_timeout_ms: upper.queue_timeout_ms.or(lower.queue_timeout_ms),
        hedge_after_ms: upper.hedge_after_ms.or(lower.hedge_after_ms),
    }
}

/// The wire form: unset fields are the wire's "proxy default" (0, or absent `max_retries`).
/// An `lb` that does not parse (never stored: every layer is validated) is the default.
pub fn to_pb(p: &PolicySpec) -> pb::RoutingPolicy {
    let lb =
        p.lb.as_deref()
            .and_then(|s| LbStrategy::from_str(s).ok())
            .map_or(pb::LbStrategy::Unspecified, pb::LbStrategy::from);
    pb::RoutingPolicy {
        lb: lb as i32,
        max_retries: p.max_retries,
        connect_timeout_ms: p.connect_timeout_ms.unwrap_or(0),
        first_byte_timeout_ms: p.first_byte_timeout_ms.unwrap_or(0),
        idle_timeout_ms: p.idle_timeout_ms.unwrap_or(0),
        queue_max: p.queue_max.unwrap_or(0),
        queue_timeout_ms: p.queue_timeout_ms.unwrap_or(0),
        hedge_after_ms: p.hedge_after_ms.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_field() {
        let bad = |p: PolicySpec| validate(&p).expect_err("invalid").field;
        assert_eq!(
            bad(PolicySpec {
                lb: Some("fastest".into()),
                ..Default::default()
            }),
            "lb"
        );
        assert_eq!(
            bad(PolicySpec {
                max_retries: Some(11),
                ..Default::default()
            }),
            "max_retries"
        );
        assert_eq!(
            bad(PolicySpec {
                first_byte_timeout_ms: Some(0),
                ..Default::default()
            }),
            "first_byte_timeout_ms"
        );
        assert_eq!(
            bad(PolicySpec {
                idle_timeout_ms: Some(MAX_TIMEOUT_MS + 1),
                ..Default::default()
            }),
            "idle_timeout_ms"
        );
        assert_eq!(
            bad(PolicySpec {
                hedge_after_ms: Some(MAX_TIMEOUT_MS + 1),
                ..Default::default()
            }),
            "hedge_after_ms"
        );
        validate(&PolicySpec {
            hedge_after_ms: Some(0),
            ..Default::default()
        })
        .expect("0 turns hedging off");
        validate(&PolicySpec::default()).expect("empty is valid");
    }

    #[test]
    fn layers_fill_unset_fields_and_unset_is_the_wire_default() {
        let upper = PolicySpec {
            lb: Some("round_robin".into()),
            ..Default::default()
        };
        let lower = PolicySpec {
            lb: Some("weighted".into()),
            first_byte_timeout_ms: Some(300),
            hedge_after_ms: Some(40),
            ..Default::default()
        };
        let p = to_pb(&layer(&upper, &lower));
        assert_eq!(p.hedge_after_ms, 40, "from the lower layer");
        assert_eq!(p.lb, pb::LbStrategy::RoundRobin as i32);
        assert_eq!(p.first_byte_timeout_ms, 300);
        assert_eq!((p.max_retries, p.connect_timeout_ms), (None, 0));
        assert_eq!(to_pb(&PolicySpec::default()), pb::RoutingPolicy::default());
    }
}
