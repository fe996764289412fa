//! `--report FILE`: an HTML page with the run's charts, drawn with plotters'
//! SVG backend and inlined as `<svg>` elements. One self-contained file: no
//! script, no stylesheet or font to fetch, readable offline in any browser.
//!
//! Every chart is a `<figure class="chart" id="chart-…">`; its plotted data
//! (lines and bars) is drawn in `#1F77B4` and nothing else is, which is
//! what `tests/demo/report_renders_in_a_browser.rs` looks for in Chromium.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use sessionbus::Runtime;

use crate::Args;
use crate::timeline::{Point, Recording, Timeline};

/// The colour of plotted data, and only of plotted data (`#1F77B4` in the SVG).
const SERIES: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// How often the timeline samples.
const EVERY: Duration = Duration::from_millis(10);
const SIZE: (u32, u32) = (900, 320);

/// Records the run when `--report` is given; writes the page at the end.
pub struct Recorder {
    target: Option<(PathBuf, Timeline, String)>,
}

impl Recorder {
    /// Starts sampling if the run has a `--report FILE`; otherwise does nothing.
    pub async fn start(rt: &Runtime, args: &Args) -> anyhow::Result<Recorder> {
        let Some(path) = args.report.clone() else {
            return Ok(Recorder { target: None });
        };
        let timeline = Timeline::start(rt, EVERY).await?;
        let title = format!(
            "sessionbus demo: scenario {:?}, {} sessions, on {}",
            args.scenario,
            args.sessions,
            rt.pool_info().adapter
        );
        Ok(Recorder {
            target: Some((path, timeline, title)),
        })
    }

    /// Writes the report (whatever the run's outcome, since a failed run is
    /// the one worth looking at), then hands the outcome back.
    pub async fn finish(self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        let Some((path, timeline, title)) = self.target else {
            return outcome;
        };
        let recording = timeline.finish().await?;
        let page = render(&title, &recording)?;
        std::fs::write(&path, page)
            .with_context(|| format!("writing the report to {}", path.display()))?;
        eprintln!("report written to {}", path.display());
        outcome
    }
}

/// The whole page.
pub fn render(title: &str, run: &Recording) -> anyhow::Result<String> {
    let secs = |p: &Point| p.at.as_secs_f64();
    let gpu: Vec<(f64, f64)> = run
        .points
        .iter()
        .map(|p| (secs(p), p.gpu_live_bytes as f64 / (1 << 20) as f64))
        .collect();
    let live: Vec<(f64, f64)> = run
        .points
        .iter()
        .map(|p| (secs(p), p.live_sessions as f64))
        .collect();

    let mut figures = String::new();
    figure(
        &mut figures,
        "chart-gpu-bytes",
        "GPU memory held by live buffers (wgpu pool), MiB",
        line_chart(&gpu, "seconds", "MiB live"),
    );
    figure(
        &mut figures,
        "chart-live-sessions",
        "Live sessions (started − ended, from the bus)",
        line_chart(&live, "seconds", "sessions"),
    );
    figure(
        &mut figures,
        "chart-close-to-release",
        "End (close, disconnect, expiry, shutdown) → memory released: sessions per latency bin",
        histogram(&run.close_to_release_us, "µs, end → released (log scale)"),
    );
    figure(
        &mut figures,
        "chart-expiry-lateness",
        "Expiry lateness: deadline → memory released, sessions per latency bin",
        if run.expiry_lateness_us.is_empty() {
            Err(anyhow!(
                "no session expired in this scenario (try --scenario expiry)"
            ))
        } else {
            histogram(
                &run.expiry_lateness_us,
                "µs, deadline → released (log scale)",
            )
        },
    );
    figure(
        &mut figures,
        "chart-release-rate",
        "Release rate: GPU buffers released per second, per interval",
        release_rate(&run.points),
    );

    let summary = format!(
        "{} samples every {} ms; {} releases ({} after an expiry); peak {:.1} MiB, peak {} live sessions.",
        run.points.len(),
        run.every.as_millis(),
        run.close_to_release_us.len(),
        run.expiry_lateness_us.len(),
        run.points
            .iter()
            .map(|p| p.gpu_live_bytes)
            .max()
            .unwrap_or(0) as f64
            / (1 << 20) as f64,
        run.points
            .iter()
            .map(|p| p.live_sessions)
            .max()
            .unwrap_or(0),
    );
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}figure{{margin:0 0 2em 0}}\
         figcaption{{font-weight:bold;margin-bottom:.5em}}.empty p{{color:#666}}</style>\n</head>\n<body>\n\
         <h1>{title}</h1>\n<p>{summary}</p>\n{figures}</body>\n</html>\n",
        title = escape(title),
        summary = escape(&summary),
    ))
}

