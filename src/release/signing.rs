//! Release signing. A staging node with a key (`kiln key generate`) signs the exact bytes of
//! each release manifest into `<release>.json.sig`; a production project whose project.yml
//! names a `trusted_key` refuses any release whose signature is missing or does not verify.
//! The manifest carries the tarball's sha256 and the tree digest, so signing the manifest
//! vouches for everything production unpacks.
//!
//! Formats (all one line of text, so they survive copy-paste, HTTP and SSH alike):
//! - public key, as printed and as written in project.yml: `ed25519:<base64 of 32 bytes>`
//! - secret key file `<root>/.node-key` (mode 0600): `ed25519-secret:<base64 of the 32-byte seed>`
//! - signature file: `ed25519:<base64 of 64 bytes>`
//!
//! Releases baked before the node had its key are signed after the fact by
//! `kiln release sign` ([`sign_releases`]), which re-reads each tarball first: a signature
//! vouches only for a tarball that still matches its manifest.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::config::project::{Node, Project};
use crate::error::{Error, io_error};
use crate::release::manifest::Manifest;
use crate::release::source::Part;
use crate::transaction::release_log::ReleaseLog;

/// The secret key's file under the node root. The leading dot keeps it clear of project
/// names, which must start with a letter or digit.
pub const KEY_FILE: &str = ".node-key";
const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("a signing key already exists in `{}`: remove it first to make a new one (production nodes that trust it will refuse new releases)", path.display())]
    KeyExists { path: PathBuf },
    #[error("this node has no signing key: create one with `kiln key generate`")]
    NoKey,
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("`{}` is not a kiln signing key ({reason}): restore it from a backup or generate a new one", path.display())]
    BadKeyFile { path: PathBuf, reason: String },
    #[error(
        "trusted_key `{key}` in project.yml is not an ed25519 public key ({reason}): copy the line `kiln key generate` printed on the staging node"
    )]
    BadTrustedKey { key: String, reason: String },
    #[error("the node's random source failed: {reason}")]
    Random { reason: String },
    #[error(
        "no good release `{release}` of project `{project}` to sign: `kiln release list {project}` shows the releases this node offers"
    )]
    NoSuchRelease { project: String, release: String },
    #[error(
        "release {release} refused: its tarball's sha256 is {actual} but its manifest says {expected}; nothing was signed (push its commit to staging again to bake a new release)"
    )]
    Damaged {
        release: String,
        actual: String,
        expected: String,
    },
}

/// Which releases `kiln release sign` signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignWhich<'a> {
    One(&'a str),
    /// Every release the node offers.
    All,
}

/// What `kiln release sign` did with one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignOutcome {
    Signed,
    /// Its old signature did not verify with this node's key (another key, or damaged).
    Resigned,
    /// Already signed by this node's key: left as it is.
    AlreadySigned,
}

impl SignOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SignOutcome::Signed => "signed",
            SignOutcome::Resigned => {
                "signed again (its old signature did not verify with this node's key)"
            }
            SignOutcome::AlreadySigned => "already signed with this node's key",
        }
    }
}

