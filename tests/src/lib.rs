//! Harness for the workspace-level integration tests: starts the real binaries
//! (`multiverse-control`, `multiverse-proxy`, `mock-openai`, `mock-tei`) as processes on
//! 127.0.0.1, waits for their readiness signals, and kills them when dropped.
//!
//! No orphans: every child is killed (SIGKILL) and reaped when its [`Proc`] drops, and as a
//! safety net gets `PR_SET_PDEATHSIG` so it also dies if the test process does (the process
//! handling is the benches' `load::process`, shared with the load generator).
//!
//! The binaries are taken from the target directory of the running test, so run
//! `cargo build --workspace --bins` before `cargo test` (the README's test command does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use multiverse_benches::load::process::{sibling_binary, ChildProcess};

/// How long any process gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path to a workspace binary; panics with the fix if it was not built.
pub fn bin(name: &str) -> PathBuf {
    sibling_binary(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A free loopback port (bound, then released for a child to bind). The kernel may hand the
/// same port out again right away, so each port is given out at most once per test process.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = multiverse_benches::load::process::free_port().expect("bind 127.0.0.1:0");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A fresh directory for one test's files and child logs.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "multiverse-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A child process that is killed and reaped on drop (and gets a parent-death SIGKILL, so it
/// also dies with the test process): the benches' [`ChildProcess`] with test-friendly panics.
pub struct Proc {
    pub name: String,
    /// The child's stderr.
    pub log: PathBuf,
    inner: ChildProcess,
}

impl Proc {
    /// Spawns `bin` with `args`; stderr goes to `<dir>/<name>.log`, stdout is piped when
    /// `pipe_stdout` (for readiness lines) and discarded otherwise.
    pub fn spawn(name: &str, bin: &Path, args: &[String], dir: &Path, pipe_stdout: bool) -> Proc {
        let level = std::env::var("MULTIVERSE_TEST_LOG").unwrap_or_else(|_| "info".into());
        let inner = ChildProcess::spawn(name, bin, args, &[("RUST_LOG", &level)], dir, pipe_stdout)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Proc {
            name: name.to_string(),
            log: inner.log_path().to_path_buf(),
            inner,
        }
    }

    pub fn pid(&self) -> i32 {
        self.inner.pid() as i32
    }

    /// Waits for a `LISTENING <addr>` line on stdout (the mocks' readiness signal).
    pub fn wait_listening(&mut self) -> SocketAddr {
        self.inner
            .wait_listening(READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Sends a signal (e.g. SIGTERM) without reaping.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Kills (SIGKILL) and reaps now.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.inner.exited() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The last lines of the child's log, for failure messages.
    pub fn tail_log(&self) -> String {
        self.inner.tail_log(30)
    }
}

/// Polls `url` until it answers 200 (a readiness endpoint), or panics after `timeout`.
pub async fn wait_ok(client: &reqwest::Client, url: &str, timeout: Duration, what: &Proc) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {timeout:?}; {} log:\n{}",
            what.name,
            what.tail_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `check` returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running mock-openai.
pub struct MockOpenAi {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub name: String,
}

impl MockOpenAi {
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> MockOpenAi {
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--name".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn(name, &bin("mock-openai"), &args, dir, true);
        let addr = proc.wait_listening();
        MockOpenAi {
            proc,
            addr,
            name: name.to_string(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The mock's `/mock/stats` JSON.
    pub async fn stats(&self, client: &reqwest::Client) -> serde_json::Value {
        client
            .get(format!("{}/mock/stats", self.url()))
            .send()
            .await
            .expect("stats request")
            .json()
            .await
            .expect("stats json")
    }
}

/// A running mock-tei (HTTP, or gRPC with `--grpc` in `extra`).
pub struct MockTei {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub name: String,
}

impl MockTei {
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> MockTei {
        let mut args = vec![
            "--hostname".to_string(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--name".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn(name, &bin("mock-tei"), &args, dir, true);
        let addr = proc.wait_listening();
        MockTei {
            proc,
            addr,
            name: name.to_string(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// One endpoint of a standalone routes file.
pub struct Ep {
    pub id: String,
    pub address: String,
    pub protocol: &'static str,
    pub health: &'static str,
}

impl Ep {
    /// An HTTP/1.1 endpoint.
    pub fn http(id: &str, addr: SocketAddr, health: &'static str) -> Ep {
        Ep {
            id: id.to_string(),
            address: addr.to_string(),
            protocol: "http1",
            health,
        }
    }

    /// A gRPC endpoint.
    pub fn grpc(id: &str, addr: SocketAddr, health: &'static str) -> Ep {
        Ep {
            protocol: "grpc",
            ..Ep::http(id, addr, health)
        }
    }
}

/// One `[[models]]` entry of a standalone routes file (`extra`: more model keys).
pub fn model_toml(name: &str, kind: &str, extra: &str, endpoints: &[Ep]) -> String {
    let mut s = format!("[[models]]\nname = \"{name}\"\nkind = \"{kind}\"\n{extra}\n");
    for e in endpoints {
        s.push_str(&format!(
            "[[models.endpoints]]\nid = \"{}\"\naddress = \"{}\"\nprotocol = \"{}\"\nhealth = \"{}\"\n",
            e.id, e.address, e.protocol, e.health
        ));
    }
    s
}

/// A running control plane.
pub struct Control {
    pub proc: Proc,
    pub api: SocketAddr,
    pub discovery: SocketAddr,
    pub config: PathBuf,
}

impl Control {
    /// Starts with `body` appended to a config that sets the listeners and the id.
    pub async fn start(dir: &Path, id: &str, body: &str) -> Control {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let discovery: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::start_on(dir, id, body, api, discovery).await
    }

    pub async fn start_on(
        dir: &Path,
        id: &str,
        body: &str,
        api: SocketAddr,
        discovery: SocketAddr,
    ) -> Control {
        let config = dir.join(format!("{id}.toml"));
        // Keep the state inside the test's directory unless the body chooses a place.
        let data_dir = if body.contains("data_dir") {
            String::new()
        } else {
            format!(
                "data_dir = \"{}\"\n",
                dir.join(format!("{id}-data")).display()
            )
        };
        let text = format!(
            "id = \"{id}\"\n{data_dir}{body}\n[listen]\napi = \"{api}\"\ndiscovery = \"{discovery}\"\n"
        );
        std::fs::write(&config, text).expect("write control config");
        let args = vec!["--config".to_string(), config.display().to_string()];
        let proc = Proc::spawn(id, &bin("multiverse-control"), &args, dir, false);
        let c = Control {
            proc,
            api,
            discovery,
            config,
        };
        wait_ok(
            &reqwest::Client::new(),
            &format!("http://{api}/health"),
            READY_TIMEOUT,
            &c.proc,
        )
        .await;
        c
    }

    pub fn discovery_url(&self) -> String {
        format!("http://{}", self.discovery)
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }
}

/// `[[backends]]` TOML for mocks serving `model`.
pub fn backends_toml(mocks: &[&MockOpenAi], model: &str) -> String {
    mocks
        .iter()
        .map(|m| {
            format!(
                "[[backends]]\nname = \"{}\"\nurl = \"{}\"\nmodels = [\"{model}\"]\n",
                m.name,
                m.url()
            )
        })
        .collect()
}

/// A running proxy.
pub struct Proxy {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    /// Starts a proxy fed by `control_planes` and waits until its admin listener is up
    /// (not until it is ready: see [`Proxy::wait_ready`]).
    pub async fn start(dir: &Path, node_id: &str, control_planes: &[String]) -> Proxy {
        Self::start_with(dir, node_id, control_planes, "").await
    }

    /// Like [`Proxy::start`] with extra TOML config.
    pub async fn start_with(
        dir: &Path,
        node_id: &str,
        control_planes: &[String],
        extra_toml: &str,
    ) -> Proxy {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = dir.join(format!("{node_id}.toml"));
        let mut text = format!(
            "node_id = \"{node_id}\"\n[listen]\nclients = \"{listen}\"\nadmin = \"{admin}\"\n\
             [server]\nthreads = 2\ndrain_grace_seconds = 5\n\
             [discovery]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\nkeepalive_interval_ms = 1000\n"
        );
        text.push_str(extra_toml);
        for url in control_planes {
            text.push_str(&format!("[[control_planes]]\nurl = \"{url}\"\n"));
        }
        std::fs::write(&config, text).expect("write proxy config");
        let args = vec!["--config".to_string(), config.display().to_string()];
        let proc = Proc::spawn(node_id, &bin("multiverse-proxy"), &args, dir, false);
        let p = Proxy {
            proc,
            listen,
            admin,
        };
        wait_ok(
            &reqwest::Client::new(),
            &format!("http://{admin}/healthz"),
            READY_TIMEOUT,
            &p.proc,
        )
        .await;
        p
    }

    /// Starts a standalone proxy routing by the static routes TOML `routes` (written to
    /// `<dir>/<node_id>-routes.toml`, see [`Proxy::routes_file`]) and waits until it is ready.
    pub async fn start_standalone(
        dir: &Path,
        node_id: &str,
        routes: &str,
        extra_toml: &str,
    ) -> Proxy {
        let file = dir.join(format!("{node_id}-routes.toml"));
        std::fs::write(&file, routes).expect("write routes file");
        let extra = format!(
            "{extra_toml}\n[standalone]\nroutes_file = \"{}\"\n",
            file.display()
        );
        let p = Self::start_with(dir, node_id, &[], &extra).await;
        p.wait_ready(&reqwest::Client::new()).await;
        p
    }

    /// The standalone routes file of a proxy started by [`Proxy::start_standalone`].
    pub fn routes_file(dir: &Path, node_id: &str) -> PathBuf {
        dir.join(format!("{node_id}-routes.toml"))
    }

    /// Asks the proxy to reload its routes file (SIGHUP).
    pub fn reload(&self) {
        self.proc.signal(nix::sys::signal::Signal::SIGHUP);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self, client: &reqwest::Client) {
        wait_ok(
            client,
            &format!("{}/ready", self.admin_url()),
            READY_TIMEOUT,
            &self.proc,
        )
        .await;
    }

    /// The health `/config_dump` shows for endpoint `id` of `model` (None if absent).
    pub async fn endpoint_health(
        &self,
        client: &reqwest::Client,
        model: &str,
        id: &str,
    ) -> Option<String> {
        let dump: serde_json::Value = client
            .get(format!("{}/config_dump", self.admin_url()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        dump["table"]["models"][model]["endpoints"]
            .as_array()?
            .iter()
            .find(|e| e["id"] == id)
            .and_then(|e| e["health"].as_str())
            .map(str::to_string)
    }

    /// The version in `/ready` (empty when not ready).
    pub async fn version(&self, client: &reqwest::Client) -> String {
        let Ok(r) = client
            .get(format!("{}/ready", self.admin_url()))
            .send()
            .await
        else {
            return String::new();
        };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["version"].as_str().unwrap_or_default().to_string()
    }
}

/// FNV-1a 64 of `bytes`, formatted as the mocks report it.
pub fn fnv1a64_hex(bytes: &[u8]) -> String {
    multiverse_mocks::deterministic::hex16(multiverse_mocks::fnv1a64(bytes))
}

/// Splits an SSE body into its `data:` payloads.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(|d| d.trim().to_string())
        })
        .collect()
}
