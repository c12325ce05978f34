//! hyper's HTTP/1.1 client over pooled connections:
//! `cargo run --example hyper_http1 -- ADDR [REQUESTS]`, where `ADDR` is
//! `host:port` or `tls://host:port` of an HTTP server (or set
//! `CONPOOL_HTTP_ADDR`).
//!
//! Each request leases a connection, hands it to
//! `hyper::client::conn::http1`, and takes it back with `without_shutdown()`
//! once the response is read. hyper keeps a read pending while the
//! connection is idle (to notice the server closing it), so a plain drop of
//! the lease would close the connection as cancelled mid-exchange; the
//! exchange is complete, so the example calls `release()`, and every request
//! after the first reuses the same connection. The report at the end shows
//! it.

use std::error::Error;

use conpool::{Config, Endpoint, Pool, PooledConnection};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

type BoxError = Box<dyn Error + Send + Sync>;

/// The server to ask when the command line names none.
const ADDR_VAR: &str = "CONPOOL_HTTP_ADDR";
const DEFAULT_REQUESTS: usize = 10;

/// One exchange through hyper: the response, and the connection hyper gave
/// back once the exchange was over.
pub struct Exchange {
    pub status: StatusCode,
    pub body: Bytes,
    pub conn: PooledConnection,
    /// hyper read bytes past the response (a server speaking out of turn):
    /// the connection must not carry another exchange.
    pub overread: bool,
}

impl Exchange {
    /// Gives the connection back: released, since the exchange is
    /// complete, unless hyper read past the response.
    pub fn give_back(self) -> (StatusCode, Bytes) {
        if self.overread {
            self.conn.discard();
        } else {
            self.conn.release();
        }
        (self.status, self.body)
    }
}

/// Sends `GET path` over hyper on `conn` and reads the whole response.
pub async fn get(conn: PooledConnection, path: &str) -> Result<Exchange, BoxError> {
    let host = authority(conn.endpoint());
    let (mut sender, connection) = http1::handshake(TokioIo::new(conn)).await?;
    let request = Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        // The sender goes here: with nothing more to send, the connection
        // future finishes as soon as the connection is idle.
        Ok::<_, hyper::Error>((status, body))
    };
    let (parts, response) = tokio::join!(connection.without_shutdown(), exchange);
    let (status, body) = response?;
    let parts = parts?;
    Ok(Exchange {
        status,
        body,
        overread: !parts.read_buf.is_empty(),
        conn: parts.io.into_inner(),
    })
}

/// `requests` GETs of `path`, one after another, each on a connection
/// leased from `pool` and given back after; returns the responses.
pub async fn get_sequentially(
    pool: &Pool,
    endpoint: &Endpoint,
    path: &str,
    requests: usize,
) -> Result<Vec<(StatusCode, Bytes)>, BoxError> {
    let mut responses = Vec::with_capacity(requests);
    for _ in 0..requests {
        let conn = pool.get(endpoint).await?;
        responses.push(get(conn, path).await?.give_back());
    }
    Ok(responses)
}

/// The `Host` header for an endpoint: `host:port`, IPv6 in brackets.
fn authority(endpoint: &Endpoint) -> String {
    if endpoint.host().contains(':') {
        format!("[{}]:{}", endpoint.host(), endpoint.port())
    } else {
        format!("{}:{}", endpoint.host(), endpoint.port())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .or_else(|| std::env::var(ADDR_VAR).ok())
        .ok_or_else(|| {
            format!("no server given: pass host:port (or tls://host:port), or set {ADDR_VAR}")
        })?;
    let endpoint: Endpoint = addr.parse()?;
    let requests = match args.next() {
        None => DEFAULT_REQUESTS,
        Some(n) => n.parse().map_err(|_| {
            format!("REQUESTS is {n:?}; it must be a whole number of requests to send")
        })?,
    };

    let pool = Pool::new(Config::default());
    for (status, body) in get_sequentially(&pool, &endpoint, "/", requests).await? {
        println!("{status} ({} bytes)", body.len());
    }
    let s = pool.stats(&endpoint);
    println!(
        "{requests} requests to {endpoint}: {} connection(s) opened, {} reuses, {} closed as cancelled, {} errors",
        s.total_created,
        s.total_reused,
        s.closed_for(conpool::CloseReason::Cancelled),
        s.errors,
    );
    pool.close().await;
    Ok(())
}
