//! The shared code store: function packages in a MongoDB GridFS bucket, one file per content
//! hash (SHA-256, which is also the file's id), so uploads are idempotent and workers can
//! cache by hash.

use anyhow::Context as _;
use futures::{AsyncReadExt, AsyncWriteExt};
use mongodb::gridfs::GridFsBucket;
use mongodb::options::GridFsBucketOptions;
use mongodb::Database;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn bucket(db: &Database) -> GridFsBucket {
    db.gridfs_bucket(
        GridFsBucketOptions::builder()
            .bucket_name(schemas::names::collections::CODE_BUCKET.to_owned())
            .build(),
    )
}

/// Stores `bytes` under their hash unless already stored; returns the hash.
pub async fn put(db: &Database, bytes: &[u8]) -> anyhow::Result<String> {
    let sha = sha256_hex(bytes);
    let b = bucket(db);
    if b.find_one(bson::doc! {"_id": &sha})
        .await
        .context("looking up stored code")?
        .is_some()
    {
        return Ok(sha);
    }
    let mut up = b
        .open_upload_stream(&sha)
        .id(bson::Bson::String(sha.clone()))
        .await
        .context("opening a code upload")?;
    up.write_all(bytes).await.context("uploading code")?;
    match up.close().await {
        Ok(()) => Ok(sha),
        // A concurrent upload of the same package won the race: same content, same id.
        Err(e) if e.to_string().contains("E11000") || e.to_string().contains("duplicate") => {
            Ok(sha)
        }
        Err(e) => Err(anyhow::Error::new(e).context("finishing the code upload")),
    }
}

/// Reads the package stored under `sha` and checks its hash.
pub async fn get(db: &Database, sha: &str) -> anyhow::Result<Vec<u8>> {
    let mut down = bucket(db)
        .open_download_stream(bson::Bson::String(sha.to_owned()))
        .await
        .with_context(|| format!("opening code package {sha}"))?;
    let mut buf = Vec::new();
    down.read_to_end(&mut buf)
        .await
        .with_context(|| format!("reading code package {sha}"))?;
    anyhow::ensure!(
        sha256_hex(&buf) == sha,
        "code package {sha} is corrupt (hash mismatch)"
    );
    Ok(buf)
}
