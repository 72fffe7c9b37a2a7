//! Docker Swarm as a source of services: `lbd run --swarm` follows the node's Docker Engine
//! and serves every port a swarm service publishes in ingress mode.
//!
//! `engine` reads the Engine (the only part doing I/O with it, with `desired`, which reads a
//! manager's tasks' desired states, and `stop_signals`, which reads the local tasks' stop
//! signals from the container events, and `starts`, which hears containers start so a read
//! follows at once), `snapshot` reduces its answers to
//! what meshlb needs (with `bridges`, the local bridge networks' interfaces), `services` turns that into services in the service file's terms, and
//! `follow` keeps reading (with `peers`, which keeps a node the Engine stopped showing a
//! peer for a while, `ports`, which keeps a published port it stopped listing for a
//! while, `vips`, which keeps a service's VIP from flipping while the Engine lists two, and `notices`, which tells the other nodes' lbd the tasks this node knows are
//! being stopped and hears theirs). The daemon lays the result beside the file's and the API's
//! services.
pub mod bridges;
mod desired;
pub mod engine;
pub mod follow;
pub mod notices;
pub mod peers;
pub mod ports;
pub mod services;
pub mod snapshot;
mod starts;
mod stop_signals;
pub mod vips;

pub use crate::source::file::SwarmPolicy;
pub use engine::{DEFAULT_DOCKER_HOST, Engine, EngineError};
pub use services::{SwarmDetails, SwarmServices, services};
pub use snapshot::Snapshot;
