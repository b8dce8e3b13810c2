//! The sweep's report: accuracy per model x arm x length, capacity (the longest length at or above
//! the threshold), memory span (the farthest needle-to-question distance r at which the accuracy
//! over needles at most r away is at or above it), both laws fitted across state sizes where the data carry a fit, a
//! Markdown summary and plots.

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
/// (1, 16], `a` and `c` solve a linear least-squares problem; the best `b` wins. A fit of three
/// parameters needs three points that differ in both state size and value, and points that bend:
/// otherwise the reason there is none (for points on a line, the line).
pub fn fit_capacity(points: &[(f64, f64)]) -> Result<CapacityFit, String> {
    let distinct = |values: Vec<f64>| {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        values.dedup();
        values.len()
    };
    let sizes = distinct(points.iter().map(|p| p.0).collect());
    let values = distinct(points.iter().map(|p| p.1).collect());
    if points.is_empty() {
        return Err("no model has a value at this threshold".into());
    }
    if sizes < 3 || values < 3 {
        return Err(format!(
            "{} state size(s) and {} distinct value(s) among {} model(s) with a value; a fit of a (b^N_S - 1) + c needs three of each",
            sizes,
            values,
            points.len()
        ));
    }
    let mut best: Option<(f64, CapacityFit)> = None;
    const STEPS: usize = 4000;
    for step in 1..=STEPS {
        let b = (B_MAX.ln() * step as f64 / STEPS as f64).exp();
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
    let fit = best.map(|(_, fit)| fit).ok_or_else(|| "the points are degenerate".to_owned())?;
    if fit.b >= B_MAX * (1.0 - 1e-9) {
        // Over a narrow range of N_S, b^N_S - 1 is a straight line for any b: the best b runs
        // to the edge of the range searched, and a and b are not separately determined.
        let (lo, hi) = points.iter().fold((f64::INFINITY, 0f64), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
        let (slope, intercept) = line_fit(points);
        return Err(format!(
            "no curvature over N_S {lo:.4}..{hi:.4}: the best b runs to the edge of the range searched ({B_MAX}), where a (b^N_S - 1) + c is a straight line; as a line, {slope:.3} K tokens per million {} {:.3}",
            if intercept < 0.0 { "-" } else { "+" },
            intercept.abs()
        ));
    }
    Ok(fit)
}

/// The largest `b` [`fit_capacity`] tries.
const B_MAX: f64 = 16.0;

/// Least-squares `y = slope x + intercept`.
fn line_fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(sx, sy), p| (sx + p.0, sy + p.1));
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(sxy, sxx), p| (sxy + (p.0 - mx) * (p.1 - my), sxx + (p.0 - mx).powi(2)));
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}

/// The memory span of cells given as `(tokens between needle and question, correct)`: the
/// largest distance r at which the accuracy over the cells at distance <= r (the paper's "last-r"
/// accuracy) is at least `threshold`. Not "held for every r' <= r": the nearest distances have
/// few cells each, and one miss there would otherwise hide everything past it. `None` when no
/// distance reaches the threshold.
pub fn memory_span(cells: &[(usize, bool)], threshold: f64) -> Option<usize> {
    let mut cells = cells.to_vec();
    cells.sort_unstable();
    let (mut correct, mut span) = (0usize, None);
    let mut i = 0;
    while i < cells.len() {
        let distance = cells[i].0;
        while i < cells.len() && cells[i].0 == distance {
            correct += cells[i].1 as usize;
            i += 1;
        }
        if correct as f64 >= threshold * i as f64 {
            span = Some(distance);
        }
    }
    span
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
    /// Cells whose needle is within the checkpoint's training length of the question (when both
    /// are known): what a model that collapses past its training length fails on although it
    /// recalls them at that length.
    pub recent_cells: usize,
    /// Of those, the ones answered correctly.
    pub recent_correct: usize,
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
    /// The memory span in tokens ([`memory_span`]); `None` when no distance reaches the threshold.
    pub span: Option<usize>,
    /// Cells that recorded their needle's distance (results of older versions did not).
    pub span_cells: usize,
    /// The checkpoint's training length, when its config or the sweep gave one.
    pub train_length: Option<usize>,
}

impl CapacityRow {
    /// `(N_S in millions, capacity in thousands of tokens)`, the capacity law's axes, when the
    /// row has a capacity.
    fn law_point(&self) -> Option<(f64, f64)> {
        self.tokens.map(|tokens| (self.n_s as f64 / 1e6, tokens as f64 / 1000.0))
    }

