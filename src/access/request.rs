//! What an SSH client asked for (`SSH_ORIGINAL_COMMAND`), parsed here without a shell: the
//! words of a small grammar (plain or single-quoted, from a narrow alphabet), then one of
//! `git-receive-pack '<repo>'`, `git-upload-pack '<repo>'` or `kiln <command> <project> ...`
//! from an allow-list. Anything else is refused before anything runs.

use std::path::{Component, Path};

use crate::access::{AccessError, refused};
use crate::config::node_config::Right;
use crate::config::project::Node;
use crate::push::hook::Repo;

/// Characters allowed in a word besides ASCII letters and digits. Nothing here means anything
/// to a shell, and kiln never hands the words to one anyway: this keeps what reaches git and
/// kiln's own argument parser boring.
const WORD_CHARS: &str = "._-/:=@+,%";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// No command: an interactive session.
    Shell,
    Git {
        service: GitService,
        path: String,
    },
    /// `kiln` and its arguments, without the `kiln`.
    Kiln {
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitService {
    ReceivePack,
    UploadPack,
}

impl GitService {
    /// The git subcommand (`git receive-pack <repo>`).
    pub fn subcommand(self) -> &'static str {
        match self {
            GitService::ReceivePack => "receive-pack",
            GitService::UploadPack => "upload-pack",
        }
    }
}

/// What a kiln command over SSH needs on its project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Some right on the project: status, releases, logs, ps, release list/export.
    Read,
    Right(Right),
    /// Node-wide commands.
    Admin,
    /// Nothing: `kiln --version`.
    Nothing,
}

/// The kiln commands allowed over SSH, with what they need. Commands that name a project take
/// it as the first argument after the command words (`kiln logs shop --app web`). Names of
/// commands this kiln does not have yet are listed too, so they work once they exist.
pub const COMMANDS: &[(&str, Need)] = &[
    ("status", Need::Read),
    ("releases", Need::Read),
    ("logs", Need::Read),
    // Before `ps`: the first match wins, and the project comes after the command words.
    ("ps scale", Need::Right(Right::Operate)),
    ("ps", Need::Read),
    ("release list", Need::Read),
    ("release export", Need::Read),
    ("domains list", Need::Read),
    ("config", Need::Right(Right::Config)),
    ("deploy", Need::Right(Right::Operate)),
    ("rollback", Need::Right(Right::Operate)),
    ("recover", Need::Right(Right::Operate)),
    ("restart", Need::Right(Right::Operate)),
    ("stop", Need::Right(Right::Operate)),
    ("start", Need::Right(Right::Operate)),
    ("scale", Need::Right(Right::Operate)),
    ("run", Need::Right(Right::Operate)),
    ("release import", Need::Right(Right::Operate)),
    ("notify retry", Need::Right(Right::Operate)),
    ("init", Need::Admin),
    ("mode", Need::Admin),
    ("key", Need::Admin),
    ("access", Need::Admin),
    // project.yml and the node's front door are the operators' side.
    ("domains add", Need::Admin),
    ("domains remove", Need::Admin),
    ("proxy", Need::Admin),
    // Machine maintenance: stop every app and the supervisor, then bring them back. The
    // daemon itself (`kiln supervise`) is started by kiln, never over SSH.
    ("supervise --stop", Need::Admin),
    ("boot", Need::Admin),
];

/// An allowed kiln command: the arguments to run kiln with (`--root` not included) and the
/// project it acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilnCommand {
    pub args: Vec<String>,
    pub project: Option<String>,
    pub need: Need,
}

