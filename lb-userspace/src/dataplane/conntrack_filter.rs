//! `lbd`'s side of `CONNTRACK_FILTER` (layout and the rebuild's reasoning: lb-common's
//! `conntrack_filter`): the filter is mapped into this process, switched off at load (readers
//! ask the connection table until a rebuild completes), and rebuilt from each walk of the
//! connection table, which clears the bits of flows that are gone.

use std::{
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering, fence},
    },
    time::{Duration, Instant},
};

use aya::maps::MapData;
use lb_common::{
    conntrack_filter::{CONTROL, active_base, control, half_base, position},
    maps::{Flow, FlowKey, flow_kind, names},
};

use super::{DataplaneError, mmap::MappedWords};

/// The filter, mapped (shared with the kernel).
pub struct ConntrackFilter {
    words: MappedWords,
    words_per_half: u32,
    /// Held by a rebuild: two at once would zero the half the other is about to activate.
    rebuilding: Mutex<()>,
    /// When the control word or the attached programs last changed (see `SETTLE`).
    changed: Mutex<Instant>,
}

/// How long a rebuild waits after the control word or the attached programs changed before
/// it zeroes a half and walks: a program run that read the old word may still be reading
/// the half it named, and a run of a replaced program (perhaps an older one, which sets no
/// bits) may still be writing a flow. A run takes microseconds.
const SETTLE: Duration = Duration::from_millis(50);

impl ConntrackFilter {
    /// Maps the filter behind `map`; its size says the halves' (as `check_compatible` held
    /// it to the connection table's).
    pub(super) fn open(map: &MapData) -> Result<Self, DataplaneError> {
        let words = MappedWords::open(map, names::CONNTRACK_FILTER)?;
        let words_per_half = words.len().saturating_sub(1) / 2;
        if words.len() != 1 + 2 * words_per_half || !words_per_half.is_power_of_two() {
            return Err(DataplaneError::MapValue {
                name: names::CONNTRACK_FILTER,
                message: format!(
                    "{} words are not a control word and two halves of a power of two of \
                     words: lb-ebpf and lb-userspace are out of step",
                    words.len()
                ),
            });
        }
        Ok(Self {
            words,
            words_per_half,
            rebuilding: Mutex::new(()),
            changed: Mutex::new(Instant::now()),
        })
    }

    fn word(&self, index: u32) -> &AtomicU64 {
        self.words.word(index)
    }

    /// Writers on, readers off: from here the kernel sets the bit of every forward entry it
    /// writes, and a SYN asks the connection table until the next rebuild completes.
    pub(super) fn switch_readers_off(&self) {
        let _rebuilding = lock(&self.rebuilding);
        self.word(CONTROL)
            .store(control(0, self.words_per_half), Ordering::SeqCst);
        self.changed_now();
    }

    /// The control word changed, or a program was attached where another ran: the next
    /// rebuild waits `SETTLE` from now.
    pub(super) fn changed_now(&self) {
        *lock(&self.changed) = Instant::now();
    }

    /// Starts a rebuild of the half readers do not use: zeroes it. Feed it every forward key
    /// of a walk of the connection table that starts after this, then `finish` it.
    pub fn rebuild(&self) -> Rebuild<'_> {
        let guard = lock(&self.rebuilding);
        // Bounded: each wait is at most SETTLE, and only another attach moves the clock.
        for _ in 0..100 {
            let since = lock(&self.changed).elapsed();
            if since >= SETTLE {
                break;
            }
            std::thread::sleep(SETTLE - since);
        }
        let active = active_base(self.word(CONTROL).load(Ordering::SeqCst));
        let half = u32::from(active == half_base(0, self.words_per_half));
        let base = half_base(half, self.words_per_half);
        for i in 0..self.words_per_half {
            self.word(base + i).store(0, Ordering::Relaxed);
        }
        // The zeroes land before the walk reads the table (see lb-common's `conntrack_filter`).
        fence(Ordering::SeqCst);
        Rebuild {
            filter: self,
            base,
            keys: 0,
            _rebuilding: guard,
        }
    }
}

/// A half being rebuilt (see [`ConntrackFilter::rebuild`]).
pub struct Rebuild<'f> {
    filter: &'f ConntrackFilter,
    base: u32,
    keys: u64,
    _rebuilding: MutexGuard<'f, ()>,
}

impl Rebuild<'_> {
    /// Notes a connection-table entry: a forward one's key gets its bit.
    pub fn note(&mut self, key: &FlowKey, flow: &Flow) {
        if flow.kind != flow_kind::FORWARD {
            return;
        }
        let (word, bit) = position(key, self.filter.words_per_half - 1);
        self.filter
            .word(self.base + word)
            .fetch_or(bit, Ordering::Relaxed);
        self.keys += 1;
    }

    /// Makes the rebuilt half the one readers use; answers the forward keys it holds.
    pub fn finish(self) -> u64 {
        self.filter.word(CONTROL).store(
            control(self.base, self.filter.words_per_half),
            Ordering::SeqCst,
        );
        self.filter.changed_now();
        self.keys
    }
}

/// Locks `mutex`, carrying on past a poisoned lock (nothing it guards can be left half done).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
