use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    let cli = agent::config::Cli::parse();
    return_large_buffers();
    agent::telemetry::init(
        agent::telemetry::format_from_env(cli.log_format),
        "info,aws_config=warn,aws_smithy_runtime=warn",
    );
    // rustls sees two crypto providers in this build (ring for gRPC, aws-lc-rs from the AWS
    // SDK); name one or TLS to the controller panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walfleet-agent: start runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let cancel = CancellationToken::new();
    rt.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            agent::signals::cancel_on_signal(c).await;
        });
        match agent::app::run(cli.command, cancel).await {
            Ok(code) => std::process::ExitCode::from(code as u8),
            Err(e) => {
                // Once, as a log line (JSON when asked): the platform's log viewer shows it.
                tracing::error!("{e:#}");
                std::process::ExitCode::from(1)
            }
        }
    })
}

/// glibc raises its mmap threshold to the size of each large buffer freed, after which upload
/// buffers (megabytes each) come from the heap and stay there: peak memory would follow the
/// largest burst ever, not what is in flight. A fixed threshold hands them back when freed.
#[allow(unsafe_code)]
fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called first thing in main, before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
