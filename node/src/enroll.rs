//! First boot of a cloud node: the one-time enrollment (`sam/enroll/1`, see
//! [`sam_protocol::enroll`]).
//!
//! The user-data never holds the node's key: it writes `enroll.toml` (a throwaway enrollment
//! key, its expiry and the address to serve it on) and the config. `sam-node run` makes its
//! own key (`node.key`, `0600`) when there is none and an enrollment waits, and serves a
//! **second, temporary** endpoint whose key is the enrollment key, on `sam/enroll/1` only:
//!
//! - the dialer's key is checked first: anyone but the node's owner is refused before any
//!   request is read;
//! - the owner's request is one bounded frame (a fresh nonce); the node answers with its own
//!   address and its node key's signature over (enrollment id, owner id, nonce, node id);
//! - before answering, the node records the enrollment as used (`enrolled.json`, fsync) and
//!   deletes `enroll.toml` (fsync of the directory); then it closes the temporary endpoint.
//!   A second request is refused, and a node with `enrolled.json` never serves an enrollment
//!   again (an `enroll.toml` written later is deleted at start);
//! - an expired enrollment is refused; at start an expired one is deleted without being
//!   served, and a running one stops [`EXPIRED_GRACE`] after its expiry;
//! - expiry is judged by a clock the kernel says is synchronised. At first boot a VM's clock
//!   can be off until NTP has run: an enrollment that *looks* expired by an unsynchronised
//!   clock is kept and served, and a request is answered "not yet, the clock is not
//!   synchronised" (the provisioner asks again), for at most [`CLOCK_SYNC_WAIT`] after the
//!   node started; after that (no NTP at all) the clock is taken as it is.
//!
//! The node's key and the enrollment key are never logged.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use iroh::endpoint::{VarInt, presets};
use iroh::{Endpoint, RelayMode};
use sam_protocol::ctl::{ErrorBody, ErrorCode};
use sam_protocol::enroll::{
    BOOTSTRAP_STATUS_FILE, BootstrapState, BootstrapStatus, ENROLL_VERSION, EnrollFile,
    EnrollRequest, EnrollResponse, MAX_ENROLL_RESPONSE, sign_proof,
};
use sam_protocol::wire::read_bounded;
use sam_protocol::{NodeAddr, NodeId, SecretKey};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{NodePaths, write_private};

/// The time in Unix seconds (a function so tests can move it).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(crate::now_secs)
}

/// Whether the clock can be trusted to judge an expiry (a function so tests can say no).
pub type Synced = Arc<dyn Fn() -> bool + Send + Sync>;

/// The system's word on its clock: synchronised unless `timedatectl` (systemd, which asks
/// the kernel's NTP state) says `NTPSynchronized=no`; a machine that cannot say (no systemd)
/// is taken at its clock, as is one still unsynchronised [`CLOCK_SYNC_WAIT`] after `since`
/// (no NTP at all).
pub fn system_synced(since: std::time::Instant) -> Synced {
    Arc::new(move || since.elapsed() >= CLOCK_SYNC_WAIT || !says_unsynchronised())
}

fn says_unsynchronised() -> bool {
    std::process::Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"no")
}

/// The longest an enrollment that looks expired is kept while the clock is unsynchronised.
pub const CLOCK_SYNC_WAIT: Duration = Duration::from_secs(600);
/// How often a kept enrollment asks again whether the clock is synchronised.
const SYNC_POLL: Duration = Duration::from_secs(5);

/// How long after its expiry an unused enrollment's endpoint still answers "expired" before
/// it is closed and its key deleted.
pub const EXPIRED_GRACE: Duration = Duration::from_secs(600);
/// Most enrollment connections handled at once (others are refused at the handshake).
const MAX_CONNS: usize = 32;
/// How long a dialer that is not the owner is kept: long enough to open its stream and read
/// the refusal, short enough that strangers cannot hold the connection slots.
const STRANGER: Duration = Duration::from_secs(2);
/// Bound on each step of one connection (handshake, the request, the answer being read).
const STEP: Duration = Duration::from_secs(10);
/// Longest a QUIC handshake may hold one of the [`MAX_CONNS`] slots (a validated dialer that
/// never finishes it).
const HANDSHAKE: Duration = Duration::from_secs(3);
/// Largest `enroll.toml` read.
const MAX_FILE: u64 = 4 * 1024;

