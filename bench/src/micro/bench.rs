//! The loaded programs and one measured run of a class: test runs, checks of the result.

use super::*;

// ---------------------------------------------------------------------------------------------
// Kernel objects

pub(super) struct Dp {
    pub(super) name: String,
    pub(super) dp: Dataplane,
}

pub(super) struct Bench {
    pub(super) harness: Ebpf,
    /// The tracked floors (`Layout::tracked`).
    pub(super) tracked: Vec<TrackedFloor>,
    pub(super) dps: Vec<Dp>,
    /// Test-run packets arrive on the client-side veth.
    pub(super) client_if: u32,
    pub(super) backend_if: u32,
    pub(super) backend_if_mac: [u8; 6],
    /// Spread classes visit their flows scattered (`scatter_stride`) rather than in the order
    /// they were inserted: set once the warm-up passes have run (in insertion order, which
    /// is how the tracked floor fills its table).
    pub(super) scatter_visits: bool,
}

/// Result of one test run.
pub(super) struct RunOut {
    pub(super) retval: u32,
    pub(super) kernel_ns: u64,
    pub(super) wall: Duration,
    /// Bytes out.
    pub(super) out: Vec<u8>,
}

/// One BPF_PROG_TEST_RUN of `prog` on `frame`, arriving on `ingress_if`.
pub(super) fn test_run(prog: &Xdp, frame: &[u8], ingress_if: u32, repeat: u32) -> Result<RunOut> {
    // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ingress_if, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let ctx = ctx.as_slice();
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx_out = vec![0u8; ctx.len()];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(ctx),
        ctx_out: Some(&mut ctx_out),
        repeat,
        ..TestRunOptions::default()
    };
    let start = Instant::now();
    let result = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    let wall = start.elapsed();
    out.truncate(result.data_size_out as usize);
    Ok(RunOut {
        retval: result.return_value,
        kernel_ns: result.duration.as_nanos() as u64,
        wall,
        out,
    })
}

impl Bench {
    pub(super) fn harness_prog(&self, name: &str) -> Result<&Xdp> {
        self.harness
            .program(name)
            .ok_or_else(|| anyhow!("harness object has no program {name}"))?
            .try_into()
            .map_err(|_| anyhow!("{name} is not an XDP program"))
    }

    pub(super) fn target_fd(&mut self, target: Target) -> Result<ProgramFd> {
        let fd = match target {
            Target::Floor(name) => self.harness_prog(name)?.fd()?.try_clone()?,
            Target::Meshlb(n) => self.dps[n].dp.xdp_program()?.fd()?.try_clone()?,
            Target::Tracked(n) => self.tracked[n].program()?.fd()?.try_clone()?,
        };
        Ok(fd)
    }

    /// Points the harness at `target`, makes `frame` its pristine copy and `vary_span` the
    /// vary programs' span (0: a new flow every packet), visited in insertion order until
    /// `scatter_visits` is set, then scattered (see `scatter_stride`).
    pub(super) fn arm_harness(
        &mut self,
        target: Target,
        frame: &[u8],
        vary_span: u32,
    ) -> Result<()> {
        ensure!(
            frame.len() == FRAME_LEN || frame.len() == FRAME6_LEN,
            "harness frames are {FRAME_LEN} (IPv4) or {FRAME6_LEN} (IPv6) bytes"
        );
        let fd = self.target_fd(target)?;
        let mut targets: ProgramArray<&mut MapData> =
            ProgramArray::try_from(self.harness.map_mut("TARGET").context("map TARGET")?)?;
        targets.set(0, &fd, 0).context("setting TARGET[0]")?;
        let mut words = [0u64; 16];
        let mut padded = [0u8; 128];
        padded[..frame.len()].copy_from_slice(frame);
        for (w, chunk) in words.iter_mut().zip(padded.chunks_exact(8)) {
            *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        }
        let mut pristine: Array<&mut MapData, [u64; 16]> =
            Array::try_from(self.harness.map_mut("PRISTINE").context("map PRISTINE")?)?;
        pristine.set(0, words, 0).context("setting PRISTINE[0]")?;
        let stride = if self.scatter_visits {
            scatter_stride(vary_span)
        } else {
            1
        };
        let mut cycle: Array<&mut MapData, [u32; 2]> = Array::try_from(
            self.harness
                .map_mut("VARY_CYCLE")
                .context("map VARY_CYCLE")?,
        )?;
        cycle
            .set(0, [vary_span, stride], 0)
            .context("setting VARY_CYCLE[0]")?;
        Ok(())
    }

