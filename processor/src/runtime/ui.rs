//! The web console at `/ui`: one page, a stylesheet and a script, compiled into the binary (no
//! separate server, no Node toolchain). The page is a client of the management API of the
//! server that serves it, so it sees and does exactly what the API lets its caller see and do:
//! with authorization on, it asks for a bearer token and sends it with every request.
//!
//! Everything the API answers is shown as text, never as HTML; the Content-Security-Policy
//! allows only this server's own script, style and API.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/console.js");
const STYLE: &str = include_str!("ui/console.css");

/// The script as served: the status words filled in from the one list of them.
static SERVED_SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let words: Vec<String> = durable_schemas::Status::LISTED.iter().map(|s| format!("'{s}'")).collect();
    SCRIPT.replace("/*STATUSES*/", &words.join(", "))
});

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (X_FRAME_OPTIONS, "DENY"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `/ui` (the page), `/ui/console.js`, `/ui/console.css`; `/` redirects to `/ui`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui") }))
        .route("/ui", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/", get(|| async { Redirect::temporary("/ui") }))
        .route("/ui/console.js", get(|| async { asset("text/javascript; charset=utf-8", SERVED_SCRIPT.as_str()) }))
        .route("/ui/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets_and_shows_data_as_text() {
        assert!(INDEX.contains(r#"src="/ui/console.js""#) && INDEX.contains(r#"href="/ui/console.css""#));
        // Values from the API are set with textContent or text nodes, never parsed as HTML.
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!SCRIPT.contains(sink), "console.js uses {sink}");
        }
        // No inline script or style, which the policy would block.
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
    }

    #[test]
    fn the_served_script_filters_by_the_shared_status_words() {
        assert!(SCRIPT.contains("[/*STATUSES*/]"));
        assert!(SERVED_SCRIPT.contains("const STATUSES = ['running', 'pending', 'suspended', 'completed', 'failed', 'terminated', 'active', 'deleted'];"));
    }

    #[test]
    fn every_api_route_the_console_calls_exists() {
        for path in ["/v1/counts", "/v1/registry", "/v1/instances", "/v1/dead", "/v1/orchestrations/", "/v1/entities/"]
        {
            assert!(SCRIPT.contains(path), "{path}");
            assert!(super::super::api::paths().iter().any(|p| p.starts_with(path)), "{path} is an API path");
        }
    }
}
