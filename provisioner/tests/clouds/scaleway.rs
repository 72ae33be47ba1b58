use sam_provisioner::{PoolState, Provider, ProviderError, Scaleway, ScalewayConfig, Size};

use crate::scaleway_fake::{self, PROJECT, TOKEN};
use crate::{create_spec, fast_timing};

fn provider(base: &str, token: &str) -> Scaleway {
    let cfg = ScalewayConfig {
        api: base.to_owned(),
        project_id: Some(PROJECT.into()),
        timing: fast_timing(),
        ..ScalewayConfig::default()
    };
    Scaleway::new(token.to_owned(), cfg).expect("provider")
}

#[tokio::test]
async fn create_list_label_delete() {
    let (fake, srv) = scaleway_fake::start().await;
    let p = provider(&srv.base, TOKEN);
    let spec = create_spec(Size::Small);
    let vm = p.create(&spec).await.expect("create");
    assert_eq!(vm.status, "running");
    assert_eq!(vm.location, "fr-par-1");
    assert_eq!(vm.machine_type, "DEV1-M");
    assert!(vm.id.starts_with("fr-par-1/"));
    // no node id before the node is enrolled; the enrollment's public id finds the VM
    assert_eq!(vm.node_id(), None);
    assert_eq!(
        vm.labels.get(sam_provisioner::provider::labels::ENROLL),
        Some(&sam_provisioner::provider::node_label(&spec.enrollment))
    );
    assert_eq!(vm.size(), Some(Size::Small));
    assert_eq!(
        vm.public_ipv4.map(|i| i.to_string()).as_deref(),
        Some("198.51.100.7")
    );
    {
        let st = fake.state.lock().expect("state");
        assert_eq!(st.user_data.values().next(), Some(&spec.user_data));
    }
    let listed = p.list().await.expect("list");
    assert_eq!(listed, vec![vm.clone()]);

    let idle = p
        .mark(&vm, PoolState::Idle, 1_700_000_000)
        .await
        .expect("mark");
    assert_eq!(idle.pool_state(), Some(PoolState::Idle));
    assert_eq!(idle.idle_since(), Some(1_700_000_000));

    p.delete(&vm.id).await.expect("delete");
    assert_eq!(fake.server_count(), 0);
    p.delete(&vm.id).await.expect("delete again");
    assert_eq!(
        srv.count("/action -> 200"),
        2,
        "poweron + terminate: {:?}",
        srv.calls()
    );
    srv.assert_clean();
}

#[tokio::test]
async fn falls_back_to_the_next_zone_and_reports_no_capacity() {
    let (fake, srv) = scaleway_fake::start().await;
    fake.inject(|i| i.out_of_stock = ["fr-par-1".to_string()].into());
    let p = provider(&srv.base, TOKEN);
    let vm = p.create(&create_spec(Size::Large)).await.expect("create");
    assert_eq!(vm.location, "fr-par-2");
    assert_eq!(vm.machine_type, "GP1-S");
    p.delete(&vm.id).await.expect("delete");

    fake.inject(|i| {
        i.out_of_stock = ["fr-par-1", "fr-par-2", "nl-ams-1"]
            .map(String::from)
            .into()
    });
    let err = p.create(&create_spec(Size::Small)).await.expect_err("none");
    assert!(matches!(err, ProviderError::NoCapacity { .. }), "{err}");
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn invalid_token_quota_and_malformed() {
    let (fake, srv) = scaleway_fake::start().await;
    let err = provider(&srv.base, "nope").list().await.expect_err("401");
    assert!(err.to_string().contains("Scaleway token invalid"), "{err}");

    let p = provider(&srv.base, TOKEN);
    fake.inject(|i| i.quota_exceeded = true);
    let err = p
        .create(&create_spec(Size::Small))
        .await
        .expect_err("quota");
    assert!(matches!(err, ProviderError::QuotaExceeded { .. }), "{err}");
    fake.inject(|i| i.quota_exceeded = false);

    fake.inject(|i| i.malformed = Some("ListServers"));
    let err = p.list().await.expect_err("malformed");
    assert!(matches!(err, ProviderError::Malformed { .. }), "{err}");
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn rate_limit_is_honoured() {
    let (fake, srv) = scaleway_fake::start().await;
    fake.inject(|i| i.rate_limit = 2);
    let p = provider(&srv.base, TOKEN);
    assert!(p.list().await.expect("list").is_empty());
    assert_eq!(srv.count("-> 429"), 2);
    srv.assert_clean();
}

#[tokio::test]
async fn failed_poweron_or_never_running_deletes_the_server() {
    let (fake, srv) = scaleway_fake::start().await;
    let p = provider(&srv.base, TOKEN);
    fake.inject(|i| i.fail_poweron = true);
    let err = p
        .create(&create_spec(Size::Small))
        .await
        .expect_err("poweron");
    assert!(err.to_string().contains("was deleted"), "{err}");
    assert_eq!(fake.server_count(), 0);

    fake.inject(|i| {
        i.fail_poweron = false;
        i.stuck_starting = true;
    });
    let err = p
        .create(&create_spec(Size::Small))
        .await
        .expect_err("timeout");
    let msg = err.to_string();
    assert!(
        msg.contains("not running within") && msg.contains("was deleted"),
        "{msg}"
    );
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn oversized_user_data_fails_before_any_request() {
    let (_fake, srv) = scaleway_fake::start().await;
    let p = provider(&srv.base, TOKEN);
    let mut spec = create_spec(Size::Small);
    spec.user_data = "x".repeat(33 * 1024);
    let err = p.create(&spec).await.expect_err("too large");
    assert!(
        matches!(err, ProviderError::UserDataTooLarge { .. }),
        "{err}"
    );
    assert!(srv.calls().is_empty());
}

#[test]
fn needs_a_project() {
    let cfg = ScalewayConfig {
        project_id: None,
        ..ScalewayConfig::default()
    };
    let err = Scaleway::new("t".into(), cfg).expect_err("no project");
    assert!(err.to_string().contains("SCW_DEFAULT_PROJECT_ID"), "{err}");
}
