//! One write per wake-up instead of one per frame batch.
//!
//! h2 flushes after every DATA frame it queues (it keeps one data frame in
//! flight), so a unary response (HEADERS + DATA, then trailers) went out as two
//! writes, two TLS records and two wake-ups of the peer, and so did each request
//! to the backend. Under this layer h2's writes land in a buffer, its flushes are
//! no-ops, and the task that owns the connection sends the lot once per poll
//! through [`Flusher`]. Writes of a bulk size go straight through (after what is
//! buffered), so streaming data is never copied here.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes at least this large bypass the buffer; smaller ones are gathered up
/// to it.
const BULK: usize = 8 << 10;
/// Buffer capacity kept between polls (enough for a unary call's frames).
const KEEP: usize = 1 << 10;

struct State<T> {
    io: T,
    buf: Vec<u8>,
    /// A failed deferred write: reported to h2 on its next read or write, so it
    /// fails the connection instead of waiting for answers that were never sent.
    failed: Option<io::ErrorKind>,
}

impl<T: AsyncWrite + Unpin> State<T> {
    /// Writes out everything buffered.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sent = 0;
        while sent < self.buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.buf[sent..]) {
                Poll::Ready(Ok(0)) => {
                    self.buf.drain(..sent);
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => {
                    self.buf.drain(..sent);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    self.buf.drain(..sent);
                    return Poll::Pending;
                }
            }
        }
        self.buf.clear();
        Poll::Ready(Ok(()))
    }
}

impl<T> State<T> {
    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(io::Error::new(kind, "an earlier write failed")),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connection's I/O as h2 sees it.
pub struct Coalesce<T>(Arc<Mutex<State<T>>>);

/// The owner's handle: [`Flusher::poll_flush`] at the end of every poll of the
/// connection.
pub struct Flusher<T>(Arc<Mutex<State<T>>>);

pub fn new<T>(io: T) -> (Coalesce<T>, Flusher<T>) {
    let s = Arc::new(Mutex::new(State {
        io,
        buf: Vec::new(),
        failed: None,
    }));
    (Coalesce(s.clone()), Flusher(s))
}

impl<T: AsyncWrite + Unpin> Flusher<T> {
    /// Sends what the connection wrote since the last call. A failure is kept
    /// and handed to the connection on its next read or write.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.0);
        if s.failed.is_some() {
            return Poll::Ready(());
        }
        let r = match s.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut s.io).poll_flush(cx),
            other => other,
        };
        match r {
            Poll::Ready(Ok(())) => {
                // A burst's buffer is not kept: 10,000 idle connections would
                // each hold one.
                if s.buf.capacity() > KEEP {
                    s.buf = Vec::new();
                }
                Poll::Ready(())
            }
            Poll::Ready(Err(e)) => {
                s.failed = Some(e.kind());
                s.buf = Vec::new();
                // The connection learns of it on its next poll: make that now.
                cx.waker().wake_by_ref();
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        s.check()?;
        Pin::new(&mut s.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.0);
        s.check()?;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if s.buf.len() + len > BULK {
            ready!(s.drain(cx))?;
            if len >= BULK {
                return Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            s.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Deferred to the owner's [`Flusher`], which runs before its task sleeps.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).check()?;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.0);
        ready!(s.drain(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;

    /// Records every write that reaches the socket side.
    #[derive(Default)]
    struct Wire {
        writes: Vec<Vec<u8>>,
        fail: bool,
    }

    impl AsyncRead for Wire {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.fail {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            self.writes.push(b.to_vec());
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn writes(f: &Flusher<Wire>) -> Vec<Vec<u8>> {
        lock(&f.0).io.writes.clone()
    }

    #[tokio::test]
    async fn frames_written_in_one_poll_leave_in_one_write() {
        let (mut io, flusher) = new(Wire::default());
        io.write_all(b"HEADERS").await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"DATA").await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"TRAILERS").await.unwrap();
        assert!(
            writes(&flusher).is_empty(),
            "written before the owner's flush"
        );
        poll_fn(|cx| flusher.poll_flush(cx)).await;
        assert_eq!(writes(&flusher), vec![b"HEADERSDATATRAILERS".to_vec()]);
    }

    #[tokio::test]
    async fn bulk_data_goes_straight_through_after_what_is_held() {
        let (mut io, flusher) = new(Wire::default());
        io.write_all(b"head").await.unwrap();
        let bulk = vec![7u8; BULK];
        io.write_all(&bulk).await.unwrap();
        // In order: the held bytes first, then the bulk write uncopied.
        assert_eq!(writes(&flusher), vec![b"head".to_vec(), bulk]);
        poll_fn(|cx| flusher.poll_flush(cx)).await;
        assert_eq!(writes(&flusher).len(), 2);
    }

    #[tokio::test]
    async fn a_failed_deferred_write_fails_the_connection() {
        let (mut io, flusher) = new(Wire {
            fail: true,
            ..Wire::default()
        });
        io.write_all(b"request").await.unwrap();
        poll_fn(|cx| flusher.poll_flush(cx)).await;
        assert!(io.write_all(b"more").await.is_err());
        let mut buf = [0u8; 8];
        assert!(tokio::io::AsyncReadExt::read(&mut io, &mut buf)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_burst_buffer_is_not_kept() {
        let (mut io, flusher) = new(Wire::default());
        io.write_all(&[1u8; 4 << 10]).await.unwrap();
        poll_fn(|cx| flusher.poll_flush(cx)).await;
        assert_eq!(lock(&flusher.0).buf.capacity(), 0);
        io.write_all(b"small").await.unwrap();
        poll_fn(|cx| flusher.poll_flush(cx)).await;
        assert!(lock(&flusher.0).buf.capacity() <= KEEP);
    }
}
