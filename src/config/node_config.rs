//! `<root>/node.yml`: what only the node's operators decide (docs/node-config.md): the
//! environment, notification servers, limits, and who may come in over SSH. It never comes
//! from a pushed repository. A missing file means a staging node with default limits and no
//! users.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::config_error::{ConfigError, parse_yaml_or_default, read_optional};
use crate::config::duration;
pub use crate::config::notify_config::Notify;
use crate::config::processes::SupervisorConfig;
use crate::config::proxy_config::NodeProxy;
use crate::config::recipe::{Mode, UnknownName, named_enum};

/// Which section of the pillar (`environments.<name>`) a project's deploys use; in node.yml it
/// also gives new projects their default mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Dev,
    #[default]
    Staging,
    Prod,
}

impl Environment {
    pub const ALL: [Environment; 3] = [Environment::Dev, Environment::Staging, Environment::Prod];

    /// The name used in node.yml and as the key under the pillar's `environments:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Dev => "dev",
            Environment::Staging => "staging",
            Environment::Prod => "prod",
        }
    }

    /// The mode `kiln init` gives a project when none is asked for.
    pub fn default_mode(self) -> Mode {
        match self {
            Environment::Dev => Mode::Editable,
            Environment::Staging => Mode::Cooking,
            Environment::Prod => Mode::Final,
        }
    }

    /// The environment of a project in `mode` when neither project.yml nor node.yml names
    /// one: what the mode is for (final runs production, cooking staging, editable dev).
    pub fn of_mode(mode: Mode) -> Environment {
        match mode {
            Mode::Editable => Environment::Dev,
            Mode::Cooking => Environment::Staging,
            Mode::Final => Environment::Prod,
        }
    }
}

named_enum!(Environment, "environment");

/// What a push to a project's pillar repository does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PillarPush {
    /// Redeploy the live commit with the new pillar.
    #[default]
    Redeploy,
    /// Only record the new pillar; it is used by the next deploy.
    Record,
}

impl PillarPush {
    pub fn as_str(self) -> &'static str {
        match self {
            PillarPush::Redeploy => "redeploy",
            PillarPush::Record => "record",
        }
    }
}

impl fmt::Display for PillarPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parsed node.yml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// The environment of every project on this node that project.yml gives none. Default:
    /// none, so each project's follows its mode ([`Environment::of_mode`]). New projects
    /// get this environment's default mode (staging's, cooking, when unset).
    pub environment: Option<Environment>,
    /// The layout file to use instead of `layouts/default.yml`.
    pub layout: Option<PathBuf>,
    pub notify: Notify,
    pub limits: Limits,
    /// Where `kiln access sync` writes the keys, and who may come in.
    pub ssh: Ssh,
    /// Who may come in over SSH, and to do what, by user name. Default: nobody.
    #[serde(deserialize_with = "users")]
    pub users: BTreeMap<String, User>,
    /// Default for every project; project.yml may say otherwise. Default `redeploy`.
    pub pillar_push: PillarPush,
    /// Deploy from the pre-receive hook, so that a failed deploy refuses the push. Default
    /// for every project; project.yml may say otherwise. Unset: kiln.yml decides.
    pub reject_failed_push: Option<bool>,
    /// Where absolute symlinks in a release tree may point besides the project's run/ and
    /// data/. Default [`DEFAULT_LINK_ROOTS`].
    pub allowed_link_roots: LinkRoots,
    /// Which supervisor runs the apps' processes, their ports, their logs.
    pub supervisor: SupervisorConfig,
    /// The front door: the nginx that routes each project's domains to its app. Default:
    /// none, kiln writes no proxy configuration.
    pub proxy: Option<NodeProxy>,
    /// The S3-compatible release store (`s3://` in project.yml `source` and `publish`).
    pub s3: S3Config,
}

