//! The ports other processes hold on the node — TCP sockets listening, UDP sockets bound and
//! not connected, in the node's own network namespace (`/proc/net/{tcp,udp}{,6}`) — which a
//! task may not publish here: the agent reports them and the placer treats them like ports
//! skiff's own tasks publish, so such a task goes to another node or waits, rather than having
//! its DNAT rule silently take traffic from the process. Sockets bound to the task endpoint
//! (169.254.170.2: the agent's own servers for bridge tasks) do not count, as published
//! ports never capture that address.

use std::collections::BTreeSet;

/// Ports in use: (TCP ports, UDP ports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPorts {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
}

/// TCP_LISTEN and (for UDP, unconnected) TCP_CLOSE in the kernel's socket tables.
const LISTEN: &str = "0A";
const UNCONNECTED: &str = "07";

/// What the node's sockets hold now.
pub fn in_use() -> HostPorts {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/net/{f}")).unwrap_or_default();
    let mut out = HostPorts::default();
    for f in ["tcp", "tcp6"] {
        out.tcp.extend(ports(&read(f), LISTEN));
    }
    for f in ["udp", "udp6"] {
        out.udp.extend(ports(&read(f), UNCONNECTED));
    }
    out
}

/// The local ports of a socket table's rows in `state`, but for sockets bound to the task
/// endpoint.
fn ports<'a>(table: &'a str, state: &'a str) -> impl Iterator<Item = u16> + 'a {
    // 169.254.170.2 as /proc/net/tcp writes an IPv4 address: the bytes in host order (x86).
    let endpoint = format!(
        "{:08X}",
        u32::from_ne_bytes(crate::network::TASK_ENDPOINT.octets())
    );
    table.lines().skip(1).filter_map(move |line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1)?;
        let st = cols.nth(1)?;
        let (ip, port) = local.split_once(':')?;
        if st != state || ip == endpoint {
            return None;
        }
        u16::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1CE8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 02AAFEA9:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 0100007F:1CE8 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";

    #[test]
    fn listening_sockets_count_but_not_connections_nor_the_task_endpoints() {
        let found: Vec<u16> = ports(TCP, LISTEN).collect();
        assert_eq!(found, [7400, 80]);
    }

    #[test]
    fn a_socket_this_test_listens_on_is_seen() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let now = in_use();
        assert!(now.tcp.contains(&tcp.local_addr().unwrap().port()));
        assert!(now.udp.contains(&udp.local_addr().unwrap().port()));
    }
}
