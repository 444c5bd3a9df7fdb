//! `login` and `whoami`: check a token against a server and save both for later commands.

use std::io::IsTerminal;

use anyhow::{anyhow, bail, Context, Result};

use super::client::{login_path, Client, ClientArgs, SavedLogin};
use crate::api::types::WhoAmI;

/// Check a server URL and token, and save them for the other commands
#[derive(Debug, clap::Args)]
pub struct Login {
    /// The token (default: read from stdin)
    #[arg(long = "with-token")]
    pub with_token: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Login {
    pub async fn run(self) -> Result<i32> {
        let token = match self.with_token.or(self.client.token.clone()) {
            Some(t) => t,
            None => {
                if std::io::stdin().is_terminal() {
                    eprint!("API token: ");
                }
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("cannot read the token from stdin")?;
                line
            }
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            bail!("no token given; pass --with-token, or pipe it in (the first start wrote the admin token to <data dir>/admin-token)");
        }
        let c = Client::new(&ClientArgs { server: self.client.server, token: Some(token.clone()), output: self.client.output })?;
        let v: WhoAmI = c.get("/api/whoami").await?;
        let path = login_path().ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set; cannot save the login"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = toml::to_string(&SavedLogin { server: Some(c.base.clone()), token: Some(token) })?;
        crate::infra::datadir::write_private(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!("logged in to {} as {}; saved to {}", c.base, v.user, path.display());
        Ok(0)
    }
}

/// Show who the token belongs to
#[derive(Debug, clap::Args)]
pub struct Whoami {
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Whoami {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        let v: WhoAmI = c.get("/api/whoami").await?;
        if c.print_json(&v)? {
            return Ok(0);
        }
        println!("{} at {}{}", v.user, c.base, if v.admin { " (admin)" } else { "" });
        Ok(0)
    }
}
