//! Examples live in this package's `[[example]]` targets; run them with `cargo run --example NAME`.
