//! Packaging a function folder: the files left after the ignore rules, as a single file (when
//! there is exactly one, at the top) or as a deterministic `.tar.gz` (sorted, mtime 0, modes
//! 0644/0755) — the forms the worker unpacks (`worker::code::unpack`).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::error::{CliError, Result};
use crate::ignore::{self, Rules};
use crate::manifest::Manifest;

/// A file to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `/`-separated path inside the package.
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    pub executable: bool,
}

/// What a folder packs to, before packing.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub files: Vec<Entry>,
    /// Symbolic links found and left out (packages cannot hold links).
    pub skipped_links: Vec<String>,
}

impl Listing {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn contains(&self, rel: &Path) -> bool {
        let rel = rel.to_string_lossy();
        self.files.iter().any(|f| f.rel == rel)
    }
}

/// A built package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Package {
    Single { filename: String, bytes: Vec<u8> },
    TarGz { bytes: Vec<u8> },
}

impl Package {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Package::Single { bytes, .. } | Package::TarGz { bytes } => bytes,
        }
    }

    /// The `filename` field of the spec (the single file's name, or a name for the archive).
    pub fn filename(&self) -> &str {
        match self {
            Package::Single { filename, .. } => filename,
            Package::TarGz { .. } => "package.tar.gz",
        }
    }

    pub fn kind(&self) -> schemas::CodeKind {
        match self {
            Package::Single { .. } => schemas::CodeKind::Single,
            Package::TarGz { .. } => schemas::CodeKind::TarGz,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Package::Single { filename, bytes } => {
                format!(
                    "single file {filename}, {}",
                    human_bytes(bytes.len() as u64)
                )
            }
            Package::TarGz { bytes } => format!("tar.gz, {}", human_bytes(bytes.len() as u64)),
        }
    }
}

/// The ignore rules of a function folder: the defaults, `.colorfaasignore`, then the
/// manifest's `ignore` list.
pub fn rules(dir: &Path, manifest: &Manifest) -> Result<Rules> {
    let file = dir.join(ignore::FILE);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(CliError::local(format!(
                "cannot read {}: {e}",
                file.display()
            )))
        }
    };
    Ok(Rules::new(
        text.lines()
            .chain(manifest.ignore.iter().map(String::as_str)),
    ))
}

/// Lists the files to pack under `dir`, leaving out ignored paths and any of `exclude`
/// (absolute paths, e.g. the CLI's config folder).
pub fn list(dir: &Path, rules: &Rules, exclude: &[PathBuf]) -> Result<Listing> {
    let root = dir
        .canonicalize()
        .map_err(|e| CliError::usage(format!("cannot open {}: {e}", dir.display())))?;
    let exclude: Vec<PathBuf> = exclude
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    let mut out = Listing::default();
    walk(&root, "", rules, &exclude, &mut out)?;
    out.files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    rules: &Rules,
    exclude: &[PathBuf],
    out: &mut Listing,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let io =
        |p: &Path, e: std::io::Error| CliError::local(format!("cannot read {}: {e}", p.display()));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return Err(CliError::usage(format!(
                "{} has a name that is not UTF-8: rename it or add it to {}",
                e.path().display(),
                ignore::FILE
            )));
        };
        let rel = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let path = e.path();
        if exclude.contains(&path) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|err| io(&path, err))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            if !rules.ignored(&rel, path.is_dir()) {
                out.skipped_links.push(rel);
            }
            continue;
        }
        if ft.is_dir() {
            if !rules.ignored(&rel, true) {
                walk(&path, &rel, rules, exclude, out)?;
            }
        } else if ft.is_file() && !rules.ignored(&rel, false) {
            out.files.push(Entry {
                rel,
                size: meta.len(),
                executable: meta.permissions().mode() & 0o111 != 0,
                path,
            });
        }
    }
    Ok(())
}

