//! The integration harness the suites share: the root check ([`root`]), the real server
//! ([`server`]; on the host, or in a container with [`docker`]), HTTP to it ([`http`]), tokens
//! for it ([`tokens`]), and what the host shows of jails and their leftovers ([`host`]).
#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod docker;
pub mod host;
pub mod http;
pub mod root;
pub mod server;
pub mod tokens;

pub use docker::skip_in_container;
pub use http::{client, metric, send, status_of, Api, Resp};
pub use root::{in_ci, privileged, report_skip};
pub use server::{Options, Server};
