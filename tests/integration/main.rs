#![allow(unreachable_pub)]
//! All integration tests in one binary (one link): real nodes and a real
//! coordinator on ephemeral loopback ports, over mutual TLS, on Parquet data
//! written by `samkor synth`.

mod cli;
mod cluster;
mod common;
mod console;
mod coordinator;
mod direct;
mod disclosure;
mod governance;
mod matrix;
mod node;
mod observability;
mod pg;
mod postgres;
mod python;
mod readme;
mod reconstruction;
mod statistics;