/// `enrolled.json`: the enrollment this node used. Public data only.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Consumed {
    enrollment: NodeId,
    node: NodeId,
    owner: NodeId,
    at_unix: u64,
}

/// A served enrollment. [`EnrollHandle::shutdown`] closes it (the file stays for the next start).
pub struct EnrollHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The enrollment key's public id.
    pub id: NodeId,
    /// Where the temporary endpoint listens (unspecified addresses as loopback).
    pub addrs: Vec<SocketAddr>,
}

impl EnrollHandle {
    /// Stops serving (an unused enrollment stays on disk for the next start).
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Resolves once the endpoint is closed (used, expired or shut down).
    pub async fn closed(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Whether `paths` holds an enrollment waiting to be served (first boot of a cloud node).
pub fn pending(paths: &NodePaths) -> bool {
    paths.enroll().exists()
}

/// Serves the enrollment in `paths` if there is one that is neither used nor expired; else
/// deletes what is left of it (saying why) and returns `None`. `addr` is what the node
/// answers as its address.
pub async fn start(
    paths: &NodePaths,
    node_key: &SecretKey,
    owner: NodeId,
    addr: NodeAddr,
    clock: Clock,
) -> Result<Option<EnrollHandle>> {
    start_judged(paths, node_key, owner, addr, clock, Arc::new(|| true)).await
}

/// [`start`], judging expiry only when `synced` says the clock can be trusted.
pub async fn start_judged(
    paths: &NodePaths,
    node_key: &SecretKey,
    owner: NodeId,
    addr: NodeAddr,
    clock: Clock,
    synced: Synced,
) -> Result<Option<EnrollHandle>> {
    let file_path = paths.enroll();
    let text = match read_small(&file_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", file_path.display())),
    };
    if let Ok(bytes) = std::fs::read(paths.enrolled()) {
        let used = serde_json::from_slice::<Consumed>(&bytes)
            .map(|c| format!("enrollment {} used at {}", c.enrollment.short(), c.at_unix))
            .unwrap_or_else(|_| "an enrollment was used".into());
        warn!(
            "{} holds an enrollment but this node is enrolled already ({used}): a node is enrolled once; the new one is deleted, unused",
            file_path.display()
        );
        remove_durably(&file_path)?;
        return Ok(None);
    }
    let file: EnrollFile = match toml::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            error!(
                "{} is not a valid enrollment ({}): deleted; this node cannot be enrolled, delete it and make a new one",
                file_path.display(),
                e.message()
            );
            remove_durably(&file_path)?;
            return Ok(None);
        }
    };
    let key = match file.secret_key() {
        Ok(k) => k,
        Err(e) => {
            error!("{}: {e}: deleted", file_path.display());
            remove_durably(&file_path)?;
            return Ok(None);
        }
    };
    let enrollment = key.node_id();
    if clock() >= file.expires_unix && !synced() {
        warn!(
            enrollment = %enrollment.short(),
            "the enrollment looks expired (at {} unix) but the clock is not synchronised yet: it is kept and served until the clock is, then judged again",
            file.expires_unix
        );
    } else if clock() >= file.expires_unix {
        warn!(
            enrollment = %enrollment.short(),
            "the enrollment expired at {} (unix): its key is deleted and it is not served; this node cannot be enrolled, delete it and make a new one",
            file.expires_unix
        );
        remove_durably(&file_path)?;
        return Ok(None);
    }
    let ep = Endpoint::builder(presets::Minimal)
        .secret_key(iroh::SecretKey::from_bytes(&key.to_bytes()))
        .alpns(vec![sam_protocol::alpn::ENROLL.to_vec()])
        .clear_ip_transports()
        .bind_addr(file.bind)
        .with_context(|| format!("bad enrollment bind address {}", file.bind))?
        .relay_mode(RelayMode::Disabled)
        .bind()
        .await
        .with_context(|| format!("cannot bind the enrollment endpoint on {}", file.bind))?;
    drop(key);
    let addrs: Vec<SocketAddr> = ep
        .bound_sockets()
        .into_iter()
        .map(|a| {
            if a.ip().is_unspecified() {
                let ip = if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                SocketAddr::new(ip, a.port())
            } else {
                a
            }
        })
        .collect();
    write_private(
        &paths.enroll_addr(),
        &serde_json::to_vec(&addrs).context("serialise enrollment address")?,
    )?;
    info!(enrollment = %enrollment.short(), addrs = ?addrs, expires_unix = file.expires_unix, "waiting for the owner to enroll this node");
    let stop = CancellationToken::new();
    let state = Arc::new(State {
        paths: paths.clone(),
        node_key: node_key.clone(),
        owner,
        addr,
        enrollment,
        expires_unix: file.expires_unix,
        clock,
        synced,
        used: tokio::sync::Mutex::new(false),
        done: stop.child_token(),
    });
    let task = tokio::spawn(serve(ep, state));
    Ok(Some(EnrollHandle {
        stop,
        task,
        id: enrollment,
        addrs,
    }))
}