    /// `(N_S in millions, span in thousands of tokens)`, when the row has a span.
    fn span_point(&self) -> Option<(f64, f64)> {
        self.span.map(|tokens| (self.n_s as f64 / 1e6, tokens as f64 / 1000.0))
    }

    /// The span as the report prints it.
    pub fn span_text(&self) -> String {
        match self.span {
            _ if self.span_cells == 0 => "not recorded".into(),
            Some(tokens) => tokens.to_string(),
            None => "none".into(), // no distance reaches the threshold
        }
    }
}

/// Accuracy of one model x arm by the needle's distance from the question, every length pooled,
/// in the bins of [`distance_bin`] (the paper's "last-r" view, bin by bin).
#[derive(Clone, Debug, PartialEq)]
pub struct DistanceRow {
    /// The checkpoint's name.
    pub model: String,
    /// The mitigation arm.
    pub mitigation: String,
    /// `(correct, cells)` per bin, from the nearest.
    pub bins: Vec<(usize, usize)>,
}

/// The distance bin of a needle `tokens` before the question: 0 for 0..=16 tokens, then one per
/// doubling (17..=32, 33..=64, ...); bin `i` ends at `16 << i`.
pub fn distance_bin(tokens: usize) -> usize {
    let mut bin = 0;
    while tokens > 16 << bin {
        bin += 1;
    }
    bin
}

/// Both laws fitted across the models of one mitigation arm, or why not.
#[derive(Clone, Debug)]
pub struct ArmFits {
    /// The mitigation arm.
    pub mitigation: String,
    /// Capacity (K tokens) against N_S (millions).
    pub capacity: Result<CapacityFit, String>,
    /// Memory span (K tokens) against N_S (millions).
    pub span: Result<CapacityFit, String>,
}

