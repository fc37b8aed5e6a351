//! Buildpacks end to end (README.md, "Buildpacks"): real pushes to throwaway nodes. kiln's own
//! buildpacks are detected in order or named in kiln.yml; third-party v2 buildpacks from a
//! directory, from the app, or from a git repo pinned to a commit; `export` chaining, ENV_DIR,
//! the build cache and `kiln cache clear`; a failing buildpack rolls back; and real Python and
//! Node apps with real dependencies from PyPI and npm build on staging, reuse the cache on the
//! next push, and run under kiln's supervisor, answering HTTP, on staging and on a production
//! node that never builds.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::processes::{answer, instance, ps, supervised_node, supervised_sibling};
use common::{App, Before, Node, Project, assert_same, fingerprint, last_remote_line};

/// Where the suite keeps what pip and npm download, so repeated runs are fast.
fn test_cache(tool: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-cache")
        .join(tool)
}

/// Points the download caches in the project's build cache (where kiln's buildpacks keep
/// them: `cache/python/pip`, `cache/nodejs/npm`, `yarn`, `pnpm`) at the suite's, so that a
/// second run of the suite downloads nothing, while the apps are pushed as a user pushes them,
/// without a kiln.yml. (The environment of `git push` does not reach a buildpack: kiln builds
/// with an environment of its own, PATH and HOME aside.)
fn share_download_caches(project: &Project) {
    for (buildpack, tool) in [
        ("python", "pip"),
        ("nodejs", "npm"),
        ("nodejs", "yarn"),
        ("nodejs", "pnpm"),
    ] {
        let dir = project.path("cache").join(buildpack);
        fs::create_dir_all(&dir).unwrap();
        let shared = test_cache(tool);
        fs::create_dir_all(&shared).unwrap();
        std::os::unix::fs::symlink(&shared, dir.join(tool)).unwrap();
    }
}

/// A buildpack directory written by the test: `bin/<name>` scripts (sh), executable.
fn buildpack(dir: &Path, scripts: &[(&str, &str)]) -> PathBuf {
    fs::create_dir_all(dir.join("bin")).unwrap();
    for (name, body) in scripts {
        let path = dir.join("bin").join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.to_path_buf()
}

fn buildpacks_json(tree: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(tree.join(".kiln/buildpacks.json")).unwrap()).unwrap()
}

