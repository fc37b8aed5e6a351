//! `kiln access add-key|grant|revoke|list`: node.yml's `users:` edited by kiln. Only that
//! section is rewritten (in a fixed, readable shape); every other line of node.yml stays as
//! the operator wrote it. The result is parsed again before it replaces node.yml, under a
//! lock so that two edits do not lose one another.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::access::keys::fingerprint;
use crate::access::{AccessError, io};
use crate::config::node_config::{
    ALL_PROJECTS, NodeConfig, Right, User, check_key, check_project_key, check_user_name,
};

/// A right `kiln access grant|revoke` names: a project right, or node-wide `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Right(Right),
    Admin,
}

impl std::str::FromStr for Grant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "admin" => Ok(Grant::Admin),
            _ => text.parse().map(Grant::Right).map_err(|_| {
                format!(
                    "unknown right `{text}`, expected one of `deploy`, `config`, `operate`, `admin`"
                )
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Edit {
    AddKeys {
        user: String,
        keys: Vec<String>,
    },
    Grant {
        user: String,
        project: String,
        grant: Grant,
    },
    Revoke {
        user: String,
        project: String,
        grant: Grant,
    },
}

fn edit_error(reason: impl Into<String>) -> AccessError {
    AccessError::Edit {
        reason: reason.into(),
    }
}

/// The public keys in a `.pub` file (or stdin): its non-empty, non-comment lines.
pub fn read_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Applies `edit` to `users`; returns a line saying what changed.
pub fn apply(users: &mut BTreeMap<String, User>, edit: &Edit) -> Result<String, AccessError> {
    match edit {
        Edit::AddKeys { user, keys } => {
            check_user_name(user).map_err(edit_error)?;
            if keys.is_empty() {
                return Err(edit_error(
                    "no public key in the file: expected a line `ssh-ed25519 AAAA... me@laptop`",
                ));
            }
            for key in keys {
                check_key(key).map_err(edit_error)?;
                let blob = key.split_ascii_whitespace().nth(1);
                if let Some((owner, _)) = users.iter().find(|(_, u)| {
                    u.keys
                        .iter()
                        .any(|k| k.split_ascii_whitespace().nth(1) == blob)
                }) && owner != user
                {
                    return Err(edit_error(format!(
                        "the key {} is already `{owner}`'s: give each person their own key",
                        fingerprint(key)
                    )));
                }
            }
            let entry = users.entry(user.clone()).or_default();
            let mut added = Vec::new();
            for key in keys {
                let blob = key.split_ascii_whitespace().nth(1);
                if !entry
                    .keys
                    .iter()
                    .any(|k| k.split_ascii_whitespace().nth(1) == blob)
                {
                    entry.keys.push(key.clone());
                    added.push(fingerprint(key));
                }
            }
            Ok(if added.is_empty() {
                format!("`{user}` already has that key")
            } else {
                format!("added to `{user}`: {}", added.join(", "))
            })
        }
        Edit::Grant {
            user,
            project,
            grant,
        } => {
            check_user_name(user).map_err(edit_error)?;
            let entry = users.get_mut(user).ok_or_else(|| {
                edit_error(format!(
                    "no user `{user}` in node.yml: add a key first with `kiln access add-key {user} <file>`"
                ))
            })?;
            match grant {
                Grant::Admin => {
                    admin_project(project)?;
                    entry.admin = true;
                    Ok(format!("`{user}` is now an admin of this node"))
                }
                Grant::Right(right) => {
                    check_project_key(project).map_err(edit_error)?;
                    entry
                        .projects
                        .entry(project.clone())
                        .or_default()
                        .insert(*right);
                    Ok(format!("`{user}` has `{right}` on `{project}`"))
                }
            }
        }
        Edit::Revoke {
            user,
            project,
            grant,
        } => {
            let entry = users
                .get_mut(user)
                .ok_or_else(|| edit_error(format!("no user `{user}` in node.yml")))?;
            match grant {
                Grant::Admin => {
                    admin_project(project)?;
                    entry.admin = false;
                    Ok(format!("`{user}` is no longer an admin of this node"))
                }
                Grant::Right(right) => {
                    let removed = entry
                        .projects
                        .get_mut(project)
                        .is_some_and(|rights| rights.remove(right));
                    entry.projects.retain(|_, rights| !rights.is_empty());
                    let note = if entry.may(project, *right) {
                        " (still granted through `*` or admin)"
                    } else {
                        ""
                    };
                    Ok(if removed {
                        format!("`{user}` no longer has `{right}` on `{project}`{note}")
                    } else {
                        format!("`{user}` had no `{right}` on `{project}` to revoke{note}")
                    })
                }
            }
        }
    }
}

fn admin_project(project: &str) -> Result<(), AccessError> {
    if project == ALL_PROJECTS {
        Ok(())
    } else {
        Err(edit_error(format!(
            "`admin` is node-wide, not for `{project}`: use `*` as the project"
        )))
    }
}

/// A YAML scalar that reads back as `text`: plain when that is safe, else JSON-quoted (a JSON
/// string is a YAML string).
fn scalar(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !matches!(
            text,
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
        )
        && text.parse::<f64>().is_err();
    if plain {
        text.to_string()
    } else {
        serde_json::to_string(text).unwrap_or_default()
    }
}

/// The `users:` section, as kiln writes it.
pub fn render(users: &BTreeMap<String, User>) -> String {
    if users.is_empty() {
        return "users: {}\n".into();
    }
    let mut out = String::from("users:\n");
    for (name, user) in users {
        out.push_str(&format!("  {}:\n", scalar(name)));
        if user.keys.is_empty() && user.projects.is_empty() && !user.admin {
            out.push_str("    keys: []\n");
        }
        if !user.keys.is_empty() {
            out.push_str("    keys:\n");
            for key in &user.keys {
                out.push_str(&format!("      - {}\n", scalar(key)));
            }
        }
        if user.admin {
            out.push_str("    admin: true\n");
        }
        if !user.projects.is_empty() {
            out.push_str("    projects:\n");
            for (project, rights) in &user.projects {
                let rights: Vec<&str> = rights.iter().map(|r| r.as_str()).collect();
                out.push_str(&format!(
                    "      {}: [{}]\n",
                    scalar(project),
                    rights.join(", ")
                ));
            }
        }
    }
    out
}

/// `text` with its top-level `users:` block (the key's line and the indented, blank or
/// comment lines under it, up to the next top-level line) replaced by `section`; appended when
/// there is none.
pub fn replace_section(text: &str, section: &str) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let is_key = |line: &str| {
        line.strip_prefix("users")
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    let Some(start) = lines.iter().position(|line| is_key(line)) else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(section);
        return out;
    };
    let mut end = start + 1;
    while end < lines.len() {
        let line = lines[end];
        let inside = line.trim().is_empty() || line.starts_with(' ') || line.starts_with('\t');
        if !inside {
            break;
        }
        end += 1;
    }
    // Blank lines before the next key stay with it.
    while end > start + 1 && lines[end - 1].trim().is_empty() {
        end -= 1;
    }
    let mut out: String = lines[..start].concat();
    out.push_str(section);
    out.push_str(&lines[end..].concat());
    out
}

/// Edits node.yml at `path` under `<root>/.node.yml.lock`; returns the new config and what
/// changed.
pub fn edit_node_yml(
    path: &Path,
    edit: &Edit,
) -> Result<(NodeConfig, String), crate::error::Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let lock_path = dir.join(".node.yml.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io("read", path)(e).into()),
    };
    let mut config = NodeConfig::parse(&text, path)?;
    let said = apply(&mut config.users, edit)?;
    let new_text = replace_section(&text, &render(&config.users));
    let reread = NodeConfig::parse(&new_text, path)?;
    if reread != config {
        return Err(edit_error(format!(
            "kiln could not rewrite the `users:` section of `{}` safely (is it written in flow style?): edit it by hand, then run `kiln access sync`",
            path.display()
        ))
        .into());
    }
    let mode = std::fs::metadata(path).map_or(0o644, |m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
    });
    crate::fs::durable::write_atomic(path, new_text.as_bytes(), mode)?;
    Ok((reread, said))
}

