//! `lb-bench bench report`: gathers the day's `pps`, `tcp`, `oracle`, `micro` and `control`
//! results into `bench/results/<date>.json` (machine facts once, every section), `<date>.md`
//! (the tables) and `<date>.svg` (the chart the README embeds).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};
use plotters::prelude::*;
use serde_json::{Value, json};

use crate::micro::machine;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Date of the results to gather (default: today, UTC).
    #[arg(long)]
    pub date: Option<String>,
    #[arg(long, default_value = "bench/results")]
    pub dir: PathBuf,
}

const SECTIONS: [&str; 5] = ["pps", "tcp", "oracle", "micro", "control"];

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let date = args.date.clone().unwrap_or_else(machine::today);
    let mut combined = json!({ "date": date, "machine": machine::facts() });
    let mut md = format!("# meshlb benchmarks, {date}\n\n");
    let mut found = 0;
    for section in SECTIONS {
        let base = args.dir.join(format!("{section}-{date}"));
        let Some(value) = read_json(&base.with_extension("json"))? else {
            continue;
        };
        found += 1;
        combined[section] = value;
        if let Ok(text) = std::fs::read_to_string(base.with_extension("md")) {
            md.push_str(&text);
            md.push('\n');
        }
    }
    ensure!(
        found > 0,
        "no results of {date} in {}: run `cargo xtask bench` first",
        args.dir.display()
    );
    let svg = args.dir.join(format!("{date}.svg"));
    chart(&combined, &svg)?;
    md.push_str(&format!("![meshlb benchmarks, {date}]({date}.svg)\n"));
    let base = args.dir.join(&date);
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&combined)?,
    )?;
    std::fs::write(base.with_extension("md"), md)?;
    println!("report: wrote {0}.json, {0}.md and {0}.svg", base.display());
    Ok(())
}

/// A labelled value with its spread (min, median, max).
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub label: String,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// Packet-rate bars of a `pps` section.
pub fn pps_bars(pps: &Value) -> Vec<Bar> {
    pps["contenders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some(Bar {
                label: c["name"].as_str()?.to_owned(),
                min: c["spread"]["min"].as_f64()?,
                median: c["spread"]["median"].as_f64()?,
                max: c["spread"]["max"].as_f64()?,
            })
        })
        .collect()
}

/// Connections/s bars of a `tcp` section: per contender, min / median / max over the rounds.
pub fn tcp_bars(tcp: &Value, field: &str) -> Vec<Bar> {
    tcp["contenders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let values: Vec<f64> = c[field]
                .as_array()?
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            let s = crate::pps::Spread::of(&values)?;
            Some(Bar {
                label: c["name"].as_str()?.to_owned(),
                min: s.min,
                median: s.median,
                max: s.max,
            })
        })
        .collect()
}

/// A contender's name short enough to sit above its bar.
pub fn short_label(name: &str) -> &str {
    const SHORT: [(&str, &str); 6] = [
        ("ceiling", "ceiling"),
        ("meshlb", "meshlb"),
        ("nftables", "nftables"),
        ("kernel", "kernel fwd"),
        ("direct", "direct"),
        ("HAProxy", "HAProxy"),
    ];
    SHORT
        .iter()
        .find(|(key, _)| name.contains(key))
        .map_or(name, |(_, short)| short)
}

/// Draws one panel: a bar per entry (median) with a min–max whisker.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    bars: &[Bar],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let top = bars.iter().map(|b| b.max).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..bars.len() as f64, 0.0..top)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(unit)
        .draw()
        .map_err(|e| anyhow::anyhow!("chart mesh: {e}"))?;
    let colors = [
        RGBColor(90, 90, 90),
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    ];
    for (i, bar) in bars.iter().enumerate() {
        let x = i as f64;
        let color = colors[i % colors.len()];
        chart
            .draw_series([Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, bar.median)],
                color.filled(),
            )])
            .map_err(|e| anyhow::anyhow!("chart bar: {e}"))?;
        chart
            .draw_series([PathElement::new(
                vec![(x + 0.5, bar.min), (x + 0.5, bar.max)],
                BLACK.stroke_width(2),
            )])
            .map_err(|e| anyhow::anyhow!("chart whisker: {e}"))?;
        let value = if bar.median >= 100.0 {
            format!("{:.0}", bar.median)
        } else {
            format!("{:.2}", bar.median)
        };
        for (text, above) in [(short_label(&bar.label), 0.10), (value.as_str(), 0.04)] {
            chart
                .draw_series([Text::new(
                    text.to_owned(),
                    (x + 0.12, bar.max + top * above),
                    ("sans-serif", 12),
                )])
                .map_err(|e| anyhow::anyhow!("chart label: {e}"))?;
        }
    }
    Ok(())
}

/// The chart: packet rate per contender; TCP connections/s and keep-alive requests/s.
pub fn chart(combined: &Value, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let panels = root.split_evenly((1, 3));
    panel(
        &panels[0],
        "Packets through the node (median, min–max)",
        "Mpps",
        &pps_bars(&combined["pps"]),
    )?;
    panel(
        &panels[1],
        "TCP connections/s (median of rounds)",
        "connections/s",
        &tcp_bars(&combined["tcp"], "connections_per_s"),
    )?;
    panel(
        &panels[2],
        "TCP keep-alive requests/s",
        "requests/s",
        &tcp_bars(&combined["tcp"], "requests_per_s"),
    )?;
    root.present()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_come_from_the_sections() {
        let pps = json!({"contenders": [
            {"name": "meshlb XDP", "spread": {"min": 1.0, "median": 1.5, "max": 2.0}},
            {"name": "broken"}
        ]});
        assert_eq!(
            pps_bars(&pps),
            [Bar {
                label: "meshlb XDP".into(),
                min: 1.0,
                median: 1.5,
                max: 2.0
            }]
        );
        let tcp = json!({"contenders": [
            {"name": "direct", "connections_per_s": [3.0, 1.0, 2.0], "requests_per_s": []}
        ]});
        assert_eq!(tcp_bars(&tcp, "connections_per_s")[0].median, 2.0);
        assert!(tcp_bars(&tcp, "requests_per_s").is_empty());
        assert!(pps_bars(&Value::Null).is_empty());
    }

    #[test]
    fn short_labels() {
        assert_eq!(short_label("redirect-only ceiling"), "ceiling");
        assert_eq!(short_label("HAProxy mode tcp"), "HAProxy");
        assert_eq!(short_label("something else"), "something else");
    }

    #[test]
    fn chart_writes_an_svg() {
        let dir = std::env::temp_dir().join(format!("mlb-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let combined = json!({
            "pps": {"contenders": [{"name": "ceiling", "spread": {"min": 1.0, "median": 1.2, "max": 1.3}}]},
            "tcp": {"contenders": [{"name": "direct", "connections_per_s": [10.0], "requests_per_s": [20.0]}]}
        });
        chart(&combined, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in ["ceiling", "1.20", "direct", "10.00", "20.00"] {
            assert!(
                svg.contains(&format!("\n{text}\n")),
                "{text} missing:\n{svg}"
            );
        }
    }
}
