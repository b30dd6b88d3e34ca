//! Who fetches which bytes of a chunked blob. Connections take the chunks in order; once none
//! is left, a connection that is free takes the second half of the piece with the most bytes
//! left (the connection on it stops where its piece now ends): the blob's last bytes come over
//! every connection instead of the last few, each held to the per-connection cap.

use std::collections::VecDeque;

/// A piece is split only if both halves are at least this long: shorter, a request of its own
/// costs more than it saves.
pub(super) const MIN_PIECE: u64 = 2 << 20;
/// Where a piece is split: on a multiple of this, so that both halves write whole aligned
/// blocks (`O_DIRECT`).
const SPLIT_ALIGN: u64 = 1 << 20;

/// The bytes `at..end` of chunk `chunk`, fetched by one connection; `key` names it to the
/// writer thread (its staged bytes, where it started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Piece {
    pub chunk: usize,
    pub key: usize,
    pub at: u64,
    pub end: u64,
}

#[derive(Debug)]
pub(super) struct Board {
    /// Chunks no connection has started (their first byte still to fetch), in order.
    queue: VecDeque<(usize, u64, u64)>,
    /// The piece each connection is on.
    pieces: Vec<Option<Piece>>,
    next_key: usize,
}

impl Board {
    /// `chunks`: `(chunk, from, end)` of every chunk to fetch, in order; `connections`: how
    /// many connections fetch them.
    pub fn new(chunks: Vec<(usize, u64, u64)>, connections: usize) -> Board {
        Board {
            queue: chunks.into(),
            pieces: vec![None; connections],
            next_key: 0,
        }
    }

    /// The next piece of connection `c`: the next chunk not started, else the second half of
    /// the piece with the most left, if both halves are worth a request; `None`: nothing left
    /// for another connection.
    pub fn take(&mut self, c: usize) -> Option<Piece> {
        let piece = match self.queue.pop_front() {
            Some((chunk, at, end)) => Piece {
                chunk,
                key: 0,
                at,
                end,
            },
            None => {
                let victim = self
                    .pieces
                    .iter_mut()
                    .flatten()
                    .max_by_key(|p| p.end - p.at)?;
                let mid = (victim.at + (victim.end - victim.at) / 2).next_multiple_of(SPLIT_ALIGN);
                if mid < victim.at + MIN_PIECE || mid + MIN_PIECE > victim.end {
                    return None;
                }
                let rest = Piece { at: mid, ..*victim };
                victim.end = mid;
                rest
            }
        };
        let piece = Piece {
            key: self.next_key,
            ..piece
        };
        self.next_key += 1;
        self.pieces[c] = Some(piece);
        Some(piece)
    }

    /// The piece connection `c` is on (as another connection may have cut it).
    pub fn piece(&self, c: usize) -> Option<Piece> {
        self.pieces[c]
    }

    /// Connection `c` received `n` more bytes of its piece: how many of them are still its
    /// own (the rest belongs to the connection that took the end of the piece).
    pub fn advance(&mut self, c: usize, n: u64) -> u64 {
        match self.pieces[c].as_mut() {
            Some(p) => {
                let own = n.min(p.end - p.at);
                p.at += own;
                own
            }
            None => 0,
        }
    }

    /// Connection `c` is done with its piece (complete, or failed: then the run stops).
    pub fn finish(&mut self, c: usize) {
        self.pieces[c] = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    /// Chunks go in order; then the free connection halves the piece with the most left, on a
    /// MiB boundary; the cut piece ends there; nothing under two pieces of `MIN_PIECE` is cut.
    #[test]
    fn free_connections_take_chunks_then_halves_of_the_longest_piece() {
        let mut b = Board::new(vec![(0, 3 * M / 2, 16 * M), (1, 16 * M, 32 * M)], 3);
        let p0 = b.take(0).unwrap();
        assert_eq!((p0.chunk, p0.at, p0.end), (0, 3 * M / 2, 16 * M));
        let p1 = b.take(1).unwrap();
        assert_eq!((p1.chunk, p1.at, p1.end), (1, 16 * M, 32 * M));
        assert_ne!(p0.key, p1.key);
        // Connection 0 got 10 MiB further: chunk 1 has the most left.
        assert_eq!(b.advance(0, 10 * M), 10 * M);
        let p2 = b.take(2).unwrap();
        assert_eq!((p2.chunk, p2.at, p2.end), (1, 24 * M, 32 * M));
        assert_eq!(b.piece(1).unwrap().end, 24 * M);
        // Connection 1 receives past its new end: only its own part counts.
        assert_eq!(b.advance(1, 7 * M), 7 * M);
        assert_eq!(b.advance(1, 2 * M), M);
        assert_eq!(b.advance(1, M), 0);
        b.finish(1);
        // Left: 4.5 MiB on connection 0 (11.5..16), 8 MiB on 2 (24..32): 2 is cut at 28.
        let p3 = b.take(1).unwrap();
        assert_eq!((p3.chunk, p3.at, p3.end), (1, 28 * M, 32 * M));
        // Left: 4.5 MiB on 0 (11.5..16), 4 on 1 (28..32): 0 is cut at 14 (13.75 rounded up).
        b.finish(2);
        let p4 = b.take(2).unwrap();
        assert_eq!((p4.chunk, p4.at, p4.end), (0, 14 * M, 16 * M));
        assert_eq!(b.piece(0).unwrap().end, 14 * M);
        // 0 done; left: 4 on 1 (cut at 30), 2 on 2.
        b.finish(0);
        let p5 = b.take(0).unwrap();
        assert_eq!((p5.chunk, p5.at, p5.end), (1, 30 * M, 32 * M));
        // 1 done; left: 2 on 0, 2 on 2: not worth a cut.
        b.finish(1);
        assert_eq!(b.take(1), None);
        b.finish(0);
        b.finish(2);
        assert_eq!(b.take(0), None, "nothing in flight, nothing queued");
        let mut b = Board::new(vec![(0, 0, 3 * M)], 2);
        b.take(0).unwrap();
        assert_eq!(b.take(1), None, "3 MiB is not worth two requests");
    }
}
