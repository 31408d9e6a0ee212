//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): an
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`. Ingest
//! verifies Polar's with it; the projector signs its own pushes with it, so
//! an app verifies those with the library it uses for Polar's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The v1 signature of one message under one key.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `webhook-signature` header value for one message: `v1,<base64>`.
pub fn signature_header(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(sign(key, id, timestamp, body)))
}

/// The key of a Standard Webhooks secret: the base64 after `whsec_`.
pub fn standard_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix("whsec_")?).ok()
}
