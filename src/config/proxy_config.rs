//! The front door's settings, as node.yml, project.yml and kiln.yml write them: node.yml
//! `proxy:` (which nginx, where its configuration goes, how it is tested and reloaded, where it
//! listens), project.yml `domains:`, `tls:` and `proxy:` (upstreams, body size, timeouts), and
//! kiln.yml `static:`. Every value here ends up inside an nginx configuration file, so each is
//! checked against a narrow alphabet when it is parsed: a pushed kiln.yml or a careless
//! project.yml must not be able to write nginx directives of its own.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::config::duration;

fn custom<E: de::Error>(message: String) -> E {
    E::custom(message)
}

/// node.yml `proxy:`: `proxy: nginx` (the system's nginx with Debian's defaults), or
/// `proxy: {nginx: {...}}` with settings. nginx is the only front door kiln drives so far; the
/// kind is the key so that another one can get settings of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProxy {
    pub nginx: Nginx,
}

/// How kiln drives nginx (docs/node-config.md, `proxy`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Nginx {
    /// A node-private nginx that kiln runs itself (`kiln proxy start`), with its prefix,
    /// configuration, pid file and logs under `<root>/.kiln/proxy/`. Default false: the
    /// machine's nginx, whose `config_dir` kiln writes into and which it reloads.
    pub private: bool,
    /// The nginx binary. Default `/usr/sbin/nginx` (Debian's package).
    pub binary: PathBuf,
    /// The machine's nginx only: where kiln writes `kiln.conf` (the default server) and
    /// `kiln.<project>.conf`; nginx.conf must include it inside `http {}`, as Debian's
    /// includes `/etc/nginx/conf.d/*.conf`. Default `/etc/nginx/conf.d`.
    pub config_dir: PathBuf,
    /// The machine's nginx only: how to test its whole configuration. Default
    /// `<binary> -t`. A list of words (or one string, split at spaces), run without a shell.
    pub test: Option<Argv>,
    /// The machine's nginx only: how to reload it gracefully. Default `<binary> -s reload`.
    pub reload: Option<Argv>,
    /// The machine's nginx only: its pid file, read to wait until a reload has taken effect.
    /// Default `/run/nginx.pid` (Debian's).
    pub pid_file: PathBuf,
    /// Where the projects' sites listen for HTTP: ports (`80`) or `address:port`
    /// (`127.0.0.1:8080`, `[::]:80`). Default `80` and `[::]:80`.
    #[serde(deserialize_with = "listen_list")]
    pub listen: Vec<Listen>,
    /// Where sites with `tls` listen for HTTPS. Default `443` and `[::]:443`.
    #[serde(deserialize_with = "listen_list")]
    pub listen_tls: Vec<Listen>,
}

impl Default for Nginx {
    fn default() -> Self {
        Nginx {
            private: false,
            binary: PathBuf::from("/usr/sbin/nginx"),
            config_dir: PathBuf::from("/etc/nginx/conf.d"),
            test: None,
            reload: None,
            pid_file: PathBuf::from("/run/nginx.pid"),
            listen: vec![Listen("80".into()), Listen("[::]:80".into())],
            listen_tls: vec![Listen("443".into()), Listen("[::]:443".into())],
        }
    }
}

impl<'de> Deserialize<'de> for NodeProxy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProxyVisitor;

        impl<'de> Visitor<'de> for ProxyVisitor {
            type Value = NodeProxy;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`nginx`, or a mapping `nginx: {...}`")
            }

            fn visit_str<E: de::Error>(self, kind: &str) -> Result<NodeProxy, E> {
                match kind {
                    "nginx" => Ok(NodeProxy {
                        nginx: Nginx::default(),
                    }),
                    other => Err(custom(format!("unknown proxy `{other}`, expected `nginx`"))),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeProxy, A::Error> {
                let mut nginx = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "nginx" if nginx.is_none() => {
                            // `nginx:` with nothing after it: every default.
                            nginx = Some(map.next_value::<Option<Nginx>>()?.unwrap_or_default());
                        }
                        "nginx" => return Err(custom("duplicate key `nginx`".into())),
                        other => {
                            return Err(custom(format!(
                                "unknown proxy `{other}`, expected `nginx`"
                            )));
                        }
                    }
                }
                nginx
                    .map(|nginx| NodeProxy { nginx })
                    .ok_or_else(|| custom("expected `nginx: {...}`".into()))
            }
        }

        deserializer.deserialize_any(ProxyVisitor)
    }
}

