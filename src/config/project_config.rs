//! `<root>/<name>/project.yml`: what the node's operators decide for one project
//! (docs/node-config.md): its mode, deploy branch, where a final-mode node pulls releases from
//! and whose signature it trusts, and the environment when it is not the mode's. Written by
//! `kiln init` and `kiln mode`, read by every deploy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::config::config_error::{ConfigError, is_blank, parse_yaml, read_optional};
use crate::config::node_config::{Environment, NodeConfig, PillarPush};
use crate::config::notify_config::{ProjectNotify, Recipient};
use crate::config::proxy_config::{self, ProjectProxy, Tls};
use crate::config::recipe::Mode;

/// The parsed project.yml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Required: its default depends on the node's environment, which `kiln init` knows and
    /// this file must not guess.
    pub mode: Mode,
    /// The branch whose pushes deploy. Default `master`.
    #[serde(default = "default_branch", deserialize_with = "branch")]
    pub branch: String,
    /// Where a final-mode node pulls releases from: `ssh://`, `http(s)://` or a directory.
    #[serde(default, deserialize_with = "optional_text")]
    pub source: Option<String>,
    /// The staging node's release signing key (`ed25519:...`).
    #[serde(default, deserialize_with = "optional_text")]
    pub trusted_key: Option<String>,
    /// Who hears about this project's deploys and alerts (mail addresses, webhooks), and of
    /// which events: a list, or a mapping with `to`, `on` and `author`.
    #[serde(default)]
    pub notify: ProjectNotify,
    /// Overrides node.yml's `pillar_push` for this project.
    #[serde(default)]
    pub pillar_push: Option<PillarPush>,
    /// Overrides node.yml's `environment` (and the mode's default) for this project.
    #[serde(default)]
    pub environment: Option<Environment>,
    /// Overrides node.yml's (and kiln.yml's) `reject_failed_push` for this project.
    #[serde(default)]
    pub reject_failed_push: Option<bool>,
    /// The host names the front door routes to this project (`kiln domains add`).
    #[serde(default, deserialize_with = "proxy_config::deserialize_domains")]
    pub domains: Vec<String>,
    /// A certificate and key per domain: that domain is served over HTTPS, and its HTTP
    /// requests are redirected there.
    #[serde(default, deserialize_with = "proxy_config::deserialize_tls")]
    pub tls: BTreeMap<String, Tls>,
    /// How the front door talks to the app: upstreams, body size, timeouts.
    #[serde(default)]
    pub proxy: ProjectProxy,
    /// An S3-compatible store (`s3://<bucket>/<prefix>`) that every good release is published
    /// to after its deploy, for production nodes to pull from.
    #[serde(default, deserialize_with = "store_url")]
    pub publish: Option<String>,
}

fn default_branch() -> String {
    "master".to_owned()
}

impl ProjectConfig {
    /// A fresh project's settings: `mode`, branch `master`, nothing else.
    pub fn new(mode: Mode) -> Self {
        ProjectConfig {
            mode,
            branch: default_branch(),
            source: None,
            trusted_key: None,
            notify: ProjectNotify::default(),
            pillar_push: None,
            environment: None,
            reject_failed_push: None,
            domains: Vec::new(),
            tls: BTreeMap::new(),
            proxy: ProjectProxy::default(),
            publish: None,
        }
    }

    /// The environment this project's deploys run in, whose `environments.<name>` pillar
    /// section they use: project.yml's, else node.yml's, else the one the mode is for.
    pub fn environment(&self, node: &NodeConfig) -> Environment {
        self.environment
            .or(node.environment)
            .unwrap_or_else(|| Environment::of_mode(self.mode))
    }

