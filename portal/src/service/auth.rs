//! Accounts and sessions. Invariants: emails are stored trimmed and lowercased and are unique
//! (the `email_unique` index; 409 otherwise); passwords are kept only as Argon2id PHC strings;
//! a session token is 256 random bits shown once to the client, and only its SHA-256 is stored
//! (`SessionDoc`), with an expiry checked on every use; each session carries its own CSRF token
//! for the browser's forms. Login attempts are limited per account and per client address
//! (governor, in memory per portal instance) before the password is even checked; sign-ups per
//! client address (`PORTAL_SIGNUP_PER_HOUR`) before any hashing; and all argon2 work (hashing
//! and verifying) waits for one of `PORTAL_HASH_CONCURRENCY` permits, so a flood of sign-ups or
//! logins cannot take more than that many 19 MiB hashes at once.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use bson::doc;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use rand::RngCore;
use schemas::names::collections;
use schemas::{now_ms, SessionDoc, UserDoc};

use super::{coll, db_err, users};
use crate::error::PortalError;
use crate::state::State;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted (bounds the hashing work).
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// Longest display name.
pub const MAX_NAME_CHARS: usize = 100;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// Login rate limits: per account (email) and per client address, each `n` per minute.
pub struct LoginLimits {
    per_account: Keyed<String>,
    per_address: Keyed<IpAddr>,
    clock: DefaultClock,
}

impl std::fmt::Debug for LoginLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginLimits")
    }
}

