//! The table files: `table.md`, `table.tex` (booktabs), `table.csv` (long form, one number a
//! row) and `table.svg` (grouped bars with ± one sample std).

use super::table::{HELD_OUT, Runs, Stat, Status, Table};
use crate::io::write_atomic;
use anyhow::Result;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

pub const TABLE_FILES: [&str; 4] = ["table.md", "table.tex", "table.csv", "table.svg"];

/// Writes the four files into `dir`; returns their paths.
pub fn write_all(runs: &Runs, dir: &Path) -> Result<Vec<PathBuf>> {
    let tables = [runs.held_out_table(), runs.personalization_table()];
    write_atomic(&dir.join("table.md"), markdown(runs, &tables).as_bytes())?;
    write_atomic(&dir.join("table.tex"), latex(runs, &tables).as_bytes())?;
    write_atomic(&dir.join("table.csv"), long_csv(runs).as_bytes())?;
    bars_svg(&dir.join("table.svg"), &tables[0], runs.seeds_asked)?;
    Ok(TABLE_FILES.iter().map(|f| dir.join(f)).collect())
}

/// A cell as a person reads it: `81.25 ± 1.02` in percent; `(n = 2)` when fewer seeds than
/// asked; `–` when no run has the number yet.
pub fn cell_text(stat: Option<Stat>, seeds_asked: usize, pm: &str) -> String {
    let Some(s) = stat else {
        return "–".into();
    };
    let mut text = match s.std {
        Some(std) => format!("{:.2}{pm}{:.2}", 100.0 * s.mean, 100.0 * std),
        None => format!("{:.2}", 100.0 * s.mean),
    };
    if s.n < seeds_asked {
        text.push_str(&format!(" (n = {})", s.n));
    }
    text
}

fn markdown(runs: &Runs, tables: &[Table]) -> String {
    let mut md = String::new();
    for t in tables {
        md.push_str(&format!("### {}\n\n| method |", t.title));
        for c in &t.columns {
            md.push_str(&format!(" {c} |"));
        }
        md.push_str(" average |\n|---|");
        md.push_str(&"---:|".repeat(t.columns.len() + 1));
        md.push('\n');
        for (label, cells) in &t.rows {
            md.push_str(&format!("| {label} |"));
            for c in cells {
                md.push_str(&format!(" {} |", cell_text(*c, runs.seeds_asked, " ± ")));
            }
            md.push('\n');
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "Mean ± sample standard deviation over {} seed(s); `n = k`: only k seeds have the number.\n",
        runs.seeds_asked
    ));
    let incomplete = runs.incomplete();
    if !incomplete.is_empty() {
        md.push_str(&format!(
            "\n{} run(s) without results:\n\n",
            incomplete.len()
        ));
        for r in incomplete {
            md.push_str(&format!("- {}: {}\n", r.dir.display(), r.status.describe()));
        }
    }
    md
}

fn tex_escape(s: &str) -> String {
    s.replace('\\', "\\textbackslash{}")
        .replace('_', "\\_")
        .replace('&', "\\&")
        .replace('%', "\\%")
        .replace('#', "\\#")
}

fn latex(runs: &Runs, tables: &[Table]) -> String {
    let mut tex = String::from("% fedclip table; needs \\usepackage{booktabs}\n");
    for r in runs.incomplete() {
        tex.push_str(&format!(
            "% without results: {}: {}\n",
            r.dir.display(),
            r.status.describe()
        ));
    }
    for t in tables {
        tex.push_str(&format!(
            "% {}\n\\begin{{tabular}}{{l{}}}\n\\toprule\nMethod",
            t.title,
            "r".repeat(t.columns.len() + 1)
        ));
        for c in &t.columns {
            tex.push_str(&format!(" & {}", tex_escape(c)));
        }
        tex.push_str(" & Avg \\\\\n\\midrule\n");
        for (label, cells) in &t.rows {
            tex.push_str(&tex_escape(label));
            for c in cells {
                tex.push_str(&format!(
                    " & {}",
                    cell_text(*c, runs.seeds_asked, " $\\pm$ ")
                ));
            }
            tex.push_str(" \\\\\n");
        }
        tex.push_str("\\bottomrule\n\\end{tabular}\n\n");
    }
    tex
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A row of the long-form table: one number of one run (`value` empty for a run without
/// results, so that none is dropped).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LongRow {
    pub method: String,
    pub test_domain: String,
    pub seed: u32,
    pub metric: String,
    pub value: Option<f64>,
    pub status: String,
}

/// One row per number (fractions, exactly as `summary.json` holds them), and one row with
/// no value for each run without results.
pub fn long_rows(runs: &Runs) -> Vec<LongRow> {
    let mut rows = Vec::new();
    for r in &runs.results {
        let row = |metric: &str, value: Option<f64>| LongRow {
            method: r.method.clone(),
            test_domain: r.test_domain.clone(),
            seed: r.seed,
            metric: metric.to_string(),
            value,
            status: r.status.describe(),
        };
        if r.status == Status::Finished {
            rows.extend(r.values.iter().map(|(m, v)| row(m, Some(*v))));
        } else {
            rows.push(row(HELD_OUT, None));
        }
    }
    rows
}

/// [`long_rows`] as CSV (`{}` of an f64 reads back to the same number).
fn long_csv(runs: &Runs) -> String {
    let mut csv = String::from("method,test_domain,seed,metric,value,status\n");
    for r in long_rows(runs) {
        let value = r.value.map_or(String::new(), |v| format!("{v}"));
        let fields = [
            &r.method,
            &r.test_domain,
            &r.seed.to_string(),
            &r.metric,
            &value,
            &r.status,
        ];
        let fields: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv.push_str(&fields.join(","));
        csv.push('\n');
    }
    csv
}

/// Grouped bars: one group per column (and the average), one bar per method, ± one std.
fn bars_svg(path: &Path, table: &Table, seeds_asked: usize) -> Result<()> {
    let groups: Vec<String> = (table.columns.iter().cloned())
        .chain(["average".to_string()])
        .collect();
    let methods = table.rows.len().max(1);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{} (mean ± std over {seeds_asked} seed(s))", table.title),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            // Headroom above 100% for the legend, so that it never hides a bar.
            .build_cartesian_2d(
                0f64..groups.len() as f64,
                0f64..(108.0 + 7.0 * methods as f64),
            )?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("accuracy (%)")
            .draw()?;
        let width = 0.8 / methods as f64;
        for (m, (label, cells)) in table.rows.iter().enumerate() {
            let color = Palette99::pick(m).to_rgba();
            let bars: Vec<(f64, Stat)> = (cells.iter().enumerate())
                .filter_map(|(g, c)| c.map(|s| (g as f64 + 0.1 + m as f64 * width, s)))
                .collect();
            chart
                .draw_series(bars.iter().map(|(x, s)| {
                    Rectangle::new([(*x, 0.0), (x + width, 100.0 * s.mean)], color.filled())
                }))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            chart.draw_series(bars.iter().filter_map(|(x, s)| {
                let (mid, std) = (x + width / 2.0, 100.0 * s.std?);
                let (lo, hi) = (100.0 * s.mean - std, 100.0 * s.mean + std);
                Some(PathElement::new(
                    vec![(mid, lo), (mid, hi)],
                    BLACK.stroke_width(1),
                ))
            }))?;
        }
        // Group names under their groups, drawn on the whole area (the plot area clips).
        for (g, name) in groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (px - 4 * name.len() as i32, py + 10),
                ("sans-serif", 14),
            ))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
}
