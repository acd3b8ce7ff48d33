//! Serves log requests from the controller: reads a task's container logs from disk (rotated
//! files oldest first) and, when following, keeps sending what the shim appends until the
//! container has exited and its log is drained, or the request is cancelled.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::logs::{self, Record, LOG_FILE};
use crate::shim::EXIT;
use crate::supervisor::{disk_dir, runtime_dir};
use crate::AgentInner;

/// Answers a log request on a connection of its own to the controller: HTTP/2 flow control is
/// also per connection, so a stalled reader's unread data on the session's connection would
/// hold up the task reports sharing it.
pub fn start(agent: Arc<AgentInner>, req: pb::LogRequest) {
    let (cancel_tx, cancel_rx) = watch::channel(false);
    agent
        .log_cancels
        .lock()
        .unwrap()
        .insert(req.request_id, cancel_tx);
    tokio::spawn(async move {
        let client = crate::tls::own_connection(&agent.cfg.controller, agent.tls().as_ref()).await;
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a log connection to the controller");
                agent.log_cancels.lock().unwrap().remove(&req.request_id);
                return;
            }
        };
        // Small buffer: the stream's own flow control paces the file reading.
        let (tx, rx) = mpsc::channel::<pb::LogData>(8);
        let call = tokio::spawn(async move { client.logs(ReceiverStream::new(rx)).await });
        // Attach the stream to the request at once, even if there is no data yet.
        let hello = pb::LogData {
            request_id: req.request_id,
            ..Default::default()
        };
        let _ = tx.send(hello).await;
        let result = serve(&agent, &req, cancel_rx, &tx).await;
        let error = result.err().unwrap_or_default();
        let last = pb::LogData {
            request_id: req.request_id,
            eof: true,
            error,
            ..Default::default()
        };
        let _ = tx.send(last).await;
        drop(tx);
        let _ = call.await;
        agent.log_cancels.lock().unwrap().remove(&req.request_id);
    });
}

pub fn cancel(agent: &AgentInner, request_id: u64) {
    if let Some(tx) = agent.log_cancels.lock().unwrap().remove(&request_id) {
        let _ = tx.send(true);
    }
}

async fn serve(
    agent: &Arc<AgentInner>,
    req: &pb::LogRequest,
    cancel: watch::Receiver<bool>,
    out: &mpsc::Sender<pb::LogData>,
) -> Result<(), String> {
    if req.task_id.is_empty() || req.task_id.contains('/') || req.task_id.contains("..") {
        return Err(format!("bad task id {:?}", req.task_id));
    }
    let dir = disk_dir(&agent.cfg, &req.task_id);
    let runtime = runtime_dir(&agent.cfg, &req.task_id);
    let mut containers: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|_| {
            format!(
                "no logs for task {} on node {}",
                req.task_id, agent.cfg.node_id
            )
        })?
        .flatten()
        // Every container of a task that began starting has its dir here.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    containers.sort();
    if !req.container.is_empty() {
        containers.retain(|c| *c == req.container);
    }
    let mut followers = Vec::new();
    for name in containers {
        let (cdir, rdir) = (dir.join(&name), runtime.join(&name));
        let (cancel, out) = (cancel.clone(), out.clone());
        let opts = Options {
            request_id: req.request_id,
            follow: req.follow,
            since_ms: req.since_ms,
            tail: req.tail as usize,
            timestamps: req.timestamps,
        };
        followers.push(tokio::spawn(async move {
            stream_container(opts, &name, &cdir, &rdir, cancel, out).await
        }));
    }
    for f in followers {
        let _ = f.await;
    }
    Ok(())
}

/// A log file being read, identified by inode so rotation is noticed.
struct Tail {
    reader: BufReader<File>,
    inode: u64,
    carry: Vec<u8>,
}

impl Tail {
    fn open(path: &Path) -> Option<Tail> {
        let f = File::open(path).ok()?;
        let inode = f.metadata().ok()?.ino();
        Some(Tail {
            reader: BufReader::new(f),
            inode,
            carry: Vec::new(),
        })
    }
}

/// What one log request asks of each container's log.
#[derive(Clone, Copy)]
struct Options {
    request_id: u64,
    follow: bool,
    /// Only records at or after this time (ms since the epoch; 0 = all).
    since_ms: i64,
    /// Only the last N records already written (0 = all).
    tail: usize,
    /// One chunk per record, carrying its time.
    timestamps: bool,
}

async fn stream_container(
    opts: Options,
    name: &str,
    dir: &Path,
    runtime: &Path,
    cancel: watch::Receiver<bool>,
    out: mpsc::Sender<pb::LogData>,
) {
    let path: PathBuf = dir.join(LOG_FILE);
    let follow = opts.follow;
    // Returns false once the reader is gone.
    let send = |mut records: Vec<Record>| {
        let out = out.clone();
        async move {
            if opts.since_ms > 0 {
                records.retain(|r| r.time_ms() >= opts.since_ms);
            }
            let chunks = if opts.timestamps {
                records
            } else {
                group(records)
            };
            for chunk in chunks {
                let data = pb::LogData {
                    request_id: opts.request_id,
                    container: name.to_string(),
                    stream: chunk.stream.as_str().to_string(),
                    data: chunk.data,
                    eof: false,
                    error: String::new(),
                    time: if opts.timestamps {
                        chunk.time
                    } else {
                        String::new()
                    },
                };
                if out.send(data).await.is_err() {
                    return false;
                }
            }
            true
        }
    };
    // What is already written: rotated files first, oldest first, then the live file; cut
    // to the last `tail` records when asked.
    let mut written = Vec::new();
    for old in logs::log_files(&path).into_iter().filter(|p| *p != path) {
        if let Some(mut t) = Tail::open(&old) {
            written.extend(logs::read_records(&mut t.reader, &mut t.carry).unwrap_or_default());
        }
    }
    let mut tail = Tail::open(&path);
    if let Some(t) = tail.as_mut() {
        written.extend(logs::read_records(&mut t.reader, &mut t.carry).unwrap_or_default());
    }
    if opts.since_ms > 0 {
        written.retain(|r| r.time_ms() >= opts.since_ms);
    }
    if opts.tail > 0 && written.len() > opts.tail {
        written.drain(..written.len() - opts.tail);
    }
    if !send(written).await {
        return;
    }
    loop {
        if *cancel.borrow() || out.is_closed() {
            return;
        }
        // The shim records the exit in the runtime dir, which goes once the task is over.
        let exited = runtime.join(EXIT).exists() || !runtime.exists();
        if let Some(t) = tail.as_mut() {
            if !send(logs::read_records(&mut t.reader, &mut t.carry).unwrap_or_default()).await {
                return;
            }
            // Rotated under us: finish the old file (done above), switch to the new one.
            let rotated = std::fs::metadata(&path)
                .map(|m| m.ino() != t.inode)
                .unwrap_or(false);
            if rotated {
                tail = Tail::open(&path);
                continue;
            }
        } else {
            tail = Tail::open(&path);
        }
        if !follow || exited {
            if let Some(t) = tail.as_mut() {
                send(logs::read_records(&mut t.reader, &mut t.carry).unwrap_or_default()).await;
            }
            return;
        }
        let mut c = cancel.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = c.changed() => {}
        }
    }
}

/// Joins consecutive records of one stream into chunks of at most 32 KiB.
fn group(records: Vec<Record>) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for r in records {
        match out.last_mut() {
            Some(last)
                if last.stream == r.stream && last.data.len() + r.data.len() <= 32 * 1024 =>
            {
                last.data.extend_from_slice(&r.data)
            }
            _ => out.push(r),
        }
    }
    out
}
