//! Test servers that answer every request with their name and the peer they saw.
//!
//! A [`NameServer`] listens on `[::]` (dual-stack) on TCP and UDP ports inside a namespace and
//! answers `"{name} {peer_ip} {peer_port}\n"`, so a client learns which backend served it and
//! which source address reached the backend (what a load balancer's NAT preserved or not).
//!
//! * TCP: every request line (up to [`MAX_LINE`] bytes, `\n`-terminated) gets one answer; the
//!   connection stays open until the client closes it, so one connection can carry many
//!   requests. The first line must arrive within [`FIRST_LINE_TIMEOUT`], later ones within
//!   [`IDLE_TIMEOUT`] of the previous one.
//! * UDP: every datagram gets one answer, sent from the address it was sent to
//!   (`IPV6_PKTINFO`), to the address it came from.

use std::fmt;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::Interest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;

use super::netns::Netns;

/// Longest request line a TCP connection may send; a longer one closes the connection.
pub const MAX_LINE: usize = 1024;
/// Time a new TCP connection has to send its first line.
pub const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an open TCP connection may stay silent between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Peers kept by [`NameServer::peers`]; later requests are still counted.
pub const PEER_LOG_CAP: usize = 100_000;

const LISTEN_BACKLOG: libc::c_int = 1024;
const START_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Transport protocol of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// `ip` in canonical form: IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) become IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// `addr` with its IP in canonical form (see [`canonical_ip`]).
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// The answer line a [`NameServer`] named `name` sends to `peer` (without canonicalising).
pub fn reply_line(name: &str, peer: SocketAddr) -> String {
    format!("{name} {} {}\n", peer.ip(), peer.port())
}

/// One request a [`NameServer`] answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub proto: Proto,
    /// The client's address and port as the server saw them (canonical form).
    pub peer: SocketAddr,
}

#[derive(Default)]
struct Stats {
    log: Mutex<Vec<Request>>,
    tcp_requests: AtomicU64,
    udp_requests: AtomicU64,
    tcp_accepted: AtomicU64,
    tcp_open: AtomicU64,
}