/// A command's words, run without a shell: a YAML list, or one string split at whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArgvVisitor;

        impl<'de> Visitor<'de> for ArgvVisitor {
            type Value = Vec<String>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command: a list of words, or one string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
                Ok(text.split_whitespace().map(str::to_owned).collect())
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
                let mut words = Vec::new();
                while let Some(word) = seq.next_element::<String>()? {
                    words.push(word);
                }
                Ok(words)
            }
        }

        let words = deserializer.deserialize_any(ArgvVisitor)?;
        if words.is_empty() || words[0].is_empty() {
            return Err(custom("empty command".into()));
        }
        if words.iter().any(|w| w.chars().any(char::is_control)) {
            return Err(custom("a control character in a command".into()));
        }
        Ok(Argv(words))
    }
}

/// An nginx `listen` address: a port, or `address:port` (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen(pub String);

impl Listen {
    /// The address, checked: `80`, `127.0.0.1:8080`, `[::1]:8080`, `*:80`.
    pub fn parse(text: &str) -> Result<Listen, String> {
        let port_ok = |port: &str| port.parse::<u16>().is_ok_and(|p| p > 0);
        let ok = port_ok(text)
            || text.parse::<SocketAddr>().is_ok_and(|a| a.port() > 0)
            || text.strip_prefix("*:").is_some_and(port_ok);
        if ok {
            Ok(Listen(text.to_owned()))
        } else {
            Err(format!(
                "invalid listen address `{text}`: expected a port (`80`) or `address:port` (`127.0.0.1:8080`, `[::]:80`)"
            ))
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListenVisitor;

        impl Visitor<'_> for ListenVisitor {
            type Value = String;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port or `address:port`")
            }

            fn visit_u64<E: de::Error>(self, port: u64) -> Result<String, E> {
                Ok(port.to_string())
            }

            fn visit_i64<E: de::Error>(self, port: i64) -> Result<String, E> {
                Ok(port.to_string())
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
                Ok(text.to_owned())
            }
        }

        let text = deserializer.deserialize_any(ListenVisitor)?;
        Listen::parse(&text).map_err(custom)
    }
}

/// At least one address: a server block without `listen` would listen on nginx's default port.
fn listen_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Listen>, D::Error> {
    let list = Vec::<Listen>::deserialize(deserializer)?;
    if list.is_empty() {
        return Err(custom(
            "expected at least one address: leave the key out for the default".into(),
        ));
    }
    Ok(list)
}

/// project.yml `proxy:`: how the front door talks to this project's app.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectProxy {
    /// Addresses where the app listens by itself (`127.0.0.1:8000`), for apps that kiln does
    /// not run (started by `services.start`, or by the machine's own service manager).
    #[serde(deserialize_with = "upstreams")]
    pub upstreams: Vec<SocketAddr>,
    /// The largest request body accepted, in bytes (`10M`); 0: no limit. Default 1M (nginx's).
    #[serde(deserialize_with = "body_size", serialize_with = "write_size")]
    pub client_max_body_size: u64,
    /// How long to wait for the app to accept a connection. Default 60s (nginx's).
    #[serde(
        deserialize_with = "duration::deserialize",
        serialize_with = "write_duration"
    )]
    pub connect_timeout: Duration,
    /// How long the app may stay silent while answering. Default 60s (nginx's).
    #[serde(
        deserialize_with = "duration::deserialize",
        serialize_with = "write_duration"
    )]
    pub read_timeout: Duration,
    /// How long the app may take to read the request. Default 60s (nginx's).
    #[serde(
        deserialize_with = "duration::deserialize",
        serialize_with = "write_duration"
    )]
    pub send_timeout: Duration,
}

impl Default for ProjectProxy {
    fn default() -> Self {
        ProjectProxy {
            upstreams: Vec::new(),
            client_max_body_size: 1 << 20,
            connect_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
        }
    }
}

fn write_duration<S: serde::Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration::HumanDuration(*value).to_string())
}

fn write_size<S: serde::Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::config::size::human_size(*value))
}