/// Packs the listing; `progress(bytes_read)` is called as files are read.
pub fn build(listing: &Listing, progress: &mut dyn FnMut(u64)) -> Result<Package> {
    let read = |e: &Entry| {
        std::fs::read(&e.path)
            .map_err(|err| CliError::local(format!("cannot read {}: {err}", e.path.display())))
    };
    if listing.files.is_empty() {
        return Err(
            CliError::usage("nothing to deploy: every file is ignored").hint(format!(
                "check {} and the manifest's \"ignore\"",
                ignore::FILE
            )),
        );
    }
    if let [only] = listing.files.as_slice() {
        if !only.rel.contains('/') {
            let bytes = read(only)?;
            progress(bytes.len() as u64);
            return Ok(Package::Single {
                filename: only.rel.clone(),
                bytes,
            });
        }
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut done = 0u64;
    let err = |e: std::io::Error| CliError::local(format!("packing failed: {e}"));
    for f in &listing.files {
        let file = std::fs::File::open(&f.path)
            .map_err(|e| CliError::local(format!("cannot read {}: {e}", f.path.display())))?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(f.size);
        h.set_mode(if f.executable { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let mut counting = Counting {
            inner: file.take(f.size),
            done: &mut done,
            progress,
        };
        tar.append_data(&mut h, &f.rel, &mut counting)
            .map_err(err)?;
    }
    let gz = tar.into_inner().map_err(err)?;
    let bytes = gz.finish().map_err(err)?;
    Ok(Package::TarGz { bytes })
}

struct Counting<'a, R> {
    inner: R,
    done: &'a mut u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.done += n as u64;
        (self.progress)(*self.done);
        Ok(n)
    }
}

/// Lists and packs a function folder as `deploy` and `run-local` do, checking that the handler
/// is in the package and the package is within the upload limit.
pub fn package_dir(
    dir: &Path,
    manifest: &Manifest,
    exclude: &[PathBuf],
    progress: &mut dyn FnMut(u64),
) -> Result<(Listing, Package)> {
    let rules = rules(dir, manifest)?;
    let listing = list(dir, &rules, exclude)?;
    let candidates = manifest.handler_candidates();
    if !candidates.iter().any(|c| listing.contains(c)) {
        return Err(CliError::usage(format!(
            "the handler file {} is ignored, so it would not be in the package",
            candidates[0].display()
        ))
        .hint(format!(
            "remove the rule that matches it from {} or the manifest's \"ignore\"",
            ignore::FILE
        )));
    }
    let pkg = build(&listing, progress)?;
    let limit = schemas::limits::CODE_BYTES as u64;
    let size = pkg.bytes().len() as u64;
    if size > limit {
        return Err(CliError::usage(format!(
            "the package is {}, over the {} limit",
            human_bytes(size),
            human_bytes(limit)
        ))
        .hint(format!("leave large files out with {}", ignore::FILE)));
    }
    Ok((listing, pkg))
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("cf-sdk-pkg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn manifest(rt: &str, handler: &str) -> Manifest {
        Manifest::parse(&format!(
            r#"{{"name":"f","runtime":"{rt}","handler":"{handler}"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn one_top_file_is_sent_as_a_single_file() {
        let d = tmp();
        std::fs::write(d.join("main.py"), "def handle(e, c):\n    return 1\n").unwrap();
        std::fs::write(d.join("colorfaas.json"), "{}").unwrap();
        std::fs::create_dir(d.join("__pycache__")).unwrap();
        std::fs::write(d.join("__pycache__/main.pyc"), "x").unwrap();
        let (_, pkg) =
            package_dir(&d, &manifest("python3", "main.handle"), &[], &mut |_| {}).unwrap();
        assert_eq!(
            pkg,
            Package::Single {
                filename: "main.py".into(),
                bytes: b"def handle(e, c):\n    return 1\n".to_vec()
            }
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn folders_become_a_tar_gz_the_worker_unpacks_with_modes() {
        let d = tmp();
        std::fs::write(d.join("handler"), "#!/bin/sh\necho 1\n").unwrap();
        std::fs::set_permissions(d.join("handler"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir_all(d.join("lib/deep")).unwrap();
        std::fs::write(d.join("lib/deep/data.txt"), "data").unwrap();
        std::fs::write(d.join("secret.env"), "x").unwrap();
        std::fs::write(d.join(".colorfaasignore"), "*.env\n").unwrap();
        std::fs::create_dir(d.join("cfg")).unwrap();
        std::fs::write(d.join("cfg/config.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        let mut seen = 0;
        let (listing, pkg) = package_dir(
            &d,
            &manifest("exec", "handler"),
            &[d.join("cfg")],
            &mut |n| seen = n,
        )
        .unwrap();
        let names: Vec<_> = listing.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(names, ["handler", "lib/deep/data.txt"]);
        assert_eq!(listing.skipped_links, ["link"]);
        assert_eq!(seen, listing.total_bytes());
        assert_eq!(pkg.kind(), schemas::CodeKind::TarGz);
        // Deterministic: the same folder packs to the same bytes.
        let (_, again) = package_dir(
            &d,
            &manifest("exec", "handler"),
            &[d.join("cfg")],
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(pkg, again);

        let out = tmp().join("unpacked");
        worker::code::unpack(pkg.bytes(), pkg.kind(), pkg.filename(), &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("lib/deep/data.txt")).unwrap(),
            "data"
        );
        let mode = std::fs::metadata(out.join("handler"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_ignored_handler_is_an_error() {
        let d = tmp();
        std::fs::write(d.join("index.js"), "exports.handle = async () => 1;\n").unwrap();
        std::fs::write(d.join(".colorfaasignore"), "*.js\n").unwrap();
        let e = package_dir(&d, &manifest("node", "index.handle"), &[], &mut |_| {}).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("is ignored"), "{}", e.message);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20.0 MiB");
    }
}
