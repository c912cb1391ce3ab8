//! What commands read: `--data` (JSON text, `@file`, `@-`), JSON files, and answers typed on
//! the terminal.

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::Path;

use serde_json::Value;

use crate::error::{CliError, Result};

/// `--data`: JSON text, `@file`, or `@-` for standard input.
pub(super) fn parse_data(d: &str) -> Result<Value> {
    match d.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::local(format!("cannot read standard input: {e}")))?;
            serde_json::from_str(&s)
                .map_err(|e| CliError::usage(format!("standard input is not valid JSON: {e}")))
        }
        Some(file) => read_json_file(Path::new(file)),
        None => serde_json::from_str(d).map_err(|e| {
            CliError::usage(format!("--data is not valid JSON: {e}"))
                .hint("quote it for the shell, e.g. --data '{\"name\": \"Ada\"}', or pass a file with --data @event.json")
        }),
    }
}

pub(super) fn read_json_file(f: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(f)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", f.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("{} is not valid JSON: {e}", f.display())))
}

/// Asks a question on the terminal (or reads a line from piped stdin).
pub(super) fn prompt(question: &str) -> Result<String> {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::local(format!("cannot read standard input: {e}")))?;
    Ok(line.trim().to_owned())
}
