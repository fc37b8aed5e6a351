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
    assert!(text.contains("remote: -----> deployed"), "{text}");
    assert!(
        text.contains("remote: -----> deploy FAILED at deploy (echo \"migration failed\" >&2; exit 3: exit 3); rolled back to"),
        "{text}"
    );
    assert!(text.contains("==> demo done"), "{text}");
    // The app served before and after the failed push, and `kiln ps` showed it.
    let served: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("<h1>shop "))
        .collect();
    assert_eq!(
        served.len(),
        3,
        "curl, curl after the failure, run/'s file: {text}"
    );
    assert!(served.iter().all(|l| !l.contains("v2")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("web.1 ")
            && l.contains(" up ")
            && l.contains("python3 -m http.server")),
        "{text}"
    );
    assert!(text.contains("app[web.1]: "), "{text}");
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
