//! SSH access end to end: a real sshd on 127.0.0.1 (own config, generated host key, an
//! authorized_keys written by `kiln access sync`), the node run by a real system user
//! (`kiln-test`, created once; these tests need root), and the real git and ssh clients.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{KILN, text};

const NODE_USER: &str = "kiln-test";

/// Creates the node user once: a system user with a real shell (a forced command runs
/// through it) whose password is `*`, not `!`, so sshd lets it in with a key.
fn node_user() -> Result<(u32, u32), String> {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().unwrap();
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root".into());
    }
    for tool in ["/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/ssh"] {
        if !Path::new(tool).exists() {
            return Err(format!("{tool} is not installed"));
        }
    }
    let find = || nix::unistd::User::from_name(NODE_USER).ok().flatten();
    if find().is_none() {
        // Another test run may create it at the same moment: only the lookup decides.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--shell",
                "/bin/sh",
                "--home-dir",
                "/nonexistent",
            ])
            .arg(NODE_USER)
            .output();
    }
    let user = find().ok_or("useradd kiln-test failed")?;
    let _ = Command::new("usermod")
        .args(["-p", "*", NODE_USER])
        .output();
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

struct Setup {
    node: common::Node,
    uid: u32,
    gid: u32,
    dir: PathBuf,
    port: u16,
    /// Stopped when the setup is dropped.
    _sshd: common::Sshd,
    authorized_keys: PathBuf,
}

impl Setup {
    /// None when this machine cannot run the tests (not root, no sshd): they say so and pass.
    fn start() -> Option<Setup> {
        let (uid, gid) = match node_user() {
            Ok(ids) => ids,
            Err(reason) => {
                eprintln!("skipped: {reason}");
                return None;
            }
        };
        let node = common::Node::new();
        let top = node.dir.path().to_path_buf();
        std::os::unix::fs::chown(&top, Some(uid), Some(gid)).unwrap();
        let dir = top.join("ssh");
        fs::create_dir_all(&dir).unwrap();
        for key in ["ann", "bob", "eve"] {
            common::ssh_keygen(&dir.join(key), key);
        }
        // The node user's own dir, as ~/.ssh would be: kiln writes a temp file next to it.
        let home = top.join("home");
        fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
        let authorized_keys = home.join("authorized_keys");
        fs::write(
            &authorized_keys,
            "# someone else's\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7s foreign@host\n",
        )
        .unwrap();
        std::os::unix::fs::chown(&authorized_keys, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o600)).unwrap();
        let sshd = common::Sshd::spawn(
            &dir,
            &format!(
                "PermitRootLogin no\nAllowUsers {NODE_USER}\nAuthorizedKeysFile {}\n",
                authorized_keys.display()
            ),
        )
        .unwrap();
        let port = sshd.port;
        let host_pub = fs::read_to_string(dir.join("host_key.pub")).unwrap();
        fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .unwrap();
        for who in ["ann", "bob", "eve"] {
            let wrapper = dir.join(format!("ssh-{who}"));
            fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec /usr/bin/ssh -F /dev/null -i {d}/{who} -o IdentitiesOnly=yes -o BatchMode=yes \
                     -o StrictHostKeyChecking=yes -o UserKnownHostsFile={d}/known_hosts -o LogLevel=ERROR \"$@\"\n",
                    d = dir.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let setup = Setup {
            node,
            uid,
            gid,
            dir,
            port,
            _sshd: sshd,
            authorized_keys,
        };
        setup.write_node_yml("");
        Some(setup)
    }

