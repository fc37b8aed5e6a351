//! The README's examples are real: the demo it starts with runs here, end to end.

mod common;

use std::process::Command;

#[test]
fn readme_demo_deploys_then_rolls_back_a_failing_push() {
    let dir = tempfile::tempdir().unwrap();
    let _guard = common::processes::ProcessGuard::for_root(&dir.path().join("demo/node"));
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .arg(dir.path().join("demo"))
        .env("KILN", common::KILN)
        .output()
        .unwrap();
    let text = common::text(&out);
    common::assert_success(&out, "scripts/demo.sh");
    // kiln's python buildpack built it and its supervisor runs gunicorn.
    assert!(
        text.contains("remote: -----> Python app detected"),
        "{text}"
    );
    assert!(text.contains("remote: -----> deployed"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("web.1 ")
            && l.contains(" up ")
            && l.contains("gunicorn app:app")),
        "{text}"
    );
    // The migration of the second push failed; kiln rolled back run/ and data/.
    assert!(
        text.contains(
            "remote: -----> deploy FAILED at deploy (python migrate.py: exit 3); rolled back to"
        ),
        "{text}"
    );
    assert!(
        text.contains("remote:        data/ restored from the snapshot"),
        "{text}"
    );
    // curl twice before, once after: always v1, and the counter kept in data/ goes on from
    // where it was (the failed migration dropped its table; the snapshot brought it back).
    let visits: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("shop v1: visit "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        visits.len(),
        3,
        "curl, curl, curl after the failure: {text}"
    );
    assert!(visits[0] < visits[1] && visits[1] < visits[2], "{text}");
    assert!(!text.contains("shop v2"), "{text}");
    // The load loop that ran during the failed push saw no failed request.
    let load = text
        .lines()
        .find_map(|l| l.strip_prefix("load loop during the push: "))
        .unwrap_or_else(|| panic!("no load loop line: {text}"));
    let (requests, failed) = load.split_once(" requests, ").unwrap();
    assert!(requests.parse::<u64>().unwrap() > 0, "{text}");
    assert_eq!(failed, "0 failed", "{text}");
    assert!(text.contains("app[web.1]: "), "{text}");
    assert!(text.contains("==> demo done"), "{text}");
}

#[test]
fn readme_test_command_is_what_ci_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    let command = "cargo test --features failpoints";
    assert!(readme.contains(&format!("{command}         # the whole test suite")));
    assert_eq!(ci.lines().last(), Some(command));
}

/// Issue 9: after a failed push, pushing the same commit again deploys nothing; the README must
/// say how to retry.
#[test]
fn readme_says_how_to_retry_a_failed_push() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for needed in [
        "`Everything up-to-date`",
        "`kiln deploy <name>`",
        "git commit --allow-empty",
    ] {
        assert!(
            readme.contains(needed),
            "README.md does not mention {needed}"
        );
    }
}
