//! The S3 release store end to end, against a real S3-protocol server (moto) on 127.0.0.1: a
//! staging node publishes each good release (tarball, signature, manifest, index.json), a
//! final-mode node with `source: s3://...` pulls and deploys exactly those bytes, and anything
//! that does not verify — a tampered tarball, manifest or signature, a release that was never
//! published — is refused with one clear line, changing nothing.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/moto.rs"]
mod moto;

use std::fs;
use std::path::Path;

use common::{App, Before, Node, Project, assert_same, last_remote_line, text};
use moto::Moto;

const PROJECT: &str = "shop";
const BUCKET: &str = "releases";
const STORE: &str = "s3://releases/fleet/shop";
const PREFIX: &str = "fleet/shop";

const RECIPE: &str = "stages:
  build:
    - echo \"built from $KILN_COMMIT\" > built.txt
";

/// A signing staging node publishing to the store (its credentials in node.yml, the secret in
/// a file), and a production node pulling from it (its credentials in its environment, as
/// `push_env` passes them to the hooks).
struct Setup {
    moto: Moto,
    staging: Project,
    production: Project,
    app: App,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(Some(STORE), STORE)
    }

    /// Staging with `publish` in its project.yml (or none), production pulling from `source`.
    fn with(publish: Option<&str>, source: &str) -> Setup {
        let node = Node::new();
        let moto = Moto::start(node.dir.path());
        moto.create_bucket(BUCKET);
        let secret = node.dir.path().join("s3-secret");
        fs::write(&secret, format!("{}\n", moto::SECRET_KEY)).unwrap();
        node.write_node_yml(&format!(
            "s3:\n  endpoint: {}\n  access_key: {}\n  secret_key_file: {}\n",
            moto.endpoint(),
            moto::ACCESS_KEY,
            secret.display()
        ));
        let staging = node.init(PROJECT, "cooking");
        if let Some(publish) = publish {
            staging.add_setting(&format!("publish: {publish}"));
        }
        let key = node.ok(&["key", "generate"]).trim().to_string();
        let production = node
            .sibling("production")
            .init_with(PROJECT, &["--mode", "final", "--source", source]);
        production.add_setting(&format!("trusted_key: {key}"));
        let app = node.app(PROJECT);
        app.write("kiln.yml", RECIPE).write("index.html", "one\n");
        Setup {
            moto,
            staging,
            production,
            app,
        }
    }

    /// The environment production's kiln finds the store with.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.moto.endpoint()),
            ("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY.into()),
        ]
    }

    fn push_production(&self) -> (bool, String) {
        let env = self.env();
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, Path::new(v))).collect();
        self.app.push_env(&self.production, "HEAD:master", &env)
    }

    /// Production's run/ is staging's, entry for entry: the build of `commit`, never rebuilt.
    fn assert_production_runs_what_staging_built(&self, commit: &str) {
        assert_same(
            &common::tree_fingerprint(&self.staging.run()),
            &common::tree_fingerprint(&self.production.run()),
            "run/ of staging and production",
        );
        assert_eq!(
            fs::read_to_string(self.production.run().join("built.txt")).unwrap(),
            format!("built from {commit}\n")
        );
    }

    fn kiln_production(&self, args: &[&str]) -> std::process::Output {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.production.node.kiln_env(args, &env)
    }

    fn object(&self, name: &str) -> Option<Vec<u8>> {
        self.moto.get(BUCKET, &format!("{PREFIX}/{name}"))
    }

    fn index(&self) -> Vec<String> {
        let bytes = self.object("index.json").expect("index.json in the store");
        let index: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
        index
            .iter()
            .map(|m| m["release"].as_str().unwrap().to_string())
            .collect()
    }
}

/// run/, data/ and releases/ of production, and its live release.
struct Untouched {
    trees: Before,
    releases: Vec<String>,
    live: serde_json::Value,
}

impl Untouched {
    fn take(project: &Project) -> Untouched {
        Untouched {
            trees: Before::take(project),
            releases: project.release_files(),
            live: project.release_log()["current"].clone(),
        }
    }

    fn assert_unchanged(&self, project: &Project, what: &str) {
        self.trees.assert_unchanged(project, what);
        assert_eq!(self.releases, project.release_files(), "{what}: releases/");
        assert_eq!(
            self.live,
            project.release_log()["current"],
            "{what}: live release"
        );
    }
}

