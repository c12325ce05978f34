//! HTTP/1.1 GETs through conpool's `Http1` protocol: hyper's client, its
//! handshake done once per connection, each connection reused by the next
//! request.
//!
//! ```sh
//! cargo run --example http1 --features hyper -- http://127.0.0.1:8080/ 64
//! ```
//!
//! The first argument is the URL (default `http://127.0.0.1:8080/`), the
//! second the number of requests (default 64), sent by 8 tasks at once.
//! `tests/hyper_protocols.rs` runs it against the suite's nginx.

use conpool::hyper::{Http1, endpoint_of};
use conpool::{Config, Pool, ProtocolPool};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

/// The request body type of this example's pool.
pub type Body = Empty<Bytes>;

/// GETs `uri` `requests` times from `tasks` tasks at once; returns each
/// response's status and body.
pub async fn get_concurrently(
    http: &ProtocolPool<Http1<Body>>,
    uri: &hyper::Uri,
    requests: usize,
    tasks: usize,
) -> Result<Vec<(u16, Bytes)>, Box<dyn std::error::Error + Send + Sync>> {
    let endpoint = endpoint_of(uri)?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (http, path, endpoint) = (http.clone(), path.clone(), endpoint.clone());
        let mine = requests / tasks + usize::from(task < requests % tasks);
        handles.push(tokio::spawn(async move {
            let mut responses = Vec::new();
            for _ in 0..mine {
                let mut conn = http.get(&endpoint).await?;
                let request = hyper::Request::get(path.as_str())
                    .header(hyper::header::HOST, endpoint.host())
                    .body(Empty::new())?;
                let response = conn.send_request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                responses.push((status, body));
            } // each `conn` goes back to the pool here
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(responses)
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await??);
    }
    Ok(all)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let uri: hyper::Uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080/".into())
        .parse()?;
    let requests: usize = args.next().map_or(Ok(64), |n| n.parse())?;
    let pool = Pool::new(Config::builder().max_connections_per_endpoint(8).build()?);
    let http = pool.protocol(Http1::<Body>::new());
    let responses = get_concurrently(&http, &uri, requests, 8).await?;
    let ok = responses.iter().filter(|(status, _)| *status < 400).count();
    let stats = http.stats(&endpoint_of(&uri)?);
    println!(
        "{ok} of {} requests succeeded over {} connections ({} reused)",
        responses.len(),
        stats.total_created,
        stats.total_reused
    );
    pool.close().await;
    Ok(())
}
