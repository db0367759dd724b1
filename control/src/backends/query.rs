//! Filtering and sorting the backend list (`GET /admin/backends?model=&health=&owner=&tag=
//! &deregistered=&sort=&order=`): a pure function of the views, so the API only parses.

use std::cmp::Ordering;

use super::registry::BackendView;
use crate::health::Status;

/// What to sort by; ties are broken by name, then id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendSort {
    #[default]
    Name,
    /// Health: healthy, unknown, unhealthy, then soft-deregistered ones.
    Status,
    /// Time of the last check; never checked last.
    LastCheck,
    /// Registration time.
    Created,
}

impl BackendSort {
    pub const NAMES: &'static [(&'static str, BackendSort)] = &[
        ("name", BackendSort::Name),
        ("status", BackendSort::Status),
        ("last_check", BackendSort::LastCheck),
        ("created", BackendSort::Created),
    ];
}

/// A list query; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendQuery {
    /// Backends serving this model.
    pub model: Option<String>,
    pub health: Option<Status>,
    pub owner: Option<String>,
    /// `key` (present) or `key:value` (equal).
    pub tag: Option<String>,
    pub deregistered: Option<bool>,
    pub sort: BackendSort,
    pub descending: bool,
}

fn status_rank(b: &BackendView) -> u8 {
    match (b.deregistered, b.health.status) {
        (true, _) => 3,
        (false, Status::Healthy) => 0,
        (false, Status::Unknown) => 1,
        (false, Status::Unhealthy) => 2,
    }
}

impl BackendQuery {
    fn matches(&self, b: &BackendView) -> bool {
        let tag_ok = |t: &str| match t.split_once(':') {
            Some((k, v)) => b.tags.get(k).is_some_and(|x| x == v),
            None => b.tags.contains_key(t),
        };
        self.model.as_ref().is_none_or(|m| b.models.contains(m))
            && self.health.is_none_or(|h| b.health.status == h)
            && self.owner.as_ref().is_none_or(|o| &b.owner == o)
            && self.tag.as_deref().is_none_or(tag_ok)
            && self.deregistered.is_none_or(|d| b.deregistered == d)
    }

    fn compare(&self, a: &BackendView, b: &BackendView) -> Ordering {
        let key = match self.sort {
            BackendSort::Name => Ordering::Equal,
            BackendSort::Status => status_rank(a).cmp(&status_rank(b)),
            BackendSort::LastCheck => {
                let at = |v: &BackendView| v.health.last_check.as_ref().map(|c| c.at.clone());
                match (at(a), at(b)) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                }
            }
            BackendSort::Created => a.created_at.cmp(&b.created_at),
        };
        key.then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.id.cmp(&b.id))
    }

    /// The backends that match, in order.
    pub fn apply(&self, mut list: Vec<BackendView>) -> Vec<BackendView> {
        list.retain(|b| self.matches(b));
        list.sort_by(|a, b| {
            let o = self.compare(a, b);
            if self.descending {
                o.reverse()
            } else {
                o
            }
        });
        list
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::backends::registry::Source;
    use crate::health::{CheckResult, HealthRecord};

    fn view(
        name: &str,
        status: Status,
        owner: &str,
        created: &str,
        checked: Option<&str>,
    ) -> BackendView {
        BackendView {
            id: format!("bk-{name}"),
            name: name.into(),
            url: "http://h".into(),
            models: vec![format!("m-{name}"), "shared".into()],
            kind: "chat".into(),
            weight: 1,
            owner: owner.into(),
            tags: BTreeMap::from([("team".to_string(), owner.to_string())]),
            has_api_key: false,
            source: Source::Api,
            created_at: created.into(),
            updated_at: created.into(),
            deregistered: false,
            policy: None,
            max_concurrent: None,
            max_requests_per_sec: None,
            health: HealthRecord {
                status,
                last_check: checked.map(|at| CheckResult {
                    at: at.into(),
                    ok: true,
                    latency_ms: 1,
                    status: Some(200),
                    reason: None,
                }),
                ..HealthRecord::default()
            },
            probes: None,
            probe_stats: BTreeMap::new(),
            success_rate: None,
            avg_latency_ms: None,
        }
    }

    fn names(list: &[BackendView]) -> Vec<&str> {
        list.iter().map(|b| b.name.as_str()).collect()
    }

    fn sample() -> Vec<BackendView> {
        let mut gone = view(
            "d",
            Status::Unhealthy,
            "ops",
            "2026-01-04",
            Some("2026-02-01"),
        );
        gone.deregistered = true;
        vec![
            view(
                "b",
                Status::Unhealthy,
                "ml",
                "2026-01-01",
                Some("2026-02-03"),
            ),
            view("a", Status::Healthy, "ops", "2026-01-03", None),
            view("c", Status::Unknown, "ml", "2026-01-02", Some("2026-02-02")),
            gone,
        ]
    }

    #[test]
    fn filters_combine() {
        let q = |q: BackendQuery| names(&q.apply(sample())).join(",");
        assert_eq!(q(BackendQuery::default()), "a,b,c,d");
        let model = |m: &str| BackendQuery {
            model: Some(m.into()),
            ..Default::default()
        };
        assert_eq!(q(model("m-c")), "c");
        assert_eq!(q(model("shared")), "a,b,c,d");
        assert_eq!(
            q(BackendQuery {
                health: Some(Status::Unhealthy),
                ..Default::default()
            }),
            "b,d"
        );
        assert_eq!(
            q(BackendQuery {
                owner: Some("ops".into()),
                deregistered: Some(false),
                ..Default::default()
            }),
            "a"
        );
        assert_eq!(
            q(BackendQuery {
                tag: Some("team:ml".into()),
                ..Default::default()
            }),
            "b,c"
        );
        assert_eq!(
            q(BackendQuery {
                tag: Some("team".into()),
                ..Default::default()
            }),
            "a,b,c,d"
        );
        assert_eq!(
            q(BackendQuery {
                tag: Some("zone".into()),
                ..Default::default()
            }),
            ""
        );
    }

    #[test]
    fn sorts_with_ties_by_name() {
        let q = |sort, descending| {
            names(
                &BackendQuery {
                    sort,
                    descending,
                    ..Default::default()
                }
                .apply(sample()),
            )
            .join(",")
        };
        assert_eq!(q(BackendSort::Name, true), "d,c,b,a");
        assert_eq!(q(BackendSort::Status, false), "a,c,b,d");
        assert_eq!(q(BackendSort::LastCheck, false), "d,c,b,a");
        assert_eq!(q(BackendSort::LastCheck, true), "a,b,c,d");
        assert_eq!(q(BackendSort::Created, false), "b,c,a,d");
    }
}
