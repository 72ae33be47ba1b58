//! The validator itself: spec-breaking traffic must fail.

use serde_json::json;

use crate::hetzner_fake;
use crate::openapi::Spec;

fn create_req(body: serde_json::Value) -> Result<(), Vec<String>> {
    hetzner_fake::spec()
        .check_request(
            "POST",
            "/servers",
            &[],
            Some("application/json"),
            &serde_json::to_vec(&body).expect("json"),
            &[],
        )
        .map(|_| ())
}

#[test]
fn a_valid_create_passes() {
    create_req(
        json!({"name": "a", "server_type": "cx23", "image": "debian-13",
        "location": "fsn1", "labels": {"sam": "1"}, "user_data": "#!/bin/sh\n"}),
    )
    .expect("valid");
}

#[test]
fn create_without_server_type_fails() {
    let errs = create_req(json!({"name": "a", "image": "debian-13"})).expect_err("invalid");
    assert!(errs.iter().any(|e| e.contains("server_type")), "{errs:?}");
}

#[test]
fn wrong_types_fail() {
    let errs = create_req(json!({"name": "a", "server_type": 23, "image": "debian-13"}))
        .expect_err("invalid");
    assert!(
        errs.iter()
            .any(|e| e.contains("server_type: expected string")),
        "{errs:?}"
    );
    let errs = create_req(json!({"name": "a", "server_type": "cx23", "image": "d",
        "labels": {"sam": 1}}))
    .expect_err("invalid");
    assert!(errs.iter().any(|e| e.contains("labels.sam")), "{errs:?}");
}

#[test]
fn bad_params_content_type_and_unknown_operations_fail() {
    let spec = hetzner_fake::spec();
    let q = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    assert!(
        spec.check_request(
            "GET",
            "/servers",
            &q("label_selector", "sam=1"),
            None,
            b"",
            &[]
        )
        .is_ok()
    );
    assert!(
        spec.check_request("GET", "/servers", &q("page", "two"), None, b"", &[])
            .is_err()
    );
    assert!(
        spec.check_request("GET", "/servers", &q("bogus", "1"), None, b"", &[])
            .is_err()
    );
    assert!(
        spec.check_request("GET", "/servers", &q("sort", "nope"), None, b"", &[])
            .is_err()
    );
    assert!(
        spec.check_request("GET", "/servers/abc", &[], None, b"", &[])
            .is_err()
    );
    assert!(
        spec.check_request("GET", "/servers/0", &[], None, b"", &[])
            .is_err(),
        "minimum 1"
    );
    assert!(
        spec.check_request("PATCH", "/servers/1", &[], None, b"", &[])
            .is_err()
    );
    assert!(
        spec.check_request("POST", "/servers", &[], Some("text/plain"), b"x", &[])
            .is_err()
    );
    assert!(
        spec.check_request("POST", "/servers", &[], Some("application/json"), b"{", &[])
            .is_err()
    );
    assert!(
        spec.check_request("GET", "/servers", &[], None, b"{}", &[])
            .is_err(),
        "GET has no body"
    );
}

#[test]
fn bad_responses_fail() {
    let spec = hetzner_fake::spec();
    let m = spec
        .check_request("GET", "/actions/5", &[], None, b"", &[])
        .expect("op");
    let good = json!({"action": {"id": 5, "command": "c", "status": "success", "progress": 100,
        "started": "2025-01-01T00:00:00Z", "finished": null, "resources": [], "error": null}});
    let ok = spec
        .check_response(
            &m,
            200,
            Some("application/json"),
            &serde_json::to_vec(&good).expect("json"),
        )
        .expect("declared");
    assert!(ok.is_empty(), "{ok:?}");
    let mut bad = good.clone();
    bad["action"]["status"] = json!("done");
    bad["action"]["error"] = json!({"code": "x"});
    let errs = spec
        .check_response(
            &m,
            200,
            Some("application/json"),
            &serde_json::to_vec(&bad).expect("json"),
        )
        .expect("declared");
    assert!(errs.iter().any(|e| e.contains("not one of")), "{errs:?}");
    assert!(
        errs.iter().any(|e| e.contains("message missing")),
        "{errs:?}"
    );
    let errs = spec
        .check_response(&m, 404, Some("application/json"), b"{}")
        .expect("4XX");
    assert!(errs.iter().any(|e| e.contains("error missing")), "{errs:?}");
    assert!(
        !spec
            .check_response(&m, 200, Some("application/json"), b"nope")
            .expect("d")
            .is_empty()
    );
}

