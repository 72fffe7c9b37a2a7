//! Where services come from, as given and validated, before any planning: the service file
//! (`file`), the daemon settings of its `lbd:` section and of `lbd run`'s flags (`settings`),
//! what the admin API was told (`api_state`), laid over the file, the swarm (`swarm`), and
//! which checked backends are up (`health`). Nothing here touches the kernel.
pub mod api_state;
pub mod error;
pub mod file;
pub mod health;
pub mod settings;
pub mod swarm;
