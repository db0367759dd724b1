//! The proxy's configuration: a TOML file (every field optional, documented in
//! `config/proxy.toml`) overridden by command-line flags, validated before anything starts.
//! Errors name the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use multiverse_common::config::ConfigError;

/// Default client listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// This proxy's id towards control planes (default: the host name).
    pub node_id: Option<String>,
    pub listen: ListenConfig,
    pub clients: ClientsConfig,
    pub clients_tls: ClientsTlsConfig,
    pub admin: AdminListenerConfig,
    pub control_planes: Vec<ControlPlaneConfig>,
    pub standalone: StandaloneConfig,
    pub limits: LimitsConfig,
    pub upstream: UpstreamConfig,
    pub outlier: OutlierSettings,
    pub affinity: AffinitySettings,
    pub discovery: DiscoveryTuning,
    pub server: ServerConfig,
    pub cors: CorsConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
    pub usage: UsageConfig,
    pub batch_embed: BatchEmbedConfig,
}

/// Token usage accounting (`request::usage`, `request::stream_usage`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Add `stream_options.include_usage` to a streamed completion whose client did not ask
    /// for usage, and hide the usage event from it (default true: otherwise streams count no
    /// tokens and escape a key's tokens-per-minute limit).
    pub request_stream_usage: bool,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            request_stream_usage: true,
        }
    }
}

/// The Arrow batch-embedding gRPC service (`multiverse.embed.v1.BatchEmbed`, `batch`); off
/// unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchEmbedConfig {
    /// Its own cleartext HTTP/2 (gRPC) listener, e.g. `127.0.0.1:8090`.
    pub listen: Option<String>,
    /// Rows one call may carry; more: INVALID_ARGUMENT.
    pub max_rows: usize,
    /// Largest request message (the Arrow IPC bytes and the fields around them).
    pub max_request_bytes: usize,
    /// Pieces of one call in flight at once (over all its endpoints).
    pub concurrency: usize,
    /// Timeout of one piece's `/embed` call.
    pub timeout_ms: u64,
}

impl Default for BatchEmbedConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_rows: 100_000,
            max_request_bytes: 64 * 1024 * 1024,
            concurrency: 8,
            timeout_ms: 30_000,
        }
    }
}

/// W3C trace context (`request::trace`) and OTLP span export (`request::spans`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// Without `otlp_endpoint`: the sampled flag of the traces the proxy starts (a client's
    /// own `traceparent` passes unchanged). Default false.
    pub sample: bool,
    /// The OTLP/gRPC collector spans are exported to (`http://host:4317`). None (default):
    /// no spans.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// With `otlp_endpoint`: the share of the traces the proxy starts that are sampled (and
    /// exported); a client's `traceparent` decides by its own sampled flag.
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            sample: false,
            otlp_endpoint: None,
            service_name: "multiverse-proxy".into(),
            sample_ratio: 1.0,
        }
    }
}

impl TracingConfig {
    /// The exporter's settings, when it is on.
    pub fn otlp(&self) -> Option<multiverse_common::otlp::OtlpSettings> {
        Some(multiverse_common::otlp::OtlpSettings {
            endpoint: self.otlp_endpoint.clone()?,
            service_name: self.service_name.clone(),
        })
    }
}

/// Browsers allowed to call the proxy (CORS; `request::cors`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`scheme://host[:port]`, exact match, lowercase as browsers send them) whose
    /// pages may call the proxy. Empty (default): no CORS headers, no preflights answered.
    pub allowed_origins: Vec<String>,
}

