//! `skiff tasks retention`: how long stopped tasks of a family, service or group stay.

use std::time::Duration;

use clap::Subcommand;
use skiff_proto::v1 as pb;

use crate::conn::api_error;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum RetentionCmd {
    /// Set how long a scope's stopped tasks stay (replaces the controller's default there).
    Set {
        /// family/NAME, service/NAME or group/NAME.
        scope: String,
        /// Keep the newest N tasks of the scope (active ones are never deleted).
        #[arg(long)]
        keep: Option<u32>,
        /// Delete stopped tasks that stopped longer ago than this (e.g. 7d, 12h).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_age: Option<Duration>,
    },
    /// List the policies set, and the default.
    Ls,
    /// Remove a scope's policy: the default applies there again.
    Rm {
        /// family/NAME, service/NAME or group/NAME.
        scope: String,
    },
}

pub async fn retention(
    client: &mut pb::tasks_client::TasksClient<crate::conn::Conn>,
    fmt: Format,
    cmd: RetentionCmd,
) -> anyhow::Result<()> {
    match cmd {
        RetentionCmd::Set {
            scope,
            keep,
            max_age,
        } => {
            if keep.is_none() && max_age.is_none() {
                anyhow::bail!("give --keep, --max-age or both");
            }
            let p = client
                .put_retention(pb::TaskRetention {
                    scope,
                    keep: keep.unwrap_or(0),
                    max_age_seconds: max_age.map_or(0, |d| d.as_secs().max(1)),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&p)),
                Format::Table => println!("{}", rows(&[p])),
            }
        }
        RetentionCmd::Ls => {
            let resp = client
                .list_retention(pb::ListRetentionRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&resp)),
                Format::Table => {
                    let mut all = resp.policies;
                    all.extend(resp.default);
                    println!("{}", rows(&all));
                }
            }
        }
        RetentionCmd::Rm { scope } => {
            let p = client
                .delete_retention(pb::RetentionRef { scope })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&p)),
                Format::Table => println!("removed {}", p.scope),
            }
        }
    }
    Ok(())
}

fn rows(policies: &[pb::TaskRetention]) -> String {
    let or_default = |set: bool, v: String| if set { v } else { "(default)".into() };
    output::table(
        &["SCOPE", "KEEP", "MAX AGE"],
        policies
            .iter()
            .map(|p| {
                vec![
                    p.scope.clone(),
                    or_default(p.keep > 0, p.keep.to_string()),
                    or_default(
                        p.max_age_seconds > 0,
                        humantime::format_duration(Duration::from_secs(p.max_age_seconds))
                            .to_string(),
                    ),
                ]
            })
            .collect(),
    )
}
