use super::*;

fn run(framing: Framing, data: &[u8]) -> (Result<usize, BodyError>, BodyState) {
    let mut s = BodyState::new(framing);
    (s.advance(data), s)
}

#[test]
fn content_length_stops_at_the_end_of_the_body() {
    let (n, s) = run(Framing::Length(3), b"abcGET /");
    assert_eq!(n, Ok(3));
    assert!(s.is_done());
    let (n, s) = run(Framing::Length(10), b"abc");
    assert_eq!(n, Ok(3));
    assert_eq!(s, BodyState::Length(7));
}

#[test]
fn empty_bodies_are_done_at_once() {
    assert!(BodyState::new(Framing::Empty).is_done());
    assert!(BodyState::new(Framing::Length(0)).is_done());
}

#[test]
fn chunked_body_ends_after_the_last_chunk_and_trailers() {
    let msg = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nNEXT";
    let (n, s) = run(Framing::Chunked, msg);
    assert_eq!(n, Ok(msg.len() - 4));
    assert!(s.is_done());
}

#[test]
fn chunked_body_split_at_every_byte_parses_the_same() {
    let msg = b"3\r\nabc\r\n0\r\n\r\n";
    let mut s = BodyState::new(Framing::Chunked);
    for (i, b) in msg.iter().enumerate() {
        assert_eq!(s.advance(std::slice::from_ref(b)), Ok(1), "byte {i}");
    }
    assert!(s.is_done());
}

#[test]
fn chunk_size_overflow_is_refused() {
    let (n, _) = run(Framing::Chunked, b"1ffffffffffffffff\r\n");
    assert_eq!(n, Err(BodyError::ChunkSizeOverflow));
    // Sixteen hex digits still fit.
    let (n, _) = run(Framing::Chunked, b"ffffffffffffffff\r\n");
    assert_eq!(n, Ok(18));
}

#[test]
fn malformed_chunk_lines_are_refused() {
    for bad in [
        &b"\r\n"[..],
        b"x\r\n",
        b"3\nabc\r\n",
        b"3\r\nabcX",
        b"3\r\nabc\rX",
        b"0\r\n\n",
        b"0\r\nx-t: 1\n",
        b"-1\r\n",
    ] {
        let (n, _) = run(Framing::Chunked, bad);
        assert!(n.is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
    }
}

#[test]
fn eof_ends_only_a_close_delimited_body() {
    let mut s = BodyState::new(Framing::UntilClose);
    assert_eq!(s.advance(b"anything"), Ok(8));
    assert_eq!(s.at_eof(), Ok(()));
    let mut s = BodyState::new(Framing::Length(5));
    assert_eq!(s.at_eof(), Err(BodyError::Truncated));
}
