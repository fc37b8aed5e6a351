//! Many production nodes (issue 15): what an orchestrator needs from each node — one JSON
//! result per `kiln deploy --json`, deploying the live commit again as a no-op, and `kiln
//! rollback --to-before` that undoes exactly one release — and then the Ansible role of
//! contrib/ansible rolling a release out to three final-mode nodes in waves.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/moto.rs"]
mod moto;

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::{App, Before, Node, Project, stage_names, text};
use moto::Moto;

const PROJECT: &str = "shop";

/// The check fails on a node whose root holds `fail-check`: a node-side setting, so one
/// release can pass on some nodes and fail on another. Its timeout is also how long the web
/// process (the static buildpack's python3 http.server) may take to listen: 5 s, for a loaded
/// machine (regression: 300 ms, so the default 2 s, was once not enough for python to start).
const RECIPE: &str = "stages:
  deploy:
    - echo \"$KILN_RELEASE\" >> \"$KILN_DATA_DIR/deploys.txt\"
check:
  command: test ! -e \"$KILN_ROOT/fail-check\"
  timeout: 5s
  interval: 100ms
";

fn app(node: &Node) -> App {
    let app = node.app(PROJECT);
    app.write("kiln.yml", RECIPE).write("index.html", "one\n");
    app
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
    // git moved the branch to the commit that failed: status says the node is behind it.
    let tip = project.branch_tip("master").unwrap();
    let status = node.ok(&["status", PROJECT]);
    assert!(
        status.contains(&format!(
            "behind:      branch master is at {}, which is not live: `kiln deploy shop` deploys it",
            &tip[..7]
        )),
        "{status}"
    );
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

// ---------------------------------------------------------------------------------------------
// The Ansible role of contrib/ansible, driving three final-mode nodes on this machine (separate
// roots, `ansible_connection: local`) that pull from the S3 store a signing staging node
// publishes to (moto on 127.0.0.1).

/// A staging node publishing to the store, and production nodes pulling from it.
struct Fleet {
    /// Kept for its Drop: the store's server runs as long as the fleet.
    _moto: Moto,
    staging: Project,
    nodes: Vec<Project>,
    app: App,
}

const STORE: &str = "s3://releases/shop";

impl Fleet {
    fn new(nodes: usize) -> Fleet {
        let node = Node::new();
        let moto = Moto::start(node.dir.path());
        moto.create_bucket("releases");
        let secret = node.dir.path().join("s3-secret");
        fs::write(&secret, moto::SECRET_KEY).unwrap();
        let s3 = format!(
            "s3:\n  endpoint: {}\n  access_key: {}\n  secret_key_file: {}\n",
            moto.endpoint(),
            moto::ACCESS_KEY,
            secret.display()
        );
        node.write_node_yml(&s3);
        let staging = node.init(PROJECT, "cooking");
        staging.add_setting(&format!("publish: {STORE}"));
        let key = node.ok(&["key", "generate"]).trim().to_string();
        let nodes = (1..=nodes)
            .map(|i| {
                let web = node.sibling(&format!("web{i}"));
                web.write_node_yml(&s3);
                let project = web.init_with(PROJECT, &["--mode", "final", "--source", STORE]);
                project.add_setting(&format!("trusted_key: {key}"));
                project
            })
            .collect();
        let app = app(&node);
        Fleet {
            _moto: moto,
            staging,
            nodes,
            app,
        }
    }

    /// Commits the app as it is, deploys it on staging (which publishes it), returns the commit.
    fn release(&self, message: &str) -> String {
        let commit = self.app.commit(message);
        let output = self.app.deploy(&self.staging);
        assert!(output.contains(&format!("to {STORE}")), "{output}");
        commit
    }

    /// The inventory: every node a local host named after its root; `extra` adds host vars.
    fn inventory(&self, extra: &[(&str, &str)]) -> std::path::PathBuf {
        let mut text = String::from("kiln_production:\n  hosts:\n");
        for project in &self.nodes {
            let host = host(project);
            text.push_str(&format!(
                "    {host}:\n      kiln_root: {}\n",
                project.node.root.display()
            ));
            for (_, vars) in extra.iter().filter(|(name, _)| *name == host) {
                text.push_str(vars);
            }
        }
        text.push_str(&format!(
            "  vars:\n    ansible_connection: local\n    ansible_python_interpreter: /usr/bin/python3\n    kiln_bin: {}\n",
            common::KILN
        ));
        let path = self.staging.node.dir.path().join("inventory.yml");
        fs::write(&path, text).unwrap();
        path
    }

    /// `ansible-playbook contrib/ansible/rollout.yml` for `commit`; returns (exit code, output).
    fn rollout(&self, commit: &str, inventory: &std::path::Path, args: &[&str]) -> (i32, String) {
        let dir = self.staging.node.dir.path().join("ansible");
        fs::create_dir_all(&dir).unwrap();
        let playbook = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/ansible/rollout.yml");
        let mut command = Command::new("ansible-playbook");
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("KILN_") || key.starts_with("GIT_") || key.starts_with("ANSIBLE_") {
                command.env_remove(key);
            }
        }
        command
            .arg("-i")
            .arg(inventory)
            .arg(&playbook)
            .arg("-e")
            .arg(format!("kiln_project={PROJECT}"))
            .arg("-e")
            .arg(format!("kiln_commit={commit}"))
            .arg("-e")
            .arg(format!("kiln_git_url={}", self.staging.repo().display()))
            .args(args)
            .env("ANSIBLE_HOME", &dir)
            .env("ANSIBLE_LOCAL_TEMP", dir.join("tmp"))
            .env("ANSIBLE_RETRY_FILES_ENABLED", "false")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_HOST_KEY_CHECKING", "false");
        let out = command.output().unwrap_or_else(|e| {
            panic!(
                "cannot run ansible-playbook ({e}): install Debian's ansible-core, as .ci/run does"
            )
        });
        (out.status.code().unwrap_or(-1), text(&out))
    }

    /// (release id, commit, status) of every record on a node.
    fn records(project: &Project) -> Vec<(String, String, String)> {
        project.release_log()["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["commit"].as_str().unwrap().to_string(),
                    r["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn host(project: &Project) -> String {
    project
        .node
        .root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The live release's record on a node.
fn live_record(project: &Project) -> Value {
    let log = project.release_log();
    let current = log["current"].as_str().unwrap().to_string();
    log["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == current.as_str())
        .unwrap()
        .clone()
}

fn time(record: &Value, key: &str) -> chrono::DateTime<chrono::Utc> {
    record[key].as_str().unwrap().parse().unwrap()
}

/// Everything a rollout may touch on a node: run/, data/, releases/, the release log, the
/// deploy branch.
struct Untouched {
    before: Before,
    releases: Vec<String>,
    log: Value,
    branch: Option<String>,
}

impl Untouched {
    fn take(project: &Project) -> Untouched {
        Untouched {
            before: Before::take(project),
            releases: project.release_files(),
            log: project.release_log(),
            branch: project.branch_tip("master"),
        }
    }

    fn assert(&self, project: &Project, what: &str) {
        self.before.assert_unchanged(project, what);
        assert_eq!(self.releases, project.release_files(), "{what}: releases/");
        assert_eq!(self.log, project.release_log(), "{what}: release log");
        assert_eq!(self.branch, project.branch_tip("master"), "{what}: branch");
    }
}

#[test]
fn a_good_rollout_reaches_all_three_nodes_in_waves_and_running_it_again_changes_nothing() {
    let fleet = Fleet::new(3);
    let commit = fleet.release("one");
    let inventory = fleet.inventory(&[]);
    let (status, output) = fleet.rollout(&commit, &inventory, &[]);
    assert_eq!(status, 0, "{output}");

    let lives: Vec<Value> = fleet.nodes.iter().map(live_record).collect();
    for (project, live) in fleet.nodes.iter().zip(&lives) {
        assert_eq!(live["commit"], commit.as_str(), "{}", host(project));
        assert_eq!(
            live["source_release"],
            fleet.staging.current().unwrap().as_str(),
            "{} deployed what staging published",
            host(project)
        );
        assert_eq!(
            fs::read_to_string(project.run().join("index.html")).unwrap(),
            "one\n"
        );
        assert_eq!(
            project.branch_tip("master").as_deref(),
            Some(commit.as_str())
        );
    }
    // Canary, then the first wave, then the second: each deploy ended before the next began.
    for pair in lives.windows(2) {
        assert!(
            time(&pair[0], "finished") <= time(&pair[1], "started"),
            "waves overlap: {:#} then {:#}",
            pair[0],
            pair[1]
        );
    }
    let status_text = fleet.nodes[0].node.ok(&["status", PROJECT]);
    assert!(!status_text.contains("behind:"), "{status_text}");

    // The same rollout again: every node already runs the commit.
    let untouched: Vec<Untouched> = fleet.nodes.iter().map(Untouched::take).collect();
    let (status, output) = fleet.rollout(&commit, &inventory, &[]);
    assert_eq!(status, 0, "{output}");
    assert!(output.contains("changed=0"), "{output}");
    for (project, before) in fleet.nodes.iter().zip(&untouched) {
        before.assert(
            project,
            &format!("{} after a second rollout", host(project)),
        );
    }
}

/// Rolls `commit` out to the whole fleet (the state every failure test starts from).
fn rolled_out(fleet: &Fleet, commit: &str) -> std::path::PathBuf {
    let inventory = fleet.inventory(&[]);
    let (status, output) = fleet.rollout(commit, &inventory, &[]);
    assert_eq!(status, 0, "{output}");
    inventory
}

#[test]
fn a_release_whose_check_fails_on_the_canary_leaves_the_other_nodes_untouched() {
    let fleet = Fleet::new(3);
    let one = fleet.release("one");
    let inventory = rolled_out(&fleet, &one);
    fleet.app.write("index.html", "two\n");
    let two = fleet.release("two");
    let canary = &fleet.nodes[0];
    let live_before = canary.current().unwrap();
    let canary_before = Before::take(canary);
    let others: Vec<Untouched> = fleet.nodes[1..].iter().map(Untouched::take).collect();
    fs::write(canary.node.root.join("fail-check"), "").unwrap();

    let (status, output) = fleet.rollout(&two, &inventory, &[]);
    assert_ne!(status, 0, "{output}");
    assert!(
        output.contains("kiln deploy shop ended failed (exit 1) at deploy"),
        "{output}"
    );
    // kiln rolled the canary back itself; the rollout stopped before the other waves.
    assert_eq!(canary.current().unwrap(), live_before);
    assert_eq!(
        Fleet::records(canary)
            .last()
            .map(|r| (r.1.clone(), r.2.clone())),
        Some((two.clone(), "failed".to_string()))
    );
    canary_before.assert_unchanged(canary, "the canary");
    assert_eq!(canary.branch_tip("master").as_deref(), Some(one.as_str()));
    for (project, before) in fleet.nodes[1..].iter().zip(&others) {
        before.assert(project, &format!("{} after a failed canary", host(project)));
    }
}

#[test]
fn a_failure_in_the_second_wave_rolls_back_the_canary_and_the_first_wave() {
    let fleet = Fleet::new(3);
    let one = fleet.release("one");
    let inventory = rolled_out(&fleet, &one);
    let before: Vec<(String, Before)> = fleet
        .nodes
        .iter()
        .map(|p| (p.current().unwrap(), Before::take(p)))
        .collect();
    fleet.app.write("index.html", "two\n");
    let two = fleet.release("two");
    let last = &fleet.nodes[2];
    fs::write(last.node.root.join("fail-check"), "").unwrap();

    let (status, output) = fleet.rollout(&two, &inventory, &[]);
    assert_ne!(status, 0, "{output}");
    for (project, (live, _)) in fleet.nodes.iter().zip(&before) {
        let what = host(project);
        assert_eq!(
            project.current().as_ref(),
            Some(live),
            "{what} runs one again"
        );
        assert_eq!(
            fs::read_to_string(project.run().join("index.html")).unwrap(),
            "one\n",
            "{what}"
        );
        assert_eq!(
            project.branch_tip("master").as_deref(),
            Some(one.as_str()),
            "{what}"
        );
        let records = Fleet::records(project);
        let (_, commit, status) = records.last().unwrap();
        assert_eq!(commit, &two, "{what}");
        let expected = if project.base == last.base {
            "failed"
        } else {
            "rolled_back"
        };
        assert_eq!(status, expected, "{what}: {records:?}");
    }
    // The last wave's node was rolled back by kiln itself, exactly; the others went through
    // a deploy and a rollback, so only their data/ is checked (run/ was compared above).
    before[2].1.assert_unchanged(last, "the node that failed");
    for project in &fleet.nodes[..2] {
        let deploys = fs::read_to_string(project.data().join("deploys.txt")).unwrap();
        assert_eq!(
            deploys.lines().count(),
            3,
            "{}: one, two, then one again ran their deploy commands: {deploys}",
            host(project)
        );
    }

    // Running the rollback again (a retried play) changes nothing.
    let untouched: Vec<Untouched> = fleet.nodes.iter().map(Untouched::take).collect();
    for project in &fleet.nodes[..2] {
        let two_release = Fleet::records(project)
            .iter()
            .rev()
            .find(|r| r.1 == two)
            .unwrap()
            .0
            .clone();
        let (status, result) = json(
            &project.node,
            &["rollback", PROJECT, "--to-before", &two_release],
        );
        assert_eq!((status, &result["outcome"]), (0, &Value::from("unchanged")));
    }
    for (project, before) in fleet.nodes.iter().zip(&untouched) {
        before.assert(project, &host(project));
    }
}

#[test]
fn a_node_that_was_down_during_the_rollout_shows_it_is_behind_and_catches_up() {
    let fleet = Fleet::new(2);
    let one = fleet.release("one");
    let closed = common::free_port().to_string();
    let down = format!(
        "      ansible_connection: ssh\n      ansible_host: 127.0.0.1\n      ansible_port: {closed}\n"
    );
    let inventory = fleet.inventory(&[("web2", &down)]);
    let (status, output) = fleet.rollout(&one, &inventory, &[]);
    assert_eq!(
        status, 4,
        "ansible-playbook says some host was unreachable:\n{output}"
    );
    assert_eq!(live_record(&fleet.nodes[0])["commit"], one.as_str());
    let web2 = &fleet.nodes[1];
    assert_eq!(web2.current(), None, "web2 was down");
    let status_text = web2.node.ok(&["status", PROJECT]);
    let release = fleet.staging.current().unwrap();
    assert!(
        status_text.contains(&format!(
            "behind:      the source offers {release} of {}",
            &one[..7]
        )),
        "{status_text}"
    );

    // Back up: the rollout for it alone deploys it; the other node answers unchanged.
    let (status, output) = fleet.rollout(&one, &inventory, &["-e", "ansible_connection=local"]);
    assert_eq!(status, 0, "{output}");
    assert_eq!(live_record(web2)["commit"], one.as_str());
    let status_text = web2.node.ok(&["status", PROJECT]);
    assert!(!status_text.contains("behind:"), "{status_text}");
}

#[test]
fn a_failed_first_rollout_cannot_take_the_canary_back_to_nothing_and_says_so() {
    let fleet = Fleet::new(3);
    let one = fleet.release("one");
    let inventory = fleet.inventory(&[]);
    fs::write(fleet.nodes[1].node.root.join("fail-check"), "").unwrap();
    let untouched = Untouched::take(&fleet.nodes[2]);

    let (status, output) = fleet.rollout(&one, &inventory, &[]);
    assert_ne!(status, 0, "{output}");
    let canary = &fleet.nodes[0];
    let release = canary.current().unwrap();
    assert!(
        output.contains(&format!(
            "rolling back failed on web1 (nothing was live before release {release} went live: there is no release to roll back to)"
        )),
        "{output}"
    );
    // Nothing ran there before: the canary keeps the release, and its branch.
    assert_eq!(live_record(canary)["commit"], one.as_str());
    assert_eq!(canary.branch_tip("master").as_deref(), Some(one.as_str()));
    assert_eq!(fleet.nodes[1].current(), None, "web2's first deploy failed");
    untouched.assert(&fleet.nodes[2], "web3, never reached");
}
