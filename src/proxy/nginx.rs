//! The nginx configuration kiln writes, as text: one file per project (its upstream, its
//! server blocks, static locations, the headers the app gets), the node's file (the
//! catch-all default server that answers 404 for unknown hosts), and, for the node-private
//! nginx, its whole nginx.conf. Pure functions of their inputs, so the same site always
//! renders to the same bytes: "is the configuration current" is a byte comparison.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::proxy_config::{Listen, Nginx};
use crate::proxy::site::Site;

/// The first line of every file kiln writes, so that an operator reading conf.d knows.
const HEADER: &str = "# Written by kiln; do not edit: kiln rewrites it.";

/// The upstream block's name for a project (`proxy_pass http://kiln.shop`).
fn upstream_name(project: &str) -> String {
    format!("kiln.{project}")
}

/// `path` quoted for nginx. The caller has checked it with
/// [`crate::config::proxy_config::nginx_path_problem`].
fn quoted(path: &Path) -> String {
    format!("\"{}\"", path.display())
}

/// The configuration of one project's front door.
pub fn project_conf(site: &Site, nginx: &Nginx) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{HEADER}\n# The front door of project `{}`: its project.yml (domains, tls, proxy) and the\n# live release's kiln.yml (static).",
        site.project
    );
    if !site.upstreams.is_empty() {
        let _ = writeln!(out, "upstream {} {{", upstream_name(&site.project));
        for address in &site.upstreams {
            // Never take an upstream out of rotation for failing: while the app restarts
            // its one address refuses for a moment, and it must be tried again at once.
            let _ = writeln!(out, "    server {address} max_fails=0;");
        }
        match site.waiting_room {
            Some(room) => {
                // Tried only once every address above refused: kiln's supervisor holds the
                // request there until a web instance accepts again, instead of nginx
                // answering 502. No connection is kept open for the next request: one kept to
                // an app that stops (or to the waiting room, which relays to one app) could
                // fail a request half sent, with no address left to try.
                let _ = writeln!(out, "    server {room} max_fails=0 backup;\n}}");
            }
            None => {
                let _ = writeln!(out, "    keepalive 16;\n}}");
            }
        }
    }
    let plain = site.plain_domains();
    if !plain.is_empty() {
        let _ = writeln!(out, "server {{");
        listen_lines(&mut out, &nginx.listen, "");
        let _ = writeln!(out, "    server_name {};", plain.join(" "));
        serve(&mut out, site);
        let _ = writeln!(out, "}}");
    }
    let groups = site.tls_groups();
    if !groups.is_empty() {
        let names: Vec<&str> = groups.iter().flat_map(|(_, n)| n.iter().copied()).collect();
        let _ = writeln!(
            out,
            "server {{\n    # HTTP asks for HTTPS on the domains with a certificate.",
        );
        listen_lines(&mut out, &nginx.listen, "");
        let _ = writeln!(
            out,
            "    server_name {};\n    return 301 https://$host{}$request_uri;\n}}",
            names.join(" "),
            https_port_suffix(&nginx.listen_tls)
        );
    }
    for (tls, names) in groups {
        let _ = writeln!(out, "server {{");
        listen_lines(&mut out, &nginx.listen_tls, " ssl");
        let _ = writeln!(
            out,
            "    server_name {};\n    ssl_certificate {};\n    ssl_certificate_key {};",
            names.join(" "),
            quoted(&tls.certificate),
            quoted(&tls.key)
        );
        serve(&mut out, site);
        let _ = writeln!(out, "}}");
    }
    out
}

/// `:8443` when the first HTTPS address does not use the default port, so the redirect
/// lands where nginx listens.
fn https_port_suffix(listen_tls: &[Listen]) -> String {
    let port = listen_tls
        .first()
        .map(|listen| listen.0.rsplit(':').next().unwrap_or(&listen.0).to_owned());
    match port.as_deref() {
        None | Some("443") => String::new(),
        Some(port) => format!(":{port}"),
    }
}

