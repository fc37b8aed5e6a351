//! The kiln section of authorized_keys: one line per key of node.yml's users, each forced to
//! run `kiln ssh <user>` with `restrict` (no port, agent or X11 forwarding, no pty) and `pty`
//! given back only to users who operate some project. Lines outside the section belong to
//! someone else and are kept byte for byte.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::access::{AccessError, io};
use crate::config::node_config::NodeConfig;

pub const BEGIN: &str =
    "# kiln: begin (written by `kiln access sync` from node.yml: edit node.yml, not these lines)";
pub const END: &str = "# kiln: end";

/// `SHA256:<base64>`, as `ssh-keygen -l` and sshd's log print it. The key was checked when
/// node.yml was parsed; a body that does not decode gives the fingerprint of no bytes.
pub fn fingerprint(key: &str) -> String {
    let body = key.split_ascii_whitespace().nth(1).unwrap_or("");
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap_or_default();
    let digest = Sha256::digest(&blob);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The authorized_keys file: node.yml's `ssh.authorized_keys`, else the running user's
/// `~/.ssh/authorized_keys`.
pub fn authorized_keys_path(config: &NodeConfig) -> Result<PathBuf, AccessError> {
    if let Some(path) = &config.ssh.authorized_keys {
        return Ok(path.clone());
    }
    let home = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|user| user.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .ok_or_else(|| AccessError::Edit {
            reason: "cannot find the home directory of the user running kiln: set `ssh.authorized_keys` in node.yml".into(),
        })?;
    Ok(home.join(".ssh").join("authorized_keys"))
}

/// A path inside the forced command, which sshd hands to the node user's shell: plain when it
/// only holds characters no shell treats specially, else single-quoted. A `'`, `"` or `\`
/// would need escaping at two levels (authorized_keys and the shell): refused instead.
fn command_word(what: &'static str, path: &Path) -> Result<String, AccessError> {
    let text = path.to_str().ok_or_else(|| AccessError::Unquotable {
        what,
        path: path.to_path_buf(),
        reason: "it is not UTF-8",
    })?;
    if text.chars().any(|c| c.is_control() || "'\"\\".contains(c)) {
        return Err(AccessError::Unquotable {
            what,
            path: path.to_path_buf(),
            reason: "it contains a quote, a backslash or a control character",
        });
    }
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._+-".contains(c))
    {
        Ok(text.to_string())
    } else {
        Ok(format!("'{text}'"))
    }
}

/// The lines between [`BEGIN`] and [`END`], each ending in a newline.
pub fn section(config: &NodeConfig, kiln: &Path, root: &Path) -> Result<String, AccessError> {
    let kiln = command_word("the kiln binary", kiln)?;
    let root = command_word("the node root", root)?;
    let mut text = format!("{BEGIN}\n");
    for (name, user) in &config.users {
        let options = if user.operates_somewhere() {
            "restrict,pty"
        } else {
            "restrict"
        };
        for key in &user.keys {
            // The fingerprint travels in the command so that kiln knows which key came in
            // without relying on sshd's ExposeAuthInfo.
            text.push_str(&format!(
                "{options},command=\"{kiln} --root {root} ssh {name} --key {}\" {}\n",
                fingerprint(key),
                key.trim()
            ));
        }
    }
    text.push_str(END);
    text.push('\n');
    Ok(text)
}

/// `existing` with its kiln section replaced by `section` (appended when there is none).
pub fn splice(existing: &str, section: &str, path: &Path) -> Result<String, AccessError> {
    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    let is = |line: &str, marker: &str| line.trim_end() == marker;
    let begin = lines.iter().position(|line| is(line, BEGIN));
    let end = lines.iter().position(|line| is(line, END));
    let bad = |line: usize, reason: &str| AccessError::BadAuthorizedKeys {
        path: path.to_path_buf(),
        line: line + 1,
        reason: reason.to_string(),
    };
    let mut out = String::with_capacity(existing.len() + section.len());
    match (begin, end) {
        (None, None) => {
            out.push_str(existing);
            if !existing.is_empty() && !existing.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(section);
        }
        (Some(begin), Some(end)) if begin < end => {
            if lines[end + 1..]
                .iter()
                .any(|line| is(line, BEGIN) || is(line, END))
            {
                return Err(bad(
                    end,
                    "a second kiln section: remove one by hand, then sync again",
                ));
            }
            lines[..begin].iter().for_each(|line| out.push_str(line));
            out.push_str(section);
            lines[end + 1..].iter().for_each(|line| out.push_str(line));
        }
        (Some(begin), _) => {
            return Err(bad(
                begin,
                "`# kiln: begin` without a `# kiln: end` after it: fix the file by hand, then sync again",
            ));
        }
        (None, Some(end)) => {
            return Err(bad(
                end,
                "`# kiln: end` without a `# kiln: begin` before it: fix the file by hand, then sync again",
            ));
        }
    }
    Ok(out)
}

pub struct Synced {
    pub path: PathBuf,
    pub keys: usize,
}

/// Rewrites the kiln section of the authorized_keys file. The file keeps its owner and mode
/// (root may sync the node user's file); a new one is 0600 in a 0700 `.ssh`.
pub fn sync(config: &NodeConfig, kiln: &Path, root: &Path) -> Result<Synced, AccessError> {
    let path = authorized_keys_path(config)?;
    let section = section(config, kiln, root)?;
    let (existing, meta) = match std::fs::read(&path) {
        Ok(bytes) => {
            let meta = std::fs::metadata(&path).map_err(io("read", &path))?;
            let text = String::from_utf8(bytes).map_err(|_| AccessError::BadAuthorizedKeys {
                path: path.clone(),
                line: 1,
                reason: "not UTF-8 text".into(),
            })?;
            (text, Some(meta))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    let text = splice(&existing, &section, &path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restrict", dir))?;
    }
    let mut file = tempfile::Builder::new()
        .prefix(".authorized_keys.kiln")
        .tempfile_in(dir)
        .map_err(io("create a temporary file in", dir))?;
    let mode = meta.as_ref().map_or(0o600, |m| m.mode() & 0o7777);
    let write = |file: &mut tempfile::NamedTempFile| -> std::io::Result<()> {
        file.write_all(text.as_bytes())?;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some(meta) = &meta {
            std::os::unix::fs::fchown(file.as_file(), Some(meta.uid()), Some(meta.gid()))?;
        }
        file.as_file().sync_all()
    };
    write(&mut file).map_err(io("write", &path))?;
    file.persist(&path)
        .map_err(|e| io("replace", &path)(e.error))?;
    crate::fs::durable::fsync_dir(dir).map_err(io("sync", dir))?;
    let keys = config.users.values().map(|user| user.keys.len()).sum();
    Ok(Synced { path, keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFhXZNdm0lp5ZdajKvNhtOkOY2J/ngjFaC7H3MvXyrjg ann@laptop";

    #[test]
    fn fingerprints_match_ssh_keygen() {
        // `ssh-keygen -lf` of KEY.
        assert_eq!(
            fingerprint(KEY),
            "SHA256:AzS2LMnxZIwaW4/WcdWyiFZlnSfiX7ci6UM1TmZRtlY"
        );
    }

    fn config(text: &str) -> NodeConfig {
        NodeConfig::parse(text, Path::new("node.yml")).expect("node.yml parses")
    }

    #[test]
    fn a_line_per_key_with_pty_only_for_operators() {
        let config = config(&format!(
            "users:\n  ann:\n    keys: ['{KEY}']\n    projects:\n      shop: [deploy]\n  \
             bob:\n    keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7s bob']\n    projects:\n      shop: [operate]\n"
        ));
        let text = section(
            &config,
            Path::new("/usr/bin/kiln"),
            Path::new("/srv/my projects"),
        )
        .expect("section");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], BEGIN);
        assert_eq!(
            lines[1],
            format!(
                "restrict,command=\"/usr/bin/kiln --root '/srv/my projects' ssh ann --key {}\" {KEY}",
                fingerprint(KEY)
            )
        );
        assert!(lines[2].starts_with("restrict,pty,command=\"/usr/bin/kiln --root '/srv/my projects' ssh bob --key SHA256:"), "{}", lines[2]);
        assert_eq!(lines[3], END);
        assert_eq!(lines.len(), 4);

        let quote = section(
            &config,
            Path::new("/usr/bin/kiln"),
            Path::new("/srv/o'hara"),
        );
        assert!(matches!(quote, Err(AccessError::Unquotable { .. })));
    }

    #[test]
    fn splice_keeps_foreign_lines() {
        let path = Path::new("authorized_keys");
        let new = format!("{BEGIN}\nnew\n{END}\n");
        let cases = [
            ("", new.clone()),
            ("ssh-rsa AAAA other", format!("ssh-rsa AAAA other\n{new}")),
            (
                "a\n# kiln: begin (old wording is not matched)\nb\n",
                format!("a\n# kiln: begin (old wording is not matched)\nb\n{new}"),
            ),
            (
                &*format!("a\n{BEGIN}\nold\n{END}\nz\n"),
                format!("a\n{new}z\n"),
            ),
            (&*format!("{BEGIN}\n{END}"), new.clone()),
        ];
        for (existing, expected) in cases {
            assert_eq!(
                splice(existing, &new, path).expect(existing),
                expected,
                "{existing:?}"
            );
        }
        for broken in [
            format!("a\n{BEGIN}\nold\n"),
            format!("{END}\n{BEGIN}\n"),
            format!("{BEGIN}\n{END}\n{BEGIN}\n{END}\n"),
        ] {
            assert!(
                matches!(
                    splice(&broken, &new, path),
                    Err(AccessError::BadAuthorizedKeys { .. })
                ),
                "{broken:?}"
            );
        }
    }
}
