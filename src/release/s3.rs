//! An S3-compatible object store (AWS S3, MinIO, Ceph RGW) as a shared release store between
//! one staging node and many production nodes: `s3://<bucket>/<prefix>` holds the same files
//! as staging's releases/ dir (`<release>.tar.zst`, `.json`, `.json.sig` and `index.json`), so
//! production pulls from it exactly as from a static HTTP server, with the same checks
//! ([`crate::release::fetch`]). Requests are signed by rusty-s3, which only builds presigned
//! URLs (no I/O, no SDK), and sent with the ureq client kiln already uses.
//!
//! Where the store is and who kiln is there come from node.yml's `s3:` (the operators'
//! choice), else the node's environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), never from a push.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusty_s3::actions::{GetObject, HeadObject, PutObject};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::config::node_config::S3Config;

pub const SCHEME: &str = "s3://";
/// How long a presigned request stays valid: long enough to start a slow upload.
const PRESIGNED_FOR: Duration = Duration::from_secs(3600);
/// The part of an error answer kept to name the S3 error code.
const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// `s3://<bucket>/<prefix>`: a bucket and a key prefix (maybe empty) without slashes at
/// either end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    pub prefix: String,
}

impl Location {
    /// Parses `s3://bucket[/prefix]`; the error is the reason, for the caller's message.
    pub fn parse(url: &str) -> Result<Location, String> {
        let rest = url
            .strip_prefix(SCHEME)
            .ok_or_else(|| "an S3 store is `s3://<bucket>/<prefix>`".to_string())?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's rules for bucket names (3 to 63 lowercase letters, digits, `.` and `-`,
        // starting and ending with a letter or digit): anything else is a typo.
        let edge_ok =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !(3..=63).contains(&bucket.len())
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c))
            || !edge_ok(bucket.chars().next())
            || !edge_ok(bucket.chars().last())
        {
            return Err(format!(
                "`{bucket}` is not an S3 bucket name (3 to 63 lowercase letters, digits, `.` or `-`)"
            ));
        }
        let prefix = prefix.trim_matches('/');
        let plain_chars = prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
        let plain_parts = prefix.is_empty()
            || prefix
                .split('/')
                .all(|part| !matches!(part, "" | "." | ".."));
        if !(plain_chars && plain_parts) {
            return Err(format!(
                "the prefix `{prefix}` may only hold letters, digits and `._-/`, without empty, `.` or `..` parts"
            ));
        }
        Ok(Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The object key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("S3 settings: {reason}")]
    Settings { reason: String },
    #[error(
        "could not read the S3 secret key from `{}` (node.yml `s3.secret_key_file`): {source}",
        path.display()
    )]
    SecretKey { path: PathBuf, source: io::Error },
    #[error("S3 {method} `{url}` answered {status}{}", detail(code, message))]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("could not reach the S3 store for {method} `{url}`: {reason}")]
    Transport {
        method: &'static str,
        url: String,
        reason: String,
    },
    #[error("`{url}` is larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn detail(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(code), Some(message)) => format!(" {code}: {message}"),
        (Some(code), None) => format!(" {code}"),
        (None, _) => String::new(),
    }
}

/// Where requests go and how they are signed, resolved once per command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub endpoint: String,
    pub region: String,
    pub path_style: bool,
    /// None: requests are not signed (a public bucket, read only).
    pub credentials: Option<(String, String, Option<String>)>,
}

