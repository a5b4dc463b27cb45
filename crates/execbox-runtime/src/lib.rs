//! Language runtimes for execbox. Python is the first: where its environment lives, how it is
//! exposed in the jail, the harness that implements the `main()` contract, and how a jail
//! [`Outcome`](execbox_jail::Outcome) becomes a [`RunRecord`](execbox_proto::RunRecord).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod python;
pub mod record;

pub use python::{PythonRuntime, RuntimeError};
pub use record::{build_record, RunMeta};
