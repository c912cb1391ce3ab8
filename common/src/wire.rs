//! Small helpers for raw MongoDB commands and lenient reads: numbers may come back as int32,
//! int64 or double depending on the server, and write replies are checked here in one place.

use std::collections::HashSet;

use anyhow::Context as _;
use bson::{doc, Bson, Document};
use mongodb::Database;

/// Duplicate-key error code.
pub const DUPLICATE_KEY: i64 = 11000;

pub use schemas::lenient::{int, string, uint};

/// Indices of the statements of a write command's reply that failed with a duplicate key.
/// Any other write error (or a write concern error) is an error.
pub fn duplicate_indices(reply: &Document, what: &str) -> anyhow::Result<HashSet<usize>> {
    let mut dups = HashSet::new();
    if let Ok(errs) = reply.get_array("writeErrors") {
        for e in errs {
            let Bson::Document(d) = e else {
                anyhow::bail!("{what}: malformed write error {e}");
            };
            if int(d.get("code")) != DUPLICATE_KEY {
                anyhow::bail!("{what}: write error {d}");
            }
            dups.insert(int(d.get("index")).max(0) as usize);
        }
    }
    if let Ok(e) = reply.get_document("writeConcernError") {
        anyhow::bail!("{what}: write concern error {e}");
    }
    Ok(dups)
}

/// Fails on any write error, duplicate keys included.
pub fn check_no_errors(reply: &Document, what: &str) -> anyhow::Result<()> {
    let dups = duplicate_indices(reply, what)?;
    anyhow::ensure!(dups.is_empty(), "{what}: {} duplicate key(s)", dups.len());
    Ok(())
}

/// Runs one raw `update` command (`ordered: false`) and returns the reply's `n` (documents
/// matched). Every statement must succeed.
pub async fn update(
    db: &Database,
    coll: &str,
    statements: Vec<Document>,
    what: &str,
) -> anyhow::Result<u64> {
    if statements.is_empty() {
        return Ok(0);
    }
    let reply = db
        .run_command(doc! {"update": coll, "updates": statements, "ordered": false})
        .await
        .with_context(|| what.to_owned())?;
    check_no_errors(&reply, what)?;
    Ok(int(reply.get("n")).max(0) as u64)
}

/// Runs one raw `insert` command (`ordered: false`); returns the indices of documents that
/// already existed (duplicate `_id`). Any other error fails.
pub async fn insert(
    db: &Database,
    coll: &str,
    docs: Vec<Document>,
    what: &str,
) -> anyhow::Result<HashSet<usize>> {
    if docs.is_empty() {
        return Ok(HashSet::new());
    }
    let reply = db
        .run_command(doc! {"insert": coll, "documents": docs, "ordered": false})
        .await
        .with_context(|| what.to_owned())?;
    duplicate_indices(&reply, what)
}

/// Deletes the documents with these ids, in one round trip.
pub async fn delete_ids(
    db: &Database,
    coll: &str,
    ids: &[String],
    what: &str,
) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let reply = db
        .run_command(doc! {
            "delete": coll,
            "deletes": [{"q": {"_id": {"$in": ids}}, "limit": 0}],
            "ordered": false,
        })
        .await
        .with_context(|| what.to_owned())?;
    check_no_errors(&reply, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replies() {
        let ok = doc! {"ok": 1, "n": 2};
        assert!(duplicate_indices(&ok, "x").unwrap().is_empty());
        let dup =
            doc! {"ok": 1, "n": 1, "writeErrors": [{"index": 1, "code": 11000, "errmsg": "dup"}]};
        assert_eq!(
            duplicate_indices(&dup, "x").unwrap(),
            HashSet::from([1usize])
        );
        assert!(check_no_errors(&dup, "x").is_err());
        let other = doc! {"ok": 1, "writeErrors": [{"index": 0, "code": 2, "errmsg": "bad"}]};
        assert!(duplicate_indices(&other, "x").is_err());
    }
}
