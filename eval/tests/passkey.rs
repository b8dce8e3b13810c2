//! The passkey evaluator against a fake model whose recall is known exactly: it remembers only
//! its last M tokens and answers with the digits after the last "passkey is " it can still see
//! (or, asked for a name, after the last "passkey of NAME is ").

use std::collections::VecDeque;

use coil_eval::passkey::{
    check_sweep, depth, memory_span, parse_lengths, read_results, run_sweep, write_report, CellRecord, EvalError, ResultsFile, Shard,
    Spacing, Subject, SweepConfig, Template, TokenizedTemplate,
};

/// Characters are tokens.
struct Fake {
    memory: usize,
    name: String,
}

impl Subject for Fake {
    type State = VecDeque<u32>;

    fn model_name(&self) -> &str {
        &self.name
    }
    fn mitigation(&self) -> &str {
        "none"
    }
    fn state_elements(&self) -> usize {
        self.memory * 1000
    }
    fn train_length(&self) -> Option<usize> {
        Some(256)
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        Ok(text.chars().map(|c| c as u32).collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String, EvalError> {
        Ok(ids.iter().filter_map(|&i| char::from_u32(i)).collect())
    }
    fn start(&self) -> Result<VecDeque<u32>, EvalError> {
        Ok(VecDeque::new())
    }
    fn fork(&self, state: &VecDeque<u32>) -> VecDeque<u32> {
        state.clone()
    }
    fn feed(&self, state: &mut VecDeque<u32>, tokens: &[u32]) -> Result<(), EvalError> {
        for &t in tokens {
            state.push_back(t);
            if state.len() > self.memory {
                state.pop_front();
            }
        }
        Ok(())
    }
    fn answer(&self, state: &mut VecDeque<u32>, tail: &[u32], count: usize) -> Result<Vec<u32>, EvalError> {
        self.feed(state, tail)?;
        let seen: String = state.iter().filter_map(|&i| char::from_u32(i)).collect();
        let question: String = tail.iter().filter_map(|&i| char::from_u32(i)).collect();
        // Asked for a name ("What is the passkey of NAME?"): the binding of that name.
        let marker = match question.split_once("passkey of ").and_then(|(_, rest)| rest.split_once('?')) {
            Some((name, _)) => format!("passkey of {name} is "),
            None => "passkey is ".into(),
        };
        let digits: String = seen
            .rmatch_indices(marker.as_str())
            .find_map(|(i, m)| {
                let d: String = seen[i + m.len()..].chars().take_while(char::is_ascii_digit).collect();
                (!d.is_empty() && i + m.len() + d.len() < seen.len()).then_some(d)
            })
            .unwrap_or_else(|| "?????".into());
        Ok(format!(" {digits}").chars().map(|c| c as u32).chain(std::iter::repeat(b'.' as u32)).take(count).collect())
    }
}

fn config(lengths: &str, depths: usize) -> SweepConfig {
    SweepConfig { lengths: parse_lengths(lengths).unwrap(), depths, spacing: Spacing::Even, seed: 7, template: Template::paper(), shard: Shard::whole(), batch_forks: false }
}

fn fakes() -> Vec<Fake> {
    vec![Fake { memory: 300, name: "m300".into() }, Fake { memory: 1200, name: "m1200".into() }, Fake { memory: 5000, name: "m5000".into() }]
}

/// Whether the fake with `memory` tokens can see "passkey is DDDDD" of this cell at question time.
fn fake_recalls(memory: usize, record: &CellRecord, template: &TokenizedTemplate) -> bool {
    let needle_start = template.prefix.len() + template.filler_len(0, record.needle_block);
    let match_start = needle_start + "The ".len();
    record.tokens - match_start <= memory
}

fn tokenized(template: &Template, seed: u64, longest: usize) -> TokenizedTemplate {
    let fake = Fake { memory: 1, name: "f".into() };
    TokenizedTemplate::new(template, seed, longest, |s| fake.encode(s)).unwrap()
}

#[test]
fn lengths_parse_lists_and_geometric_ranges() {
    assert_eq!(parse_lengths("1k,2k,512").unwrap(), vec![512, 1024, 2048]);
    assert_eq!(parse_lengths("1k..8k").unwrap(), vec![1024, 2048, 4096, 8192]);
    assert_eq!(parse_lengths("1k..1m:x4").unwrap(), vec![1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20]);
    for bad in ["", "0", "x", "4k..1k", "1k..4k:x1", "1k..4k:xz"] {
        assert!(parse_lengths(bad).is_err(), "{bad}");
    }
    // An upper bound past 2^63 once made the doubling wrap around and never end.
    for huge in ["1k..18446744073709551615", "1k..9223372036854775808:x3", "2099511627776", "1024m..2097152m"] {
        let error = parse_lengths(huge).unwrap_err().to_string();
        assert!(error.contains("longest length"), "{huge}: {error}");
    }
    let up_to_the_limit = parse_lengths("1k..1099511627776:x1024").unwrap();
    assert_eq!(up_to_the_limit, vec![1 << 10, 1 << 20, 1 << 30, 1 << 40]);
}

#[test]
fn prompts_land_within_one_block_and_place_the_needle_as_the_paper() {
    let fake = Fake { memory: 10, name: "f".into() };
    let paper = Template::paper();
    let t = tokenized(&paper, 7, 10_000);
    let block = paper.filler.chars().count();
    for length in [300, 1000, 4096, 10_000] {
        let prompts = t.prompts(length, 7, Spacing::Even, |s| fake.encode(s)).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            // The paper's rule: blocks = (length - prefix - suffix) / block, the needle replacing
            // block floor(depth * (blocks - 1)).
            let blocks = (length - t.prefix.len() - p.suffix.len()) / block;
            assert_eq!(p.filler_blocks, blocks - 1, "length {length}");
            assert_eq!(p.needle_block, (depth(i, 7) * (blocks - 1) as f64) as usize);
            let prompt = t.materialise(p, |s| fake.encode(s)).unwrap();
            assert_eq!(prompt.len(), p.tokens);
            assert!(p.tokens <= length && length - p.tokens < 2 * block, "length {length}: {}", p.tokens);
            assert_eq!(p.tokens_after_needle, (p.filler_blocks - p.needle_block) * block);
            let text = fake.decode(&prompt).unwrap();
            assert!(text.starts_with(paper.prefix.as_str()) && text.ends_with(paper.suffix.as_str()));
            assert_eq!(text.matches(p.key.as_str()).count(), 2);
        }
    }
    assert!(t.prompts(50, 3, Spacing::Even, |s| fake.encode(s)).is_err(), "too short for the template");
}

/// A needle longer than the filler blocks (about 4K tokens against one sentence) used to make
/// prompts far longer than their length: now every prompt stays within it, and a length that
/// cannot hold the needle is refused before a sweep starts, naming what takes the room.
#[test]
fn a_long_needle_never_stretches_a_prompt_past_its_length() {
    let fake = Fake { memory: 10, name: "f".into() };
    let mut template = Template::paper();
    template.needle = format!("{} The passkey is {{key}}.\n", "Remember. ".repeat(400));
    let t = tokenized(&template, 1, 8192);
    for length in [4300, 5000, 8192] {
        for p in t.prompts(length, 5, Spacing::Even, |s| fake.encode(s)).unwrap() {
            assert!(p.tokens <= length, "length {length}: {} tokens", p.tokens);
        }
    }
    let error = t.prompts(256, 5, Spacing::Even, |s| fake.encode(s)).unwrap_err().to_string();
    assert!(error.contains("length 256 is too short") && error.contains("take 4"), "{error}");
    let config = SweepConfig { template, ..config("256", 5) };
    let error = check_sweep(&fakes(), &config).unwrap_err().to_string();
    assert!(error.contains("length 256 is too short"), "{error}");
}

/// The `bindings` template: every block binds its own name and key, prompts of one length share
/// their filler, the asked name is bound only by the needle, and keys have the template's digits.
#[test]
fn bindings_prompts_bind_every_block_and_ask_for_the_needle() {
    let fake = Fake { memory: 10, name: "f".into() };
    let template = Template::bindings();
    let t = tokenized(&template, 11, 4096);
    let prompts = t.prompts(4096, 6, Spacing::Even, |s| fake.encode(s)).unwrap();
    // One filler for every depth: each prompt is prefix + filler[..j] + needle + filler[j..] + suffix.
    let mut filler = Vec::new();
    t.filler(0, prompts[0].filler_blocks, &mut filler, |s| fake.encode(s)).unwrap();
    let filler = fake.decode(&filler).unwrap();
    let prefix = fake.decode(&t.prefix).unwrap();
    for p in &prompts {
        assert_eq!(p.key.len(), 2);
        let text = fake.decode(&t.materialise(p, |s| fake.encode(s)).unwrap()).unwrap();
        assert_eq!(text.chars().count(), p.tokens);
        assert!(p.tokens <= 4096 && p.tokens > 4000, "{}", p.tokens);
        let split = t.filler_len(0, p.needle_block);
        let (needle, suffix) = (fake.decode(&p.needle).unwrap(), fake.decode(&p.suffix).unwrap());
        assert_eq!(text, format!("{prefix}{}{needle}{}{suffix}", &filler[..split], &filler[split..]));
        assert_eq!(filler.len() - split, p.tokens_after_needle);
        let name = suffix.rsplit_once("passkey of ").unwrap().1.trim_end_matches(" is").to_owned();
        assert_eq!(needle, format!("The passkey of {name} is {}.\n", p.key), "the needle binds the asked name");
        assert!(!filler.contains(&format!(" {name} ")), "and nothing else binds it");
    }
    let bound: Vec<&str> = filler.lines().map(|l| l.strip_prefix("The passkey of ").unwrap().split(' ').next().unwrap()).collect();
    let distinct: std::collections::HashSet<&&str> = bound.iter().collect();
    assert_eq!(distinct.len(), bound.len(), "every block a fresh name");
}

/// Log spacing: the needles' distances from the question are geometric, from one block to about
/// the whole filler, so half of them lie within the square root of the filler's blocks at every
/// length; the sweep records it, and a results file of one spacing refuses a resume with the other.
#[test]
fn log_spacing_puts_as_many_needles_in_every_octave_of_distance() {
    let fake = Fake { memory: 10, name: "f".into() };
    let t = tokenized(&Template::bindings(), 3, 1 << 16);
    for length in [1024, 1 << 16] {
        let prompts = t.prompts(length, 32, Spacing::Log, |s| fake.encode(s)).unwrap();
        let blocks = prompts[0].filler_blocks;
        let after: Vec<usize> = prompts.iter().map(|p| blocks - p.needle_block).collect();
        assert!(after.windows(2).all(|w| w[0] >= w[1]), "deepest first: {after:?}");
        assert_eq!(after[31], 1, "the last needle one block before the question");
        assert!(after[0] as f64 > 0.8 * blocks as f64, "the first near the start: {} of {blocks}", after[0]);
        let near = after.iter().filter(|&&a| a * a <= blocks).count();
        assert!((15..=17).contains(&near), "length {length}: {near} of 32 within sqrt({blocks}) blocks");
        for p in &prompts {
            assert_eq!(p.depth, p.needle_block as f64 / blocks as f64);
            assert_eq!(p.tokens_after_needle, t.filler_len(p.needle_block, blocks));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let config = SweepConfig { template: Template::bindings(), spacing: Spacing::Log, ..config("512", 6) };
    let mut results = ResultsFile::open(dir.path(), Shard::whole(), false).unwrap();
    run_sweep(&fakes(), &config, &mut results, |_| {}).unwrap();
    drop(results);
    let records = read_results(&[dir.path().to_owned()]).unwrap();
    assert!(records.iter().all(|r| r.spacing == Spacing::Log));
    let mut results = ResultsFile::open(dir.path(), Shard::whole(), true).unwrap();
    let summary = run_sweep(&fakes(), &config, &mut results, |_| {}).unwrap();
    assert_eq!(summary.cells_run, 0, "a resume with the same spacing finds every cell done");
    let even = SweepConfig { spacing: Spacing::Even, ..config };
    let error = run_sweep(&fakes(), &even, &mut results, |_| {}).unwrap_err().to_string();
    assert!(error.contains("spaced log") && error.contains("spaced even"), "{error}");
}

/// On `bindings`, a fake that remembers its last M tokens answers exactly the needles within M
/// of the end, whatever the length: its memory span comes out as the farthest such needle, and
/// grows with M, while its capacity (by length) says nothing.
#[test]
fn memory_span_of_fakes_on_bindings_comes_out_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = SweepConfig { template: Template::bindings(), ..config("256..8k", 24) };
    let fakes = fakes();
    let mut results = ResultsFile::open(dir.path(), Shard::whole(), false).unwrap();
    run_sweep(&fakes, &config, &mut results, |_| {}).unwrap();
    let records = read_results(&[dir.path().to_owned()]).unwrap();
    let report = write_report(&records, 1.0, dir.path()).unwrap();
    let needle = "The passkey of Bababa is 00.\n".len();
    let suffix = "What is the passkey of Bababa? The passkey of Bababa is".len();
    let mut spans = Vec::new();
    for fake in &fakes {
        let cells: Vec<&CellRecord> = records.iter().filter(|r| r.model == fake.name).collect();
        // Visible: "passkey of NAME is DD" and one more character, then the filler and question.
        let reach = fake.memory - suffix - (needle - "The ".len());
        for r in &cells {
            assert_eq!(r.correct, r.tokens_after_needle.unwrap() <= reach, "{r:?}");
        }
        let expected = cells.iter().map(|r| r.tokens_after_needle.unwrap()).filter(|&d| d <= reach).max();
        let row = report.capacity.iter().find(|c| c.model == fake.name).unwrap();
        assert_eq!(row.span, expected, "{}", fake.name);
        assert_eq!(row.span_cells, cells.len());
        spans.push(row.span.unwrap());
    }
    assert!(spans.windows(2).all(|w| w[0] < w[1]), "span grows with memory: {spans:?}");
    // The needles within the training length (256) of the question, per length: counted from
    // the records here, as the report must.
    for row in report.accuracy.iter().filter(|r| r.length == 8192) {
        let near: Vec<&CellRecord> = records.iter().filter(|r| r.model == row.model && r.length == 8192 && r.tokens_after_needle.unwrap() <= 256).collect();
        assert!(!near.is_empty());
        assert_eq!((row.recent_cells, row.recent_correct), (near.len(), near.iter().filter(|r| r.correct).count()), "{}", row.model);
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("## Needles within the training length of the question"), "{md}");
    // By distance: a fake recalls every needle in the bins wholly within its reach, none past it.
    assert!(md.contains("## Accuracy by needle distance"), "{md}");
    for fake in &fakes {
        let reach = fake.memory - suffix - (needle - "The ".len());
        let row = report.distance.iter().find(|d| d.model == fake.name).unwrap();
        let cells = records.iter().filter(|r| r.model == fake.name).count();
        assert_eq!(row.bins.iter().map(|b| b.1).sum::<usize>(), cells);
        for (bin, &(correct, total)) in row.bins.iter().enumerate() {
            if 16 << bin <= reach {
                assert_eq!(correct, total, "{} bin {bin}", fake.name);
            } else if bin > 0 && (16 << (bin - 1)) + 1 > reach {
                assert_eq!(correct, 0, "{} bin {bin}", fake.name);
            }
        }
    }
    assert!(md.contains("memory span (tokens)") && md.contains("memory span = "), "{md}");
    assert!(std::fs::read_to_string(dir.path().join("span.svg")).unwrap().starts_with("<svg"));
}

#[test]
fn memory_span_is_the_farthest_last_r_accuracy_at_the_threshold() {
    assert_eq!(memory_span(&[], 0.95), None);
    assert_eq!(memory_span(&[(5, false), (1, true)], 0.95), Some(1));
    assert_eq!(memory_span(&[(1, false), (5, true)], 0.6), None);
    // One miss at the nearest distance does not hide the rest: last-5 accuracy is 50%.
    assert_eq!(memory_span(&[(1, false), (5, true)], 0.5), Some(5));
    let mut cells: Vec<(usize, bool)> = vec![(1, false)];
    cells.extend((2..=40).map(|d| (d, true)));
    assert_eq!(memory_span(&cells, 0.95), Some(40), "39 of 40");
    use coil_eval::passkey::distance_bin;
    assert_eq!([0, 16, 17, 32, 33, 64, 65, 1 << 20].map(distance_bin), [0, 0, 1, 1, 2, 2, 3, 16]);
    // 19 right then 1 wrong: 95% holds at 20; the next wrong one breaks it.
    let mut cells: Vec<(usize, bool)> = (1..=19).map(|d| (d, true)).collect();
    cells.push((20, false));
    assert_eq!(memory_span(&cells, 0.95), Some(20));
    cells.push((21, false));
    assert_eq!(memory_span(&cells, 0.95), Some(20));
    // Two cells at one distance count together.
    assert_eq!(memory_span(&[(1, true), (2, true), (2, false)], 0.6), Some(2));
}

/// The capacity law is fitted only where three state sizes give three distinct capacities: four
/// models at 512 or 1K tokens once gave `-9.361 (16.000^N_S - 1) + 0.868`.
#[test]
fn the_law_is_not_fitted_where_the_data_cannot_carry_it() {
    use coil_eval::passkey::fit_capacity;
    let flat = [(0.001, 0.512), (0.002, 1.024), (0.004, 0.512), (0.008, 1.024)];
    let why = fit_capacity(&flat).unwrap_err();
    assert!(why.contains("2 distinct value(s)"), "{why}");
    assert!(fit_capacity(&[(1.0, 1.0), (1.0, 2.0), (2.0, 3.0)]).unwrap_err().contains("2 state size(s)"));
    let law = |x: f64| 2.0 * (1.5f64.powf(x) - 1.0) + 0.5;
    let fit = fit_capacity(&[(1.0, law(1.0)), (2.0, law(2.0)), (4.0, law(4.0)), (8.0, law(8.0))]).unwrap();
    assert!((fit.a - 2.0).abs() < 0.05 && (fit.b - 1.5).abs() < 0.01 && (fit.c - 0.5).abs() < 0.05, "{fit:?}");
    // Tiny state sizes (the bindings family's 0.008-0.033 million) put b^N_S - 1 in its linear
    // regime: the best b runs to the grid's edge and was once printed as `4.963 (16.000^N_S - 1)
    // + -0.101`. Now the reason, and the line.
    let why = fit_capacity(&[(0.0082, 0.022), (0.0123, 0.066), (0.0164, 0.121), (0.0328, 0.374)]).unwrap_err();
    assert!(why.contains("no curvature") && why.contains("K tokens per million"), "{why}");
}

#[test]
fn fake_model_capacity_comes_out_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = config("256..16k", 20);
    let fakes = fakes();
    let mut results = ResultsFile::open(dir.path(), Shard::whole(), false).unwrap();
    let summary = run_sweep(&fakes, &config, &mut results, |_| {}).unwrap();
    assert_eq!(summary.cells_run, 3 * 7 * 20);
    assert!(summary.saving() > 0.3, "forking saves work: {}", summary.saving());
    let records = read_results(&[dir.path().to_owned()]).unwrap();
    assert_eq!(records.len(), 3 * 7 * 20);
    let template = tokenized(&config.template, config.seed, 16 << 10);
    for r in &records {
        let fake = fakes.iter().find(|f| f.name == r.model).unwrap();
        assert_eq!(r.correct, fake_recalls(fake.memory, r, &template), "{r:?}");
    }
    let report = write_report(&records, 0.95, dir.path()).unwrap();
    // Capacity = the longest length at which >= 95% of needles are within memory.
    for fake in &fakes {
        let expected = config
            .lengths
            .iter()
            .copied()
            .filter(|&l| {
                let cells: Vec<&CellRecord> = records.iter().filter(|r| r.model == fake.name && r.length == l).collect();
                cells.iter().filter(|r| fake_recalls(fake.memory, r, &template)).count() as f64 / cells.len() as f64 >= 0.95
            })
            .max();
        let got = report.capacity.iter().find(|c| c.model == fake.name).unwrap().tokens;
        assert_eq!(got, expected, "{}", fake.name);
    }
    assert_eq!(report.capacity.iter().find(|c| c.model == "m300").unwrap().tokens, Some(256));
    // Rows read by state size (m300 < m1200 < m5000), not by name; N_S written one way.
    let order: Vec<&str> = report.capacity.iter().map(|c| c.model.as_str()).collect();
    assert_eq!(order, ["m300", "m1200", "m5000"]);
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| m1200 | 1.20M |") && md.contains("| m300 | 300000 |") && md.contains("## Laws"), "{md}");
    assert!(md.find("| m300 |").unwrap() < md.find("| m1200 |").unwrap());
    // The accuracy plot's x labels are the swept lengths, each once (they once ran together).
    let svg = std::fs::read_to_string(dir.path().join("accuracy-m300.svg")).unwrap();
    let texts: Vec<&str> = svg.split("<text").skip(1).filter_map(|t| t.split_once('>')).map(|(_, rest)| rest.split("</text>").next().unwrap().trim()).collect();
    let x_labels: Vec<&str> = texts.iter().copied().filter(|t| t.chars().next().is_some_and(|c| c.is_ascii_digit()) && !t.contains('.')).collect();
    assert_eq!(x_labels, ["256", "512", "1k", "2k", "4k", "8k", "16k"], "{texts:?}");
    for plot in ["capacity.svg", "accuracy-m300.svg", "heatmap-m5000-none.svg"] {
        assert!(std::fs::read_to_string(dir.path().join(plot)).unwrap().starts_with("<svg"), "{plot}");
    }
}

/// Names with commas, pipes and characters a file name cannot hold: the CSV quotes its fields,
/// the Markdown escapes its cells, and two models whose names map to one file name keep a plot
/// each.
#[test]
fn report_files_hold_names_that_need_quoting() {
    let dir = tempfile::tempdir().unwrap();
    let config = config("256..1k", 4);
    let fakes = fakes();
    let mut results = ResultsFile::open(dir.path(), Shard::whole(), false).unwrap();
    run_sweep(&fakes[..2], &config, &mut results, |_| {}).unwrap();
    let mut records = read_results(&[dir.path().to_owned()]).unwrap();
    let names = [fakes[0].name.clone(), fakes[1].name.clone()];
    for r in &mut records {
        r.model = if r.model == names[0] { "ma b".into() } else { "ma_b|\"x\",y".into() };
        r.mitigation = "rri:lambda=0.9,beta=0.75".into();
    }
    let report = write_report(&records, 0.95, dir.path()).unwrap();
    let csv = std::fs::read_to_string(dir.path().join("accuracy.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap().split(',').count(), 8);
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), report.accuracy.len());
    for row in &rows {
        // Split on commas outside quotes: eight fields, the quoted ones unescaped.
        let (mut fields, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, row.chars().peekable());
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        assert_eq!(fields.len(), 8, "{row}");
        assert!(fields[0] == "ma b" || fields[0] == "ma_b|\"x\",y", "{row}");
        assert_eq!(fields[2], "rri:lambda=0.9,beta=0.75", "{row}");
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| ma_b\\|\"x\",y |"), "{md}");
    let plots: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("accuracy-")).collect();
    assert_eq!(plots.len(), 2, "one accuracy plot per model: {plots:?}");
}

