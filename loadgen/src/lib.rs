//! loadgen: Herald's load generator.
//!
//! - [`cli`]: the command line and the run plan it makes.
//! - [`scenario`]: priority mix and phases (steady, overload, burst, or a TOML file).
//! - [`work`]: open-loop (coordinated-omission-corrected, wrk2-style) and closed-loop
//!   drivers over a keep-alive HTTP/1.1 or h2c client.
//! - [`request`]: request bodies (each payload marked with run, sequence and send time)
//!   and reading Herald's answers.
//! - [`resend`]: requests sent again with their idempotency keys after the load, each
//!   of which must be a replay of its first answer.
//! - [`stats`]: HdrHistograms per priority and error counts.
//! - [`sink`]: the HTTP server notifications are addressed to, for end-to-end latency and
//!   loss accounting.
//! - [`clock`]: send and receipt stamps, both off the monotonic clock.
//! - [`monitor`]: live progress. [`report`]: table, summary.json, percentile files, SVG.
//!   [`slo`]: objectives that set the exit status.

pub mod cli;
pub mod clock;
pub mod monitor;
pub mod report;
pub mod request;
pub mod resend;
pub mod scenario;
pub mod sink;
pub mod slo;
pub mod stats;
pub mod work;
