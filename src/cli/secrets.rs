//! `secrets`: a project's sealed environment variables, set and removed by name.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};

use super::client::{Client, ClientArgs};
use super::output::time;
use crate::api::types::{Deleted, SecretList, SecretsChange, SecretsSet};

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Set secrets: PROJECT KEY=VALUE... (VALUE `-` reads it from stdin); running instances restart with them
    Set {
        project: String,
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// List a project's secret names (never values)
    Ls { project: String },
    /// Remove a secret
    Rm { project: String, name: String },
}

/// Manage a project's secrets (encrypted at rest, injected as environment variables)
#[derive(Debug, clap::Args)]
pub struct Secrets {
    #[command(subcommand)]
    pub command: SecretsCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Secrets {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        match self.command {
            SecretsCommand::Set { project, pairs } => {
                let mut set = BTreeMap::new();
                for pair in pairs {
                    let (k, v) = pair.split_once('=').ok_or_else(|| anyhow!("`{pair}` is not KEY=VALUE (use KEY=- to read the value from stdin)"))?;
                    let value = if v == "-" {
                        let mut buf = String::new();
                        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf).context("cannot read the value from stdin")?;
                        buf.trim_end_matches('\n').to_string()
                    } else {
                        v.to_string()
                    };
                    set.insert(k.to_string(), value);
                }
                let names: Vec<String> = set.keys().cloned().collect();
                let v: SecretsSet = c.post(&format!("/api/projects/{project}/secrets"), &SecretsChange { set }).await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("set {} on {project}; running instances were restarted with them", names.join(", "));
            }
            SecretsCommand::Ls { project } => {
                let v: SecretList = c.get(&format!("/api/projects/{project}/secrets")).await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("{:<40} UPDATED", "SECRET");
                for x in v.secrets {
                    println!("{:<40} {}", x.name, time(&x.updated_at));
                }
            }
            SecretsCommand::Rm { project, name } => {
                let v: Deleted = c.delete(&format!("/api/projects/{project}/secrets/{name}")).await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("removed {name} from {project}; running instances were restarted without it");
            }
        }
        Ok(0)
    }
}
