//! Live runs: what a running program's output, stage changes, stdin and signals look like on
//! their way between the spawner, the server and a client (`docs/live-protocol.md`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most bytes of output one [`crate::spawner::Event::Output`] carries (a longer read is split).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Most bytes of one `stdin` message from a client. The run's whole stdin (the request's plus
/// every message) stays within its `stdin_bytes` limit.
pub const MAX_STDIN_MESSAGE_BYTES: usize = 64 * 1024;

/// An output stream of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A stage of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The compiler runs (compiled languages only).
    Compile,
    /// The program runs (once per test case when the run has cases).
    Run,
}

/// The signals a client may send to a running program: an allow-list (`SIGSTOP`, `SIGCONT`
/// and the rest are refused with `invalid_signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum LiveSignal {
    /// SIGINT (Ctrl-C; Python raises `KeyboardInterrupt`).
    Int,
    /// SIGTERM.
    Term,
    /// SIGKILL.
    Kill,
    /// SIGQUIT.
    Quit,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl LiveSignal {
    /// Every allowed signal.
    pub const ALL: &'static [LiveSignal] = &[
        LiveSignal::Int,
        LiveSignal::Term,
        LiveSignal::Kill,
        LiveSignal::Quit,
        LiveSignal::Usr1,
        LiveSignal::Usr2,
    ];

    /// The name without `SIG` (`INT`), as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            LiveSignal::Int => "INT",
            LiveSignal::Term => "TERM",
            LiveSignal::Kill => "KILL",
            LiveSignal::Quit => "QUIT",
            LiveSignal::Usr1 => "USR1",
            LiveSignal::Usr2 => "USR2",
        }
    }

    /// Parse `INT` or `SIGINT` (exact case); `None` for anything off the allow-list.
    pub fn parse(s: &str) -> Option<Self> {
        let bare = s.strip_prefix("SIG").unwrap_or(s);
        Self::ALL.iter().copied().find(|sig| sig.name() == bare)
    }
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 sequence (a multi-byte
/// character split between two reads is held back for the next chunk, so each chunk decodes
/// on its own). Invalid bytes are not held: they decode as U+FFFD like the record's output.
pub fn utf8_complete_prefix(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes: look at the last 3 for the start of an incomplete one.
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: its lead is further back
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1, // ASCII or invalid: complete as it is
        };
        return if need > back {
            bytes.len() - back
        } else {
            bytes.len()
        };
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_an_allow_list() {
        assert_eq!(LiveSignal::parse("INT"), Some(LiveSignal::Int));
        assert_eq!(LiveSignal::parse("SIGUSR2"), Some(LiveSignal::Usr2));
        for bad in ["STOP", "SIGCONT", "int", "", "SIG", "9", "SIGSIGINT"] {
            assert_eq!(LiveSignal::parse(bad), None, "{bad}");
        }
        for s in LiveSignal::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
    }

    #[test]
    fn a_split_character_is_held_back() {
        let s = "aé€😀".as_bytes();
        assert_eq!(utf8_complete_prefix(s), s.len());
        // Cut inside the 4-byte emoji, the 3-byte euro sign, the 2-byte é.
        for cut in [s.len() - 1, s.len() - 2, s.len() - 3] {
            assert_eq!(utf8_complete_prefix(&s[..cut]), s.len() - 4, "{cut}");
        }
        assert_eq!(utf8_complete_prefix(&s[..5]), 3); // inside €
        assert_eq!(utf8_complete_prefix(&s[..2]), 1); // inside é
        assert_eq!(utf8_complete_prefix(b""), 0);
        // Invalid bytes are never held.
        assert_eq!(utf8_complete_prefix(b"a\xff"), 2);
        assert_eq!(utf8_complete_prefix(b"\x80\x80\x80\x80"), 4);
    }
}
