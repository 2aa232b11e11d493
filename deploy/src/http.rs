//! One plain GET or POST on a new connection, for probes, downloads and
//! the producer's hits.

use crate::connect::{Protocol, Target};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;
use std::time::Duration;

/// `GET path` on a new connection: the status and the whole body, or the
/// error that stopped it; gives up after `timeout`.
pub async fn get(target: &Target, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    send(target, "GET", path, None, timeout, None).await
}

/// `GET path` (no body) or `POST path` with a JSON body; tells `headers`
/// once the response has started: the server has admitted the request.
pub async fn send(
    target: &Target,
    method: &str,
    path: &str,
    json: Option<String>,
    timeout: Duration,
    headers: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(u16, String), String> {
    let request = async {
        let mut conn = target.connect(Protocol::Http1).await?;
        let mut req = conn.request(method, path);
        if json.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let body = Full::new(json.map(Bytes::from).unwrap_or_default());
        let res = conn.send(req.body(body).expect("valid request")).await?;
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
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, request)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}
