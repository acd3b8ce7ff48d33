//! Layering rules, as checks over the source (ARCHITECTURE.md's "only X knows Y" sentences):
//! no import circles between the modules of the controller, the agent or the CLI; only the
//! controller's sled engine knows sled; the controller's background loops do not reach into gRPC
//! service modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every Rust file under `src`, with the top-level module it belongs to (a folder's files
/// belong to the folder's module: store/notify.rs → store, dashboard/mod.rs → dashboard).
fn source_files(src: &Path) -> Vec<(String, std::path::PathBuf)> {
    fn walk(dir: &Path, module: Option<&str>, out: &mut Vec<(String, std::path::PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                walk(&p, Some(module.unwrap_or(&name)), out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((module.unwrap_or(&name).to_string(), p));
            }
        }
    }
    let mut out = vec![];
    walk(src, None, &mut out);
    out
}

/// Module → the crate modules its non-test code names (`crate::x`), for the crate in `dir`
/// (relative to the workspace root).
fn imports_of(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
        .join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![];
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            // A folder's files belong to the module of the same name (store/notify.rs → store).
            for f in std::fs::read_dir(&p).unwrap().flatten() {
                files.push((
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    f.path(),
                ));
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push((p.file_stem().unwrap().to_string_lossy().into_owned(), p));
        }
    }
    for (module, path) in files {
        if module == "lib" || module == "main" || path.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = out.entry(module.clone()).or_default();
        for part in code.split("crate::").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    out
}

/// The controller's graph.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    imports_of("controller")
}

/// Every module that can reach itself again through imports.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = graph.get(from).into_iter().flatten().cloned().collect();
        while let Some(m) = stack.pop() {
            if seen.insert(m.clone()) {
                stack.extend(graph.get(&m).into_iter().flatten().cloned());
            }
        }
        seen
    };
    graph
        .keys()
        .filter(|m| reach(m).contains(*m))
        .cloned()
        .collect()
}

#[test]
fn the_controllers_modules_import_each_other_in_one_direction() {
    let graph = imports();
    assert!(graph.contains_key("core") && graph.contains_key("store"));
    let looped = circles(&graph);
    assert!(
        looped.is_empty(),
        "modules in an import circle: {looped:?}\n{graph:#?}"
    );
}

#[test]
fn the_agents_and_the_clis_modules_import_each_other_in_one_direction() {
    for dir in ["agent", "ctl", "model"] {
        let graph = imports_of(dir);
        assert!(graph.len() > 3, "{dir}: read its modules");
        let looped = circles(&graph);
        assert!(
            looped.is_empty(),
            "{dir}: modules in an import circle: {looped:?}"
        );
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    // The check itself, on a graph with a deliberate circle (a → b → c → a) beside a line.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(circles(&g), ["a", "b", "c"]);
}

#[test]
fn only_the_sled_engine_knows_sled() {
    // The storage seam: everything, the rest of the store included, goes through the
    // `Engine` trait; sled is one implementation of it, in one file.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for dir in [src.clone(), src.join("store")] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().is_file() {
                files.push(e.path());
            }
        }
    }
    assert!(files.iter().any(|p| p.ends_with("store/sled_engine.rs")));
    for p in files {
        if p.ends_with("store/sled_engine.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            !text.contains("sled::"),
            "{} names sled; only store/sled_engine.rs may",
            p.display()
        );
    }
}

#[test]
fn background_loops_do_not_import_grpc_services() {
    let graph = imports();
    for looping in ["applier", "bus", "placer", "schedules", "watcher", "notify"] {
        for dep in graph.get(looping).into_iter().flatten() {
            let service = dep == "api" || dep.ends_with("_api") || dep == "agents";
            if service {
                panic!("{looping} imports the gRPC module {dep}: loops use core, not adapters");
            }
        }
    }
}

#[test]
fn only_the_clock_reads_the_time_or_sleeps() {
    // Component tests drive the controller with a manual clock; a loop that read the system
    // clock or slept on tokio's timer would escape it. (SigV4 signing for an outside STS
    // server is stamped with the system time the server checks it against.)
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (_, p) in source_files(&src) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name == "clock.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for banned in [
            "Utc::now",
            "Instant::now",
            "tokio::time::sleep",
            "tokio::time::interval",
        ] {
            assert!(
                !code.contains(banned),
                "{name} uses {banned}; read and wait for time through core.clock"
            );
        }
        if name != "credentials.rs" {
            assert!(
                !code.contains("SystemTime::now"),
                "{name} uses SystemTime::now; use core.clock"
            );
        }
    }
}

