//! End to end: apps that run. A Procfile's processes run under kiln's own supervisor with
//! real HTTP on 127.0.0.1; they are restarted when they die, stopped and started around every
//! switch, rolled back with the release, scaled, logged, and they survive the supervisor's
//! own death. Every test kills what it started through a `ProcessGuard`, also on panic.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::processes::*;
use common::*;

/// A cooking project whose app is [`PY_APP`] answering `message`, plus `extra` files.
fn web_app(node: &Node, procfile: &str, message: &str) -> (Project, App) {
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("app.py", PY_APP)
        .write("Procfile", procfile)
        .write("message.txt", message);
    app.commit("v1");
    (project, app)
}

const WEB: &str = "web: python3 app.py\n";

fn deployed(app: &App, project: &Project) -> String {
    app.deploy(project)
}

#[test]
fn an_app_with_a_procfile_runs_answers_and_a_second_push_answers_the_new_text() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, WEB, "hello v1\n");
    app.write(
        ".profile.d/greet.sh",
        "export FROM_PROFILE=\"profiled in $PWD\"\n",
    )
    .write("kiln.yml", "defaults:\n  env:\n    GREETING: hi\n");
    app.commit("with env");
    let output = deployed(&app, &project);
    assert!(
        output.contains("processes: web=1 (backend: kiln)"),
        "{output}"
    );
    assert!(output.contains("(GET / answered below 500)"), "{output}");
    // It listens on 127.0.0.1 only: no warning that it listens beyond (runtime/listeners.rs).
    assert!(!output.contains("listens on"), "{output}");
    assert!(!node.ok(&["ps", "shop"]).contains("warning"));
    let first = project.current().unwrap();
    let port = web_port(&project);
    assert_eq!(answer(&project).as_deref(), Some("hello v1"));

    // The environment of the process: PORT, KILN_*, env:, .profile.d (from run/).
    let env = |name: &str| http_get(port, &format!("/env/{name}")).unwrap().1;
    assert_eq!(env("PORT").trim(), port.to_string());
    assert_eq!(env("KILN_RELEASE").trim(), first);
    assert_eq!(env("DYNO").trim(), "web.1");
    assert_eq!(env("GREETING").trim(), "hi");
    assert_eq!(
        env("FROM_PROFILE").trim(),
        format!("profiled in {}", project.run().display())
    );
    assert_eq!(env("KILN_COMMON").trim(), "unset", "deploy-only");
    assert_eq!(env("KILN_STAGE").trim(), "unset", "deploy-only");

    let status = node.ok(&["status", "shop"]);
    assert!(
        status.contains("supervisor:  kiln (`kiln supervise`, pid "),
        "{status}"
    );
    assert!(status.contains("processes:   web.1 up"), "{status}");

    app.write("message.txt", "hello v2\n");
    app.commit("v2");
    deployed(&app, &project);
    assert_eq!(answer(&project).as_deref(), Some("hello v2"));
    assert_eq!(web_port(&project), port, "a web instance keeps its port");
    let running = apps(&node.root, "web.1");
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].1, project.current().unwrap());
}

#[test]
fn a_node_app_on_the_http_module_runs_too() {
    let (node, _guard) = supervised_node();
    let project = node.init("api", "cooking");
    let app = node.app("api");
    app.write(
        "server.js",
        "const http = require('http');\nhttp.createServer((q, r) => r.end('node says hi\\n')).listen(process.env.PORT, '127.0.0.1', () => console.log('up'));\n",
    )
    .write("Procfile", "web: node server.js\n");
    app.commit("node");
    deployed(&app, &project);
    assert_eq!(answer(&project).as_deref(), Some("node says hi"));
}

#[test]
fn a_killed_web_process_is_restarted_within_the_backoff() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, WEB, "alive\n");
    deployed(&app, &project);
    let before = instance(&project, "web.1");
    let pid = before["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The first restart comes after 1 s.
    let after = wait_for(Duration::from_secs(15), || {
        let now = instance(&project, "web.1");
        (now["state"] == "up" && now["pid"] != before["pid"] && answer(&project).is_some())
            .then_some(now)
    })
    .expect("a new web.1 answers");
    assert_eq!(after["restarts"], 1);
    assert_eq!(after["last_exit"], "SIGKILL");
    assert_eq!(after["port"], before["port"]);
    assert_eq!(apps(&node.root, "web.1").len(), 1);
    let logs = node.ok(&["logs", "shop", "--app"]);
    assert!(
        logs.contains("kiln[web.1]: exited (SIGKILL)") && logs.contains("restarting in 1s"),
        "{logs}"
    );
}

#[test]
fn a_process_that_always_crashes_fails_its_deploy_and_the_old_release_answers() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, WEB, "good\n");
    deployed(&app, &project);
    let good = project.current().unwrap();
    fs::write(project.data().join("db.txt"), "rows: 1\n").unwrap();
    let before = Before::take(&project);

    app.write(
        "Procfile",
        "web: echo boom >&2; exit 3\nworker: python3 -c 'import time; time.sleep(100)'\n",
    );
    app.commit("crashes");
    let (_, output) = app.push(&project);
    let last = last_remote_line(&output);
    assert!(
        last.contains("deploy FAILED at deploy (process `web.1` (`echo boom >&2; exit 3`) exited (exit 3) while starting")
            && last.contains(&format!("rolled back to {good}")),
        "{output}"
    );
    assert!(
        output.contains("app[web.1]: boom"),
        "the log tail: {output}"
    );
    before.assert_unchanged(&project, "");
    assert_eq!(project.current().as_deref(), Some(good.as_str()));
    assert_eq!(answer(&project).as_deref(), Some("good"));
    let running = apps(&node.root, "web.1");
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].1, good);
    assert!(
        apps(&node.root, "worker.1").is_empty(),
        "the failed release's worker stopped"
    );
}

