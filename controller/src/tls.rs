//! Transport security of `walfleet serve`: the plaintext refusal (a non-loopback listener
//! without TLS needs `--insecure-plaintext`), and HTTPS for the HTTP endpoint with the same
//! certificate and key as gRPC.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Refuses to listen in plaintext where other machines can connect, unless the operator said
/// `--insecure-plaintext` (TLS terminated in front of the controller); then warns each start.
pub fn check_plaintext(listeners: &[(&str, SocketAddr)], tls: bool, insecure_plaintext: bool) -> Result<()> {
    if tls {
        return Ok(());
    }
    let exposed: Vec<String> = listeners
        .iter()
        .filter(|(_, addr)| proto::endpoint::is_exposed(*addr))
        .map(|(flag, addr)| format!("{flag} {addr}"))
        .collect();
    if exposed.is_empty() {
        return Ok(());
    }
    if !insecure_plaintext {
        bail!(
            "refusing to serve plaintext on a non-loopback address ({}): tokens would cross the network in the \
             clear; give --tls-cert and --tls-key, or --insecure-plaintext when a TLS proxy in front of the \
             controller terminates TLS",
            exposed.join(", ")
        );
    }
    warn!(
        listeners = %exposed.join(", "),
        "serving plaintext on a non-loopback address (--insecure-plaintext): tokens cross the network in the clear unless a TLS proxy terminates in front"
    );
    Ok(())
}

/// A rustls server configuration from PEM files (certificate chain, private key).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read --tls-cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse the certificates in --tls-cert {}", cert.display()))?;
    if certs.is_empty() {
        bail!("--tls-cert {} holds no PEM certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("read the private key in --tls-key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choose TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("use the --tls-cert certificate with the --tls-key key")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `cancel`; open connections are closed then.
pub async fn serve_https(
    listener: TcpListener,
    app: axum::Router,
    config: Arc<rustls::ServerConfig>,
    cancel: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept an https connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, app, cancel) = (acceptor.clone(), app.clone(), cancel.clone());
        connections.spawn(async move {
            let tls = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)) => match r {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "tls handshake failed"),
                    Err(_) => return debug!(%peer, "tls handshake timed out"),
                },
            };
            let service = TowerToHyperService::new(app);
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = conn => if let Err(e) = r { debug!(%peer, error = %e, "https connection ended") },
            }
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_on_loopback_is_fine() {
        let l = [
            ("--grpc-addr", "127.0.0.1:7070".parse().expect("addr")),
            ("--http-addr", "[::1]:7080".parse().expect("addr")),
        ];
        assert!(check_plaintext(&l, false, false).is_ok());
    }

    #[test]
    fn plaintext_on_an_exposed_address_is_refused_and_names_it() {
        let l = [
            ("--grpc-addr", "127.0.0.1:7070".parse().expect("addr")),
            ("--http-addr", "0.0.0.0:7080".parse().expect("addr")),
        ];
        let e = check_plaintext(&l, false, false).expect_err("refused").to_string();
        assert!(e.contains("--http-addr 0.0.0.0:7080") && e.contains("--insecure-plaintext"), "{e}");
        assert!(!e.contains("--grpc-addr"), "{e}");
        assert!(check_plaintext(&l, false, true).is_ok());
        assert!(check_plaintext(&l, true, false).is_ok());
    }
}
