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
        kiln::release::bake::sha256_file(&tarball).unwrap()
    );
    let unpacked = node.dir.path().join("unpacked");
    kiln::release::unpack::unpack(
        &tarball,
        &unpacked,
        &kiln::release::unpack::UnpackOptions {
            limits: kiln::release::unpack::Limits {
                max_bytes: 1 << 30,
                max_entries: 100_000,
            },
            links: &kiln::release::unpack::LinkRules::new(Vec::new(), Vec::new(), &node.root),
        },
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(unpacked.join("public/index.html")).unwrap(),
        built
    );
    assert_eq!(
        manifest["tree_digest"].as_str().unwrap(),
        kiln::fs::tree::digest(&unpacked).unwrap()
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
        "KILN_CHECKOUT_DIR",
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
    // KILN_PROJECT_DIR is the old name of KILN_CHECKOUT_DIR: the checkout, project/.
    let checkout = format!("KILN_CHECKOUT_DIR={}\n", project.path("project").display());
    assert!(env.contains(&checkout), "{env}");
    let alias = format!("KILN_PROJECT_DIR={}\n", project.path("project").display());
    assert!(env.contains(&alias), "{env}");
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

/// Each kind of command logs `<label> <cwd> <KILN_STAGE>` to `log`.
fn where_commands_run_recipe(log: &Path, check_passes: bool) -> String {
    let line = |label: &str| format!("echo \"{label} $(pwd) $KILN_STAGE\" >> {}", log.display());
    let stages: String = [
        "gather",
        "pre_install",
        "configure",
        "build",
        "bundle",
        "deploy",
        "post_deploy",
    ]
    .iter()
    .map(|stage| format!("  {stage}:\n    - {}\n", line(stage)))
    .collect();
    format!(
        "services:\n  stop: {stop}\n  start: {start}\ncheck:\n  command: {check}{fail}\n  timeout: 300ms\n  interval: 100ms\nbackup:\n  - {backup}\nrestore:\n  - {restore}\nstages:\n{stages}",
        stop = line("stop"),
        start = line("start"),
        check = line("check"),
        fail = if check_passes { "" } else { "; false" },
        backup = line("backup"),
        restore = line("restore"),
    )
}

/// The lines of `log` (a retried check once), with `root` shown as `<root>`; empties it.
fn take_where(log: &Path, root: &Path) -> Vec<String> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let _ = fs::remove_file(log);
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.replace(&root.display().to_string(), "<root>");
        if lines.last() != Some(&line) {
            lines.push(line);
        }
    }
    lines
}

