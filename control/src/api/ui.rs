//! The web UI: the files of `control/ui/` embedded in the binary and served on the API listener.
//!
//! `GET /ui/config` tells the UI what it cannot know by itself (`[ui] proxy_url`).
//! `/ui/<file>` serves an asset with its content type, an `ETag` and `Cache-Control: no-cache`
//! (the browser revalidates and gets `304 Not Modified`, so an upgraded binary is never shadowed
//! by a stale cache). Every page URL (`/`, `/register`, `/backends/{id}`, …) answers the one
//! `index.html`, whose script loads the page. `/instances`, `/instances/{name}`, `/gpus` and
//! `/proxies` are API routes too: [`browser_pages`] answers the page only to a browser's
//! navigation (`GET` with `Accept: text/html`), every other request reaches the API unchanged.
//! A navigation to an unknown URL gets the shell with status 404, which shows "page not found".
//!
//! Cost: nothing on the proxy's request path; on the control plane one header check per request.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, ApiState, ErrorCode};

/// One embedded file.
struct Asset {
    /// Path under `control/ui/`, and under `/ui/` in URLs.
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($path:literal => $ct:expr),* $(,)?) => {
        &[$(Asset {
            path: $path,
            content_type: $ct,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $path)),
        }),*]
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const SVG: &str = "image/svg+xml";

static ASSETS: &[Asset] = assets![
    "index.html" => HTML,
    "app.css" => CSS,
    "favicon.svg" => SVG,
    "js/api.js" => JS,
    "js/app.js" => JS,
    "js/sse.js" => JS,
    "js/backend-form.js" => JS,
    "js/pages/dashboard.js" => JS,
    "js/pages/register.js" => JS,
    "js/pages/backend.js" => JS,
    "js/pages/edit.js" => JS,
    "js/pages/models.js" => JS,
    "js/pages/instances.js" => JS,
    "js/pages/instance.js" => JS,
    "js/pages/gpus.js" => JS,
    "js/pages/proxies.js" => JS,
    "js/pages/playground.js" => JS,
    "js/pages/docs.js" => JS,
    "pages/dashboard.html" => HTML,
    "pages/register.html" => HTML,
    "pages/backend.html" => HTML,
    "pages/edit.html" => HTML,
    "pages/models.html" => HTML,
    "pages/instances.html" => HTML,
    "pages/instance.html" => HTML,
    "pages/gpus.html" => HTML,
    "pages/proxies.html" => HTML,
    "pages/playground.html" => HTML,
    "pages/docs.html" => HTML,
    "pages/not-found.html" => HTML,
    "pages/backend-fields.html" => HTML,
    "vendor/alpine/alpine.min.js" => JS,
    "vendor/alpine/LICENSE.md" => TEXT,
    "vendor/uplot/uPlot.iife.min.js" => JS,
    "vendor/uplot/uPlot.min.css" => CSS,
    "vendor/uplot/LICENSE" => TEXT,
    "vendor/pico/pico.min.css" => CSS,
    "vendor/pico/LICENSE.md" => TEXT,
    "vendor/swagger-ui/swagger-ui-bundle.js" => JS,
    "vendor/swagger-ui/swagger-ui.css" => CSS,
    "vendor/swagger-ui/swagger-ui-bundle.js.LICENSE.txt" => TEXT,
    "vendor/swagger-ui/LICENSE" => TEXT,
    "vendor/swagger-ui/NOTICE" => TEXT,
    "vendor/VENDOR.tsv" => TEXT,
];

/// The page shell every page URL answers.
const INDEX: &str = "index.html";

/// The page URLs that are not API routes.
const PAGE_ROUTES: &[&str] = &[
    "/",
    "/register",
    "/backends/{id}",
    "/backends/{id}/edit",
    "/models",
    "/playground",
    "/docs",
];

/// Where the page shell may load code and data from. Alpine evaluates its directives with
/// `new Function` (`'unsafe-eval'`); Swagger UI and Alpine set inline styles; the playground talks to
/// a proxy on another origin (`connect-src http: https:`).
const CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-eval'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; \
    connect-src 'self' http: https:; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The UI's routes, merged into the API router.
pub fn router() -> Router<ApiState> {
    let mut r = Router::new()
        .route("/ui/config", get(ui_config))
        .route("/ui/{*path}", get(asset));
    for page in PAGE_ROUTES {
        r = r.route(page, get(index));
    }
    r
}

/// Middleware over the whole API: a browser navigating to a page URL that is also an API route
/// gets the page; everything else passes through (with `Vary: Accept` on those URLs, so a cache
/// never hands the JSON to a browser or the page to a client).
pub async fn browser_pages(req: Request, next: Next) -> Response {
    let shared = is_shared_page(req.uri().path());
    let page = wants_page(req.method(), req.headers());
    if shared && page {
        let mut resp = index(req.headers().clone()).await;
        resp.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept"));
        return resp;
    }
    let asset = req.uri().path().starts_with("/ui/");
    let headers = page.then(|| req.headers().clone());
    let mut resp = next.run(req).await;
    // A browser that navigates to no page gets the UI's "page not found" (still a 404).
    if let Some(h) = headers.filter(|_| resp.status() == StatusCode::NOT_FOUND && !asset) {
        let mut shell = index(h).await;
        *shell.status_mut() = StatusCode::NOT_FOUND;
        return shell;
    }
    if shared {
        resp.headers_mut()
            .append(header::VARY, HeaderValue::from_static("Accept"));
    }
    resp
}