/// `kiln access list`: users, key fingerprints and rights.
pub fn list(config: &NodeConfig, authorized_keys: &Path, as_json: bool) -> String {
    if as_json {
        let users: serde_json::Map<String, serde_json::Value> = config
            .users
            .iter()
            .map(|(name, user)| {
                let keys: Vec<serde_json::Value> = user
                    .keys
                    .iter()
                    .map(|key| {
                        let mut fields = key.split_ascii_whitespace();
                        let kind = fields.next();
                        let comment: Vec<&str> = fields.skip(1).collect();
                        json!({"fingerprint": fingerprint(key), "type": kind,
                               "comment": comment.join(" ")})
                    })
                    .collect();
                (
                    name.clone(),
                    json!({"keys": keys, "admin": user.admin, "projects": user.projects}),
                )
            })
            .collect();
        let value = json!({"authorized_keys": authorized_keys, "users": users});
        return serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
    }
    if config.users.is_empty() {
        return format!(
            "no users in node.yml (authorized_keys: {}); add one with `kiln access add-key <user> <file>`\n",
            authorized_keys.display()
        );
    }
    let mut out = format!("authorized_keys: {}\n", authorized_keys.display());
    for (name, user) in &config.users {
        out.push_str(&format!(
            "{name}{}\n",
            if user.admin { " (admin)" } else { "" }
        ));
        for key in &user.keys {
            let comment: Vec<&str> = key.split_ascii_whitespace().skip(2).collect();
            out.push_str(&format!(
                "  key  {} {}\n",
                fingerprint(key),
                comment.join(" ")
            ));
        }
        for (project, rights) in &user.projects {
            let rights: Vec<&str> = rights.iter().map(|r| r.as_str()).collect();
            out.push_str(&format!("  {project}: {}\n", rights.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFhXZNdm0lp5ZdajKvNhtOkOY2J/ngjFaC7H3MvXyrjg ann@laptop";
    const BOB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7s bob: work #2";

    #[test]
    fn edits_keep_the_rest_of_node_yml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yml");
        let before = "# the node\nenvironment: staging   # staging box\n\nusers:\n  # old comment\n  ann: {}\n\nlimits:\n  stage_timeout: 10m\n";
        std::fs::write(&path, before).unwrap();
        let edits = [
            Edit::AddKeys {
                user: "ann".into(),
                keys: vec![KEY.into()],
            },
            Edit::AddKeys {
                user: "bob".into(),
                keys: vec![BOB.into()],
            },
            Edit::Grant {
                user: "bob".into(),
                project: "shop".into(),
                grant: Grant::Right(Right::Deploy),
            },
            Edit::Grant {
                user: "bob".into(),
                project: "shop".into(),
                grant: Grant::Right(Right::Config),
            },
            Edit::Grant {
                user: "bob".into(),
                project: "*".into(),
                grant: Grant::Right(Right::Deploy),
            },
            Edit::Grant {
                user: "ann".into(),
                project: "*".into(),
                grant: Grant::Admin,
            },
            Edit::Revoke {
                user: "bob".into(),
                project: "shop".into(),
                grant: Grant::Right(Right::Deploy),
            },
        ];
        for edit in &edits {
            edit_node_yml(&path, edit).expect("edit");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "# the node\nenvironment: staging   # staging box\n\nusers:\n  ann:\n    keys:\n      - {}\n    admin: true\n  bob:\n    keys:\n      - {}\n    projects:\n      \"*\": [deploy]\n      shop: [config]\n\nlimits:\n  stage_timeout: 10m\n",
                serde_json::to_string(KEY).unwrap(),
                serde_json::to_string(BOB).unwrap()
            )
        );
        let config = NodeConfig::load(&path).unwrap();
        assert!(config.users["ann"].admin);
        assert!(config.users["bob"].may("shop", Right::Deploy));
        assert!(config.users["bob"].may("shop", Right::Config));
        assert!(!config.users["bob"].may("blog", Right::Config));
    }

    #[test]
    fn refused_edits_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yml");
        let before = format!("users:\n  ann:\n    keys: ['{KEY}']\n");
        std::fs::write(&path, &before).unwrap();
        let cases = [
            (
                Edit::AddKeys {
                    user: "bob".into(),
                    keys: vec![KEY.into()],
                },
                "already `ann`'s",
            ),
            (
                Edit::AddKeys {
                    user: "Bob".into(),
                    keys: vec![BOB.into()],
                },
                "invalid user name",
            ),
            (
                Edit::AddKeys {
                    user: "bob".into(),
                    keys: vec!["ssh-ed25519 x\ny".into()],
                },
                "invalid SSH public key",
            ),
            (
                Edit::AddKeys {
                    user: "bob".into(),
                    keys: vec![],
                },
                "no public key",
            ),
            (
                Edit::Grant {
                    user: "eve".into(),
                    project: "shop".into(),
                    grant: Grant::Right(Right::Deploy),
                },
                "no user `eve`",
            ),
            (
                Edit::Grant {
                    user: "ann".into(),
                    project: "Shop".into(),
                    grant: Grant::Right(Right::Deploy),
                },
                "invalid project name",
            ),
            (
                Edit::Grant {
                    user: "ann".into(),
                    project: "shop".into(),
                    grant: Grant::Admin,
                },
                "node-wide",
            ),
        ];
        for (edit, expected) in cases {
            let error = edit_node_yml(&path, &edit).expect_err(expected);
            assert!(crate::error::chain(&error).contains(expected), "{error}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        }
    }

    #[test]
    fn flow_style_users_are_not_mangled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yml");
        let before =
            format!("users: {{ann: {{keys: ['{KEY}']}}}}\nlimits: {{stage_timeout: 1m}}\n");
        std::fs::write(&path, &before).unwrap();
        edit_node_yml(
            &path,
            &Edit::Grant {
                user: "ann".into(),
                project: "shop".into(),
                grant: Grant::Right(Right::Operate),
            },
        )
        .expect("a one-line flow mapping is replaced whole");
        let config = NodeConfig::load(&path).unwrap();
        assert!(config.users["ann"].may("shop", Right::Operate));
        assert_eq!(
            config.limits.stage_timeout,
            std::time::Duration::from_secs(60)
        );
    }
}
