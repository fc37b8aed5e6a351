//! Keeps pillar secrets out of everything kiln prints or logs (README.md, "Pillar: private settings"): stage output
//! passes through a [`Redactor`] before it reaches the pusher or a log file.
//!
//! Masking is conservative: when occurrences of secrets overlap, the union of them is masked
//! as one `********`, so no fragment of any secret survives (with secrets `abc` and `bcdef`,
//! `abcdef` becomes `********`, not `********def`). The longest secret starting at a position
//! always wins over a shorter one starting there.

use std::borrow::Cow;
use std::io::{self, Write};

/// What every occurrence of a secret is replaced with.
pub const MASK: &[u8] = b"********";

/// Lines of a multi-line secret shorter than this are not masked on their own: a `}` or `--`
/// line of a JSON document or a PEM key hides nothing, and masking it would garble unrelated
/// output. The secret as a whole is still masked.
const MIN_SECRET_LINE: usize = 4;

/// Replaces every occurrence of a set of secrets with [`MASK`].
#[derive(Clone, Debug)]
pub struct Redactor {
    /// Non-empty, deduplicated, longest first, so that the first match is the longest.
    secrets: Vec<Vec<u8>>,
    /// `starts[b]`: some secret starts with byte `b`. Lets most positions be skipped at once.
    starts: [bool; 256],
    max_len: usize,
}

impl Default for Redactor {
    /// A redactor with no secrets: a passthrough.
    fn default() -> Self {
        Redactor::new(&[])
    }
}

/// Where a streaming redaction left off: how many of the bytes not yet consumed belong to a
/// masked run whose mask has already been written. Zero when no run is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Carry {
    covered: usize,
}

impl Redactor {
    /// A redactor for `secrets`. Empty strings are ignored; with no secrets left, redaction is a
    /// cheap passthrough. A secret spanning several lines is also masked line by line (each line
    /// of at least four characters, trimmed), because line-oriented output such as stage output
    /// is redacted one line at a time and would otherwise show it whole.
    pub fn new(secrets: &[String]) -> Self {
        let mut list: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            if secret.is_empty() {
                continue;
            }
            list.push(secret.as_bytes().to_vec());
            if secret.contains('\n') {
                list.extend(
                    secret
                        .lines()
                        .map(str::trim)
                        .filter(|line| line.len() >= MIN_SECRET_LINE)
                        .map(|line| line.as_bytes().to_vec()),
                );
            }
        }
        list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        list.dedup();
        let mut starts = [false; 256];
        for secret in &list {
            starts[usize::from(secret[0])] = true;
        }
        let max_len = list.first().map_or(0, Vec::len);
        Redactor {
            secrets: list,
            starts,
            max_len,
        }
    }

    /// True when there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The length of the longest secret, in bytes (0 when there is none).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// `text` with every occurrence of a secret replaced by [`MASK`]. Borrows `text` when it
    /// holds no secret.
    pub fn redact<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        if self.is_empty() {
            return Cow::Borrowed(text);
        }
        let Some(first) = (0..text.len()).find(|&i| self.match_at(&text[i..]).is_some()) else {
            return Cow::Borrowed(text);
        };
        let mut out = Vec::with_capacity(text.len());
        out.extend_from_slice(&text[..first]);
        self.redact_into(&text[first..], Carry::default(), true, &mut out);
        Cow::Owned(out)
    }

    /// Redacts `text` into `out`, continuing a stream from `carry`. Unless `eof`, stops before
    /// a tail that could still grow into a (longer) secret with the bytes that follow; that tail
    /// is at most `max_len() - 1` bytes. Returns how many bytes of `text` were consumed and the
    /// carry to pass, with the unconsumed bytes and what follows them, to the next call.
    pub(crate) fn redact_into(
        &self,
        text: &[u8],
        carry: Carry,
        eof: bool,
        out: &mut Vec<u8>,
    ) -> (usize, Carry) {
        // text[..copied] has been written to `out` (or masked); a run is open while
        // `i < cover_end`, and its mask is written when it opens.
        let mut copied = 0;
        let mut cover_end = carry.covered;
        let mut i = 0;
        loop {
            if cover_end > 0 && i == cover_end {
                copied = cover_end;
                cover_end = 0;
            }
            if i == text.len() {
                break;
            }
            let rest = &text[i..];
            if !eof && rest.len() < self.max_len && self.could_grow(rest) {
                if cover_end > 0 {
                    return (
                        i,
                        Carry {
                            covered: cover_end - i,
                        },
                    );
                }
                out.extend_from_slice(&text[copied..i]);
                return (i, Carry::default());
            }
            if let Some(len) = self.match_at(rest) {
                if cover_end > 0 {
                    cover_end = cover_end.max(i + len);
                } else {
                    out.extend_from_slice(&text[copied..i]);
                    out.extend_from_slice(MASK);
                    cover_end = i + len;
                }
            }
            i += 1;
        }
        // Every run ends within `text`, so none is open here.
        out.extend_from_slice(&text[copied..]);
        (text.len(), Carry::default())
    }

    /// The length of the longest secret that `rest` starts with.
    fn match_at(&self, rest: &[u8]) -> Option<usize> {
        let first = *rest.first()?;
        if !self.starts[usize::from(first)] {
            return None;
        }
        self.secrets
            .iter()
            .find(|secret| rest.starts_with(secret))
            .map(Vec::len)
    }

    /// Whether `rest` is the beginning of a secret longer than itself.
    fn could_grow(&self, rest: &[u8]) -> bool {
        self.secrets
            .iter()
            .take_while(|secret| secret.len() > rest.len())
            .any(|secret| secret.starts_with(rest))
    }
}

