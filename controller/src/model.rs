//! The domain records, from the pure layer (`skiff-model`). Time is read from the core's
//! `Clock` (crate::clock), never here.

pub use skiff_model::model::*;
