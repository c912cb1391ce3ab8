//! Upload checks that never run user code: a python3 handler module is compiled (its syntax
//! tree built by the host's `python3`, never imported) and must define the handler's function
//! at top level; a node handler module is parsed (`node --check`). Each check is a child
//! process with a time limit (and, for python, address-space and CPU limits it sets on itself
//! before reading the code), fed at most [`MAX_SOURCE`] bytes. Errors are 400 `invalid_code`
//! naming the file, line and reason. A host without the interpreter skips that check (logged);
//! the runtime still reports a load error on the first run.
//!
//! Why the host's interpreters rather than the runtime images: a check costs ~30 ms instead
//! of a container start (~400 ms), needs no Docker access from the portal, and parsing does
//! not execute anything (`ast` and `--check` only build a syntax tree). The host's python3 is
//! the images' minor version (3.11); `scripts/stack.sh` installs node where it is missing.

use std::io::{Read, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use schemas::Runtime;

use crate::error::PortalError;

/// Largest handler module checked; a bigger one is refused (400).
pub const MAX_SOURCE: usize = 2 * 1024 * 1024;
/// Longest a check may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The python side: reads the source on stdin; prints `{"line", "reason"}` or `{}`.
const PY_CHECK: &str = r#"
import ast, json, resource, sys
lim = 512 << 20
resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
resource.setrlimit(resource.RLIMIT_CPU, (8, 8))
name, func = sys.argv[1], sys.argv[2]
src = sys.stdin.buffer.read()
def out(**kw):
    sys.stdout.write(json.dumps(kw)); sys.exit(0)
try:
    tree = compile(src, name, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    compile(tree, name, "exec", dont_inherit=True)
except SyntaxError as e:
    out(line=e.lineno, reason=e.msg)
except (ValueError, UnicodeDecodeError) as e:
    out(line=None, reason=str(e))
except (RecursionError, MemoryError):
    out(line=None, reason="the module is too deeply nested or too large to compile")
names, star = set(), False
def bind(t):
    if isinstance(t, ast.Name): names.add(t.id)
    elif isinstance(t, (ast.Tuple, ast.List)):
        for e in t.elts: bind(e)
def walk(body):
    global star
    for s in body:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names.add(s.name)
        elif isinstance(s, ast.Assign):
            for t in s.targets: bind(t)
        elif isinstance(s, (ast.AnnAssign, ast.AugAssign)): bind(s.target)
        elif isinstance(s, (ast.Import, ast.ImportFrom)):
            for a in s.names:
                if a.name == "*": star = True
                else: names.add(a.asname or a.name.split(".")[0])
        elif isinstance(s, (ast.If, ast.For, ast.While, ast.With, ast.AsyncWith, ast.AsyncFor)):
            walk(s.body); walk(getattr(s, "orelse", []))
        elif isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
            walk(s.body); walk(s.orelse); walk(s.finalbody)
            for h in s.handlers: walk(h.body)
walk(tree.body)
if func not in names and not star:
    out(line=None, reason="the module does not define the handler function %r" % func)
out()
"#;

/// What a check found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeProblem {
    pub file: String,
    pub line: Option<u64>,
    pub reason: String,
}

impl From<CodeProblem> for PortalError {
    fn from(p: CodeProblem) -> PortalError {
        PortalError::InvalidCode {
            file: p.file,
            line: p.line,
            reason: p.reason,
        }
    }
}

/// Checks the handler module `file` (its `source`) of a python3 or node function; `function`
/// is the handler's function name. Blocking: call from `spawn_blocking`.
pub fn check(
    runtime: Runtime,
    file: &str,
    source: &[u8],
    function: &str,
) -> Result<(), CodeProblem> {
    let problem = |line, reason: String| CodeProblem {
        file: file.to_owned(),
        line,
        reason,
    };
    if source.len() > MAX_SOURCE {
        return Err(problem(
            None,
            format!("the handler module is larger than {MAX_SOURCE} bytes"),
        ));
    }
    match runtime {
        Runtime::Python3 => {
            let mut cmd = Command::new("python3");
            cmd.args(["-I", "-S", "-c", PY_CHECK, file, function]);
            let Some(out) = run(cmd, source, file)? else {
                return Ok(());
            };
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
                problem(
                    None,
                    "the python3 compiler could not check this module".into(),
                )
            })?;
            match v.get("reason").and_then(|r| r.as_str()) {
                None => Ok(()),
                Some(reason) => Err(problem(
                    v.get("line").and_then(|l| l.as_u64()),
                    reason.to_owned(),
                )),
            }
        }
        Runtime::Node => {
            // ES modules parse as modules; the rest as CommonJS, like the runtime loads them.
            let mut cmd = Command::new("node");
            if file.ends_with(".mjs") {
                cmd.arg("--input-type=module");
            }
            cmd.args(["--check", "-"]);
            let Some(out) = run(cmd, source, file)? else {
                return Ok(());
            };
            if out.status.success() {
                return Ok(());
            }
            let (line, reason) = node_error(&String::from_utf8_lossy(&out.stderr));
            Err(problem(line, reason))
        }
        Runtime::Exec => Ok(()),
    }
}