struct State {
    paths: NodePaths,
    node_key: SecretKey,
    owner: NodeId,
    addr: NodeAddr,
    enrollment: NodeId,
    expires_unix: u64,
    clock: Clock,
    synced: Synced,
    /// Set once the enrollment is used (or found expired): no request is granted after.
    used: tokio::sync::Mutex<bool>,
    /// Cancelled when the endpoint should close (used, expired, or the node stops).
    done: CancellationToken,
}

async fn serve(ep: Endpoint, state: Arc<State>) {
    let left = state.expires_unix.saturating_sub((state.clock)());
    let expiry = tokio::time::sleep(Duration::from_secs(left) + EXPIRED_GRACE);
    tokio::pin!(expiry);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = state.done.cancelled() => break,
            _ = &mut expiry => {
                if !(state.synced)() {
                    // not judged by a clock that may be wrong: ask again shortly
                    expiry.as_mut().reset(tokio::time::Instant::now() + SYNC_POLL);
                    continue;
                }
                let left = state.expires_unix.saturating_sub((state.clock)());
                if left > 0 {
                    // the synchronised clock moved back: not expired after all
                    expiry.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(left) + EXPIRED_GRACE);
                    continue;
                }
                warn!(enrollment = %state.enrollment.short(), "the enrollment expired unused: its key is deleted");
                *state.used.lock().await = true;
                if let Err(e) = remove_durably(&state.paths.enroll()) {
                    error!("cannot delete the expired enrollment: {e:#}");
                }
                break;
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            incoming = ep.accept() => {
                let Some(incoming) = incoming else { break };
                // Address validation first (a QUIC retry): a dialer that cannot receive at
                // the address it claims (spoofed Initials) never takes one of the slots.
                let incoming = if incoming.remote_addr_validated() {
                    incoming
                } else {
                    match incoming.retry() {
                        Ok(()) => continue,
                        Err(e) => e.into_incoming(),
                    }
                };
                if conns.len() >= MAX_CONNS {
                    incoming.refuse();
                    continue;
                }
                let state = state.clone();
                conns.spawn(async move {
                    let _ = tokio::time::timeout(4 * STEP, handle(incoming, state)).await;
                });
            }
        }
    }
    // Connections in flight get their answer (each is bounded), then the endpoint closes.
    while conns.join_next().await.is_some() {}
    ep.close().await;
    let _ = std::fs::remove_file(state.paths.enroll_addr());
}

async fn handle(incoming: iroh::endpoint::Incoming, state: Arc<State>) {
    let conn = match tokio::time::timeout(HANDSHAKE, incoming).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    let peer = NodeId(*conn.remote_id().as_bytes());
    let wait = if peer == state.owner { STEP } else { STRANGER };
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(wait, conn.accept_bi()).await else {
        conn.close(VarInt::from_u32(1), b"enrollment refused");
        return;
    };
    // Who is asking comes first: only the owner's request is read at all.
    let answer = if peer != state.owner {
        warn!(peer = %peer.short(), "enrollment refused: the dialer is not this node's owner");
        EnrollResponse::Refused(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "enrollment refused: only this node's owner may enroll it, and {} is not its owner",
                peer.short()
            ),
        ))
    } else {
        match tokio::time::timeout(STEP, read_bounded::<EnrollRequest>(&mut recv)).await {
            Ok(Ok(req)) if req.version == ENROLL_VERSION => match bootstrap_status(&state.paths) {
                // The first-boot bootstrap is still running, or stopped at a step: the owner
                // learns which (and why), and the enrollment stays unused until it is done.
                Some(status) if status.state != BootstrapState::Done => {
                    info!(step = %status.step, state = ?status.state, "enrollment asked during the bootstrap: status sent");
                    EnrollResponse::Bootstrapping(status)
                }
                _ => consume(&state, &req).await,
            },
            Ok(Ok(req)) => EnrollResponse::Refused(ErrorBody::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "enrollment version {} is not supported (this node speaks {ENROLL_VERSION})",
                    req.version
                ),
            )),
            Ok(Err(e)) => EnrollResponse::Refused(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("malformed enrollment request: {e}"),
            )),
            Err(_) => return,
        }
    };
    let Ok(bytes) = sam_protocol::frame::encode_with_limit(&answer, MAX_ENROLL_RESPONSE) else {
        return;
    };
    if send.write_all(&bytes).await.is_ok() && send.finish().is_ok() {
        // the dialer closes once it has read the answer
        let _ = tokio::time::timeout(wait, conn.closed()).await;
    }
    conn.close(VarInt::from_u32(0), b"done");
    if *state.used.lock().await {
        state.done.cancel();
    }
}

