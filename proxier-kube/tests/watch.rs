//! The watcher source against an in-process HTTP server that speaks the
//! real list/watch protocol: JSON lists, chunked watch streams of
//! newline-delimited events, bookmarks, and a `410 Gone` (expired resource
//! version) that forces a relist, fed with real object JSON.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use proxier_core::{FakeProxier, IpFamily};
use proxier_kube::KubeSource;
use serde_json::{Value, json};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Scripted responses per resource path: lists and watch streams, used in
/// order (the last one repeats); a watch stream that does not end with a
/// 410 stays open.
#[derive(Default)]
struct Script {
    lists: VecDeque<Value>,
    watches: VecDeque<Vec<Value>>,
    requests: Vec<String>,
}

type Server = Arc<Mutex<HashMap<&'static str, Script>>>;

fn route(path: &str) -> Option<&'static str> {
    match path {
        "/api/v1/services" => Some("services"),
        "/apis/discovery.k8s.io/v1/endpointslices" => Some("endpointslices"),
        "/api/v1/nodes" => Some("nodes"),
        _ => None,
    }
}

async fn handle(
    server: Server,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let Some(res) = route(&path) else {
        let b = Body::new(http_body_util::Full::new(Bytes::from("{}")).map_err(|e| match e {}));
        return Ok(Response::builder().status(404).body(b).unwrap());
    };
    let mut s = server.lock().unwrap();
    let script = s.get_mut(res).unwrap();
    script.requests.push(format!("{path}?{query}"));
    if query.contains("watch=true") {
        let events = if script.watches.len() > 1 {
            script.watches.pop_front().unwrap()
        } else {
            script.watches.front().cloned().unwrap_or_default()
        };
        let ends = events.last().is_some_and(|e| e["type"] == "ERROR");
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = events
            .into_iter()
            .map(|e| Ok(Frame::data(Bytes::from(format!("{e}\n")))))
            .collect();
        let stream = futures::stream::iter(frames);
        let body = if ends {
            Body::new(StreamBody::new(stream))
        } else {
            Body::new(StreamBody::new(stream.chain(futures::stream::pending())))
        };
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(body)
            .unwrap());
    }
    let list = if script.lists.len() > 1 {
        script.lists.pop_front().unwrap()
    } else {
        script.lists.front().cloned().unwrap()
    };
    let body =
        Body::new(http_body_util::Full::new(Bytes::from(list.to_string())).map_err(|e| match e {}));
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .unwrap())
}

fn svc(name: &str, ip: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": rv, "uid": format!("uid-{name}")},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

fn slice(name: &str, svc: &str, ips: &[&str], rv: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": rv, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-1"})).collect::<Vec<_>>()})
}

fn list(kind: &str, api: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api, "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})
}

fn ev(t: &str, o: Value) -> Value {
    json!({"type": t, "object": o})
}

fn gone() -> Value {
    ev(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 1 (5)", "reason": "Expired", "code": 410}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_watches_bookmarks_and_relists_after_410() {
    let server: Server = Arc::default();
    {
        let mut s = server.lock().unwrap();
        // Services: list {a}; watch adds b, bookmarks, then expires;
        // relist {b} (a was deleted while the watch was down); then quiet.
        s.insert("services", Script {
            lists: VecDeque::from([
                list("ServiceList", "v1", "1", vec![svc("a", "10.96.0.1", "1")]),
                list("ServiceList", "v1", "7", vec![svc("b", "10.96.0.2", "3")]),
            ]),
            watches: VecDeque::from([
                vec![
                    ev("ADDED", svc("b", "10.96.0.2", "3")),
                    ev("BOOKMARK", json!({"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "5"}})),
                    gone(),
                ],
                vec![],
            ]),
            requests: vec![],
        });
        s.insert(
            "endpointslices",
            Script {
                lists: VecDeque::from([list(
                    "EndpointSliceList",
                    "discovery.k8s.io/v1",
                    "1",
                    vec![slice("a-1", "a", &["10.0.0.1"], "1")],
                )]),
                watches: VecDeque::from([
                    vec![
                        ev("ADDED", slice("b-1", "b", &["10.0.0.2", "10.0.0.3"], "4")),
                        ev("MODIFIED", slice("b-1", "b", &["10.0.0.2"], "6")),
                        ev("DELETED", slice("a-1", "a", &["10.0.0.1"], "8")),
                    ],
                    vec![],
                ]),
                requests: vec![],
            },
        );
        s.insert("nodes", Script {
            lists: VecDeque::from([list("NodeList", "v1", "1", vec![json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "node-1", "resourceVersion": "1", "labels": {"topology.kubernetes.io/zone": "z1"}}})])]),
            watches: VecDeque::from([vec![]]),
            requests: vec![],
        });
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = server.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let srv = srv.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(srv.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let fake = FakeProxier::new();
    let (handle, runner) = fake.spawn_runner(IpFamily::V4, "node-1", Duration::from_millis(10));
    let source = tokio::spawn(KubeSource::new(client, "node-1").run(handle.clone()));

    // The end state: only b, with one endpoint, zone from the node.
    let mut ok = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let log = fake.log.lock().unwrap();
        if let Some(last) = log.syncs.last() {
            let names: Vec<String> = last
                .snapshot
                .services
                .keys()
                .map(|k| k.service.name.to_string())
                .collect();
            if names == ["b"]
                && last.snapshot.endpoint_count() == 1
                && last.snapshot.node.zone.as_deref() == Some("z1")
            {
                ok = true;
                break;
            }
        }
    }
    let s = server.lock().unwrap();
    let reqs = &s["services"].requests;
    assert!(
        ok,
        "never converged; service requests: {reqs:#?}; syncs: {:?}",
        fake.log
            .lock()
            .unwrap()
            .syncs
            .iter()
            .map(|r| r.snapshot.services.len())
            .collect::<Vec<_>>()
    );
    // kube-proxy's selector reached the server, and the 410 caused a relist.
    assert!(reqs.iter().all(|r| r.contains("labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless")), "{reqs:#?}");
    let lists = reqs.iter().filter(|r| !r.contains("watch=true")).count();
    assert!(lists >= 2, "no relist after 410: {reqs:#?}");
    assert!(
        s["nodes"].requests[0].contains("fieldSelector=metadata.name%3Dnode-1"),
        "{:?}",
        s["nodes"].requests
    );
    // Nothing synced before both Services and EndpointSlices were listed.
    assert!(fake.log.lock().unwrap().syncs.first().unwrap().full);
    source.abort();
    runner.abort();
}