/// Runs a checker with `input` on stdin and a deadline; `None` when the interpreter is missing.
fn run(
    mut cmd: Command,
    input: &[u8],
    file: &str,
) -> Result<Option<std::process::Output>, CodeProblem> {
    let failed = |reason: &str| CodeProblem {
        file: file.to_owned(),
        line: None,
        reason: reason.to_owned(),
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(program = ?cmd.get_program(), "no interpreter to check uploads with; skipping the check");
            return Ok(None);
        }
        Err(e) => {
            tracing::warn!(error = %e, "starting the code check failed");
            return Err(failed("the code could not be checked; try again"));
        }
    };
    let mut stdin = child.stdin.take();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&data);
        }
    });
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let t0 = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if t0.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed("checking the code took too long"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return Err(failed("the code could not be checked; try again")),
        }
    };
    let _ = writer.join();
    Ok(Some(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }))
}

/// Reads a child's pipe to its end in a thread, keeping the first 64 KiB.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.by_ref().take(64 * 1024).read_to_end(&mut buf);
            let _ = std::io::copy(&mut p, &mut std::io::sink());
        }
        buf
    })
}

/// Line and reason of `node --check`'s report (`[stdin]:3` … `SyntaxError: …`).
fn node_error(stderr: &str) -> (Option<u64>, String) {
    let line = stderr.lines().find_map(|l| {
        l.strip_prefix("[stdin]:")
            .and_then(|n| n.trim().parse::<u64>().ok())
    });
    let reason = stderr
        .lines()
        .find(|l| l.contains("Error:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| "the module does not parse".to_owned());
    (line, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(src: &str, func: &str) -> Result<(), CodeProblem> {
        check(Runtime::Python3, "main.py", src.as_bytes(), func)
    }

    #[test]
    fn python_syntax_and_handler() {
        assert_eq!(py("def handle(e, c):\n    return e\n", "handle"), Ok(()));
        let e = py("x = 1\ndef handle(e, c)\n    return e\n", "handle").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("main.py", Some(2)), "{e:?}");
        let e = py("def other(e, c):\n    return e\n", "handle").unwrap_err();
        assert!(e.reason.contains("'handle'"), "{e:?}");
        // Compiled, not only parsed: `return` outside a function.
        assert_eq!(py("return 1\n", "handle").unwrap_err().line, Some(1));
        // Bound in other ways, or behind a star import: accepted.
        assert!(py("from json import dumps as handle\n", "handle").is_ok());
        assert!(py(
            "try:\n    import x\nexcept ImportError:\n    handle = print\n",
            "handle"
        )
        .is_ok());
        assert!(py("from helpers import *\n", "handle").is_ok());
        // Never run: a module that would exit or loop when imported is only parsed.
        assert!(py(
            "import os\nos._exit(3)\nwhile True: pass\ndef handle(e, c): pass\n",
            "handle"
        )
        .is_ok());
        assert!(py(&"(".repeat(100_000), "handle").is_err());
    }

    #[test]
    fn node_parse_errors_name_the_line() {
        let ok = check(
            Runtime::Node,
            "main.js",
            b"exports.handle = (e) => e;\n",
            "handle",
        );
        assert_eq!(ok, Ok(()));
        let e = check(
            Runtime::Node,
            "main.js",
            b"const a = 1;\nexports.handle = (e => e;\n",
            "handle",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2), "{e:?}");
        assert!(e.reason.contains("SyntaxError"), "{e:?}");
        let esm = check(
            Runtime::Node,
            "m.mjs",
            b"export function handle(e) { return e; }\n",
            "handle",
        );
        assert_eq!(esm, Ok(()));
    }

    #[test]
    fn node_stderr_is_read() {
        let (line, reason) =
            node_error("[stdin]:7\nfoo(\n   ^\n\nSyntaxError: Unexpected end of input\n    at x");
        assert_eq!(line, Some(7));
        assert_eq!(reason, "SyntaxError: Unexpected end of input");
    }
}
