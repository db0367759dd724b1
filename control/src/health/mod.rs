//! A backend's health as its check results judge it: the settings, the thresholds and the
//! history — pure state, no I/O (the checks themselves run in `backends::checker`).
//!
//! Thresholds turn results into a status: N consecutive failures make a backend UNHEALTHY (its
//! endpoints are pushed as unhealthy, so proxies stop routing to it), M consecutive successes
//! make it HEALTHY again; optionally K failures deregister it softly (restorable). The last 100
//! results of each backend are kept for the API. With a liveness probe, only liveness failures
//! count towards deregistration (a backend that is alive but not ready is only withdrawn).

pub mod http_probe;
pub mod stats;

use std::collections::VecDeque;

use multiverse_common::Health;
use serde::{Deserialize, Serialize};

/// Results kept per backend.
pub const HISTORY: usize = 100;

/// Health-check settings (`[health]` in the config).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// Time between two rounds of checks.
    pub interval_ms: u64,
    /// Time allowed for one check.
    pub timeout_ms: u64,
    /// Consecutive failures that make a backend unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that make it healthy again.
    pub healthy_threshold: u32,
    /// Checks running at once.
    pub max_concurrent_checks: usize,
    /// Consecutive failures after which a backend is deregistered (softly: restorable through
    /// `POST /admin/backends/{id}/restore`); 0 never deregisters.
    pub deregister_after_failures: u32,
    /// PEM CA certificates trusted, besides the built-in roots, for `https://` backends'
    /// certificates in registration and health checks (a private CA's backends).
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            interval_ms: 10_000,
            timeout_ms: 2_000,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            max_concurrent_checks: 16,
            deregister_after_failures: 0,
            tls_ca_file: None,
        }
    }
}

/// The outcome of one check, as kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// RFC 3339.
    pub at: String,
    pub ok: bool,
    pub latency_ms: u64,
    /// The HTTP status, when one was received.
    pub status: Option<u16>,
    /// Why it failed (timeout, connection, status, invalid JSON).
    pub reason: Option<String>,
}

/// A backend's health as the thresholds judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not checked since start: proxies treat it as healthy.
    Unknown,
    Healthy,
    Unhealthy,
}

impl From<Status> for Health {
    fn from(s: Status) -> Self {
        match s {
            Status::Unknown => Health::Unknown,
            Status::Healthy => Health::Healthy,
            Status::Unhealthy => Health::Unhealthy,
        }
    }
}

/// Health of one backend.
#[derive(Debug, Clone, Serialize)]
pub struct HealthRecord {
    pub status: Status,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub last_check: Option<CheckResult>,
    pub history: VecDeque<CheckResult>,
    /// Consecutive failures that count towards deregistration (equal to
    /// `consecutive_failures` unless some failures did not count).
    #[serde(skip)]
    pub deregister_streak: u32,
}

/// A status change, for logs, metrics and pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    /// Also deregistered (softly) by this result.
    pub deregistered: bool,
}

impl Default for HealthRecord {
    fn default() -> Self {
        Self {
            status: Status::Unknown,
            consecutive_failures: 0,
            consecutive_successes: 0,
            last_check: None,
            history: VecDeque::with_capacity(HISTORY),
            deregister_streak: 0,
        }
    }
}

impl HealthRecord {
    /// Counts a result; returns the transition it caused, if any.
    pub fn record(&mut self, result: CheckResult, s: &HealthSettings) -> Option<Transition> {
        self.record_counted(result, s, true)
    }

    /// [`HealthRecord::record`], where a failure counts towards deregistration only if
    /// `deregisters` (a readiness failure of a backend whose liveness probe passed does not;
    /// it breaks the streak, since the backend was found alive).
    pub fn record_counted(
        &mut self,
        result: CheckResult,
        s: &HealthSettings,
        deregisters: bool,
    ) -> Option<Transition> {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(result.clone());
        let ok = result.ok;
        self.last_check = Some(result);
        if !ok && deregisters {
            self.deregister_streak += 1;
        } else {
            self.deregister_streak = 0;
        }
        let from = self.status;
        if ok {
            self.consecutive_successes += 1;
            self.consecutive_failures = 0;
            if self.status != Status::Healthy
                && (self.status == Status::Unknown
                    || self.consecutive_successes >= s.healthy_threshold)
            {
                self.status = Status::Healthy;
            }
        } else {
            self.consecutive_failures += 1;
            self.consecutive_successes = 0;
            if self.status != Status::Unhealthy
                && self.consecutive_failures >= s.unhealthy_threshold
            {
                self.status = Status::Unhealthy;
            }
        }
        let deregistered = !ok
            && s.deregister_after_failures > 0
            && self.deregister_streak == s.deregister_after_failures;
        (from != self.status || deregistered).then_some(Transition {
            from,
            to: self.status,
            deregistered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(ok: bool) -> CheckResult {
        CheckResult {
            at: "t".into(),
            ok,
            latency_ms: 1,
            status: None,
            reason: (!ok).then(|| "status 500".into()),
        }
    }

    #[test]
    fn thresholds_drive_transitions() {
        let s = HealthSettings {
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            deregister_after_failures: 4,
            ..Default::default()
        };
        let mut h = HealthRecord::default();
        assert_eq!(h.record(res(true), &s).map(|t| t.to), Some(Status::Healthy));
        assert_eq!(h.record(res(false), &s), None);
        assert_eq!(
            h.record(res(false), &s).map(|t| t.to),
            Some(Status::Unhealthy)
        );
        assert_eq!(h.record(res(false), &s), None);
        assert!(h.record(res(false), &s).is_some_and(|t| t.deregistered));
        assert_eq!(h.record(res(true), &s), None, "one success is not enough");
        assert_eq!(h.record(res(true), &s).map(|t| t.to), Some(Status::Healthy));
        for _ in 0..150 {
            h.record(res(true), &s);
        }
        assert_eq!(h.history.len(), HISTORY);
    }

    #[test]
    fn failures_that_do_not_count_never_deregister() {
        let s = HealthSettings {
            unhealthy_threshold: 2,
            deregister_after_failures: 2,
            ..Default::default()
        };
        let mut h = HealthRecord::default();
        h.record(res(true), &s);
        // Not ready (alive): unhealthy, never deregistered.
        assert_eq!(h.record_counted(res(false), &s, false), None);
        let t = h.record_counted(res(false), &s, false).expect("unhealthy");
        assert_eq!((t.to, t.deregistered), (Status::Unhealthy, false));
        for _ in 0..5 {
            assert_eq!(h.record_counted(res(false), &s, false), None);
        }
        // Not alive: deregistered after 2 of those in a row, however many came before.
        assert_eq!(h.record_counted(res(false), &s, true), None);
        assert!(h
            .record_counted(res(false), &s, true)
            .is_some_and(|t| t.deregistered));
        assert_eq!(h.consecutive_failures, 9);
    }
}
