//! `skiff taskdefs`: register (from a file), list, describe and deregister task definitions.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum TaskdefsCmd {
    /// Register a new revision from a JSON or TOML file.
    Register {
        /// The task definition: a JSON, TOML or YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List task definitions.
    Ls {
        /// Only this family's revisions.
        #[arg(long)]
        family: Option<String>,
        /// Include deregistered revisions.
        #[arg(long)]
        all: bool,
    },
    /// Show FAMILY (latest) or FAMILY:REVISION.
    Describe {
        /// FAMILY (its latest active revision) or FAMILY:REVISION.
        task_definition: String,
    },
    /// Mark FAMILY:REVISION inactive.
    Deregister {
        /// FAMILY:REVISION to deregister.
        task_definition: String,
    },
}

pub async fn taskdefs(addr: &str, fmt: Format, cmd: TaskdefsCmd) -> anyhow::Result<i32> {
    let mut client = pb::task_definitions_client::TaskDefinitionsClient::new(connect(addr).await?);
    let show = |d: &pb::TaskDefinition| match fmt {
        Format::Json => output::json(d),
        Format::Table => {
            let mut s = format!("{}:{} ({})\n", d.family, d.revision, d.status);
            for c in &d.containers {
                s.push_str(&format!(
                    "  {}  {}  {:?} {:?}  cpu={} memory={}MiB essential={}\n",
                    c.name,
                    c.image,
                    c.entrypoint,
                    c.command,
                    c.cpu,
                    c.memory_mib,
                    c.essential.unwrap_or(true)
                ));
            }
            s.trim_end().to_string()
        }
    };
    match cmd {
        TaskdefsCmd::Register { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let definition = crate::taskdef_file::parse(&file, &text)?;
            let d = client
                .register(pb::RegisterTaskDefinitionRequest {
                    definition: Some(definition),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&d)),
                Format::Table => println!("registered {}:{}", d.family, d.revision),
            }
        }
        TaskdefsCmd::Ls { family, all } => {
            let resp = client
                .list(pb::ListTaskDefinitionsRequest {
                    family: family.unwrap_or_default(),
                    include_inactive: all,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&resp.definitions)),
                Format::Table => println!(
                    "{}",
                    output::table(
                        &["DEFINITION", "STATUS", "CONTAINERS", "REGISTERED"],
                        resp.definitions
                            .iter()
                            .map(|d| vec![
                                format!("{}:{}", d.family, d.revision),
                                d.status.clone(),
                                d.containers
                                    .iter()
                                    .map(|c| c.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(","),
                                output::time(d.registered_at_ms),
                            ])
                            .collect()
                    )
                ),
            }
        }
        TaskdefsCmd::Describe { task_definition } => {
            let d = client
                .describe(pb::DescribeTaskDefinitionRequest { task_definition })
                .await
                .map_err(api_error)?
                .into_inner();
            println!("{}", show(&d));
        }
        TaskdefsCmd::Deregister { task_definition } => {
            let d = client
                .deregister(pb::DescribeTaskDefinitionRequest { task_definition })
                .await
                .map_err(api_error)?
                .into_inner();
            println!("{}", show(&d));
        }
    }
    Ok(0)
}
