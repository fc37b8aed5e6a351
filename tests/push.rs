//! End to end: `kiln init`, then real `git push`es to the node's bare repo, in cooking and
//! editable mode, through the hooks kiln installed.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

const BUILD_RECIPE: &str = r#"
stages:
  build:
    - mkdir -p public && echo "built $KILN_COMMIT" > public/index.html
    - mkdir -p empty/dir && ln -sf index.html public/home.html
    - touch "$(printf 'bad\377name')"
    - chmod 0750 public
"#;

#[test]
fn cooking_deploy_builds_into_run_and_tarball() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", BUILD_RECIPE)
        .write("src/app.txt", "v1\n");
    let commit = app.commit("first");
    let (ok, output) = app.push(&project);
    assert!(ok, "{output}");
    for stage in [
        "gather",
        "pre_install",
        "configure",
        "build",
        "bundle",
        "deploy",
        "post_deploy",
    ] {
        assert!(
            output.contains(&format!("remote: -----> {stage}")),
            "no {stage} header in:\n{output}"
        );
    }
    let release = project.current().expect("a live release");
    assert!(
        output.contains(&format!("-----> deployed {release} ({})", &commit[..7])),
        "{output}"
    );
    let built = fs::read_to_string(project.run().join("public/index.html")).unwrap();
    assert_eq!(built, format!("built {commit}\n"));
    assert_eq!(
        fs::read_link(project.path("deploy/current")).unwrap(),
        Path::new(&release)
    );

    // The tarball holds the build output and the manifest describes it.
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(project.path(&format!("releases/{release}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["commit"], commit.as_str());
    assert_eq!(manifest["project"], "shop");
    assert_eq!(manifest["pillar_rev"], serde_json::Value::Null);
    let tarball = project.path(&format!("releases/{release}.tar.zst"));
    assert_eq!(
        manifest["sha256"].as_str().unwrap(),
        kiln::bake::sha256_file(&tarball).unwrap()
    );
    let unpacked = node.dir.path().join("unpacked");
    kiln::unpack::unpack(
        &tarball,
        &unpacked,
        &kiln::unpack::UnpackOptions {
            limits: kiln::unpack::Limits {
                max_bytes: 1 << 30,
                max_entries: 100_000,
            },
            links: &kiln::unpack::LinkRules::new(Vec::new(), Vec::new(), &node.root),
        },
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(unpacked.join("public/index.html")).unwrap(),
        built
    );
    assert_eq!(
        manifest["tree_digest"].as_str().unwrap(),
        kiln::tree::digest(&unpacked).unwrap()
    );
    // kiln.yml, src/app.txt, public/index.html and the non-UTF-8 file (home.html is a link).
    assert_eq!(manifest["files"].as_u64().unwrap(), 4, "{manifest}");
    // Log file holds the same story.
    let log = fs::read_to_string(project.path(&format!("logs/{release}.log"))).unwrap();
    assert!(log.contains("-----> build"), "{log}");
    assert!(log.contains(&format!("-----> deployed {release}")), "{log}");
}

#[test]
fn second_push_makes_run_equal_the_new_release_exactly() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", BUILD_RECIPE)
        .write("same.txt", "untouched\n")
        .write("keep.txt", "same\n")
        .write("change.txt", "one\n")
        .write("gone.txt", "bye\n");
    app.commit("first");
    assert!(app.push(&project).0);
    let first = project.current().unwrap();

    app.write("change.txt", "two, longer\n")
        .write("new/added.txt", "hello\n")
        .remove("gone.txt");
    fs::set_permissions(app.dir.join("keep.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    app.commit("second");
    let (ok, output) = app.push(&project);
    assert!(ok, "{output}");
    let second = project.current().unwrap();
    assert_ne!(first, second);

    let run = tree_fingerprint(&project.run());
    let release = tree_fingerprint(&project.path(&format!("deploy/{second}")));
    assert_same(&release, &run, "run/ vs deploy/<release>");
    assert!(
        run.contains_key(b"bad\xffname".as_slice()),
        "non-UTF-8 name"
    );
    assert!(run.contains_key(b"empty/dir".as_slice()), "empty dir");
    assert_eq!(run[&b"public/home.html".to_vec()].kind, "symlink");
    assert_eq!(run[&b"public".to_vec()].mode, 0o750);
    assert_eq!(run[&b"keep.txt".to_vec()].mode, 0o755);
    assert!(!run.contains_key(b"gone.txt".as_slice()));
    // An unchanged file keeps its mtime from release to release, so preparing the next live
    // tree copies only what changed.
    let first_tree = tree_fingerprint(&project.path(&format!("deploy/{first}")));
    assert_eq!(
        first_tree[b"same.txt".as_slice()],
        run[b"same.txt".as_slice()]
    );
    assert_ne!(
        first_tree[b"change.txt".as_slice()].mtime,
        run[b"change.txt".as_slice()].mtime
    );
    assert_eq!(
        fs::read_to_string(project.run().join("new/added.txt")).unwrap(),
        "hello\n"
    );
}

#[test]
fn stage_failure_names_stage_command_and_exit_code_and_keeps_live_release() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", BUILD_RECIPE);
    app.commit("good");
    assert!(app.push(&project).0);
    let good = project.current().unwrap();
    let run_before = fingerprint(&project.run());

    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - echo compiling\n    - sh -c 'exit 7'\n",
    );
    app.commit("broken build");
    let (_, output) = app.push(&project);
    assert!(
        output.contains("-----> deploy FAILED at build (sh -c 'exit 7': exit 7)"),
        "{output}"
    );
    assert!(
        output.contains(&format!("rolled back to {good}")),
        "{output}"
    );
    assert_eq!(project.current().as_deref(), Some(good.as_str()));
    assert_same(&run_before, &fingerprint(&project.run()), "run/");
    let statuses: Vec<String> = project.releases().into_iter().map(|r| r.1).collect();
    assert_eq!(statuses, ["good", "failed"]);

    // `kiln deploy` by hand reports the same failure with exit status 1.
    let out = node.kiln(&["deploy", "shop"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("error: deploy FAILED at build (sh -c 'exit 7': exit 7)"),
        "{}",
        text(&out)
    );
}

#[test]
fn invalid_kiln_yml_is_refused_at_pre_receive_and_branch_does_not_move() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", "keep: 2\n");
    let good = app.commit("good");
    assert!(app.push(&project).0);

    for (yaml, expected) in [
        (
            "keep: 2\nstagez:\n  build: [make]\n",
            "kiln.yml:2:1: unknown field `stagez`",
        ),
        ("keep: two\n", "kiln.yml:1:7:"),
        ("stages:\n  build: [make\n", "kiln.yml:"),
    ] {
        app.write("kiln.yml", yaml);
        app.commit("bad yaml");
        let (ok, output) = app.push(&project);
        assert!(!ok, "push of {yaml:?} must be refused:\n{output}");
        assert!(
            output.contains(&format!("remote: error: {expected}")),
            "{yaml:?}:\n{output}"
        );
        assert!(output.contains("pre-receive hook declined"), "{output}");
        assert_eq!(project.branch_tip("master").as_deref(), Some(good.as_str()));
        assert_eq!(project.releases().len(), 1, "nothing deployed");
    }
}

#[test]
fn other_branches_tags_and_deletions_are_ignored() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("a.txt", "a");
    app.commit("one");
    let (ok, output) = app.push_ref(&project, "HEAD:refs/heads/feature");
    assert!(ok, "{output}");
    assert!(
        output.contains("-----> ignoring refs/heads/feature: only master deploys"),
        "{output}"
    );
    assert_eq!(app.git(&["tag", "v1"]).status.code(), Some(0));
    let (ok, output) = app.push_ref(&project, "refs/tags/v1");
    assert!(ok && output.contains("ignoring refs/tags/v1"), "{output}");
    let (ok, output) = app.push_ref(&project, ":refs/heads/feature");
    assert!(
        ok && output.contains("ignoring the deletion of refs/heads/feature"),
        "{output}"
    );
    assert!(project.releases().is_empty());
    assert!(fs::read_dir(project.run()).unwrap().next().is_none());
}

