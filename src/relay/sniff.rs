//! The flow-controlled length of each DATA frame a peer sends.
//!
//! h2's codec hands out DATA frames with their padding stripped and keeps the
//! padding length to itself, yet flow control counts the whole frame. Without
//! it the relay would return less credit than a padded frame took and the
//! sender's window would shrink with every one. This reader notes the length
//! of every DATA frame header that passes, in order; the relay takes one per
//! DATA frame the codec yields (the codec yields every DATA frame it reads,
//! or fails the connection).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const DATA: u8 = 0;

pub struct Sniff<T> {
    io: T,
    head: [u8; 9],
    /// Bytes of the current frame header seen so far.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    data: VecDeque<u32>,
}

impl<T> Sniff<T> {
    pub fn new(io: T) -> Sniff<T> {
        Sniff {
            io,
            head: [0; 9],
            have: 0,
            skip: 0,
            data: VecDeque::new(),
        }
    }

    /// The length on the wire of the next DATA frame, in read order.
    pub fn next_data(&mut self) -> Option<u32> {
        self.data.pop_front()
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                if self.head[3] == DATA {
                    self.data.push_back(len);
                }
                self.skip = len as usize;
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniff<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.scan(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniff<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, len: usize) -> Vec<u8> {
        let l = u32::try_from(len).unwrap().to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], kind, 0, 0, 0, 0, 1];
        f.resize(9 + len, 7);
        f
    }

    #[test]
    fn data_lengths_in_order_across_any_split() {
        let mut wire = frame(1, 20);
        wire.extend(frame(0, 300));
        wire.extend(frame(4, 0));
        wire.extend(frame(0, 0));
        wire.extend(frame(0, 70_000));
        for chunk in [1, 2, 9, 10, 64, 4096, wire.len()] {
            let mut s = Sniff::new(());
            for part in wire.chunks(chunk) {
                s.scan(part);
            }
            let got: Vec<u32> = std::iter::from_fn(|| s.next_data()).collect();
            assert_eq!(got, [300, 0, 70_000], "chunks of {chunk}");
        }
    }
}
