//! The TLS settings of a config and the rustls client config built from
//! them.
//!
//! This module owns what [`ConfigBuilder`](crate::ConfigBuilder)'s TLS
//! setters describe: which trust store verifies servers ([`TlsRoots`]),
//! extra root certificates and a client certificate read from PEM files,
//! ALPN protocols, the session cache, and turning verification off. It
//! checks them at [`build`](crate::ConfigBuilder::build), reads the files
//! there, and builds one `rustls::ClientConfig` for the pool: every
//! connection the pool makes shares it, and so shares its session cache,
//! which is what lets a second connection to a host resume the first one's
//! session instead of running a full handshake. A config whose TLS
//! settings are all at their defaults uses one process-wide rustls config
//! ([`default_tls_config`](super::default_tls_config)), so that the webpki
//! root store is built once. PEM is read with rustls's own
//! `pki_types::pem`; rustls-pemfile, the usual crate for it, is no longer
//! maintained and points there.

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{Config, default_tls_config, tls_config_builder, webpki_root_store};
use crate::Error;

/// Sessions the rustls session cache keeps by default, as rustls itself
/// does (`Resumption::default()`).
pub const DEFAULT_TLS_SESSION_CACHE_SIZE: usize = 256;

/// The most sessions a config may ask rustls to keep: rustls sets aside
/// room for the whole cache when it is made, so a size near `usize::MAX`
/// would abort the process, and this many take a few megabytes.
pub const MAX_TLS_SESSION_CACHE_SIZE: usize = 100_000;

/// Which trust store verifies TLS servers' certificates, besides any
/// [`tls_ca_file`](crate::ConfigBuilder::tls_ca_file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[non_exhaustive]
pub enum TlsRoots {
    /// The Mozilla root certificates compiled into the program (the
    /// `webpki-roots` crate): the same everywhere, and updated only with
    /// the program.
    #[default]
    Webpki,
    /// The operating system's trust store and verifier, through
    /// `rustls-platform-verifier` (cargo feature `platform-verifier`): on
    /// Linux the system's certificates (as `rustls-native-certs` finds
    /// them), on macOS, iOS and Windows the OS's own verifier, with its
    /// revocation checks and the certificates an administrator added.
    Platform,
    /// No store: only the certificates of `tls_ca_file`, which must then be
    /// set.
    None,
}

