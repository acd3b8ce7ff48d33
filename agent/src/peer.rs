//! Which container is on the other end of a loopback TCP connection. The credentials endpoint
//! uses it so a token works only from a container of the task it was made for: a leaked token
//! is useless to another task.
//!
//! The kernel says it all: /proc/net/tcp maps the connection to its socket inode, /proc/*/fd
//! to the process holding that socket, and /proc/PID/cgroup to the container's cgroup, which
//! the agent names `/skiff/<task id>-<container>`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Parses one `ADDR:PORT` of /proc/net/tcp (the address as the kernel prints a network-order
/// u32 in native order).
fn parse_v4(s: &str) -> Option<SocketAddrV4> {
    let (ip, port) = s.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// The inode of the socket whose local end is `local` and remote end `remote`, from the text of
/// /proc/net/tcp.
pub fn socket_inode(proc_net_tcp: &str, local: SocketAddrV4, remote: SocketAddrV4) -> Option<u64> {
    proc_net_tcp.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && parse_v4(f[1]) == Some(local) && parse_v4(f[2]) == Some(remote))
            .then(|| f[9].parse().ok())
            .flatten()
    })
}

/// A process that holds socket `inode` open.
fn pid_holding(inode: u64) -> Option<u32> {
    let want = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The `<task id>-<container>` segment after `/skiff/` in a /proc/PID/cgroup text.
pub fn skiff_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let rest = &path[path.find("/skiff/")? + "/skiff/".len()..];
        let name = rest.split('/').next()?;
        (!name.is_empty()).then(|| name.to_string())
    })
}

/// The skiff container (`<task id>-<container>`) that opened the connection from `peer` to
/// `local`, or None if it is not one (a host process, or the connection is gone). Blocking:
/// it reads /proc.
pub fn container_of(peer: SocketAddr, local: SocketAddr) -> Option<String> {
    let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, local) else {
        return None;
    };
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // The caller's socket: its local end is the peer we see, its remote end is us.
    let inode = socket_inode(&table, peer, local)?;
    let pid = pid_holding(inode)?;
    skiff_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_are_matched_by_both_ends() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:CA4F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n\
            1: 0100007F:D2F4 0100007F:CA4F 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 20 4 30 10 -1\n\
            2: 0100007F:CA4F 0100007F:D2F4 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0 20 4 30 10 -1\n";
        let server: SocketAddrV4 = "127.0.0.1:51791".parse().unwrap();
        let client: SocketAddrV4 = "127.0.0.1:54004".parse().unwrap();
        assert_eq!(socket_inode(table, client, server), Some(2222));
        assert_eq!(socket_inode(table, server, client), Some(3333));
        assert_eq!(
            socket_inode(table, "127.0.0.1:1".parse().unwrap(), server),
            None
        );
    }

    #[test]
    fn the_container_is_read_from_its_cgroup() {
        let v1 = "12:memory:/skiff/01kax-main\n11:cpu,cpuacct:/skiff/01kax-main\n0::/init.scope\n";
        assert_eq!(skiff_cgroup(v1).as_deref(), Some("01kax-main"));
        let nested = "0::/system.slice/node.service/skiff/01kay-side-car\n";
        assert_eq!(skiff_cgroup(nested).as_deref(), Some("01kay-side-car"));
        assert_eq!(skiff_cgroup("0::/user.slice\n"), None);
    }

    #[test]
    fn a_live_connection_is_traced_to_this_process() {
        // Both ends in this test process: the socket's holder is us, outside any skiff cgroup.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let (SocketAddr::V4(peer), SocketAddr::V4(local)) =
            (c.local_addr().unwrap(), l.local_addr().unwrap())
        else {
            unreachable!()
        };
        let inode = socket_inode(&table, peer, local).expect("the connection is listed");
        assert_eq!(pid_holding(inode), Some(std::process::id()));
    }
}
