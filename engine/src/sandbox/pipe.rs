//! A bounded in-memory stdout/stderr for a sandboxed run.
//!
//! wasmtime-wasi's `MemoryOutputPipe` traps on the write that would overflow
//! and gives no way to tell that apart from other traps. This pipe keeps what
//! fits, remembers that it overflowed, and then either silently drops the rest
//! (task stdout/stderr, which are only logs) or fails the write (a command's
//! stdout, which is its output and must not be silently cut).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// What a full pipe does with further writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Accept and drop the bytes.
    Discard,
    /// Fail the write; the guest sees a closed stream.
    Refuse,
}

#[derive(Debug, Clone)]
pub struct CappedPipe {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Debug)]
struct Buffer {
    bytes: Vec<u8>,
    capacity: usize,
    overflowed: bool,
    when_full: WhenFull,
}

impl CappedPipe {
    pub fn new(capacity: usize, when_full: WhenFull) -> Self {
        let buffer = Buffer {
            bytes: Vec::new(),
            capacity,
            overflowed: false,
            when_full,
        };
        Self {
            inner: Arc::new(Mutex::new(buffer)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A poisoned lock only means a writer panicked mid-append; the bytes
        // are still a valid prefix, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything written that fitted.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Did the guest try to write more than the capacity?
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Append what fits; returns false if anything was cut.
    fn append(&self, data: &[u8]) -> bool {
        let mut buf = self.lock();
        let room = buf.capacity.saturating_sub(buf.bytes.len());
        let take = room.min(data.len());
        buf.bytes.extend_from_slice(&data[..take]);
        if take < data.len() {
            buf.overflowed = true;
            return buf.when_full == WhenFull::Discard;
        }
        true
    }
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if self.append(&bytes) {
            Ok(())
        } else {
            Err(StreamError::Closed)
        }
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        const CHUNK: usize = 64 << 10;
        let buf = self.lock();
        match buf.when_full {
            // Everything is accepted (and dropped past the cap), so never
            // make the guest dribble one byte per call.
            WhenFull::Discard => Ok(CHUNK),
            WhenFull::Refuse if buf.overflowed => Err(StreamError::Closed),
            // Offer at least one byte more than fits, so an overflow shows
            // up as an attempted write rather than a stream that never drains.
            WhenFull::Refuse => Ok(buf.capacity.saturating_sub(buf.bytes.len()).clamp(1, CHUNK)),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.append(data) {
            Poll::Ready(Ok(data.len()))
        } else {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "output cap reached",
            )))
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discard_keeps_the_prefix_and_accepts_more() {
        let mut pipe = CappedPipe::new(4, WhenFull::Discard);
        pipe.write(Bytes::from_static(b"abc")).unwrap();
        pipe.write(Bytes::from_static(b"def")).unwrap();
        assert_eq!(pipe.contents(), b"abcd");
        assert!(pipe.overflowed());
    }

    #[test]
    fn refuse_fails_the_overflowing_write_and_stays_closed() {
        let mut pipe = CappedPipe::new(4, WhenFull::Refuse);
        pipe.write(Bytes::from_static(b"abcd")).unwrap();
        assert!(!pipe.overflowed());
        assert!(pipe.write(Bytes::from_static(b"e")).is_err());
        assert!(pipe.overflowed());
        assert!(pipe.check_write().is_err());
    }
}
