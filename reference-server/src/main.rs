//! `freelane-server`: parse the configuration, build the components, serve, and shut down
//! gracefully on SIGINT/SIGTERM. Everything else lives in the library (`freelane_server`).

use std::process::ExitCode;

use clap::Parser;
use freelane_server::config::Args;

fn main() -> ExitCode {
    let config = match Args::parse().validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("freelane-server: {e}");
            return ExitCode::from(2);
        }
    };
    let _log_guard = match freelane_server::logging::init(config.log_format, config.log_level) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("freelane-server: cannot start logging: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("freelane-server: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
        let app = freelane_server::build_app(&config).map_err(|e| e.to_string())?;
        app.serve(listener, freelane_server::shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            // The log may be asynchronous: say it on stderr too.
            eprintln!("freelane-server: {e}");
            ExitCode::from(1)
        }
    }
    // `_log_guard` drops here (after the runtime's last log line): it flushes the log.
}
