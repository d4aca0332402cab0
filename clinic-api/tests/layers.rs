//! The house's layers, checked from the sources: the platform names no domain (nor the app on
//! top), and no domain names the app. A violation names the file and line.

use std::path::{Path, PathBuf};

/// Module paths a layer may not name, found in code (comments are skipped).
fn violations(source: &str, forbidden: &[&str]) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        for name in forbidden {
            let needle = format!("{name}::");
            let mut from = 0;
            while let Some(at) = code[from..].find(&needle) {
                let start = from + at;
                let before = code[..start].chars().next_back();
                // A path segment of its own (`crate::domains::`, `{domains::`, ` domains::`),
                // not the tail of another name (`subdomains::`).
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    found.push((n + 1, line.trim().to_string()));
                }
                from = start + needle.len();
            }
        }
    }
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn check_layer(layer: &str, forbidden: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let files = rust_files(&dir);
    assert!(
        files.len() > 3,
        "{layer}: expected its modules under {dir:?}"
    );
    let mut bad = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("readable source");
        for (line, text) in violations(&source, forbidden) {
            bad.push(format!("{}:{line}: {text}", file.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "the {layer} layer names a layer above it:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_platform_names_no_domain_and_not_the_app() {
    check_layer("platform", &["domains", "app", "cli", "demo", "testkit"]);
}

#[test]
fn domains_do_not_name_the_app() {
    check_layer("domains", &["app", "cli", "demo", "testkit"]);
}

#[test]
fn the_check_finds_each_way_of_naming_a_module() {
    let forbidden = ["domains"];
    assert_eq!(
        violations("use crate::domains::patients;", &forbidden).len(),
        1
    );
    assert_eq!(
        violations("use crate::{platform::db, domains::patients};", &forbidden).len(),
        1
    );
    assert_eq!(
        violations("let x = crate::domains::consults::end(&s);", &forbidden).len(),
        1
    );
    assert!(violations("// see domains::patients", &forbidden).is_empty());
    assert!(violations("use crate::subdomains::x;", &forbidden).is_empty());
}

/// Backend-specific SQL lives in the database module only: no other source tells SQLite and
/// PostgreSQL apart.
#[test]
fn only_the_database_module_tells_the_backends_apart() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let db = src.join("platform").join("db.rs");
    let mut bad = Vec::new();
    for file in rust_files(&src) {
        if file == db {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("readable source");
        for (line, text) in violations(&source, &["Backend"]) {
            bad.push(format!("{}:{line}: {text}", file.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "backend-specific code outside platform/db.rs:\n{}",
        bad.join("\n")
    );
    let db_source = std::fs::read_to_string(&db).expect("readable source");
    assert!(
        !violations(&db_source, &["Backend"]).is_empty(),
        "the check must see platform/db.rs's own matches"
    );
}
