//! Who hears about deploys and alerts, and how (docs/node-config.md, "Notifications"):
//! node.yml's `notify:` (the mail server, node-wide webhooks, which outcomes, retries, alert
//! thresholds) and project.yml's `notify:` (the project's recipients). Parsed as strictly as
//! the rest of both files; nothing here sends anything (that is `src/notify/`).

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};

use crate::config::duration;
use crate::config::recipe::{UnknownName, named_enum};

/// What a notification is about, as node.yml and project.yml `on:` name it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NotifyEvent {
    /// A deploy went live.
    Success,
    /// A deploy failed (rolled back, or its rollback failed too) or could not start.
    Failure,
    /// `kiln rollback` by an operator, whatever its outcome.
    Rollback,
    /// A process crash-looping, a web check failing, and their recovery.
    Alert,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 4] = [
        NotifyEvent::Success,
        NotifyEvent::Failure,
        NotifyEvent::Rollback,
        NotifyEvent::Alert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Success => "success",
            NotifyEvent::Failure => "failure",
            NotifyEvent::Rollback => "rollback",
            NotifyEvent::Alert => "alert",
        }
    }
}

named_enum!(NotifyEvent, "notification event");

/// How the connection to the mail server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain SMTP (a relay on the same host or network).
    #[default]
    None,
    /// Plain SMTP upgraded with STARTTLS, which must succeed (usually port 587 or 25).
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::None => "none",
            Security::Starttls => "starttls",
            Security::Tls => "tls",
        }
    }

    /// The port when node.yml gives none.
    pub fn default_port(self) -> u16 {
        match self {
            Security::Tls => 465,
            Security::None | Security::Starttls => 25,
        }
    }
}

/// node.yml `notify:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Notify {
    pub smtp: Option<Smtp>,
    /// Webhooks that get every project's notifications.
    pub webhooks: Vec<Webhook>,
    /// Which events notify, for projects whose project.yml does not say. Default: all.
    #[serde(deserialize_with = "events")]
    pub on: BTreeSet<NotifyEvent>,
    /// Also mail the author of the deployed commit. Default false.
    pub author: bool,
    /// One delivery attempt's limit (connecting, sending, the answer). Default 10s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Attempts the background delivery makes before it leaves a notification in the spool
    /// for `kiln notify retry` and the next deploy. Default 4.
    #[serde(deserialize_with = "attempts")]
    pub attempts: u32,
    /// The pause after the first failed attempt, doubled after each further one. Default 5s.
    #[serde(deserialize_with = "duration::deserialize")]
    pub backoff: Duration,
    pub alerts: Alerts,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            smtp: None,
            webhooks: Vec::new(),
            on: NotifyEvent::ALL.into_iter().collect(),
            author: false,
            timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_secs(5),
            alerts: Alerts::default(),
        }
    }
}

/// When the supervisor's reports become an alert, and when a "recovered" message follows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Alerts {
    /// A process restarted more than this many times within `within` is crash-looping.
    /// Default 3.
    #[serde(deserialize_with = "attempts")]
    pub restarts: u32,
    /// Default 5m.
    #[serde(deserialize_with = "duration::deserialize")]
    pub within: Duration,
    /// After an alert, a process up this long again has recovered. Default 1m.
    #[serde(deserialize_with = "duration::deserialize")]
    pub stable: Duration,
    /// How often the supervisor checks each running project's web processes (GET / on each
    /// web instance, or kiln.yml's `check.command`); one check may take this long at most.
    /// Default 15s.
    #[serde(deserialize_with = "check_every")]
    pub check_every: Duration,
    /// Failed checks in a row that make an alert (one passing check then recovers it).
    /// Default 3.
    #[serde(deserialize_with = "attempts")]
    pub check_failures: u32,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            restarts: 3,
            within: Duration::from_secs(5 * 60),
            stable: Duration::from_secs(60),
            check_every: Duration::from_secs(15),
            check_failures: 3,
        }
    }
}

/// A check interval: at least a second (a check is an HTTP request or a command).
fn check_every<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let value = duration::deserialize(deserializer)?;
    if value < Duration::from_secs(1) {
        return Err(de::Error::custom("must be at least 1s"));
    }
    Ok(value)
}

