//! Mail through the SMTP server node.yml names (`notify.smtp`), with lettre over rustls: plain,
//! STARTTLS or TLS from the first byte, optional credentials, and extra trusted certificates
//! from `ca_file` for a private CA or a self-signed server. Certificates are always verified.

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message as Mail};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{SmtpTransport, Transport};

use crate::config::notify_config::{Security, Smtp};
use crate::notify::message::Message;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid mail address `{address}`")]
    Address { address: String },

    #[error("could not read node.yml's `ca_file` `{}`: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("node.yml's `ca_file` `{}` holds no PEM certificate", path.display())]
    CaPem { path: PathBuf },

    #[error("could not set up TLS to `{server}`: {source}")]
    Tls {
        server: String,
        source: lettre::transport::smtp::Error,
    },

    #[error("could not build the mail: {source}")]
    Build { source: lettre::error::Error },

    #[error(
        "{server} did not take the mail for `{to}`: {}",
        crate::error::chain(source)
    )]
    Send {
        server: String,
        to: String,
        source: lettre::transport::smtp::Error,
    },
}

impl MailError {
    /// Whether trying again later cannot help: the server refused for good (a 5xx answer),
    /// or the address or settings are wrong until an operator changes them.
    pub fn is_permanent(&self) -> bool {
        match self {
            MailError::Send { source, .. } => source.is_permanent(),
            MailError::Tls { .. } => false,
            _ => true,
        }
    }
}

/// Sends `message` to `to` (one address) and waits for the server's answer, at most
/// `timeout` per step.
pub fn send(smtp: &Smtp, timeout: Duration, to: &str, message: &Message) -> Result<(), MailError> {
    let address = |text: &str| {
        text.parse::<Mailbox>().map_err(|_| MailError::Address {
            address: text.to_string(),
        })
    };
    let mail = Mail::builder()
        .from(address(&smtp.from)?)
        .to(address(to)?)
        .subject(message.subject())
        .header(ContentType::TEXT_PLAIN)
        .body(message.mail_body())
        .map_err(|source| MailError::Build { source })?;
    let server = format!("{}:{}", smtp.host, smtp.port);
    let transport = transport(smtp, timeout)?;
    transport
        .send(&mail)
        .map(|_| ())
        .map_err(|source| MailError::Send {
            server,
            to: to.to_string(),
            source,
        })
}

fn transport(smtp: &Smtp, timeout: Duration) -> Result<SmtpTransport, MailError> {
    let server = format!("{}:{}", smtp.host, smtp.port);
    // "Dangerous" only in that lettre does not pick TLS itself: node.yml's `security` does,
    // and STARTTLS is then required, never opportunistic.
    let mut builder = SmtpTransport::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .timeout(Some(timeout));
    if smtp.security != Security::None {
        let mut params = TlsParameters::builder(smtp.host.clone());
        if let Some(path) = &smtp.ca_file {
            let pem = std::fs::read(path).map_err(|source| MailError::CaFile {
                path: path.clone(),
                source,
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(MailError::CaPem { path: path.clone() });
            }
            let certificate =
                Certificate::from_pem(&pem).map_err(|_| MailError::CaPem { path: path.clone() })?;
            params = params.add_root_certificate(certificate);
        }
        let params = params.build_rustls().map_err(|source| MailError::Tls {
            server: server.clone(),
            source,
        })?;
        builder = builder.tls(match smtp.security {
            Security::Tls => Tls::Wrapper(params),
            _ => Tls::Required(params),
        });
    }
    if let Some(credentials) = &smtp.credentials {
        builder = builder.credentials(Credentials::new(
            credentials.username.clone(),
            credentials.password.clone(),
        ));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(port: u16) -> Smtp {
        Smtp {
            host: "127.0.0.1".into(),
            port,
            security: Security::None,
            from: "kiln@example.com".into(),
            credentials: None,
            ca_file: None,
        }
    }

    #[test]
    fn a_refused_connection_is_worth_retrying_and_a_bad_address_is_not() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let message = crate::notify::message::example();
        let refused = send(
            &smtp(port),
            Duration::from_secs(2),
            "ops@example.com",
            &message,
        )
        .expect_err("nothing listens there");
        assert!(!refused.is_permanent(), "{refused}");
        assert!(
            refused.to_string().starts_with(&format!(
                "127.0.0.1:{port} did not take the mail for `ops@example.com`: "
            )),
            "{refused}"
        );
        let bad = send(
            &smtp(port),
            Duration::from_secs(2),
            "not an address",
            &message,
        )
        .expect_err("not an address");
        assert!(bad.is_permanent());
        assert_eq!(bad.to_string(), "invalid mail address `not an address`");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let mut settings = smtp(25);
        settings.security = Security::Starttls;
        settings.ca_file = Some(path.clone());
        let error = send(
            &settings,
            Duration::from_secs(1),
            "ops@example.com",
            &crate::notify::message::example(),
        )
        .expect_err("no certificate");
        assert_eq!(
            error.to_string(),
            format!(
                "node.yml's `ca_file` `{}` holds no PEM certificate",
                path.display()
            )
        );
    }
}
