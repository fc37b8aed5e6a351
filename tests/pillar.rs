//! End to end: the pillar repo. Validated at push, merged into the settings, redeployed on
//! change, restored by a rollback, and never shown: secrets are redacted everywhere.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

const SECRET: &str = "hunter2-very-secret";

fn push_pillar(app: &App, project: &Project) -> (bool, String) {
    let out = app.git(&[
        "push",
        "-f",
        project.path("git/pillar.git").to_str().unwrap(),
        "HEAD:master",
    ]);
    (out.status.success(), text(&out))
}

fn pillar_tip(project: &Project) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(project.path("git/pillar.git"))
        .args(["rev-parse", "--verify", "-q", "refs/heads/master"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// An app whose configure step renders the settings into the release, and whose build counts
/// its runs in a file outside the project.
fn setup(node: &Node) -> (Project, App, App) {
    node.write_node_yml("environment: staging\n");
    let project = node.init("shop", "cooking");
    let app = node.app("shop");
    let builds = node.dir.path().join("builds.log");
    app.write(
        "kiln.yml",
        &format!(
            "defaults:\n  env:\n    GREETING: default\n    LEVEL: default\nstages:\n  configure:\n    - echo \"$GREETING $LEVEL\" > greeting.txt\n  build:\n    - echo build >> {}\n",
            builds.display()
        ),
    );
    app.commit("app");
    let pillar = node.app("pillar");
    (project, app, pillar)
}

fn builds(node: &Node) -> usize {
    fs::read_to_string(node.dir.path().join("builds.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn an_invalid_pillar_push_is_refused_with_line_and_column() {
    let node = Node::new();
    let (project, _, pillar) = setup(&node);
    pillar.write("pillar.yml", "env:\n  GREETING: hi\n");
    let good = pillar.commit("good");
    assert!(push_pillar(&pillar, &project).0);
    for (yaml, expected) in [
        (
            "env:\n  GREETING: [unclosed\n",
            "remote: error: pillar.yml:",
        ),
        ("- just\n- a list\n", "remote: error: pillar.yml:1:1:"),
    ] {
        pillar.write("pillar.yml", yaml);
        pillar.commit("bad");
        let (ok, output) = push_pillar(&pillar, &project);
        assert!(!ok, "{yaml:?}: {output}");
        assert!(output.contains(expected), "{yaml:?}: {output}");
        assert_eq!(pillar_tip(&project).as_deref(), Some(good.as_str()));
    }
}

#[test]
fn a_pillar_push_redeploys_with_the_new_settings_without_building() {
    let node = Node::new();
    let (project, app, pillar) = setup(&node);
    assert!(app.push(&project).0);
    let first = project.current().unwrap();
    assert_eq!(
        fs::read_to_string(project.run().join("greeting.txt")).unwrap(),
        "default default\n"
    );
    assert_eq!(builds(&node), 1);

    // Precedence: kiln.yml defaults < pillar.yml < pillar.yml environments.<env>.
    pillar.write(
        "pillar.yml",
        "env:\n  GREETING: from-pillar\n  LEVEL: pillar\nenvironments:\n  staging:\n    env:\n      LEVEL: staging\n  prod:\n    env:\n      LEVEL: prod\n",
    );
    let rev = pillar.commit("settings");
    let (ok, output) = push_pillar(&pillar, &project);
    assert!(ok, "{output}");
    assert!(
        output.contains("deploying the live release again"),
        "{output}"
    );
    assert!(output.contains("-----> deployed"), "{output}");
    let second = project.current().unwrap();
    assert_ne!(first, second);
    assert_eq!(
        fs::read_to_string(project.run().join("greeting.txt")).unwrap(),
        "from-pillar staging\n"
    );
    assert_eq!(builds(&node), 1, "a pillar change does not rebuild");
    let log = project.release_log();
    assert_eq!(log["records"][1]["pillar_rev"], rev.as_str());
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(project.path(&format!("releases/{second}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["pillar_rev"], rev.as_str());
    let releases = text(&node.kiln(&["releases", "shop"]));
    assert!(releases.contains(&rev[..7]), "{releases}");
}

#[test]
fn a_pillar_that_breaks_the_deploy_is_rolled_back_to_the_previous_settings() {
    let node = Node::new();
    let (project, app, pillar) = setup(&node);
    app.write(
        "kiln.yml",
        "stages:\n  deploy:\n    - test \"$MODE\" != broken\n",
    );
    app.commit("checks its settings");
    pillar.write("pillar.yml", "env:\n  MODE: fine\n");
    let good = pillar.commit("fine");
    assert!(push_pillar(&pillar, &project).0);
    assert!(app.push(&project).0);
    let live = project.current().unwrap();

    pillar.write("pillar.yml", "env:\n  MODE: broken\n");
    pillar.commit("broken");
    let (_, output) = push_pillar(&pillar, &project);
    assert!(output.contains("deploy FAILED at deploy"), "{output}");
    assert!(
        output.contains(&format!("pillar/ is back at {}", &good[..7])),
        "{output}"
    );
    assert_eq!(project.current(), Some(live));
    let config = text(&node.kiln(&["config", "shop", "--json", "--reveal"]));
    assert!(config.contains("\"MODE\": \"fine\""), "{config}");
}

#[test]
fn secrets_never_appear_in_output_logs_or_events() {
    let node = Node::new();
    let (project, app, pillar) = setup(&node);
    pillar.write("pillar.yml", &format!("env:\n  DB_PASSWORD: {SECRET}\n"));
    pillar.commit("secret");
    assert!(push_pillar(&pillar, &project).0);
    // Printed whole, and split across two writes with a pause between them.
    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - echo \"whole $DB_PASSWORD end\"\n    - printf 'split %.9s' \"$DB_PASSWORD\"; sleep 0.3; printf '%s end\\n' \"${DB_PASSWORD#?????????}\"\n    - echo \"to stderr $DB_PASSWORD\" >&2\n",
    );
    app.commit("leaky");
    let (ok, output) = app.push(&project);
    assert!(ok, "{output}");
    assert!(output.contains("whole ******** end"), "{output}");
    assert!(output.contains("split ******** end"), "{output}");
    let release = project.current().unwrap();
    for (what, content) in [
        ("push output", output.clone()),
        (
            "log",
            fs::read_to_string(project.path(&format!("logs/{release}.log"))).unwrap(),
        ),
        (
            "events",
            fs::read_to_string(project.path(&format!("logs/{release}.jsonl"))).unwrap(),
        ),
    ] {
        assert!(
            !content.contains(SECRET),
            "{what} leaks the secret:\n{content}"
        );
        assert!(
            !content.contains("hunter2"),
            "{what} leaks part of the secret"
        );
    }
    let masked = text(&node.kiln(&["config", "shop", "--json"]));
    assert!(masked.contains("\"DB_PASSWORD\": \"********\""), "{masked}");
    assert!(!masked.contains(SECRET));
    let revealed = text(&node.kiln(&["config", "shop", "--json", "--reveal"]));
    assert!(revealed.contains(SECRET), "{revealed}");
}

#[test]
fn pillar_and_state_are_private() {
    let node = Node::new();
    let (project, _, pillar) = setup(&node);
    pillar
        .write("pillar.yml", "env:\n  KEY: value\n")
        .write("certs/tls.key", "key\n");
    pillar.commit("secrets");
    assert!(push_pillar(&pillar, &project).0);
    let mode = |rel: &str| {
        fs::metadata(project.path(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for dir in ["pillar", "pillar/certs", "git/pillar.git", "state"] {
        assert_eq!(mode(dir), 0o700, "{dir}");
    }
    for file in ["pillar/pillar.yml", "pillar/certs/tls.key"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    // git writes the pillar repo's own files for its owner only.
    let objects = walkdir::WalkDir::new(project.path("git/pillar.git/objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .collect::<Vec<_>>();
    assert!(!objects.is_empty());
    for object in objects {
        let m = object.metadata().unwrap().permissions().mode() & 0o077;
        assert_eq!(m, 0, "{} is readable by others", object.path().display());
    }
}

#[test]
fn a_rollback_restores_the_pillar_the_release_ran_with() {
    let node = Node::new();
    let (project, app, pillar) = setup(&node);
    pillar.write("pillar.yml", "env:\n  GREETING: first\n");
    let first_pillar = pillar.commit("first");
    assert!(push_pillar(&pillar, &project).0);
    assert!(app.push(&project).0);
    let first = project.current().unwrap();

    pillar.write("pillar.yml", "env:\n  GREETING: second\n");
    pillar.commit("second");
    assert!(push_pillar(&pillar, &project).0);
    assert_eq!(
        fs::read_to_string(project.run().join("greeting.txt")).unwrap(),
        "second default\n"
    );

    let out = node.kiln(&["rollback", "shop", &first]);
    assert_success(&out, "rollback");
    assert!(
        text(&out).contains(&format!("pillar/ back at {}", &first_pillar[..7])),
        "{}",
        text(&out)
    );
    assert_eq!(
        fs::read_to_string(project.run().join("greeting.txt")).unwrap(),
        "first default\n"
    );
    let config = text(&node.kiln(&["config", "shop", "--json", "--reveal"]));
    assert!(config.contains("\"GREETING\": \"first\""), "{config}");
}

#[test]
fn record_only_policy_keeps_the_pillar_for_the_next_deploy() {
    let node = Node::new();
    let (project, app, pillar) = setup(&node);
    node.write_node_yml("environment: staging\npillar_push: record\n");
    assert!(app.push(&project).0);
    let live = project.current().unwrap();
    pillar.write("pillar.yml", "env:\n  GREETING: later\n");
    pillar.commit("later");
    let (ok, output) = push_pillar(&pillar, &project);
    assert!(
        ok && output.contains("recorded; the next deploy uses it"),
        "{output}"
    );
    assert_eq!(project.current(), Some(live));
    let out = node.kiln(&["deploy", "shop"]);
    assert_success(&out, "deploy");
    assert_eq!(
        fs::read_to_string(project.run().join("greeting.txt")).unwrap(),
        "later default\n"
    );
}

/// Issue 9: a production node without `environment:` in node.yml ran its final-mode project
/// with the pillar's `staging` section. The environment follows the mode unless node.yml or
/// project.yml (which wins) names one.
#[test]
fn regression_the_environment_follows_the_mode_unless_node_or_project_yml_says() {
    let staging = Node::new();
    let production = staging.sibling("production");
    let dev = staging.sibling("dev");
    let pillar = staging.app("pillar");
    pillar.write(
        "pillar.yml",
        "env:\n  LEVEL: common\nenvironments:\n  dev:\n    env:\n      LEVEL: dev\n  staging:\n    env:\n      LEVEL: staging\n  prod:\n    env:\n      LEVEL: prod\n",
    );
    pillar.commit("per environment");
    let app = staging.app("shop");
    app.write(
        "kiln.yml",
        "stages:\n  deploy:\n    - echo \"$LEVEL\" > \"$KILN_DATA_DIR/level.txt\"; cp \"$KILN_COMMON\" \"$KILN_DATA_DIR/common.json\"\n",
    );
    app.commit("app");
    let seen = |project: &Project| {
        let level = fs::read_to_string(project.data().join("level.txt")).unwrap();
        let common: serde_json::Value =
            serde_json::from_slice(&fs::read(project.data().join("common.json")).unwrap()).unwrap();
        let environment = common["environment"].as_str().unwrap().to_owned();
        (level.trim().to_owned(), environment)
    };
    let pair = |level: &str| (level.to_owned(), level.to_owned());

    let cooking = staging.init("shop", "cooking");
    assert!(push_pillar(&pillar, &cooking).0);
    app.deploy(&cooking);
    assert_eq!(seen(&cooking), pair("staging"));

    let final_mode = production.init_with(
        "shop",
        &[
            "--mode",
            "final",
            "--source",
            cooking.base.to_str().unwrap(),
        ],
    );
    assert!(push_pillar(&pillar, &final_mode).0);
    app.deploy(&final_mode);
    assert_eq!(seen(&final_mode), pair("prod"));

    let editable = dev.init("shop", "editable");
    assert!(push_pillar(&pillar, &editable).0);
    app.deploy(&editable);
    assert_eq!(seen(&editable), pair("dev"));

    // node.yml names the environment of every project on the node...
    production.write_node_yml("environment: staging\n");
    assert_success(&production.kiln(&["deploy", "shop"]), "deploy");
    assert_eq!(seen(&final_mode), pair("staging"));
    // ...and project.yml that of its own project, over node.yml.
    final_mode.add_setting("environment: dev");
    assert_success(&production.kiln(&["deploy", "shop"]), "deploy");
    assert_eq!(seen(&final_mode), pair("dev"));
    let status = text(&production.kiln(&["status", "shop"]));
    assert!(status.contains("environment: dev"), "{status}");
}

/// Issue 9: every pillar value was masked, so a pillar `PORT: "18432"` turned curl's
/// `port 18432` into `port ********`. Only secrets are masked: a port is shown, a password
/// (by its name), a URL's password, a `secrets:` value and a `secret_keys` entry are not.
#[test]
fn regression_masking_hides_secrets_not_ports() {
    let node = Node::new();
    let (project, app, pillar) = setup(&node);
    pillar.write(
        "pillar.yml",
        "env:\n  PORT: \"18432\"\n  DATABASE_PASSWORD: pw-db-4711\n  DATABASE_URL: postgres://shop:pw-url-4712@127.0.0.1/shop\n  SENTRY_DSN: https://dsn-4713.example/1\nsecret_keys: [SENTRY_DSN]\nsecrets:\n  signing: pw-sign-4714\n",
    );
    pillar.commit("port and secrets");
    assert!(push_pillar(&pillar, &project).0);
    app.write(
        "kiln.yml",
        "stages:\n  build:\n    - 'echo \"curl: port $PORT password $DATABASE_PASSWORD\"'\n    - echo \"url $DATABASE_URL dsn $SENTRY_DSN\"\n    - echo \"signing $(grep -o \"pw-sign-[0-9]*\" \"$KILN_COMMON\")\"\n",
    );
    app.commit("echoes its settings");
    let (ok, output) = app.push(&project);
    assert!(ok, "{output}");
    let release = project.current().unwrap();
    for (what, content) in [
        ("push output", output.clone()),
        (
            "log",
            fs::read_to_string(project.path(&format!("logs/{release}.log"))).unwrap(),
        ),
        (
            "events",
            fs::read_to_string(project.path(&format!("logs/{release}.jsonl"))).unwrap(),
        ),
    ] {
        assert!(
            content.contains("curl: port 18432 password ********"),
            "{what}:\n{content}"
        );
        assert!(
            content.contains("url postgres://shop:********@127.0.0.1/shop dsn ********"),
            "{what}:\n{content}"
        );
        assert!(content.contains("signing ********"), "{what}:\n{content}");
        for secret in ["pw-db-4711", "pw-url-4712", "dsn-4713", "pw-sign-4714"] {
            assert!(
                !content.contains(secret),
                "{what} shows {secret}:\n{content}"
            );
        }
    }
    let masked = text(&node.kiln(&["config", "shop"]));
    assert!(masked.contains("18432"), "{masked}");
    assert!(!masked.contains("pw-db-4711"), "{masked}");
}

/// Issue 9: `kiln config <name> --json` was refused (`status` and `releases` take `--json`).
/// It prints the merged settings as JSON, masked unless `--reveal`; without it, YAML.
#[test]
fn regression_kiln_config_prints_json_with_json() {
    let node = Node::new();
    let (project, app, pillar) = setup(&node);
    pillar.write(
        "pillar.yml",
        "env:\n  PORT: \"18432\"\n  DATABASE_PASSWORD: pw-db-4711\n",
    );
    pillar.commit("settings");
    assert!(push_pillar(&pillar, &project).0);
    app.deploy(&project);
    let json = |args: &[&str]| -> serde_json::Value {
        let out = node.kiln(args);
        assert_success(&out, "kiln config");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    };
    let masked = json(&["config", "shop", "--json"]);
    assert_eq!(masked["env"]["PORT"], "18432");
    assert_eq!(masked["env"]["DATABASE_PASSWORD"], "********");
    assert_eq!(masked["env"]["GREETING"], "default");
    assert_eq!(masked["environment"], "staging");
    assert_eq!(masked["release"], project.current().unwrap().as_str());
    let revealed = json(&["config", "shop", "--json", "--reveal"]);
    assert_eq!(revealed["env"]["DATABASE_PASSWORD"], "pw-db-4711");
    let yaml = text(&node.kiln(&["config", "shop"]));
    assert!(
        yaml.contains("  DATABASE_PASSWORD: \"********\"\n"),
        "{yaml}"
    );
    assert!(yaml.contains("  PORT: \"18432\"\n"), "{yaml}");
}
