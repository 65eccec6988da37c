//! Criterion suites live beside this file; see `scheduler.rs`. This crate has no library code.
