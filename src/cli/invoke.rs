//! `invoke`: calls an http function through the gateway, as any client would.

use std::io::{IsTerminal, Write};

use anyhow::{anyhow, Context, Result};

use super::client::{split_target, Client, ClientArgs, Format};
use crate::api::types::INVOKE_KEY_HEADER;

/// `invoke -o json`: the function's answer.
#[derive(Debug, serde::Serialize)]
pub struct InvokeAnswer {
    pub status: u16,
    /// Header names in lowercase; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
}

/// Invoke an http function: PROJECT/FUNCTION [PATH]
#[derive(Debug, clap::Args)]
pub struct Invoke {
    pub target: String,
    pub path: Option<String>,
    #[arg(short = 'X', long = "request", default_value = "GET")]
    pub method: String,
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The project's invoke key, for `auth: private` functions
    #[arg(long, env = "ESERVELESS_INVOKE_KEY", hide_env_values = true)]
    pub key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Invoke {
    pub async fn run(self) -> Result<i32> {
        let (project, function) = split_target(&self.target)?;
        let c = Client::new(&self.client)?;
        // `/rest`, `rest` and `?query` all follow the function's URL as typed.
        let path = self.path.map(|p| if p.starts_with('/') || p.starts_with('?') { p } else { format!("/{p}") }).unwrap_or_default();
        let method = reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| anyhow!("invalid method `{}`", self.method))?;
        // The API token is never sent here: functions must not see it.
        let mut req = c.http.request(method, format!("{}/invoke/{project}/{function}{path}", c.base));
        if let Some(k) = &self.key {
            req = req.header(INVOKE_KEY_HEADER, k.trim());
        }
        for h in &self.headers {
            let (k, v) = h.split_once(':').ok_or_else(|| anyhow!("header `{h}` must look like `Name: value`"))?;
            req = req.header(k.trim(), v.trim());
        }
        if let Some(d) = self.data {
            req = req.body(d);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the server at {}", c.base))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await?;
        let platform_error = headers.get(crate::http_error::ERROR_HEADER).is_some();
        if c.format == Format::Json {
            let answer = InvokeAnswer {
                status: status.as_u16(),
                headers: headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            println!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(if status.is_success() { 0 } else { 1 });
        }
        if platform_error {
            // The platform's own refusal (no such function, no key, overloaded): its message, not raw JSON.
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let message = v["error"]["message"].as_str().map_or_else(|| String::from_utf8_lossy(&body).into_owned(), str::to_string);
            eprintln!("error: {message} (HTTP {status})");
            return Ok(1);
        }
        std::io::stdout().write_all(&body)?;
        if !body.ends_with(b"\n") && std::io::stdout().is_terminal() {
            println!();
        }
        if !status.is_success() {
            eprintln!("HTTP {status}");
            return Ok(1);
        }
        Ok(0)
    }
}
