//! TLS for outgoing HTTPS (Polar's API): rustls on the `ring` provider,
//! which sqlx's rustls already links. reqwest is built without a provider of
//! its own (aws-lc-rs would be a second crypto library and a C build), so one
//! must be installed in the process before any reqwest client is built,
//! tests' clients included: reqwest panics otherwise.

/// Makes `ring` the process's rustls provider. Idempotent; call it before
/// building an HTTP client.
pub fn use_ring_provider() {
    // Refused (harmlessly) when a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
