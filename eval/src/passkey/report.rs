//! The sweep's report: accuracy per model x arm x length, capacity (the longest length at or above
//! the threshold), the capacity law fitted across state sizes, a Markdown summary and plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{CellRecord, EvalError};
use crate::plot::{self, format_length};

/// `capacity (K tokens) = a (b^N_S - 1) + c`, N_S in millions (the paper's form).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CapacityFit {
    pub a: f64,
    pub b: f64,
    pub c: f64,
    pub points: usize,
}

/// Least squares over `(n_s_millions, capacity_k)` points: for each `b` on a fine log grid in
/// (1, 16], `a` and `c` solve a linear least-squares problem; the best `b` wins. Needs three
/// distinct state sizes.
pub fn fit_capacity(points: &[(f64, f64)]) -> Option<CapacityFit> {
    let mut sizes: Vec<f64> = points.iter().map(|p| p.0).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    if sizes.len() < 3 {
        return None;
    }
    let mut best: Option<(f64, CapacityFit)> = None;
    for step in 1..=4000 {
        let b = (16f64.ln() * step as f64 / 4000.0).exp();
        // Normal equations for y = a u + c with u = b^x - 1.
        let (mut su, mut suu, mut sy, mut suy) = (0.0, 0.0, 0.0, 0.0);
        let n = points.len() as f64;
        for &(x, y) in points {
            let u = b.powf(x) - 1.0;
            su += u;
            suu += u * u;
            sy += y;
            suy += u * y;
        }
        let det = n * suu - su * su;
        if det.abs() < 1e-12 {
            continue;
        }
        let a = (n * suy - su * sy) / det;
        let c = (sy - a * su) / n;
        let sse: f64 = points.iter().map(|&(x, y)| (a * (b.powf(x) - 1.0) + c - y).powi(2)).sum();
        if best.as_ref().is_none_or(|(e, _)| sse < *e) {
            best = Some((sse, CapacityFit { a, b, c, points: points.len() }));
        }
    }
    best.map(|(_, fit)| fit)
}

/// Accuracy of one model x arm x length.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyRow {
    /// The checkpoint's name.
    pub model: String,
    /// Its state size N_S, in elements.
    pub n_s: usize,
    /// The mitigation arm.
    pub mitigation: String,
    /// Prompt length, tokens.
    pub length: usize,
    /// Cells (depths) run.
    pub cells: usize,
    /// Cells answered correctly.
    pub correct: usize,
    /// Mean exact prompt length of the cells, tokens.
    pub mean_tokens: f64,
}

impl AccuracyRow {
    /// Fraction of cells answered correctly.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.cells.max(1) as f64
    }
}

/// One model's capacity under one mitigation arm.
#[derive(Clone, Debug, PartialEq)]
pub struct CapacityRow {
    /// The checkpoint's name.
    pub model: String,
    /// Its state size N_S, in elements.
    pub n_s: usize,
    /// The mitigation arm.
    pub mitigation: String,
    /// The longest length at or above the threshold; `None` when even the shortest falls below.
    pub tokens: Option<usize>,
    /// The checkpoint's training length, when its config or the sweep gave one.
    pub train_length: Option<usize>,
}

impl CapacityRow {
    /// `(N_S in millions, capacity in thousands of tokens)`, the capacity law's axes, when the
    /// row has a capacity.
    fn law_point(&self) -> Option<(f64, f64)> {
        self.tokens.map(|tokens| (self.n_s as f64 / 1e6, tokens as f64 / 1000.0))
    }
}

/// Everything the report says.
#[derive(Clone, Debug)]
pub struct Report {
    /// Accuracy a length must reach to count toward capacity.
    pub threshold: f64,
    /// Accuracy per model x arm x length.
    pub accuracy: Vec<AccuracyRow>,
    /// Capacity per model x arm.
    pub capacity: Vec<CapacityRow>,
    /// Per mitigation arm, fitted across models.
    pub fits: Vec<(String, Option<CapacityFit>)>,
    /// Cells in the results.
    pub cells: usize,
    /// Seconds the cells took to run.
    pub seconds: f64,
}