/// Streams fed in step give every cell the same prompt, answer and token count as forks run one
/// after another (a fake recalls only its last `memory` tokens, so a tail a block off would
/// flip the cells near that edge; the token counts must match too).
#[test]
fn batched_forks_give_the_same_cells() {
    let fakes = fakes();
    let run = |batch_forks: bool| {
        let dir = tempfile::tempdir().unwrap();
        let config = SweepConfig { batch_forks, ..config("256..8k", 7) };
        let summary = run_sweep(&fakes, &config, &mut ResultsFile::open(dir.path(), Shard::whole(), false).unwrap(), |_| {}).unwrap();
        let mut records = read_results(&[dir.path().to_owned()]).unwrap();
        records.sort_by_key(CellRecord::id);
        (summary, records)
    };
    let ((one, sequential), (together, batched)) = (run(false), run(true));
    assert_eq!((one.tokens_processed, one.tokens_unshared), (together.tokens_processed, together.tokens_unshared));
    assert_eq!(sequential.len(), 3 * 6 * 7);
    for (a, b) in sequential.iter().zip(&batched) {
        assert_eq!((a.id(), &a.prediction, a.correct, a.tokens, a.needle_block), (b.id(), &b.prediction, b.correct, b.tokens, b.needle_block));
    }
}

