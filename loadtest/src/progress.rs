//! Live progress: indicatif bars on a terminal, one plain line per second otherwise (CI logs).

use std::io::IsTerminal;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::plan::Plan;
use crate::publish::PubProgress;
use crate::stats::Live;

/// Counters summed over workers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sums {
    pub open: u64,
    pub settled: u64,
    pub failed: u64,
    pub deliveries: u64,
    pub sent: u64,
    pub reconnects: u64,
    pub published: u64,
    pub publish_errors: u64,
}

impl Sums {
    pub fn gather(lives: &[Arc<Live>], pubs: &PubProgress) -> Sums {
        let mut s = Sums {
            published: pubs.attempted.load(Relaxed),
            publish_errors: pubs.errors.load(Relaxed),
            ..Sums::default()
        };
        for l in lives {
            s.open += l.open.load(Relaxed);
            s.settled += l.settled.load(Relaxed);
            s.failed += l.failed.load(Relaxed);
            s.deliveries += l.deliveries.load(Relaxed);
            s.sent += l.sent.load(Relaxed);
            s.reconnects += l.reconnects.load(Relaxed);
        }
        s
    }
}

pub enum Display {
    Quiet,
    Lines {
        last_line: f64,
        last: (f64, u64),
        sockets: u64,
        traffic_total: u64,
    },
    Bars {
        _multi: MultiProgress,
        connect: ProgressBar,
        traffic: Option<ProgressBar>,
        deliver: Option<ProgressBar>,
        last: (f64, u64),
    },
}

impl Display {
    pub fn new(plan: &Plan) -> Display {
        if plan.opts.quiet {
            return Display::Quiet;
        }
        let traffic_total = if plan.kind.api_publishes() {
            plan.api_publications
        } else {
            plan.sockets * plan.socket_messages
        };
        if !std::io::stderr().is_terminal() {
            return Display::Lines {
                last_line: -1.0,
                last: (0.0, 0),
                sockets: plan.sockets,
                traffic_total,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let style = |label: &str| {
            ProgressStyle::with_template(&format!(
                "{label:>9} [{{bar:40.cyan/blue}}] {{pos:>9}}/{{len:<9}} {{msg}}"
            ))
            .expect("valid template")
            .progress_chars("=> ")
        };
        let connect = multi.add(ProgressBar::new(plan.sockets).with_style(style("connect")));
        let traffic = (traffic_total > 0).then(|| {
            let label = if plan.kind.api_publishes() {
                "publish"
            } else {
                "send"
            };
            multi.add(ProgressBar::new(traffic_total).with_style(style(label)))
        });
        let hint = plan.expected_deliveries_hint();
        let deliver = (hint > 0 || plan.kind == crate::plan::Kind::Raw).then(|| {
            let bar = ProgressBar::new(hint.max(1));
            multi.add(bar.with_style(style("deliver")))
        });
        Display::Bars {
            _multi: multi,
            connect,
            traffic,
            deliver,
            last: (0.0, 0),
        }
    }

    pub fn update(&mut self, s: &Sums, t: f64, force: bool) {
        match self {
            Display::Quiet => {}
            Display::Lines {
                last_line,
                last,
                sockets,
                traffic_total,
            } => {
                if t - *last_line < 1.0 && !force {
                    return;
                }
                *last_line = t;
                let rate = per_sec(last, t, s.deliveries);
                let mut line =
                    format!("[{t:7.1}s] open {}/{} failed {}", s.open, sockets, s.failed);
                if *traffic_total > 0 {
                    let done = s.published.max(s.sent);
                    line.push_str(&format!(" | sent {done}/{traffic_total}"));
                    if s.publish_errors > 0 {
                        line.push_str(&format!(" ({} errors)", s.publish_errors));
                    }
                }
                line.push_str(&format!(" | delivered {} ({rate:.0}/s)", s.deliveries));
                if s.reconnects > 0 {
                    line.push_str(&format!(" | reconnects {}", s.reconnects));
                }
                eprintln!("{line}");
            }
            Display::Bars {
                connect,
                traffic,
                deliver,
                last,
                ..
            } => {
                connect.set_position(s.settled);
                connect.set_message(format!("open {} failed {}", s.open, s.failed));
                if let Some(b) = traffic {
                    b.set_position(s.published.max(s.sent));
                    if s.publish_errors > 0 {
                        b.set_message(format!("{} errors", s.publish_errors));
                    }
                }
                if let Some(b) = deliver {
                    if s.deliveries > b.length().unwrap_or(0) {
                        b.set_length(s.deliveries);
                    }
                    b.set_position(s.deliveries);
                    if t - last.0 >= 0.5 {
                        let rate = per_sec(last, t, s.deliveries);
                        b.set_message(format!("{rate:.0}/s"));
                    }
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Display::Bars {
            connect,
            traffic,
            deliver,
            ..
        } = self
        {
            connect.abandon();
            if let Some(b) = traffic {
                b.abandon();
            }
            if let Some(b) = deliver {
                b.abandon();
            }
        }
    }
}

/// Rate since the previous call, which becomes the new reference point.
fn per_sec(last: &mut (f64, u64), t: f64, v: u64) -> f64 {
    let dt = t - last.0;
    let r = if dt > 0.0 {
        v.saturating_sub(last.1) as f64 / dt
    } else {
        0.0
    };
    *last = (t, v);
    r
}