    pub(super) fn stats(&self, target: Target) -> Result<Option<StatsSnapshot>> {
        match target {
            Target::Floor(_) | Target::Tracked(_) => Ok(None),
            Target::Meshlb(n) => Ok(Some(self.dps[n].dp.stats()?)),
        }
    }

    /// The interface `class`'s frame arrives on.
    fn ingress(&self, class: &Class) -> u32 {
        if class.from_backend {
            self.backend_if
        } else {
            self.client_if
        }
    }

    /// One run of `class` with `repeat` iterations, checked.
    pub(super) fn run(&mut self, class: &Class, repeat: u32) -> Result<Sample> {
        if class.via != Via::Direct {
            self.arm_harness(class.target, &class.frame, class.vary_span)?;
        }
        let before = self.stats(class.target)?;
        let ctx = self.ingress(class);
        let out = match (class.via, class.target) {
            (Via::Direct, Target::Floor(name)) => {
                test_run(self.harness_prog(name)?, &class.frame, ctx, repeat)?
            }
            (Via::Direct, Target::Meshlb(n)) => {
                test_run(self.dps[n].dp.xdp_program()?, &class.frame, ctx, repeat)?
            }
            (Via::Direct, Target::Tracked(n)) => {
                test_run(self.tracked[n].program()?, &class.frame, ctx, repeat)?
            }
            (via, _) => {
                let v6 = class.frame.len() == FRAME6_LEN;
                let name = match (via, v6) {
                    (Via::HarnessVary, false) => HARNESS_VARY,
                    (Via::HarnessVary, true) => HARNESS_V6_VARY,
                    (_, false) => HARNESS,
                    (_, true) => HARNESS_V6,
                };
                test_run(self.harness_prog(name)?, &class.frame, ctx, repeat)?
            }
        };
        let after = self.stats(class.target)?;
        self.verify(
            class,
            &out,
            u64::from(repeat),
            u64::from(repeat),
            before.zip(after),
        )
        .with_context(|| {
            format!(
                "{}: run with repeat = {repeat} took an unexpected path",
                class.label
            )
        })?;
        Ok(Sample {
            kernel_ns: out.kernel_ns as f64,
            wall_ns: out.wall.as_nanos() as f64 / f64::from(repeat),
        })
    }

