//! Final mode end to end: a staging node (cooking) bakes releases from real pushes; a
//! production node (final) deploys the same commits by pulling exactly those tarballs over a
//! directory, HTTP or SSH source, never building, and refuses anything that does not verify,
//! or that the unpacker rejects, without changing run/, data/, the release log or releases/.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::Digest;

use common::{
    App, Before, HttpServer, KILN, Node, Project, assert_same, fingerprint, last_remote_line, text,
};

const PROJECT: &str = "shop";

/// The build command leaves a marker in the node root: it must exist on staging only.
const RECIPE: &str = "stages:
  build:
    - touch \"$KILN_ROOT/build-ran\"
    - mkdir -p empty/dir
    - echo generated > generated.txt
    - chmod 0640 private.txt
";

fn app(node: &Node) -> App {
    let app = node.app(PROJECT);
    app.write("kiln.yml", RECIPE)
        .write("index.html", "<h1>shop</h1>\n")
        .write("private.txt", "not for everyone\n")
        .write("bin/run.sh", "#!/bin/sh\necho run\n");
    fs::set_permissions(
        app.dir.join("bin/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../index.html", app.dir.join("bin/page")).unwrap();
    app
}

/// A cooking node in a fresh temp dir (where the production nodes of the test go too).
fn staging(signed: bool) -> (Project, Option<String>) {
    let node = Node::new();
    let project = node.init(PROJECT, "cooking");
    let key = signed.then(|| node.ok(&["key", "generate"]).trim().to_string());
    (project, key)
}

fn production(staging: &Project, name: &str, source: &str, trusted_key: Option<&str>) -> Project {
    let node = staging.node.sibling(name);
    let project = node.init_with(PROJECT, &["--mode", "final", "--source", source]);
    if let Some(key) = trusted_key {
        project.add_setting(&format!("trusted_key: {key}"));
    }
    project
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// What production must show after deploying `commit` from `staging`.
fn assert_deployed_like_staging(production: &Project, staging: &Project, commit: &str) -> String {
    let release = staging.offered_release(commit);
    assert_same(
        &common::tree_fingerprint(&staging.run()),
        &common::tree_fingerprint(&production.run()),
        "run/ of staging and production",
    );
    assert!(
        staging.node.root.join("build-ran").exists(),
        "staging built"
    );
    assert!(
        !production.node.root.join("build-ran").exists(),
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
    let (staging, _) = staging(false);
    let app = app(&staging.node);
    let commit = app.commit("one");
    app.deploy(&staging);

    // Both forms of a directory source: the project dir and its releases/.
    for (name, source) in [
        ("production-a", staging.base.clone()),
        ("production-b", staging.releases_dir()),
    ] {
        let production = production(&staging, name, path_str(&source), None);
        let output = app.deploy(&production);
        assert!(output.contains("signature not checked"), "{output}");
        assert_deployed_like_staging(&production, &staging, &commit);
        let run = production.run();
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
    let (staging, key) = staging(true);
    let key = key.unwrap();
    assert!(key.starts_with("ed25519:"), "{key}");
    let app = app(&staging.node);
    let commit = app.commit("one");
    app.deploy(&staging);
    let first = staging.offered_release(&commit);
    // A second bake of the same commit (a forced redeploy): production must take the newest.
    staging.node.ok(&["deploy", PROJECT, "--force"]);
    let newest = staging.offered_release(&commit);
    assert_ne!(first, newest);

    let server = HttpServer::serve(staging.releases_dir());
    let production = production(&staging, "production", &server.url(), Some(&key));
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

/// Regression: a commit whose release staging had rolled back from was refused with `push it
/// to staging first`, though it had been pushed there: the line now says which releases
/// staging offers, and taken live again on staging the release is offered again.
#[test]
fn regression_a_release_staging_rolled_back_is_not_offered_and_the_refusal_says_why() {
    let (staging, _) = staging(false);
    let app = app(&staging.node);
    app.commit("one");
    app.deploy(&staging);
    app.write("index.html", "two\n");
    let second = app.commit("two");
    app.deploy(&staging);
    let rolled_back = staging.offered_release(&second);
    staging.node.ok(&["rollback", PROJECT]);

    let production = production(&staging, "production", path_str(&staging.base), None);
    let (ok, output) = app.push(&production);
    assert!(!ok || !output.contains("-----> deployed"), "{output}");
    assert!(
        last_remote_line(&output).contains(&format!(
            "no release of {second} at {}; push it to staging first (staging offers its good releases, not those that failed or that it rolled back)",
            staging.base.display()
        )),
        "{output}"
    );
    assert_eq!(production.current(), None);

    staging.node.ok(&["rollback", PROJECT, &rolled_back]);
    staging.node.ok(&["deploy", PROJECT]);
    let out = production.node.ok(&["deploy", PROJECT]);
    assert!(
        out.contains(&format!("release {rolled_back} of {}", &second[..7])),
        "{out}"
    );
    assert!(out.contains("-----> deployed"), "{out}");
    assert_same(
        &common::tree_fingerprint(&staging.run()),
        &common::tree_fingerprint(&production.run()),
        "run/ of staging and production",
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
    /// A field this kiln does not know, as a newer staging's manifest has.
    NewerManifest,
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

/// Regression: a production node running an older kiln refused a newer staging's manifest
/// (one with `buildpacks` or `process_types`) with serde's bare `unknown field`. It still
/// refuses and changes nothing, but names the field and says to upgrade this node first.
#[test]
fn regression_a_manifest_from_a_newer_kiln_is_refused_naming_the_field_and_the_upgrade() {
    refusal(
        Spoil::NewerManifest,
        false,
        "release {release} refused: its manifest was made by a newer kiln: it has the field `attestation` (manifest format 1), which this kiln does not know; upgrade kiln on this node first (upgrade production before staging)",
    );
}

/// What a refused deploy must leave as it was: run/, data/, the release log's records,
/// releases/ (no refused or half-pulled files) and deploy/ (no refused tree).
struct Untouched {
    trees: Before,
    records: Vec<serde_json::Value>,
    releases: Vec<String>,
    deploy: Vec<String>,
}

impl Untouched {
    fn take(project: &Project) -> Untouched {
        Untouched {
            trees: Before::take(project),
            records: records(project),
            releases: project.release_files(),
            deploy: project.names_in("deploy"),
        }
    }

    /// Checks `project` against this snapshot after one failed deploy of `commit`.
    fn check(&self, project: &Project, commit: &str, what: &str) {
        self.trees.assert_unchanged(project, what);
        assert_eq!(project.release_files(), self.releases, "{what}: releases/");
        assert_eq!(project.names_in("deploy"), self.deploy, "{what}: deploy/");
        let after = records(project);
        assert_eq!(
            after.len(),
            self.records.len() + 1,
            "{what}: one new record"
        );
        assert_eq!(after[..self.records.len()], self.records[..], "{what}");
        let failed = &after[self.records.len()];
        assert_eq!(
            (failed["status"].as_str(), failed["commit"].as_str()),
            (Some("failed"), Some(commit)),
            "{what}: {failed}"
        );
    }
}

fn records(project: &Project) -> Vec<serde_json::Value> {
    project.release_log()["records"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn refusal(spoil: Spoil, signed: bool, expected: &str) {
    let (staging, key) = staging(signed);
    let app = app(&staging.node);
    let first = app.commit("one");
    app.deploy(&staging);
    let source = staging.base.clone();
    let production = production(&staging, "production", path_str(&source), key.as_deref());
    app.deploy(&production);
    fs::create_dir_all(production.data().join("uploads")).unwrap();
    fs::write(production.data().join("uploads/a.txt"), "user data\n").unwrap();

    app.write("index.html", "<h1>shop, second edition</h1>\n");
    let second = app.commit("two");
    if !matches!(spoil, Spoil::NotBaked) {
        app.deploy(&staging);
    }
    // Production gets the commit without deploying it (only master deploys).
    app.push_next(&production);

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
        Spoil::NewerManifest => {
            let mut manifest: serde_json::Value =
                serde_json::from_slice(&fs::read(file(".json")).unwrap()).unwrap();
            manifest["attestation"] = "in-toto".into();
            fs::write(file(".json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        }
    }

    let before = Untouched::take(&production);
    let output = production.node.kiln(&["deploy", PROJECT, "--rev", &second]);
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
    before.check(&production, &second, &format!("{spoil:?}"));
}

/// One entry of a hand-made archive. Its header is written byte by byte, so nothing (not even
/// the tar crate's own path checks) cleans it up before production's unpacker sees it.
struct Raw {
    path: Vec<u8>,
    kind: tar::EntryType,
    link: Vec<u8>,
    data: &'static [u8],
}

impl Raw {
    fn file(path: impl AsRef<[u8]>, data: &'static [u8]) -> Raw {
        Raw::special(path, tar::EntryType::Regular, "").with_data(data)
    }

    fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Raw {
        Raw::special(path, tar::EntryType::Symlink, target)
    }

    fn special(path: impl AsRef<[u8]>, kind: tar::EntryType, link: impl AsRef<[u8]>) -> Raw {
        Raw {
            path: path.as_ref().to_vec(),
            kind,
            link: link.as_ref().to_vec(),
            data: b"",
        }
    }

    fn with_data(self, data: &'static [u8]) -> Raw {
        Raw { data, ..self }
    }
}

/// `entries` as a `.tar.zst`, written as a careless or hostile baker would.
fn hostile_tarball(entries: &[Raw]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(entry.kind);
        header.set_size(entry.data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        if entry.kind == tar::EntryType::Char {
            // /dev/null's numbers.
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        let old = header.as_old_mut();
        for (field, bytes) in [
            (&mut old.name, &entry.path),
            (&mut old.linkname, &entry.link),
        ] {
            assert!(
                bytes.len() <= field.len(),
                "too long for a tar header: {bytes:?}"
            );
            field[..bytes.len()].copy_from_slice(bytes);
        }
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    zstd::encode_all(builder.into_inner().unwrap().as_slice(), 3).unwrap()
}

/// One class of hostile archive, and what its refusal must say.
struct Hostile {
    class: &'static str,
    entries: Vec<Raw>,
    /// The entry the error must name, and the reason it must give.
    entry: String,
    reason: String,
    /// Where following the archive would have written outside the release.
    planted: Vec<PathBuf>,
}

fn hostile_cases(outside: &Path, production: &Project) -> Vec<Hostile> {
    let at = |path: &Path| path.to_str().unwrap().to_string();
    let page = || Raw::file("index.html", b"<h1>hostile</h1>\n");
    // From deploy/<release>/ (or the private dir it is unpacked in, next to it), four levels
    // up is the temp dir that holds the nodes and `outside`.
    let dotdot = "../../../../outside/dotdot.txt";
    let absolute = at(&outside.join("absolute.txt"));
    let data = at(&production.data());
    let outside_dir = at(outside);
    let victim = at(&outside.join("victim.txt"));
    let node_key = at(&production.node.root.join(".node-key"));
    vec![
        Hostile {
            class: "`..` path",
            entries: vec![page(), Raw::file(dotdot, b"escaped\n")],
            entry: dotdot.into(),
            reason: "has a `..` component".into(),
            planted: vec![outside.join("dotdot.txt")],
        },
        Hostile {
            class: "absolute path",
            entries: vec![page(), Raw::file(&absolute, b"escaped\n")],
            entry: absolute.clone(),
            reason: "has an absolute path".into(),
            planted: vec![outside.join("absolute.txt")],
        },
        Hostile {
            class: "symlink to an outside dir, written through",
            entries: vec![
                page(),
                Raw::symlink("out", &outside_dir),
                Raw::file("out/through.txt", b"escaped\n"),
            ],
            entry: "out".into(),
            reason: format!(
                "is a symlink to `{outside_dir}`, which leaves the release for a path outside the allowed link roots"
            ),
            planted: vec![outside.join("through.txt")],
        },
        // Never into the node root, whatever node.yml allows: other projects and the key.
        Hostile {
            class: "symlink into the node root",
            entries: vec![page(), Raw::symlink("key", &node_key)],
            entry: "key".into(),
            reason: format!("is a symlink to `{node_key}`, which leads into the node root"),
            planted: vec![],
        },
        // Links into data/ are allowed (apps keep uploads there); writing through them is not.
        Hostile {
            class: "symlink into data/, written through",
            entries: vec![
                page(),
                Raw::symlink("store", &data),
                Raw::file("store/planted.txt", b"planted\n"),
            ],
            entry: "store/planted.txt".into(),
            reason: "would be written through the symlink `store`".into(),
            planted: vec![production.data().join("planted.txt")],
        },
        Hostile {
            class: "symlink whose target escapes",
            entries: vec![
                page(),
                Raw::symlink("up", "../../.."),
                Raw::file("up/escaped.txt", b"escaped\n"),
            ],
            entry: "up".into(),
            reason: "is a symlink to `../../..`, which leaves the release".into(),
            planted: vec![production.node.root.join("escaped.txt")],
        },
        Hostile {
            class: "hard link",
            entries: vec![page(), Raw::special("hard", tar::EntryType::Link, &victim)],
            entry: "hard".into(),
            reason: "is a hard link, which kiln never bakes".into(),
            planted: vec![],
        },
        Hostile {
            class: "character device",
            entries: vec![page(), Raw::special("null", tar::EntryType::Char, "")],
            entry: "null".into(),
            reason: "is a character device; only files, directories and symlinks are allowed"
                .into(),
            planted: vec![],
        },
        Hostile {
            class: "fifo",
            entries: vec![page(), Raw::special("pipe", tar::EntryType::Fifo, "")],
            entry: "pipe".into(),
            reason: "is a fifo; only files, directories and symlinks are allowed".into(),
            planted: vec![],
        },
        Hostile {
            class: "duplicate entry",
            entries: vec![page(), Raw::file("index.html", b"<h1>second</h1>\n")],
            entry: "index.html".into(),
            reason: "appears twice".into(),
            planted: vec![],
        },
    ]
}

/// The unpacker's refusals, end to end: a final-mode node whose directory source holds
/// hand-made archives (checksums right, so only the unpacker can refuse them) fails each
/// deploy with the release and the reason named, and changes nothing inside or outside.
#[test]
fn hostile_archives_are_refused_by_a_final_deploy_and_change_nothing() {
    let (staging, _) = staging(false);
    let app = app(&staging.node);
    let good = app.commit("good");
    app.deploy(&staging);
    let release = staging.offered_release(&good);
    let tmp = staging.node.dir.path();
    // A directory source filled by hand: staging's good release first.
    let source = tmp.join("by-hand");
    fs::create_dir(&source).unwrap();
    for suffix in [".tar.zst", ".json"] {
        let name = format!("{release}{suffix}");
        fs::copy(staging.releases_dir().join(&name), source.join(&name)).unwrap();
    }
    let production = production(&staging, "production", path_str(&source), None);
    app.deploy(&production);
    fs::create_dir_all(production.data().join("uploads")).unwrap();
    fs::write(production.data().join("uploads/a.txt"), "user data\n").unwrap();
    let live = production.current();
    assert!(live.is_some());

    // Outside every node: where the escapes aim, with a file for the hard link to take.
    let outside = tmp.join("outside");
    fs::create_dir(&outside).unwrap();
    let victim = outside.join("victim.txt");
    fs::write(&victim, "not the release's\n").unwrap();
    let outside_before = fingerprint(&outside);

    for (i, case) in hostile_cases(&outside, &production).into_iter().enumerate() {
        let what = case.class;
        app.write("index.html", what);
        let commit = app.commit(what);
        app.push_next(&production);
        let id = format!("20300101T0000{i:02}Z-{i:08x}");
        let tarball = hostile_tarball(&case.entries);
        let files = case
            .entries
            .iter()
            .filter(|e| e.kind == tar::EntryType::Regular);
        let manifest = serde_json::json!({
            "format": 1,
            "release": id,
            "project": PROJECT,
            "commit": commit,
            "pillar_rev": null,
            "created": "2030-01-01T00:00:00Z",
            "sha256": hex::encode(sha2::Sha256::digest(&tarball)),
            "files": files.clone().count(),
            "bytes": files.map(|e| e.data.len()).sum::<usize>(),
            "tree_digest": format!("sha256:{}", "0".repeat(64)),
        });
        fs::write(source.join(format!("{id}.tar.zst")), &tarball).unwrap();
        fs::write(
            source.join(format!("{id}.json")),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();

        let before = Untouched::take(&production);
        let output = production.node.kiln(&["deploy", PROJECT, "--rev", &commit]);
        let all = text(&output);
        assert_eq!(output.status.code(), Some(1), "{what}\n{all}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Named by its file name: the temp dir it was checked in is gone by then.
        let named = format!("release {id} refused: release archive `{id}.tar.zst` refused");
        let reason = format!("refused: entry `{}` {}", case.entry, case.reason);
        assert!(
            stderr.starts_with("error: deploy FAILED at configure (")
                && stderr.contains(&named)
                && stderr.contains(&reason),
            "{what}: expected `{named}...{reason}`\n{all}"
        );
        before.check(&production, &commit, what);
        assert_eq!(production.current(), live, "{what}: the live release");
        assert_same(&outside_before, &fingerprint(&outside), what);
        assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1, "{what}: victim");
        for path in &case.planted {
            assert!(
                fs::symlink_metadata(path).is_err(),
                "{what}: `{}` was written",
                path.display()
            );
        }
    }
}

#[test]
fn an_exported_release_imported_by_hand_deploys_on_an_air_gapped_node() {
    let (staging, key) = staging(true);
    let tmp = staging.node.dir.path();
    let app = app(&staging.node);
    let commit = app.commit("one");
    app.deploy(&staging);
    let release = staging.offered_release(&commit);

    // Carry the release over by hand, through `kiln release export`.
    let usb = tmp.join("usb");
    fs::create_dir(&usb).unwrap();
    for (flag, suffix) in [
        (None, ".tar.zst"),
        (Some("--manifest"), ".json"),
        (Some("--signature"), ".json.sig"),
    ] {
        let mut args = vec!["release", "export", PROJECT, release.as_str()];
        args.extend(flag);
        let output = staging.node.kiln(&args);
        assert!(output.status.success(), "{}", text(&output));
        let name = format!("{release}{suffix}");
        assert_eq!(
            output.stdout,
            fs::read(staging.releases_dir().join(&name)).unwrap()
        );
        fs::write(usb.join(name), output.stdout).unwrap();
    }

    let nothing = tmp.join("unreachable-staging");
    fs::create_dir(&nothing).unwrap();
    let production = production(&staging, "production", path_str(&nothing), key.as_deref());
    let tarball = usb.join(format!("{release}.tar.zst"));
    let good = fs::read(&tarball).unwrap();

    // A damaged copy is refused and leaves releases/ as it was.
    let before = production.release_files();
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fs::write(&tarball, bad).unwrap();
    let output = production
        .node
        .kiln(&["release", "import", PROJECT, path_str(&tarball)]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("release {release} refused: the tarball's sha256")),
        "{stderr}"
    );
    assert_eq!(production.release_files(), before);

    fs::write(&tarball, good).unwrap();
    production
        .node
        .ok(&["release", "import", PROJECT, path_str(&tarball)]);
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
struct RootSshd {
    /// Stopped when this is dropped.
    _sshd: common::Sshd,
    port: u16,
    /// The `KILN_SSH` wrapper: ssh with the test key and no host key checks.
    wrapper: PathBuf,
}

impl RootSshd {
    fn start(dir: &Path) -> Result<RootSshd, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("sshd for tests needs root".into());
        }
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/ssh"] {
            if !Path::new(tool).exists() {
                return Err(format!("{tool} is not installed"));
            }
        }
        let dir = dir.join("ssh");
        fs::create_dir_all(&dir).unwrap();
        common::ssh_keygen(&dir.join("client_key"), "client_key");
        let bin_dir = Path::new(KILN).parent().unwrap();
        let public = fs::read_to_string(dir.join("client_key.pub")).unwrap();
        fs::write(
            dir.join("authorized_keys"),
            format!(
                "command=\"PATH={}:$PATH; eval \\\"$SSH_ORIGINAL_COMMAND\\\"\",no-pty {public}",
                bin_dir.display()
            ),
        )
        .unwrap();
        let sshd = common::Sshd::spawn(
            &dir,
            &format!(
                "PermitRootLogin prohibit-password\nAuthorizedKeysFile {}/authorized_keys\n",
                dir.display()
            ),
        )?;
        let port = sshd.port;
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
        let sshd = RootSshd {
            _sshd: sshd,
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
    let (staging, key) = staging(true);
    let sshd = match RootSshd::start(staging.node.dir.path()) {
        Ok(sshd) => sshd,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    let app = app(&staging.node);
    let commit = app.commit("one");
    app.deploy(&staging);
    let source = format!(
        "ssh://root@127.0.0.1:{}{}",
        sshd.port,
        staging.base.display()
    );
    let production = production(&staging, "production", &source, key.as_deref());
    let env = [("KILN_SSH", sshd.wrapper.as_path())];
    let output = app.deploy_env(&production, &env);
    assert!(output.contains("signature verified"), "{output}");
    assert_deployed_like_staging(&production, &staging, &commit);

    // A commit staging never baked is refused with the source named.
    app.write("index.html", "two\n");
    let second = app.commit("two");
    let (_, all) = app.push_env(&production, "HEAD:master", &env);
    assert!(
        all.contains(&format!(
            "no release of {second} at {source}; push it to staging first"
        )),
        "{all}"
    );
}

/// Debian's python, which the node's own packages provide (`.ci/run` installs it).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// An app whose build makes a virtualenv in `.venv` with `python` (no pip: no network).
fn venv_app(node: &Node, python: &str) -> App {
    let app = node.app(PROJECT);
    app.write(
        "kiln.yml",
        &format!(
            "stages:\n  build:\n    - touch \"$KILN_ROOT/build-ran\"\n    - {python} -m venv --without-pip .venv\n"
        ),
    )
    .write("app.py", "print('hello')\n");
    app
}

/// Runs the venv's python in `run` and returns what it printed: 1, then its sys.prefix.
fn venv_python(run: &Path) -> String {
    let out = Command::new(run.join(".venv/bin/python"))
        .args(["-c", "import sys; print(1); print(sys.prefix)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Where the venv `python3 -m venv` makes with `python` links its `bin/python3`.
fn venv_link_target(dir: &Path, python: &str) -> PathBuf {
    let venv = dir.join("probe-venv");
    let out = Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let target = fs::read_link(venv.join("bin/python3")).unwrap();
    fs::remove_dir_all(venv).unwrap();
    target
}

/// Issue 9: a standard venv has `.venv/bin/python3 -> /usr/bin/python3`; staging baked and
/// published it, and production refused the whole release for that link.
#[test]
fn regression_a_venv_of_the_system_python_goes_from_staging_to_production_and_runs() {
    if !Path::new(SYSTEM_PYTHON).exists() {
        eprintln!("skipped: {SYSTEM_PYTHON} is not installed");
        return;
    }
    let (staging, key) = staging(true);
    let app = venv_app(&staging.node, SYSTEM_PYTHON);
    let commit = app.commit("venv");
    app.deploy(&staging);
    let production = production(
        &staging,
        "production",
        path_str(&staging.base),
        key.as_deref(),
    );
    let output = app.deploy(&production);
    assert!(output.contains("signature verified"), "{output}");
    assert_deployed_like_staging(&production, &staging, &commit);
    let run = production.run();
    assert_eq!(
        fs::read_link(run.join(".venv/bin/python3")).unwrap(),
        Path::new(SYSTEM_PYTHON)
    );
    // The venv's own interpreter runs from production's run/: its prefix is run/.venv.
    let printed = venv_python(&run);
    assert_eq!(printed, format!("1\n{}\n", run.join(".venv").display()));
}

/// One way a release tree can be what production refuses, and how staging must say so.
struct Unpromotable {
    what: &'static str,
    /// node.yml of the staging node for the deploy that must fail.
    node_yml: &'static str,
    build: Vec<String>,
    /// The reason, after `release tree entry `<entry>` `.
    entry: &'static str,
    reason: String,
    hint: &'static str,
}

/// Issue 9: staging baked, signed and published a release that production refuses (here: a
/// link outside every link root, more entries than the limits allow); now the staging deploy
/// fails at bundle before anything is switched, names the entry in production's words, and
/// publishes nothing. A fifo used to fail only after the switch, when the bake reached it.
#[test]
fn regression_staging_refuses_what_production_would_refuse_and_publishes_nothing() {
    let elsewhere = "/kiln-test-elsewhere/bin/python3";
    let cases = [
        Unpromotable {
            what: "link outside the link roots",
            node_yml: "",
            build: vec![
                "mkdir -p .venv/bin".into(),
                format!("ln -s {elsewhere} .venv/bin/python3"),
            ],
            entry: ".venv/bin/python3",
            reason: format!(
                "is a symlink to `{elsewhere}`, which leaves the release for a path outside the allowed link roots"
            ),
            hint: "`allowed_link_roots`, kept the same on staging and production (now: `/usr`, `/bin`, `/sbin`, `/lib`, `/lib64`, `/opt`)",
        },
        Unpromotable {
            what: "more entries than the limits",
            // bin, bin/page, bin/run.sh, index.html, kiln.yml, then many/.
            node_yml: "limits:\n  archive_entries: 5\n",
            build: vec!["mkdir many".into(), "touch many/a many/b".into()],
            entry: "many",
            reason: "goes past the limit of 5 entries".into(),
            hint: "ship less, or raise node.yml's `limits` on staging and production",
        },
        Unpromotable {
            what: "fifo",
            node_yml: "",
            build: vec!["mkfifo app.fifo".into()],
            entry: "app.fifo",
            reason: "is a fifo; only files, directories and symlinks are allowed".into(),
            hint: "create it when the app starts instead",
        },
    ];
    for case in cases {
        staging_refuses(&case);
    }
}

fn staging_refuses(case: &Unpromotable) {
    let what = case.what;
    let (staging, _) = staging(true);
    let app = app(&staging.node);
    app.commit("one");
    app.deploy(&staging);
    let live = staging.current().unwrap();
    let mut recipe = String::from("stages:\n  build:\n");
    for line in &case.build {
        recipe.push_str(&format!("    - {line}\n"));
    }
    app.write("kiln.yml", &recipe);
    let second = app.commit("two");
    app.push_next(&staging);
    staging.node.write_node_yml(case.node_yml);
    let index = fs::read(staging.releases_dir().join("index.json")).unwrap();
    let before = Untouched::take(&staging);

    let output = staging.node.kiln(&["deploy", PROJECT, "--rev", &second]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{what}\n{all}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "error: deploy FAILED at bundle (release tree entry `{}` {}; production would refuse this release, so it is not baked: ",
        case.entry, case.reason
    );
    assert!(
        stderr.starts_with(&expected),
        "{what}: expected `{expected}`\n{all}"
    );
    assert!(
        stderr.contains(case.hint)
            && stderr
                .trim_end()
                .ends_with(&format!("rolled back to {live}")),
        "{what}\n{all}"
    );
    assert_eq!(stderr.lines().count(), 1, "{what}\n{all}");
    // Refused before the deploy stage: nothing was switched or restarted.
    assert!(
        !all.lines().any(|line| line.trim() == "-----> deploy"),
        "{what}: the deploy stage ran\n{all}"
    );
    // No tarball, manifest or signature, and the index staging serves is unchanged.
    before.check(&staging, &second, what);
    assert_eq!(
        fs::read(staging.releases_dir().join("index.json")).unwrap(),
        index,
        "{what}"
    );
    assert_eq!(staging.current().as_deref(), Some(live.as_str()), "{what}");
}

/// pyenv's python (first on PATH on the machine issue 9 came from) makes venvs linking into
/// a home directory, which no default link root covers: staging refuses them, until both
/// nodes' node.yml allow that directory; then production runs the venv.
#[test]
fn a_venv_of_a_pyenv_python_is_refused_at_staging_unless_both_nodes_allow_its_root() {
    let (staging, _) = staging(false);
    let target = venv_link_target(staging.node.dir.path(), "python3");
    let defaults = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt"];
    if defaults.iter().any(|root| target.starts_with(root)) {
        eprintln!(
            "skipped: `python3` on PATH makes venvs linking to {} (under a default link root)",
            target.display()
        );
        return;
    }
    let app = venv_app(&staging.node, "python3");
    let commit = app.commit("venv");
    app.push_next(&staging);
    let output = staging.node.kiln(&["deploy", PROJECT, "--rev", &commit]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    let expected = format!(
        "error: deploy FAILED at bundle (release tree entry `.venv/bin/python3` is a symlink to `{}`, which leaves the release for a path outside the allowed link roots;",
        target.display()
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).starts_with(&expected),
        "expected `{expected}`\n{all}"
    );
    assert!(
        !staging
            .release_files()
            .iter()
            .any(|f| f.ends_with(".tar.zst")),
        "{:?}",
        staging.release_files()
    );

    // The interpreter's installation dir (e.g. /root/.pyenv/versions/3.11.7), on both nodes.
    let root = target.parent().and_then(Path::parent).unwrap();
    let node_yml = format!(
        "allowed_link_roots: [{}, {}]\n",
        defaults.join(", "),
        root.display()
    );
    staging.node.write_node_yml(&node_yml);
    app.deploy(&staging);
    let production = production(&staging, "production", path_str(&staging.base), None);
    production.node.write_node_yml(&node_yml);
    app.deploy(&production);
    assert_deployed_like_staging(&production, &staging, &commit);
    let run = production.run();
    assert_eq!(
        venv_python(&run),
        format!("1\n{}\n", run.join(".venv").display())
    );
}

/// Releases baked before `kiln key generate` are signed after the fact, without rebuilding,
/// and a production node that trusts the key then pulls and verifies them. A release that
/// is not there, or whose tarball no longer matches its manifest, is refused and nothing is
/// signed.
#[test]
fn release_sign_signs_releases_baked_before_the_key_and_production_verifies_them() {
    let (staging, _) = staging(false);
    let app = app(&staging.node);
    let first = app.commit("one");
    app.deploy(&staging);
    app.write("index.html", "<h1>shop, second edition</h1>\n");
    let second = app.commit("two");
    app.deploy(&staging);
    let (one, two) = (
        staging.offered_release(&first),
        staging.offered_release(&second),
    );
    let sig = |id: &str| staging.releases_dir().join(format!("{id}.json.sig"));
    assert!(!sig(&one).exists() && !sig(&two).exists());

    // No key yet: nothing to sign with.
    let output = staging.node.kiln(&["release", "sign", PROJECT, "--all"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: this node has no signing key: create one with `kiln key generate`\n"
    );

    let key = staging.node.ok(&["key", "generate"]).trim().to_string();
    let manifests = |ids: &[&str]| -> Vec<Vec<u8>> {
        ids.iter()
            .map(|id| fs::read(staging.releases_dir().join(format!("{id}.json"))).unwrap())
            .collect()
    };
    let before = manifests(&[&one, &two]);
    let stdout = staging.node.ok(&["release", "sign", PROJECT, "--all"]);
    assert_eq!(stdout, format!("{one}: signed\n{two}: signed\n"));
    assert_eq!(manifests(&[&one, &two]), before, "manifests unchanged");
    let signature = fs::read(sig(&two)).unwrap();
    let stdout = staging.node.ok(&["release", "sign", PROJECT, &two]);
    assert_eq!(
        stdout,
        format!("{two}: already signed with this node's key\n")
    );
    assert_eq!(fs::read(sig(&two)).unwrap(), signature);
    // A signature that does not verify with this key (here: another release's) is replaced.
    let good = fs::read(sig(&one)).unwrap();
    fs::write(sig(&one), &signature).unwrap();
    let stdout = staging.node.ok(&["release", "sign", PROJECT, &one]);
    assert_eq!(
        stdout,
        format!("{one}: signed again (its old signature did not verify with this node's key)\n")
    );
    assert_eq!(
        fs::read(sig(&one)).unwrap(),
        good,
        "ed25519 signs deterministically"
    );

    let production = production(&staging, "production", path_str(&staging.base), Some(&key));
    let output = app.deploy(&production);
    assert!(output.contains("signature verified"), "{output}");
    assert_deployed_like_staging(&production, &staging, &second);

    // A release that is not there: exit 2, one line, nothing written.
    let files = staging.release_files();
    let missing = "20990101T000000Z-00000000";
    let output = staging.node.kiln(&["release", "sign", PROJECT, missing]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "error: no good release `{missing}` of project `{PROJECT}` to sign: `kiln release list {PROJECT}` shows the releases this node offers\n"
        )
    );
    assert_eq!(staging.release_files(), files);

    // A tarball that no longer matches its manifest is not vouched for, and with --all
    // neither is any other release.
    fs::remove_file(sig(&one)).unwrap();
    fs::remove_file(sig(&two)).unwrap();
    let tarball = staging.releases_dir().join(format!("{one}.tar.zst"));
    let mut bytes = fs::read(&tarball).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&tarball, bytes).unwrap();
    let files = staging.release_files();
    for which in [one.as_str(), "--all"] {
        let output = staging.node.kiln(&["release", "sign", PROJECT, which]);
        assert_eq!(output.status.code(), Some(2), "{which}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with(&format!(
                "error: release {one} refused: its tarball's sha256 is "
            )) && stderr.contains("; nothing was signed")
                && stderr.lines().count() == 1,
            "{which}: {stderr}"
        );
        assert_eq!(staging.release_files(), files, "{which}: nothing signed");
    }
}
