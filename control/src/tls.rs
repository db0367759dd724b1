//! TLS for the control plane's listeners (`[discovery.tls]`, `[admin.tls]`): the server's PEM
//! pair, and mTLS — a client CA, and an allow-list of the names (certificate CN or DNS/URI SAN)
//! that may connect. A client with a certificate the CA did not sign, or whose names are not
//! allowed, is refused in the handshake, before any gRPC or HTTP.
//!
//! [`ServerTls`] holds what the files said and re-reads them on [`ServerTls::reload`] (SIGHUP):
//! new handshakes get the new pair, open connections keep theirs, and a broken pair is
//! refused with the old one kept. [`accept`] turns a TCP listener into a stream of TLS
//! connections: every handshake runs in its own task with a deadline, so a client that stalls
//! in it holds up nobody else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[discovery.tls]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListenerConfig {
    /// The server's PEM certificate chain and key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// mTLS: clients must present a certificate signed by a CA in this PEM file.
    pub client_ca_file: Option<PathBuf>,
    /// mTLS: of those, only certificates whose CN or a DNS/URI SAN is in this list (exact
    /// names, or `*.suffix` for any name under the suffix). Empty: any certificate the CA
    /// signed.
    pub allowed_names: Vec<String>,
}

/// Why a TLS listener cannot be set up (names the file).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} file {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_error<'a>(what: &'static str, path: &'a Path) -> impl Fn(String) -> TlsError + 'a {
    move |reason| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = file_error(what, path);
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let err = file_error("key", path);
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| err(e.to_string()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Who must present a client certificate when a client CA is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client, in the handshake (discovery: proxies always connect directly).
    Required,
    /// A client may connect without one (the operator API: a trusted reverse proxy forwards
    /// the operator's certificate in a header, and a missing one is answered in the API's
    /// error format); a certificate that is presented is still verified in the handshake.
    Optional,
}

impl TlsListenerConfig {
    /// The rustls server config offering `alpn`, and the client verifier (with a client CA),
    /// reading every file now.
    pub fn load(&self, alpn: &[&[u8]], auth: ClientAuth) -> Result<Loaded, TlsError> {
        let certs = read_certs("certificate", &self.cert_file)?;
        let key = read_key(&self.key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let verifier = match &self.client_ca_file {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("client CA", ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("client CA", ca)(e.to_string()))?;
                }
                let inner =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let inner = match auth {
                    ClientAuth::Required => inner,
                    ClientAuth::Optional => inner.allow_unauthenticated(),
                };
                let inner = inner
                    .build()
                    .map_err(|e| file_error("client CA", ca)(e.to_string()))?;
                Some(Arc::new(AllowList {
                    inner,
                    allowed: self.allowed_names.clone(),
                }))
            }
            None => None,
        };
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| file_error("key", &self.key_file)(e.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Loaded {
            server: Arc::new(config),
            verifier,
        })
    }
}

/// What the TLS files said when they were last read.
#[derive(Debug)]
pub struct Loaded {
    pub server: Arc<rustls::ServerConfig>,
    /// With a client CA: the CA's verification, then the allow-list (for certificates that
    /// arrive other than in a handshake).
    verifier: Option<Arc<AllowList>>,
}

impl Loaded {
    /// Verifies a certificate chain (leaf first) that arrived outside a handshake, as the
    /// handshake would: signed by the client CA, valid now, a name in the allow-list. `None`
    /// without a client CA.
    pub fn verify_client(
        &self,
        chain: &[CertificateDer<'static>],
    ) -> Option<Result<Vec<String>, rustls::Error>> {
        let verifier = self.verifier.as_ref()?;
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Some(Err(rustls::Error::NoCertificatesPresented));
        };
        Some(
            verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .map(|_| cert_names(leaf).unwrap_or_default()),
        )
    }
}

/// A listener's TLS, reloadable: the files it was configured with and what they said last.
#[derive(Debug)]
pub struct ServerTls {
    /// The config table (`discovery.tls`, `admin.tls`), for logs and errors.
    pub key: &'static str,
    files: TlsListenerConfig,
    alpn: Vec<Vec<u8>>,
    auth: ClientAuth,
    current: ArcSwap<Loaded>,
}

impl ServerTls {
    /// Reads the files of table `key` now (a bad one is an error naming it).
    pub fn load(
        key: &'static str,
        files: &TlsListenerConfig,
        alpn: &[&[u8]],
        auth: ClientAuth,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let loaded = files.load(alpn, auth)?;
        Ok(Arc::new(ServerTls {
            key,
            files: files.clone(),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            auth,
            current: ArcSwap::from_pointee(loaded),
        }))
    }