#[test]
fn a_failing_release_phase_rolls_back_run_and_data_byte_for_byte() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, WEB, "v1\n");
    deployed(&app, &project);
    let good = project.current().unwrap();
    fs::write(project.data().join("db.txt"), "rows: 1\n").unwrap();
    fs::create_dir_all(project.data().join("uploads")).unwrap();
    let before = Before::take(&project);
    let pid_before = instance(&project, "web.1")["pid"].clone();

    app.write(
        "Procfile",
        &format!(
            "{WEB}release: echo migrated >> \"$KILN_DATA_DIR/db.txt\" && rm -r \"$KILN_DATA_DIR/uploads\" && echo $FROM_PROFILE && exit 4\n"
        ),
    )
    .write(".profile.d/p.sh", "export FROM_PROFILE=release-sees-profile\n")
    .write("message.txt", "v2\n");
    app.commit("bad migration");
    let (_, output) = app.push(&project);
    assert!(
        output.contains("release phase (the Procfile's `release:`)"),
        "{output}"
    );
    assert!(output.contains("release-sees-profile"), "{output}");
    let last = last_remote_line(&output);
    assert!(
        last.contains("deploy FAILED at deploy (") && last.contains(": exit 4); rolled back to"),
        "{output}"
    );
    before.assert_unchanged(&project, "");
    assert_eq!(project.current().as_deref(), Some(good.as_str()));
    assert_eq!(answer(&project).as_deref(), Some("v1"));
    assert_ne!(
        instance(&project, "web.1")["pid"],
        pid_before,
        "started again"
    );
}

#[test]
fn a_web_process_that_does_not_serve_fails_the_default_check() {
    // (Procfile, check timeout, expected): an app that answers 500 gets time to start first.
    for (procfile, timeout, expected) in [
        (
            "web: sleep 100\n",
            "3s",
            "process `web.1` (`sleep 100`) did not accept connections on its PORT",
        ),
        (
            "web: python3 -c \"import http.server as h, os; h.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), type('H', (h.BaseHTTPRequestHandler,), {'do_GET': lambda s: s.send_error(500)})).serve_forever()\"\n",
            "10s",
            "the default check failed: GET http://127.0.0.1:",
        ),
    ] {
        let (node, _guard) = supervised_node();
        let (project, app) = web_app(&node, WEB, "first\n");
        deployed(&app, &project);
        let good = project.current().unwrap();
        let run_before = fingerprint(&project.run());
        app.write("Procfile", procfile)
            .write("kiln.yml", &format!("check:\n  timeout: {timeout}\n"));
        app.commit("broken");
        let (_, output) = app.push(&project);
        let last = last_remote_line(&output);
        assert!(
            last.contains(expected) && last.contains(&format!("rolled back to {good}")),
            "{procfile}: {output}"
        );
        assert_same(&run_before, &fingerprint(&project.run()), "run/");
        assert_eq!(answer(&project).as_deref(), Some("first"));
    }
}

#[test]
fn scale_up_and_down_restarts_only_what_changed() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(
        &node,
        "web: python3 app.py\nworker: python3 -c 'import time; time.sleep(1000)'\n",
        "scaled\n",
    );
    deployed(&app, &project);
    let web1 = instance(&project, "web.1");
    let worker1 = instance(&project, "worker.1");

    let out = node.ok(&["ps", "scale", "shop", "web=2", "worker=0"]);
    assert!(out.contains("scaled `shop` to web=2 worker=0"), "{out}");
    let ps = ps(&project);
    let names: Vec<&str> = ps["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web.1", "web.2"]);
    assert_eq!(
        instance(&project, "web.1")["pid"],
        web1["pid"],
        "web.1 untouched"
    );
    let port2 = wait_for(Duration::from_secs(10), || {
        let web2 = instance(&project, "web.2");
        let port = web2["port"].as_u64()? as u16;
        http_get(port, "/").map(|_| port)
    })
    .expect("web.2 answers");
    assert_ne!(Some(port2 as u64), web1["port"].as_u64());
    assert!(
        apps(&node.root, "worker.1").is_empty(),
        "worker scaled to 0"
    );
    assert!(worker1["pid"].is_i64());

    // Kept across deploys.
    app.write("message.txt", "scaled v2\n");
    app.commit("v2");
    let output = deployed(&app, &project);
    assert!(output.contains("processes: web=2 worker=0"), "{output}");
    assert_eq!(apps(&node.root, "web.2").len(), 1);

    node.ok(&["ps", "scale", "shop", "web=1"]);
    let pid1 = instance(&project, "web.1")["pid"].clone();
    assert!(apps(&node.root, "web.2").is_empty(), "web.2 stopped");
    assert_eq!(
        http_get(port2, "/"),
        None,
        "nothing answers on web.2's port"
    );
    assert_eq!(instance(&project, "web.1")["pid"], pid1);

    let out = node.kiln(&["ps", "scale", "shop", "wrok=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("error: `wrok` is not a process type of `shop` (it has `web`, `worker`)"),
        "{}",
        text(&out)
    );
}

