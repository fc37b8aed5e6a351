//! The merged settings of a deploy (README.md, "Pillar: private settings"): kiln's own
//! values, the recipe's `defaults`, then the pillar, then the pillar's section for this node's
//! environment. The result is what `$KILN_COMMON` holds and where `env:` comes from. This
//! module also decides which pillar values are secrets ([`secrets`]) and masks them wherever
//! settings or output are shown.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::config::config_error::{ConfigError, is_blank, parse_yaml};

/// What a secret is replaced with, whatever its length (the length is a hint too).
pub const MASK: &str = "********";

/// Secrets shorter than this are not masked: hiding every `on` or `42` in build output would
/// make it unreadable, and such short values protect nothing.
pub const MIN_SECRET_CHARS: usize = 4;

/// Why the `env` settings cannot become environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingsError {
    #[error("settings key `env` must be a mapping of variable names to values, not {found}")]
    EnvNotMapping { found: &'static str },
    #[error(
        "invalid environment variable name `{name}` in `env`: use letters, digits and `_`, not starting with a digit"
    )]
    BadName { name: String },
    #[error("environment variable `{name}` in `env` is reserved: kiln sets the `KILN_` variables")]
    Reserved { name: String },
    #[error("`env.{name}` is {found}: an environment variable takes a string, number or boolean")]
    Nested { name: String, found: &'static str },
    #[error("`env.{name}` contains a NUL byte, which an environment variable cannot hold")]
    Nul { name: String },
}

/// Merges `over` into `base`: mappings key by key, recursively; anything else (lists
/// included) replaces what was there.
pub fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// Parses pillar.yml. It must be a mapping (a blank file is an empty one), and its
/// `environments`, when present, a mapping of environment names to mappings: anything else
/// would make the merge replace all settings with a scalar.
pub fn parse_pillar(text: &str, file: &Path) -> Result<Value, ConfigError> {
    if is_blank(text) {
        return Ok(Value::Object(Map::new()));
    }
    let Pillar(map) = parse_yaml(text, file)?;
    Ok(Value::Object(map))
}

struct Pillar(Map<String, Value>);

/// An `environments.<name>` section: settings like the pillar's own, without `environments`.
struct Section(Map<String, Value>);

/// Reads a mapping of settings. Typed where a wrong type would silently do the wrong thing,
/// so that it is refused at its own line and column: `environments` (only in the pillar
/// itself, not in its sections) and `secret_keys` (a typo there would show a secret).
fn settings_map<'de, A: serde::de::MapAccess<'de>>(
    mut map: A,
    top: bool,
) -> Result<Map<String, Value>, A::Error> {
    let mut settings = Map::new();
    while let Some(key) = map.next_key::<String>()? {
        let value = if top && key == "environments" {
            type Sections = BTreeMap<String, Option<Section>>;
            let sections = map.next_value::<Option<Sections>>()?.unwrap_or_default();
            Value::Object(
                sections
                    .into_iter()
                    .map(|(name, section)| {
                        (name, section.map_or(Value::Null, |s| Value::Object(s.0)))
                    })
                    .collect(),
            )
        } else if key == SECRET_KEYS {
            let names = map.next_value::<Option<Vec<String>>>()?.unwrap_or_default();
            Value::Array(names.into_iter().map(Value::String).collect())
        } else {
            map.next_value::<Value>()?
        };
        settings.insert(key, value);
    }
    Ok(settings)
}

struct SettingsVisitor {
    top: bool,
}

impl<'de> serde::de::Visitor<'de> for SettingsVisitor {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of settings")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        settings_map(map, self.top)
    }
}

impl<'de> Deserialize<'de> for Pillar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(SettingsVisitor { top: true })
            .map(Pillar)
    }
}

impl<'de> Deserialize<'de> for Section {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_map(SettingsVisitor { top: false })
            .map(Section)
    }
}