#[test]
fn protobuf_types_stay_at_the_api_edge() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = vec![];
    for (module, p) in source_files(&src) {
        // The gRPC services, the agent channel and the wire to agents, the conversions, and
        // the dashboard (JSON of the gRPC services' answers).
        let edge = module == "lib"
            || module == "api"
            || module == "dashboard"
            || module == "agents"
            || module == "agent_link"
            || module == "convert"
            || module.ends_with("_api");
        if edge {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        if code.contains("skiff_proto") || code.contains("pb::") {
            offenders.push(module);
        }
    }
    assert!(
        offenders.is_empty(),
        "these modules name protobuf types; convert at the API edge (api.rs, agents.rs, \
         agent_link.rs, convert.rs, *_api.rs) instead: {offenders:?}"
    );
}

#[test]
fn grpc_statuses_are_made_at_the_edge_only() {
    // Below the adapters, errors are domain errors (CoreError, StoreError, InvalidField …);
    // `status.rs` maps them to gRPC statuses and HTTP codes.
    let graph = imports();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in graph.keys() {
        let edge = [
            "api",
            "agents",
            "auth",
            "http",
            "dashboard",
            "lib",
            "status",
        ]
        .contains(&module.as_str())
            || module.ends_with("_api");
        if edge {
            continue;
        }
        let path = src.join(format!("{module}.rs"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // a folder module (store/)
        };
        let code = text.split("#[cfg(test)]").next().unwrap();
        // `Status::…` on its own (TaskStatus::Pending and the like are domain enums).
        let bare_status = code.match_indices("Status::").any(|(i, _)| {
            code[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric() && c != '_')
        });
        assert!(
            !code.contains("tonic::") && !bare_status,
            "{module} makes gRPC statuses; return a domain error and map it in status.rs"
        );
    }
}

#[test]
fn modules_name_the_pure_layer_directly_not_through_the_crate_root() {
    // lib.rs re-exports skiff-model's modules for outside users; a module reaching them as
    // `crate::lifecycle` would import the crate root, which imports every module: an arrow back
    // up the layers.
    let graph = imports();
    for (module, deps) in &graph {
        for reexport in [
            "cron",
            "lifecycle",
            "pattern",
            "placement",
            "retry",
            "ruleset",
            "transform",
            "trust",
        ] {
            assert!(
                !deps.contains(reexport),
                "{module} names crate::{reexport}; use skiff_model::{reexport}"
            );
        }
    }
}

#[test]
fn the_stores_public_face_names_no_engine_type() {
    // The store is the seam a replicated engine would replace sled behind: its callers see
    // Store, Table<R>, Record, StoreError and domain types — never a sled type in a public
    // signature, field or error.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![dir.join("store.rs")];
    files.extend(
        std::fs::read_dir(dir.join("store"))
            .unwrap()
            .flatten()
            .map(|e| e.path()),
    );
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let mut public_item = false;
        for line in code.lines() {
            let t = line.trim_start();
            // A public item's signature runs from `pub …` to its opening brace or semicolon.
            if t.starts_with("pub ") && !t.starts_with("pub(") {
                public_item = true;
            }
            if public_item {
                assert!(
                    !t.contains("sled"),
                    "{}: a public item names sled: {t}",
                    p.display()
                );
                if t.ends_with('{') || t.ends_with(';') || t.ends_with(',') {
                    public_item = false;
                }
            }
        }
        // The error's variants are public too.
        let error = code
            .split("pub enum StoreError")
            .nth(1)
            .map(|rest| rest.split("\n}").next().unwrap_or(""));
        if let Some(body) = error {
            assert!(!body.contains("sled"), "StoreError names sled: {body}");
        }
    }
}

/// The store's writing methods: a table's and the store's own.
const STORE_WRITES: &[&str] = &[
    ".put(",
    ".delete(",
    ".upsert(",
    ".update(",
    ".put_",
    ".delete_",
    ".update_",
    ".register_taskdef(",
    ".redrive(",
    ".create_task",
    ".append_event",
    ".enqueue_",
    ".mark_delivered(",
    ".dead_letter(",
    ".dead_letter_delivery(",
    ".advance_bus(",
    ".set_",
    ".count_rule(",
];

#[test]
fn adapters_change_state_through_core_operations_only() {
    // One path per mutation: a gRPC or HTTP handler checks its input and calls a core-layer
    // operation (rules.rs, schedules.rs, taskdefs.rs, tokens.rs, …); it never writes the
    // store itself.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = vec![];
    for (module, p) in source_files(&src) {
        let adapter = ["api", "agents", "http", "dashboard"].contains(&module.as_str())
            || module.ends_with("_api");
        if !adapter {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for statement in code.split([';', '{', '}']) {
            let squeezed: String = statement.split_whitespace().collect();
            if let Some(at) = squeezed.find("store.") {
                let rest = &squeezed[at..];
                if let Some(w) = STORE_WRITES.iter().find(|w| rest.contains(*w)) {
                    offenders.push(format!("{module}: {w} in `{}`", statement.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "adapters writing the store; call a core operation instead:\n{}",
        offenders.join("\n")
    );
}
