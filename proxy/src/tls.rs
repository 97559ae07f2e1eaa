//! The TLS server configuration: TLS 1.2 and 1.3 only (rustls, `ring`), ALPN
//! `h2` and `http/1.1`, optional client certificates verified against a CA.
//!
//! A reload builds a whole new configuration from the files; new connections get
//! it, open ones keep theirs. A configuration that fails to load is reported and
//! the previous one stays.

use super::config::Tls;
use anyhow::{Context, Result, bail};
use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .with_context(|| format!("{}: no private key", tls.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .with_context(|| format!("{}: not a CA certificate", ca.display()))?;
            }
            // Clients without a certificate may still use a token or a password.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "{} does not match {}",
            tls.key.display(),
            tls.cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificates", path.display());
    }
    Ok(certs)
}

/// When the proxy's certificates stop being valid: the server certificate
/// (the first of its chain) and each client CA, as the daemon and doctor
/// report them. Unreadable files are left out (loading them fails loudly).
pub fn expiries(tls: &Tls) -> Vec<warden_events::reports::CertificateInfo> {
    let mut out = Vec::new();
    let mut add = |kind: &str, path: &std::path::Path, certs: &[CertificateDer<'_>]| {
        for der in certs {
            if let Some((subject, not_after)) = super::identity::certificate_validity(der.as_ref())
            {
                out.push(warden_events::reports::CertificateInfo {
                    certificate: kind.to_owned(),
                    path: path.display().to_string(),
                    subject,
                    not_after,
                });
            }
        }
    };
    if let Ok(certs) = read_certs(&tls.cert) {
        add("server", &tls.cert, &certs[..1]);
    }
    if let Some(ca) = &tls.client_ca
        && let Ok(certs) = read_certs(ca)
    {
        add("client_ca", ca, &certs);
    }
    out
}
