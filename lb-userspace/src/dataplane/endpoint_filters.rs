//! `lbd`'s side of the endpoint filters (layout: lb-common's `endpoint_filter`), their only
//! writer: both mapped into this process. `FORWARD_FILTER` gets every frontend before it is
//! written, since the program looks `FRONTENDS` up only for a packet whose destination is
//! marked; `REPLY_FILTER` every backend endpoint before it is written, since the program
//! looks `BACKEND_ENDPOINTS` up only for a packet whose source is.
//!
//! The filters are made anew at every start (`pin::made_anew`), but the programs a previous
//! `lbd` left running keep theirs until this `lbd`'s programs are swapped into their links,
//! while they read the shared maps this `lbd` writes from its first write on. A backend added
//! while no `lbd` ran would have its replies passed untranslated by them (its bit clear in
//! their filter) until the swap, or for good if this start fails or dies before it. So their
//! filters are marked too (`PreviousFilters`): bits are only ever set, so marking them is
//! sound at any time.

use std::{path::Path, sync::atomic::Ordering};

use aya::{Ebpf, maps::MapData};
use lb_common::{endpoint_filter, hash::endpoint_filter_slot, maps::EndpointKey, maps::names};
use tracing::{info, warn};

use super::{DataplaneError, array_data, batch, link_device, mmap::MappedWords};

pub(super) struct EndpointFilters {
    forward: Vec<MappedWords>,
    reply: Vec<MappedWords>,
}

impl EndpointFilters {
    /// This load's filters, and `previous` (see `PreviousFilters`), marked alike.
    pub(super) fn open(ebpf: &Ebpf, previous: PreviousFilters) -> Result<Self, DataplaneError> {
        let open = |name| MappedWords::open(array_data(ebpf, name)?, name);
        let mut forward = vec![open(names::FORWARD_FILTER)?];
        forward.extend(previous.forward);
        let mut reply = vec![open(names::REPLY_FILTER)?];
        reply.extend(previous.reply);
        Ok(Self { forward, reply })
    }

    /// Marks `frontends` in `FORWARD_FILTER`: before they are written to `FRONTENDS`.
    pub(super) fn mark_frontends(&self, frontends: &[EndpointKey]) {
        for filter in &self.forward {
            mark(filter, frontends);
        }
    }

    /// Marks `endpoints` (backend endpoints) in `REPLY_FILTER`.
    pub(super) fn mark_backend_endpoints(&self, endpoints: &[EndpointKey]) {
        for filter in &self.reply {
            mark(filter, endpoints);
        }
    }
}

/// The endpoint filters of the programs running in the links pinned under a pin directory:
/// a previous `lbd`'s (or those of a start that failed, in the links it swapped already).
/// Found through the programs, not the pins: a start that failed or died after it pinned its
/// own filters left pins no running program reads. Kept for the process's life (two small
/// maps each), since a link this start does not swap (a bridge whose attach is retried) may
/// run its program for a while yet.
#[derive(Default)]
pub(super) struct PreviousFilters {
    forward: Vec<MappedWords>,
    reply: Vec<MappedWords>,
}

impl PreviousFilters {
    /// Finds them (see above). One of this build's layout is mapped, to be marked with every
    /// endpoint written; one of another layout, whose slots this build cannot compute, gets
    /// every bit set: its program then looks every packet up, as before filters existed.
    pub(super) fn find(dir: &Path) -> Self {
        let mut found = Self::default();
        let programs = link_device::pinned_link_programs(&dir.join("links"));
        let mut seen = std::collections::BTreeSet::new();
        for program in aya::programs::loaded_programs()
            .flatten()
            .filter(|p| programs.contains(&p.id()))
        {
            let ids = match program.map_ids() {
                Ok(Some(ids)) => ids,
                Ok(None) => Vec::new(),
                Err(e) => {
                    warn!(
                        program = program.id(),
                        "reading the maps of a program the previous lbd left running failed \
                         ({e}): until this lbd's programs replace it, it may pass the replies \
                         of backends added while no lbd ran untranslated"
                    );
                    continue;
                }
            };
            for id in ids.into_iter().filter(|id| seen.insert(*id)) {
                let Ok(info) = aya::maps::MapInfo::from_id(id) else {
                    continue;
                };
                let name = match info.name_as_str() {
                    Some(names::FORWARD_FILTER) => names::FORWARD_FILTER,
                    Some(names::REPLY_FILTER) => names::REPLY_FILTER,
                    _ => continue,
                };
                match open_previous(id, name) {
                    Ok(Some(words)) if name == names::FORWARD_FILTER => found.forward.push(words),
                    Ok(Some(words)) => found.reply.push(words),
                    Ok(None) => {}
                    Err(e) => warn!(
                        map = name,
                        id,
                        "marking the endpoint filter of a program the previous lbd left \
                         running failed ({e}): until this lbd's programs replace it, it may \
                         pass packets of endpoints added while no lbd ran untranslated"
                    ),
                }
            }
        }
        found
    }
}

/// The previous program's filter `name` (map `id`), mapped if it has this build's layout;
/// otherwise every bit set, and `None`.
fn open_previous(id: u32, name: &'static str) -> Result<Option<MappedWords>, DataplaneError> {
    let map = MapData::from_id(id).map_err(|error| DataplaneError::Map { name, error })?;
    let info = map
        .info()
        .map_err(|error| DataplaneError::Map { name, error })?;
    let ours = info.value_size() == 8
        && info.max_entries() == endpoint_filter::WORDS
        && info.map_flags() & endpoint_filter::FLAGS != 0;
    if ours {
        // The mapping holds the map; the descriptor may go.
        return MappedWords::open(&map, name).map(Some);
    }
    batch::fill_array(&map, name, 0xff)?;
    info!(
        map = name,
        id, "the previous programs' endpoint filter has another layout: every bit set"
    );
    Ok(None)
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