/// A [`Write`] adapter that redacts a byte stream on its way to `W`, including a secret split
/// across two `write` calls. It holds back at most `max_len() - 1` bytes that could be the
/// start of a secret. [`flush`](Write::flush) and [`finish`](RedactingWriter::finish) write
/// those out as they are, so a secret split across a `flush` is not recognised: flush only at
/// natural boundaries. Dropping the writer writes them too, ignoring errors.
pub struct RedactingWriter<W: Write> {
    /// `None` only after `finish` moved it out.
    inner: Option<W>,
    redactor: Redactor,
    pending: Vec<u8>,
    carry: Carry,
}

impl<W: Write> RedactingWriter<W> {
    pub fn new(inner: W, redactor: Redactor) -> Self {
        RedactingWriter {
            inner: Some(inner),
            redactor,
            pending: Vec::new(),
            carry: Carry::default(),
        }
    }

    /// Writes what was held back, flushes, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit_rest()?;
        let mut inner = self.inner.take().ok_or_else(finished)?;
        inner.flush()?;
        Ok(inner)
    }

    fn emit_rest(&mut self) -> io::Result<()> {
        let inner = self.inner.as_mut().ok_or_else(finished)?;
        if self.pending.is_empty() {
            self.carry = Carry::default();
            return Ok(());
        }
        let mut out = Vec::with_capacity(self.pending.len());
        self.redactor
            .redact_into(&self.pending, self.carry, true, &mut out);
        inner.write_all(&out)?;
        self.pending.clear();
        self.carry = Carry::default();
        Ok(())
    }
}

