//! `skiff sources`: object stores whose new objects become events (notified to
//! `POST /notify/<name>`, and/or listed by a watcher every `poll`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};
use crate::taskdef_file::DurationField;

#[derive(Subcommand)]
pub enum SourcesCmd {
    /// Create or replace a source from a file (source.yaml, .json or .toml).
    Put {
        /// The source file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List sources, with each watcher's last listing and last error.
    Ls,
    /// Show one source, with its watcher's last listing and last error.
    Describe {
        /// The source's name.
        name: String,
    },
    /// Delete a source (its watcher stops; notifications to it are refused).
    Rm {
        /// The source's name.
        name: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceFile {
    name: String,
    /// s3 or local.
    kind: String,
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    bucket: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    access_key_id_secret: String,
    #[serde(default)]
    secret_access_key_secret: String,
    /// List the bucket this often (e.g. "10s"); absent = notifications only.
    poll: Option<DurationField>,
}

pub fn load(path: &Path) -> anyhow::Result<pb::Source> {
    from_file(crate::config::read_definition(path, "source")?)
}

/// A source as its file declares it (also a `source:` document of `skiff apply`).
pub(crate) fn from_file(f: SourceFile) -> anyhow::Result<pb::Source> {
    let poll_interval_seconds = match f.poll {
        Some(d) => u32::try_from(d.seconds("poll")?).context("poll: too long")?,
        None => 0,
    };
    Ok(pb::Source {
        name: f.name,
        kind: f.kind,
        endpoint: f.endpoint,
        region: f.region,
        bucket: f.bucket,
        prefix: f.prefix,
        path: f.path,
        access_key_id_secret: f.access_key_id_secret,
        secret_access_key_secret: f.secret_access_key_secret,
        poll_interval_seconds,
        ..Default::default()
    })
}

fn print(fmt: Format, sources: &[pb::Source]) {
    if fmt == Format::Json {
        println!("{}", output::json(&sources));
        return;
    }
    let rows = sources
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.clone(),
                if s.kind == "local" {
                    s.path.clone()
                } else {
                    s.endpoint.clone()
                },
                format!(
                    "{}/{}",
                    if s.bucket.is_empty() { "*" } else { &s.bucket },
                    s.prefix
                ),
                if s.poll_interval_seconds == 0 {
                    "notifications only".into()
                } else {
                    format!("every {}s", s.poll_interval_seconds)
                },
                output::time(s.last_listed_ms),
                if s.last_error.is_empty() {
                    "-".into()
                } else {
                    format!("{} ({})", s.last_error, output::time(s.last_error_ms))
                },
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &[
                "NAME",
                "KIND",
                "WHERE",
                "BUCKET/PREFIX",
                "WATCHER",
                "LAST LISTED",
                "LAST ERROR"
            ],
            rows
        )
    );
}

pub async fn sources(addr: &str, fmt: Format, cmd: SourcesCmd) -> anyhow::Result<i32> {
    let mut c = pb::sources_client::SourcesClient::new(connect(addr).await?);
    let out = match cmd {
        SourcesCmd::Put { file } => {
            vec![c.put(load(&file)?).await.map_err(api_error)?.into_inner()]
        }
        SourcesCmd::Ls => {
            c.list(pb::ListSourcesRequest {})
                .await
                .map_err(api_error)?
                .into_inner()
                .sources
        }
        SourcesCmd::Describe { name } => {
            let all = c
                .list(pb::ListSourcesRequest {})
                .await
                .map_err(api_error)?
                .into_inner()
                .sources;
            let one: Vec<_> = all.into_iter().filter(|s| s.name == name).collect();
            if one.is_empty() {
                anyhow::bail!("not found: no source {name:?}");
            }
            one
        }
        SourcesCmd::Rm { name } => {
            vec![c
                .delete(pb::SourceRef { name })
                .await
                .map_err(api_error)?
                .into_inner()]
        }
    };
    print(fmt, &out);
    Ok(0)
}
