//! Validation of uploaded function code, before it is stored in the shared code store.
//!
//! - Size: at most [`schemas::limits::CODE_BYTES`] (20 MiB) decoded, else 413.
//! - Kind by magic bytes: `PK\x03\x04` / `PK\x05\x06` is a .zip, `\x1f\x8b` a .tar.gz, anything
//!   else one source file stored under its `filename`.
//! - Archives (400 otherwise): every entry is a regular file or a folder (no symlinks, hard
//!   links or devices); no absolute path, no `..` component; at most [`Limits::entries`] entries
//!   and [`Limits::unpacked_bytes`] in total (counted while actually decompressing, so a lying
//!   header does not help a zip bomb). These are the rules the worker applies when it unpacks
//!   (worker/src/code.rs), checked here first so a bad package never reaches a worker.
//! - The handler must exist in the package (400): python3 `a.b.handle` needs `a/b.py` (or
//!   `a/b/__init__.py`); node `lib/main.handle` needs `lib/main.js` (or `.cjs`, `.mjs`, the bare
//!   file, `lib/main/index.js`); exec names the executable's path in the package.

use std::collections::BTreeSet;
use std::io::Read;

use base64::Engine as _;
use schemas::{CodeKind, Runtime};

use crate::error::PortalError;

/// Limits of a code package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The package's bytes, decoded.
    pub code_bytes: usize,
    /// The unpacked files, in total.
    pub unpacked_bytes: u64,
    /// Entries (files and folders) of an archive.
    pub entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            code_bytes: schemas::limits::CODE_BYTES,
            unpacked_bytes: schemas::limits::UNPACKED_CODE_BYTES,
            entries: 10_000,
        }
    }
}

/// The files of a package (relative paths, `/`-separated, without `./`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub kind: CodeKind,
    pub files: BTreeSet<String>,
    pub unpacked_bytes: u64,
}

fn bad(message: impl Into<String>) -> PortalError {
    PortalError::invalid("code", message)
}

/// Decodes `code_base64` (whitespace allowed), refusing more than `limit` decoded bytes (413)
/// before decoding.
pub fn decode_base64(text: &str, limit: usize) -> Result<Vec<u8>, PortalError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.len() / 4 * 3 > limit + 2 {
        return Err(PortalError::TooLarge {
            what: "the code",
            limit: limit as u64,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| PortalError::invalid("code_base64", format!("not valid base64: {e}")))?;
    check_size(&bytes, limit)?;
    Ok(bytes)
}

/// 413 when the package is over `limit` bytes; 400 when it is empty.
pub fn check_size(bytes: &[u8], limit: usize) -> Result<(), PortalError> {
    if bytes.len() > limit {
        return Err(PortalError::TooLarge {
            what: "the code",
            limit: limit as u64,
        });
    }
    if bytes.is_empty() {
        return Err(bad("the code is empty"));
    }
    Ok(())
}

/// The kind of a package, by its first bytes.
pub fn detect_kind(bytes: &[u8]) -> CodeKind {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        CodeKind::Zip
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        CodeKind::TarGz
    } else {
        CodeKind::Single
    }
}

/// A single file's name: 1–255 characters of letters, digits, `.`, `_` and `-`, not `.`/`..`.
pub fn check_filename(name: &str) -> Result<(), PortalError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PortalError::invalid(
            "filename",
            format!(
                "{name:?} is not a valid file name (letters, digits, '.', '_' and '-', e.g. main.py)"
            ),
        ))
    }
}

