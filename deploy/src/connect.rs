//! How a client reaches an address: plain HTTP/1.1, or over TLS with
//! HTTP/1.1 or HTTP/2 (chosen by ALPN), one hyper connection at a time.

use crate::tls;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{net::SocketAddr, time::Duration};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, rustls::pki_types::ServerName};

/// The protocol a client speaks to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2, negotiated with ALPN: TLS only, as browsers do.
    Http2,
}

/// An address, and the TLS connectors when it speaks TLS.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    tls: Option<(TlsConnector, TlsConnector)>,
}

impl Target {
    /// Plain HTTP/1.1 (the instances, and the proxy without `--tls`).
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    /// TLS trusting the run's CA: HTTP/1.1 or HTTP/2 by ALPN.
    pub fn tls(addr: SocketAddr, files: &tls::Files) -> Result<Self, String> {
        Ok(Self {
            addr,
            tls: Some((
                tls::connector(files, b"http/1.1")?,
                tls::connector(files, b"h2")?,
            )),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `https://127.0.0.1:port` or `http://...`.
    pub fn origin(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// HTTP/2 where the target speaks TLS, else HTTP/1.1.
    pub fn best(&self, h2: bool) -> Protocol {
        if h2 && self.is_tls() {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
    }

    /// A new connection (TCP, TLS, HTTP handshake within 5 s each).
    pub async fn connect(&self, protocol: Protocol) -> Result<Conn, String> {
        let step = Duration::from_secs(5);
        let tcp = tokio::time::timeout(step, TcpStream::connect(self.addr))
            .await
            .map_err(|_| "connect: timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Conn::handshake(TokioIo::new(tcp), protocol, self).await,
            Some((h1, h2)) => {
                let connector = if protocol == Protocol::Http2 { h2 } else { h1 };
                let name = ServerName::IpAddress(self.addr.ip().into());
                let tls = tokio::time::timeout(step, connector.connect(name, tcp))
                    .await
                    .map_err(|_| "TLS handshake: timed out".to_owned())?
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let expected: &[u8] = if protocol == Protocol::Http2 {
                    b"h2"
                } else {
                    b"http/1.1"
                };
                if alpn.as_deref().is_some_and(|a| a != expected) {
                    return Err(format!("ALPN chose {:?}", alpn.map(String::from_utf8)));
                }
                Conn::handshake(TokioIo::new(tls), protocol, self).await
            }
        }
    }
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One client connection; its driver task ends when it is dropped.
pub struct Conn {
    sender: Sender,
    origin: String,
    host: String,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    async fn handshake<T>(
        io: TokioIo<T>,
        protocol: Protocol,
        target: &Target,
    ) -> Result<Self, String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let fail = |e: hyper::Error| format!("HTTP handshake: {e}");
        let (sender, task) = match protocol {
            Protocol::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(fail)?;
                (
                    Sender::Http1(sender),
                    tokio::spawn(async move { drop(conn.await) }),
                )
            }
            Protocol::Http2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(fail)?;
                (
                    Sender::Http2(sender),
                    tokio::spawn(async move { drop(conn.await) }),
                )
            }
        };
        Ok(Self {
            sender,
            origin: target.origin(),
            host: target.addr.to_string(),
            task,
        })
    }

    /// Another request can go on this connection (not closed by the peer,
    /// an error, or an HTTP/2 GOAWAY).
    pub fn is_open(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => !s.is_closed(),
            Sender::Http2(s) => !s.is_closed(),
        }
    }

    /// A request for `path` on this connection: origin-form with `Host` for
    /// HTTP/1.1, an absolute URI (`:scheme`, `:authority`) for HTTP/2.
    pub fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        match self.sender {
            Sender::Http1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.host),
            Sender::Http2(_) => Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.origin)),
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let result = match &mut self.sender {
            Sender::Http1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::Http2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        };
        result.map_err(|e| e.to_string())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}
