use sam_provisioner::provider::labels;
use sam_provisioner::{Hetzner, HetznerConfig, PoolState, Provider, ProviderError, Size};

use crate::hetzner_fake::{self, TOKEN};
use crate::{create_spec, fast_timing};

fn provider(base: &str, token: &str) -> Hetzner {
    let cfg = HetznerConfig {
        api: base.to_owned(),
        timing: fast_timing(),
        ..HetznerConfig::default()
    };
    Hetzner::new(token.to_owned(), cfg).expect("provider")
}

#[tokio::test]
async fn create_list_label_delete() {
    let (fake, srv) = hetzner_fake::start().await;
    let p = provider(&srv.base, TOKEN);
    let spec = create_spec(Size::Medium);
    let vm = p.create(&spec).await.expect("create");
    assert_eq!(vm.status, "running");
    assert_eq!(vm.location, "fsn1");
    assert_eq!(vm.machine_type, "cx33");
    assert_eq!(vm.size(), Some(Size::Medium));
    // no node id before the node is enrolled; the enrollment's public id finds the VM
    assert_eq!(vm.node_id(), None);
    assert_eq!(
        vm.labels.get(sam_provisioner::provider::labels::ENROLL),
        Some(&sam_provisioner::provider::node_label(&spec.enrollment))
    );
    assert_eq!(vm.pool_state(), Some(PoolState::Busy));
    assert!(vm.public_ipv4.is_some());
    assert!(vm.created_unix.is_some());

    let listed = p.list().await.expect("list");
    assert_eq!(listed, vec![vm.clone()]);

    let idle = p
        .mark(&vm, PoolState::Idle, 1_700_000_000)
        .await
        .expect("mark");
    assert_eq!(idle.pool_state(), Some(PoolState::Idle));
    assert_eq!(idle.idle_since(), Some(1_700_000_000));
    assert_eq!(idle.labels[labels::SAM], "1");
    let busy = p.mark(&idle, PoolState::Busy, 0).await.expect("mark");
    assert_eq!(busy.idle_since(), None);

    p.delete(&vm.id).await.expect("delete");
    assert_eq!(fake.server_count(), 0);
    assert!(p.list().await.expect("list").is_empty());
    // deleting again is fine
    p.delete(&vm.id).await.expect("delete again");
    srv.assert_clean();
}

#[tokio::test]
async fn falls_back_to_the_next_location() {
    let (fake, srv) = hetzner_fake::start().await;
    fake.inject(|i| i.no_capacity = ["fsn1".to_string()].into());
    let p = provider(&srv.base, TOKEN);
    let vm = p.create(&create_spec(Size::Small)).await.expect("create");
    assert_eq!(vm.location, "nbg1");
    assert_eq!(vm.machine_type, "cx23");
    assert_eq!(srv.count("POST /servers -> 412"), 1);
    srv.assert_clean();
}

#[tokio::test]
async fn no_capacity_anywhere_is_a_clear_error_and_leaks_nothing() {
    let (fake, srv) = hetzner_fake::start().await;
    fake.inject(|i| i.no_capacity = ["fsn1", "nbg1", "hel1"].map(String::from).into());
    let p = provider(&srv.base, TOKEN);
    let err = p
        .create(&create_spec(Size::Large))
        .await
        .expect_err("no capacity");
    assert!(
        matches!(err, ProviderError::NoCapacity { ref tried, .. } if tried.len() == 3),
        "{err}"
    );
    assert!(err.to_string().contains("cx43"), "{err}");
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn invalid_token() {
    let (fake, srv) = hetzner_fake::start().await;
    let p = provider(&srv.base, "wrong");
    let err = p.create(&create_spec(Size::Small)).await.expect_err("401");
    assert!(err.to_string().contains("Hetzner token invalid"), "{err}");
    let err = p.list().await.expect_err("401");
    assert!(matches!(err, ProviderError::InvalidToken { .. }));
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn quota_exceeded() {
    let (fake, srv) = hetzner_fake::start().await;
    fake.inject(|i| i.quota_exceeded = true);
    let p = provider(&srv.base, TOKEN);
    let err = p
        .create(&create_spec(Size::Small))
        .await
        .expect_err("quota");
    assert!(matches!(err, ProviderError::QuotaExceeded { .. }), "{err}");
    assert!(err.to_string().contains("quota exceeded"), "{err}");
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn rate_limit_is_honoured() {
    let (fake, srv) = hetzner_fake::start().await;
    // the fake answers 429 until its 1 s window has passed: a client that does not wait for
    // RateLimit-Reset runs out of retries
    fake.inject(|i| i.rate_limit = 10);
    let p = provider(&srv.base, TOKEN);
    let vms = p.list().await.expect("list after waiting");
    assert!(vms.is_empty());
    assert_eq!(srv.count("GET /servers -> 429"), 1, "{:?}", srv.calls());
    assert_eq!(srv.count("GET /servers -> 200"), 1);
    srv.assert_clean();
}

#[tokio::test]
async fn malformed_json_is_a_clear_error() {
    let (fake, srv) = hetzner_fake::start().await;
    fake.inject(|i| i.malformed = Some("list_servers"));
    let p = provider(&srv.base, TOKEN);
    let err = p.list().await.expect_err("malformed");
    assert!(matches!(err, ProviderError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("malformed response"), "{err}");
    srv.assert_clean();
}

#[tokio::test]
async fn malformed_create_answer_still_leaks_nothing() {
    let (fake, srv) = hetzner_fake::start().await;
    fake.inject(|i| i.malformed = Some("create_server"));
    let p = provider(&srv.base, TOKEN);
    let err = p
        .create(&create_spec(Size::Small))
        .await
        .expect_err("malformed");
    assert!(err.to_string().contains("deleted server"), "{err}");
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn failed_action_deletes_the_server() {
    let (fake, srv) = hetzner_fake::start().await;
    fake.inject(|i| i.fail_create_action = true);
    let p = provider(&srv.base, TOKEN);
    let err = p
        .create(&create_spec(Size::Small))
        .await
        .expect_err("action error");
    let msg = err.to_string();
    assert!(
        msg.contains("boot failed") && msg.contains("was deleted"),
        "{msg}"
    );
    assert_eq!(fake.server_count(), 0);
    srv.assert_clean();
}

#[tokio::test]
async fn oversized_user_data_fails_before_any_request() {
    let (fake, srv) = hetzner_fake::start().await;
    let p = provider(&srv.base, TOKEN);
    let mut spec = create_spec(Size::Small);
    spec.user_data = "#!/bin/sh\n".to_string() + &"x".repeat(40 * 1024);
    let err = p.create(&spec).await.expect_err("too large");
    assert!(
        matches!(err, ProviderError::UserDataTooLarge { .. }),
        "{err}"
    );
    assert!(srv.calls().is_empty());
    assert_eq!(fake.server_count(), 0);
}

#[test]
fn debug_never_shows_the_token() {
    let p = provider("http://127.0.0.1:9/v1", "super-secret-token");
    assert!(!format!("{p:?}").contains("super-secret-token"));
}
