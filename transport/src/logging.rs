//! The log both binaries write to standard error: `env_logger`'s filters (`RUST_LOG`), with
//! every message passed through [`wire::text::terminal_safe`] first. Log lines quote peers
//! (file names, reasons, addresses they claimed); none of it may reach the terminal raw.

use std::io::Write;

/// Starts logging to standard error at `RUST_LOG`'s levels, or `default` without it.
pub fn init(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(|buf, record| {
            let message = record.args().to_string();
            writeln!(
                buf,
                "[{} {:<5} {}] {}",
                buf.timestamp(),
                record.level(),
                record.target(),
                wire::text::terminal_safe(&message)
            )
        })
        .init();
}
