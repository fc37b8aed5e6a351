//! The front door (README.md, "Domains and the front door"): a real nginx on 127.0.0.1 in
//! front of real apps deployed with real pushes, asked with each `Host:` a browser would send.
//! The apps are small Python HTTP servers that answer their release's text and the headers
//! they got; `services.start` runs them in the background and leaves their pid in a
//! directory that a guard kills, like the node-private nginx, even when a test panics.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::http::{self, NginxGuard, PidsGuard, Response};
use common::*;

/// The app: answers every GET and POST with its version (read from version.txt at start)
/// and the request headers it got, one `name: value` a line.
const APP: &str = r#"import http.server, sys
VERSION = open("version.txt").read().strip()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        lines = [VERSION] + ["%s: %s" % (k.lower(), v) for k, v in self.headers.items()]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.do_GET()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// A node whose node.yml runs a node-private nginx on two free loopback ports. The guards
/// come first: they stop nginx and the apps before the temp dir goes.
struct FrontDoorNode {
    _nginx: NginxGuard,
    _apps: PidsGuard,
    node: Node,
    http: u16,
    https: u16,
    pids: PathBuf,
}

impl FrontDoorNode {
    fn new() -> FrontDoorNode {
        let node = Node::new();
        let (http, https) = (free_port(), free_port());
        node.write_node_yml(&format!(
            "proxy:\n  nginx:\n    private: true\n    listen: ['127.0.0.1:{http}']\n    listen_tls: ['127.0.0.1:{https}']\n"
        ));
        let pids = node.dir.path().join("pids");
        FrontDoorNode {
            _nginx: NginxGuard {
                root: node.root.clone(),
            },
            _apps: PidsGuard::new(pids.clone()),
            node,
            http,
            https,
            pids,
        }
    }

    fn start(&self) {
        let said = self.node.ok(&["proxy", "start"]);
        assert!(said.contains("started the node-private nginx"), "{said}");
    }

    /// A cooking project routed from `domains` to its app on 127.0.0.1:`port`;
    /// `proxy_lines`: more of project.yml's `proxy:` settings.
    fn project(&self, name: &str, port: u16, domains: &[&str], proxy_lines: &str) -> Project {
        let project = self.node.init(name, "cooking");
        let mut args = vec!["domains", "add", name];
        args.extend_from_slice(domains);
        self.node.ok(&args);
        project.add_setting(&format!(
            "proxy:\n  upstreams: ['127.0.0.1:{port}']\n{proxy_lines}"
        ));
        project
    }

    /// The app of project `name` on `port`, answering `version`; `extra`: more kiln.yml.
    fn app(&self, name: &str, port: u16, version: &str, extra: &str) -> App {
        let app = self.node.app(name);
        let pid = self.pids.join(format!("{name}.pid"));
        let log = self.node.dir.path().join(format!("{name}.log"));
        app.write("app.py", APP);
        app.write("version.txt", &format!("{version}\n"));
        app.write(
            "kiln.yml",
            &format!(
                "services:\n  start: python3 app.py {port} >> {log} 2>&1 & echo $! > {pid}\n  stop: pid=$(cat {pid}) || exit 0; kill $pid 2>/dev/null; while kill -0 $pid 2>/dev/null; do sleep 0.05; done\ncheck:\n  command: curl -fsS -o /dev/null http://127.0.0.1:{port}/\n  timeout: 20s\n  interval: 100ms\n{extra}",
                log = log.display(),
                pid = pid.display()
            ),
        );
        app
    }

    fn get(&self, host: &str, path: &str) -> Response {
        http::get(self.http, host, path)
    }

    /// What the app answered for `host` (its version line), insisting on a 200.
    fn version(&self, host: &str, path: &str) -> String {
        let response = self.get(host, path);
        assert_eq!(response.status, 200, "{host}{path}: {response:?}");
        response.body.lines().next().unwrap_or("").to_owned()
    }

    fn conf_dir(&self) -> PathBuf {
        self.node.root.join(".kiln/proxy/conf.d")
    }
}

/// The `name: value` lines of an app's answer, as the app got its headers.
fn app_header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}: ");
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
}

