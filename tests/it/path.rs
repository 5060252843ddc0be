//! Only `POST /Service/Method` reaches policy and routing; every other spelling is
//! UNIMPLEMENTED and never reaches the backend.
//!
//! The backend answers an unknown method with UNIMPLEMENTED too, so these tests
//! stop it first: a call forwarded then fails UNAVAILABLE (14), and a 12 can
//! only be the gateway's own.

use std::sync::atomic::Ordering;

use http::Method;

use crate::common::*;

/// Stops the backend and checks that a call the gateway forwards now fails
/// UNAVAILABLE.
async fn backend_gone(h: &mut Harness) {
    h.stop_backend();
    assert_eq!(
        h.raw(Method::POST, "/demo.v1.Echo/Unary")
            .await
            .1
            .as_deref(),
        Some("14")
    );
}

#[tokio::test]
async fn non_canonical_paths_are_unimplemented() {
    let mut h = Harness::start().await;
    // Sanity: the canonical path is served by the same raw client.
    assert_eq!(
        h.raw(Method::POST, "/demo.v1.Echo/Unary")
            .await
            .1
            .as_deref(),
        Some("0")
    );
    let calls = h.echo.calls.load(Ordering::SeqCst);
    backend_gone(&mut h).await;
    for p in [
        "//demo.v1.Echo/Unary",
        "/demo.v1.Echo//Unary",
        "/demo.v1.Echo/Unary/",
        "/demo.v1.Echo/Unary/x",
        "/demo.v1.Echo/../demo.v1.Echo/Unary",
        "/demo.v1.Echo/%55nary",
        "/demo.v1.Echo%2FUnary/x",
        "/demo.v1.Echo/Unary?x=1",
        "/demo.v1.Echo",
        "/",
    ] {
        let (status, grpc) = h.raw(Method::POST, p).await;
        assert_eq!((status, grpc.as_deref()), (200, Some("12")), "{p}");
    }
    let (status, grpc) = h.raw(Method::GET, "/demo.v1.Echo/Unary").await;
    assert_eq!((status, grpc.as_deref()), (200, Some("12")), "GET");
    assert_eq!(
        h.echo.calls.load(Ordering::SeqCst),
        calls,
        "a refused path reached the backend"
    );
}

#[tokio::test]
async fn deny_rule_cannot_be_bypassed_by_path_spelling() {
    // deny-secret matches "*/Secret"; alice-echo would allow /demo.v1.Echo/*.
    let mut h = Harness::start().await;
    backend_gone(&mut h).await;
    assert_eq!(
        h.raw(Method::POST, "/demo.v1.Echo/Secret")
            .await
            .1
            .as_deref(),
        Some("7")
    );
    for p in [
        "/demo.v1.Echo/Secret/",
        "/demo.v1.Echo//Secret",
        "/demo.v1.Echo/Secret?",
        "/demo.v1.Echo/%53ecret",
        // Path parameters (stripped by Servlet containers) and other
        // punctuation a backend's router might read its own way.
        "/demo.v1.Echo/Secret;x=1",
        "/demo.v1.Echo/Secret\\",
        "/demo.v1.Echo/Secret@x",
        "/demo.v1.Echo/Secret,",
    ] {
        assert_eq!(h.raw(Method::POST, p).await.1.as_deref(), Some("12"), "{p}");
    }
}

#[tokio::test]
async fn service_without_route_is_unimplemented() {
    // alice-echo allows /other.v1.Svc/*, but no route names other.v1.Svc.
    let mut h = Harness::start().await;
    backend_gone(&mut h).await;
    assert_eq!(
        h.raw(Method::POST, "/other.v1.Svc/Get").await.1.as_deref(),
        Some("12")
    );
}
