//! Serves exec requests from the controller (`skiff tasks exec`): starts the exec helper
//! (`skiff shim --exec`, see `exec_helper`) for a running container and relays on a stream of
//! its own to the controller — the command's stdout and stderr up, the caller's input,
//! end of input and terminal resizes down — then its exit code. When the caller goes away
//! (the stream down ends without an exit), the helper is told to kill the command.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use skiff_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::exec_helper::{ExecConfig, CANNOT_START};
use crate::shim::{ShimConfig, EXIT, SHIM_CONFIG, STARTED};
use crate::supervisor::runtime_dir;
use crate::AgentInner;

/// Answers an exec request on a connection of its own (as logs do: a command's output must
/// not hold up the task reports on the session's connection).
pub fn start(agent: Arc<AgentInner>, req: pb::ExecRequest) {
    tokio::spawn(async move {
        let client = crate::tls::own_connection(&agent.cfg.controller, agent.tls().as_ref()).await;
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open an exec connection to the controller");
                return;
            }
        };
        let (tx, rx) = mpsc::channel::<pb::ExecOutput>(16);
        let hello = pb::ExecOutput {
            request_id: req.request_id,
            ..Default::default()
        };
        let _ = tx.send(hello).await;
        let mut inputs = match client.exec(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(error = %e, "the controller refused the exec stream");
                return;
            }
        };
        let exit = match run(&agent, &req, &mut inputs, &tx).await {
            Ok(code) => pb::ExecExit {
                code,
                error: String::new(),
            },
            Err(error) => pb::ExecExit {
                code: CANNOT_START,
                error,
            },
        };
        tracing::info!(task_id = %req.task_id, container = %req.container, code = exit.code, "exec ended");
        let _ = tx
            .send(pb::ExecOutput {
                exit: Some(exit),
                ..Default::default()
            })
            .await;
        drop(tx);
        // Dropping the answer stream now would reset the call before the exit is through:
        // wait for the controller to end it (the caller has its exit code), a while at most.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Ok(Some(_)) = inputs.message().await {}
        })
        .await;
    });
}

/// The container's shim config, if it runs (started, not exited).
fn running_container(dir: &Path) -> Result<ShimConfig, String> {
    if !dir.join(STARTED).exists() || dir.join(EXIT).exists() {
        return Err("the container is not running".into());
    }
    let bytes = std::fs::read(dir.join(SHIM_CONFIG))
        .map_err(|e| format!("reading the container's {SHIM_CONFIG}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("reading {SHIM_CONFIG}: {e}"))
}

async fn run(
    agent: &Arc<AgentInner>,
    req: &pb::ExecRequest,
    inputs: &mut tonic::Streaming<pb::ExecInput>,
    tx: &mpsc::Sender<pb::ExecOutput>,
) -> Result<i32, String> {
    let dir = runtime_dir(&agent.cfg, &req.task_id).join(&req.container);
    let shim = running_container(&dir)?;
    let work = tempfile::Builder::new()
        .prefix("exec-")
        .tempdir_in(&dir)
        .map_err(|e| format!("exec dir: {e}"))?;
    let size = req.size.unwrap_or_default();
    let cfg = ExecConfig {
        container_id: shim.container_id,
        state_root: shim.state_root,
        bundle: shim.bundle,
        work_dir: work.path().to_path_buf(),
        command: req.command.clone(),
        tty: req.tty,
        rows: u16::try_from(size.rows).unwrap_or(u16::MAX),
        cols: u16::try_from(size.cols).unwrap_or(u16::MAX),
    };
    let json = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
    // Resizes go to the helper's fd 3.
    let (control_r, control_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let mut cmd = tokio::process::Command::new(&agent.cfg.shim_exe);
    cmd.args(["shim", "--exec", &json])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let control_fd = control_r.as_raw_fd();
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(control_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the exec helper: {e}"))?;
    drop(control_r);
    let mut control = Some(tokio::fs::File::from(std::fs::File::from(control_w)));
    let mut stdin = child.stdin.take();
    if !req.stdin {
        stdin = None;
    }
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let (mut out_open, mut err_open, mut inputs_open) = (true, true, true);
    let mut out_buf = vec![0u8; 32 * 1024];
    let mut err_buf = vec![0u8; 32 * 1024];
    let mut status = None;
    while status.is_none() || out_open || err_open {
        tokio::select! {
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    let _ = tx.send(pb::ExecOutput { stdout: out_buf[..n].to_vec(), ..Default::default() }).await;
                }
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    let _ = tx.send(pb::ExecOutput { stderr: err_buf[..n].to_vec(), ..Default::default() }).await;
                }
            },
            input = inputs.message(), if inputs_open => match input {
                Ok(Some(pb::ExecInput { body: Some(body) })) => match body {
                    pb::exec_input::Body::Stdin(data) => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(&data).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    pb::exec_input::Body::CloseStdin(_) => stdin = None,
                    pb::exec_input::Body::Resize(size) => {
                        if let Some(c) = control.as_mut() {
                            let line = format!("{} {}\n", size.rows, size.cols);
                            if c.write_all(line.as_bytes()).await.is_err() {
                                control = None;
                            }
                        }
                    }
                    pb::exec_input::Body::Start(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    // The caller went away: the command goes too.
                    inputs_open = false;
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                }
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st.map_err(|e| format!("waiting for the exec helper: {e}"))?);
            }
        }
    }
    drop(work);
    let status = status.expect("loop ends with a status");
    Ok(status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    }))
}
