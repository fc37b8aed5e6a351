//! Many production nodes (issue 15): what an orchestrator needs from each node — one JSON
//! result per `kiln deploy --json`, deploying the live commit again as a no-op, and `kiln
//! rollback --to-before` that undoes exactly one release — and then the Ansible role of
//! contrib/ansible rolling a release out to three final-mode nodes in waves.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use serde_json::Value;

use common::{App, Node, Project, Tree, assert_same, fingerprint, text};

const PROJECT: &str = "shop";

/// The check fails on a node whose root holds `fail-check`: a node-side setting, so one
/// release can pass on some nodes and fail on another.
const RECIPE: &str = "stages:
  deploy:
    - echo \"$KILN_RELEASE\" >> \"$KILN_DATA_DIR/deploys.txt\"
check:
  command: test ! -e \"$KILN_ROOT/fail-check\"
  timeout: 300ms
  interval: 100ms
";

fn app(node: &Node) -> App {
    let app = node.app(PROJECT);
    app.write("kiln.yml", RECIPE).write("index.html", "one\n");
    app
}

/// run/ and data/ of a project, to compare after a command that must change nothing.
struct Before {
    run: Tree,
    data: Tree,
}

impl Before {
    fn take(project: &Project) -> Before {
        Before {
            run: fingerprint(&project.run()),
            data: fingerprint(&project.data()),
        }
    }

    fn assert_unchanged(&self, project: &Project, what: &str) {
        assert_same(
            &self.run,
            &fingerprint(&project.run()),
            &format!("{what}: run/"),
        );
        assert_same(
            &self.data,
            &fingerprint(&project.data()),
            &format!("{what}: data/"),
        );
    }
}

