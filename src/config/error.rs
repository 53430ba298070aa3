//! What a refused config says: [`ConfigError`], the file:line:column
//! [`Located`] message with its caret, and the context every section's
//! conversion reports through.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::hint;

/// A config that cannot be used; says where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or shape error (unknown key, wrong type, bad value).
    #[error("{}", .at)]
    Parse {
        /// Where, with the message (and a "did you mean" where one fits).
        at: Located,
        /// The parser's error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value that parses but breaks a rule (duplicate service, ...).
    #[error("{0}")]
    Invalid(Box<Located>),
}

impl ConfigError {
    /// A TOML error of `text`, located, with the hint that says the fix where
    /// one is known (a misspelt key, `[release]` written for `[releases]`, ...).
    pub(super) fn parse(path: &Path, text: &str, source: toml::de::Error) -> Self {
        let span = source.span();
        let at_text = span.clone().and_then(|s| text.get(s)).unwrap_or("");
        let message = hint::explain(source.message(), at_text);
        ConfigError::Parse { at: Located::new(path, text, span, message), source: Box::new(source) }
    }
}

/// A message pinned to a place in the config file, shown with the line and a caret.
#[derive(Debug)]
pub struct Located {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    source_line: String,
}

impl Located {
    fn new(path: &Path, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        let start = span.map_or(0, |s| s.start).min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..start].chars().count() + 1;
        let source_line = text[line_start..].lines().next().unwrap_or("").to_string();
        Self { path: path.to_path_buf(), line, column, message, source_line }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.line.to_string();
        let pad = " ".repeat(n.len());
        writeln!(f, "{}:{}:{}: {}", self.path.display(), self.line, self.column, self.message.trim_end())?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{n} | {}", self.source_line)?;
        write!(f, "{pad} | {}^", " ".repeat(self.column.saturating_sub(1)))
    }
}

/// The file being converted: every rule reports through it.
pub(super) struct Ctx<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Ctx<'_> {
    /// A rule broken by the value at `span`.
    pub fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(Box::new(Located::new(self.path, self.text, Some(span), message.into())))
    }

    /// `p` relative to the config file's directory (absolute paths as they are).
    pub fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}
