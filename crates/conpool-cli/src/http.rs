//! `conpool bench`'s HTTP/1.1 request, on a connection of conpool's
//! `hyper::Http1` protocol pool: hyper's `SendRequest`, its handshake done
//! once per connection, given back to the pool once the response is read.

use std::time::Duration;

use conpool::ProtocolLease;
use conpool::hyper::Http1;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::protocol::{Failure, with_causes};

/// The request body of the command's HTTP requests.
pub type Body = Empty<Bytes>;

/// `GET path` on `conn`, the whole response read; a status other than 2xx
/// is a failure. The connection goes back to the pool afterwards (or is
/// discarded, with `reuse` off).
pub async fn get(
    mut conn: ProtocolLease<Http1<Body>>,
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
        .body(Body::new())
        .map_err(|e| Failure {
            kind: "other",
            message: format!("the request for {path:?} cannot be built: {e}"),
        })?;
    let exchange = async {
        let response = conn.send_request(request).await?;
        let status = response.status();
        // Read to the end, so that the connection is ready for the next.
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    };
    let status = match tokio::time::timeout(request_timeout, exchange).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            conn.discard();
            return Err(Failure {
                kind: "io",
                message: with_causes(&e),
            });
        }
        // The exchange was cut off half-way: the connection cannot be
        // trusted with another request.
        Err(_) => {
            conn.discard();
            return Err(Failure::timed_out(request_timeout));
        }
    };
    if !reuse || !status.is_success() {
        conn.discard();
    }
    if !status.is_success() {
        return Err(Failure {
            kind: "http_status",
            message: format!("GET {path} answered {status}"),
        });
    }
    Ok(())
}
