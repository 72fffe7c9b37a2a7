//! Daemon settings: the service file's optional `lbd:` section and `lbd run`'s flags. A flag
//! given on the command line wins over the file; the defaults live here, once.
//!
//! ```yaml
//! lbd:
//!   interfaces: [eth0]
//!   xdp_mode: auto
//!   api: /run/meshlb/api.sock
//!   api_listen: 10.0.0.5:9465        # needs api_token_file
//!   api_token_file: /run/secrets/meshlb_api_token
//!   metrics: 127.0.0.1:9464
//!   state_dir: /var/lib/meshlb
//!   pin_dir: /sys/fs/bpf/meshlb
//!   conntrack_entries: 2097152
//!   socket_lb: on                    # socket-level balancing for the node's own clients
//!   cgroup: /sys/fs/cgroup/unified   # where its programs attach (default: the cgroup2 mount)
//!   docker_bridges: on               # a swarm node serves its bridge networks' containers
//!   kernel_log: warn                 # most verbose kernel-side log level kept
//!   watch_interval_ms: 1000          # how often the file is checked for changes (0: SIGHUP only)
//!   bgp:                             # announce VIPs with a usable backend through BIRD 2
//!     bird_include: /etc/meshlb/bird-vips.conf  # the file bird.conf includes
//!     birdc_socket: /run/bird/bird.ctl              # BIRD's control socket (this default)
//!     reply_anchor: 198.18.99.1      # announced while lbd serves: the router's reply route
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::source::error::ConfigError;

pub const DEFAULT_API_SOCKET: &str = "/run/meshlb/api.sock";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/meshlb";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/meshlb";
/// How often the service file is checked for changes.
pub const DEFAULT_WATCH_INTERVAL_MS: u64 = 1000;

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver: fastest; the device must support it.
    Native,
    /// In the kernel's generic path: works on every device (bridges too).
    Generic,
    /// Native where the device supports it and is not a veth; generic on veths and bridges (a
    /// veth's packets are socket skbs, which native XDP converts to XDP buffers and back:
    /// slower in `bench tcp`; ask for native on a veth whose peer sends XDP frames)
    Auto,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Auto => "auto",
        })
    }
}

/// Socket-level balancing (cgroup `sock_addr` programs): processes of the node reach
/// frontends (VIPs, published ports on node addresses and 127.0.0.1/::1) without crossing an
/// interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLb {
    /// Attached to `cgroup` (default: the cgroup v2 mount's root, so every process); skipped
    /// with a warning when the host has no cgroup v2 and no cgroup was given.
    #[default]
    On,
    /// Not attached; links a previous lbd pinned are detached.
    Off,
}

/// On a swarm node, whether `lbd` attaches to the node's local Docker bridge networks
/// (`docker0` and user-defined ones) while the Engine lists them, so their containers reach
/// published ports and policy VIPs on the node's addresses (see `swarm::bridges`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DockerBridges {
    /// Attached to each while it exists, beside the interfaces given.
    #[default]
    On,
    /// Left alone: their containers reach no published port on this node.
    Off,
}

/// The smallest connection table: one flow (a flow takes two entries).
pub const MIN_CONNTRACK_ENTRIES: u32 = 2;

/// The most verbose kernel-side log level compiled in. Statements above it are removed by the
/// verifier at load (the level is a constant of the program), so they cost nothing per packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum KernelLogLevel {
    Off,
    Error,
    #[default]
    Warn,
    Info,
    Debug,
    Trace,
}

/// The `lbd:` section, validated. `None`: not set in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonSettings {
    pub interfaces: Option<Vec<String>>,
    pub xdp_mode: Option<XdpMode>,
    pub xdp_redirect: Option<Vec<String>>,
    pub api: Option<PathBuf>,
    pub api_listen: Option<SocketAddr>,
    pub api_token_file: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub conntrack_entries: Option<u32>,
    pub socket_lb: Option<SocketLb>,
    pub cgroup: Option<PathBuf>,
    pub docker_bridges: Option<DockerBridges>,
    /// Follow the node's Docker Engine for swarm services (`lbd run --swarm`).
    pub swarm: Option<bool>,
    /// The Engine to follow (`--docker-host`).
    pub docker_host: Option<String>,
    pub kernel_log: Option<KernelLogLevel>,
    /// 0: only SIGHUP.
    pub watch_interval_ms: Option<u64>,
    pub bgp: Option<BgpSettings>,
}