/// The settings a deploy sees, lowest precedence first: `kiln` (kiln's own values), the
/// recipe's `defaults`, the pillar without its `environments` key, then the pillar's
/// `environments.<environment>`.
pub fn merge(
    kiln: Value,
    defaults: &Map<String, Value>,
    pillar: Option<&Value>,
    environment: &str,
) -> Value {
    let mut merged = kiln;
    deep_merge(&mut merged, Value::Object(defaults.clone()));
    if let Some(Value::Object(pillar)) = pillar {
        let mut common = pillar.clone();
        let environments = common.remove("environments");
        deep_merge(&mut merged, Value::Object(common));
        if let Some(section @ Value::Object(_)) = environments
            .as_ref()
            .and_then(|environments| environments.get(environment))
        {
            deep_merge(&mut merged, section.clone());
        }
    }
    merged
}

/// Parts of a key name that make its value a secret, matched anywhere in the name and
/// whatever the case (`DATABASE_PASSWORD`, `api_key`, `githubToken`, `private_pem`).
const SECRET_NAME_PARTS: [&str; 8] = [
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "SECRET",
    "TOKEN",
    "KEY",
    "CREDENTIAL",
    "PRIVATE",
];

/// Words that make a value a secret only as a whole word of the name (`DB_PASS`, `smtp-pwd`):
/// as a part of a word they would catch `COMPASS` or `BYPASS`.
const SECRET_NAME_WORDS: [&str; 2] = ["PASS", "PWD"];

/// The pillar key (at the top or in an `environments` section) that lists further key names
/// whose values are secrets, for secrets whose names say nothing (`SENTRY_DSN`).
pub const SECRET_KEYS: &str = "secret_keys";

/// Whether values under the key `name` are secrets: its name says so, or the pillar's
/// `secret_keys` lists it (`marked`, compared without regard to case).
pub fn is_secret_name(name: &str, marked: &[String]) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_NAME_PARTS.iter().any(|part| upper.contains(part))
        || upper
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| SECRET_NAME_WORDS.contains(&word))
        || marked
            .iter()
            .any(|marked| marked.eq_ignore_ascii_case(name))
}

/// The values in the pillar that must never be shown: every value (string, or number as it
/// prints; at any depth, in lists too) under a key [`is_secret_name`] accepts (so all of a
/// `secrets:` mapping), and the password of every URL in a pillar string
/// (`postgres://app:pw@db/x`), as written and percent-decoded. The whole pillar counts, every
/// `environments` section included. At least [`MIN_SECRET_CHARS`] long; deduplicated, longest
/// first, so a secret containing another is masked whole. Other values (a port, a host name)
/// are not secrets and are shown.
pub fn secrets(pillar: &Value) -> Vec<String> {
    fn marked(pillar: &Value) -> Vec<String> {
        let lists = std::iter::once(pillar.get(SECRET_KEYS)).chain(
            pillar
                .get("environments")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|sections| sections.values().map(|section| section.get(SECRET_KEYS))),
        );
        lists
            .flatten()
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    }
    fn collect(value: &Value, secret: bool, marked: &[String], found: &mut Vec<String>) {
        match value {
            Value::String(text) => {
                if secret {
                    found.push(text.clone());
                }
                found.extend(url_passwords(text));
            }
            Value::Number(number) if secret => found.push(number.to_string()),
            Value::Array(items) => items
                .iter()
                .for_each(|item| collect(item, secret, marked, found)),
            Value::Object(map) => {
                for (key, item) in map {
                    // Its values are key names, not secrets.
                    if key != SECRET_KEYS {
                        collect(item, secret || is_secret_name(key, marked), marked, found);
                    }
                }
            }
            Value::Number(_) | Value::Null | Value::Bool(_) => {}
        }
    }
    let marked = marked(pillar);
    let mut found = Vec::new();
    collect(pillar, false, &marked, &mut found);
    found.retain(|secret| secret.chars().count() >= MIN_SECRET_CHARS);
    found.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    found.dedup();
    found
}

/// The passwords in the userinfo of the URLs in `text` (`scheme://user:password@host`), as
/// written and, when it differs, percent-decoded (an app may print either). The authority
/// ends at the first `/`, `?` or `#` as RFC 3986 says, so a `/` in a password must be written
/// `%2F`; the userinfo ends at the authority's last `@`.
fn url_passwords(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("://") {
        let start = from + offset + 3;
        from = start;
        let scheme_ok = text[..start - 3]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let rest = &text[start..];
        let end = rest
            .find(|c: char| "/?#".contains(c) || c.is_whitespace() || "\"'<>".contains(c))
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        let Some((userinfo, _host)) = authority.rsplit_once('@') else {
            continue;
        };
        let Some((_user, password)) = userinfo.split_once(':') else {
            continue;
        };
        if !scheme_ok || password.is_empty() {
            continue;
        }
        found.push(password.to_owned());
        let decoded = percent_decode(password);
        if decoded != password {
            found.push(decoded);
        }
    }
    found
}

