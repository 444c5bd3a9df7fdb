//! The config file layer, generic over any clap settings struct: each TOML key is a setting's
//! arg id, its value goes through the same parser as the flag, and it is used only where
//! neither a flag nor an environment variable set that setting.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};

/// Why the config file could not be applied; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {}", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config file {}: unknown setting `{key}`{hint}; keys are the `serve` flags with `_`, e.g. `idle_timeout`", path.display())]
    UnknownKey { path: PathBuf, key: String, hint: String },
    #[error("invalid config file {}: `{key} = {value}`: {reason}", path.display())]
    BadValue {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
}

/// `T::augment_args` without environment variables and defaults, so a parse yields exactly
/// the values given on its command line.
fn bare_command<T: Args>(name: &'static str) -> Command {
    T::augment_args(Command::new(name)).mut_args(|a| a.env(None).default_value(None))
}

/// `T` holding the defaults declared on its args, whatever the environment says.
pub(crate) fn declared_defaults<T: Args + FromArgMatches>() -> T {
    let cmd = T::augment_args(Command::new("defaults")).mut_args(|a| a.env(None));
    let matches = cmd
        .try_get_matches_from(["defaults"])
        .expect("every setting has a default or is optional");
    T::from_arg_matches(&matches).expect("the declared defaults parse")
}

/// Fills `settings` (as clap parsed them into `matches`) from the TOML file at `path`, for the
/// settings no flag or environment variable set. Keys must be arg ids of `T`, except `skip`
/// (the arg naming the file itself).
pub fn apply<T: Args + FromArgMatches>(settings: &mut T, matches: &ArgMatches, path: &Path, skip: &str) -> Result<(), ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read { path: path.into(), source })?;
    let table: toml::Table = toml::from_str(&text).map_err(|source| ConfigFileError::Syntax { path: path.into(), source })?;
    let cmd = bare_command::<T>("config");
    let known: Vec<(&str, &str)> = cmd
        .get_arguments()
        .filter(|a| a.get_id() != skip)
        .filter_map(|a| Some((a.get_id().as_str(), a.get_long()?)))
        .collect();
    for (key, value) in &table {
        let Some(&(id, long)) = known.iter().find(|(id, _)| id == key) else {
            return Err(ConfigFileError::UnknownKey {
                path: path.into(),
                key: key.clone(),
                hint: suggestion(key, &known),
            });
        };
        if matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let bad = |reason: String| ConfigFileError::BadValue {
            path: path.into(),
            key: key.clone(),
            value: value.to_string(),
            reason,
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err(bad("must be a string, number or boolean".into())),
        };
        // One key per parse, so a parse error belongs to this key.
        let one = cmd
            .clone()
            .try_get_matches_from(["config".to_string(), format!("--{long}={text}")])
            .map_err(|e| bad(reason(&e)))?;
        settings.update_from_arg_matches(&one).map_err(|e| bad(reason(&e)))?;
    }
    Ok(())
}

/// The parser's own words (e.g. "`1Gx` has an unknown unit"), without clap's usage text.
fn reason(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(source) = std::error::Error::source(e) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return format!("expected one of {}", valid.join(", "));
    }
    e.kind().to_string()
}

fn suggestion(key: &str, known: &[(&str, &str)]) -> String {
    known
        .iter()
        .map(|(id, _)| (strsim::jaro_winkler(key, id), *id))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, id)| format!(" (did you mean `{id}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small settings struct, so these tests cover the layer, not the server's settings.
    #[derive(Debug, clap::Args)]
    struct Demo {
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        wait: std::time::Duration,
        #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
        on: bool,
        #[arg(long)]
        count: Option<u32>,
        #[arg(long)]
        config: Option<PathBuf>,
    }

    fn parse(argv: &[&str]) -> (Demo, ArgMatches) {
        let m = Demo::augment_args(Command::new("demo")).try_get_matches_from(argv).expect("argv");
        (Demo::from_arg_matches(&m).expect("demo"), m)
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn file_fills_what_flags_left_unset() {
        let (_d, path) = file("wait = \"2m\"\non = true\ncount = 7\n");
        let (mut demo, m) = parse(&["demo", "--count", "3"]);
        apply(&mut demo, &m, &path, "config").expect("apply");
        assert_eq!(demo.wait, std::time::Duration::from_secs(120));
        assert!(demo.on);
        assert_eq!(demo.count, Some(3), "the flag wins");
    }

    #[test]
    fn unknown_and_bad_keys_name_key_and_file() {
        let (_d, path) = file("wiat = \"2m\"\n");
        let (mut demo, m) = parse(&["demo"]);
        let e = apply(&mut demo, &m, &path, "config").expect_err("unknown").to_string();
        assert!(
            e.contains("`wiat`") && e.contains("did you mean `wait`") && e.contains("settings.toml"),
            "{e}"
        );

        let (_d, path) = file("config = \"other.toml\"\n");
        let e = apply(&mut demo, &m, &path, "config")
            .expect_err("the file names no other file")
            .to_string();
        assert!(e.contains("unknown setting `config`"), "{e}");

        let (_d, path) = file("wait = \"2 fortnights\"\n");
        let e = apply(&mut demo, &m, &path, "config").expect_err("bad duration").to_string();
        assert!(
            e.contains("`wait = \"2 fortnights\"`") && e.contains("settings.toml") && e.contains("unknown time unit"),
            "{e}"
        );

        let (_d, path) = file("on = \"maybe\"\n");
        let e = apply(&mut demo, &m, &path, "config").expect_err("bad bool").to_string();
        assert!(e.contains("`on = \"maybe\"`: expected one of true, false"), "{e}");

        let (_d, path) = file("count = [1]\n");
        let e = apply(&mut demo, &m, &path, "config").expect_err("array").to_string();
        assert!(e.contains("`count = [1]`: must be a string"), "{e}");
    }

    #[test]
    fn declared_defaults_are_the_clap_defaults() {
        let demo: Demo = declared_defaults();
        assert_eq!((demo.wait, demo.on, demo.count), (std::time::Duration::from_secs(5), false, None));
    }
}
