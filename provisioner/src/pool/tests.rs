use proptest::prelude::*;
use sam_protocol::NodeId;

use super::*;
use crate::provider::{new_vm_labels, with_pool_state};

fn vm(id: &str, size: Size, state: Option<(PoolState, u64)>, status: &str) -> Vm {
    let mut labels = new_vm_labels(size, &NodeId([id.len() as u8; 32]));
    if let Some((s, t)) = state {
        labels = with_pool_state(labels, s, t);
    }
    Vm {
        id: id.into(),
        name: id.into(),
        location: "fsn1".into(),
        machine_type: "cx23".into(),
        status: status.into(),
        public_ipv4: None,
        labels,
        created_unix: Some(0),
    }
}

const TTL: u64 = 30 * 60;

#[test]
fn takes_the_warmest_idle_node_of_the_size() {
    let p = PoolPolicy::default();
    let vms = vec![
        vm("a", Size::Small, Some((PoolState::Idle, 1000)), "running"),
        vm("b", Size::Small, Some((PoolState::Idle, 1500)), "running"),
        vm("c", Size::Medium, Some((PoolState::Idle, 1900)), "running"),
        vm("d", Size::Small, Some((PoolState::Busy, 0)), "running"),
        vm("e", Size::Small, Some((PoolState::Idle, 1950)), "off"),
    ];
    let none = BTreeMap::new();
    assert_eq!(
        p.place(&vms, Size::Small, &none, 2000),
        Placement::ReuseIdle { vm_id: "b".into() }
    );
    assert_eq!(
        p.place(&vms, Size::Large, &none, 2000),
        Placement::Create { size: Size::Large }
    );
    // after both small idle nodes expire: create
    assert_eq!(
        p.place(&vms, Size::Small, &none, 1500 + TTL),
        Placement::Create { size: Size::Small }
    );
}

#[test]
fn shares_a_busy_node_with_room() {
    let p = PoolPolicy::default();
    let vms = vec![
        vm("busy1", Size::Small, Some((PoolState::Busy, 0)), "running"),
        vm("busy2", Size::Small, Some((PoolState::Busy, 0)), "running"),
        vm("idle", Size::Small, Some((PoolState::Idle, 100)), "running"),
    ];
    let load = BTreeMap::from([("busy1".to_string(), 2), ("busy2".to_string(), 1)]);
    assert_eq!(
        p.place(&vms, Size::Small, &load, 200),
        Placement::Share {
            vm_id: "busy2".into()
        }
    );
    let full = BTreeMap::from([("busy1".to_string(), 2), ("busy2".to_string(), 2)]);
    assert_eq!(
        p.place(&vms, Size::Small, &full, 200),
        Placement::ReuseIdle {
            vm_id: "idle".into()
        }
    );
    assert_eq!(p.max_workspaces(Size::Small), 2);
    assert_eq!(p.max_workspaces(Size::Large), 8);
}

#[test]
fn reaps_expired_idle_nodes_only() {
    let p = PoolPolicy::default();
    let mut no_time = vm("x", Size::Small, Some((PoolState::Idle, 0)), "running");
    no_time.labels.remove(labels::IDLE_SINCE);
    no_time.created_unix = None;
    let vms = vec![
        vm("old", Size::Small, Some((PoolState::Idle, 0)), "running"),
        vm("new", Size::Small, Some((PoolState::Idle, 1000)), "running"),
        vm("busy", Size::Small, Some((PoolState::Busy, 0)), "running"),
        no_time,
    ];
    let ids: Vec<&str> = p.expired(&vms, TTL).iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, ["old", "x"]);
    let ids: Vec<&str> = p
        .expired(&vms, 1000 + TTL)
        .iter()
        .map(|v| v.id.as_str())
        .collect();
    assert_eq!(ids, ["old", "new", "x"]);
}

fn arb_vm() -> impl Strategy<Value = Vm> {
    (
        "[a-f]{1,4}",
        prop::sample::select(Size::ALL.to_vec()),
        prop::option::of((any::<bool>(), 0u64..10_000)),
        prop::sample::select(vec!["running", "starting", "off", "deleting"]),
        any::<bool>(),
    )
        .prop_map(|(id, size, st, status, sam)| {
            let st = st.map(|(idle, t)| {
                (
                    if idle {
                        PoolState::Idle
                    } else {
                        PoolState::Busy
                    },
                    t,
                )
            });
            let mut v = vm(&id, size, st, status);
            if !sam {
                v.labels.remove(labels::SAM);
            }
            v
        })
}

proptest! {
    #[test]
    fn placement_is_sound(
        vms in prop::collection::vec(arb_vm(), 0..12),
        size in prop::sample::select(Size::ALL.to_vec()),
        now in 0u64..12_000,
        ttl in 1u64..5_000,
        loads in prop::collection::btree_map("v[0-9]", 0usize..10, 0..6),
    ) {
        let vms: Vec<Vm> = vms
            .into_iter()
            .enumerate()
            .map(|(i, mut v)| {
                v.id = format!("v{i}");
                v
            })
            .collect();
        let p = PoolPolicy { idle_ttl_secs: ttl, ..PoolPolicy::default() };
        let expired = p.expired(&vms, now);
        for v in &expired {
            prop_assert_eq!(v.pool_state(), Some(PoolState::Idle));
            prop_assert!(v.idle_since().unwrap_or(0) + ttl <= now);
        }
        let reusable = p.reusable(&vms, size, now);
        for v in &reusable {
            prop_assert!(!expired.iter().any(|e| std::ptr::eq(*e, *v)));
        }
        match p.place(&vms, size, &loads, now) {
            Placement::Create { size: s } => {
                prop_assert_eq!(s, size);
                prop_assert!(reusable.is_empty());
            }
            Placement::ReuseIdle { vm_id } => {
                let v = vms.iter().find(|v| v.id == vm_id).expect("exists");
                prop_assert_eq!(v.size(), Some(size));
                prop_assert_eq!(v.pool_state(), Some(PoolState::Idle));
                prop_assert!(v.idle_since().unwrap_or(0) + ttl > now);
                prop_assert!(usable_status(v) && is_sam(v));
            }
            Placement::Share { vm_id } => {
                let v = vms.iter().find(|v| v.id == vm_id).expect("exists");
                prop_assert_eq!(v.size(), Some(size));
                prop_assert_eq!(v.pool_state(), Some(PoolState::Busy));
                prop_assert!(loads[&vm_id] < p.max_workspaces(size));
            }
        }
    }
}

/// A `[pool]` that would make a new node's enrollment last forever (a leaked user-data a
/// standing key) or expire before any VM boots is refused when the config is read, naming
/// the setting; the bounds themselves load.
#[test]
fn an_enrollment_lifetime_out_of_bounds_is_refused_at_load() {
    for bad in [0u64, 59, 86_401, u64::MAX] {
        let err = toml::from_str::<PoolPolicy>(&format!("enroll_ttl_secs = {bad}"))
            .expect_err("out of range, yet loaded")
            .to_string();
        assert!(err.contains("enroll_ttl_secs"), "{err}");
    }
    for good in [60u64, 3600, 86_400] {
        let p: PoolPolicy = toml::from_str(&format!("enroll_ttl_secs = {good}")).expect("in range");
        assert_eq!(p.enroll_ttl_secs, good);
    }
    let p: PoolPolicy = toml::from_str("idle_ttl_secs = 60").expect("default lifetime");
    assert_eq!(
        p.enroll_ttl_secs,
        sam_protocol::enroll::DEFAULT_ENROLL_TTL_SECS
    );
}