#[test]
fn keywords_of_3_0_and_3_1() {
    let doc = json!({"openapi": "3.1.0", "paths": {}, "components": {"schemas": {
        "T": {"type": "object", "additionalProperties": false, "required": ["a"],
              "properties": {"a": {"type": ["string", "null"]}, "b": {"$ref": "#/components/schemas/E"},
                             "c": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
                             "d": {"type": "string", "nullable": true, "format": "date-time"},
                             "e": {"allOf": [{"type": "integer", "minimum": 1}, {"maximum": 3}]},
                             "f": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]}}},
        "E": {"type": "string", "enum": ["x", "y"]}}}});
    let spec = Spec::from_value("t".into(), doc);
    let s = json!({"$ref": "#/components/schemas/T"});
    assert!(
        spec.validate(
            &json!({"a": null, "b": "x", "c": 1.5, "d": null, "e": 2, "f": [1]}),
            &s
        )
        .is_empty()
    );
    let bad = [
        json!({"b": "x"}),
        json!({"a": 1}),
        json!({"a": "s", "b": "z"}),
        json!({"a": "s", "zz": 1}),
        json!({"a": "s", "c": 1}),
        json!({"a": "s", "d": "yesterday"}),
        json!({"a": "s", "e": 4}),
        json!({"a": "s", "e": 0}),
        json!({"a": "s", "f": ["x"]}),
        json!({"a": "s", "f": true}),
    ];
    for v in bad {
        assert!(!spec.validate(&v, &s).is_empty(), "{v} should fail");
    }
}

#[test]
fn scaleway_requests_are_checked_too() {
    let spec = crate::scaleway_fake::instance_spec();
    let path = "/instance/v1/zones/fr-par-1/servers";
    let body = |v: serde_json::Value| serde_json::to_vec(&v).expect("json");
    assert!(
        spec.check_request(
            "POST",
            path,
            &[],
            Some("application/json"),
            &body(json!({"name": "a", "commercial_type": "DEV1-M", "tags": ["sam=1"]})),
            &[]
        )
        .is_ok()
    );
    let errs = spec
        .check_request(
            "POST",
            path,
            &[],
            Some("application/json"),
            &body(json!({"name": "a"})),
            &[],
        )
        .err()
        .expect("missing commercial_type");
    assert!(
        errs.iter().any(|e| e.contains("commercial_type")),
        "{errs:?}"
    );
    assert!(
        spec.check_request(
            "POST",
            path,
            &[],
            Some("application/json"),
            &body(json!({"name": "a", "commercial_type": "DEV1-M", "tags": "sam=1"})),
            &[]
        )
        .is_err()
    );
    assert!(
        spec.check_request(
            "GET",
            "/instance/v1/zones/mars-1/servers",
            &[],
            None,
            b"",
            &[]
        )
        .is_err()
    );
    let ud = "/instance/v1/zones/fr-par-1/servers/x/user_data/cloud-init";
    assert!(
        spec.check_request("PATCH", ud, &[], Some("text/plain"), b"#!/bin/sh\n", &[])
            .is_ok()
    );
    let m = spec
        .check_request(
            "GET",
            "/instance/v1/zones/fr-par-1/servers/x",
            &[],
            None,
            b"",
            &[],
        )
        .expect("op");
    let errs = spec
        .check_response(
            &m,
            200,
            Some("application/json"),
            &body(json!({"server": {"id": "x", "state": "exploded", "tags": [1]}})),
        )
        .expect("declared");
    assert!(errs.len() >= 2, "{errs:?}");
    assert!(
        spec.check_response(&m, 404, Some("application/json"), b"{}")
            .is_err(),
        "undeclared"
    );
    let market = crate::scaleway_fake::marketplace_spec();
    let q = vec![
        ("zone".to_string(), "fr-par-1".to_string()),
        ("image_label".to_string(), "debian_trixie".to_string()),
    ];
    assert!(
        market
            .check_request("GET", "/marketplace/v2/local-images", &q, None, b"", &[])
            .is_err()
    );
    assert!(
        market
            .check_request(
                "GET",
                "/marketplace/v2/local-images",
                &q,
                None,
                b"",
                &["image_label"]
            )
            .is_ok()
    );
    assert!(
        market
            .check_request(
                "GET",
                "/marketplace/v2/local-images",
                &[],
                None,
                b"",
                &["image_label"]
            )
            .is_err(),
        "zone is required"
    );
}
