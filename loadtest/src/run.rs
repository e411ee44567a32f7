//! The parent process: starts the workers (in-process, or `--procs K` re-executions of itself that
//! talk JSON lines over stdin/stdout), steps them through the phases, publishes through the API,
//! watches progress, and merges what they report.

use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::plan::{Kind, Plan};
use crate::procfs;
use crate::progress::{Display, Sums};
use crate::publish::{self, PubProgress, PublishOutcome};
use crate::stats::{Live, WorkerReport};
use crate::worker::{run_worker, Ctl, Event};

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    TimedOut,
    Interrupted,
}

/// One point of the time series (sampled twice a second).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SeriesPoint {
    pub t_s: f64,
    pub open: u64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub published: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_kib: Option<u64>,
}

/// Everything the parent gathered, for `output` to turn into figures.
pub struct Gathered {
    pub ending: Ending,
    pub reports: Vec<WorkerReport>,
    pub worker_errors: Vec<String>,
    pub publish: Option<PublishOutcome>,
    pub series: Vec<SeriesPoint>,
    pub started_ns: u64,
    pub elapsed: Duration,
    /// Seconds from start when every socket had settled, and when traffic ended.
    pub ramp_s: Option<f64>,
    pub marks: Marks,
    pub client_cpu_s: f64,
}

/// Phase boundaries: when traffic began, and /proc samples of the node at each boundary.
#[derive(Debug, Default, Clone)]
pub struct Marks {
    /// Unix nanos when the workers were told to go.
    pub go_ns: u64,
    pub start: Option<procfs::Sample>,
    /// Every socket settled.
    pub ramp_end: Option<procfs::Sample>,
    /// End of `--hold` (connect).
    pub held: Option<procfs::Sample>,
    pub end: Option<procfs::Sample>,
    pub peak_rss_kib: u64,
    /// Sockets open at `held` (or `ramp_end`).
    pub sockets_at_sample: u64,
    pub million: Option<MillionMarks>,
}

/// million: when each step happened (Unix nanos, 0 = not reached) and what the parent saw.
#[derive(Debug, Default, Clone)]
pub struct MillionMarks {
    pub ramp_end_ns: u64,
    pub hold_end_ns: u64,
    /// Sockets open at the end of the hold: the broadcast's audience.
    pub open_at_hold: u64,
    pub broadcast: Option<PublishOutcome>,
    /// Every socket open at the hold had a broadcast delivery (or --drain ran out).
    pub broadcast_done_ns: u64,
    pub notify: Option<PublishOutcome>,
    /// Every worker reported its sockets complete (or --drain ran out).
    pub delivered_ns: u64,
    pub drain_pid: Option<u32>,
    pub drain_signal_ns: u64,
    pub drain_done_ns: u64,
    pub open_before_drain: u64,
    pub open_after_drain: u64,
    /// The drained node exited and every socket it closed is back (or gave up) within --drain.
    pub drain_complete: bool,
    pub drain_node_exited: bool,
}

struct Link {
    ctl: mpsc::UnboundedSender<Ctl>,
    live: Arc<Live>,
    child: Option<Child>,
}

impl Link {
    fn send(&self, c: Ctl) {
        let _ = self.ctl.send(c);
    }
}

fn in_process(plan: &Arc<Plan>, events: &mpsc::UnboundedSender<(u32, Event)>) -> Link {
    let live = Arc::new(Live::default());
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(run_worker(plan.clone(), 0, live.clone(), ctl_rx, ev_tx));
    let out = events.clone();
    tokio::spawn(async move {
        while let Some(e) = ev_rx.recv().await {
            let _ = out.send((0, e));
        }
    });
    Link {
        ctl: ctl_tx,
        live,
        child: None,
    }
}