/// node.yml `notify.smtp`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SmtpFields")]
pub struct Smtp {
    pub host: String,
    /// node.yml's, else the security's default (465 for `tls`, else 25).
    pub port: u16,
    pub security: Security,
    /// The sender, `kiln@example.com` or `Kiln <kiln@example.com>`.
    pub from: String,
    /// Both or neither, and only over TLS.
    pub credentials: Option<Credentials>,
    /// A PEM file of certificates to trust besides the usual public roots: a private CA, or a
    /// server's self-signed certificate. Verification is never turned off.
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    /// The password stays out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// notify.smtp as written, before the checks that involve several keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SmtpFields {
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    security: Option<Security>,
    /// The older spelling of `security: starttls`, still accepted.
    #[serde(default)]
    starttls: Option<bool>,
    from: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

impl TryFrom<SmtpFields> for Smtp {
    type Error = String;

    fn try_from(fields: SmtpFields) -> Result<Smtp, String> {
        if fields.host.trim().is_empty() || fields.host.chars().any(char::is_whitespace) {
            return Err(format!("invalid mail server host `{}`", fields.host));
        }
        let security = match (fields.security, fields.starttls) {
            (Some(security), None) => security,
            (None, Some(true)) => Security::Starttls,
            (None, Some(false) | None) => Security::None,
            (Some(security), Some(starttls)) => {
                if starttls != (security == Security::Starttls) {
                    return Err(format!(
                        "`starttls: {starttls}` and `security: {}` disagree: keep `security` only",
                        security.as_str()
                    ));
                }
                security
            }
        };
        fields
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|_| {
                format!(
                    "invalid sender `{}`: expected e.g. `kiln@example.com` or `Kiln <kiln@example.com>`",
                    fields.from
                )
            })?;
        let credentials = match (fields.username, fields.password) {
            (None, None) => None,
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            _ => return Err("`username` and `password` go together: give both or neither".into()),
        };
        if credentials.is_some() && security == Security::None {
            return Err(
                "`username` and `password` would cross the network in clear text: set `security: starttls` or `security: tls`"
                    .into(),
            );
        }
        if let Some(ca) = fields.ca_file.as_ref().filter(|p| !p.is_absolute()) {
            return Err(format!(
                "`ca_file` must be an absolute path, got `{}`",
                ca.display()
            ));
        }
        Ok(Smtp {
            port: fields.port.unwrap_or_else(|| security.default_port()),
            host: fields.host,
            security,
            from: fields.from,
            credentials,
            ca_file: fields.ca_file,
        })
    }
}

/// A URL that gets a JSON POST per notification, signed when `secret` names a pillar value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Webhook {
    pub url: String,
    /// A dotted path into the project's merged settings (`secrets.webhook`): its value is the
    /// HMAC-SHA256 key of the `X-Kiln-Signature` header. Never the secret itself: node.yml and
    /// project.yml are not where secrets live.
    pub secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookFields {
    url: String,
    #[serde(default)]
    secret: Option<String>,
}

impl Webhook {
    fn checked(url: String, secret: Option<String>) -> Result<Webhook, String> {
        check_webhook_url(&url)?;
        if let Some(key) = &secret {
            check_secret_key(key)?;
        }
        Ok(Webhook { url, secret })
    }
}

/// `http://` or `https://` with a host, no whitespace.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let has_host = ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    });
    if !has_host || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid webhook `{url}`: expected an `http://` or `https://` URL"
        ));
    }
    Ok(())
}

/// `secrets.webhook`, `env.HOOK_KEY`: dot-separated keys of letters, digits, `_` and `-`.
fn check_secret_key(key: &str) -> Result<(), String> {
    let valid = key.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid secret `{key}`: expected the pillar key holding it, e.g. `secrets.webhook`, not the secret itself"
        ))
    }
}

impl<'de> Deserialize<'de> for Webhook {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WebhookVisitor;

        impl<'de> Visitor<'de> for WebhookVisitor {
            type Value = Webhook;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL, or `{url: ..., secret: <pillar key>}`")
            }

            fn visit_str<E: de::Error>(self, url: &str) -> Result<Webhook, E> {
                Webhook::checked(url.to_owned(), None).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Webhook, A::Error> {
                let fields = WebhookFields::deserialize(MapAccessDeserializer::new(map))?;
                Webhook::checked(fields.url, fields.secret).map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(WebhookVisitor)
    }
}

/// One entry of project.yml's `notify:`: a mail address or a webhook.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Recipient {
    Mail(String),
    Webhook(Webhook),
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecipientVisitor;

