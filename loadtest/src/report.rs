//! `--report FILE.html`: one self-contained page (inline CSS and SVG, no script, no network) with
//! the figures, the latency histogram and percentile curve, and deliveries/s and connections over
//! time.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::output::{num, rows, Figures};

const W: f64 = 760.0;
const H: f64 = 260.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 30.0;
const MB: f64 = 45.0;

pub fn html(f: &Figures, latency: &Histogram<u64>) -> String {
    let mut s = String::new();
    let verdict = if f.outcome.passed { "PASS" } else { "FAIL" };
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>wsbench {} — {}</title><style>\
         body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:820px;color:#222}}\
         h1{{font-size:20px}} h2{{font-size:16px;margin-top:28px}}\
         table{{border-collapse:collapse;width:100%}} td{{padding:3px 8px;border-bottom:1px solid #eee;vertical-align:top}}\
         td.k{{color:#555;white-space:nowrap}} td.s{{font-weight:600;padding-top:12px}}\
         .pass{{color:#16794a}} .fail{{color:#b3261e}} svg{{background:#fafafa;border:1px solid #e5e5e5}}\
         code{{background:#f3f3f3;padding:1px 4px}}</style></head><body>",
        esc(f.scenario),
        verdict
    );
    let _ = write!(
        s,
        "<h1>wsbench {} <span class=\"{}\">{}</span></h1><p><code>{}</code> · run {} · {:.2} s · \
         started {} (unix)</p>",
        esc(f.scenario),
        verdict.to_lowercase(),
        verdict,
        esc(&f.url),
        f.run_id,
        f.duration_s,
        f.started_unix_s as u64
    );
    if !f.outcome.problems.is_empty() {
        s.push_str("<ul class=\"fail\">");
        for p in &f.outcome.problems {
            let _ = write!(s, "<li>{}</li>", esc(p));
        }
        s.push_str("</ul>");
    }
    s.push_str("<h2>Figures</h2><table>");
    let mut section = "";
    for (sec, k, v) in rows(f) {
        if sec != section {
            section = sec;
            let _ = write!(
                s,
                "<tr><td class=\"s\" colspan=\"2\">{}</td></tr>",
                esc(sec)
            );
        }
        let _ = write!(
            s,
            "<tr><td class=\"k\">{}</td><td>{}</td></tr>",
            esc(&k),
            esc(&v)
        );
    }
    s.push_str("</table>");

    if !f.latency_histogram.is_empty() {
        s.push_str("<h2>Latency histogram</h2>");
        let bars: Vec<(String, f64)> = trimmed_buckets(f)
            .iter()
            .map(|b| (num(b.0), b.1 as f64))
            .collect();
        s.push_str(&bar_chart(
            &bars,
            "latency, ms (bucket upper bound)",
            "deliveries",
        ));
        s.push_str("<h2>Latency by percentile</h2>");
        s.push_str(&percentile_chart(latency));
    }
    let series = &f.series;
    if series.len() >= 2 {
        let pts = |g: &dyn Fn(&crate::run::SeriesPoint) -> f64| -> Vec<(f64, f64)> {
            series.iter().map(|p| (p.t_s, g(p))).collect()
        };
        if series.iter().any(|p| p.deliveries > 0) {
            s.push_str("<h2>Deliveries per second</h2>");
            s.push_str(&line_chart(
                &pts(&|p| p.deliveries_per_s),
                "time, s",
                "deliveries/s",
                "#1f77b4",
            ));
        }
        s.push_str("<h2>Open connections</h2>");
        s.push_str(&line_chart(
            &pts(&|p| p.open as f64),
            "time, s",
            "sockets",
            "#2ca02c",
        ));
        if series.iter().any(|p| p.server_rss_kib.is_some()) {
            s.push_str("<h2>Server RSS</h2>");
            s.push_str(&line_chart(
                &pts(&|p| p.server_rss_kib.unwrap_or(0) as f64 / 1024.0),
                "time, s",
                "MiB",
                "#d62728",
            ));
        }
    }
    s.push_str("<h2>All figures (JSON)</h2><details><summary>show</summary><pre>");
    s.push_str(&esc(&serde_json::to_string_pretty(f).unwrap_or_default()));
    s.push_str("</pre></details></body></html>\n");
    s
}

/// Buckets between the first and last non-empty one.
fn trimmed_buckets(f: &Figures) -> Vec<(f64, u64)> {
    let b = &f.latency_histogram;
    let first = b.iter().position(|x| x.count > 0).unwrap_or(0);
    let last = b.iter().rposition(|x| x.count > 0).unwrap_or(0);
    b[first..=last.max(first)]
        .iter()
        .map(|x| (x.le_ms, x.count))
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// 1-2-5 ticks covering [0, max].
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 {
        return vec![0.0, 1.0];
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| s * 5.0 >= max)
        .unwrap_or(10.0 * mag);
    let mut v = vec![0.0];
    while *v.last().expect("non-empty") < max {
        v.push(v.len() as f64 * step);
    }
    v
}

fn fmt_tick(v: f64) -> String {
    let short = |x: f64| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            num(x)
        }
    };
    if v >= 1e6 {
        format!("{}M", short(v / 1e6))
    } else if v >= 1e4 {
        format!("{}k", short(v / 1e3))
    } else {
        short(v)
    }
}

fn frame(xlabel: &str, ylabel: &str, yt: &[f64], ymax: f64) -> String {
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-size=\"11\" font-family=\"sans-serif\">");
    let (x0, x1, y0, y1) = (ML, W - MR, H - MB, MT);
    for &t in yt {
        let y = y0 - (t / ymax) * (y0 - y1);
        let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#e3e3e3\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", x0 - 6.0, y + 4.0, fmt_tick(t));
    }
    let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#555\"/><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#555\"/>");
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (x0 + x1) / 2.0,
        H - 8.0,
        esc(xlabel)
    );
    let _ = write!(s, "<text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{}</text>", (y0 + y1) / 2.0, (y0 + y1) / 2.0, esc(ylabel));
    s
}

pub fn line_chart(points: &[(f64, f64)], xlabel: &str, ylabel: &str, color: &str) -> String {
    let xmax = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let ymax_raw = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let yt = ticks(ymax_raw);
    let ymax = yt.last().copied().unwrap_or(1.0).max(1e-9);
    let mut s = frame(xlabel, ylabel, &yt, ymax);
    let (x0, x1, y0, y1) = (ML, W - MR, H - MB, MT);
    for t in ticks(xmax) {
        if t > xmax * 1.001 {
            break;
        }
        let x = x0 + t / xmax * (x1 - x0);
        let _ = write!(
            s,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + 15.0,
            fmt_tick(t)
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| {
            format!(
                "{:.1},{:.1}",
                x0 + x / xmax * (x1 - x0),
                y0 - y / ymax * (y0 - y1)
            )
        })
        .collect();
    let _ = write!(
        s,
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/></svg>",
        path.join(" ")
    );
    s
}

pub fn bar_chart(bars: &[(String, f64)], xlabel: &str, ylabel: &str) -> String {
    let ymax_raw = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let yt = ticks(ymax_raw);
    let ymax = yt.last().copied().unwrap_or(1.0).max(1e-9);
    let mut s = frame(xlabel, ylabel, &yt, ymax);
    let (x0, x1, y0, y1) = (ML, W - MR, H - MB, MT);
    let n = bars.len().max(1) as f64;
    let bw = (x1 - x0) / n;
    let label_every = ((n / 12.0).ceil() as usize).max(1);
    for (i, (label, v)) in bars.iter().enumerate() {
        let h = v / ymax * (y0 - y1);
        let x = x0 + i as f64 * bw;
        let _ = write!(s, "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#1f77b4\"><title>≤ {} ms: {}</title></rect>", x + 1.0, y0 - h, (bw - 2.0).max(1.0), esc(label), *v as u64);
        if i % label_every == 0 {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + bw / 2.0,
                y0 + 15.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The classic HDR plot: latency against percentile on a 1/(1-q) scale.
fn percentile_chart(h: &Histogram<u64>) -> String {
    let qs = [
        0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
    ];
    let xpos = |q: f64| -> f64 { (-(1.0 - q).max(1e-5).log10()).min(5.0) };
    let pts: Vec<(f64, f64, f64)> = qs
        .iter()
        .map(|&q| (xpos(q), h.value_at_quantile(q) as f64 / 1000.0, q))
        .collect();
    let ymax_raw = pts.iter().map(|p| p.1).fold(0.0, f64::max);
    let yt = ticks(ymax_raw);
    let ymax = yt.last().copied().unwrap_or(1.0).max(1e-9);
    let mut s = frame("percentile", "latency, ms", &yt, ymax);
    let (x0, x1, y0, y1) = (ML, W - MR, H - MB, MT);
    let xmax = 5.0;
    for (label, x) in [
        ("0%", 0.0),
        ("90%", 1.0),
        ("99%", 2.0),
        ("99.9%", 3.0),
        ("99.99%", 4.0),
        ("max", 5.0),
    ] {
        let px = x0 + x / xmax * (x1 - x0);
        let _ = write!(
            s,
            "<text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            y0 + 15.0
        );
    }
    let path: Vec<String> = pts
        .iter()
        .map(|(x, y, _)| {
            format!(
                "{:.1},{:.1}",
                x0 + x / xmax * (x1 - x0),
                y0 - y / ymax * (y0 - y1)
            )
        })
        .collect();
    let _ = write!(
        s,
        "<polyline fill=\"none\" stroke=\"#9467bd\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
    for (x, y, q) in &pts {
        let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#9467bd\"><title>p{} = {} ms</title></circle>", x0 + x / xmax * (x1 - x0), y0 - y / ymax * (y0 - y1), q * 100.0, num(*y));
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_range() {
        let t = ticks(87.0);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().unwrap() >= 87.0);
        assert!(t.len() <= 8);
    }

    #[test]
    fn charts_are_svg() {
        let s = line_chart(&[(0.0, 1.0), (1.0, 3.0)], "t", "y", "#000");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        let b = bar_chart(&[("1".into(), 2.0)], "x", "y");
        assert!(b.contains("<rect"));
    }
}