/// Re-executes this binary as worker `index`, with the same arguments.
fn child_process(
    plan: &Plan,
    index: u32,
    events: &mpsc::UnboundedSender<(u32, Event)>,
) -> Result<Link> {
    let exe = std::env::current_exe().context("locating the wsbench binary")?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--worker-index")
        .arg(index.to_string())
        .arg("--run-id")
        .arg(plan.run_id.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a worker process")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let live = Arc::new(Live::default());
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Ctl>();
    tokio::spawn(async move {
        while let Some(c) = ctl_rx.recv().await {
            let mut line = serde_json::to_string(&c).expect("ctl serializes");
            line.push('\n');
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    let (out, live2) = (events.clone(), live.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut reported = false;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(Event::Progress(p)) => live2.store(&p),
                Ok(e) => {
                    reported |= matches!(e, Event::Report(_));
                    let _ = out.send((index, e));
                }
                Err(e) => {
                    let _ = out.send((
                        index,
                        Event::Failed(format!("bad line from worker {index}: {e}")),
                    ));
                }
            }
        }
        if !reported {
            let _ = out.send((
                index,
                Event::Failed(format!("worker {index} exited without a report")),
            ));
        }
    });
    Ok(Link {
        ctl: ctl_tx,
        live,
        child: Some(child),
    })
}

/// Worker-process main: stdin lines are `Ctl`, stdout lines are `Event`.
pub async fn worker_process(plan: Arc<Plan>, index: u32) -> Result<()> {
    let live = Arc::new(Live::default());
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(c) = serde_json::from_str::<Ctl>(&line) {
                let _ = ctl_tx.send(c);
            }
        }
        // The parent is gone: stop.
        let _ = ctl_tx.send(Ctl::Stop);
    });
    tokio::spawn(run_worker(plan, index, live.clone(), ctl_rx, ev_tx));
    // Ctrl-C reaches the whole process group: the parent decides, workers wait for its Stop.
    tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    let mut stdout = tokio::io::stdout();
    // Frequent progress lines keep the parent's flood window close to real time.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let ev = tokio::select! {
            e = ev_rx.recv() => match e { Some(e) => e, None => break },
            _ = tick.tick() => Event::Progress(live.snapshot()),
        };
        let last = matches!(ev, Event::Report(_));
        let ev = match ev {
            Event::Report(mut r) => {
                r.cpu_s = crate::stats::self_cpu_seconds();
                Event::Report(r)
            }
            e => e,
        };
        let mut line = serde_json::to_string(&ev)?;
        line.push('\n');
        stdout.write_all(line.as_bytes()).await?;
        stdout.flush().await?;
        if last {
            break;
        }
    }
    Ok(())
}

/// Per-run state the phases update as events arrive.
struct Collect {
    ready: usize,
    /// million: workers whose sockets have everything.
    delivered: usize,
    reports: Vec<Option<WorkerReport>>,
    errors: Vec<String>,
}

impl Collect {
    fn apply(&mut self, (i, e): (u32, Event)) {
        match e {
            Event::Ready => self.ready += 1,
            Event::Delivered => self.delivered += 1,
            Event::Report(r) => self.reports[i as usize] = Some(*r),
            Event::Failed(msg) => self.errors.push(msg),
            Event::Progress(_) => {}
        }
    }

    fn all_reported(&self) -> bool {
        self.reports.iter().all(Option::is_some)
    }
}

