//! The one error type for kiln's YAML files (kiln.yml, node.yml, project.yml, pillar.yml), and
//! the strict parser they share. A refused file must point at the line and column to fix,
//! in one line, because it reaches the pusher as a `remote:` line of a refused push.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_saphyr::{DefaultMessageFormatter, Localizer, Location, MessageFormatter, SnippetMode};

/// A configuration file that could not be read, parsed or accepted.
///
/// Displays as `<file>:<line>:<column>: <message>`, or `<file>: <message>` without a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file's path, or the label it is known by (e.g. `kiln.yml` inside a pushed commit).
    pub file: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based.
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    /// An error about the file as a whole (unreadable, or a rule spanning several keys).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    fn from_yaml(file: &Path, error: &serde_saphyr::Error) -> Self {
        let (line, column) = match error.location() {
            Some(location) if location != Location::UNKNOWN => (
                usize::try_from(location.line()).ok(),
                usize::try_from(location.column()).ok(),
            ),
            _ => (None, None),
        };
        let rendered = error.render_with_options(serde_saphyr::render_options! {
            formatter: &KilnMessages,
            snippets: SnippetMode::Off,
        });
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            message: one_line(&rendered),
        }
    }
}

/// The position goes in front of the message (`file:line:column:`), so the parser must not
/// also append its own `at line X, column Y`.
struct NoPosition;

impl Localizer for NoPosition {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _location: Location) -> Cow<'a, str> {
        base
    }

    fn alias_used_at(&self, _used: Location) -> String {
        String::new()
    }
}

/// serde's own wording for the common mistakes (with the valid names in backticks), and
/// none of the parser's hints aimed at Rust developers (`set DuplicateKeyPolicy`, ...).
struct KilnMessages;

impl MessageFormatter for KilnMessages {
    fn localizer(&self) -> &dyn Localizer {
        &NoPosition
    }

    fn format_message<'a>(&self, error: &'a serde_saphyr::Error) -> Cow<'a, str> {
        use serde_saphyr::Error as E;
        match error {
            E::SerdeUnknownField {
                field, expected, ..
            } => Cow::Owned(format!(
                "unknown field `{field}`, {}",
                one_of(expected, "there are no fields")
            )),
            E::SerdeUnknownVariant {
                variant, expected, ..
            } => Cow::Owned(format!(
                "unknown variant `{variant}`, {}",
                one_of(expected, "there are no variants")
            )),
            E::SerdeMissingField { field, .. } => Cow::Owned(format!("missing field `{field}`")),
            E::DuplicateMappingKey { key: Some(key), .. } => {
                Cow::Owned(format!("duplicate key `{key}`"))
            }
            E::DuplicateMappingKey { key: None, .. } => Cow::Borrowed("duplicate key"),
            E::MultipleDocuments { .. } => {
                Cow::Borrowed("more than one YAML document (`---`), expected exactly one")
            }
            E::InvalidScalar { ty, .. } => Cow::Owned(format!("expected {}", scalar_name(ty))),
            E::Unexpected {
                expected: "mapping start",
                ..
            } => Cow::Borrowed("expected a mapping (`key: value` lines)"),
            E::Unexpected {
                expected: "sequence start",
                ..
            } => Cow::Borrowed("expected a list"),
            other => DefaultMessageFormatter.format_message(other),
        }
    }
}

/// A Rust type name (`u32`) in the words of someone writing YAML.
fn scalar_name(ty: &str) -> &str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" => "`true` or `false`",
        other => other,
    }
}

/// serde's `expected one of `a`, `b`` list.
fn one_of(names: &[&str], none: &str) -> String {
    match names {
        [] => none.to_owned(),
        [only] => format!("expected `{only}`"),
        _ => {
            let listed: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
            format!("expected one of {}", listed.join(", "))
        }
    }
}

/// Collapses whitespace runs (newlines included) to single spaces and lowercases a leading
/// capital, so every message fits kiln's one-line, lowercase error convention.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = joined.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && !second.is_uppercase() => {
            first.to_lowercase().chain([second]).chain(chars).collect()
        }
        _ => joined,
    }
}

/// True when the text holds no YAML document at all (blank, or comments only), which kiln
/// reads as "all defaults".
pub(crate) fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#')
    })
}

/// Parses one YAML document strictly: duplicate keys refused, YAML 1.2 booleans only (so
/// `no` stays a string and `on:` is not `true:`), and untyped values with leading zeros
/// (`0755`, a zip code) kept as the strings they were written as.
pub(crate) fn parse_yaml<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(text, options)
        .map_err(|error| ConfigError::from_yaml(file, &error))
}

/// Like [`parse_yaml`], but a blank or comment-only file gives `T::default()`.
pub(crate) fn parse_yaml_or_default<T: DeserializeOwned + Default>(
    text: &str,
    file: &Path,
) -> Result<T, ConfigError> {
    if is_blank(text) {
        return Ok(T::default());
    }
    parse_yaml(text, file)
}

/// Reads a file to parse. Errors name the file; a missing file is reported as `None` so the
/// caller decides whether absence means defaults or a problem.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(ConfigError::whole_file(
            path,
            format!("cannot read: {}", one_line(&error.to_string())),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_file_then_position_then_message() {
        let cases = [
            (Some(3), Some(5), "kiln.yml:3:5: bad"),
            (Some(3), None, "kiln.yml:3: bad"),
            (None, None, "kiln.yml: bad"),
        ];
        for (line, column, expected) in cases {
            let error = ConfigError {
                file: "kiln.yml".into(),
                line,
                column,
                message: "bad".into(),
            };
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn messages_are_one_lowercase_line() {
        let cases = [
            ("Unclosed quote\n  at: x", "unclosed quote at: x"),
            ("YAML is\tbroken", "YAML is broken"),
            ("fine", "fine"),
            ("", ""),
        ];
        for (text, expected) in cases {
            assert_eq!(one_line(text), expected);
        }
    }

    #[test]
    fn blank_means_no_document() {
        let cases = [
            ("", true),
            ("\n  \n", true),
            ("# only\n   # comments\n", true),
            ("---\n", false),
            ("a: 1 # comment\n", false),
        ];
        for (text, expected) in cases {
            assert_eq!(is_blank(text), expected, "{text:?}");
        }
    }

    #[test]
    fn untyped_values_keep_yaml_1_2_meaning() {
        let value: serde_json::Value = parse_yaml(
            "a: yes\nb: 1.5\nc: 0755\nd: ~\ne:\nf: 2024-01-01\ng: true\n",
            Path::new("pillar.yml"),
        )
        .expect("parses");
        assert_eq!(
            value,
            serde_json::json!({"a": "yes", "b": 1.5, "c": "0755", "d": null, "e": null,
                "f": "2024-01-01", "g": true})
        );
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_optional(&dir.path().join("missing.yml")), Ok(None));
        let error = read_optional(dir.path()).expect_err("a directory is not readable as text");
        assert_eq!(error.file, dir.path());
        assert!(error.message.starts_with("cannot read: "), "{error}");
    }
}
