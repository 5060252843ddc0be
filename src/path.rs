//! The one accepted shape of a gRPC `:path`: `/Service/Method`.
//!
//! Policy matches on the path string, and backends route on their own parse of it.
//! If the two could disagree (`/svc/M` vs `svc/M`, `//svc/M`, `/svc/../admin/M`,
//! `/svc%2FM`) a deny rule could be bypassed — grpc-go's CVE-2026-33186 was exactly
//! that. So anything not canonical is refused before policy runs.
//!
//! Canonical also means the characters of IDL names alone (letters, digits,
//! `_`, and `.`, though never `..`), plus `-`: punctuation such as
//! `;` (path parameters, which Servlet containers strip), `\`, `:` or `@`
//! is something some backend's router would read its own way.

/// Bytes a path may hold without a closer look: ASCII letters, digits, `_`
/// and `-`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0u8;
    while c < 128 {
        t[c as usize] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        c += 1;
    }
    t
};

/// Why a path with a byte outside [`PLAIN`] (but `/` and `.`) is refused.
const NOT_PLAIN: &str =
    "path must hold only letters, digits, '_', '-' and '.' (no '%', '?', '#' or other punctuation)";

/// Splits a canonical `/Service/Method` path, or says why it is not one.
///
/// One pass over the bytes: it runs twice on every call (path check and
/// router), and the separate scans it replaced (`split_once`, `contains`
/// twice, a byte check) cost ~520 instructions per path.
///
/// # Errors
/// A short reason, safe to send back to the client.
pub fn split(path: &str) -> Result<(&str, &str), &'static str> {
    let rest = path.strip_prefix('/').ok_or("path must start with '/'")?;
    let (mut slash, mut more, mut dots, mut bad) = (None, false, false, false);
    let mut prev = b'/';
    for (i, &c) in rest.as_bytes().iter().enumerate() {
        if !PLAIN[c as usize] {
            match c {
                b'/' if slash.is_none() => slash = Some(i),
                b'/' => more = true,
                b'.' => dots |= prev == b'.',
                _ => bad = true,
            }
        }
        prev = c;
    }
    let at = slash.ok_or("path must be /Service/Method")?;
    let (service, method) = (&rest[..at], &rest[at + 1..]);
    if service.is_empty() || method.is_empty() {
        return Err("path must be /Service/Method with both parts non-empty");
    }
    if more {
        return Err("path must have exactly two segments");
    }
    if dots {
        return Err("path must not contain '..'");
    }
    // '%' escapes, a query or fragment, and other punctuation would let two
    // spellings name one method, to some backend.
    if bad {
        return Err(NOT_PLAIN);
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

    /// The rules as separate scans, as they were written first.
    fn reference(path: &str) -> Result<(&str, &str), &'static str> {
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
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        {
            return Err(NOT_PLAIN);
        }
        Ok((service, method))
    }

    #[test]
    fn one_pass_agrees_with_the_rules_written_as_separate_scans() {
        // Every path of up to 5 characters from an alphabet of each kind of
        // byte the rules look at, and longer random ones.
        let alphabet = [
            "/", ".", "a", "Z", "0", "_", "-", "%", "?", "#", " ", "\u{e4}", "~", ";", "\u{7f}",
        ];
        let mut paths = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..5 {
            layer = layer
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(layer.iter().cloned());
        }
        let mut r = crate::test_rng::Rng(0x9e37_79b9_7f4a_7c15);
        let mut next = move || r.next();
        // `/seg/seg` of mostly plain bytes, so that many are canonical.
        for _ in 0..20_000 {
            let mut p = String::new();
            for _ in 0..2 {
                p.push('/');
                for _ in 0..next() % 12 {
                    p.push_str(match next() % 100 {
                        0..80 => "a",
                        80..88 => ".",
                        88..92 => "/",
                        _ => alphabet[(next() % alphabet.len() as u64) as usize],
                    });
                }
            }
            paths.push(p);
        }
        for p in &paths {
            assert_eq!(split(p), reference(p), "{p:?}");
        }
        let ok = paths.iter().filter(|p| split(p).is_ok()).count();
        assert!(ok > 1_000, "{ok} canonical paths");
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
            "/demo.v1.Echo/Unary;x=1",
            "/demo.v1.Echo/Unary\\",
            "/demo.v1.Echo:443/Unary",
            "/demo.v1.Echo/Un@ary",
            "/demo.v1.Echo/Un,ary",
            "/demo.v1.Echo/Un=ary",
            "/demo.v1.Echo/Unary~",
            "/demo.v1.Echo/Un!ary",
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