pub async fn orchestrate(plan: Arc<Plan>) -> Result<Gathered> {
    let t_start = Instant::now();
    let started_ns = crate::stats::now_ns();
    let mut marks = Marks::default();
    let pid = plan.opts.server_pid;
    if let Some(p) = pid {
        marks.start = procfs::sample(p);
        if marks.start.is_none() {
            bail!("--server-pid {p}: cannot read /proc/{p}/status and /proc/{p}/stat");
        }
    }
    let procs = plan.procs as usize;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut links = Vec::with_capacity(procs);
    if procs == 1 {
        links.push(in_process(&plan, &ev_tx));
    } else {
        for i in 0..procs {
            links.push(child_process(&plan, i as u32, &ev_tx)?);
        }
    }
    drop(ev_tx);
    let lives: Vec<Arc<Live>> = links.iter().map(|l| l.live.clone()).collect();
    let pub_progress = Arc::new(PubProgress::default());
    let (mon_stop_tx, mon_stop_rx) = watch::channel(false);
    let monitor = tokio::spawn(monitor(
        plan.clone(),
        lives.clone(),
        pub_progress.clone(),
        t_start,
        mon_stop_rx,
    ));

    let mut col = Collect {
        ready: 0,
        delivered: 0,
        reports: vec![None; procs],
        errors: Vec::new(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut publisher: Option<JoinHandle<Result<PublishOutcome>>> = None;
    let mut ramp_s = None;
    let deadline = plan.opts.timeout.map(|t| t_start + t);

    let mut publish = None;
    let ending = {
        let phases = phases(
            &plan,
            &links,
            &lives,
            &mut ev_rx,
            &mut col,
            &mut publisher,
            &mut publish,
            &pub_progress,
            stop_rx,
            &mut marks,
            &mut ramp_s,
            t_start,
        );
        tokio::pin!(phases);
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut phases => { r?; Ending::Completed }
            _ = until => Ending::TimedOut,
            _ = tokio::signal::ctrl_c() => Ending::Interrupted,
        }
    };

    if ending != Ending::Completed {
        let _ = stop_tx.send(true);
        if let Some(h) = publisher.take() {
            if let Ok(Ok(Ok(o))) = tokio::time::timeout(Duration::from_secs(35), h).await {
                for l in &links {
                    l.send(Ctl::Expected(o.counts.clone()));
                }
                publish = Some(o);
            }
        }
        for l in &links {
            l.send(Ctl::Stop);
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while !col.all_reported() {
                match ev_rx.recv().await {
                    Some(e) => col.apply(e),
                    None => break,
                }
            }
        })
        .await;
    }
    let _ = mon_stop_tx.send(true);
    let (series, peak) = monitor.await.unwrap_or_default();
    marks.peak_rss_kib = peak;
    if let Some(p) = pid {
        marks.end = procfs::sample(p);
    }
    let mut client_cpu_s = crate::stats::self_cpu_seconds();
    for l in &mut links {
        // Closing a worker's stdin is its cue to exit.
        l.ctl = mpsc::unbounded_channel().0;
        if let Some(c) = l.child.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
    }
    let missing = col.reports.iter().filter(|r| r.is_none()).count();
    if missing > 0 {
        col.errors
            .push(format!("{missing} worker(s) sent no report"));
    }
    let reports: Vec<WorkerReport> = col.reports.into_iter().flatten().collect();
    client_cpu_s += reports.iter().map(|r| r.cpu_s).sum::<f64>();
    Ok(Gathered {
        ending,
        reports,
        worker_errors: col.errors,
        publish,
        series,
        started_ns,
        elapsed: t_start.elapsed(),
        ramp_s,
        marks,
        client_cpu_s,
    })
}