impl CorsConfig {
    /// Each origin is `http(s)://host[:port]`: no path, query, user info or trailing slash
    /// (a browser's `Origin` never has one, so such an entry could never match).
    fn validate(&self) -> Result<(), (usize, String)> {
        for (i, o) in self.allowed_origins.iter().enumerate() {
            let bad = |why: &str| (i, format!("`{o}` {why}; write it as scheme://host[:port]"));
            if o == "*" {
                return Err(bad("(any origin) is not supported: list the origins"));
            }
            let uri: http::Uri = o.parse().map_err(|_| bad("is not an origin"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(bad("must start with http:// or https://"));
            }
            let Some(authority) = uri.authority() else {
                return Err(bad("has no host"));
            };
            if authority.as_str().contains('@') || authority.host().is_empty() {
                return Err(bad("must name a host without user info"));
            }
            if uri.path_and_query().is_some_and(|p| p.as_str() != "/") || o.ends_with('/') {
                return Err(bad("must not have a path"));
            }
            if o.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(bad("must be lowercase (browsers send origins lowercase)"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// HTTP/1.1 and h2c (gRPC) clients.
    pub clients: String,
    /// Admin endpoints.
    pub admin: String,
}

/// Timeouts and abuse limits of client connections (both client listeners, cleartext and
/// `[clients_tls]`; the admin listener uses the timeouts and header limits too).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsConfig {
    /// The whole request header must arrive within this time (from the accept on a new
    /// connection, from its first byte on a reused one); then 408 and close, or just close if
    /// nothing was sent.
    pub header_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this time without a new request.
    pub keepalive_timeout_ms: u64,
    /// The largest request header: HTTP/1.1 request line and fields in bytes (then 431 and
    /// close), HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` (a larger header list gets 431 on its
    /// stream).
    pub max_header_bytes: usize,
    /// The most header fields a request may carry (at most 256): HTTP/1.1 then gets 431 and
    /// close, HTTP/2 a 431 in the route family's format.
    pub max_headers: usize,
    /// Client connections open at once, both listeners together; beyond, a new connection is
    /// closed at once.
    pub max_connections: usize,
    /// Client connections open at once from one address (IPv6: one /64); beyond, closed at
    /// once. 0: no per-address limit.
    pub max_connections_per_ip: u32,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per client connection: streams beyond it are
    /// refused with `REFUSED_STREAM` (safe for the client to retry).
    pub h2_max_streams: u32,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            header_timeout_ms: 10_000,
            // nginx's `keepalive_timeout` default; longer than the 60 s idle timeout of common
            // load balancers in front (AWS ALB, GCP), so they, not the proxy, close idle
            // connections and never send a request on one the proxy is closing.
            keepalive_timeout_ms: 75_000,
            // Below Envoy's 60 KiB and pingora's 64 KiB; four times nginx's 8 KiB line buffer.
            // Requests carry a key and a few headers: no SDK comes near it.
            max_header_bytes: 32 * 1024,
            // Envoy's `max_headers_count` default.
            max_headers: 100,
            // Well below the 65536 descriptors a service is normally given (each client
            // connection may hold an upstream one too).
            max_connections: 10_000,
            // Room for a NAT gateway's worth of clients (an SDK pools up to 100 connections),
            // while one host cannot take the listener's whole budget.
            max_connections_per_ip: 256,
            // RFC 9113's recommended minimum, and pingora's and most servers' default.
            h2_max_streams: 100,
        }
    }
}

/// Connection limits of the admin listener (`listen.admin`): its own budget, so a flood of the
/// client port cannot lock out `/metrics` and the probes, and a flood of the admin port cannot
/// take client connections' places.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminListenerConfig {
    /// Admin connections open at once; beyond, a new connection is closed at once.
    pub max_connections: usize,
    /// Admin connections open at once from one address (IPv6: one /64). 0: no per-address
    /// limit.
    pub max_connections_per_ip: u32,
}

impl Default for AdminListenerConfig {
    fn default() -> Self {
        Self {
            // A Prometheus pair, the kubelet's probes and a few operators need a handful.
            max_connections: 256,
            max_connections_per_ip: 32,
        }
    }
}

/// A second client listener with TLS (ALPN `h2` and `http/1.1`); off unless `listen` is set.
/// The certificate chain and key (PEM) are read again on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsTlsConfig {
    pub listen: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// `http://host:port` of a control plane's discovery listener, or `dns+http://name:port`:
    /// every address the name resolves to is a control plane (one stream each).
    pub url: String,
}