#[test]
fn force_push_deploys_the_new_tip() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("a.txt", "one");
    app.commit("one");
    assert!(app.push(&project).0);
    app.write("a.txt", "two");
    app.commit("two");
    assert!(app.push(&project).0);
    assert!(
        app.git(&["reset", "-q", "--hard", "HEAD~1"])
            .status
            .success()
    );
    app.write("a.txt", "rewritten");
    let tip = app.commit("rewritten");
    let (ok, output) = app.push(&project);
    assert!(ok && output.contains(&tip[..7]), "{output}");
    assert_eq!(
        fs::read_to_string(project.run().join("a.txt")).unwrap(),
        "rewritten"
    );
}

#[test]
fn editable_mode_runs_from_the_checkout_and_refuses_local_edits() {
    let node = Node::new();
    let project = node.init("dev", "editable");
    let app = node.app("dev");
    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - echo built > build-output.txt\n",
    )
    .write(".gitignore", "build-output.txt\n")
    .write("app.txt", "v1\n");
    app.commit("one");
    let (ok, output) = app.push(&project);
    assert!(ok, "{output}");
    assert!(output.contains("-----> deployed"), "{output}");
    // run/ shows project/, and the build ran in place.
    assert_eq!(
        fs::read_to_string(project.run().join("app.txt")).unwrap(),
        "v1\n"
    );
    assert!(project.path("project/build-output.txt").exists());
    let status = text(&node.kiln(&["status", "dev"]));
    assert!(
        status.contains("run/:        symlink to project"),
        "{status}"
    );

    // An edit by hand in the live tree makes the next deploy refuse and change nothing.
    fs::write(project.path("project/app.txt"), "hand edit\n").unwrap();
    fs::write(project.path("project/extra.txt"), "new\n").unwrap();
    app.write("app.txt", "v2\n");
    let second = app.commit("two");
    let (_, output) = app.push(&project);
    assert!(
        output.contains("project/ has uncommitted manual edits (app.txt, extra.txt)"),
        "{output}"
    );
    assert!(output.contains("deploy FAILED at pre_install"), "{output}");
    assert_eq!(
        fs::read_to_string(project.path("project/app.txt")).unwrap(),
        "hand edit\n"
    );

    // Once the edits are gone, the same commit deploys.
    fs::remove_file(project.path("project/extra.txt")).unwrap();
    fs::write(project.path("project/app.txt"), "v1\n").unwrap();
    let out = node.kiln(&["deploy", "dev"]);
    assert_success(&out, "kiln deploy");
    assert!(text(&out).contains(&second[..7]));
    assert_eq!(
        fs::read_to_string(project.run().join("app.txt")).unwrap(),
        "v2\n"
    );
}