#[test]
fn kiln_run_passes_exit_status_stdin_and_the_release_environment() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, WEB, "x\n");
    app.write(".profile.d/p.sh", "export FROM_PROFILE=yes\n")
        .write("kiln.yml", "defaults:\n  env:\n    GREETING: hi there\n");
    app.commit("env");
    deployed(&app, &project);
    let release = project.current().unwrap();
    let out = node.kiln(&[
        "run",
        "shop",
        "--",
        "sh",
        "-c",
        "echo \"$KILN_RELEASE|$GREETING|$FROM_PROFILE|${PORT-unset}|$KILN_PROCESS|$(pwd)\"; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "{release}|hi there|yes|unset|run|{}",
            fs::canonicalize(project.run()).unwrap().display()
        )
    );
    // stdin and stdout are the operator's.
    let mut child = Command::new(KILN)
        .arg("--root")
        .arg(&node.root)
        .args(["run", "shop", "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PIPED IN\n");
    // Arguments are passed as they are, never through a shell.
    let out = node.kiln(&["run", "shop", "--", "echo", "$HOME; exit 3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "$HOME; exit 3\n");
    let out = node.kiln(&["run", "shop", "--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
}

/// Regression: `kiln run shop python -V`, as `heroku run` and `dokku run` are typed, was a
/// usage error (`unexpected argument 'python' found`): kiln wanted `--` before the command.
#[test]
fn regression_kiln_run_takes_the_command_without_dashdash() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("app.txt", "v1\n");
    app.commit("v1");
    app.deploy(&project);
    let out = node.kiln(&[
        "run",
        "shop",
        "sh",
        "-c",
        "echo \"$KILN_PROCESS $1\"; exit 5",
        "-",
        "-x",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "run -x\n");
    // `--` still works, and what follows the command is its own, `--` included.
    let out = node.kiln(&["run", "shop", "--", "echo", "--", "--help"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "-- --help\n",
        "{}",
        text(&out)
    );
    let out = node.kiln(&["run", "shop", "cat", "app.txt"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "v1\n",
        "{}",
        text(&out)
    );
    // No command at all is still bad usage.
    assert_eq!(node.kiln(&["run", "shop"]).status.code(), Some(2));
}

#[test]
fn app_logs_hold_what_the_app_printed_with_timestamp_and_prefix() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(
        &node,
        "web: python3 app.py\nworker: echo working; echo to stderr >&2; sleep 1000\n",
        "logged\n",
    );
    deployed(&app, &project);
    http_get(web_port(&project), "/logged-path").unwrap();
    let logs = wait_for(Duration::from_secs(15), || {
        let logs = node.ok(&["logs", "shop", "--app"]);
        logs.contains("served /logged-path").then_some(logs)
    })
    .expect("the request in the log");
    let port = web_port(&project);
    let line = logs
        .lines()
        .find(|l| l.ends_with(&format!("app[web.1]: listening on {port}")))
        .unwrap_or_else(|| panic!("{logs}"));
    let stamp = line.split(' ').next().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "{line}"
    );
    assert!(logs.contains("app[worker.1]: working"), "{logs}");
    assert!(logs.contains("app[worker.1]: to stderr"), "{logs}");
    assert!(logs.contains("kiln[web.1]: started pid "), "{logs}");
    let workers = node.ok(&["logs", "shop", "--app", "--type", "worker"]);
    assert!(
        !workers.contains("[web.1]") && workers.contains("working"),
        "{workers}"
    );
    let last = node.ok(&["logs", "shop", "--app", "-n", "1"]);
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(project.path("logs/app/web.1.log").is_file());
    // Regression: a mistyped type printed nothing and exited 0, as if the app had been quiet.
    let out = node.kiln(&["logs", "shop", "--app", "--type", "wroker"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: shop has no process type `wroker` (its types: `web`, `worker`)"
    );
}

#[test]
fn kiln_supervise_killed_with_sigkill_comes_back_without_a_duplicate() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(
        &node,
        "web: python3 app.py\nworker: sleep 1000\n",
        "survivor\n",
    );
    deployed(&app, &project);
    let daemon_pid = || {
        fs::read_to_string(node.root.join(".kiln/supervisor/daemon.pid"))
            .unwrap()
            .trim()
            .parse::<i32>()
            .unwrap()
    };
    let kill9 = |pid: i32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    };
    let web = apps(&node.root, "web.1");
    let first = daemon_pid();
    kill9(first);
    // The apps never stopped; the next kiln command starts the daemon, which adopts them.
    assert_eq!(answer(&project).as_deref(), Some("survivor"));
    let ps = ps(&project);
    assert!(
        ps["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "up"),
        "{ps:#}"
    );
    assert_ne!(daemon_pid(), first);
    assert_eq!(apps(&node.root, "web.1"), web, "the same app, no duplicate");

    // The daemon and web.1's own supervisor both killed: the app is orphaned. `kiln boot`
    // stops the orphan and starts web.1 anew: one web.1, answering.
    let status: serde_json::Value = serde_json::from_slice(
        &fs::read(
            node.root
                .join(".kiln/supervisor/instances/shop/web.1/status.json"),
        )
        .unwrap(),
    )
    .unwrap();
    kill9(daemon_pid());
    kill9(status["shim"]["pid"].as_i64().unwrap() as i32);
    let out = node.ok(&["boot"]);
    assert!(out.contains("shop: "), "{out}");
    let web = wait_for(Duration::from_secs(10), || {
        let web = apps(&node.root, "web.1");
        (web.len() == 1 && answer(&project).is_some()).then_some(web)
    })
    .expect("one web.1 answering");
    assert_ne!(web[0].0, status["app"]["pid"].as_i64().unwrap() as i32);
    assert_eq!(apps(&node.root, "worker.1").len(), 1);
}

#[cfg(feature = "failpoints")]
#[test]
fn kill_9_at_each_failpoint_is_recovered_to_the_old_releases_processes() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, "web: python3 app.py\nworker: sleep 1000\n", "old\n");
    deployed(&app, &project);
    let good = project.current().unwrap();
    app.write("message.txt", "new\n")
        .write("Procfile", "web: python3 app.py\nclock: sleep 1000\n");
    app.commit("new");
    app.push_next(&project);
    for point in [
        "after-snapshot",
        "after-stop",
        "after-switch",
        "after-deploy-commands",
        "before-commit",
    ] {
        node.killed_at(point, &["deploy", "shop", "--rev", "next"]);
        assert_success(&node.kiln(&["recover", "shop"]), "recover");
        assert_eq!(project.current().as_deref(), Some(good.as_str()), "{point}");
        let ps = ps(&project);
        assert_eq!(ps["release"], good.as_str(), "{point}: {ps:#}");
        assert_eq!(answer(&project).as_deref(), Some("old"), "{point}");
        let web = apps(&node.root, "web.1");
        assert_eq!(web.len(), 1, "{point}: {web:?}");
        assert_eq!(web[0].1, good, "{point}");
        assert_eq!(apps(&node.root, "worker.1").len(), 1, "{point}");
        assert!(
            apps(&node.root, "clock.1").is_empty(),
            "{point}: none of the new"
        );
    }
    // Killed after the commit point, the new release is live and runs.
    node.killed_at("after-commit", &["deploy", "shop", "--rev", "next"]);
    assert_success(&node.kiln(&["recover", "shop"]), "recover");
    assert_ne!(project.current().as_deref(), Some(good.as_str()));
    assert_eq!(answer(&project).as_deref(), Some("new"));
    assert_eq!(apps(&node.root, "clock.1").len(), 1);
    assert!(apps(&node.root, "worker.1").is_empty());
}

#[test]
fn kiln_rollback_switches_processes() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, "web: python3 app.py\nworker: sleep 1000\n", "one\n");
    deployed(&app, &project);
    let first = project.current().unwrap();
    app.write("message.txt", "two\n")
        .write("Procfile", "web: python3 app.py\n");
    app.commit("two");
    deployed(&app, &project);
    assert_eq!(answer(&project).as_deref(), Some("two"));
    assert!(apps(&node.root, "worker.1").is_empty());

    let out = node.ok(&["rollback", "shop"]);
    assert!(out.contains(&format!("rolled back to {first}")), "{out}");
    assert_eq!(answer(&project).as_deref(), Some("one"));
    assert_eq!(ps(&project)["release"], first.as_str());
    let web = apps(&node.root, "web.1");
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].1, first, "its own KILN_RELEASE");
    assert_eq!(
        apps(&node.root, "worker.1").len(),
        1,
        "its own process types"
    );
}

