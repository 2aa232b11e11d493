//! One plain GET, for probes and downloads.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, time::Duration};
use tokio::net::TcpStream;

/// `GET path` on a new connection: the status and the whole body, or the
/// error that stopped it; gives up after `timeout`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    get_with(addr, path, timeout, None).await
}

/// [`get`], telling `headers` once the response has started: the server
/// has admitted the request.
pub async fn get_with(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    headers: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(u16, String), String> {
    let request = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("valid request");
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        if let Some(headers) = headers {
            let _ = headers.send(());
        }
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body cut after status {status}: {e}"))?
            .to_bytes();
        conn.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}
