//! A CPU's time from `/proc/stat`: how busy the CPU that generator, node and sink share was
//! during a run. A delivered packet rate is 1 / (generator + node + sink) only while that CPU
//! never idles; a generator that sleeps (as it did while its test runs waited for RCU grace
//! periods) makes the rate measure the sleeping instead.

/// One CPU's ticks since boot: busy, and all that were counted (steal, the time the
/// hypervisor gave to other guests, left out of both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTicks {
    pub busy: u64,
    pub counted: u64,
}

/// `cpu`'s ticks now; `None` if `/proc/stat` cannot tell.
pub fn read(cpu: usize) -> Option<CpuTicks> {
    parse(&std::fs::read_to_string("/proc/stat").ok()?, cpu)
}

fn parse(stat: &str, cpu: usize) -> Option<CpuTicks> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name.as_str()))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user and nice).
    let [_, _, _, idle, iowait, _, _, steal] = *ticks.get(..8)? else {
        return None;
    };
    let total: u64 = ticks[..8].iter().sum();
    Some(CpuTicks {
        busy: total - idle - iowait - steal,
        counted: total - steal,
    })
}

/// The busy share of the ticks counted between two readings; `None` when none was counted.
pub fn busy_share(before: CpuTicks, after: CpuTicks) -> Option<f64> {
    let counted = after.counted.checked_sub(before.counted)?;
    let busy = after.busy.checked_sub(before.busy)?;
    (counted > 0).then(|| busy as f64 / counted as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_read_from_proc_stat() {
        let stat = "cpu  10 0 20 300 0 0 5 0 0 0\n\
                    cpu0 1 0 2 30 1 0 0 0 0 0\n\
                    cpu1 620444 0 838828 1031931 9552 0 94603 9983 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(
            parse(stat, 1),
            Some(CpuTicks {
                busy: 620_444 + 838_828 + 94_603,
                counted: 620_444 + 838_828 + 1_031_931 + 9_552 + 94_603,
            })
        );
        assert_eq!(parse(stat, 0).map(|t| t.busy), Some(3));
        assert_eq!(parse(stat, 2), None);
        assert_eq!(parse("cpu1 1 2 3\n", 1), None);
    }

    #[test]
    fn busy_share_is_of_the_ticks_counted_between() {
        // The reading of a half-idle ceiling run: 28 system, 46 softirq, 115 idle ticks.
        let before = CpuTicks {
            busy: 1000,
            counted: 5000,
        };
        let after = CpuTicks {
            busy: 1074,
            counted: 5189,
        };
        let share = busy_share(before, after).unwrap();
        assert!((share - 74.0 / 189.0).abs() < 1e-9, "{share}");
        assert_eq!(busy_share(after, after), None);
        assert_eq!(busy_share(after, before), None);
    }
}