#[test]
fn final_mode_runs_the_process_types_staging_baked() {
    let (node, _guard) = supervised_node();
    let (prod, _prod_guard) = supervised_sibling(&node, "prod");
    let (staging, app) = web_app(&node, WEB, "baked\n");
    // The Procfile is written by the build: only the baked tree has it.
    app.remove("Procfile").write(
        "kiln.yml",
        "stages:\n  build:\n    - \"echo 'web: python3 app.py' > Procfile\"\n",
    );
    app.commit("built procfile");
    deployed(&app, &staging);
    let release = staging.current().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(staging.path(&format!("releases/{release}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["process_types"]["web"], "python3 app.py");

    let production = prod.init_with(
        "shop",
        &[
            "--mode",
            "final",
            "--source",
            staging.base.to_str().unwrap(),
        ],
    );
    let output = app.deploy(&production);
    assert!(output.contains("final mode never builds"), "{output}");
    assert!(output.contains("processes: web=1"), "{output}");
    assert_eq!(answer(&production).as_deref(), Some("baked"));
    assert_ne!(web_port(&production), web_port(&staging));
}

#[test]
fn a_process_ignoring_sigterm_is_killed_with_its_group_after_the_grace() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(
        &node,
        "web: python3 app.py\nstubborn: trap '' TERM; sleep 1000 & sleep 1000 & wait\n",
        "x\n",
    );
    app.write("kiln.yml", "stop_grace: 1s\n");
    app.commit("grace");
    deployed(&app, &project);
    let pgid = instance(&project, "stubborn.1")["pid"].as_i64().unwrap() as i32;
    let started = std::time::Instant::now();
    node.ok(&["ps", "scale", "shop", "stubborn=0"]);
    let took = started.elapsed();
    assert!(
        !common::processes::processes_of(&node.root)
            .iter()
            .any(|pid| {
                nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*pid))).ok()
                    == Some(nix::unistd::Pid::from_raw(pgid))
            }),
        "the whole group is gone"
    );
    assert!(
        took >= Duration::from_secs(1),
        "waited for the grace: {took:?}"
    );
    let logs = node.ok(&["logs", "shop", "--app", "--type", "stubborn"]);
    assert!(
        logs.contains("stopping (SIGTERM; SIGKILL after 1s)"),
        "{logs}"
    );
}

#[test]
fn editable_mode_restarts_the_processes_around_the_deploy_commands() {
    let (node, _guard) = supervised_node();
    let project = node.init("shop", "editable");
    let app = node.app("shop");
    app.write("app.py", PY_APP)
        .write("Procfile", WEB)
        .write("message.txt", "dev 1\n");
    app.commit("one");
    deployed(&app, &project);
    assert_eq!(answer(&project).as_deref(), Some("dev 1"));
    app.write("message.txt", "dev 2\n");
    app.commit("two");
    deployed(&app, &project);
    assert_eq!(answer(&project).as_deref(), Some("dev 2"));
    assert_eq!(apps(&node.root, "web.1").len(), 1);
}

#[test]
fn a_bad_procfile_is_refused_at_push_with_its_line_and_nothing_changes() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write(
        "Procfile",
        "# ok\nweb: python3 app.py\nworker python3 w.py\n",
    );
    app.commit("bad");
    let (ok, output) = app.push(&project);
    assert!(!ok, "{output}");
    assert!(
        output.contains("Procfile:3:1: expected `name: command` (e.g. `web: gunicorn app:app`)"),
        "{output}"
    );
    assert_eq!(project.branch_tip("master"), None);
    assert!(project.releases().is_empty());
    assert!(
        !node.root.join(".kiln").exists(),
        "no supervisor for a refused push"
    );
}