#[test]
fn timed_out_command_is_killed_with_its_children() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    let marker = node.dir.path().join("child-survived");
    app.write(
        "kiln.yml",
        &format!(
            "timeouts:\n  build: 1s\nstages:\n  build:\n    - (sleep 3; touch {}) & sleep 30\n",
            marker.display()
        ),
    );
    app.commit("slow");
    let started = std::time::Instant::now();
    let (_, output) = app.push(&project);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the timeout did not stop the build"
    );
    assert!(output.contains("deploy FAILED at build"), "{output}");
    assert!(output.contains("timeout after 1s"), "{output}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        !marker.exists(),
        "a child of the timed-out command kept running"
    );
    assert_eq!(project.current(), None);
}

#[test]
fn commit_without_kiln_yml_deploys_with_no_project_commands() {
    let node = Node::new();
    let project = node.init("plain", "cooking");
    let app = node.app("plain");
    app.write("index.html", "<h1>hi</h1>\n");
    app.commit("static site");
    let (ok, output) = app.push(&project);
    assert!(ok && output.contains("-----> deployed"), "{output}");
    assert!(!output.contains("$ "), "no commands expected:\n{output}");
    assert!(project.run().join("index.html").exists());
}

#[test]
fn stage_commands_get_exactly_the_documented_environment() {
    let node = Node::new();
    let project = node.init("envy", "cooking");
    let app = node.app("envy");
    app.write(
        "kiln.yml",
        "defaults:\n  env:\n    GREETING: hello\nstages:\n  build:\n    - env | sort > env.txt; pwd > pwd.txt; cp \"$KILN_COMMON\" common.json\n",
    );
    app.commit("env");
    assert!(app.push(&project).0);
    let env = fs::read_to_string(project.run().join("env.txt")).unwrap();
    let names: Vec<&str> = env
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .filter(|n| !["PWD", "SHLVL", "_", "OLDPWD"].contains(n))
        .collect();
    let mut expected = vec![
        "GREETING",
        "HOME",
        "KILN_BACKUP_DIR",
        "KILN_BUILD_DIR",
        "KILN_COMMIT",
        "KILN_COMMON",
        "KILN_DATA_DIR",
        "KILN_DEPLOY_DIR",
        "KILN_MODE",
        "KILN_PILLAR_DIR",
        "KILN_PROJECT",
        "KILN_PROJECT_DIR",
        "KILN_RELEASE",
        "KILN_ROOT",
        "KILN_RUN_DIR",
        "KILN_STAGE",
        "LANG",
        "PATH",
    ];
    if std::env::var_os("HOME").is_none() {
        expected.retain(|n| *n != "HOME");
    }
    assert_eq!(names, expected, "{env}");
    assert!(env.contains("KILN_STAGE=build\n"));
    assert!(env.contains("KILN_MODE=cooking\n"));
    assert!(env.contains("GREETING=hello\n"));
    let pwd = fs::read_to_string(project.run().join("pwd.txt")).unwrap();
    assert_eq!(Path::new(pwd.trim()), project.path("build"));
    let common: serde_json::Value =
        serde_json::from_slice(&fs::read(project.run().join("common.json")).unwrap()).unwrap();
    assert_eq!(common["env"]["GREETING"], "hello");
    assert_eq!(common["project"], "envy");
    // $KILN_COMMON is removed after the deploy.
    let state: Vec<String> = fs::read_dir(project.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!state.iter().any(|n| n.starts_with("common-")), "{state:?}");
}