#[test]
fn two_projects_on_one_nginx_each_host_reaches_its_app_and_an_unknown_host_gets_404() {
    let door = FrontDoorNode::new();
    let (shop_port, blog_port) = (free_port(), free_port());
    let shop = door.project("shop", shop_port, &["shop.test", "www.shop.test"], "");
    let blog = door.project(
        "blog",
        blog_port,
        &["blog.test"],
        "  client_max_body_size: 1K\n",
    );
    door.start();
    let shop_app = door.app("shop", shop_port, "shop v1", "static:\n  /assets: public\n");
    shop_app.write("public/hello.txt", "static hello\n");
    shop_app.commit("v1");
    let pushed = shop_app.deploy(&shop);
    assert!(
        pushed.contains("front door: nginx accepts the configuration of shop.test, www.shop.test")
            && pushed.contains("front door: nginx reloaded"),
        "{pushed}"
    );
    let blog_app = door.app("blog", blog_port, "blog v1", "");
    blog_app.commit("v1");
    blog_app.deploy(&blog);

    assert_eq!(door.version("shop.test", "/"), "shop v1");
    assert_eq!(door.version("www.shop.test", "/cart?id=1"), "shop v1");
    assert_eq!(door.version("blog.test", "/"), "blog v1");
    for host in ["unknown.test", "127.0.0.1", "shop.test.evil"] {
        let response = door.get(host, "/");
        assert_eq!(response.status, 404, "{host}: {response:?}");
        assert!(!response.body.contains(" v1"), "{host}: {response:?}");
    }

    // The headers an app behind a proxy expects.
    let response = door.get("shop.test", "/");
    assert_eq!(app_header(&response, "host"), Some("shop.test"));
    assert_eq!(app_header(&response, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(app_header(&response, "x-forwarded-proto"), Some("http"));
    let id = app_header(&response, "x-request-id").expect("a request id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let again = door.get("shop.test", "/");
    assert_ne!(app_header(&again, "x-request-id"), Some(id));
    let given = http::request(
        door.http,
        "GET",
        "shop.test",
        "/",
        &[("X-Request-Id", "req-42"), ("X-Forwarded-For", "10.1.2.3")],
        b"",
    )
    .expect("request");
    assert_eq!(app_header(&given, "x-request-id"), Some("req-42"));
    assert_eq!(
        app_header(&given, "x-forwarded-for"),
        Some("10.1.2.3, 127.0.0.1")
    );

    // kiln.yml `static:` is served by nginx from run/, for its own project only.
    let file = door.get("shop.test", "/assets/hello.txt");
    assert_eq!((file.status, file.body.as_str()), (200, "static hello\n"));
    assert_eq!(door.version("blog.test", "/assets/hello.txt"), "blog v1");

    // project.yml `proxy.client_max_body_size`.
    let big = http::request(door.http, "POST", "blog.test", "/", &[], &[b'x'; 2048]).unwrap();
    assert_eq!(big.status, 413, "{big:?}");
    let small = http::request(door.http, "POST", "blog.test", "/", &[], &[b'x'; 100]).unwrap();
    assert_eq!(small.status, 200, "{small:?}");
    let shop_big = http::request(door.http, "POST", "shop.test", "/", &[], &[b'x'; 2048]).unwrap();
    assert_eq!(shop_big.status, 200, "{shop_big:?}");

    let status = door.node.ok(&["status", "shop"]);
    assert!(
        status.contains("domains:     shop.test, www.shop.test\n")
            && status.contains(&format!("upstreams:   127.0.0.1:{shop_port}\n"))
            && status.contains("front door:  current\n"),
        "{status}"
    );
    let proxy = door.node.ok(&["proxy", "status"]);
    assert!(
        proxy.contains(&format!(
            "blog: blog.test -> 127.0.0.1:{blog_port} [current]"
        )) && proxy.contains("running (pid "),
        "{proxy}"
    );
    assert_eq!(
        door.node.ok(&["domains", "list", "shop"]),
        "shop.test\nwww.shop.test\n"
    );

    // A domain belongs to one project; the refusal changes nothing.
    let blog_yml = fs::read(blog.path("project.yml")).unwrap();
    let out = door.node.kiln(&["domains", "add", "blog", "WWW.shop.test"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: domain `www.shop.test` already belongs to project `shop`: remove it there first (`kiln domains remove shop www.shop.test`)\n"
    );
    assert_eq!(fs::read(blog.path("project.yml")).unwrap(), blog_yml);

    // A second push answers the new text, with its own static paths ...
    shop_app.write("version.txt", "shop v2\n");
    shop_app.write(
        "kiln.yml",
        &fs::read_to_string(shop_app.dir.join("kiln.yml"))
            .unwrap()
            .replace("/assets:", "/files:"),
    );
    shop_app.commit("v2");
    shop_app.deploy(&shop);
    assert_eq!(door.version("shop.test", "/"), "shop v2");
    assert_eq!(
        door.get("shop.test", "/files/hello.txt").body,
        "static hello\n"
    );
    assert_eq!(door.version("shop.test", "/assets/hello.txt"), "shop v2");

    // ... and `kiln rollback` takes the front door back with the release.
    door.node.ok(&["rollback", "shop"]);
    assert_eq!(door.version("shop.test", "/"), "shop v1");
    assert_eq!(
        door.get("shop.test", "/assets/hello.txt").body,
        "static hello\n"
    );
    assert_eq!(door.version("shop.test", "/files/hello.txt"), "shop v1");
    let status = door.node.ok(&["status", "shop"]);
    assert!(status.contains("front door:  current\n"), "{status}");

    // A deploy that fails its check after nginx took its configuration puts the live
    // release's back when it rolls back.
    let conf = fs::read(door.conf_dir().join("kiln.shop.conf")).unwrap();
    shop_app.write("version.txt", "shop v3\n");
    shop_app.write(
        "kiln.yml",
        &fs::read_to_string(shop_app.dir.join("kiln.yml"))
            .unwrap()
            .replace("/files:", "/v3:")
            .replace("  timeout: 20s\n", "  timeout: 300ms\n")
            .replace("command: curl", "command: false && curl"),
    );
    shop_app.commit("v3 fails its check");
    let (_, pushed) = shop_app.push(&shop);
    assert!(
        pushed.contains("front door: nginx reloaded")
            && pushed.contains("front door: back to the configuration of the live release")
            && last_remote_line(&pushed).contains("deploy FAILED at deploy"),
        "{pushed}"
    );
    assert_eq!(
        fs::read(door.conf_dir().join("kiln.shop.conf")).unwrap(),
        conf
    );
    // The rollback starts v1 again without a check: wait until it listens.
    let answered = http::eventually(std::time::Duration::from_secs(10), || {
        (door.get("shop.test", "/").status == 200).then_some(())
    });
    assert!(answered.is_some(), "v1 does not answer after the rollback");
    assert_eq!(door.version("shop.test", "/"), "shop v1");
    assert_eq!(door.version("shop.test", "/v3/hello.txt"), "shop v1");
    assert_eq!(
        door.get("shop.test", "/assets/hello.txt").body,
        "static hello\n"
    );

    // Removing a domain stops routing it.
    door.node
        .ok(&["domains", "remove", "shop", "www.shop.test"]);
    assert_eq!(door.get("www.shop.test", "/").status, 404);
    assert_eq!(door.version("shop.test", "/"), "shop v1");
}

#[test]
fn a_missing_certificate_fails_the_deploy_before_the_switch_and_the_live_config_and_app_are_untouched()
 {
    let door = FrontDoorNode::new();
    let port = free_port();
    let shop = door.project("shop", port, &["shop.test"], "");
    door.start();
    let app = door.app("shop", port, "shop v1", "");
    app.commit("v1");
    app.deploy(&shop);
    let live = shop.current().expect("a live release");
    assert_eq!(door.version("shop.test", "/"), "shop v1");
    let pid = http::read_pid(&door.pids.join("shop.pid")).expect("the app's pid");

    shop.add_setting(
        "tls:\n  shop.test: {certificate: /nonexistent/shop.pem, key: /nonexistent/shop.key}",
    );
    let before = Before::take(&shop);
    let conf = fingerprint(&door.conf_dir());

    app.write("version.txt", "shop v2\n");
    app.commit("v2");
    app.push_next(&shop);
    let out = door.node.kiln(&["deploy", "shop", "--rev", "next"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            "deploy FAILED at deploy (nginx refused the front door's configuration of `shop`: cannot load certificate \"/nonexistent/shop.pem\""
        ) && said.contains(&format!(
            "the previous configuration is kept); rolled back to {live}"
        )),
        "{said}"
    );
    // Before anything stopped: run/, data/ and nginx's files are exactly as they were, the
    // same app process still answers through the same configuration.
    before.assert_unchanged(&shop, "");
    assert_same(&conf, &fingerprint(&door.conf_dir()), "the proxy's conf.d/");
    assert_eq!(http::read_pid(&door.pids.join("shop.pid")), Some(pid));
    assert_eq!(door.version("shop.test", "/"), "shop v1");
    assert_eq!(shop.current(), Some(live.clone()));
    let releases = shop.releases();
    assert_eq!(releases.last().map(|r| r.1.as_str()), Some("failed"));

    // `kiln proxy reload` refuses it the same way and keeps the configuration too.
    let out = door.node.kiln(&["proxy", "reload"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.starts_with("error: nginx refused the front door's configuration of `the node`: cannot load certificate \"/nonexistent/shop.pem\""),
        "{said}"
    );
    assert_same(&conf, &fingerprint(&door.conf_dir()), "the proxy's conf.d/");
    assert_eq!(door.version("shop.test", "/"), "shop v1");
    let status = door.node.ok(&["status", "shop"]);
    assert!(
        status.contains("front door:  stale: project.yml or node.yml changed since it was written; run `kiln proxy reload`"),
        "{status}"
    );
}

/// A self-signed certificate for `names` in `dir`: (certificate, key).
fn certificate(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .arg("-subj")
        .arg(format!("/CN={}", names[0]))
        .arg("-addext")
        .arg(format!("subjectAltName={}", san.join(",")))
        .output()
        .expect("run openssl");
    assert_success(&out, "openssl req");
    (cert, key)
}

/// `curl` over HTTPS to `host` resolved to 127.0.0.1, trusting only `ca`.
fn curl_https(port: u16, host: &str, ca: &Path) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("run curl")
}

#[test]
fn a_domain_with_a_certificate_is_served_over_https_and_its_http_redirects_there() {
    let door = FrontDoorNode::new();
    let port = free_port();
    let shop = door.project("shop", port, &["shop.test", "plain.test"], "");
    let (cert, key) = certificate(door.node.dir.path(), &["shop.test"]);
    shop.add_setting(&format!(
        "tls:\n  shop.test: {{certificate: {}, key: {}}}",
        cert.display(),
        key.display()
    ));
    door.start();
    let app = door.app("shop", port, "shop v1", "");
    app.commit("v1");
    app.deploy(&shop);

    let redirect = door.get("shop.test", "/cart?id=1");
    assert_eq!(redirect.status, 301, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://shop.test:{}/cart?id=1", door.https).as_str())
    );
    assert_eq!(door.version("plain.test", "/"), "shop v1");

    let out = curl_https(door.https, "shop.test", &cert);
    assert_success(&out, "curl https://shop.test");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with("shop v1\n") && body.contains("x-forwarded-proto: https\n"),
        "{body}"
    );
    // A host no project has gets no certificate at all.
    let out = curl_https(door.https, "other.test", &cert);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(
        door.node.ok(&["domains", "list", "shop"]),
        "shop.test (https)\nplain.test\n"
    );
}

/// nginx running as the machine's would: started by someone else (here the test, with its own
/// prefix), its configuration including a directory that kiln writes into.
struct MachineNginx {
    child: std::process::Child,
}

impl Drop for MachineNginx {
    fn drop(&mut self) {
        // SIGTERM: its master stops the workers too (SIGKILL would leave them behind).
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[test]
fn the_machines_nginx_is_tested_and_reloaded_with_the_commands_node_yml_gives() {
    let node = Node::new();
    let sys = node.dir.path().join("etc-nginx");
    let conf_d = sys.join("conf.d");
    fs::create_dir_all(sys.join("logs")).unwrap();
    fs::create_dir_all(&conf_d).unwrap();
    let main = sys.join("nginx.conf");
    fs::write(
        &main,
        format!(
            "daemon off;\npid {s}/nginx.pid;\nerror_log {s}/logs/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {s}/body;\n  proxy_temp_path {s}/proxy;\n  fastcgi_temp_path {s}/fastcgi;\n  uwsgi_temp_path {s}/uwsgi;\n  scgi_temp_path {s}/scgi;\n  include {s}/conf.d/*.conf;\n}}\n",
            s = sys.display()
        ),
    )
    .unwrap();
    let http_port = free_port();
    let prefix = format!("{}/", sys.display());
    let main = main.display().to_string();
    node.write_node_yml(&format!(
        "proxy:\n  nginx:\n    config_dir: {conf}\n    test: [nginx, -p, {prefix}, -c, {main}, -t]\n    reload: [nginx, -p, {prefix}, -c, {main}, -s, reload]\n    pid_file: {s}/nginx.pid\n    listen: ['127.0.0.1:{http_port}']\n",
        conf = conf_d.display(),
        s = sys.display()
    ));
    // An empty kiln.conf so that nginx starts; kiln rewrites it.
    fs::write(conf_d.join("kiln.conf"), "").unwrap();
    let _nginx = MachineNginx {
        child: Command::new("nginx")
            .args(["-p", &prefix, "-c", &main, "-e"])
            .arg(sys.join("logs/error.log"))
            .spawn()
            .expect("start nginx"),
    };
    // It listens nowhere yet: kiln.conf, with the default server, is empty.
    let started = http::eventually(std::time::Duration::from_secs(10), || {
        sys.join("nginx.pid").exists().then_some(())
    });
    assert!(started.is_some(), "nginx did not write its pid file");

    node.init("shop", "cooking");
    let said = node.ok(&["domains", "add", "shop", "shop.test"]);
    assert!(said.contains("the front door was reloaded"), "{said}");
    // No app yet: the project's block answers 503, a host no project has 404.
    assert_eq!(http::get(http_port, "shop.test", "/").status, 503);
    assert_eq!(http::get(http_port, "other.test", "/").status, 404);
    assert!(conf_d.join("kiln.shop.conf").is_file());

    let out = node.kiln(&["proxy", "start"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: the front door is the machine's nginx"),
        "{}",
        text(&out)
    );
    let status = node.ok(&["status", "shop"]);
    assert!(status.contains("front door:  current\n"), "{status}");
}

#[test]
fn a_site_built_by_the_static_buildpack_is_served_by_nginx_without_a_process() {
    let door = FrontDoorNode::new();
    let site = door.node.init("site", "cooking");
    door.node.ok(&["domains", "add", "site", "site.test"]);
    door.start();
    let app = door.node.app("site");
    app.write("public/index.html", "<h1>hello</h1>\n");
    app.write("public/css/site.css", "h1 { color: red }\n");
    app.commit("a static site, no kiln.yml");
    let pushed = app.deploy(&site);
    assert!(pushed.contains("-----> Static app detected"), "{pushed}");

    let index = door.get("site.test", "/");
    assert_eq!(
        (index.status, index.body.as_str()),
        (200, "<h1>hello</h1>\n")
    );
    let css = door.get("site.test", "/css/site.css");
    assert_eq!(css.status, 200, "{css:?}");
    assert_eq!(css.header("content-type"), Some("text/css"));
    assert_eq!(door.get("site.test", "/missing.html").status, 404);
    // What is outside public/ is not published.
    assert_eq!(door.get("site.test", "/.kiln/buildpacks.json").status, 404);
}

/// Regression: for a site nginx serves from run/, `kiln status` said `upstreams: none` and
/// `kiln proxy status` `site.test -> no upstream`, as if it were not served at all.
#[test]
fn regression_status_says_what_nginx_serves_from_run_for_a_static_site() {
    let door = FrontDoorNode::new();
    let site = door.node.init("site", "cooking");
    door.node.ok(&["domains", "add", "site", "site.test"]);
    door.start();
    let app = door.node.app("site");
    app.write("public/index.html", "<h1>hello</h1>\n");
    app.commit("a static site");
    app.deploy(&site);
    assert_eq!(door.get("site.test", "/").status, 200);
    let status = door.node.ok(&["status", "site"]);
    assert!(
        status.contains("upstreams:   none\nstatic:      / from run/public\n"),
        "{status}"
    );
    let proxy = door.node.ok(&["proxy", "status"]);
    assert!(
        proxy.contains("site: site.test -> static / from run/public [current]"),
        "{proxy}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&door.node.ok(&["status", "site", "--json"])).unwrap();
    assert_eq!(
        json["front_door"]["static"],
        serde_json::json!(["/ from run/public"]),
        "{json}"
    );
}

/// Where the suite keeps what pip downloads, so repeated runs are fast.
fn pip_cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache/pip")
}

/// A WSGI app that answers its release's version (read from version.txt at start).
const WSGI_APP: &str = r#"VERSION = open("version.txt").read().strip()
def app(environ, start_response):
    body = (VERSION + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// A project behind the front door whose app is the WSGI app above, built by kiln's python
/// buildpack (gunicorn from PyPI) and run by kiln's supervisor with its socket passed
/// (`socket_activation`), with a one-second migration so that requests have to wait.
fn gunicorn_project(door: &FrontDoorNode, name: &str, host: &str, cutover: &str) -> (Project, App) {
    let project = door.node.init(name, "cooking");
    door.node.ok(&["domains", "add", name, host]);
    let app = door.node.app(name);
    app.write("requirements.txt", "gunicorn==23.0.0\n")
        .write("app.py", WSGI_APP)
        .write(
            "Procfile",
            "web: gunicorn app:app --bind 127.0.0.1:$PORT --workers 2 --graceful-timeout 10\n",
        )
        .write("version.txt", "v1\n")
        .write(
            "kiln.yml",
            &format!(
                "defaults:\n  env:\n    PIP_CACHE_DIR: {}\nsocket_activation: true\ncutover: {cutover}\nstages:\n  deploy: ['sleep 1']\n",
                pip_cache().display()
            ),
        );
    (project, app)
}

/// What the load loop saw while `operation` ran, with the operation's start and end (load
/// time) and its result. The load runs a moment before and after.
fn under_load<T>(
    door: &FrontDoorNode,
    host: &str,
    operation: impl FnOnce() -> T,
) -> (
    T,
    common::load::Report,
    std::time::Duration,
    std::time::Duration,
) {
    use common::load::{Load, Target};
    let load = Load::start(&Target::through(door.http, host));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let from = load.now();
    let result = operation();
    let to = load.now();
    std::thread::sleep(std::time::Duration::from_millis(300));
    (result, load.finish(), from, to)
}

/// Asserts that requests were sent all through the operation (it is the switch they test).
fn assert_load_covered(
    report: &common::load::Report,
    from: std::time::Duration,
    to: std::time::Duration,
    what: &str,
) {
    let during = report.during(from, to);
    assert!(
        during >= 20,
        "{what}: only {during} requests during the operation ({from:?} to {to:?}) of {}",
        report.samples.len()
    );
    eprintln!(
        "{what}: {} requests, {during} during the operation, longest {:?}",
        report.samples.len(),
        report.longest()
    );
}

/// How long after the new release's first answer the old one may still answer: never with
/// `cutover: stop` (it stopped before the new one started); with `overlap`, requests that
/// nginx's old workers accept while the reload reaches them (milliseconds).
fn reload_grace(cutover: &str) -> std::time::Duration {
    match cutover {
        "overlap" => std::time::Duration::from_millis(500),
        _ => std::time::Duration::ZERO,
    }
}

/// Runs one cutover's four operations under load: a good deploy, a deploy that fails its
/// check and rolls back, `kiln rollback`, `kiln restart`. Returns the project for more checks.
fn four_operations_fail_no_request(cutover: &str) {
    let door = FrontDoorNode::new();
    let host = format!("{cutover}.test");
    let (shop, app) = gunicorn_project(&door, "shop", &host, cutover);
    door.start();
    app.commit("v1");
    let pushed = app.deploy(&shop);
    assert!(pushed.contains("processes up"), "{pushed}");
    assert_eq!(door.version(&host, "/"), "v1");
    let first_port = common::processes::web_port(&shop);

    // A good deploy.
    app.write("version.txt", "v2\n");
    app.commit("v2");
    let (pushed, report, from, to) = under_load(&door, &host, || app.deploy(&shop));
    assert_load_covered(&report, from, to, "a good deploy");
    report.assert_all_answered_by(&["v1", "v2"], "a good deploy");
    let spread = report.assert_never_back("v1", "v2", reload_grace(cutover), "a good deploy");
    eprintln!("a good deploy: the old release answered until {spread:?} after the new one");
    assert_eq!(report.last_body(), Some("v2"), "{pushed}");
    let second_port = common::processes::web_port(&shop);
    if cutover == "overlap" {
        assert!(
            pushed.contains("started 1 process(es) beside the live ones")
                && pushed.contains("(they finished what they served)"),
            "{pushed}"
        );
        assert_ne!(second_port, first_port, "an overlap starts on fresh ports");
    } else {
        assert_eq!(second_port, first_port, "a stop keeps the ports");
    }
    // One release runs, the new one.
    let apps = common::processes::apps(&door.node.root, "web.1");
    let live = shop.current().expect("a live release");
    assert!(
        !apps.is_empty() && apps.iter().all(|(_, release)| *release == live),
        "{apps:?}"
    );

    // A deploy that fails its check: rolled back, run/ and data/ as they were.
    let before = Before::take(&shop);
    app.write("version.txt", "v3\n");
    app.write(
        "kiln.yml",
        &format!(
            "{}check:\n  command: 'false'\n  timeout: 1s\n  interval: 100ms\n",
            fs::read_to_string(app.dir.join("kiln.yml")).expect("kiln.yml")
        ),
    );
    app.commit("v3 fails its check");
    let ((_, pushed), report, from, to) = under_load(&door, &host, || app.push(&shop));
    assert!(
        last_remote_line(&pushed).contains("deploy FAILED at deploy (false: exit 1)"),
        "{pushed}"
    );
    assert_load_covered(&report, from, to, "a failed deploy");
    report.assert_all_answered_by(&["v2", "v3"], "a failed deploy");
    assert_eq!(report.last_body(), Some("v2"), "{pushed}");
    before.assert_unchanged(&shop, "after the failed deploy");
    assert_eq!(shop.current(), Some(live.clone()));
    assert_eq!(common::processes::web_port(&shop), second_port);

    // `kiln rollback` to v1.
    let (out, report, from, to) =
        under_load(&door, &host, || door.node.kiln(&["rollback", "shop"]));
    assert_success(&out, "kiln rollback");
    assert_load_covered(&report, from, to, "kiln rollback");
    report.assert_all_answered_by(&["v2", "v1"], "kiln rollback");
    let spread = report.assert_never_back("v2", "v1", reload_grace(cutover), "kiln rollback");
    eprintln!("kiln rollback: the old release answered until {spread:?} after the new one");
    assert_eq!(report.last_body(), Some("v1"), "{}", text(&out));

    // `kiln restart`.
    let before = common::processes::web_port(&shop);
    let (out, report, from, to) = under_load(&door, &host, || door.node.kiln(&["restart", "shop"]));
    assert_success(&out, "kiln restart");
    assert_load_covered(&report, from, to, "kiln restart");
    report.assert_all_answered_by(&["v1"], "kiln restart");
    let after = common::processes::web_port(&shop);
    if cutover == "overlap" {
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("beside the running ones"),
            "{}",
            text(&out)
        );
        assert_ne!(after, before);
    } else {
        assert_eq!(after, before);
    }
    let status = door.node.ok(&["status", "shop"]);
    assert!(
        status.contains(&format!("upstreams:   127.0.0.1:{after}\n"))
            && status.contains("front door:  current\n"),
        "{status}"
    );
}

#[test]
fn stop_cutover_with_socket_activation_fails_no_request_across_deploys_rollbacks_and_restarts() {
    four_operations_fail_no_request("stop");
}

#[test]
fn overlap_cutover_fails_no_request_across_deploys_rollbacks_and_restarts() {
    four_operations_fail_no_request("overlap");
}

/// A node app that binds `127.0.0.1:$PORT` itself (no socket activation) and answers its
/// release's version; on SIGTERM it stops accepting and finishes what it serves. It does not
/// start while data/broken exists.
const NODE_APP: &str = r#"const http = require("http");
const fs = require("fs");
if (fs.existsSync(process.env.KILN_DATA_DIR + "/broken")) process.exit(1);
const version = fs.readFileSync("version.txt", "utf8").trim();
const server = http.createServer((req, res) => {
  res.setHeader("Content-Type", "text/plain");
  res.end(version + "\n");
});
server.listen(Number(process.env.PORT), "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
"#;

#[test]
fn an_app_that_binds_its_port_itself_fails_no_request_with_an_overlap_cutover() {
    let door = FrontDoorNode::new();
    let host = "node.test";
    let shop = door.node.init("shop", "cooking");
    door.node.ok(&["domains", "add", "shop", host]);
    door.start();
    let app = door.node.app("shop");
    app.write("server.js", NODE_APP)
        .write("Procfile", "web: node server.js\n")
        .write("version.txt", "v1\n")
        .write("kiln.yml", "cutover: overlap\n");
    app.commit("v1");
    app.deploy(&shop);
    assert_eq!(door.version(host, "/"), "v1");

    app.write("version.txt", "v2\n");
    app.commit("v2");
    let (pushed, report, from, to) = under_load(&door, host, || app.deploy(&shop));
    assert_load_covered(&report, from, to, "a good deploy");
    report.assert_all_answered_by(&["v1", "v2"], "a good deploy");
    report.assert_never_back("v1", "v2", reload_grace("overlap"), "a good deploy");
    assert_eq!(report.last_body(), Some("v2"), "{pushed}");
    let good = shop.current().unwrap();
    let port = common::processes::web_port(&shop);

    // A migration that writes data/, then a failed check: the old release never stopped, the
    // new one is gone, nginx is back on the old port, run/ and data/ as they were.
    let before = Before::take(&shop);
    app.write("version.txt", "v3\n").write(
        "kiln.yml",
        "cutover: overlap\nstages:\n  deploy: ['echo v3 > \"$KILN_DATA_DIR/schema.txt\"']\ncheck:\n  command: 'false'\n  timeout: 1s\n",
    );
    app.commit("v3 migrates and fails its check");
    let ((_, pushed), report, from, to) = under_load(&door, host, || app.push(&shop));
    assert!(
        pushed.contains("front door: back to the processes of")
            && pushed.contains("data/ restored from the snapshot")
            && last_remote_line(&pushed).contains(&format!("rolled back to {good}")),
        "{pushed}"
    );
    assert_load_covered(&report, from, to, "a failed deploy");
    report.assert_all_answered_by(&["v2", "v3"], "a failed deploy");
    assert_eq!(report.last_body(), Some("v2"));
    before.assert_unchanged(&shop, "");
    assert_eq!(common::processes::web_port(&shop), port);
    let web = common::processes::apps(&door.node.root, "web.1");
    assert_eq!(web.len(), 1, "{web:?}");
    assert_eq!(web[0].1, good);

    // Killed at any point of the overlap, the next kiln command puts it back, and no request
    // fails meanwhile: the old release serves throughout.
    app.write("kiln.yml", "cutover: overlap\n")
        .write("version.txt", "v4\n");
    app.commit("v4");
    app.push_next(&shop);
    for point in ["after-switch", "after-deploy-commands", "before-drain"] {
        let ((), report, from, to) = under_load(&door, host, || {
            door.node
                .killed_at(point, &["deploy", "shop", "--rev", "next"]);
            assert_success(&door.node.kiln(&["recover", "shop"]), "recover");
        });
        assert_load_covered(&report, from, to, point);
        report.assert_all_answered_by(&["v2", "v4"], point);
        assert_eq!(report.last_body(), Some("v2"), "{point}");
        assert_eq!(shop.current().as_deref(), Some(good.as_str()), "{point}");
        let web = common::processes::apps(&door.node.root, "web.1");
        assert_eq!(web.len(), 1, "{point}: {web:?}");
        assert_eq!(web[0].1, good, "{point}");
        assert_eq!(common::processes::web_port(&shop), port, "{point}");
        let status = door.node.ok(&["status", "shop"]);
        assert!(
            status.contains("front door:  current\n"),
            "{point}: {status}"
        );
    }
    // Killed after the cutover (the old processes stopped), recovery stops the new release
    // and starts the old one again, as an undo of `cutover: stop` does.
    door.node
        .killed_at("before-commit", &["deploy", "shop", "--rev", "next"]);
    let recovered = door.node.kiln(&["recover", "shop"]);
    assert_success(&recovered, "recover");
    assert!(
        text(&recovered).contains("started the processes of"),
        "{}",
        text(&recovered)
    );
    assert_eq!(shop.current().as_deref(), Some(good.as_str()));
    assert_eq!(door.version(host, "/"), "v2");
    let web = common::processes::apps(&door.node.root, "web.1");
    assert_eq!(web.len(), 1, "{web:?}");
    assert_eq!(web[0].1, good);
    let status = door.node.ok(&["status", "shop"]);
    assert!(status.contains("front door:  current\n"), "{status}");
    before.assert_unchanged(&shop, "after the kills");
    let port = common::processes::web_port(&shop);

    // `kiln restart`: new instances beside the old, then the old ones go.
    let (out, report, from, to) = under_load(&door, host, || door.node.kiln(&["restart", "shop"]));
    assert_success(&out, "kiln restart");
    assert_load_covered(&report, from, to, "kiln restart");
    report.assert_all_answered_by(&["v2"], "kiln restart");
    assert_ne!(common::processes::web_port(&shop), port, "fresh ports");
    let port = common::processes::web_port(&shop);
    let conf = fingerprint(&door.conf_dir());

    // A restart whose new instances do not come up changes nothing.
    fs::write(shop.data().join("broken"), "").expect("write data/broken");
    let (out, report, _, _) = under_load(&door, host, || door.node.kiln(&["restart", "shop"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.starts_with("error: ") && said.contains("web.1") && said.contains("exited (exit 1)"),
        "{said}"
    );
    report.assert_all_answered_by(&["v2"], "a failed restart");
    assert_eq!(common::processes::web_port(&shop), port);
    assert_same(&conf, &fingerprint(&door.conf_dir()), "the proxy's conf.d/");
    let web = common::processes::apps(&door.node.root, "web.1");
    assert_eq!(web.len(), 1, "{web:?}");
    fs::remove_file(shop.data().join("broken")).expect("remove data/broken");

    // `kiln ps scale`: the front door's upstreams follow the web instances.
    let (out, report, _, _) = under_load(&door, host, || {
        door.node.kiln(&["ps", "scale", "shop", "web=2"])
    });
    let said = text(&out);
    assert_success(&out, "kiln ps scale");
    assert!(said.contains("the front door was reloaded"), "{said}");
    report.assert_all_answered_by(&["v2"], "kiln ps scale");
    let ps = common::processes::ps(&shop);
    let ports: Vec<String> = ps["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["port"].as_u64().map(|p| format!("127.0.0.1:{p}")))
        .collect();
    assert_eq!(ports.len(), 2, "{ps:#}");
    let status = door.node.ok(&["status", "shop"]);
    assert!(
        status.contains(&format!("upstreams:   {}\n", ports.join(", ")))
            && status.contains("front door:  current\n"),
        "{status}"
    );

    // With `cutover: stop`, such an app is down between its stop and its start: nginx answers
    // those requests with 502 at once (what socket activation or an overlap avoid).
    app.write("version.txt", "v5\n").write("kiln.yml", "");
    app.commit("v5, cutover: stop");
    let (pushed, report, _, _) = under_load(&door, host, || app.deploy(&shop));
    assert!(pushed.contains("services were stopped for"), "{pushed}");
    let failures = report.failures();
    assert!(
        failures.iter().all(|s| matches!(s.outcome, Ok((502, _)))
            && s.latency() < std::time::Duration::from_secs(1)),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    report.assert_never_back("v2", "v5", std::time::Duration::ZERO, "a stop deploy");
    assert_eq!(report.last_body(), Some("v5"));
}

#[test]
fn the_systemd_backend_refuses_socket_activation_and_overlap_before_anything_stops() {
    let node = Node::new();
    let units = node.dir.path().join("units");
    fs::create_dir_all(&units).expect("units dir");
    node.write_node_yml(&format!(
        "supervisor:\n  backend: systemd\n  unit_dir: {}\n",
        units.display()
    ));
    let shop = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("Procfile", "web: python3 -m http.server $PORT\n");
    for (kiln_yml, what) in [
        ("socket_activation: true\n", "`socket_activation`"),
        ("cutover: overlap\n", "`cutover: overlap`"),
    ] {
        let before = Before::take(&shop);
        app.write("kiln.yml", kiln_yml);
        app.commit(kiln_yml);
        let (_, pushed) = app.push(&shop);
        assert!(
            pushed.contains(&format!(
                "{what} needs kiln's own process supervisor, and this node runs its processes with systemd: set node.yml `supervisor.backend: kiln`"
            )) && last_remote_line(&pushed).contains("deploy FAILED at deploy"),
            "{pushed}"
        );
        before.assert_unchanged(&shop, what);
        assert_eq!(
            fs::read_dir(&units).expect("units").count(),
            0,
            "no unit written"
        );
        assert_eq!(shop.current(), None);
    }
}
