//! The real [`Host`] of a supervisor: a TEI process started with the instance's command line
//! in its own process group (see [`crate::instances::process`]), its output captured into the
//! instance log, its group id kept in the run directory's pid file while it lives, and the
//! HTTP or gRPC probe of its port.

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::process::Child;

use super::driver::{Host, ProbeFuture};
use super::machine::ProbeKind;
use super::Settings;
use crate::instances::logs::{self, LogSink};
use crate::instances::probe::{probe, probe_custom};
use crate::instances::process::{self, ExitInfo, RunDir};
use crate::instances::spec::{command_line, InstanceSpec, Launch, Protocol};

/// What a probe of the instance needs.
#[derive(Clone)]
pub struct ProbeTarget {
    pub http: reqwest::Client,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub timeout: std::time::Duration,
    /// The instance's own checks (an absent one is the default probe).
    pub custom: crate::store::Probes,
}

/// One instance's processes, one at a time.
pub struct TeiHost {
    name: String,
    launch: Launch,
    probe: ProbeTarget,
    log: Arc<LogSink>,
    run_dir: RunDir,
    child: Option<Child>,
    /// The group of the current or last process (signals to leftovers go there).
    pgid: Option<u32>,
}

impl TeiHost {
    pub fn new(
        name: &str,
        launch: Launch,
        probe: ProbeTarget,
        log: Arc<LogSink>,
        run_dir: RunDir,
    ) -> Self {
        Self {
            name: name.to_string(),
            launch,
            probe,
            log,
            run_dir,
            child: None,
            pgid: None,
        }
    }

    /// The command line of an instance's process.
    pub fn launch(
        name: &str,
        spec: &InstanceSpec,
        port: u16,
        prometheus_port: u16,
        settings: &Settings,
        run_dir: &RunDir,
    ) -> Launch {
        let (program, proto_args): (&str, &[String]) = match spec.protocol {
            Protocol::Http => (&settings.program, &[]),
            Protocol::Grpc => (&settings.grpc_program, &settings.grpc_args),
        };
        let mut launch = command_line(
            spec,
            program,
            proto_args,
            &settings.hostname,
            port,
            prometheus_port,
            &run_dir.socket(name).display().to_string(),
        );
        if let Some(endpoint) = &settings.otlp_endpoint {
            launch.args.extend([
                "--otlp-endpoint".into(),
                endpoint.clone(),
                "--otlp-service-name".into(),
                name.to_string(),
            ]);
        }
        launch.env.clone_from(&settings.env);
        launch.uid = settings.uid;
        launch.gid = settings.gid;
        if let (super::super::cgroup::Cgroups::Writable(root), Some(limits)) =
            (&settings.cgroups, spec.limits.as_ref())
        {
            if super::super::cgroup::wanted(Some(limits)) {
                launch.cgroup = Some((root.clone(), limits.clone()));
            }
        }
        launch
    }

    /// Prepares the instance's own cgroup (before the spawn); a failure is logged and noted,
    /// and the instance runs without it.
    fn cgroup_dir(&self) -> Option<std::path::PathBuf> {
        let (root, limits) = self.launch.cgroup.as_ref()?;
        match super::super::cgroup::prepare(root, &self.name, limits) {
            Ok(dir) => Some(dir),
            Err(e) => {
                let note =
                    format!("[multiverse] cgroup not used, its limits are not enforced: {e}");
                tracing::warn!(instance = %self.name, "{note}");
                self.log.note(&note);
                None
            }
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            process::signal_group(pgid, signal);
        }
    }
}

impl Host for TeiHost {
    fn spawn(&mut self) -> Result<u32, String> {
        let cgroup = self.cgroup_dir();
        let launch = &self.launch;
        let program = &launch.program;
        let mut child =
            process::spawn(launch).map_err(|e| format!("cannot start `{program}`: {e}"))?;
        let pid = child.id().unwrap_or(0);
        self.run_dir.record(&self.name, pid);
        // At once, before TEI starts its backend (children inherit the cgroup).
        if let Some(dir) = cgroup {
            if let Err(e) = super::super::cgroup::add(&dir, pid) {
                let note =
                    format!("[multiverse] cgroup not joined, its limits are not enforced: {e}");
                tracing::warn!(instance = %self.name, "{note}");
                self.log.note(&note);
            }
        }
        // The note goes first: the child's output waits in its pipes until captured.
        self.log.note(&format!(
            "[multiverse] started pid {pid}: {program} {}",
            launch.args.join(" ")
        ));
        if let Some(out) = child.stdout.take() {
            logs::capture(out, logs::Stream::Stdout, self.log.clone());
        }
        if let Some(err) = child.stderr.take() {
            logs::capture(err, logs::Stream::Stderr, self.log.clone());
        }
        self.child = Some(child);
        self.pgid = Some(pid);
        Ok(pid)
    }

    fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    async fn exited(&mut self) -> Option<ExitInfo> {
        let Some(child) = self.child.as_mut() else {
            return std::future::pending().await;
        };
        // `Child::wait` is cancel-safe; the child is reaped once it returns.
        let status = child.wait().await;
        self.child = None;
        self.run_dir.forget(&self.name);
        status.ok().map(ExitInfo::from_status)
    }

    fn probe(&self, kind: ProbeKind) -> ProbeFuture {
        let t = self.probe.clone();
        let custom = match kind {
            ProbeKind::Startup => t.custom.startup.clone(),
            ProbeKind::Liveness => t.custom.liveness.clone(),
            ProbeKind::Readiness => t.custom.readiness.clone(),
        };
        Box::pin(async move {
            match custom {
                Some(spec) => probe_custom(&t.http, &t.host, t.port, &spec, t.timeout).await,
                None => probe(&t.http, t.protocol, &t.host, t.port, t.timeout).await,
            }
        })
    }

    fn note(&self, line: &str) {
        self.log.note(line);
    }

    fn finish(&mut self) {
        self.run_dir.forget(&self.name);
        self.log.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::changes::Changes;
    use crate::events::EventBus;
    use crate::instances::logs::test_util::TempDir;
    use crate::instances::supervisor::driver::{drive, Context};
    use crate::instances::supervisor::machine::{Machine, Timing};
    use crate::instances::supervisor::{Command, Shared, State};

    /// Runs a real process under the real driver, waits for `ready` on its stdout, stops it and
    /// returns how it ended and how long the stop took. Probes go to a closed port (the instance
    /// stays `starting`, so the stop does not drain).
    async fn stop_a_real_process(
        tag: &str,
        script: &str,
        grace: Duration,
    ) -> (Arc<Shared>, Duration) {
        let dir = TempDir::new(tag);
        let log = LogSink::open(&dir.0, "proc", 0, 1).expect("log");
        let run_dir = RunDir::new(dir.0.join("run")).expect("run dir");
        let launch = Launch {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cuda_visible_devices: Some("0".into()),
            env: Vec::new(),
            uid: None,
            gid: None,
            cgroup: None,
        };
        let probe = ProbeTarget {
            http: reqwest::Client::new(),
            protocol: Protocol::Http,
            host: "127.0.0.1".into(),
            port: 9,
            timeout: Duration::from_millis(100),
            custom: Default::default(),
        };
        let host = TeiHost::new("proc", launch, probe, log.clone(), run_dir.clone());
        let hour = Duration::from_secs(3600);
        let timing = Timing {
            startup_timeout: hour,
            startup_interval: hour,
            liveness_interval: hour,
            liveness_failures: 3,
            drain: Duration::ZERO,
            stop_grace: grace,
            backoff_initial: hour,
            backoff_max: hour,
            crash_loop_restarts: 5,
            crash_loop_window: hour,
        };
        let shared = Shared::new(log.clone(), State::Pending);
        let mut lines = Box::pin(log.follow(None));
        let (tx, rx) = mpsc::channel(4);
        let ctx = Context {
            name: "proc".into(),
            shared: shared.clone(),
            events: EventBus::new(),
            changes: Changes::new(),
            info: None,
        };
        let task = tokio::spawn(drive(
            Machine::new(timing, 1, State::Pending),
            host,
            rx,
            ctx,
            true,
        ));
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = lines.next().await {
                if line == "ready" {
                    return;
                }
            }
        })
        .await
        .expect("the process says ready");
        assert!(
            run_dir.path().join("proc.pid").exists(),
            "pid file while it runs"
        );
        let started = std::time::Instant::now();
        let (ack, done) = oneshot::channel();
        tx.send(Command::Stop(ack)).await.expect("send");
        tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("stopped in time")
            .expect("acknowledged");
        let took = started.elapsed();
        assert!(
            !run_dir.path().join("proc.pid").exists(),
            "pid file forgotten"
        );
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the driver ends with its channel")
            .expect("no panic");
        (shared, took)
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_and_reaps() {
        // Ignores SIGTERM: only SIGKILL ends it. Only once the trap is set does it say ready.
        let (shared, took) = stop_a_real_process(
            "sigkill",
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
            Duration::from_millis(300),
        )
        .await;
        let status = shared.snapshot();
        assert_eq!(status.last_exit.and_then(|e| e.signal), Some(9));
        assert_eq!(status.state, State::Stopped);
        assert!(status.pid.is_none());
        assert!(
            took >= Duration::from_millis(300),
            "{took:?}: SIGKILL before the grace"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test]
    async fn sigterm_is_enough_for_a_polite_process() {
        let (shared, took) = stop_a_real_process(
            "sigterm",
            "echo ready; exec sleep 30",
            Duration::from_secs(5),
        )
        .await;
        let status = shared.snapshot();
        assert_eq!(status.last_exit.and_then(|e| e.signal), Some(15));
        assert!(
            took < Duration::from_secs(4),
            "{took:?}: no wait for the grace"
        );
    }
}