    pub(super) fn verify(
        &self,
        class: &Class,
        out: &RunOut,
        iterations: u64,
        iterations_per_output: u64,
        stats: Option<(StatsSnapshot, StatsSnapshot)>,
    ) -> Result<()> {
        ensure!(
            out.retval == class.retval,
            "returned {} ({}), expected {} ({})",
            out.retval,
            action_name(out.retval),
            class.retval,
            action_name(class.retval)
        );
        if let Some((before, after)) = stats {
            let mut wrong = Vec::new();
            for slot in StatSlot::ALL {
                let delta = after.get(*slot) - before.get(*slot);
                let want = if class.counters.contains(slot) {
                    iterations
                } else {
                    0
                };
                if delta != want {
                    wrong.push(format!(
                        "{} moved by {delta}, expected {want}",
                        slot.label()
                    ));
                }
            }
            ensure!(wrong.is_empty(), "counters: {}", wrong.join("; "));
        }
        let handoff = handoff_in(&out.out);
        let packet = &out.out[..];
        let frame = &class.frame;
        match class.check {
            Check::Unchanged => {
                ensure!(handoff.is_none(), "unexpected hand-off to TC");
                ensure!(packet == frame.as_slice(), "packet changed");
            }
            Check::MacSwaps => {
                ensure!(handoff.is_none(), "unexpected hand-off to TC");
                let swaps = if class.via == Via::Direct {
                    iterations_per_output
                } else {
                    1
                };
                let mut want = frame.clone();
                if swaps % 2 == 1 {
                    want[0..6].copy_from_slice(&frame[6..12]);
                    want[6..12].copy_from_slice(&frame[0..6]);
                }
                ensure!(packet == want.as_slice(), "MACs not swapped as expected");
            }
            Check::FloorHandoff => {
                ensure!(
                    handoff == Some(Handoff::forward(1)),
                    "hand-off {handoff:?}, expected the floor's"
                );
                ensure!(packet[12..] == frame[12..], "packet changed");
            }
            Check::FibMacs => {
                ensure!(handoff.is_none(), "unexpected hand-off to TC");
                let mut want = frame.clone();
                want[0..6].copy_from_slice(&backend_mac(0));
                want[6..12].copy_from_slice(&self.backend_if_mac);
                ensure!(packet == want.as_slice(), "MACs are not the FIB's");
            }
            Check::VaryFloor => {
                ensure!(handoff.is_none(), "unexpected hand-off to TC");
                let (src, dst) = parse_any(packet).map_err(|e| anyhow!("packet out: {e}"))?;
                let (_, input_dst) = parse_any(frame).map_err(|e| anyhow!("packet in: {e}"))?;
                ensure!(dst == input_dst, "destination changed");
                ensure!(
                    is_vary_source(src),
                    "source {src} is not a harness_vary source"
                );
                ensure!(packet[..14] == frame[..14], "Ethernet header changed");
            }
            Check::Dnat { via_tc, vary } => {
                if via_tc {
                    ensure!(
                        handoff == Some(Handoff::forward(self.backend_if)),
                        "hand-off {handoff:?} does not name the backend-side interface"
                    );
                } else {
                    ensure!(handoff.is_none(), "unexpected hand-off to TC");
                }
                let (src, dst) = parse_any(packet).map_err(|e| anyhow!("packet out: {e}"))?;
                let (input_src, _) = parse_any(frame).map_err(|e| anyhow!("packet in: {e}"))?;
                let b = backend_index(dst.ip())
                    .ok_or_else(|| anyhow!("destination {dst} is not a backend"))?;
                ensure!(dst.port() == BACKEND_PORT, "backend port {dst}");
                if vary {
                    ensure!(
                        is_vary_source(src),
                        "source {src} is not a harness_vary source"
                    );
                } else {
                    ensure!(src == input_src, "source {src} changed");
                }
                // Handed to TC, the addresses are the hand-off (checked above).
                let (dst_mac, src_mac) = (backend_mac(b), self.backend_if_mac);
                ensure!(
                    via_tc || (packet[0..6] == dst_mac && packet[6..12] == src_mac),
                    "MACs {:02x?} -> {:02x?}, expected {src_mac:02x?} -> {dst_mac:02x?}",
                    &packet[6..12],
                    &packet[0..6]
                );
            }
            Check::TrackedDnat { vary } => {
                ensure!(handoff.is_none(), "unexpected hand-off to TC");
                let (src, dst) = parse_any(packet).map_err(|e| anyhow!("packet out: {e}"))?;
                let (input_src, _) = parse_any(frame).map_err(|e| anyhow!("packet in: {e}"))?;
                ensure!(
                    backend_index(dst.ip()).is_some() && dst.port() == BACKEND_PORT,
                    "destination {dst} is not a backend"
                );
                ensure!(
                    if vary {
                        is_vary_source(src)
                    } else {
                        src == input_src
                    },
                    "source {src}, sent from {input_src}"
                );
                // The floor's MACs, one pair for every backend (see `tracked_floors`).
                ensure!(
                    packet[0..6] == backend_mac(0) && packet[6..12] == self.backend_if_mac,
                    "MACs {:02x?} -> {:02x?}, not the tracked floor's",
                    &packet[6..12],
                    &packet[0..6]
                );
            }
            Check::Encap => {
                ensure!(handoff.is_none(), "unexpected hand-off to TC");
                self.check_encap(frame, packet)?;
            }
            Check::Decap => {
                ensure!(handoff.is_none(), "unexpected hand-off to TC");
                self.check_decap(packet)?;
            }
        }
        Ok(())
    }

    /// The ACK to the VIP, DNATed to the task on the peer and wrapped for the tunnel to it.
    fn check_encap(&self, frame: &[u8], packet: &[u8]) -> Result<()> {
        let (input_src, _) = parse_any(frame).map_err(|e| anyhow!("packet in: {e}"))?;
        let expected_inner = Ipv4Frame::tcp(
            match input_src {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(_) => bail!("an IPv4 frame"),
            },
            SocketAddrV4::new(TASK_REMOTE, BACKEND_PORT),
            TCP_ACK,
        )
        .build();
        let want = tunnel_wrap(
            &expected_inner,
            (self.backend_if_mac, backend_mac(MESH_PEER)),
            NODE_BACKEND_SIDE,
            backend_ip(MESH_PEER),
            tunnel_entropy(CLIENT_PORT, BACKEND_PORT),
        );
        ensure!(
            packet == want.as_slice(),
            "not the tunnel packet to the peer: {packet:02x?}, expected {want:02x?}"
        );
        parse_ipv4(packet).map_err(|e| anyhow!("outer header: {e}"))?;
        parse_ipv4(&tunnel_inner(packet)).map_err(|e| anyhow!("inner packet: {e}"))?;
        Ok(())
    }