#[test]
fn kiln_yml_naming_a_missing_process_type_fails_before_anything_stops() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, WEB, "kept\n");
    deployed(&app, &project);
    let pid = instance(&project, "web.1")["pid"].clone();
    app.write("kiln.yml", "processes:\n  wbe: 2\n");
    app.commit("typo");
    let (_, output) = app.push(&project);
    assert!(
        last_remote_line(&output)
            .contains("kiln.yml `processes` names the process type `wbe`, which release"),
        "{output}"
    );
    assert_eq!(instance(&project, "web.1")["pid"], pid, "never stopped");
}

/// The front door (node.yml `proxy`) sends a project's domain to its supervised web
/// processes: their ports are the upstreams, before and after a deploy moves them to a new
/// release. A static site the front door serves itself runs no process at all.
#[test]
fn the_front_door_routes_a_domain_to_the_supervised_web_processes() {
    let (node, _guard) = supervised_node();
    let http = free_port();
    node.write_node_yml(&format!(
        "supervisor:\n  backend: kiln\nproxy:\n  nginx:\n    private: true\n    listen: ['127.0.0.1:{http}']\n    listen_tls: ['127.0.0.1:{}']\n",
        free_port()
    ));
    let _nginx = common::http::NginxGuard {
        root: node.root.clone(),
    };
    let (project, app) = web_app(&node, WEB, "through nginx v1\n");
    node.ok(&["domains", "add", "shop", "shop.test"]);
    node.ok(&["proxy", "start"]);
    deployed(&app, &project);
    let body = |host: &str| common::http::get(http, host, "/").body.trim().to_string();
    assert_eq!(body("shop.test"), "through nginx v1");
    app.write("message.txt", "through nginx v2\n");
    app.commit("v2");
    deployed(&app, &project);
    assert_eq!(body("shop.test"), "through nginx v2");

    let site = node.init("site", "cooking");
    node.ok(&["domains", "add", "site", "site.test"]);
    let static_app = node.app("site");
    static_app.write("public/index.html", "<h1>static</h1>\n");
    static_app.commit("static");
    let output = static_app.deploy(&site);
    assert!(
        output.contains(
            "the front door serves this site from run/: its buildpack's `web` process is not run"
        ),
        "{output}"
    );
    assert_eq!(body("site.test"), "<h1>static</h1>");
    assert!(
        apps(&node.root, "web.1")
            .iter()
            .all(|(_, release)| *release == project.current().unwrap())
    );
}

/// Found with the front door's tests: an app that kiln.yml `services.start` runs itself, and
/// whose public/ made kiln's static buildpack propose a `web` process, got a second server
/// (the static one) that the front door then routed to.
#[test]
fn regression_an_app_run_by_services_start_gets_no_proposed_web_process() {
    let (node, _guard) = supervised_node();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("public/index.html", "<h1>hi</h1>\n").write(
        "kiln.yml",
        "services:\n  start: echo started by services\n  stop: echo stopped by services\n",
    );
    app.commit("services");
    let output = app.deploy(&project);
    assert!(output.contains("-----> Static app detected"), "{output}");
    assert!(
        output.contains("kiln.yml `services.start` runs the app: the buildpack's proposed process types (web) are not run"),
        "{output}"
    );
    assert!(apps(&node.root, "web.1").is_empty());
    assert!(
        !node.root.join(".kiln/supervisor/daemon.pid").exists(),
        "no daemon started"
    );
}

/// The supervisor reports what it sees to the alerts (node.yml `notify.alerts`): a web
/// process that keeps crashing sends one alert mail, however often it restarts, and one
/// "recovered" mail once it has stayed up for `stable`.
#[test]
fn a_crash_loop_sends_one_alert_and_one_recovered_mail() {
    use common::notify::{SmtpOptions, SmtpSink};
    let (node, _guard) = supervised_node();
    let sink = SmtpSink::start(&node.dir.path().join("mail"), SmtpOptions::default());
    node.write_node_yml(&format!(
        "supervisor:\n  backend: kiln\nnotify:\n  smtp:\n    host: 127.0.0.1\n    port: {}\n    from: kiln@node.example\n  backoff: 1s\n  alerts: {{restarts: 1, within: 5m, stable: 2s}}\n  on: [failure, alert]\n",
        sink.port
    ));
    let (project, app) = web_app(
        &node,
        "web: if [ -e \"$KILN_DATA_DIR/crash\" ]; then echo crashing on purpose; exit 5; fi; exec python3 app.py\n",
        "steady\n",
    );
    project.add_setting("notify: [ops@example.com]");
    deployed(&app, &project);
    fs::write(project.data().join("crash"), "").unwrap();
    let pid = instance(&project, "web.1")["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let subjects =
        |sink: &SmtpSink| -> Vec<String> { sink.mails().into_iter().map(|m| m.subject).collect() };
    let alert = wait_for(Duration::from_secs(30), || {
        let said = subjects(&sink);
        (!said.is_empty()).then_some(said)
    })
    .expect("an alert mail");
    assert_eq!(
        alert,
        ["[kiln] shop (staging): ALERT: `web` is crash-looping (2 restarts within 5m)"]
    );
    assert!(
        sink.mails()[0].body.contains("crashing on purpose"),
        "the app's last lines: {}",
        sink.mails()[0].body
    );
    fs::remove_file(project.data().join("crash")).unwrap();
    let both = wait_for(Duration::from_secs(40), || {
        let said = subjects(&sink);
        (said.len() >= 2).then_some(said)
    })
    .expect("a recovered mail");
    assert_eq!(
        both[1],
        "[kiln] shop (staging): recovered: `web` is running again"
    );
    assert_eq!(answer(&project).as_deref(), Some("steady"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        subjects(&sink).len(),
        2,
        "one alert, one recovered, nothing more"
    );
}

/// A web app on the standard library whose `/` answers 500 while `data/broken` exists, and
/// for its first 4 seconds while `data/slow-start` exists (an app that warms up).
const CHECKED_APP: &str = r#"import http.server, os, time
started = time.time()
data = os.environ['KILN_DATA_DIR']
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        warming = os.path.exists(os.path.join(data, 'slow-start')) and time.time() - started < 4
        broken = os.path.exists(os.path.join(data, 'broken'))
        status = 500 if warming or broken else 200
        body = b'broken\n' if broken else b'warming up\n' if warming else b'fine\n'
        self.send_response(status)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        print('answered', args[1], flush=True)
http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), Handler).serve_forever()
"#;

