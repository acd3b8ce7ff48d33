//! The DNS server of tasks on skiff's bridge, at 169.254.170.2:53 on the bridge (their
//! /etc/resolv.conf names it): `<service>.skiff.internal` answers with the addresses of that
//! service's running, ready tasks on every node (the table the controller sends; its
//! `skiff_model::names` decides which tasks count); every other name is forwarded, as the bytes came, to the node's
//! resolvers — from the node's own namespace, so a stub resolver on the node's loopback
//! serves tasks too. UDP and TCP, as resolvers expect; a UDP answer too long for the client
//! is truncated so that it asks again over TCP.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use skiff_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{info, warn};

/// The zone the server answers for itself.
pub const ZONE: &str = "skiff.internal";

/// How long answers about services may be cached: tasks come and go.
const TTL_SECS: u32 = 5;
/// How long one upstream resolver gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client silent for this long is hung up on.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest UDP answer without EDNS (RFC 1035).
const PLAIN_UDP_MAX: usize = 512;
/// What the server offers over EDNS (the DNS flag day's value, safe from fragmentation).
const EDNS_PAYLOAD: u16 = 1232;

/// Service (lower case) → its tasks' addresses.
type NameMap = HashMap<String, Vec<IpAddr>>;

/// The agent's DNS server: the names table and where it listens.
pub struct Dns {
    names: RwLock<Arc<NameMap>>,
    /// Resolvers to forward to; empty: the node's, from /etc/resolv.conf at each query.
    upstreams: Vec<SocketAddr>,
    /// The bridge it listens on, once it does (or tries to).
    serving: tokio::sync::Mutex<Option<String>>,
}

impl Dns {
    pub fn new(upstreams: Vec<SocketAddr>) -> Dns {
        Dns {
            names: RwLock::new(Arc::default()),
            upstreams,
            serving: tokio::sync::Mutex::new(None),
        }
    }

    /// Takes the controller's table (it always sends the whole of it).
    pub fn set_names(&self, table: pb::ServiceNames) {
        let map: NameMap = table
            .services
            .into_iter()
            .map(|(service, a)| {
                let addresses = a.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                (service.to_ascii_lowercase(), addresses)
            })
            .collect();
        *self.names.write().unwrap() = Arc::new(map);
    }

    fn names(&self) -> Arc<NameMap> {
        self.names.read().unwrap().clone()
    }

    /// Where queries for other names go, in order.
    fn upstreams(&self) -> Vec<SocketAddr> {
        if !self.upstreams.is_empty() {
            return self.upstreams.clone();
        }
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        node_resolvers(&conf)
    }