/// Simulates a kill: the first cells written, then a torn line; resuming finishes the rest and
/// ends with every cell exactly once, the same as an uninterrupted run.
#[test]
fn resume_after_a_kill_loses_nothing_and_duplicates_nothing() {
    let config = config("512,2k,4k", 8);
    let fakes = fakes();
    let whole = tempfile::tempdir().unwrap();
    run_sweep(&fakes, &config, &mut ResultsFile::open(whole.path(), Shard::whole(), false).unwrap(), |_| {}).unwrap();
    let complete = std::fs::read_to_string(whole.path().join("results.jsonl")).unwrap();
    let lines: Vec<&str> = complete.lines().collect();

    let killed = tempfile::tempdir().unwrap();
    let mut partial = lines[..29].join("\n");
    partial.push('\n');
    partial.push_str(&lines[29][..lines[29].len() / 2]); // torn mid-line
    std::fs::write(killed.path().join("results.jsonl"), partial).unwrap();
    assert!(ResultsFile::open(killed.path(), Shard::whole(), false).is_err(), "refuses to mix runs without --resume");
    let mut results = ResultsFile::open(killed.path(), Shard::whole(), true).unwrap();
    assert_eq!(results.done_count(), 29);
    // A second resume while this one runs would compute every cell again: refused.
    let busy = ResultsFile::open(killed.path(), Shard::whole(), true).err().expect("the file is in use").to_string();
    assert!(busy.contains("another run is writing it"), "{busy}");
    let summary = run_sweep(&fakes, &config, &mut results, |_| {}).unwrap();
    assert_eq!((summary.cells_skipped, summary.cells_run), (29, lines.len() - 29));

    let text = std::fs::read_to_string(killed.path().join("results.jsonl")).unwrap();
    let resumed: Vec<CellRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut ids: Vec<String> = resumed.iter().map(CellRecord::id).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "no cell twice");
    let reference = read_results(&[whole.path().to_owned()]).unwrap();
    assert_eq!(ids.len(), reference.len(), "every cell");
    for r in &reference {
        let again = resumed.iter().find(|x| x.id() == r.id()).unwrap();
        assert_eq!((&again.prediction, again.correct), (&r.prediction, r.correct));
    }
}

