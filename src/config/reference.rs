//! docs/configuration.md kept honest against the parser. The keys each table
//! accepts come from the parser itself: every table of a full config is fed
//! an unknown key, and serde's refusal lists what that `File*` type takes
//! ("unknown field `zzz-unknown`, expected one of ..."). The document must
//! list exactly those keys; each literal default it states must parse to
//! what the parser does without the key; and each reload class it states
//! must be the one the typed diff ([`Fixed::changes`], [`Reloadable::changes`])
//! reports when the key's value changes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::check::FileCheckKind;
use super::hint::Unknown;
use super::{parse, Config, ConfigError};

const DOC: &str = include_str!("../../docs/configuration.md");

/// A config with every table, each with only its required keys (plus what
/// another table needs), and a marker `@{name}` where one more key of that
/// table can be written: on its own line for a table, before the closing
/// brace for an inline table. `CERT` and `KEY` are replaced by real files.
const BASE: &str = r#"@{root}
[proxy]
listen = "127.0.0.1:8080"
listen-tls = "127.0.0.1:8443"
@{proxy}

[admin]
@{admin}

[releases]
address-template = "app-{service}--{release}"
@{releases}

[releases.guard]
@{releases-guard}

[releases.canary]
@{releases-canary}

[[release]]
name = "juniper"
backends = { server = ["127.0.0.1:3000"] }
@{release}

[docker]
network = "shop"
@{docker}

[cluster]
etcd = ["http://127.0.0.1:2379"]
node = "web-1"
@{cluster}

[[service]]
name = "server"
port = 3000
routes = ["/"]
image = "ghcr.io/acme/server"
checks = [{ kind = "http", path = "/health"@{check} }, { kind = "smoke", requests = [{ path = "/"@{smoke-request} }] }]
@{service}

[service.container]
healthcheck = { test = ["/bin/probe"]@{healthcheck} }
@{container}

[tls]
@{tls}

[[tls.certificate]]
cert = "CERT"
key = "KEY"
@{tls-certificate}

[tls.acme]
directory = "https://acme.example/directory"
names = ["shop.example"]
@{tls-acme}
"#;

/// One table of the file: its section in the document, whether it is
/// written inline, and the key of the parent table that holds it.
struct Table {
    section: &'static str,
    inline: bool,
    parent: Option<(&'static str, &'static str)>,
}

/// Where [`BASE`] has a marker: every table the parser has. A new table
/// in the parser shows up as an undocumented key of its parent, whose row
/// (type `table` or `list of tables`) then needs an entry here.
const TABLES: &[Table] = &[
    Table { section: "root", inline: false, parent: None },
    Table { section: "proxy", inline: false, parent: Some(("root", "proxy")) },
    Table { section: "admin", inline: false, parent: Some(("root", "admin")) },
    Table { section: "releases", inline: false, parent: Some(("root", "releases")) },
    Table { section: "releases-guard", inline: false, parent: Some(("releases", "guard")) },
    Table { section: "releases-canary", inline: false, parent: Some(("releases", "canary")) },
    Table { section: "release", inline: false, parent: Some(("root", "release")) },
    Table { section: "service", inline: false, parent: Some(("root", "service")) },
    Table { section: "check", inline: true, parent: Some(("service", "checks")) },
    Table { section: "smoke-request", inline: true, parent: Some(("check", "requests")) },
    Table { section: "container", inline: false, parent: Some(("service", "container")) },
    Table { section: "healthcheck", inline: true, parent: Some(("container", "healthcheck")) },
    Table { section: "docker", inline: false, parent: Some(("root", "docker")) },
    Table { section: "cluster", inline: false, parent: Some(("root", "cluster")) },
    Table { section: "tls", inline: false, parent: Some(("root", "tls")) },
    Table { section: "tls-certificate", inline: false, parent: Some(("tls", "certificate")) },
    Table { section: "tls-acme", inline: false, parent: Some(("tls", "acme")) },
];

/// One documented key.
#[derive(Debug)]
struct Row {
    key: String,
    ty: String,
    default: String,
    reload: String,
}

/// The rows of every `<!-- keys: section -->` table of the document.
fn documented() -> BTreeMap<String, Vec<Row>> {
    let mut sections = BTreeMap::new();
    for (section, rows) in marked_tables("<!-- keys: ") {
        let rows = rows
            .into_iter()
            .map(|cells| {
                assert_eq!(cells.len(), 5, "docs/configuration.md [{section}]: a row needs 5 cells: {cells:?}");
                let key = cells[0].trim_matches('`').to_string();
                Row { key, ty: cells[1].clone(), default: cells[2].clone(), reload: cells[3].clone() }
            })
            .collect();
        assert!(sections.insert(section.clone(), rows).is_none(), "docs/configuration.md has two tables for [{section}]");
    }
    sections
}