/// The supervisor checks the running web processes (GET / every `check_every`): a `/` that
/// starts answering 500 sends exactly one alert mail after `check_failures` failed checks,
/// and one "recovered" mail once it answers 200 again. kiln's own restarts (a deploy, `kiln
/// restart`) are not checked while they run, even for an app that answers 500 while it warms
/// up: they send nothing.
/// Regression: after kiln was upgraded (its file replaced) while apps ran, their instance
/// supervisors, still running the old binary, tried to start `<path> (deleted) notify
/// deliver` for each alert: `could not report to the alerts: ... No such file or directory`,
/// and a crash loop's alert was never sent.
#[test]
fn regression_an_alert_is_delivered_after_kiln_was_upgraded_under_running_apps() {
    use common::notify::{SmtpOptions, SmtpSink};
    let (node, _guard) = supervised_node();
    let sink = SmtpSink::start(&node.dir.path().join("mail"), SmtpOptions::default());
    node.write_node_yml(&format!(
        "supervisor:\n  backend: kiln\nnotify:\n  smtp:\n    host: 127.0.0.1\n    port: {}\n    from: kiln@node.example\n  backoff: 1s\n  alerts: {{restarts: 1, within: 5m, stable: 2s}}\n  on: [alert]\n",
        sink.port
    ));
    // The node runs its own copy of kiln, as an installed one: the hooks and the supervisor
    // start it from there.
    let installed = node.dir.path().join("bin/kiln");
    fs::create_dir_all(installed.parent().unwrap()).unwrap();
    fs::copy(KILN, &installed).unwrap();
    let out = Command::new(&installed)
        .arg("--root")
        .arg(&node.root)
        .args(["init", "shop", "--mode", "cooking"])
        .output()
        .unwrap();
    assert_success(&out, "kiln init with the installed copy");
    let project = node.project("shop");
    project.add_setting("notify: [ops@example.com]");
    let app = node.app("shop");
    app.write("app.py", PY_APP)
        .write(
            "Procfile",
            "web: if [ -e \"$KILN_DATA_DIR/crash\" ]; then echo crashing on purpose; exit 5; fi; exec python3 app.py\n",
        )
        .write("message.txt", "steady\n");
    app.commit("v1");
    deployed(&app, &project);
    let supervisors = || -> Vec<String> {
        processes_of(&node.root)
            .into_iter()
            .filter_map(|pid| fs::read_link(format!("/proc/{pid}/exe")).ok())
            .map(|exe| exe.display().to_string())
            .collect()
    };
    assert!(
        supervisors()
            .iter()
            .any(|exe| *exe == installed.display().to_string()),
        "{:?}",
        supervisors()
    );

    // The upgrade: a new file takes the installed one's place, as a package manager does.
    let new = node.dir.path().join("bin/kiln.new");
    fs::copy(KILN, &new).unwrap();
    fs::rename(&new, &installed).unwrap();
    assert!(
        supervisors().iter().any(|exe| exe.ends_with(" (deleted)")),
        "the apps' supervisors still run the replaced binary: {:?}",
        supervisors()
    );

    fs::write(project.data().join("crash"), "").unwrap();
    let pid = instance(&project, "web.1")["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mails = sink.wait_for(1, Duration::from_secs(30));
    assert_eq!(
        mails.first().map(|m| m.subject.as_str()),
        Some("[kiln] shop (staging): ALERT: `web` is crash-looping (2 restarts within 5m)"),
        "{}",
        fs::read_to_string(project.path("logs/app/web.1.log")).unwrap_or_default()
    );
    let log = fs::read_to_string(project.path("logs/app/web.1.log")).unwrap();
    assert!(!log.contains("could not report to the alerts"), "{log}");
    fs::remove_file(project.data().join("crash")).unwrap();
}

#[test]
fn a_web_check_that_starts_failing_sends_one_alert_and_one_recovered_mail() {
    use common::notify::{SmtpOptions, SmtpSink};
    let (node, _guard) = supervised_node();
    let sink = SmtpSink::start(&node.dir.path().join("mail"), SmtpOptions::default());
    node.write_node_yml(&format!(
        "supervisor:\n  backend: kiln\nnotify:\n  smtp:\n    host: 127.0.0.1\n    port: {}\n    from: kiln@node.example\n  backoff: 1s\n  alerts: {{check_every: 1s, check_failures: 2}}\n  on: [failure, alert]\n",
        sink.port
    ));
    let project = node.init("shop", "cooking");
    project.add_setting("notify: [ops@example.com]");
    fs::write(project.data().join("slow-start"), "").unwrap();
    let app = node.app("shop");
    app.write("app.py", CHECKED_APP)
        .write("Procfile", "web: python3 app.py\n");
    app.commit("v1");
    deployed(&app, &project);
    // A deploy and a restart of an app that answers 500 for its first seconds: each waits
    // until it answers, and the check waits for them.
    app.write("README", "v2\n");
    app.commit("v2");
    deployed(&app, &project);
    let restarted = node.kiln(&["restart", "shop"]);
    assert_success(&restarted, "kiln restart");
    let checks = || -> serde_json::Value {
        fs::read(node.root.join(".kiln/supervisor/checks/shop.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    };
    let counted = checks()["checks"].as_u64().unwrap_or(0);
    wait_for(Duration::from_secs(30), || {
        (checks()["checks"].as_u64().unwrap_or(0) >= counted + 3).then_some(())
    })
    .expect("the web check runs every second");
    let daemon_log = || fs::read_to_string(node.root.join(".kiln/supervisor/daemon.log")).unwrap();
    assert!(
        !daemon_log().contains("the web check failed"),
        "kiln's own restarts were checked:\n{}",
        daemon_log()
    );
    let status = node.ok(&["status", "shop"]);
    assert!(status.contains("web check:   passing ("), "{status}");
    let subjects =
        |sink: &SmtpSink| -> Vec<String> { sink.mails().into_iter().map(|m| m.subject).collect() };
    assert!(subjects(&sink).is_empty(), "{:?}", subjects(&sink));

    fs::write(project.data().join("broken"), "").unwrap();
    let alert = wait_for(Duration::from_secs(30), || {
        let said = subjects(&sink);
        (!said.is_empty()).then_some(said)
    })
    .expect("an alert mail");
    assert_eq!(
        alert,
        ["[kiln] shop (staging): ALERT: the `web` check is failing"]
    );
    let port = web_port(&project);
    let body = &sink.mails()[0].body;
    assert!(
        body.contains(&format!(
            "GET http://127.0.0.1:{port}/ of web.1 answered 500 (2 checks in a row, 1s apart)"
        )),
        "{body}"
    );
    assert!(
        body.contains("answered 500"),
        "the app's last lines: {body}"
    );
    let status = node.ok(&["status", "shop"]);
    assert!(status.contains("web check:   FAILING ("), "{status}");
    assert!(status.contains(", alert sent,"), "{status}");
    // Still failing: no second alert.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(subjects(&sink).len(), 1, "{:?}", subjects(&sink));

    fs::remove_file(project.data().join("broken")).unwrap();
    let both = wait_for(Duration::from_secs(30), || {
        let said = subjects(&sink);
        (said.len() >= 2).then_some(said)
    })
    .expect("a recovered mail");
    assert_eq!(
        both[1],
        "[kiln] shop (staging): recovered: the `web` check passes again"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        subjects(&sink).len(),
        2,
        "one alert, one recovered, nothing more"
    );
}

/// Regression: the release phase (the Procfile's `release:`) wrote its `command` event but
/// never its `command_end`, so every later event of the deploy named the release command.
#[test]
fn regression_the_release_phase_ends_its_command_event() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    app.write("Procfile", "release: echo migrated\n");
    app.commit("release phase only");
    let output = app.deploy(&project);
    assert!(output.contains("migrated"), "{output}");
    let events = project.events(&project.current().unwrap());
    let end = events
        .iter()
        .position(|e| e["event"] == "command_end" && e["command"] == "echo migrated")
        .unwrap_or_else(|| panic!("no command_end of the release phase: {events:#?}"));
    assert_eq!(events[end]["outcome"], "ok");
    assert_eq!(events[end]["exit_code"], 0);
    let after = &events[end + 1..];
    assert!(after.iter().any(|e| e["event"] == "deploy_end"));
    for event in after {
        assert!(event["command"].is_null(), "{event}");
    }
}

/// The pid of each instance `kiln ps --json` lists, by name.
fn pids(project: &Project) -> std::collections::BTreeMap<String, i64> {
    ps(project)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["pid"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

/// `kiln restart <name> TYPE` restarts the instances of that type only: the others keep their
/// pids; an unknown type is refused (exit 2) and restarts nothing; without a type, all restart.
#[test]
fn kiln_restart_with_a_type_restarts_only_that_type() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(
        &node,
        "web: python3 app.py\nworker: exec sleep 1000\nclock: exec sleep 1000\n",
        "restart me\n",
    );
    app.write("kiln.yml", "processes:\n  web: 2\n");
    app.commit("two webs");
    deployed(&app, &project);
    let before = pids(&project);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["clock.1", "web.1", "web.2", "worker.1"]
    );

    let out = node.ok(&["restart", "shop", "web"]);
    assert!(
        out.contains("restarted the `web` processes of `shop`"),
        "{out}"
    );
    let after = pids(&project);
    for name in ["web.1", "web.2"] {
        assert_ne!(after[name], before[name], "{name} restarted");
        assert_eq!(apps(&node.root, name).len(), 1, "one {name}");
    }
    for name in ["worker.1", "clock.1"] {
        assert_eq!(after[name], before[name], "{name} untouched");
    }
    assert_eq!(answer(&project).as_deref(), Some("restart me"));

    let out = node.kiln(&["restart", "shop", "wrok"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("`wrok`"), "{}", text(&out));
    assert_eq!(pids(&project), after, "nothing restarted");

    node.ok(&["restart", "shop"]);
    let all = pids(&project);
    for (name, pid) in &after {
        assert_ne!(all[name], *pid, "{name} restarted with the rest");
    }
}

/// `kiln logs <name> --app -f` as a child whose lines arrive on a channel; killed when
/// dropped, also when the test panics.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(node: &Node, args: &[&str]) -> Follower {
        let mut child = node
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// The first line from now on that contains `needle`, within `timeout`.
    fn line_with(&self, needle: &str, timeout: Duration) -> Option<String> {
        let until = std::time::Instant::now() + timeout;
        loop {
            let left = until.checked_duration_since(std::time::Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kiln logs --app -f` follows: it prints the tail, then each line an app prints after the
/// command started, also from an instance that a scale up starts meanwhile; it runs until it is
/// stopped.
#[test]
fn kiln_logs_app_follow_prints_lines_written_after_it_started() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(&node, WEB, "followed\n");
    deployed(&app, &project);
    let port = web_port(&project);
    let follower = Follower::start(&node, &["logs", "shop", "--app", "-f", "-n", "50"]);
    follower
        .line_with(
            &format!("app[web.1]: listening on {port}"),
            Duration::from_secs(15),
        )
        .expect("the tail first");

    http_get(port, "/asked-after-follow-started").unwrap();
    let line = follower
        .line_with("/asked-after-follow-started", Duration::from_secs(15))
        .expect("a line printed after `-f` started");
    assert!(
        line.ends_with("app[web.1]: served /asked-after-follow-started"),
        "{line}"
    );

    node.ok(&["ps", "scale", "shop", "web=2"]);
    let port2 = instance(&project, "web.2")["port"].as_u64().unwrap();
    follower
        .line_with(
            &format!("app[web.2]: listening on {port2}"),
            Duration::from_secs(15),
        )
        .expect("a new instance's lines are followed too");

    let mut follower = follower;
    assert!(
        follower.child.try_wait().unwrap().is_none(),
        "it keeps following"
    );
    follower.child.kill().unwrap();
    let status = follower.child.wait().unwrap();
    assert!(!status.success(), "stopped by the test: {status:?}");
}

/// node.yml `supervisor.app_log_size` bounds each app log file: a chatty process's log is
/// rotated to `.1` and `.2` past it, the oldest lines are dropped, nothing is kept beyond
/// `.2`, and `kiln logs --app` still ends with the newest lines in order.
#[test]
fn app_logs_are_rotated_past_app_log_size_keeping_two_old_files() {
    let (node, _guard) = supervised_node();
    node.write_node_yml("supervisor:\n  backend: kiln\n  app_log_size: 4K\n");
    let (project, app) = web_app(
        &node,
        "web: python3 app.py\nchatty: python3 -c 'for i in range(3000): print(\"chatty line %04d\" % i, flush=True)'; exec sleep 1000\n",
        "quiet\n",
    );
    deployed(&app, &project);
    let dir = project.path("logs/app");
    let current = dir.join("chatty.1.log");
    wait_for(Duration::from_secs(30), || {
        fs::read_to_string(&current)
            .ok()?
            .contains("chatty line 2999")
            .then_some(())
    })
    .expect("the last line in the current file");

    let mut kept = Vec::new();
    for name in ["chatty.1.log.2", "chatty.1.log.1", "chatty.1.log"] {
        let text = fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            text.len() <= 4096,
            "{name} is {} bytes, above app_log_size",
            text.len()
        );
        kept.extend(
            text.lines()
                .filter_map(|l| l.split_once("app[chatty.1]: chatty line "))
                .map(|(_, n)| n.parse::<u32>().unwrap()),
        );
    }
    assert!(!dir.join("chatty.1.log.3").exists(), "two old files only");
    // The kept lines are the newest, in order, none missing between the oldest kept and the last.
    let first = kept[0];
    assert!(first > 0, "the oldest lines were dropped");
    assert_eq!(kept, (first..3000).collect::<Vec<u32>>());
    assert!(kept.len() > 100, "three files' worth: {} lines", kept.len());

    let out = node.ok(&["logs", "shop", "--app", "--type", "chatty", "-n", "3"]);
    let last: Vec<&str> = out
        .lines()
        .map(|l| l.split_once("]: ").unwrap().1)
        .collect();
    assert_eq!(
        last,
        ["chatty line 2997", "chatty line 2998", "chatty line 2999"]
    );
    // The web instance's log has its own size, far below the limit.
    assert!(!dir.join("web.1.log.1").exists());
}

/// kiln.yml `processes:` sets how many instances of each type a push runs; a type it does not
/// name runs once; `kiln ps scale` (node-side) wins over it for the types it set.
#[test]
fn kiln_yml_processes_sets_the_counts_a_push_runs() {
    let (node, _guard) = supervised_node();
    let (project, app) = web_app(
        &node,
        "web: python3 app.py\nworker: exec sleep 1000\nclock: exec sleep 1000\n",
        "counted\n",
    );
    app.write(
        "kiln.yml",
        "processes:\n  web: 2\n  worker: 1\n  clock: 0\n",
    );
    app.commit("counts");
    let output = deployed(&app, &project);
    assert!(
        output.contains("processes: clock=0 web=2 worker=1 (backend: kiln)"),
        "{output}"
    );
    assert_eq!(
        pids(&project).keys().collect::<Vec<_>>(),
        ["web.1", "web.2", "worker.1"]
    );
    let port = |name: &str| instance(&project, name)["port"].as_u64().unwrap() as u16;
    assert_ne!(port("web.1"), port("web.2"));
    for name in ["web.1", "web.2"] {
        assert_eq!(
            http_get(port(name), "/").map(|(_, body)| body),
            Some("counted\n".to_string()),
            "{name} answers"
        );
    }
    assert_eq!(apps(&node.root, "web.2").len(), 1);
    assert_eq!(apps(&node.root, "worker.1").len(), 1);
    assert!(apps(&node.root, "clock.1").is_empty());

    // `kiln ps scale` wins for what it sets; kiln.yml still decides the rest.
    node.ok(&["ps", "scale", "shop", "worker=2"]);
    app.write("kiln.yml", "processes:\n  web: 1\n  worker: 1\n");
    app.commit("fewer");
    deployed(&app, &project);
    assert_eq!(
        pids(&project).keys().collect::<Vec<_>>(),
        ["clock.1", "web.1", "worker.1", "worker.2"]
    );
    assert!(apps(&node.root, "web.2").is_empty(), "web.2 stopped");
    assert_eq!(apps(&node.root, "worker.2").len(), 1);
}
