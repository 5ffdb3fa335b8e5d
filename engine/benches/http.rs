//! Outbound HTTP: what Cairn's request hook costs per request.
//!
//! A local JSON API on 127.0.0.1 serves 100 small pages, each naming the next.
//! - `task-pages/100`: the `http-pages` task fetches all 100 through the
//!   sandbox (grant check, resolution skipped for an IP, address check, a new
//!   connection per request, counted bodies), in one attempt;
//! - `host-plain/100`: the host itself fetches the same 100 pages the same
//!   way (a new hyper HTTP/1 connection per request, body read whole), with
//!   no sandbox and no checks.
//!
//! (task − host) / 100 is the per-request overhead of the sandboxed path:
//! the hook, the wasi:http resources, the guest's own JSON decoding, plus
//! one instantiation spread over the 100 requests.
//!
//! Needs the guests built first:
//!   cargo build --release --target wasm32-wasip2 --manifest-path guest-examples/Cargo.toml
//! Run: cargo bench -p cairn-engine --bench http

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use cairn::sandbox::http_grant::HttpGrant;
use cairn::sandbox::{Grants, Limits, RunRequest, Sandbox, SandboxConfig};
use cairn::store::DirArtifactStore;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use serde_json::json;

const PAGES: u32 = 100;

#[derive(serde::Deserialize)]
struct Page {
    page: u32,
}

async fn page(Query(q): Query<Page>) -> axum::Json<serde_json::Value> {
    let next = (q.page < PAGES).then(|| format!("/items?page={}", q.page + 1));
    axum::Json(json!({ "items": [{ "id": q.page }], "next": next }))
}

fn guest(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build the guest examples first", path.display()))
}

/// One plain GET from the host, on a fresh connection, body read whole.
async fn host_get(addr: SocketAddr, path: &str) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

fn requests(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(
        async move { axum::serve(listener, Router::new().route("/items", get(page))).await },
    );

    let artifacts = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(
        SandboxConfig::for_this_machine(),
        Arc::new(DirArtifactStore::open(artifacts.path()).unwrap()),
    )
    .unwrap();
    let pages = sandbox.load(&guest("http_pages")).unwrap();
    let grants = Grants {
        http: vec![HttpGrant::parse(&format!("http://{addr}"), None).unwrap()],
        ..Grants::default()
    };
    let input =
        json!({ "url": format!("http://{addr}/items?page=1"), "max_pages": PAGES }).to_string();

    let mut group = c.benchmark_group("http");
    group.sample_size(20);
    group.bench_function(format!("task-pages/{PAGES}"), |b| {
        b.to_async(&runtime).iter(|| async {
            let request = RunRequest {
                input: input.as_bytes(),
                args: &[],
                limits: Limits::default(),
                grants: &grants,
                secrets: &Default::default(),
                observer: None,
                tape: None,
            };
            let attempt = sandbox.run(&pages, request).await.unwrap();
            assert!(attempt.result.is_ok(), "{:?}", attempt.result);
        })
    });
    group.bench_function(format!("host-plain/{PAGES}"), |b| {
        b.to_async(&runtime).iter(|| async {
            let mut next = Some("/items?page=1".to_owned());
            let mut fetched = 0;
            while let Some(path) = next.take() {
                let body = host_get(addr, &path).await;
                let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
                next = page["next"].as_str().map(str::to_owned);
                fetched += 1;
            }
            assert_eq!(fetched, PAGES);
        })
    });
    group.finish();
}

criterion_group!(benches, requests);
criterion_main!(benches);
