//! `lb-bench bench control`: how fast the control plane changes the dataplane.
//!
//! 1. Full apply: a service file of N services × B backends, read, planned and written into a
//!    freshly loaded dataplane (in a namespace of its own), timed per phase.
//! 2. `lbctl add-backend` latency: from the moment the command is started to the first packet
//!    that reaches the new backend, with a client opening new UDP flows without pause.

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use lb_testkit::{Lbd, Netns, Topology};
use lb_userspace::{
    dataplane::{Dataplane, LoadOptions},
    plan,
    source::file::ServiceFile,
};

#[derive(clap::Args)]
pub struct ControlArgs {
    /// The lbd binary (lbctl is expected next to it).
    #[arg(long)]
    lbd: PathBuf,
    /// Services in the full-apply file.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Backends per service.
    #[arg(long, default_value_t = 16)]
    backends: usize,
    /// Full applies, each into a freshly loaded dataplane, a few seconds apart (the kernel
    /// frees the previous one's maps in the background); the median is held to the target.
    #[arg(long, default_value_t = 5)]
    apply_rounds: usize,
    /// `maglev_table_size` of every service (default: the service file's default).
    #[arg(long)]
    table_size: Option<u32>,
    /// Other services lbd holds while add-backend is measured (16 backends each): the cost of
    /// an API call on a busy node.
    #[arg(long, default_value_t = 0)]
    background_services: usize,
    /// add-backend samples.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Where to write control-<date>.{md,json}.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

/// Targets from the control-plane issue (#16): the full apply of 10,000 × 16 under a second.
const APPLY_TARGET_S: f64 = 1.0;
const ADD_BACKEND_P99_TARGET_MS: f64 = 50.0;

pub fn run(args: &ControlArgs) -> Result<()> {
    ensure!(
        args.lbd.exists(),
        "{} does not exist: run `cargo xtask build`",
        args.lbd.display()
    );
    ensure!(
        (1..=60_000).contains(&args.services) && (1..=4096).contains(&args.backends),
        "--services 1..=60000 and --backends 1..=4096"
    );
    let mut applies = Vec::new();
    for round in 0..args.apply_rounds.max(1) {
        if round > 0 {
            std::thread::sleep(Duration::from_secs(3));
        }
        let apply = full_apply(args.services, args.backends, args.table_size)?;
        println!(
            "control: apply {} services x {} backends: parse {:.3} s, plan {:.3} s, load {:.3} s, build tables and write {:.3} s; total {:.3} s, {:.2} s of CPU (target < {APPLY_TARGET_S} s)",
            args.services,
            args.backends,
            apply.parse_s,
            apply.plan_s,
            apply.load_s,
            apply.write_s,
            apply.total_s(),
            apply.cpu_s
        );
        applies.push(apply);
    }
    applies.sort_by(|a, b| a.total_s().total_cmp(&b.total_s()));
    let totals: Vec<f64> = applies.iter().map(Apply::total_s).collect();
    // The median run, whose phases are reported; of an even count, the faster middle one
    // (the upper was reported, a median above the middle).
    let apply = applies.swap_remove((applies.len() - 1) / 2);
    let latencies = add_backend_latency(&args.lbd, args.samples, args.background_services)?;
    let (p50, p99, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    );
    println!(
        "control: lbctl add-backend to first packet, {} samples: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (target p99 < {ADD_BACKEND_P99_TARGET_MS} ms)",
        latencies.len()
    );
    write_results(args, &apply, &totals, &latencies)
}

struct Apply {
    services: usize,
    backends: usize,
    table_size: u32,
    parse_s: f64,
    plan_s: f64,
    load_s: f64,
    /// Building the selection tables and writing every map.
    write_s: f64,
    /// CPU time (all threads, user and system) of parse, plan and write.
    cpu_s: f64,
}

impl Apply {
    /// What an operator waits for: from the file to programmed maps (the programs' load is
    /// once per daemon start and reported apart).
    fn total_s(&self) -> f64 {
        self.parse_s + self.plan_s + self.write_s
    }
}

/// `services` services on VIPs 198.19.x.y, each with `backends` backends of its own.
pub fn service_file(services: usize, backends: usize, table_size: Option<u32>) -> String {
    let mut text = String::from("services:\n");
    for s in 0..services {
        let vip = 0xC613_0000u32 + 1 + s as u32; // 198.19.0.1 onwards
        let vip = std::net::Ipv4Addr::from(vip);
        let _ = writeln!(
            text,
            "  svc{s}:\n    vip: {vip}\n    ports: [\"80:8080/tcp\"]"
        );
        if let Some(size) = table_size {
            let _ = writeln!(text, "    maglev_table_size: {size}");
        }
        text.push_str("    backends: [");
        for b in 0..backends {
            // 198.18.128.0/17: distinct per service and backend, never a real host.
            let addr = 0xC612_8000u32 + (s * backends + b) as u32 % 0x8000;
            let port = 8080 + ((s * backends + b) / 0x8000) as u16;
            let sep = if b == 0 { "" } else { ", " };
            let _ = write!(text, "{sep}\"{}:{port}\"", std::net::Ipv4Addr::from(addr));
        }
        text.push_str("]\n");
    }
    text
}

fn full_apply(services: usize, backends: usize, table_size: Option<u32>) -> Result<Apply> {
    let text = service_file(services, backends, table_size);
    let ns = Netns::new("ctl")?;
    ns.run(move || -> Result<Apply> {
        let t = Instant::now();
        let cpu_before = cpu_seconds();
        let file = ServiceFile::parse(&text, Path::new("control-bench.yaml"))?;
        let parse_s = t.elapsed().as_secs_f64();
        let node: [std::net::IpAddr; 1] = ["198.18.1.1".parse()?];
        let t = Instant::now();
        let desired = plan::plan(&file, &plan::NodeFacts::with_addresses(&node))?;
        let plan_s = t.elapsed().as_secs_f64();
        let cpu_planned = cpu_seconds();
        let t = Instant::now();
        let mut dp = Dataplane::load(LoadOptions {
            conntrack_entries: 65_536,
            ..LoadOptions::default()
        })?;
        let load_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let cpu_loaded = cpu_seconds();
        dp.apply(None, &desired)?;
        let write_s = t.elapsed().as_secs_f64();
        // The program load is left out, as from the time.
        let cpu_s = (cpu_planned - cpu_before) + (cpu_seconds() - cpu_loaded);
        Ok(Apply {
            services,
            backends,
            table_size: table_size.unwrap_or(lb_common::limits::DEFAULT_MAGLEV_TABLE_SIZE),
            parse_s,
            plan_s,
            load_s,
            write_s,
            cpu_s,
        })
    })?
}

/// Milliseconds from starting `lbctl add-backend` to the first datagram at the new backend.
fn add_backend_latency(lbd: &Path, samples: usize, background: usize) -> Result<Vec<f64>> {
    let topo = Topology::new(2)?;
    // Flows idle for a second are forgotten, so the generator's source ports make new flows.
    let mut services = String::from(
        "services:\n  web:\n    vip: 198.18.100.1\n    ports: [\"53:5353/udp\"]\n    timeouts: { udp: 1s }\n    backends: [\"198.18.2.10\"]\n",
    );
    if background > 0 {
        let others = service_file(background, 16, None);
        services.push_str(others.strip_prefix("services:\n").unwrap_or(&others));
    }
    let lb = Lbd::start(
        lbd,
        &topo.node,
        &services,
        &[&topo.node_client_if, &topo.node_bridge],
        &[],
    )?;
    // The new backend's socket, read in its namespace.
    let new_backend = topo.backends[1]
        .ns
        .run(|| UdpSocket::bind("0.0.0.0:5353"))??;
    new_backend.set_read_timeout(Some(Duration::from_millis(20)))?;
    let old_backend = topo.backends[0]
        .ns
        .run(|| UdpSocket::bind("0.0.0.0:5353"))??;
    drop(old_backend); // Datagrams to it are not needed: the kernel drops them with ICMP.
    let vip: SocketAddr = "198.18.100.1:53".parse()?;
    let sending = Arc::new(AtomicBool::new(true));
    // New flows without pause: each datagram from a socket of its own (a fresh ephemeral
    // port), about 10,000 a second, bounded by time below.
    let sender = {
        let sending = sending.clone();
        let client_path = topo.client.path();
        std::thread::spawn(move || -> Result<()> {
            let ns = std::fs::File::open(&client_path)?;
            // SAFETY: setns on this thread only, with a descriptor we hold open.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0
            {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let deadline = Instant::now() + Duration::from_secs(600);
            while sending.load(Ordering::Relaxed) && Instant::now() < deadline {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                let _ = socket.send_to(b"probe", vip);
                std::thread::sleep(Duration::from_micros(100));
            }
            Ok(())
        })
    };
    let mut latencies = Vec::with_capacity(samples);
    let mut buf = [0u8; 64];
    for _ in 0..samples {
        // Drain what is queued from the previous round.
        while new_backend.recv_from(&mut buf).is_ok() {}
        let started = Instant::now();
        let (ok, _, err) = lb.lbctl(&["add-backend", "web", "198.18.2.11"])?;
        if !ok {
            bail!("lbctl add-backend: {err}");
        }
        loop {
            if new_backend.recv_from(&mut buf).is_ok() {
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("no packet reached the added backend within 5 s");
            }
        }
        let (ok, _, err) = lb.lbctl(&["remove-backend", "web", "198.18.2.11"])?;
        if !ok {
            bail!("lbctl remove-backend: {err}");
        }
        // Let flows of the removed backend settle before the next sample.
        std::thread::sleep(Duration::from_millis(20));
    }
    sending.store(false, Ordering::Relaxed);
    if std::env::var_os("MESHLB_BENCH_VERBOSE").is_some() {
        for line in lb
            .output()
            .lines()
            .filter(|l| l.contains("applied"))
            .take(20)
        {
            println!("lbd: {line}");
        }
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    drop(lb);
    Ok(latencies)
}

/// The `p`th percentile (nearest rank) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `apply` is the median run of the full applies, whose totals (in order) are `totals`.
fn write_results(
    args: &ControlArgs,
    apply: &Apply,
    totals: &[f64],
    latencies: &[f64],
) -> Result<()> {
    let date = crate::micro::machine::today();
    let (p50, p99) = (percentile(latencies, 50.0), percentile(latencies, 99.0));
    let json = serde_json::json!({
        "date": date,
        "machine": crate::micro::machine::facts(),
        "apply": {
            "services": apply.services,
            "backends_per_service": apply.backends,
            "maglev_table_size": apply.table_size,
            "parse_s": apply.parse_s,
            "plan_s": apply.plan_s,
            "program_load_s": apply.load_s,
            "write_s": apply.write_s,
            "cpu_s": apply.cpu_s,
            "total_s": apply.total_s(),
            "rounds_total_s": totals,
            "target_s": APPLY_TARGET_S,
        },
        "add_backend_ms": {
            "samples": latencies.len(),
            "p50": p50,
            "p99": p99,
            "max": percentile(latencies, 100.0),
            "target_p99": ADD_BACKEND_P99_TARGET_MS,
        },
    });
    let mut md = String::new();
    let _ = writeln!(md, "| control plane ({date}) | measured | target |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(
        md,
        "| apply {} services × {} backends, Maglev tables of {}, median of {} runs (parse + plan + build tables and write) | {:.2} s ({:.2} + {:.2} + {:.2}; {:.2} s of CPU); all runs {:.2}–{:.2} s | < {APPLY_TARGET_S} s |",
        apply.services,
        apply.backends,
        apply.table_size,
        totals.len(),
        apply.total_s(),
        apply.parse_s,
        apply.plan_s,
        apply.write_s,
        apply.cpu_s,
        totals.first().copied().unwrap_or_default(),
        totals.last().copied().unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "| program load (once per start) | {:.2} s | |",
        apply.load_s
    );
    let _ = writeln!(
        md,
        "| `lbctl add-backend` → first packet, p50 / p99 ({} samples) | {p50:.1} / {p99:.1} ms | p99 < {ADD_BACKEND_P99_TARGET_MS} ms |",
        latencies.len()
    );
    let base = crate::results::write(&args.out_dir, &format!("control-{date}"), &json, &md)?;
    println!("{md}");
    println!("control: wrote {}.{{json,md}}", base.display());
    Ok(())
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_file_is_valid_and_sized_as_asked() {
        let file = ServiceFile::parse(&service_file(300, 16, Some(4001)), Path::new("x")).unwrap();
        assert_eq!(file.services.len(), 300);
        assert!(file.services.values().all(|s| s.backends.len() == 16));
        assert!(file.services.values().all(|s| s.maglev_table_size == 4001));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
