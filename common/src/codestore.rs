//! The shared code store: function packages in MongoDB in the GridFS layout (bucket `code`:
//! `code.files` + `code.chunks`, 255 KiB chunks), one file per content hash (SHA-256, which is
//! also the file's `_id`), so uploads are idempotent and workers cache by hash. The documents
//! are written and read with plain inserts and finds (any GridFS tool reads them), which also
//! keeps them readable on MongoDB-wire stand-ins whose GridFS support is partial.

use anyhow::Context as _;
use bson::{doc, spec::BinarySubtype, Binary, Document};
use futures::TryStreamExt;
use mongodb::options::FindOptions;
use mongodb::Database;
use sha2::{Digest, Sha256};

/// GridFS's default chunk size.
const CHUNK: usize = 255 * 1024;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn files(db: &Database) -> mongodb::Collection<Document> {
    db.collection(&format!(
        "{}.files",
        schemas::names::collections::CODE_BUCKET
    ))
}

fn chunks(db: &Database) -> mongodb::Collection<Document> {
    db.collection(&format!(
        "{}.chunks",
        schemas::names::collections::CODE_BUCKET
    ))
}

/// Stores `bytes` under their hash unless already stored; returns the hash. The files document
/// is written last: a package is visible only once all its chunks are.
pub async fn put(db: &Database, bytes: &[u8]) -> anyhow::Result<String> {
    let sha = sha256_hex(bytes);
    if files(db)
        .find_one(doc! {"_id": &sha})
        .await
        .context("looking up stored code")?
        .is_some()
    {
        return Ok(sha);
    }
    // Chunks left by an interrupted upload of the same content are replaced.
    chunks(db)
        .delete_many(doc! {"files_id": &sha})
        .await
        .context("clearing partial code chunks")?;
    let docs: Vec<Document> = bytes
        .chunks(CHUNK)
        .enumerate()
        .map(|(n, data)| {
            doc! {
                "files_id": &sha,
                "n": n as i32,
                "data": Binary { subtype: BinarySubtype::Generic, bytes: data.to_vec() },
            }
        })
        .collect();
    if !docs.is_empty() {
        chunks(db)
            .insert_many(docs)
            .await
            .context("uploading code chunks")?;
    }
    let file = doc! {
        "_id": &sha,
        "length": bytes.len() as i64,
        "chunkSize": CHUNK as i32,
        "uploadDate": bson::DateTime::now(),
        "filename": &sha,
    };
    match files(db).insert_one(file).await {
        Ok(_) => Ok(sha),
        Err(e) if crate::mongo::is_duplicate_key(&e) => Ok(sha),
        Err(e) => Err(anyhow::Error::new(e).context("finishing the code upload")),
    }
}

/// Reads the package stored under `sha` and checks its hash.
pub async fn get(db: &Database, sha: &str) -> anyhow::Result<Vec<u8>> {
    let file = files(db)
        .find_one(doc! {"_id": sha})
        .await
        .with_context(|| format!("looking up code package {sha}"))?
        .ok_or_else(|| anyhow::anyhow!("code package {sha} is not in the store"))?;
    let length = file
        .get("length")
        .and_then(|l| l.as_i64().or_else(|| l.as_i32().map(i64::from)))
        .unwrap_or(0) as usize;
    let mut cursor = chunks(db)
        .find(doc! {"files_id": sha})
        .with_options(FindOptions::builder().sort(doc! {"n": 1}).build())
        .await
        .with_context(|| format!("reading code package {sha}"))?;
    let mut buf = Vec::with_capacity(length);
    while let Some(chunk) = cursor.try_next().await? {
        let data = chunk
            .get_binary_generic("data")
            .with_context(|| format!("code package {sha} has a malformed chunk"))?;
        buf.extend_from_slice(data);
    }
    anyhow::ensure!(
        buf.len() == length && sha256_hex(&buf) == sha,
        "code package {sha} is corrupt (hash or length mismatch)"
    );
    Ok(buf)
}