/// node.yml `s3:`: how to reach the S3-compatible release store. Each key left out comes from
/// the environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`), else its default (src/release/s3.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host[:port]`. Default: AWS's endpoint for the region.
    #[serde(deserialize_with = "endpoint")]
    pub endpoint: Option<String>,
    /// Default `us-east-1`.
    pub region: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`. Default: true
    /// when an endpoint is given (MinIO, Ceph RGW), false for AWS.
    pub path_style: Option<bool>,
    pub access_key: Option<String>,
    /// A file holding the secret key (kept out of node.yml, which many may read).
    pub secret_key_file: Option<PathBuf>,
}

fn endpoint<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let url = Option::<String>::deserialize(deserializer)?;
    if let Some(url) = &url
        && !((url.starts_with("http://") || url.starts_with("https://"))
            && url.len() > "https://".len()
            && !url.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(custom(format!(
            "invalid endpoint `{url}`: expected an `http(s)://host[:port]` URL"
        )));
    }
    Ok(url)
}

/// Where toolchains point absolute links: a venv's `bin/python3 -> /usr/bin/python3`, Debian's
/// merged-/usr names (`/bin`, `/lib`, ...), and `/opt` for toolchains installed by hand.
/// Home directories (pyenv, nvm) are not among them: they are one user's setup, which the
/// production node rarely shares. `/etc` is not either: it holds secrets.
pub const DEFAULT_LINK_ROOTS: [&str; 6] = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt"];

/// node.yml `allowed_link_roots`: absolute directories, each without `.` or `..` components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRoots(pub Vec<PathBuf>);

impl Default for LinkRoots {
    fn default() -> Self {
        LinkRoots(DEFAULT_LINK_ROOTS.iter().map(PathBuf::from).collect())
    }
}

impl<'de> Deserialize<'de> for LinkRoots {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let roots = Vec::<String>::deserialize(deserializer)?;
        for root in &roots {
            let components = root.split('/').skip(1);
            let plain = root.starts_with('/')
                && !root.ends_with('/')
                && components
                    .into_iter()
                    .all(|part| !matches!(part, "" | "." | ".."));
            if !plain {
                return Err(custom(format!(
                    "invalid link root `{root}`: expected an absolute directory without `.` or `..` components and without a trailing `/`, e.g. `/usr`; `/` itself is not allowed"
                )));
            }
        }
        Ok(LinkRoots(roots.into_iter().map(PathBuf::from).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest release archive accepted, in bytes. Default 10 GiB; node.yml may say `512M`.
    #[serde(deserialize_with = "size")]
    pub archive_bytes: u64,
    /// Most entries accepted in a release archive. Default 1,000,000.
    #[serde(deserialize_with = "positive_u64")]
    pub archive_entries: u64,
    /// Timeout of a stage that kiln.yml gives none. Default 30m.
    #[serde(deserialize_with = "duration::deserialize")]
    pub stage_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            archive_bytes: 10 << 30,
            archive_entries: 1_000_000,
            stage_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// node.yml `ssh:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ssh {
    /// The authorized_keys file whose kiln section `kiln access sync` writes. Default: none,
    /// meaning `~/.ssh/authorized_keys` of the user running kiln (the node user).
    pub authorized_keys: Option<PathBuf>,
}

/// What a user may do with one project. `admin` is node-wide and lives on [`User`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Push the app repo; read status, releases, ps, logs; fetch the app repo and releases.
    Deploy,
    /// Push and fetch the pillar repo; `kiln config`.
    Config,
    /// rollback, recover, restart, scale, run, deploy by hand, and an interactive shell.
    Operate,
}

impl Right {
    pub const ALL: [Right; 3] = [Right::Deploy, Right::Config, Right::Operate];

    pub fn as_str(self) -> &'static str {
        match self {
            Right::Deploy => "deploy",
            Right::Config => "config",
            Right::Operate => "operate",
        }
    }
}

named_enum!(Right, "right");

