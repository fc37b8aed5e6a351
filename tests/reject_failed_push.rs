//! End to end: `reject_failed_push: true` deploys from the pre-receive hook, so a failed deploy
//! refuses the push and the branch does not move. The pushed commit is read from git's
//! quarantine; nothing kept may refer to it once git deletes a refused push's objects.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

/// The migration corrupts data/ and fails unless `ok` exists next to the node.
fn recipe(node: &Node, reject: Option<bool>) -> String {
    let ok = node.dir.path().join("ok");
    let reject = reject
        .map(|r| format!("reject_failed_push: {r}\n"))
        .unwrap_or_default();
    format!(
        "{reject}stages:\n  build:\n    - cp app.txt built.txt\n  deploy:\n    - echo corrupt > \"$KILN_DATA_DIR/db.txt\"\n    - test -f {ok} || exit 4\n    - echo rows > \"$KILN_DATA_DIR/db.txt\"\n",
        ok = ok.display()
    )
}

fn migrations_work(node: &Node, work: bool) {
    let ok = node.dir.path().join("ok");
    if work {
        fs::write(ok, "").unwrap();
    } else {
        let _ = fs::remove_file(ok);
    }
}

fn git_has_object(project: &Project, oid: &str) -> bool {
    Command::new("git")
        .arg("--git-dir")
        .arg(project.repo())
        .args(["cat-file", "-e", &format!("{oid}^{{commit}}")])
        .status()
        .unwrap()
        .success()
}

fn project_checkout(project: &Project) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(project.path("project"))
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn statuses(project: &Project) -> Vec<String> {
    project.releases().into_iter().map(|r| r.1).collect()
}

