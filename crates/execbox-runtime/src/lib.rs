//! Language runtimes for execbox: runtime packages ([`package`]: a manifest, a smoke test,
//! optional harness files) and the stages they run in, Python's environment and its `main()`
//! harness, and how a jail [`Outcome`](execbox_jail::Outcome) becomes a
//! [`RunRecord`](execbox_proto::RunRecord).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod outfiles;
pub mod package;
pub mod python;
pub mod record;

pub use outfiles::{read_files, FilesCap};
pub use package::{discover, wrapped_status, Discovery, Manifest, ManifestError, Package};
pub use python::{PythonRuntime, RuntimeError};
pub use record::{build_record, compile_verdict, CompileVerdict, RunMeta};
