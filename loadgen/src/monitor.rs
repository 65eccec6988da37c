//! The live view: once a second, the achieved rate, errors and interval p99 per priority.
//! An indicatif line on a terminal; a plain line on stderr otherwise (CI logs).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use crate::scenario::Priority;
use crate::stats::Stats;

/// A running monitor; stops when dropped or `stop`ped.
pub struct Monitor {
    task: JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Monitor {
    pub fn start(stats: Arc<Stats>, total: Duration) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total.as_secs().max(1));
            bar.set_style(
                ProgressStyle::with_template("[{elapsed_precise}] {bar:20} {msg}")
                    .expect("valid template"),
            );
            bar
        });
        let task_bar = bar.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = [0u64; 3];
            let mut errors_last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let mut line = String::new();
                let mut errors = 0;
                for p in Priority::ALL {
                    let totals = stats.totals(p);
                    let interval = stats.take_interval(p);
                    errors += totals.errors();
                    let rate = totals.requests - last[p.index()];
                    last[p.index()] = totals.requests;
                    if totals.requests > 0 {
                        line.push_str(&format!(
                            "{p} {rate}/s p99 {:.2}ms | ",
                            interval.value_at_quantile(0.99) as f64 / 1000.0
                        ));
                    }
                }
                line.push_str(&format!("errors +{}", errors - errors_last));
                errors_last = errors;
                match &task_bar {
                    Some(bar) => {
                        bar.set_position(started.elapsed().as_secs());
                        bar.set_message(line);
                    }
                    None => eprintln!("[{:>4}s] {line}", started.elapsed().as_secs()),
                }
            }
        });
        Monitor { task, bar }
    }

    pub fn stop(self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