/// N_S as every output writes it: elements, `4096`, or millions past a million, `4.72M`.
pub fn format_state_size(n_s: usize) -> String {
    if n_s >= 1_000_000 {
        format!("{:.2}M", n_s as f64 / 1e6)
    } else {
        n_s.to_string()
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
    /// Per mitigation arm, the laws fitted across models.
    pub fits: Vec<ArmFits>,
    /// Per model x arm, accuracy by the needle's distance from the question.
    pub distance: Vec<DistanceRow>,
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
                recent_cells: 0,
                recent_correct: 0,
            });
            row.mean_tokens = (row.mean_tokens * row.cells as f64 + r.tokens as f64) / (row.cells + 1) as f64;
            if let (Some(distance), Some(train)) = (r.tokens_after_needle, r.train_length) {
                if distance <= train {
                    row.recent_cells += 1;
                    row.recent_correct += r.correct as usize;
                }
            }
            row.cells += 1;
            row.correct += r.correct as usize;
            if let Some(t) = r.train_length {
                train.insert(r.model.clone(), t);
            }
        }
        // Rows by state size, then name, arm and length: the family reads from small to large.
        let mut accuracy: Vec<AccuracyRow> = groups.into_values().collect();
        accuracy.sort_by(|a, b| (a.n_s, &a.model, &a.mitigation, a.length).cmp(&(b.n_s, &b.model, &b.mitigation, b.length)));
        let mut distances: BTreeMap<(String, String), Vec<(usize, bool)>> = BTreeMap::new();
        for r in records {
            if let Some(d) = r.tokens_after_needle {
                distances.entry((r.model.clone(), r.mitigation.clone())).or_default().push((d, r.correct));
            }
        }
        let distance = distances
            .iter()
            .map(|((model, mitigation), cells)| {
                let mut bins = vec![(0, 0); cells.iter().map(|&(d, _)| distance_bin(d) + 1).max().unwrap_or(0)];
                for &(d, correct) in cells {
                    bins[distance_bin(d)].0 += correct as usize;
                    bins[distance_bin(d)].1 += 1;
                }
                DistanceRow { model: model.clone(), mitigation: mitigation.clone(), bins }
            })
            .collect();
        let mut capacity: Vec<CapacityRow> = Vec::new();
        for row in &accuracy {
            let position = capacity.iter().position(|c| c.model == row.model && c.mitigation == row.mitigation);
            let entry = match position {
                Some(i) => &mut capacity[i],
                None => {
                    let cells = distances.get(&(row.model.clone(), row.mitigation.clone())).map_or(&[][..], Vec::as_slice);
                    capacity.push(CapacityRow {
                        model: row.model.clone(),
                        n_s: row.n_s,
                        mitigation: row.mitigation.clone(),
                        tokens: None,
                        span: memory_span(cells, threshold),
                        span_cells: cells.len(),
                        train_length: train.get(&row.model).copied(),
                    });
                    capacity.last_mut().expect("just pushed")
                }
            };
            if row.accuracy() >= threshold {
                // None < Some(_): the first length to pass sets it, longer ones raise it.
                entry.tokens = entry.tokens.max(Some(row.length));
            }
        }
        let fits = capacity_arms(&capacity)
            .into_iter()
            .map(|arm| ArmFits {
                capacity: fit_capacity(&law_points(&capacity, &arm, CapacityRow::law_point)),
                span: fit_capacity(&law_points(&capacity, &arm, CapacityRow::span_point)),
                mitigation: arm,
            })
            .collect();
        Report { threshold, accuracy, capacity, fits, distance, cells: records.len(), seconds: records.iter().map(|r| r.seconds).sum() }
    }

    /// The Markdown summary.
    pub fn markdown(&self, plots: &[PathBuf]) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Passkey capacity\n");
        let _ = writeln!(
            md,
            "{} cells, {:.0} s of model time. Capacity = the longest length with accuracy >= {pct:.0}%. \
             Memory span = the farthest distance r from the needle to the question (tokens) at which \
             the accuracy over the needles at most r away is >= {pct:.0}%.\n",
            self.cells,
            self.seconds,
            pct = self.threshold * 100.0
        );
        let _ = writeln!(
            md,
            "## Capacity and memory span\n\n| model | N_S | mitigation | capacity (tokens) | memory span (tokens) | training length |\n|---|---:|---|---:|---:|---:|"
        );
        for row in &self.capacity {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                md_cell(&row.model),
                format_state_size(row.n_s),
                md_cell(&row.mitigation),
                row.tokens.map_or("< shortest".into(), format_length),
                row.span_text(),
                row.train_length.map_or("?".into(), format_length)
            );
        }
        let mut lengths: Vec<usize> = self.accuracy.iter().map(|r| r.length).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let _ = writeln!(md, "\n## Accuracy\n");
        self.length_table(&mut md, &lengths, |r| Some(format!("{:.0}%", r.accuracy() * 100.0)));
        if self.accuracy.iter().any(|r| r.recent_cells > 0) {
            let _ = writeln!(
                md,
                "\n## Needles within the training length of the question\n\n\
                 Accuracy on the cells whose needle lies at most the checkpoint's training length before the \
                 question (correct / cells in brackets): a model that recalls them at its training length and \
                 fails on them at longer lengths has collapsed (the state, not the distance, is what changed).\n"
            );
            self.length_table(&mut md, &lengths, |r| {
                (r.recent_cells > 0)
                    .then(|| format!("{:.0}% ({}/{})", 100.0 * r.recent_correct as f64 / r.recent_cells as f64, r.recent_correct, r.recent_cells))
            });
        }
        let bins = self.distance.iter().map(|r| r.bins.len()).max().unwrap_or(0);
        if bins > 0 {
            let _ = writeln!(
                md,
                "\n## Accuracy by needle distance\n\n\
                 Accuracy on the needles that lie that many tokens before the question, every length pooled \
                 (correct / cells in brackets): where recall fades with distance, whatever the length.\n"
            );
            let _ = write!(md, "| model | mitigation |");
            for bin in 0..bins {
                let low = if bin == 0 { 0 } else { (16 << (bin - 1)) + 1 };
                let _ = write!(md, " {}-{} |", format_length(low), format_length(16 << bin));
            }
            let _ = write!(md, "\n|---|---|{}\n", "---:|".repeat(bins));
            for row in &self.capacity {
                let _ = write!(md, "| {} | {} |", md_cell(&row.model), md_cell(&row.mitigation));
                let found = self.distance.iter().find(|d| d.model == row.model && d.mitigation == row.mitigation);
                for bin in 0..bins {
                    let text = match found.and_then(|d| d.bins.get(bin)) {
                        Some(&(correct, cells)) if cells > 0 => format!("{:.0}% ({correct}/{cells})", 100.0 * correct as f64 / cells as f64),
                        _ => String::new(),
                    };
                    let _ = write!(md, " {text} |");
                }
                md.push('\n');
            }
        }
        let _ = writeln!(md, "\n## Laws (N_S in millions, K tokens)\n");
        for fits in &self.fits {
            let arm = md_cell(&fits.mitigation);
            for (what, fit) in [("capacity", &fits.capacity), ("memory span", &fits.span)] {
                match fit {
                    Ok(f) => {
                        let sign = if f.c < 0.0 { "-" } else { "+" };
                        let _ = writeln!(md, "- `{arm}`: {what} = {:.3} ({:.3}^N_S - 1) {sign} {:.3} ({} models)", f.a, f.b, f.c.abs(), f.points);
                    }
                    Err(why) => {
                        let _ = writeln!(md, "- `{arm}`: {what} not fitted: {why}");
                    }
                }
            }
        }
        let _ = writeln!(md, "- paper (Mamba-2 trained long): capacity = 4.756 (1.365^N_S - 1) - 0.742");
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

