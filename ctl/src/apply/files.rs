//! Reading the files `skiff apply -f` and `skiff diff -f` are given: each YAML document (or
//! JSON value, or TOML file) is one resource keyed by its kind, holding exactly what the
//! kind's own `-f` file holds, e.g. `queue: {name: jobs, visibility_timeout: 5s}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use skiff_proto::v1 as pb;

use super::kind::Kind;

/// One resource as the files declare it, as the API takes it.
#[derive(Debug, Clone)]
pub enum Spec {
    Role(pb::TaskRole),
    Queue(pb::Queue),
    Topic(pb::Topic),
    Subscription(pb::Subscription),
    TaskDefinition(pb::TaskDefinitionInput),
    Source(pb::Source),
    Rule(pb::Rule),
    Schedule(pb::Schedule),
    Service(pb::Service),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Role(_) => Kind::Role,
            Spec::Queue(_) => Kind::Queue,
            Spec::Topic(_) => Kind::Topic,
            Spec::Subscription(_) => Kind::Subscription,
            Spec::TaskDefinition(_) => Kind::TaskDefinition,
            Spec::Source(_) => Kind::Source,
            Spec::Rule(_) => Kind::Rule,
            Spec::Schedule(_) => Kind::Schedule,
            Spec::Service(_) => Kind::Service,
        }
    }

    /// The name the resource is known by (a task definition's family; a subscription's
    /// `topic/protocol:endpoint`, as nothing else names it before it exists).
    pub fn name(&self) -> String {
        match self {
            Spec::Role(r) => r.name.clone(),
            Spec::Queue(q) => q.name.clone(),
            Spec::Topic(t) => t.name.clone(),
            Spec::Subscription(s) => subscription_name(&s.topic, &s.protocol, &s.endpoint),
            Spec::TaskDefinition(d) => d.family.clone(),
            Spec::Source(s) => s.name.clone(),
            Spec::Rule(r) => r.name.clone(),
            Spec::Schedule(s) => s.name.clone(),
            Spec::Service(s) => s.name.clone(),
        }
    }
}

pub fn subscription_name(topic: &str, protocol: &str, endpoint: &str) -> String {
    format!("{topic}/{protocol}:{endpoint}")
}

/// A declared resource and where it was declared (for messages).
#[derive(Debug, Clone)]
pub struct Declared {
    pub spec: Spec,
    pub origin: String,
}

/// A document: the kind is its only key.
enum Document {
    TaskDefinition(crate::taskdef_file::TaskDefFile),
    Role(crate::roles::RoleFile),
    Queue(crate::queues::QueueFile),
    Topic(crate::topics::TopicFile),
    Source(crate::sources::SourceFile),
    Rule(crate::rules::RuleFile),
    Schedule(crate::schedules::ScheduleFile),
    Service(crate::services::ServiceFile),
}

/// A document as written: one key set, named by its kind (a struct rather than an enum, so
/// every format reads it the same way and an unknown kind lists the known ones).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keyed {
    task_definition: Option<crate::taskdef_file::TaskDefFile>,
    role: Option<crate::roles::RoleFile>,
    queue: Option<crate::queues::QueueFile>,
    topic: Option<crate::topics::TopicFile>,
    source: Option<crate::sources::SourceFile>,
    rule: Option<crate::rules::RuleFile>,
    schedule: Option<crate::schedules::ScheduleFile>,
    service: Option<crate::services::ServiceFile>,
}

impl Keyed {
    fn document(self) -> anyhow::Result<Document> {
        let mut found = Vec::new();
        let Keyed {
            task_definition,
            role,
            queue,
            topic,
            source,
            rule,
            schedule,
            service,
        } = self;
        found.extend(task_definition.map(Document::TaskDefinition));
        found.extend(role.map(Document::Role));
        found.extend(queue.map(Document::Queue));
        found.extend(topic.map(Document::Topic));
        found.extend(source.map(Document::Source));
        found.extend(rule.map(Document::Rule));
        found.extend(schedule.map(Document::Schedule));
        found.extend(service.map(Document::Service));
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => anyhow::bail!(
                "no resource: a document is one key naming its kind ({})",
                Kind::ALL.map(Kind::as_str).join(", ")
            ),
            _ => anyhow::bail!("more than one resource in one document: separate them with `---`"),
        }
    }
}