fn upstreams<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>()
                .ok()
                .filter(|a| a.port() > 0 && !a.ip().is_unspecified())
                .ok_or_else(|| {
                    custom(format!(
                        "invalid upstream `{text}`: expected `address:port`, e.g. `127.0.0.1:8000` or `[::1]:8000`"
                    ))
                })
        })
        .collect()
}

/// Like node.yml's sizes (`512K`, `10M`, bytes), where 0 means no limit, as it does to nginx.
fn body_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size such as `10M`, `512K`, or a number of bytes (0: no limit)")
        }

        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
            Ok(bytes)
        }

        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
            u64::try_from(bytes).map_err(|_| custom(format!("invalid size `{bytes}`")))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            crate::config::size::parse_size(text).map_err(custom)
        }
    }

    deserializer.deserialize_any(SizeVisitor)
}

/// Why `name` is not a domain kiln routes, if it is not: lowercase DNS labels (letters,
/// digits, `-`) joined by dots, optionally starting with `*.` for every subdomain.
pub fn domain_problem(name: &str) -> Option<String> {
    let labels = name.strip_prefix("*.").unwrap_or(name);
    let bad_label = |label: &str| {
        label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || labels.split('.').any(bad_label) {
        let hint = if name.chars().any(|c| c.is_ascii_uppercase()) {
            "; write it in lowercase"
        } else {
            ""
        };
        return Some(format!(
            "invalid domain `{}`: expected lowercase letters, digits and `-` in labels joined by `.` (e.g. `shop.example.com`, `*.example.com`){hint}",
            name.escape_debug()
        ));
    }
    None
}

fn domains<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(deserializer)?;
    let mut seen = std::collections::BTreeSet::new();
    for name in &names {
        if let Some(problem) = domain_problem(name) {
            return Err(custom(problem));
        }
        if !seen.insert(name) {
            return Err(custom(format!("domain `{name}` is listed twice")));
        }
    }
    Ok(names)
}

/// project.yml `domains:`, checked.
pub fn deserialize_domains<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    domains(deserializer)
}

/// One domain's certificate and key (project.yml `tls.<domain>`): an operator's or certbot's
/// files, read by nginx.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(deserialize_with = "config_path")]
    pub certificate: PathBuf,
    #[serde(deserialize_with = "config_path")]
    pub key: PathBuf,
}

/// project.yml `tls:`, checked: domain names, absolute paths nginx can be given.
pub fn deserialize_tls<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Tls>, D::Error> {
    let map = BTreeMap::<String, Tls>::deserialize(deserializer)?;
    if let Some(problem) = map.keys().find_map(|name| domain_problem(name)) {
        return Err(custom(problem));
    }
    Ok(map)
}

/// Why `path` cannot be written into an nginx configuration as it is, if it cannot: kiln
/// quotes paths, and inside quotes nginx still reads `$` (a variable), `\` and `"`.
pub fn nginx_path_problem(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    if text
        .chars()
        .any(|c| c.is_control() || "\"\\$;{}".contains(c))
    {
        return Some(format!(
            "`{}` cannot be written into an nginx configuration: it holds one of `\" \\ $ ; {{ }}` or a control character",
            text.escape_debug()
        ));
    }
    None
}

fn config_path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    let text = String::deserialize(deserializer)?;
    let path = PathBuf::from(&text);
    if !path.is_absolute() {
        return Err(custom(format!(
            "invalid path `{}`: expected an absolute path",
            text.escape_debug()
        )));
    }
    if let Some(problem) = nginx_path_problem(&path) {
        return Err(custom(problem));
    }
    Ok(path)
}

/// Characters of a `static:` URL prefix or directory: what a URL path and a relative file
/// name need, and nothing nginx would read as syntax.
fn plain_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._~/-".contains(c)
}

