//! `skiff apply -f` and `skiff diff -f`: every resource declared in files, made so on the
//! controller in dependency order, idempotently (a second apply changes nothing), with
//! `--prune` deleting what an earlier apply of the same set created and the files no longer
//! name. Exit codes fit CI: 0 nothing to do, 2 changes applied (apply) or pending (diff),
//! 1 an error.

mod compare;
mod files;
mod kind;
mod server;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::output::{self, Format};
use compare::FieldChange;
use files::Spec;
use kind::Kind;
use server::Server;

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// A file, a directory of them (its *.yaml, *.yml, *.json and *.toml files), or - for
    /// standard input (YAML); repeat for more. Each YAML document is one resource under its kind's key — task_definition,
    /// role, queue, topic (with its subscriptions), source, rule, schedule or service —
    /// holding what that kind's own `-f` file holds, e.g. `queue: {name: jobs}`.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// Also delete (`diff`: list) what an earlier apply of this set created and the files no
    /// longer name (never what was made by hand or by another set).
    #[arg(long)]
    prune: bool,
    /// The apply set: the name under which the applied resources are recorded for --prune
    /// (one per directory or team that applies separately).
    #[arg(long, default_value = "default")]
    set: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Diff,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Create,
    Update,
    /// Deleted and made anew (a subscription cannot be changed in place).
    Replace,
    Delete,
    Unchanged,
}

impl Action {
    fn sign(self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Replace => '±',
            Action::Delete => '-',
            Action::Unchanged => '=',
        }
    }

    fn word(self, mode: Mode) -> &'static str {
        match (self, mode) {
            (Action::Create, Mode::Apply) => "created",
            (Action::Update, Mode::Apply) => "updated",
            (Action::Replace, Mode::Apply) => "replaced",
            (Action::Delete, Mode::Apply) => "deleted",
            (Action::Create, Mode::Diff) => "to create",
            (Action::Update, Mode::Diff) => "to update",
            (Action::Replace, Mode::Diff) => "to replace",
            (Action::Delete, Mode::Diff) => "to delete",
            (Action::Unchanged, _) => "unchanged",
        }
    }
}

#[derive(Serialize)]
struct Change {
    kind: &'static str,
    name: String,
    action: Action,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fields: Vec<FieldChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
}

