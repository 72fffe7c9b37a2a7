//! Writing the plan's `REPLY_FRONTENDS` (replies translated without a connection-table entry,
//! see `plan::replies`).

use aya::maps::{HashMap, IterableMap as _, MapData};
use lb_common::maps::{EndpointKey, ReplyFrontend, names};

use super::{Dataplane, DataplaneError, changes::Changes, maps::map_err};
use crate::plan::DesiredState;

impl Dataplane {
    /// Writes `changes` to `REPLY_FRONTENDS`. Called after `BACKEND_ENDPOINTS` is written: the
    /// program reaches `REPLY_FRONTENDS` only through it.
    pub(super) fn write_reply_frontends(
        &mut self,
        changes: &Changes<EndpointKey, ReplyFrontend>,
    ) -> Result<(), DataplaneError> {
        if changes.is_empty() {
            return Ok(());
        }
        let map: HashMap<&mut MapData, EndpointKey, ReplyFrontend> = HashMap::try_from(
            self.ebpf_mut()
                .map_mut(names::REPLY_FRONTENDS)
                .expect("checked at load"),
        )
        .map_err(map_err(names::REPLY_FRONTENDS))?;
        // Removed first, as in `write_changes`: the plan counted on their room.
        changes.delete(map.map(), names::REPLY_FRONTENDS)?;
        changes.write(map.map(), names::REPLY_FRONTENDS)
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