fn names(json: &serde_json::Value) -> Vec<String> {
    json["buildpacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kilns_own_buildpacks_are_detected_in_order_and_nothing_detected_is_no_error() {
    let (node, _guard) = supervised_node();
    let project = node.init("site", "cooking");
    // What is detected is the point here, not running it (`./serve` does not exist).
    node.ok(&["ps", "scale", "site", "web=0"]);
    let app = node.app("site");

    app.write("README", "nothing to build\n");
    app.commit("plain");
    let output = app.deploy(&project);
    assert!(output.contains("no buildpack detected"), "{output}");
    assert!(!project.run().join(".kiln").exists());

    app.write("Procfile", "web: ./serve\n");
    app.commit("procfile");
    let output = app.deploy(&project);
    assert!(output.contains("-----> Procfile app detected"), "{output}");
    let json = buildpacks_json(&project.run());
    assert_eq!(names(&json), ["procfile"]);
    assert!(
        json["buildpacks"][0]["source"]
            .as_str()
            .unwrap()
            .starts_with("kiln:procfile@")
    );
    assert_eq!(json["default_process_types"], serde_json::json!({}));

    // static comes before procfile.
    app.write("public/index.html", "<h1>hi</h1>\n");
    app.commit("site");
    let first = project.current().unwrap();
    let output = app.deploy(&project);
    assert!(output.contains("-----> Static app detected"), "{output}");
    assert!(output.contains("-----> Static site in public/"), "{output}");
    let json = buildpacks_json(&project.run());
    assert_eq!(names(&json), ["static"]);
    assert_eq!(
        json["default_process_types"]["web"],
        "python3 -m http.server \"$PORT\" --bind 127.0.0.1 --directory public"
    );
    // A recipe without build commands exports unchanged files as hard links to the live
    // release; a buildpack must get copies of its own to write to.
    let second = project.current().unwrap();
    let inode = |release: &str| {
        fs::metadata(project.path("deploy").join(release).join("Procfile"))
            .unwrap()
            .ino()
    };
    assert_ne!(inode(&first), inode(&second));

    // `buildpacks: []` turns them off.
    app.write("kiln.yml", "buildpacks: []\n");
    app.commit("buildpacks off");
    let output = app.deploy(&project);
    assert!(!output.contains("app detected"), "{output}");
    assert!(!project.run().join(".kiln").exists());
}

/// kiln.yml names two buildpacks: one on the node, one inside the app. The first leaves an
/// `export` the second and the build commands see; both get ENV_DIR with the settings and a
/// cache kept across builds; the process types merge; ENV_DIR is gone afterwards.
#[test]
fn listed_buildpacks_run_in_order_with_exports_env_dir_and_their_own_cache() {
    let (node, _guard) = supervised_node();
    let project = node.init("shop", "cooking");
    // The test buildpacks propose process types that do not exist as programs.
    node.ok(&["ps", "scale", "shop", "web=0", "worker=0"]);
    let first = buildpack(
        &node.dir.path().join("bp-first"),
        &[
            ("detect", "echo First\n"),
            (
                "compile",
                r#"set -eu
echo "-----> First compiling"
echo "plain line from first"
echo "$3" > "$1/env-dir.txt"
ls "$3" > "$1/env-names.txt"
cat "$3/GREETING" > "$1/greeting.txt"
stat -c %a "$3" > "$1/env-mode.txt"
n=$(cat "$2/count" 2>/dev/null || echo 0); echo $((n + 1)) > "$2/count"; cp "$2/count" "$1/count.txt"
echo 'export FROM_FIRST="first was here"' > "$(dirname "$0")/../export"
"#,
            ),
            (
                "release",
                "printf -- '---\\ndefault_process_types:\\n  web: first-web\\n  worker: first-worker\\n'\n",
            ),
        ],
    );
    let app = node.app("shop");
    buildpack(
        &app.dir.join("vendor/second"),
        &[
            ("detect", "echo Second\n"),
            (
                "compile",
                "echo \"-----> Second sees FROM_FIRST=$FROM_FIRST\"\necho \"$FROM_FIRST\" > \"$1/second.txt\"\n",
            ),
            (
                "release",
                "printf -- '---\\ndefault_process_types:\\n  web: second-web\\n'\n",
            ),
        ],
    );
    app.write(
        "kiln.yml",
        &format!(
            "buildpacks: [{}, ./vendor/second]\ndefaults:\n  env:\n    GREETING: hello\nstages:\n  build:\n    - echo \"$FROM_FIRST\" > build-command.txt\n",
            first.display()
        ),
    );
    app.commit("two buildpacks");
    let output = app.deploy(&project);
    let at = |text: &str| {
        output
            .find(text)
            .unwrap_or_else(|| panic!("no `{text}` in:\n{output}"))
    };
    assert!(at("-----> First app detected") < at("-----> Second app detected"));
    assert!(at("-----> Second app detected") < at("-----> First compiling"));
    assert!(at("-----> First compiling") < at("-----> Second sees FROM_FIRST=first was here"));
    // Heroku's layout: headers at the left edge, plain lines indented.
    assert!(
        output.contains("remote:        plain line from first"),
        "{output}"
    );

    let run = project.run();
    let read = |name: &str| {
        fs::read_to_string(run.join(name))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("second.txt"), "first was here");
    assert_eq!(read("build-command.txt"), "first was here");
    assert_eq!(read("greeting.txt"), "hello");
    assert_eq!(read("env-mode.txt"), "700");
    assert!(read("env-names.txt").lines().any(|l| l == "GREETING"));
    assert!(
        !Path::new(&read("env-dir.txt")).exists(),
        "ENV_DIR is removed"
    );
    assert_eq!(read("count.txt"), "1");
    let json = buildpacks_json(&run);
    assert_eq!(names(&json), ["bp-first", "second"]);
    assert_eq!(json["buildpacks"][0]["source"], first.display().to_string());
    assert_eq!(json["buildpacks"][1]["source"], "./vendor/second");
    assert_eq!(
        json["default_process_types"],
        serde_json::json!({"web": "second-web", "worker": "first-worker"})
    );
    let release = project.current().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(project.path("releases").join(format!("{release}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["buildpacks"], json["buildpacks"]);
    let events = project.events(&release);
    let event = events
        .iter()
        .find(|event| event["event"] == "buildpacks")
        .expect("a buildpacks event");
    // Each program a buildpack ran is a command of the build stage, named by its label, and
    // its output lines name it (docs/events.md).
    let commands: Vec<&str> = events
        .iter()
        .filter(|event| event["event"] == "command_end")
        .map(|event| {
            assert_eq!(event["stage"], "build", "{event}");
            assert_eq!(event["outcome"], "ok", "{event}");
            assert_eq!(event["exit_code"], 0, "{event}");
            event["command"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        commands,
        [
            "bp-first bin/detect",
            "second bin/detect",
            "bp-first bin/compile",
            "bp-first export",
            "bp-first bin/release",
            "second bin/compile",
            "second bin/release",
            "echo \"$FROM_FIRST\" > build-command.txt",
        ]
    );
    let line = events
        .iter()
        .find(|event| event["event"] == "output" && event["line"] == "plain line from first")
        .expect("the compile's output line");
    assert_eq!(line["command"], "bp-first bin/compile", "{line}");
    assert_eq!(event["command"], serde_json::Value::Null, "{event}");
    assert_eq!(event["outcome"], "ok");
    assert_eq!(event["buildpacks"], json["buildpacks"]);
    assert_eq!(
        event["default_process_types"],
        json["default_process_types"]
    );
    // The cache is outside the release tree, and kept.
    assert!(project.path("cache/bp-first/count").is_file());
    assert!(!run.join("count").exists());
    app.write("app.txt", "v2\n");
    app.commit("second push");
    app.deploy(&project);
    assert_eq!(read("count.txt"), "2");

    // A settings-only redeploy (a pillar push) does not rebuild.
    let pillar = node.app("pillar");
    pillar.write("pillar.yml", "env:\n  GREETING: changed\n");
    pillar.commit("pillar");
    let out = pillar.git(&[
        "push",
        project.path("git/pillar.git").to_str().unwrap(),
        "HEAD:master",
    ]);
    let pushed = common::text(&out);
    assert!(out.status.success(), "{pushed}");
    assert!(pushed.contains("only the settings changed"), "{pushed}");
    assert!(!pushed.contains("app detected"), "{pushed}");
    assert_eq!(read("count.txt"), "2");

    let status = node.ok(&["status", "shop"]);
    assert!(
        status.contains(&format!(
            "buildpacks:  bp-first ({}), second (./vendor/second)",
            first.display()
        )),
        "{status}"
    );
    assert!(
        status.contains("build cache: bp-first 2 bytes, second 0 bytes"),
        "{status}"
    );

    // kiln cache clear: one buildpack's, an unknown one refused, then all.
    let cleared = node.ok(&["cache", "clear", "shop", "bp-first"]);
    assert!(
        cleared.contains("cleared the build cache of `shop` for buildpack `bp-first`"),
        "{cleared}"
    );
    assert!(!project.path("cache/bp-first").exists());
    let unknown = node.kiln(&["cache", "clear", "shop", "bp-first"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        common::text(&unknown)
            .contains("error: project `shop` has no build cache of buildpack `bp-first`"),
        "{}",
        common::text(&unknown)
    );
    app.write("app.txt", "v3\n");
    app.commit("after clearing");
    app.deploy(&project);
    assert_eq!(
        read("count.txt"),
        "1",
        "the build starts from an empty cache"
    );
    node.ok(&["cache", "clear", "shop"]);
    assert_eq!(
        fs::read_dir(project.path("cache")).unwrap().count(),
        0,
        "every buildpack's cache is gone"
    );
}

/// A git buildpack pinned to a commit is cloned once and keeps that commit even when its
/// branch moves; one without a pin refuses the push at kiln.yml's line and column.
#[test]
fn git_buildpacks_are_pinned_to_a_commit_and_cloned_once() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let bp = node.app("bp");
    buildpack(
        &bp.dir,
        &[
            ("detect", "echo Pinned\n"),
            (
                "compile",
                "echo \"-----> pinned v1\"\necho v1 > \"$1/bp-version.txt\"\n",
            ),
        ],
    );
    let v1 = bp.commit("v1");
    let url = format!("file://{}", bp.dir.display());

    let app = node.app("shop");
    app.write("kiln.yml", &format!("buildpacks: ['{url}#{v1}']\n"));
    app.commit("pinned");
    let output = app.deploy(&project);
    assert!(output.contains("fetching buildpack"), "{output}");
    assert!(output.contains("-----> pinned v1"), "{output}");
    let clone = node.root.join(format!(".kiln/buildpacks/git/app-bp-{v1}"));
    assert!(clone.join("bin/compile").is_file(), "{}", clone.display());
    assert!(!clone.join(".git").exists());

    buildpack(&bp.dir, &[("compile", "echo v2 > \"$1/bp-version.txt\"\n")]);
    bp.commit("v2 on the same branch");
    app.write("app.txt", "two\n");
    app.commit("again");
    let output = app.deploy(&project);
    assert!(
        !output.contains("fetching buildpack"),
        "cloned once:\n{output}"
    );
    assert_eq!(
        fs::read_to_string(project.run().join("bp-version.txt")).unwrap(),
        "v1\n"
    );

    let before = Before::take(&project);
    let tip = project.branch_tip("master");
    app.write("kiln.yml", &format!("buildpacks:\n  - python\n  - {url}\n"));
    app.commit("unpinned");
    let (ok, output) = app.push(&project);
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!(
            "kiln.yml:3:5: buildpack `{url}` is not pinned to a commit"
        )),
        "{output}"
    );
    assert_eq!(project.branch_tip("master"), tip, "the branch did not move");
    before.assert_unchanged(&project, "an unpinned buildpack");
}

/// A buildpack whose compile fails fails the build: its own last line of explanation ends the
/// push output, the deploy rolls back, run/ and data/ are exactly as before.
#[test]
fn a_failing_buildpack_fails_the_build_and_rolls_back() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let bp = buildpack(
        &node.dir.path().join("flaky"),
        &[
            ("detect", "echo Flaky\n"),
            (
                "compile",
                "if [ -f \"$1/break-me\" ]; then echo ' !     flaky: cannot build `break-me`' >&2; exit 3; fi\necho ok > \"$1/built.txt\"\n",
            ),
        ],
    );
    let app = node.app("shop");
    app.write("kiln.yml", &format!("buildpacks: [{}]\n", bp.display()));
    app.commit("good");
    app.deploy(&project);
    let live = project.current().unwrap();
    fs::write(project.data().join("db.txt"), "rows\n").unwrap();
    let before = Before::take(&project);

    app.write("break-me", "");
    app.commit("bad");
    let (_, output) = app.push(&project);
    assert_eq!(
        last_remote_line(&output),
        format!(
            "remote: -----> deploy FAILED at build (buildpack `flaky`: bin/compile: exit 3: flaky: cannot build `break-me`); rolled back to {live}; retry with `kiln deploy shop`"
        )
    );
    before.assert_unchanged(&project, "a failed buildpack");
    assert_eq!(project.current(), Some(live.clone()));
    // The failure names the buildpack's program and its exit status, as a command's would.
    let failed = project.releases().last().unwrap().0.clone();
    let events = project.events(&failed);
    let failure = events
        .iter()
        .find(|event| event["event"] == "failure")
        .expect("a failure event");
    assert_eq!(failure["command"], "flaky bin/compile", "{failure}");
    assert_eq!(failure["exit_code"], 3, "{failure}");
    let end = events
        .iter()
        .find(|event| event["event"] == "command_end" && event["command"] == "flaky bin/compile")
        .expect("the compile's command_end");
    assert_eq!(end["outcome"], "exit", "{end}");
    assert_eq!(end["exit_code"], 3, "{end}");

    // Named in kiln.yml but not for this app: the build fails saying so.
    app.write(
        "kiln.yml",
        &format!("buildpacks: [{}, nodejs]\n", bp.display()),
    );
    app.remove("break-me");
    app.commit("not a node app");
    let (_, output) = app.push(&project);
    assert!(
        last_remote_line(&output).contains(
            "deploy FAILED at build (buildpack `nodejs` does not apply to this app (its bin/detect said no, exit 1)"
        ),
        "{output}"
    );
    before.assert_unchanged(&project, "a buildpack that does not apply");
}

/// Buildpack output goes through the same redactor as any command (pillar secrets masked,
/// in the push output and the logs), and a buildpack past the build stage's timeout is killed
/// with its children and rolls the deploy back.
#[test]
fn buildpack_output_is_masked_and_a_slow_buildpack_times_out() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let pillar = node.app("pillar");
    pillar.write("pillar.yml", "env:\n  API_TOKEN: hunter2-very-secret\n");
    pillar.commit("pillar");
    let out = pillar.git(&[
        "push",
        project.path("git/pillar.git").to_str().unwrap(),
        "HEAD:master",
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let bp = buildpack(
        &node.dir.path().join("talker"),
        &[
            ("detect", "echo Talker\n"),
            (
                "compile",
                "echo \"token from ENV_DIR: $(cat \"$3/API_TOKEN\")\"\nif [ -f \"$1/slow\" ]; then sleep 60; fi\n",
            ),
        ],
    );
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        &format!("buildpacks: [{}]\ntimeouts:\n  build: 2s\n", bp.display()),
    );
    app.commit("talkative");
    let output = app.deploy(&project);
    assert!(output.contains("token from ENV_DIR: ********"), "{output}");
    assert!(!output.contains("hunter2"), "{output}");
    assert!(!project.last_log().contains("hunter2"));
    let live = project.current().unwrap();

    let before = Before::take(&project);
    app.write("slow", "");
    app.commit("slow");
    let started = Instant::now();
    let (_, output) = app.push(&project);
    assert!(started.elapsed() < Duration::from_secs(30), "{output}");
    assert_eq!(
        last_remote_line(&output),
        format!(
            "remote: -----> deploy FAILED at build (buildpack `talker`: bin/compile: timeout after 2s); rolled back to {live}; retry with `kiln deploy shop`"
        )
    );
    before.assert_unchanged(&project, "a buildpack that timed out");
}

#[test]
fn a_python_version_the_node_cannot_meet_is_refused_naming_the_file() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("requirements.txt", "")
        .write(".python-version", "# pinned by the team\n3.99\n");
    app.commit("python from the future");
    let before = Before::take(&project);
    let (ok, output) = app.push(&project);
    assert!(ok, "a failed post-receive deploy does not refuse the push");
    let last = last_remote_line(&output);
    assert!(
        last.starts_with(
            "remote: -----> deploy FAILED at build (buildpack `python`: bin/compile: exit 1: .python-version:2 asks for Python 3.99, which this node does not have (it has: 3."
        ),
        "{output}"
    );
    before.assert_unchanged(&project, "an unmet .python-version");
    assert_eq!(project.current(), None);
}

/// The environment a process of the release gets: the tree's `.profile.d/*.sh` sourced in
/// the tree (which is what kiln's process runner does), then `command`.
fn in_release(tree: &Path, command: &str, port: u16) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            "for f in .profile.d/*.sh; do . \"./$f\"; done; exec {command}"
        ))
        .current_dir(tree)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        )
        .env("PORT", port.to_string());
    cmd
}

