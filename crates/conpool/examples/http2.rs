//! HTTP/2 through conpool's `Http2` protocol: many requests in flight at
//! once share one connection, each on a stream of its own.
//!
//! ```sh
//! cargo run --example http2 --features hyper -- https://localhost:8443/ 100
//! ```
//!
//! The first argument is the URL (default `http://127.0.0.1:8080/`, spoken
//! as HTTP/2 with prior knowledge; `https` URLs negotiate `h2` by ALPN),
//! the second the number of requests sent at once (default 100).
//! `tests/hyper_protocols.rs` runs it against the suite's nginx.

use std::sync::Arc;

use conpool::hyper::{Http2, endpoint_of};
use conpool::{Config, Pool, ProtocolPool};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// The request body type of this example's pool.
pub type Body = Empty<Bytes>;

/// What a burst of requests saw.
#[derive(Debug)]
pub struct Burst {
    /// Each response's status and body.
    pub responses: Vec<(u16, Bytes)>,
    /// The most leases that shared connections at one moment.
    pub peak_shares: usize,
}

/// Sends `requests` GETs of `uri` at once, each from a task of its own.
pub async fn get_at_once(
    http: &ProtocolPool<Http2<Body>>,
    uri: &hyper::Uri,
    requests: usize,
) -> Result<Burst, Box<dyn std::error::Error + Send + Sync>> {
    let endpoint = endpoint_of(uri)?;
    // Every task holds its share until all have one and they have been
    // counted, so that they are in flight together.
    let all_in = Arc::new(tokio::sync::Barrier::new(requests));
    let mut handles = Vec::new();
    for _ in 0..requests {
        let (http, uri, endpoint, all_in) =
            (http.clone(), uri.clone(), endpoint.clone(), all_in.clone());
        handles.push(tokio::spawn(async move {
            let mut conn = http.get(&endpoint).await?;
            // One task reads the shares while every task holds its own,
            // and all wait for that reading before they go on.
            let peak = all_in
                .wait()
                .await
                .is_leader()
                .then(|| http.stats(&endpoint).shares);
            all_in.wait().await;
            let request = hyper::Request::get(uri).body(Empty::new())?;
            let response = conn.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body, peak))
        }));
    }
    let mut burst = Burst {
        responses: Vec::new(),
        peak_shares: 0,
    };
    for handle in handles {
        let (status, body, peak) = handle.await??;
        burst.responses.push((status, body));
        burst.peak_shares = burst.peak_shares.max(peak.unwrap_or(0));
    }
    Ok(burst)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let uri: hyper::Uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080/".into())
        .parse()?;
    let requests: usize = args.next().map_or(Ok(100), |n| n.parse())?;
    let pool = Pool::new(Config::default());
    let http = pool.protocol(Http2::<Body>::new());
    let burst = get_at_once(&http, &uri, requests).await?;
    let stats = http.stats(&endpoint_of(&uri)?);
    println!(
        "{} responses, {} in flight at once over {} connection(s)",
        burst.responses.len(),
        burst.peak_shares,
        stats.total_created
    );
    pool.close().await;
    Ok(())
}
