//! Final mode end to end: a staging node (cooking) bakes releases from real pushes; a
//! production node (final) deploys the same commits by pulling exactly those tarballs over a
//! directory, HTTP or SSH source, never building, and refuses anything that does not verify
//! without changing run/, data/, the release log or releases/.

#![allow(clippy::unwrap_used)]

mod final_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use final_support::{App, HttpServer, Node, PROJECT, text, tree, tree_with_mtimes};

/// The build command leaves a marker in the node root: it must exist on staging only.
const RECIPE: &str = "stages:
  build:
    - touch \"$KILN_ROOT/build-ran\"
    - mkdir -p empty/dir
    - echo generated > generated.txt
    - chmod 0640 private.txt
";

fn app(dir: &Path) -> App {
    let app = App::new(dir.join("app"));
    app.write("kiln.yml", RECIPE);
    app.write("index.html", "<h1>shop</h1>\n");
    app.write("private.txt", "not for everyone\n");
    app.write("bin/run.sh", "#!/bin/sh\necho run\n");
    fs::set_permissions(
        app.dir.join("bin/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../index.html", app.dir.join("bin/page")).unwrap();
    app
}

fn staging(dir: &Path, signed: bool) -> (Node, Option<String>) {
    let node = Node::new(dir.join("staging"));
    node.ok(&["init", PROJECT, "--mode", "cooking"]);
    let key = signed.then(|| node.ok(&["key", "generate"]).trim().to_string());
    (node, key)
}

fn production(dir: &Path, name: &str, source: &str, trusted_key: Option<&str>) -> Node {
    let node = Node::new(dir.join(name));
    node.ok(&["init", PROJECT, "--mode", "final", "--source", source]);
    if let Some(key) = trusted_key {
        node.add_setting(&format!("trusted_key: {key}"));
    }
    node
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// What production must show after deploying `commit` from `staging`.
fn assert_deployed_like_staging(production: &Node, staging: &Node, commit: &str) -> String {
    let release = staging.offered_release(commit);
    assert_eq!(
        tree(&production.run_dir()),
        tree(&staging.run_dir()),
        "run/ trees differ"
    );
    assert!(staging.root.join("build-ran").exists(), "staging built");
    assert!(
        !production.root.join("build-ran").exists(),
        "production ran a build command"
    );
    let log = production.last_log();
    assert!(log.contains("skipped: final mode never builds"), "{log}");
    assert!(!log.contains("$ touch"), "a build command ran:\n{log}");
    assert!(
        log.contains(&format!("release {release} of {}", &commit[..7])),
        "the log names the source release {release}:\n{log}"
    );
    // Staging's file names, and the manifest byte for byte (its signature covers those bytes).
    let manifest = format!("{release}.json");
    assert_eq!(
        fs::read(production.releases_dir().join(&manifest)).unwrap(),
        fs::read(staging.releases_dir().join(&manifest)).unwrap()
    );
    assert_eq!(
        fs::read(production.releases_dir().join(format!("{release}.tar.zst"))).unwrap(),
        fs::read(staging.releases_dir().join(format!("{release}.tar.zst"))).unwrap()
    );
    release
}

#[test]
fn directory_sources_deploy_the_tree_staging_baked_without_building() {
    let tmp = tempfile::tempdir().unwrap();
    let (staging, _) = staging(tmp.path(), false);
    let app = app(tmp.path());
    let commit = app.commit("one");
    app.deploy(&staging);

    // Both forms of a directory source: the project dir and its releases/.
    for (name, source) in [
        ("production-a", staging.project()),
        ("production-b", staging.releases_dir()),
    ] {
        let production = production(tmp.path(), name, path_str(&source), None);
        let output = app.deploy(&production);
        assert!(output.contains("signature not checked"), "{output}");
        assert_deployed_like_staging(&production, &staging, &commit);
        let run = production.run_dir();
        assert_eq!(
            fs::metadata(run.join("private.txt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        assert!(run.join("empty/dir").is_dir());
        assert_eq!(
            fs::read_link(run.join("bin/page")).unwrap(),
            PathBuf::from("../index.html")
        );
    }
}

#[test]
fn http_source_with_a_trusted_key_pulls_the_newest_release_of_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (staging, key) = staging(tmp.path(), true);
    let key = key.unwrap();
    assert!(key.starts_with("ed25519:"), "{key}");
    let app = app(tmp.path());
    let commit = app.commit("one");
    app.deploy(&staging);
    let first = staging.offered_release(&commit);
    // A second bake of the same commit (a redeploy): production must take the newest.
    staging.ok(&["deploy", PROJECT]);
    let newest = staging.offered_release(&commit);
    assert_ne!(first, newest);

    let server = HttpServer::serve(staging.releases_dir());
    let production = production(tmp.path(), "production", &server.url(), Some(&key));
    let output = app.deploy(&production);
    assert!(output.contains("signature verified"), "{output}");
    let pulled = assert_deployed_like_staging(&production, &staging, &commit);
    assert_eq!(pulled, newest);
    assert!(
        production
            .releases_dir()
            .join(format!("{newest}.json.sig"))
            .is_file()
    );
}

/// How a refusal test spoils staging's release of the second commit.
#[derive(Debug, Clone, Copy)]
enum Spoil {
    NotBaked,
    CorruptTarball,
    DropSignature,
    WrongSignature,
    WrongTreeDigest,
}

#[test]
fn refused_releases_change_nothing() {
    let cases = [
        (
            Spoil::NotBaked,
            true,
            "no release of {commit} at {source}; push it to staging first",
        ),
        (
            Spoil::CorruptTarball,
            true,
            "release {release} refused: the tarball's sha256 is ",
        ),
        (
            Spoil::DropSignature,
            true,
            "release {release} refused: it is not signed",
        ),
        (
            Spoil::WrongSignature,
            true,
            "release {release} refused: its signature does not verify with the trusted key",
        ),
        // Editing the manifest would break a signature first: check the digest unsigned.
        (
            Spoil::WrongTreeDigest,
            false,
            "release {release} refused: the unpacked tree's digest is ",
        ),
    ];
    for (spoil, signed, expected) in cases {
        refusal(spoil, signed, expected);
    }
}

fn refusal(spoil: Spoil, signed: bool, expected: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (staging, key) = staging(tmp.path(), signed);
    let app = app(tmp.path());
    let first = app.commit("one");
    app.deploy(&staging);
    let source = staging.project();
    let production = production(tmp.path(), "production", path_str(&source), key.as_deref());
    app.deploy(&production);
    fs::create_dir_all(production.data_dir().join("uploads")).unwrap();
    fs::write(production.data_dir().join("uploads/a.txt"), "user data\n").unwrap();

    app.write("index.html", "<h1>shop, second edition</h1>\n");
    let second = app.commit("two");
    if !matches!(spoil, Spoil::NotBaked) {
        app.deploy(&staging);
    }
    // Production gets the commit without deploying it (only master deploys).
    let pushed = app.push(&production, "next");
    assert!(pushed.status.success(), "{}", text(&pushed));

    let release = if matches!(spoil, Spoil::NotBaked) {
        String::new()
    } else {
        staging.offered_release(&second)
    };
    let file = |suffix: &str| staging.releases_dir().join(format!("{release}{suffix}"));
    match spoil {
        Spoil::NotBaked => {}
        Spoil::CorruptTarball => {
            let mut bytes = fs::read(file(".tar.zst")).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            fs::write(file(".tar.zst"), bytes).unwrap();
        }
        Spoil::DropSignature => fs::remove_file(file(".json.sig")).unwrap(),
        Spoil::WrongSignature => {
            let other = staging.offered_release(&first);
            let sig = staging.releases_dir().join(format!("{other}.json.sig"));
            fs::copy(sig, file(".json.sig")).unwrap();
        }
        Spoil::WrongTreeDigest => {
            let mut manifest: serde_json::Value =
                serde_json::from_slice(&fs::read(file(".json")).unwrap()).unwrap();
            manifest["tree_digest"] = format!("sha256:{}", "0".repeat(64)).into();
            fs::write(file(".json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        }
    }

    let run_before = tree_with_mtimes(&production.run_dir());
    let data_before = tree_with_mtimes(&production.data_dir());
    let log_before = production.release_log();
    let files_before = production.release_files();

    let output = production.kiln(&["deploy", PROJECT, "--rev", &second]);
    let expected = expected
        .replace("{commit}", &second)
        .replace("{source}", path_str(&source))
        .replace("{release}", &release);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{spoil:?}\n{all}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: deploy FAILED at configure (") && stderr.contains(&expected),
        "{spoil:?}: expected `{expected}`\n{all}"
    );

    assert_eq!(
        tree_with_mtimes(&production.run_dir()),
        run_before,
        "{spoil:?}: run/"
    );
    assert_eq!(
        tree_with_mtimes(&production.data_dir()),
        data_before,
        "{spoil:?}: data/"
    );
    assert_eq!(
        production.release_files(),
        files_before,
        "{spoil:?}: releases/"
    );
    let log_after = production.release_log();
    assert_eq!(log_after[..log_before.len()], log_before[..], "{spoil:?}");
    let (failed, status, commit) = &log_after[log_before.len()];
    assert_eq!(
        (status.as_str(), commit.as_str()),
        ("failed", second.as_str())
    );
    assert!(
        !production.project().join("deploy").join(failed).exists(),
        "{spoil:?}: the refused tree is still in deploy/"
    );
}

#[test]
fn an_exported_release_imported_by_hand_deploys_on_an_air_gapped_node() {
    let tmp = tempfile::tempdir().unwrap();
    let (staging, key) = staging(tmp.path(), true);
    let app = app(tmp.path());
    let commit = app.commit("one");
    app.deploy(&staging);
    let release = staging.offered_release(&commit);

    // Carry the release over by hand, through `kiln release export`.
    let usb = tmp.path().join("usb");
    fs::create_dir(&usb).unwrap();
    for (flag, suffix) in [
        (None, ".tar.zst"),
        (Some("--manifest"), ".json"),
        (Some("--signature"), ".json.sig"),
    ] {
        let mut args = vec!["release", "export", PROJECT, release.as_str()];
        args.extend(flag);
        let output = staging.kiln(&args);
        assert!(output.status.success(), "{}", text(&output));
        let name = format!("{release}{suffix}");
        assert_eq!(
            output.stdout,
            fs::read(staging.releases_dir().join(&name)).unwrap()
        );
        fs::write(usb.join(name), output.stdout).unwrap();
    }

    let nothing = tmp.path().join("unreachable-staging");
    fs::create_dir(&nothing).unwrap();
    let production = production(tmp.path(), "production", path_str(&nothing), key.as_deref());
    let tarball = usb.join(format!("{release}.tar.zst"));
    let good = fs::read(&tarball).unwrap();

    // A damaged copy is refused and leaves releases/ as it was.
    let before = production.release_files();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fs::write(&tarball, bad).unwrap();
    let output = production.kiln(&["release", "import", PROJECT, path_str(&tarball)]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("release {release} refused: the tarball's sha256")),
        "{stderr}"
    );
    assert_eq!(production.release_files(), before);

    fs::write(&tarball, good).unwrap();
    production.ok(&["release", "import", PROJECT, path_str(&tarball)]);
    for suffix in [".tar.zst", ".json", ".json.sig"] {
        assert!(
            production
                .release_files()
                .contains(&format!("{release}{suffix}")),
            "{:?}",
            production.release_files()
        );
    }
    let output = app.deploy(&production);
    assert!(output.contains("from this node's releases/"), "{output}");
    assert_deployed_like_staging(&production, &staging, &commit);
}

/// An sshd of our own on 127.0.0.1, running as root with a throwaway key. Its forced command
/// puts the kiln under test first on PATH, so `ssh ... kiln --root ...` runs it.
struct Sshd {
    child: Child,
    port: u16,
    /// The `KILN_SSH` wrapper: ssh with the test key and no host key checks.
    wrapper: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn start(dir: &Path) -> Result<Sshd, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("sshd for tests needs root".into());
        }
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/ssh"] {
            if !Path::new(tool).exists() {
                return Err(format!("{tool} is not installed"));
            }
        }
        fs::create_dir_all("/run/sshd").map_err(|e| format!("cannot create /run/sshd: {e}"))?;
        let dir = dir.join("ssh");
        fs::create_dir_all(&dir).unwrap();
        for key in ["host_key", "client_key"] {
            let status = Command::new("/usr/bin/ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .map_err(|e| format!("ssh-keygen: {e}"))?;
            if !status.success() {
                return Err("ssh-keygen failed".into());
            }
        }
        let bin_dir = Path::new(final_support::kiln_bin()).parent().unwrap();
        let public = fs::read_to_string(dir.join("client_key.pub")).unwrap();
        fs::write(
            dir.join("authorized_keys"),
            format!(
                "command=\"PATH={}:$PATH; eval \\\"$SSH_ORIGINAL_COMMAND\\\"\",no-pty {public}",
                bin_dir.display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPermitRootLogin prohibit-password\n\
                 AuthorizedKeysFile {d}/authorized_keys\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start sshd: {e}"))?;
        let wrapper = dir.join("ssh.sh");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec /usr/bin/ssh -F /dev/null -i {}/client_key -o IdentitiesOnly=yes \
                 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \"$@\"\n",
                dir.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        let sshd = Sshd {
            child,
            port,
            wrapper,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = Command::new(&sshd.wrapper)
                .args([
                    "-o",
                    "BatchMode=yes",
                    "-p",
                    &port.to_string(),
                    "root@127.0.0.1",
                ])
                .arg("kiln --version")
                .output()
                .map_err(|e| format!("ssh: {e}"))?;
            if probe.status.success() {
                return Ok(sshd);
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                return Err(format!(
                    "cannot log in over ssh: {}\n{log}",
                    String::from_utf8_lossy(&probe.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn ssh_source_pulls_through_kiln_release_export() {
    let tmp = tempfile::tempdir().unwrap();
    let sshd = match Sshd::start(tmp.path()) {
        Ok(sshd) => sshd,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let (staging, key) = staging(tmp.path(), true);
    let app = app(tmp.path());
    let commit = app.commit("one");
    app.deploy(&staging);
    let source = format!(
        "ssh://root@127.0.0.1:{}{}",
        sshd.port,
        staging.project().display()
    );
    let production = production(tmp.path(), "production", &source, key.as_deref());
    let env = [("KILN_SSH", sshd.wrapper.as_path())];
    let output = app.deploy_env(&production, &env);
    assert!(output.contains("signature verified"), "{output}");
    assert_deployed_like_staging(&production, &staging, &commit);

    // A commit staging never baked is refused with the source named.
    app.write("index.html", "two\n");
    let second = app.commit("two");
    let output = app.push_env(&production, "master", &env);
    let all = text(&output);
    assert!(
        all.contains(&format!(
            "no release of {second} at {source}; push it to staging first"
        )),
        "{all}"
    );
}