/// A chart, or a note saying why there is none.
fn figure(out: &mut String, id: &str, caption: &str, chart: anyhow::Result<String>) {
    match chart {
        Ok(svg) => {
            let _ = writeln!(
                out,
                "<figure class=\"chart\" id=\"{id}\">\n<figcaption>{}</figcaption>\n{svg}\n</figure>",
                escape(caption)
            );
        }
        Err(why) => {
            let _ = writeln!(
                out,
                "<figure class=\"chart empty\" id=\"{id}\">\n<figcaption>{}</figcaption>\n<p>No chart: {}</p>\n</figure>",
                escape(caption),
                escape(&why.to_string())
            );
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn line_chart(points: &[(f64, f64)], x: &str, y: &str) -> anyhow::Result<String> {
    anyhow::ensure!(points.len() >= 2, "the run was shorter than two samples");
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-3);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            SERIES.stroke_width(2),
        ))?;
        root.present()?;
    }
    Ok(svg)
}

/// Sessions per latency bin, eight bins per decade on a log axis.
fn histogram(samples_us: &[u64], x: &str) -> anyhow::Result<String> {
    anyhow::ensure!(!samples_us.is_empty(), "no samples");
    const PER_DECADE: f64 = 8.0;
    let bin = |us: u64| ((us.max(1) as f64).log10() * PER_DECADE).floor() as i64;
    let edge = |b: i64| 10f64.powf(b as f64 / PER_DECADE);
    let (lo, hi) = samples_us
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &s| {
            (lo.min(bin(s)), hi.max(bin(s)))
        });
    let mut counts = vec![0u64; (hi - lo + 1) as usize];
    for &s in samples_us {
        counts[(bin(s) - lo) as usize] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1) as f64 * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((edge(lo)..edge(hi + 1)).log_scale(), 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc(x)
            .y_desc("sessions")
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, &c)| {
                    let b = lo + i as i64;
                    Rectangle::new([(edge(b), 0.0), (edge(b + 1), c as f64)], SERIES.filled())
                }),
        )?;
        root.present()?;
    }
    Ok(svg)
}

/// Buffers released per second, over intervals of at least a hundredth of the run.
fn release_rate(points: &[Point]) -> anyhow::Result<String> {
    anyhow::ensure!(points.len() >= 2, "the run was shorter than two samples");
    let total = points[points.len() - 1].at.as_secs_f64();
    let min_width = (total / 100.0).max(1e-3);
    let mut bars = Vec::new();
    let mut from = points[0];
    for p in &points[1..] {
        let width = (p.at - from.at).as_secs_f64();
        if width >= min_width || p.at == points[points.len() - 1].at {
            let released = p.released_buffers - from.released_buffers;
            bars.push((
                from.at.as_secs_f64(),
                p.at.as_secs_f64(),
                released as f64 / width.max(1e-6),
            ));
            from = *p;
        }
    }
    anyhow::ensure!(
        bars.iter().any(|b| b.2 > 0.0),
        "no buffer was released while sampling"
    );
    let y_max = bars.iter().map(|b| b.2).fold(0.0, f64::max) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..total.max(1e-3), 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("buffers / s")
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(
            bars.iter()
                .filter(|b| b.2 > 0.0)
                .map(|&(t0, t1, rate)| Rectangle::new([(t0, 0.0), (t1, rate)], SERIES.filled())),
        )?;
        root.present()?;
    }
    Ok(svg)
}
