//! The swarm lab image's name server (compiled by `rustc` into a static binary when a lab
//! starts; not part of the crate): on TCP and UDP port `argv[1]` it answers every request line
//! (TCP, the connection stays open for more) or datagram (UDP) with
//! `"{hostname} {peer_ip} {peer_port}\n"`, the protocol of `lb_testkit::NameServer`, so the
//! test kit's clients work with tasks too.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// A connection silent this long is closed (its thread ends).
const IDLE: Duration = Duration::from_secs(300);

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: who-server PORT");
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
