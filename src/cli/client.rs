//! The API client of the CLI: where the server and token come from (flag, environment,
//! saved login), and calls that read the answers into the API's own typed structs.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";

/// The server and token options every client command takes.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The server's URL [default: the saved login's, else http://127.0.0.1:8000]
    #[arg(long, env = "ESERVELESS_URL", global = true)]
    pub server: Option<String>,
    /// API token [default: the saved login's]
    #[arg(long, env = "ESERVELESS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// How to print answers: `text` for people, `json` for programs (the API's own answer)
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text, env = "ESERVELESS_OUTPUT", global = true)]
    pub output: Format,
}

/// `-o`: the output format of every client command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The saved login: `$XDG_CONFIG_HOME/eserveless/login.toml` (or `~/.config/...`), mode 0600.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedLogin {
    pub(crate) server: Option<String>,
    pub(crate) token: Option<String>,
}

pub(crate) fn login_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| std::path::PathBuf::from(h).join(".config")))?;
    Some(base.join("eserveless").join("login.toml"))
}

fn saved_login() -> SavedLogin {
    login_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default()
}

/// `PROJECT/FUNCTION` split in two, or an error that shows the expected form.
pub(crate) fn split_target(target: &str) -> Result<(&str, &str)> {
    target
        .split_once('/')
        .filter(|(p, f)| !p.is_empty() && !f.is_empty() && !f.contains('/'))
        .ok_or_else(|| anyhow!("expected PROJECT/FUNCTION, got `{target}`"))
}

pub(crate) struct Client {
    pub(crate) base: String,
    token: Option<String>,
    pub(crate) http: reqwest::Client,
    pub(crate) format: Format,
}

impl Client {
    /// Flags and environment win over the saved login, which wins over the defaults.
    pub(crate) fn new(args: &ClientArgs) -> Result<Self> {
        let saved = saved_login();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
        let base = args.server.clone().or(saved.server).unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let token = args.token.clone().or(saved.token).filter(|t| !t.trim().is_empty());
        Ok(Client { base: base.trim_end_matches('/').to_string(), token, http, format: args.output })
    }

    /// With `-o json`, prints `answer` as JSON and returns true: the command prints nothing else.
    pub(crate) fn print_json(&self, answer: &impl Serialize) -> Result<bool> {
        if self.format != Format::Json {
            return Ok(false);
        }
        println!("{}", serde_json::to_string_pretty(answer)?);
        Ok(true)
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(reqwest::Method::GET, path, None::<&()>).await
    }

    pub(crate) async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(reqwest::Method::DELETE, path, None::<&()>).await
    }

    /// Opens a streamed GET of `path_and_query` (a log, NDJSON) with no overall timeout: a
    /// followed log has no end. An error answer reads exactly as [`Client::get`]'s: the GET
    /// (which changes nothing) is asked again through it.
    pub(crate) async fn get_stream(&self, path_and_query: &str) -> Result<reqwest::Response> {
        let mut req = self.http.get(format!("{}{}", self.base, path_and_query)).timeout(Duration::from_secs(10 * 365 * 86400));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.trim());
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the server at {}; is `eserveless serve` running?", self.base))?;
        if resp.status().as_u16() >= 400 {
            drop(resp);
            self.get::<serde_json::Value>(path_and_query).await?;
            bail!("the server refused GET {path_and_query}, then answered it");
        }
        Ok(resp)
    }

    /// Calls the management API with the token (never sent to /invoke: functions must not see
    /// it) and reads the answer as `T`: a field the server no longer sends is an error here,
    /// not a silent "-" in a table.
    async fn call<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, body: Option<&impl Serialize>) -> Result<T> {
        let mut req = self.http.request(method.clone(), format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.trim());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the server at {}; is `eserveless serve` running?", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        if status >= 400 {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            let msg = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            if status == 401 && self.token.is_none() {
                bail!("{msg} (HTTP 401); log in with `eserveless login`, or set ESERVELESS_TOKEN");
            }
            bail!("{msg} (HTTP {status})");
        }
        serde_json::from_str(&text).with_context(|| {
            format!("the server at {} answered {method} {path} in a form this client does not know (a different version?)", self.base)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_project_slash_function() {
        assert_eq!(split_target("p/F").expect("ok"), ("p", "F"));
        for bad in ["p", "/F", "p/", "p/F/x"] {
            let e = split_target(bad).expect_err(bad).to_string();
            assert!(e.contains("PROJECT/FUNCTION") && e.contains(bad), "{e}");
        }
    }
}