/// A `dns+http://name:port` control-plane URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsUrl {
    /// The scheme of each address's stream (`http` or `https`).
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl DnsUrl {
    /// `Ok(None)` for a URL without `dns+`; an error says what is wrong with a `dns+` one.
    pub fn parse(url: &str) -> Result<Option<DnsUrl>, String> {
        let Some(inner) = url.strip_prefix("dns+") else {
            return Ok(None);
        };
        let uri: http::Uri = inner
            .parse()
            .map_err(|e| format!("`{url}` is not a URL ({e})"))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_string(),
            _ => return Err(format!("`{url}` must be dns+http:// or dns+https://")),
        };
        let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
            return Err(format!(
                "`{url}` must name a host and a port (dns+http://name:port)"
            ));
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!("`{url}` must have no path or query"));
        }
        Ok(Some(DnsUrl {
            scheme,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        }))
    }

    /// The URL of the stream to one resolved address.
    pub fn stream_url(&self, addr: SocketAddr) -> String {
        format!("{}://{addr}", self.scheme)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StandaloneConfig {
    /// Static routes file (format: config/routes.toml), reloaded on SIGHUP. When set, the proxy
    /// uses no control plane.
    pub routes_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Requests per minute from one client address (IPv6: one /64) on the client listener;
    /// 0 (default): no limit. Over it: 429 in the route's format with `Retry-After`.
    pub per_ip_rpm: u32,
    /// Client addresses tracked at once for `per_ip_rpm` (beyond, newcomers are not limited).
    pub per_ip_tracked: usize,
    /// The request header that marks a request `high` or `low` priority in a model's admission
    /// queue (`low` is shed first; absent or anything else: high).
    pub priority_header: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    /// Longest wait for the first response byte and between later reads.
    pub read_timeout_ms: u64,
    /// Concurrent streams per HTTP/2 (h2c, gRPC) upstream connection.
    pub max_h2_streams: usize,
    /// PEM CA certificates that `https://` endpoints' certificates are verified against
    /// (instead of the system's roots); the name checked is the endpoint's host.
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSettings {
    /// Consecutive gateway failures (connect errors, resets, timeouts, 502/503/504) that eject
    /// an endpoint; 0 disables outlier detection.
    pub consecutive_gateway_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this, up to max_ejection_ms.
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// Most of a model's endpoints ejected at once, in percent (at least one may be).
    pub max_ejection_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_gateway_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 10,
        }
    }
}

/// What `lb = "prefix_affinity"` keys a request by (`request::prefix_hash`,
/// `routing::affinity`). Every replica must have the same values to choose alike.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AffinitySettings {
    /// Bytes of the body looked at, at most, for the prompt prefix (past `model` when `model`
    /// comes first: the most a prefix_affinity request holds beyond what routing holds).
    pub prefix_bytes: usize,
    /// Leading `messages` elements hashed (1: the system prompt).
    pub prefix_messages: u32,
    /// A request with this header is keyed by its value instead of its prompt.
    pub session_header: String,
    /// `c`: an endpoint whose load would exceed c × the mean passes the request on.
    pub load_factor: f64,
}

