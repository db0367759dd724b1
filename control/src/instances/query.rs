//! Filtering and sorting the instance list (`GET /instances?tag=&status=&model=&gpu=&sort=
//! &order=`): a pure function of the views, so the API only parses.

use std::cmp::Ordering;

use super::supervisor::State;
use super::InstanceView;

/// Every status, for validating `?status=`.
pub const STATUSES: [State; 8] = [
    State::Pending,
    State::Starting,
    State::Ready,
    State::Unhealthy,
    State::Restarting,
    State::Stopping,
    State::Stopped,
    State::Failed,
];

/// What to sort by; ties are broken by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InstanceSort {
    #[default]
    Name,
    /// Status name, alphabetically.
    Status,
    Created,
    Restarts,
}

impl InstanceSort {
    pub const NAMES: &'static [(&'static str, InstanceSort)] = &[
        ("name", InstanceSort::Name),
        ("status", InstanceSort::Status),
        ("created", InstanceSort::Created),
        ("restarts", InstanceSort::Restarts),
    ];
}

/// A list query; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    /// The routed model name or the model id.
    pub model: Option<String>,
    pub gpu: Option<u32>,
    pub sort: InstanceSort,
    pub descending: bool,
}

impl InstanceQuery {
    fn matches(&self, i: &InstanceView) -> bool {
        self.model
            .as_ref()
            .is_none_or(|m| &i.model == m || &i.spec.model_id == m)
            && self.gpu.is_none_or(|g| i.spec.gpu_id == Some(g))
    }

    fn compare(&self, a: &InstanceView, b: &InstanceView) -> Ordering {
        let key = match self.sort {
            InstanceSort::Name => Ordering::Equal,
            InstanceSort::Status => a.status.name().cmp(b.status.name()),
            InstanceSort::Created => a.created_at.cmp(&b.created_at),
            InstanceSort::Restarts => a.restarts.cmp(&b.restarts),
        };
        key.then_with(|| a.name.cmp(&b.name))
    }

    /// The instances that match, in order (tag and status are filtered by
    /// [`Manager::list`](super::Manager::list)).
    pub fn apply(&self, mut list: Vec<InstanceView>) -> Vec<InstanceView> {
        list.retain(|i| self.matches(i));
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
