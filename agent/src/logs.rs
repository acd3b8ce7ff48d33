//! Container log files: one per container, in the CRI log format Kubernetes uses
//! (`<RFC3339Nano time> <stdout|stderr> <F|P> <text>`), rotated by size. The shim writes them;
//! the agent reads them back to stream to the CLI. Both sides share this module so the format
//! lives in one place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The file a container's log is written to; rotated copies are `<name>.1`, `<name>.2`, ...
pub const LOG_FILE: &str = "container.log";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends log lines to a file and rotates it when it grows past `max_bytes`, keeping
/// `keep` rotated files.
pub struct RotatingWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
    /// Bytes of an unfinished line per stream, held until a newline or a flush.
    pending: [Vec<u8>; 2],
}

/// A line longer than this is written as partial (`P`) records.
const MAX_LINE: usize = 16 * 1024;

impl RotatingWriter {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes: max_bytes.max(4096),
            keep,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Takes raw bytes a container wrote and records every complete line.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.pending[idx]);
            line.extend_from_slice(&data[..nl]);
            self.record(stream, &line, true)?;
            data = &data[nl + 1..];
        }
        self.pending[idx].extend_from_slice(data);
        while self.pending[idx].len() >= MAX_LINE {
            let rest = self.pending[idx].split_off(MAX_LINE);
            let chunk = std::mem::replace(&mut self.pending[idx], rest);
            self.record(stream, &chunk, false)?;
        }
        Ok(())
    }

    /// Writes out unfinished lines (at container exit).
    pub fn flush_partial(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.pending[stream as usize]);
            if !line.is_empty() {
                self.record(stream, &line, false)?;
            }
        }
        self.file.flush()
    }

    fn record(&mut self, stream: Stream, text: &[u8], full: bool) -> io::Result<()> {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut rec = Vec::with_capacity(text.len() + 48);
        rec.extend_from_slice(ts.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_str().as_bytes());
        rec.extend_from_slice(if full { b" F " } else { b" P " });
        rec.extend_from_slice(text);
        rec.push(b'\n');
        if self.size > 0 && self.size + rec.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for i in (1..self.keep).rev() {
                let from = rotated(&self.path, i);
                if from.exists() {
                    fs::rename(&from, rotated(&self.path, i + 1))?;
                }
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// All files of one log, oldest first.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..1000)
        .map(|i| rotated(path, i))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// One decoded record: which stream, and the bytes the container wrote (with its newline if
/// the line was complete).
#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    /// When the shim wrote it: RFC 3339 with nanoseconds, UTC.
    pub time: String,
    pub stream: Stream,
    pub data: Vec<u8>,
}

impl Record {
    /// The record's time in milliseconds since the epoch (0 if unreadable).
    pub fn time_ms(&self) -> i64 {
        chrono::DateTime::parse_from_rfc3339(&self.time)
            .map(|t| t.timestamp_millis())
            .unwrap_or(0)
    }
}

/// Decodes one CRI log line (without its trailing newline). Malformed lines give None.
pub fn parse_record(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = String::from_utf8_lossy(parts.next()?).into_owned();
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let mut data = parts.next().unwrap_or_default().to_vec();
    if full {
        data.push(b'\n');
    }
    Some(Record { time, stream, data })
}

/// Reads whole records from a reader, keeping an incomplete trailing line for the next call
/// (the writer may be mid-line when a follower reads).
pub fn read_records(reader: &mut BufReader<File>, carry: &mut Vec<u8>) -> io::Result<Vec<Record>> {
    let mut out = Vec::new();
    loop {
        let n = reader.read_until(b'\n', carry)?;
        if n == 0 || carry.last() != Some(&b'\n') {
            return Ok(out);
        }
        carry.pop();
        if let Some(r) = parse_record(carry) {
            out.push(r);
        }
        carry.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path) -> Vec<Record> {
        let mut out = Vec::new();
        for f in log_files(path) {
            let mut r = BufReader::new(File::open(f).unwrap());
            out.extend(read_records(&mut r, &mut Vec::new()).unwrap());
        }
        out
    }

    #[test]
    fn lines_split_across_writes_are_joined() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOG_FILE);
        let mut w = RotatingWriter::open(&p, 1 << 20, 2).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"lo\nworld").unwrap();
        w.flush_partial().unwrap();
        let recs = read_all(&p);
        let now = chrono::Utc::now().timestamp_millis();
        assert!(recs.iter().all(|r| (now - r.time_ms()).abs() < 60_000));
        let recs: Vec<(Stream, Vec<u8>)> = recs.into_iter().map(|r| (r.stream, r.data)).collect();
        assert_eq!(
            recs,
            vec![
                (Stream::Stderr, b"oops\n".to_vec()),
                (Stream::Stdout, b"hello\n".to_vec()),
                (Stream::Stdout, b"world".to_vec()),
            ]
        );
    }

    #[test]
    fn rotation_keeps_the_newest_files_and_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOG_FILE);
        let mut w = RotatingWriter::open(&p, 4096, 2).unwrap();
        for i in 0..1000 {
            w.write(
                Stream::Stdout,
                format!("line {i:04} {}\n", "x".repeat(40)).as_bytes(),
            )
            .unwrap();
        }
        let files = log_files(&p);
        assert_eq!(files.len(), 3, "current + 2 rotated: {files:?}");
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 4096);
        }
        let recs = read_all(&p);
        let last = String::from_utf8(recs.last().unwrap().data.clone()).unwrap();
        assert!(last.starts_with("line 0999"), "{last}");
        // Oldest lines were dropped, the kept ones are in order.
        let nums: Vec<u32> = recs
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data[5..9]).parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(nums[0] > 0);
    }

    #[test]
    fn very_long_lines_become_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOG_FILE);
        let mut w = RotatingWriter::open(&p, 1 << 20, 1).unwrap();
        let long = vec![b'a'; MAX_LINE * 2 + 10];
        w.write(Stream::Stdout, &long).unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        let data: Vec<u8> = read_all(&p).into_iter().flat_map(|r| r.data).collect();
        assert_eq!(data.len(), long.len() + 1);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(parse_record(b"garbage"), None);
        assert_eq!(parse_record(b"ts stdin F x"), None);
        assert_eq!(
            parse_record(b"ts stdout F "),
            Some(Record {
                time: "ts".into(),
                stream: Stream::Stdout,
                data: b"\n".to_vec()
            })
        );
    }
}
