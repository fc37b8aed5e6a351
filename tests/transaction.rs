//! End to end: deploys are transactions. A failure anywhere, a kill -9, two pushes at once or an
//! operator's manual fix must leave run/ and data/ exactly as the contract promises.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Gives data/ a bit of everything.
fn fill_data(project: &Project) {
    let data = project.data();
    fs::write(data.join("db.txt"), "rows: 1\n").unwrap();
    fs::create_dir_all(data.join("uploads/empty")).unwrap();
    fs::write(data.join("uploads/a.png"), [0u8, 159, 146, 150]).unwrap();
    fs::write(data.join(std::ffi::OsStr::from_bytes(b"caf\xe9.bin")), "x").unwrap();
    symlink("uploads/a.png", data.join("latest")).unwrap();
    fs::set_permissions(data.join("db.txt"), fs::Permissions::from_mode(0o640)).unwrap();
}

/// A project with one good release live and a data/ that has a bit of everything.
fn live_project(node: &Node, extra: &str) -> (Project, App, String) {
    let project = node.init("shop", "cooking");
    fill_data(&project);
    let app = node.app("shop");
    app.write("kiln.yml", &recipe(node, "", extra))
        .write("app.txt", "v1\n");
    app.commit("good");
    let (ok, output) = app.push(&project);
    assert!(ok && output.contains("-----> deployed"), "{output}");
    let good = project.current().unwrap();
    (project, app, good)
}

/// A recipe whose services log to services.log outside the project (`stop <release>`,
/// `start <release>`), plus `stages`.
fn recipe(node: &Node, stages: &str, extra: &str) -> String {
    recipe_with(node, ("stop", "start"), stages, extra)
}

/// [`recipe`] with services that log other words, e.g. ("stop-v2", "start-v2").
fn recipe_with(node: &Node, (stop, start): (&str, &str), stages: &str, extra: &str) -> String {
    let log = node.dir.path().join("services.log");
    let build = if stages.contains("  build:") {
        ""
    } else {
        "  build:\n    - echo built > built.txt\n"
    };
    format!(
        "services:\n  stop: echo {stop} $KILN_RELEASE >> {log}\n  start: echo {start} $KILN_RELEASE >> {log}\n{extra}stages:\n{build}{stages}",
        log = log.display()
    )
}

fn services_log(node: &Node) -> String {
    fs::read_to_string(node.dir.path().join("services.log")).unwrap_or_default()
}

/// Deploy commands that change data/ in every way: modify, create, delete, chmod, and write
/// into the live tree too.
const MESS_UP: &str = "    - echo rows-2 > \"$KILN_DATA_DIR/db.txt\"\n    - touch \"$KILN_DATA_DIR/new.txt\" && mkdir \"$KILN_DATA_DIR/newdir\"\n    - rm \"$KILN_DATA_DIR/uploads/a.png\" && chmod 600 \"$KILN_DATA_DIR/db.txt\"\n    - echo cache > \"$KILN_RUN_DIR/cache.txt\"\n";

#[test]
fn a_failure_in_any_stage_leaves_run_and_data_exactly_as_before() {
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            "configure",
            "  configure:\n    - exit 4\n",
            "",
            "configure (exit 4: exit 4)",
        ),
        (
            "build",
            "  build:\n    - exit 5\n",
            "",
            "build (exit 5: exit 5)",
        ),
        (
            "deploy",
            &format!("  deploy:\n{MESS_UP}    - exit 6\n"),
            "",
            "deploy (exit 6: exit 6)",
        ),
        (
            "post_deploy",
            &format!("  deploy:\n{MESS_UP}  post_deploy:\n    - exit 7\n"),
            "",
            "post_deploy (exit 7: exit 7)",
        ),
        (
            "check",
            &format!("  deploy:\n{MESS_UP}"),
            "check:\n  command: test -f no-such-file\n  timeout: 1s\n  interval: 200ms\n",
            "deploy (test -f no-such-file: exit 1)",
        ),
    ]
    .map(|(a, b, c, d)| (a, Box::leak(b.to_string().into_boxed_str()) as &str, c, d));
    for (stage, stages, extra, expected) in cases {
        let node = Node::new();
        let (project, app, good) = live_project(&node, "");
        let before = Before::take(&project);
        let services_before = services_log(&node);

        app.write("kiln.yml", &recipe(&node, stages, extra));
        app.commit(&format!("fails at {stage}"));
        let (_, output) = app.push(&project);
        assert!(
            output.contains(&format!(
                "-----> deploy FAILED at {expected}; rolled back to {good}"
            )),
            "{stage}:\n{output}"
        );
        before.assert_unchanged(&project, stage);
        assert_eq!(project.current().as_deref(), Some(good.as_str()), "{stage}");
        let statuses: Vec<String> = project.releases().into_iter().map(|r| r.1).collect();
        assert_eq!(statuses, ["good", "failed"], "{stage}");
        let failed_id = project.releases()[1].0.clone();
        assert!(
            project
                .path(&format!("archives/{failed_id}/failed"))
                .is_dir(),
            "{stage}: the failed tree is kept for inspection"
        );
        // The live release was stopped and started again when it had been stopped; the new
        // one was stopped again only if it had been started (deploy commands run before that).
        let services = services_log(&node)[services_before.len()..].to_string();
        let expected_services = match stage {
            "configure" | "build" => String::new(),
            "deploy" => format!("stop {good}\nstart {good}\n"),
            _ => format!("stop {good}\nstart {failed_id}\nstop {failed_id}\nstart {good}\n"),
        };
        assert_eq!(services, expected_services, "{stage}");
    }
}

