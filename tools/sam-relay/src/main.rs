//! `sam-relay --bind ADDR (--allow NODEID... | --open)`: runs iroh's relay server (plain
//! HTTP, like `iroh-relay --dev`) on ADDR and prints `relay http://ADDR/` once it serves.
//! With `--allow` only those NodeIds may use it (iroh's access control; the upstream
//! `iroh-relay` binary offers the same as `access.allowlist` in its config file). A relay
//! open to every key carries anyone's traffic, so that takes an explicit `--open`; with
//! neither, it refuses to start. Stops on SIGTERM/SIGINT.
//! Production relays should use the upstream `iroh-relay` binary with TLS (see README).

use std::net::SocketAddr;
use std::sync::Arc;

use iroh_base::EndpointId;
use iroh_relay::server::{Access, AccessControl, ClientRequest, RelayConfig, Server, ServerConfig};

#[derive(Debug)]
struct Allowlist(Vec<EndpointId>);

impl AccessControl for Allowlist {
    async fn on_connect(&self, request: &ClientRequest) -> Access {
        if self.0.contains(&request.endpoint_id()) {
            Access::Allow
        } else {
            Access::Deny {
                reason: Some("not on this relay's allowlist".into()),
            }
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: sam-relay --bind ADDR (--allow NODEID... | --open)");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut bind: Option<SocketAddr> = None;
    let mut allow = Vec::new();
    let mut open = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => {
                bind = args.next().and_then(|s| s.parse().ok());
                if bind.is_none() {
                    usage()
                }
            }
            "--allow" => match args.next().and_then(|s| s.parse::<EndpointId>().ok()) {
                Some(id) => allow.push(id),
                None => usage(),
            },
            "--open" => open = true,
            _ => usage(),
        }
    }
    let Some(bind) = bind else { usage() };
    if allow.is_empty() != open {
        eprintln!(
            "sam-relay: say who may use this relay: --allow NODEID (repeatable), or --open for everyone (not both)"
        );
        std::process::exit(2)
    }
    let mut relay = RelayConfig::new(bind);
    if !allow.is_empty() {
        relay.access = Arc::new(Allowlist(allow));
    }
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    let server = match Server::spawn(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sam-relay: cannot start: {e}");
            std::process::exit(1)
        }
    };
    match server.http_addr() {
        Some(a) => println!("relay http://{a}/"),
        None => {
            eprintln!("sam-relay: no http address");
            std::process::exit(1)
        }
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sam-relay: {e}");
            std::process::exit(1)
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = server.shutdown().await;
}