    /// The reply to one query as it arrived (None: not even a header to answer).
    async fn reply(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        let query = match Message::from_vec(packet) {
            Ok(q) => q,
            Err(_) if packet.len() >= 12 => {
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            Err(_) => return None,
        };
        if let Some(answer) = local_answer(&query, &self.names()) {
            return encode(answer, udp_limit(&query, udp));
        }
        for upstream in self.upstreams() {
            let forwarded = if udp {
                forward_udp(packet, upstream).await
            } else {
                forward_tcp(packet, upstream).await
            };
            match forwarded {
                Ok(bytes) => return Some(bytes),
                Err(e) => warn!(%upstream, error = %e, "an upstream resolver did not answer"),
            }
        }
        let mut failed = Message::error_msg(
            query.metadata.id,
            query.metadata.op_code,
            ResponseCode::ServFail,
        );
        failed.queries = query.queries.clone();
        failed.metadata.recursion_desired = query.metadata.recursion_desired;
        failed.metadata.recursion_available = true;
        failed.to_vec().ok()
    }
}

/// The node's resolvers as /etc/resolv.conf names them (port 53), leaving out the task
/// endpoint itself (a node whose resolver is skiff's would loop).
fn node_resolvers(conf: &str) -> Vec<SocketAddr> {
    conf.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| *ip != IpAddr::V4(crate::network::TASK_ENDPOINT))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The answer for a name in skiff's zone; None for any other name (it is forwarded).
pub fn local_answer(query: &Message, names: &HashMap<String, Vec<IpAddr>>) -> Option<Message> {
    static ZONE_NAME: std::sync::LazyLock<Name> = std::sync::LazyLock::new(|| {
        Name::from_ascii(format!("{ZONE}.")).expect("the zone is a valid name")
    });
    let zone = &*ZONE_NAME;
    let [q] = query.queries.as_slice() else {
        return None;
    };
    let name = q.name().to_lowercase();
    if query.metadata.op_code != OpCode::Query || !zone.zone_of(&name) {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    let below = name.num_labels() - zone.num_labels();
    let service = (below == 1)
        .then(|| name.iter().next())
        .flatten()
        .and_then(|label| std::str::from_utf8(label).ok())
        .and_then(|label| names.get(label));
    match service {
        Some(addresses) => {
            for ip in addresses {
                let rdata = match (ip, q.query_type()) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(q.name().clone(), TTL_SECS, rdata));
            }
        }
        // The zone itself exists (with no records of its own); nothing else in it does.
        None if below == 0 => {}
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    Some(reply)
}

/// How long a UDP answer to `query` may be.
fn udp_limit(query: &Message, udp: bool) -> usize {
    match (&query.edns, udp) {
        (_, false) => u16::MAX as usize,
        (Some(e), true) => (e.max_payload().min(EDNS_PAYLOAD) as usize).max(PLAIN_UDP_MAX),
        (None, true) => PLAIN_UDP_MAX,
    }
}

/// The reply's bytes; one longer than `limit` goes without its records, marked truncated.
fn encode(mut reply: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    reply.answers.clear();
    reply.metadata.truncation = true;
    reply.to_vec().ok()
}

async fn forward_udp(packet: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; 65_535];
    let wait = async {
        loop {
            let n = socket.recv(&mut buf).await?;
            // Only the answer to this query (its id) is taken.
            if n >= 12 && buf[..2] == packet[..2] {
                return Ok::<_, std::io::Error>(buf[..n].to_vec());
            }
        }
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, wait)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 2 s"))?
}

async fn forward_tcp(packet: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        write_framed(&mut stream, packet).await?;
        read_framed(&mut stream).await
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 2 s"))?
}

/// One DNS message over TCP: its length in two bytes, then the message.
async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

/// Starts the server on `bridge` unless it runs there already. The address goes on the
/// bridge first (shared with the credentials endpoint). When port 53 is taken there —
/// another agent on this host serves the same bridge — the server keeps trying in the
/// background and the task starts anyway (that agent's server answers it meanwhile).
pub async fn ensure_serving(dns: &Arc<Dns>, bridge: &str) -> Result<(), String> {
    let mut serving = dns.serving.lock().await;
    if serving.as_deref() == Some(bridge) {
        return Ok(());
    }
    crate::network::add_task_endpoint_address(bridge).await?;
    let (dns, device) = (dns.clone(), bridge.to_string());
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            match bind(&device) {
                Ok((udp, tcp)) => {
                    info!(bridge = %device, "DNS for tasks listening on {}:53", crate::network::TASK_ENDPOINT);
                    tokio::spawn(serve_tcp(dns.clone(), tcp));
                    serve_udp(dns, udp).await;
                    return;
                }
                Err(e) => {
                    if !warned {
                        warn!(bridge = %device, error = %e, "the tasks' DNS server cannot listen yet; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    });
    *serving = Some(bridge.to_string());
    Ok(())
}

fn bind(device: &str) -> std::io::Result<(UdpSocket, TcpListener)> {
    let addr = SocketAddr::from((crate::network::TASK_ENDPOINT, 53));
    let udp = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Bound to the device before the address, so each bridge of the host can have its own
    // server on the same address (tests run agents with bridges of their own), while a
    // second server on the same bridge is refused.
    udp.bind_device(Some(device.as_bytes()))?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr.into())?;
    let udp = UdpSocket::from_std(udp.into())?;
    let tcp = tokio::net::TcpSocket::new_v4()?;
    tcp.set_reuseaddr(true)?;
    tcp.bind_device(Some(device.as_bytes()))?;
    tcp.bind(addr)?;
    Ok((udp, tcp.listen(256)?))
}

async fn serve_udp(dns: Arc<Dns>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                warn!(error = %e, "the tasks' DNS server stopped");
                return;
            }
        };
        let (packet, dns, socket) = (buf[..n].to_vec(), dns.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(reply) = dns.reply(&packet, true).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

async fn serve_tcp(dns: Arc<Dns>, listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            while let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await
            {
                let Some(reply) = dns.reply(&query, false).await else {
                    return;
                };
                if write_framed(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, kind: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m
    }

    fn names() -> HashMap<String, Vec<IpAddr>> {
        HashMap::from([(
            "web".to_string(),
            vec!["10.89.0.7".parse().unwrap(), "10.89.0.9".parse().unwrap()],
        )])
    }

    fn addresses(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_service_name_answers_with_its_addresses_whatever_its_case() {
        let q = query("WeB.Skiff.Internal.", RecordType::A);
        let a = local_answer(&q, &names()).unwrap();
        assert_eq!(a.metadata.id, q.metadata.id);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative && a.metadata.recursion_desired);
        assert_eq!(addresses(&a), ["10.89.0.7", "10.89.0.9"]);
        assert_eq!(a.answers[0].ttl, TTL_SECS);
        // The owner name is the one asked for, so the client matches it.
        assert_eq!(a.answers[0].name.to_ascii(), "WeB.Skiff.Internal.");
    }

    #[test]
    fn unknown_names_in_the_zone_do_not_exist_and_other_types_have_no_data() {
        let a = local_answer(&query("db.skiff.internal.", RecordType::A), &names()).unwrap();
        assert_eq!(a.metadata.response_code, ResponseCode::NXDomain);
        let a = local_answer(&query("x.web.skiff.internal.", RecordType::A), &names()).unwrap();
        assert_eq!(a.metadata.response_code, ResponseCode::NXDomain);
        let a = local_answer(&query("web.skiff.internal.", RecordType::AAAA), &names()).unwrap();
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.answers.is_empty());
        let a = local_answer(&query("skiff.internal.", RecordType::A), &names()).unwrap();
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn other_names_are_left_to_the_upstream_resolvers() {
        assert!(local_answer(&query("example.com.", RecordType::A), &names()).is_none());
        assert!(local_answer(&query("internal.", RecordType::A), &names()).is_none());
        assert_eq!(
            node_resolvers(
                "nameserver 127.0.0.53\nnameserver 169.254.170.2\nnameserver fe80::1%eth0\nsearch lan\n"
            ),
            [
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_udp_answer_too_long_is_truncated_so_the_client_asks_over_tcp() {
        let many: HashMap<String, Vec<IpAddr>> = HashMap::from([(
            "web".to_string(),
            (0..100u8)
                .map(|i| IpAddr::V4(Ipv4Addr::new(10, 89, 1, i)))
                .collect(),
        )]);
        let q = query("web.skiff.internal.", RecordType::A);
        let a = local_answer(&q, &many).unwrap();
        let udp = Message::from_vec(&encode(a.clone(), udp_limit(&q, true)).unwrap()).unwrap();
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let tcp = Message::from_vec(&encode(a, udp_limit(&q, false)).unwrap()).unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 100);
    }
}
