//! `--tls`: a certificate authority and a server certificate for 127.0.0.1,
//! made at run time with `openssl` in the run's directory, and the rustls
//! configuration of the clients, which trust that CA alone.
//!
//! A CA and a leaf rather than one self-signed certificate: webpki (rustls)
//! refuses a CA certificate presented as the server's own.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, RootCertStore,
        pki_types::{CertificateDer, pem::PemObject},
    },
};

/// The files a proxy and the clients need.
#[derive(Clone, Debug)]
pub struct Files {
    /// The CA certificate: the clients' only root.
    pub ca: PathBuf,
    /// The server certificate (nginx `ssl_certificate`).
    pub cert: PathBuf,
    /// Its private key (nginx `ssl_certificate_key`).
    pub key: PathBuf,
    /// Certificate then key in one file (HAProxy `crt`).
    pub bundle: PathBuf,
}

fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Makes a P-256 CA and a certificate for `127.0.0.1` and `localhost`
/// signed by it, valid for two days, in `<dir>/tls`.
pub fn make(dir: &Path) -> Result<Files, String> {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).map_err(|e| format!("{}: {e}", tls.display()))?;
    let path = |name: &str| tls.join(name);
    let s = |p: &PathBuf| p.display().to_string();
    let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
    let (cert, key, csr) = (path("server.pem"), path("server.key"), path("server.csr"));
    let ext = path("server.ext");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=rolling-deploy CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ])?;
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ])?;
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .map_err(|e| e.to_string())?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ])?;
    let bundle = path("server.bundle.pem");
    let mut pem = std::fs::read(&cert).map_err(|e| e.to_string())?;
    pem.extend(std::fs::read(&key).map_err(|e| e.to_string())?);
    std::fs::write(&bundle, pem).map_err(|e| e.to_string())?;
    Ok(Files {
        ca,
        cert,
        key,
        bundle,
    })
}

/// A connector that trusts only `files.ca` and offers `alpn` (`h2` or
/// `http/1.1`), with rustls' `ring` provider.
pub fn connector(files: &Files, alpn: &[u8]) -> Result<TlsConnector, String> {
    let pem = std::fs::read(&files.ca).map_err(|e| format!("{}: {e}", files.ca.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| format!("CA certificate: {e}"))?)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