#[allow(clippy::too_many_arguments)]
async fn phases(
    plan: &Arc<Plan>,
    links: &[Link],
    lives: &[Arc<Live>],
    ev_rx: &mut mpsc::UnboundedReceiver<(u32, Event)>,
    col: &mut Collect,
    publisher: &mut Option<JoinHandle<Result<PublishOutcome>>>,
    published: &mut Option<PublishOutcome>,
    pub_progress: &Arc<PubProgress>,
    stop_rx: watch::Receiver<bool>,
    marks: &mut Marks,
    ramp_s: &mut Option<f64>,
    t_start: Instant,
) -> Result<()> {
    let procs = links.len();
    let pid = plan.opts.server_pid;
    let next = |col: &mut Collect, e: Option<(u32, Event)>| -> Result<()> {
        let e = e.ok_or_else(|| anyhow!("every worker went away"))?;
        col.apply(e);
        if let Some(msg) = col.errors.first() {
            bail!("{msg}");
        }
        Ok(())
    };
    // 1. Ramp: every worker settled all its sockets.
    while col.ready < procs {
        next(col, ev_rx.recv().await)?;
    }
    *ramp_s = Some(t_start.elapsed().as_secs_f64());
    let open_now = || lives.iter().map(|l| l.open.load(Relaxed)).sum::<u64>();
    if let Some(p) = pid {
        marks.ramp_end = procfs::sample(p);
        marks.sockets_at_sample = open_now();
    }
    // 2. Traffic.
    marks.go_ns = crate::stats::now_ns();
    for l in links {
        l.send(Ctl::Go);
    }
    let kind = plan.kind;
    if kind.is_connect() {
        let hold = tokio::time::sleep(plan.hold());
        tokio::pin!(hold);
        loop {
            tokio::select! {
                _ = &mut hold => break,
                e = ev_rx.recv() => next(col, e)?,
            }
        }
        if let Some(p) = pid {
            // The held sockets are the steady state the per-socket figure is about.
            marks.held = procfs::sample(p);
            marks.sockets_at_sample = open_now();
        }
        for l in links {
            l.send(Ctl::Expected(Vec::new()));
        }
    } else if kind == Kind::Million {
        let m = million_steps(plan, links, lives, ev_rx, col, pub_progress, marks).await?;
        let (b, n) = (m.broadcast.clone(), m.notify.clone());
        *published = merge_outcomes(b, n);
        marks.million = Some(m);
        for l in links {
            l.send(Ctl::Stop);
        }
    } else if kind.api_publishes() {
        let lives2: Vec<Arc<Live>> = lives.to_vec();
        let delivered = move || {
            lives2.iter().fold((0, 0), |(d, o), l| {
                (d + l.deliveries.load(Relaxed), o + l.open.load(Relaxed))
            })
        };
        let handle = tokio::spawn(publish::run(
            plan.clone(),
            pub_progress.clone(),
            delivered,
            stop_rx,
        ));
        *publisher = Some(handle);
        let outcome = loop {
            let h = publisher.as_mut().expect("publisher just started");
            tokio::select! {
                r = h => {
                    *publisher = None;
                    break r.map_err(|e| anyhow!("publisher task: {e}"))??;
                }
                e = ev_rx.recv() => next(col, e)?,
            }
        };
        for l in links {
            l.send(Ctl::Expected(outcome.counts.clone()));
        }
        *published = Some(outcome);
    }
    // 3. Drain and reports.
    while !col.all_reported() {
        next(col, ev_rx.recv().await)?;
    }
    Ok(())
}

fn apply(col: &mut Collect, e: Option<(u32, Event)>) -> Result<()> {
    let e = e.ok_or_else(|| anyhow!("every worker went away"))?;
    col.apply(e);
    if let Some(msg) = col.errors.first() {
        bail!("{msg}");
    }
    Ok(())
}