/// The project key that gives rights on every project.
pub const ALL_PROJECTS: &str = "*";

/// Someone allowed in over SSH (node.yml `users.<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct User {
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`).
    #[serde(deserialize_with = "keys")]
    pub keys: Vec<String>,
    /// The rights per project name, or `*` for every project. Default: none.
    #[serde(deserialize_with = "projects")]
    pub projects: BTreeMap<String, BTreeSet<Right>>,
    /// Node-wide: `kiln init`, `kiln mode`, `kiln key`, `kiln access`, and every right on every
    /// project. Default false.
    pub admin: bool,
}

impl User {
    /// The rights this user has on the project `name` (its own entry, `*`'s, all for admins).
    pub fn rights(&self, name: &str) -> BTreeSet<Right> {
        if self.admin {
            return Right::ALL.into_iter().collect();
        }
        [name, ALL_PROJECTS]
            .iter()
            .filter_map(|key| self.projects.get(*key))
            .flatten()
            .copied()
            .collect()
    }

    pub fn may(&self, name: &str, right: Right) -> bool {
        self.rights(name).contains(&right)
    }

    /// Whether the user has `operate` on some project, so gets a pty and a shell.
    pub fn operates_somewhere(&self) -> bool {
        self.admin
            || self
                .projects
                .values()
                .any(|rights| rights.contains(&Right::Operate))
    }
}

impl NodeConfig {
    /// Reads node.yml. A missing or blank file gives the defaults.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        match read_optional(path)? {
            Some(text) => NodeConfig::parse(&text, path),
            None => Ok(NodeConfig::default()),
        }
    }

    /// Parses node.yml's text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = parse_yaml_or_default(text, file)?;
        // One key for two users would make "who pushed" a guess: sshd uses the first line.
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, user) in &config.users {
            for key in &user.keys {
                let blob = key.split_ascii_whitespace().nth(1).unwrap_or("");
                if let Some(other) = owners.insert(blob, name)
                    && other != name
                {
                    return Err(ConfigError::whole_file(
                        file,
                        format!(
                            "one SSH key is listed for both `{other}` and `{name}`: give each person their own key"
                        ),
                    ));
                }
            }
        }
        Ok(config)
    }

    /// The user named `name`, if node.yml lists one.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }
}

/// User names end up in authorized_keys `command=` options and in logs: keep them to a
/// shell- and quote-safe alphabet.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && name.len() <= 64;
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid user name `{name}`: use lowercase letters, digits, `.`, `_` and `-`, starting with a letter or `_`"
        ))
    }
}

/// Each key becomes one authorized_keys line; a newline in it would add a line of the
/// author's choosing (with its own options), so the shape is checked here, and the key body
/// must decode (kiln prints its fingerprint).
pub fn check_key(key: &str) -> Result<(), String> {
    use base64::Engine;
    let mut fields = key.split_ascii_whitespace();
    let kind = fields.next().unwrap_or("");
    let known = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-sha2-");
    let body = fields.next().unwrap_or("");
    let decodes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .is_ok_and(|blob| !blob.is_empty());
    if !known || !decodes || key.chars().any(char::is_control) {
        let mut shown: String = key.chars().take(40).collect();
        if shown.len() < key.len() {
            shown.push_str("...");
        }
        return Err(format!(
            "invalid SSH public key `{}`: expected one line `<type> <base64> [comment]`, e.g. `ssh-ed25519 AAAA... me@laptop`",
            shown.escape_debug()
        ));
    }
    Ok(())
}

/// A project key of `users.<name>.projects`: a project name or `*`.
pub fn check_project_key(project: &str) -> Result<(), String> {
    if project == ALL_PROJECTS || crate::config::layout::valid_name(project) {
        Ok(())
    } else {
        Err(format!(
            "invalid project name `{project}`: expected `*` or a name matching `[a-z0-9][a-z0-9._-]{{0,62}}`"
        ))
    }
}

fn custom<E: serde::de::Error>(message: String) -> E {
    E::custom(message)
}

fn users<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, User>, D::Error> {
    let users = BTreeMap::<String, User>::deserialize(deserializer)?;
    for name in users.keys() {
        check_user_name(name).map_err(custom)?;
    }
    Ok(users)
}

fn keys<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let keys = Vec::<String>::deserialize(deserializer)?;
    for key in &keys {
        check_key(key).map_err(custom)?;
    }
    Ok(keys)
}

type Rights = BTreeMap<String, BTreeSet<Right>>;

fn projects<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Rights, D::Error> {
    let projects = Rights::deserialize(deserializer)?;
    for project in projects.keys() {
        check_project_key(project).map_err(custom)?;
    }
    Ok(projects)
}

fn positive_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let value = u64::deserialize(deserializer)?;
    if value == 0 {
        return Err(custom("must be greater than zero".to_owned()));
    }
    Ok(value)
}

/// A byte count: a plain integer, or a string with a binary unit (`512M`, `10G`, `1GiB`).
fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    crate::config::size::deserialize(deserializer)
}

impl FromStr for PillarPush {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, UnknownName> {
        match text {
            "redeploy" => Ok(PillarPush::Redeploy),
            "record" => Ok(PillarPush::Record),
            _ => Err(UnknownName::new(
                "pillar push policy",
                text,
                &["redeploy", "record"],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::notify_config::{NotifyEvent, Security, Webhook};

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("node.yml"))
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFhXZNdm0lp5ZdajKvNhtOkOY2J/ngjFaC7H3MvXyrjg ann@laptop";

    #[test]
    fn missing_or_blank_node_yml_gives_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = NodeConfig::load(&dir.path().join("node.yml")).expect("defaults");
        assert_eq!(missing, NodeConfig::default());
        assert_eq!(
            parse("# nothing yet\n").expect("blank"),
            NodeConfig::default()
        );

        let config = NodeConfig::default();
        assert_eq!(config.environment, None);
        assert_eq!(config.limits.archive_bytes, 10 * 1024 * 1024 * 1024);
        assert_eq!(config.limits.archive_entries, 1_000_000);
        assert_eq!(config.limits.stage_timeout, Duration::from_secs(1800));
        assert_eq!(config.pillar_push, PillarPush::Redeploy);
        assert_eq!(config.reject_failed_push, None);
        assert!(config.users.is_empty());
        assert_eq!(config.notify, Notify::default());
        assert_eq!(
            config.allowed_link_roots.0,
            ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt"].map(PathBuf::from)
        );
    }

    #[test]
    fn loads_a_full_node_yml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.yml");
        let text = format!(
            "environment: prod\nlayout: /etc/kiln/layout.yml\nnotify:\n  smtp:\n    host: mail.example.com\n    from: kiln@example.com\n    starttls: true\n    username: kiln\n    password: hunter22\n  webhooks: [https://hooks.example.com/kiln]\nlimits:\n  archive_bytes: 512M\n  archive_entries: 5000\n  stage_timeout: 1h\nssh:\n  authorized_keys: /home/kiln/.ssh/authorized_keys\nusers:\n  ann:\n    keys: ['{KEY}']\n    admin: true\n  bob:\n    projects:\n      shop: [deploy, config]\n      blog: [operate]\n      '*': [deploy]\npillar_push: record\nreject_failed_push: true\nallowed_link_roots: [/usr, /root/.pyenv/versions]\n"
        );
        std::fs::write(&path, text).expect("write node.yml");
        let config = NodeConfig::load(&path).expect("node.yml loads");
        assert_eq!(config.environment, Some(Environment::Prod));
        assert_eq!(config.layout, Some(PathBuf::from("/etc/kiln/layout.yml")));
        // `starttls: true`, the older spelling, still means STARTTLS.
        let smtp = config.notify.smtp.as_ref().expect("smtp");
        assert_eq!(smtp.host, "mail.example.com");
        assert_eq!(smtp.port, 25);
        assert_eq!(smtp.from, "kiln@example.com");
        assert_eq!(smtp.security, Security::Starttls);
        let credentials = smtp.credentials.as_ref().expect("credentials");
        assert_eq!(
            (credentials.username.as_str(), credentials.password.as_str()),
            ("kiln", "hunter22")
        );
        assert_eq!(
            config.notify.webhooks,
            [Webhook {
                url: "https://hooks.example.com/kiln".into(),
                secret: None
            }]
        );
        assert_eq!(config.limits.archive_bytes, 512 << 20);
        assert_eq!(config.limits.archive_entries, 5000);
        assert_eq!(config.limits.stage_timeout, Duration::from_secs(3600));
        assert_eq!(config.pillar_push, PillarPush::Record);
        assert_eq!(config.reject_failed_push, Some(true));
        // The list replaces the defaults; it does not add to them.
        assert_eq!(
            config.allowed_link_roots.0,
            ["/usr", "/root/.pyenv/versions"].map(PathBuf::from)
        );

        assert_eq!(
            config.ssh.authorized_keys,
            Some(PathBuf::from("/home/kiln/.ssh/authorized_keys"))
        );

        let ann = config.user("ann").expect("ann is listed");
        assert_eq!(ann.keys, [KEY]);
        assert!(ann.admin && ann.operates_somewhere());
        assert!(Right::ALL.iter().all(|right| ann.may("anything", *right)));
        let bob = config.user("bob").expect("bob is listed");
        assert!(bob.keys.is_empty() && !bob.admin);
        let rights = |project: &str| -> Vec<Right> { bob.rights(project).into_iter().collect() };
        assert_eq!(rights("shop"), [Right::Deploy, Right::Config]);
        assert_eq!(rights("blog"), [Right::Deploy, Right::Operate]);
        assert_eq!(rights("wiki"), [Right::Deploy]);
        assert!(bob.operates_somewhere());
        assert!(config.user("eve").is_none());
    }

    #[test]
    fn notify_keys() {
        let config = parse(
            "notify:\n  smtp:\n    host: mail.example.com\n    security: tls\n    from: Kiln <kiln@example.com>\n    username: kiln\n    password: pw\n    ca_file: /etc/kiln/ca.pem\n  webhooks:\n    - https://a.example.com/x\n    - {url: 'http://127.0.0.1:9/h', secret: secrets.hook}\n  on: [failure, alert]\n  author: true\n  timeout: 3s\n  attempts: 2\n  backoff: 1s\n  alerts: {restarts: 5, within: 10m, stable: 30s}\n",
        )
        .expect("parses");
        let notify = &config.notify;
        let smtp = notify.smtp.as_ref().expect("smtp");
        assert_eq!((smtp.security, smtp.port), (Security::Tls, 465));
        assert_eq!(smtp.ca_file, Some(PathBuf::from("/etc/kiln/ca.pem")));
        assert_eq!(notify.webhooks[1].secret.as_deref(), Some("secrets.hook"));
        assert_eq!(
            notify.on.iter().copied().collect::<Vec<_>>(),
            [NotifyEvent::Failure, NotifyEvent::Alert]
        );
        assert!(notify.author);
        assert_eq!(notify.timeout, Duration::from_secs(3));
        assert_eq!(
            (notify.attempts, notify.backoff),
            (2, Duration::from_secs(1))
        );
        assert_eq!(notify.alerts.restarts, 5);
        assert_eq!(notify.alerts.within, Duration::from_secs(600));
        assert_eq!(notify.alerts.stable, Duration::from_secs(30));

        let defaults =
            parse("notify:\n  smtp: {host: localhost, from: k@localhost}\n").expect("parses");
        let smtp = defaults.notify.smtp.as_ref().expect("smtp");
        assert_eq!((smtp.security, smtp.port), (Security::None, 25));
        assert_eq!(defaults.notify.on.len(), 4, "every event by default");
        assert_eq!(defaults.notify.timeout, Duration::from_secs(10));
        assert_eq!(defaults.notify.attempts, 4);
    }

    /// The documented node.yml is a real one, and shows the defaults it says it shows.
    #[test]
    fn the_documented_node_yml_parses() {
        let doc = include_str!("../../docs/node-config.md");
        let section = doc
            .split("\n## `<root>/node.yml`\n")
            .nth(1)
            .expect("docs/node-config.md has a node.yml section");
        let yaml = section
            .split("```yaml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the section has a yaml block");
        let config = parse(yaml).expect("the documented node.yml parses");
        assert_eq!(config.allowed_link_roots, LinkRoots::default());
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.environment, Some(Environment::Staging));
        assert_eq!(config.pillar_push, PillarPush::Redeploy);
        // The notify block shows the defaults it says it shows.
        let defaults = Notify::default();
        let notify = &config.notify;
        assert_eq!(
            (notify.on.clone(), notify.author, notify.timeout),
            (defaults.on, defaults.author, defaults.timeout)
        );
        assert_eq!(
            (notify.attempts, notify.backoff),
            (defaults.attempts, defaults.backoff)
        );
        assert_eq!(notify.alerts, defaults.alerts);
        let smtp = notify.smtp.as_ref().expect("the documented smtp");
        assert_eq!((smtp.security, smtp.port), (Security::Starttls, 587));
        assert_eq!(
            notify.webhooks[1].secret.as_deref(),
            Some("secrets.chat_hook")
        );
        assert!(config.users["ann"].admin);
        assert!(config.users["bob"].may("blog", Right::Deploy));
        assert!(!config.users["bob"].may("blog", Right::Config));
        assert_eq!(config.s3.path_style, Some(true));
        assert_eq!(
            config.s3.secret_key_file.as_deref(),
            Some(Path::new("/etc/kiln/s3-secret"))
        );
    }

    #[test]
    fn environment_names_and_default_modes() {
        let cases = [
            ("dev", Environment::Dev, Mode::Editable),
            ("staging", Environment::Staging, Mode::Cooking),
            ("prod", Environment::Prod, Mode::Final),
        ];
        for (name, environment, mode) in cases {
            assert_eq!(name.parse::<Environment>(), Ok(environment));
            assert_eq!(environment.to_string(), name);
            assert_eq!(environment.default_mode(), mode);
            assert_eq!(Environment::of_mode(mode), environment);
        }
        assert!("production".parse::<Environment>().is_err());
    }

    #[test]
    fn sizes() {
        let cases = [
            ("4096", Ok(4096)),
            ("64K", Ok(64 << 10)),
            ("512M", Ok(512 << 20)),
            ("10G", Ok(10 << 30)),
            ("1GiB", Ok(1 << 30)),
            ("2T", Ok(2 << 40)),
            ("1 G", Ok(1 << 30)),
            (
                "10GB",
                Err("invalid size `10GB`, expected a number of bytes or e.g. `512M`, `10G`, `1T`"),
            ),
            (
                "G",
                Err("invalid size `G`, expected a number of bytes or e.g. `512M`, `10G`, `1T`"),
            ),
            (
                "1.5G",
                Err("invalid size `1.5G`, expected a number of bytes or e.g. `512M`, `10G`, `1T`"),
            ),
            ("99999999999T", Err("size `99999999999T` is too large")),
        ];
        for (text, expected) in cases {
            assert_eq!(
                crate::config::size::parse_size(text),
                expected.map_err(str::to_owned),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_bad_node_yml_with_their_position() {
        let cases = [
            (
                "environment: production\n".to_owned(),
                "node.yml:1:14: unknown variant `production`, expected one of `dev`, `staging`, `prod`",
            ),
            (
                "enviroment: prod\n".to_owned(),
                "node.yml:1:1: unknown field `enviroment`, expected one of `environment`, `layout`, `notify`, `limits`, `ssh`, `users`, `pillar_push`, `reject_failed_push`, `allowed_link_roots`, `supervisor`, `proxy`, `s3`",
            ),
            (
                "limits:\n  archive_bytes: 0\n".to_owned(),
                "node.yml:2:18: size must be greater than zero",
            ),
            (
                "limits:\n  archive_bytes: lots\n".to_owned(),
                "node.yml:2:18: invalid size `lots`, expected a number of bytes or e.g. `512M`, `10G`, `1T`",
            ),
            (
                "limits:\n  archive_entries: 0\n".to_owned(),
                "node.yml:2:20: must be greater than zero",
            ),
            (
                "limits:\n  stage_timeout: forever\n".to_owned(),
                "node.yml:2:18: invalid duration `forever`, expected e.g. `500ms`, `30s`, `20m` or `1h30m`",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n".to_owned(),
                "node.yml:3:5: missing field `from`",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n    from: a@b\n    port: 70000\n".to_owned(),
                "node.yml:5:11: expected a whole number, 0 or more",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n    from: a@b\n    starttls: yes\n".to_owned(),
                "node.yml:5:15: invalid boolean (strict mode expects true/false)",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n    from: a@b\n    starttls: true\n    security: tls\n".to_owned(),
                "node.yml:3:5: `starttls: true` and `security: tls` disagree: keep `security` only",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n    from: a@b\n    security: ssl\n".to_owned(),
                "node.yml:5:15: unknown variant `ssl`, expected one of `none`, `starttls`, `tls`",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n    from: a@b\n    username: kiln\n    password: pw\n".to_owned(),
                "node.yml:3:5: `username` and `password` would cross the network in clear text: set `security: starttls` or `security: tls`",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n    from: a@b\n    security: tls\n    username: kiln\n".to_owned(),
                "node.yml:3:5: `username` and `password` go together: give both or neither",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n    from: kiln\n".to_owned(),
                "node.yml:3:5: invalid sender `kiln`: expected e.g. `kiln@example.com` or `Kiln <kiln@example.com>`",
            ),
            (
                "notify:\n  smtp:\n    host: mail\n    from: a@b\n    ca_file: ca.pem\n".to_owned(),
                "node.yml:3:5: `ca_file` must be an absolute path, got `ca.pem`",
            ),
            (
                "notify:\n  on: [deploy]\n".to_owned(),
                "node.yml:2:8: unknown variant `deploy`, expected one of `success`, `failure`, `rollback`, `alert`",
            ),
            (
                "notify:\n  attempts: 0\n".to_owned(),
                "node.yml:2:13: must be at least 1",
            ),
            (
                "notify:\n  webhooks: [{url: 'https://x', secret: 'pa ss'}]\n".to_owned(),
                "node.yml:2:14: invalid secret `pa ss`: expected the pillar key holding it, e.g. `secrets.webhook`, not the secret itself",
            ),
            (
                "notify:\n  webhooks: [{url: 'https://x', token: a}]\n".to_owned(),
                "node.yml:2:33: unknown field `token`, expected one of `url`, `secret`",
            ),
            (
                "notify:\n  webhooks: [ftp://x]\n".to_owned(),
                "node.yml:2:14: invalid webhook `ftp://x`: expected an `http://` or `https://` URL",
            ),
            (
                format!("users:\n  Ann:\n    keys: ['{KEY}']\n"),
                "node.yml:2:3: invalid user name `Ann`: use lowercase letters, digits, `.`, `_` and `-`, starting with a letter or `_`",
            ),
            (
                "users:\n  ann:\n    keys: [\"ssh-ed25519 AAAA\\ncommand=\\\"sh\\\" ssh-rsa AAAA\"]\n".to_owned(),
                "node.yml:3:11: invalid SSH public key `ssh-ed25519 AAAA\\ncommand=\\\"sh\\\" ssh-rsa AA...`: expected one line `<type> <base64> [comment]`, e.g. `ssh-ed25519 AAAA... me@laptop`",
            ),
            (
                "users:\n  ann:\n    keys: [AAAAC3Nz]\n".to_owned(),
                "node.yml:3:11: invalid SSH public key `AAAAC3Nz`: expected one line `<type> <base64> [comment]`, e.g. `ssh-ed25519 AAAA... me@laptop`",
            ),
            (
                "users:\n  ann:\n    keys: ['ssh-ed25519 not*base64']\n".to_owned(),
                "node.yml:3:11: invalid SSH public key `ssh-ed25519 not*base64`: expected one line `<type> <base64> [comment]`, e.g. `ssh-ed25519 AAAA... me@laptop`",
            ),
            (
                "users:\n  ann:\n    projects:\n      Shop: [deploy]\n".to_owned(),
                "node.yml:4:7: invalid project name `Shop`: expected `*` or a name matching `[a-z0-9][a-z0-9._-]{0,62}`",
            ),
            (
                "users:\n  ann:\n    projects:\n      shop: [push]\n".to_owned(),
                "node.yml:4:14: unknown variant `push`, expected one of `deploy`, `config`, `operate`",
            ),
            (
                "users:\n  ann:\n    root: true\n".to_owned(),
                "node.yml:3:5: unknown field `root`, expected one of `keys`, `projects`, `admin`",
            ),
            (
                "ssh:\n  authorized: x\n".to_owned(),
                "node.yml:2:3: unknown field `authorized`, expected `authorized_keys`",
            ),
            (
                format!("users:\n  ann:\n    keys: ['{KEY}']\n  bob:\n    keys: ['{KEY}']\n"),
                "node.yml: one SSH key is listed for both `ann` and `bob`: give each person their own key",
            ),
            (
                "users:\n  ann: {}\n  ann: {}\n".to_owned(),
                "node.yml:3:3: duplicate key `ann`",
            ),
            (
                "pillar_push: always\n".to_owned(),
                "node.yml:1:14: unknown variant `always`, expected one of `redeploy`, `record`",
            ),
            (
                "allowed_link_roots: [usr]\n".to_owned(),
                "node.yml:1:21: invalid link root `usr`: expected an absolute directory without `.` or `..` components and without a trailing `/`, e.g. `/usr`; `/` itself is not allowed",
            ),
            (
                "allowed_link_roots: [/usr/../etc]\n".to_owned(),
                "node.yml:1:21: invalid link root `/usr/../etc`: expected an absolute directory without `.` or `..` components and without a trailing `/`, e.g. `/usr`; `/` itself is not allowed",
            ),
            (
                "s3:\n  endpoint: 127.0.0.1:9000\n".to_owned(),
                "node.yml:2:13: invalid endpoint `127.0.0.1:9000`: expected an `http(s)://host[:port]` URL",
            ),
            (
                "s3:\n  secret_key: x\n".to_owned(),
                "node.yml:2:3: unknown field `secret_key`, expected one of `endpoint`, `region`, `path_style`, `access_key`, `secret_key_file`",
            ),
            (
                "allowed_link_roots: [/]\n".to_owned(),
                "node.yml:1:21: invalid link root `/`: expected an absolute directory without `.` or `..` components and without a trailing `/`, e.g. `/usr`; `/` itself is not allowed",
            ),
            (
                "allowed_link_roots: /usr\n".to_owned(),
                "node.yml:1:21: expected a list",
            ),
        ];
        let mut mismatches = Vec::new();
        for (text, expected) in &cases {
            let error = parse(text).expect_err(text);
            if error.to_string() != *expected {
                mismatches.push(format!(
                    "{text:?}\n  got:      {error}\n  expected: {expected}"
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }
}
