//! How lbd is driven: its event loop ([`event_loop`]), the admin API and metrics endpoint
//! ([`server`]) and the daemon behind its lock that they share ([`shared`]). The top layer:
//! it uses the daemon and the API's wire types; nothing below uses it.

mod announce_health;
mod announce_task;
pub mod auth;
pub mod event_loop;
pub mod flood;
mod health_task;
pub mod listener;
pub mod server;
pub mod shared;