impl Settings {
    /// node.yml's `s3:` first, then the environment (`env` reads a variable); then the
    /// defaults: region `us-east-1`, AWS's endpoint for the region, path-style URLs when an
    /// endpoint is given (MinIO, Ceph RGW and most others need them; AWS does not).
    pub fn resolve(
        config: &S3Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, S3Error> {
        let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let region = config
            .region
            .clone()
            .or_else(|| env_nonempty("AWS_REGION"))
            .or_else(|| env_nonempty("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env_nonempty("AWS_ENDPOINT_URL"));
        let path_style = config.path_style.unwrap_or(endpoint.is_some());
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(S3Error::Settings {
                reason: format!("the endpoint `{endpoint}` is not an http(s):// URL"),
            });
        }
        let (key, from_env) = match &config.access_key {
            Some(key) => (Some(key.clone()), false),
            None => (env_nonempty("AWS_ACCESS_KEY_ID"), true),
        };
        let secret = match &config.secret_key_file {
            Some(path) => Some(read_secret(path)?),
            None => env_nonempty("AWS_SECRET_ACCESS_KEY"),
        };
        let credentials = match (key, secret) {
            (Some(key), Some(secret)) => {
                let token = from_env
                    .then(|| env_nonempty("AWS_SESSION_TOKEN"))
                    .flatten();
                Some((key, secret, token))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(S3Error::Settings {
                    reason: "an access key is set but no secret key: set node.yml `s3.secret_key_file` or AWS_SECRET_ACCESS_KEY".into(),
                });
            }
            (None, Some(_)) => {
                return Err(S3Error::Settings {
                    reason: "a secret key is set but no access key: set node.yml `s3.access_key` or AWS_ACCESS_KEY_ID".into(),
                });
            }
        };
        Ok(Settings {
            endpoint,
            region,
            path_style,
            credentials,
        })
    }
}

fn read_secret(path: &Path) -> Result<String, S3Error> {
    let text = std::fs::read_to_string(path).map_err(|source| S3Error::SecretKey {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim().to_string())
}

/// One store: a location and the settings to reach it.
#[derive(Debug)]
pub struct Store {
    pub location: Location,
    bucket: Bucket,
    credentials: Option<Credentials>,
}

impl Store {
    /// The store at `location`, with node.yml's `s3:` settings and the process environment.
    pub fn open(location: Location, config: &S3Config) -> Result<Store, S3Error> {
        let settings = Settings::resolve(config, &|name| std::env::var(name).ok())?;
        Store::with_settings(location, &settings)
    }

    pub fn with_settings(location: Location, settings: &Settings) -> Result<Store, S3Error> {
        let bad = |reason: String| S3Error::Settings { reason };
        let endpoint = settings.endpoint.parse().map_err(|e| {
            bad(format!(
                "the endpoint `{}` is not a URL: {e}",
                settings.endpoint
            ))
        })?;
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            location.bucket.clone(),
            settings.region.clone(),
        )
        .map_err(|e| {
            bad(format!(
                "cannot address bucket `{}` at `{}` ({e:?}); an IP address as endpoint needs path-style URLs (node.yml `s3.path_style: true`)",
                location.bucket, settings.endpoint
            ))
        })?;
        let credentials = settings
            .credentials
            .as_ref()
            .map(|(key, secret, token)| match token {
                Some(token) => Credentials::new_with_token(key, secret, token),
                None => Credentials::new(key, secret),
            });
        Ok(Store {
            location,
            bucket,
            credentials,
        })
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.location)
    }

    /// Copies the object `name` into `out`, at most `limit` bytes. Ok(None): there is no such
    /// object (a missing bucket is an error, not an absent object).
    pub fn get(&self, name: &str, out: &mut dyn Write, limit: u64) -> Result<Option<u64>, S3Error> {
        let key = self.location.key(name);
        let signed =
            GetObject::new(&self.bucket, self.credentials.as_ref(), &key).sign(PRESIGNED_FOR);
        let url = self.url(name);
        let response = match self.send("GET", &url, agent().get(signed.as_str()).call()) {
            Ok(response) => response,
            Err(S3Error::Status {
                status: 404, code, ..
            }) if code.as_deref() != Some("NoSuchBucket") => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut reader = response
            .into_body()
            .into_reader()
            .take(limit.saturating_add(1));
        let copied = io::copy(&mut reader, out).map_err(|e| S3Error::Transport {
            method: "GET",
            url: url.clone(),
            reason: e.to_string(),
        })?;
        if copied > limit {
            return Err(S3Error::TooLarge { url, limit });
        }
        Ok(Some(copied))
    }

    /// The size of the object `name`, or None when there is none.
    pub fn head(&self, name: &str) -> Result<Option<u64>, S3Error> {
        let key = self.location.key(name);
        let signed =
            HeadObject::new(&self.bucket, self.credentials.as_ref(), &key).sign(PRESIGNED_FOR);
        let url = self.url(name);
        match self.send("HEAD", &url, agent().head(signed.as_str()).call()) {
            Ok(response) => Ok(response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            // A HEAD answer has no body to name the error: a 404 is a missing object.
            Err(S3Error::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads the file at `path` as `name` (one PUT: up to 5 GiB, S3's limit for it).
    pub fn put_file(&self, name: &str, path: &Path) -> Result<(), S3Error> {
        let file = File::open(path).map_err(|source| S3Error::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
        let key = self.location.key(name);
        let signed =
            PutObject::new(&self.bucket, self.credentials.as_ref(), &key).sign(PRESIGNED_FOR);
        let url = self.url(name);
        let sent = agent()
            .put(signed.as_str())
            .header("content-type", "application/octet-stream")
            .send(file);
        self.send("PUT", &url, sent).map(|_| ())
    }

    pub fn put_bytes(&self, name: &str, bytes: &[u8], content_type: &str) -> Result<(), S3Error> {
        let key = self.location.key(name);
        let signed =
            PutObject::new(&self.bucket, self.credentials.as_ref(), &key).sign(PRESIGNED_FOR);
        let url = self.url(name);
        let sent = agent()
            .put(signed.as_str())
            .header("content-type", content_type)
            .send(bytes);
        self.send("PUT", &url, sent).map(|_| ())
    }

    /// A response, or the S3 error it carries (its code and message read from the XML body).
    fn send(
        &self,
        method: &'static str,
        url: &str,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, S3Error> {
        let response = sent.map_err(|e| S3Error::Transport {
            method,
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let mut body = String::new();
        let _ = response
            .into_body()
            .into_reader()
            .take(ERROR_BODY_LIMIT)
            .read_to_string(&mut body);
        Err(S3Error::Status {
            method,
            url: url.to_string(),
            status,
            code: xml_text(&body, "Code"),
            message: xml_text(&body, "Message"),
        })
    }
}

/// The text of the first `<tag>` in an S3 error document (flat, no attributes: enough for
/// `<Code>` and `<Message>`).
fn xml_text(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    let text = body[start..end].trim();
    (!text.is_empty()).then(|| text.chars().take(300).collect())
}

/// Errors come back as responses, so their XML body can name the S3 error.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let cases = [
            ("s3://releases", "releases", ""),
            ("s3://releases/", "releases", ""),
            ("s3://my.bucket-1/shop", "my.bucket-1", "shop"),
            ("s3://b12/fleet/shop/", "b12", "fleet/shop"),
        ];
        for (url, bucket, prefix) in cases {
            let location = Location::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                (location.bucket.as_str(), location.prefix.as_str()),
                (bucket, prefix)
            );
            assert_eq!(location.to_string(), url.trim_end_matches('/'));
        }
        let location = Location::parse("s3://b12/fleet/shop").unwrap();
        assert_eq!(location.key("index.json"), "fleet/shop/index.json");
        assert_eq!(
            Location::parse("s3://b12").unwrap().key("index.json"),
            "index.json"
        );
    }

    #[test]
    fn refuses_bad_locations() {
        let cases = [
            ("http://x/y", "is `s3://<bucket>/<prefix>`"),
            ("s3://", "is not an S3 bucket name"),
            ("s3://ab", "is not an S3 bucket name"),
            ("s3://Upper/x", "is not an S3 bucket name"),
            ("s3://-bucket/x", "is not an S3 bucket name"),
            ("s3://bucket/a b", "may only hold"),
            ("s3://bucket/a/../b", "without empty"),
            ("s3://bucket/a//b", "without empty"),
        ];
        for (url, expected) in cases {
            let error = Location::parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn node_yml_wins_over_the_environment_which_wins_over_the_defaults() {
        let none = S3Config::default();
        let settings = Settings::resolve(&none, &env(&[])).unwrap();
        assert_eq!(
            settings,
            Settings {
                endpoint: "https://s3.us-east-1.amazonaws.com".into(),
                region: "us-east-1".into(),
                path_style: false,
                credentials: None,
            }
        );
        let vars = [
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "AKENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_SESSION_TOKEN", "tok"),
        ];
        let settings = Settings::resolve(&none, &env(&vars)).unwrap();
        assert_eq!(settings.region, "eu-west-3");
        assert_eq!(settings.endpoint, "http://127.0.0.1:9000");
        assert!(
            settings.path_style,
            "a custom endpoint uses path-style URLs"
        );
        assert_eq!(
            settings.credentials,
            Some(("AKENV".into(), "envsecret".into(), Some("tok".into())))
        );

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "filesecret\n").unwrap();
        let config = S3Config {
            endpoint: Some("https://minio.internal:9000".into()),
            region: Some("minio".into()),
            path_style: Some(false),
            access_key: Some("AKNODE".into()),
            secret_key_file: Some(secret),
        };
        let settings = Settings::resolve(&config, &env(&vars)).unwrap();
        assert_eq!(
            settings,
            Settings {
                endpoint: "https://minio.internal:9000".into(),
                region: "minio".into(),
                path_style: false,
                // The token belongs to the environment's key, not node.yml's.
                credentials: Some(("AKNODE".into(), "filesecret".into(), None)),
            }
        );
    }

    #[test]
    fn half_credentials_and_bad_endpoints_are_refused() {
        let only_key = S3Config {
            access_key: Some("AK".into()),
            ..S3Config::default()
        };
        let error = Settings::resolve(&only_key, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("no secret key"), "{error}");
        let error = Settings::resolve(
            &S3Config::default(),
            &env(&[("AWS_SECRET_ACCESS_KEY", "s")]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("no access key"), "{error}");
        let missing = S3Config {
            access_key: Some("AK".into()),
            secret_key_file: Some("/nonexistent/secret".into()),
            ..S3Config::default()
        };
        let error = Settings::resolve(&missing, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("`/nonexistent/secret`"), "{error}");
        let error = Settings::resolve(
            &S3Config::default(),
            &env(&[("AWS_ENDPOINT_URL", "ftp://x")]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("not an http(s):// URL"), "{error}");
        // An IP address cannot be a virtual host.
        let settings = Settings {
            endpoint: "http://127.0.0.1:9000".into(),
            region: "us-east-1".into(),
            path_style: false,
            credentials: None,
        };
        let error = Store::with_settings(Location::parse("s3://bucket").unwrap(), &settings)
            .unwrap_err()
            .to_string();
        assert!(error.contains("path_style: true"), "{error}");
    }

    #[test]
    fn error_documents_name_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(
            xml_text(body, "Message").as_deref(),
            Some("The specified bucket does not exist")
        );
        assert_eq!(xml_text("not xml", "Code"), None);
    }
}
