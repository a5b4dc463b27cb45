//! Order lines: bytes from the control pipe cut into newline-terminated lines, each bounded,
//! each parsed into one [`Order`].

use execbox_proto::spawner::Order;

/// One line taken from a [`LineBuffer`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A complete line (its `\n` included).
    Complete(Vec<u8>),
    /// A line longer than the bound; its bytes were dropped up to its end.
    TooLong,
}

/// Bytes received but not yet cut into lines. Holds at most `max` bytes of an unfinished line:
/// past that the line is dropped, reported once as [`Line::TooLong`], and everything up to its
/// `\n` is skipped as it arrives.
#[derive(Debug)]
pub(crate) struct LineBuffer {
    buf: Vec<u8>,
    max: usize,
    /// Inside a line already reported too long: drop bytes until its `\n`.
    skipping: bool,
    /// Lines found but not yet taken.
    ready: std::collections::VecDeque<Line>,
}

impl LineBuffer {
    /// A buffer for lines of at most `max` bytes (without the `\n`).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            skipping: false,
            ready: std::collections::VecDeque::new(),
        }
    }

    /// Add received bytes; complete lines become available through [`LineBuffer::next_line`].
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match newline {
                Some(i) => bytes.split_at(i + 1),
                None => (bytes, &[][..]),
            };
            bytes = rest;
            if self.skipping {
                self.skipping = newline.is_none();
                continue;
            }
            let content = part.len() - usize::from(newline.is_some());
            if self.buf.len() + content > self.max {
                self.buf.clear();
                self.ready.push_back(Line::TooLong);
                self.skipping = newline.is_none();
                continue;
            }
            self.buf.extend_from_slice(part);
            if newline.is_some() {
                self.ready
                    .push_back(Line::Complete(std::mem::take(&mut self.buf)));
            }
        }
    }

    /// The next line, in arrival order.
    pub(crate) fn next_line(&mut self) -> Option<Line> {
        self.ready.pop_front()
    }
}

/// Parse one order line.
pub(crate) fn parse_order(line: &[u8]) -> Result<Order, serde_json::Error> {
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(b: &mut LineBuffer) -> Vec<Line> {
        std::iter::from_fn(|| b.next_line()).collect()
    }

    fn complete(s: &str) -> Line {
        Line::Complete(s.as_bytes().to_vec())
    }

    #[test]
    fn lines_are_cut_at_newlines_across_and_within_chunks() {
        let mut b = LineBuffer::new(100);
        b.push(b"{\"a\"");
        assert_eq!(lines(&mut b), []);
        b.push(b":1}\n{\"b\":2}\n{\"c\"");
        assert_eq!(
            lines(&mut b),
            [complete("{\"a\":1}\n"), complete("{\"b\":2}\n")]
        );
        b.push(b":3}\n");
        assert_eq!(lines(&mut b), [complete("{\"c\":3}\n")]);
        b.push(b"");
        assert_eq!(lines(&mut b), []);
    }

    #[test]
    fn a_line_of_exactly_the_bound_passes() {
        let mut b = LineBuffer::new(4);
        b.push(b"ab");
        b.push(b"cd\n");
        assert_eq!(lines(&mut b), [complete("abcd\n")]);
    }

    #[test]
    fn an_overlong_line_is_dropped_once_and_the_next_line_survives() {
        let mut b = LineBuffer::new(4);
        b.push(b"abc");
        b.push(b"def");
        assert_eq!(lines(&mut b), [Line::TooLong]);
        // The rest of the long line is skipped as it arrives, without a second report and
        // without being held.
        b.push(b"ghijklmnop");
        assert_eq!(lines(&mut b), []);
        assert!(b.buf.is_empty());
        b.push(b"q\nok\n");
        assert_eq!(lines(&mut b), [complete("ok\n")]);
        // Too long inside one chunk, complete line after it.
        b.push(b"123456\nxy\n");
        assert_eq!(lines(&mut b), [Line::TooLong, complete("xy\n")]);
    }

    #[test]
    fn order_lines_parse_and_garbage_does_not() {
        assert_eq!(
            parse_order(b"{\"type\":\"cancel\",\"id\":\"r1\"}\n").unwrap(),
            Order::Cancel { id: "r1".into() }
        );
        assert!(parse_order(b"{\"type\":\"explode\"}\n").is_err());
        assert!(parse_order(b"not json\n").is_err());
        assert!(parse_order(b"\n").is_err());
    }
}
