//! Authentication of JSON API calls: `Authorization: Bearer <session token>` (the token from
//! `POST /api/v1/sessions`); anything else is 401. The API takes no cookies, so it needs no
//! CSRF token; the pages use the same sessions through an HttpOnly cookie.

use schemas::{SessionDoc, UserDoc};
use warp::http::header::{HeaderMap, AUTHORIZATION};

use crate::error::PortalError;
use crate::service;
use crate::state::State;

/// The bearer token of a request, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The user and session of a request's bearer token, or 401.
pub async fn api_session(
    st: &State,
    headers: &HeaderMap,
) -> Result<(UserDoc, SessionDoc), PortalError> {
    let token = bearer(headers).ok_or(PortalError::Unauthorized)?;
    service::auth::session_user(st, token)
        .await?
        .ok_or(PortalError::Unauthorized)
}

/// The user of a request's bearer token, or 401.
pub async fn api_user(st: &State, headers: &HeaderMap) -> Result<UserDoc, PortalError> {
    Ok(api_session(st, headers).await?.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        for bad in ["Basic abc", "Bearer ", "abc"] {
            h.insert(AUTHORIZATION, HeaderValue::from_static(bad));
            assert_eq!(bearer(&h), None, "{bad}");
        }
    }
}
