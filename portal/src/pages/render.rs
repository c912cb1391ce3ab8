//! The handlebars templates, embedded in the binary, and the HTML responses built from them.
//! Every page is a template wrapped in `layout` (`{{#> layout}} … {{/layout}}`); all values go
//! through handlebars' HTML escaping (`{{ }}`), never `{{{ }}}`.

use std::sync::LazyLock;

use handlebars::Handlebars;
use serde_json::{json, Map, Value};
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// `(name, source)` of every template.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout", include_str!("../../templates/layout.hbs")),
    ("message", include_str!("../../templates/message.hbs")),
    ("login", include_str!("../../templates/login.hbs")),
    ("register", include_str!("../../templates/register.hbs")),
    ("functions", include_str!("../../templates/functions.hbs")),
    (
        "function_form",
        include_str!("../../templates/function_form.hbs"),
    ),
    (
        "function_delete",
        include_str!("../../templates/function_delete.hbs"),
    ),
    ("function", include_str!("../../templates/function.hbs")),
    ("run_row", include_str!("../../templates/run_row.hbs")),
    ("tasks", include_str!("../../templates/tasks.hbs")),
    (
        "tasks_status",
        include_str!("../../templates/tasks_status.hbs"),
    ),
    ("run", include_str!("../../templates/run.hbs")),
    ("account", include_str!("../../templates/account.hbs")),
    (
        "card_fields",
        include_str!("../../templates/card_fields.hbs"),
    ),
    ("bill", include_str!("../../templates/bill.hbs")),
    ("pay", include_str!("../../templates/pay.hbs")),
    ("keys", include_str!("../../templates/keys.hbs")),
    (
        "dead_letters",
        include_str!("../../templates/dead_letters.hbs"),
    ),
];

/// The stylesheet and the status-refresh script.
pub const STYLE_CSS: &str = include_str!("../../static/style.css");
pub const APP_JS: &str = include_str!("../../static/app.js");
pub const FAVICON_SVG: &str = include_str!("../../static/favicon.svg");

static HB: LazyLock<Handlebars<'static>> = LazyLock::new(|| {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(false);
    for (name, src) in TEMPLATES {
        hb.register_template_string(name, *src)
            .unwrap_or_else(|e| panic!("template {name} does not parse: {e}"));
    }
    hb
});

/// Parses every template now (called at start, so a broken template fails the start, not a
/// request).
pub fn init() {
    LazyLock::force(&HB);
}

/// What every page's layout needs besides its own data.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    /// `{name, email}` of the logged-in user.
    pub user: Option<Value>,
    /// The CSRF token every form of the page carries.
    pub csrf: String,
    pub title: String,
    /// Which navigation entry is current (`functions`, `tasks`, `account`, `keys`, `login`, ...).
    pub nav: &'static str,
    pub notice: Option<String>,
    pub error: Option<String>,
}

/// Renders `template` with `data` (an object) plus the chrome, as an HTML response.
pub fn page(status: StatusCode, template: &str, chrome: &Chrome, data: Value) -> Response {
    html(status, fragment(template, &context(chrome, data)))
}

/// `data` (an object) with the chrome's keys added: what a page template is rendered with.
pub fn context(chrome: &Chrome, data: Value) -> Value {
    let mut ctx = match data {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            let mut m = Map::new();
            m.insert("data".into(), other);
            m
        }
    };
    ctx.insert("title".into(), json!(chrome.title));
    ctx.insert("csrf".into(), json!(chrome.csrf));
    if let Some(u) = &chrome.user {
        ctx.insert("user".into(), u.clone());
    }
    if !chrome.nav.is_empty() {
        ctx.insert(format!("nav_{}", chrome.nav), json!(true));
    }
    if let Some(n) = &chrome.notice {
        ctx.insert("notice".into(), json!(n));
    }
    if let Some(e) = &chrome.error {
        ctx.insert("error".into(), json!(e));
    }
    Value::Object(ctx)
}

/// Renders a template without the layout (a fragment, or a partial page).
pub fn fragment(template: &str, data: &Value) -> String {
    match HB.render(template, data) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(template, error = %e, "template failed");
            format!(
                "<!doctype html><title>Error</title><p>This page could not be shown ({}).</p>",
                escape(&e.to_string())
            )
        }
    }
}

/// An HTML response that is never cached (pages show per-user data).
pub fn html(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A static asset with a content type, cacheable for an hour.
pub fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = Response::new(body.into());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// HTML-escapes text (for the rare string built outside a template).
pub fn escape(s: &str) -> String {
    handlebars::html_escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        init();
    }

    #[test]
    fn user_text_is_escaped_in_pages() {
        let chrome = Chrome {
            title: "<b>t</b>".into(),
            ..Default::default()
        };
        let data = json!({"functions": [{"name": "f", "description": "<script>alert(1)</script>",
            "runtime": "python3", "mode": "sync", "version": 1, "updated": "now"}]});
        let body = fragment("functions", &context(&chrome, data));
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{body}"
        );
        assert!(!body.contains("<script>alert"));
        assert!(body.contains("&lt;b&gt;t&lt;/b&gt;"));
    }
}