/// Runs `kiln <args>` with `--json`; returns the exit status and the one JSON result, which
/// must be all of stdout.
fn json(node: &Node, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = node.kiln(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "kiln {all:?}: stdout is not one JSON value ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), value)
}

fn stage_names(result: &Value) -> Vec<String> {
    result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

/// A cooking node with `app` deployed once; returns the project and that release.
fn deployed_once() -> (Project, App, String) {
    let node = Node::new();
    let project = node.init(PROJECT, "cooking");
    let app = app(&node);
    app.commit("one");
    app.deploy(&project);
    let first = project.current().unwrap();
    (project, app, first)
}

#[test]
fn deploy_json_reports_the_release_its_stages_and_what_is_live() {
    let (project, app, first) = deployed_once();
    app.write("index.html", "two\n");
    let commit = app.commit("two");
    app.push_next(&project);

    let (status, result) = json(&project.node, &["deploy", PROJECT, "--rev", "next"]);
    assert_eq!(status, 0, "{result:#}");
    let release = project.current().unwrap();
    assert_ne!(release, first);
    assert_eq!(result["outcome"], "deployed", "{result:#}");
    assert_eq!(result["exit"], 0);
    assert_eq!(result["action"], "deploy");
    assert_eq!(result["project"], PROJECT);
    assert_eq!(result["release"], release.as_str());
    assert_eq!(result["commit"], commit.as_str());
    assert_eq!(result["previous"], first.as_str());
    assert_eq!(result["live"], release.as_str());
    assert!(result["rolled_back_to"].is_null() && result["error"].is_null());
    assert_eq!(
        stage_names(&result),
        [
            "gather",
            "pre_install",
            "configure",
            "build",
            "bundle",
            "deploy",
            "post_deploy"
        ]
    );
    let total = result["seconds"].as_f64().unwrap();
    let stages: f64 = result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seconds"].as_f64().unwrap())
        .sum();
    assert!(stages > 0.0 && stages <= total, "{stages} of {total}");
    assert_eq!(
        fs::read_to_string(project.run().join("index.html")).unwrap(),
        "two\n"
    );
}

#[test]
fn deploying_the_live_commit_again_is_a_no_op_that_says_so() {
    let (project, _app, first) = deployed_once();
    let node = &project.node;
    let before = Before::take(&project);
    let records = project.releases();

    let out = node.kiln(&["deploy", PROJECT]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("already runs") && said.contains("nothing to deploy"),
        "{said}"
    );
    let (status, result) = json(node, &["deploy", PROJECT]);
    assert_eq!(status, 0);
    assert_eq!(result["outcome"], "unchanged", "{result:#}");
    assert_eq!(result["release"], first.as_str());
    assert_eq!(result["live"], first.as_str());
    assert_eq!(result["stages"], Value::Array(Vec::new()));
    assert_eq!(project.releases(), records, "no new release record");
    before.assert_unchanged(&project, "a deploy of the live commit");

    // Settings recorded since the live release make it a real deploy.
    project.add_setting("pillar_push: record");
    let pillar = node.app("pillar");
    pillar
        .write("pillar.yml", "env:\n  GREETING: hello\n")
        .commit("settings");
    let out = pillar.git(&[
        "push",
        project.path("git/pillar.git").to_str().unwrap(),
        "HEAD:master",
    ]);
    assert!(
        out.status.success() && text(&out).contains("recorded"),
        "{}",
        text(&out)
    );
    let (status, result) = json(node, &["deploy", PROJECT]);
    assert_eq!(
        (status, &result["outcome"]),
        (0, &Value::from("deployed")),
        "{result:#}"
    );
    let second = project.current().unwrap();
    assert_ne!(second, first);

    // --force deploys the live commit again anyway.
    let (status, result) = json(node, &["deploy", PROJECT, "--force"]);
    assert_eq!(
        (status, &result["outcome"]),
        (0, &Value::from("deployed")),
        "{result:#}"
    );
    assert_ne!(project.current().unwrap(), second);
}

#[test]
fn a_failed_deploy_json_names_the_stage_and_the_release_rolled_back_to() {
    let (project, app, first) = deployed_once();
    app.write("index.html", "two\n");
    app.commit("two");
    app.push_next(&project);
    let before = Before::take(&project);
    fs::write(project.node.root.join("fail-check"), "").unwrap();

    let (status, result) = json(&project.node, &["deploy", PROJECT, "--rev", "next"]);
    assert_eq!(status, 1, "{result:#}");
    assert_eq!(result["outcome"], "failed");
    assert_eq!(result["exit"], 1);
    assert_eq!(result["stage"], "deploy");
    assert!(
        result["error"].as_str().unwrap().contains("check"),
        "{result:#}"
    );
    assert_eq!(result["rolled_back_to"], first.as_str());
    assert_eq!(result["live"], first.as_str());
    assert_eq!(result["previous"], first.as_str());
    let failed = result["release"].as_str().unwrap();
    assert!(
        project
            .releases()
            .contains(&(failed.to_string(), "failed".to_string())),
        "{:?}",
        project.releases()
    );
    let stages = result["stages"].as_array().unwrap();
    let last_two: Vec<(&str, bool)> = stages[stages.len() - 2..]
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap(),
                s["failed"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(last_two, [("deploy", true), ("rollback", false)]);
    before.assert_unchanged(&project, "a failed deploy");
}

#[test]
fn json_errors_before_a_deploy_starts_exit_2_and_still_print_one_result() {
    let (project, _app, first) = deployed_once();
    let before = Before::take(&project);
    for args in [
        vec!["deploy", "nosuch"],
        vec!["deploy", PROJECT, "--rev", "no-such-branch"],
        vec!["rollback", "nosuch", "--to-before", &first],
    ] {
        let (status, result) = json(&project.node, &args);
        assert_eq!(status, 2, "{args:?}: {result:#}");
        assert_eq!(result["outcome"], "error", "{result:#}");
        assert_eq!(result["exit"], 2);
        assert!(!result["error"].as_str().unwrap().is_empty());
    }
    before.assert_unchanged(&project, "bad input");
}

#[test]
fn rollback_to_before_undoes_one_live_release_and_is_a_no_op_otherwise() {
    let (project, app, first) = deployed_once();
    let node = &project.node;

    // The first release ever: nothing was live before it, so nothing can be taken live.
    let before = Before::take(&project);
    let (status, result) = json(node, &["rollback", PROJECT, "--to-before", &first]);
    assert_eq!(status, 2, "{result:#}");
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("nothing was live before"),
        "{result:#}"
    );
    before.assert_unchanged(&project, "--to-before the first release");

    app.write("index.html", "two\n");
    app.commit("two");
    app.deploy(&project);
    let second = project.current().unwrap();

    // A release that failed was rolled back already: nothing of it to undo.
    app.write("index.html", "three\n");
    app.commit("three");
    fs::write(node.root.join("fail-check"), "").unwrap();
    let (ok, _) = app.push(&project);
    assert!(ok);
    fs::remove_file(node.root.join("fail-check")).unwrap();
    let failed = project.releases().last().unwrap().clone();
    assert_eq!(failed.1, "failed");
    let before = Before::take(&project);
    let (status, result) = json(node, &["rollback", PROJECT, "--to-before", &failed.0]);
    assert_eq!(status, 0, "{result:#}");
    assert_eq!(result["outcome"], "unchanged");
    assert_eq!(result["live"], second.as_str());
    before.assert_unchanged(&project, "--to-before a failed release");

    // The live release: what was live before it goes live again.
    let (status, result) = json(node, &["rollback", PROJECT, "--to-before", &second]);
    assert_eq!(status, 0, "{result:#}");
    assert_eq!(result["outcome"], "rolled_back");
    assert_eq!(result["release"], first.as_str());
    assert_eq!(result["previous"], second.as_str());
    assert_eq!(project.current().unwrap(), first);
    assert_eq!(
        fs::read_to_string(project.run().join("index.html")).unwrap(),
        "one\n"
    );

    // Again (an orchestrator retrying its rollback): second is not live, nothing changes.
    let before = Before::take(&project);
    let out = node.kiln(&["rollback", PROJECT, "--to-before", &second]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("release {second} is not live any more")),
        "{}",
        text(&out)
    );
    before.assert_unchanged(&project, "a second --to-before");

    let out = node.kiln(&[
        "rollback",
        PROJECT,
        "--to-before",
        "20200101T000000Z-00000000",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unknown release"), "{}", text(&out));
    let out = node.kiln(&["rollback", PROJECT, &first, "--to-before", &second]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    before.assert_unchanged(&project, "bad rollbacks");
}