fn listen_lines(out: &mut String, addresses: &[Listen], suffix: &str) {
    for address in addresses {
        let _ = writeln!(out, "    listen {address}{suffix};");
    }
}

/// What a server block does with a request: static prefixes from run/, everything else to
/// the app, with the headers an app behind a proxy expects.
fn serve(out: &mut String, site: &Site) {
    let _ = writeln!(
        out,
        "    client_max_body_size {};",
        site.limits.client_max_body_size
    );
    for (prefix, dir) in &site.static_dirs {
        if prefix == "/" {
            continue;
        }
        // `^~`: a static prefix wins over any other location, and both `/static` and
        // `/static/...` are nginx's to serve.
        let _ = writeln!(
            out,
            "    location = {prefix} {{\n        alias {};\n    }}\n    location ^~ {prefix}/ {{\n        alias {};\n    }}",
            quoted(dir),
            quoted(&dir.join(""))
        );
    }
    if let Some(dir) = site.static_dirs.get("/") {
        let _ = writeln!(
            out,
            "    location / {{\n        alias {};\n    }}",
            quoted(&dir.join(""))
        );
        return;
    }
    if site.upstreams.is_empty() {
        let _ = writeln!(
            out,
            "    location / {{\n        # No web process and no project.yml `proxy.upstreams`: nothing to send it to.\n        return 503;\n    }}"
        );
        return;
    }
    let limits = &site.limits;
    // With a waiting room, a request goes on to the next address only when the connection failed
    // (refused: nothing was sent, so a POST may go on too), never after a timeout, which
    // would send it a second time.
    let next_upstream = if site.waiting_room.is_some() {
        "        proxy_next_upstream error;\n"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "    location / {{\n        proxy_pass http://{};\n        proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n        proxy_set_header Host $host;\n        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n        proxy_set_header X-Forwarded-Proto $scheme;\n        proxy_set_header X-Request-Id $kiln_request_id;\n        proxy_connect_timeout {}ms;\n        proxy_read_timeout {}ms;\n        proxy_send_timeout {}ms;\n{next_upstream}    }}",
        upstream_name(&site.project),
        limits.connect_timeout.as_millis(),
        limits.read_timeout.as_millis(),
        limits.send_timeout.as_millis()
    );
}

/// The node's own file: the request id every project passes on, and the default servers.
/// `tls`: some project has a certificate, so nginx listens for HTTPS too.
pub fn node_conf(nginx: &Nginx, tls: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{HEADER}\n# The node's front door: the request id passed to every app (the client's X-Request-Id,\n# else a new one), and the default servers for hosts no project has."
    );
    let _ = writeln!(
        out,
        "map $http_x_request_id $kiln_request_id {{\n    default $http_x_request_id;\n    \"\" $request_id;\n}}"
    );
    let _ = writeln!(out, "server {{");
    listen_lines(&mut out, &nginx.listen, " default_server");
    let _ = writeln!(out, "    server_name _;\n    return 404;\n}}");
    if tls {
        // Without a certificate of its own, the HTTPS default server can only refuse the
        // handshake of a host no project has.
        let _ = writeln!(out, "server {{");
        listen_lines(&mut out, &nginx.listen_tls, " ssl default_server");
        let _ = writeln!(out, "    ssl_reject_handshake on;\n}}");
    }
    out
}