#[test]
fn a_failed_deploy_refuses_the_push_and_the_branch_does_not_move() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    fs::write(project.data().join("db.txt"), "rows\n").unwrap();
    let app = node.app("shop");
    migrations_work(&node, true);
    app.write("kiln.yml", &recipe(&node, Some(true)))
        .write("app.txt", "v1\n");
    let good = app.commit("good");
    let output = app.deploy(&project);
    assert!(
        last_remote_line(&output).starts_with("remote: -----> deployed"),
        "{output}"
    );
    assert_eq!(project.branch_tip("master").as_deref(), Some(good.as_str()));
    assert_eq!(
        statuses(&project),
        ["good"],
        "deployed once, not again by post-receive"
    );
    let live = project.current().unwrap();
    let before = Before::take(&project);

    migrations_work(&node, false);
    app.write("app.txt", "v2\n");
    let refused = app.commit("migration fails");
    let (ok, output) = app.push(&project);
    assert!(!ok, "the push must fail:\n{output}");
    assert_eq!(
        last_remote_line(&output),
        format!(
            "remote: -----> deploy FAILED at deploy (test -f {}/ok || exit 4: exit 4); rolled back to {live}; the push is refused (the branch did not move); push again to retry",
            node.dir.path().display()
        ),
        "{output}"
    );
    assert!(output.contains("pre-receive hook declined"), "{output}");
    assert_eq!(project.branch_tip("master").as_deref(), Some(good.as_str()));
    before.assert_unchanged(&project, "");
    assert_eq!(statuses(&project), ["good", "failed"]);
    let failed = &project.release_log()["records"][1];
    assert_eq!(failed["commit"], refused.as_str());
    assert_eq!(
        failed["failure"],
        format!("test -f {}/ok || exit 4: exit 4", node.dir.path().display())
    );
    // git deleted the refused objects; project/ is back at the commit the branch names.
    assert!(!git_has_object(&project, &refused));
    assert_eq!(project_checkout(&project), good);

    // The branch did not move, so pushing the same commit again runs the deploy again.
    migrations_work(&node, true);
    let output = app.deploy(&project);
    assert!(!output.contains("Everything up-to-date"), "{output}");
    assert_eq!(
        project.branch_tip("master").as_deref(),
        Some(refused.as_str())
    );
    assert_eq!(statuses(&project), ["good", "failed", "good"]);
    assert!(git_has_object(&project, &refused));
    assert_eq!(project_checkout(&project), refused);
    assert_eq!(
        fs::read_to_string(project.run().join("built.txt")).unwrap(),
        "v2\n"
    );

    // A fixed commit on top works as well, and its tarball and tree stay valid.
    app.write("app.txt", "v3\n");
    let fixed = app.commit("v3");
    app.deploy(&project);
    assert_eq!(
        project.branch_tip("master").as_deref(),
        Some(fixed.as_str())
    );
    assert_eq!(statuses(&project), ["good", "failed", "good", "good"]);
    let release = project.current().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(project.path(&format!("releases/{release}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["commit"], fixed.as_str());
    assert!(!project.path("state/pending-push").exists());
    node.ok(&["rollback", "shop"]);
    assert_eq!(
        fs::read_to_string(project.run().join("built.txt")).unwrap(),
        "v2\n"
    );
}

/// project.yml, else node.yml, else kiln.yml: the operators decide when they say.
#[test]
fn the_operators_setting_wins_over_kiln_yml() {
    let cases = [
        // (node.yml, project.yml, kiln.yml, refused)
        (None, None, None, false),
        (None, None, Some(true), true),
        (Some(true), None, None, true),
        (Some(true), None, Some(false), true),
        (Some(false), None, Some(true), false),
        (Some(true), Some(false), Some(true), false),
        (Some(false), Some(true), Some(false), true),
    ];
    for (node_yml, project_yml, kiln_yml, refused) in cases {
        let what =
            format!("node.yml {node_yml:?}, project.yml {project_yml:?}, kiln.yml {kiln_yml:?}");
        let node = Node::new();
        if let Some(value) = node_yml {
            node.write_node_yml(&format!("reject_failed_push: {value}\n"));
        }
        let project = node.init("shop", "cooking");
        if let Some(value) = project_yml {
            project.add_setting(&format!("reject_failed_push: {value}"));
        }
        let app = node.app("shop");
        app.write("kiln.yml", &recipe(&node, kiln_yml))
            .write("app.txt", "v1\n");
        let commit = app.commit("fails");
        let (ok, output) = app.push(&project);
        assert_eq!(!ok, refused, "{what}:\n{output}");
        assert_eq!(
            project.branch_tip("master").is_none(),
            refused,
            "{what}:\n{output}"
        );
        assert_eq!(statuses(&project), ["failed"], "{what}:\n{output}");
        let hint = if refused {
            "the push is refused (the branch did not move); push again to retry"
        } else {
            "retry with `kiln deploy shop`"
        };
        assert!(
            last_remote_line(&output).ends_with(hint),
            "{what}:\n{output}"
        );
        assert_eq!(git_has_object(&project, &commit), !refused, "{what}");
    }
}

/// Editable mode never rolls back (the tree stays as pushed, which needs the pushed commit):
/// it deploys from post-receive whatever the setting.
#[test]
fn editable_mode_deploys_from_post_receive() {
    let node = Node::new();
    let project = node.init("shop", "editable");
    project.add_setting("reject_failed_push: true");
    let app = node.app("shop");
    app.write("kiln.yml", &recipe(&node, Some(true)))
        .write("app.txt", "v1\n");
    let commit = app.commit("fails");
    let (ok, output) = app.push(&project);
    assert!(ok, "{output}");
    assert!(
        last_remote_line(&output)
            .ends_with("the tree is left as pushed; retry with `kiln deploy shop`"),
        "{output}"
    );
    assert_eq!(
        project.branch_tip("master").as_deref(),
        Some(commit.as_str())
    );
}

/// A push that waited for another push's deploy of the same branch must not deploy over it:
/// git would then refuse to move the branch, and the node would run a commit no branch names.
#[test]
fn a_push_that_waited_for_another_deploy_of_the_branch_is_refused() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    project.add_setting("reject_failed_push: true");
    let started = node.dir.path().join("first-started");
    let go = node.dir.path().join("go");
    let first = node.app("first");
    first
        .write(
            "kiln.yml",
            &format!(
                "stages:\n  build:\n    - touch {started}\n    - while [ ! -f {go} ]; do sleep 0.05; done\n",
                started = started.display(),
                go = go.display()
            ),
        )
        .write("app.txt", "first\n");
    let first_commit = first.commit("first");
    let second = node.app("second");
    second.write("app.txt", "second\n");
    second.commit("second");

    let first_push = Command::new("git")
        .current_dir(&first.dir)
        .args(["push", "-f"])
        .arg(project.repo())
        .arg("HEAD:master")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while !started.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut second_push = Command::new("git")
        .current_dir(&second.dir)
        .args(["push", "-f"])
        .arg(project.repo())
        .arg("HEAD:master")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the first deploy finish once the second push waits for it.
    let mut second_output = String::new();
    let mut lines = BufReader::new(second_push.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("waiting for the deploy of") {
            fs::write(&go, "").unwrap();
        }
        second_output.push_str(&line);
    }
    fs::write(&go, "").unwrap();
    let second_ok = second_push.wait().unwrap().success();
    let first_out = first_push.wait_with_output().unwrap();
    assert!(first_out.status.success(), "{}", text(&first_out));
    assert!(!second_ok, "{second_output}");
    assert!(
        last_remote_line(&second_output).starts_with(&format!(
            "remote: error: `master` moved to {} while this push waited for another deploy: fetch, merge and push again",
            &first_commit[..7]
        )),
        "{second_output}"
    );
    assert_eq!(
        project.branch_tip("master").as_deref(),
        Some(first_commit.as_str())
    );
    assert_eq!(statuses(&project), ["good"]);
    assert!(!project.path("state/pending-push").exists());
}

/// Starts a push of HEAD to master in its own process group; waits until its deploy runs the
/// build (the recipe touches `started`).
fn push_in_background(
    app: &App,
    project: &Project,
    started: &std::path::Path,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let child = Command::new("git")
        .current_dir(&app.dir)
        .args(["push", "-f"])
        .arg(project.repo())
        .arg("HEAD:master")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    while !started.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// Waits until no deploy runs on the project (the hook goes on after its pusher has gone).
fn wait_for_the_deploy(project: &Project) {
    for _ in 0..1500 {
        let running = project.release_log()["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "running");
        if !running && !project.path("state/journal.json").exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the deploy did not end");
}

/// A pusher who goes away (its connection closes, as when ssh dies) does not stop the deploy;
/// git still moves the branch once it worked. A hangup that kills git receive-pack too (a
/// local push in a terminal that closes) aborts the push: git deletes the pushed objects and
/// cannot move the branch, so the deploy rolls back.
#[test]
fn a_vanished_pusher_keeps_the_deploy_but_a_dead_receive_pack_rolls_it_back() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    project.add_setting("reject_failed_push: true");
    fs::write(project.data().join("db.txt"), "rows\n").unwrap();
    let started = node.dir.path().join("started");
    let go = node.dir.path().join("go");
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        &format!(
            "stages:\n  build:\n    - touch {started}\n    - while [ ! -f {go} ]; do sleep 0.05; done\n  deploy:\n    - echo migrated >> \"$KILN_DATA_DIR/db.txt\"\n",
            started = started.display(),
            go = go.display()
        ),
    )
    .write("app.txt", "v1\n");
    let first = app.commit("first");

    // The pusher's end of the connection closes: receive-pack lives on.
    let mut push = push_in_background(&app, &project, &started);
    push.kill().unwrap();
    push.wait().unwrap();
    fs::write(&go, "").unwrap();
    wait_for_the_deploy(&project);
    assert_eq!(project.releases().len(), 1);
    assert_eq!(project.releases()[0].1, "good");
    for _ in 0..500 {
        if project.branch_tip("master").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        project.branch_tip("master").as_deref(),
        Some(first.as_str())
    );
    let before = Before::take(&project);

    // A hangup of the whole push: git receive-pack dies with it.
    fs::remove_file(&started).unwrap();
    fs::remove_file(&go).unwrap();
    app.write("app.txt", "v2\n");
    let second = app.commit("second");
    let push = push_in_background(&app, &project, &started);
    let group = nix::unistd::Pid::from_raw(i32::try_from(push.id()).unwrap());
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGHUP).unwrap();
    let mut push = push;
    push.wait().unwrap();
    fs::write(&go, "").unwrap();
    wait_for_the_deploy(&project);
    assert_eq!(statuses(&project), ["good", "failed"]);
    let failure = project.release_log()["records"][1]["failure"].clone();
    assert!(
        failure
            .as_str()
            .unwrap()
            .starts_with("the push was aborted: git receive-pack (pid "),
        "{failure}"
    );
    assert_eq!(
        project.branch_tip("master").as_deref(),
        Some(first.as_str())
    );
    assert!(!git_has_object(&project, &second));
    before.assert_unchanged(&project, "");
}

/// Issue 9 with `reject_failed_push`: when recovering the previous deploy fails (here its
/// journal is unreadable), the push is refused and says so on its last line.
#[test]
fn a_failed_recovery_refuses_the_push() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    project.add_setting("reject_failed_push: true");
    migrations_work(&node, true);
    let app = node.app("shop");
    app.write("kiln.yml", &recipe(&node, None))
        .write("app.txt", "v1\n");
    let good = app.commit("good");
    app.deploy(&project);
    fs::write(project.path("state/journal.json"), "{ torn").unwrap();

    app.write("app.txt", "v2\n");
    app.commit("v2");
    let (ok, output) = app.push(&project);
    assert!(!ok, "{output}");
    let last = last_remote_line(&output);
    assert!(
        last.starts_with(
            "remote: -----> NOT deployed: recovering the previous deploy failed: the journal `"
        ) && last.ends_with(
            "; run `kiln recover shop` (or `kiln recover shop --abandon`) then push again"
        ),
        "{output}"
    );
    assert_eq!(project.branch_tip("master").as_deref(), Some(good.as_str()));
    assert_eq!(statuses(&project), ["good"]);

    fs::remove_file(project.path("state/journal.json")).unwrap();
    app.deploy(&project);
    assert_eq!(statuses(&project), ["good", "good"]);
}

