//! The router's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) from a
//! test: turning it on, a bare GET, and one value out of the Prometheus
//! text.

use std::net::SocketAddr;

use icom_server::ConfigFile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Turns the endpoint on, on a free port of 127.0.0.1 (for
/// [`TestCluster::start_with`](crate::TestCluster::start_with)).
///
/// # Panics
/// Never: the address is a literal.
pub fn with_metrics(c: &mut ConfigFile) {
    c.metrics.enabled = true;
    c.metrics.listen = "127.0.0.1:0".parse().expect("a literal address");
}

/// GETs `path` from `addr` over HTTP/1.1 (no bound: wrap it in a timeout);
/// returns (status, body), or `None` if the connection, the request or the
/// status line fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of the metric `name` (with its labels, if any, as
/// `name{label="value"}`) in a Prometheus text body; `None` if it is not
/// there (a labelled counter appears only once it has counted).
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