impl LoginLimits {
    pub fn new(per_account: NonZeroU32, per_address: NonZeroU32) -> LoginLimits {
        LoginLimits {
            per_account: RateLimiter::keyed(Quota::per_minute(per_account)),
            per_address: RateLimiter::keyed(Quota::per_minute(per_address)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one attempt from both budgets; `Err(seconds to wait)` when either is spent.
    pub fn check(&self, email: &str, addr: Option<IpAddr>) -> Result<(), u64> {
        let wait = |nu: governor::NotUntil<_>| nu.wait_time_from(self.clock.now()).as_secs().max(1);
        if let Some(a) = addr {
            self.per_address.check_key(&a).map_err(wait)?;
        }
        self.per_account
            .check_key(&email.to_owned())
            .map_err(wait)?;
        Ok(())
    }

    /// Forgets limiters that are back to full.
    pub fn prune(&self) {
        self.per_account.retain_recent();
        self.per_address.retain_recent();
    }
}

/// Sign-up limits: accounts created per client address per hour, and the permits of argon2
/// work (sign-ups and logins alike).
pub struct SignupLimits {
    per_address: Keyed<IpAddr>,
    hashing: tokio::sync::Semaphore,
    clock: DefaultClock,
}

impl std::fmt::Debug for SignupLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignupLimits")
    }
}

impl SignupLimits {
    pub fn new(per_hour: NonZeroU32, hash_concurrency: usize) -> SignupLimits {
        SignupLimits {
            per_address: RateLimiter::keyed(Quota::per_hour(per_hour)),
            hashing: tokio::sync::Semaphore::new(hash_concurrency.max(1)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one sign-up from the address's budget; `Err(seconds to wait)` when it is spent.
    /// Requests without a known address share one budget.
    pub fn check(&self, addr: Option<IpAddr>) -> Result<(), u64> {
        let a = addr.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        self.per_address
            .check_key(&a)
            .map_err(|nu| nu.wait_time_from(self.clock.now()).as_secs().max(1))
    }

    /// Waits for a permit to hash or verify a password.
    pub async fn hashing(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PortalError> {
        self.hashing
            .acquire()
            .await
            .map_err(|e| PortalError::Internal(e.into()))
    }

    /// Forgets limiters that are back to full.
    pub fn prune(&self) {
        self.per_address.retain_recent();
    }
}

/// Trims and lowercases an email and checks its shape (`local@domain.tld`, no spaces).
pub fn normalize_email(raw: &str) -> Result<String, PortalError> {
    let e = raw.trim().to_lowercase();
    let bad = |m: &str| Err(PortalError::invalid("email", m));
    if e.is_empty() {
        return bad("enter your email address");
    }
    if e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("not a valid email address");
    }
    let Some((local, domain)) = e.split_once('@') else {
        return bad("not a valid email address (it needs an @)");
    };
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return bad("not a valid email address");
    }
    Ok(e)
}

fn argon() -> Argon2<'static> {
    Argon2::default() // Argon2id, v19, m = 19 MiB, t = 2, p = 1 (OWASP's baseline)
}

/// Hashes a password (Argon2id PHC string). CPU-heavy: runs on the blocking pool.
pub async fn hash_password(password: &str) -> Result<String, PortalError> {
    let pw = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon()
            .hash_password(pw.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PortalError::Internal(anyhow::anyhow!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| PortalError::Internal(e.into()))?
}

/// Checks a password against a PHC string (false for malformed hashes).
pub async fn verify_password(password: &str, phc: &str) -> bool {
    let (pw, phc) = (password.to_owned(), phc.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc)
            .map(|h| argon().verify_password(pw.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A hash to verify against when the email is unknown, so both cases take as long.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon()
            .hash_password(b"not a real password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// How a session token is stored.
pub fn hash_token(token: &str) -> String {
    common::codestore::sha256_hex(token.as_bytes())
}

/// Creates an account with the configured free credit; returns its user id. 400 for a bad
/// email, a password shorter than 8 characters or a bad name; 429 when `client` has created
/// its hourly allowance of accounts; 409 when the email is taken.
pub async fn register(
    st: &State,
    email: &str,
    name: &str,
    password: &str,
    client: Option<IpAddr>,
) -> Result<String, PortalError> {
    let email = normalize_email(email)?;
    let name = name.trim();
    if name.is_empty() {
        return Err(PortalError::invalid("name", "enter your name"));
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(PortalError::invalid(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters, without control characters"),
        ));
    }
    let n = password.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(PortalError::invalid(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(PortalError::invalid(
            "password",
            format!("must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    if let Err(retry_after_secs) = st.signup.check(client) {
        st.metrics.signups_limited.inc();
        tracing::info!(client = ?client, "sign-up rate limited");
        return Err(PortalError::SignupRateLimited { retry_after_secs });
    }
    let taken = coll::<bson::Document>(st, collections::USERS)
        .find_one(doc! {"email": &email})
        .projection(doc! {"_id": 1})
        .await
        .map_err(db_err("looking up the email"))?;
    if taken.is_some() {
        return Err(PortalError::EmailTaken);
    }
    let user = UserDoc {
        id: format!("u{}", uuid::Uuid::now_v7().simple()),
        email,
        name: name.to_owned(),
        password_hash: {
            let _permit = st.signup.hashing().await?;
            hash_password(password).await?
        },
        balance_micros: st.cfg.free_credit_micros,
        spent_micros: 0,
        paid_micros: 0,
        created_at_ms: now_ms(),
    };
    match users(st).insert_one(&user).await {
        Ok(_) => {
            tracing::info!(user_id = user.id, "account created");
            Ok(user.id)
        }
        Err(e) if common::mongo::is_duplicate_key(&e) => Err(PortalError::EmailTaken),
        Err(e) => Err(PortalError::db("creating the account", e)),
    }
}

/// Logs in: checks the rate limits (per account and per `client` address; 429), then the
/// password (401); returns the session token (shown once) and the stored session.
pub async fn login(
    st: &State,
    email: &str,
    password: &str,
    client: Option<IpAddr>,
) -> Result<(String, SessionDoc), PortalError> {
    let email = email.trim().to_lowercase();
    if let Err(retry_after_secs) = st.login.check(&email, client) {
        st.metrics.logins_limited.inc();
        tracing::info!(client = ?client, "login rate limited");
        return Err(PortalError::LoginRateLimited { retry_after_secs });
    }
    let user = users(st)
        .find_one(doc! {"email": &email})
        .await
        .map_err(db_err("looking up the account"))?;
    let ok = {
        let _permit = st.signup.hashing().await?;
        match &user {
            Some(u) => verify_password(password, &u.password_hash).await,
            None => {
                let _ = verify_password(password, dummy_hash()).await;
                false
            }
        }
    };
    let (true, Some(user)) = (ok, user) else {
        st.metrics.logins_failed.inc();
        return Err(PortalError::BadCredentials);
    };
    let token = random_hex(32);
    let now = now_ms();
    let session = SessionDoc {
        token_hash: hash_token(&token),
        user_id: user.id.clone(),
        csrf: random_hex(16),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(st.cfg.session_ttl.as_millis() as i64),
    };
    coll::<SessionDoc>(st, collections::SESSIONS)
        .insert_one(&session)
        .await
        .map_err(db_err("storing the session"))?;
    tracing::info!(user_id = user.id, "logged in");
    Ok((token, session))
}

/// Ends the session of `token` (401 when there is none).
pub async fn logout(st: &State, token: &str) -> Result<(), PortalError> {
    let r = coll::<SessionDoc>(st, collections::SESSIONS)
        .delete_one(doc! {"_id": hash_token(token)})
        .await
        .map_err(db_err("ending the session"))?;
    if r.deleted_count == 0 {
        return Err(PortalError::Unauthorized);
    }
    Ok(())
}

/// The user and session of a token, if the session exists and has not expired (an expired
/// one is deleted). Errors only when MongoDB fails.
pub async fn session_user(
    st: &State,
    token: &str,
) -> Result<Option<(UserDoc, SessionDoc)>, PortalError> {
    if token.is_empty() || token.len() > 256 {
        return Ok(None);
    }
    let sessions = coll::<SessionDoc>(st, collections::SESSIONS);
    let hash = hash_token(token);
    let Some(s) = sessions
        .find_one(doc! {"_id": &hash})
        .await
        .map_err(db_err("reading the session"))?
    else {
        return Ok(None);
    };
    if s.expires_at_ms <= now_ms() {
        let _ = sessions.delete_one(doc! {"_id": &hash}).await;
        return Ok(None);
    }
    let user = users(st)
        .find_one(doc! {"_id": &s.user_id})
        .await
        .map_err(db_err("reading the user"))?;
    Ok(user.map(|u| (u, s)))
}

/// Deletes expired sessions (they are refused anyway; this keeps the collection small).
pub async fn purge_expired_sessions(st: &State) {
    let r = coll::<bson::Document>(st, collections::SESSIONS)
        .delete_many(doc! {"expires_at_ms": {"$lte": now_ms()}})
        .await;
    match r {
        Ok(r) if r.deleted_count > 0 => {
            tracing::debug!(deleted = r.deleted_count, "expired sessions purged")
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "purging expired sessions failed"),
    }
}

/// The user of a token, or 401.
pub async fn require_user(st: &State, token: &str) -> Result<UserDoc, PortalError> {
    session_user(st, token)
        .await?
        .map(|(u, _)| u)
        .ok_or(PortalError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "", "ada", "ada@", "@x.io", "a@b", "a b@x.io", "a@x..io", "a@.x.io", "a@@x.io",
        ] {
            let e = normalize_email(bad).unwrap_err();
            assert_eq!(e.field(), Some("email"), "{bad}");
        }
    }

    #[test]
    fn login_limits_per_account_and_address() {
        let l = LoginLimits::new(NonZeroU32::new(2).unwrap(), NonZeroU32::new(3).unwrap());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.check("a@x.io", Some(ip)).is_ok());
        assert!(l.check("a@x.io", Some(ip)).is_ok());
        let wait = l.check("a@x.io", Some(ip)).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        // The address has one attempt left (3 per minute), spent on another account.
        assert!(l.check("b@x.io", Some(ip)).is_err());
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check("c@x.io", Some(other)).is_ok());
    }

    #[tokio::test]
    async fn signups_are_limited_per_address_and_hashing_is_bounded() {
        let l = SignupLimits::new(NonZeroU32::new(2).unwrap(), 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.check(Some(a)).is_ok());
        assert!(l.check(Some(a)).is_ok());
        let wait = l.check(Some(a)).unwrap_err();
        // One sign-up comes back every 30 minutes at 2 per hour.
        assert!((1..=1800).contains(&wait), "{wait}");
        assert!(l.check(Some("10.0.0.2".parse().unwrap())).is_ok());
        let held = l.hashing().await.unwrap();
        assert!(l.hashing.try_acquire().is_err(), "one hash at a time");
        drop(held);
        assert!(l.hashing.try_acquire().is_ok());
    }

    #[tokio::test]
    async fn passwords_hash_with_argon2id() {
        let h = hash_password("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h).await);
        assert!(!verify_password("wrong horse", &h).await);
        assert!(!verify_password("x", "not a hash").await);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (random_hex(32), random_hex(32));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(hash_token(&a), common::codestore::sha256_hex(a.as_bytes()));
    }
}
