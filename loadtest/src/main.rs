//! wsbench: ferrocast's bundled WebSocket load generator. See loadtest/README.md.

mod cli;
mod output;
mod plan;
mod procfs;
mod progress;
mod proto;
mod publish;
mod report;
mod run;
mod stats;
mod target;
mod token;
mod tracker;
mod worker;
mod ws;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::Cli;
use crate::plan::Plan;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_fd_limit();
    let threads = match cli.opts.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsbench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(main_async(cli));
    // Do not wait for blocking reads (a worker's stdin) or sockets still closing.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("wsbench: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn main_async(cli: Cli) -> Result<u8> {
    let worker = cli.opts.worker_index;
    let run_id = cli
        .opts
        .run_id
        .unwrap_or_else(|| rand::random::<u32>() as u64);
    let plan = Arc::new(Plan::new(cli.scenario, cli.opts, run_id).await?);
    if let Some(index) = worker {
        run::worker_process(plan, index).await?;
        return Ok(0);
    }
    let gathered = run::orchestrate(plan.clone()).await?;
    let (figures, latency) = output::figures(&plan, &gathered);
    if plan.opts.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        print!("{}", output::table(&figures));
    }
    if let Some(path) = &plan.opts.report {
        std::fs::write(path, report::html(&figures, &latency))
            .with_context(|| format!("writing {}", path.display()))?;
        if !plan.opts.json {
            println!("report: {}", path.display());
        }
    }
    Ok(figures.outcome.exit_code.clamp(0, 255) as u8)
}

/// Sockets are file descriptors: take the whole hard limit.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
