//! The `skiff` binary: argument parsing and wiring only. The controller and agent are
//! libraries; the client commands are thin gRPC calls; only this crate knows about terminals.

mod apply;
mod config;
mod conn;
mod doctor;
mod ecs_import;
mod events;
mod exec;
mod images;
mod man;
mod nodes;
mod output;
mod queues;
mod retention;
mod roles;
mod rules;
mod run_task;
mod schedules;
mod secrets;
mod serve;
mod services;
mod sources;
mod systemd;
mod taskdef_file;
mod taskdefs;
mod tasks;
mod tokens;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Inside a task with a role, the API is where the agent says (SKIFF_ENDPOINT).
fn default_addr() -> String {
    std::env::var("SKIFF_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7400".into())
}

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Self-hosted, event-driven container scheduler"
)]
struct Cli {
    /// Controller gRPC address (default: SKIFF_ENDPOINT inside a task with a role, else
    /// http://127.0.0.1:7400).
    #[arg(long, global = true, env = "SKIFF_ADDR", default_value_t = default_addr())]
    addr: String,
    /// Output format for client commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Controller and a local agent in one process, with embedded defaults.
    Dev(serve::DevArgs),
    /// Run the controller.
    Controller(serve::ControllerArgs),
    /// Run an agent on this node.
    Agent(serve::AgentArgs),
    /// Run a one-off task.
    RunTask(run_task::RunTaskArgs),
    /// Make the controller hold what files declare (task definitions, roles, queues, topics
    /// and subscriptions, sources, rules, schedules, services), in dependency order. Exit 0:
    /// nothing to do; 2: changes applied.
    Apply(apply::ApplyArgs),
    /// Show what `skiff apply` would change, field by field, changing nothing. Exit 0: no
    /// differences; 2: changes pending.
    Diff(apply::ApplyArgs),
    /// Inspect and control tasks.
    #[command(subcommand)]
    Tasks(tasks::TasksCmd),
    /// Register and inspect task definitions.
    #[command(subcommand)]
    Taskdefs(taskdefs::TaskdefsCmd),
    /// Inspect nodes.
    #[command(subcommand)]
    Nodes(nodes::NodesCmd),
    /// Read the event bus.
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Images on the nodes: list, pull, remove, prune.
    #[command(subcommand)]
    Images(images::ImagesCmd),
    /// Secrets for task definitions: stored encrypted, values never shown.
    #[command(subcommand)]
    Secrets(secrets::SecretsCmd),
    /// Rules: event patterns and the targets matching events go to.
    #[command(subcommand)]
    Rules(rules::RulesCmd),
    /// Schedules: cron, rate and at expressions that run tasks.
    #[command(subcommand)]
    Schedules(schedules::SchedulesCmd),
    /// Queues: durable messages with SQS's semantics (visibility timeouts, dead letters).
    #[command(subcommand)]
    Queues(queues::QueuesCmd),
    /// Services: tasks kept running at a desired count, rolled out and scaled on a backlog.
    #[command(subcommand)]
    Services(services::ServicesCmd),
    /// Topics: notify subscribers (webhook, e-mail) of events, with retries and dead letters.
    #[command(subcommand)]
    Topics(topics::TopicsCmd),
    /// Object-store sources: buckets whose new objects become events.
    #[command(subcommand)]
    Sources(sources::SourcesCmd),
    /// Task roles: what tasks running under them may reach (skiff API, object store).
    #[command(subcommand)]
    Roles(roles::RolesCmd),
    /// API tokens and their roles (admin, operator, read-only).
    #[command(subcommand)]
    Tokens(tokens::TokensCmd),
    /// Registry credentials kept by the controller for task definitions to name.
    #[command(subcommand, name = "registry-creds")]
    RegistryCreds(images::RegistryCredsCmd),
    /// Print a shell completion script, e.g. `skiff completion bash >
    /// /etc/bash_completion.d/skiff`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Check that this node can run skiff's containers and reach the controller (cgroups,
    /// namespaces, overlayfs, seccomp, CNI plugins, disk space, the node certificate, the
    /// controller's health and clock), and say what to do about each problem.
    Doctor(doctor::DoctorArgs),
    /// Write man pages generated from this CLI's definition: skiff.1 and one per command
    /// (skiff-run-task.1, skiff-queues-send.1, …), e.g. `skiff man /usr/local/share/man/man1`.
    Man {
        /// Directory to write the pages to (created if missing).
        dir: PathBuf,
    },
    /// Internal: own one container (started by the agent). With --zygote, fork one shim per
    /// request from the agent on standard input (see skiff_agent::zygote).
    #[command(hide = true)]
    Shim {
        #[arg(required_unless_present_any = ["zygote", "exec"])]
        dir: Option<PathBuf>,
        #[arg(long)]
        zygote: bool,
        /// Run one `skiff tasks exec` command in a container (JSON from the agent; see
        /// skiff_agent::exec_helper).
        #[arg(long, conflicts_with_all = ["dir", "zygote"])]
        exec: Option<String>,
    },
}

