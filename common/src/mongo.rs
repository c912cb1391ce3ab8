//! MongoDB connection and index creation.

use anyhow::Context as _;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Database, IndexModel};

/// Connects (with short selection timeouts, so an unreachable server is reported quickly)
/// and returns the database.
pub async fn connect(uri: &str, db: &str) -> anyhow::Result<Database> {
    let mut opts = ClientOptions::parse(uri)
        .await
        .with_context(|| format!("parsing MONGODB_URI {}", crate::config::redact_url(uri)))?;
    opts.server_selection_timeout = Some(std::time::Duration::from_secs(3));
    opts.connect_timeout = Some(std::time::Duration::from_secs(3));
    opts.app_name.get_or_insert_with(|| "colorfaas".to_owned());
    let client = Client::with_options(opts).context("creating the MongoDB client")?;
    Ok(client.database(db))
}

/// Pings the server: the `/healthz` check.
pub async fn ping(db: &Database) -> anyhow::Result<()> {
    db.run_command(bson::doc! {"ping": 1})
        .await
        .context("pinging MongoDB")?;
    Ok(())
}

/// Creates every index in [`schemas::names::indexes`] (idempotent).
pub async fn ensure_indexes(db: &Database) -> anyhow::Result<()> {
    for spec in schemas::names::indexes() {
        let model = IndexModel::builder()
            .keys(spec.keys.clone())
            .options(
                IndexOptions::builder()
                    .name(spec.name.to_owned())
                    .unique(spec.unique)
                    .expire_after(spec.expire_after_s.map(std::time::Duration::from_secs))
                    .build(),
            )
            .build();
        db.collection::<bson::Document>(spec.collection)
            .create_index(model)
            .await
            .with_context(|| format!("creating index {} on {}", spec.name, spec.collection))?;
    }
    Ok(())
}

/// True when `err` is a duplicate-key error (E11000), on one write or inside a batch.
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == 11000,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .is_some_and(|errs| !errs.is_empty() && errs.iter().all(|w| w.code == 11000)),
        ErrorKind::Command(e) => e.code == 11000,
        _ => err.to_string().contains("E11000") || err.to_string().contains("duplicate key"),
    }
}