#[test]
fn every_kind_of_command_runs_where_the_readme_says() {
    let node = Node::new();
    let log = node.dir.path().join("where.log");
    let cooking = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", &where_commands_run_recipe(&log, true));
    app.commit("logs where it runs");
    app.deploy(&cooking);
    let shown = take_where(&log, &node.root);
    assert_eq!(
        shown,
        [
            "gather <root>/shop gather",
            "pre_install <root>/shop/project pre_install",
            "configure <root>/shop/build configure",
            "build <root>/shop/build build",
            "bundle <root>/shop/build bundle",
            // The first deploy: nothing was live, so nothing is stopped; migrations (the
            // deploy commands) run before the new release starts.
            "backup <root>/shop/run deploy",
            "deploy <root>/shop/run deploy",
            "start <root>/shop/run deploy",
            "check <root>/shop/run deploy",
            "post_deploy <root>/shop/run post_deploy",
        ],
        "cooking mode"
    );

    // A failed check rolls back: stop, restore and start run in run/ (switched back), as
    // the deploy stage.
    app.write("kiln.yml", &where_commands_run_recipe(&log, false));
    app.commit("check fails");
    let (ok, output) = app.push(&cooking);
    assert!(output.contains("deploy FAILED at deploy"), "{ok} {output}");
    let shown = take_where(&log, &node.root);
    let rollback = shown
        .iter()
        .position(|line| line.starts_with("restore"))
        .unwrap_or_else(|| panic!("no restore: {shown:?}\n{output}"));
    assert_eq!(
        shown[rollback - 1..],
        [
            "stop <root>/shop/run deploy",
            "restore <root>/shop/run deploy",
            "start <root>/shop/run deploy",
        ],
        "rollback"
    );

    let editable = node.init("blog", "editable");
    let app = node.app("blog");
    app.write("kiln.yml", &where_commands_run_recipe(&log, true));
    app.commit("logs where it runs");
    app.deploy(&editable);
    let shown = take_where(&log, &node.root);
    assert_eq!(
        shown,
        [
            "gather <root>/blog gather",
            "pre_install <root>/blog/project pre_install",
            "configure <root>/blog/project configure",
            "build <root>/blog/project build",
            "bundle <root>/blog/project bundle",
            "deploy <root>/blog/project deploy",
            "start <root>/blog/project deploy",
            "check <root>/blog/project deploy",
            "post_deploy <root>/blog/project post_deploy",
        ],
        "editable mode"
    );
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

/// Regression: `kiln releases shop | head -1` panicked (`failed printing to stdout: Broken
/// pipe`, and a backtrace) once the reader had gone. A view whose reader goes ends quietly, as
/// `git log | head` does.
#[test]
fn regression_a_view_whose_reader_goes_away_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build: [echo built]\n");
    app.commit("one");
    assert!(app.push(&project).0);
    for view in [
        &["releases", "shop"][..],
        &["releases", "shop", "--json"],
        &["status", "shop"],
        &["logs", "shop"],
        &["logs", "shop", "--json"],
        &["config", "shop"],
    ] {
        let mut child = Command::new(KILN)
            .arg("--root")
            .arg(&node.root)
            .args(view)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes before kiln prints anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "kiln {view:?}: {stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "kiln {view:?}: {:?}",
            out.status
        );
    }
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

/// Regression (issue 9): once undoing a failed deploy had failed (exit 3, journal kept), a
/// push of the fix printed no error, moved the branch and deployed nothing.
#[test]
fn regression_a_push_after_a_failed_recovery_says_not_deployed_on_its_last_line() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    let marker = node.dir.path().join("restore-can-work");
    let restore = format!("restore:\n  - test -f {}\n", marker.display());
    app.write(
        "kiln.yml",
        &format!("{restore}stages:\n  build:\n    - echo v1 > built.txt\n"),
    );
    app.commit("good");
    app.deploy(&project);
    let good = project.current().unwrap();
    let run_before = fingerprint(&project.run());

    // A migration fails, and so does the restore that should undo it.
    app.write(
        "kiln.yml",
        &format!("{restore}stages:\n  deploy:\n    - exit 1\n"),
    );
    app.commit("bad migration");
    let (_, output) = app.push(&project);
    assert!(
        last_remote_line(&output).starts_with("remote: -----> rollback FAILED: deploy of"),
        "{output}"
    );
    assert!(project.path("state/journal.json").exists(), "{output}");

    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - echo fixed > built.txt\n",
    );
    let fix = app.commit("the fix");
    let (ok, output) = app.push(&project);
    assert!(ok, "post-receive cannot refuse the push: {output}");
    let last = last_remote_line(&output);
    assert!(
        last.starts_with("remote: -----> NOT deployed: recovering the previous deploy failed: "),
        "{output}"
    );
    assert!(
        last.contains("`test -f ") && last.ends_with(
            "; run `kiln recover shop` (or `kiln recover shop --abandon`) then `kiln deploy shop`"
        ),
        "{output}"
    );
    assert!(!output.contains("-----> deploying"), "{output}");
    assert_eq!(project.branch_tip("master").as_deref(), Some(fix.as_str()));
    assert_eq!(project.releases().len(), 2, "no deploy of the fix started");
    assert_eq!(project.current().as_deref(), Some(good.as_str()));

    // By hand: the same message, exit 3 (the rollback failed), nothing deployed.
    let out = node.kiln(&["deploy", "shop"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: NOT deployed: recovering the previous deploy failed: "),
        "{}",
        text(&out)
    );

    // What the message says to do works.
    fs::write(&marker, "").unwrap();
    node.ok(&["recover", "shop"]);
    assert_same(
        &run_before,
        &fingerprint(&project.run()),
        "run/ after recover",
    );
    let out = node.ok(&["deploy", "shop"]);
    assert!(out.contains("-----> deployed"), "{out}");
    assert_eq!(
        fs::read_to_string(project.run().join("built.txt")).unwrap(),
        "fixed\n"
    );
}

