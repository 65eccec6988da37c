//! The web console at `/console`: three static files compiled into the binary, so it
//! works on a closed network and cannot drift from the build. It holds no data of its
//! own: the page signs in with an API key and calls only the tenant-scoped /v1 API from
//! the browser (its overview is `GET /v1/summary`), so it sees exactly what the key may see.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::routes::HttpResponse;

/// Where the console lives; `/console/…` are its assets.
pub const PATH: &str = "/console";

/// `(path, content type, body)` of every asset.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "/console",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "/console/console.js",
        "text/javascript; charset=utf-8",
        include_str!("console/console.js"),
    ),
    (
        "/console/console.css",
        "text/css; charset=utf-8",
        include_str!("console/console.css"),
    ),
];

/// Only this origin's scripts, styles and API; no inline script, no framing, nothing from
/// elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is the console's (any method).
pub fn is_console_path(path: &str) -> bool {
    path == PATH || path.starts_with("/console/")
}

/// The asset at `path`: 404 for none, 405 for anything but GET.
pub fn respond(method: &Method, path: &str) -> Result<HttpResponse, crate::error::ApiError> {
    let path = if path == "/console/" { PATH } else { path };
    let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return Err(crate::error::ApiError::not_found());
    };
    if method != Method::GET {
        return Err(crate::error::ApiError::method_not_allowed("GET"));
    }
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary; revalidating costs a request per page load.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_and_nothing_else() {
        for (path, content_type, _) in ASSETS {
            let response = respond(&Method::GET, path).unwrap();
            assert_eq!(response.headers()[CONTENT_TYPE], content_type);
            assert!(response.headers().contains_key("content-security-policy"));
        }
        assert!(respond(&Method::GET, "/console/").is_ok());
        let missing = respond(&Method::GET, "/console/other.js").unwrap_err();
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        let posted = respond(&Method::POST, "/console").unwrap_err();
        assert_eq!(posted.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        let html = ASSETS[0].2;
        for (path, _, _) in &ASSETS[1..] {
            assert!(html.contains(path), "index.html loads {path}");
        }
        // Nothing from the internet, and no inline script the policy would block.
        for asset in ASSETS.map(|(_, _, body)| body) {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
        assert!(!html.contains("<script>") && !html.contains(" onclick="));
    }
}
