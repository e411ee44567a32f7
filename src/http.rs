//! HTTP response helpers shared by the listeners (`server/`) and the server API (`api/`), which
//! sit side by side and import nothing from each other.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

/// Every response body: one buffer.
pub type Body = Full<Bytes>;

pub fn json_response(status: u16, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(body).expect("json"),
        )))
        .expect("response")
}

pub fn error_response(status: u16, code: u16, message: &str) -> Response<Body> {
    json_response(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}