/// A production node pulling from `staging`: the same push deploys staging's release of the
/// commit there, without building.
fn production(staging: &Project, app: &App) -> (Project, String) {
    let node = staging.node.sibling("production");
    let project = node.init_with(
        &staging.name,
        &[
            "--mode",
            "final",
            "--source",
            staging.base.to_str().unwrap(),
        ],
    );
    let output = app.deploy(&project);
    (project, output)
}

/// The issue's Python app: a WSGI app with a dependency from PyPI and a SQLite file in data/.
const WSGI_APP: &str = r#"import os, sqlite3

import six


def app(environ, start_response):
    db = sqlite3.connect(os.path.join(os.environ['KILN_DATA_DIR'], 'visits.db'))
    with db:
        db.execute('CREATE TABLE IF NOT EXISTS visits (n INTEGER)')
        db.execute('INSERT INTO visits VALUES (1)')
        (count,) = db.execute('SELECT COUNT(*) FROM visits').fetchone()
    db.close()
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [('hello from python, six %s, visit %d\n' % (six.__version__, count)).encode()]
"#;

/// The visit count the Python app answers after `prefix`. Not an exact number: besides the
/// test's requests and each deploy's check, the supervisor's periodic web check (every
/// node.yml `notify.alerts.check_every`) GETs `/` too.
fn visits(project: &Project, prefix: &str) -> u64 {
    let answer = answer(project).unwrap_or_default();
    answer
        .strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected `{prefix}N`, got {answer:?}"))
}

