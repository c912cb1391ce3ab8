//! HTTP plumbing of the pages: the session and pre-session cookies, CSRF checks, redirects,
//! and reading url-encoded and multipart forms.

use std::collections::HashMap;

use bytes::Bytes;
use warp::http::header::{LOCATION, SET_COOKIE};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// The session cookie: the same token the JSON API takes as `Authorization: Bearer`.
pub const SESSION_COOKIE: &str = "cf_session";
/// The pre-session CSRF cookie of the login and register forms (double-submit).
pub const PRE_COOKIE: &str = "cf_presession";
/// Largest url-encoded form.
pub const FORM_LIMIT: u64 = 64 * 1024;
/// Largest multipart form: the code limit plus room for the other fields.
pub const MULTIPART_LIMIT: u64 = schemas::limits::CODE_BYTES as u64 + 256 * 1024;

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, path `/`. `max_age_secs` 0 deletes it.
pub fn cookie(name: &str, value: &str, max_age_secs: i64) -> String {
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}")
}

/// A 303 See Other to `to` (POST-redirect-GET), with optional cookies.
pub fn redirect(to: &str, cookies: &[String]) -> Response {
    let mut r = Response::new(Default::default());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(SET_COOKIE, v);
        }
    }
    r
}

/// Adds a `Set-Cookie` to a response.
pub fn with_cookie(mut r: Response, c: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(c) {
        r.headers_mut().append(SET_COOKIE, v);
    }
    r
}

/// A fresh random token (32 hex characters, 128 bits).
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A decoded form: field → value (the last one wins), plus an uploaded file if any.
#[derive(Debug, Default, Clone)]
pub struct Form {
    pub fields: HashMap<String, String>,
    pub file: Option<Upload>,
}

/// A file from a multipart form.
#[derive(Debug, Clone)]
pub struct Upload {
    pub field: String,
    pub filename: String,
    pub bytes: Bytes,
}

impl Form {
    /// A field's value, trimmed of nothing; empty when absent.
    pub fn get(&self, k: &str) -> &str {
        self.fields.get(k).map(String::as_str).unwrap_or("")
    }

    /// Whether the form's `csrf` field equals `expected`.
    pub fn csrf_ok(&self, expected: &str) -> bool {
        same_secret(self.get("csrf"), expected)
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn urlencoded(body: &[u8]) -> Form {
    let fields = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect();
    Form { fields, file: None }
}

/// Why a multipart form could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("the upload is larger than {} MB", schemas::limits::CODE_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("the form could not be read: {0}")]
    Malformed(String),
}

/// Decodes a `multipart/form-data` body (text fields, and one file field whose filename is
/// not empty; a file input left empty sends an empty filename and is ignored).
pub async fn multipart(content_type: &str, body: Bytes) -> Result<Form, FormError> {
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| FormError::Malformed(e.to_string()))?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut form = Form::default();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(FormError::Malformed(e.to_string())),
        };
        let name = field.name().unwrap_or("").to_owned();
        let filename = field.file_name().map(str::to_owned);
        let data = field
            .bytes()
            .await
            .map_err(|e| FormError::Malformed(e.to_string()))?;
        match filename {
            Some(f) if !f.is_empty() => {
                if data.len() > schemas::limits::CODE_BYTES {
                    return Err(FormError::TooLarge);
                }
                // Browsers send a bare name; some send a path. Keep the last component.
                let base = f.rsplit(['/', '\\']).next().unwrap_or(&f).to_owned();
                form.file = Some(Upload {
                    field: name,
                    filename: base,
                    bytes: data,
                });
            }
            Some(_) => {}
            None => {
                form.fields
                    .insert(name, String::from_utf8_lossy(&data).into_owned());
            }
        }
    }
    Ok(form)
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", ""));
    }

    #[test]
    fn cookies_parse() {
        assert_eq!(
            cookie_value("a=1; cf_session=xyz; b=2", SESSION_COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("a=1", SESSION_COOKIE), None);
        let c = cookie(SESSION_COOKIE, "t", 60);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax"));
    }

    #[test]
    fn urlencoded_forms() {
        let f = urlencoded(b"csrf=abc&q=a%20b&x=1&x=2");
        assert_eq!(f.get("q"), "a b");
        assert_eq!(f.get("x"), "2");
        assert!(f.csrf_ok("abc"));
        assert!(!f.csrf_ok("abd"));
        assert_eq!(f.get("missing"), "");
    }

    #[tokio::test]
    async fn multipart_forms() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok\r\n\
            --XX\r\nContent-Disposition: form-data; name=\"code\"; filename=\"C:\\\\dir\\\\main.py\"\r\n\
            Content-Type: text/x-python\r\n\r\ndef handle(e, c):\n    return e\n\r\n\
            --XX\r\nContent-Disposition: form-data; name=\"empty\"; filename=\"\"\r\n\r\n\r\n--XX--\r\n";
        let f = multipart("multipart/form-data; boundary=XX", Bytes::from(body))
            .await
            .unwrap();
        assert_eq!(f.get("csrf"), "tok");
        let up = f.file.unwrap();
        assert_eq!(up.filename, "main.py");
        assert_eq!(up.field, "code");
        assert!(up.bytes.starts_with(b"def handle"));
    }
}
