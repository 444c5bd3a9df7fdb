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

/// Where a setting's value came from, for messages about a bad one.
#[derive(Debug, Clone)]
enum Origin {
    Flag(&'static str),
    Env(&'static str),
    Saved(Option<std::path::PathBuf>),
    Default,
}

impl Origin {
    /// `flag` and `env` as clap declares them: the flag wins over the variable.
    fn of(flag: &'static str, env: &'static str, saved: bool) -> Origin {
        let on_command_line = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
        if on_command_line {
            Origin::Flag(flag)
        } else if std::env::var_os(env).is_some_and(|v| !v.is_empty()) {
            Origin::Env(env)
        } else if saved {
            Origin::Saved(login_path())
        } else {
            Origin::Default
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "the {flag} flag"),
            Origin::Env(var) => write!(f, "the {var} environment variable"),
            Origin::Saved(Some(p)) => write!(f, "the saved login ({})", p.display()),
            Origin::Saved(None) => write!(f, "the saved login"),
            Origin::Default => write!(f, "the default"),
        }
    }
}

/// The server's URL, checked: `http(s)://host[:port]`, with a fix for the usual slips.
fn server_url(text: &str, origin: &Origin) -> Result<String> {
    let given = text.trim();
    let has_scheme = given.contains("://");
    let text = given.trim_end_matches('/');
    let fix = |problem: &str, try_this: String| anyhow!("the server URL `{given}` (from {origin}) {problem}; use e.g. `{try_this}`");
    match reqwest::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(text.to_string()),
        Ok(u) if u.host().is_none() && !matches!(u.scheme(), "http" | "https") => Err(fix("has no http:// or https:// in front", format!("http://{text}"))),
        Ok(u) => Err(fix(&format!("has the scheme `{}`, not http or https", u.scheme()), DEFAULT_SERVER.to_string())),
        // "relative URL without a base": no scheme at all.
        Err(e) if !has_scheme => Err(fix(&format!("has no http:// or https:// in front ({e})"), format!("http://{text}"))),
        Err(e) => Err(fix(&format!("is not a URL ({e})"), DEFAULT_SERVER.to_string())),
    }
}

pub(crate) struct Client {
    pub(crate) base: String,
    token: Option<String>,
    token_origin: Origin,
    pub(crate) http: reqwest::Client,
    pub(crate) format: Format,
}

impl Client {
    /// Flags and environment win over the saved login, which wins over the defaults.
    pub(crate) fn new(args: &ClientArgs) -> Result<Self> {
        let saved = saved_login();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
        let server_origin = match &args.server {
            Some(_) => Origin::of("--server", "ESERVELESS_URL", false),
            None => Origin::of("--server", "ESERVELESS_URL", saved.server.is_some()),
        };
        let base = args.server.clone().or(saved.server).unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let base = server_url(&base, &server_origin)?;
        let token_origin = match &args.token {
            Some(_) => Origin::of("--token", "ESERVELESS_TOKEN", false),
            None => Origin::of("--token", "ESERVELESS_TOKEN", saved.token.is_some()),
        };
        let token = args.token.clone().or(saved.token).filter(|t| !t.trim().is_empty());
        Ok(Client { base, token, token_origin, http, format: args.output })
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

    /// POSTs raw bytes (an upload) and reads the answer as `T`.
    pub(crate) async fn post_bytes<T: DeserializeOwned>(&self, path: &str, content_type: &str, body: Vec<u8>) -> Result<T> {
        let req = self.http.post(format!("{}{}", self.base, path)).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        self.answer(reqwest::Method::POST, path, req).await
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
        if let Some(b) = body {
            req = req.json(b);
        }
        self.answer(method, path, req).await
    }

    /// Sends `req` with the token and reads the answer as `T` (or the API's error message).
    async fn answer<T: DeserializeOwned>(&self, method: reqwest::Method, path: &str, mut req: reqwest::RequestBuilder) -> Result<T> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.trim());
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
            if status == 401 {
                bail!(
                    "the token from {} was refused by {}: {msg} (HTTP 401); log in again with `eserveless login`{}",
                    self.token_origin,
                    self.base,
                    match self.token_origin {
                        Origin::Env(_) => ", or unset ESERVELESS_TOKEN to use the saved login",
                        _ => "",
                    }
                );
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
    fn server_urls_need_a_scheme() {
        let o = Origin::Flag("--server");
        assert_eq!(server_url("http://127.0.0.1:8000/", &o).expect("ok"), "http://127.0.0.1:8000");
        assert_eq!(server_url("https://fn.example", &o).expect("ok"), "https://fn.example");
        for (bad, says) in [
            ("127.0.0.1:8000", "use e.g. `http://127.0.0.1:8000`"),
            ("localhost:8000", "use e.g. `http://localhost:8000`"),
            ("ftp://x", "scheme `ftp`"),
            ("http://", "is not a URL"),
        ] {
            let e = server_url(bad, &o).expect_err(bad).to_string();
            assert!(e.contains(says) && e.contains(&format!("`{bad}`")) && e.contains("the --server flag"), "{bad}: {e}");
        }
    }

    #[test]
    fn targets_are_project_slash_function() {
        assert_eq!(split_target("p/F").expect("ok"), ("p", "F"));
        for bad in ["p", "/F", "p/", "p/F/x"] {
            let e = split_target(bad).expect_err(bad).to_string();
            assert!(e.contains("PROJECT/FUNCTION") && e.contains(bad), "{e}");
        }
    }
}