/// Production with `reject_failed_push`: a commit that staging has not baked is refused and
/// the branch does not move; one it has deploys from pre-receive.
#[test]
fn final_mode_refuses_a_commit_staging_has_not_baked() {
    let staging_node = Node::new();
    let staging = staging_node.init("shop", "cooking");
    let production_node = staging_node.sibling("production");
    let production = production_node.init_with(
        "shop",
        &[
            "--mode",
            "final",
            "--source",
            staging.base.to_str().unwrap(),
        ],
    );
    production.add_setting("reject_failed_push: true");
    let app = staging_node.app("shop");
    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - cp app.txt built.txt\n",
    )
    .write("app.txt", "v1\n");
    let baked = app.commit("baked on staging");
    app.deploy(&staging);
    app.deploy(&production);
    assert_eq!(
        production.branch_tip("master").as_deref(),
        Some(baked.as_str())
    );
    let run_before = fingerprint(&production.run());

    app.write("app.txt", "v2\n");
    let unbaked = app.commit("not on staging");
    let (ok, output) = app.push(&production);
    assert!(!ok, "{output}");
    assert!(
        last_remote_line(&output).starts_with(&format!(
            "remote: -----> deploy FAILED at configure (no release of {unbaked} at "
        )),
        "{output}"
    );
    assert!(
        last_remote_line(&output)
            .ends_with("; the push is refused (the branch did not move); push again to retry"),
        "{output}"
    );
    assert_eq!(
        production.branch_tip("master").as_deref(),
        Some(baked.as_str())
    );
    assert_same(&run_before, &fingerprint(&production.run()), "run/");

    // Once staging has it, the same push works.
    app.deploy(&staging);
    app.deploy(&production);
    assert_eq!(
        fs::read_to_string(production.run().join("built.txt")).unwrap(),
        "v2\n"
    );
    assert_eq!(
        production.branch_tip("master").as_deref(),
        Some(unbaked.as_str())
    );
}