/// Splits `command` into words: runs of allowed characters, and single-quoted parts, which
/// may also hold spaces and `*` (git quotes the repository path this way). A word is never
/// expanded, globbed or split further.
pub fn words(command: &str) -> Result<Vec<String>, AccessError> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in command.chars() {
        let plain = c.is_ascii_alphanumeric() || WORD_CHARS.contains(c);
        if c == '\'' {
            quoted = !quoted;
            word.get_or_insert_with(String::new);
        } else if plain || (quoted && (c == ' ' || c == '*')) {
            word.get_or_insert_with(String::new).push(c);
        } else if c == ' ' {
            words.extend(word.take());
        } else {
            let shown = if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            };
            return Err(refused(format!(
                "`{shown}` is not allowed in a command over ssh: kiln runs it without a shell, and words may only hold letters, digits and `{WORD_CHARS}`"
            )));
        }
    }
    if quoted {
        return Err(refused("a quote is not closed in the command"));
    }
    words.extend(word);
    Ok(words)
}

/// Parses `SSH_ORIGINAL_COMMAND` (None: the client asked for no command).
pub fn parse(command: Option<&str>) -> Result<Request, AccessError> {
    let words = words(command.unwrap_or(""))?;
    let Some(first) = words.first() else {
        return Ok(Request::Shell);
    };
    let service = match first.as_str() {
        "git-receive-pack" => Some(GitService::ReceivePack),
        "git-upload-pack" => Some(GitService::UploadPack),
        _ => None,
    };
    if let Some(service) = service {
        return match &words[1..] {
            [path] => Ok(Request::Git {
                service,
                path: path.clone(),
            }),
            _ => Err(refused(format!("`{first}` takes exactly one repository"))),
        };
    }
    if first == "kiln" {
        return Ok(Request::Kiln {
            args: words[1..].to_vec(),
        });
    }
    Err(refused(format!(
        "`{first}` is not run over ssh: push and fetch with git, or run `kiln <command> <project>` ({})",
        COMMANDS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Checks a kiln command against the allow-list. A leading `--root` must name this node's
/// root (release sources pass it); `--root` anywhere else is refused, since it would point
/// kiln at another node.
pub fn kiln_command(args: &[String], root: &Path) -> Result<KilnCommand, AccessError> {
    let mut args = args;
    if args.first().map(String::as_str) == Some("--root") {
        let given = args.get(1).map(String::as_str).unwrap_or("");
        if Path::new(given.trim_end_matches('/')) != root {
            return Err(refused(format!(
                "`--root {given}` is not this node's root (`{}`)",
                root.display()
            )));
        }
        args = &args[2..];
    }
    if let Some(flag) = args.iter().find(|arg| arg.starts_with("--root")) {
        return Err(refused(format!("`{flag}` is only allowed first")));
    }
    if matches!(args, [flag] if flag == "--version" || flag == "-V") {
        return Ok(KilnCommand {
            args: args.to_vec(),
            project: None,
            need: Need::Nothing,
        });
    }
    let allowed = || {
        COMMANDS
            .iter()
            .map(|(name, _)| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = COMMANDS.iter().find(|(name, _)| {
        let parts: Vec<&str> = name.split(' ').collect();
        args.len() >= parts.len() && args.iter().zip(&parts).all(|(a, p)| a == p)
    });
    let Some((name, need)) = found else {
        let asked = args.first().map(String::as_str).unwrap_or("");
        return Err(refused(format!(
            "`kiln {asked}` is not allowed over ssh; allowed: {}",
            allowed()
        )));
    };
    let project = if *need == Need::Admin {
        None
    } else {
        let at = name.split(' ').count();
        match args.get(at) {
            Some(project) if crate::config::layout::valid_name(project) => Some(project.clone()),
            _ => {
                return Err(refused(format!(
                    "`kiln {name}` over ssh needs the project right after the command: `kiln {name} <project> ...`"
                )));
            }
        }
    };
    Ok(KilnCommand {
        args: args.to_vec(),
        project,
        need: *need,
    })
}

/// The project and repository a git path names: the short forms `shop`, `shop.git`,
/// `shop/pillar`, `shop/pillar.git` (with or without a leading `/`), or the full path of a
/// project's git/project.git or git/pillar.git under the node's root. Nothing else: no `..`,
/// no other directory.
pub fn resolve_repo(node: &Node, path: &str) -> Result<(String, Repo), AccessError> {
    let not_a_repo = || {
        refused(format!(
            "`{path}` is not a project repository: use `<project>` for the app and `<project>/pillar` for its pillar"
        ))
    };
    let trimmed = path.trim_end_matches('/');
    let components: Vec<Component> = Path::new(trimmed).components().collect();
    if trimmed.is_empty()
        || trimmed.contains("//")
        || components
            .iter()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(not_a_repo());
    }
    let root = node.root.to_string_lossy();
    if let Some(rest) = trimmed
        .strip_prefix(root.as_ref())
        .and_then(|rest| rest.strip_prefix('/'))
    {
        let name = rest.split('/').next().unwrap_or("");
        let paths = node.paths(name).map_err(|_| not_a_repo())?;
        let full = Path::new(trimmed);
        return if full == paths.project_repo {
            Ok((name.to_string(), Repo::Project))
        } else if full == paths.pillar_repo {
            Ok((name.to_string(), Repo::Pillar))
        } else {
            Err(not_a_repo())
        };
    }
    let short = trimmed.strip_prefix('/').unwrap_or(trimmed);
    let (name, repo) = match short.split_once('/') {
        None => (short.strip_suffix(".git").unwrap_or(short), Repo::Project),
        Some((name, "pillar" | "pillar.git")) => (name, Repo::Pillar),
        Some(_) => return Err(not_a_repo()),
    };
    if !crate::config::layout::valid_name(name) {
        return Err(not_a_repo());
    }
    Ok((name.to_string(), repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn words_and_refusals() {
        let ok = [
            ("", vec![]),
            ("kiln status shop", vec!["kiln", "status", "shop"]),
            (
                "git-receive-pack '/shop'",
                vec!["git-receive-pack", "/shop"],
            ),
            (
                "kiln  run shop -- 'a b'",
                vec!["kiln", "run", "shop", "--", "a b"],
            ),
            (
                "kiln access grant ann '*' admin",
                vec!["kiln", "access", "grant", "ann", "*", "admin"],
            ),
        ];
        for (command, expected) in ok {
            assert_eq!(
                words(command).expect(command),
                strings(&expected),
                "{command:?}"
            );
        }
        let bad = [
            ("kiln status shop; touch x", ";"),
            ("kiln status shop && touch x", "&"),
            ("kiln status $(touch x)", "$"),
            ("kiln status `touch x`", "`"),
            ("kiln status shop\ntouch x", "\\n"),
            ("kiln status shop | sh", "|"),
            ("kiln status 'shop;x'", ";"),
            ("kiln status \"shop\"", "\""),
            ("kiln status ~root", "~"),
            ("kiln status *", "*"),
            ("kiln status 'shop", "not closed"),
        ];
        for (command, named) in bad {
            let error = words(command).expect_err(command).to_string();
            assert!(error.starts_with("refused: "), "{error}");
            assert!(error.contains(named), "{command:?}: {error}");
        }
    }

    #[test]
    fn requests() {
        assert_eq!(parse(None).unwrap(), Request::Shell);
        assert_eq!(parse(Some("  ")).unwrap(), Request::Shell);
        assert_eq!(
            parse(Some("git-upload-pack 'shop.git'")).unwrap(),
            Request::Git {
                service: GitService::UploadPack,
                path: "shop.git".into()
            }
        );
        for command in [
            "git-receive-pack",
            "git-receive-pack a b",
            "sh -c id",
            "scp -t /tmp",
            "git-upload-archive 'shop'",
            "rsync --server . /",
        ] {
            let error = parse(Some(command)).expect_err(command).to_string();
            assert!(error.starts_with("refused: "), "{error}");
        }
    }

    #[test]
    fn kiln_commands_need_their_rights() {
        let root = Path::new("/srv/projects");
        let cases = [
            ("status shop", Some("shop"), Need::Read),
            ("status shop --json", Some("shop"), Need::Read),
            ("logs shop --app web", Some("shop"), Need::Read),
            ("release list shop --json", Some("shop"), Need::Read),
            (
                "--root /srv/projects release export shop 20260101T000000Z-0123abcd",
                Some("shop"),
                Need::Read,
            ),
            (
                "--root /srv/projects/ status shop",
                Some("shop"),
                Need::Read,
            ),
            (
                "config shop --reveal",
                Some("shop"),
                Need::Right(Right::Config),
            ),
            ("rollback shop", Some("shop"), Need::Right(Right::Operate)),
            ("run shop -- ls", Some("shop"), Need::Right(Right::Operate)),
            ("ps shop --json", Some("shop"), Need::Read),
            ("logs shop --app --type web -n 5", Some("shop"), Need::Read),
            (
                "ps scale shop web=2",
                Some("shop"),
                Need::Right(Right::Operate),
            ),
            (
                "restart shop web",
                Some("shop"),
                Need::Right(Right::Operate),
            ),
            (
                "release import shop /tmp/x.tar.zst",
                Some("shop"),
                Need::Right(Right::Operate),
            ),
            ("init blog", None, Need::Admin),
            ("access list", None, Need::Admin),
            ("domains list shop", Some("shop"), Need::Read),
            ("domains add shop shop.example.com", None, Need::Admin),
            ("proxy reload", None, Need::Admin),
            ("stop shop", Some("shop"), Need::Right(Right::Operate)),
            ("start shop", Some("shop"), Need::Right(Right::Operate)),
            ("supervise --stop", None, Need::Admin),
            ("boot", None, Need::Admin),
            ("--version", None, Need::Nothing),
        ];
        for (command, project, need) in cases {
            let args = words(command).unwrap();
            let parsed = kiln_command(&args, root).expect(command);
            assert_eq!(parsed.project.as_deref(), project, "{command}");
            assert_eq!(parsed.need, need, "{command}");
            assert!(!parsed.args.contains(&"--root".to_string()), "{command}");
        }
        for command in [
            "hook pre-receive shop project",
            "ssh ann",
            "status",
            "status --json shop",
            "status ../x",
            "status shop --root /tmp/other",
            "--root /tmp/other status shop",
            "--root=/srv/projects status shop",
            "release",
            "release delete shop",
            "--help",
            // The supervisor is the node's, started by kiln itself, not over SSH.
            "supervise",
            "supervise --detach",
            "supervise-instance shop web.1 x",
        ] {
            let args = words(command).unwrap();
            let error = kiln_command(&args, root).expect_err(command).to_string();
            assert!(error.starts_with("refused: "), "{command}: {error}");
        }
    }

    #[test]
    fn repository_paths() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(Some(dir.path().join("node"))).unwrap();
        let root = node.root.display().to_string();
        let ok = [
            ("shop", Repo::Project),
            ("/shop", Repo::Project),
            ("shop.git", Repo::Project),
            ("/shop.git/", Repo::Project),
            ("shop/pillar", Repo::Pillar),
            ("/shop/pillar.git", Repo::Pillar),
            (&*format!("{root}/shop/git/project.git"), Repo::Project),
            (&*format!("{root}/shop/git/pillar.git/"), Repo::Pillar),
        ];
        for (path, repo) in ok {
            assert_eq!(
                resolve_repo(&node, path).expect(path),
                ("shop".to_string(), repo),
                "{path}"
            );
        }
        for path in [
            "",
            "/",
            "../shop",
            "shop/../blog",
            "/etc/passwd",
            "shop/data",
            "shop/git/project.git",
            "Shop",
            "./shop",
            "shop//pillar",
            &*format!("{root}/shop"),
            &*format!("{root}/shop/git/../git/project.git"),
            &*format!("{root}/shop/data"),
            &*format!("{root}/../x/git/project.git"),
        ] {
            let error = resolve_repo(&node, path).expect_err(path).to_string();
            assert!(error.starts_with("refused: "), "{path}: {error}");
        }
    }
}