/// mimalloc: a third of the controller's CPU in a burst of placements went to glibc's
/// malloc and free (sled copies its nodes on every write). Its arenas commit on demand
/// (`.cargo/config.toml`), so an idle process stays small.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // ring is the binary's one crypto stack (reqwest, object_store, lettre and tonic are all
    // built on it); every TLS connection of this process uses it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The shim must stay single-threaded: libcontainer forks and clones. No runtime for it.
    if let Command::Shim { dir, zygote, exec } = &cli.command {
        let code = match (dir, exec) {
            (_, Some(json)) => skiff_agent::exec_helper::main(json),
            (Some(dir), None) if !zygote => skiff_agent::shim::main(dir),
            _ => skiff_agent::zygote::serve(),
        };
        return ExitCode::from(code as u8);
    }
    let serving = matches!(
        cli.command,
        Command::Dev(_) | Command::Controller(_) | Command::Agent(_)
    );
    if !serving {
        // A client writing into a closed pipe (`skiff events tail | head`) ends quietly, as
        // other Unix tools do, instead of panicking in println!. Servers keep Rust's default
        // (SIGPIPE ignored: a dropped connection is an error to handle, not a death).
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "skiff", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if let Command::Man { dir } = &cli.command {
        return match man::write_pages(Cli::command(), dir) {
            Ok(pages) => {
                match cli.output {
                    output::Format::Json => println!("{}", output::json(&pages)),
                    output::Format::Table => pages.iter().for_each(|p| println!("{p}")),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("skiff: man pages in {}: {e:#}", dir.display());
                ExitCode::from(1)
            }
        };
    }
    // Servers get worker threads; a client command is one request at a time, and starting
    // worker threads would only add to every command's latency.
    let built = if serving {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skiff: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        let fmt = cli.output;
        match cli.command {
            Command::Dev(a) => serve::dev(a).await.map(|_| 0),
            Command::Controller(a) => serve::controller(a).await.map(|_| 0),
            Command::Agent(a) => serve::agent(a, &cli.addr).await.map(|_| 0),
            Command::RunTask(a) => run_task::run(&cli.addr, fmt, a).await,
            Command::Apply(a) => apply::run(&cli.addr, fmt, a, apply::Mode::Apply).await,
            Command::Diff(a) => apply::run(&cli.addr, fmt, a, apply::Mode::Diff).await,
            Command::Tasks(c) => tasks::tasks(&cli.addr, fmt, c).await,
            Command::Taskdefs(c) => taskdefs::taskdefs(&cli.addr, fmt, c).await,
            Command::Nodes(c) => nodes::nodes(&cli.addr, fmt, c).await,
            Command::Events(c) => events::events(&cli.addr, fmt, c).await,
            Command::Images(c) => images::images(&cli.addr, fmt, c).await,
            Command::Tokens(c) => tokens::tokens(&cli.addr, fmt, c).await,
            Command::Secrets(c) => secrets::secrets(&cli.addr, fmt, c).await,
            Command::Roles(c) => roles::roles(&cli.addr, fmt, c).await,
            Command::Rules(c) => rules::rules(&cli.addr, fmt, c).await,
            Command::Sources(c) => sources::sources(&cli.addr, fmt, c).await,
            Command::Schedules(c) => schedules::schedules(&cli.addr, fmt, c).await,
            Command::Queues(c) => queues::queues(&cli.addr, fmt, c).await,
            Command::Services(c) => services::services(&cli.addr, fmt, c).await,
            Command::Topics(c) => topics::topics(&cli.addr, fmt, c).await,
            Command::RegistryCreds(c) => images::registry_creds(&cli.addr, fmt, c).await,
            Command::Doctor(a) => doctor::doctor(&cli.addr, fmt, a).await,
            Command::Shim { .. } | Command::Completion { .. } | Command::Man { .. } => {
                unreachable!("handled above")
            }
        }
    });
    // Client streams may leave tasks behind; do not wait for them.
    rt.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("skiff: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and every flag a user can type says what it is for in `--help`.
    #[test]
    fn every_subcommand_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{p}: no about"));
                }
                for arg in sub.get_arguments() {
                    let global = ["addr", "output", "help", "version"];
                    if arg.is_hide_set() || global.contains(&arg.get_id().as_str()) {
                        continue;
                    }
                    if arg.get_help().is_none() && arg.get_long_help().is_none() {
                        missing.push(format!("{p} <{}>: no help", arg.get_id()));
                    }
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "skiff", &mut missing);
        assert!(missing.is_empty(), "without help:\n{}", missing.join("\n"));
    }

    #[test]
    fn completions_are_generated_from_the_cli_definition() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "skiff",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        for word in [
            "run-task",
            "taskdefs",
            "test-pattern",
            "--stop-on-interrupt",
        ] {
            assert!(
                script.contains(word),
                "{word} missing from the bash completion"
            );
        }
    }
}