fn specs(doc: Document) -> anyhow::Result<Vec<Spec>> {
    Ok(match doc {
        Document::TaskDefinition(f) => vec![Spec::TaskDefinition(crate::taskdef_file::input(f)?)],
        Document::Role(f) => vec![Spec::Role(crate::roles::to_pb(f)?)],
        Document::Queue(f) => vec![Spec::Queue(crate::queues::from_file(f)?)],
        Document::Topic(mut f) => {
            let subs = std::mem::take(&mut f.subscriptions);
            let topic = crate::topics::from_file(f)?;
            let mut out = Vec::with_capacity(1 + subs.len());
            for (i, s) in subs.into_iter().enumerate() {
                out.push(Spec::Subscription(crate::topics::subscription(
                    &topic.name,
                    i,
                    s,
                )?));
            }
            out.insert(0, Spec::Topic(topic));
            out
        }
        Document::Source(f) => vec![Spec::Source(crate::sources::from_file(f)?)],
        Document::Rule(f) => vec![Spec::Rule(crate::rules::from_file(f)?)],
        Document::Schedule(f) => vec![Spec::Schedule(crate::schedules::from_file(f)?)],
        Document::Service(f) => vec![Spec::Service(crate::services::from_file(f)?)],
    })
}

/// The files to read: each path as given, or a directory's *.yaml, *.yml, *.json and *.toml
/// files (not its subdirectories), in name order.
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && format_of(f).is_some())
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!(
                    "{}: no .yaml, .yml, .json or .toml files in this directory",
                    p.display()
                );
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Format {
    Yaml,
    Json,
    Toml,
}

fn format_of(p: &Path) -> Option<Format> {
    match p.extension()?.to_str()? {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        "toml" => Some(Format::Toml),
        _ => None,
    }
}

/// The documents of one file's text, each with its origin (`FILE`, or `FILE#N` for the
/// Nth of several).
fn documents(path: &Path, text: &str) -> anyhow::Result<Vec<(String, Document)>> {
    let shown = path.display().to_string();
    let mut docs = Vec::new();
    match format_of(path).unwrap_or(Format::Yaml) {
        Format::Yaml => {
            for (i, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
                let keyed = Option::<Keyed>::deserialize(de)
                    .with_context(|| format!("{shown}: document {}", i + 1))?;
                if let Some(keyed) = keyed {
                    let doc = keyed
                        .document()
                        .with_context(|| format!("{shown}: document {}", i + 1))?;
                    docs.push((format!("{shown}#{}", i + 1), doc));
                }
            }
        }
        Format::Json => {
            let v: serde_json::Value =
                serde_json::from_str(text).with_context(|| format!("{shown}: not JSON"))?;
            let items = match v {
                serde_json::Value::Array(items) => items,
                v => vec![v],
            };
            for (i, v) in items.into_iter().enumerate() {
                let doc = Keyed::deserialize(v)
                    .map_err(anyhow::Error::from)
                    .and_then(Keyed::document)
                    .with_context(|| format!("{shown}: document {}", i + 1))?;
                docs.push((format!("{shown}#{}", i + 1), doc));
            }
        }
        Format::Toml => {
            let doc = toml::from_str::<Keyed>(text)
                .map_err(anyhow::Error::from)
                .and_then(Keyed::document)
                .with_context(|| shown.clone())?;
            docs.push((format!("{shown}#1"), doc));
        }
    }
    if docs.len() == 1 {
        docs[0].0 = shown;
    }
    Ok(docs)
}

/// Every resource the files declare, in the order they must be applied (see `Kind`), each
/// once: a kind and name declared twice is an error naming both places.
pub fn read(paths: &[PathBuf]) -> anyhow::Result<Vec<Declared>> {
    let mut all: Vec<Declared> = Vec::new();
    for path in expand(paths)? {
        let text = if path.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
        };
        for (origin, doc) in documents(&path, &text)? {
            for spec in specs(doc).with_context(|| origin.clone())? {
                all.push(Declared {
                    spec,
                    origin: origin.clone(),
                });
            }
        }
    }
    let mut seen: BTreeMap<(Kind, String), String> = BTreeMap::new();
    for d in &all {
        if let Some(first) = seen.insert((d.spec.kind(), d.spec.name()), d.origin.clone()) {
            anyhow::bail!(
                "{} {:?} is declared twice: in {first} and in {}",
                d.spec.kind(),
                d.spec.name(),
                d.origin
            );
        }
    }
    order(all)
}

