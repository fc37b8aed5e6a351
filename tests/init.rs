//! End to end: `kiln init` creates the layout from layouts/default.yml, installs the hooks,
//! repairs a damaged project without touching data, and refuses bad input with exit 2.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn init_creates_the_whole_layout_with_hooks() {
    let node = Node::new();
    let out = node.kiln(&["init", "shop", "--mode", "cooking"]);
    assert_success(&out, "init");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let project = node.project("shop");
    assert!(
        stdout.contains(&format!("git remote add kiln {}", project.repo().display())),
        "{stdout}"
    );
    // No one may come in over SSH yet: no SSH remote to suggest.
    assert!(!stdout.contains("ssh://"), "{stdout}");
    for dir in [
        "git/project.git",
        "git/pillar.git",
        "project",
        "pillar",
        "build",
        "deploy",
        "run",
        "data",
        "archives",
        "releases",
        "logs",
        "state",
    ] {
        assert!(project.path(dir).is_dir(), "{dir} missing");
    }
    for private in ["git/pillar.git", "pillar", "state"] {
        let mode = fs::metadata(project.path(private))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{private}");
    }
    for hook in ["pre-receive", "post-receive"] {
        let path = project.path(&format!("git/project.git/hooks/{hook}"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(KILN),
            "hook must call kiln by absolute path:\n{text}"
        );
        assert!(
            text.contains(&format!("hook {hook} shop project")),
            "{text}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o111,
            0o111
        );
        let pillar_hook = project.path(&format!("git/pillar.git/hooks/{hook}"));
        assert!(
            fs::read_to_string(pillar_hook)
                .unwrap()
                .contains("shop pillar")
        );
    }
    let yml = fs::read_to_string(project.path("project.yml")).unwrap();
    assert!(yml.contains("mode: cooking"), "{yml}");
    assert!(yml.contains("branch: master"), "{yml}");
}

#[test]
fn init_again_repairs_and_never_touches_data_run_or_releases() {
    let node = Node::new();
    let project = node.init("shop", "cooking");
    fs::write(project.data().join("db.sqlite"), "precious").unwrap();
    fs::write(project.run().join("live.txt"), "live").unwrap();
    fs::write(project.path("releases/x.json"), "{}").unwrap();
    fs::remove_dir_all(project.path("logs")).unwrap();
    fs::remove_file(project.path("git/project.git/hooks/post-receive")).unwrap();

    let out = node.kiln(&["init", "shop"]);
    assert_success(&out, "init again");
    assert!(String::from_utf8_lossy(&out.stdout).contains("repaired project `shop`"));
    assert!(project.path("logs").is_dir());
    assert!(project.path("git/project.git/hooks/post-receive").exists());
    assert_eq!(
        fs::read_to_string(project.data().join("db.sqlite")).unwrap(),
        "precious"
    );
    assert_eq!(
        fs::read_to_string(project.run().join("live.txt")).unwrap(),
        "live"
    );
    assert!(project.path("releases/x.json").exists());
    // The mode chosen at the first init is kept when none is given.
    let yml = fs::read_to_string(project.path("project.yml")).unwrap();
    assert!(yml.contains("mode: cooking"), "{yml}");
}

#[test]
fn bad_input_is_one_error_line_and_exit_2() {
    let node = Node::new();
    let unwritable = node.dir.path().join("file-not-dir");
    fs::write(&unwritable, "").unwrap();
    for (args, root, expected) in [
        (
            vec!["init", "Shop"],
            None,
            "error: `Shop` is not a valid project name",
        ),
        (
            vec!["init", "../x"],
            None,
            "error: `../x` is not a valid project name",
        ),
        (
            vec!["init", "shop", "--mode", "prod"],
            None,
            "error: `prod` is not a mode: use `editable`, `cooking` or `final`",
        ),
        (
            vec!["init", "shop", "--mode", "final"],
            None,
            "error: final mode needs a release source",
        ),
        (
            vec!["init", "shop"],
            Some(unwritable.join("root")),
            "error: ",
        ),
        (
            vec!["status", "nope"],
            None,
            "error: project `nope` does not exist under",
        ),
    ] {
        let mut cmd = std::process::Command::new(KILN);
        cmd.arg("--root")
            .arg(root.as_ref().unwrap_or(&node.root))
            .args(&args);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    }
    assert!(
        !node.root.join("shop").exists(),
        "a refused init created something"
    );
}

/// Regression: with SSH users in node.yml, `kiln init` still only printed the local path as
/// the remote, which nobody on another machine can push to.
#[test]
fn regression_init_on_a_node_with_ssh_users_also_prints_the_ssh_remote() {
    let node = Node::new();
    node.write_node_yml("users:\n  ann:\n    admin: true\n");
    let stdout = node.ok(&["init", "shop", "--mode", "cooking"]);
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert!(
        stdout.contains(&format!(
            "(from another machine, over SSH: git remote add kiln ssh://{user}@{host}/shop)"
        )),
        "{stdout}"
    );
}

/// Regression (the suite's helper, tests/common): two nodes alive at once whose roots hashed
/// to the same slot gave two apps the same web port; now each node holds its range.
#[test]
fn regression_nodes_alive_at_once_never_share_web_ports() {
    let nodes: Vec<Node> = (0..60)
        .flat_map(|_| {
            let node = Node::new();
            let sibling = node.sibling("production");
            [node, sibling]
        })
        .collect();
    let mut ranges: Vec<(u32, u32)> = nodes.iter().map(Node::port_range).collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "overlapping ranges: {pair:?}");
    }
    assert!(
        ranges
            .iter()
            .all(|(first, last)| *first >= 21_000 && *last <= 30_999)
    );
}
