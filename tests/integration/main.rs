#![allow(unreachable_pub)]
//! All integration tests in one binary (one link): real nodes and a real
//! coordinator on ephemeral loopback ports, over mutual TLS, on Parquet data
//! written by `samkor synth`.

mod cli;
mod common;
mod matrix;
mod console;
mod coordinator;
mod disclosure;
mod direct;
mod governance;
mod node;
mod observability;
mod pg;
mod postgres;
mod python;
mod reconstruction;
mod readme;