/// Page URLs that are API routes as well.
fn is_shared_page(path: &str) -> bool {
    let path = path.strip_suffix('/').unwrap_or(path);
    match path.strip_prefix("/instances/") {
        Some(name) => !name.is_empty() && !name.contains('/') && name != "bulk",
        None => matches!(path, "/instances" | "/gpus" | "/proxies"),
    }
}

/// A browser navigation: `GET`/`HEAD` whose `Accept` names `text/html` (an API client's
/// `*/*`, `application/json` or `text/event-stream` does not).
fn wants_page(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/html"))
            })
}

/// `GET /ui/config`: what the UI cannot know by itself (`[ui]` in `control.toml`). Open, like
/// the assets: it names no secret.
async fn ui_config(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"proxy_url": s.ui.proxy_url}))
}

async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers).unwrap_or_else(|e| e.into_response())
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers).unwrap_or_else(|e| e.into_response())
}

fn find(path: &str) -> Option<(usize, &'static Asset)> {
    ASSETS.iter().enumerate().find(|(_, a)| a.path == path)
}

/// Strong validators of every asset, computed once from the bytes and the build version.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut h = std::hash::DefaultHasher::new();
                env!("CARGO_PKG_VERSION").hash(&mut h);
                a.bytes.hash(&mut h);
                HeaderValue::from_str(&format!("\"{:016x}\"", h.finish()))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
            })
            .collect()
    })
}

/// An asset with its headers, or `304` when the browser's copy is current.
fn serve(path: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let (i, a) = find(path)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no UI file `{path}`")))?;
    let etag = etags()[i].clone();
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag.to_str().unwrap_or_default() || t.trim() == "*");
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(a.content_type),
            )],
            a.bytes,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if a.content_type == HTML {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn only_a_browser_navigation_gets_a_shared_page() {
        let browser = accept("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
        assert!(wants_page(&Method::GET, &browser));
        assert!(wants_page(&Method::HEAD, &browser));
        assert!(!wants_page(&Method::POST, &browser));
        assert!(!wants_page(&Method::GET, &accept("*/*")));
        assert!(!wants_page(&Method::GET, &accept("application/json")));
        assert!(!wants_page(&Method::GET, &accept("text/event-stream")));
        assert!(!wants_page(&Method::GET, &HeaderMap::new()));

        for p in [
            "/instances",
            "/instances/",
            "/instances/emb-1",
            "/gpus",
            "/proxies",
        ] {
            assert!(is_shared_page(p), "{p}");
        }
        for p in [
            "/instances/emb-1/logs",
            "/instances/bulk",
            "/instances/bulk/start",
            "/events",
            "/admin/backends",
            "/gpusx",
        ] {
            assert!(!is_shared_page(p), "{p}");
        }
    }

    #[test]
    fn every_asset_is_embedded_with_its_type() {
        for a in ASSETS {
            assert!(!a.bytes.is_empty(), "{} is empty", a.path);
            let want = match a.path.rsplit('.').next() {
                Some("html") => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                Some("svg") => SVG,
                _ => TEXT,
            };
            assert_eq!(a.content_type, want, "{}", a.path);
        }
        let tags = etags();
        for (i, t) in tags.iter().enumerate() {
            assert!(t.to_str().expect("ascii").starts_with('"'));
            assert!(
                !tags[i + 1..].contains(t),
                "{} shares its ETag",
                ASSETS[i].path
            );
        }
    }

    /// A file added to control/ui/ but not to [`ASSETS`] would be missing from the binary.
    #[test]
    fn every_file_of_the_ui_folder_is_embedded() {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).expect("read control/ui").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, root, out);
                } else if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let root = multiverse_common::paths::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        // Documentation for developers, not served.
        files.retain(|f| f != "API.md");
        for f in &files {
            assert!(find(f).is_some(), "control/ui/{f} is not in ASSETS");
        }
        assert_eq!(
            files.len(),
            ASSETS.len(),
            "ASSETS lists a file that does not exist"
        );
    }

    #[test]
    fn revalidation_answers_not_modified() {
        let first = serve("js/app.js", &HeaderMap::new()).expect("served");
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], JS);
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
        let etag = first.headers()[header::ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, etag.clone());
        let again = serve("js/app.js", &h).expect("served");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag);
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"stale\""));
        assert_eq!(
            serve("js/app.js", &h).expect("served").status(),
            StatusCode::OK
        );

        let page = serve(INDEX, &HeaderMap::new()).expect("served");
        assert!(page.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let missing = serve("nope.js", &HeaderMap::new()).expect_err("not found");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(serve("../Cargo.toml", &HeaderMap::new()).is_err());
    }
}
