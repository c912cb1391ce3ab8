//! The worker's code cache: packages fetched from the shared store (GridFS) by content hash and
//! unpacked once into `<work_dir>/code/<sha256>/`, which containers mount read-only.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use mongodb::Database;
use schemas::CodeKind;

/// Fetches and unpacks packages, each at most once per worker.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
    db: Database,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl CodeCache {
    pub fn new(dir: PathBuf, db: Database) -> CodeCache {
        CodeCache {
            dir,
            db,
            locks: Default::default(),
        }
    }

    /// The unpacked folder of package `sha`, fetching it first if needed.
    pub async fn ensure(
        &self,
        sha: &str,
        kind: CodeKind,
        filename: &str,
    ) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "invalid code hash {sha:?}"
        );
        // The folder name includes the single file's name: the same bytes may be uploaded
        // under two names.
        let name = match kind {
            CodeKind::Single => format!("{sha}-{}", safe_file_name(filename)?),
            _ => sha.to_owned(),
        };
        let dest = self.dir.join(&name);
        if dest.exists() {
            return Ok(dest);
        }
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(name.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if dest.exists() {
            return Ok(dest);
        }
        let bytes = common::codestore::get(&self.db, sha).await?;
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{name}", uuid::Uuid::new_v4()));
        let (tmp2, filename) = (tmp.clone(), filename.to_owned());
        tokio::task::spawn_blocking(move || unpack(&bytes, kind, &filename, &tmp2))
            .await
            .context("unpacking code")??;
        std::fs::rename(&tmp, &dest)
            .or_else(|e| if dest.exists() { Ok(()) } else { Err(e) })
            .context("moving unpacked code into place")?;
        let _ = std::fs::remove_dir_all(&tmp);
        Ok(dest)
    }
}

fn safe_file_name(name: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 255
            && !name.contains('/')
            && name != "."
            && name != ".."
            && !name.contains('\0'),
        "invalid file name {name:?}"
    );
    Ok(name)
}

/// A relative path inside the package, or an error for absolute paths and `..`.
fn safe_rel_path(p: &Path) -> anyhow::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => anyhow::bail!("unsafe path {} in package", p.display()),
        }
    }
    Ok(out)
}

/// Unpacks a package into `dest` (created), rejecting path traversal, links and bombs.
pub fn unpack(bytes: &[u8], kind: CodeKind, filename: &str, dest: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dest)?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))?;
    let limit = schemas::limits::UNPACKED_CODE_BYTES;
    let mut total: u64 = 0;
    let mut write = |rel: &Path, data: &mut dyn Read, mode: u32| -> anyhow::Result<()> {
        let rel = safe_rel_path(rel)?;
        let path = dest.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
            // Directories created for the package are world-readable so the container user
            // (not root) can read them.
            let mut p = parent;
            while p.starts_with(dest) && p != dest {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
                p = match p.parent() {
                    Some(p) => p,
                    None => break,
                };
            }
        }
        let mut f = std::fs::File::create(&path)?;
        let n = std::io::copy(&mut data.take(limit - total + 1), &mut f)?;
        total += n;
        anyhow::ensure!(total <= limit, "package unpacks to more than {limit} bytes");
        let exec = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(exec))?;
        Ok(())
    };
    match kind {
        CodeKind::Single => {
            let name = safe_file_name(filename)?;
            write(Path::new(name), &mut &bytes[..], 0o755)?;
        }
        CodeKind::Zip => {
            let mut zip =
                zip::ZipArchive::new(std::io::Cursor::new(bytes)).context("reading zip")?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i)?;
                let mode = entry.unix_mode().unwrap_or(0o644);
                anyhow::ensure!(
                    mode & 0o170000 != 0o120000,
                    "symlink {} in package",
                    entry.name()
                );
                let rel = entry
                    .enclosed_name()
                    .ok_or_else(|| anyhow::anyhow!("unsafe path {} in package", entry.name()))?;
                if entry.is_dir() {
                    std::fs::create_dir_all(dest.join(safe_rel_path(&rel)?))?;
                    std::fs::set_permissions(
                        dest.join(&rel),
                        std::fs::Permissions::from_mode(0o755),
                    )?;
                    continue;
                }
                write(&rel, &mut entry, mode)?;
            }
        }
        CodeKind::TarGz => {
            let gz = flate2::read::GzDecoder::new(bytes);
            let mut ar = tar::Archive::new(gz);
            for entry in ar.entries().context("reading tar.gz")? {
                let mut entry = entry?;
                let path = entry.path()?.into_owned();
                let mode = entry.header().mode().unwrap_or(0o644);
                match entry.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        write(&path, &mut entry, mode)?
                    }
                    tar::EntryType::Directory => {
                        let d = dest.join(safe_rel_path(&path)?);
                        std::fs::create_dir_all(&d)?;
                        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
                    }
                    t => anyhow::bail!(
                        "{} in package is a {t:?}, not a file or folder",
                        path.display()
                    ),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_file_is_written_readable() {
        let dir = std::env::temp_dir().join(format!("cf-code-{}", uuid::Uuid::new_v4()));
        unpack(b"print(1)", CodeKind::Single, "main.py", &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("main.py")).unwrap(), b"print(1)");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn traversal_is_refused() {
        assert!(safe_rel_path(Path::new("../etc/passwd")).is_err());
        assert!(safe_rel_path(Path::new("/etc/passwd")).is_err());
        assert!(safe_rel_path(Path::new("a/./b")).is_ok());
        assert!(safe_file_name("../x").is_err());
    }

    #[test]
    fn tar_gz_with_symlink_is_refused() {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "evil", "/etc/passwd").unwrap();
        let bytes = b.into_inner().unwrap().finish().unwrap();
        let dir = std::env::temp_dir().join(format!("cf-code-{}", uuid::Uuid::new_v4()));
        assert!(unpack(&bytes, CodeKind::TarGz, "", &dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
