//! Live runs in the spawner: the output a stage has read so far, cut into
//! [`Event::Output`] chunks as it arrives (never inside a UTF-8 character, at most
//! [`MAX_CHUNK_BYTES`] each, the last one of a stream cut at its cap marked `truncated`), and
//! the stdin that arrives before the run stage is running.
//!
//! The supervisor keeps every byte it read (up to the caps) for the record anyway; a tap only
//! remembers how much of it was sent, so streaming costs no second copy here.

use std::collections::HashMap;

use execbox_proto::live::{utf8_complete_prefix, LiveSignal, OutputStream, MAX_CHUNK_BYTES};
use execbox_proto::spawner::Event;
use nix::sys::signal::Signal;

/// How much of one stage's stdout and stderr was sent.
#[derive(Debug, Default)]
struct Tap {
    sent: [usize; 2],
    finished: [bool; 2],
}

/// Stdin received for an interactive run whose run stage is not running yet.
#[derive(Debug, Default)]
pub(crate) struct HeldStdin {
    pub(crate) data: Vec<u8>,
    pub(crate) eof: bool,
}

/// The live state of every live run in flight, by id.
#[derive(Debug, Default)]
pub(crate) struct Live {
    taps: HashMap<String, Tap>,
    held: HashMap<String, HeldStdin>,
}

/// The signal the kernel knows as `s`.
pub(crate) fn signal_of(s: LiveSignal) -> Signal {
    match s {
        LiveSignal::Int => Signal::SIGINT,
        LiveSignal::Term => Signal::SIGTERM,
        LiveSignal::Kill => Signal::SIGKILL,
        LiveSignal::Quit => Signal::SIGQUIT,
        LiveSignal::Usr1 => Signal::SIGUSR1,
        LiveSignal::Usr2 => Signal::SIGUSR2,
    }
}

impl Live {
    /// A stage of run `id` started: its output is counted from zero.
    pub(crate) fn stage_started(&mut self, id: &str) {
        self.taps.insert(id.to_owned(), Tap::default());
    }

    /// Run `id` is over: forget it.
    pub(crate) fn forget(&mut self, id: &str) {
        self.taps.remove(id);
        self.held.remove(id);
    }

    /// Hold stdin until the run stage runs; at most `max` bytes in all (more is dropped:
    /// the server already bounds a run's stdin by its limit). Returns false when dropped.
    pub(crate) fn hold(&mut self, id: &str, data: &[u8], eof: bool, max: usize) -> bool {
        let h = self.held.entry(id.to_owned()).or_default();
        h.eof |= eof;
        if h.data.len() + data.len() > max {
            return false;
        }
        h.data.extend_from_slice(data);
        true
    }

    /// The stdin held for `id`, if any.
    pub(crate) fn take_held(&mut self, id: &str) -> Option<HeldStdin> {
        self.held.remove(id)
    }

    /// The output events for what run `id`'s stage read since the last call. `output(i)` is
    /// the supervisor's [`execbox_jail::Supervisor::output`].
    pub(crate) fn chunks<'a>(
        &mut self,
        id: &str,
        output: impl Fn(usize) -> (&'a [u8], bool, bool),
    ) -> Vec<Event> {
        let Some(tap) = self.taps.get_mut(id) else {
            return vec![];
        };
        let mut events = Vec::new();
        for (i, stream) in [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .enumerate()
        {
            if tap.finished[i] {
                continue;
            }
            let (buf, over, closed) = output(i);
            let from = tap.sent[i].min(buf.len());
            let end = if closed {
                buf.len()
            } else {
                from + utf8_complete_prefix(&buf[from..])
            };
            let mut pieces = split(&buf[from..end]);
            if over && pieces.is_empty() {
                pieces.push(String::new());
            }
            let n = pieces.len();
            for (k, data) in pieces.into_iter().enumerate() {
                events.push(Event::Output {
                    id: id.to_owned(),
                    stream,
                    data,
                    truncated: over && k + 1 == n,
                });
            }
            tap.sent[i] = end;
            tap.finished[i] = closed;
        }
        events
    }
}

/// `bytes` as text pieces of at most [`MAX_CHUNK_BYTES`] bytes read, each cut at a character
/// boundary (a piece that cannot be cut so is cut at the size).
fn split(mut bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut cut = bytes.len().min(MAX_CHUNK_BYTES);
        if cut < bytes.len() {
            let at = utf8_complete_prefix(&bytes[..cut]);
            if at > 0 {
                cut = at;
            }
        }
        out.push(String::from_utf8_lossy(&bytes[..cut]).into_owned());
        bytes = &bytes[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(events: &[Event]) -> Vec<(OutputStream, String, bool)> {
        events
            .iter()
            .map(|e| match e {
                Event::Output {
                    stream,
                    data,
                    truncated,
                    ..
                } => (*stream, data.clone(), *truncated),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn output_is_sent_once_split_at_characters_and_marked_when_cut() {
        let mut live = Live::default();
        let mut out: Vec<u8> = "a€".as_bytes()[..2].to_vec(); // 'a' and half of '€'
        let err = b"oops".to_vec();
        // Not a live stage (yet): nothing.
        assert!(live.chunks("r", |_| (&out[..], false, false)).is_empty());
        live.stage_started("r");
        let ev = live.chunks("r", |i| {
            if i == 0 {
                (&out[..], false, false)
            } else {
                (&err[..], false, false)
            }
        });
        assert_eq!(
            texts(&ev),
            [
                (OutputStream::Stdout, "a".into(), false),
                (OutputStream::Stderr, "oops".into(), false)
            ]
        );
        out.extend_from_slice(&"a€".as_bytes()[2..]);
        out.extend_from_slice(b"!");
        let ev = live.chunks("r", |i| {
            if i == 0 {
                (&out[..], false, false)
            } else {
                (&err[..], false, false)
            }
        });
        assert_eq!(texts(&ev), [(OutputStream::Stdout, "€!".into(), false)]);
        // Cut at the cap: the rest, then nothing more.
        out.extend_from_slice(b"xyz");
        let ev = live.chunks("r", |i| {
            if i == 0 {
                (&out[..], true, true)
            } else {
                (&err[..], false, true)
            }
        });
        assert_eq!(texts(&ev), [(OutputStream::Stdout, "xyz".into(), true)]);
        assert!(live.chunks("r", |_| (&out[..], true, true)).is_empty());
        // A new stage counts from zero.
        live.stage_started("r");
        let ev = live.chunks("r", |i| {
            (if i == 0 { &b"2"[..] } else { &b""[..] }, false, false)
        });
        assert_eq!(texts(&ev), [(OutputStream::Stdout, "2".into(), false)]);
        live.forget("r");
        assert!(live.chunks("r", |_| (&out[..], false, false)).is_empty());
    }

    #[test]
    fn long_reads_are_split_into_bounded_chunks() {
        let big = "é".repeat(MAX_CHUNK_BYTES); // 2 bytes each
        let pieces = split(big.as_bytes());
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.len() <= MAX_CHUNK_BYTES));
        assert_eq!(pieces.concat(), big);
    }

    #[test]
    fn held_stdin_is_bounded() {
        let mut live = Live::default();
        assert!(live.hold("r", b"abc", false, 5));
        assert!(!live.hold("r", b"def", true, 5));
        let h = live.take_held("r").unwrap();
        assert_eq!((h.data.as_slice(), h.eof), (&b"abc"[..], true));
        assert!(live.take_held("r").is_none());
    }
}
