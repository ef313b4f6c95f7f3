//! Standard output: every byte the CLI prints goes through [`out!`]/[`outln!`] or
//! [`write_all`], never `print!`/`println!` (which panic when the reader has gone away,
//! as in `heirloom model list | head -1`). A failed write ends the process at once through
//! `crate::end`, which maps a closed pipe to a normal end (status 0) and any other failure
//! to status 1. Progress bars and messages for people on stderr are not this module's.
//!
//! `--output text|json`: every command prints either lines for people or JSON for
//! programs. JSON is the API's own messages in the protobuf JSON mapping (the field names
//! camelCased, enums by name), so a script reads what the Python or Rust client would.

use serde::Serialize;
use std::io::Write;

/// Like `print!`, to standard output; ends the process if the write fails.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_fmt(format_args!($($arg)*))
    };
}

/// Like `println!`, to standard output; ends the process if the write fails.
macro_rules! outln {
    () => {
        $crate::output::write_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// A write to standard output that failed; `crate::end` decides what it means.
#[derive(Debug)]
pub struct StdoutFailed(pub std::io::Error);

impl std::fmt::Display for StdoutFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutFailed {}

/// What [`out!`] and [`outln!`] call.
pub fn write_fmt(args: std::fmt::Arguments<'_>) {
    // Bound first: the lock is released before `end` runs.
    let written = std::io::stdout().lock().write_fmt(args);
    if let Err(err) = written {
        crate::end(Err(StdoutFailed(err).into()));
    }
}

/// Writes `bytes` as they are (a completion script).
pub fn write_all(bytes: &[u8]) {
    let written = std::io::stdout().lock().write_all(bytes);
    if let Err(err) = written {
        crate::end(Err(StdoutFailed(err).into()));
    }
}

/// Flushes what a last `out!` left without a newline, so that its failure is seen too.
pub fn flush() -> anyhow::Result<()> {
    Ok(std::io::stdout().flush().map_err(StdoutFailed)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

impl Output {
    /// Prints `value` as one JSON document, or calls `text` to print it for people.
    pub fn print<T: Serialize>(self, value: &T, text: impl FnOnce()) -> anyhow::Result<()> {
        match self {
            Output::Json => outln!("{}", serde_json::to_string_pretty(value)?),
            Output::Text => text(),
        }
        Ok(())
    }

    /// For streams: one JSON document per line (JSON Lines), or `text` for people.
    pub fn print_line<T: Serialize>(self, value: &T, text: impl FnOnce()) -> anyhow::Result<()> {
        match self {
            Output::Json => outln!("{}", serde_json::to_string(value)?),
            Output::Text => text(),
        }
        Ok(())
    }
}
