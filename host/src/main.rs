//! The `drover-host` command.

fn main() {}
