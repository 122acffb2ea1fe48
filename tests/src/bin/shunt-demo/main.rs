//! `cargo xtask demo`: a mini-cluster of network namespaces on this machine, with the real agent
//! and real eBPF capture, showing keyed requests steered to a sandbox and everything else on
//! baseline.
//!
//! ```text
//! shunt-demo            bring it up, send requests, print the paths and the decision log, tear down
//! shunt-demo --keep     ...and leave it up, printing how to curl it by hand
//! shunt-demo --down     remove a kept (or interrupted) mini-cluster
//! shunt-demo --check    like the default, and fail unless every request took the expected path
//! ```
//!
//! Everything it creates is named, so it can be found again: network namespaces `shunt-demo-*`,
//! the cgroup `<cgroup2 mount>/shunt-demo` (the pods' processes in `captured/`, the agent in
//! `agent/`), and `/run/shunt-demo/` (state file, routes file, logs, the agent's bpffs at `bpf/`).
//! Teardown works from those names alone, whether it runs at the end, on Ctrl-C, or from
//! `--down`. A second run while one is up is refused; what a killed run left behind is removed.
mod cluster;
mod gate;
mod report;
mod routes;
mod teardown;

use std::{process::ExitCode, time::Instant};

use cluster::Cluster;

const USAGE: &str = "usage: shunt-demo [--keep | --down | --check]";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Show,
    Keep,
    Check,
    Down,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => Mode::Show,
        ["--keep"] => Mode::Keep,
        ["--check"] => Mode::Check,
        ["--down"] => Mode::Down,
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(why) = cluster::preflight() {
        eprintln!("shunt-demo: cannot run here: {why:#}");
        return ExitCode::from(2);
    }
    // Before any thread exists, so every thread inherits the blocked signals.
    gate::install_signal_handler();
    if mode == Mode::Down {
        gate::finish(|| match teardown::find() {
            None => {
                eprintln!("no demo mini-cluster is up");
                0
            }
            Some(what) => {
                progress(&format!("tearing down the mini-cluster ({what})"));
                println!("{}", teardown::down());
                0
            }
        });
    }
    let started = Instant::now();
    // Refused (another run owns the names): leave everything as it is.
    if let Err(e) = teardown::claim() {
        eprintln!("shunt-demo: {e:#}");
        return ExitCode::FAILURE;
    }
    let outcome = std::panic::catch_unwind(|| run(mode, started));
    match outcome {
        Ok(Ok(Done::Kept)) => gate::finish(|| 0),
        Ok(Ok(Done::Finished { ok })) => gate::finish(|| {
            progress("tearing down");
            let summary = teardown::down();
            eprintln!("{summary}");
            eprintln!("demo done in {:.1?}", started.elapsed());
            if ok { 0 } else { 1 }
        }),
        Ok(Err(e)) => {
            gate::wait_if_signalled();
            eprintln!("shunt-demo: {e:#}");
            gate::finish(|| {
                progress("tearing down");
                eprintln!("{}", teardown::down());
                1
            })
        }
        Err(_) => {
            gate::wait_if_signalled();
            gate::finish(|| {
                progress("tearing down after a panic");
                eprintln!("{}", teardown::down());
                101
            })
        }
    }
}

enum Done {
    /// Left up on purpose (`--keep`).
    Kept,
    /// Shown (and checked with `--check`); tear down.
    Finished { ok: bool },
}

fn run(mode: Mode, started: Instant) -> anyhow::Result<Done> {
    let cluster = Cluster::up()?;
    eprintln!("mini-cluster up in {:.1?}", started.elapsed());
    cluster.print_layout();
    progress("sending requests from the client pod");
    let rows = report::send_all(&cluster)?;
    println!();
    report::print_paths(&rows);
    let decisions = cluster.decisions(cluster::SANDBOX_KEY)?;
    println!();
    report::print_decisions(&cluster, cluster::SANDBOX_KEY, &decisions);
    let dropped = cluster.decisions(cluster::DROP_KEY)?;
    println!();
    report::print_decisions(&cluster, cluster::DROP_KEY, &dropped);
    let mut ok = true;
    if mode == Mode::Check {
        println!();
        ok = report::check(&rows, &decisions, cluster.injection, &dropped);
    }
    if mode == Mode::Keep {
        gate::step(teardown::mark_kept)?;
        println!();
        cluster.print_how_to_use();
        // The processes and namespaces stay: nothing owns them in this process any more.
        std::mem::forget(cluster);
        return Ok(Done::Kept);
    }
    Ok(Done::Finished { ok })
}

/// A progress line, on stderr like xtask's.
pub fn progress(msg: &str) {
    eprintln!("\x1b[1m==>\x1b[0m {msg}");
}