fn show(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

fn print_change(c: &Change, mode: Mode) {
    let mut line = format!("{} {}/{}", c.action.sign(), c.kind, c.name);
    if mode == Mode::Apply {
        line = format!("{line} {}", c.action.word(mode));
    }
    if let Some(n) = &c.note {
        line = format!("{line} ({n})");
    }
    println!("{line}");
    for f in &c.fields {
        println!("    {}: {} → {}", f.path, show(&f.from), show(&f.to));
    }
}

/// Runs `skiff apply` or `skiff diff`; the exit code: 0 nothing to do, 2 changes.
pub async fn run(addr: &str, fmt: Format, args: ApplyArgs, mode: Mode) -> anyhow::Result<i32> {
    let declared = files::read(&args.files)?;
    let mut server = Server::connect(addr).await?;
    let old = server.set_members(&args.set).await?;
    let names: BTreeSet<(Kind, String)> = declared
        .iter()
        .map(|d| (d.spec.kind(), d.spec.name()))
        .collect();
    if mode == Mode::Apply {
        // Recorded before anything is made, so a resource created by an apply that is then
        // interrupted is still known to the set (and to a later --prune).
        let members: BTreeSet<(Kind, String)> = old.iter().cloned().chain(names.clone()).collect();
        let members: Vec<(Kind, String)> = members.into_iter().collect();
        server.put_set(&args.set, &members).await?;
    }
    let mut changes: Vec<Change> = Vec::new();
    // Families given a new revision in this run: what their services will deploy.
    let mut revisions: HashMap<String, String> = HashMap::new();
    for d in &declared {
        let kind = d.spec.kind();
        let name = d.spec.name();
        let what = format!("{kind} {name:?} ({})", d.origin);
        let current = server.current(kind, &name).await?;
        let mut note = None;
        let desired = match server.normalized(&d.spec).await {
            Ok(v) => Some(v),
            Err(s) => {
                // In a diff, a refusal may only be about a resource before this one that is
                // not there yet; it is not an error unless nothing before it changes.
                let pending = changes.iter().any(|c| c.action != Action::Unchanged);
                if mode == Mode::Apply || !pending {
                    return Err(crate::conn::api_error(s)).context(what);
                }
                note = Some(format!(
                    "refused as things stand, may pass once the changes before it are made: {}",
                    s.message()
                ));
                None
            }
        };
        let (action, fields) = match (&current, desired) {
            (None, _) => (Action::Create, vec![]),
            (Some(_), None) => (Action::Update, vec![]),
            (Some(cur), Some(mut want)) => {
                if let Spec::Service(s) = &d.spec {
                    want["deployedTaskDefinition"] = serde_json::json!(
                        deploys(&mut server, &revisions, &s.task_definition).await?
                    );
                }
                let fields = compare::changes(cur, &want);
                match (fields.is_empty(), kind) {
                    (true, _) => (Action::Unchanged, fields),
                    (false, Kind::Subscription) => (Action::Replace, fields),
                    (false, _) => (Action::Update, fields),
                }
            }
        };
        if action != Action::Unchanged {
            if mode == Mode::Apply {
                note = server.put(&d.spec).await.context(what)?;
            }
            if let Spec::TaskDefinition(def) = &d.spec {
                let revision = match (&note, mode) {
                    (Some(rev), Mode::Apply) => rev.clone(),
                    _ => format!("{}:(new revision)", def.family),
                };
                revisions.insert(def.family.clone(), revision);
            }
        }
        let change = Change {
            kind: kind.as_str(),
            name,
            action,
            fields,
            note,
            origin: Some(d.origin.clone()),
        };
        if fmt == Format::Table && action != Action::Unchanged {
            print_change(&change, mode);
        }
        changes.push(change);
    }
    let mut left_over = 0;
    let mut gone: Vec<&(Kind, String)> = old.iter().filter(|m| !names.contains(m)).collect();
    gone.sort_by_key(|m| std::cmp::Reverse(m.0));
    for (kind, name) in gone {
        let exists = match (args.prune, mode) {
            (false, _) => {
                left_over += 1;
                continue;
            }
            (true, Mode::Apply) => server
                .delete(*kind, name)
                .await
                .with_context(|| format!("deleting {kind} {name:?}"))?,
            (true, Mode::Diff) => server.current(*kind, name).await?.is_some(),
        };
        if exists {
            let change = Change {
                kind: kind.as_str(),
                name: name.clone(),
                action: Action::Delete,
                fields: vec![],
                note: Some(format!("no longer in the files of set {:?}", args.set)),
                origin: None,
            };
            if fmt == Format::Table {
                print_change(&change, mode);
            }
            changes.push(change);
        }
    }
    if args.prune && mode == Mode::Apply {
        server
            .put_set(&args.set, &names.into_iter().collect::<Vec<_>>())
            .await?;
    }
    let count = |a: Action| changes.iter().filter(|c| c.action == a).count();
    let changed = changes.iter().any(|c| c.action != Action::Unchanged);
    match fmt {
        Format::Json => println!(
            "{}",
            output::json(&serde_json::json!({
                "set": args.set,
                "changed": changed,
                "changes": changes,
                "no_longer_declared": left_over,
            }))
        ),
        Format::Table => {
            let summary: Vec<String> = [
                Action::Create,
                Action::Update,
                Action::Replace,
                Action::Delete,
                Action::Unchanged,
            ]
            .into_iter()
            .map(|a| format!("{} {}", count(a), a.word(mode)))
            .collect();
            println!("{}", summary.join(", "));
            if left_over > 0 {
                println!(
                    "{left_over} resource(s) of set {:?} are no longer in the files; \
                     --prune deletes them",
                    args.set
                );
            }
        }
    }
    Ok(if changed { 2 } else { 0 })
}

/// The revision a service declared with `task_definition` deploys: as given when it names
/// one, else its family's new revision from this run, else its newest ACTIVE one.
async fn deploys(
    server: &mut Server,
    revisions: &HashMap<String, String>,
    task_definition: &str,
) -> anyhow::Result<String> {
    if task_definition.contains(':') {
        return Ok(task_definition.to_string());
    }
    if let Some(r) = revisions.get(task_definition) {
        return Ok(r.clone());
    }
    Ok(server
        .latest_revision(task_definition)
        .await?
        .unwrap_or_default())
}
