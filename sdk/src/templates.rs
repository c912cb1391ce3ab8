//! `colorfaas init`: a ready function folder per runtime — handler, manifest, sample event,
//! ignore file and a local test — from the templates in `sdk/templates/` (embedded).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use schemas::limits::DEFAULT_TIMEOUT_MS;
use schemas::{Mode, Runtime};

use crate::error::{CliError, Result};
use crate::manifest::{self, Manifest, Resources};

const EVENT: &str = include_str!("../templates/event.json");

/// One file of a template: path, text (with `{{name}}` placeholders), executable.
type File = (&'static str, &'static str, bool);

const PYTHON3: [File; 3] = [
    (
        "main.py",
        include_str!("../templates/python3/main.py"),
        false,
    ),
    (
        "test_main.py",
        include_str!("../templates/python3/test_main.py"),
        false,
    ),
    (
        ".colorfaasignore",
        include_str!("../templates/python3/colorfaasignore"),
        false,
    ),
];
const NODE: [File; 3] = [
    (
        "index.js",
        include_str!("../templates/node/index.js"),
        false,
    ),
    ("test.js", include_str!("../templates/node/test.js"), false),
    (
        ".colorfaasignore",
        include_str!("../templates/node/colorfaasignore"),
        false,
    ),
];
const EXEC: [File; 3] = [
    ("handler", include_str!("../templates/exec/handler"), true),
    ("test.sh", include_str!("../templates/exec/test.sh"), true),
    (
        ".colorfaasignore",
        include_str!("../templates/exec/colorfaasignore"),
        false,
    ),
];

/// The manifest `init` writes for `runtime`.
pub fn manifest(name: &str, runtime: Runtime) -> Manifest {
    let handler = match runtime {
        Runtime::Python3 => "main.handle",
        Runtime::Node => "index.handle",
        Runtime::Exec => "handler",
    };
    Manifest {
        name: name.to_owned(),
        runtime: runtime.as_str().to_owned(),
        handler: handler.to_owned(),
        description: "says hello to whoever `name` names".to_owned(),
        args_schema: serde_json::from_value(serde_json::json!({"name": "string"}))
            .expect("an object"),
        mode: Mode::Sync.as_str().to_owned(),
        resources: Resources::default(),
        timeout_ms: DEFAULT_TIMEOUT_MS,
        retries: None,
        max_event_age_s: None,
        env: Default::default(),
        max_concurrency: None,
        ignore: Vec::new(),
    }
}

/// The command that runs the folder's local test.
pub fn local_test_command(runtime: Runtime) -> &'static str {
    match runtime {
        Runtime::Python3 => "python3 test_main.py",
        Runtime::Node => "node test.js",
        Runtime::Exec => "sh test.sh",
    }
}

/// Creates `<parent>/<name>/` for `runtime`; returns the folder and the files written.
pub fn init(parent: &Path, name: &str, runtime: &str) -> Result<(PathBuf, Vec<String>)> {
    if !manifest::valid_name(name) {
        return Err(manifest::name_error(name));
    }
    let runtime = Runtime::parse(runtime).ok_or_else(|| manifest::unknown_runtime(runtime))?;
    let files: &[File] = match runtime {
        Runtime::Python3 => &PYTHON3,
        Runtime::Node => &NODE,
        Runtime::Exec => &EXEC,
    };
    let dir = if parent == Path::new(".") {
        PathBuf::from(name)
    } else {
        parent.join(name)
    };
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(
            CliError::usage(format!("{} already exists and is not empty", dir.display()))
                .hint("pick another name, or remove the folder first"),
        );
    }
    let io =
        |p: &Path, e: std::io::Error| CliError::local(format!("cannot write {}: {e}", p.display()));
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let mut written = Vec::new();
    let mut write = |rel: &str, text: &str, exec: bool| -> Result<()> {
        let path = dir.join(rel);
        std::fs::write(&path, text.replace("{{name}}", name)).map_err(|e| io(&path, e))?;
        if exec {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io(&path, e))?;
        }
        written.push(rel.to_owned());
        Ok(())
    };
    let m = manifest(name, runtime);
    let mut text = serde_json::to_string_pretty(&m).expect("a manifest serializes");
    text.push('\n');
    write(manifest::FILE, &text, false)?;
    for (rel, body, exec) in files {
        write(rel, body, *exec)?;
    }
    write("event.json", EVENT, false)?;
    Ok((dir, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_gets_a_valid_folder() {
        let parent = std::env::temp_dir().join(format!("cf-sdk-init-{}", uuid::Uuid::new_v4()));
        for rt in Runtime::ALL.map(Runtime::as_str) {
            let name = format!("hello-{rt}");
            let (dir, files) = init(&parent, &name, rt).unwrap();
            assert!(files.contains(&"event.json".to_owned()));
            let m = Manifest::load(&dir).unwrap();
            assert_eq!(m.name, name);
            assert_eq!(m.runtime, rt);
            let all = std::fs::read_dir(&dir).unwrap().count();
            assert_eq!(all, files.len());
            for f in &files {
                let text = std::fs::read_to_string(dir.join(f)).unwrap();
                assert!(!text.contains("{{name}}"), "{f}");
            }
            // A second init into the same folder is refused.
            assert_eq!(init(&parent, &name, rt).unwrap_err().code, 2);
        }
        assert!(init(&parent, "Bad_Name", "python3")
            .unwrap_err()
            .message
            .contains("invalid function name"));
        assert!(init(&parent, "ok", "ruby")
            .unwrap_err()
            .message
            .contains("unknown runtime"));
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
