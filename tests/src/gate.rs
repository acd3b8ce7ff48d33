//! A TCP relay on 127.0.0.1 in front of a real server that can hold what connects to it: while
//! closed, each connection is accepted and left unanswered (a client's request hangs as it
//! would behind a dead link); once opened, connections pass through to the server. A test
//! uses it to hold an agent in the middle of an image pull.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct Gate {
    /// HOST:PORT to connect to instead of the server.
    pub addr: String,
    open: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    passed: Arc<AtomicUsize>,
}

impl Gate {
    /// A closed gate in front of `server` (HOST:PORT).
    pub fn closed(server: &str) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let passed = Arc::new(AtomicUsize::new(0));
        let (server, o, h, p) = (
            server.to_string(),
            open.clone(),
            held.clone(),
            passed.clone(),
        );
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                if !o.load(Ordering::Acquire) {
                    h.lock().unwrap().push(conn);
                    continue;
                }
                p.fetch_add(1, Ordering::AcqRel);
                if let Ok(upstream) = TcpStream::connect(&server) {
                    relay(conn, upstream);
                }
            }
        });
        Gate {
            addr,
            open,
            held,
            passed,
        }
    }

    /// How many connections it holds now.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// How many connections it has passed through.
    pub fn passed(&self) -> usize {
        self.passed.load(Ordering::Acquire)
    }

    /// Lets new connections through and closes the held ones (their clients see them reset,
    /// as when a dead link comes back).
    pub fn open(&self) {
        self.open.store(true, Ordering::Release);
        for c in self.held.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Copies both ways between `a` and `b` until either side closes.
fn relay(a: TcpStream, b: TcpStream) {
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        pipe(a, b2);
        pipe(b, a2);
    }
}
