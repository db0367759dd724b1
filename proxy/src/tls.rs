//! The client listener's TLS (`[clients_tls]`): the certificate chain and key from PEM files,
//! served through a rustls cert resolver behind an `ArcSwap`. A SIGHUP ([`CertReloader`]) reads
//! the files again and swaps the pair in: new handshakes get it, open connections keep theirs
//! (a connection's certificate is chosen once, at its handshake), and a pair that does not load
//! is refused with the old one still serving.
//!
//! Cost: nothing on the cleartext listener; per TLS handshake one atomic load of the pair.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::protocols::tls::CaType;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair cannot be used (names the file).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {reason}")]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} file {path}: {reason}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The CA certificates of `[upstream] tls_ca_file` as pingora's per-peer CA list. Each is
/// parsed here first (pingora parses it again and panics on one it cannot).
pub fn load_upstream_ca(path: &Path) -> Result<Arc<CaType>, TlsError> {
    let mut cas = Vec::new();
    for cert in load_certs(path)? {
        let invalid = |reason: String| TlsError::Invalid {
            what: "CA certificate",
            path: path.to_path_buf(),
            reason,
        };
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| invalid(e.to_string()))?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| invalid(e.to_string()))?;
        cas.push(WrappedX509::new(cert.to_vec(), parse_x509));
    }
    Ok(Arc::from(cas))
}

/// Reads a PEM certificate chain (at least one certificate).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        what: "certificate",
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            what: "certificate",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            what: "certificate",
            path: path.to_path_buf(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Read {
        what: "key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        what: "key",
        path: path.to_path_buf(),
        // The error never quotes key material, only what was (not) found.
        reason: e.to_string(),
    })
}

/// Reads a certificate chain and its key and checks that they belong together.
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let invalid = |reason: String| TlsError::Invalid {
        what: "key",
        path: key_file.to_path_buf(),
        reason,
    };
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(format!("unsupported key: {e}")))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        invalid(format!(
            "does not match the certificate in {}: {e}",
            cert_file.display()
        ))
    })?;
    Ok(pair)
}

/// The served certificate: the pair read from the files, swapped on [`CertStore::reload`].
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair (an error names the file).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertStore, TlsError> {
        let pair = load_pair(cert_file, key_file)?;
        Ok(CertStore {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: ArcSwap::from_pointee(pair),
        })
    }

    /// Reads the files again and serves the new pair to new handshakes; on an error the
    /// current pair keeps serving.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(pair));
        Ok(())
    }

    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reloads the client listener's certificate on every SIGHUP.
pub struct CertReloader {
    pub store: Arc<CertStore>,
}

#[async_trait]
impl BackgroundService for CertReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match multiverse_common::signals::hangups() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGHUP: the TLS certificate will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let store = self.store.clone();
                    let result = tokio::task::spawn_blocking(move || store.reload())
                        .await
                        .unwrap_or_else(|e| Err(TlsError::Read {
                            what: "certificate",
                            path: self.store.cert_file().to_path_buf(),
                            reason: format!("reload task failed: {e}"),
                        }));
                    match result {
                        Ok(()) => tracing::info!(file = %self.store.cert_file().display(), "TLS certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "TLS certificate reload rejected; the current one keeps serving"),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files(PathBuf);

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files(tag: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("mv-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        Files(dir)
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }

    #[test]
    fn a_pair_loads_and_a_mismatched_or_missing_one_names_the_file() {
        let d = files("pair");
        let (ca, ka) = write_pair(&d.0, "a.test");
        let (_cb, kb) = write_pair(&d.0, "b.test");
        load_pair(&ca, &ka).expect("matching pair");
        let msg = load_pair(&ca, &kb).expect_err("mismatch").to_string();
        assert!(
            msg.contains("b.test.key") && msg.contains("does not match"),
            "{msg}"
        );
        let msg = load_pair(&d.0.join("nope.crt"), &ka)
            .expect_err("missing")
            .to_string();
        assert!(msg.contains("nope.crt"), "{msg}");
        std::fs::write(d.0.join("empty.crt"), "not pem").expect("write");
        let msg = load_pair(&d.0.join("empty.crt"), &ka)
            .expect_err("empty")
            .to_string();
        assert!(msg.contains("empty.crt") && msg.contains("no PEM"), "{msg}");
        let msg = load_pair(&ca, &ca).expect_err("cert as key").to_string();
        assert!(
            msg.contains("a.test.crt") && msg.starts_with("key file"),
            "{msg}"
        );
    }

    #[test]
    fn an_upstream_ca_file_loads_and_a_bad_one_names_the_file() {
        let d = files("upstream-ca");
        let (ca, _) = write_pair(&d.0, "ca.test");
        assert_eq!(load_upstream_ca(&ca).expect("loads").len(), 1);
        // PEM armour around bytes that are not a certificate: refused here, not a panic in
        // pingora's parser at the first connection.
        let bad = d.0.join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let msg = load_upstream_ca(&bad).expect_err("bad").to_string();
        assert!(msg.contains("bad.pem"), "{msg}");
        let msg = load_upstream_ca(&d.0.join("nope.pem"))
            .expect_err("missing")
            .to_string();
        assert!(msg.contains("nope.pem"), "{msg}");
    }

    #[test]
    fn reload_swaps_the_pair_and_a_bad_one_keeps_the_old() {
        let d = files("reload");
        let (ca, ka) = write_pair(&d.0, "a.test");
        let store = CertStore::load(&ca, &ka).expect("load");
        let first = store.current.load_full().cert[0].clone();
        let (cb, kb) = write_pair(&d.0, "b.test");
        std::fs::copy(&cb, &ca).expect("copy");
        std::fs::copy(&kb, &ka).expect("copy");
        store.reload().expect("reload");
        let second = store.current.load_full().cert[0].clone();
        assert_ne!(first, second);
        std::fs::write(&ka, "garbage").expect("write");
        store.reload().expect_err("bad key");
        assert_eq!(store.current.load_full().cert[0], second);
    }
}