/// Grants the enrollment once: records it used and deletes its key, then signs.
async fn consume(state: &State, req: &EnrollRequest) -> EnrollResponse {
    let mut used = state.used.lock().await;
    if *used {
        warn!(enrollment = %state.enrollment.short(), "a second enrollment request was refused");
        return EnrollResponse::Refused(ErrorBody::new(
            ErrorCode::Conflict,
            "enrollment refused: this one-time enrollment was used already (a node is enrolled once)",
        ));
    }
    let now = (state.clock)();
    if now >= state.expires_unix && !(state.synced)() {
        warn!(enrollment = %state.enrollment.short(), "an enrollment request waits: the enrollment looks expired but the clock is not synchronised yet");
        return EnrollResponse::Refused(ErrorBody::new(
            ErrorCode::Unavailable,
            format!(
                "not yet: by this node's clock the enrollment expired at {} (unix), but the clock is not synchronised yet; ask again shortly",
                state.expires_unix
            ),
        ));
    }
    if now >= state.expires_unix {
        *used = true;
        warn!(enrollment = %state.enrollment.short(), "an expired enrollment was refused: its key is deleted");
        if let Err(e) = remove_durably(&state.paths.enroll()) {
            error!("cannot delete the expired enrollment: {e:#}");
        }
        return EnrollResponse::Refused(ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "enrollment refused: it expired at {} (unix), {} s ago; delete this node and make a new one",
                state.expires_unix,
                now - state.expires_unix
            ),
        ));
    }
    let record = Consumed {
        enrollment: state.enrollment,
        node: state.node_key.node_id(),
        owner: state.owner,
        at_unix: now,
    };
    let saved = serde_json::to_vec(&record)
        .map_err(anyhow::Error::from)
        .and_then(|b| write_private(&state.paths.enrolled(), &b))
        .and_then(|()| remove_durably(&state.paths.enroll()));
    if let Err(e) = saved {
        error!("cannot record the enrollment as used: {e:#}");
        return EnrollResponse::Refused(ErrorBody::new(
            ErrorCode::Unavailable,
            format!("the node cannot record the enrollment as used ({e:#}), so it refuses it"),
        ));
    }
    *used = true;
    info!(enrollment = %state.enrollment.short(), node = %record.node, "enrolled by the owner: the enrollment key is deleted");
    EnrollResponse::Enrolled(sign_proof(
        &state.node_key,
        state.addr.clone(),
        &state.enrollment,
        &state.owner,
        &req.nonce,
    ))
}

/// The first-boot bootstrap's status (`bootstrap.status`, written by the user-data), if the
/// user-data writes one (the `local` provider and older user-data do not: `None`). A file that
/// cannot be read or parsed counts as a failed bootstrap: the node is not enrolled on it.
pub fn bootstrap_status(paths: &NodePaths) -> Option<BootstrapStatus> {
    let path = paths.dir.join(BOOTSTRAP_STATUS_FILE);
    let text = match read_small(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            return Some(BootstrapStatus {
                state: BootstrapState::Failed,
                step: "status".into(),
                message: format!("the node cannot read its bootstrap status: {e}"),
            });
        }
    };
    Some(
        BootstrapStatus::parse(&text).unwrap_or_else(|e| BootstrapStatus {
            state: BootstrapState::Failed,
            step: "status".into(),
            message: format!("the node cannot read its bootstrap status: {e}"),
        }),
    )
}

fn read_small(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > MAX_FILE {
        return Err(std::io::Error::other("the file is too large"));
    }
    std::fs::read_to_string(path)
}

/// Deletes `path` (gone already is fine) and fsyncs its directory, so the deletion survives a
/// crash.
fn remove_durably(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("delete {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync {}", dir.display()))?;
    }
    Ok(())
}
