//! The node's local bridge networks (`docker0` and those made with `docker network create`):
//! their containers call the node's published ports and policy VIPs through their bridge,
//! where only an XDP program on that bridge sees the packets (Docker's own mesh catches them
//! in iptables, which meshlb does not use). `lbd` attaches to each while the Engine lists it.
//!
//! Pure: the Engine's network list in, interface names out.

use std::collections::BTreeSet;

use bollard::models::Network;

/// The bridge through which a node reaches its local tasks.
pub const GWBRIDGE_NETWORK: &str = "docker_gwbridge";
/// The network option that names a bridge network's interface (`docker0`'s, or one given with
/// `docker network create -o com.docker.network.bridge.name=NAME`).
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
/// What Docker names a bridge network's interface otherwise: this and the network id's first
/// 12 characters.
const BRIDGE_PREFIX: &str = "br-";
const BRIDGE_ID_CHARS: usize = 12;
/// The longest interface name Linux takes (`IFNAMSIZ` less the NUL).
const MAX_INTERFACE_NAME: usize = 15;

/// The interface of each local bridge network whose containers may call the node's addresses:
/// not an internal network (Docker keeps its containers off every other network and the
/// node's routes), not a configuration-only one (no bridge), and not `docker_gwbridge`, the
/// tasks' own bridge, which a swarm node serves anyway.
pub fn bridge_interfaces(networks: &[Network]) -> BTreeSet<String> {
    networks
        .iter()
        .filter(|n| n.driver.as_deref() == Some("bridge"))
        .filter(|n| n.scope.as_deref().is_none_or(|s| s == "local"))
        .filter(|n| n.internal != Some(true) && n.config_only != Some(true))
        .filter(|n| n.name.as_deref() != Some(GWBRIDGE_NETWORK))
        .filter_map(interface_of)
        .collect()
}

/// The Linux interface of bridge network `network`, as Docker names it.
fn interface_of(network: &Network) -> Option<String> {
    let named = network
        .options
        .as_ref()
        .and_then(|o| o.get(BRIDGE_NAME_OPTION))
        .filter(|name| !name.is_empty())
        .cloned();
    let name = match named {
        Some(name) => name,
        None => {
            let id = network.id.as_deref()?;
            format!("{BRIDGE_PREFIX}{}", id.get(..BRIDGE_ID_CHARS)?)
        }
    };
    (name.len() <= MAX_INTERFACE_NAME).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's recorded `GET /networks` (dockerd 20.10, lab swarm): `bridge` (docker0), a
    /// user bridge network, two named with the option, an internal one, `docker_gwbridge`,
    /// `host`, `none` and the overlays (see tests/fixtures/swarm/README.md).
    fn recorded() -> Vec<Network> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/swarm/manager/networks-all.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn every_bridge_a_container_calls_from_is_followed() {
        let networks = recorded();
        let user = networks
            .iter()
            .find(|n| n.name.as_deref() == Some("appbridge"))
            .and_then(|n| n.id.clone())
            .expect("the recorded user bridge network");
        assert_eq!(
            bridge_interfaces(&networks),
            BTreeSet::from([
                "docker0".to_owned(),
                format!("br-{}", &user[..12]),
                "mlbnamed".to_owned(),
                "mlbubr".to_owned(),
            ]),
            "docker0 and the user bridges by their interface; not the internal network, \
             docker_gwbridge, host, none or the overlays"
        );
    }

    #[test]
    fn a_name_linux_would_refuse_is_left_out() {
        let network = |options: Option<(&str, &str)>, id: Option<&str>| Network {
            driver: Some("bridge".into()),
            id: id.map(str::to_owned),
            options: options.map(|(k, v)| [(k.to_owned(), v.to_owned())].into()),
            ..Default::default()
        };
        let names = |n: Network| bridge_interfaces(&[n]).into_iter().collect::<Vec<_>>();
        assert_eq!(
            names(network(
                Some((BRIDGE_NAME_OPTION, "sixteen-chars-xx")),
                None
            )),
            Vec::<String>::new()
        );
        assert_eq!(names(network(None, Some("abc"))), Vec::<String>::new());
        assert_eq!(
            names(network(
                Some((BRIDGE_NAME_OPTION, "")),
                Some("0123456789abcdef")
            )),
            ["br-0123456789ab"],
            "an empty option: Docker's own name"
        );
    }
}