        impl<'de> Visitor<'de> for RecipientVisitor {
            type Value = Recipient;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mail address, a webhook URL, or `{url: ..., secret: <pillar key>}`")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Recipient, E> {
                if text.starts_with("http://") || text.starts_with("https://") {
                    return Webhook::checked(text.to_owned(), None)
                        .map(Recipient::Webhook)
                        .map_err(E::custom);
                }
                if text.chars().any(char::is_whitespace) || !text.contains('@') {
                    return Err(E::custom(format!(
                        "invalid recipient `{text}`: expected a mail address or an `http(s)://` URL"
                    )));
                }
                Ok(Recipient::Mail(text.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Recipient, A::Error> {
                let fields = WebhookFields::deserialize(MapAccessDeserializer::new(map))?;
                Webhook::checked(fields.url, fields.secret)
                    .map(Recipient::Webhook)
                    .map_err(de::Error::custom)
            }
        }

        deserializer.deserialize_any(RecipientVisitor)
    }
}

/// project.yml `notify:`: a list of recipients (the short form), or a mapping that also says
/// which events notify and whether the commit's author is mailed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectNotify {
    pub to: Vec<Recipient>,
    /// Overrides node.yml's `notify.on`.
    pub on: Option<BTreeSet<NotifyEvent>>,
    /// Overrides node.yml's `notify.author`.
    pub author: Option<bool>,
}

impl ProjectNotify {
    pub fn is_empty(&self) -> bool {
        *self == ProjectNotify::default()
    }

    /// The mail addresses among the recipients.
    pub fn mail(&self) -> impl Iterator<Item = &str> {
        self.to.iter().filter_map(|r| match r {
            Recipient::Mail(address) => Some(address.as_str()),
            Recipient::Webhook(_) => None,
        })
    }

    /// The webhooks among the recipients.
    pub fn webhooks(&self) -> impl Iterator<Item = &Webhook> {
        self.to.iter().filter_map(|r| match r {
            Recipient::Webhook(hook) => Some(hook),
            Recipient::Mail(_) => None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectNotifyFields {
    #[serde(default)]
    to: Vec<Recipient>,
    #[serde(default, deserialize_with = "optional_events")]
    on: Option<BTreeSet<NotifyEvent>>,
    #[serde(default)]
    author: Option<bool>,
}

impl<'de> Deserialize<'de> for ProjectNotify {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NotifyVisitor;

        impl<'de> Visitor<'de> for NotifyVisitor {
            type Value = ProjectNotify;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of recipients, or a mapping with `to`, `on` and `author`")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ProjectNotify, E> {
                Err(E::custom(format!(
                    "expected a list of recipients, e.g. `notify: [{text}]`, or a mapping with `to`, `on` and `author`"
                )))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProjectNotify, A::Error> {
                let mut to = Vec::new();
                while let Some(recipient) = seq.next_element()? {
                    to.push(recipient);
                }
                Ok(ProjectNotify {
                    to,
                    ..ProjectNotify::default()
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ProjectNotify, A::Error> {
                let fields = ProjectNotifyFields::deserialize(MapAccessDeserializer::new(map))?;
                Ok(ProjectNotify {
                    to: fields.to,
                    on: fields.on,
                    author: fields.author,
                })
            }
        }

        deserializer.deserialize_any(NotifyVisitor)
    }
}

fn events<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeSet<NotifyEvent>, D::Error> {
    let list = Vec::<NotifyEvent>::deserialize(deserializer)?;
    Ok(list.into_iter().collect())
}

fn optional_events<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeSet<NotifyEvent>>, D::Error> {
    events(deserializer).map(Some)
}

fn attempts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if value == 0 {
        return Err(de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names() {
        for event in NotifyEvent::ALL {
            assert_eq!(event.as_str().parse::<NotifyEvent>(), Ok(event));
        }
        assert!("deploy".parse::<NotifyEvent>().is_err());
    }

    #[test]
    fn security_ports() {
        assert_eq!(Security::None.default_port(), 25);
        assert_eq!(Security::Starttls.default_port(), 25);
        assert_eq!(Security::Tls.default_port(), 465);
    }

    #[test]
    fn secret_keys_name_a_pillar_value() {
        assert!(check_secret_key("secrets.webhook").is_ok());
        assert!(check_secret_key("env.HOOK_KEY").is_ok());
        assert!(check_secret_key("hook-key").is_ok());
        for bad in ["", "a..b", ".a", "s3cr3t!", "two words"] {
            assert!(check_secret_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_never_show_their_password() {
        let credentials = Credentials {
            username: "kiln".into(),
            password: "hunter22".into(),
        };
        assert!(!format!("{credentials:?}").contains("hunter22"));
    }
}
