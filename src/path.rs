//! The one accepted shape of a gRPC `:path`: `/Service/Method`.
//!
//! Policy matches on the path string, and backends route on their own parse of it.
//! If the two could disagree (`/svc/M` vs `svc/M`, `//svc/M`, `/svc/../admin/M`,
//! `/svc%2FM`) a deny rule could be bypassed — grpc-go's CVE-2026-33186 was exactly
//! that. So anything not canonical is refused before policy runs.

/// Splits a canonical `/Service/Method` path, or says why it is not one.
///
/// # Errors
/// A short reason, safe to send back to the client.
pub fn split(path: &str) -> Result<(&str, &str), &'static str> {
    let rest = path.strip_prefix('/').ok_or("path must start with '/'")?;
    let (service, method) = rest.split_once('/').ok_or("path must be /Service/Method")?;
    if service.is_empty() || method.is_empty() {
        return Err("path must be /Service/Method with both parts non-empty");
    }
    if method.contains('/') {
        return Err("path must have exactly two segments");
    }
    if path.contains("..") {
        return Err("path must not contain '..'");
    }
    // '%' escapes, a query or fragment, and anything outside visible ASCII would let
    // two spellings name one method.
    if !path
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#'))
    {
        return Err("path must be plain visible ASCII without '%', '?' or '#'");
    }
    Ok((service, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical() {
        assert_eq!(split("/demo.v1.Echo/Unary"), Ok(("demo.v1.Echo", "Unary")));
    }

    #[test]
    fn tricks_are_refused() {
        for p in [
            "demo.v1.Echo/Unary",
            "/demo.v1.Echo",
            "//demo.v1.Echo/Unary",
            "/demo.v1.Echo//Unary",
            "/demo.v1.Echo/Unary/",
            "/demo.v1.Echo/Un/ary",
            "/demo.v1.Echo/../Admin/Unary",
            "/demo.v1.Echo/..",
            "/demo.v1.Echo%2FUnary/X",
            "/demo.v1.Echo/Unary?x=1",
            "/demo.v1.Echo/Unary#x",
            "/demo.v1.Echo/Un ary",
            "/demo.v1.Echo/Unäry",
            "/",
            "",
            "*",
        ] {
            assert!(split(p).is_err(), "{p:?} accepted");
        }
    }
}

/// Middleware that answers UNIMPLEMENTED for anything but a POST to a canonical
/// path, before policy or routing can see it.
#[derive(Clone, Copy, Default)]
pub struct PathCheckLayer;

impl<S> tower::Layer<S> for PathCheckLayer {
    type Service = PathCheck<S>;

    fn layer(&self, inner: S) -> PathCheck<S> {
        PathCheck { inner }
    }
}

#[derive(Clone)]
pub struct PathCheck<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for PathCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<crate::grpc::Body>>,
{
    type Response = http::Response<crate::grpc::Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        futures_util::future::Ready<Result<Self::Response, S::Error>>,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use futures_util::future::{ready, Either};
        let refusal = if req.method() != http::Method::POST {
            Some("gRPC calls are POST requests")
        } else {
            // `path()` drops the query, so check the whole request target.
            let target = req.uri().path_and_query().map_or("", |pq| pq.as_str());
            split(target).err()
        };
        match refusal {
            None => Either::Right(self.inner.call(req)),
            Some(why) => {
                tracing::info!(target: "ipcgate::path", path = req.uri().path(), reason = why, "request refused");
                Either::Left(ready(Ok(crate::grpc::status(
                    crate::grpc::Code::Unimplemented,
                    why,
                ))))
            }
        }
    }
}