impl Default for AffinitySettings {
    fn default() -> Self {
        Self {
            prefix_bytes: 4096,
            prefix_messages: 1,
            session_header: "x-session-id".into(),
            load_factor: 1.25,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryTuning {
    /// Withdraw a control plane's routes once it has been unreachable this long; 0 keeps them
    /// for as long as it is away.
    pub withdraw_after_ms: u64,
    pub connect_timeout_ms: u64,
    pub keepalive_interval_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// How often `dns+` control-plane names are resolved again (also at once when a stream is
    /// lost).
    pub dns_refresh_ms: u64,
    /// Resolve `dns+` names from this hosts-format file (read again at every resolution)
    /// instead of the system resolver.
    pub dns_hosts_file: Option<PathBuf>,
    /// `https://` control planes: the CA (PEM) that signed their certificates (default: the
    /// system's roots), and this proxy's client certificate and key for mTLS.
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Worker threads, one event loop each (default: the number of CPUs).
    pub threads: Option<usize>,
    /// On SIGTERM: seconds to let in-flight requests finish before exiting.
    pub drain_grace_seconds: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// JSON log lines instead of human-readable ones.
    pub json: bool,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            clients: DEFAULT_LISTEN.into(),
            admin: DEFAULT_ADMIN.into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            per_ip_rpm: 0,
            per_ip_tracked: 65_536,
            priority_header: "x-priority".into(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            read_timeout_ms: 300_000,
            max_h2_streams: 128,
            tls_ca_file: None,
        }
    }
}

impl Default for DiscoveryTuning {
    fn default() -> Self {
        Self {
            withdraw_after_ms: 0,
            connect_timeout_ms: 2_000,
            keepalive_interval_ms: 5_000,
            backoff_initial_ms: 100,
            // A restarted control plane is found again within about a second, however long it
            // was away (issue 10: a 5 s cap took the proxies 2.4-4 s); one refused connect a
            // second is cheap.
            backoff_max_ms: 1_000,
            // Kubernetes' DNS (CoreDNS) answers for a headless Service with a 5 s TTL: resolving
            // more often sees nothing new, less often leaves a new GPU node unused for longer.
            // One lookup per proxy every 5 s is negligible load.
            dns_refresh_ms: 5_000,
            dns_hosts_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            threads: None,
            drain_grace_seconds: 10,
        }
    }
}

impl ProxyConfig {
    /// Reads and parses a TOML file (not yet validated: flags may still override fields).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        multiverse_common::config::load(path)
    }

    /// Checks every field; `path` is named in errors.
    pub fn validate(&self, path: Option<&Path>) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.map(Path::to_path_buf),
            key: key.to_string(),
            message,
        };
        multiverse_common::otlp::OtlpSettings::check(
            self.tracing.otlp_endpoint.as_deref(),
            &self.tracing.service_name,
            self.tracing.sample_ratio,
        )
        .map_err(|(key, why)| invalid(&format!("tracing.{key}"), why))?;
        let mut ports = Vec::new();
        for (key, value) in [
            ("listen.clients", &self.listen.clients),
            ("listen.admin", &self.listen.admin),
        ] {
            let addr = value
                .parse::<SocketAddr>()
                .map_err(|e| invalid(key, format!("`{value}` is not an ip:port address ({e})")))?;
            ports.push(addr);
        }
        // Port 0 (any free port) twice is two different ports.
        if ports[0] == ports[1] && ports[0].port() != 0 {
            return Err(invalid(
                "listen.admin",
                "must differ from listen.clients".into(),
            ));
        }
        if let Some(value) = &self.clients_tls.listen {
            let key = "clients_tls.listen";
            let addr = value
                .parse::<SocketAddr>()
                .map_err(|e| invalid(key, format!("`{value}` is not an ip:port address ({e})")))?;
            if addr.port() != 0 && ports.contains(&addr) {
                return Err(invalid(
                    key,
                    "must differ from listen.clients and listen.admin".into(),
                ));
            }
            for (key, file) in [
                ("clients_tls.cert_file", &self.clients_tls.cert_file),
                ("clients_tls.key_file", &self.clients_tls.key_file),
            ] {
                if file.is_none() {
                    return Err(invalid(key, "is required with clients_tls.listen".into()));
                }
            }
        }
        for (i, cp) in self.control_planes.iter().enumerate() {
            let key = format!("control_planes[{i}].url");
            if DnsUrl::parse(&cp.url)
                .map_err(|e| invalid(&key, e))?
                .is_some()
            {
                continue;
            }
            let ok = (cp.url.starts_with("http://") || cp.url.starts_with("https://"))
                && cp.url.len() > "http://".len();
            if !ok {
                return Err(invalid(
                    &key,
                    format!(
                        "`{}` must be an http://, https://, dns+http:// or dns+https:// URL",
                        cp.url
                    ),
                ));
            }
        }
        if self.discovery.tls_cert_file.is_some() != self.discovery.tls_key_file.is_some() {
            let key = if self.discovery.tls_cert_file.is_some() {
                "discovery.tls_key_file"
            } else {
                "discovery.tls_cert_file"
            };
            return Err(invalid(
                key,
                "discovery.tls_cert_file and discovery.tls_key_file go together".into(),
            ));
        }
        if self.standalone.routes_file.is_some() && !self.control_planes.is_empty() {
            return Err(invalid(
                "standalone.routes_file",
                "cannot be combined with control_planes: choose one source of routes".into(),
            ));
        }
        if !(1024..=1 << 20).contains(&self.clients.max_header_bytes) {
            return Err(invalid(
                "clients.max_header_bytes",
                "must be between 1024 and 1048576".into(),
            ));
        }
        if !(1..=256).contains(&self.clients.max_headers) {
            return Err(invalid(
                "clients.max_headers",
                "must be between 1 and 256".into(),
            ));
        }
        for (table, total, cap, per_ip) in [
            (
                "clients",
                self.clients.max_connections,
                1 << 21,
                self.clients.max_connections_per_ip,
            ),
            (
                "admin",
                self.admin.max_connections,
                1 << 16,
                self.admin.max_connections_per_ip,
            ),
        ] {
            if !(1..=cap).contains(&total) {
                return Err(invalid(
                    &format!("{table}.max_connections"),
                    format!("must be between 1 and {cap}"),
                ));
            }
            if per_ip > 65_535 {
                return Err(invalid(
                    &format!("{table}.max_connections_per_ip"),
                    "must be at most 65535 (0: no per-address limit)".into(),
                ));
            }
        }
        if self.clients.h2_max_streams == 0 {
            return Err(invalid("clients.h2_max_streams", "must be > 0".into()));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(invalid("limits.max_body_bytes", "must be > 0".into()));
        }
        if http::HeaderName::from_bytes(self.limits.priority_header.as_bytes()).is_err() {
            return Err(invalid(
                "limits.priority_header",
                format!("`{}` is not a header name", self.limits.priority_header),
            ));
        }
        if !(1..=1 << 24).contains(&self.limits.per_ip_tracked) {
            return Err(invalid(
                "limits.per_ip_tracked",
                "must be between 1 and 16777216".into(),
            ));
        }
        for (key, v) in [
            ("clients.header_timeout_ms", self.clients.header_timeout_ms),
            (
                "clients.keepalive_timeout_ms",
                self.clients.keepalive_timeout_ms,
            ),
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            ("upstream.read_timeout_ms", self.upstream.read_timeout_ms),
            (
                "discovery.connect_timeout_ms",
                self.discovery.connect_timeout_ms,
            ),
            (
                "discovery.keepalive_interval_ms",
                self.discovery.keepalive_interval_ms,
            ),
            (
                "discovery.backoff_initial_ms",
                self.discovery.backoff_initial_ms,
            ),
            ("discovery.backoff_max_ms", self.discovery.backoff_max_ms),
            ("discovery.dns_refresh_ms", self.discovery.dns_refresh_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be > 0".into()));
            }
        }
        if self.outlier.max_ejection_percent > 100 {
            return Err(invalid(
                "outlier.max_ejection_percent",
                "must be 0-100".into(),
            ));
        }
        if self.outlier.base_ejection_ms > self.outlier.max_ejection_ms {
            return Err(invalid(
                "outlier.base_ejection_ms",
                "must not exceed outlier.max_ejection_ms".into(),
            ));
        }
        let a = &self.affinity;
        if !(1..=1 << 20).contains(&a.prefix_bytes) {
            return Err(invalid(
                "affinity.prefix_bytes",
                "must be between 1 and 1048576".into(),
            ));
        }
        if !(1..=1024).contains(&a.prefix_messages) {
            return Err(invalid(
                "affinity.prefix_messages",
                "must be between 1 and 1024".into(),
            ));
        }
        if http::HeaderName::from_bytes(a.session_header.as_bytes()).is_err()
            || a.session_header.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(invalid(
                "affinity.session_header",
                format!("`{}` is not a lowercase HTTP header name", a.session_header),
            ));
        }
        if !(1.0..=100.0).contains(&a.load_factor) {
            return Err(invalid(
                "affinity.load_factor",
                "must be between 1.0 and 100.0".into(),
            ));
        }
        if self.upstream.max_h2_streams == 0 {
            return Err(invalid("upstream.max_h2_streams", "must be > 0".into()));
        }
        self.cors
            .validate()
            .map_err(|(i, m)| invalid(&format!("cors.allowed_origins[{i}]"), m))?;
        if self.server.threads == Some(0) {
            return Err(invalid("server.threads", "must be > 0".into()));
        }
        if let Some(value) = &self.batch_embed.listen {
            let addr = value.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "batch_embed.listen",
                    format!("`{value}` is not an ip:port address ({e})"),
                )
            })?;
            if addr.port() != 0 && ports.contains(&addr) {
                return Err(invalid(
                    "batch_embed.listen",
                    "must differ from listen.clients and listen.admin".into(),
                ));
            }
        }
        for (key, value) in [
            ("batch_embed.max_rows", self.batch_embed.max_rows as u64),
            (
                "batch_embed.max_request_bytes",
                self.batch_embed.max_request_bytes as u64,
            ),
            (
                "batch_embed.concurrency",
                self.batch_embed.concurrency as u64,
            ),
            ("batch_embed.timeout_ms", self.batch_embed.timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be > 0".into()));
            }
        }
        Ok(())
    }

    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            multiverse_common::config::hostname().unwrap_or_else(|| "multiverse-proxy".into())
        })
    }
}

