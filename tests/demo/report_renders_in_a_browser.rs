//! The demo's `--report FILE` page, from a real short run (the expiry
//! scenario on a real adapter), opened in headless Chromium: every chart must
//! be laid out with a non-zero size and show plotted data (lines or bars in
//! the series colour with a non-zero bounding box, as the browser's SVG engine
//! measures them). A copy with one chart's data removed must be caught, so the
//! check is known to fail when a chart is empty.
//!
//! Needs the Debian package `chromium` (`scripts/test.sh` installs it), or a
//! Chromium/Chrome binary named by `CHROMIUM`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CHARTS: [&str; 5] = [
    "chart-gpu-bytes",
    "chart-live-sessions",
    "chart-close-to-release",
    "chart-expiry-lateness",
    "chart-release-rate",
];

/// Measures every chart in the browser and writes the result into the DOM,
/// where `--dump-dom` picks it up.
const MEASURE: &str = r##"<script>
const charts = [...document.querySelectorAll("figure.chart")].map(figure => {
  const svg = figure.querySelector("svg");
  const box = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
  const plotted = svg ? [...svg.querySelectorAll("polyline, rect, path, circle")].filter(e => {
    const colour = (e.getAttribute("stroke") + e.getAttribute("fill")).toUpperCase();
    if (!colour.includes("#1F77B4")) return false;
    const b = e.getBBox();
    if (e.tagName === "polyline") return e.points.numberOfItems >= 2 && (b.width > 0 || b.height > 0);
    return b.width > 0 && b.height > 0;
  }).length : 0;
  return { id: figure.id, width: box.width, height: box.height, plotted };
});
const out = document.createElement("pre");
out.id = "render-check";
out.textContent = JSON.stringify({ charts, parse_errors: document.querySelectorAll("parsererror").length });
document.body.appendChild(out);
</script>"##;

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return path.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "headless Chromium is needed to check that the report renders: install the Debian \
         package `chromium` (sudo apt-get install -y chromium; scripts/test.sh does it), or \
         set CHROMIUM to a Chromium or Chrome binary"
    );
}

/// Opens `page` in headless Chromium with the measuring script appended,
/// and returns what the script measured.
fn measure_in_chromium(page: &str, dir: &Path, name: &str) -> Value {
    let instrumented = page.replace("</body>", &format!("{MEASURE}\n</body>"));
    let path = dir.join(name);
    std::fs::write(&path, instrumented).unwrap();
    let profile = dir.join(format!("{name}.profile"));
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--window-size=1000,2000",
            "--virtual-time-budget=2000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", path.display()))
        .output()
        .expect("running chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dom = String::from_utf8_lossy(&output.stdout);
    let start = dom
        .find("<pre id=\"render-check\">")
        .unwrap_or_else(|| panic!("the measuring script did not run; DOM:\n{dom}"))
        + "<pre id=\"render-check\">".len();
    let end = start + dom[start..].find("</pre>").expect("</pre>");
    let json = dom[start..end]
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">");
    serde_json::from_str(&json).expect("the script's JSON")
}

fn chart<'a>(measured: &'a Value, id: &str) -> &'a Value {
    measured["charts"]
        .as_array()
        .expect("charts")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("chart {id} not in the page: {measured}"))
}

#[test]
fn report_renders_in_a_browser() {
    let browser = chromium(); // fail first, and clearly, if it is missing
    let dir = std::env::temp_dir().join(format!("sessionbus-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.html");

    let run = Command::new(sessionbus_testkit::demo_binary())
        .args([
            "--scenario",
            "expiry",
            "--sessions",
            "120",
            "--json",
            "--report",
        ])
        .arg(&report)
        // Lease revocations are part of the scenario; keep them off the test's output.
        .env("RUST_LOG", "error")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("running the demo");
    assert!(
        run.status.success(),
        "demo failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let page = std::fs::read_to_string(&report).expect("the demo wrote its report");

    // Self-contained: nothing to fetch, no script of its own.
    for needle in ["src=", "href=", "<script", "@import", "url("] {
        assert!(!page.contains(needle), "the report references {needle}");
    }

    let measured = measure_in_chromium(&page, &dir, "check.html");
    assert_eq!(measured["parse_errors"], 0, "{measured}");
    for id in CHARTS {
        let c = chart(&measured, id);
        assert!(c["width"].as_f64().unwrap() > 0.0, "{id} has no width: {c}");
        assert!(
            c["height"].as_f64().unwrap() > 0.0,
            "{id} has no height: {c}"
        );
        assert!(
            c["plotted"].as_u64().unwrap() >= 1,
            "{id} shows no data: {c}"
        );
    }
    // Histograms and the release rate have several bars, not one stray rectangle.
    for id in [
        "chart-close-to-release",
        "chart-expiry-lateness",
        "chart-release-rate",
    ] {
        assert!(
            chart(&measured, id)["plotted"].as_u64().unwrap() >= 2,
            "{measured}"
        );
    }

    // The check catches an empty chart: remove the GPU chart's line.
    let series = page
        .find("stroke=\"#1F77B4\"")
        .expect("a line in the series colour");
    let line_start = page[..series]
        .rfind("<polyline")
        .expect("the line's element");
    let line_end = line_start + page[line_start..].find("/>").unwrap() + 2;
    let broken = format!("{}{}", &page[..line_start], &page[line_end..]);
    let measured = measure_in_chromium(&broken, &dir, "broken.html");
    assert_eq!(
        chart(&measured, "chart-gpu-bytes")["plotted"],
        0,
        "{measured}"
    );
    assert!(
        chart(&measured, "chart-live-sessions")["plotted"]
            .as_u64()
            .unwrap()
            >= 1
    );

    drop(browser);
    let _ = std::fs::remove_dir_all(&dir);
}
