//! The provisioner's side of `sam/enroll/1` (see [`sam_protocol::enroll`]): dial a new VM's
//! temporary enrollment endpoint as the node's owner, send a fresh nonce, and accept the node
//! id it answers only with a valid signature by that node's key.

use std::net::SocketAddr;
use std::time::Duration;

use iroh::endpoint::VarInt;
use iroh::{Endpoint, EndpointAddr, TransportAddr};
use sam_protocol::ctl::ErrorCode;
use sam_protocol::enroll::{
    BootstrapState, EnrollError, EnrollRequest, EnrollResponse, MAX_ENROLL_RESPONSE, verify_proof,
};
use sam_protocol::wire::{read_frame, write_frame};
use sam_protocol::{NodeAddr, NodeId};
use thiserror::Error;

/// Bound on one enrollment attempt once connected.
const ATTEMPT: Duration = Duration::from_secs(20);

/// An enrollment attempt failed.
#[derive(Debug, Error)]
pub enum EnrollFailure {
    /// Nothing answered (yet): the VM may still be booting. Worth another try.
    #[error("the enrollment endpoint did not answer: {0}")]
    NotYet(String),
    /// The node refused, or its answer did not verify: final, the VM is not trusted.
    #[error(transparent)]
    Final(#[from] EnrollError),
}

/// Enrolls the node serving enrollment `enrollment` at `addrs`, dialing from `ep` (whose key
/// must be the node's `owner`). Returns the node's own address, its id proven by signature.
pub async fn enroll(
    ep: &Endpoint,
    enrollment: &NodeId,
    owner: &NodeId,
    addrs: &[SocketAddr],
) -> Result<NodeAddr, EnrollFailure> {
    let id = iroh::EndpointId::from_bytes(enrollment.as_bytes())
        .map_err(|e| EnrollFailure::Final(EnrollError::BadFile(e.to_string())))?;
    let target = EndpointAddr::from_parts(
        id,
        addrs
            .iter()
            .map(|a| TransportAddr::Ip(*a))
            .collect::<Vec<_>>(),
    );
    let conn = ep
        .connect(target, sam_protocol::alpn::ENROLL)
        .await
        .map_err(|e| EnrollFailure::NotYet(e.to_string()))?;
    let req = EnrollRequest::fresh();
    let answer = tokio::time::timeout(ATTEMPT, async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &req)
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        read_frame::<EnrollResponse>(&mut recv, MAX_ENROLL_RESPONSE)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    conn.close(VarInt::from_u32(0), b"done");
    let answer = match answer {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(EnrollFailure::NotYet(e)),
        Err(_) => return Err(EnrollFailure::NotYet("no answer within 20 s".into())),
    };
    match answer {
        // The node's clock is not synchronised yet (first boot): it asks to be asked again.
        EnrollResponse::Refused(body) if body.code == ErrorCode::Unavailable => {
            Err(EnrollFailure::NotYet(body.message))
        }
        EnrollResponse::Refused(body) => Err(EnrollError::Refused(body.message).into()),
        // The VM proved it holds the enrollment key (the QUIC handshake), so its bootstrap
        // status is the VM's own word; its text is a peer's, so it is shown sanitized.
        EnrollResponse::Bootstrapping(status) => {
            let status = status.sanitized();
            match status.state {
                BootstrapState::Failed => Err(EnrollError::BootstrapFailed(status).into()),
                // `Done` with no proof is not an enrollment: ask again.
                BootstrapState::Running | BootstrapState::Done => {
                    Err(EnrollFailure::NotYet(status.to_string()))
                }
            }
        }
        EnrollResponse::Enrolled(proof) => {
            verify_proof(&proof, enrollment, owner, &req.nonce)?;
            Ok(proof.node)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::endpoint::presets;
    use sam_protocol::SecretKey;
    use sam_protocol::enroll::{EnrollProof, sign_proof};
    use sam_protocol::wire::read_bounded;

    /// How a fake node answers the enrollment request.
    #[derive(Clone, Copy)]
    enum Answer {
        Honest,
        /// The real node id, signed by another key (a node that does not hold its key).
        OtherKey,
        /// A valid signature, but over an old nonce (a replayed answer).
        OldNonce,
        /// The bootstrap status instead of a proof.
        Status(BootstrapState),
    }

    fn ep_builder(key: &SecretKey) -> iroh::endpoint::Builder {
        Endpoint::builder(presets::Minimal)
            .secret_key(iroh::SecretKey::from_bytes(&key.to_bytes()))
            .clear_ip_transports()
            .bind_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind addr")
    }

    /// A stand-in for a node's enrollment endpoint that answers one request as told.
    async fn fake_node(enrollment: &SecretKey, owner: NodeId, answer: Answer) -> Vec<SocketAddr> {
        let ep = ep_builder(enrollment)
            .alpns(vec![sam_protocol::alpn::ENROLL.to_vec()])
            .bind()
            .await
            .expect("bind fake node");
        let addrs = ep.bound_sockets();
        let enroll_id = enrollment.node_id();
        tokio::spawn(async move {
            let conn = ep.accept().await.expect("incoming").await.expect("conn");
            let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
            let req: EnrollRequest = read_bounded(&mut recv).await.expect("request");
            let node = SecretKey::generate();
            let addr = NodeAddr {
                id: node.node_id(),
                direct: addrs_of(&ep),
                relay: None,
            };
            if let Answer::Status(state) = answer {
                // a hostile status text: a terminal escape, a newline, 5000 characters
                let status = sam_protocol::enroll::BootstrapStatus {
                    state,
                    step: "agents".into(),
                    message: format!("npm failed\x1b[2J\nFAKE LINE{}", "x".repeat(5000)),
                };
                write_frame(&mut send, &EnrollResponse::Bootstrapping(status))
                    .await
                    .expect("answer");
                send.finish().expect("finish");
                let _ = conn.closed().await;
                ep.close().await;
                return;
            }
            let proof: EnrollProof = match answer {
                Answer::Honest => sign_proof(&node, addr, &enroll_id, &owner, &req.nonce),
                Answer::OtherKey => {
                    let mut p = sign_proof(
                        &SecretKey::generate(),
                        addr.clone(),
                        &enroll_id,
                        &owner,
                        &req.nonce,
                    );
                    p.node = addr;
                    p
                }
                Answer::OldNonce => sign_proof(&node, addr, &enroll_id, &owner, &[0u8; 32]),
                Answer::Status(_) => unreachable!("answered above"),
            };
            write_frame(&mut send, &EnrollResponse::Enrolled(proof))
                .await
                .expect("answer");
            send.finish().expect("finish");
            let _ = conn.closed().await;
            ep.close().await;
        });
        addrs
    }

    fn addrs_of(ep: &Endpoint) -> Vec<SocketAddr> {
        ep.bound_sockets()
    }

    async fn enroll_against(answer: Answer) -> Result<NodeAddr, EnrollFailure> {
        let owner = SecretKey::generate();
        let enrollment = SecretKey::generate();
        let addrs = fake_node(&enrollment, owner.node_id(), answer).await;
        let ep = ep_builder(&owner).bind().await.expect("bind owner");
        let got = enroll(&ep, &enrollment.node_id(), &owner.node_id(), &addrs).await;
        ep.close().await;
        got
    }

    #[tokio::test]
    async fn a_forged_enrollment_answer_is_refused() {
        // the stand-in works: an honest answer enrolls
        let node = enroll_against(Answer::Honest).await.expect("honest answer");
        assert_ne!(node.id, NodeId([0; 32]));
        for (answer, what) in [
            (Answer::OtherKey, "signed by another key"),
            (Answer::OldNonce, "over an old nonce"),
        ] {
            match enroll_against(answer).await {
                Err(EnrollFailure::Final(EnrollError::BadProof(m))) => {
                    assert!(m.contains("signature"), "{what}: {m}")
                }
                other => panic!("an answer {what} was not refused as forged: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_bootstrap_is_reported_with_its_step_and_a_clean_message() {
        match enroll_against(Answer::Status(BootstrapState::Failed)).await {
            Err(EnrollFailure::Final(e @ EnrollError::BootstrapFailed(_))) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("bootstrap failed at step agents: npm failed"),
                    "{msg}"
                );
                // the node's text is a peer's: no escape, no line break, bounded
                assert!(!msg.contains('\x1b') && !msg.contains('\n'), "{msg:?}");
                assert!(msg.chars().count() < 400, "{} chars", msg.chars().count());
            }
            other => panic!("a failed bootstrap was not reported as final: {other:?}"),
        }
        match enroll_against(Answer::Status(BootstrapState::Running)).await {
            Err(EnrollFailure::NotYet(m)) => assert!(m.contains("step agents"), "{m}"),
            other => panic!("a running bootstrap must be waited for: {other:?}"),
        }
    }
}
