//! Multiverse across hosts (issue 17): three control planes as three "hosts" on their own
//! loopback addresses 127.0.0.2-4 (Linux routes all of 127/8 to `lo`, so each binds the same
//! discovery port on its own address, as GPU nodes would), each supervising a mock-tei instance
//! and registering a mock-openai backend on its address, and two proxies subscribed through ONE
//! name, `dns+http://planes.test:<port>`, resolved from a hosts-format file the test rewrites
//! (`[discovery] dns_hosts_file`) — the test's DNS.
//!
//! Under a steady client load on both proxies it shows: merged routing (requests reach all
//! three hosts' endpoints); a host killed → its endpoints withdrawn after the grace, no client
//! errors beyond the requests in flight; the host back → resynced within 2 s; a host added to
//! the name → streamed from at the next refresh; a host removed from the name → withdrawn after
//! the grace, never before; a control plane moved to another address → still one plane, its
//! endpoints never withdrawn; a proxy killed → the other keeps serving. The figures are printed
//! (`--nocapture`) for the README.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multiverse_tests::steady::{errors, served_by, Ask, SteadyLoad};
use multiverse_tests::*;
use serde_json::{json, Value};

/// The one name every control plane is found by.
const NAME: &str = "planes.test";
/// The operator API key of every control plane.
const KEY: &str = "multi-host-key";
/// The proxies withdraw a plane this long after losing it (or it left the name).
const GRACE: Duration = Duration::from_millis(1000);
/// The proxies resolve the name again this often.
const REFRESH: Duration = Duration::from_millis(1000);
/// Every mock-openai serves the model `chat`.
const MOCK_ARGS: &[&str] = &["--model", "chat"];
/// Concurrent client loops per proxy.
const CLIENTS: usize = 4;

fn host_ip(host: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, host])
}

/// One host: its control plane, the mock-openai backend it registers, its config body.
struct Host {
    n: u8,
    id: String,
    openai: MockOpenAi,
    cp: Control,
    body: String,
}

impl Host {
    fn backend(n: u8) -> String {
        format!("openai-h{n}")
    }

    fn instance(n: u8) -> String {
        format!("tei-h{n}")
    }

    /// Starts host `n`'s mock-openai and control plane (discovery on `discovery_port` of
    /// 127.0.0.n), then creates its TEI instance.
    async fn start(dir: &Path, n: u8, discovery_port: u16, instance_ports: (u16, u16)) -> Host {
        let ip = host_ip(n);
        let openai =
            MockOpenAi::start_on(dir, &Self::backend(n), SocketAddr::new(ip, 0), MOCK_ARGS);
        let body = format!(
            "[admin]\napi_keys = [\"{KEY}\"]\nallow_private_backends = true\n\
             [instances]\nbinary = \"{tei}\"\nhostname = \"{ip}\"\nadvertise_host = \"{ip}\"\n\
             port_range = [{lo}, {hi}]\nstartup_probe_interval_ms = 100\n\
             liveness_interval_ms = 500\nstartup_timeout_ms = 10000\n\
             [discovery]\ncoalesce_ms = 20\n{backends}",
            tei = bin("mock-tei").display(),
            lo = instance_ports.0,
            hi = instance_ports.1,
            backends = backends_toml(&[&openai], "chat"),
        );
        let id = format!("host-{n}");
        let api = try_free_addr_on(ip).expect("a free API port");
        let cp = Control::start_on(dir, &id, &body, api, SocketAddr::new(ip, discovery_port)).await;
        let host = Host {
            n,
            id,
            openai,
            cp,
            body,
        };
        host.create_instance().await;
        host
    }

    async fn create_instance(&self) {
        let resp = reqwest::Client::new()
            .post(format!("{}/instances", self.cp.api_url()))
            .header("authorization", format!("Bearer {KEY}"))
            .json(&json!({"name": Self::instance(self.n), "model_id": "bge", "extra_args": ["--dims", "8"]}))
            .send()
            .await
            .expect("POST /instances");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "{}: create instance: {status} {text}",
            self.id
        );
    }

    /// The whole host goes: its control plane (SIGKILL; its TEI follows by the parent-death
    /// signal) and its backend.
    fn kill(&mut self) {
        self.cp.proc.kill();
        self.openai.proc.kill();
    }

    /// The host comes back on the same addresses with the same state (its TEI instance is
    /// restored by the control plane); returns once its control plane is ready.
    async fn restart(&mut self, dir: &Path) {
        self.openai =
            MockOpenAi::start_on(dir, &Self::backend(self.n), self.openai.addr, MOCK_ARGS);
        self.cp =
            Control::start_on(dir, &self.id, &self.body, self.cp.api, self.cp.discovery).await;
    }

    fn endpoints(&self) -> [String; 2] {
        [Self::backend(self.n), Self::instance(self.n)]
    }
}

