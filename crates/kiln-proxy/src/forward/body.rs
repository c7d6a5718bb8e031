//! Moving a message body from one socket to another, through a reused
//! buffer: by its length, its chunks, or until its sender closes (then
//! re-chunked for a keep-alive client).
//!
//! For: the bytes of bodies, unchanged. Must never: parse or rewrite a
//! head ([`super::super::h1`] does), or allocate per request.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{BODY_IDLE, BUF};
use crate::h1::{Chunked, Framing};

/// Buffers grow to this while a large body streams through.
const STREAM_BUF: usize = 64 * 1024;

/// A read buffer: `data[lo..hi]` is what was read and not yet used.
#[derive(Debug)]
pub(super) struct Buf {
    pub(super) data: Vec<u8>,
    lo: usize,
    hi: usize,
}

impl Buf {
    pub(super) fn new() -> Self {
        Buf { data: vec![0; BUF], lo: 0, hi: 0 }
    }

    pub(super) fn filled(&self) -> &[u8] {
        &self.data[self.lo..self.hi]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.lo += n;
        if self.lo == self.hi {
            (self.lo, self.hi) = (0, 0);
        }
    }

    /// Reads once more from `s`, making room (up to `limit` bytes in all)
    /// first. `Ok(0)` is the end of the stream.
    pub(super) async fn fill(&mut self, s: &mut (impl AsyncRead + Unpin), limit: usize) -> io::Result<usize> {
        if self.hi == self.data.len() {
            if self.lo > 0 {
                self.data.copy_within(self.lo..self.hi, 0);
                (self.lo, self.hi) = (0, self.hi - self.lo);
            }
            if self.hi == self.data.len() {
                if self.data.len() >= limit {
                    return Err(io::Error::other("buffer limit"));
                }
                self.data.resize((self.data.len() * 2).min(limit), 0);
            }
        }
        let n = s.read(&mut self.data[self.hi..]).await?;
        self.hi += n;
        Ok(n)
    }
}

/// Why moving a body failed, by side.
#[derive(Debug)]
pub(super) enum Relay {
    /// The sender failed, closed early or broke the framing.
    From,
    /// The receiver failed.
    To,
}

/// Moves one body from `src` (its first bytes already in `buf`) to `dst`,
/// writing `prefix` (a head) together with the first body bytes. With
/// `rechunk`, a close-delimited body goes out chunked, each read one chunk,
/// and the last chunk follows the sender's close.
pub(super) async fn relay(
    src: &mut (impl AsyncRead + Unpin),
    buf: &mut Buf,
    dst: &mut (impl AsyncWrite + Unpin),
    framing: Framing,
    prefix: &mut Vec<u8>,
    rechunk: bool,
) -> Result<(), Relay> {
    let rechunk = rechunk && framing == Framing::UntilClose;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunked = Chunked::default();
    loop {
        let avail = buf.filled();
        let take = match framing {
            Framing::None => 0,
            Framing::Length(_) => left.min(avail.len() as u64) as usize,
            Framing::Chunked => chunked.feed(avail).map_err(|_| Relay::From)?,
            Framing::UntilClose => avail.len(),
        };
        if rechunk {
            if take > 0 {
                prefix.extend_from_slice(format!("{take:x}\r\n").as_bytes());
                prefix.extend_from_slice(&avail[..take]);
                prefix.extend_from_slice(b"\r\n");
            }
            if !prefix.is_empty() {
                write(dst, prefix).await?;
                prefix.clear();
            }
        } else if prefix.is_empty() {
            if take > 0 {
                write(dst, &avail[..take]).await?;
            }
        } else {
            // Small bodies ride in the same write as the head.
            prefix.extend_from_slice(&avail[..take]);
            write(dst, prefix).await?;
            prefix.clear();
        }
        buf.consume(take);
        left -= take as u64;
        let done = match framing {
            Framing::None => true,
            Framing::Length(_) => left == 0,
            Framing::Chunked => chunked == Chunked::Done,
            Framing::UntilClose => false,
        };
        if done {
            return Ok(());
        }
        if left > buf.data.len() as u64 && buf.data.len() < STREAM_BUF {
            buf.data.resize(STREAM_BUF, 0);
        }
        match tokio::time::timeout(BODY_IDLE, buf.fill(src, STREAM_BUF)).await {
            Ok(Ok(0)) if framing == Framing::UntilClose => {
                if rechunk {
                    write(dst, b"0\r\n\r\n").await?;
                }
                return Ok(());
            }
            Ok(Ok(0) | Err(_)) | Err(_) => return Err(Relay::From),
            Ok(Ok(_)) => {}
        }
    }
}

/// A write that may wait at most [`BODY_IDLE`] for the peer to read.
pub(super) async fn write(dst: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<(), Relay> {
    match tokio::time::timeout(BODY_IDLE, dst.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Relay::To),
    }
}
