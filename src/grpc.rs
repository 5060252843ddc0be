//! The response body the gateway serves, and the gRPC errors it makes itself.
//!
//! Every refusal is a trailers-only gRPC response (HTTP 200, `grpc-status` in the one
//! HEADERS frame): a plain HTTP 4xx reaches gRPC clients as INTERNAL, hiding the
//! real reason.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};

/// gRPC status codes the gateway itself answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    PermissionDenied = 7,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Code::Cancelled => "1",
            Code::Unknown => "2",
            Code::PermissionDenied => "7",
            Code::Unimplemented => "12",
            Code::Internal => "13",
            Code::Unavailable => "14",
        })
    }
}

/// Body of every response the gateway sends: the backend's body passed through
/// untouched, or nothing (trailers-only answers).
pub enum Body {
    Upstream {
        body: h2::RecvStream,
        /// The rest of the client's request body on its way to the backend:
        /// polled with the response, so a call needs no task of its own.
        request: Option<crate::proxy::Pump>,
        _in_flight: Option<InFlight>,
    },
    Empty,
    /// The relay's data path (`crate::relay`): the call goes on to a backend;
    /// the request head is as the middleware left it. Never sent as a body.
    Forward(Box<Forward>),
}

/// A call the middleware let through, for the relay to forward.
pub struct Forward {
    /// The router's index of the backend.
    pub backend: usize,
    pub head: http::request::Parts,
    /// Fields written after the head's own (see `relay::Decision::Forward`).
    pub added: crate::relay::Added,
}

impl Body {
    /// Moves the client's request body on towards the backend. The server polls
    /// this whether or not its client has room for more of the response, so a
    /// client that is slow to read never stalls what it sends.
    pub fn poll_request(&mut self, cx: &mut Context<'_>) {
        if let Body::Upstream { request, .. } = self {
            if request.as_mut().is_some_and(|p| p.poll(cx).is_ready()) {
                *request = None;
            }
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = h2::Error;

    /// Data is handed out with its flow-control window already released: the
    /// caller moves it on at once, and holds the next frame back until the
    /// receiving side has room (the same contract as hyper's `Incoming`).
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match self.get_mut() {
            Body::Upstream { body, .. } => match body.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Only fails when the stream is already gone; the next
                    // poll reports that.
                    let _ = body.flow_control().release_capacity(data.len());
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => match body.poll_trailers(cx) {
                    Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Poll::Ready(Ok(None)) => Poll::Ready(None),
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Pending => Poll::Pending,
                },
                Poll::Pending => Poll::Pending,
            },
            Body::Empty | Body::Forward(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Upstream { body, .. } => body.is_end_stream(),
            Body::Empty | Body::Forward(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Upstream { .. } => SizeHint::default(),
            Body::Empty | Body::Forward(_) => SizeHint::with_exact(0),
        }
    }
}

/// Counts a call as in flight on a backend connection until its response body is
/// dropped, which is how the pool knows when to open another connection.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A trailers-only gRPC error response. `message` must be printable ASCII (it is
/// our own text, never the client's); anything else is dropped rather than sent
/// as an invalid header.
pub fn status(code: Code, message: &str) -> Response<Body> {
    let mut resp = Response::new(Body::Empty);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", code.header());
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

/// grpc-message is percent-encoded per the gRPC HTTP/2 spec.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_trailers_only() {
        let r = status(Code::PermissionDenied, "denied: 50% of \"x\"\n");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(r.headers()["grpc-message"], "denied: 50%25 of \"x\"%0A");
        assert!(r.body().is_end_stream());
    }
}
