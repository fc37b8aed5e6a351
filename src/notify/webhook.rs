//! Webhooks: one JSON POST per notification (ureq over rustls), answered with a 2xx within the
//! timeout or retried later. When a secret is configured the body is signed, as GitHub signs
//! its hooks: `X-Kiln-Signature: sha256=<hex HMAC-SHA256 of the exact body>`.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-Kiln-Signature";
/// The same id on every attempt of one notification, so a receiver can drop repeats.
pub const DELIVERY_HEADER: &str = "X-Kiln-Delivery";
/// `success`, `failure`, `rollback` or `alert`.
pub const EVENT_HEADER: &str = "X-Kiln-Event";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },

    #[error("{url}: no answer within {}s", timeout.as_secs_f64())]
    Timeout { url: String, timeout: Duration },

    #[error("{url}: {message}")]
    Transport { url: String, message: String },
}

impl WebhookError {
    /// A 4xx answer other than 408 (timeout) and 429 (slow down) will not change by itself.
    pub fn is_permanent(&self) -> bool {
        matches!(self, WebhookError::Status { status, .. }
            if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// What to POST where.
pub struct Post<'a> {
    pub url: &'a str,
    /// Shown in errors instead of the URL, which may itself be a credential (Slack's are).
    pub shown_url: &'a str,
    pub body: &'a [u8],
    pub event: &'a str,
    pub delivery: &'a str,
    /// The HMAC key, when the body is to be signed.
    pub key: Option<&'a [u8]>,
    pub timeout: Duration,
}

/// `sha256=<hex>` of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs the body and waits for a 2xx; redirects are not followed (a POST must not turn into
/// a GET somewhere else).
pub fn post(request: &Post) -> Result<(), WebhookError> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(request.timeout))
        .max_redirects(0)
        .http_status_as_error(true)
        .build()
        .new_agent();
    let mut call = agent
        .post(request.url)
        .header("Content-Type", "application/json")
        .header("User-Agent", concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .header(EVENT_HEADER, request.event)
        .header(DELIVERY_HEADER, request.delivery);
    if let Some(key) = request.key {
        call = call.header(SIGNATURE_HEADER, &signature(key, request.body));
    }
    let url = request.shown_url.to_string();
    match call.send(request.body) {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(WebhookError::Status {
            url,
            status: response.status().as_u16(),
        }),
        Err(ureq::Error::StatusCode(status)) => Err(WebhookError::Status { url, status }),
        Err(ureq::Error::Timeout(_)) => Err(WebhookError::Timeout {
            url,
            timeout: request.timeout,
        }),
        Err(e) => Err(WebhookError::Transport {
            url,
            message: e.to_string(),
        }),
    }
}

/// A webhook URL as kiln shows it: scheme, host and port only. Chat services put their
/// credential in the path (`https://hooks.slack.com/services/T0/B0/XXXX`), and status output
/// and logs are read by more people than node.yml.
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    // A user:password@ part is a credential too.
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    if rest.len() > host.len() {
        format!("{scheme}://{host}/…")
    } else {
        format!("{scheme}://{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_are_shown_without_their_path_or_password() {
        let cases = [
            (
                "https://hooks.slack.com/services/T0/B0/XXXX",
                "https://hooks.slack.com/…",
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            (
                "https://u:pw@chat.example.com/h?x=1",
                "https://chat.example.com/…",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }

    #[test]
    fn only_lasting_client_errors_are_permanent() {
        let status = |status| WebhookError::Status {
            url: "u".into(),
            status,
        };
        assert!(status(404).is_permanent());
        assert!(status(401).is_permanent());
        assert!(!status(429).is_permanent());
        assert!(!status(408).is_permanent());
        assert!(!status(500).is_permanent());
        assert!(
            !WebhookError::Timeout {
                url: "u".into(),
                timeout: Duration::from_secs(1)
            }
            .is_permanent()
        );
    }
}