/// The node-private nginx's nginx.conf: everything under `prefix`, the files of `conf_dir`
/// included. `user`: the user its workers run as when it is started by root (the owner of
/// the node's root, so they read run/ as kiln does).
pub fn main_conf(prefix: &Path, conf_dir: &Path, user: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{HEADER}\n# The node-private nginx (`kiln proxy start`), from node.yml `proxy`."
    );
    if let Some(user) = user {
        let _ = writeln!(out, "user {user};");
    }
    let p = |rel: &str| quoted(&prefix.join(rel));
    let _ = writeln!(
        out,
        "daemon on;\nworker_processes auto;\npid {};\nerror_log {} warn;\nevents {{\n    worker_connections 1024;\n}}\nhttp {{",
        p("nginx.pid"),
        p("logs/error.log")
    );
    let _ = writeln!(
        out,
        "    types {{\n        text/html html htm;\n        text/css css;\n        text/plain txt;\n        application/javascript js mjs;\n        application/json json map;\n        application/xml xml;\n        application/pdf pdf;\n        application/wasm wasm;\n        image/png png;\n        image/jpeg jpg jpeg;\n        image/gif gif;\n        image/svg+xml svg;\n        image/webp webp;\n        image/x-icon ico;\n        font/woff woff;\n        font/woff2 woff2;\n    }}\n    default_type application/octet-stream;\n    sendfile on;\n    server_tokens off;"
    );
    let _ = writeln!(out, "    access_log {};", p("logs/access.log"));
    for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(out, "    {kind}_temp_path {};", p(&format!("tmp/{kind}")));
    }
    let _ = writeln!(out, "    include {};\n}}", quoted(&conf_dir.join("*.conf")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::project_config::ProjectConfig;
    use crate::config::proxy_config::Tls;
    use crate::config::recipe::Mode;
    use std::collections::BTreeMap;

    fn nginx() -> Nginx {
        Nginx {
            listen: vec![Listen("127.0.0.1:8080".into())],
            listen_tls: vec![Listen("127.0.0.1:8443".into())],
            ..Nginx::default()
        }
    }

    fn site(configure: impl FnOnce(&mut ProjectConfig)) -> Site {
        let paths = crate::config::layout::Layout::default_layout()
            .project(Path::new("/srv/projects"), "shop");
        let mut config = ProjectConfig::new(Mode::Cooking);
        config.domains = vec!["shop.example".into(), "www.shop.example".into()];
        configure(&mut config);
        let upstreams = crate::proxy::site::upstreams(&[8001], &config);
        Site::new(
            &paths,
            &config,
            upstreams,
            &BTreeMap::from([("/static".to_owned(), "public/static".to_owned())]),
        )
    }

    #[test]
    fn a_project_is_one_upstream_and_one_server_block_with_the_proxy_headers() {
        let conf = project_conf(&site(|_| {}), &nginx());
        let expected = r#"upstream kiln.shop {
    server 127.0.0.1:8001 max_fails=0;
    keepalive 16;
}
server {
    listen 127.0.0.1:8080;
    server_name shop.example www.shop.example;
    client_max_body_size 1048576;
    location = /static {
        alias "/srv/projects/shop/run/public/static";
    }
    location ^~ /static/ {
        alias "/srv/projects/shop/run/public/static/";
    }
    location / {
        proxy_pass http://kiln.shop;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-Id $kiln_request_id;
        proxy_connect_timeout 60000ms;
        proxy_read_timeout 60000ms;
        proxy_send_timeout 60000ms;
    }
}
"#;
        let body: String = conf
            .lines()
            .skip_while(|line| line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(body, expected);
        assert!(conf.starts_with(HEADER), "{conf}");
    }

    #[test]
    fn the_waiting_room_is_the_backup_server_and_only_refused_connections_go_on_to_it() {
        let conf = project_conf(
            &site(|_| {}).with_waiting_room(Some(8999), &[8001]),
            &nginx(),
        );
        assert!(
            conf.contains("upstream kiln.shop {\n    server 127.0.0.1:8001 max_fails=0;\n    server 127.0.0.1:8999 max_fails=0 backup;\n}"),
            "{conf}"
        );
        assert!(
            conf.contains(
                "        proxy_send_timeout 60000ms;\n        proxy_next_upstream error;\n    }"
            ),
            "{conf}"
        );
        // No web instance kiln runs (only project.yml's upstreams): nothing to wait for.
        let conf = project_conf(&site(|_| {}).with_waiting_room(Some(8999), &[]), &nginx());
        assert!(
            !conf.contains("backup") && !conf.contains("proxy_next_upstream"),
            "{conf}"
        );
    }

    #[test]
    fn tls_domains_redirect_http_and_get_an_https_block_with_their_certificate() {
        let conf = project_conf(
            &site(|config| {
                config.tls = BTreeMap::from([(
                    "www.shop.example".to_owned(),
                    Tls {
                        certificate: "/etc/ssl/shop.pem".into(),
                        key: "/etc/ssl/shop.key".into(),
                    },
                )]);
                config.proxy.client_max_body_size = 10 << 20;
                config.proxy.read_timeout = std::time::Duration::from_secs(5);
            }),
            &nginx(),
        );
        assert!(
            conf.contains("    server_name shop.example;\n    client_max_body_size 10485760;"),
            "{conf}"
        );
        assert!(
            conf.contains("    listen 127.0.0.1:8080;\n    server_name www.shop.example;\n    return 301 https://$host:8443$request_uri;\n}"),
            "{conf}"
        );
        assert!(
            conf.contains("    listen 127.0.0.1:8443 ssl;\n    server_name www.shop.example;\n    ssl_certificate \"/etc/ssl/shop.pem\";\n    ssl_certificate_key \"/etc/ssl/shop.key\";\n"),
            "{conf}"
        );
        assert!(conf.contains("proxy_read_timeout 5000ms;"), "{conf}");
        assert_eq!(https_port_suffix(&[Listen("443".into())]), "");
        assert_eq!(https_port_suffix(&[Listen("[::]:443".into())]), "");
        assert_eq!(https_port_suffix(&[]), "");
    }

    #[test]
    fn without_upstreams_the_app_location_answers_503_and_a_static_root_replaces_it() {
        let mut no_app = site(|_| {});
        no_app.upstreams.clear();
        let conf = project_conf(&no_app, &nginx());
        assert!(!conf.contains("upstream "), "{conf}");
        assert!(conf.contains("return 503;"), "{conf}");

        let mut all_static = site(|_| {});
        all_static
            .static_dirs
            .insert("/".into(), "/srv/projects/shop/run".into());
        let conf = project_conf(&all_static, &nginx());
        assert!(
            conf.contains("    location / {\n        alias \"/srv/projects/shop/run/\";\n    }"),
            "{conf}"
        );
        assert!(!conf.contains("proxy_pass"), "{conf}");
    }

    #[test]
    fn the_node_file_answers_404_for_unknown_hosts_and_refuses_unknown_tls() {
        let conf = node_conf(&nginx(), false);
        assert!(
            conf.contains("server {\n    listen 127.0.0.1:8080 default_server;\n    server_name _;\n    return 404;\n}"),
            "{conf}"
        );
        assert!(!conf.contains("ssl"), "{conf}");
        let conf = node_conf(&nginx(), true);
        assert!(
            conf.contains(
                "    listen 127.0.0.1:8443 ssl default_server;\n    ssl_reject_handshake on;"
            ),
            "{conf}"
        );
    }

    #[test]
    fn the_private_nginx_keeps_everything_under_its_prefix() {
        let prefix = Path::new("/srv/projects/.kiln/proxy");
        let conf = main_conf(prefix, &prefix.join("conf.d"), Some("kiln"));
        assert!(conf.contains("user kiln;\n"), "{conf}");
        assert!(
            conf.contains("pid \"/srv/projects/.kiln/proxy/nginx.pid\";"),
            "{conf}"
        );
        assert!(
            conf.contains("include \"/srv/projects/.kiln/proxy/conf.d/*.conf\";"),
            "{conf}"
        );
        for line in conf
            .lines()
            .filter(|l| l.contains("_path ") || l.contains("_log "))
        {
            assert!(line.contains("\"/srv/projects/.kiln/proxy/"), "{line}");
        }
        assert!(!main_conf(prefix, prefix, None).contains("user "));
    }
}
