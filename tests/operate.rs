//! End to end: stopping and starting apps on purpose. `kiln stop` and `kiln start` for one
//! project (it stays stopped across `kiln boot` and a failed deploy; a good deploy starts it),
//! and `kiln supervise --stop` for the whole node (nothing starts again until `kiln boot`).
//! Real pushes, real processes answering HTTP on 127.0.0.1; every test kills what it started
//! through a `ProcessGuard`, also on panic.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::time::Duration;

use common::processes::*;
use common::*;

/// Each service command appends a line to services.log in the node root (not in data/, which a
/// failed deploy puts back): what ran, in order.
const RECIPE: &str = "services:\n  start: echo start >> \"$KILN_ROOT/services.log\"\n  stop: echo stop >> \"$KILN_ROOT/services.log\"\n";

const PROCFILE: &str = "web: python3 app.py\nworker: exec sleep 1000\n";

fn shop(node: &Node) -> (Project, App) {
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("app.py", PY_APP)
        .write("Procfile", PROCFILE)
        .write("kiln.yml", RECIPE)
        .write("message.txt", "v1\n");
    app.commit("v1");
    (project, app)
}

fn services_log(project: &Project) -> Vec<String> {
    fs::read_to_string(project.node.root.join("services.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Nothing of the project runs: no app of either type, nothing on the web port.
fn assert_nothing_runs(node: &Node, port: u16, what: &str) {
    for instance in ["web.1", "web.2", "worker.1"] {
        assert_eq!(apps(&node.root, instance), [], "{what}: {instance} runs");
    }
    assert_eq!(http_get(port, "/"), None, "{what}: the web port answers");
}

#[test]
fn a_stopped_project_stays_stopped_across_boot_and_a_failed_deploy_until_start_or_a_deploy() {
    let (node, _guard) = supervised_node();
    let (project, app) = shop(&node);
    app.deploy(&project);
    let port = web_port(&project);
    assert_eq!(answer(&project).as_deref(), Some("v1"));
    assert_eq!(services_log(&project), ["start"]);

    let said = node.ok(&["stop", "shop"]);
    let last = said.lines().last().unwrap();
    assert!(last.starts_with("stopped `shop` (release "), "{said}");
    assert!(last.contains(": web.1, worker.1); it stays stopped across `kiln boot` until `kiln start shop` or a deploy"), "{said}");
    assert_nothing_runs(&node, port, "after kiln stop");
    assert_eq!(services_log(&project), ["start", "stop"]);
    let ps = node.ok(&["ps", "shop"]);
    assert!(
        ps.contains(", stopped with `kiln stop` by ") && ps.contains("`kiln start shop` starts it"),
        "{ps}"
    );
    let status = node.ok(&["status", "shop"]);
    assert!(
        status.contains("stopped:     with `kiln stop` by "),
        "{status}"
    );
    assert!(ps_json_stopped(&project));

    let restart = node.kiln(&["restart", "shop"]);
    assert_eq!(restart.status.code(), Some(2), "{}", text(&restart));
    assert!(
        text(&restart).contains("`shop` is stopped (by "),
        "{}",
        text(&restart)
    );
    // A reboot: the supervisor daemon dies, `kiln boot` starts what should run.
    kill_daemon(&node);
    node.ok(&["boot"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_nothing_runs(&node, port, "after kiln boot");

    // Scaling a stopped project records the counts for when it starts.
    let scaled = node.ok(&["ps", "scale", "shop", "web=2"]);
    assert!(
        scaled.contains("recorded web=2 for `shop`, which is stopped: `kiln start shop` runs it"),
        "{scaled}"
    );

    // A deploy that fails leaves it stopped: nothing of the old release starts again.
    app.write("Procfile", "web: exit 3\nworker: exec sleep 1000\n");
    app.commit("broken");
    let (ok, output) = app.push(&project);
    assert!(ok && output.contains("deploy FAILED"), "{output}");
    assert!(
        output.contains("`shop` was stopped with `kiln stop` (by "),
        "{output}"
    );
    assert_nothing_runs(&node, port, "after a failed deploy");
    // The failed release's own start, and its stop in the undo; nothing of the live one.
    assert_eq!(services_log(&project), ["start", "stop", "start", "stop"]);
    assert!(
        node.ok(&["status", "shop"])
            .contains("stopped:     with `kiln stop`")
    );

    let started = node.ok(&["start", "shop"]);
    assert!(started.contains("\nstarted `shop` (release "), "{started}");
    assert!(started.contains(": web.1, web.2, worker.1"), "{started}");
    assert_eq!(answer(&project).as_deref(), Some("v1"));
    let second = instance(&project, "web.2")["port"].as_u64().unwrap() as u16;
    assert_eq!(http_get(second, "/").map(|(s, _)| s), Some(200));
    assert_eq!(
        services_log(&project),
        ["start", "stop", "start", "stop", "start"]
    );
    assert!(!node.ok(&["status", "shop"]).contains("stopped:"));
    let again = node.ok(&["start", "shop"]);
    assert!(
        again.contains("`shop` is not stopped: nothing to start"),
        "{again}"
    );

    // Stopped again, then a good deploy starts it, without running the stop command twice.
    node.ok(&["stop", "shop"]);
    assert_nothing_runs(&node, port, "stopped again");
    app.write("Procfile", PROCFILE).write("message.txt", "v2\n");
    app.commit("v2");
    let output = app.deploy(&project);
    assert!(
        output.contains("`shop` was stopped with `kiln stop` (by "),
        "{output}"
    );
    assert_eq!(answer(&project).as_deref(), Some("v2"));
    assert_eq!(
        services_log(&project),
        ["start", "stop", "start", "stop", "start", "stop", "start"]
    );
    assert!(!node.ok(&["status", "shop"]).contains("stopped:"));
    assert!(!ps_json_stopped(&project));
}

fn ps_json_stopped(project: &Project) -> bool {
    !ps(project)["stopped"].is_null()
}

fn kill_daemon(node: &Node) {
    let pid: i32 = fs::read_to_string(node.root.join(".kiln/supervisor/daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_for(Duration::from_secs(10), || {
        node.ok(&["status", "shop"])
            .contains("`kiln supervise`, not running")
            .then_some(())
    });
}

/// Machine maintenance: `kiln supervise --stop` stops every app and the daemon; no command
/// starts them again (reading wakes nothing, restarts and deploys of projects with processes
/// are refused, changing nothing) until `kiln boot`, which starts what ran, and leaves a
/// project stopped with `kiln stop` stopped.
#[test]
fn kiln_supervise_stop_stops_every_app_and_only_kiln_boot_brings_them_back() {
    let (node, _guard) = supervised_node();
    let (shop, shop_app) = shop(&node);
    shop_app.deploy(&shop);
    let api = node.init("api", "cooking");
    let api_app = node.app("api");
    api_app
        .write("app.py", PY_APP)
        .write("Procfile", "web: python3 app.py\n")
        .write("message.txt", "api\n");
    api_app.commit("api");
    api_app.deploy(&api);
    let idle = node.init("idle", "cooking");
    let idle_app = node.app("idle");
    idle_app
        .write("app.py", PY_APP)
        .write("Procfile", "web: python3 app.py\n")
        .write("message.txt", "idle\n");
    idle_app.commit("idle");
    idle_app.deploy(&idle);
    node.ok(&["stop", "idle"]);
    let ports = [web_port(&shop), web_port(&api)];

    let said = node.ok(&["supervise", "--stop"]);
    assert!(said.contains("shop: stopped web.1, worker.1"), "{said}");
    assert!(said.contains("api: stopped web.1"), "{said}");
    assert!(!said.contains("idle:"), "{said}");
    assert!(
        said.contains("`kiln boot` starts it and every app again"),
        "{said}"
    );
    let nothing = || {
        wait_for(Duration::from_secs(10), || {
            processes_of(&node.root).is_empty().then_some(())
        })
    };
    assert!(
        nothing().is_some(),
        "still running: {:?}",
        processes_of(&node.root)
    );

    // Looking wakes nothing.
    let status = node.ok(&["status", "shop"]);
    assert!(
        status.contains("stopped with `kiln supervise --stop` by "),
        "{status}"
    );
    node.ok(&["ps", "api"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(processes_of(&node.root), Vec::<i32>::new());
    for port in ports {
        assert_eq!(http_get(port, "/"), None);
    }
    // Acting is refused, and changes nothing.
    let before = shop.current();
    for args in [
        &["restart", "shop"][..],
        &["start", "idle"],
        &["deploy", "shop", "--force"],
        &["rollback", "api"],
    ] {
        let out = node.kiln(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("were stopped with `kiln supervise --stop` (by ")
                && text(&out).contains("run `kiln boot` to start them again first"),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert_eq!(shop.current(), before);
    assert_eq!(processes_of(&node.root), Vec::<i32>::new());

    let booted = node.ok(&["boot"]);
    assert!(
        booted.contains("supervisor: kiln (`kiln supervise`, pid "),
        "{booted}"
    );
    let up = wait_for(Duration::from_secs(20), || {
        (answer(&shop).as_deref() == Some("v1") && answer(&api).as_deref() == Some("api"))
            .then_some(())
    });
    assert!(up.is_some(), "{}", node.ok(&["ps", "shop"]));
    assert_eq!(web_port(&shop), ports[0], "a web instance keeps its port");
    assert_eq!(apps(&node.root, "worker.1").len(), 1);
    assert!(
        node.ok(&["status", "idle"])
            .contains("stopped:     with `kiln stop`")
    );
    assert!(
        apps(&node.root, "web.1")
            .iter()
            .all(|(_, release)| *release != idle.current().unwrap()),
        "the project stopped with `kiln stop` stays stopped"
    );
    // And everything works again.
    node.ok(&["restart", "api"]);
    assert_eq!(answer(&api).as_deref(), Some("api"));
}