impl Stats {
    fn record(&self, proto: Proto, peer: SocketAddr) {
        match proto {
            Proto::Tcp => &self.tcp_requests,
            Proto::Udp => &self.udp_requests,
        }
        .fetch_add(1, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() < PEER_LOG_CAP {
            log.push(Request { proto, peer });
        }
    }
}

/// Counts an open TCP connection for as long as it lives (also when its task is cancelled).
struct OpenConnection(Arc<Stats>);

impl OpenConnection {
    fn new(stats: Arc<Stats>) -> Self {
        stats.tcp_accepted.fetch_add(1, Ordering::Relaxed);
        stats.tcp_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.tcp_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server answering `"{name} {peer_ip} {peer_port}\n"` on TCP and UDP ports of a namespace.
/// It runs on its own thread; dropping it stops it and closes all its sockets before `drop`
/// returns.
pub struct NameServer {
    name: String,
    namespace: String,
    tcp_ports: Vec<u16>,
    udp_ports: Vec<u16>,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for NameServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameServer")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("tcp_ports", &self.tcp_ports)
            .field("udp_ports", &self.udp_ports)
            .finish_non_exhaustive()
    }
}

impl NameServer {
    /// Binds `[::]:port` for every port (dual-stack; port 0 picks a free one, see
    /// [`NameServer::tcp_ports`]) inside `ns` and starts serving. `name` must be non-empty and
    /// without whitespace, since it is the first word of each answer.
    pub fn start(
        ns: &Netns,
        name: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> Result<NameServer> {
        ensure!(
            !name.is_empty() && !name.chars().any(char::is_whitespace),
            "server name {name:?} must be one non-empty word"
        );
        ensure!(
            !tcp_ports.is_empty() || !udp_ports.is_empty(),
            "server {name} needs at least one port"
        );
        let (tcp_fds, udp_fds) = ns
            .run(|| -> Result<(Vec<OwnedFd>, Vec<OwnedFd>)> {
                let tcp = tcp_ports
                    .iter()
                    .map(|&port| {
                        bind_dual_stack(libc::SOCK_STREAM, port)
                            .with_context(|| format!("tcp [::]:{port}"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let udp = udp_ports
                    .iter()
                    .map(|&port| {
                        bind_dual_stack(libc::SOCK_DGRAM, port)
                            .with_context(|| format!("udp [::]:{port}"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((tcp, udp))
            })?
            .with_context(|| format!("binding server {name} in {}", ns.name()))?;
        let tcp: Vec<std::net::TcpListener> = tcp_fds.into_iter().map(Into::into).collect();
        let udp: Vec<std::net::UdpSocket> = udp_fds.into_iter().map(Into::into).collect();
        let tcp_ports = tcp
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<io::Result<Vec<_>>>()?;
        let udp_ports = udp
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<io::Result<Vec<_>>>()?;

        let stats = Arc::new(Stats::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread_stats = Arc::clone(&stats);
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name("mlb-nameserver".into())
            .spawn(move || serve(thread_name, tcp, udp, thread_stats, ready_tx, stop_rx))
            .context("spawning the server thread")?;
        let server = NameServer {
            name: name.to_owned(),
            namespace: ns.name().to_owned(),
            tcp_ports,
            udp_ports,
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(server),
            Ok(Err(e)) => Err(e.context(format!("starting server {name}"))),
            Err(_) => bail!("server {name} did not start within {START_TIMEOUT:?}"),
        }
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace it listens in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The TCP ports it listens on (port 0 resolved), in the order given.
    pub fn tcp_ports(&self) -> &[u16] {
        &self.tcp_ports
    }

    /// The UDP ports it listens on (port 0 resolved), in the order given.
    pub fn udp_ports(&self) -> &[u16] {
        &self.udp_ports
    }

    /// The protocol and peer IP of every request answered so far, oldest first (at most
    /// [`PEER_LOG_CAP`]).
    pub fn peers(&self) -> Vec<(Proto, IpAddr)> {
        self.requests_log()
            .into_iter()
            .map(|r| (r.proto, r.peer.ip()))
            .collect()
    }

    /// Every request answered so far with the peer's port, oldest first (at most
    /// [`PEER_LOG_CAP`]).
    pub fn requests_log(&self) -> Vec<Request> {
        self.stats
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests answered, both protocols.
    pub fn requests(&self) -> u64 {
        self.tcp_requests() + self.udp_requests()
    }

    /// TCP request lines answered.
    pub fn tcp_requests(&self) -> u64 {
        self.stats.tcp_requests.load(Ordering::Relaxed)
    }

    /// UDP datagrams answered.
    pub fn udp_requests(&self) -> u64 {
        self.stats.udp_requests.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn tcp_connections(&self) -> u64 {
        self.stats.tcp_accepted.load(Ordering::Relaxed)
    }

    /// TCP connections currently open.
    pub fn tcp_open_connections(&self) -> u64 {
        self.stats.tcp_open.load(Ordering::Relaxed)
    }

    /// Forgets the peer log and zeroes the request and accepted-connection counters (open
    /// connections keep being counted).
    pub fn reset(&self) {
        self.stats
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.stats.tcp_requests.store(0, Ordering::Relaxed);
        self.stats.udp_requests.store(0, Ordering::Relaxed);
        self.stats.tcp_accepted.store(0, Ordering::Relaxed);
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The thread exits promptly: its runtime stops at the signal and dropping the
            // runtime cancels every task, closing the sockets.
            let _ = thread.join();
        }
    }
}

/// The server thread: a current-thread runtime serving until `stop` fires (or its sender is
/// dropped).
fn serve(
    name: String,
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
    stats: Arc<Stats>,
    ready: mpsc::Sender<Result<()>>,
    stop: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(anyhow!(e).context("building the server runtime")));
            return;
        }
    };
    runtime.block_on(async move {
        let sockets = (|| -> io::Result<(Vec<TcpListener>, Vec<UdpSocket>)> {
            let tcp = tcp
                .into_iter()
                .map(TcpListener::from_std)
                .collect::<io::Result<Vec<_>>>()?;
            let udp = udp
                .into_iter()
                .map(UdpSocket::from_std)
                .collect::<io::Result<Vec<_>>>()?;
            Ok((tcp, udp))
        })();
        let (tcp, udp) = match sockets {
            Ok(sockets) => sockets,
            Err(e) => {
                let _ = ready.send(Err(anyhow!(e).context("registering sockets")));
                return;
            }
        };
        let name: Arc<str> = name.into();
        for listener in tcp {
            tokio::spawn(accept_loop(listener, Arc::clone(&name), Arc::clone(&stats)));
        }
        for socket in udp {
            tokio::spawn(udp_loop(socket, Arc::clone(&name), Arc::clone(&stats)));
        }
        let _ = ready.send(Ok(()));
        let _ = stop.await;
    });
    // Dropping the runtime here cancels the tasks and closes every socket.
}

async fn accept_loop(listener: TcpListener, name: Arc<str>, stats: Arc<Stats>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let open = OpenConnection::new(Arc::clone(&stats));
                tokio::spawn(serve_connection(
                    stream,
                    canonical_addr(peer),
                    Arc::clone(&name),
                    open,
                ));
            }
            Err(e) => {
                // E.g. EMFILE or a connection reset before accept: wait a little, go on.
                tracing::debug!("name server {name}: accept: {e}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    name: Arc<str>,
    open: OpenConnection,
) {
    let stats = Arc::clone(&open.0);
    let answer = reply_line(&name, peer);
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let mut line = Vec::with_capacity(64);
    let mut wait = FIRST_LINE_TIMEOUT;
    loop {
        line.clear();
        let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1;
        let mut limited = (&mut reader).take(limit);
        let read = tokio::time::timeout(wait, limited.read_until(b'\n', &mut line)).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => break,
        };
        if n == 0 {
            break;
        }
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() > MAX_LINE {
            break;
        }
        stats.record(Proto::Tcp, peer);
        if write_half.write_all(answer.as_bytes()).await.is_err() {
            break;
        }
        if !complete {
            // The client closed after an unterminated last line.
            break;
        }
        wait = IDLE_TIMEOUT;
    }
    drop(open);
}

async fn udp_loop(socket: UdpSocket, name: Arc<str>, stats: Arc<Stats>) {
    let fd = socket.as_raw_fd();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let received = socket
            .async_io(Interest::READABLE, || recv_with_pktinfo(fd, &mut buf))
            .await;
        let (peer, local) = match received {
            Ok((_len, peer, local)) => (peer, local),
            Err(e) => {
                tracing::debug!("name server {name}: recvmsg: {e}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let seen = canonical_addr(SocketAddr::V6(peer));
        stats.record(Proto::Udp, seen);
        let answer = reply_line(&name, seen);
        let sent = socket
            .async_io(Interest::WRITABLE, || {
                send_with_pktinfo(fd, answer.as_bytes(), &peer, local.as_ref())
            })
            .await;
        if let Err(e) = sent {
            // Fall back to letting the kernel pick the source address.
            tracing::debug!("name server {name}: sendmsg with pktinfo: {e}");
            if let Err(e) = socket
                .send_to(answer.as_bytes(), SocketAddr::V6(peer))
                .await
            {
                tracing::debug!("name server {name}: send_to {seen}: {e}");
            }
        }
    }
}

/// An `AF_INET6` socket bound to `[::]:port` with `IPV6_V6ONLY` off, non-blocking and
/// close-on-exec; listening (TCP) or with `IPV6_RECVPKTINFO` on (UDP).
fn bind_dual_stack(kind: libc::c_int, port: u16) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new descriptor or -1; we own it right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET6,
            kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if kind == libc::SOCK_DGRAM {
        set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
    }
    let addr = sockaddr_in6(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    // SAFETY: `addr` is a valid sockaddr_in6 of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            socklen::<libc::sockaddr_in6>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if kind == libc::SOCK_STREAM {
        // SAFETY: listen(2) on our bound socket.
        if unsafe { libc::listen(fd.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            socklen::<libc::c_int>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).expect("small type")
}

fn sockaddr_in6(addr: &SocketAddrV6) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut raw: libc::sockaddr_in6 = unsafe { zeroed() };
    raw.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).expect("AF_INET6 fits");
    raw.sin6_port = addr.port().to_be();
    raw.sin6_flowinfo = addr.flowinfo();
    raw.sin6_addr.s6_addr = addr.ip().octets();
    raw.sin6_scope_id = addr.scope_id();
    raw
}

/// Control buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuf([u8; 128]);

/// One `recvmsg` on a dual-stack UDP socket: length, sender (IPv4 ones as mapped addresses)
/// and the destination address from `IPV6_PKTINFO`, if present.
fn recv_with_pktinfo(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddrV6, Option<Ipv6Addr>)> {
    // SAFETY: plain data, all-zero is valid.
    let mut name: libc::sockaddr_in6 = unsafe { zeroed() };
    let mut control = ControlBuf([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: plain data, all-zero is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen = socklen::<libc::sockaddr_in6>();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated length.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = usize::try_from(n).map_err(|_| io::Error::other("negative length"))?;
    if i32::from(name.sin6_family) != libc::AF_INET6 {
        return Err(io::Error::other(format!(
            "unexpected sender address family {}",
            name.sin6_family
        )));
    }
    let peer = SocketAddrV6::new(
        Ipv6Addr::from(name.sin6_addr.s6_addr),
        u16::from_be(name.sin6_port),
        name.sin6_flowinfo,
        name.sin6_scope_id,
    );
    let mut local = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, bounded by
    // msg_controllen; the data of an IPV6_PKTINFO message is an in6_pktinfo, read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IPV6 && (*cmsg).cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>());
                local = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((len, peer, local))
}

/// One `sendmsg` to `peer`, from `local` if given (`IPV6_PKTINFO`, any interface).
fn send_with_pktinfo(
    fd: RawFd,
    data: &[u8],
    peer: &SocketAddrV6,
    local: Option<&Ipv6Addr>,
) -> io::Result<usize> {
    let mut name = sockaddr_in6(peer);
    let mut control = ControlBuf([0; 128]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: plain data, all-zero is valid.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&raw mut name).cast();
    msg.msg_namelen = socklen::<libc::sockaddr_in6>();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if let Some(local) = local {
        let info_len = u32::try_from(size_of::<libc::in6_pktinfo>()).expect("small type");
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the buffer (128 bytes) is larger
        // than CMSG_SPACE(20), so the header and data written below stay inside it.
        unsafe {
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(info_len) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
            (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(info_len) as usize;
            let mut info: libc::in6_pktinfo = zeroed();
            info.ipi6_addr.s6_addr = local.octets();
            info.ipi6_ifindex = 0;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
        }
    }
    // SAFETY: every pointer in `msg` refers to a live buffer of the stated length.
    let n = unsafe { libc::sendmsg(fd, &raw const msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(n).map_err(|_| io::Error::other("negative length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn canonical_ip_unmaps_v4() {
        let mapped: IpAddr = "::ffff:198.18.1.2".parse().unwrap();
        assert_eq!(
            canonical_ip(mapped),
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2))
        );
        let v6: IpAddr = "fd00:1::2".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
        let v4: IpAddr = "198.18.1.2".parse().unwrap();
        assert_eq!(canonical_ip(v4), v4);
    }

    #[test]
    fn reply_line_format() {
        let peer: SocketAddr = "[fd00:1::2]:40000".parse().unwrap();
        assert_eq!(reply_line("backend-0", peer), "backend-0 fd00:1::2 40000\n");
        let peer = canonical_addr("[::ffff:198.18.1.2]:5".parse().unwrap());
        assert_eq!(reply_line("b", peer), "b 198.18.1.2 5\n");
    }
}
