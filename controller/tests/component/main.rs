//! The component tier: the controller in-process on a manual clock, driven through its gRPC
//! API and fake agents (see harness.rs). What real containers prove lives in `tests/`; what
//! the decisions alone prove lives beside the code.

mod harness;
mod node_loss;
mod notification_retries;
mod queues;
mod rule_retries;
mod schedule_catch_up;
mod services;