impl Report {
    /// A table of one row per model and arm, one column per length, each cell `cell` of that
    /// length's accuracy row (empty where it gives none).
    fn length_table(&self, md: &mut String, lengths: &[usize], cell: impl Fn(&AccuracyRow) -> Option<String>) {
        let _ = write!(md, "| model | mitigation |");
        for l in lengths {
            let _ = write!(md, " {} |", format_length(*l));
        }
        let _ = write!(md, "\n|---|---|{}\n", "---:|".repeat(lengths.len()));
        for row in &self.capacity {
            let _ = write!(md, "| {} | {} |", md_cell(&row.model), md_cell(&row.mitigation));
            for l in lengths {
                let text = self.accuracy.iter().find(|r| r.model == row.model && r.mitigation == row.mitigation && r.length == *l).and_then(&cell);
                let _ = write!(md, " {} |", text.unwrap_or_default());
            }
            md.push('\n');
        }
    }
}

/// The mitigation arms of `rows`, sorted, each once.
fn capacity_arms(rows: &[CapacityRow]) -> Vec<String> {
    let mut arms: Vec<String> = rows.iter().map(|c| c.mitigation.clone()).collect();
    arms.sort();
    arms.dedup();
    arms
}

/// A law's points for arm `arm`: one per model with a value.
fn law_points(rows: &[CapacityRow], arm: &str, point: fn(&CapacityRow) -> Option<(f64, f64)>) -> Vec<(f64, f64)> {
    rows.iter().filter(|c| c.mitigation == arm).filter_map(point).collect()
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
            let base = coil_files::shorten_name(&file_safe(name), 100);
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
    let lands = coil_files::resolve_output(&path).ok().and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
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
        coil_files::write_atomically(&path, |temporary| std::fs::write(temporary, text))
            .map_err(|e| EvalError::Results { message: e.to_string(), path })
    };
    let mut csv = String::from("model,n_s,mitigation,length,cells,correct,accuracy,mean_tokens\n");
    // (N_S is written in elements here, for programs; the Markdown rounds it the same way everywhere.)
    for r in &report.accuracy {
        let (model, mitigation) = (csv_field(&r.model), csv_field(&r.mitigation));
        let _ = writeln!(csv, "{model},{},{mitigation},{},{},{},{:.4},{:.1}", r.n_s, r.length, r.cells, r.correct, r.accuracy(), r.mean_tokens);
    }
    write("accuracy.csv", &csv)?;

    let mut plots = Vec::new();
    let mut models: Vec<String> = Vec::new();
    for row in &report.capacity {
        if !models.contains(&row.model) {
            models.push(row.model.clone());
        }
    }
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
    let series = |point: fn(&CapacityRow) -> Option<(f64, f64)>, fit: fn(&ArmFits) -> &Result<CapacityFit, String>| {
        report
            .fits
            .iter()
            .map(|f| plot::LawSeries {
                label: f.mitigation.clone(),
                points: law_points(&report.capacity, &f.mitigation, point),
                fit: fit(f).as_ref().ok().map(|f| (f.a, f.b, f.c)),
            })
            .collect::<Vec<_>>()
    };
    let path = output(dir, "capacity.svg")?;
    plot::law(&path, "passkey capacity against state size", "capacity (thousand tokens)", &series(CapacityRow::law_point, |f| &f.capacity), true)?;
    plots.push(path);
    if report.capacity.iter().any(|c| c.span_cells > 0) {
        let path = output(dir, "span.svg")?;
        plot::law(&path, "memory span against state size", "memory span (thousand tokens)", &series(CapacityRow::span_point, |f| &f.span), false)?;
        plots.push(path);
    }
    write("report.md", &report.markdown(&plots))?;
    Ok(report)
}
