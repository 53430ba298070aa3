// canopy patch (idle write buffer): see README.canopy.md.

//! A write buffer that holds memory only while it holds bytes.
//!
//! It does what tokio's `BufWriter` does for the L4 stream (small writes are
//! gathered and sent by one system call at the next flush, or when the buffer
//! would overflow; writes at least as large as the buffer go straight
//! through), except that its buffer is allocated at the first buffered write
//! and freed once a flush has sent everything. A keep-alive connection waiting
//! for its next request, or a pooled upstream connection, then holds no write
//! buffer: `BufWriter` kept its capacity (an MSS, 1,460 bytes) for the
//! connection's whole life.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::ready;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// See the module documentation.
pub(crate) struct WriteBuffer<W> {
    inner: W,
    /// bytes not yet written to `inner`; no allocation while empty after a flush
    buf: Vec<u8>,
    /// how many bytes at the front of `buf` a flush that was interrupted has written
    written: usize,
    capacity: usize,
}

impl<W: fmt::Debug> fmt::Debug for WriteBuffer<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBuffer")
            .field("inner", &self.inner)
            .field("buffered", &(self.buf.len() - self.written))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<W> WriteBuffer<W> {
    /// Writes of fewer than `capacity` bytes are buffered; 0 writes straight through.
    pub(crate) fn with_capacity(capacity: usize, inner: W) -> Self {
        WriteBuffer {
            inner,
            buf: Vec::new(),
            written: 0,
            capacity,
        }
    }

    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner stream; bytes still buffered are lost.
    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    /// Appends to the buffer, allocating it (once, whole) if it is not.
    fn buffer(&mut self, bytes: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf = Vec::with_capacity(self.capacity);
        }
        self.buf.extend_from_slice(bytes);
    }
}

impl<W: AsyncWrite + Unpin> WriteBuffer<W> {
    /// Writes the whole buffer to `inner` (keeping its memory for the next
    /// writes: only [`poll_flush`](AsyncWrite::poll_flush) frees it).
    fn flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ret = Ok(());
        while self.written < self.buf.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])) {
                Ok(0) => {
                    ret = Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write the buffered data",
                    ));
                    break;
                }
                Ok(n) => self.written += n,
                Err(e) => {
                    ret = Err(e);
                    break;
                }
            }
        }
        if self.written == self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..self.written);
        }
        self.written = 0;
        Poll::Ready(ret)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteBuffer<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.buf.len() + bytes.len() > me.capacity {
            ready!(me.flush_buf(cx))?;
        }
        if bytes.len() >= me.capacity {
            Pin::new(&mut me.inner).poll_write(cx, bytes)
        } else {
            me.buffer(bytes);
            Poll::Ready(Ok(bytes.len()))
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let total = bufs.iter().fold(0usize, |n, b| n.saturating_add(b.len()));
        if me.buf.len() + total > me.capacity {
            ready!(me.flush_buf(cx))?;
        }
        if total >= me.capacity {
            Pin::new(&mut me.inner).poll_write_vectored(cx, bufs)
        } else {
            for b in bufs {
                me.buffer(b);
            }
            Poll::Ready(Ok(total))
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.flush_buf(cx))?;
        // a flush ends what the stream's user had to send for now (a
        // response, a chunk of one): the memory goes back until it writes again
        me.buf = Vec::new();
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.flush_buf(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for WriteBuffer<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn gathers_small_writes_and_frees_the_buffer_once_flushed() {
        let mut w = WriteBuffer::with_capacity(16, Vec::new());
        w.write_all(b"head ").await.unwrap();
        w.write_all(b"body").await.unwrap();
        assert!(w.get_ref().is_empty(), "small writes wait for the flush");
        assert_eq!(w.buf.capacity(), 16, "allocated once, whole");
        w.flush().await.unwrap();
        assert_eq!(w.get_ref().as_slice(), b"head body");
        assert_eq!(w.buf.capacity(), 0, "freed once flushed");
    }

    #[tokio::test]
    async fn large_writes_go_straight_through_after_what_is_buffered() {
        let mut w = WriteBuffer::with_capacity(8, Vec::new());
        w.write_all(b"ab").await.unwrap();
        w.write_all(b"0123456789").await.unwrap();
        assert_eq!(w.get_ref().as_slice(), b"ab0123456789", "in order");
        assert_eq!(w.buf.capacity(), 8, "kept until a flush");
        w.flush().await.unwrap();
        assert_eq!(w.buf.capacity(), 0);
        let mut w = WriteBuffer::with_capacity(8, Vec::new());
        let n = w
            .write_vectored(&[IoSlice::new(b"abc"), IoSlice::new(b"def")])
            .await
            .unwrap();
        assert_eq!(n, 6);
        w.write_vectored(&[IoSlice::new(b"ghijk")]).await.unwrap();
        assert_eq!(
            w.get_ref().as_slice(),
            b"abcdef",
            "flushed before overflowing"
        );
        w.flush().await.unwrap();
        assert_eq!(w.get_ref().as_slice(), b"abcdefghijk");
    }

    #[tokio::test]
    async fn zero_capacity_writes_straight_through() {
        let mut w = WriteBuffer::with_capacity(0, Vec::new());
        w.write_all(b"x").await.unwrap();
        assert_eq!(w.get_ref().as_slice(), b"x");
        assert_eq!(w.buf.capacity(), 0);
    }
}
