//! End-to-end tests against one real `skiff dev` process running real containers, by feature.
//! (What the controller's decisions and timing alone prove is in the component tier,
//! `controller/tests/component`.)

mod access;
mod api;
mod containers;
mod history;
mod lifecycle;
mod recovery;
