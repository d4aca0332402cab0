//! The browser pages are served under a strict Content-Security-Policy, and nothing in them needs
//! more: no inline script, no inline event handler, no inline style. Every script and stylesheet a
//! page or module names is served, with its content type.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use clinic_api::app::all_routes;
use clinic_api::testkit::{Reply, TestApp};

/// The policy, written out here so that a change to it is a change to this test.
const STRICT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn web_paths() -> Vec<&'static str> {
    all_routes()
        .specs()
        .into_iter()
        .filter(|s| s.tag == "web")
        .inspect(|s| assert_eq!(s.method, Method::GET, "{}", s.path))
        .map(|s| s.path)
        .collect()
}

fn content_type(reply: &Reply) -> &str {
    reply.headers["content-type"].to_str().unwrap()
}

/// One start tag: its name and attributes (names lowercased, values unquoted).
struct Tag {
    name: String,
    attrs: Vec<(String, Option<String>)>,
    /// Byte offset just past the tag's `>`.
    end: usize,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }
}

/// The start tags of an HTML document, read as a browser tokenizes them (comments skipped,
/// quoted attribute values may hold `>`). Enough for our own pages; anything it cannot read
/// fails the test rather than passing it.
fn start_tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut tags = Vec::new();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        i += off + 1;
        if html[i..].starts_with("!--") {
            i += html[i..].find("-->").expect("comment is closed") + 3;
            continue;
        }
        if !b.get(i).is_some_and(|c| c.is_ascii_alphabetic()) {
            continue; // `</x>`, `<!DOCTYPE>`
        }
        let name_end = i + html[i..]
            .find(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/')
            .expect("tag is closed");
        let name = html[i..name_end].to_ascii_lowercase();
        let mut attrs = Vec::new();
        let mut j = name_end;
        loop {
            while b[j].is_ascii_whitespace() || b[j] == b'/' {
                j += 1;
            }
            if b[j] == b'>' {
                j += 1;
                break;
            }
            let n_end = j + html[j..]
                .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '>' || c == '/')
                .expect("attribute ends");
            let attr = html[j..n_end].to_ascii_lowercase();
            j = n_end;
            while b[j].is_ascii_whitespace() {
                j += 1;
            }
            let value = if b[j] == b'=' {
                j += 1;
                while b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if b[j] == b'"' || b[j] == b'\'' {
                    let q = b[j] as char;
                    let v_end = j + 1 + html[j + 1..].find(q).expect("quote is closed");
                    let v = html[j + 1..v_end].to_string();
                    j = v_end + 1;
                    Some(v)
                } else {
                    let v_end = j + html[j..]
                        .find(|c: char| c.is_ascii_whitespace() || c == '>')
                        .expect("value ends");
                    let v = html[j..v_end].to_string();
                    j = v_end;
                    Some(v)
                }
            } else {
                None
            };
            attrs.push((attr, value));
        }
        tags.push(Tag {
            name,
            attrs,
            end: j,
        });
        i = j;
    }
    tags
}

/// The same-origin paths a module imports (`import … from '/x.js'`, `import '/x.js'`).
fn imports(js: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in js.lines().map(str::trim_start) {
        if !line.starts_with("import ") && !line.contains("} from ") {
            continue;
        }
        let Some(q) = line.rfind(['\'', '"']) else {
            continue;
        };
        let quote = line.as_bytes()[q] as char;
        let start = line[..q].rfind(quote).expect("quoted specifier") + 1;
        out.push(line[start..q].to_string());
    }
    out
}

