//! The portal's service layer: plain async functions taking `&State` (and the caller's user id
//! where the data is a user's), returning `Result<T, PortalError>`. Both the JSON API and the
//! pages call these; neither touches MongoDB directly. Every lookup of a user's object filters
//! by that user's id, so another user's object is indistinguishable from a missing one (404).

pub mod account;
pub mod auth;
pub mod fnconfig;
pub mod functions;
pub mod invoke;
pub mod keys;
pub mod metrics;
pub mod retries;
pub mod runs;
pub mod schedules;

pub use invoke::invoke_test;

use mongodb::Collection;
use schemas::names::collections;

use crate::error::PortalError;
use crate::state::State;

pub(crate) fn coll<T: Send + Sync>(st: &State, name: &str) -> Collection<T> {
    st.db.collection(name)
}

pub(crate) fn users(st: &State) -> Collection<schemas::UserDoc> {
    coll(st, collections::USERS)
}

/// Maps a driver error to 503 (the database is the only thing that fails this way).
pub(crate) fn db_err(what: &'static str) -> impl Fn(mongodb::error::Error) -> PortalError {
    move |e| PortalError::db(what, e)
}

/// The contract's time format (RFC 3339 UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    gateway::views::rfc3339_ms(ms)
}