/// The hosts file the proxies resolve [`NAME`] from.
fn write_dns(path: &Path, hosts: &[u8]) {
    let text: String = hosts
        .iter()
        .map(|n| format!("{} {NAME}\n", host_ip(*n)))
        .collect();
    // Written whole, then renamed: a resolution never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write hosts file");
    std::fs::rename(&tmp, path).expect("rename hosts file");
}

/// A block of `len` instance ports in 29000-29989 free on 127.0.0.`host` (the instances test
/// takes 20000-28999 on 127.0.0.1).
fn instance_ports(host: u8, len: u16) -> (u16, u16) {
    let ip = host_ip(host);
    let base = 29000 + (std::process::id() % 40) as u16 * 20;
    (0..49)
        .map(|i| 29000 + (base - 29000 + i * 20) % 980)
        .find(|lo| (*lo..lo + len).all(|p| std::net::TcpListener::bind((ip, p)).is_ok()))
        .map(|lo| (lo, lo + len - 1))
        .expect("a free block of instance ports")
}

/// Polls every 20 ms until `done(endpoints)` holds on every proxy; the time each took from
/// `since` (panics after `timeout`).
async fn until_tables<F>(
    client: &reqwest::Client,
    proxies: &[&Proxy],
    since: Instant,
    timeout: Duration,
    what: &str,
    done: F,
) -> Vec<Duration>
where
    F: Fn(&BTreeSet<String>) -> bool,
{
    let mut took = vec![None; proxies.len()];
    while took.iter().any(Option::is_none) {
        for (i, p) in proxies.iter().enumerate() {
            if took[i].is_none() && done(&p.endpoint_ids(client).await) {
                took[i] = Some(since.elapsed());
            }
        }
        assert!(
            since.elapsed() < timeout,
            "timed out waiting for {what}: {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.into_iter().flatten().collect()
}

/// Polls every 20 ms until `done(config_dump)` holds on every proxy; the time each took.
async fn until_planes<F>(
    client: &reqwest::Client,
    proxies: &[&Proxy],
    since: Instant,
    done: F,
) -> Vec<Duration>
where
    F: Fn(&Value) -> bool,
{
    let mut took = vec![None; proxies.len()];
    while took.iter().any(Option::is_none) {
        for (i, p) in proxies.iter().enumerate() {
            if took[i].is_none() && p.config_dump(client).await.is_some_and(|d| done(&d)) {
                took[i] = Some(since.elapsed());
            }
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "timed out: {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.into_iter().flatten().collect()
}

fn ms(d: &[Duration]) -> Vec<u128> {
    d.iter().map(Duration::as_millis).collect()
}

fn max(d: &[Duration]) -> Duration {
    d.iter().copied().max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_two_proxies_one_dns_name() {
    // Every "host" address must be bindable (Linux: all of 127/8 is on lo).
    for n in 2..=6 {
        std::net::TcpListener::bind((host_ip(n), 0)).unwrap_or_else(|e| {
            panic!("cannot bind {}: {e} (127/8 not routed to lo?)", host_ip(n))
        });
    }
    let dir = temp_dir("multi-host");
    let client = reqwest::Client::new();
    let ips: Vec<IpAddr> = (2..=6).map(host_ip).collect();
    let port = try_free_port_on(&ips).expect("a discovery port free on 127.0.0.2-6");
    let dns: PathBuf = dir.join("planes.hosts");
    write_dns(&dns, &[2, 3, 4]);

    let mut hosts = Vec::new();
    for n in 2..=4 {
        hosts.push(Host::start(&dir, n, port, instance_ports(n, 10)).await);
    }
    let url = format!("dns+http://{NAME}:{port}");
    let extra = format!(
        "[discovery]\nwithdraw_after_ms = {}\ndns_refresh_ms = {}\ndns_hosts_file = \"{}\"\n",
        GRACE.as_millis(),
        REFRESH.as_millis(),
        dns.display()
    );
    let p1 = Proxy::start_with(&dir, "proxy-1", std::slice::from_ref(&url), &extra).await;
    let mut p2 = Proxy::start_with(&dir, "proxy-2", std::slice::from_ref(&url), &extra).await;
    let proxies = [&p1, &p2];
    for p in proxies {
        p.wait_ready(&client).await;
    }

    // 1. Merged routing: both proxies hold all six endpoints (two per host) from one name.
    let all: BTreeSet<String> = hosts.iter().flat_map(Host::endpoints).collect();
    let began = Instant::now();
    until_tables(
        &client,
        &proxies,
        began,
        Duration::from_secs(20),
        "every host's endpoints",
        |e| all.is_subset(e),
    )
    .await;
    for p in proxies {
        let dump = p.config_dump(&client).await.expect("config_dump");
        let source = &dump["control_planes"][&url];
        assert_eq!(source["kind"], "dns", "{source}");
        assert_eq!(
            source["addresses"].as_array().map(Vec::len),
            Some(3),
            "{source}"
        );
        let planes: BTreeSet<&str> = source["streams"]
            .as_object()
            .expect("streams")
            .values()
            .filter(|s| s["connected"] == true)
            .filter_map(|s| s["plane"].as_str())
            .collect();
        assert_eq!(planes, ["host-2", "host-3", "host-4"].into(), "{source}");
        let metrics = client
            .get(format!("{}/metrics", p.admin_url()))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let line = format!("multiverse_proxy_control_plane_addresses{{source=\"{url}\"}} 3");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    // Chat completions and embeddings in turn.
    let asks = [Ask::Chat("chat".into()), Ask::Embed("bge".into())];
    let load = SteadyLoad::start(&[p1.url(), p2.url()], CLIENTS, &asks);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..2 {
        let done = load.between(i, t0, Instant::now());
        assert_eq!(
            served_by(&done),
            all,
            "proxy-{}: requests reach every host",
            i + 1
        );
        assert!(
            errors(&done).is_empty(),
            "proxy-{}: {:?}",
            i + 1,
            errors(&done)
        );
    }

    // 2. A host killed: its endpoints are withdrawn after the grace; clients see no errors
    // beyond the requests that were in flight to it.
    let lost = hosts[1].endpoints();
    hosts[1].kill();
    let killed = Instant::now();
    let withdraw = until_tables(
        &client,
        &proxies,
        killed,
        Duration::from_secs(10),
        "host-3 withdrawn",
        |e| !lost.iter().any(|x| e.contains(x)),
    )
    .await;
    assert!(
        withdraw.iter().all(|d| *d >= GRACE),
        "withdrawn before the grace: {withdraw:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut kill_errors = Vec::new();
    for i in 0..2 {
        let window = load.between(i, killed, Instant::now());
        let errs = errors(&window);
        assert!(
            errs.len() <= CLIENTS,
            "proxy-{}: {} errors after host-3 was killed, more than the {CLIENTS} requests that can be in flight: {errs:?}",
            i + 1,
            errs.len()
        );
        kill_errors.push((window.len(), errs));
    }

    // 3. The host back on its addresses: both proxies stream from it and route to its backend
    // within 2 s of its control plane answering (its TEI instance follows once restarted).
    let began = Instant::now();
    hosts[1].restart(&dir).await;
    let back = Instant::now();
    let start_took = back - began;
    let backend = Host::backend(3);
    let resync = until_tables(
        &client,
        &proxies,
        back,
        Duration::from_secs(10),
        "host-3 resynced",
        |e| e.contains(&backend),
    )
    .await;
    assert!(
        max(&resync) <= Duration::from_secs(2),
        "resync took {resync:?}"
    );
    let instance = Host::instance(3);
    let tei_back = until_tables(
        &client,
        &proxies,
        back,
        Duration::from_secs(20),
        "host-3's TEI back",
        |e| e.contains(&instance),
    )
    .await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 0..2 {
        let done = load.between(i, t, Instant::now());
        assert!(
            served_by(&done).contains(&backend),
            "proxy-{} routes to host-3 again",
            i + 1
        );
        assert!(
            errors(&done).is_empty(),
            "proxy-{}: {:?}",
            i + 1,
            errors(&done)
        );
    }

    // 4. A host added to the name: streamed from at the next refresh.
    hosts.push(Host::start(&dir, 5, port, instance_ports(5, 10)).await);
    write_dns(&dns, &[2, 3, 4, 5]);
    let added = Instant::now();
    let new_backend = Host::backend(5);
    let pickup = until_tables(
        &client,
        &proxies,
        added,
        REFRESH + Duration::from_secs(5),
        "host-5 picked up",
        |e| e.contains(&new_backend),
    )
    .await;
    assert!(
        max(&pickup) <= REFRESH + Duration::from_secs(2),
        "host-5 picked up after {pickup:?} (refresh {REFRESH:?})"
    );

    // 5. A host removed from the name (still running): withdrawn after the grace, not before.
    write_dns(&dns, &[2, 3, 4]);
    let removed = Instant::now();
    let out = until_tables(
        &client,
        &proxies,
        removed,
        Duration::from_secs(10),
        "host-5 withdrawn",
        |e| !e.contains(&new_backend),
    )
    .await;
    assert!(
        out.iter().all(|d| *d >= GRACE) && max(&out) <= REFRESH + GRACE + Duration::from_secs(2),
        "host-5 withdrawn {out:?} after leaving the name (refresh {REFRESH:?}, grace {GRACE:?})"
    );
    for p in proxies {
        let dump = p.config_dump(&client).await.expect("config_dump");
        let streams = dump["control_planes"][&url]["streams"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(
            !streams.contains_key(&format!("http://{}:{port}", host_ip(5))),
            "the removed address's stream is gone: {streams:?}"
        );
    }

    // 6. A control plane moved to another address: host-4's id and config (its own data
    // directory) on 127.0.0.6, and the name now lists .6 instead of .4. The new address's
    // stream takes the plane over at once; the old one's grace runs out a second later and
    // withdraws only what it held: host-4 is one plane, and its backend never leaves the tables.
    let moved_body = format!(
        "data_dir = \"{}\"\n{}",
        dir.join("host-4-moved-data").display(),
        hosts[2].body
    );
    let moved = Control::start_on(
        &dir,
        &hosts[2].id,
        &moved_body,
        try_free_addr_on(host_ip(6)).expect("api port"),
        SocketAddr::new(host_ip(6), port),
    )
    .await;
    write_dns(&dns, &[2, 3, 6]);
    let new_url = format!("http://{}:{port}", host_ip(6));
    let moved_at = Instant::now();
    let takeover = until_planes(&client, &proxies, moved_at, |dump| {
        dump["planes"]["host-4"]["via"] == new_url.as_str()
    })
    .await;
    let backend4 = Host::backend(4);
    let watch_until = moved_at + REFRESH + GRACE + Duration::from_millis(500);
    while Instant::now() < watch_until {
        for p in proxies {
            let e = p.endpoint_ids(&client).await;
            assert!(
                e.contains(&backend4),
                "host-4's backend left the table while it moved: {e:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in proxies {
        let dump = p.config_dump(&client).await.expect("config_dump");
        let planes: Vec<&String> = dump["planes"].as_object().expect("planes").keys().collect();
        assert_eq!(
            planes,
            ["host-2", "host-3", "host-4"],
            "one plane per id: {dump}"
        );
        assert_eq!(dump["planes"]["host-4"]["via"], new_url.as_str(), "{dump}");
        let streams = dump["control_planes"][&url]["streams"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert!(
            !streams.contains_key(&format!("http://{}:{port}", host_ip(4))),
            "the old address's stream is gone after its grace: {streams:?}"
        );
    }
    drop(moved);

    // 7. A proxy killed: the other keeps serving without an error.
    let t = Instant::now();
    p2.proc.kill();
    load.stop(1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = load.between(0, t, Instant::now());
    assert!(
        after.len() > 10,
        "proxy-1 kept serving: {} requests",
        after.len()
    );
    assert!(
        errors(&after).is_empty(),
        "proxy-1 after proxy-2 died: {:?}",
        errors(&after)
    );
    let p2_cut = errors(&load.between(1, t, Instant::now())).len();
    load.finish().await;

    println!(
        "MULTI-HOST FIGURES (grace {} ms, refresh {} ms, {CLIENTS} clients per proxy):\n\
         - host killed -> endpoints withdrawn after {:?} ms (proxy-1, proxy-2)\n\
         - errors while a host died and was withdrawn: proxy-1 {} of {} requests {:?}; proxy-2 {} of {} {:?}\n\
         - host back: control plane ready {} ms after start; routes resynced {:?} ms after it; its TEI instance routed again after {:?} ms\n\
         - host added to the name -> picked up after {:?} ms\n\
         - host removed from the name -> withdrawn after {:?} ms\n\
         - host-4's control plane moved to 127.0.0.6 -> taken over after {:?} ms, its backend never left the tables\n\
         - proxy-2 killed: proxy-1 served {} requests in the next second, 0 errors (proxy-2's clients saw {p2_cut} cut requests)",
        GRACE.as_millis(),
        REFRESH.as_millis(),
        ms(&withdraw),
        kill_errors[0].1.len(),
        kill_errors[0].0,
        kill_errors[0].1,
        kill_errors[1].1.len(),
        kill_errors[1].0,
        kill_errors[1].1,
        start_took.as_millis(),
        ms(&resync),
        ms(&tei_back),
        ms(&pickup),
        ms(&out),
        ms(&takeover),
        after.len(),
    );
}
