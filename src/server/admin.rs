//! The admin listener (separate port, loopback by default): `/metrics` in Prometheus text,
//! `/health/live` (the process answers) and `/health/ready` (serving: not draining, broker up).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::hub::Node;
use crate::metrics::metrics;

pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(node.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: u16, body: &'static str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("response")
    };
    Ok(match req.uri().path() {
        "/metrics" => {
            metrics()
                .scheduled_pending
                .set(node.broker.scheduled_pending() as i64);
            metrics().broker_up.set(node.broker.is_up() as i64);
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(metrics().render())))
                .expect("response")
        }
        "/health/live" => text(200, "ok\n"),
        "/health/ready" => {
            if node.is_draining() {
                text(503, "draining\n")
            } else if !node.broker.is_up() {
                text(503, "broker unavailable\n")
            } else {
                text(200, "ready\n")
            }
        }
        _ => text(404, "not found\n"),
    })
}