impl Report {
    /// The report of `records`, with capacity at accuracy `threshold`.
    pub fn build(records: &[CellRecord], threshold: f64) -> Report {
        let mut groups: BTreeMap<(String, String, usize), AccuracyRow> = BTreeMap::new();
        let mut train = BTreeMap::new();
        for r in records {
            let row = groups.entry((r.model.clone(), r.mitigation.clone(), r.length)).or_insert_with(|| AccuracyRow {
                model: r.model.clone(),
                n_s: r.n_s,
                mitigation: r.mitigation.clone(),
                length: r.length,
                cells: 0,
                correct: 0,
                mean_tokens: 0.0,
            });
            row.mean_tokens = (row.mean_tokens * row.cells as f64 + r.tokens as f64) / (row.cells + 1) as f64;
            row.cells += 1;
            row.correct += r.correct as usize;
            if let Some(t) = r.train_length {
                train.insert(r.model.clone(), t);
            }
        }
        let accuracy: Vec<AccuracyRow> = groups.into_values().collect();
        let mut capacity: BTreeMap<(String, String), CapacityRow> = BTreeMap::new();
        for row in &accuracy {
            let entry = capacity.entry((row.model.clone(), row.mitigation.clone())).or_insert_with(|| CapacityRow {
                model: row.model.clone(),
                n_s: row.n_s,
                mitigation: row.mitigation.clone(),
                tokens: None,
                train_length: train.get(&row.model).copied(),
            });
            if row.accuracy() >= threshold {
                // None < Some(_): the first length to pass sets it, longer ones raise it.
                entry.tokens = entry.tokens.max(Some(row.length));
            }
        }
        let capacity: Vec<CapacityRow> = capacity.into_values().collect();
        let fits = capacity_arms(&capacity)
            .into_iter()
            .map(|arm| {
                let fit = fit_capacity(&law_points(&capacity, &arm));
                (arm, fit)
            })
            .collect();
        Report { threshold, accuracy, capacity, fits, cells: records.len(), seconds: records.iter().map(|r| r.seconds).sum() }
    }

    /// The Markdown summary.
    pub fn markdown(&self, plots: &[PathBuf]) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Passkey capacity\n");
        let _ = writeln!(
            md,
            "{} cells, {:.0} s of model time. Capacity = the longest length with accuracy >= {:.0}%.\n",
            self.cells,
            self.seconds,
            self.threshold * 100.0
        );
        let _ = writeln!(md, "## Capacity\n\n| model | N_S | mitigation | capacity (tokens) | training length |\n|---|---:|---|---:|---:|");
        for row in &self.capacity {
            let _ = writeln!(
                md,
                "| {} | {:.3}M | {} | {} | {} |",
                md_cell(&row.model),
                row.n_s as f64 / 1e6,
                md_cell(&row.mitigation),
                row.tokens.map_or("< shortest".into(), format_length),
                row.train_length.map_or("?".into(), format_length)
            );
        }
        let mut lengths: Vec<usize> = self.accuracy.iter().map(|r| r.length).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let _ = write!(md, "\n## Accuracy\n\n| model | mitigation |");
        for l in &lengths {
            let _ = write!(md, " {} |", format_length(*l));
        }
        let _ = write!(md, "\n|---|---|");
        for _ in &lengths {
            let _ = write!(md, "---:|");
        }
        md.push('\n');
        let mut arms: Vec<(String, String)> = self.accuracy.iter().map(|r| (r.model.clone(), r.mitigation.clone())).collect();
        arms.dedup();
        for (model, arm) in arms {
            let _ = write!(md, "| {} | {} |", md_cell(&model), md_cell(&arm));
            for l in &lengths {
                match self.accuracy.iter().find(|r| r.model == model && r.mitigation == arm && r.length == *l) {
                    Some(r) => {
                        let _ = write!(md, " {:.0}% |", r.accuracy() * 100.0);
                    }
                    None => md.push_str(" |"),
                }
            }
            md.push('\n');
        }
        let _ = writeln!(md, "\n## Capacity law\n");
        for (arm, fit) in &self.fits {
            match fit {
                Some(f) => {
                    let _ = writeln!(md, "- `{arm}`: capacity = {:.3} ({:.3}^N_S - 1) + {:.3} K tokens ({} models)", f.a, f.b, f.c, f.points);
                }
                None => {
                    let _ = writeln!(md, "- `{arm}`: fewer than three state sizes with a capacity; no fit");
                }
            }
        }
        let _ = writeln!(md, "- paper (Mamba-2 trained long): capacity = 4.756 (1.365^N_S - 1) - 0.742 K tokens");
        if !plots.is_empty() {
            let _ = writeln!(md, "\n## Plots\n");
            for p in plots {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let _ = writeln!(md, "![{name}]({name})");
            }
        }
        md
    }
}

/// The mitigation arms of `rows`, sorted, each once.
fn capacity_arms(rows: &[CapacityRow]) -> Vec<String> {
    let mut arms: Vec<String> = rows.iter().map(|c| c.mitigation.clone()).collect();
    arms.sort();
    arms.dedup();
    arms
}

/// The capacity law's points for arm `arm`: one per model with a capacity.
fn law_points(rows: &[CapacityRow], arm: &str) -> Vec<(f64, f64)> {
    rows.iter().filter(|c| c.mitigation == arm).filter_map(CapacityRow::law_point).collect()
}

/// A CSV field (RFC 4180): quoted, with quotes doubled, when it holds a comma, a quote or a line
/// break (mitigation specs such as `rri:lambda=0.9999,beta=0.75` do).
fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