/// Milliseconds as a `Duration`.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = ProxyConfig::default();
        c.validate(None).expect("defaults valid");
        assert_eq!(c.listen.clients, "127.0.0.1:8080");
        assert_eq!(c.listen.admin, "127.0.0.1:9901");
        assert_eq!(c.limits.max_body_bytes, 8 << 20);
        assert_eq!(c.clients.header_timeout_ms, 10_000);
        assert_eq!(c.clients.keepalive_timeout_ms, 75_000);
        assert_eq!(c.clients.max_header_bytes, 32 * 1024);
        assert_eq!(c.clients.max_headers, 100);
        assert_eq!(c.clients.max_connections, 10_000);
        assert_eq!(c.clients.max_connections_per_ip, 256);
        assert_eq!(c.clients.h2_max_streams, 100);
        assert_eq!(c.admin.max_connections, 256);
        assert_eq!(c.admin.max_connections_per_ip, 32);
    }

    #[test]
    fn admin_connection_limits_are_validated_by_key() {
        let c: ProxyConfig =
            toml::from_str("[admin]\nmax_connections = 8\nmax_connections_per_ip = 0")
                .expect("parses");
        c.validate(None).expect("valid");
        for (text, key) in [
            ("max_connections = 0", "admin.max_connections"),
            ("max_connections = 70000", "admin.max_connections"),
            (
                "max_connections_per_ip = 70000",
                "admin.max_connections_per_ip",
            ),
        ] {
            let c: ProxyConfig = toml::from_str(&format!("[admin]\n{text}")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/p.toml")))
                .expect_err(text)
                .to_string();
            assert!(
                msg.contains(key) && msg.contains("/etc/p.toml"),
                "{text}: {msg}"
            );
        }
        let err = toml::from_str::<ProxyConfig>("[admin]\nmax_conections = 1").unwrap_err();
        assert!(err.to_string().contains("max_conections"), "{err}");
    }

    #[test]
    fn batch_embed_is_off_by_default_documented_and_validated_by_key() {
        let defaults = ProxyConfig::default().batch_embed;
        assert_eq!(defaults.listen, None, "off unless listen is set");
        let path = multiverse_common::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
            .join("../config/proxy.toml");
        let documented = ProxyConfig::from_file(&path).expect("config/proxy.toml");
        assert_eq!(
            documented.batch_embed, defaults,
            "the example shows the defaults"
        );
        for (text, key) in [
            ("listen = \"nowhere\"", "batch_embed.listen"),
            ("listen = \"127.0.0.1:8080\"", "batch_embed.listen"),
            ("max_rows = 0", "batch_embed.max_rows"),
            ("max_request_bytes = 0", "batch_embed.max_request_bytes"),
            ("concurrency = 0", "batch_embed.concurrency"),
            ("timeout_ms = 0", "batch_embed.timeout_ms"),
        ] {
            let c: ProxyConfig = toml::from_str(&format!("[batch_embed]\n{text}")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/p.toml")))
                .expect_err(text)
                .to_string();
            assert!(
                msg.contains(key) && msg.contains("/etc/p.toml"),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn client_limits_out_of_range_name_the_key() {
        for (key, value) in [
            ("max_header_bytes", "100"),
            ("max_header_bytes", "2000000"),
            ("max_headers", "0"),
            ("max_headers", "257"),
            ("max_connections", "0"),
            ("max_connections_per_ip", "70000"),
            ("h2_max_streams", "0"),
        ] {
            let c: ProxyConfig =
                toml::from_str(&format!("[clients]\n{key} = {value}")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/p.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("clients.{key}")) && msg.contains("/etc/p.toml"),
                "{key} = {value}: {msg}"
            );
        }
    }

    #[test]
    fn zero_client_timeouts_name_the_key() {
        for key in ["header_timeout_ms", "keepalive_timeout_ms"] {
            let c: ProxyConfig = toml::from_str(&format!("[clients]\n{key} = 0")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/p.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("clients.{key}")) && msg.contains("/etc/p.toml"),
                "{msg}"
            );
        }
    }

    #[test]
    fn tracing_keys_are_validated_by_key() {
        let c: ProxyConfig =
            toml::from_str("[tracing]\notlp_endpoint = \"http://127.0.0.1:4317\"").expect("parses");
        assert!(c.validate(None).is_ok());
        for (text, key) in [
            (
                "otlp_endpoint = \"127.0.0.1:4317\"",
                "tracing.otlp_endpoint",
            ),
            ("service_name = \"\"", "tracing.service_name"),
            ("sample_ratio = 2.0", "tracing.sample_ratio"),
        ] {
            let c: ProxyConfig = toml::from_str(&format!("[tracing]\n{text}")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/x.toml")))
                .expect_err(text)
                .to_string();
            assert!(
                msg.contains(key) && msg.contains("/etc/x.toml"),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn example_files_parse_and_validate() {
        for name in [
            "proxy.toml",
            "quickstart-proxy.toml",
            "production-proxy.toml",
            "development-proxy.toml",
            "../deploy/kubernetes/base/config/proxy.toml",
        ] {
            let path = multiverse_common::paths::manifest_dir(env!("CARGO_MANIFEST_DIR"))
                .join("../config")
                .join(name);
            let c = ProxyConfig::from_file(&path).expect(name);
            c.validate(Some(&path)).expect(name);
        }
    }

    #[test]
    fn affinity_settings_are_validated_by_key() {
        let c: ProxyConfig = toml::from_str(
            "[affinity]\nprefix_bytes = 8192\nprefix_messages = 2\nsession_header = \"x-conv\"\nload_factor = 1.5",
        )
        .expect("parses");
        c.validate(None).expect("valid");
        for (text, key) in [
            ("prefix_bytes = 0", "affinity.prefix_bytes"),
            ("prefix_messages = 0", "affinity.prefix_messages"),
            ("session_header = \"X-Session\"", "affinity.session_header"),
            ("session_header = \"a b\"", "affinity.session_header"),
            ("load_factor = 0.9", "affinity.load_factor"),
        ] {
            let c: ProxyConfig = toml::from_str(&format!("[affinity]\n{text}")).expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/p.toml")))
                .expect_err(text)
                .to_string();
            assert!(
                msg.contains(key) && msg.contains("/etc/p.toml"),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn errors_name_key_and_file() {
        let c: ProxyConfig = toml::from_str("[listen]\nclients = \"nope\"").expect("parses");
        let err = c.validate(Some(Path::new("/etc/p.toml"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/p.toml") && msg.contains("listen.clients"),
            "{msg}"
        );
        let err = toml::from_str::<ProxyConfig>("[listen]\nclientz = \"x\"").unwrap_err();
        assert!(err.to_string().contains("clientz"), "{err}");
    }

    #[test]
    fn dns_urls_are_taken_apart_or_refused_naming_the_key() {
        let u = DnsUrl::parse("dns+http://multiverse-control.ns.svc:9001")
            .expect("valid")
            .expect("dns");
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str(), u.port),
            ("http", "multiverse-control.ns.svc", 9001)
        );
        assert_eq!(
            u.stream_url("10.0.0.7:9001".parse().expect("addr")),
            "http://10.0.0.7:9001"
        );
        assert_eq!(DnsUrl::parse("http://cp:9001"), Ok(None));
        for bad in [
            "dns+http://cp",
            "dns+ftp://cp:9001",
            "dns+http://cp:9001/x",
            "dns+cp:9001",
            "dns+",
        ] {
            let c = ProxyConfig {
                control_planes: vec![ControlPlaneConfig { url: bad.into() }],
                ..Default::default()
            };
            let msg = c
                .validate(Some(Path::new("/etc/p.toml")))
                .expect_err(bad)
                .to_string();
            assert!(msg.contains("control_planes[0].url"), "{bad}: {msg}");
        }
        let c: ProxyConfig = toml::from_str(
            "[[control_planes]]\nurl = \"dns+http://cp.test:9001\"\n[discovery]\ndns_refresh_ms = 0",
        )
        .expect("parses");
        let msg = c.validate(None).expect_err("0 ms").to_string();
        assert!(msg.contains("discovery.dns_refresh_ms"), "{msg}");
    }

    #[test]
    fn a_tls_listener_needs_both_files_and_its_own_address() {
        let c: ProxyConfig =
            toml::from_str("[clients_tls]\nlisten = \"127.0.0.1:8443\"\ncert_file = \"/c.pem\"")
                .expect("parses");
        let msg = c
            .validate(Some(Path::new("/etc/p.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("clients_tls.key_file") && msg.contains("/etc/p.toml"),
            "{msg}"
        );
        let c: ProxyConfig = toml::from_str(
            "[clients_tls]\nlisten = \"127.0.0.1:8080\"\ncert_file = \"/c\"\nkey_file = \"/k\"",
        )
        .expect("parses");
        let msg = c.validate(None).unwrap_err().to_string();
        assert!(
            msg.contains("clients_tls.listen") && msg.contains("differ"),
            "{msg}"
        );
        let c: ProxyConfig =
            toml::from_str("[discovery]\ntls_cert_file = \"/c.pem\"").expect("parses");
        let msg = c.validate(None).unwrap_err().to_string();
        assert!(msg.contains("discovery.tls_key_file"), "{msg}");
        let c: ProxyConfig = toml::from_str("[clients_tls]\nlisten = \"nope\"").expect("parses");
        assert!(c
            .validate(None)
            .unwrap_err()
            .to_string()
            .contains("clients_tls.listen"));
    }

    #[test]
    fn cors_origins_are_validated_by_key() {
        for ok in [
            "http://127.0.0.1:9000",
            "https://ui.example.com",
            "http://[::1]:9000",
        ] {
            let c: ProxyConfig =
                toml::from_str(&format!("[cors]\nallowed_origins = [\"{ok}\"]")).expect("parses");
            c.validate(None).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "*",
            "127.0.0.1:9000",
            "ftp://h",
            "http://h/",
            "http://h/ui",
            "http://u@h",
            "http://UI.example.com",
        ] {
            let c: ProxyConfig = toml::from_str(&format!(
                "[cors]\nallowed_origins = [\"http://ok\", \"{bad}\"]"
            ))
            .expect("parses");
            let msg = c
                .validate(Some(Path::new("/etc/p.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("cors.allowed_origins[1]") && msg.contains("/etc/p.toml"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn the_listeners_must_differ_unless_both_take_any_free_port() {
        let mut c = ProxyConfig::default();
        c.listen.admin = c.listen.clients.clone();
        let err = c.validate(None).unwrap_err().to_string();
        assert!(err.contains("listen.admin"), "{err}");
        c.listen.clients = "127.0.0.1:0".into();
        c.listen.admin = "127.0.0.1:0".into();
        c.validate(None)
            .expect("two port-0 listeners are two ports");
    }
}
