//! `canopy check-config` on the mistakes a newcomer makes: the real binary
//! names the file, line and column and says the fix.

use std::path::Path;
use std::process::Command;

const GOOD: &str = r#"[proxy]
listen = "127.0.0.1:8080"

[releases]
address-template = "app-{service}--{release}"

[[service]]
name = "server"
port = 3000
routes = ["/"]
checks = [{ kind = "http", path = "/health", expect-status = 200 }]
"#;

/// `check-config` on `text`: (success, stderr).
fn check_config(dir: &Path, text: &str) -> (bool, String) {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_canopy")).args(["check-config", "-c"]).arg(&path).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_config_says_the_fix_for_common_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml").display().to_string();
    assert_eq!(check_config(dir.path(), GOOD), (true, String::new()));
    for (mistake, text, (line, column), message) in [
        (
            "underscore for dash",
            GOOD.replace("listen = ", "listen_tls = "),
            (2, 1),
            "unknown field `listen_tls` (did you mean `listen-tls`?), expected one of `listen`, `listen-tls`",
        ),
        (
            "underscore in a check",
            GOOD.replace("expect-status", "expect_status"),
            (11, 46),
            "unknown field `expect_status` (did you mean `expect-status`?)",
        ),
        (
            "plural",
            GOOD.replace("[releases]\n", "[releases]\nvalidation-windows = \"5m\"\n"),
            (5, 1),
            "unknown field `validation-windows` (did you mean `validation-window`?)",
        ),
        (
            "[release] for [releases]",
            GOOD.replace("[releases]", "[release]"),
            (4, 1),
            "invalid type: map, expected a sequence: the release settings (address-template, initial, ...) \
             are the section `[releases]`; `[[release]]` (double brackets) adds one seed release, registered on first start",
        ),
        (
            "[service] for [[service]]",
            GOOD.replace("[[service]]", "[service]"),
            (7, 1),
            "invalid type: map, expected a sequence: `service` is a list of tables, write `[[service]]`",
        ),
    ] {
        let (ok, err) = check_config(dir.path(), &text);
        assert!(!ok, "{mistake}: accepted");
        assert!(err.starts_with(&format!("error: {file}:{line}:{column}: {message}")), "{mistake}:\n{err}");
        // the line, with a caret under the column
        let source = text.lines().nth(line - 1).unwrap();
        let pad = " ".repeat(line.to_string().len());
        let caret = format!("{line} | {source}\n{pad} | {}^", " ".repeat(column - 1));
        assert!(err.contains(&caret), "{mistake}: no caret at {line}:{column}:\n{err}");
    }
}
