//! What every Heirloom binary sets up the same way: its settings, layered, and its logs.
//!
//! Settings come from, strongest first: flags, `HEIRLOOM_*` environment variables, a TOML
//! file (`--config FILE` or `HEIRLOOM_CONFIG`), then the built-in defaults. A file's keys
//! are the flags' names (`lease-seconds = 10`, or `lease_seconds`); an unknown key is an
//! error that lists the known ones. [`reference`] prints every key as one Markdown table.

use clap::{ArgAction, CommandFactory, FromArgMatches};
use std::ffi::OsString;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// The flag and variable that name the settings file.
pub const CONFIG_FLAG: &str = "--config";
pub const CONFIG_VARIABLE: &str = "HEIRLOOM_CONFIG";

/// Parses `T` from `args` (the first is the program), the environment and the settings
/// file they name. Errors are clap's (usage, `--help` and `--version` included) or the
/// file's, each naming what to fix.
pub fn parse<T: CommandFactory + FromArgMatches>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<T, String> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = T::command();
    if let Some(path) = config_path(&args) {
        let text = std::fs::read_to_string(&path)
            .map_err(|err| format!("{CONFIG_FLAG} {}: {err}", path.display()))?;
        command = with_file_defaults(command, &text)
            .map_err(|err| format!("{CONFIG_FLAG} {}: {err}", path.display()))?;
    }
    let matches = command
        .try_get_matches_from(args)
        .map_err(|err| err.to_string())?;
    T::from_arg_matches(&matches).map_err(|err| err.to_string())
}

/// Like [`parse`] on the process's arguments; prints the error and exits on failure
/// (status 0 for `--help` and `--version`), as clap's own `parse` does.
pub fn parse_or_exit<T: CommandFactory + FromArgMatches>() -> T {
    let args: Vec<OsString> = std::env::args_os().collect();
    match T::command().try_get_matches_from(args.clone()) {
        // Help and version need no settings file.
        Err(err)
            if matches!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            err.exit()
        }
        _ => {}
    }
    parse(args).unwrap_or_else(|message| {
        eprintln!("{}", message.trim_end());
        std::process::exit(2)
    })
}

/// Starts logging to standard error: `human` or `json` lines, filtered by `RUST_LOG`
/// (default `info`).
pub fn init_logs(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// `--config FILE` / `--config=FILE` from the arguments, else `HEIRLOOM_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == CONFIG_FLAG {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_VARIABLE).map(PathBuf::from)
}

/// The command with each key of the TOML `text` as the default of its argument, below
/// flags and environment variables.
fn with_file_defaults(mut command: clap::Command, text: &str) -> Result<clap::Command, String> {
    let table: toml::Table = text.parse().map_err(|err| format!("{err}"))?;
    for (key, value) in table {
        let name = key.replace('_', "-");
        let id = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(name.as_str()) && arg.get_id() != "config")
            .map(|arg| arg.get_id().clone())
            .ok_or_else(|| {
                let known: Vec<&str> = command
                    .get_arguments()
                    .filter_map(|arg| arg.get_long())
                    .filter(|long| *long != "config" && *long != "help" && *long != "version")
                    .collect();
                format!("unknown key {key:?}; the keys are: {}", known.join(", "))
            })?;
        let values = match value {
            toml::Value::Array(items) => items
                .into_iter()
                .map(|item| scalar(&key, item))
                .collect::<Result<Vec<_>, _>>()?,
            item => vec![scalar(&key, item)?],
        };
        // A required setting the file gives is required no more.
        command = command.mut_arg(id, |arg| arg.default_values(values).required(false));
    }
    Ok(command)
}

fn scalar(key: &str, value: toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        other => Err(format!(
            "{key}: give a string, number or boolean (or a list of them), not {}",
            other.type_str()
        )),
    }
}

