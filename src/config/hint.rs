//! Hints that say the fix for the commonest mistakes in proxy.toml: a key
//! or value close to a known one ("did you mean `listen-tls`?"), and a table
//! written with the wrong number of brackets (`[release]` for `[releases]`,
//! `[service]` for `[[service]]`).

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown
/// variant"), taken apart: the names the table or enum does take come from
/// the parser itself (serde lists every field of the `File*` type).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unknown<'a> {
    /// `field` or `variant`.
    pub what: &'a str,
    /// What was written.
    pub name: &'a str,
    /// What would have been accepted.
    pub expected: Vec<&'a str>,
}

impl<'a> Unknown<'a> {
    /// Reads serde's message (`expected `a``, `expected `a` or `b``,
    /// `expected one of `a`, `b`, ...`, `there are no fields`).
    pub fn parse(message: &'a str) -> Option<Self> {
        let rest = message.strip_prefix("unknown ")?;
        let (what, rest) = rest.split_once(" `")?;
        if what != "field" && what != "variant" {
            return None;
        }
        let (name, rest) = rest.split_once('`')?;
        let expected = if rest.starts_with(", there are no") {
            Vec::new()
        } else {
            let list = rest.strip_prefix(", expected ")?;
            list.split('`').skip(1).step_by(2).collect()
        };
        Some(Self { what, name, expected })
    }

    /// The accepted name `name` was most likely meant to be: the same but for
    /// case and `_`/`-`, else the closest within a few edits.
    pub fn suggestion(&self) -> Option<&'a str> {
        let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
        let written = norm(self.name);
        if let Some(same) = self.expected.iter().find(|e| norm(e) == written) {
            return Some(same);
        }
        let limit = (written.chars().count() / 3).clamp(1, 3);
        self.expected
            .iter()
            .map(|e| (distance(&written, &norm(e)), *e))
            .filter(|(d, _)| *d <= limit)
            .min_by_key(|(d, _)| *d)
            .map(|(_, e)| e)
    }
}

/// The parser's `message` for the text at its span (`at`), with the fix
/// added where a common mistake is recognised; otherwise unchanged.
pub(super) fn explain(message: &str, at: &str) -> String {
    if let Some(unknown) = Unknown::parse(message) {
        if let Some(fix) = unknown.suggestion() {
            let written = format!("unknown {} `{}`", unknown.what, unknown.name);
            return message.replacen(&written, &format!("{written} (did you mean `{fix}`?)"), 1);
        }
        return message.to_string();
    }
    let header = at.trim();
    if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
        if message.starts_with("invalid type: map") {
            return format!("{message}: `{name}` is a single table, write `[{name}]` (single brackets)");
        }
    } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if message == "invalid type: map, expected a sequence" {
            if name.trim() == "release" {
                return format!(
                    "{message}: the release settings (address-template, initial, ...) are the section `[releases]`; \
                     `[[release]]` (double brackets) adds one seed release, registered on first start"
                );
            }
            return format!("{message}: `{name}` is a list of tables, write `[[{name}]]` (double brackets) for each entry");
        }
    }
    message.to_string()
}

/// Edits (insert, delete, replace, swap two neighbours) from `a` to `b`.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_form_of_serdes_message() {
        let one = Unknown::parse("unknown field `zz`, expected `kind`").unwrap();
        assert_eq!((one.what, one.name, one.expected), ("field", "zz", vec!["kind"]));
        let two = Unknown::parse("unknown variant `htp`, expected `http` or `graphql`").unwrap();
        assert_eq!((two.what, two.expected), ("variant", vec!["http", "graphql"]));
        let many = Unknown::parse("unknown field `x`, expected one of `listen`, `listen-tls`, `h2c`").unwrap();
        assert_eq!(many.expected, ["listen", "listen-tls", "h2c"]);
        assert_eq!(Unknown::parse("unknown field `x`, there are no fields").unwrap().expected, Vec::<&str>::new());
        assert_eq!(Unknown::parse("invalid type: map, expected a sequence"), None);
    }

    #[test]
    fn suggests_the_close_name_only() {
        fn s(name: &'static str, expected: &[&'static str]) -> Option<&'static str> {
            Unknown { what: "field", name, expected: expected.to_vec() }.suggestion()
        }
        let proxy = ["listen", "listen-tls", "h2c", "threads", "work-stealing", "metrics"];
        assert_eq!(s("listen_tls", &proxy), Some("listen-tls"));
        assert_eq!(s("Listen-TLS", &proxy), Some("listen-tls"));
        assert_eq!(s("work_steal", &proxy), Some("work-stealing"));
        assert_eq!(s("upstream", &proxy), None);
        assert_eq!(s("threadz", &proxy), Some("threads"));
        assert_eq!(s("metric", &proxy), Some("metrics"));
        assert_eq!(s("h2", &proxy), Some("h2c"));
        assert_eq!(s("listen-backlog", &proxy), None);
        assert_eq!(s("expect_status", &["kind", "path", "expect-status", "expect-body"]), Some("expect-status"));
        assert_eq!(s("validation-windows", &["validation-window", "preview"]), Some("validation-window"));
        assert_eq!(s("prot", &["name", "port", "routes"]), Some("port"), "a swap is one edit");
        assert_eq!(s("x", &[]), None);
    }

    #[test]
    fn tables_with_the_wrong_brackets_say_which_to_write() {
        let e = explain("invalid type: map, expected a sequence", "[release]");
        assert!(e.starts_with("invalid type: map, expected a sequence: the release settings"), "{e}");
        assert!(e.contains("`[releases]`") && e.contains("`[[release]]`"), "{e}");
        let e = explain("invalid type: map, expected a sequence", "[service]");
        assert!(e.ends_with("`service` is a list of tables, write `[[service]]` (double brackets) for each entry"), "{e}");
        let e = explain("invalid type: map, expected a string", "[[releases]]");
        assert!(e.ends_with("`releases` is a single table, write `[releases]` (single brackets)"), "{e}");
        // anything else stays as the parser said it
        assert_eq!(explain("invalid type: integer `1`, expected a sequence", "1"), "invalid type: integer `1`, expected a sequence");
        assert_eq!(explain("missing field `port`", "[[service]]"), "missing field `port`");
    }
}
