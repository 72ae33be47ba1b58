//! The warm-pool policy: pure functions over the VMs a provider lists (their labels carry the
//! pool state) and the current time. No IO; the caller lists, labels, creates and deletes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Size;
use crate::provider::{PoolState, Vm, labels};

/// Pool settings (`[pool]` in the provisioner config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolPolicy {
    /// How long an idle node is kept for reuse (s). Default 30 min.
    pub idle_ttl_secs: u64,
    /// Most workspaces on one node, by size.
    pub max_workspaces_small: usize,
    pub max_workspaces_medium: usize,
    pub max_workspaces_large: usize,
    /// How long a new node has to answer at its ticket before it is deleted (s). Default
    /// 15 min: a cloud node's first boot installs Docker, builds the workspace image and
    /// installs the agent CLIs (a failed step ends the wait at once, with its reason).
    pub ready_timeout_secs: u64,
    /// How long a new node's one-time enrollment is valid (s): after that the node refuses
    /// it and deletes its key. Default 1 h; [`ENROLL_TTL_RANGE`] (a minute, enough for a
    /// slow boot; at most a day, so a leaked user-data is not a standing key).
    #[serde(deserialize_with = "enroll_ttl")]
    pub enroll_ttl_secs: u64,
}

/// What `enroll_ttl_secs` may be, in seconds.
pub const ENROLL_TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=86_400;

fn enroll_ttl<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let secs = u64::deserialize(d)?;
    if ENROLL_TTL_RANGE.contains(&secs) {
        Ok(secs)
    } else {
        Err(serde::de::Error::custom(format!(
            "enroll_ttl_secs = {secs} is out of range: a new node's enrollment must be valid between {} s and {} s (a day)",
            ENROLL_TTL_RANGE.start(),
            ENROLL_TTL_RANGE.end()
        )))
    }
}

impl Default for PoolPolicy {
    fn default() -> Self {
        Self {
            idle_ttl_secs: 30 * 60,
            max_workspaces_small: 2,
            max_workspaces_medium: 4,
            max_workspaces_large: 8,
            ready_timeout_secs: 900,
            enroll_ttl_secs: sam_protocol::enroll::DEFAULT_ENROLL_TTL_SECS,
        }
    }
}

/// Where new work goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Take this idle node (mark it busy first).
    ReuseIdle { vm_id: String },
    /// Add a workspace to this busy node that has room.
    Share { vm_id: String },
    /// No node fits: create one of this size.
    Create { size: Size },
}

impl PoolPolicy {
    pub fn max_workspaces(&self, size: Size) -> usize {
        match size {
            Size::Small => self.max_workspaces_small,
            Size::Medium => self.max_workspaces_medium,
            Size::Large => self.max_workspaces_large,
        }
    }

    /// When the idle node expires, if it is an idle SAM node. A node marked idle without a
    /// readable idle time counts from its creation, or as already expired when that is unknown.
    pub fn expires_at(&self, vm: &Vm) -> Option<u64> {
        if !is_sam(vm) || vm.pool_state() != Some(PoolState::Idle) {
            return None;
        }
        let since = vm.idle_since().or(vm.created_unix).unwrap_or(0);
        Some(since.saturating_add(self.idle_ttl_secs))
    }

    /// Idle nodes whose time is up, to delete.
    pub fn expired<'a>(&self, vms: &'a [Vm], now_unix: u64) -> Vec<&'a Vm> {
        vms.iter()
            .filter(|vm| self.expires_at(vm).is_some_and(|t| t <= now_unix))
            .collect()
    }

    /// Idle nodes of `size` that may be reused now, warmest (most recently idle) first.
    pub fn reusable<'a>(&self, vms: &'a [Vm], size: Size, now_unix: u64) -> Vec<&'a Vm> {
        let mut out: Vec<&Vm> = vms
            .iter()
            .filter(|vm| vm.size() == Some(size) && usable_status(vm))
            .filter(|vm| self.expires_at(vm).is_some_and(|t| t > now_unix))
            .collect();
        out.sort_by(|a, b| {
            b.idle_since()
                .cmp(&a.idle_since())
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// Where a new workspace of `size` goes: a busy node with room (by `workspaces`, the known
    /// workspace count per VM id), else the warmest idle node, else a new node.
    pub fn place(
        &self,
        vms: &[Vm],
        size: Size,
        workspaces: &BTreeMap<String, usize>,
        now_unix: u64,
    ) -> Placement {
        let max = self.max_workspaces(size);
        let shared = vms
            .iter()
            .filter(|vm| {
                is_sam(vm)
                    && vm.size() == Some(size)
                    && usable_status(vm)
                    && vm.pool_state() == Some(PoolState::Busy)
            })
            .filter_map(|vm| Some((vm, *workspaces.get(&vm.id)?)))
            .filter(|(_, n)| *n < max)
            // fullest first, so nodes empty out and can go idle
            .max_by(|(a, na), (b, nb)| na.cmp(nb).then_with(|| b.id.cmp(&a.id)));
        if let Some((vm, _)) = shared {
            return Placement::Share {
                vm_id: vm.id.clone(),
            };
        }
        match self.reusable(vms, size, now_unix).first() {
            Some(vm) => Placement::ReuseIdle {
                vm_id: vm.id.clone(),
            },
            None => Placement::Create { size },
        }
    }
}

fn is_sam(vm: &Vm) -> bool {
    vm.labels.get(labels::SAM).map(String::as_str) == Some("1")
}

fn usable_status(vm: &Vm) -> bool {
    matches!(vm.status.as_str(), "running" | "starting" | "initializing")
}

#[cfg(test)]
mod tests;

mod shell;
pub use shell::{Acquired, Pool, PoolError, Probe};

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
