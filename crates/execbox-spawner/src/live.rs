//! Live runs in the spawner: the output a stage has read so far, cut into
//! [`Event::Output`] chunks as it arrives (never inside a UTF-8 character, at most
//! [`MAX_CHUNK_BYTES`] each, the last one of a stream cut at its cap marked `truncated`; at
//! most one chunk per stream every [`HOLD`] unless a chunk is full; a partial line waits up to
//! [`HOLD`] for its end), and the stdin that arrives before the run stage is running.
//!
//! The supervisor keeps every byte it read (up to the caps) for the record anyway; a tap only
//! remembers how much of it was sent, so streaming costs no second copy here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use execbox_proto::live::{utf8_complete_prefix, LiveSignal, OutputStream, MAX_CHUNK_BYTES};
use execbox_proto::spawner::Event;
use nix::sys::signal::Signal;

/// The longest output waits before it is sent, and the shortest time between two chunks of a
/// stream (unless a chunk is full). Programs often write a line in two calls (Python's `print`
/// writes the text, then the newline): a partial line waits this long for its end, so the two
/// go out as one chunk; a prompt without a newline still goes out within it. And a program that
/// writes tiny lines as fast as it can makes at most one event per stream per `HOLD` (plus one
/// per full chunk), so the number of events of a run is bounded by its wall time and caps.
pub(crate) const HOLD: Duration = Duration::from_millis(5);

/// How much of one stage's stdout and stderr was sent.
#[derive(Debug, Default)]
struct Tap {
    sent: [usize; 2],
    finished: [bool; 2],
    /// Since when unsent output waits.
    waiting: [Option<Instant>; 2],
    /// When the last chunk went.
    last: [Option<Instant>; 2],
}

impl Tap {
    /// How many bytes of `pending` (stream `i`'s unsent output, not ending inside a
    /// character) to send at `now`.
    fn due(&self, i: usize, pending: &[u8], now: Instant) -> usize {
        if pending.is_empty() {
            return 0;
        }
        let waited = self.waiting[i].is_some_and(|t| now >= t + HOLD);
        if waited || pending.len() >= MAX_CHUNK_BYTES {
            return pending.len();
        }
        if self.last[i].is_some_and(|t| now < t + HOLD) {
            return 0;
        }
        // The complete lines now, a partial one when it has waited.
        pending
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1)
    }
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

    /// When waiting output must go out at the latest.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.taps
            .values()
            .flat_map(|t| t.waiting.iter().flatten())
            .min()
            .map(|t| *t + HOLD)
    }

    /// The output events for what run `id`'s stage read since the last call, at `now`.
    /// `output(i)` is the supervisor's [`execbox_jail::Supervisor::output`].
    pub(crate) fn chunks<'a>(
        &mut self,
        id: &str,
        now: Instant,
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
            let ready = if closed {
                buf.len()
            } else {
                from + utf8_complete_prefix(&buf[from..])
            };
            let end = if closed {
                ready
            } else {
                from + tap.due(i, &buf[from..ready], now)
            };
            if end > from {
                tap.last[i] = Some(now);
            }
            tap.waiting[i] = (ready > end).then(|| tap.waiting[i].unwrap_or(now));
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
        let t0 = Instant::now();
        let (t1, t2) = (t0 + HOLD, t0 + 2 * HOLD);
        let mut live = Live::default();
        let mut out: Vec<u8> = b"one\na".to_vec();
        out.extend_from_slice(&"€".as_bytes()[..2]); // half of '€'
        let err = b"oops\n".to_vec();
        let both = |out: &[u8], over: bool, closed: bool| -> Vec<(Vec<u8>, bool, bool)> {
            vec![(out.to_vec(), over, closed), (err.clone(), false, closed)]
        };
        // Not a live stage (yet): nothing.
        assert!(live
            .chunks("r", t0, |_| (&out[..], false, false))
            .is_empty());
        live.stage_started("r");
        let s = both(&out, false, false);
        let ev = live.chunks("r", t0, |i| (&s[i].0[..], s[i].1, s[i].2));
        // The complete line at once; the partial one waits for its end.
        assert_eq!(
            texts(&ev),
            [
                (OutputStream::Stdout, "one\n".into(), false),
                (OutputStream::Stderr, "oops\n".into(), false)
            ]
        );
        assert_eq!(live.next_deadline(), Some(t1));
        // Its end came at once, but a chunk just went: one chunk per HOLD.
        out.extend_from_slice(&"€".as_bytes()[2..]);
        out.extend_from_slice(b"!\n");
        let s = both(&out, false, false);
        assert!(live
            .chunks("r", t0, |i| (&s[i].0[..], s[i].1, s[i].2))
            .is_empty());
        let ev = live.chunks("r", t1, |i| (&s[i].0[..], s[i].1, s[i].2));
        assert_eq!(texts(&ev), [(OutputStream::Stdout, "a€!\n".into(), false)]);
        assert_eq!(live.next_deadline(), None);
        // A prompt without a newline goes out once it has waited (never half a character).
        out.extend_from_slice(b"name? ");
        out.extend_from_slice(&"é".as_bytes()[..1]);
        let s = both(&out, false, false);
        assert!(live
            .chunks("r", t1, |i| (&s[i].0[..], s[i].1, s[i].2))
            .is_empty());
        let ev = live.chunks("r", t2, |i| (&s[i].0[..], s[i].1, s[i].2));
        assert_eq!(texts(&ev), [(OutputStream::Stdout, "name? ".into(), false)]);
        // Cut at the cap: the rest at once, then nothing more.
        out.extend_from_slice(&"é".as_bytes()[1..]);
        out.extend_from_slice(b"xyz");
        let s = both(&out, true, true);
        let ev = live.chunks("r", t2, |i| (&s[i].0[..], s[i].1, s[i].2));
        assert_eq!(texts(&ev), [(OutputStream::Stdout, "éxyz".into(), true)]);
        assert!(live.chunks("r", t2, |_| (&out[..], true, true)).is_empty());
        // A new stage counts from zero.
        live.stage_started("r");
        let ev = live.chunks("r", t2, |i| {
            (if i == 0 { &b"2\n"[..] } else { &b""[..] }, false, false)
        });
        assert_eq!(texts(&ev), [(OutputStream::Stdout, "2\n".into(), false)]);
        live.forget("r");
        assert!(live
            .chunks("r", t2, |_| (&out[..], false, false))
            .is_empty());
    }

    #[test]
    fn a_flood_of_tiny_lines_makes_one_event_per_hold() {
        let t0 = Instant::now();
        let mut live = Live::default();
        live.stage_started("r");
        let mut out = Vec::new();
        let mut events = 0;
        // 1000 lines, one per 10 µs: 10 ms of output.
        for k in 0..1000u32 {
            out.extend_from_slice(b"x\n");
            let now = t0 + Duration::from_micros(10 * u64::from(k));
            events += live
                .chunks("r", now, |i| {
                    (if i == 0 { &out[..] } else { &b""[..] }, false, false)
                })
                .len();
        }
        events += live
            .chunks("r", t0 + Duration::from_millis(20), |i| {
                (if i == 0 { &out[..] } else { &b""[..] }, false, false)
            })
            .len();
        assert!((2..=4).contains(&events), "{events} events");
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
