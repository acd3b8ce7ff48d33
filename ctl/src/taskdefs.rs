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
    /// Make an ECS task definition (as `aws ecs describe-task-definition` prints it, or as it
    /// is registered) a skiff one: printed as YAML (or written to --out), or registered with
    /// --register. Every field is accounted for on standard error: carried over, carried
    /// over changed (and how), or not carried over (and why).
    ImportEcs {
        /// The ECS task definition JSON.
        file: PathBuf,
        /// Write the skiff task definition here (.yaml, .yml or .json) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Register it with the controller at once.
        #[arg(long)]
        register: bool,
    },
    /// Mark FAMILY:REVISION inactive.
    Deregister {
        /// FAMILY:REVISION to deregister.
        task_definition: String,
    },
}

pub async fn taskdefs(addr: &str, fmt: Format, cmd: TaskdefsCmd) -> anyhow::Result<i32> {
    if let TaskdefsCmd::ImportEcs {
        file,
        out,
        register,
    } = cmd
    {
        return import_ecs(addr, fmt, &file, out.as_deref(), register).await;
    }
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
        TaskdefsCmd::ImportEcs { .. } => unreachable!("handled above"),
        TaskdefsCmd::Register { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let definition = crate::taskdef_file::parse(&file, &text)?;
            let d = register_definition(&mut client, definition).await?;
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

/// `taskdefs import-ecs`: converts, says what became of every field, then prints, writes or
/// registers the result.
async fn import_ecs(
    addr: &str,
    fmt: Format,
    file: &std::path::Path,
    out: Option<&std::path::Path>,
    register: bool,
) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let input: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    let import = crate::ecs_import::convert(&input)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    // What register -f would read: the converted definition must be valid input.
    let json_text = serde_json::to_string_pretty(&import.task_definition)?;
    let definition = crate::taskdef_file::parse(std::path::Path::new("imported.json"), &json_text)
        .context("the converted definition")?;
    let yaml = yaml_serde::to_string(&import.task_definition)?;
    if let Some(path) = out {
        let body = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => json_text.clone() + "\n",
            Some("yaml" | "yml") => yaml.clone(),
            _ => anyhow::bail!("--out: {} must end in .yaml, .yml or .json", path.display()),
        };
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut registered = None;
    if register {
        let mut client =
            pb::task_definitions_client::TaskDefinitionsClient::new(connect(addr).await?);
        let d = register_definition(&mut client, definition).await?;
        registered = Some(format!("{}:{}", d.family, d.revision));
    }
    match fmt {
        Format::Json => {
            let mut v = serde_json::to_value(&import)?;
            v["registered"] = serde_json::json!(registered);
            println!("{}", output::json(&v));
        }
        Format::Table => {
            match (&registered, out) {
                (Some(r), _) => println!("registered {r}"),
                (None, Some(p)) => println!("wrote {}", p.display()),
                (None, None) => print!("{yaml}"),
            }
            for n in &import.changed {
                eprintln!("changed: {}: {}", n.field, n.note);
            }
            for n in &import.not_carried_over {
                eprintln!("not carried over: {}: {}", n.field, n.note);
            }
            eprintln!(
                "{} fields carried over as they are, {} changed, {} not carried over",
                import.carried_over.len(),
                import.changed.len(),
                import.not_carried_over.len()
            );
        }
    }
    Ok(0)
}

/// Registers a definition as the next revision of its family.
async fn register_definition(
    client: &mut pb::task_definitions_client::TaskDefinitionsClient<crate::conn::Conn>,
    definition: pb::TaskDefinitionInput,
) -> anyhow::Result<pb::TaskDefinition> {
    Ok(client
        .register(pb::RegisterTaskDefinitionRequest {
            definition: Some(definition),
        })
        .await
        .map_err(api_error)?
        .into_inner())
}