/// Signs the manifests of releases `project` offers (its good releases, as `kiln release
/// list` shows them) with the node's key, without rebuilding anything. Every chosen tarball
/// is checked against its manifest's sha256 first, and if one does not match, nothing is
/// signed. The caller holds the project lock.
pub fn sign_releases(
    node: &Node,
    project: &Project,
    which: SignWhich,
) -> Result<Vec<(String, SignOutcome)>, Error> {
    let key = load(&node.root)?.ok_or(SigningError::NoKey)?;
    let paths = &project.paths;
    let log = ReleaseLog::load(&paths.release_log())?;
    let offered = crate::release::publish::offered(paths, &log, project.config.mode)?;
    let chosen: Vec<String> = match which {
        SignWhich::All => offered.into_iter().map(|m| m.release).collect(),
        SignWhich::One(id) => {
            if !offered.iter().any(|m| m.release == id) {
                return Err(SigningError::NoSuchRelease {
                    project: paths.name.clone(),
                    release: id.to_string(),
                }
                .into());
            }
            vec![id.to_string()]
        }
    };
    // The manifest's exact bytes are what gets signed: read them once, check the tarball
    // against what they say, and sign those same bytes.
    let mut checked = Vec::with_capacity(chosen.len());
    for id in chosen {
        let manifest_path = paths.manifest(&id);
        let bytes = fs::read(&manifest_path).map_err(|e| io_error("read", &manifest_path, e))?;
        let manifest = Manifest::parse(&bytes).map_err(|e| Error::Refused {
            message: format!("`{}`: {e}", manifest_path.display()),
        })?;
        let tarball = paths.releases.join(Part::Tarball.file_name(&id));
        let actual = crate::release::bake::sha256_file(&tarball)
            .map_err(|e| io_error("read", &tarball, e))?;
        if actual != manifest.sha256 {
            return Err(SigningError::Damaged {
                release: id,
                actual,
                expected: manifest.sha256,
            }
            .into());
        }
        checked.push((id, manifest_path, bytes));
    }
    let own = TrustedKey {
        text: public_text(&key.verifying_key()),
        key: key.verifying_key(),
    };
    let mut outcomes = Vec::with_capacity(checked.len());
    for (id, manifest_path, bytes) in checked {
        let signature_path = signature_path(&manifest_path);
        let outcome = match fs::read(&signature_path) {
            Ok(old) if own.verify(&bytes, Some(&old)).is_ok() => SignOutcome::AlreadySigned,
            Ok(_) => SignOutcome::Resigned,
            Err(e) if e.kind() == io::ErrorKind::NotFound => SignOutcome::Signed,
            Err(e) => return Err(io_error("read", &signature_path, e)),
        };
        if outcome != SignOutcome::AlreadySigned {
            crate::fs::durable::write_atomic(
                &signature_path,
                sign_text(&key, &bytes).as_bytes(),
                0o644,
            )?;
        }
        outcomes.push((id, outcome));
    }
    Ok(outcomes)
}

impl From<SigningError> for Error {
    fn from(e: SigningError) -> Self {
        Error::Signing(Box::new(e))
    }
}

/// Why a signature was not accepted (the caller names the release).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    #[error("it is not signed, and project.yml trusts only releases signed by `{key}`")]
    Missing { key: String },
    #[error("its signature file is malformed ({reason})")]
    Malformed { reason: String },
    #[error("its signature does not verify with the trusted key `{key}`")]
    Mismatch { key: String },
}

pub fn key_path(root: &Path) -> PathBuf {
    root.join(KEY_FILE)
}

/// Where the signature of the manifest at `manifest` lives: `<manifest>.sig`.
pub fn signature_path(manifest: &Path) -> PathBuf {
    let mut name = manifest.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Creates the node's signing key in `<root>/.node-key` (mode 0600, never overwritten) and
/// returns its public key as `ed25519:<base64>`.
pub fn generate(root: &Path) -> Result<String, SigningError> {
    let path = key_path(root);
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SigningError::Random {
        reason: e.to_string(),
    })?;
    let key = SigningKey::from_bytes(&seed);
    let text = format!("{SECRET_PREFIX}{}\n", STANDARD.encode(seed));
    seed.fill(0);
    let io_err = |action, source| SigningError::Io {
        action,
        path: path.clone(),
        source,
    };
    // create_new: two operators running this at once must not end up with different keys.
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(SigningError::KeyExists { path });
        }
        Err(e) => return Err(io_err("create", e)),
    };
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&path);
        return Err(io_err("write", e));
    }
    Ok(public_text(&key.verifying_key()))
}

/// The node's signing key, if it has one.
fn load(root: &Path) -> Result<Option<SigningKey>, SigningError> {
    let path = key_path(root);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SigningError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    let bad = |reason: &str| SigningError::BadKeyFile {
        path: path.clone(),
        reason: reason.into(),
    };
    let encoded = text
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| bad("it does not start with `ed25519-secret:`"))?;
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| bad("invalid base64"))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| bad("the key is not 32 bytes long"))?;
    Ok(Some(SigningKey::from_bytes(&seed)))
}

/// The node's public key as `ed25519:<base64>` (`kiln key show`).
pub fn public_key(root: &Path) -> Result<String, SigningError> {
    let key = load(root)?.ok_or(SigningError::NoKey)?;
    Ok(public_text(&key.verifying_key()))
}

fn public_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", STANDARD.encode(key.as_bytes()))
}

/// The signature file's text for `message`.
fn sign_text(key: &SigningKey, message: &[u8]) -> String {
    let signature = key.sign(message);
    format!("{PUBLIC_PREFIX}{}\n", STANDARD.encode(signature.to_bytes()))
}