#[tokio::test]
async fn every_page_is_served_with_the_strict_csp() {
    let app = TestApp::new().await;
    let mut pages = 0;
    for path in web_paths() {
        let reply = app.call(Method::GET, path, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        let ct = content_type(&reply).to_string();
        if path.ends_with(".js") {
            assert_eq!(ct, "text/javascript; charset=utf-8", "{path}");
        } else if path.ends_with(".css") {
            assert_eq!(ct, "text/css; charset=utf-8", "{path}");
        } else {
            assert_eq!(ct, "text/html; charset=utf-8", "{path}");
            pages += 1;
            let csp = reply.headers["content-security-policy"].to_str().unwrap();
            assert_eq!(csp, STRICT_CSP, "{path}");
            assert!(!csp.contains("unsafe-"), "{path}: {csp}");
            assert!(!csp.contains("ws:") && !csp.contains('*'), "{path}: {csp}");
        }
        assert_eq!(reply.headers["x-content-type-options"], "nosniff", "{path}");
    }
    assert_eq!(
        pages, 7,
        "sign-in, enrollment, two consult pages, photos, schedule, appointments"
    );
}

#[tokio::test]
async fn no_page_carries_inline_script_handlers_or_style() {
    let app = TestApp::new().await;
    let served: BTreeSet<&str> = web_paths().into_iter().collect();
    let mut referenced = BTreeSet::new();
    for path in web_paths() {
        let reply = app.call(Method::GET, path, None, None).await;
        if !content_type(&reply).starts_with("text/html") {
            continue;
        }
        let html = &reply.text;
        let lower = html.to_ascii_lowercase();
        assert!(!lower.contains("<style"), "{path}: a <style> element");
        assert!(!lower.contains("javascript:"), "{path}: a javascript: URL");
        let tags = start_tags(html);
        assert!(
            tags.iter().any(|t| t.name == "body"),
            "{path}: read no <body>"
        );
        for tag in &tags {
            for (name, value) in &tag.attrs {
                assert!(
                    !(name.starts_with("on") && name.len() > 2),
                    "{path}: <{} {name}=…>, an inline event handler",
                    tag.name
                );
                assert_ne!(name, "style", "{path}: <{} style=…>", tag.name);
                if let Some(v) = value {
                    assert!(!v.contains("unsafe-inline"), "{path}: {name}={v}");
                }
            }
            match tag.name.as_str() {
                "script" => {
                    let src = tag
                        .attr("src")
                        .unwrap_or_else(|| panic!("{path}: a <script> without src"));
                    assert_eq!(tag.attr("type"), Some("module"), "{path}: {src}");
                    let close = tag.end
                        + lower[tag.end..]
                            .find("</script>")
                            .expect("script is closed");
                    assert!(
                        html[tag.end..close].trim().is_empty(),
                        "{path}: {src} has inline content"
                    );
                    referenced.insert(src.to_string());
                }
                "link" if tag.attr("rel") == Some("stylesheet") => {
                    referenced.insert(tag.attr("href").expect("stylesheet href").to_string());
                }
                "meta" => assert_ne!(
                    tag.attr("http-equiv")
                        .map(str::to_ascii_lowercase)
                        .as_deref(),
                    Some("content-security-policy"),
                    "{path}: the policy is the header's alone"
                ),
                _ => {}
            }
        }
    }
    // Every script and stylesheet named, and every module those scripts import, is served with
    // its type (a module with the wrong one does not run).
    let mut queue: Vec<String> = referenced.iter().cloned().collect();
    let mut seen = BTreeSet::new();
    while let Some(src) = queue.pop() {
        if !seen.insert(src.clone()) {
            continue;
        }
        assert!(
            src.starts_with('/') && !src.starts_with("//"),
            "{src}: not this origin's"
        );
        assert!(
            served.contains(src.as_str()),
            "{src} is named but not served"
        );
        let reply = app.call(Method::GET, &src, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{src}");
        if src.ends_with(".js") {
            assert_eq!(
                content_type(&reply),
                "text/javascript; charset=utf-8",
                "{src}"
            );
            queue.extend(imports(&reply.text));
        } else {
            assert_eq!(content_type(&reply), "text/css; charset=utf-8", "{src}");
        }
    }
    // And nothing is served that no page uses.
    let assets: BTreeSet<String> = served
        .iter()
        .filter(|p| p.ends_with(".js") || p.ends_with(".css"))
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        assets, seen,
        "served scripts and stylesheets against those the pages use"
    );
}

/// Every file in `web/` is embedded and served (a new file cannot be forgotten in web.rs), and
/// none of them mentions unsafe-inline.
#[tokio::test]
async fn every_file_in_web_is_served() {
    let app = TestApp::new().await;
    let mut bodies = Vec::new();
    for path in web_paths() {
        bodies.push(app.call(Method::GET, path, None, None).await.text);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // A page's file is its <body>: pages.rs serves it after the shared head.
        assert!(
            bodies.iter().any(|b| b.ends_with(text.as_str())),
            "{} is not served",
            path.display()
        );
        assert!(!text.contains("unsafe-inline"), "{}", path.display());
        files += 1;
    }
    assert_eq!(files, bodies.len(), "one route per file in web/");
}