/// kiln.yml `static:` checked: URL prefixes (`/static`) mapped to directories relative to run/
/// (`public/static`), which nginx serves itself. The prefixes are kept without a trailing
/// `/` (`/` itself stays `/`: the whole site is static).
pub fn deserialize_static<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map = BTreeMap::<String, String>::deserialize(deserializer)?;
    let mut checked = BTreeMap::new();
    for (prefix, dir) in map {
        let plain = prefix.starts_with('/')
            && prefix.chars().all(plain_path_char)
            && !prefix.contains("//")
            && !prefix.split('/').any(|part| part == "." || part == "..");
        if !plain {
            return Err(custom(format!(
                "invalid `static` URL prefix `{}`: expected a path such as `/static` (letters, digits, `. _ ~ - /`, no `..`)",
                prefix.escape_debug()
            )));
        }
        let path = Path::new(&dir);
        let relative = !dir.is_empty()
            && dir.chars().all(plain_path_char)
            && path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !relative {
            return Err(custom(format!(
                "invalid `static` directory `{}` for `{prefix}`: expected a directory relative to run/, such as `public/static` (letters, digits, `. _ ~ - /`, no `..`)",
                dir.escape_debug()
            )));
        }
        let key = match prefix.trim_end_matches('/') {
            "" => "/".to_owned(),
            trimmed => trimmed.to_owned(),
        };
        let dir = dir.trim_end_matches('/').to_owned();
        if checked.insert(key.clone(), dir).is_some() {
            return Err(custom(format!("`static` lists `{key}` twice")));
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::config_error::{ConfigError, parse_yaml};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NodeSide {
        proxy: NodeProxy,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StaticSide {
        #[serde(rename = "static", deserialize_with = "deserialize_static")]
        paths: BTreeMap<String, String>,
    }

    fn node(text: &str) -> Result<NodeProxy, ConfigError> {
        parse_yaml::<NodeSide>(text, Path::new("node.yml")).map(|n| n.proxy)
    }

    #[test]
    fn proxy_nginx_alone_means_the_systems_nginx_with_debians_defaults() {
        let proxy = node("proxy: nginx\n").expect("parses");
        assert_eq!(proxy.nginx, Nginx::default());
        assert!(!proxy.nginx.private);
        assert_eq!(proxy.nginx.binary, PathBuf::from("/usr/sbin/nginx"));
        assert_eq!(proxy.nginx.config_dir, PathBuf::from("/etc/nginx/conf.d"));
        assert_eq!(node("proxy:\n  nginx:\n").expect("parses"), proxy);
    }

    #[test]
    fn proxy_settings() {
        let proxy = node(
            "proxy:\n  nginx:\n    private: true\n    binary: /opt/nginx/sbin/nginx\n    reload: [sudo, -n, nginx, -s, reload]\n    test: sudo -n nginx -t\n    listen: [8080, '127.0.0.1:8081', '[::1]:8082', '*:8083']\n    listen_tls: ['127.0.0.1:8443']\n",
        )
        .expect("parses");
        let nginx = proxy.nginx;
        assert!(nginx.private);
        assert_eq!(nginx.binary, PathBuf::from("/opt/nginx/sbin/nginx"));
        assert_eq!(
            nginx.reload.expect("reload").0,
            ["sudo", "-n", "nginx", "-s", "reload"]
        );
        assert_eq!(nginx.test.expect("test").0, ["sudo", "-n", "nginx", "-t"]);
        let listen: Vec<String> = nginx.listen.iter().map(ToString::to_string).collect();
        assert_eq!(listen, ["8080", "127.0.0.1:8081", "[::1]:8082", "*:8083"]);
        assert_eq!(nginx.listen_tls, [Listen("127.0.0.1:8443".into())]);
    }

    #[test]
    fn bad_proxy_settings_are_refused_with_their_position() {
        let cases = [
            (
                "proxy: caddy\n",
                "node.yml:1:8: unknown proxy `caddy`, expected `nginx`",
            ),
            (
                "proxy:\n  caddy: {}\n",
                "node.yml:2:3: unknown proxy `caddy`, expected `nginx`",
            ),
            (
                "proxy:\n  nginx:\n    listen: [0]\n",
                "node.yml:3:14: invalid listen address `0`: expected a port (`80`) or `address:port` (`127.0.0.1:8080`, `[::]:80`)",
            ),
            (
                "proxy:\n  nginx:\n    listen: ['localhost:80']\n",
                "node.yml:3:14: invalid listen address `localhost:80`: expected a port (`80`) or `address:port` (`127.0.0.1:8080`, `[::]:80`)",
            ),
            (
                "proxy:\n  nginx:\n    listen_tls: []\n",
                "node.yml:3:17: expected at least one address: leave the key out for the default",
            ),
            (
                "proxy:\n  nginx:\n    reload: []\n",
                "node.yml:3:13: empty command",
            ),
            (
                "proxy:\n  nginx:\n    privat: true\n",
                "node.yml:3:5: unknown field `privat`, expected one of `private`, `binary`, `config_dir`, `test`, `reload`, `pid_file`, `listen`, `listen_tls`",
            ),
        ];
        let mut mismatches = Vec::new();
        for (text, expected) in cases {
            match node(text) {
                Ok(proxy) => mismatches.push(format!("{text:?} parsed: {proxy:?}")),
                Err(error) if error.to_string() != expected => mismatches.push(format!(
                    "{text:?}\n  got:      {error}\n  expected: {expected}"
                )),
                Err(_) => {}
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn domains() {
        let cases = [
            ("shop.example.com", true),
            ("www.shop-2.example.com", true),
            ("*.example.com", true),
            ("localhost", true),
            ("xn--bcher-kva.example", true),
            ("", false),
            ("Shop.example.com", false),
            ("shop..example.com", false),
            ("-shop.example.com", false),
            ("shop.example.com.", false),
            ("shop.*.com", false),
            ("shop example.com", false),
            ("shop.example.com;return", false),
            ("_acme.example.com", false),
        ];
        for (name, ok) in cases {
            assert_eq!(domain_problem(name).is_none(), ok, "{name:?}");
        }
        assert!(
            domain_problem("Shop.example.com")
                .expect("refused")
                .ends_with("write it in lowercase")
        );
    }

    #[test]
    fn static_paths_are_checked_and_normalized() {
        let parse =
            |text: &str| parse_yaml::<StaticSide>(text, Path::new("kiln.yml")).map(|s| s.paths);
        let paths = parse(
            "static:\n  /static/: public/static/\n  /favicon.ico: public/favicon.ico\n  /: .\n",
        )
        .expect("parses");
        assert_eq!(
            paths.into_iter().collect::<Vec<_>>(),
            [
                ("/".to_owned(), ".".to_owned()),
                ("/favicon.ico".to_owned(), "public/favicon.ico".to_owned()),
                ("/static".to_owned(), "public/static".to_owned()),
            ]
        );
        let refused = [
            (
                "static:\n  static: public\n",
                "kiln.yml:2:3: invalid `static` URL prefix `static`",
            ),
            (
                "static:\n  /a/../b: public\n",
                "kiln.yml:2:3: invalid `static` URL prefix `/a/../b`",
            ),
            (
                "static:\n  '/a;b': public\n",
                "kiln.yml:2:3: invalid `static` URL prefix `/a;b`",
            ),
            (
                "static:\n  /s: ../secret\n",
                "kiln.yml:2:3: invalid `static` directory `../secret` for `/s`",
            ),
            (
                "static:\n  /s: /etc\n",
                "kiln.yml:2:3: invalid `static` directory `/etc` for `/s`",
            ),
            (
                "static:\n  /s: 'a\"b'\n",
                "kiln.yml:2:3: invalid `static` directory `a\\\"b` for `/s`",
            ),
            (
                "static:\n  /s: a\n  /s/: b\n",
                "kiln.yml:2:3: `static` lists `/s` twice",
            ),
        ];
        let mut mismatches = Vec::new();
        for (text, expected) in refused {
            match parse(text) {
                Ok(paths) => mismatches.push(format!("{text:?} parsed: {paths:?}")),
                Err(error) if !error.to_string().starts_with(expected) => mismatches.push(format!(
                    "{text:?}\n  got:      {error}\n  expected: {expected}..."
                )),
                Err(_) => {}
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn sizes_print_back_in_their_unit() {
        let cases = [
            (1 << 20, "1M"),
            (10 << 20, "10M"),
            (512 << 10, "512K"),
            (0, "0"),
            (1000, "1000"),
            (3 << 30, "3G"),
        ];
        for (bytes, text) in cases {
            assert_eq!(crate::config::size::human_size(bytes), text);
            assert_eq!(crate::config::size::parse_size(text), Ok(bytes));
        }
    }

    #[test]
    fn paths_nginx_would_misread_are_named() {
        assert_eq!(nginx_path_problem(Path::new("/etc/ssl/a b.pem")), None);
        for bad in [
            "/etc/$host.pem",
            "/etc/a\"b",
            "/etc/a;b",
            "/etc/a\nb",
            "/etc/a{b",
        ] {
            assert!(nginx_path_problem(Path::new(bad)).is_some(), "{bad:?}");
        }
    }
}
