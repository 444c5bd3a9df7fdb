//! `/ui`: the web console, static files embedded in the binary from `console/` (plain HTML,
//! CSS and JS modules: no build step). It talks to `/api` with the token the user typed, like
//! any client. Strict headers: scripts and styles only from this origin, no framing, no
//! referrer; an ETag per file (its sha256), revalidated on every load.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use include_dir::{include_dir, Dir};
use sha2::{Digest, Sha256};

static FILES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/console");

/// The policy: everything from this origin only; no inline script or style, no plugins, no
/// framing, forms only to this origin.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct File {
    body: &'static [u8],
    etag: HeaderValue,
    content_type: &'static str,
}

fn files() -> &'static HashMap<&'static str, File> {
    static MAP: OnceLock<HashMap<&'static str, File>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::new();
        collect(&FILES, &mut map);
        map
    })
}

fn collect(dir: &'static Dir<'static>, map: &mut HashMap<&'static str, File>) {
    for f in dir.files() {
        let Some(path) = f.path().to_str() else { continue };
        let digest = Sha256::digest(f.contents());
        let etag = format!("\"{}\"", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>());
        let Ok(etag) = HeaderValue::from_str(&etag) else { continue };
        map.insert(path, File { body: f.contents(), etag, content_type: content_type(path) });
    }
    for d in dir.dirs() {
        collect(d, map);
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The headers every `/ui` answer carries, found or not.
fn strict(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// `/ui` → `/ui/` (relative module paths resolve under it).
pub(super) async fn ui_root() -> Response {
    let mut resp = Redirect::permanent("/ui/").into_response();
    strict(resp.headers_mut());
    resp
}

pub(super) async fn ui_index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

pub(super) async fn ui_file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(path: &str, req: &HeaderMap) -> Response {
    let mut resp = match files().get(path) {
        None => (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "no such file in the console\n").into_response(),
        Some(f) => {
            let fresh = req.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii() == f.etag.as_bytes()));
            let mut resp = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { ([(header::CONTENT_TYPE, f.content_type)], f.body).into_response() };
            resp.headers_mut().insert(header::ETAG, f.etag.clone());
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
    };
    strict(resp.headers_mut());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_embedded_with_its_type() {
        let f = files();
        for (path, ct) in [("index.html", "text/html"), ("app.js", "text/javascript"), ("style.css", "text/css")] {
            let file = f.get(path).unwrap_or_else(|| panic!("{path} is not embedded: {:?}", f.keys().collect::<Vec<_>>()));
            assert!(file.content_type.starts_with(ct), "{path}: {}", file.content_type);
        }
        // No inline script or style in the page: the policy would block it.
        let index = std::str::from_utf8(f["index.html"].body).expect("utf8");
        assert!(!index.contains("<script>") && !index.contains("style="), "inline code in index.html");
        assert!(index.contains(r#"<script type="module" src="app.js">"#), "{index}");
    }
}