    /// What new handshakes use.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Re-reads every file (blocking I/O: call it off the runtime's workers). On error the
    /// current pair keeps serving.
    pub fn reload(&self) -> Result<(), TlsError> {
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let loaded = self.files.load(&alpn, self.auth)?;
        self.current.store(Arc::new(loaded));
        Ok(())
    }

    /// The certificate file, for logs.
    pub fn cert_file(&self) -> &Path {
        &self.files.cert_file
    }
}

/// Reloads every listener's TLS on each SIGHUP (`hangups` installed at start), logging the
/// outcome per listener.
pub async fn reload_on_hangup(
    mut hangups: multiverse_common::signals::Hangups,
    listeners: Vec<Arc<ServerTls>>,
) {
    while hangups.recv().await.is_some() {
        if listeners.is_empty() {
            tracing::info!("SIGHUP: no TLS listener to reload");
        }
        for tls in &listeners {
            let job = tls.clone();
            match tokio::task::spawn_blocking(move || job.reload()).await {
                Ok(Ok(())) => tracing::info!(
                    listener = tls.key,
                    file = %tls.cert_file().display(),
                    "TLS certificate reloaded"
                ),
                Ok(Err(e)) => tracing::error!(
                    listener = tls.key,
                    error = %e,
                    "TLS certificate reload rejected; the current one keeps serving"
                ),
                Err(e) => tracing::error!(listener = tls.key, error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// Whether `name` matches an allow-list `entry` (exact, ASCII case-insensitive; `*.suffix`
/// matches any name ending in `.suffix`, not the suffix itself).
pub fn name_allowed(entry: &str, name: &str) -> bool {
    match entry.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => entry.eq_ignore_ascii_case(name),
    }
}

/// The names a certificate identifies itself by: its subject CNs, DNS and URI SANs.
pub fn cert_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push(n.to_string()),
                _ => {}
            }
        }
    }
    Ok(names)
}

/// The CA's verification, then the allow-list.
#[derive(Debug)]
struct AllowList {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for AllowList {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.is_empty() {
            return Ok(verified);
        }
        let names = cert_names(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(std::io::Error::other(e)),
            )))
        })?;
        if names
            .iter()
            .any(|n| self.allowed.iter().any(|a| name_allowed(a, n)))
        {
            return Ok(verified);
        }
        tracing::warn!(names = ?names, "client certificate refused: no name in the allow-list");
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
}

/// Where [`accept`] takes connections from: a TCP listener, or one wrapped by the operator
/// API's connection limits (which sheds before any handshake is spent).
pub trait Incoming: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// The next connection and its peer.
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, std::net::SocketAddr)>> + Send;
}

impl Incoming for TcpListener {
    type Io = TcpStream;
    fn next(
        &mut self,
    ) -> impl std::future::Future<Output = std::io::Result<(TcpStream, std::net::SocketAddr)>> + Send
    {
        self.accept()
    }
}

/// Accepts TCP connections on `listener` and hands over those that complete the TLS handshake
/// (each in its own task, within [`HANDSHAKE_TIMEOUT`], with the pair current when it began);
/// a failed handshake is logged at debug.
pub fn accept<I: Incoming>(
    mut listener: I,
    tls: Arc<ServerTls>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<I::Io>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.next() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = tls.key, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let acceptor = TlsAcceptor::from(tls.current().server.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_entries_match_exactly_or_by_suffix() {
        assert!(name_allowed("proxy-1.example", "PROXY-1.example"));
        assert!(!name_allowed("proxy-1.example", "proxy-10.example"));
        assert!(name_allowed("*.proxies.example", "a.proxies.example"));
        assert!(name_allowed("*.proxies.example", "a.b.proxies.example"));
        assert!(!name_allowed("*.proxies.example", "proxies.example"));
        assert!(!name_allowed("*.proxies.example", "evilproxies.example"));
        assert!(!name_allowed("*.proxies.example", "x"));
    }

    #[test]
    fn names_are_the_cn_and_the_dns_and_uri_sans() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["p1.proxies.example".into(), "10.0.0.1".into()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "proxy-1");
        let cert = params.self_signed(&key).expect("cert");
        let names = cert_names(cert.der()).expect("parse");
        assert_eq!(names, vec!["proxy-1", "p1.proxies.example"]);
        assert!(cert_names(b"not a certificate").is_err());
    }
}