/// Only an unfinished last line (no newline) is a torn write; a finished line that is not a
/// record, or is not UTF-8, is damage: resuming refuses it and leaves the file as it was, and
/// the report refuses it too (it used to skip such lines and cut a bad last one).
#[test]
fn a_damaged_results_file_is_refused_not_trimmed() {
    let config = config("512,2k", 3);
    let fakes = fakes();
    let whole = tempfile::tempdir().unwrap();
    run_sweep(&fakes, &config, &mut ResultsFile::open(whole.path(), Shard::whole(), false).unwrap(), |_| {}).unwrap();
    let complete = std::fs::read(whole.path().join("results.jsonl")).unwrap();
    let first_line = complete.iter().position(|&b| b == b'\n').unwrap() + 1;
    // An unfinished last line is cut only when it starts a record (it was cut after the whole
    // line, the foreign last lines below, before).
    let damaged: [Vec<u8>; 6] = [
        [&complete[..], b"garbage\n"].concat(),
        [&complete[..first_line], b"\xff\xfe\n", &complete[first_line..]].concat(),
        b"\xff\n".to_vec(),
        [&complete[..], b"hello world"].concat(),
        b"{\"foo\": 1}".to_vec(),
        [&complete[..], &vec![b'{'; 2 << 20]].concat(),
    ];
    for bytes in damaged {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("results.jsonl");
        std::fs::write(&file, &bytes).unwrap();
        let error = ResultsFile::open(dir.path(), Shard::whole(), true).err().expect("refused");
        let error = error.to_string();
        assert!(["not a passkey result", "not the start of a passkey result", "longer than any record"].iter().any(|m| error.contains(m)), "{error}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "left as it was");
        assert!(read_results(&[dir.path().to_owned()]).is_err());
    }

    // A whole record without its newline is kept (and finished), not run again.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("results.jsonl");
    std::fs::write(&file, &complete[..complete.len() - 1]).unwrap();
    let results = ResultsFile::open(dir.path(), Shard::whole(), true).unwrap();
    assert_eq!(results.done_count(), complete.iter().filter(|&&b| b == b'\n').count());
    drop(results);
    assert_eq!(std::fs::read(&file).unwrap(), complete, "its newline restored");

    // A results file that is a device (read without end) is refused, not read.
    #[cfg(unix)]
    {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("results.jsonl")).unwrap();
        let error = ResultsFile::open(dir.path(), Shard::whole(), true).err().expect("refused").to_string();
        assert!(error.contains("not a regular file"), "{error}");
        assert!(read_results(&[dir.path().to_owned()]).expect_err("refused").to_string().contains("not a regular file"));
    }
}

