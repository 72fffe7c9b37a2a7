//! `lbd`'s side of the endpoint filters (layout: lb-common's `endpoint_filter`), their only
//! writer: both mapped into this process. `FORWARD_FILTER` gets every frontend before it is
//! written, since the program looks `FRONTENDS` up only for a packet whose destination is
//! marked; `REPLY_FILTER` every backend endpoint before it is written, since the program
//! looks `BACKEND_ENDPOINTS` up only for a packet whose source is.

use std::sync::atomic::Ordering;

use aya::Ebpf;
use lb_common::{endpoint_filter, hash::endpoint_filter_slot, maps::EndpointKey, maps::names};

use super::{DataplaneError, array_data, mmap::MappedWords};

pub(super) struct EndpointFilters {
    forward: MappedWords,
    reply: MappedWords,
}

impl EndpointFilters {
    pub(super) fn open(ebpf: &Ebpf) -> Result<Self, DataplaneError> {
        let open = |name| MappedWords::open(array_data(ebpf, name)?, name);
        Ok(Self {
            forward: open(names::FORWARD_FILTER)?,
            reply: open(names::REPLY_FILTER)?,
        })
    }

    /// Marks `frontends` in `FORWARD_FILTER`: before they are written to `FRONTENDS`.
    pub(super) fn mark_frontends(&self, frontends: &[EndpointKey]) {
        mark(&self.forward, frontends);
    }

    /// Marks `endpoints` (backend endpoints) in `REPLY_FILTER`.
    pub(super) fn mark_backend_endpoints(&self, endpoints: &[EndpointKey]) {
        mark(&self.reply, endpoints);
    }
}

fn mark(filter: &MappedWords, endpoints: &[EndpointKey]) {
    for key in endpoints {
        let slot = endpoint_filter_slot(&key.addr, key.port_be, key.proto);
        let (word, bit) = endpoint_filter::position(slot);
        let word = filter.word(word);
        // Read first: the bit is usually set already, and the line then stays clean.
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }
}
