//! `users` and `tokens`: who may use the API, and with which tokens.

use anyhow::Result;

use super::client::{Client, ClientArgs};
use super::output::{or_dash, time};
use crate::api::types::{Deleted, NewToken, NewUser, Revoked, TokenCreated, TokenList, UserCreated, UserList};

#[derive(Debug, clap::Subcommand)]
pub enum UsersCommand {
    /// Create a user and its first API token (admins only)
    Create {
        name: String,
        /// Make the user an admin (sees and changes every project, manages users)
        #[arg(long)]
        admin: bool,
    },
    /// List users and the projects they own (admins only)
    Ls,
    /// Remove a user and its tokens; it must own no projects (admins only)
    Rm { name: String },
}

/// Manage users (admins)
#[derive(Debug, clap::Args)]
pub struct Users {
    #[command(subcommand)]
    pub command: UsersCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Users {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        match self.command {
            UsersCommand::Create { name, admin } => {
                let v: UserCreated = c.post("/api/users", &NewUser { name, admin }).await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("created user {}{}; its API token (shown once):\n{}", v.name, if admin { " (admin)" } else { "" }, v.token.token);
            }
            UsersCommand::Ls => {
                let v: UserList = c.get("/api/users").await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("{:<24} {:<6} {:<27} PROJECTS", "USER", "ADMIN", "CREATED");
                for u in v.users {
                    println!("{:<24} {:<6} {:<27} {}", u.name, u.admin, time(&u.created_at), u.projects.join(","));
                }
            }
            UsersCommand::Rm { name } => {
                let v: Deleted = c.delete(&format!("/api/users/{name}")).await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("removed user {name} and its tokens");
            }
        }
        Ok(0)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Create an API token (for yourself, or with --user for another user as an admin)
    Create {
        name: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// List your tokens (--all: everyone's, admins only)
    Ls {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id; it stops working at once
    Revoke { id: i64 },
}

/// Manage API tokens
#[derive(Debug, clap::Args)]
pub struct Tokens {
    #[command(subcommand)]
    pub command: TokensCommand,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Tokens {
    pub async fn run(self) -> Result<i32> {
        let c = Client::new(&self.client)?;
        match self.command {
            TokensCommand::Create { name, user } => {
                let v: TokenCreated = c.post("/api/tokens", &NewToken { name, user }).await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("token {} created (shown once):\n{}", v.id, v.token);
            }
            TokensCommand::Ls { all } => {
                let v: TokenList = c.get(if all { "/api/tokens?all=true" } else { "/api/tokens" }).await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("{:<6} {:<16} {:<20} {:<27} {:<27} REVOKED", "ID", "USER", "NAME", "CREATED", "LAST USED");
                for t in v.tokens {
                    println!(
                        "{:<6} {:<16} {:<20} {:<27} {:<27} {}",
                        t.id,
                        t.user,
                        t.name,
                        time(&t.created_at),
                        or_dash(t.last_used_at.as_ref().map(time)),
                        or_dash(t.revoked_at.as_ref().map(time))
                    );
                }
            }
            TokensCommand::Revoke { id } => {
                let v: Revoked = c.delete(&format!("/api/tokens/{id}")).await?;
                if c.print_json(&v)? {
                    return Ok(0);
                }
                println!("revoked token {id}");
            }
        }
        Ok(0)
    }
}
