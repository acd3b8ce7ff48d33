//! `skiff secrets`: store (from stdin or a file), list and delete; values are never shown.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// Store (or replace) a secret; the value is read from stdin, or from --from-file.
    Put {
        /// The secret's name (what task definitions name in value_from).
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long = "from-file")]
        from_file: Option<PathBuf>,
    },
    /// List secrets (names, versions and sizes; never values).
    Ls,
    /// Delete a secret.
    Rm {
        /// The secret's name.
        name: String,
    },
}

pub async fn secrets(addr: &str, fmt: Format, cmd: SecretsCmd) -> anyhow::Result<i32> {
    let mut c = pb::secrets_client::SecretsClient::new(connect(addr).await?);
    let print = |infos: Vec<pb::SecretInfo>| {
        if fmt == Format::Json {
            let v: Vec<_> = infos
                .iter()
                .map(|i| {
                    serde_json::json!({"name": i.name, "version": i.version, "size": i.size,
                    "createdMs": i.created_ms, "updatedMs": i.updated_ms})
                })
                .collect();
            println!("{}", output::json(&v));
        } else {
            let rows = infos
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.version.to_string(),
                        format!("{} B", i.size),
                        output::time(i.updated_ms),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(&["NAME", "VERSION", "SIZE", "UPDATED"], rows)
            );
        }
    };
    match cmd {
        SecretsCmd::Put { name, from_file } => {
            let value = match from_file {
                Some(p) => std::fs::read(&p)
                    .with_context(|| format!("--from-file: reading {}", p.display()))?,
                None => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                        .context("reading the secret from stdin")?;
                    v
                }
            };
            let info = c
                .put(pb::PutSecretRequest { name, value })
                .await
                .map_err(api_error)?
                .into_inner();
            print(vec![info]);
        }
        SecretsCmd::Ls => {
            let r = c
                .list(pb::ListSecretsRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            print(r.secrets);
        }
        SecretsCmd::Rm { name } => {
            let info = c
                .delete(pb::DeleteSecretRequest { name })
                .await
                .map_err(api_error)?
                .into_inner();
            print(vec![info]);
        }
    }
    Ok(0)
}
