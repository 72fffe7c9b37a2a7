//! lbctl: meshlb's operator CLI.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use lb_common::maps::proto;
use lb_userspace::{config::ServiceFile, dataplane, reconcile};

#[derive(Parser)]
#[command(name = "lbctl", version, about = "meshlb operator CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Which backend a new flow gets and why, computed with the dataplane's own hash and
    /// tables from a service file, for this node's addresses.
    Explain {
        /// Service file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// tcp or udp.
        protocol: String,
        /// Client address and port, e.g. 198.18.1.2:40000 or [fd00:1::2]:40000.
        source: SocketAddr,
        /// Frontend address and port, e.g. 198.18.100.1:80.
        destination: SocketAddr,
    },
}

fn main() -> std::process::ExitCode {
    // One clear line and a non-zero exit, whatever RUST_BACKTRACE says.
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Explain {
            config,
            protocol,
            source,
            destination,
        } => {
            let protocol = match protocol.as_str() {
                "tcp" => proto::TCP,
                "udp" => proto::UDP,
                other => bail!("protocol {other:?}: write tcp or udp"),
            };
            let file = ServiceFile::load(&config)?;
            let node = dataplane::node_addresses().context("listing this node's addresses")?;
            let plan =
                reconcile::plan(&file, &node).with_context(|| config.display().to_string())?;
            println!("{}", plan.explain(protocol, source, destination));
            Ok(())
        }
    }
}
