//! `skiff tasks exec ID [-c CONTAINER] [-i] [-t] -- CMD…`: a command in a running task's
//! container, its input and output streamed through the controller (ECS Exec, `kubectl
//! exec`). With -t this terminal is put in raw mode for the command's own terminal and its
//! size follows this one's; the exit code is the command's.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;

use anyhow::Context;
use skiff_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::conn::{api_error, Conn};
use crate::output::{self, Format};

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The task's id (or a unique prefix of it).
    pub id: String,
    /// The container (default: the task's only one).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Send this standard input to the command (without it the command's input is empty).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the command on a terminal (its stdout and stderr arrive as one stream); needs a
    /// terminal here. `-it` for a shell.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// What to run, after `--`, e.g. `-- sh -c 'ls /data'`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// This terminal's size, if standard output is one.
fn terminal_size() -> Option<pb::TerminalSize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0).then_some(pb::TerminalSize {
        rows: u32::from(ws.ws_row),
        cols: u32::from(ws.ws_col),
    })
}

/// Raw mode for as long as it lives: keys go to the remote terminal as typed.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).context("setting raw mode")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = nix::sys::termios::tcsetattr(
            stdin.as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

pub async fn exec(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    fmt: Format,
    a: ExecArgs,
) -> anyhow::Result<i32> {
    if a.tty && !std::io::stdin().is_terminal() {
        anyhow::bail!("-t: standard input is not a terminal (drop -t, or run from a terminal)");
    }
    if a.tty && fmt == Format::Json {
        anyhow::bail!("-o json collects the output: it cannot be used with -t");
    }
    let (tx, rx) = mpsc::channel::<pb::ExecInput>(16);
    let start = pb::ExecStart {
        task_id: a.id.clone(),
        container: a.container.clone().unwrap_or_default(),
        command: a.command.clone(),
        tty: a.tty,
        stdin: a.interactive,
        size: if a.tty { terminal_size() } else { None },
    };
    tx.send(pb::ExecInput {
        body: Some(pb::exec_input::Body::Start(start)),
    })
    .await
    .ok();
    let mut outputs = client
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(api_error)?
        .into_inner();
    let _raw = if a.tty { Some(RawMode::enter()?) } else { None };
    if a.interactive {
        // Standard input on a thread of its own (a blocking read), as it arrives.
        let input = tx.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = input.blocking_send(pb::ExecInput {
                            body: Some(pb::exec_input::Body::CloseStdin(true)),
                        });
                        return;
                    }
                    Ok(n) => {
                        let msg = pb::ExecInput {
                            body: Some(pb::exec_input::Body::Stdin(buf[..n].to_vec())),
                        };
                        if input.blocking_send(msg).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if a.tty {
        let resize = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(size) = terminal_size() {
                    let msg = pb::ExecInput {
                        body: Some(pb::exec_input::Body::Resize(size)),
                    };
                    if resize.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let (mut collected_out, mut collected_err) = (Vec::new(), Vec::new());
    let exit = loop {
        let Some(o) = outputs.message().await.map_err(api_error)? else {
            anyhow::bail!("the exec ended without the command's exit code");
        };
        if fmt == Format::Json {
            collected_out.extend_from_slice(&o.stdout);
            collected_err.extend_from_slice(&o.stderr);
        } else {
            if !o.stdout.is_empty() {
                out.write_all(&o.stdout)?;
                out.flush()?;
            }
            if !o.stderr.is_empty() {
                err.write_all(&o.stderr)?;
                err.flush()?;
            }
        }
        if let Some(exit) = o.exit {
            break exit;
        }
    };
    drop(tx);
    drop(_raw);
    if fmt == Format::Json {
        println!(
            "{}",
            output::json(&serde_json::json!({
                "taskId": a.id,
                "command": a.command,
                "exitCode": exit.code,
                "error": exit.error,
                "stdout": String::from_utf8_lossy(&collected_out),
                "stderr": String::from_utf8_lossy(&collected_err),
            }))
        );
    } else if !exit.error.is_empty() {
        eprintln!("skiff: {}", exit.error);
    }
    Ok(exit.code)
}