#[test]
fn staging_publishes_each_good_release_and_production_pulls_it_from_the_store() {
    let setup = Setup::new();
    let commit = setup.app.commit("one");
    let output = setup.app.deploy(&setup.staging);
    let release = setup.staging.current().unwrap();
    assert!(
        output.contains(&format!("published {release} to {STORE}")),
        "{output}"
    );
    // The store holds staging's files byte for byte, and lists the release.
    for name in [
        format!("{release}.tar.zst"),
        format!("{release}.json"),
        format!("{release}.json.sig"),
    ] {
        assert_eq!(
            setup
                .object(&name)
                .unwrap_or_else(|| panic!("{name} in the store")),
            fs::read(setup.staging.releases_dir().join(&name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(setup.index(), std::slice::from_ref(&release));
    let status = setup.staging.node.ok(&["status", PROJECT]);
    assert!(
        status.contains(&format!("publish:     {release} to {STORE}")),
        "{status}"
    );

    // Publishing again uploads nothing.
    let again = setup.staging.node.ok(&["release", "publish", PROJECT]);
    assert_eq!(again.trim(), format!("{release}: already in {STORE}"));

    let (ok, output) = setup.push_production();
    assert!(ok && output.contains("-----> deployed"), "{output}");
    assert!(
        output.contains(&format!("pulling release {release} from {STORE}"))
            && output.contains("signature verified"),
        "{output}"
    );
    setup.assert_production_runs_what_staging_built(&commit);

    // A second release joins the index; the first stays listed.
    setup.app.write("index.html", "two\n");
    setup.app.commit("two");
    setup.app.deploy(&setup.staging);
    let second = setup.staging.current().unwrap();
    assert_eq!(setup.index(), [release, second]);
}

#[test]
fn tampered_objects_in_the_store_are_refused_and_change_nothing() {
    let setup = Setup::new();
    setup.app.commit("one");
    setup.app.deploy(&setup.staging);
    let (ok, output) = setup.push_production();
    assert!(ok, "{output}");
    setup.app.write("index.html", "two\n");
    let commit = setup.app.commit("two");
    setup.app.deploy(&setup.staging);
    let release = setup.staging.current().unwrap();
    setup.app.push_next(&setup.production);
    let before = Untouched::take(&setup.production);

    let tarball = format!("{release}.tar.zst");
    let manifest = format!("{release}.json");
    let good_tarball = setup.object(&tarball).unwrap();
    let good_manifest = setup.object(&manifest).unwrap();
    let mut bad_tarball = good_tarball.clone();
    let middle = bad_tarball.len() / 2;
    bad_tarball[middle] ^= 0x55;
    // A manifest edited to match the tampered tarball: only the signature can catch it.
    let bad_manifest = String::from_utf8(good_manifest.clone())
        .unwrap()
        .replace(
            &serde_json::from_slice::<serde_json::Value>(&good_manifest).unwrap()["sha256"]
                .as_str()
                .unwrap()
                .to_string(),
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bad_tarball)),
        )
        .into_bytes();
    let cases: [(&str, Vec<u8>, Vec<u8>, String); 2] = [
        (
            "tarball",
            bad_tarball.clone(),
            good_manifest.clone(),
            format!("release {release} refused: the tarball's sha256 is "),
        ),
        (
            "tarball and manifest",
            bad_tarball,
            bad_manifest,
            format!(
                "release {release} refused: its signature does not verify with the trusted key"
            ),
        ),
    ];
    for (what, tarball_bytes, manifest_bytes, expected) in cases {
        setup
            .moto
            .put(BUCKET, &format!("{PREFIX}/{tarball}"), &tarball_bytes);
        setup
            .moto
            .put(BUCKET, &format!("{PREFIX}/{manifest}"), &manifest_bytes);
        let out = setup.kiln_production(&["deploy", PROJECT, "--rev", &commit]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        let said = text(&out);
        let last = said
            .lines()
            .rfind(|l| l.starts_with("error:"))
            .unwrap_or("");
        assert!(last.contains(&expected), "{what}: {said}");
        before.assert_unchanged(&setup.production, what);
    }

    // Put right, the same release deploys.
    setup
        .moto
        .put(BUCKET, &format!("{PREFIX}/{tarball}"), &good_tarball);
    setup
        .moto
        .put(BUCKET, &format!("{PREFIX}/{manifest}"), &good_manifest);
    let out = setup.kiln_production(&["deploy", PROJECT, "--rev", &commit]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_release_missing_from_the_store_is_a_clear_error_and_changes_nothing() {
    let setup = Setup::new();
    setup.app.commit("one");
    setup.app.deploy(&setup.staging);
    let (ok, output) = setup.push_production();
    assert!(ok, "{output}");

    // A commit staging never baked.
    setup.app.write("index.html", "never on staging\n");
    let commit = setup.app.commit("not on staging");
    let before = Untouched::take(&setup.production);
    let (_, output) = setup.push_production();
    assert!(
        last_remote_line(&output).contains(&format!(
            "deploy FAILED at configure (no release of {commit} at {STORE}; push it to staging first ("
        )),
        "{output}"
    );
    before.assert_unchanged(&setup.production, "a missing release");

    // A store that does not exist, named by S3's own error.
    let yml = setup.production.path("project.yml");
    let text_yml = fs::read_to_string(&yml)
        .unwrap()
        .replace(STORE, "s3://no-such-bucket/shop");
    fs::write(&yml, text_yml).unwrap();
    let out = setup.kiln_production(&["deploy", PROJECT]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("S3 GET `s3://no-such-bucket/shop/index.json` answered 404 NoSuchBucket"),
        "{}",
        text(&out)
    );
    before.assert_unchanged(&setup.production, "a missing bucket");
}

#[test]
fn a_failed_publish_is_a_warning_and_status_shows_it_until_publish_works() {
    let setup = Setup::new();
    let yml = setup.staging.path("project.yml");
    let text_yml = fs::read_to_string(&yml)
        .unwrap()
        .replace(STORE, "s3://later/shop");
    fs::write(&yml, text_yml).unwrap();
    setup.app.commit("one");
    let output = setup.app.deploy(&setup.staging);
    let release = setup.staging.current().unwrap();
    assert!(
        output.contains("warning: could not publish to s3://later/shop: S3 GET")
            && output.contains("NoSuchBucket")
            && output.contains("retry with `kiln release publish shop`"),
        "{output}"
    );
    assert_eq!(
        setup.staging.releases(),
        [(release.clone(), "good".to_string())],
        "the deploy is good"
    );
    let status = setup.staging.node.ok(&["status", PROJECT]);
    assert!(
        status.contains("publish:     FAILED to s3://later/shop"),
        "{status}"
    );

    setup.moto.create_bucket("later");
    let out = setup.staging.node.ok(&["release", "publish", PROJECT]);
    assert_eq!(
        out.trim(),
        format!("{release}: uploaded to s3://later/shop")
    );
    let status = setup.staging.node.ok(&["status", PROJECT]);
    assert!(
        status.contains(&format!("publish:     {release} to s3://later/shop")),
        "{status}"
    );
    assert!(
        setup
            .moto
            .get("later", &format!("shop/{release}.tar.zst"))
            .is_some()
    );

    // A store that cannot be reached: one line naming the request, exit 2.
    let closed = common::free_port();
    fs::write(
        setup.staging.node.root.join("node.yml"),
        format!("s3:\n  endpoint: http://127.0.0.1:{closed}\n"),
    )
    .unwrap();
    let out = setup.staging.node.kiln(&["release", "publish", PROJECT]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.starts_with(
            "error: could not reach the S3 store for GET `s3://later/shop/index.json`: "
        ) && said.lines().count() == 1,
        "{said}"
    );
}

/// `kiln release publish <name> s3://bucket/prefix` with the store on the command line, for a
/// staging node whose project.yml has no `publish:`: nothing is uploaded by the deploy, the
/// command uploads the good releases there, and a production node whose `source:` is that
/// prefix pulls and deploys it.
#[test]
fn release_publish_to_an_explicit_url_serves_a_production_node_pulling_from_it() {
    const BY_HAND: &str = "s3://releases/by-hand/shop";
    let setup = Setup::with(None, BY_HAND);
    let commit = setup.app.commit("one");
    let output = setup.app.deploy(&setup.staging);
    let release = setup.staging.current().unwrap();
    assert!(!output.contains("published"), "{output}");
    assert_eq!(setup.moto.get(BUCKET, "by-hand/shop/index.json"), None);

    // Without a URL and without `publish:`, the command says where it needs one: exit 2.
    let out = setup.staging.node.kiln(&["release", "publish", PROJECT]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`kiln release publish shop s3://<bucket>/<prefix>`"),
        "{}",
        text(&out)
    );

    let out = setup
        .staging
        .node
        .ok(&["release", "publish", PROJECT, BY_HAND]);
    assert_eq!(out.trim(), format!("{release}: uploaded to {BY_HAND}"));
    for name in [
        format!("{release}.tar.zst"),
        format!("{release}.json"),
        format!("{release}.json.sig"),
    ] {
        assert_eq!(
            setup
                .moto
                .get(BUCKET, &format!("by-hand/shop/{name}"))
                .unwrap_or_else(|| panic!("{name} in the store")),
            fs::read(setup.staging.releases_dir().join(&name)).unwrap(),
            "{name}"
        );
    }
    assert_eq!(
        setup.object("index.json"),
        None,
        "nothing went to the other prefix"
    );

    let (ok, output) = setup.push_production();
    assert!(ok && output.contains("-----> deployed"), "{output}");
    assert!(
        output.contains(&format!("pulling release {release} from {BY_HAND}"))
            && output.contains("signature verified"),
        "{output}"
    );
    assert_eq!(
        fs::read(
            setup
                .production
                .releases_dir()
                .join(format!("{release}.tar.zst"))
        )
        .unwrap(),
        fs::read(
            setup
                .staging
                .releases_dir()
                .join(format!("{release}.tar.zst"))
        )
        .unwrap(),
        "staging's tarball, through the store"
    );
    setup.assert_production_runs_what_staging_built(&commit);
}