/// A package entry's path, normalized; 400 for absolute paths and `..`.
fn entry_path(raw: &str) -> Result<String, PortalError> {
    if raw.contains('\0') {
        return Err(bad(format!(
            "{raw:?} in the archive has a NUL byte in its name"
        )));
    }
    let unified = raw.replace('\\', "/");
    if unified.starts_with('/')
        || unified.as_bytes().get(1) == Some(&b':') && unified.as_bytes()[0].is_ascii_alphabetic()
    {
        return Err(bad(format!(
            "{raw:?} in the archive is an absolute path; paths must be relative to the package"
        )));
    }
    let mut parts = Vec::new();
    for p in unified.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                return Err(bad(format!(
                    "{raw:?} in the archive leaves the package (path traversal with '..')"
                )))
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

struct Counter {
    limits: Limits,
    entries: usize,
    total: u64,
}

impl Counter {
    fn entry(&mut self) -> Result<(), PortalError> {
        self.entries += 1;
        if self.entries > self.limits.entries {
            return Err(bad(format!(
                "the archive has more than {} entries",
                self.limits.entries
            )));
        }
        Ok(())
    }

    /// Reads a file's data to the end, counting it against the unpacked limit.
    fn data(&mut self, r: &mut dyn Read, name: &str) -> Result<(), PortalError> {
        let room = self.limits.unpacked_bytes - self.total;
        let n = std::io::copy(&mut r.take(room + 1), &mut std::io::sink())
            .map_err(|e| bad(format!("{name:?} in the archive cannot be read: {e}")))?;
        self.total += n;
        if self.total > self.limits.unpacked_bytes {
            return Err(bad(format!(
                "the archive unpacks to more than {} bytes (a zip bomb?)",
                self.limits.unpacked_bytes
            )));
        }
        Ok(())
    }
}

fn inspect_zip(bytes: &[u8], limits: Limits) -> Result<Package, PortalError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(format!("not a readable .zip archive: {e}")))?;
    let mut c = Counter {
        limits,
        entries: 0,
        total: 0,
    };
    if zip.len() > limits.entries {
        return Err(bad(format!(
            "the archive has more than {} entries",
            limits.entries
        )));
    }
    let mut files = BTreeSet::new();
    for i in 0..zip.len() {
        c.entry()?;
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("entry {i} of the .zip cannot be read: {e}")))?;
        let name = entry.name().to_owned();
        let path = entry_path(&name)?;
        let mode = entry.unix_mode().unwrap_or(0o644);
        if mode & 0o170000 == 0o120000 {
            return Err(bad(format!(
                "{name:?} in the archive is a symbolic link; only files and folders are allowed"
            )));
        }
        if entry.is_dir() {
            continue;
        }
        if entry.size() > limits.unpacked_bytes {
            return Err(bad(format!(
                "the archive unpacks to more than {} bytes (a zip bomb?)",
                limits.unpacked_bytes
            )));
        }
        c.data(&mut entry, &name)?;
        if !path.is_empty() {
            files.insert(path);
        }
    }
    Ok(Package {
        kind: CodeKind::Zip,
        files,
        unpacked_bytes: c.total,
    })
}

fn inspect_tar_gz(bytes: &[u8], limits: Limits) -> Result<Package, PortalError> {
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut ar = tar::Archive::new(gz);
    let mut c = Counter {
        limits,
        entries: 0,
        total: 0,
    };
    let mut files = BTreeSet::new();
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a readable .tar.gz archive: {e}")))?;
    for entry in entries {
        c.entry()?;
        let mut entry = entry.map_err(|e| bad(format!("not a readable .tar.gz archive: {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = entry_path(&name)?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                c.data(&mut entry, &name)?;
                if !path.is_empty() {
                    files.insert(path);
                }
            }
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(bad(format!(
                    "{name:?} in the archive is a link; only files and folders are allowed"
                )))
            }
            t => {
                return Err(bad(format!(
                    "{name:?} in the archive is a {t:?}; only files and folders are allowed"
                )))
            }
        }
    }
    Ok(Package {
        kind: CodeKind::TarGz,
        files,
        unpacked_bytes: c.total,
    })
}

/// Checks a package and lists its files. `filename` names a single file (ignored for archives).
pub fn inspect(bytes: &[u8], filename: &str, limits: Limits) -> Result<Package, PortalError> {
    check_size(bytes, limits.code_bytes)?;
    match detect_kind(bytes) {
        CodeKind::Zip => inspect_zip(bytes, limits),
        CodeKind::TarGz => inspect_tar_gz(bytes, limits),
        CodeKind::Single => {
            check_filename(filename)?;
            Ok(Package {
                kind: CodeKind::Single,
                files: BTreeSet::from([filename.to_owned()]),
                unpacked_bytes: bytes.len() as u64,
            })
        }
    }
}

/// Checks the handler's form for the runtime (400 on `handler`).
pub fn check_handler_form(runtime: Runtime, handler: &str) -> Result<(), PortalError> {
    let bad = |m: String| Err(PortalError::invalid("handler", m));
    if handler.is_empty() {
        return bad("enter the handler".into());
    }
    if handler.len() > 255 || handler.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(format!("{handler:?} is not a valid handler"));
    }
    match runtime {
        Runtime::Python3 | Runtime::Node => {
            let Some((module, function)) = handler.rsplit_once('.') else {
                return bad(format!(
                    "{handler:?} must be module.function, e.g. main.handle"
                ));
            };
            let ident = |s: &str| {
                !s.is_empty()
                    && !s.starts_with(|c: char| c.is_ascii_digit())
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            };
            if module.is_empty() || !ident(function) {
                return bad(format!(
                    "{handler:?} must be module.function, e.g. main.handle"
                ));
            }
            if module.contains("..") || module.starts_with('/') {
                return bad(format!("{handler:?} names a module outside the package"));
            }
            Ok(())
        }
        Runtime::Exec => {
            entry_path(handler).map_err(|_| {
                PortalError::invalid(
                    "handler",
                    format!("{handler:?} must be a path inside the package"),
                )
            })?;
            Ok(())
        }
    }
}

