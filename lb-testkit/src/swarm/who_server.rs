//! The swarm lab image's name server (compiled by `rustc` into a static binary when a lab
//! starts; not part of the crate): on TCP and UDP port `argv[1]` it answers every request line
//! (TCP, the connection stays open for more) or datagram (UDP) with
//! `"{hostname} {peer_ip} {peer_port}\n"`, the protocol of `lb_testkit::NameServer`, so the
//! test kit's clients work with tasks too. On TCP port `argv[2]`, if given, it echoes every byte
//! back until the client shuts its side down, then shuts down its own (for bulk transfers).
//! On UDP port `argv[2]` it answers a datagram `"SIZE COUNT"` with COUNT datagrams of SIZE
//! bytes, the k-th (from 0) all bytes k, sent by one `send_to` with `UDP_SEGMENT` set to SIZE:
//! one aggregate, as a QUIC server sends (`lb_testkit::segmented_echo` is its client).
//!
//! `who-server ask tcp|udp ADDR:PORT COUNT` is the client a container runs (busybox's nc has
//! no UDP): COUNT requests, each from a new socket (a new source port), one answer line each,
//! or `error: ...` for a request that failed within 2 s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// A connection silent this long is closed (its thread ends).
const IDLE: Duration = Duration::from_secs(300);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("ask") {
        return ask(&args[2..]);
    }
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: who-server PORT [ECHO_PORT]");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let host: &'static str = Box::leak(host.trim().to_owned().into_boxed_str());
    let udp = UdpSocket::bind(("0.0.0.0", port)).expect("udp bind");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let line = format!("{host} {} {}\n", peer.ip(), peer.port());
                let _ = udp.send_to(line.as_bytes(), peer);
            }
        }
    });
    if let Some(echo_port) = args.get(2).and_then(|p| p.parse::<u16>().ok()) {
        let segmented = UdpSocket::bind(("0.0.0.0", echo_port)).expect("udp echo bind");
        std::thread::spawn(move || answer_segmented(&segmented));
        let echo = TcpListener::bind(("0.0.0.0", echo_port)).expect("echo bind");
        std::thread::spawn(move || {
            for stream in echo.incoming().flatten() {
                std::thread::spawn(move || echo_until_shutdown(stream));
            }
        });
    }
    let tcp = TcpListener::bind(("0.0.0.0", port)).expect("tcp bind");
    for stream in tcp.incoming().flatten() {
        std::thread::spawn(move || serve(stream, host));
    }
}

fn serve(stream: TcpStream, host: &str) {
    let Ok(peer) = stream.peer_addr() else { return };
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else { return };
    let line = format!("{host} {} {}\n", peer.ip(), peer.port());
    for request in BufReader::new(stream).lines() {
        if request.is_err() || writer.write_all(line.as_bytes()).is_err() {
            return;
        }
    }
}

fn echo_until_shutdown(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// `SOL_UDP`'s `UDP_SEGMENT` (`linux/udp.h`): the size of each datagram a larger send is
/// cut into by segmentation offload.
const SOL_UDP: i32 = 17;
const UDP_SEGMENT: i32 = 103;

extern "C" {
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
}

fn answer_segmented(socket: &UdpSocket) {
    use std::os::fd::AsRawFd as _;
    let mut buf = [0u8; 64];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let request = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut words = request.split_whitespace().map(|w| w.parse::<u16>());
        let (Some(Ok(size)), Some(Ok(count))) = (words.next(), words.next()) else {
            let _ = socket.send_to(b"error: want SIZE COUNT", peer);
            continue;
        };
        let size = size.max(1);
        let answer: Vec<u8> = (0..count)
            .flat_map(|k| std::iter::repeat_n(k as u8, usize::from(size)))
            .collect();
        let value = i32::from(size);
        // SAFETY: a valid socket and a pointer to an int of the length given.
        let set = unsafe { setsockopt(socket.as_raw_fd(), SOL_UDP, UDP_SEGMENT, &value, 4) };
        if set != 0 {
            let error = format!("error: UDP_SEGMENT refused: {}", std::io::Error::last_os_error());
            let _ = socket.send_to(error.as_bytes(), peer);
            continue;
        }
        if let Err(e) = socket.send_to(&answer, peer) {
            let _ = socket.send_to(format!("error: sending: {e}").as_bytes(), peer);
        }
    }
}

fn ask(args: &[String]) {
    let usage = "usage: who-server ask tcp|udp ADDR:PORT COUNT";
    let (Some(proto), Some(target), Some(count)) = (args.first(), args.get(1), args.get(2)) else {
        panic!("{usage}")
    };
    let target: std::net::SocketAddr = target.parse().expect(usage);
    let count: usize = count.parse().expect(usage);
    let timeout = Duration::from_secs(2);
    for _ in 0..count {
        let answer = match proto.as_str() {
            "udp" => ask_udp(target, timeout),
            "tcp" => ask_tcp(target, timeout),
            _ => panic!("{usage}"),
        };
        match answer {
            Ok(line) => print!("{line}"),
            Err(e) => println!("error: {e}"),
        }
    }
}

fn ask_udp(target: std::net::SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(target)?;
    socket.send(b"who\n")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn ask_tcp(target: std::net::SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"who\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}
