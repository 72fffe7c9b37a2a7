//! Writing the plan's `REPLY_FRONTENDS` (replies translated without a connection-table entry,
//! see `plan::replies`), and marking every backend endpoint in `REPLY_FILTER` so the program
//! looks its replies up even on a node that never tracked one of its flows.

use aya::maps::{HashMap, IterableMap as _, MapData};
use lb_common::maps::{EndpointKey, ReplyFrontend, names};

use super::{Dataplane, DataplaneError, changes::Changes, maps::map_err};
use crate::plan::DesiredState;

impl Dataplane {
    /// Marks `endpoints` (the backend endpoints just written) in `REPLY_FILTER`, then writes
    /// `changes` to `REPLY_FRONTENDS`. Called after `BACKEND_ENDPOINTS` is written: the
    /// program reaches `REPLY_FRONTENDS` only through it.
    pub(super) fn write_reply_frontends(
        &mut self,
        endpoints: &[EndpointKey],
        changes: &Changes<EndpointKey, ReplyFrontend>,
    ) -> Result<(), DataplaneError> {
        self.endpoint_filters.mark_backend_endpoints(endpoints);
        if changes.is_empty() {
            return Ok(());
        }
        let map: HashMap<&mut MapData, EndpointKey, ReplyFrontend> = HashMap::try_from(
            self.ebpf_mut()
                .map_mut(names::REPLY_FRONTENDS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::REPLY_FRONTENDS))?;
        changes.write(map.map(), names::REPLY_FRONTENDS)?;
        changes.delete(map.map(), names::REPLY_FRONTENDS)
    }

    /// Removes `REPLY_FRONTENDS` entries `desired` does not have (see `prune`).
    pub(super) fn prune_reply_frontends(
        &mut self,
        desired: &DesiredState,
    ) -> Result<usize, DataplaneError> {
        let mut map: HashMap<&mut MapData, EndpointKey, ReplyFrontend> = HashMap::try_from(
            self.ebpf_mut()
                .map_mut(names::REPLY_FRONTENDS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::REPLY_FRONTENDS))?;
        let stale: Vec<EndpointKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !desired.reply_frontends.contains_key(k))
            .collect();
        for key in &stale {
            map.remove(key).map_err(map_err(names::REPLY_FRONTENDS))?;
        }
        Ok(stale.len())
    }
}
