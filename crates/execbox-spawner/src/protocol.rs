//! Messages between the server and its spawner: one JSON object per line, over the spawner's
//! stdin (orders) and stdout (events).

use execbox_jail::Limits;
use execbox_proto::RunRecord;
use execbox_runtime::Mode;
use serde::{Deserialize, Serialize};

/// Longest order line the spawner accepts (the server bounds bodies well below this).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// One source file of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Plain file name.
    pub name: String,
    /// UTF-8 contents.
    pub content: String,
}

/// A run to execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOrder {
    /// Run id (chosen by the server).
    pub id: String,
    /// When the run was accepted (RFC 3339).
    pub created_at: String,
    /// Main-function contract or plain program.
    pub mode: Mode,
    /// Files; the first is the entry point.
    pub files: Vec<SourceFile>,
    /// Standard input.
    #[serde(default)]
    pub stdin: String,
    /// Program arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Limits, already checked against the operator's maxima.
    pub limits: Limits,
}

/// Server → spawner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Order {
    /// Start a run.
    Run(RunOrder),
    /// Kill a run (if it is still going); its record comes back with status `cancelled`.
    Cancel {
        /// Run id.
        id: String,
    },
}

/// Spawner → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Sent once at start.
    Hello {
        /// Runtime version.
        version: String,
        /// Layers missing on this host (degraded mode).
        missing_layers: Vec<String>,
    },
    /// The run's payload has `execve`d.
    Started {
        /// Run id.
        id: String,
    },
    /// The run is over.
    Finished {
        /// Run id.
        id: String,
        /// Its final record.
        record: Box<RunRecord>,
    },
    /// execbox failed to run it; the message is for the log, not the client.
    Failed {
        /// Run id.
        id: String,
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_tagged_json_lines() {
        let o = Order::Cancel { id: "a".into() };
        let line = serde_json::to_string(&o).unwrap();
        assert_eq!(line, r#"{"type":"cancel","id":"a"}"#);
        let run = Order::Run(RunOrder {
            id: "r".into(),
            created_at: "t".into(),
            mode: Mode::Main,
            files: vec![SourceFile {
                name: "main.py".into(),
                content: "def main(): return 1\n".into(),
            }],
            stdin: String::new(),
            args: vec![],
            limits: Limits::default(),
        });
        let back: Order = serde_json::from_str(&serde_json::to_string(&run).unwrap()).unwrap();
        assert_eq!(back, run);
        assert!(!serde_json::to_string(&run).unwrap().contains('\n'));
    }
}