/// Handles worker events for at most `d` or until `done()`; whether `done()` came true.
async fn pump(
    ev_rx: &mut mpsc::UnboundedReceiver<(u32, Event)>,
    col: &mut Collect,
    d: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<bool> {
    let until = tokio::time::Instant::now() + d;
    loop {
        if done() {
            return Ok(true);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Ok(done()),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            e = ev_rx.recv() => apply(col, e)?,
        }
    }
}

/// A process that has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// million, after the ramp and `Go`: hold, one broadcast, the notifications, the expected
/// counts to every worker, then (with --drain-pid) SIGTERM to that node until its sockets are
/// back on the others.
async fn million_steps(
    plan: &Arc<Plan>,
    links: &[Link],
    lives: &[Arc<Live>],
    ev_rx: &mut mpsc::UnboundedReceiver<(u32, Event)>,
    col: &mut Collect,
    pub_progress: &Arc<PubProgress>,
    marks: &mut Marks,
) -> Result<MillionMarks> {
    let sum = |f: fn(&Live) -> u64| lives.iter().map(|l| f(l)).sum::<u64>();
    let open = || sum(|l| l.open.load(Relaxed));
    let now = crate::stats::now_ns;
    let mut m = MillionMarks {
        ramp_end_ns: marks.go_ns,
        drain_pid: plan.opts.drain_pid,
        ..MillionMarks::default()
    };
    pump(ev_rx, col, plan.hold(), || false).await?;
    if let Some(p) = plan.opts.server_pid {
        marks.held = procfs::sample(p);
    }
    m.hold_end_ns = now();
    m.open_at_hold = open();
    marks.sockets_at_sample = m.open_at_hold;

    let b = publish::million_broadcast(plan, pub_progress).await?;
    let before = sum(|l| l.deliveries.load(Relaxed));
    let audience = m.open_at_hold;
    pump(ev_rx, col, plan.opts.drain, || {
        sum(|l| l.deliveries.load(Relaxed)) >= before + audience
    })
    .await?;
    m.broadcast_done_ns = now();
    let counts = b.counts.clone();
    m.broadcast = Some(b);

    let (n, per_user) = publish::million_notify(plan, pub_progress).await?;
    m.notify = Some(n);
    let mut per_worker: Vec<Vec<(u64, u64)>> = vec![Vec::new(); links.len()];
    for (s, c) in per_user {
        per_worker[plan.worker_of(s) as usize].push((s, c));
    }
    for (l, users) in links.iter().zip(per_worker) {
        l.send(Ctl::ExpectedUsers(users));
        l.send(Ctl::Expected(counts.clone()));
    }
    while col.delivered < links.len() {
        apply(col, ev_rx.recv().await)?;
    }
    m.delivered_ns = now();

    if let Some(pid) = plan.opts.drain_pid {
        m.open_before_drain = open();
        m.drain_signal_ns = now();
        // SAFETY: kill(2) with a plain pid and signal number.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
            bail!("--drain-pid {pid}: {}", std::io::Error::last_os_error());
        }
        m.drain_complete = pump(ev_rx, col, plan.opts.drain, || {
            let drained = sum(|l| l.drained.load(Relaxed));
            let settled =
                sum(|l| l.failovers.load(Relaxed)) + sum(|l| l.failover_failed.load(Relaxed));
            exited(pid) && drained > 0 && settled >= drained
        })
        .await?;
        m.drain_done_ns = now();
        m.drain_node_exited = exited(pid);
        m.open_after_drain = open();
    }
    Ok(m)
}

/// The broadcast and the notifications as one publisher's outcome (for the traffic figures).
fn merge_outcomes(a: Option<PublishOutcome>, b: Option<PublishOutcome>) -> Option<PublishOutcome> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.attempted += b.attempted;
            a.ok += b.ok;
            crate::stats::merge_reasons(&mut a.errors, &b.errors);
            crate::stats::merge_into(&mut a.api_latency, &b.api_latency);
            a.last_ns = a.last_ns.max(b.last_ns);
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

/// Progress output and the twice-a-second time series; returns (series, peak server RSS).
async fn monitor(
    plan: Arc<Plan>,
    lives: Vec<Arc<Live>>,
    pubs: Arc<PubProgress>,
    t_start: Instant,
    mut stop: watch::Receiver<bool>,
) -> (Vec<SeriesPoint>, u64) {
    let mut display = Display::new(&plan);
    let mut series: Vec<SeriesPoint> = Vec::new();
    let mut peak = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_sample = Instant::now() - Duration::from_secs(2);
    let mut prev = (0.0f64, 0u64);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let sums = Sums::gather(&lives, &pubs);
        let t = t_start.elapsed().as_secs_f64();
        display.update(&sums, t, stopping);
        if last_sample.elapsed() >= Duration::from_millis(500) || stopping {
            last_sample = Instant::now();
            let rss = plan
                .opts
                .server_pid
                .and_then(procfs::sample)
                .map(|s| s.rss_kib);
            peak = peak.max(rss.unwrap_or(0));
            let dt = t - prev.0;
            let rate = if dt > 0.0 {
                sums.deliveries.saturating_sub(prev.1) as f64 / dt
            } else {
                0.0
            };
            prev = (t, sums.deliveries);
            series.push(SeriesPoint {
                t_s: (t * 10.0).round() / 10.0,
                open: sums.open,
                deliveries: sums.deliveries,
                deliveries_per_s: rate.round(),
                published: sums.published,
                server_rss_kib: rss,
            });
        }
        if stopping {
            break;
        }
    }
    display.finish();
    (series, peak)
}