/// `%XX` escapes decoded; an invalid escape or a result that is not UTF-8 is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let digit = |i: usize| bytes.get(i).and_then(|&b| char::from(b).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], digit(i + 1), digit(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits: at most 255.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

/// `settings` with every occurrence of a secret in a value replaced by [`MASK`] (a number
/// that shows a secret becomes the masked string). Keys are kept as they are.
pub fn mask(settings: &Value, secrets: &[String]) -> Value {
    match settings {
        Value::String(text) => Value::String(mask_text(text, secrets)),
        Value::Number(number) => {
            let shown = number.to_string();
            let masked = mask_text(&shown, secrets);
            if masked == shown {
                settings.clone()
            } else {
                Value::String(masked)
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|item| mask(item, secrets)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), mask(value, secrets)))
                .collect(),
        ),
        Value::Null | Value::Bool(_) => settings.clone(),
    }
}

/// `text` with every occurrence of a secret replaced by [`MASK`]; for stage output and logs
/// as much as for settings. Occurrences that overlap (of one secret or of two) are masked as
/// one, so no part of either shows.
pub fn mask_text(text: &str, secrets: &[String]) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        let mut from = 0;
        while let Some(offset) = text[from..].find(secret.as_str()) {
            let start = from + offset;
            ranges.push((start, start + secret.len()));
            // Step one character, not the whole match: `aaaa` occurs twice in `aaaaa`.
            from = start + text[start..].chars().next().map_or(1, char::len_utf8);
        }
    }
    if ranges.is_empty() {
        return text.to_owned();
    }
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start < last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut masked = String::with_capacity(text.len());
    let mut shown_up_to = 0;
    for (start, end) in merged {
        masked.push_str(&text[shown_up_to..start]);
        masked.push_str(MASK);
        shown_up_to = end;
    }
    masked.push_str(&text[shown_up_to..]);
    masked
}

/// The `env` mapping of the merged settings as environment variables. Strings pass as they
/// are, numbers and booleans as they print; a null leaves the variable out (so a pillar can
/// remove a default with `NAME: ~`). A missing or null `env` gives no variables.
///
/// YAML has already read unquoted numbers as numbers: `1.10` prints as `1.1` and `0x1F` as
/// `31` (leading zeros, as in `0755`, are kept). Values whose spelling matters are quoted.
pub fn env_vars(settings: &Value) -> Result<BTreeMap<String, String>, SettingsError> {
    let env = match settings.get("env") {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(env)) => env,
        Some(other) => return Err(SettingsError::EnvNotMapping { found: kind(other) }),
    };
    let mut vars = BTreeMap::new();
    for (name, value) in env {
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(SettingsError::BadName { name: name.clone() });
        }
        if name.starts_with("KILN_") {
            return Err(SettingsError::Reserved { name: name.clone() });
        }
        let text = match value {
            Value::Null => continue,
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err(SettingsError::Nested {
                    name: name.clone(),
                    found: kind(value),
                });
            }
        };
        if text.contains('\0') {
            return Err(SettingsError::Nul { name: name.clone() });
        }
        vars.insert(name.clone(), text);
    }
    Ok(vars)
}

