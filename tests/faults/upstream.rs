//! Upstream faults: refused, closed or reset mid-answer, silent, byte by
//! byte, half-closed, garbage. Each answers the client clearly and leaks nothing.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canopy_testkit::*;

use crate::rig::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusing_connections_retries_then_502_and_leaks_nothing() {
    let r = rig().await;
    let good = Fake::spawn(Act::Answer).await;
    // first backend refuses: every request lands on the second one
    register_oak(&r.c, &r.juniper, &[dead_addr(), good.addr]).await;
    for _ in 0..REPEAT {
        let (code, rel, body) = status_of(&get_oak(&r.c, "/shop-api/x").await);
        assert_eq!((code, rel.as_str(), body.as_str()), (200, "oak", "ok"));
    }
    assert_eq!(good.complete.load(Ordering::SeqCst), REPEAT);
    // every backend refuses: JSON 502 naming release and service
    register_oak(&r.c, &r.juniper, &[dead_addr(), dead_addr()]).await;
    for _ in 0..REPEAT {
        let (code, rel, body) = status_of(&get_oak(&r.c, "/shop-api/x").await);
        assert_eq!((code, rel.as_str()), (502, "oak"));
        assert_eq!(body, r#"{"error":"upstream unavailable","release":"oak","service":"server"}"#);
        served_normally(&r.c).await;
    }
    no_leaks(&r.c, r.base, "refused connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_before_answering_is_a_502() {
    upstream_fault(Act::CloseBeforeResponse, REPEAT, |out| {
        let (code, rel, body) = status_of(out);
        assert_eq!((code, rel.as_str()), (502, "oak"), "{body}");
        assert_eq!(body, r#"{"error":"upstream unavailable","release":"oak","service":"server"}"#);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_response_truncates_visibly() {
    // headers were already sent: the client must see a broken body, never a short "complete" one
    upstream_fault(Act::ResetMidBody, REPEAT, |out| {
        let (code, _, body) = out.as_ref().expect("headers arrive");
        assert_eq!(*code, 200);
        assert!(body.is_err(), "truncated body delivered as complete: {} bytes", body.as_ref().unwrap().len());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_chunked_response_is_not_terminated() {
    upstream_fault(Act::ResetMidChunked, REPEAT, |out| {
        let (code, _, body) = out.as_ref().expect("headers arrive");
        assert_eq!(*code, 200);
        assert!(body.is_err(), "chunked body was terminated cleanly after an upstream reset: {:?}", body);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_after_headers_truncates_visibly() {
    upstream_fault(Act::CloseAfterHeaders, REPEAT, |out| {
        match out {
            // headers forwarded, body missing: the client sees the truncation
            Ok((200, _, body)) => assert!(body.is_err(), "empty body delivered as complete"),
            // or canopy noticed before forwarding anything
            Ok((code, _, _)) => assert_eq!(*code, 502),
            Err(e) => panic!("{e}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_never_answers_is_a_504_after_the_timeout() {
    // config: upstream-timeout = "2s"
    let started = Instant::now();
    let r = upstream_fault(Act::Silent, 1, |out| {
        let (code, rel, body) = status_of(out);
        assert_eq!((code, rel.as_str()), (504, "oak"), "{body}");
        assert_eq!(body, r#"{"error":"upstream timed out","release":"oak","service":"server"}"#);
    })
    .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "{took:?}");
    let metrics = client().get(r.c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"canopy_upstream_errors_total{release="oak",service="server",kind="timeout"} 1"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answering_byte_by_byte_is_passed_through_whole() {
    upstream_fault(Act::Drip, 2, |out| {
        let (code, rel, body) = status_of(out);
        assert_eq!((code, rel.as_str(), body.as_str()), (200, "oak", "abcdefghijklmnopqrstuvwxyz"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_half_close_after_a_close_delimited_body_is_complete() {
    upstream_fault(Act::HalfCloseAfterBody, REPEAT, |out| {
        let (code, rel, body) = status_of(out);
        assert_eq!((code, rel.as_str(), body.as_str()), (200, "oak", "close-delimited body"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_half_close_without_an_answer_is_a_502() {
    upstream_fault(Act::HalfCloseEarly, REPEAT, |out| {
        let (code, rel, body) = status_of(out);
        assert_eq!((code, rel.as_str()), (502, "oak"), "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_speaking_garbage_is_a_502() {
    upstream_fault(Act::Garbage, REPEAT, |out| {
        let (code, rel, body) = status_of(out);
        assert_eq!((code, rel.as_str()), (502, "oak"), "{body}");
    })
    .await;
}
