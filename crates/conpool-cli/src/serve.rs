//! `conpool serve`: the embedded echo server on its own, over TCP and TLS
//! (a self-signed certificate made at start), with options to close idle
//! connections and to reset some, for trying a pool against a misbehaving
//! server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conpool::cli::parse_duration;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::Exit;
use crate::echo::{self, Behaviour};

/// The names the self-signed certificate is valid for.
const CERT_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// The options of `conpool serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Serve echo over TCP on this address, such as 127.0.0.1:7000 (port 0:
    /// one the system picks) [default: 127.0.0.1:0 when --tls is not given]
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,

    /// Serve echo over TLS on this address, with a self-signed certificate
    /// for localhost and 127.0.0.1 made at start
    #[arg(long, value_name = "ADDR")]
    tls: Option<SocketAddr>,

    /// Write the self-signed certificate (PEM) to this file, for a client's
    /// --tls-ca-file
    #[arg(long, value_name = "PATH", requires = "tls")]
    cert_out: Option<PathBuf>,

    /// Close a connection after this long without a byte from the client
    /// (FIN; over TLS, close_notify first), such as 300ms or 1m; above 0
    /// [default: never]
    #[arg(long, value_name = "DURATION", value_parser = idle_time)]
    idle_close: Option<Duration>,

    /// Reset (RST, by SO_LINGER 0) this share of connections at their first
    /// request instead of answering it, spread evenly over the connections:
    /// from 0 to 1
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = fraction)]
    reset_fraction: f64,
}

fn idle_time(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("it must be above zero, such as 300ms, 10s or 1m".to_owned());
    }
    Ok(duration)
}

fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("it must be a number from 0 to 1, such as 0.1".to_owned()),
    }
}

/// Listens as told, prints one line per listener (the TLS one with its
/// certificate's SHA-256 fingerprint) and serves until interrupted.
pub async fn run(args: ServeArgs) -> Result<(), Exit> {
    let behaviour = Behaviour {
        tls: None,
        idle_close: args.idle_close,
        reset_fraction: args.reset_fraction,
    };
    let tcp = match (args.tcp, args.tls) {
        (None, None) => Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        (tcp, _) => tcp,
    };
    let mut lines = Vec::new();
    if let Some(addr) = tcp {
        let listener = listen(addr).await?;
        lines.push(format!("echo server on tcp://{}", local_addr(&listener)?));
        tokio::spawn(echo::serve(listener, behaviour.clone()));
    }
    if let Some(addr) = args.tls {
        let listener = listen(addr).await?;
        let (acceptor, cert) = self_signed()?;
        if let Some(path) = &args.cert_out {
            std::fs::write(path, &cert.pem)
                .map_err(|e| format!("cannot write the certificate to {}: {e}", path.display()))?;
        }
        lines.push(format!(
            "echo server on tls://{} (self-signed for {}; SHA-256 fingerprint {})",
            local_addr(&listener)?,
            CERT_NAMES.join(", "),
            fingerprint(&cert.der)
        ));
        let behaviour = Behaviour {
            tls: Some(acceptor),
            ..behaviour
        };
        tokio::spawn(echo::serve(listener, behaviour));
    }
    let mut stdout = std::io::stdout();
    for line in lines {
        // Flushed at once: a program that started this one reads the
        // address from it.
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for an interrupt: {e}"))?;
    Ok(())
}

async fn listen(addr: SocketAddr) -> Result<TcpListener, Exit> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Exit::Failure(format!("cannot listen on {addr}: {e}")))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, Exit> {
    listener
        .local_addr()
        .map_err(|e| Exit::Failure(format!("the listener has no address: {e}")))
}

/// A certificate made now, for [`CERT_NAMES`].
struct SelfSigned {
    der: CertificateDer<'static>,
    pem: String,
}

/// A TLS acceptor with a certificate made now, and the certificate.
fn self_signed() -> Result<(TlsAcceptor, SelfSigned), Exit> {
    let names = CERT_NAMES.map(str::to_owned).to_vec();
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|builder| {
        builder
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
    })
    .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let cert = SelfSigned {
        der: cert,
        pem: certified.cert.pem(),
    };
    Ok((TlsAcceptor::from(Arc::new(config)), cert))
}

/// A certificate's SHA-256 fingerprint, as `AB:CD:...`.
pub fn fingerprint(cert: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
