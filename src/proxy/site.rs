//! One project as the front door sees it: its domains and certificates, where its app
//! listens, how large and slow requests may be, and which URL prefixes nginx serves itself from
//! run/. A [`Site`] is built from project.yml and one release's kiln.yml, so the pipeline can
//! build the site of the release it is about to take live while another one is live.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::config::layout::ProjectPaths;
use crate::config::project_config::ProjectConfig;
use crate::config::proxy_config::{ProjectProxy, Tls};

/// What the front door needs to know about one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub project: String,
    pub domains: Vec<String>,
    pub tls: BTreeMap<String, Tls>,
    /// Body size and timeouts (its `upstreams` are already in [`Site::upstreams`]).
    pub limits: ProjectProxy,
    pub upstreams: Vec<SocketAddr>,
    /// The supervisor's waiting room for the web instances kiln runs
    /// ([`crate::runtime::supervisor::waiting_room`]): nginx's backup server, where a request
    /// that every upstream refused waits for one to accept again.
    pub waiting_room: Option<SocketAddr>,
    /// URL prefix -> the directory (or file) under run/ that nginx serves for it.
    pub static_dirs: BTreeMap<String, PathBuf>,
}

impl Site {
    /// The site of `paths`' project with project.yml's settings, `upstreams` and a release's
    /// kiln.yml `static:` map.
    pub fn new(
        paths: &ProjectPaths,
        config: &ProjectConfig,
        upstreams: Vec<SocketAddr>,
        static_paths: &BTreeMap<String, String>,
    ) -> Site {
        let static_dirs = static_paths
            .iter()
            .map(|(prefix, dir)| {
                let path = match dir.as_str() {
                    "." | "" => paths.run.clone(),
                    dir => paths.run.join(dir),
                };
                (prefix.clone(), path)
            })
            .collect();
        Site {
            project: paths.name.clone(),
            domains: config.domains.clone(),
            tls: config.tls.clone(),
            limits: config.proxy.clone(),
            upstreams,
            waiting_room: None,
            static_dirs,
        }
    }

    /// The site with its waiting room on 127.0.0.1:`port` (`instance_ports`: the web instances kiln
    /// runs; without any, there is nothing for a request to wait for).
    pub fn with_waiting_room(mut self, port: Option<u16>, instance_ports: &[u16]) -> Site {
        self.waiting_room = port
            .filter(|_| !instance_ports.is_empty())
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        self
    }

    /// The domains served over plain HTTP (those without a certificate).
    pub fn plain_domains(&self) -> Vec<&str> {
        self.domains
            .iter()
            .filter(|d| !self.tls.contains_key(*d))
            .map(String::as_str)
            .collect()
    }

    /// The domains with a certificate, grouped by certificate and key (one HTTPS server block
    /// each: a certbot certificate usually covers `shop.example.com` and `www.` together).
    pub fn tls_groups(&self) -> Vec<(&Tls, Vec<&str>)> {
        let mut groups: Vec<(&Tls, Vec<&str>)> = Vec::new();
        for domain in &self.domains {
            let Some(tls) = self.tls.get(domain) else {
                continue;
            };
            match groups.iter_mut().find(|(t, _)| *t == tls) {
                Some((_, names)) => names.push(domain),
                None => groups.push((tls, vec![domain])),
            }
        }
        groups
    }
}

/// What nginx serves itself for a release whose tree is `tree`: kiln.yml's `static:`, else,
/// for a site built by kiln's own `static` buildpack, the whole site from run/ (its public/
/// folder, or the top of the app), so no process has to serve it.
pub fn static_paths(
    recipe_static: &BTreeMap<String, String>,
    tree: &Path,
) -> BTreeMap<String, String> {
    if !recipe_static.is_empty() {
        return recipe_static.clone();
    }
    let built_static = crate::runtime::buildpack::read_buildpacks_file(tree).is_some_and(|file| {
        file.buildpacks
            .iter()
            .any(|b| b.source.starts_with("kiln:static@"))
    });
    if !built_static {
        return BTreeMap::new();
    }
    let dir = if tree.join("public").is_dir() {
        "public"
    } else {
        "."
    };
    BTreeMap::from([("/".to_owned(), dir.to_owned())])
}

/// The upstreams of a project: the web instances kiln runs, each on its port on 127.0.0.1,
/// then the addresses project.yml's `proxy.upstreams` lists (apps kiln does not run).
pub fn upstreams(instance_ports: &[u16], config: &ProjectConfig) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = instance_ports
        .iter()
        .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port))
        .collect();
    for address in &config.proxy.upstreams {
        if !all.contains(address) {
            all.push(*address);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::recipe::Mode;

    #[test]
    fn upstreams_are_the_instances_then_project_yml_without_repeats() {
        let mut config = ProjectConfig::new(Mode::Cooking);
        config.proxy.upstreams = vec![
            "127.0.0.1:9001".parse().expect("addr"),
            "[::1]:9002".parse().expect("addr"),
        ];
        let found: Vec<String> = upstreams(&[8001, 9001], &config)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found, ["127.0.0.1:8001", "127.0.0.1:9001", "[::1]:9002"]);
        assert!(upstreams(&[], &ProjectConfig::new(Mode::Final)).is_empty());
    }

    #[test]
    fn domains_are_grouped_by_certificate() {
        let paths = crate::config::layout::Layout::default_layout()
            .project(std::path::Path::new("/srv/projects"), "shop");
        let mut config = ProjectConfig::new(Mode::Cooking);
        config.domains = [
            "shop.example",
            "www.shop.example",
            "api.example",
            "old.example",
        ]
        .map(String::from)
        .to_vec();
        let cert = |name: &str| Tls {
            certificate: format!("/etc/ssl/{name}.pem").into(),
            key: format!("/etc/ssl/{name}.key").into(),
        };
        config.tls = BTreeMap::from([
            ("shop.example".to_owned(), cert("shop")),
            ("www.shop.example".to_owned(), cert("shop")),
            ("api.example".to_owned(), cert("api")),
        ]);
        let statics = BTreeMap::from([
            ("/static".to_owned(), "public/static".to_owned()),
            ("/".to_owned(), ".".to_owned()),
        ]);
        let site = Site::new(&paths, &config, Vec::new(), &statics);
        assert_eq!(site.plain_domains(), ["old.example"]);
        let groups: Vec<(String, Vec<&str>)> = site
            .tls_groups()
            .into_iter()
            .map(|(tls, names)| (tls.certificate.display().to_string(), names))
            .collect();
        assert_eq!(
            groups,
            [
                (
                    "/etc/ssl/shop.pem".to_owned(),
                    vec!["shop.example", "www.shop.example"]
                ),
                ("/etc/ssl/api.pem".to_owned(), vec!["api.example"]),
            ]
        );
        assert_eq!(
            site.static_dirs["/"],
            PathBuf::from("/srv/projects/shop/run")
        );
        assert_eq!(
            site.static_dirs["/static"],
            PathBuf::from("/srv/projects/shop/run/public/static")
        );
    }
}