fn finished() -> io::Error {
    io::Error::other("redacting writer already finished")
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let inner = self.inner.as_mut().ok_or_else(finished)?;
        if self.redactor.is_empty() {
            return inner.write(buf);
        }
        let before = self.pending.len();
        self.pending.extend_from_slice(buf);
        let mut out = Vec::with_capacity(self.pending.len());
        let (used, carry) = self
            .redactor
            .redact_into(&self.pending, self.carry, false, &mut out);
        if let Err(err) = inner.write_all(&out) {
            // Leave the state as it was, so that `buf` can be written again.
            self.pending.truncate(before);
            return Err(err);
        }
        self.pending.drain(..used);
        self.carry = carry;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit_rest()?;
        self.inner.as_mut().ok_or_else(finished)?.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        if self.inner.is_some() {
            // Like BufWriter: errors on drop have nowhere to go.
            let _ = self.emit_rest();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn redactor(secrets: &[&str]) -> Redactor {
        Redactor::new(&secrets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn redact_table() {
        let cases: &[(&[&str], &[u8], &[u8])] = &[
            (&[], b"password", b"password"),
            (&["hunter2"], b"", b""),
            (&["hunter2"], b"pw=hunter2.", b"pw=********."),
            (&["hunter2"], b"hunter2", b"********"),
            (
                &["hunter2"],
                b"hunter2 and hunter2",
                b"******** and ********",
            ),
            // Adjacent occurrences do not overlap: two masks.
            (&["ab"], b"abab", b"****************"),
            (&["hunter2"], b"hunter", b"hunter"),
            (&["", "x1y"], b"ax1yb", b"a********b"),
            // Longest match wins.
            (&["pass", "password"], b"my password!", b"my ********!"),
            (&["password", "pass"], b"my pass word", b"my ******** word"),
            // Overlapping occurrences are masked together, leaving no fragment.
            (&["abc", "bcdef"], b"xabcdefx", b"x********x"),
            (&["aba"], b"ababababa", b"********"),
            (&["aba"], b"abaaba", b"****************"),
            // Non-UTF-8 bytes pass through untouched.
            (&["s3cr"], b"\xff\xfes3cr\x80", b"\xff\xfe********\x80"),
            (
                &["\u{e9}t\u{e9}"],
                "\u{e9}t\u{e9}!".as_bytes(),
                b"********!",
            ),
        ];
        for (secrets, text, want) in cases {
            let got = redactor(secrets).redact(text);
            assert_eq!(
                got.as_ref(),
                *want,
                "secrets {secrets:?} in {:?}: got {:?}",
                String::from_utf8_lossy(text),
                String::from_utf8_lossy(&got)
            );
        }
    }

    #[test]
    fn redact_borrows_when_nothing_matches() {
        assert!(matches!(redactor(&[]).redact(b"abc"), Cow::Borrowed(_)));
        assert!(matches!(redactor(&["zz"]).redact(b"abc"), Cow::Borrowed(_)));
        assert!(matches!(redactor(&["b"]).redact(b"abc"), Cow::Owned(_)));
    }

    #[test]
    fn multi_line_secret_is_masked_line_by_line() {
        let r = redactor(&["-----BEGIN KEY-----\n  MIIEpAIB\n}\n-----END KEY-----\n"]);
        assert_eq!(
            r.redact(b"key:   MIIEpAIB  ").as_ref(),
            b"key:   ********  "
        );
        assert_eq!(
            r.redact(b"{ }").as_ref(),
            b"{ }",
            "short lines are left alone"
        );
        let whole = b"x-----BEGIN KEY-----\n  MIIEpAIB\n}\n-----END KEY-----\ny";
        assert_eq!(r.redact(whole).as_ref(), b"x********y");
    }

    /// Writes `parts` one `write` call each through a RedactingWriter and returns the output.
    fn stream(r: &Redactor, parts: &[&[u8]]) -> Vec<u8> {
        let mut w = RedactingWriter::new(Vec::new(), r.clone());
        for part in parts {
            assert_eq!(w.write(part).unwrap(), part.len());
            assert!(
                w.pending.len() < r.max_len().max(1),
                "held back {} bytes",
                w.pending.len()
            );
        }
        w.finish().unwrap()
    }

    #[test]
    fn writer_catches_a_secret_split_at_every_point() {
        let secret_sets: &[&[&str]] = &[
            &["hunter2"],
            &["pass", "password"],
            &["abc", "bcdef"],
            &["aba"],
            &["s3", "s3cr3t-value"],
        ];
        let texts: &[&[u8]] = &[
            b"pw=hunter2; again hunter2",
            b"my password, my pass.",
            b"xabcdefx abc bcdef",
            b"ababababa!aba",
            b"s3cr3t-value s3cr3t-valu s3",
            b"",
        ];
        for secrets in secret_sets {
            let r = redactor(secrets);
            for text in texts {
                let want = r.redact(text).into_owned();
                for i in 0..=text.len() {
                    let got = stream(&r, &[&text[..i], &text[i..]]);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want),
                        "secrets {secrets:?}, split at {i}"
                    );
                    for j in i..=text.len() {
                        let got = stream(&r, &[&text[..i], &text[i..j], &text[j..]]);
                        assert_eq!(got, want, "secrets {secrets:?}, split at {i} and {j}");
                    }
                }
                let bytes: Vec<&[u8]> = text.chunks(1).collect();
                assert_eq!(
                    stream(&r, &bytes),
                    want,
                    "secrets {secrets:?}, byte by byte"
                );
            }
        }
    }

    #[test]
    fn writer_without_secrets_passes_through() {
        let mut w = RedactingWriter::new(Vec::new(), Redactor::new(&[]));
        w.write_all(b"plain \xff text").unwrap();
        assert!(w.pending.is_empty());
        assert_eq!(w.finish().unwrap(), b"plain \xff text");
    }

    #[test]
    fn writer_flush_and_drop_emit_what_was_held_back() {
        let r = redactor(&["hunter2"]);
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out, r.clone());
            w.write_all(b"a hunt").unwrap();
            assert_eq!(w.inner.as_deref().unwrap(), b"a ");
            w.flush().unwrap();
            assert_eq!(w.inner.as_deref().unwrap(), b"a hunt");
            w.write_all(b" hunter").unwrap();
        }
        assert_eq!(out, b"a hunt hunter");
    }

    #[test]
    fn writer_leaves_state_alone_when_the_inner_write_fails() {
        struct Failing;
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = RedactingWriter::new(Failing, redactor(&["hunter2"]));
        assert!(w.write(b"abc hun").is_err());
        assert!(w.pending.is_empty());
    }
}