    /// Reads project.yml. Unlike node.yml, a missing file is an error: the caller decides
    /// whether that means "not a project" or "use the defaults".
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match read_optional(path)? {
            Some(text) => Self::parse(&text, path),
            None => Err(ConfigError::whole_file(path, "no such file")),
        }
    }

    /// The rules that span keys: a certificate only for a domain the project has.
    fn check(self, file: &Path) -> Result<Self, ConfigError> {
        if let Some(domain) = self.tls.keys().find(|d| !self.domains.contains(d)) {
            return Err(ConfigError::whole_file(
                file,
                format!(
                    "`tls` has a certificate for `{domain}`, which is not in `domains`: add it with `kiln domains add <name> {domain}` or remove its `tls` entry"
                ),
            ));
        }
        Ok(self)
    }

    /// Parses project.yml's text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        if is_blank(text) {
            return Err(ConfigError::whole_file(
                file,
                "the file is empty: it needs at least `mode: editable|cooking|final`",
            ));
        }
        parse_yaml::<Self>(text, file)?.check(file)
    }

    /// The file as `kiln init` writes it: a comment header, then one key per line, in the
    /// order of docs/node-config.md. Unset optional keys are left out; [`Self::load`] reads
    /// the result back to an equal value.
    pub fn to_yaml(&self) -> String {
        let mut out = String::from(
            "# kiln project settings: decided by this node's operators, never by a push.\n\
             # Written by `kiln init`; edit by hand or with `kiln mode`.\n",
        );
        // Writing to a String cannot fail.
        let _ = writeln!(out, "mode: {}", self.mode);
        let _ = writeln!(out, "branch: {}", scalar(&self.branch));
        if let Some(source) = &self.source {
            let _ = writeln!(out, "source: {}", scalar(source));
        }
        if let Some(key) = &self.trusted_key {
            let _ = writeln!(out, "trusted_key: {}", scalar(key));
        }
        if !self.notify.is_empty() {
            let _ = writeln!(out, "notify: {}", notify_yaml(&self.notify));
        }
        if let Some(push) = self.pillar_push {
            let _ = writeln!(out, "pillar_push: {push}");
        }
        if let Some(environment) = self.environment {
            let _ = writeln!(out, "environment: {environment}");
        }
        if let Some(reject) = self.reject_failed_push {
            let _ = writeln!(out, "reject_failed_push: {reject}");
        }
        if !self.domains.is_empty() {
            let items: Vec<String> = self.domains.iter().map(|item| scalar(item)).collect();
            let _ = writeln!(out, "domains: [{}]", items.join(", "));
        }
        if !self.tls.is_empty() {
            let _ = writeln!(out, "tls:");
            for (domain, tls) in &self.tls {
                let _ = writeln!(
                    out,
                    "  {}: {{certificate: {}, key: {}}}",
                    scalar(domain),
                    scalar(&tls.certificate.display().to_string()),
                    scalar(&tls.key.display().to_string())
                );
            }
        }
        let proxy = &self.proxy;
        let defaults = ProjectProxy::default();
        if *proxy != defaults {
            let _ = writeln!(out, "proxy:");
            if !proxy.upstreams.is_empty() {
                let items: Vec<String> = proxy
                    .upstreams
                    .iter()
                    .map(|item| scalar(&item.to_string()))
                    .collect();
                let _ = writeln!(out, "  upstreams: [{}]", items.join(", "));
            }
            if proxy.client_max_body_size != defaults.client_max_body_size {
                let size = crate::config::size::human_size(proxy.client_max_body_size);
                let _ = writeln!(out, "  client_max_body_size: {}", scalar(&size));
            }
            let timeouts = [
                (
                    "connect_timeout",
                    proxy.connect_timeout,
                    defaults.connect_timeout,
                ),
                ("read_timeout", proxy.read_timeout, defaults.read_timeout),
                ("send_timeout", proxy.send_timeout, defaults.send_timeout),
            ];
            for (key, value, default) in timeouts {
                if value != default {
                    let human = crate::config::duration::HumanDuration(value);
                    let _ = writeln!(out, "  {key}: {human}");
                }
            }
        }
        if let Some(publish) = &self.publish {
            let _ = writeln!(out, "publish: {}", scalar(publish));
        }
        out
    }
}