/// The very first push is refused: project/ was checked out at its commit (read from the
/// quarantine), which git then deleted; the next push must still deploy.
#[test]
fn a_refused_first_push_does_not_break_the_next_one() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    migrations_work(&node, false);
    app.write("kiln.yml", &recipe(&node, Some(true)))
        .write("app.txt", "v1\n")
        .write("only-in-the-refused-commit.txt", "x\n");
    let refused = app.commit("refused");
    let (ok, output) = app.push(&project);
    assert!(!ok, "{output}");
    assert!(!git_has_object(&project, &refused));
    assert_eq!(project.branch_tip("master"), None);

    // The fix replaces the refused commit, so the next push does not bring it back.
    migrations_work(&node, true);
    app.remove("only-in-the-refused-commit.txt")
        .write("app.txt", "v2\n");
    assert_success(&app.git(&["add", "-A"]), "git add");
    assert_success(
        &app.git(&["commit", "-q", "--amend", "-m", "good"]),
        "git commit",
    );
    let out = app.git(&["rev-parse", "HEAD"]);
    let good = String::from_utf8_lossy(&out.stdout).trim().to_string();
    app.deploy(&project);
    assert!(!git_has_object(&project, &refused));
    assert_eq!(project.branch_tip("master").as_deref(), Some(good.as_str()));
    assert_eq!(project_checkout(&project), good);
    assert_eq!(
        fs::read_to_string(project.run().join("built.txt")).unwrap(),
        "v2\n"
    );
}