/// The package files that would satisfy `handler`, in preference order.
pub fn handler_candidates(runtime: Runtime, handler: &str) -> Vec<String> {
    match runtime {
        Runtime::Python3 => {
            let module = handler.rsplit_once('.').map_or("", |(m, _)| m);
            let path = module.replace('.', "/");
            vec![format!("{path}.py"), format!("{path}/__init__.py")]
        }
        Runtime::Node => {
            let module = handler.rsplit_once('.').map_or("", |(m, _)| m);
            let m = module.trim_start_matches("./");
            vec![
                format!("{m}.js"),
                format!("{m}.cjs"),
                format!("{m}.mjs"),
                m.to_owned(),
                format!("{m}/index.js"),
            ]
        }
        Runtime::Exec => vec![entry_path(handler).unwrap_or_default()],
    }
}

/// 400 unless the handler's file is in the package.
pub fn check_handler(runtime: Runtime, handler: &str, pkg: &Package) -> Result<(), PortalError> {
    check_handler_form(runtime, handler)?;
    let candidates = handler_candidates(runtime, handler);
    if candidates.iter().any(|c| pkg.files.contains(c)) {
        return Ok(());
    }
    let what = match runtime {
        Runtime::Exec => format!("the executable {:?}", candidates[0]),
        _ => format!("the module file {:?}", candidates[0]),
    };
    let found = if pkg.kind == CodeKind::Single {
        format!(
            "the uploaded file is named {:?}",
            pkg.files.iter().next().cloned().unwrap_or_default()
        )
    } else {
        format!("the package has {} files", pkg.files.len())
    };
    Err(PortalError::invalid(
        "handler",
        format!("handler {handler:?} needs {what} in the package, but {found}"),
    ))
}

/// The handler a single uploaded file implies when none is given: `adder.py` → `adder.handle`
/// (python3), `adder.js` → `adder.handle` (node), the file itself (exec).
pub fn infer_handler(runtime: Runtime, filename: &str) -> Option<String> {
    check_filename(filename).ok()?;
    let stem = match runtime {
        Runtime::Python3 => filename.strip_suffix(".py")?,
        Runtime::Node => [".js", ".cjs", ".mjs"]
            .iter()
            .find_map(|ext| filename.strip_suffix(ext))?,
        Runtime::Exec => return Some(filename.to_owned()),
    };
    let ident = !stem.is_empty()
        && !stem.starts_with(|c: char| c.is_ascii_digit())
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ident.then(|| format!("{stem}.handle"))
}

/// The handler's module file and its source, for the compile check (python3 `.py`, node
/// `.js`/`.cjs`/`.mjs` or a bare file); `None` for exec, or a file that cannot be read.
pub fn handler_source(
    bytes: &[u8],
    pkg: &Package,
    runtime: Runtime,
    handler: &str,
) -> Option<(String, Vec<u8>)> {
    if runtime == Runtime::Exec {
        return None;
    }
    let file = handler_candidates(runtime, handler)
        .into_iter()
        .find(|c| pkg.files.contains(c))?;
    let max = crate::codecheck::MAX_SOURCE as u64 + 1;
    let source = match pkg.kind {
        CodeKind::Single => bytes.to_vec(),
        CodeKind::Zip => {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
            let mut out = Vec::new();
            let name = (0..zip.len()).find(|i| {
                zip.name_for_index(*i)
                    .and_then(|n| entry_path(n).ok())
                    .is_some_and(|p| p == file)
            })?;
            zip.by_index(name)
                .ok()?
                .take(max)
                .read_to_end(&mut out)
                .ok()?;
            out
        }
        CodeKind::TarGz => {
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
            let mut found = None;
            for entry in ar.entries().ok()? {
                let mut entry = entry.ok()?;
                let path = entry_path(&String::from_utf8_lossy(&entry.path_bytes())).ok()?;
                if path == file && entry.header().entry_type().is_file() {
                    let mut out = Vec::new();
                    entry.by_ref().take(max).read_to_end(&mut out).ok()?;
                    found = Some(out);
                    break;
                }
            }
            found?
        }
    };
    Some((file, source))
}

