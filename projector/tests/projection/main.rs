//! Projection tests: events applied straight into a generation of a throwaway
//! database, read back through the real read API (in-process).

mod api;
mod apply_fuzz;
mod console;
mod consumer;
mod families;
mod helpers;
mod hostile;
mod imported;
mod members;
mod order_independence;
mod poison;
mod replay;
