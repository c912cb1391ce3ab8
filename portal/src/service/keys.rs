//! API keys for the invoke endpoint. Invariants: the secret (`cf_` + 256 random bits) is
//! returned once, at creation; only its SHA-256 (`gateway::store::hash_key`) is stored; keys
//! are listed and revoked only by their owner (others' keys are 404).

use bson::doc;
use futures::TryStreamExt;
use schemas::names::collections;
use schemas::{now_ms, ApiKeyDoc};

use super::{coll, db_err};
use crate::error::PortalError;
use crate::state::State;

/// Longest key label.
pub const MAX_LABEL_CHARS: usize = 100;

/// A key just created: the only time its secret is seen.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: String,
    /// The secret to send as `Authorization: Bearer` to the gateway.
    pub key: String,
    pub label: String,
    pub created_at_ms: i64,
}

fn keys(st: &State) -> mongodb::Collection<ApiKeyDoc> {
    coll(st, collections::API_KEYS)
}

/// Creates a key labelled `label` (trimmed; may be empty).
pub async fn create(st: &State, user_id: &str, label: &str) -> Result<NewKey, PortalError> {
    let label = label.trim();
    if label.chars().count() > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
        return Err(PortalError::invalid(
            "label",
            format!("must be at most {MAX_LABEL_CHARS} characters, without control characters"),
        ));
    }
    let secret = format!("cf_{}", super::auth::random_hex(32));
    let doc = ApiKeyDoc {
        id: format!("k{}", uuid::Uuid::now_v7().simple()),
        user_id: user_id.to_owned(),
        label: label.to_owned(),
        key_hash: gateway::store::hash_key(&secret),
        created_at_ms: now_ms(),
    };
    keys(st)
        .insert_one(&doc)
        .await
        .map_err(db_err("storing the API key"))?;
    tracing::info!(user_id, key_id = doc.id, "api key created");
    Ok(NewKey {
        key_id: doc.id,
        key: secret,
        label: doc.label,
        created_at_ms: doc.created_at_ms,
    })
}

/// The user's keys, newest first (hashes included; never show them).
pub async fn list(st: &State, user_id: &str) -> Result<Vec<ApiKeyDoc>, PortalError> {
    keys(st)
        .find(doc! {"user_id": user_id})
        .sort(doc! {"created_at_ms": -1})
        .await
        .map_err(db_err("listing API keys"))?
        .try_collect()
        .await
        .map_err(db_err("listing API keys"))
}

/// Revokes (deletes) a key of the user; 404 when it is not theirs. The gateway stops
/// accepting it within its key cache's lifetime.
pub async fn revoke(st: &State, user_id: &str, key_id: &str) -> Result<(), PortalError> {
    let r = keys(st)
        .delete_one(doc! {"_id": key_id, "user_id": user_id})
        .await
        .map_err(db_err("revoking the API key"))?;
    if r.deleted_count == 0 {
        return Err(PortalError::NotFound("API key"));
    }
    tracing::info!(user_id, key_id, "api key revoked");
    Ok(())
}

/// The contract's view of a key: `{key_id, label, created_at}`.
pub fn key_json(k: &ApiKeyDoc) -> serde_json::Value {
    serde_json::json!({
        "key_id": k.id,
        "label": k.label,
        "created_at": super::rfc3339(k.created_at_ms),
    })
}
