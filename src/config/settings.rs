//! The merged settings of a deploy (README.md, "Pillar: private settings"): kiln's own
//! values, the recipe's `defaults`, then the pillar, then the pillar's section for this node's
//! environment. The result is what `$KILN_COMMON` holds and where `env:` comes from. Pillar
//! values are secrets: this module also lists them and masks them wherever settings or output
//! are shown.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::config::config_error::{ConfigError, is_blank, parse_yaml};

/// What a secret is replaced with, whatever its length (the length is a hint too).
pub const MASK: &str = "********";

/// Secrets shorter than this are not masked: hiding every `on` or `db` in build output would
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

impl<'de> Deserialize<'de> for Pillar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Pillar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of settings")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Pillar, A::Error> {
                let mut settings = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = if key == "environments" {
                        // Typed, so that a section that is not a mapping is refused at
                        // its own line and column.
                        type Sections = BTreeMap<String, Option<Map<String, Value>>>;
                        let sections = map.next_value::<Option<Sections>>()?.unwrap_or_default();
                        Value::Object(
                            sections
                                .into_iter()
                                .map(|(name, section)| {
                                    (name, section.map_or(Value::Null, Value::Object))
                                })
                                .collect(),
                        )
                    } else {
                        map.next_value::<Value>()?
                    };
                    settings.insert(key, value);
                }
                Ok(Pillar(settings))
            }
        }

        deserializer.deserialize_map(Visitor)
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

/// Every value in the pillar that must never be shown: string leaves, and numbers as they
/// would print (a numeric password or port is a pillar value too), at any depth, in
/// `environments` and in lists; at least [`MIN_SECRET_CHARS`] long. Keys are not secrets.
/// Deduplicated, longest first, so a secret containing another is masked whole.
pub fn secrets(pillar: &Value) -> Vec<String> {
    fn collect(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::String(text) => found.push(text.clone()),
            Value::Number(number) => found.push(number.to_string()),
            Value::Array(items) => items.iter().for_each(|item| collect(item, found)),
            Value::Object(map) => map.values().for_each(|item| collect(item, found)),
            Value::Null | Value::Bool(_) => {}
        }
    }
    let mut found = Vec::new();
    collect(pillar, &mut found);
    found.retain(|secret| secret.chars().count() >= MIN_SECRET_CHARS);
    found.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    found.dedup();
    found
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
    fn secrets_are_every_long_enough_value_longest_first() {
        let pillar = json!({
            "db": {"password": "hunter22", "user": "app", "port": 5432},
            "tokens": ["tok-abcdef", "hunter22", {"nested": "deep-secret"}],
            "enabled": true,
            "nothing": null,
            "short": "abc",
            "environments": {"prod": {"api_key": "prod-key-123456"}},
        });
        assert_eq!(
            secrets(&pillar),
            [
                "prod-key-123456",
                "deep-secret",
                "tok-abcdef",
                "hunter22",
                "5432"
            ]
        );
        assert!(secrets(&json!({})).is_empty());
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
