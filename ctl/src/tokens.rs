//! `skiff tokens`: create (shown once), list and revoke API tokens.

use clap::Subcommand;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Create an API token; it is printed once and never shown again.
    Create {
        /// admin, operator or read-only (or join: same as --join).
        #[arg(long, required_unless_present = "join")]
        role: Option<String>,
        /// A one-time join string for `skiff agent --join` (TLS controllers).
        #[arg(long, conflicts_with = "role")]
        join: bool,
        /// What it is for.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime (e.g. 30d, 12h); default: no expiry.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token by id: every call with it fails from now on.
    Revoke {
        /// The token's id (skiff tokens ls).
        id: String,
    },
}

fn token_row(t: &pb::TokenInfo) -> Vec<String> {
    let state = if t.revoked_ms != 0 {
        "revoked".to_string()
    } else if t.expires_ms != 0 && t.expires_ms <= chrono::Utc::now().timestamp_millis() {
        "expired".to_string()
    } else {
        "active".to_string()
    };
    vec![
        t.id.clone(),
        t.role.clone(),
        t.name.clone(),
        state,
        output::time(t.created_ms),
        if t.expires_ms == 0 {
            "never".into()
        } else {
            output::time(t.expires_ms)
        },
    ]
}

fn token_json(t: &pb::TokenInfo) -> serde_json::Value {
    serde_json::json!({"id": t.id, "role": t.role, "name": t.name, "createdMs": t.created_ms,
        "expiresMs": t.expires_ms, "revokedMs": t.revoked_ms})
}

pub async fn tokens(addr: &str, fmt: Format, cmd: TokensCmd) -> anyhow::Result<i32> {
    let mut c = pb::tokens_client::TokensClient::new(connect(addr).await?);
    let header = ["ID", "ROLE", "NAME", "STATE", "CREATED", "EXPIRES"];
    match cmd {
        TokensCmd::Create {
            role,
            join,
            name,
            ttl,
        } => {
            let role = if join {
                "join".to_string()
            } else {
                role.unwrap_or_default()
            };
            let ttl_seconds = match ttl {
                Some(t) => crate::config::duration("--ttl", &t)?.as_secs(),
                None => 0,
            };
            let r = c
                .create(pb::CreateTokenRequest {
                    role,
                    name,
                    ttl_seconds,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            let info = r.info.unwrap_or_default();
            if fmt == Format::Json {
                let mut v = token_json(&info);
                v["token"] = r.token.into();
                println!("{}", output::json(&v));
            } else {
                println!("{}", r.token);
                eprintln!(
                    "skiff: token {} ({}) created; it is shown only this once",
                    info.id, info.role
                );
            }
        }
        TokensCmd::Ls => {
            let r = c
                .list(pb::ListTokensRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            if fmt == Format::Json {
                let v: Vec<_> = r.tokens.iter().map(token_json).collect();
                println!("{}", output::json(&v));
            } else {
                println!(
                    "{}",
                    output::table(&header, r.tokens.iter().map(token_row).collect())
                );
            }
        }
        TokensCmd::Revoke { id } => {
            let t = c
                .revoke(pb::RevokeTokenRequest { id })
                .await
                .map_err(api_error)?
                .into_inner();
            if fmt == Format::Json {
                println!("{}", output::json(&token_json(&t)));
            } else {
                println!("{}", output::table(&header, vec![token_row(&t)]));
            }
        }
    }
    Ok(0)
}
