//! Every call gets a tracing span (`rpc`, with its method and, once authenticated, its
//! caller) and its latency and status code go to the metrics. Outermost layer, so calls
//! refused by authentication are counted too.

use crate::metrics::Metrics;
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::codegen::http;
use tracing::Instrument;

#[derive(Debug, Clone)]
pub struct ObserveLayer(pub Metrics);

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, ResponseBody> tower::Service<http::Request<B>> for Observed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // A label per path a client makes up would grow the metrics without bound.
        let path = request.uri().path();
        let method = if crate::auth::is_method(path) {
            path.trim_start_matches('/').to_string()
        } else {
            "unknown".to_string()
        };
        let span = tracing::info_span!("rpc", method = %method, caller = tracing::field::Empty);
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let started = Instant::now();
                let result = inner.call(request).await;
                // An error answered at once carries its status in the headers; a success
                // (and a stream) carries it in the trailers, after this layer is done.
                let code = match &result {
                    Ok(response) => status_name(response.headers().get("grpc-status")),
                    Err(_) => "TRANSPORT_ERROR",
                };
                let elapsed = started.elapsed();
                metrics.observe_rpc(&method, code, elapsed);
                tracing::debug!(code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "served");
                result
            }
            .instrument(span),
        )
    }
}

fn status_name(header: Option<&http::HeaderValue>) -> &'static str {
    let code = header
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .unwrap_or(0);
    code_name(tonic::Code::from_i32(code))
}

/// A status code as the gRPC specification names it.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::status_name;
    use tonic::codegen::http::HeaderValue;

    #[test]
    fn status_codes_are_named_as_grpc_names_them() {
        assert_eq!(status_name(None), "OK");
        assert_eq!(
            status_name(Some(&HeaderValue::from_static("5"))),
            "NOT_FOUND"
        );
        assert_eq!(
            status_name(Some(&HeaderValue::from_static("16"))),
            "UNAUTHENTICATED"
        );
    }
}