/// Regression (issue 9): pushing the same commit again after a failed deploy answers
/// `Everything up-to-date` and deploys nothing (git runs no hook), and the failed push did not
/// say how to retry.
#[test]
fn regression_a_failed_push_says_how_to_retry() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    let marker = node.dir.path().join("dependency-is-up");
    app.write("kiln.yml", "keep: 10\n");
    app.commit("good");
    app.deploy(&project);
    let good = project.current().unwrap();

    // A build that fails for a reason outside the commit (a package index down, say).
    let flaky = format!(
        "keep: 10\nstages:\n  build:\n    - test -f {}\n",
        marker.display()
    );
    app.write("kiln.yml", &flaky);
    let commit = app.commit("needs the dependency");
    let (_, output) = app.push(&project);
    assert_eq!(
        last_remote_line(&output),
        format!(
            "remote: -----> deploy FAILED at build (test -f {}: exit 1); rolled back to {good}; retry with `kiln deploy shop`",
            marker.display()
        ),
        "{output}"
    );

    // Pushing the same commit again does nothing at all.
    let (ok, output) = app.push(&project);
    assert!(ok && output.contains("Everything up-to-date"), "{output}");
    assert!(!output.contains("remote:"), "{output}");
    assert_eq!(project.releases().len(), 2);

    // `kiln deploy <name>` retries the branch tip.
    fs::write(&marker, "").unwrap();
    let out = node.ok(&["deploy", "shop"]);
    assert!(out.contains("-----> deployed"), "{out}");
    let retried = project.current().unwrap();
    assert_eq!(
        project.release_log()["records"][2]["commit"],
        commit.as_str()
    );

    // So does an empty commit.
    fs::remove_file(&marker).unwrap();
    app.write("kiln.yml", &format!("{flaky}    - echo again\n"));
    app.commit("again");
    let (_, output) = app.push(&project);
    assert!(
        last_remote_line(&output).ends_with(&format!(
            "rolled back to {retried}; retry with `kiln deploy shop`"
        )),
        "{output}"
    );
    fs::write(&marker, "").unwrap();
    app.git(&["commit", "-q", "--allow-empty", "-m", "retry"]);
    let output = app.deploy(&project);
    assert!(
        last_remote_line(&output).starts_with("remote: -----> deployed"),
        "{output}"
    );
}

/// Regression (issue 9): the failure reason in the release log and on the last line cut a
/// long command after 40 characters, in the middle of a word.
#[test]
fn regression_a_long_failing_command_is_kept_whole_in_the_release_log() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    let command = "python -m pip install --no-index --find-links wheels/ -r requirements.txt \
        --only-binary=:all: --require-hashes || exit 7";
    app.write(
        "kiln.yml",
        &format!("stages:\n  build:\n    - echo ok\n    - \"{command}\"\n"),
    );
    app.commit("long command");
    let (_, output) = app.push(&project);
    let reason = format!("{command}: exit 7");

    let record = &project.release_log()["records"][0];
    assert_eq!(record["status"], "failed");
    assert_eq!(record["failure"], reason.as_str());
    let out = node.kiln(&["releases", "shop", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["releases"][0]["failure"], reason.as_str());
    let release = record["id"].as_str().unwrap();
    let events = project.events(release);
    let failure = events
        .iter()
        .find(|event| event["event"] == "failure")
        .expect("a failure event");
    assert_eq!(failure["reason"], reason.as_str(), "{events:?}");

    // The last line is shorter, and cut between two words.
    let last = last_remote_line(&output);
    let shown = last
        .strip_prefix("remote: -----> deploy FAILED at build (")
        .and_then(|rest| rest.split_once("…: exit 7)"))
        .map(|(shown, _)| shown)
        .unwrap_or_else(|| panic!("{output}"));
    assert!(shown.len() > 40, "{last}");
    assert!(
        command.starts_with(shown) && command[shown.len()..].starts_with(' '),
        "`{shown}` is not cut at a word boundary of `{command}`"
    );
}