/// Every setting of `T` as one Markdown table: file key, flag, environment variable,
/// default, and what it does.
pub fn reference<T: CommandFactory>() -> String {
    let command = T::command();
    let mut table = String::from(
        "| file key | flag | environment | default | what it sets |\n|---|---|---|---|---|\n",
    );
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .map(|env| format!("`{}`", env.to_string_lossy()))
            .unwrap_or_else(|| "—".into());
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let default = match (defaults.is_empty(), arg.get_action()) {
            (_, ArgAction::SetTrue) => "`false`".to_string(),
            (true, _) => "—".to_string(),
            (false, _) => format!("`{}`", defaults.join(", ")),
        };
        let key = if long == "config" {
            "—".to_string()
        } else {
            format!("`{}`", long)
        };
        let help = arg
            .get_help()
            .map(|help| help.to_string().replace('\n', " ").replace('|', "\\|"))
            .unwrap_or_default();
        table.push_str(&format!(
            "| {key} | `--{long}` | {env} | {default} | {help} |\n"
        ));
    }
    table
}

/// Whether `docs` holds the current [`reference`] table of `T`; the error shows the
/// table to paste.
pub fn check_documented<T: CommandFactory>(docs: &str) -> Result<(), String> {
    let table = reference::<T>();
    if docs.contains(&table) {
        Ok(())
    } else {
        Err(format!(
            "the documentation lacks this table (or has an old one):\n{table}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Example {
        #[arg(long, env = "HEIRLOOM_TEST_SETTINGS_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "HEIRLOOM_TEST_SETTINGS_LEASE", default_value_t = 30.0)]
        lease_seconds: f64,
        #[arg(long, env = "HEIRLOOM_TEST_SETTINGS_NAME", default_value = "built-in")]
        name: String,
        #[arg(long, env = "HEIRLOOM_TEST_SETTINGS_PLAIN")]
        plain: bool,
        #[arg(long = "label")]
        labels: Vec<String>,
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heirloom.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_the_defaults() {
        let (_dir, path) = file(
            "lease-seconds = 10\nname = \"from-file\"\nplain = true\nlabel = [\"gpu=a100\", \"zone=b\"]\n",
        );
        let parsed: Example = parse(["x", "--config", &path]).unwrap();
        assert_eq!(parsed.lease_seconds, 10.0);
        assert_eq!(parsed.name, "from-file");
        assert!(parsed.plain);
        assert_eq!(parsed.labels, ["gpu=a100", "zone=b"]);
        let parsed: Example =
            parse(["x", "--name", "from-flag", &format!("--config={path}")]).unwrap();
        assert_eq!(parsed.name, "from-flag");
        assert_eq!(parsed.lease_seconds, 10.0);
        let parsed: Example = parse(["x"]).unwrap();
        assert_eq!(
            (parsed.name.as_str(), parsed.lease_seconds),
            ("built-in", 30.0)
        );
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        let (_dir, path) = file("lease-secnds = 10\n");
        let err = parse::<Example>(["x", "--config", &path]).unwrap_err();
        assert!(err.contains("unknown key \"lease-secnds\""), "{err}");
        assert!(err.contains("lease-seconds"), "{err}");
        let (_dir, path) = file("name = { a = 1 }\n");
        let err = parse::<Example>(["x", "--config", &path]).unwrap_err();
        assert!(err.contains("name: give a string"), "{err}");
        let (_dir, path) = file("lease-seconds = \"soon\"\n");
        let err = parse::<Example>(["x", "--config", &path]).unwrap_err();
        assert!(err.contains("soon"), "{err}");
        let err = parse::<Example>(["x", "--config", "/nonexistent/heirloom.toml"]).unwrap_err();
        assert!(err.contains("/nonexistent/heirloom.toml"), "{err}");
    }

    #[test]
    fn the_reference_lists_every_setting_with_its_default() {
        let table = reference::<Example>();
        assert!(
            table.contains(
                "| `lease-seconds` | `--lease-seconds` | `HEIRLOOM_TEST_SETTINGS_LEASE` | `30` |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| `plain` | `--plain` | `HEIRLOOM_TEST_SETTINGS_PLAIN` | `false` |"),
            "{table}"
        );
        assert!(table.contains("| `label` | `--label` | — | — |"), "{table}");
    }
}