#[test]
fn keep_prunes_old_releases_and_their_tarballs() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    for i in 0..4 {
        app.write("kiln.yml", "keep: 2\n")
            .write("n.txt", &i.to_string());
        app.commit(&format!("c{i}"));
        let (ok, output) = app.push(&project);
        assert!(ok, "{output}");
    }
    let mut ids: Vec<String> = project.releases().into_iter().map(|r| r.0).collect();
    let newest: Vec<String> = ids[2..].to_vec();
    ids = newest;
    ids.sort();
    let mut deploy_dirs: Vec<String> = fs::read_dir(project.path("deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "current")
        .collect();
    deploy_dirs.sort();
    assert_eq!(deploy_dirs, ids, "the two newest releases are kept");
    let tarballs = fs::read_dir(project.path("releases"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tar.zst")
        })
        .count();
    assert_eq!(tarballs, 2);
}

#[test]
fn releases_status_and_logs_commands() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: [echo hello-from-build]\n");
    let commit = app.commit("one");
    assert!(app.push(&project).0);
    let release = project.current().unwrap();

    let out = node.kiln(&["releases", "shop", "--json"]);
    assert_success(&out, "releases --json");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["current"], release.as_str());
    assert_eq!(json["releases"][0]["commit"], commit.as_str());
    assert_eq!(json["releases"][0]["status"], "good");

    let out = node.kiln(&["releases", "shop"]);
    assert!(
        text(&out).contains(&format!("* {release}  {}", &commit[..7])),
        "{}",
        text(&out)
    );

    let out = node.kiln(&["status", "shop", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mode"], "cooking");
    assert_eq!(json["live"], release.as_str());
    assert_eq!(json["running"], serde_json::Value::Null);

    let out = node.kiln(&["logs", "shop"]);
    assert!(text(&out).contains("hello-from-build"), "{}", text(&out));
    let out = node.kiln(&["logs", "shop", &release]);
    assert!(text(&out).contains("hello-from-build"));
    let out = node.kiln(&["logs", "shop", "20200101T000000Z-00000000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("error: unknown release `20200101T000000Z-00000000`"));
}

/// Regression: a file the previous build rewrote in place (same size) passed for the pristine
/// blob once unchanged files kept their mtime across releases, and a later switch kept the
/// build output. The next release must get the content from git.
#[test]
fn regression_a_file_rewritten_by_the_previous_build_is_exported_fresh() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - if [ -f stamp-me ]; then printf BUILT > version.txt; fi\n",
    )
    .write("version.txt", "ORIGI")
    .write("stamp-me", "");
    app.commit("build stamps the version");
    assert!(app.push(&project).0);
    assert_eq!(
        fs::read_to_string(project.run().join("version.txt")).unwrap(),
        "BUILT"
    );
    app.remove("stamp-me");
    app.commit("no stamping");
    assert!(app.push(&project).0);
    assert_eq!(
        fs::read_to_string(project.run().join("version.txt")).unwrap(),
        "ORIGI"
    );
    // The next live tree is prepared from the one the first release left behind, which holds
    // the stamped file: it must not pass for unchanged.
    app.write("other.txt", "x");
    app.commit("unrelated change");
    let (ok, output) = app.push(&project);
    assert!(ok, "{output}");
    assert_eq!(
        fs::read_to_string(project.run().join("version.txt")).unwrap(),
        "ORIGI"
    );
    let current = project.current().unwrap();
    assert_same(
        &tree_fingerprint(&project.path(&format!("deploy/{current}"))),
        &tree_fingerprint(&project.run()),
        "run/ vs its release",
    );
}

/// Without configure, build or bundle commands nothing writes to a release tree before it is
/// immutable, so unchanged files are shared with the previous release (hard links), never with
/// run/. A file a previous build chmod-ed (mtime untouched) is not taken for pristine.
#[test]
fn releases_without_build_commands_share_unchanged_files() {
    use std::os::unix::fs::MetadataExt;
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - chmod 0600 secret.txt\n",
    )
    .write("secret.txt", "s\n")
    .write("same.txt", "same\n")
    .write("changed.txt", "one\n");
    app.commit("with a build");
    assert!(app.push(&project).0);
    let first = project.current().unwrap();
    app.write("kiln.yml", "keep: 5\n")
        .write("changed.txt", "two\n");
    app.commit("no commands");
    assert!(app.push(&project).0);
    let second = project.current().unwrap();
    app.write("changed.txt", "three\n");
    app.commit("no commands again");
    assert!(app.push(&project).0);
    let third = project.current().unwrap();

    let ino = |release: &str, file: &str| {
        fs::metadata(project.path(&format!("deploy/{release}/{file}")))
            .unwrap()
            .ino()
    };
    // Once a release has no commands, its unchanged files are the previous release's; not the
    // one the first build chmod-ed, nor the one that changed.
    assert_eq!(ino(&first, "same.txt"), ino(&second, "same.txt"));
    assert_eq!(ino(&second, "same.txt"), ino(&third, "same.txt"));
    assert_ne!(ino(&first, "secret.txt"), ino(&second, "secret.txt"));
    assert_eq!(ino(&second, "secret.txt"), ino(&third, "secret.txt"));
    assert_ne!(ino(&second, "changed.txt"), ino(&third, "changed.txt"));
    let run_same = fs::metadata(project.run().join("same.txt")).unwrap();
    assert_ne!(
        run_same.ino(),
        ino(&third, "same.txt"),
        "run/ never shares inodes"
    );
    // secret.txt was chmod-ed by the first build: the next releases have git's mode again.
    let mode = fs::metadata(project.run().join("secret.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
    assert_same(
        &tree_fingerprint(&project.path(&format!("deploy/{third}"))),
        &tree_fingerprint(&project.run()),
        "run/ vs its release",
    );
    assert_eq!(
        fs::read_to_string(project.run().join("changed.txt")).unwrap(),
        "three\n"
    );
}