#[test]
fn shards_cover_every_cell_once() {
    let config = config("512..8k", 6);
    let fakes = fakes();
    let dir = tempfile::tempdir().unwrap();
    let mut per_shard = Vec::new();
    for index in 0..4 {
        let mut sharded = config.clone();
        sharded.shard = Shard { index, count: 4 };
        let mut results = ResultsFile::open(dir.path(), sharded.shard, false).unwrap();
        per_shard.push(run_sweep(&fakes, &sharded, &mut results, |_| {}).unwrap().cells_run);
    }
    let records = read_results(&[dir.path().to_owned()]).unwrap();
    assert_eq!(records.len(), 3 * 5 * 6);
    assert_eq!(per_shard.iter().sum::<usize>(), records.len(), "no cell in two shards: {per_shard:?}");
    assert!(per_shard.iter().all(|&n| n > 0));
    assert!(Shard::parse("4/4").is_err() && Shard::parse("1/0").is_err() && Shard::parse("x").is_err());
    assert_eq!(Shard::parse("3/8").unwrap(), Shard { index: 3, count: 8 });
}

/// A template file is labelled by its name and its content: a file named `paper.json` is not the
/// built-in `paper`, and an edited file is not its earlier self (a resume would take the other's
/// cells as done).
#[test]
fn template_files_are_labelled_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paper.json");
    let paper = Template::paper();
    let write = |filler: &str| {
        let json = serde_json::json!({"prefix": paper.prefix, "filler": filler, "needle": paper.needle, "suffix": paper.suffix});
        std::fs::write(&path, json.to_string()).unwrap();
        Template::named(path.to_str().unwrap()).unwrap().name
    };
    let same = write(&paper.filler);
    assert_ne!(same, "paper");
    assert!(same.starts_with("paper#"), "{same}");
    assert_eq!(write(&paper.filler), same, "the same content, the same label");
    assert_ne!(write("Another filler. "), same, "edited content, another label");
}

/// Merging folders: a cell found twice with the same answer counts once; with another answer,
/// the folders hold different runs and the merge is refused (it kept one silently).
#[test]
fn merged_folders_with_conflicting_answers_are_refused() {
    let config = config("512", 3);
    let fakes = fakes();
    let first = tempfile::tempdir().unwrap();
    run_sweep(&fakes[..1], &config, &mut ResultsFile::open(first.path(), Shard::whole(), false).unwrap(), |_| {}).unwrap();
    let copy = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(first.path().join("results.jsonl")).unwrap();
    std::fs::write(copy.path().join("results.jsonl"), &text).unwrap();
    let both = [first.path().to_owned(), copy.path().to_owned()];
    assert_eq!(read_results(&both).unwrap().len(), 3, "the same cells count once");

    let mut records: Vec<CellRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    records[1].correct = !records[1].correct;
    records[1].prediction = "99999".into();
    let changed: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(copy.path().join("results.jsonl"), changed).unwrap();
    let error = read_results(&both).unwrap_err().to_string();
    assert!(error.contains("has another answer"), "{error}");
}