    /// The peer's tunneled ACK, unwrapped and DNATed to the local task (backend 0).
    fn check_decap(&self, packet: &[u8]) -> Result<()> {
        let client = SocketAddrV4::new(CLIENT, CLIENT_PORT);
        let want = Ipv4Frame::tcp(
            client,
            SocketAddrV4::new(backend_ip(0), BACKEND_PORT),
            TCP_ACK,
        )
        .with_macs(self.backend_if_mac, backend_mac(0))
        .build();
        ensure!(
            packet == want.as_slice(),
            "not the unwrapped packet to the local task: {packet:02x?}, expected {want:02x?}"
        );
        parse_ipv4(packet).map_err(|e| anyhow!("packet out: {e}"))?;
        Ok(())
    }

    /// Single-shot: `calls` runs with repeat = 1.
    pub(super) fn single_shot(&mut self, class: &Class, calls: u32) -> Result<SingleShot> {
        ensure!(class.via == Via::Direct, "single-shot runs are direct");
        let before = self.stats(class.target)?;
        let ctx = self.ingress(class);
        let mut durations = Vec::with_capacity(calls as usize);
        let start = Instant::now();
        let mut last = None;
        for _ in 0..calls {
            let out = match class.target {
                Target::Floor(name) => test_run(self.harness_prog(name)?, &class.frame, ctx, 1)?,
                Target::Meshlb(n) => test_run(self.dps[n].dp.xdp_program()?, &class.frame, ctx, 1)?,
                Target::Tracked(n) => test_run(self.tracked[n].program()?, &class.frame, ctx, 1)?,
            };
            ensure!(
                out.retval == class.retval,
                "{}: single-shot call returned {}",
                class.label,
                action_name(out.retval)
            );
            durations.push(out.kernel_ns);
            last = Some(out);
        }
        let wall = start.elapsed();
        let after = self.stats(class.target)?;
        let last = last.context("no calls")?;
        // Every call starts from the input, so the last output is what one call makes.
        self.verify(class, &last, u64::from(calls), 1, before.zip(after))
            .with_context(|| format!("{}: single-shot", class.label))?;
        let mean = durations.iter().sum::<u64>() as f64 / durations.len() as f64;
        let mid = durations.len() / 2;
        let median = *durations.select_nth_unstable(mid).1;
        Ok(SingleShot {
            mean_ns: mean,
            median_ns: median,
            wall_us: wall.as_secs_f64() * 1e6 / f64::from(calls),
        })
    }
}

/// The harness's stride through a span of `span` prefilled flows once they are measured: the
/// odd number nearest 0.618 × `span` coprime to it, so every flow is visited once a cycle and
/// consecutive packets' flows were inserted far apart (insertion order is the order the
/// table hands out its preallocated entries: visited in it, each entry's neighbour in memory
/// comes next, which flatters every table's cold figures). 1 for spans below 4.
pub(super) fn scatter_stride(span: u32) -> u32 {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    if span < 4 {
        return 1;
    }
    let mut stride = ((u64::from(span) * 618 / 1000) as u32) | 1;
    while gcd(stride, span) != 1 {
        stride += 2;
    }
    stride
}

#[cfg(test)]
mod tests {
    use super::scatter_stride;

    /// Every flow of the span once a cycle, as the harness steps (`n + stride`, less the span
    /// once past it), and never two neighbours in a row.
    #[test]
    fn the_scatter_stride_visits_every_flow_once_a_cycle() {
        for span in [1, 2, 3, 1024, 1000, 100_000, 65_536, 999_983] {
            let stride = scatter_stride(span);
            assert!(stride < span.max(2), "span {span}: stride {stride}");
            let mut seen = vec![false; span as usize];
            let mut n = 0u32;
            for _ in 0..span {
                assert!(!seen[n as usize], "span {span}: {n} twice");
                seen[n as usize] = true;
                let next = n + stride;
                n = if next >= span { next - span } else { next };
            }
            assert!(seen.iter().all(|s| *s), "span {span}");
            if span >= 4 {
                assert!(stride > 1, "span {span}: scattered");
            }
        }
    }
}
