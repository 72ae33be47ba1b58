//! The provisioner's side of `sam/enroll/1` (see [`sam_protocol::enroll`]): dial a new VM's
//! temporary enrollment endpoint as the node's owner, send a fresh nonce, and accept the node
//! id it answers only with a valid signature by that node's key.

use std::net::SocketAddr;
use std::time::Duration;

use iroh::endpoint::VarInt;
use iroh::{Endpoint, EndpointAddr, TransportAddr};
use sam_protocol::enroll::{
    EnrollError, EnrollRequest, EnrollResponse, MAX_ENROLL_RESPONSE, verify_proof,
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
        EnrollResponse::Refused(body) => Err(EnrollError::Refused(body.message).into()),
        EnrollResponse::Enrolled(proof) => {
            verify_proof(&proof, enrollment, owner, &req.nonce)?;
            Ok(proof.node)
        }
    }
}