/// The body rows (cells trimmed) of each table after a line starting with
/// `marker`, by the rest of that line up to `-->`.
fn marked_tables(marker: &str) -> Vec<(String, Vec<Vec<String>>)> {
    let mut out = Vec::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(marker) else { continue };
        let name = rest.trim_end().trim_end_matches("-->").trim().to_string();
        let rows: Vec<Vec<String>> = lines
            .by_ref()
            .take_while(|l| l.starts_with('|'))
            .skip(2) // header and separator
            .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
            .collect();
        out.push((name, rows));
    }
    out
}

/// [`BASE`] with real certificate files, written into a temp dir.
struct Base {
    dir: tempfile::TempDir,
    text: String,
}

impl Base {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["shop.example".to_string()]).unwrap();
        std::fs::write(dir.path().join("shop.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.path().join("shop.key"), c.signing_key.serialize_pem()).unwrap();
        let text = BASE.replace("CERT", "shop.pem").replace("KEY", "shop.key");
        Self { dir, text }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// The text with `key = value` written into `table` (no other marker left).
    fn with(&self, table: &Table, key_value: &str) -> String {
        let insert = if table.inline { format!(", {key_value}") } else { key_value.to_string() };
        let mut text = self.text.replace(&format!("@{{{}}}", table.section), &insert);
        for t in TABLES {
            text = text.replace(&format!("@{{{}}}", t.section), "");
        }
        text
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        parse(&self.path(), text)
    }

    /// The keys `table` takes, as the parser lists them refusing another.
    fn accepted(&self, table: &Table) -> BTreeSet<String> {
        let text = self.with(table, "zzz-unknown = 1");
        let Err(ConfigError::Parse { source, .. }) = self.parse(&text) else {
            panic!("[{}]: an unknown key was not refused by the parser", table.section)
        };
        let unknown = Unknown::parse(source.message()).unwrap_or_else(|| panic!("[{}]: not serde's list: {source}", table.section));
        assert_eq!(unknown.name, "zzz-unknown", "[{}]: refused something else: {source}", table.section);
        unknown.expected.into_iter().map(String::from).collect()
    }
}

/// The document's sections against the tables of [`BASE`], and each
/// section's keys against the parser's.
#[test]
fn every_key_the_parser_accepts_is_documented_and_no_other() {
    let doc = documented();
    let base = Base::new();
    base.parse(&base.with(&TABLES[0], "")).expect("the base config is valid");
    let probed: BTreeSet<&str> = TABLES.iter().map(|t| t.section).collect();
    let sections: BTreeSet<&str> = doc.keys().map(String::as_str).collect();
    assert_eq!(sections, probed, "docs/configuration.md's `<!-- keys: -->` tables and the tables this test probes differ");
    let mut problems = Vec::new();
    let mut keys = 0;
    for table in TABLES {
        let accepted = base.accepted(table);
        let listed: BTreeSet<String> = doc[table.section].iter().map(|r| r.key.clone()).collect();
        for missing in accepted.difference(&listed) {
            problems.push(format!("[{}] `{missing}`: the parser accepts it, docs/configuration.md does not list it", table.section));
        }
        for extra in listed.difference(&accepted) {
            problems.push(format!("[{}] `{extra}`: docs/configuration.md lists it, the parser refuses it", table.section));
        }
        keys += accepted.len();
        if let Some((parent, key)) = table.parent {
            let row = doc[parent].iter().find(|r| r.key == key);
            if !row.is_some_and(|r| r.ty == "table" || r.ty == "list of tables") {
                problems.push(format!("[{parent}] `{key}` should be documented as a `table` or `list of tables`: {row:?}"));
            }
        }
    }
    for (section, rows) in &doc {
        for row in rows.iter().filter(|r| r.ty == "table" || r.ty == "list of tables") {
            if !TABLES.iter().any(|t| t.parent == Some((section.as_str(), row.key.as_str()))) {
                problems.push(format!("[{section}] `{}` is a table: give it a marker in BASE and an entry in TABLES", row.key));
            }
        }
        for row in rows {
            let class_ok = ["live", "upgrade", "first start"].contains(&row.reload.as_str()) || section == "root";
            if !class_ok {
                problems.push(format!("[{section}] `{}`: reload class `{}` is not live, upgrade or first start", row.key, row.reload));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(keys > 80, "only {keys} keys probed");
}

/// The check kinds and the fields each takes, as the parser has them.
#[test]
fn every_check_kind_is_documented_with_its_fields() {
    let base = Base::new();
    let text = base.with(&TABLES[0], "").replace("kind = \"http\"", "kind = \"zzz-unknown\"");
    let Err(ConfigError::Parse { source, .. }) = base.parse(&text) else { panic!("an unknown check kind was not refused") };
    let variants = Unknown::parse(source.message()).expect("serde's list of variants").expected;
    let tables = marked_tables("<!-- kinds");
    let [(_, rows)] = tables.as_slice() else { panic!("docs/configuration.md needs one `<!-- kinds -->` table") };
    let documented: Vec<&str> = rows.iter().map(|r| r[0].trim_matches('`')).collect();
    assert_eq!(documented, variants, "check kinds in docs/configuration.md");
    for row in rows {
        let name = row[0].trim_matches('`');
        let kind = FileCheckKind::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(name)).unwrap();
        let fields: Vec<&str> = row[1].split(", ").map(|f| f.trim_matches('`')).collect();
        assert_eq!(fields, kind.fields(), "fields of {name} checks in docs/configuration.md");
    }
}

/// A default written as a TOML value (`"30s"`, `true`, `2`, `[]`), not prose.
fn literal(default: &str) -> Option<&str> {
    let v = default.strip_prefix('`')?.strip_suffix('`')?;
    let first = v.chars().next()?;
    (first == '"' || first == '[' || first == '{' || first == '-' || first.is_ascii_digit() || v == "true" || v == "false").then_some(v)
}

/// Whether the parser refused `text` because the base already sets the key.
fn set_by_base(result: &Result<Config, ConfigError>) -> bool {
    matches!(result, Err(ConfigError::Parse { source, .. }) if source.message().contains("duplicate key"))
}

/// Writing each documented default changes nothing the parser produces.
#[test]
fn documented_defaults_are_the_parsers() {
    let doc = documented();
    let base = Base::new();
    let plain = base.parse(&base.with(&TABLES[0], "")).unwrap();
    let (mut checked, mut problems) = (Vec::new(), Vec::new());
    for table in TABLES {
        for row in &doc[table.section] {
            let Some(value) = literal(&row.default) else { continue };
            let result = base.parse(&base.with(table, &format!("{} = {value}", row.key)));
            if set_by_base(&result) {
                continue;
            }
            let with =
                result.unwrap_or_else(|e| panic!("[{}] `{} = {value}` (the documented default) is refused:\n{e}", table.section, row.key));
            if (&with.fixed, &with.live) != (&plain.fixed, &plain.live) {
                problems.push(format!(
                    "[{}] `{}`: the documented default {value} is not the parser's (differs in {:?} {:?})",
                    table.section,
                    row.key,
                    plain.fixed.changes(&with.fixed),
                    plain.live.changes(&with.live)
                ));
            }
            checked.push(format!("{}.{}", table.section, row.key));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked.len() >= 35, "only {} defaults checked: {checked:?}", checked.len());
}

/// Another value than `default` for a key of type `ty` (None: not varied here).
fn other_value(ty: &str, default: &str) -> Option<String> {
    let default = literal(default);
    Some(match ty {
        "duration" => if default == Some("\"7s\"") { "\"8s\"" } else { "\"7s\"" }.to_string(),
        "bool" => (default != Some("true")).to_string(),
        "integer" => default.and_then(|d| d.parse::<i64>().ok()).map_or(1023, |d| d + 1).to_string(),
        // a ratio stays a ratio (halved), anything else grows by one
        "float" => default.and_then(|d| d.parse::<f64>().ok()).map_or(1.5, |d| if d < 1.0 { d / 2.0 } else { d + 1.0 }).to_string(),
        "release name" => "\"oak\"".to_string(),
        _ => return None,
    })
}

/// Changing a key to another value is reported by the typed diff in the
/// reload class the document states.
#[test]
fn documented_reload_classes_are_the_typed_diffs() {
    let doc = documented();
    let base = Base::new();
    let plain = base.parse(&base.with(&TABLES[0], "")).unwrap();
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for table in TABLES {
        for row in &doc[table.section] {
            let Some(value) = other_value(&row.ty, &row.default) else { continue };
            let result = base.parse(&base.with(table, &format!("{} = {value}", row.key)));
            if set_by_base(&result) {
                continue;
            }
            let new = result.unwrap_or_else(|e| panic!("[{}] `{} = {value}` is refused:\n{e}", table.section, row.key));
            let (fixed, live) = (plain.fixed.changes(&new.fixed), plain.live.changes(&new.live));
            let class = match (fixed.is_empty(), live.is_empty()) {
                (true, false) => "live",
                (false, true) => "upgrade",
                // the seed has no PartialEq (it is never compared but here)
                (true, true) if format!("{:?}", plain.seed) != format!("{:?}", new.seed) => "first start",
                (true, true) => "no change at all",
                (false, false) => "both",
            };
            if class != row.reload {
                problems.push(format!(
                    "[{}] `{} = {value}`: documented {}, the reload diff says {class} (upgrade: {fixed:?}, live: {live:?})",
                    table.section, row.key, row.reload
                ));
            }
            checked.push(format!("{}.{}", table.section, row.key));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked.len() >= 35, "only {} reload classes checked: {checked:?}", checked.len());
}