/// A Markdown table cell: `|` escaped, line breaks as spaces.
fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn file_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// A file-name stem per name, [`file_safe`], with `-2`, `-3`, ... on the later of names that would
/// share one (`ma b` and `ma_b`), so no plot overwrites another.
fn unique_stems(names: &[String]) -> Vec<String> {
    let mut taken = std::collections::HashSet::new();
    names
        .iter()
        .map(|name| {
            // Two stems and a prefix make a plot's name: keep each well inside 255 bytes.
            let base = coil_checkpoints::files::shorten_name(&file_safe(name), 100);
            let stem = (1..).map(|i| if i == 1 { base.clone() } else { format!("{base}-{i}") }).find(|s| !taken.contains(s)).expect("unbounded");
            taken.insert(stem.clone());
            stem
        })
        .collect()
}

/// `dir/name`, refused when it lands on a results file (a link planted in the folder): writing
/// the report there would replace the results it is made of.
fn output(dir: &Path, name: &str) -> Result<std::path::PathBuf, EvalError> {
    let path = dir.join(name);
    let lands = coil_checkpoints::files::resolve_output(&path).ok().and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    if lands.is_some_and(|n| n.starts_with("results") && n.ends_with(".jsonl")) {
        return Err(EvalError::Results { path, message: "is a link to a results file; the report would replace the results".into() });
    }
    Ok(path)
}

/// Writes `report.md`, `accuracy.csv` and the SVG plots into `dir`; returns the report.
pub fn write_report(records: &[CellRecord], threshold: f64, dir: &Path) -> Result<Report, EvalError> {
    let report = Report::build(records, threshold);
    let write = |name: &str, text: &str| {
        let path = output(dir, name)?;
        coil_checkpoints::files::write_atomically(&path, |temporary| std::fs::write(temporary, text))
            .map_err(|e| EvalError::Results { message: e.to_string(), path })
    };
    let mut csv = String::from("model,n_s,mitigation,length,cells,correct,accuracy,mean_tokens\n");
    for r in &report.accuracy {
        let (model, mitigation) = (csv_field(&r.model), csv_field(&r.mitigation));
        let _ = writeln!(csv, "{model},{},{mitigation},{},{},{},{:.4},{:.1}", r.n_s, r.length, r.cells, r.correct, r.accuracy(), r.mean_tokens);
    }
    write("accuracy.csv", &csv)?;

    let mut plots = Vec::new();
    let mut models: Vec<String> = report.accuracy.iter().map(|r| r.model.clone()).collect();
    models.dedup();
    let mut lengths: Vec<usize> = report.accuracy.iter().map(|r| r.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for (model, model_stem) in models.iter().zip(unique_stems(&models)) {
        let rows: Vec<&AccuracyRow> = report.accuracy.iter().filter(|r| &r.model == model).collect();
        let mut arms: Vec<String> = rows.iter().map(|r| r.mitigation.clone()).collect();
        arms.dedup();
        let series: Vec<(String, Vec<(usize, f64)>)> = arms
            .iter()
            .map(|arm| (arm.clone(), rows.iter().filter(|r| &r.mitigation == arm).map(|r| (r.length, r.accuracy())).collect()))
            .collect();
        let train = report.capacity.iter().find(|c| &c.model == model).and_then(|c| c.train_length);
        let path = output(dir, &format!("accuracy-{model_stem}.svg"))?;
        plot::accuracy_curves(&path, &format!("passkey accuracy, {model}"), &series, train)?;
        plots.push(path);
        for (arm, arm_stem) in arms.iter().zip(unique_stems(&arms)) {
            // Ten depth bins, as the paper's heatmaps.
            const BINS: usize = 10;
            let mut cells = vec![vec![None; lengths.len()]; BINS];
            for (c, &length) in lengths.iter().enumerate() {
                let mut tally = [(0usize, 0usize); BINS];
                for r in records.iter().filter(|r| &r.model == model && &r.mitigation == arm && r.length == length) {
                    let bin = ((r.depth * BINS as f64) as usize).min(BINS - 1);
                    tally[bin].0 += r.correct as usize;
                    tally[bin].1 += 1;
                }
                for (bin, (ok, n)) in tally.iter().enumerate() {
                    if *n > 0 {
                        cells[bin][c] = Some(*ok as f64 / *n as f64);
                    }
                }
            }
            let path = output(dir, &format!("heatmap-{model_stem}-{arm_stem}.svg"))?;
            plot::heatmap(&path, &format!("passkey accuracy by depth, {model}, {arm}"), &lengths, &cells)?;
            plots.push(path);
        }
    }
    let points: Vec<(String, Vec<(f64, f64)>)> = capacity_arms(&report.capacity)
        .into_iter()
        .map(|arm| {
            let pts = law_points(&report.capacity, &arm);
            (arm, pts)
        })
        .collect();
    let fits: Vec<(String, f64, f64, f64)> = report.fits.iter().filter_map(|(arm, f)| f.map(|f| (arm.clone(), f.a, f.b, f.c))).collect();
    let path = output(dir, "capacity.svg")?;
    plot::capacity(&path, &points, &fits)?;
    plots.push(path);
    write("report.md", &report.markdown(&plots))?;
    Ok(report)
}
