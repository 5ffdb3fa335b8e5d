//! The dashboard's assets, embedded in the binary: one page, one script,
//! one style sheet (plain ES modules, no build step, nothing to deploy).
//!
//! The page holds nothing but the sign-in form until the script has a
//! session; everything it shows comes from the public `/v1` API, with the
//! session cookie (see [`super::session`]). Served with a strict content
//! security policy: scripts, styles and requests only from this origin.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

fn page(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The dashboard's page.
pub async fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

/// One of the page's assets, by name.
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page(APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => page(APP_CSS, "text/css; charset=utf-8"),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
