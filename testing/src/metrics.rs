//! Reading a coordinator's Prometheus metrics in a test.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` from the metrics port over plain HTTP/1.1; the whole response.
pub async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the metrics port answers");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample whose line starts with `prefix` (name and labels).
pub fn sample(metrics: &str, prefix: &str) -> f64 {
    sample_or_none(metrics, prefix).unwrap_or_else(|| panic!("no sample {prefix} in:\n{metrics}"))
}

/// The value of the sample whose line starts with `prefix`, if there is one.
pub fn sample_or_none(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
