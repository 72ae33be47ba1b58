//! `sam-dns --bind IP --data DIR [--origin ORIGIN]`: runs iroh's pkarr relay and DNS server
//! (`iroh-dns-server`, plain HTTP like its dev config, no mainline DHT, no rate limit) on IP,
//! with its store in DIR. Prints `pkarr http://IP:PORT/pkarr` (stdout) and the DNS
//! address (stderr) once it serves. Stops on SIGTERM/SIGINT. Production: run the upstream `iroh-dns-server` binary
//! with HTTPS and a delegated DNS zone (see README, "Discovery").

use std::net::IpAddr;
use std::path::PathBuf;

use iroh_dns_server::Server;
use iroh_dns_server::config::{Config, MetricsConfig, RateLimitConfig};

fn usage() -> ! {
    eprintln!("usage: sam-dns --bind IP --data DIR [--origin ORIGIN]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut bind: Option<IpAddr> = None;
    let mut data: Option<PathBuf> = None;
    let mut origin = "sam-dns.test.".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => {
                bind = Some(
                    args.next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--data" => data = Some(args.next().map(PathBuf::from).unwrap_or_else(|| usage())),
            "--origin" => origin = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let (Some(bind), Some(data)) = (bind, data) else {
        usage()
    };
    let mut config = Config::default();
    let Some(http) = config.http.as_mut() else {
        eprintln!("sam-dns: iroh-dns-server's default config has no http listener");
        std::process::exit(1)
    };
    http.port = 0;
    http.bind_addr = Some(bind);
    config.https = None;
    config.dns.port = 0;
    config.dns.bind_addr = Some(bind);
    // The static zone is rooted at "." (as in iroh-dns-server's own default config).
    config.dns.origins = vec![origin, ".".to_string()];
    config.metrics = Some(MetricsConfig::disabled());
    config.mainline = None;
    config.pkarr_put_rate_limit = RateLimitConfig::Disabled;
    config.data_dir = Some(data);
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sam-dns: cannot start: {e:#}");
            std::process::exit(1)
        }
    };
    match server.http_addr() {
        Some(a) => println!("pkarr http://{a}/pkarr"),
        None => {
            eprintln!("sam-dns: no http address");
            std::process::exit(1)
        }
    }
    // One stdout line only: a test reads it and may close the pipe.
    eprintln!("sam-dns: dns on {}", server.dns_addr());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sam-dns: {e}");
            std::process::exit(1)
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = server.shutdown().await;
}