#[test]
fn kiln_deploy_exits_1_after_a_clean_rollback() {
    let node = Node::new();
    let (project, app, _) = live_project(&node, "");
    app.write("kiln.yml", &recipe(&node, "  deploy:\n    - exit 9\n", ""));
    app.commit("bad");
    app.push_next(&project);
    let out = node.kiln(&["deploy", "shop", "--rev", "next"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("error: deploy FAILED at deploy (exit 9: exit 9); rolled back to"));
}

#[test]
fn in_place_switch_fallback_also_rolls_back_exactly() {
    let node = Node::new();
    let (project, app, good) = live_project(&node, "");
    let before = Before::take(&project);
    app.write(
        "kiln.yml",
        &recipe(&node, &format!("  deploy:\n{MESS_UP}    - exit 3\n"), ""),
    );
    app.commit("bad");
    app.push_next(&project);
    let out = node.kiln_env(
        &["deploy", "shop", "--rev", "next"],
        &[("KILN_SWITCH", "in-place")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("(in-place)"), "{}", text(&out));
    before.assert_unchanged(&project, "");
    assert_eq!(project.current(), Some(good));
    // And a good deploy through the fallback works.
    app.write("kiln.yml", &recipe(&node, "", ""));
    app.write("app.txt", "v3\n");
    app.commit("good again");
    app.push_next(&project);
    let out = node.kiln_env(
        &["deploy", "shop", "--rev", "next"],
        &[("KILN_SWITCH", "in-place")],
    );
    assert_success(&out, "in-place deploy");
    assert_eq!(
        fs::read_to_string(project.run().join("app.txt")).unwrap(),
        "v3\n"
    );
}

#[test]
fn kill_9_from_a_deploy_command_is_recovered_by_the_next_command() {
    let node = Node::new();
    let (project, app, good) = live_project(&node, "");
    let before = Before::take(&project);
    // $PPID of the command's shell is kiln itself: a real SIGKILL after the switch.
    app.write(
        "kiln.yml",
        &recipe(
            &node,
            &format!("  deploy:\n{MESS_UP}    - kill -9 $PPID; sleep 5\n"),
            "",
        ),
    );
    app.commit("killer");
    app.push_next(&project);
    let out = node.kiln(&["deploy", "shop", "--rev", "next"]);
    assert_eq!(
        out.status.code(),
        None,
        "kiln must have died by a signal: {}",
        text(&out)
    );
    let status = text(&node.kiln(&["status", "shop"]));
    assert!(status.contains("interrupted: the deploy of"), "{status}");

    let out = node.kiln(&["recover", "shop"]);
    assert_success(&out, "recover");
    assert!(
        text(&out).contains(&format!("rolled back to {good}")),
        "{}",
        text(&out)
    );
    before.assert_unchanged(&project, "");
    let statuses: Vec<String> = project.releases().into_iter().map(|r| r.1).collect();
    assert_eq!(statuses, ["good", "failed"]);
    let out = node.kiln(&["recover", "shop"]);
    assert!(text(&out).contains("nothing to recover"), "{}", text(&out));
}

#[cfg(feature = "failpoints")]
#[test]
fn kill_9_at_each_point_of_the_switch_ends_before_or_after_never_between() {
    // (failpoint, whether the deploy counts as done)
    for (point, done) in [
        ("after-snapshot", false),
        ("after-stop", false),
        ("after-switch", false),
        ("after-deploy-commands", false),
        ("before-commit", false),
        ("after-commit", true),
    ] {
        let node = Node::new();
        let (project, app, good) = live_project(&node, "");
        let before = Before::take(&project);
        app.write(
            "kiln.yml",
            &recipe(&node, &format!("  deploy:\n{MESS_UP}"), ""),
        )
        .write("app.txt", "v2\n");
        app.commit("next");
        app.push_next(&project);
        node.killed_at(point, &["deploy", "shop", "--rev", "next"]);

        // Any next command on the project recovers first; `kiln deploy` would too.
        let out = node.kiln(&["recover", "shop"]);
        assert_success(&out, "recover");
        if done {
            let new = project.current().unwrap();
            assert_ne!(new, good, "{point}");
            assert_same(
                &tree_fingerprint(&project.path(&format!("deploy/{new}"))),
                &{
                    let mut run = tree_fingerprint(&project.run());
                    run.remove(b"cache.txt".as_slice());
                    run
                },
                &format!("{point}: run/ is the new release"),
            );
            assert_eq!(
                fs::read_to_string(project.data().join("db.txt")).unwrap(),
                "rows-2\n"
            );
        } else {
            before.assert_unchanged(&project, point);
            assert_eq!(project.current().as_deref(), Some(good.as_str()), "{point}");
            let statuses: Vec<String> = project.releases().into_iter().map(|r| r.1).collect();
            assert_eq!(statuses, ["good", "failed"], "{point}");
        }
        assert!(!project.path("state/journal.json").exists(), "{point}");
    }
}

#[cfg(feature = "failpoints")]
#[test]
fn kill_9_during_the_rollback_itself_is_finished_by_recovery() {
    let node = Node::new();
    let (project, app, good) = live_project(&node, "");
    let before = Before::take(&project);
    app.write(
        "kiln.yml",
        &recipe(&node, &format!("  deploy:\n{MESS_UP}    - exit 1\n"), ""),
    );
    app.commit("fails");
    app.push_next(&project);
    node.killed_at(
        "rollback-after-exchange",
        &["deploy", "shop", "--rev", "next"],
    );
    let out = node.kiln(&["recover", "shop"]);
    assert_success(&out, "recover");
    before.assert_unchanged(&project, "");
    assert_eq!(project.current(), Some(good));
}

#[test]
fn two_concurrent_pushes_never_interleave() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let slow = "stages:\n  build:\n    - echo start $KILN_COMMIT >> ../../order.log; sleep 2; echo end $KILN_COMMIT >> ../../order.log\n";
    let a = node.app("a");
    a.write("kiln.yml", slow).write("who.txt", "a\n");
    let commit_a = a.commit("a");
    let b = node.app("b");
    b.write("kiln.yml", slow).write("who.txt", "b\n");
    let commit_b = b.commit("b");

    let push = |app: &App| {
        Command::new("git")
            .current_dir(&app.dir)
            .args([
                "push",
                "-f",
                project.repo().to_str().unwrap(),
                "HEAD:master",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = push(&a);
    std::thread::sleep(Duration::from_millis(700));
    let second = push(&b);
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    let second_text = text(&second);
    assert!(text(&first).contains("-----> deployed"), "{}", text(&first));
    assert!(
        second_text.contains("-----> waiting for the deploy of "),
        "{second_text}"
    );
    assert!(second_text.contains("-----> deployed"), "{second_text}");
    let order = fs::read_to_string(node.root.join("order.log")).unwrap();
    assert_eq!(
        order,
        format!("start {commit_a}\nend {commit_a}\nstart {commit_b}\nend {commit_b}\n")
    );
    assert_eq!(
        fs::read_to_string(project.run().join("who.txt")).unwrap(),
        "b\n"
    );
}

#[test]
fn manual_edits_in_run_are_shown_saved_and_reported() {
    let node = Node::new();
    let (project, app, _) = live_project(&node, "");
    fs::write(project.run().join("app.txt"), "hot fix\n").unwrap();
    fs::write(project.run().join("added-by-hand.txt"), "note\n").unwrap();
    fs::remove_file(project.run().join("built.txt")).unwrap();

    let status = text(&node.kiln(&["status", "shop"]));
    assert!(
        status.contains("drift:       3 manual change(s)"),
        "{status}"
    );
    assert!(status.contains("modified app.txt"), "{status}");

    app.write("app.txt", "v2\n");
    app.commit("v2");
    let (ok, output) = app.push(&project);
    assert!(ok, "{output}");
    assert!(
        output.contains("manual edits found in run/ were saved under"),
        "{output}"
    );
    assert!(output.contains("added added-by-hand.txt"), "{output}");
    assert!(output.contains("deleted built.txt"), "{output}");
    let new = project.current().unwrap();
    let drift = project.path(&format!("archives/{new}/drift"));
    assert_eq!(
        fs::read_to_string(drift.join("files/app.txt")).unwrap(),
        "hot fix\n"
    );
    assert_eq!(
        fs::read_to_string(drift.join("files/added-by-hand.txt")).unwrap(),
        "note\n"
    );
    let changes = fs::read_to_string(drift.join("changes.txt")).unwrap();
    assert!(changes.contains("deleted built.txt"), "{changes}");
    assert_eq!(
        fs::read_to_string(project.run().join("app.txt")).unwrap(),
        "v2\n"
    );
}

#[test]
fn drift_refuse_makes_the_deploy_refuse_and_change_nothing() {
    let node = Node::new();
    let (project, app, good) = live_project(&node, "drift: refuse\n");
    fs::write(project.run().join("app.txt"), "hot fix\n").unwrap();
    let before = Before::take(&project);
    app.write("app.txt", "v2\n");
    app.commit("v2");
    let (_, output) = app.push(&project);
    assert!(
        output.contains("manual edits found in run/ (modified app.txt)"),
        "{output}"
    );
    assert!(output.contains("deploy FAILED at deploy"), "{output}");
    before.assert_unchanged(&project, "drift: refuse");
    assert_eq!(project.current(), Some(good));
}

#[test]
fn pruning_after_many_failures_keeps_the_last_good_release() {
    let node = Node::new();
    let (project, app, good) = live_project(&node, "keep: 1\n");
    for i in 0..4 {
        app.write(
            "kiln.yml",
            &recipe(&node, "  deploy:\n    - exit 1\n", "keep: 1\n"),
        )
        .write("n.txt", &i.to_string());
        app.commit(&format!("bad {i}"));
        let (_, output) = app.push(&project);
        assert!(output.contains("deploy FAILED"), "{output}");
    }
    // A good deploy prunes: the failures beyond `keep` go, the live release stays.
    app.write("kiln.yml", &recipe(&node, "", "keep: 1\n"));
    app.commit("good again");
    let (ok, output) = app.push(&project);
    assert!(ok && output.contains("-----> deployed"), "{output}");
    let newest = project.current().unwrap();
    assert!(project.path(&format!("deploy/{newest}")).is_dir());
    assert!(
        project
            .path(&format!("releases/{newest}.tar.zst"))
            .is_file()
    );
    // `good` was the last good before; with keep 1 it may go now, but never while it was the
    // only good release: check the log kept it through the failures.
    let log = project.release_log();
    assert_eq!(log["records"][0]["id"], good.as_str());
    let failed: Vec<String> = project
        .releases()
        .into_iter()
        .filter(|r| r.1 == "failed")
        .map(|r| r.0)
        .collect();
    assert_eq!(failed.len(), 4);
    let kept_failures = failed
        .iter()
        .filter(|id| project.path(&format!("archives/{id}")).exists())
        .count();
    assert_eq!(
        kept_failures, 1,
        "only the newest failure is kept for inspection"
    );
}

#[test]
fn failures_alone_never_prune_the_live_release() {
    let node = Node::new();
    let (project, app, good) = live_project(&node, "keep: 1\n");
    for i in 0..3 {
        app.write(
            "kiln.yml",
            &recipe(&node, "  build:\n    - exit 1\n", "keep: 1\n"),
        )
        .write("n.txt", &i.to_string());
        app.commit(&format!("bad {i}"));
        app.push(&project);
    }
    assert!(project.path(&format!("deploy/{good}")).is_dir());
    assert!(project.path(&format!("releases/{good}.tar.zst")).is_file());
    assert_eq!(project.current(), Some(good));
}

#[test]
fn a_data_snapshot_is_a_real_copy() {
    let node = Node::new();
    let (project, app, first) = live_project(&node, "");
    let snapshot = project.path(&format!("archives/{first}/data"));
    assert_eq!(
        fs::read_to_string(snapshot.join("db.txt")).unwrap(),
        "rows: 1\n"
    );
    // An in-place write to the live file must not reach the snapshot.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(project.data().join("db.txt"))
        .unwrap();
    file.seek(SeekFrom::Start(6)).unwrap();
    file.write_all(b"9").unwrap();
    drop(file);
    assert_eq!(
        fs::read_to_string(project.data().join("db.txt")).unwrap(),
        "rows: 9\n"
    );
    assert_eq!(
        fs::read_to_string(snapshot.join("db.txt")).unwrap(),
        "rows: 1\n"
    );

    // Later snapshots share unchanged files with the previous one, never with data/. A file
    // written within two seconds of a snapshot is copied again once (timestamps are coarse).
    std::thread::sleep(Duration::from_millis(2100));
    let mut snapshots = Vec::new();
    for version in ["v2", "v3"] {
        app.write("app.txt", version);
        app.commit(version);
        assert!(app.push(&project).0);
        snapshots.push(project.path(&format!("archives/{}/data", project.current().unwrap())));
    }
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    let (snap2, snap3) = (&snapshots[0], &snapshots[1]);
    assert_eq!(
        ino(&snap3.join("uploads/a.png")),
        ino(&snap2.join("uploads/a.png"))
    );
    assert_ne!(
        ino(&snap3.join("uploads/a.png")),
        ino(&project.data().join("uploads/a.png"))
    );
    assert_ne!(
        ino(&snap2.join("uploads/a.png")),
        ino(&project.data().join("uploads/a.png"))
    );
    assert_eq!(
        fs::read_to_string(snap3.join("db.txt")).unwrap(),
        "rows: 9\n"
    );
}

#[test]
fn rollback_by_hand_to_last_good_and_with_data() {
    let node = Node::new();
    let (project, app, first) = live_project(&node, "");
    let run_first = fingerprint(&project.run());
    app.write(
        "kiln.yml",
        &recipe(
            &node,
            "  deploy:\n    - echo rows-2 > \"$KILN_DATA_DIR/db.txt\"\n",
            "",
        ),
    )
    .write("app.txt", "v2\n");
    app.commit("v2");
    assert!(app.push(&project).0);
    let second = project.current().unwrap();
    assert_eq!(
        fs::read_to_string(project.data().join("db.txt")).unwrap(),
        "rows-2\n"
    );

    let out = node.kiln(&["rollback", "shop"]);
    assert_success(&out, "rollback");
    assert!(
        text(&out).contains(&format!("rolled back to {first}")),
        "{}",
        text(&out)
    );
    assert_eq!(project.current().as_deref(), Some(first.as_str()));
    assert_eq!(
        fs::read_to_string(project.run().join("app.txt")).unwrap(),
        "v1\n"
    );
    assert_same(
        &run_first,
        &fingerprint(&project.run()),
        "run/ is the first release again",
    );
    // Without --with-data, data/ stays as it is.
    assert_eq!(
        fs::read_to_string(project.data().join("db.txt")).unwrap(),
        "rows-2\n"
    );
    let log = project.releases();
    assert_eq!(log[1], (second.clone(), "rolled_back".to_string()));

    let out = node.kiln(&["rollback", "shop", &first, "--with-data"]);
    assert_success(&out, "rollback --with-data");
    assert_eq!(
        fs::read_to_string(project.data().join("db.txt")).unwrap(),
        "rows: 1\n"
    );

    let out = node.kiln(&["rollback", "shop", "20200101T000000Z-00000000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("error: unknown release"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_deploy_survives_the_pusher_disconnecting() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done\n",
    );
    app.commit("slow");
    let mut push = Command::new("git")
        .current_dir(&app.dir)
        .args(["push", project.repo().to_str().unwrap(), "HEAD:master"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    push.kill().unwrap();
    let _ = push.wait();
    // The deploy goes on without its audience and finishes: its last line is written a moment
    // after the commit point names it live.
    let finished = |release: &str| {
        fs::read_to_string(project.path(&format!("logs/{release}.log")))
            .is_ok_and(|log| log.contains(&format!("-----> deployed {release}")))
    };
    let mut done = false;
    for _ in 0..600 {
        if project.current().is_some_and(|r| finished(&r)) {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(done, "the deploy did not finish after the pusher went away");
    let release = project.current().unwrap();
    let log = fs::read_to_string(project.path(&format!("logs/{release}.log"))).unwrap();
    assert!(log.contains("tick 6"), "{log}");
    assert!(log.contains(&format!("-----> deployed {release}")), "{log}");
}

#[test]
fn a_rollback_that_fails_exits_3_keeps_the_journal_and_recover_finishes_it() {
    let node = Node::new();
    let marker = node.dir.path().join("restore-can-work");
    let restore = format!("restore:\n  - test -f {}\n", marker.display());
    let (project, app, good) = live_project(&node, &restore);
    let before = Before::take(&project);
    app.write(
        "kiln.yml",
        &recipe(
            &node,
            &format!("  deploy:\n{MESS_UP}    - exit 1\n"),
            &restore,
        ),
    );
    app.commit("fails, and so does its restore");
    app.push_next(&project);
    let out = node.kiln(&["deploy", "shop", "--rev", "next"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("error: rollback FAILED: deploy of"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("run `kiln recover shop`"),
        "{}",
        text(&out)
    );
    assert!(
        project.path("state/journal.json").exists(),
        "the journal is kept for the operator"
    );

    // The operator fixes the cause; recovery finishes the rollback.
    fs::write(&marker, "").unwrap();
    let out = node.kiln(&["recover", "shop"]);
    assert_success(&out, "recover");
    before.assert_unchanged(&project, "");
    assert_eq!(project.current(), Some(good));
    assert!(!project.path("state/journal.json").exists());
}

#[test]
fn status_shows_a_running_deploy() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build:\n    - sleep 2\n");
    app.commit("slow");
    let push = Command::new("git")
        .current_dir(&app.dir)
        .args([
            "push",
            &format!("file://{}", project.repo().display()),
            "HEAD:master",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = serde_json::Value::Null;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        let out = node.kiln(&["status", "shop", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // The holder names its release once the deploy has picked one.
        if json["running"]["release"].is_string() {
            running = json["running"].clone();
            break;
        }
    }
    assert_eq!(running["action"], "deploy", "{running}");
    assert!(
        running["release"].as_str().is_some_and(|r| r.len() == 25),
        "{running}"
    );
    let out = push.wait_with_output().unwrap();
    assert!(
        text(&out).contains("-----> deployed"),
        "a file:// push deploys too: {}",
        text(&out)
    );
    let out = node.kiln(&["status", "shop", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["running"].is_null());
}

/// Regression: recovery took an interrupted `kiln rollback` for a finished one, because the
/// release it rolls back to was already marked good; only the release log's `current` says
/// whether a switch was committed.
#[cfg(feature = "failpoints")]
#[test]
fn regression_an_interrupted_manual_rollback_is_undone_not_taken_for_done() {
    let node = Node::new();
    let (project, app, first) = live_project(&node, "");
    app.write("app.txt", "v2\n");
    app.commit("v2");
    assert!(app.push(&project).0);
    let second = project.current().unwrap();
    let before = Before::take(&project);
    node.killed_at("after-switch", &["rollback", "shop", &first]);
    let out = node.kiln(&["recover", "shop"]);
    assert_success(&out, "recover");
    assert_eq!(project.current(), Some(second));
    before.assert_unchanged(&project, "");
    // The recovery goes on in the rollback's own log.
    let log = project
        .names_in("logs")
        .into_iter()
        .find(|n| n.starts_with(&format!("{first}-rollback-")) && n.ends_with(".log"))
        .unwrap();
    let log = fs::read_to_string(project.path(&format!("logs/{log}"))).unwrap();
    assert!(log.contains("-----> rolling back shop to"), "{log}");
    assert!(
        log.contains("-----> recovering the interrupted rollback"),
        "{log}"
    );
}

#[test]
fn a_deploy_ignores_sighup_from_a_dropped_session() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", "stages:\n  build:\n    - sleep 1.5\n");
    app.commit("slow");
    app.push_next(&project);
    let child = Command::new(KILN)
        .arg("--root")
        .arg(&node.root)
        .args(["deploy", "shop", "--rev", "next"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_success(&out, "deploy after SIGHUP");
    assert!(project.current().is_some());
}

/// Regression: a rollback's `backup:` commands wrote into the backup dir of the release being
/// rolled back to, overwriting what that release's own deploy kept.
#[test]
fn regression_a_rollback_backs_up_into_its_own_archive() {
    let node = Node::new();
    let backup = "backup:\n  - echo \"$KILN_RELEASE $$\" > \"$KILN_BACKUP_DIR/dump.sql\"\n";
    let (project, app, first) = live_project(&node, backup);
    let kept = project.path(&format!("archives/{first}/backup/dump.sql"));
    let before = fs::read_to_string(&kept).unwrap();
    app.write("app.txt", "v2\n");
    app.commit("v2");
    assert!(app.push(&project).0);
    let out = node.kiln(&["rollback", "shop", &first]);
    assert_success(&out, "rollback");
    assert_eq!(fs::read_to_string(&kept).unwrap(), before);
    let rollback_dumps: Vec<_> = fs::read_dir(project.path("archives"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(&format!("{first}-rollback-")))
        .map(|p| p.join("backup/dump.sql"))
        .collect();
    assert_eq!(rollback_dumps.len(), 1);
    assert!(rollback_dumps[0].is_file());
}

/// The services lines written since `mark` (a length of the services log read earlier).
fn services_since(node: &Node, mark: usize) -> String {
    services_log(node)[mark..].to_string()
}

/// Regression: with no release live, a deploy whose `services.start` failed was rolled back by
/// running that same start again in the empty run/, which failed too (exit 3), and every later
/// `kiln recover`, `kiln deploy` and `kiln rollback` exited 3 with the same error.
#[test]
fn regression_a_failed_first_deploy_stops_what_it_started_and_the_next_push_deploys() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    fill_data(&project);
    let before = Before::take(&project);
    let app = node.app("shop");
    let log = node.dir.path().join("services.log");
    let failing_start = format!(
        "services:\n  stop: echo stop $KILN_RELEASE >> {log}\n  start: echo start $KILN_RELEASE >> {log}; exit 1\nstages:\n  deploy:\n{MESS_UP}",
        log = log.display()
    );
    app.write("kiln.yml", &failing_start)
        .write("app.txt", "v1\n");
    app.commit("start fails");
    app.push_next(&project);
    let out = node.kiln(&["deploy", "shop", "--rev", "next"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("rolled back (no release was live before)"),
        "{}",
        text(&out)
    );
    before.assert_unchanged(&project, "a failed first deploy");
    let failed = project.releases()[0].0.clone();
    // What was started is stopped; nothing is started again: nothing was live.
    assert_eq!(
        services_log(&node),
        format!("start {failed}\nstop {failed}\n")
    );
    assert_eq!(project.releases(), [(failed, "failed".to_string())]);
    assert_eq!(project.current(), None);
    assert!(!project.path("state/journal.json").exists());
    let out = node.kiln(&["recover", "shop"]);
    assert!(text(&out).contains("nothing to recover"), "{}", text(&out));

    // The next push of a fix deploys.
    app.write("kiln.yml", &recipe(&node, "", ""));
    app.commit("fixed");
    app.deploy(&project);
    assert_eq!(
        fs::read_to_string(project.run().join("app.txt")).unwrap(),
        "v1\n"
    );
}

/// Regression: a rollback that could not finish left no way out but editing
/// state/journal.json by hand; `kiln recover --abandon` records the failure and removes the
/// journal without touching run/ or data/.
#[test]
fn regression_a_rollback_that_cannot_finish_can_be_abandoned() {
    let node = Node::new();
    let restore = "restore:\n  - exit 1\n";
    let (project, app, good) = live_project(&node, "");
    app.write(
        "kiln.yml",
        &recipe(
            &node,
            &format!("  deploy:\n{MESS_UP}    - exit 1\n"),
            restore,
        ),
    );
    app.commit("fails, and so does its restore");
    app.push_next(&project);
    let out = node.kiln(&["deploy", "shop", "--rev", "next"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("`kiln recover shop --abandon`"),
        "{}",
        text(&out)
    );
    for args in [
        &["recover", "shop"][..],
        &["deploy", "shop"],
        &["rollback", "shop"],
    ] {
        let out = node.kiln(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("`kiln recover shop --abandon`"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let as_left = Before::take(&project);
    let out = node.kiln(&["recover", "shop", "--abandon"]);
    assert_success(&out, "recover --abandon");
    assert!(
        text(&out).contains("data/ and run/ were not touched"),
        "{}",
        text(&out)
    );
    as_left.assert_unchanged(&project, "abandon");
    assert!(!project.path("state/journal.json").exists());
    let log = project.release_log();
    assert_eq!(log["records"][1]["status"], "failed");
    assert!(
        log["records"][1]["failure"]
            .as_str()
            .is_some_and(|f| f.contains("abandon")),
        "{log}"
    );
    assert_eq!(project.current(), Some(good));
    let out = node.kiln(&["recover", "shop", "--abandon"]);
    assert!(text(&out).contains("nothing to abandon"), "{}", text(&out));

    // The project deploys again.
    app.write("kiln.yml", &recipe(&node, "", ""));
    app.commit("fixed");
    app.deploy(&project);

    // A journal that cannot even be read is abandoned too.
    fs::write(project.path("state/journal.json"), "{").unwrap();
    let out = node.kiln(&["deploy", "shop"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("--abandon"), "{}", text(&out));
    let as_left = Before::take(&project);
    node.ok(&["recover", "shop", "--abandon"]);
    as_left.assert_unchanged(&project, "abandoning an unreadable journal");
    assert!(!project.path("state/journal.json").exists());
}

/// Regression: a deploy that changed `services.stop` stopped the old release with the new
/// release's stop command (and a rollback started the old release with the new start).
#[test]
fn regression_each_release_is_stopped_and_started_with_its_own_commands() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        &recipe_with(&node, ("stop-v1", "start-v1"), "", ""),
    );
    app.commit("v1");
    app.deploy(&project);
    let v1 = project.current().unwrap();

    // A failed deploy: v1 is stopped with v1's stop, v2 with v2's, v1 starts with v1's start.
    let mark = services_log(&node).len();
    let check = "check:\n  command: exit 1\n  timeout: 1s\n  interval: 200ms\n";
    app.write(
        "kiln.yml",
        &recipe_with(&node, ("stop-v2", "start-v2"), "", check),
    );
    app.commit("v2 fails its check");
    let (_, output) = app.push(&project);
    assert!(output.contains("deploy FAILED"), "{output}");
    let failed = project.releases()[1].0.clone();
    assert_eq!(
        services_since(&node, mark),
        format!("stop-v1 {v1}\nstart-v2 {failed}\nstop-v2 {failed}\nstart-v1 {v1}\n")
    );

    let mark = services_log(&node).len();
    app.write(
        "kiln.yml",
        &recipe_with(&node, ("stop-v2", "start-v2"), "", ""),
    );
    app.commit("v2");
    app.deploy(&project);
    let v2 = project.current().unwrap();
    assert_eq!(
        services_since(&node, mark),
        format!("stop-v1 {v1}\nstart-v2 {v2}\n")
    );

    // `kiln rollback`: the current release stops with its own stop, the target starts with its own.
    let mark = services_log(&node).len();
    let out = node.kiln(&["rollback", "shop"]);
    assert_success(&out, "rollback");
    assert_eq!(project.current(), Some(v1.clone()));
    assert_eq!(
        services_since(&node, mark),
        format!("stop-v2 {v2}\nstart-v1 {v1}\n")
    );
}

/// Regression: recovery after kill -9 ran the new release's start to bring the old one back.
#[test]
fn regression_recovery_after_kill_9_uses_each_releases_own_services() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    fill_data(&project);
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        &recipe_with(&node, ("stop-v1", "start-v1"), "", ""),
    );
    app.commit("v1");
    app.deploy(&project);
    let v1 = project.current().unwrap();
    let before = Before::take(&project);
    let mark = services_log(&node).len();
    // The check's shell is a child of kiln: $PPID is kiln, killed once v2 has started.
    let check = "check:\n  command: kill -9 $PPID; sleep 5\n  timeout: 10s\n  interval: 1s\n";
    app.write(
        "kiln.yml",
        &recipe_with(
            &node,
            ("stop-v2", "start-v2"),
            &format!("  deploy:\n{MESS_UP}"),
            check,
        ),
    );
    app.commit("v2, killed during its check");
    app.push_next(&project);
    let out = node.kiln(&["deploy", "shop", "--rev", "next"]);
    assert_eq!(out.status.code(), None, "{}", text(&out));
    let out = node.kiln(&["recover", "shop"]);
    assert_success(&out, "recover");
    before.assert_unchanged(&project, "recovered");
    let killed = project.releases()[1].0.clone();
    assert_eq!(
        services_since(&node, mark),
        format!("stop-v1 {v1}\nstart-v2 {killed}\nstop-v2 {killed}\nstart-v1 {v1}\n")
    );
}

/// Regression: deploy commands (migrations) ran after the new release's services started, so
/// it served requests against a half-migrated database.
#[test]
fn regression_deploy_commands_run_before_the_new_release_starts() {
    let node = Node::new();
    let (project, app, good) = live_project(&node, "");
    let mark = services_log(&node).len();
    let log = node.dir.path().join("services.log");
    app.write(
        "kiln.yml",
        &recipe(
            &node,
            &format!(
                "  deploy:\n    - echo migrate $KILN_RELEASE >> {}\n",
                log.display()
            ),
            "",
        ),
    );
    app.commit("with a migration");
    app.deploy(&project);
    let new = project.current().unwrap();
    assert_eq!(
        services_since(&node, mark),
        format!("stop {good}\nmigrate {new}\nstart {new}\n")
    );
}

/// Regression: `kiln rollback <failed release>` said "unknown release" though `kiln releases`
/// lists it.
#[test]
fn regression_rollback_to_a_failed_release_says_it_failed() {
    let node = Node::new();
    let (project, app, _) = live_project(&node, "");
    app.write("kiln.yml", &recipe(&node, "  deploy:\n    - exit 1\n", ""));
    app.commit("fails");
    assert!(!app.push(&project).0 || project.releases()[1].1 == "failed");
    let failed = project.releases()[1].0.clone();
    let before = Before::take(&project);
    let out = node.kiln(&["rollback", "shop", &failed]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("error: release {failed} failed; only good releases can be rolled back to\n")
    );
    before.assert_unchanged(&project, "refused rollback");
    let out = node.kiln(&["rollback", "shop", "20200101T000000Z-00000000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("error: unknown release"),
        "{}",
        text(&out)
    );
}

/// Regression: a release rolled away from was no longer a target of plain `kiln rollback`
/// ("no good release"), though it is good to return to.
#[test]
fn regression_plain_rollback_goes_back_to_the_release_live_before() {
    let node = Node::new();
    let (project, app, a) = live_project(&node, "");
    app.write("app.txt", "b\n");
    app.commit("b");
    app.deploy(&project);
    let b = project.current().unwrap();
    node.ok(&["rollback", "shop"]);
    assert_eq!(project.current(), Some(a.clone()));
    // b was rolled away from; it was live before a, so it is where `kiln rollback` goes.
    let out = node.ok(&["rollback", "shop"]);
    assert!(out.contains(&format!("rolled back to {b}")), "{out}");
    assert_eq!(project.current(), Some(b.clone()));
    assert_eq!(
        fs::read_to_string(project.run().join("app.txt")).unwrap(),
        "b\n"
    );
    app.write("app.txt", "c\n");
    app.commit("c");
    app.deploy(&project);
    node.ok(&["rollback", "shop"]);
    assert_eq!(project.current(), Some(b));
}

/// Regression: a rollback overwrote its target's `finished` time, so `kiln releases` said the
/// target's deploy "took" from its push until the rollback (93.4s for a 16.6s deploy).
#[test]
fn regression_a_rollback_keeps_how_long_its_targets_deploy_took() {
    let node = Node::new();
    let (project, app, a) = live_project(&node, "");
    let record = |id: &str| -> serde_json::Value {
        let out = node.ok(&["releases", "shop", "--json"]);
        let all: serde_json::Value = serde_json::from_str(&out).unwrap();
        let found = all
            .get("releases")
            .and_then(|records| records.as_array())
            .and_then(|records| records.iter().find(|r| r["id"] == id).cloned());
        found.unwrap_or_else(|| panic!("no record of {id} in {out}"))
    };
    let before = record(&a);
    assert!(before["duration_ms"].is_i64(), "{before}");
    std::thread::sleep(Duration::from_millis(1100));
    app.write("app.txt", "b\n");
    app.commit("b");
    app.deploy(&project);
    node.ok(&["rollback", "shop"]);
    assert_eq!(project.current(), Some(a.clone()));
    let after = record(&a);
    assert_eq!(after["status"], "good", "{after}");
    assert_eq!(after["finished"], before["finished"], "{after}");
    assert_eq!(after["duration_ms"], before["duration_ms"], "{after}");
    let table = node.ok(&["releases", "shop"]);
    let took = |record: &serde_json::Value| {
        format!("{:.1}s", record["duration_ms"].as_f64().unwrap() / 1000.0)
    };
    let line = table.lines().find(|l| l.contains(&a)).unwrap();
    assert!(line.contains(&took(&before)), "{table}");
}

/// Regression: a first deploy said `services were stopped for 1.1s`, though nothing was live
/// to stop.
#[test]
fn regression_a_first_deploy_does_not_say_services_were_stopped() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", &recipe(&node, "", ""))
        .write("app.txt", "v1\n");
    app.commit("v1");
    let first = app.deploy(&project);
    assert!(!first.contains("services were stopped"), "{first}");
    assert!(first.contains("the first release serves, "), "{first}");
    app.write("app.txt", "v2\n");
    app.commit("v2");
    let second = app.deploy(&project);
    assert!(second.contains("services were stopped for "), "{second}");
    assert!(!second.contains("the first release serves"), "{second}");
}

/// Regression: `--with-data` put back the snapshot taken when the release was first replaced,
/// not data/ as it was when it was last live.
#[test]
fn regression_rollback_with_data_restores_data_from_when_the_release_was_last_live() {
    let node = Node::new();
    let (project, app, a) = live_project(&node, "");
    let db = project.data().join("db.txt");
    app.write(
        "kiln.yml",
        &recipe(
            &node,
            "  deploy:\n    - echo b > \"$KILN_DATA_DIR/db.txt\"\n",
            "",
        ),
    )
    .write("app.txt", "b\n");
    app.commit("b");
    app.deploy(&project);
    assert_eq!(fs::read_to_string(&db).unwrap(), "b\n");
    node.ok(&["rollback", "shop", &a]);
    // a is live a second time and its data changes.
    fs::write(&db, "a, second time\n").unwrap();
    app.write("kiln.yml", &recipe(&node, "", ""))
        .write("app.txt", "c\n");
    app.commit("c");
    app.deploy(&project);
    fs::write(&db, "c\n").unwrap();

    let out = node.ok(&["rollback", "shop", &a, "--with-data"]);
    assert!(out.contains(&format!("rolled back to {a}")), "{out}");
    assert_eq!(fs::read_to_string(&db).unwrap(), "a, second time\n");
}

/// Regression: a manual rollback's log went to archives/, where `kiln logs` cannot show it.
#[test]
fn regression_a_manual_rollback_logs_into_logs() {
    let node = Node::new();
    let (project, app, first) = live_project(&node, "");
    app.write("app.txt", "v2\n");
    app.commit("v2");
    app.deploy(&project);
    let out = node.ok(&["rollback", "shop"]);
    let logs: Vec<String> = project
        .names_in("logs")
        .into_iter()
        .filter(|n| n.starts_with(&format!("{first}-rollback-")))
        .collect();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs[0].ends_with(".jsonl") && logs[1].ends_with(".log"));
    let name = logs[1].strip_suffix(".log").unwrap();
    assert!(out.contains(&format!("kiln logs shop {name}")), "{out}");
    let log = fs::read_to_string(project.path(&format!("logs/{name}.log"))).unwrap();
    assert!(
        log.contains(&format!("-----> rolled back to {first}")),
        "{log}"
    );
    assert!(
        !project
            .path(&format!("archives/{name}/rollback.log"))
            .exists()
    );
    // `kiln logs` shows it, by name and as the newest.
    assert_eq!(node.ok(&["logs", "shop", name]), log);
    assert_eq!(node.ok(&["logs", "shop"]), log);
    assert!(
        node.ok(&["logs", "shop", &first])
            .contains(&format!("deployed {first}"))
    );
}

/// Regression: releases were pruned only after a good deploy, so failed release trees piled up
/// (235 MB for 7 failures on staging), and tarballs no release names were never removed.
#[test]
fn regression_failed_releases_beyond_keep_are_pruned_and_orphans_removed() {
    let node = Node::new();
    let (project, app, good) = live_project(&node, "keep: 1\n");
    let orphan = "20200101T000000Z-0000beef";
    for suffix in [".tar.zst", ".json", ".json.sig"] {
        fs::write(project.path(&format!("releases/{orphan}{suffix}")), "x").unwrap();
    }
    fs::write(project.path("releases/notes.txt"), "mine\n").unwrap();
    // Failures after the switch: each leaves deploy/<id>, archives/<id>/failed and a tarball.
    for i in 0..3 {
        app.write(
            "kiln.yml",
            &recipe(&node, "  deploy:\n    - exit 1\n", "keep: 1\n"),
        )
        .write("n.txt", &i.to_string());
        app.commit(&format!("bad {i}"));
        let (_, output) = app.push(&project);
        assert!(output.contains("deploy FAILED"), "{output}");
    }
    let failed: Vec<String> = project.releases()[1..]
        .iter()
        .map(|r| r.0.clone())
        .collect();
    let newest = failed.last().unwrap();
    assert!(project.path(&format!("archives/{newest}/failed")).is_dir());
    assert!(project.path(&format!("deploy/{newest}")).is_dir());
    for id in &failed[..2] {
        assert!(!project.path(&format!("deploy/{id}")).exists(), "{id}");
        assert!(!project.path(&format!("archives/{id}")).exists(), "{id}");
        assert!(
            !project.path(&format!("releases/{id}.tar.zst")).exists(),
            "{id}"
        );
    }
    // Sorted: two ids of the same second sort by their random part.
    let mut expected = vec![
        format!("{good}.json"),
        format!("{good}.tar.zst"),
        format!("{newest}.tar.zst"),
        "index.json".to_string(),
        "notes.txt".to_string(),
    ];
    expected.sort();
    assert_eq!(project.release_files(), expected);
    // The live release is never pruned.
    assert!(project.path(&format!("deploy/{good}")).is_dir());
    assert_eq!(project.current(), Some(good));
}

/// Regression: the journal that wedged staging, as the previous version wrote it (a failed
/// first deploy whose undo would run the new release's failing start in the empty run/): once
/// kiln is upgraded, `kiln recover` gets out of it.
#[test]
fn regression_a_wedged_first_deploy_journal_of_the_previous_version_recovers() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    fill_data(&project);
    let before = Before::take(&project);
    let app = node.app("shop");
    let log = node.dir.path().join("services.log");
    // The start's shell is a child of kiln: $PPID is kiln, killed once the release started.
    let killer = format!(
        "services:\n  stop: echo stop >> {log}\n  start: kill -9 $PPID; sleep 5\nstages:\n  deploy:\n{MESS_UP}",
        log = log.display()
    );
    app.write("kiln.yml", &killer);
    app.commit("first");
    app.push_next(&project);
    let out = node.kiln(&["deploy", "shop", "--rev", "next"]);
    assert_eq!(out.status.code(), None, "{}", text(&out));
    // What the previous version journaled: its undo started the new release's (failing) start.
    let path = project.path("state/journal.json");
    let mut journal: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(journal["phase"], "switched");
    assert!(journal["previous"].is_null());
    journal["undo"]["start"] = "exit 1".into();
    journal["undo"].as_object_mut().unwrap().remove("start_env");
    journal.as_object_mut().unwrap().remove("log");
    fs::write(&path, serde_json::to_vec_pretty(&journal).unwrap()).unwrap();

    let out = node.kiln(&["recover", "shop"]);
    assert_success(&out, "recover");
    assert!(
        text(&out).contains("rolled back (no release was live before)"),
        "{}",
        text(&out)
    );
    before.assert_unchanged(&project, "recovered");
    assert_eq!(services_log(&node), "stop\n");
    app.write("kiln.yml", &recipe(&node, "", ""));
    app.commit("fixed");
    app.deploy(&project);
}

/// Editable mode restarts in the same order: the running app stops with its own stop command,
/// the deploy commands run, then the new code starts.
#[test]
fn regression_editable_mode_migrates_before_it_starts_the_new_code() {
    let node = Node::new();
    let project = node.init("shop", "editable");
    let app = node.app("shop");
    let log = node.dir.path().join("services.log");
    let migrate = format!(
        "  deploy:\n    - echo migrate $KILN_RELEASE >> {}\n",
        log.display()
    );
    app.write(
        "kiln.yml",
        &recipe_with(&node, ("stop-v1", "start-v1"), &migrate, ""),
    )
    .write(".gitignore", "built.txt\n");
    app.commit("v1");
    app.deploy(&project);
    let v1 = project.current().unwrap();
    let mark = services_log(&node).len();
    app.write(
        "kiln.yml",
        &recipe_with(&node, ("stop-v2", "start-v2"), &migrate, ""),
    );
    app.commit("v2");
    app.deploy(&project);
    let v2 = project.current().unwrap();
    assert_eq!(
        services_since(&node, mark),
        format!("stop-v1 {v1}\nmigrate {v2}\nstart-v2 {v2}\n")
    );
}

/// Issue 9: a Flask app writes `__pycache__/`, `*.pyc` and `instance/` in run/; every deploy
/// reported them as manual edits and archived them. Drift leaves out what the live release's
/// `.gitignore`s ignore, in `kiln status` and at deploy; the switch still makes run/ exactly
/// the release (what the app wrote there is gone; data/ is for that).
#[test]
fn regression_files_the_app_generates_are_not_drift() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("kiln.yml", &recipe(&node, "", ""))
        .write(".gitignore", "__pycache__/\n*.pyc\n/instance/\n!keep.pyc\n")
        .write("lib/.gitignore", "local.cfg\n")
        .write("app.txt", "v1\n")
        .write("lib/mod.py", "x = 1\n");
    app.commit("flask-like app");
    app.deploy(&project);
    let run = project.run();
    for (rel, content) in [
        ("__pycache__/app.cpython-311.pyc", "bytecode"),
        ("lib/__pycache__/mod.cpython-311.pyc", "bytecode"),
        ("lib/mod.pyc", "bytecode"),
        ("instance/app.sqlite", "rows"),
        ("lib/local.cfg", "local"),
        // Not ignored: a `!` pattern re-includes it, and a hot fix is a hot fix.
        ("keep.pyc", "re-included"),
        ("app.txt", "hot fix\n"),
    ] {
        fs::create_dir_all(run.join(rel).parent().unwrap()).unwrap();
        fs::write(run.join(rel), content).unwrap();
    }

    let status = text(&node.kiln(&["status", "shop"]));
    assert!(
        status.contains("drift:       2 manual change(s)"),
        "{status}"
    );
    assert!(status.contains("modified app.txt"), "{status}");
    assert!(status.contains("added keep.pyc"), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&node.ok(&["status", "shop", "--json"])).unwrap();
    assert_eq!(
        json["drift"],
        serde_json::json!(["modified app.txt", "added keep.pyc"])
    );

    app.write("app.txt", "v2\n");
    app.commit("v2");
    let output = app.deploy(&project);
    assert!(!output.contains("pycache"), "{output}");
    assert!(!output.contains("instance"), "{output}");
    let new = project.current().unwrap();
    let drift = project.path(&format!("archives/{new}/drift"));
    assert_eq!(
        fs::read_to_string(drift.join("changes.txt")).unwrap(),
        "modified app.txt\nadded keep.pyc\n"
    );
    let mut saved: Vec<String> = walkdir::WalkDir::new(drift.join("files"))
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            e.path()
                .strip_prefix(drift.join("files"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    saved.sort();
    assert_eq!(saved, ["app.txt", "keep.pyc"]);
    // The switch makes run/ exactly the release: what the app wrote there is gone.
    assert_same(
        &tree_fingerprint(&project.path(&format!("deploy/{new}"))),
        &tree_fingerprint(&run),
        "run/ after the switch",
    );
    assert!(!run.join("instance").exists());
}

/// kiln.yml `drift_ignore` leaves out more than the `.gitignore`s, and decides first.
#[test]
fn drift_ignore_patterns_are_not_drift_either() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write(
        "kiln.yml",
        &recipe(
            &node,
            "",
            "drift_ignore: [sessions/, '*.sqlite-journal', '!notes.log']\n",
        ),
    )
    .write(".gitignore", "*.log\n")
    .write("app.txt", "v1\n");
    app.commit("v1");
    app.deploy(&project);
    let run = project.run();
    fs::create_dir_all(run.join("sessions")).unwrap();
    fs::write(run.join("sessions/s1"), "session").unwrap();
    fs::write(run.join("app.sqlite-journal"), "journal").unwrap();
    fs::write(run.join("error.log"), "app log").unwrap();
    fs::write(run.join("notes.log"), "an operator's notes").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&node.ok(&["status", "shop", "--json"])).unwrap();
    assert_eq!(json["drift"], serde_json::json!(["added notes.log"]));
    app.write("app.txt", "v2\n");
    app.commit("v2");
    app.deploy(&project);
    let new = project.current().unwrap();
    assert_eq!(
        fs::read_to_string(project.path(&format!("archives/{new}/drift/changes.txt"))).unwrap(),
        "added notes.log\n"
    );
}

/// `drift_ignore` applies in editable mode too, where git's view of project/ already honours
/// the `.gitignore`s: an ignored file the app wrote does not make the push refuse.
#[test]
fn drift_ignore_keeps_editable_pushes_going() {
    let node = Node::new();
    let project = node.init("shop", "editable");
    let app = node.app("shop");
    app.write("kiln.yml", "drift_ignore: [instance/]\n")
        .write(".gitignore", "*.pyc\n")
        .write("app.txt", "v1\n");
    app.commit("v1");
    app.deploy(&project);
    let checkout = project.path("project");
    fs::create_dir_all(checkout.join("instance")).unwrap();
    fs::write(checkout.join("instance/app.sqlite"), "rows").unwrap();
    fs::write(checkout.join("app.pyc"), "bytecode").unwrap();
    let status = text(&node.kiln(&["status", "shop"]));
    assert!(status.contains("drift:       none"), "{status}");
    app.write("app.txt", "v2\n");
    app.commit("v2");
    app.deploy(&project);
    assert_eq!(
        fs::read_to_string(checkout.join("instance/app.sqlite")).unwrap(),
        "rows"
    );
    // A real edit still refuses.
    fs::write(checkout.join("app.txt"), "hot fix\n").unwrap();
    app.write("app.txt", "v3\n");
    app.commit("v3");
    let (_, output) = app.push(&project);
    assert!(output.contains("app.txt"), "{output}");
    assert!(!output.contains("-----> deployed"), "{output}");
}
