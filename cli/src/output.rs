//! `--output text|json`: every command prints either lines for people or JSON for
//! programs. JSON is the API's own messages in the protobuf JSON mapping (the field names
//! camelCased, enums by name), so a script reads what the Python or Rust client would.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

impl Output {
    /// Prints `value` as one JSON document, or calls `text` to print it for people.
    pub fn print<T: Serialize>(self, value: &T, text: impl FnOnce()) -> anyhow::Result<()> {
        match self {
            Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Output::Text => text(),
        }
        Ok(())
    }

    /// For streams: one JSON document per line (JSON Lines), or `text` for people.
    pub fn print_line<T: Serialize>(self, value: &T, text: impl FnOnce()) -> anyhow::Result<()> {
        match self {
            Output::Json => println!("{}", serde_json::to_string(value)?),
            Output::Text => text(),
        }
        Ok(())
    }
}