/// [`inspect`] then [`check_handler`]: the package's kind when it is acceptable.
pub fn validate(
    bytes: &[u8],
    filename: &str,
    runtime: Runtime,
    handler: &str,
    limits: Limits,
) -> Result<Package, PortalError> {
    check_handler_form(runtime, handler)?;
    let pkg = inspect(bytes, filename, limits)?;
    check_handler(runtime, handler, &pkg)?;
    Ok(pkg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data, mode) in entries {
            if *mode & 0o170000 == 0o120000 {
                w.add_symlink(
                    *name,
                    "/etc/passwd",
                    zip::write::SimpleFileOptions::default(),
                )
                .unwrap();
                continue;
            }
            w.start_file(
                *name,
                zip::write::SimpleFileOptions::default().unix_permissions(*mode),
            )
            .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn msg(e: PortalError) -> String {
        e.to_string()
    }

    #[test]
    fn single_files() {
        let p = validate(
            b"def handle(e, c): return 1",
            "main.py",
            Runtime::Python3,
            "main.handle",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(p.kind, CodeKind::Single);
        let e = validate(
            b"x",
            "app.py",
            Runtime::Python3,
            "main.handle",
            Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("handler"));
        assert!(msg(e).contains("main.py"));
        assert!(validate(
            b"x",
            "../x.py",
            Runtime::Python3,
            "x.handle",
            Limits::default()
        )
        .is_err());
        assert!(validate(b"x", "run.sh", Runtime::Exec, "run.sh", Limits::default()).is_ok());
        assert!(validate(
            b"x",
            "index.js",
            Runtime::Node,
            "index.handle",
            Limits::default()
        )
        .is_ok());
        assert!(validate(
            b"x",
            "main.py",
            Runtime::Python3,
            "handle",
            Limits::default()
        )
        .is_err());
    }

    #[test]
    fn zips_are_checked() {
        let ok = zip_of(&[("pkg/mod.py", b"x", 0o644), ("pkg/__init__.py", b"", 0o644)]);
        validate(
            &ok,
            "",
            Runtime::Python3,
            "pkg.mod.handle",
            Limits::default(),
        )
        .unwrap();
        let e = validate(&ok, "", Runtime::Python3, "main.handle", Limits::default()).unwrap_err();
        assert_eq!(e.field(), Some("handler"));

        let trav = zip_of(&[("../evil.py", b"x", 0o644), ("main.py", b"x", 0o644)]);
        assert!(msg(inspect(&trav, "", Limits::default()).unwrap_err()).contains("traversal"));
        let abs = zip_of(&[("/etc/evil.py", b"x", 0o644)]);
        assert!(msg(inspect(&abs, "", Limits::default()).unwrap_err()).contains("absolute"));
        let link = zip_of(&[("main.py", b"", 0o120777)]);
        assert!(msg(inspect(&link, "", Limits::default()).unwrap_err()).contains("symbolic link"));

        let zeros = vec![0u8; 2 << 20];
        let bomb = zip_of(&[("main.py", &zeros, 0o644)]);
        assert!(bomb.len() < 100_000);
        let small = Limits {
            unpacked_bytes: 1 << 20,
            ..Limits::default()
        };
        assert!(msg(inspect(&bomb, "", small).unwrap_err()).contains("zip bomb"));
        let many: Vec<(String, Vec<u8>)> =
            (0..20).map(|i| (format!("f{i}.py"), Vec::new())).collect();
        let refs: Vec<(&str, &[u8], u32)> = many
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice(), 0o644))
            .collect();
        let few = Limits {
            entries: 10,
            ..Limits::default()
        };
        assert!(msg(inspect(&zip_of(&refs), "", few).unwrap_err()).contains("entries"));
    }

    #[test]
    fn tar_gz_links_are_refused() {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o755);
        b.append_data(&mut h, "bin/run", &b"x"[..]).unwrap();
        let ok = b.into_inner().unwrap().finish().unwrap();
        validate(&ok, "", Runtime::Exec, "bin/run", Limits::default()).unwrap();
        validate(&ok, "", Runtime::Exec, "./bin/run", Limits::default()).unwrap();

        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "main.py", "/etc/passwd").unwrap();
        let bytes = b.into_inner().unwrap().finish().unwrap();
        assert!(msg(inspect(&bytes, "", Limits::default()).unwrap_err()).contains("link"));
    }

    #[test]
    fn base64_and_sizes() {
        assert_eq!(decode_base64("aGk=\n", 10).unwrap(), b"hi");
        assert_eq!(
            decode_base64("!!", 10).unwrap_err().field(),
            Some("code_base64")
        );
        let big = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 100]);
        assert_eq!(decode_base64(&big, 50).unwrap_err().status(), 413);
        assert_eq!(decode_base64("", 10).unwrap_err().status(), 400);
    }
}
