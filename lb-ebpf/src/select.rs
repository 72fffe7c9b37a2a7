//! Backend selection for a new flow: a Maglev table slot for the flow hash, or the next entry
//! of the service's weighted round-robin sequence. A round-robin TCP flow picked up mid-flow
//! (its node died, or its entry was lost) has no cursor position to recover: it takes the
//! flow hash's slot of the same sequence, the same on every node that has the same plan. A
//! UDP datagram has no mid-flow marker: without an entry it opens a flow, by the cursor.

use lb_common::{
    hash::{any_node_hash, client_hash, flow_hash},
    maps::{FlowKey, SLOTS_PER_ELEMENT, Service, TABLE_LEN_SLOT, backend_flags, service_flags},
};

use crate::{
    conntrack::Chosen,
    maps::{BACKENDS, RR_CURSORS, SERVICE_TABLES, SelectionTable},
};

/// Puts the backend for a new flow of `svc` into `chosen`; false when the service has no
/// usable backend. `opening`: the packet starts its flow (UDP, or a TCP SYN); round-robin
/// rotates only on those.
#[inline(always)]
pub fn choose(key: &FlowKey, svc: &Service, opening: bool, chosen: &mut Chosen) -> bool {
    pick(key, svc, opening, chosen).is_some()
}

#[inline(always)]
fn pick(key: &FlowKey, svc: &Service, opening: bool, chosen: &mut Chosen) -> Option<()> {
    // One lookup of the service's table for its length and its slot: lbd may swap in a table
    // of another length between two lookups of `SERVICE_TABLES`.
    let table = SERVICE_TABLES.get(svc.id)?;
    let len = table_slot(table, TABLE_LEN_SLOT)?;
    if len == 0 {
        return None;
    }
    let position = if opening && svc.flags & service_flags::ROUND_ROBIN != 0 {
        let cursor = RR_CURSORS.get_ptr_mut(svc.id)?;
        // SAFETY: per-CPU value; only this CPU's program runs touch it.
        unsafe {
            let position = *cursor;
            *cursor = position.wrapping_add(1);
            position
        }
    } else if svc.flags & service_flags::AFFINITY_CLIENT_IP != 0 {
        client_hash(key)
    } else if svc.flags & service_flags::AFFINITY_ANY_NODE != 0 {
        any_node_hash(key)
    } else {
        flow_hash(key)
    };
    let slot = position % len + 1;
    let backend_id = table_slot(table, slot)?;
    if backend_id == 0 {
        return None;
    }
    let backend = BACKENDS.get(backend_id)?;
    if backend.flags & backend_flags::IN_USE == 0 {
        return None;
    }
    chosen.backend_id = backend_id;
    chosen.addr = backend.addr;
    chosen.port_be = backend.port_be;
    chosen.tunnel_peer = (backend.flags >> backend_flags::PEER_SHIFT) as u8;
    chosen.on_link_prefix = backend_flags::on_link_prefix(backend.flags);
    Some(())
}

/// Slot `slot` of a service's table (two slots to an element, see `TableElement`).
#[inline(always)]
fn table_slot(table: &SelectionTable, slot: u32) -> Option<u32> {
    let element = table.get(slot / SLOTS_PER_ELEMENT)?;
    Some(element[(slot % SLOTS_PER_ELEMENT) as usize])
}