/// A value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pillar(text: &str) -> Result<Value, ConfigError> {
        parse_pillar(text, Path::new("pillar.yml"))
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not a mapping: {other}"),
        }
    }

    #[test]
    fn deep_merge_merges_mappings_and_replaces_the_rest() {
        let cases = [
            (json!({"a": 1}), json!({"b": 2}), json!({"a": 1, "b": 2})),
            (
                json!({"a": {"x": 1, "y": 2}}),
                json!({"a": {"y": 3}}),
                json!({"a": {"x": 1, "y": 3}}),
            ),
            (
                json!({"a": [1, 2, 3]}),
                json!({"a": [4]}),
                json!({"a": [4]}),
            ),
            (
                json!({"a": {"x": 1}}),
                json!({"a": "flat"}),
                json!({"a": "flat"}),
            ),
            (
                json!({"a": "flat"}),
                json!({"a": {"x": 1}}),
                json!({"a": {"x": 1}}),
            ),
            (json!({"a": 1}), json!({"a": null}), json!({"a": null})),
            (json!({"a": 1}), json!([1]), json!([1])),
            (json!("x"), json!({"a": 1}), json!({"a": 1})),
        ];
        for (base, over, expected) in cases {
            let mut merged = base.clone();
            deep_merge(&mut merged, over.clone());
            assert_eq!(merged, expected, "{base} <- {over}");
        }
    }

    #[test]
    fn merge_precedence_is_kiln_defaults_pillar_environment() {
        let kiln = json!({"kiln": {"project": "shop"}, "level": "kiln", "only_kiln": 1});
        let defaults = object(json!({
            "level": "defaults",
            "only_defaults": 2,
            "db": {"host": "localhost", "port": 5432, "options": ["a", "b"]},
            "env": {"DJANGO_SETTINGS_MODULE": "app.settings", "DEBUG": true},
        }));
        let pillar = json!({
            "level": "pillar",
            "db": {"password": "s3cret-pw", "options": ["c"]},
            "env": {"DEBUG": false},
            "environments": {
                "prod": {"level": "prod", "db": {"host": "db.internal"}},
                "staging": {"level": "staging"},
            },
        });
        let merged = merge(kiln.clone(), &defaults, Some(&pillar), "prod");
        assert_eq!(
            merged,
            json!({
                "kiln": {"project": "shop"},
                "level": "prod",
                "only_kiln": 1,
                "only_defaults": 2,
                "db": {"host": "db.internal", "port": 5432, "password": "s3cret-pw", "options": ["c"]},
                "env": {"DJANGO_SETTINGS_MODULE": "app.settings", "DEBUG": false},
            })
        );
        let cases = [
            (Some(&pillar), "staging", json!("staging")),
            (Some(&pillar), "dev", json!("pillar")),
            (None, "prod", json!("defaults")),
        ];
        for (pillar, environment, level) in cases {
            let merged = merge(kiln.clone(), &defaults, pillar, environment);
            assert_eq!(merged["level"], level, "{environment}");
            assert!(merged.get("environments").is_none());
        }
        assert_eq!(merge(kiln.clone(), &Map::new(), None, "prod"), kiln);
    }

    #[test]
    fn parses_pillars() {
        let cases = [
            ("", json!({})),
            ("# nothing\n", json!({})),
            (
                "password: hunter22\nport: 5432\n",
                json!({"password": "hunter22", "port": 5432}),
            ),
            (
                "a: 1\nenvironments:\n  prod:\n    a: 2\n  dev:\n",
                json!({"a": 1, "environments": {"prod": {"a": 2}, "dev": null}}),
            ),
            ("environments:\n", json!({"environments": {}})),
            (
                "secret_keys: [DSN]\nenvironments:\n  prod:\n    secret_keys:\n",
                json!({"secret_keys": ["DSN"], "environments": {"prod": {"secret_keys": []}}}),
            ),
            (
                "mode: 0644\nflag: no\n",
                json!({"mode": "0644", "flag": "no"}),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(pillar(text).expect(text), expected, "{text:?}");
        }
    }

    #[test]
    fn refuses_bad_pillars_with_their_position() {
        let cases = [
            (
                "- a\n- b\n",
                "pillar.yml:1:1: expected a mapping (`key: value` lines)",
            ),
            (
                "just a string\n",
                "pillar.yml:1:1: expected a mapping (`key: value` lines)",
            ),
            (
                "environments: [prod]\n",
                "pillar.yml:1:15: expected a mapping (`key: value` lines)",
            ),
            (
                "environments:\n  prod: [a]\n",
                "pillar.yml:2:9: expected a mapping (`key: value` lines)",
            ),
            (
                "environments:\n  prod: yes\n",
                "pillar.yml:2:9: expected a mapping (`key: value` lines)",
            ),
            ("a: 1\na: 2\n", "pillar.yml:2:1: duplicate key `a`"),
            ("a: 'open\n", "pillar.yml:1:4: unclosed quote"),
            (
                "secret_keys: SENTRY_DSN\n",
                "pillar.yml:1:14: expected a list",
            ),
            (
                "environments:\n  prod:\n    secret_keys: [{a: 1}]\n",
                "pillar.yml:3:19: expected string scalar",
            ),
        ];
        let mut mismatches = Vec::new();
        for (text, expected) in cases {
            let error = pillar(text).expect_err(text);
            if error.to_string() != expected {
                mismatches.push(format!(
                    "{text:?}\n  got:      {error}\n  expected: {expected}"
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn secrets_are_named_marked_or_url_passwords_longest_first() {
        let pillar = json!({
            "db": {"password": "hunter22", "user": "app", "port": 5432, "host": "db.internal"},
            "tokens": ["tok-abcdef", "hunter22", {"nested": "deep-secret"}],
            "secrets": {"anything": {"at": ["any-depth"]}, "pin": 918273},
            "enabled": true,
            "nothing": null,
            "short_token": "abc",
            "env": {
                "PORT": "18432",
                "DATABASE_PASSWORD": "pw-in-env",
                "DB_PASS": "word-pass",
                "COMPASS": "north-west",
                "SENTRY_DSN": "https://pub@sentry.example/1",
                "DATABASE_URL": "postgres://shop:url%2Fpw@db/shop",
                "NOTES": "see http://host:8080/x and ftp://ann:ftp-pw@files/ today",
            },
            "secret_keys": ["sentry_dsn"],
            "environments": {
                "prod": {"api_key": "prod-key-123456", "secret_keys": ["LICENSE"], "LICENSE": "lic-123"},
                "dev": {"private": {"pem": "-----BEGIN-----"}, "debug": "verbose"},
            },
        });
        assert_eq!(
            secrets(&pillar),
            [
                "https://pub@sentry.example/1",
                "-----BEGIN-----",
                "prod-key-123456",
                "deep-secret",
                "tok-abcdef",
                "any-depth",
                "pw-in-env",
                "word-pass",
                "hunter22",
                "url%2Fpw",
                "lic-123",
                "918273",
                "ftp-pw",
                "url/pw",
            ]
        );
        assert!(secrets(&json!({})).is_empty());
        assert!(secrets(&json!({"env": {"PORT": 18432, "HOST": "example.com"}})).is_empty());
    }

    #[test]
    fn the_readme_pillar_example_masks_what_its_comments_say() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("# pillar.yml\n")
            .expect("README has the pillar example");
        let example = &readme[start..];
        let example = &example[..example.find("```").expect("the example ends")];
        let pillar = pillar(example).expect("the README example parses");
        assert_eq!(
            secrets(&pillar),
            [
                "https://k3y@sentry.example.com/1",
                "pr0d-s3cret",
                "9f2c1e7a",
                "s3cret"
            ]
        );
    }

    #[test]
    fn secret_names() {
        let marked = ["SENTRY_DSN".to_owned()];
        let cases = [
            ("DATABASE_PASSWORD", true),
            ("db_password", true),
            ("smtpPasswd", true),
            ("GPG_PASSPHRASE", true),
            ("secrets", true),
            ("SECRET_KEY", true),
            ("GITHUB_TOKEN", true),
            ("api_key", true),
            ("ssh_keys", true),
            ("AWS_CREDENTIALS", true),
            ("private", true),
            ("DB_PASS", true),
            ("smtp-pwd", true),
            ("sentry_dsn", true),
            ("PORT", false),
            ("HOST", false),
            ("COMPASS", false),
            ("BYPASS_CACHE", false),
            ("DATABASE_URL", false),
            ("environments", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_secret_name(name, &marked), expected, "{name}");
        }
    }

    #[test]
    fn url_passwords_follow_rfc_3986() {
        let cases: [(&str, &[&str]); 8] = [
            ("postgres://u:pw@host/db", &["pw"]),
            ("postgres://u:p%40ss@host", &["p%40ss", "p@ss"]),
            ("redis://:only-pw@host:6379", &["only-pw"]),
            ("https://user@host/path", &[]),
            ("https://host/a:b@c", &[]),
            ("http://host:8080/", &[]),
            ("a://u:1@h b://v:2@h", &["1", "2"]),
            ("no url: u:pw@host", &[]),
        ];
        for (text, expected) in cases {
            assert_eq!(url_passwords(text), expected, "{text}");
        }
    }

    #[test]
    fn masks_every_occurrence() {
        let secrets: Vec<String> = ["hunter22", "abcd", "cdef", "aaaa"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let cases = [
            ("hunter22", "********"),
            (
                "postgres://app:hunter22@db/x",
                "postgres://app:********@db/x",
            ),
            ("hunter22hunter22", "****************"),
            ("hunter22 and hunter22", "******** and ********"),
            ("xabcdefx", "x********x"),
            ("aaaaa", "********"),
            ("nothing here", "nothing here"),
            ("", ""),
            ("é hunter22 ü", "é ******** ü"),
        ];
        for (text, expected) in cases {
            assert_eq!(mask_text(text, &secrets), expected, "{text:?}");
        }

        let settings = json!({
            "db": {"url": "postgres://app:hunter22@db/x", "port": 5432, "name": "shop"},
            "list": ["hunter22", 7, true, null],
            "hunter22": "key names stay",
        });
        let secrets = vec!["hunter22".to_owned(), "5432".to_owned()];
        assert_eq!(
            mask(&settings, &secrets),
            json!({
                "db": {"url": "postgres://app:********@db/x", "port": "********", "name": "shop"},
                "list": ["********", 7, true, null],
                "hunter22": "key names stay",
            })
        );
    }

    #[test]
    fn env_vars_convert_scalars() {
        let settings = json!({
            "env": {
                "NAME": "shop",
                "PORT": 8000,
                "RATIO": 1.5,
                "DEBUG": false,
                "_PRIVATE": "x",
                "REMOVED": null,
                "EMPTY": "",
            },
            "other": {"not": "env"},
        });
        let vars = env_vars(&settings).expect("valid env");
        let expected: BTreeMap<String, String> = [
            ("DEBUG", "false"),
            ("EMPTY", ""),
            ("NAME", "shop"),
            ("PORT", "8000"),
            ("RATIO", "1.5"),
            ("_PRIVATE", "x"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(vars, expected);
        assert!(env_vars(&json!({})).expect("no env").is_empty());
        assert!(
            env_vars(&json!({"env": null}))
                .expect("null env")
                .is_empty()
        );
    }

    #[test]
    fn env_vars_from_yaml_keep_integers_leading_zeros_and_quoted_text() {
        let settings = pillar(
            "env:\n  PORT: 8000\n  MODE: 0755\n  VERSION: '1.10'\n  LOOSE: 1.10\n  FLAG: no\n",
        )
        .expect("pillar parses");
        let vars = env_vars(&settings).expect("valid env");
        let shown: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            shown,
            [
                ("FLAG", "no"),
                ("LOOSE", "1.1"),
                ("MODE", "0755"),
                ("PORT", "8000"),
                ("VERSION", "1.10"),
            ]
        );
    }

    #[test]
    fn env_var_errors_name_the_key() {
        let cases = [
            (
                json!({"env": ["A=1"]}),
                "settings key `env` must be a mapping of variable names to values, not a list",
            ),
            (
                json!({"env": {"1ST": "x"}}),
                "invalid environment variable name `1ST` in `env`: use letters, digits and `_`, not starting with a digit",
            ),
            (
                json!({"env": {"MY-VAR": "x"}}),
                "invalid environment variable name `MY-VAR` in `env`: use letters, digits and `_`, not starting with a digit",
            ),
            (
                json!({"env": {"": "x"}}),
                "invalid environment variable name `` in `env`: use letters, digits and `_`, not starting with a digit",
            ),
            (
                json!({"env": {"KILN_ROOT": "/"}}),
                "environment variable `KILN_ROOT` in `env` is reserved: kiln sets the `KILN_` variables",
            ),
            (
                json!({"env": {"DB": {"host": "x"}}}),
                "`env.DB` is a mapping: an environment variable takes a string, number or boolean",
            ),
            (
                json!({"env": {"HOSTS": ["a", "b"]}}),
                "`env.HOSTS` is a list: an environment variable takes a string, number or boolean",
            ),
            (
                json!({"env": {"BAD": "a\u{0}b"}}),
                "`env.BAD` contains a NUL byte, which an environment variable cannot hold",
            ),
        ];
        for (settings, expected) in cases {
            let error = env_vars(&settings).expect_err(expected);
            assert_eq!(error.to_string(), expected);
        }
    }
}