    /// node.yml with the test's authorized_keys, and web ports of this node's own (regression:
    /// with the default range, the static sites of two SSH tests running at once were both
    /// given port 20000, and the second failed its deploy with `Address already in use`).
    fn write_node_yml(&self, extra: &str) {
        let root = self.node.root.clone();
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(self.uid), Some(self.gid)).unwrap();
        let (first, last) = self.node.port_range();
        fs::write(
            root.join("node.yml"),
            format!(
                "ssh:\n  authorized_keys: {}\nsupervisor:\n  ports: {first}-{last}\n{extra}",
                self.authorized_keys.display()
            ),
        )
        .unwrap();
    }

    /// kiln on the node, as the node user.
    fn kiln(&self, args: &[&str]) -> Output {
        Command::new(KILN)
            .arg("--root")
            .arg(&self.node.root)
            .args(args)
            .env("HOME", self.node.dir.path())
            .env_remove("KILN_USER")
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.kiln(args);
        assert!(out.status.success(), "kiln {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wrapper(&self, who: &str) -> PathBuf {
        self.dir.join(format!("ssh-{who}"))
    }

    /// `ssh <who>@... <command>` with extra ssh options.
    fn ssh(&self, who: &str, options: &[&str], command: Option<&str>, stdin: &str) -> Output {
        let mut cmd = Command::new(self.wrapper(who));
        cmd.arg("-p")
            .arg(self.port.to_string())
            .args(options)
            .arg(format!("{NODE_USER}@127.0.0.1"));
        if let Some(command) = command {
            cmd.arg(command);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// git in `app` with the key of `who`.
    fn git(&self, who: &str, app: &common::App, args: &[&str]) -> Output {
        Command::new("git")
            .current_dir(&app.dir)
            .args(args)
            .env("GIT_SSH_COMMAND", self.wrapper(who))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("ssh://{NODE_USER}@127.0.0.1:{}/{path}", self.port)
    }

    fn key(&self, who: &str) -> String {
        self.dir.join(format!("{who}.pub")).display().to_string()
    }

    fn fingerprint(&self, who: &str) -> String {
        let out = Command::new("/usr/bin/ssh-keygen")
            .arg("-lf")
            .arg(self.key(who))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    /// Waits until sshd lets ann in.
    fn wait_for_sshd(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ssh("ann", &[], Some("kiln --version"), "");
            if out.status.success() {
                return;
            }
            let log = fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "cannot log in: {}\n{log}",
                text(&out)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The node of most tests: project shop (cooking); ann operates and deploys shop, bob may
/// only deploy shop, eve only deploys blog.
fn shop() -> Option<(Setup, common::App)> {
    let setup = Setup::start()?;
    setup.ok(&["init", "shop", "--mode", "cooking"]);
    setup.ok(&["init", "blog", "--mode", "cooking"]);
    for who in ["ann", "bob", "eve"] {
        setup.ok(&["access", "add-key", who, &setup.key(who)]);
    }
    setup.ok(&["access", "grant", "ann", "shop", "operate"]);
    setup.ok(&["access", "grant", "ann", "shop", "deploy"]);
    setup.ok(&["access", "grant", "bob", "shop", "deploy"]);
    setup.ok(&["access", "grant", "eve", "blog", "deploy"]);
    setup.wait_for_sshd();
    let app = setup.node.app("shop");
    app.write(
        "kiln.yml",
        "stages:\n  deploy:\n    - echo hello from $KILN_RELEASE\n",
    );
    app.write("index.html", "one\n");
    app.commit("one");
    Some((setup, app))
}

#[test]
fn deploy_over_ssh_records_who_pushed_with_which_key() {
    let Some((setup, app)) = shop() else { return };
    // The deploy's mail says who pushed: the node.yml user and their key, not the Unix user
    // the node runs as.
    let sink = common::notify::SmtpSink::start(
        &setup.node.dir.path().join("mail"),
        common::notify::SmtpOptions::default(),
    );
    let node_yml = setup.node.root.join("node.yml");
    let mut yml = fs::read_to_string(&node_yml).unwrap();
    yml.push_str(&format!(
        "notify:\n  smtp:\n    host: 127.0.0.1\n    port: {}\n    from: kiln@node.example\n",
        sink.port
    ));
    fs::write(&node_yml, yml).unwrap();
    setup
        .node
        .project("shop")
        .add_setting("notify: [ops@example.com]");
    let out = setup.git("bob", &app, &["push", &setup.url("shop"), "HEAD:master"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("remote: -----> deployed"), "{all}");
    assert!(all.contains("remote:        hello from "), "{all}");

    let project = setup.node.project("shop");
    let log = project.release_log();
    let record = log["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(record["who"], "bob");
    assert_eq!(record["who_key"], setup.fingerprint("bob").as_str());
    let release = record["id"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(project.path(&format!("releases/{release}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["who"], "bob");
    assert_eq!(manifest["who_key"], setup.fingerprint("bob").as_str());
    let status = setup.ok(&["status", "shop"]);
    assert!(
        status.contains(&format!("by bob ({})", setup.fingerprint("bob"))),
        "{status}"
    );
    let mails = sink.wait_for(1, Duration::from_secs(60));
    assert_eq!(mails.len(), 1, "{mails:?}");
    let pushed_by = format!("pushed by:   bob ({})", setup.fingerprint("bob"));
    assert!(
        mails[0]
            .body
            .lines()
            .any(|line| line.trim_end() == pushed_by),
        "{}",
        mails[0].body
    );

    // The other allowed commands work as locally, and the short forms too.
    let out = setup.ssh("bob", &[], Some("kiln releases shop"), "");
    assert!(
        out.status.success() && text(&out).contains(release),
        "{}",
        text(&out)
    );
    let out = setup.git("bob", &app, &["ls-remote", &setup.url("shop.git")]);
    assert!(
        out.status.success() && text(&out).contains("refs/heads/master"),
        "{}",
        text(&out)
    );
}

#[test]
fn rights_are_checked_before_git_and_kiln_run() {
    let Some((setup, app)) = shop() else { return };
    let project = setup.node.project("shop");
    // deploy without config: the pillar is refused.
    let pillar = setup.node.app("pillar");
    pillar.write("pillar.yml", "greeting: hi\n");
    pillar.commit("pillar");
    let out = setup.git(
        "bob",
        &pillar,
        &["push", &setup.url("shop/pillar"), "HEAD:master"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("needs the `config` right on `shop`"),
        "{}",
        text(&out)
    );

    // eve has no right on shop: no push, no fetch, no status, and shop is not named as existing.
    let out = setup.git("eve", &app, &["push", &setup.url("shop"), "HEAD:master"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("`eve` has no project `shop`"),
        "{}",
        text(&out)
    );
    let out = setup.git("eve", &app, &["ls-remote", &setup.url("shop")]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = setup.ssh("eve", &[], Some("kiln status shop"), "");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("error: refused: `eve` has no project `shop`"),
        "{}",
        text(&out)
    );
    // bob may deploy but not operate.
    let out = setup.ssh("bob", &[], Some("kiln rollback shop"), "");
    assert!(
        text(&out).contains("needs the `operate` right on `shop`"),
        "{}",
        text(&out)
    );
    let out = setup.ssh("bob", &[], Some("kiln access list"), "");
    assert!(
        text(&out).contains("needs node-wide admin rights"),
        "{}",
        text(&out)
    );
    assert_eq!(project.branch_tip("master"), None);
    assert!(project.releases().is_empty());
}

#[test]
fn injection_attempts_are_refused_and_nothing_runs() {
    let Some((setup, app)) = shop() else { return };
    let marker = setup.node.dir.path().join("marker");
    let m = marker.display().to_string();
    let root = setup.node.root.display().to_string();
    let attempts = [
        format!("kiln status shop; touch {m}"),
        format!("kiln status shop && touch {m}"),
        format!("kiln status $(touch {m})"),
        format!("kiln status `touch {m}`"),
        format!("kiln status shop\ntouch {m}"),
        format!("git-upload-pack 'shop'; touch {m}"),
        format!("touch {m}"),
        "git-upload-pack '../blog'".to_string(),
        format!("git-upload-pack '{root}/shop/../blog/git/project.git'"),
        "git-upload-pack '/etc'".to_string(),
        format!("git-upload-pack '{}'", setup.node.dir.path().display()),
        "git-upload-pack 'blog'".to_string(),
        format!(
            "kiln --root {} status shop",
            setup.node.dir.path().display()
        ),
        "kiln hook post-receive shop project".to_string(),
    ];
    for attempt in &attempts {
        let out = setup.ssh("bob", &[], Some(attempt), "");
        assert!(!out.status.success(), "{attempt:?}: {}", text(&out));
        assert!(
            text(&out).contains("error: refused: "),
            "{attempt:?}: {}",
            text(&out)
        );
    }
    // A ref name with shell metacharacters is refused by pre-receive; the branch does not move.
    let refname = "HEAD:refs/heads/x;touch${IFS}pwned$(touch${IFS}pwned)".to_string();
    let out = setup.git("bob", &app, &["push", &setup.url("shop"), &refname]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("may only hold letters, digits"),
        "{}",
        text(&out)
    );
    assert!(!marker.exists(), "something ran a shell");
    let repo = setup.node.project("shop").repo();
    assert!(!repo.join("pwned").exists() && !setup.node.root.join("pwned").exists());
    assert!(setup.node.project("shop").releases().is_empty());
}

#[test]
fn pty_and_forwarding_are_refused_without_operate() {
    let Some((setup, _app)) = shop() else { return };
    let out = setup.ssh("bob", &["-tt"], Some("kiln status shop"), "");
    assert!(
        text(&out).contains("PTY allocation request failed"),
        "{}",
        text(&out)
    );
    let out = setup.ssh(
        "bob",
        &["-W", &format!("127.0.0.1:{}", setup.port)],
        None,
        "",
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("stdio forwarding failed"),
        "{}",
        text(&out)
    );
    let out = setup.ssh(
        "bob",
        &["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"],
        Some("kiln status shop"),
        "",
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("forwarding failed"), "{}", text(&out));
    // No command and no operate right: a note of bob's projects, no shell.
    let out = setup.ssh("bob", &[], None, "echo SHELL-RAN\n");
    assert!(!text(&out).contains("SHELL-RAN"), "{}", text(&out));
    assert!(
        text(&out).contains("your projects: shop (deploy)"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_operator_gets_a_shell_and_can_roll_back() {
    let Some((setup, app)) = shop() else { return };
    for content in ["one\n", "two\n"] {
        app.write("index.html", content);
        app.commit(content);
        let out = setup.git("ann", &app, &["push", &setup.url("shop"), "HEAD:master"]);
        assert!(text(&out).contains("-----> deployed"), "{}", text(&out));
    }
    let project = setup.node.project("shop");
    assert_eq!(
        fs::read_to_string(project.run().join("index.html")).unwrap(),
        "two\n"
    );
    let out = setup.ssh("ann", &[], None, "pwd\n\"$KILN\" rollback shop\n");
    assert!(out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("kiln: shell for ann"), "{all}");
    assert!(all.contains(&project.base.display().to_string()), "{all}");
    assert_eq!(
        fs::read_to_string(project.run().join("index.html")).unwrap(),
        "one\n"
    );
    let status = setup.ok(&["status", "shop"]);
    assert!(
        status.contains(&format!(
            "shell:       ann ({}) at ",
            setup.fingerprint("ann")
        )),
        "{status}"
    );

    // From the shell, git called directly on another project's repo: pre-receive checks
    // ann's rights for the project the hook belongs to (blog: none) and refuses.
    let blog = setup.node.project("blog");
    let script = format!(
        "git --git-dir={} push {} master 2>&1\n",
        project.repo().display(),
        blog.repo().display()
    );
    let out = setup.ssh("ann", &[], None, &script);
    assert!(
        text(&out).contains("refused: `ann` may not push refs/heads/master of `blog`"),
        "{}",
        text(&out)
    );
}

#[test]
fn access_sync_leaves_foreign_lines_intact() {
    let Some((setup, _app)) = shop() else { return };
    let text = fs::read_to_string(&setup.authorized_keys).unwrap();
    assert!(
        text.starts_with(
            "# someone else's\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7s foreign@host\n# kiln: begin"
        ),
        "{text}"
    );
    let mut edited = text.clone();
    edited.push_str("ssh-rsa AAAAB3NzaC1yc2E after@host\n");
    fs::write(&setup.authorized_keys, &edited).unwrap();
    setup.ok(&["access", "revoke", "bob", "shop", "deploy"]);
    let after = fs::read_to_string(&setup.authorized_keys).unwrap();
    assert!(
        after.starts_with(
            "# someone else's\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7s foreign@host\n"
        ),
        "{after}"
    );
    assert!(
        after.ends_with("# kiln: end\nssh-rsa AAAAB3NzaC1yc2E after@host\n"),
        "{after}"
    );
    assert_eq!(after.matches("restrict").count(), 3, "{after}");
    assert!(after.contains("restrict,pty,command="), "{after}");
    let list = setup.ok(&["access", "list", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(value["users"]["bob"]["projects"], serde_json::json!({}));
    assert_eq!(
        value["users"]["ann"]["projects"]["shop"],
        serde_json::json!(["deploy", "operate"])
    );
}

#[test]
fn final_mode_pulls_through_the_forced_command_with_a_deploy_only_key() {
    let Some((setup, app)) = shop() else { return };
    let out = setup.git("ann", &app, &["push", &setup.url("shop"), "HEAD:master"]);
    assert!(text(&out).contains("-----> deployed"), "{}", text(&out));
    // Production runs as root on its own node; it reaches staging as bob (deploy on shop).
    let production = setup.node.sibling("production");
    let source = format!(
        "ssh://{NODE_USER}@127.0.0.1:{}{}/shop",
        setup.port,
        setup.node.root.display()
    );
    let prod = production.init_with("shop", &["--mode", "final", "--source", &source]);
    let mut push = Command::new("git");
    push.current_dir(&app.dir)
        .args(["push", "-f"])
        .arg(prod.repo())
        .arg("HEAD:master")
        .env("KILN_SSH", setup.wrapper("bob"));
    let out = push.output().unwrap();
    assert!(text(&out).contains("-----> deployed"), "{}", text(&out));
    assert_eq!(
        fs::read_to_string(prod.run().join("index.html")).unwrap(),
        "one\n"
    );

    // eve's key (no right on staging's shop) cannot pull.
    app.write("index.html", "two\n");
    app.commit("two");
    let out = setup.git("ann", &app, &["push", &setup.url("shop"), "HEAD:master"]);
    assert!(text(&out).contains("-----> deployed"), "{}", text(&out));
    let out = push.env("KILN_SSH", setup.wrapper("eve")).output().unwrap();
    assert!(!text(&out).contains("-----> deployed"), "{}", text(&out));
    assert!(
        text(&out).contains("has no project `shop`"),
        "{}",
        text(&out)
    );
}