/// Signs the exact bytes of `manifest` into `<manifest>.sig` when the node has a signing key.
pub fn sign_manifest_if_keyed(node: &Node, manifest: &Path) -> Result<(), Error> {
    let Some(key) = load(&node.root)? else {
        return Ok(());
    };
    let bytes = fs::read(manifest).map_err(|e| io_error("read", manifest, e))?;
    crate::fs::durable::write_atomic(
        &signature_path(manifest),
        sign_text(&key, &bytes).as_bytes(),
        0o644,
    )
}

/// A public key from project.yml's `trusted_key`.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    text: String,
    key: VerifyingKey,
}

impl TrustedKey {
    pub fn parse(text: &str) -> Result<TrustedKey, SigningError> {
        let bad = |reason: &str| SigningError::BadTrustedKey {
            key: text.to_string(),
            reason: reason.into(),
        };
        let encoded = text
            .trim()
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| bad("it does not start with `ed25519:`"))?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| bad("invalid base64"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("the key is not 32 bytes long"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid curve point"))?;
        Ok(TrustedKey {
            text: text.trim().to_string(),
            key,
        })
    }

    /// Checks `signature` (the bytes of a `.json.sig` file, None when there is none) over the
    /// exact bytes of `manifest`.
    pub fn verify(&self, manifest: &[u8], signature: Option<&[u8]>) -> Result<(), BadSignature> {
        let Some(signature) = signature else {
            return Err(BadSignature::Missing {
                key: self.text.clone(),
            });
        };
        let malformed = |reason: &str| BadSignature::Malformed {
            reason: reason.into(),
        };
        let text = std::str::from_utf8(signature).map_err(|_| malformed("not text"))?;
        let encoded = text
            .trim()
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or_else(|| malformed("it does not start with `ed25519:`"))?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| malformed("invalid base64"))?;
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|_| malformed("the signature is not 64 bytes long"))?;
        // verify_strict also refuses the malleable and small-order forms plain verify accepts.
        self.key
            .verify_strict(manifest, &Signature::from_bytes(&bytes))
            .map_err(|_| BadSignature::Mismatch {
                key: self.text.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn generate_writes_a_private_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let public = generate(dir.path()).unwrap();
        assert!(public.starts_with("ed25519:"), "{public}");
        assert_eq!(public_key(dir.path()).unwrap(), public);
        let mode = fs::metadata(key_path(dir.path())).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = generate(dir.path()).unwrap_err();
        assert!(matches!(again, SigningError::KeyExists { .. }), "{again}");
        assert_eq!(public_key(dir.path()).unwrap(), public, "key unchanged");
    }

    #[test]
    fn signatures_verify_only_with_the_signing_key_and_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let public = generate(dir.path()).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = generate(other_dir.path()).unwrap();
        let key = load(dir.path()).unwrap().unwrap();
        let manifest = b"{\"release\": \"x\"}\n";
        let sig = sign_text(&key, manifest);
        let trusted = TrustedKey::parse(&public).unwrap();
        let stranger = TrustedKey::parse(&other).unwrap();

        assert_eq!(trusted.verify(manifest, Some(sig.as_bytes())), Ok(()));
        type Case<'a> = (&'a TrustedKey, &'a [u8], Option<&'a [u8]>, &'a str);
        let cases: [Case; 5] = [
            (&stranger, manifest, Some(sig.as_bytes()), "does not verify"),
            (
                &trusted,
                b"{\"release\": \"y\"}\n",
                Some(sig.as_bytes()),
                "does not verify",
            ),
            (&trusted, manifest, None, "is not signed"),
            (&trusted, manifest, Some(b"ed25519:!!!"), "invalid base64"),
            (&trusted, manifest, Some(b"ed25519:AAAA"), "not 64 bytes"),
        ];
        for (key, message, signature, expected) in cases {
            let error = key.verify(message, signature).unwrap_err().to_string();
            assert!(error.contains(expected), "{error} should say {expected}");
        }
    }

    #[test]
    fn trusted_keys_must_be_ed25519_public_keys() {
        let cases = [
            ("ssh-ed25519 AAAA", "does not start with `ed25519:`"),
            ("ed25519:***", "invalid base64"),
            ("ed25519:AAAA", "not 32 bytes"),
        ];
        for (text, expected) in cases {
            let error = TrustedKey::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.contains(&format!("`{text}`")), "{error}");
        }
    }

    #[test]
    fn a_damaged_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(key_path(dir.path()), "ed25519-secret:AAAA\n").unwrap();
        let error = public_key(dir.path()).unwrap_err().to_string();
        assert!(error.contains("not 32 bytes"), "{error}");
        assert!(error.contains(KEY_FILE), "{error}");
    }
}
