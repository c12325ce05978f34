//! `conpool bench`'s HTTP/1.1 request: hyper's `client::conn::http1` over a
//! lease, given back with `PooledConnection::release()` once the response
//! body is read (hyper keeps a read pending on an idle connection, so a
//! plain drop would close it as cancelled; see conpool's
//! `examples/hyper_http1.rs`). Kept apart so that it can give way to
//! conpool's own hyper adapter when that lands.

use std::time::Duration;

use conpool::PooledConnection;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::protocol::{Failure, with_causes};

/// `GET path` on `conn`, the whole response read; a status other than 2xx
/// is a failure. The connection goes back to the pool afterwards (or is
/// discarded, with `reuse` off, or when hyper read past the response).
pub async fn get(
    conn: PooledConnection,
    path: &str,
    reuse: bool,
    request_timeout: Duration,
) -> Result<(), Failure> {
    let endpoint = conn.endpoint();
    let host = if endpoint.host().contains(':') {
        format!("[{}]:{}", endpoint.host(), endpoint.port())
    } else {
        format!("{}:{}", endpoint.host(), endpoint.port())
    };
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure {
            kind: "other",
            message: format!("the request for {path:?} cannot be built: {e}"),
        })?;
    let exchange = async move {
        let (mut sender, connection) = http1::handshake(TokioIo::new(conn)).await?;
        let response = async move {
            let response = sender.send_request(request).await?;
            let status = response.status();
            // Read to the end, so that the connection is ready for the next.
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        let (parts, status) = tokio::join!(connection.without_shutdown(), response);
        Ok::<_, hyper::Error>((parts?, status?))
    };
    let (parts, status) = match tokio::time::timeout(request_timeout, exchange).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            return Err(Failure {
                kind: "io",
                message: with_causes(&e),
            });
        }
        // The lease is dropped with hyper's read pending: it is closed.
        Err(_) => return Err(Failure::timed_out(request_timeout)),
    };
    let conn = parts.io.into_inner();
    // Bytes past the response: the server spoke out of turn.
    if !reuse || !parts.read_buf.is_empty() || !status.is_success() {
        conn.discard();
    } else {
        conn.release();
    }
    if !status.is_success() {
        return Err(Failure {
            kind: "http_status",
            message: format!("GET {path} answered {status}"),
        });
    }
    Ok(())
}
