//! Where services come from, as given and validated, before any planning: the service file
//! (`file`), the daemon settings of its `lbd:` section and of `lbd run`'s flags (`settings`),
//! and what the admin API was told (`api_state`), laid over the file. Pure: nothing here
//! touches the kernel.
pub mod api_state;
pub mod error;
pub mod file;
pub mod settings;
pub mod swarm;
