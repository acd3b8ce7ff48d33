//! Builders for tests, in this crate and the ones above it (the `testing` feature, which the
//! controller enables for its tests only).

pub mod patterns;

use crate::model::{CatchUp, ContainerDef, NetworkMode, Overlap, Schedule, TaskSpec};

/// A one-container task spec reserving `cpu` vCPU and `mem` MiB.
pub fn spec(cpu: f64, mem: u64) -> TaskSpec {
    TaskSpec {
        placement: Default::default(),
        containers: vec![ContainerDef {
            name: "main".into(),
            image: "dir:/x".into(),
            entrypoint: vec![],
            command: vec![],
            environment: Default::default(),
            cpu,
            memory_mib: mem,
            essential: true,
            stop_timeout_secs: 30,
            working_dir: String::new(),
            pull_policy: String::new(),
            repository_credentials: String::new(),
            privileged: false,
            readonly_root_filesystem: false,
            init_process_enabled: false,
            health_check: None,
            port_mappings: vec![],
            user: String::new(),
            secrets: vec![],
            mounts: vec![],
        }],
        network_mode: NetworkMode::None,
        timeout_secs: 0,
        task_role: String::new(),
        input: None,
    }
}

/// An enabled schedule "s" running task definition "job" every minute, in UTC.
pub fn schedule() -> Schedule {
    Schedule {
        name: "s".into(),
        description: String::new(),
        expression: "rate(1 minute)".into(),
        timezone: "UTC".into(),
        enabled: true,
        start_ms: None,
        end_ms: None,
        flexible_window_secs: 0,
        overlap: Overlap::Allow,
        catch_up: CatchUp::Skip,
        catch_up_limit: 10,
        task_definition: "job".into(),
        overrides: Default::default(),
        group: String::new(),
        retry: Default::default(),
        created_ms: 0,
        updated_ms: 0,
        event: None,
        dead_letter_queue: String::new(),
    }
}
