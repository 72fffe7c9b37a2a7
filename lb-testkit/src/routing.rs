//! A real BIRD 2 in a test's namespace (a router, or a balancer node announcing its VIPs),
//! its control socket, and the routes it installs. Every wait is bounded.

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use crate::{ChildGuard, Netns};

/// How long BIRD may take to open its control socket after it starts.
const BIRD_START: Duration = Duration::from_secs(10);
/// How long one `birdc` command may take.
const BIRDC: Duration = Duration::from_secs(10);

/// Starts BIRD in the foreground (so the guard owns it) in `ns` with `conf`, written to
/// `dir/bird.conf`, its control socket `dir/bird.ctl`; waits until the socket answers.
pub fn start_bird(ns: &Netns, dir: &Path, conf: &str) -> ChildGuard {
    let conf_path = dir.join("bird.conf");
    std::fs::write(&conf_path, conf).expect("bird.conf");
    let socket = dir.join("bird.ctl");
    let _ = std::fs::remove_file(&socket);
    let bird = ns
        .spawn(
            "bird",
            &[
                "-f",
                "-c",
                conf_path.to_str().unwrap(),
                "-s",
                socket.to_str().unwrap(),
            ],
            &[],
        )
        .expect("bird (cargo xtask setup installs bird2)");
    let deadline = Instant::now() + BIRD_START;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "BIRD did not open {}: {}",
            socket.display(),
            bird.output_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bird
}

/// A balancer node's BIRD configuration, as `deploy/bird/bird.conf` with this node's
/// addresses: one session (`upstream`) from `own` (AS 65010) to `router` (AS 65000) with
/// hold time `hold_s`, exporting the VIPs lbd writes to `include`.
pub fn node_conf(own: &str, router: &str, include: &Path, hold_s: u64) -> String {
    format!(
        "router id {own};
include \"{include}\";
protocol device {{ scan time 1; }}
protocol kernel {{ ipv4 {{ import none; export none; }}; }}
protocol bgp upstream {{
  local {own} as 65010; neighbor {router} as 65000;
  hold time {hold_s}; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2;
  ipv4 {{ import none; export where proto = \"meshlb_vips4\"; next hop self; }};
}}
",
        include = include.display(),
    )
}

/// Kills a BIRD with SIGKILL (bounded wait). Its kernel closes its sessions, so a router
/// drops it at once.
pub fn kill_bird(mut bird: ChildGuard) {
    bird.signal(libc::SIGKILL).expect("kill bird");
    let _ = bird.wait_timeout(Duration::from_secs(5));
}

/// `birdc -s SOCKET ARGS`: what it printed.
pub fn birdc(socket: &Path, args: &[&str]) -> String {
    let mut birdc = std::process::Command::new("birdc");
    birdc.arg("-s").arg(socket).args(args);
    let out = crate::command::output_within(birdc, None, BIRDC)
        .unwrap_or_else(|e| panic!("birdc {args:?}: {e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The next hops of `router`'s kernel route to `vip`/32 (empty: no route).
pub fn next_hops(router: &Netns, vip: &str) -> BTreeSet<String> {
    let out = router
        .ip(&["-4", "route", "show", &format!("{vip}/32")])
        // No route prints nothing; a failed `ip` must not read as a withdrawn route.
        .expect("ip route show in the router");
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect()
}

/// Waits (bounded by `limit`) until `router`'s next hops for `vip` are `want`; answers how
/// long it took.
pub fn wait_hops(router: &Netns, vip: &str, want: &[&str], limit: Duration) -> Duration {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    let start = Instant::now();
    loop {
        let got = next_hops(router, vip);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{vip}: next hops {got:?}, want {want:?} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