/// `lbd.bgp`: announce the VIPs through BIRD (see `crate::announce`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpSettings {
    /// The include file lbd writes and BIRD's configuration reads.
    pub bird_include: Option<PathBuf>,
    /// BIRD's control socket [default: `announce::DEFAULT_BIRD_SOCKET`].
    pub birdc_socket: Option<PathBuf>,
    /// An address announced while lbd serves, whatever its services' health: the router
    /// resolves the backends' reply route through it (`announce::BirdSettings::reply_anchor`).
    pub reply_anchor: Option<std::net::IpAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<String>,
    xdp_redirect: Option<Vec<String>>,
    api: Option<PathBuf>,
    api_listen: Option<String>,
    api_token_file: Option<PathBuf>,
    metrics: Option<String>,
    state_dir: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    conntrack_entries: Option<u64>,
    socket_lb: Option<String>,
    cgroup: Option<PathBuf>,
    docker_bridges: Option<String>,
    swarm: Option<bool>,
    docker_host: Option<String>,
    kernel_log: Option<String>,
    watch_interval_ms: Option<u64>,
    bgp: Option<BgpSettings>,
}

impl RawSettings {
    pub(crate) fn validate(self, origin: &Path) -> Result<DaemonSettings, ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            service: None,
            field: format!("lbd.{field}"),
            message,
        };
        let socket = |field: &str, text: Option<String>| {
            text.map(|t| {
                t.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        field,
                        format!("{t:?} is not an address and port; write e.g. \"127.0.0.1:9464\""),
                    )
                })
            })
            .transpose()
        };
        let xdp_mode = choice::<XdpMode>(self.xdp_mode, "an XDP mode")
            .map_err(|message| invalid("xdp_mode", message))?;
        let socket_lb = choice::<SocketLb>(self.socket_lb, "a choice")
            .map_err(|message| invalid("socket_lb", message))?;
        let docker_bridges = choice::<DockerBridges>(self.docker_bridges, "a choice")
            .map_err(|message| invalid("docker_bridges", message))?;
        let kernel_log = choice::<KernelLogLevel>(self.kernel_log, "a log level")
            .map_err(|message| invalid("kernel_log", message))?;
        let conntrack_entries = self
            .conntrack_entries
            .map(|n| {
                u32::try_from(n).ok().filter(|n| *n >= MIN_CONNTRACK_ENTRIES).ok_or_else(|| {
                    invalid(
                        "conntrack_entries",
                        format!(
                            "{n} is out of range; write a number from {MIN_CONNTRACK_ENTRIES} to {}",
                            u32::MAX
                        ),
                    )
                })
            })
            .transpose()?;
        for (field, list) in [
            ("interfaces", &self.interfaces),
            ("xdp_redirect", &self.xdp_redirect),
        ] {
            if let Some(bad) = list
                .iter()
                .flatten()
                .find(|name| !valid_interface_name(name))
            {
                return Err(invalid(
                    field,
                    format!("{bad:?} is not an interface name (1-15 characters, no '/' or spaces)"),
                ));
            }
        }
        let settings = DaemonSettings {
            interfaces: self.interfaces,
            xdp_mode,
            xdp_redirect: self.xdp_redirect,
            api: self.api,
            api_listen: socket("api_listen", self.api_listen)?,
            api_token_file: self.api_token_file,
            metrics: socket("metrics", self.metrics)?,
            state_dir: self.state_dir,
            pin_dir: self.pin_dir,
            conntrack_entries,
            socket_lb,
            cgroup: self.cgroup,
            docker_bridges,
            swarm: self.swarm,
            docker_host: self.docker_host,
            kernel_log,
            watch_interval_ms: self.watch_interval_ms,
            bgp: self.bgp,
        };
        if settings
            .bgp
            .as_ref()
            .is_some_and(|b| b.bird_include.is_none())
        {
            return Err(invalid(
                "bgp.bird_include",
                "missing: name the file bird.conf includes, e.g. /etc/meshlb/bird-vips.conf".into(),
            ));
        }
        if settings.api_listen.is_some() && settings.api_token_file.is_none() {
            return Err(invalid(
                "api_listen",
                "a TCP API needs a token: set lbd.api_token_file to a file holding it".into(),
            ));
        }
        Ok(settings)
    }
}

/// `text` as one of `T`'s values (their names as the command line takes them); the error
/// names `what` it is not and every valid value.
fn choice<T: clap::ValueEnum>(text: Option<String>, what: &str) -> Result<Option<T>, String> {
    let Some(text) = text else {
        return Ok(None);
    };
    T::from_str(&text, false).map(Some).map_err(|_| {
        let valid: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .collect();
        format!("{text:?} is not {what}; valid values: {}", valid.join(", "))
    })
}

