//! A real webhook receiver for the tests: an HTTP server on 127.0.0.1 that verifies skiff's
//! signatures the way a user's receiver would (HMAC-SHA256 over `<timestamp>.<delivery id>.
//! <body>`, timestamp within five minutes), answers with statuses the test plans (to force
//! retries), can go down (connection refused) and come back on the same port, and records
//! every request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at_ms: i64,
    /// What it answered.
    pub status: u16,
    /// Whether the signature checked out with the secret it had.
    pub signature_ok: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

#[derive(Default)]
struct Inner {
    secret: Option<String>,
    plan: VecDeque<u16>,
    /// Requests to hold this long (ms) before answering, in order.
    stalls: VecDeque<u64>,
    received: Vec<Received>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The signature check a receiver does: `Skiff-Signature: v1=<hex>` must be HMAC-SHA256
/// (key: the subscription's signing secret) of `<Skiff-Timestamp>.<Skiff-Delivery-Id>.<body>`,
/// and the timestamp within five minutes of now (replay protection).
pub fn verify(secret: &str, headers: &HashMap<String, String>, body: &str) -> bool {
    let get = |k: &str| headers.get(k).map_or("", String::as_str);
    let Ok(ts) = get("skiff-timestamp").parse::<i64>() else {
        return false;
    };
    let now = chrono::Utc::now().timestamp();
    if (now - ts).abs() > 300 {
        return false;
    }
    let Some(sig) = get("skiff-signature").strip_prefix("v1=") else {
        return false;
    };
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let msg = format!("{ts}.{}.{body}", get("skiff-delivery-id"));
    ring::hmac::verify(&key, msg.as_bytes(), &sig).is_ok()
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = String::from_utf8_lossy(&body).into_owned();
    // The lock is released before waiting (a block, so the future stays Send).
    let (status, stall) = {
        let mut g = inner.lock().unwrap();
        let signature_ok = g
            .secret
            .as_ref()
            .is_some_and(|s| verify(s, &headers, &body));
        let status = if !signature_ok {
            401
        } else {
            g.plan.pop_front().unwrap_or(200)
        };
        let stall = g.stalls.pop_front().unwrap_or(0);
        // Recorded on arrival: a stalled request's sender may give up before the answer.
        g.received.push(Received {
            headers,
            body,
            at_ms: chrono::Utc::now().timestamp_millis(),
            status,
            signature_ok,
        });
        (status, stall)
    };
    tokio::time::sleep(std::time::Duration::from_millis(stall)).await;
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub fn start() -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Receiver {
            addr,
            inner: Arc::default(),
            rt,
            stop: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(self.inner.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.rt.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        self.stop = Some(tx);
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The signing secret to verify with (requests failing it get 401).
    pub fn set_secret(&self, secret: &str) {
        self.inner.lock().unwrap().secret = Some(secret.to_string());
    }

    /// The statuses to answer the next requests with (then 200 again).
    pub fn answer_next(&self, statuses: &[u16]) {
        self.inner.lock().unwrap().plan.extend(statuses);
    }

    /// Holds the next request this long before answering it.
    pub fn stall_next(&self, ms: u64) {
        self.inner.lock().unwrap().stalls.push_back(ms);
    }

    /// Stops listening: connections are refused until `up`.
    pub fn down(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // Wait until the port refuses connections.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "receiver did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .unwrap();
        self.serve(listener);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }
}