/// The issue's Python app, pushed with no kiln.yml at all: detected, built by kiln's python
/// buildpack (gunicorn and six from PyPI), served by gunicorn under kiln's supervisor on its
/// PORT, with its SQLite file in data/. The one-line change reuses the cached virtualenv and
/// answers the new text; production runs staging's release under its own supervisor without
/// building.
#[test]
fn a_python_app_builds_reuses_the_cache_and_runs_where_it_is_moved() {
    let (node, _guard) = supervised_node();
    let project = node.init("pyapp", "cooking");
    share_download_caches(&project);
    let app = node.app("pyapp");
    app.write("requirements.txt", "gunicorn==23.0.0\nsix==1.16.0\n")
        .write("app.py", WSGI_APP)
        .write("Procfile", "web: gunicorn app:app --bind 127.0.0.1:$PORT\n");
    app.commit("python app");
    let output = app.deploy(&project);
    assert!(
        !project.run().join("kiln.yml").exists(),
        "no kiln.yml at all"
    );
    assert!(output.contains("-----> Python app detected"), "{output}");
    assert!(
        output.contains("Installing requirements with pip"),
        "{output}"
    );
    assert!(output.contains("Successfully installed"), "{output}");
    assert!(
        output.contains("processes up (GET / answered below 500)"),
        "{output}"
    );
    let run = project.run();
    // The venv's python is Debian's, below /usr: promotable.
    let python = fs::read_link(run.join(".venv/bin/python3")).unwrap();
    assert!(python.starts_with("/usr/"), "{}", python.display());
    // The default check visited once (the supervisor's periodic web check may have too).
    let first = visits(&project, "hello from python, six 1.16.0, visit ");
    assert!(first >= 2, "{first}");
    assert!(project.data().join("visits.db").is_file());

    let cached: Vec<PathBuf> = fs::read_dir(project.path("cache/python/venvs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let cached_tree = fingerprint(&cached[0]);

    app.write(
        "app.py",
        &WSGI_APP.replace("hello from python", "hello again"),
    );
    app.commit("one-line change");
    let output = app.deploy(&project);
    assert!(
        output.contains(
            "Reusing the cached virtualenv (requirements.txt unchanged): nothing to install"
        ),
        "{output}"
    );
    for installing in ["Installing requirements", "Collecting", "Downloading"] {
        assert!(!output.contains(installing), "{installing}:\n{output}");
    }
    assert_same(&cached_tree, &fingerprint(&cached[0]), "the cached venv");
    // The same data/: the visits go on (this one, and the deploy's check at least).
    let again = visits(&project, "hello again, six 1.16.0, visit ");
    assert!(again >= first + 2, "{first} then {again}");
    assert_eq!(ps(&project)["instances"][0]["state"], "up");
    // Nothing writes to the tree after the buildpack (no build commands): the release's venv
    // is hard links to the cache entry, never written again, instead of a copy.
    let release = project.path("deploy").join(project.current().unwrap());
    let inode = |path: &Path| fs::metadata(path).unwrap().ino();
    assert_eq!(
        inode(&release.join(".venv/bin/gunicorn")),
        inode(&cached[0].join("bin/gunicorn"))
    );
    assert_ne!(
        inode(&run.join(".venv/bin/gunicorn")),
        inode(&cached[0].join("bin/gunicorn")),
        "run/ holds copies"
    );

    let (_prod_node, _prod_guard) = supervised_sibling(&node, "production");
    let (prod, pulled) = production(&project, &app);
    assert!(pulled.contains("final mode never builds"), "{pulled}");
    assert!(!pulled.contains("app detected"), "{pulled}");
    assert!(!prod.path("cache").join("python").exists());
    assert!(
        !prod.node.root.join(".kiln/buildpacks").exists(),
        "production never even writes a buildpack out"
    );
    // Production's own data/: its deploy's check, this one (and maybe periodic checks).
    assert!(visits(&prod, "hello again, six 1.16.0, visit ") >= 2);
}

/// An app without requirements.txt declares its dependencies in pyproject.toml: it is
/// installed with `pip install .`; a code change reinstalls only the app, on top of the cached
/// dependencies.
#[test]
fn a_pyproject_app_installs_itself_and_reinstalls_only_itself_on_a_code_change() {
    let node = Node::new();
    let project = node.init("pkg", "cooking");
    let app = node.app("pkg");
    app.write(
        "pyproject.toml",
        "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"greeter\"\nversion = \"1.0\"\ndependencies = [\"six==1.16.0\"]\n\n[tool.setuptools]\npy-modules = [\"greeter\"]\n",
    )
    .write("greeter.py", "import six\nWORD = 'one'\n");
    share_download_caches(&project);
    app.commit("pyproject app");
    let output = app.deploy(&project);
    assert!(output.contains("Installing the app with pip"), "{output}");
    // From another directory, so the installed copy is what is imported, not run/'s source.
    let installed = |tree: &Path| {
        let out = Command::new(tree.join(".venv/bin/python"))
            .args([
                "-c",
                "import greeter, six; print(greeter.WORD, six.__version__)",
            ])
            .current_dir("/")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(installed(&project.run()), "one 1.16.0");

    app.write("greeter.py", "import six\nWORD = 'two'\n");
    app.commit("one-line change");
    let output = app.deploy(&project);
    assert!(
        output.contains(
            "Reusing the cached virtualenv (pyproject.toml unchanged): its dependencies are installed"
        ),
        "{output}"
    );
    assert!(
        output.contains("Installing the app with pip (without its dependencies)"),
        "{output}"
    );
    assert!(!output.contains("Collecting six"), "{output}");
    assert_eq!(installed(&project.run()), "two 1.16.0");
}

const NODE_SERVER: &str = "const http = require('http');\nconst isNumber = require('is-number');\nhttp.createServer((req, res) => res.end('hello from node, is-number says ' + isNumber(5) + '\\n')).listen(Number(process.env.PORT), '127.0.0.1');\n";

/// The issue's Node app: plain `http` and one npm dependency, with its package-lock.json, no
/// Procfile and no kiln.yml: the nodejs buildpack's `web: npm start` runs under kiln's
/// supervisor.
#[test]
fn a_node_app_builds_reuses_the_cache_and_runs_where_it_is_moved() {
    let (node, _guard) = supervised_node();
    let project = node.init("nodeapp", "cooking");
    share_download_caches(&project);
    let app = node.app("nodeapp");
    app.write(
        "package.json",
        "{\n  \"name\": \"nodeapp\",\n  \"version\": \"1.0.0\",\n  \"private\": true,\n  \"scripts\": {\"start\": \"node server.js\"},\n  \"dependencies\": {\"is-number\": \"7.0.0\"}\n}\n",
    )
    .write("server.js", NODE_SERVER);
    let lock = Command::new("npm")
        .args(["install", "--package-lock-only", "--no-audit", "--no-fund"])
        .current_dir(&app.dir)
        .env("npm_config_cache", test_cache("npm"))
        .output()
        .unwrap();
    assert!(lock.status.success(), "{}", common::text(&lock));
    app.commit("node app");
    let output = app.deploy(&project);
    assert!(
        !project.run().join("kiln.yml").exists(),
        "no kiln.yml at all"
    );
    assert!(output.contains("-----> Node.js app detected"), "{output}");
    assert!(
        output.contains("dependencies with npm-ci (package-lock.json)"),
        "{output}"
    );
    let json = buildpacks_json(&project.run());
    assert_eq!(json["default_process_types"]["web"], "npm start");
    assert_eq!(instance(&project, "web.1")["command"], "npm start");
    assert_eq!(
        answer(&project).as_deref(),
        Some("hello from node, is-number says true")
    );

    app.write(
        "server.js",
        &NODE_SERVER.replace("hello from node", "hello again"),
    );
    app.commit("one-line change");
    let output = app.deploy(&project);
    assert!(
        output.contains(
            "Reusing the cached node_modules (package-lock.json unchanged): nothing to install"
        ),
        "{output}"
    );
    assert!(!output.contains("added 1 package"), "{output}");
    assert_eq!(
        answer(&project).as_deref(),
        Some("hello again, is-number says true")
    );

    let (_prod_node, _prod_guard) = supervised_sibling(&node, "production");
    let (prod, pulled) = production(&project, &app);
    assert!(pulled.contains("final mode never builds"), "{pulled}");
    assert!(!pulled.contains("app detected"), "{pulled}");
    assert_eq!(
        answer(&prod).as_deref(),
        Some("hello again, is-number says true")
    );
}

/// yarn 1 and pnpm 9 from the npm registry, installed once into target/test-cache/js-tools
/// (test binaries run in parallel: under a lock, with a stamp once complete). Returns their
/// bin directory, for a push's PATH: the build inherits kiln's PATH, as it would find tools an
/// operator installed in /usr/local/bin.
fn js_tools() -> PathBuf {
    const TOOLS: [&str; 2] = ["yarn@1.22.22", "pnpm@9.15.9"];
    let dir = test_cache("js-tools");
    fs::create_dir_all(&dir).unwrap();
    let lock = fs::File::create(test_cache("js-tools.lock")).unwrap();
    lock.lock().unwrap();
    let stamp = dir.join("kiln-installed");
    let wanted = TOOLS.join("\n");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .arg("--prefix")
            .arg(&dir)
            .args(TOOLS)
            .env("npm_config_cache", test_cache("npm"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm install {TOOLS:?}: {}",
            common::text(&out)
        );
        fs::write(&stamp, &wanted).unwrap();
    }
    dir.join("node_modules/.bin")
}

/// `dir` first, then the test's own PATH.
fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A Node app whose build script needs a dev dependency (`ms`), and whose server answers what
/// the build wrote and whether that dev dependency is still installed.
const BUILT_PACKAGE: &str = r#"{
  "name": "built",
  "version": "1.0.0",
  "private": true,
  "scripts": {"build": "node build.js", "start": "node server.js"},
  "dependencies": {"is-number": "7.0.0"},
  "devDependencies": {"ms": "2.1.3"}
}
"#;

const BUILD_JS: &str =
    "require('fs').writeFileSync('built.txt', 'built with ms: ' + require('ms')(60000) + '\\n');\n";

const BUILT_SERVER: &str = r#"const fs = require('fs');
const http = require('http');
const isNumber = require('is-number');
let ms = 'pruned';
try { require.resolve('ms'); ms = 'still installed'; } catch (e) {}
http.createServer((req, res) => res.end(fs.readFileSync('built.txt', 'utf8').trim() + ', is-number ' + isNumber(5) + ', ms ' + ms + '\n')).listen(Number(process.env.PORT), '127.0.0.1');
"#;

/// What [`BUILT_SERVER`] answers once built and pruned.
const BUILT_AND_PRUNED: &str = "built with ms: 1m, is-number true, ms pruned";

fn built_app(node: &Node, name: &str) -> App {
    let app = node.app(name);
    app.write("package.json", BUILT_PACKAGE)
        .write("build.js", BUILD_JS)
        .write("server.js", BUILT_SERVER)
        .write(".gitignore", "node_modules/\n");
    app
}

/// Runs a package manager in the app's dir with `path` (its lockfile, made as its users make
/// it), downloads in the suite's cache.
fn in_app(app: &App, program: &Path, args: &[&str], path: &str) {
    let out = Command::new(program)
        .args(args)
        .current_dir(&app.dir)
        .env("PATH", path)
        .env("npm_config_cache", test_cache("npm"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        common::text(&out)
    );
}

/// pnpm-lock.yaml for the app, made by the suite's pnpm with `path` (the store in the suite's
/// cache).
fn pnpm_lockfile(app: &App, path: &str) {
    let store = test_cache("pnpm");
    in_app(
        app,
        &test_cache("js-tools/node_modules/.bin/pnpm"),
        &[
            "install",
            "--lockfile-only",
            "--store-dir",
            store.to_str().unwrap(),
        ],
        path,
    );
}

fn assert_said(output: &str, lines: &[&str]) {
    for line in lines {
        assert!(output.contains(line), "{line:?} not in:\n{output}");
    }
}

/// With a build script, `npm ci` installs the dev dependencies too, `npm run build` runs with
/// them, and then they are pruned: the release runs what the build wrote, without them. The
/// next push reuses the cached install (dev dependencies included), builds and prunes again.
#[test]
fn a_node_build_script_runs_with_the_dev_dependencies_which_are_then_pruned() {
    let (node, _guard) = supervised_node();
    let project = node.init("built", "cooking");
    share_download_caches(&project);
    let app = built_app(&node, "built");
    let path = std::env::var("PATH").unwrap_or_default();
    in_app(
        &app,
        Path::new("npm"),
        &["install", "--package-lock-only", "--no-audit", "--no-fund"],
        &path,
    );
    app.commit("built with npm");
    let output = app.deploy(&project);
    assert_said(
        &output,
        &[
            "dependencies with npm-ci (package-lock.json)",
            "-----> Running the build script (npm run build)",
            "-----> Pruning the dev dependencies",
        ],
    );
    assert_eq!(answer(&project).as_deref(), Some(BUILT_AND_PRUNED));
    let run = project.run();
    assert!(run.join("node_modules/is-number").is_dir());
    assert!(!run.join("node_modules/ms").exists());

    app.write("build.js", &BUILD_JS.replace("built with", "rebuilt with"));
    app.commit("one-line change to the build");
    let output = app.deploy(&project);
    assert_said(
        &output,
        &[
            "Reusing the cached node_modules (package-lock.json unchanged): nothing to install",
            "-----> Running the build script (npm run build)",
            "-----> Pruning the dev dependencies",
        ],
    );
    assert!(!output.contains("added "), "{output}");
    assert_eq!(
        answer(&project).as_deref(),
        Some("rebuilt with ms: 1m, is-number true, ms pruned")
    );
}

/// A yarn.lock installs with yarn when the node has it: the build script runs with the dev
/// dependencies, which are then removed (yarn 1 has no prune: an install for production).
#[test]
fn a_yarn_lockfile_installs_with_yarn_builds_and_drops_the_dev_dependencies() {
    let path = path_with(&js_tools());
    let (node, _guard) = supervised_node();
    let project = node.init("yarnapp", "cooking");
    share_download_caches(&project);
    let app = built_app(&node, "yarnapp");
    let yarn = test_cache("js-tools/node_modules/.bin/yarn");
    let cache = test_cache("yarn");
    in_app(
        &app,
        &yarn,
        &[
            "install",
            "--ignore-scripts",
            "--non-interactive",
            "--cache-folder",
            cache.to_str().unwrap(),
        ],
        &path,
    );
    assert!(app.dir.join("yarn.lock").is_file());
    app.commit("built with yarn");
    let output = app.deploy_env(&project, &[("PATH", Path::new(&path))]);
    assert_said(
        &output,
        &[
            "dependencies with yarn (yarn.lock)",
            "-----> Running the build script (npm run build)",
            "-----> Pruning the dev dependencies",
        ],
    );
    assert_eq!(answer(&project).as_deref(), Some(BUILT_AND_PRUNED));
    assert!(!project.run().join("node_modules/ms").exists());
}

/// Found by this test: with a pnpm-lock.yaml, `pnpm prune --prod` ran with pnpm's default
/// store while the install had used the build cache's, so pnpm found the modules "from another
/// store", reinstalled them from scratch there, and pruned nothing: the dev dependencies went
/// into the release.
#[test]
fn regression_pnpm_prune_used_another_store_and_left_the_dev_dependencies() {
    let path = path_with(&js_tools());
    let (node, _guard) = supervised_node();
    let project = node.init("pnpmapp", "cooking");
    share_download_caches(&project);
    let app = built_app(&node, "pnpmapp");
    pnpm_lockfile(&app, &path);
    app.commit("built with pnpm");
    let output = app.deploy_env(&project, &[("PATH", Path::new(&path))]);
    assert_said(
        &output,
        &[
            "dependencies with pnpm (pnpm-lock.yaml)",
            "-----> Running the build script (npm run build)",
            "-----> Pruning the dev dependencies",
        ],
    );
    assert!(!output.contains("reinstalled from scratch"), "{output}");
    assert_eq!(answer(&project).as_deref(), Some(BUILT_AND_PRUNED));
    let run = project.run();
    assert!(run.join("node_modules/.pnpm").is_dir(), "pnpm's layout");
    assert!(!run.join("node_modules/ms").exists());
    let stored: Vec<String> = fs::read_dir(run.join("node_modules/.pnpm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !stored.iter().any(|name| name.starts_with("ms@")),
        "{stored:?}"
    );
}

/// A pnpm-lock.yaml on a node without pnpm: the build says so, installs with `npm install`
/// instead (package.json's ranges, not the lockfile), and the app runs.
#[test]
fn a_pnpm_lockfile_on_a_node_without_pnpm_installs_with_npm_saying_so() {
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(
        !path
            .split(':')
            .any(|dir| Path::new(dir).join("pnpm").exists()),
        "this test needs a PATH without pnpm: {path}"
    );
    let (node, _guard) = supervised_node();
    let project = node.init("nopnpm", "cooking");
    share_download_caches(&project);
    let app = built_app(&node, "nopnpm");
    let tools = path_with(&js_tools());
    pnpm_lockfile(&app, &tools);
    app.commit("a pnpm lockfile");
    let output = app.deploy(&project);
    assert_said(
        &output,
        &[
            "pnpm-lock.yaml found but pnpm is not installed on this node: installing with npm install instead",
        ],
    );
    assert!(
        output
            .lines()
            .any(|line| line.trim_end().ends_with(", dependencies with npm")),
        "{output}"
    );
    assert_eq!(answer(&project).as_deref(), Some(BUILT_AND_PRUNED));
}

/// node_modules committed with the app is used as it is (`npm rebuild` only): nothing is
/// installed or cached, and the app runs with the committed module.
#[test]
fn committed_node_modules_are_used_as_committed() {
    let (node, _guard) = supervised_node();
    let project = node.init("vendored", "cooking");
    share_download_caches(&project);
    let app = node.app("vendored");
    app.write(
        "package.json",
        "{\"name\": \"vendored\", \"version\": \"1.0.0\", \"private\": true, \"scripts\": {\"start\": \"node server.js\"}}\n",
    )
    .write(
        "node_modules/greeting/package.json",
        "{\"name\": \"greeting\", \"version\": \"1.0.0\", \"main\": \"index.js\"}\n",
    )
    .write(
        "node_modules/greeting/index.js",
        "module.exports = (who) => 'hello ' + who + ' from a committed module';\n",
    )
    .write(
        "server.js",
        "require('http').createServer((q, r) => r.end(require('greeting')('node') + '\\n')).listen(Number(process.env.PORT), '127.0.0.1');\n",
    );
    app.commit("vendored");
    let output = app.deploy(&project);
    assert_said(
        &output,
        &["-----> Using the node_modules committed with the app; rebuilding native modules"],
    );
    assert!(!output.contains("Installing dependencies"), "{output}");
    assert_eq!(
        answer(&project).as_deref(),
        Some("hello node from a committed module")
    );
    assert!(
        !project.path("cache/nodejs/modules").exists(),
        "nothing cached"
    );
}

/// Editable mode builds in project/; what the buildpack adds there (.venv/, .profile.d/,
/// .kiln/) is not a manual edit, so the next push is not refused.
#[test]
fn editable_mode_builds_in_project_and_its_output_is_not_an_edit() {
    let node = Node::new();
    let project = node.init("dev", "editable");
    let app = node.app("dev");
    app.write("requirements.txt", "")
        .write("app.py", "print('v1')\n");
    app.commit("one");
    let output = app.deploy(&project);
    assert!(output.contains("-----> Python app detected"), "{output}");
    assert!(project.path("project/.venv/bin/python3").exists());
    let exclude = fs::read_to_string(project.path("project/.git/info/exclude")).unwrap();
    for line in ["/.venv/", "/.profile.d/", "/.kiln/"] {
        assert!(exclude.lines().any(|l| l == line), "{line} in:\n{exclude}");
    }
    app.write("app.py", "print('v2')\n");
    app.commit("two");
    let output = app.deploy(&project);
    assert!(output.contains("The virtualenv is up to date"), "{output}");
    let ran = in_release(&project.run(), "python app.py", 0)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "v2\n");
}

/// kiln's own buildpacks have tests of their own (buildpacks/<name>/test/run, plain sh a
/// Heroku user can read): detection, version checks, relocation, release output.
#[test]
fn each_shipped_buildpack_passes_its_own_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("buildpacks");
    for name in ["python", "nodejs", "static", "procfile"] {
        let script = root.join(name).join("test/run");
        let out = Command::new("/bin/sh")
            .arg(&script)
            .env("npm_config_cache", test_cache("npm"))
            .env("PIP_CACHE_DIR", test_cache("pip"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}:\n{}",
            script.display(),
            common::text(&out)
        );
    }
}