/// What the kernel accepts as an interface name.
pub fn valid_interface_name(name: &str) -> bool {
    (1..16).contains(&name.len()) && !name.contains(['/', ' ', '\0']) && name != "." && name != ".."
}

#[cfg(test)]
mod tests {
    use crate::source::file::ServiceFile;

    fn parse(text: &str) -> Result<super::DaemonSettings, String> {
        ServiceFile::parse(text, std::path::Path::new("s.yaml"))
            .map(|f| f.lbd)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn settings_are_read_from_the_lbd_section() {
        let s = parse(
            "services: {}\nlbd:\n  interfaces: [eth0, eth1]\n  xdp_mode: generic\n  metrics: 0.0.0.0:9464\n  conntrack_entries: 4096\n",
        )
        .unwrap();
        assert_eq!(s.interfaces.unwrap(), ["eth0", "eth1"]);
        assert_eq!(s.xdp_mode, Some(super::XdpMode::Generic));
        assert_eq!(s.metrics.unwrap().port(), 9464);
        assert_eq!(s.conntrack_entries, Some(4096));
        assert_eq!(parse("services: {}\n").unwrap(), Default::default());
        // Every flag of `lbd run` but --config has a field here (the README says so).
        let s = parse(
            "services: {}\nlbd:\n  kernel_log: debug\n  watch_interval_ms: 0\n  docker_bridges: off\n",
        )
        .unwrap();
        assert_eq!(s.kernel_log, Some(super::KernelLogLevel::Debug));
        assert_eq!(s.watch_interval_ms, Some(0));
        assert_eq!(s.docker_bridges, Some(super::DockerBridges::Off));
    }

    #[test]
    fn bad_settings_name_the_field_and_the_fix() {
        let e = parse("services: {}\nlbd:\n  xdp_mode: fast\n").unwrap_err();
        assert!(
            e.contains("field lbd.xdp_mode") && e.contains("native, generic, auto"),
            "{e}"
        );
        let e = parse("services: {}\nlbd:\n  metrics: localhost\n").unwrap_err();
        assert!(
            e.contains("lbd.metrics") && e.contains("127.0.0.1:9464"),
            "{e}"
        );
        let e = parse("services: {}\nlbd:\n  api_listen: 0.0.0.0:9465\n").unwrap_err();
        assert!(e.contains("lbd.api_token_file"), "{e}");
        let e = parse("services: {}\nlbd:\n  interfaces: [\"a/b\"]\n").unwrap_err();
        assert!(e.contains("lbd.interfaces"), "{e}");
        let e = parse("services: {}\nlbd:\n  socket_lb: yes\n").unwrap_err();
        assert!(e.contains("lbd.socket_lb") && e.contains("on, off"), "{e}");
        let e = parse("services: {}\nlbd:\n  docker_bridges: all\n").unwrap_err();
        assert!(
            e.contains("lbd.docker_bridges")
                && e.contains("\"all\" is not a choice; valid values: on, off"),
            "{e}"
        );
        let e = parse("services: {}\nlbd:\n  kernel_log: loud\n").unwrap_err();
        assert!(
            e.contains("lbd.kernel_log") && e.contains("warn, info"),
            "{e}"
        );
        let e = parse("services: {}\nlbd:\n  token: x\n").unwrap_err();
        assert!(e.contains("unknown field `token`"), "{e}");
        let e = parse("services: {}\nlbd:\n  bgp: { birdc_socket: /run/b.ctl }\n").unwrap_err();
        assert!(e.contains("lbd.bgp.bird_include"), "{e}");
        let e = parse("services: {}\nlbd:\n  bgp: { include: x }\n").unwrap_err();
        assert!(e.contains("unknown field `include`"), "{e}");
    }

    #[test]
    fn the_bgp_section_names_the_include_and_the_socket() {
        let s =
            parse("services: {}\nlbd:\n  bgp: { bird_include: /v.conf, birdc_socket: /b.ctl }\n")
                .unwrap();
        let bgp = s.bgp.expect("bgp");
        assert_eq!(
            bgp.bird_include.as_deref(),
            Some(std::path::Path::new("/v.conf"))
        );
        assert_eq!(
            bgp.birdc_socket.as_deref(),
            Some(std::path::Path::new("/b.ctl"))
        );
    }
}