/// Sorts by kind (dependencies first); a queue comes after the dead-letter queue it names.
fn order(mut all: Vec<Declared>) -> anyhow::Result<Vec<Declared>> {
    all.sort_by_key(|d| d.spec.kind());
    let (queues, rest): (Vec<Declared>, Vec<Declared>) =
        all.into_iter().partition(|d| d.spec.kind() == Kind::Queue);
    let dlq = |d: &Declared| match &d.spec {
        Spec::Queue(q) => q.redrive.as_ref().map(|r| r.dead_letter_queue.clone()),
        _ => None,
    };
    let mut pending = queues;
    let mut sorted: Vec<Declared> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let names: Vec<String> = pending.iter().map(|d| d.spec.name()).collect();
        let (ready, waiting): (Vec<Declared>, Vec<Declared>) = pending
            .into_iter()
            .partition(|d| dlq(d).is_none_or(|q| !names.contains(&q) || q == d.spec.name()));
        if ready.is_empty() {
            anyhow::bail!(
                "queues {} name each other as dead-letter queues: a cycle cannot be created",
                names.join(", ")
            );
        }
        sorted.extend(ready);
        pending = waiting;
    }
    let at = rest
        .iter()
        .position(|d| d.spec.kind() > Kind::Queue)
        .unwrap_or(rest.len());
    let mut rest = rest;
    let after = rest.split_off(at);
    rest.extend(sorted);
    rest.extend(after);
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> anyhow::Result<Vec<Declared>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        read(&[p])
    }

    #[test]
    fn documents_are_ordered_by_dependency_and_dead_letter_queues_first() {
        let got = parse(
            "all.yaml",
            "service: {name: web, task_definition: web, desired_count: 1}\n---\n\
             queue: {name: jobs, dead_letter_queue: jobs-dlq, max_receives: 3}\n---\n\
             # a comment-only document is skipped\n---\n\
             queue: {name: jobs-dlq}\n---\n\
             topic: {name: admins, subscriptions: [{queue: jobs}]}\n---\n\
             role: {name: r}\n",
        )
        .unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|d| format!("{}/{}", d.spec.kind(), d.spec.name()))
            .collect();
        assert_eq!(
            names,
            [
                "role/r",
                "queue/jobs-dlq",
                "queue/jobs",
                "topic/admins",
                "subscription/admins/queue:jobs",
                "service/web"
            ]
        );
    }

    #[test]
    fn errors_name_the_file_the_document_and_the_field() {
        let e = parse(
            "a.yaml",
            "queue: {name: q}\n---\nqueue: {name: q2, visibilty: 5s}\n",
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("a.yaml: document 2"), "{msg}");
        assert!(msg.contains("visibilty"), "{msg}");
        let e = parse("b.yaml", "queues: {name: q}\n").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("unknown field `queues`"), "{msg}");
        assert!(msg.contains("task_definition"), "{msg}");
        let e = parse("c.yaml", "queue: {name: q}\n---\nqueue: {name: q}\n").unwrap_err();
        assert!(format!("{e:#}").contains("declared twice"), "{e:#}");
        let e = parse(
            "d.yaml",
            "queue: {name: a, dead_letter_queue: b, max_receives: 1}\n---\n\
             queue: {name: b, dead_letter_queue: a, max_receives: 1}\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("cycle"), "{e:#}");
        let e = parse(
            "e.yaml",
            "topic: {name: t, subscriptions: [{queue: q, email: a@b}]}\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("subscriptions[0]"), "{e:#}");
    }

    #[test]
    fn json_arrays_and_toml_files_hold_documents_too() {
        let got = parse(
            "x.json",
            r#"[{"queue": {"name": "a"}}, {"rule": {"name": "r", "pattern": {"source": ["x"]}, "targets": [{"id": "t", "queue": "a"}]}}]"#,
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].origin.rsplit('/').next().unwrap(), "x.json#2");
        let got = parse(
            "y.toml",
            "[queue]\nname = \"a\"\nvisibility_timeout = \"5s\"\n",
        )
        .unwrap();
        match &got[0].spec {
            Spec::Queue(q) => assert_eq!(q.visibility_timeout_seconds, Some(5)),
            s => panic!("{s:?}"),
        }
    }
}
