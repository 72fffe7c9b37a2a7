//! `lbctl explain`: which backend a flow gets and why.

use super::*;
use crate::api::{Explained, TrackedFlow, tcp_state_name};

impl Daemon {
    /// Which backend a flow gets and why: the connection table first, then the selection.
    pub fn explain(
        &self,
        protocol: u8,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<Explained, DaemonError> {
        let key = FlowKey {
            src: lb_common::Addr::from(src.ip()),
            dst: lb_common::Addr::from(dst.ip()),
            sport_be: src.port().to_be(),
            dport_be: dst.port().to_be(),
            proto: protocol,
            _pad: [0; 3],
        };
        let tracked = self.dp.tracked_flow(&key)?;
        let selection = self.running.explain(protocol, src, dst);
        let service = self.running.frontends.get(&lb_common::maps::EndpointKey {
            addr: lb_common::Addr::from(dst.ip()),
            port_be: dst.port().to_be(),
            proto: protocol,
            _pad: 0,
        });
        let mut selection_text = selection.to_string();
        // The slot as the kernel holds it: explain answers from the live maps, and says so
        // when they differ from the plan.
        if let plan::Explanation::Maglev {
            hash,
            table_len,
            backend,
            ..
        } = &selection
            && let Some(service) = service
        {
            // As the kernel picks: slot hash % length, after the length slot.
            let live_len = self.dp.table_slot(service.id, TABLE_LEN_SLOT)?.unwrap_or(0);
            let live_slot = hash.checked_rem(live_len);
            let live_backend = match live_slot {
                Some(slot) => self
                    .dp
                    .table_slot(service.id, slot + 1)?
                    .and_then(|id| self.running.backends.get(&id))
                    .map(|b| {
                        SocketAddr::new(std::net::IpAddr::from(b.addr), u16::from_be(b.port_be))
                    }),
                None => None,
            };
            if live_len != *table_len || live_backend != Some(*backend) {
                let live = live_backend.map_or_else(|| "no backend".to_owned(), |b| b.to_string());
                let _ = write!(
                    selection_text,
                    "; but the kernel's table (length {live_len}) gives {live}: the dataplane differs from the plan; restarting lbd rewrites every entry"
                );
            }
        }
        let name = service.and_then(|svc| {
            self.running
                .services
                .iter()
                .find(|p| p.id == svc.id)
                .map(|p| p.name.as_str())
        });
        if let Some(down) = name.and_then(|name| self.down_backends_of(name)) {
            let _ = write!(
                selection_text,
                "; left out as down by their health checks: {down}"
            );
        }
        let tracked = tracked.map(|flow| {
            let backend = SocketAddr::new(
                std::net::IpAddr::from(flow.nat_addr),
                u16::from_be(flow.nat_port_be),
            );
            let removed = !self.running.backends.contains_key(&flow.backend_id);
            TrackedFlow {
                backend,
                tcp_state: tcp_state_name(protocol, flow.tcp_state),
                // The limit that applies now: an opening or closing TCP flow's is short.
                idle_timeout_s: flow.idle_limit_s(),
                backend_removed: removed,
            }
        });
        let round_robin = service.is_some_and(|s| s.flags & service_flags::ROUND_ROBIN != 0);
        let backend = match (&tracked, &selection) {
            (Some(t), _) => Some(t.backend),
            (None, plan::Explanation::Maglev { backend, .. }) => Some(*backend),
            _ => None,
        };
        let replies = backend.map(|b| self.running.reply_translation(protocol, b).to_string());
        Ok(Explained {
            tracked,
            selection: selection_text,
            frontend: !matches!(selection, plan::Explanation::NotAFrontend),
            round_robin,
            replies,
        })
    }

    /// The backends of service `name` its health checks say are down (and so are not in its
    /// table), e.g. `198.18.2.11:8080 (down 12 s: connecting: Connection refused)`.
    fn down_backends_of(&self, name: &str) -> Option<String> {
        let spec = self.merged.file.services.get(name)?;
        let (check, first) = spec.health.as_ref().zip(spec.ports.first())?;
        let down: Vec<String> = spec
            .backends
            .iter()
            .filter_map(|b| {
                let h = self.backend_health(spec, b)?;
                (h.state == crate::source::health::Health::Down).then(|| {
                    let why = h.last_error.unwrap_or_default();
                    format!("{} (down {} s: {why})", check.target(b, first), h.since_s)
                })
            })
            .collect();
        (!down.is_empty()).then(|| down.join(", "))
    }
}