/// project.yml's `notify:` in flow style: the list form when it says nothing else.
fn notify_yaml(notify: &ProjectNotify) -> String {
    let to: Vec<String> = notify
        .to
        .iter()
        .map(|recipient| match recipient {
            Recipient::Mail(address) => scalar(address),
            Recipient::Webhook(hook) => match &hook.secret {
                None => scalar(&hook.url),
                Some(secret) => {
                    format!("{{url: {}, secret: {}}}", scalar(&hook.url), scalar(secret))
                }
            },
        })
        .collect();
    let to = format!("[{}]", to.join(", "));
    if notify.on.is_none() && notify.author.is_none() {
        return to;
    }
    let mut fields = vec![format!("to: {to}")];
    if let Some(on) = &notify.on {
        let names: Vec<&str> = on.iter().map(|event| event.as_str()).collect();
        fields.push(format!("on: [{}]", names.join(", ")));
    }
    if let Some(author) = notify.author {
        fields.push(format!("author: {author}"));
    }
    format!("{{{}}}", fields.join(", "))
}

/// `text` as a YAML scalar: plain when that reads back as the same string, else double
/// quoted (a JSON string is a valid YAML double-quoted scalar).
fn scalar(text: &str) -> String {
    let plain_safe = text.chars().next().is_some_and(|first| {
        first.is_ascii_alphanumeric() || ("/.~_".contains(first) && text != "~")
    }) && text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:@+=~%".contains(c))
        && !text.ends_with(':')
        && !text.contains(": ")
        && !looks_typed(text);
    if plain_safe {
        text.to_owned()
    } else {
        serde_json::Value::String(text.to_owned()).to_string()
    }
}

/// Plain scalars a YAML reader may take for something other than a string.
fn looks_typed(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | ".inf" | ".nan"
    ) || text.parse::<f64>().is_ok()
        || text.starts_with(|c: char| c.is_ascii_digit())
}

/// git itself allows more, but a name kiln passes to git and prints in messages must not
/// read as an option or a range, nor need quoting.
fn branch<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    if let Some(reason) = branch_problem(&name) {
        return Err(serde::de::Error::custom(format!(
            "invalid branch `{}`: {reason}",
            name.escape_debug()
        )));
    }
    Ok(name)
}

/// Why `name` is not an acceptable deploy branch, if it is not.
pub fn branch_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.starts_with('-') {
        Some("it starts with `-`")
    } else if name.contains("..") {
        Some("it contains `..`")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains a space or control character")
    } else if name.chars().any(|c| "~^:?*[\\".contains(c)) {
        Some("git does not allow `~ ^ : ? * [ \\` in branch names")
    } else if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        Some("it has an empty path component")
    } else if name.ends_with('.') || name.ends_with(".lock") || name.contains("@{") {
        Some("git does not allow it (trailing `.`, `.lock` or `@{`)")
    } else if name.split('/').any(|part| part.starts_with('.')) {
        Some("a path component starts with `.`")
    } else {
        None
    }
}

fn optional_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    if text.as_deref().is_some_and(|text| text.trim().is_empty()) {
        return Err(serde::de::Error::custom(
            "empty value: leave the key out instead",
        ));
    }
    Ok(text)
}

