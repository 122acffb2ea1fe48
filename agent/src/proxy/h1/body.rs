//! Message bodies, relayed by their framing as received: a Content-Length count, chunked
//! transfer coding (parsed to find the end of the message, never re-encoded), or the rest of the
//! connection. Bytes after a body stay in the read buffer: they are the next pipelined message.
use std::io;

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// How much a body read asks for at a time.
pub const READ_CHUNK: usize = 64 * 1024;
/// Longest trailer section accepted after the last chunk.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// How a message says where its body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (a request without Content-Length or Transfer-Encoding, a response to HEAD,
    /// 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// A response that ends when the upstream closes the connection.
    UntilClose,
}

/// Why a body is malformed. The message's bytes were relayed up to this point, or (when found
/// before anything was sent) the message is refused whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("chunk size overflows 64 bits")]
    ChunkSizeOverflow,
    #[error("malformed chunked encoding")]
    BadChunk,
    #[error("trailer section over {MAX_TRAILER_BYTES} bytes")]
    TrailerTooLarge,
    #[error("connection closed before the end of the body")]
    Truncated,
}

/// Where the chunked parser is. Strict: every line ends in CRLF, a chunk size has at least one
/// hex digit and fits in 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    Size {
        value: u64,
        digits: u32,
    },
    /// After the size: whitespace and chunk extensions, up to the CR.
    Ext {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or of the final empty line.
    TrailerStart {
        seen: usize,
    },
    Trailer {
        seen: usize,
    },
    TrailerLf {
        seen: usize,
        last: bool,
    },
}

/// The progress of one body through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyState {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

impl BodyState {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            }),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// How many bytes at the start of `data` belong to the body. Fewer than `data.len()` only
    /// when the body ends inside `data`.
    pub fn advance(&mut self, data: &[u8]) -> Result<usize, BodyError> {
        match self {
            Self::Done => Ok(0),
            Self::UntilClose => Ok(data.len()),
            Self::Length(remaining) => {
                let n = (*remaining).min(data.len() as u64);
                *remaining -= n;
                if *remaining == 0 {
                    *self = Self::Done;
                }
                Ok(n as usize)
            }
            Self::Chunked(chunk) => {
                let (n, done) = advance_chunked(chunk, data)?;
                if done {
                    *self = Self::Done;
                }
                Ok(n)
            }
        }
    }

    /// The source closed: the end of an `UntilClose` body, a truncated one otherwise.
    pub fn at_eof(&mut self) -> Result<(), BodyError> {
        match self {
            Self::Done => Ok(()),
            Self::UntilClose => {
                *self = Self::Done;
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }
}

/// Runs the chunked parser over `data`; returns the bytes consumed and whether the message
/// ended there.
fn advance_chunked(state: &mut Chunk, data: &[u8]) -> Result<(usize, bool), BodyError> {
    let mut i = 0;
    while i < data.len() {
        if let Chunk::Data { remaining } = state {
            // The bulk of a body: skip it whole.
            let n = (*remaining).min((data.len() - i) as u64);
            i += n as usize;
            *remaining -= n;
            if *remaining == 0 {
                *state = Chunk::DataCr;
            }
            continue;
        }
        let b = data[i];
        i += 1;
        *state = match *state {
            Chunk::Size { value, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    let value = value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(d))
                        .ok_or(BodyError::ChunkSizeOverflow)?;
                    Chunk::Size {
                        value,
                        digits: digits + 1,
                    }
                }
                b';' | b' ' | b'\t' if digits > 0 => Chunk::Ext { value },
                b'\r' if digits > 0 => Chunk::SizeLf { value },
                _ => return Err(BodyError::BadChunk),
            },
            Chunk::Ext { value } => match b {
                b'\r' => Chunk::SizeLf { value },
                b'\n' => return Err(BodyError::BadChunk),
                _ => Chunk::Ext { value },
            },
            Chunk::SizeLf { value } => match (b, value) {
                (b'\n', 0) => Chunk::TrailerStart { seen: 0 },
                (b'\n', n) => Chunk::Data { remaining: n },
                _ => return Err(BodyError::BadChunk),
            },
            Chunk::Data { .. } => unreachable!("handled above"),
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size {
                value: 0,
                digits: 0,
            },
            Chunk::DataCr | Chunk::DataLf => return Err(BodyError::BadChunk),
            Chunk::TrailerStart { seen } => match b {
                b'\r' => Chunk::TrailerLf { seen, last: true },
                b'\n' | b' ' | b'\t' => return Err(BodyError::BadChunk),
                _ => Chunk::Trailer { seen: seen + 1 },
            },
            Chunk::Trailer { seen } => match b {
                _ if seen >= MAX_TRAILER_BYTES => return Err(BodyError::TrailerTooLarge),
                b'\r' => Chunk::TrailerLf { seen, last: false },
                b'\n' => return Err(BodyError::BadChunk),
                _ => Chunk::Trailer { seen: seen + 1 },
            },
            Chunk::TrailerLf { seen, last } => match (b, last) {
                (b'\n', true) => return Ok((i, true)),
                (b'\n', false) => Chunk::TrailerStart { seen: seen + 2 },
                _ => return Err(BodyError::BadChunk),
            },
        };
    }
    Ok((i, false))
}

/// Why a relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading the body")]
    Read(#[source] io::Error),
    #[error("writing the body")]
    Write(#[source] io::Error),
    #[error("relaying the body")]
    Framing(#[from] BodyError),
}

/// Copies the rest of a body from `src` to `dst`: first what `buf` already holds, then what
/// `src` sends, until `state` says the body ended. Bytes past the body stay in `buf`.
pub async fn relay(
    state: &mut BodyState,
    buf: &mut BytesMut,
    src: &mut TcpStream,
    dst: &mut TcpStream,
) -> Result<(), RelayError> {
    loop {
        if !buf.is_empty() {
            let n = state.advance(buf)?;
            dst.write_all(&buf[..n]).await.map_err(RelayError::Write)?;
            buf.advance(n);
        }
        if state.is_done() {
            return Ok(());
        }
        buf.reserve(READ_CHUNK);
        if src.read_buf(buf).await.map_err(RelayError::Read)? == 0 {
            return Ok(state.at_eof()?);
        }
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