/// The rustls config `config`'s TLS settings describe: the user's own
/// `tls_config` when that is all there is, the process-wide default when
/// nothing is set, else one built here. A setting that breaks a rule, or a
/// file that cannot be used, is [`Error::InvalidConfig`] naming the field.
pub(super) fn client_config(config: &Config) -> Result<Arc<rustls::ClientConfig>, Error> {
    check_alpn(&config.tls_alpn_protocols)?;
    if config.tls_session_cache_size > MAX_TLS_SESSION_CACHE_SIZE {
        return Err(invalid(
            "tls_session_cache_size",
            format!(
                "is {}; it must be at most {MAX_TLS_SESSION_CACHE_SIZE} sessions (0 turns resumption off)",
                config.tls_session_cache_size
            ),
        ));
    }
    let Config {
        tls_roots,
        tls_ca_file,
        tls_client_cert,
        tls_client_key,
        tls_alpn_protocols,
        tls_session_cache_size,
        tls_insecure_skip_verify,
        ..
    } = config;
    let set = [
        ("tls_roots", *tls_roots != TlsRoots::default()),
        ("tls_ca_file", tls_ca_file.is_some()),
        ("tls_client_cert", tls_client_cert.is_some()),
        ("tls_client_key", tls_client_key.is_some()),
        ("tls_alpn_protocols", !tls_alpn_protocols.is_empty()),
        (
            "tls_session_cache_size",
            *tls_session_cache_size != DEFAULT_TLS_SESSION_CACHE_SIZE,
        ),
        ("tls_insecure_skip_verify", *tls_insecure_skip_verify),
    ];
    let first_set = set
        .iter()
        .find(|(_, is_set)| *is_set)
        .map(|(name, _)| *name);
    match (&config.custom_tls_config, first_set) {
        (Some(custom), None) => return Ok(custom.clone()),
        (None, None) => return Ok(default_tls_config()),
        (Some(_), Some(field)) => {
            return Err(invalid(
                field,
                "is set along with tls_config; a hand-built rustls config carries its own \
                 TLS settings, so set this one on it instead"
                    .into(),
            ));
        }
        (None, Some(_)) => {}
    }

    let builder = tls_config_builder();
    let builder = if *tls_insecure_skip_verify {
        if let Some(path) = tls_ca_file {
            return Err(invalid(
                "tls_ca_file",
                format!(
                    "is {}, but tls_insecure_skip_verify is true: no certificate is verified, \
                     against these roots or any",
                    path.display()
                ),
            ));
        }
        if *tls_roots != TlsRoots::default() {
            return Err(invalid(
                "tls_roots",
                format!(
                    "is {tls_roots:?}, but tls_insecure_skip_verify is true: no certificate is \
                     verified, against these roots or any"
                ),
            ));
        }
        let verifier = SkipVerification {
            algorithms: builder.crypto_provider().signature_verification_algorithms,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    } else {
        let extra = match tls_ca_file {
            Some(path) => read_certs("tls_ca_file", path)?,
            None => Vec::new(),
        };
        match tls_roots {
            TlsRoots::Webpki | TlsRoots::None => {
                let mut roots = if *tls_roots == TlsRoots::Webpki {
                    webpki_root_store()
                } else if tls_ca_file.is_none() {
                    return Err(invalid(
                        "tls_roots",
                        "is None, but no tls_ca_file is set: no server certificate could verify"
                            .into(),
                    ));
                } else {
                    rustls::RootCertStore::empty()
                };
                for cert in extra {
                    roots.add(cert).map_err(|e| {
                        invalid(
                            "tls_ca_file",
                            format!(
                                "is {}, which holds a certificate that cannot be a root: {e}",
                                tls_ca_file.as_deref().unwrap_or(Path::new("")).display()
                            ),
                        )
                    })?;
                }
                builder.with_root_certificates(roots)
            }
            TlsRoots::Platform => {
                let verifier = platform_verifier(extra, builder.crypto_provider().clone())?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
            }
        }
    };

    let mut tls = match (tls_client_cert, tls_client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("tls_client_cert", cert)?;
            let key_der = read_key("tls_client_key", key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                invalid(
                    "tls_client_key",
                    format!(
                        "is {}, which is not the key of tls_client_cert {}: {e}",
                        key.display(),
                        cert.display()
                    ),
                )
            })?
        }
        (Some(cert), None) => {
            return Err(invalid(
                "tls_client_cert",
                format!(
                    "is {}, but tls_client_key is not set; a client certificate needs its key",
                    cert.display()
                ),
            ));
        }
        (None, Some(key)) => {
            return Err(invalid(
                "tls_client_key",
                format!(
                    "is {}, but tls_client_cert is not set; a key needs its certificate",
                    key.display()
                ),
            ));
        }
        (None, None) => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = tls_alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    tls.resumption = match *tls_session_cache_size {
        0 => Resumption::disabled(),
        sessions => Resumption::in_memory_sessions(sessions),
    };
    Ok(Arc::new(tls))
}

fn invalid(field: &'static str, reason: String) -> Error {
    Error::InvalidConfig { field, reason }
}

/// ALPN protocol ids are 1 to 255 bytes (RFC 7301, section 3.1).
fn check_alpn(protocols: &[String]) -> Result<(), Error> {
    for (i, protocol) in protocols.iter().enumerate() {
        if protocol.is_empty() || protocol.len() > 255 {
            return Err(invalid(
                "tls_alpn_protocols",
                format!(
                    "is {protocols:?}; entry {} is {} bytes long, and each protocol must be 1 to 255 bytes",
                    i + 1,
                    protocol.len()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(feature = "platform-verifier")]
fn platform_verifier(
    extra: Vec<CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider)
        .map(|verifier| Arc::new(verifier) as Arc<dyn ServerCertVerifier>)
        .map_err(|e| {
            invalid(
                "tls_roots",
                format!("is Platform, but the operating system's verifier cannot start: {e}"),
            )
        })
}

#[cfg(not(feature = "platform-verifier"))]
fn platform_verifier(
    _extra: Vec<CertificateDer<'static>>,
    _provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, Error> {
    Err(invalid(
        "tls_roots",
        "is Platform, but conpool was built without its platform-verifier feature".into(),
    ))
}

/// Every certificate in the PEM file `path` that `field` names.
fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_file(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                field,
                format!("is {}, which is not valid PEM: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            field,
            format!(
                "is {}, which holds no certificate (no -----BEGIN CERTIFICATE----- block)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The first private key in the PEM file `path` that `field` names.
fn read_key(field: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read_file(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (no PKCS#8, RSA or EC PRIVATE KEY block)".to_owned()
            }
            e => format!("is not valid PEM: {e}"),
        };
        invalid(field, format!("is {}, which {why}", path.display()))
    })
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        invalid(
            field,
            format!("is {}, which cannot be read: {e}", path.display()),
        )
    })
}

/// The verifier of `tls_insecure_skip_verify`: takes any certificate,
/// saying so each time, and still checks that the server holds the key of
/// the one it sent, as rustls requires of a verifier.
#[derive(Debug)]
struct SkipVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SkipVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        tracing::warn!(
            server = %server_name.to_str(),
            "accepted a TLS server certificate without verifying it (tls_insecure_skip_verify)"
        );
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