/// Only an S3 store can be published to (the rest of the URL is checked where it is used);
/// a static HTTP server can serve releases/ itself.
fn store_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let url = optional_text(deserializer)?;
    if let Some(url) = &url
        && !url.starts_with("s3://")
    {
        return Err(serde::de::Error::custom(format!(
            "invalid publish target `{url}`: expected `s3://<bucket>/<prefix>`"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::notify_config::{NotifyEvent, Webhook};

    fn parse(text: &str) -> Result<ProjectConfig, ConfigError> {
        ProjectConfig::parse(text, Path::new("project.yml"))
    }

    #[test]
    fn design_example_parses() {
        let text = "# <root>/shop/project.yml on a production node\nmode: final\nbranch: master\n\
            source: ssh://kiln@staging.example.com/srv/projects/shop   # or a directory, or http(s)://\n\
            trusted_key: ed25519:3Jx...                                # staging's release signing key\n\
            notify: [ops@example.com]\n";
        let config = parse(text).expect("the design example parses");
        assert_eq!(
            config,
            ProjectConfig {
                mode: Mode::Final,
                branch: "master".into(),
                source: Some("ssh://kiln@staging.example.com/srv/projects/shop".into()),
                trusted_key: Some("ed25519:3Jx...".into()),
                notify: ProjectNotify {
                    to: vec![Recipient::Mail("ops@example.com".into())],
                    ..ProjectNotify::default()
                },
                pillar_push: None,
                environment: None,
                reject_failed_push: None,
                domains: Vec::new(),
                tls: BTreeMap::new(),
                proxy: ProjectProxy::default(),
                publish: None,
            }
        );
    }

    /// The documented project.yml is a real one.
    #[test]
    fn the_documented_project_yml_parses() {
        let doc = include_str!("../../docs/node-config.md");
        let yaml = doc
            .split("\n## `<root>/<name>/project.yml`\n")
            .nth(1)
            .and_then(|section| section.split("```yaml\n").nth(1))
            .and_then(|rest| rest.split("```").next())
            .expect("docs/node-config.md has a project.yml block");
        let config = parse(yaml).expect("the documented project.yml parses");
        assert_eq!(config.domains, ["shop.example.com", "www.shop.example.com"]);
        assert!(config.tls.contains_key("shop.example.com"));
        assert_eq!(config.proxy.client_max_body_size, 10 << 20);
        assert_eq!(
            config.proxy.upstreams,
            ["127.0.0.1:18432"
                .parse::<std::net::SocketAddr>()
                .expect("addr")]
        );
    }

    #[test]
    fn notify_is_a_list_or_a_mapping() {
        let list = parse("mode: cooking\nnotify: [ops@example.com, 'https://h.example.com/x']\n")
            .expect("parses");
        assert_eq!(list.notify.mail().collect::<Vec<_>>(), ["ops@example.com"]);
        assert_eq!(list.notify.webhooks().count(), 1);
        assert_eq!((list.notify.on.clone(), list.notify.author), (None, None));
        let mapping = parse(
            "mode: cooking\nnotify:\n  to:\n    - dev@example.com\n    - {url: 'https://h.example.com/x', secret: secrets.hook}\n  on: [failure]\n  author: true\n",
        )
        .expect("parses");
        assert_eq!(
            mapping.notify.mail().collect::<Vec<_>>(),
            ["dev@example.com"]
        );
        let hook = mapping.notify.webhooks().next().expect("a webhook");
        assert_eq!(hook.secret.as_deref(), Some("secrets.hook"));
        assert_eq!(
            mapping.notify.on,
            Some([NotifyEvent::Failure].into_iter().collect())
        );
        assert_eq!(mapping.notify.author, Some(true));
    }

    #[test]
    fn only_the_mode_is_required() {
        let config = parse("mode: editable\n").expect("parses");
        assert_eq!(config, ProjectConfig::new(Mode::Editable));
        assert_eq!(config.branch, "master");
    }

    #[test]
    fn missing_project_yml_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("project.yml");
        let error = ProjectConfig::load(&path).expect_err("missing file");
        assert_eq!(
            error.to_string(),
            format!("{}: no such file", path.display())
        );
    }

    #[test]
    fn to_yaml_round_trips_through_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("project.yml");
        let full = ProjectConfig {
            mode: Mode::Final,
            branch: "release/2.x".into(),
            source: Some("ssh://kiln@staging.example.com:2222/srv/projects/shop".into()),
            trusted_key: Some("ed25519:3JxQ+/9z=".into()),
            notify: ProjectNotify {
                to: vec![
                    Recipient::Mail("ops@example.com".into()),
                    Recipient::Webhook(Webhook {
                        url: "https://hooks.example.com/x?a=1&b=2".into(),
                        secret: None,
                    }),
                    Recipient::Webhook(Webhook {
                        url: "http://127.0.0.1:8080/hook".into(),
                        secret: Some("secrets.hook".into()),
                    }),
                ],
                on: Some(
                    [NotifyEvent::Failure, NotifyEvent::Alert]
                        .into_iter()
                        .collect(),
                ),
                author: Some(true),
            },
            pillar_push: Some(PillarPush::Record),
            environment: Some(Environment::Staging),
            reject_failed_push: Some(true),
            domains: vec!["shop.example.com".into(), "*.shop.example.com".into()],
            tls: BTreeMap::from([(
                "*.shop.example.com".to_owned(),
                Tls {
                    certificate: "/etc/letsencrypt/live/shop/fullchain.pem".into(),
                    key: "/etc/ssl/private/shop key.pem".into(),
                },
            )]),
            proxy: ProjectProxy {
                upstreams: vec![
                    "127.0.0.1:8000".parse().expect("addr"),
                    "[::1]:8001".parse().expect("addr"),
                ],
                client_max_body_size: 10 << 20,
                connect_timeout: std::time::Duration::from_millis(1500),
                read_timeout: std::time::Duration::from_secs(120),
                send_timeout: std::time::Duration::from_secs(60),
            },
            publish: Some("s3://releases/fleet/shop".into()),
        };
        let awkward = ProjectConfig {
            mode: Mode::Cooking,
            branch: "yes".into(),
            source: Some("/srv/releases with space/#shop: \"quoted\" 'single' \\ back".into()),
            trusted_key: Some("123".into()),
            notify: ProjectNotify {
                to: vec![
                    Recipient::Mail("a,b@example.com".into()),
                    Recipient::Mail("[x]@y".into()),
                ],
                ..ProjectNotify::default()
            },
            pillar_push: Some(PillarPush::Redeploy),
            environment: None,
            reject_failed_push: Some(false),
            domains: vec!["true".into(), "123.example".into()],
            tls: BTreeMap::new(),
            proxy: ProjectProxy {
                client_max_body_size: 0,
                ..ProjectProxy::default()
            },
            publish: None,
        };
        let cases = [
            ProjectConfig::new(Mode::Editable),
            ProjectConfig::new(Mode::Cooking),
            full,
            awkward,
        ];
        for config in cases {
            let yaml = config.to_yaml();
            assert!(yaml.starts_with("# kiln project settings"), "{yaml}");
            std::fs::write(&path, &yaml).expect("write project.yml");
            let loaded =
                ProjectConfig::load(&path).unwrap_or_else(|error| panic!("{error}\n{yaml}"));
            assert_eq!(loaded, config, "{yaml}");
        }
        assert_eq!(
            ProjectConfig::new(Mode::Final)
                .to_yaml()
                .lines()
                .skip(2)
                .collect::<Vec<_>>(),
            ["mode: final", "branch: master"]
        );
    }

    #[test]
    fn environment_is_project_yml_then_node_yml_then_the_modes() {
        let node = |environment| NodeConfig {
            environment,
            ..NodeConfig::default()
        };
        let project = |mode, environment| ProjectConfig {
            environment,
            ..ProjectConfig::new(mode)
        };
        let (dev, staging, prod) = (
            Some(Environment::Dev),
            Some(Environment::Staging),
            Some(Environment::Prod),
        );
        let cases = [
            (project(Mode::Final, None), node(None), Environment::Prod),
            (
                project(Mode::Cooking, None),
                node(None),
                Environment::Staging,
            ),
            (project(Mode::Editable, None), node(None), Environment::Dev),
            (
                project(Mode::Final, None),
                node(staging),
                Environment::Staging,
            ),
            (project(Mode::Editable, None), node(prod), Environment::Prod),
            (project(Mode::Final, dev), node(staging), Environment::Dev),
            (project(Mode::Cooking, prod), node(None), Environment::Prod),
        ];
        for (project, node, expected) in cases {
            assert_eq!(project.environment(&node), expected, "{project:?} {node:?}");
        }
        let parsed = parse("mode: final\nenvironment: staging\n").expect("parses");
        assert_eq!(parsed.environment, staging);
        assert_eq!(
            parse("mode: final\nenvironment: production\n")
                .expect_err("unknown environment")
                .to_string(),
            "project.yml:2:14: unknown variant `production`, expected one of `dev`, `staging`, `prod`"
        );
    }

    #[test]
    fn branch_names() {
        let cases = [
            ("master", None),
            ("release/2.x", None),
            ("feature_x-1", None),
            ("", Some("it is empty")),
            ("-rf", Some("it starts with `-`")),
            ("a..b", Some("it contains `..`")),
            (
                "my branch",
                Some("it contains a space or control character"),
            ),
            (
                "a:b",
                Some("git does not allow `~ ^ : ? * [ \\` in branch names"),
            ),
            ("a//b", Some("it has an empty path component")),
            (
                "x.lock",
                Some("git does not allow it (trailing `.`, `.lock` or `@{`)"),
            ),
            ("a/.hidden", Some("a path component starts with `.`")),
        ];
        for (name, expected) in cases {
            assert_eq!(branch_problem(name), expected, "{name:?}");
        }
    }

    #[test]
    fn refuses_bad_project_yml_with_their_position() {
        let cases = [
            (
                "",
                "project.yml: the file is empty: it needs at least `mode: editable|cooking|final`",
            ),
            (
                "# only a comment\n",
                "project.yml: the file is empty: it needs at least `mode: editable|cooking|final`",
            ),
            ("branch: main\n", "project.yml:1:1: missing field `mode`"),
            (
                "mode: prod\n",
                "project.yml:1:7: unknown variant `prod`, expected one of `editable`, `cooking`, `final`",
            ),
            (
                "mode: final\nbranch: my branch\n",
                "project.yml:2:9: invalid branch `my branch`: it contains a space or control character",
            ),
            (
                "mode: final\nbranch: --upload-pack=x\n",
                "project.yml:2:9: invalid branch `--upload-pack=x`: it starts with `-`",
            ),
            (
                "mode: final\nbranch: a..b\n",
                "project.yml:2:9: invalid branch `a..b`: it contains `..`",
            ),
            (
                "mode: final\nsource: ''\n",
                "project.yml:2:9: empty value: leave the key out instead",
            ),
            (
                "mode: final\nnotify: [ops]\n",
                "project.yml:2:10: invalid recipient `ops`: expected a mail address or an `http(s)://` URL",
            ),
            (
                "mode: final\nnotify: {to: [ops@example.com], on: [deploys]}\n",
                "project.yml:2:38: unknown variant `deploys`, expected one of `success`, `failure`, `rollback`, `alert`",
            ),
            (
                "mode: final\nnotify: {recipients: [ops@example.com]}\n",
                "project.yml:2:10: unknown field `recipients`, expected one of `to`, `on`, `author`",
            ),
            (
                "mode: final\nnotify: ops@example.com\n",
                "project.yml:2:9: expected a list of recipients, e.g. `notify: [ops@example.com]`, or a mapping with `to`, `on` and `author`",
            ),
            (
                "mode: final\ndomains: [Shop.example.com]\n",
                "project.yml:2:10: invalid domain `Shop.example.com`: expected lowercase letters, digits and `-` in labels joined by `.` (e.g. `shop.example.com`, `*.example.com`); write it in lowercase",
            ),
            (
                "mode: final\ndomains: [a.example, a.example]\n",
                "project.yml:2:10: domain `a.example` is listed twice",
            ),
            (
                "mode: final\ndomains: [a.example]\ntls:\n  b.example: {certificate: /c.pem, key: /k.pem}\n",
                "project.yml: `tls` has a certificate for `b.example`, which is not in `domains`: add it with `kiln domains add <name> b.example` or remove its `tls` entry",
            ),
            (
                "mode: final\ndomains: [a.example]\ntls:\n  a.example: {certificate: c.pem, key: /k.pem}\n",
                "project.yml:4:28: invalid path `c.pem`: expected an absolute path",
            ),
            (
                "mode: final\nproxy:\n  upstreams: [localhost:8000]\n",
                "project.yml:3:14: invalid upstream `localhost:8000`: expected `address:port`, e.g. `127.0.0.1:8000` or `[::1]:8000`",
            ),
            (
                "mode: final\nproxy:\n  read_timeout: 0s\n",
                "project.yml:3:17: duration `0s` must be greater than zero",
            ),
            (
                "mode: cooking\npublish: https://x/y\n",
                "project.yml:2:10: invalid publish target `https://x/y`: expected `s3://<bucket>/<prefix>`",
            ),
            (
                "mode: final\nkey: x\n",
                "project.yml:2:1: unknown field `key`, expected one of `mode`, `branch`, `source`, `trusted_key`, `notify`, `pillar_push`, `environment`, `reject_failed_push`, `domains`, `tls`, `proxy`, `publish`",
            ),
        ];
        let mut mismatches = Vec::new();
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            if error.to_string() != expected {
                mismatches.push(format!(
                    "{text:?}\n  got:      {error}\n  expected: {expected}"
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }
}
