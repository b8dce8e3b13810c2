//! The typed mitigations and their `--mitigate` spelling (docs/mitigations.md).

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

/// The most tokens a calibration takes (`state-norm:calibrate=T`, `coil calibrate`, `coil stats`):
/// they are held in memory (268 MB of ids; about a day of prefill on two CPU cores).
pub const MAX_CALIBRATION_TOKENS: usize = 1 << 26;

/// A set of layer or head indices: `None` means all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexSet(Option<Vec<RangeInclusive<usize>>>);

impl IndexSet {
    /// Every index.
    pub fn all() -> IndexSet {
        IndexSet(None)
    }

    /// The indices in `ranges` (inclusive).
    pub fn of(ranges: Vec<RangeInclusive<usize>>) -> IndexSet {
        IndexSet(Some(ranges))
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        self.0.as_ref().is_none_or(|ranges| ranges.iter().any(|r| r.contains(&index)))
    }

    /// Whether the set is every index.
    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }

    /// The largest index named, if any.
    pub fn max(&self) -> Option<usize> {
        self.0.as_ref().and_then(|ranges| ranges.iter().map(|r| *r.end()).max())
    }

    fn parse(text: &str) -> Result<IndexSet, String> {
        let mut ranges = Vec::new();
        for item in text.split('+') {
            let number = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("`{item}` is not an index or a range A-B"));
            let range = match item.split_once('-') {
                Some((a, b)) => number(a)?..=number(b)?,
                None => {
                    let n = number(item)?;
                    n..=n
                }
            };
            if range.is_empty() {
                return Err(format!("range `{item}` is empty"));
            }
            ranges.push(range);
        }
        Ok(IndexSet(Some(ranges)))
    }
}

impl fmt::Display for IndexSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("all"),
            Some(ranges) => {
                let items: Vec<String> = ranges
                    .iter()
                    .map(|r| if r.start() == r.end() { r.start().to_string() } else { format!("{}-{}", r.start(), r.end()) })
                    .collect();
                f.write_str(&items.join("+"))
            }
        }
    }
}

/// Which layers and heads a mitigation touches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    /// The layers touched.
    pub layers: IndexSet,
    /// The heads touched, in each touched layer.
    pub heads: IndexSet,
}

impl Scope {
    /// Every layer and head.
    pub fn all() -> Scope {
        Scope::default()
    }

    /// Whether head `head` of layer `layer` is touched.
    pub fn contains(&self, layer: usize, head: usize) -> bool {
        self.layers.contains(layer) && self.heads.contains(head)
    }
}

/// Where state-norm thresholds come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Thresholds {
    /// `tau[layer][head]`.
    Values(Vec<Vec<f32>>),
    /// A JSON file `{"thresholds": [[tau per head] per layer]}`.
    File(PathBuf),
    /// Each head's state norm after `tokens` tokens of calibration text, times `factor`.
    Calibrate { tokens: usize, factor: f32 },
}

/// One training-free mitigation (docs/mitigations.md has the exact semantics).
#[derive(Clone, Debug, PartialEq)]
pub enum Mitigation {
    /// `dt <- factor * dt`.
    DtScale { factor: f32, scope: Scope },
    /// `dt <- clamp(dt, min, max)`, replacing the checkpoint's `time_step_limit`; a bound left
    /// `None` keeps the checkpoint's.
    DtClamp { min: Option<f32>, max: Option<f32>, scope: Scope },
    /// `A <- factor * A`.
    AScale { factor: f32, scope: Scope },
    /// Clips each head's resting log-decay rate into the [low, high] percentile range.
    DecayClip { low: f32, high: f32, scope: Scope },
    /// Retention/insertion rescaling: `alpha <- lambda * alpha`, `B <- beta * B` in the write.
    Rri { lambda: f32, beta: f32, scope: Scope },
    /// Clamp each head's state norm to its threshold every `every` tokens.
    StateNorm { thresholds: Thresholds, every: u64, scope: Scope },
    /// Sliding window by state difference: the state holds only the last `size` inputs (rounded
    /// to `granularity`).
    Window { size: u64, granularity: u64, scope: Scope },
}

impl Mitigation {
    /// The layers and heads this mitigation touches.
    pub fn scope(&self) -> &Scope {
        match self {
            Mitigation::DtScale { scope, .. }
            | Mitigation::DtClamp { scope, .. }
            | Mitigation::AScale { scope, .. }
            | Mitigation::DecayClip { scope, .. }
            | Mitigation::Rri { scope, .. }
            | Mitigation::StateNorm { scope, .. }
            | Mitigation::Window { scope, .. } => scope,
        }
    }

    /// Parses `a;b;c` (or one spec) into mitigations applied in that order; `none` or an empty
    /// string is the plain model.
    pub fn parse_list(text: &str) -> Result<Vec<Mitigation>, String> {
        text.split(';').map(str::trim).filter(|s| !s.is_empty() && *s != "none").map(str::parse).collect()
    }
}

/// `key=value` options of one spec, each to be taken exactly once.
struct Options<'a> {
    spec: &'a str,
    pairs: Vec<(&'a str, &'a str, bool)>,
}

impl<'a> Options<'a> {
    fn parse(spec: &'a str, text: &'a str) -> Result<Options<'a>, String> {
        let mut pairs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or(("", part));
            if pairs.iter().any(|(k, _, _)| *k == key) {
                return Err(format!("`{spec}`: `{}` given twice", if key.is_empty() { "value" } else { key }));
            }
            pairs.push((key, value, false));
        }
        Ok(Options { spec, pairs })
    }

    fn take(&mut self, key: &str) -> Option<&'a str> {
        self.pairs.iter_mut().find(|(k, _, used)| *k == key && !*used).map(|entry| {
            entry.2 = true;
            entry.1
        })
    }

    fn number<T: FromStr>(&mut self, key: &str) -> Result<Option<T>, String> {
        let spec = self.spec;
        self.take(key)
            .map(|v| v.parse::<T>().map_err(|_| format!("`{spec}`: `{v}` is not a valid value for `{}`", display_key(key))))
            .transpose()
    }

    fn scope(&mut self) -> Result<Scope, String> {
        let spec = self.spec;
        let set = |v: Option<&str>, what: &str| {
            v.map_or(Ok(IndexSet::all()), |v| IndexSet::parse(v).map_err(|e| format!("`{spec}`: {what}: {e}")))
        };
        Ok(Scope { layers: set(self.take("layers"), "layers")?, heads: set(self.take("heads"), "heads")? })
    }

    fn finish(self) -> Result<(), String> {
        match self.pairs.iter().find(|(_, _, used)| !used) {
            Some(("", value, _)) => Err(format!("`{}`: unexpected value `{value}`", self.spec)),
            Some((key, _, _)) => Err(format!("`{}`: unknown option `{key}`", self.spec)),
            None => Ok(()),
        }
    }
}

fn display_key(key: &str) -> &str {
    if key.is_empty() { "the factor" } else { key }
}

fn positive_finite(spec: &str, what: &str, v: f32) -> Result<f32, String> {
    if v.is_finite() && v > 0.0 { Ok(v) } else { Err(format!("`{spec}`: {what} must be a positive finite number, got {v}")) }
}

impl FromStr for Mitigation {
    type Err = String;

    fn from_str(spec: &str) -> Result<Mitigation, String> {
        let spec = spec.trim();
        let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let mut o = Options::parse(spec, rest)?;
        let scope = o.scope()?;
        let mitigation = match name {
            "dt-scale" | "a-scale" => {
                let factor = match (o.number::<f32>("")?, o.number::<f32>("factor")?) {
                    (Some(_), Some(_)) => return Err(format!("`{spec}`: give the factor once, as `{name}:F` or as `factor=F`")),
                    (Some(f), None) | (None, Some(f)) => f,
                    (None, None) => return Err(format!("`{spec}`: give the factor, e.g. `{name}:0.5`")),
                };
                let factor = positive_finite(spec, "the factor", factor)?;
                if name == "dt-scale" { Mitigation::DtScale { factor, scope } } else { Mitigation::AScale { factor, scope } }
            }
            "dt-clamp" => {
                let (min, max) = (o.number::<f32>("min")?, o.number::<f32>("max")?);
                if min.is_none() && max.is_none() {
                    return Err(format!("`{spec}`: give min=X and/or max=Y"));
                }
                if min.is_some_and(|m| !m.is_finite() || m < 0.0) || max.is_some_and(|m| m.is_nan() || m <= 0.0) || matches!((min, max), (Some(a), Some(b)) if a > b) {
                    return Err(format!("`{spec}`: need 0 <= min <= max"));
                }
                Mitigation::DtClamp { min, max, scope }
            }
            "decay-clip" => {
                let low = o.number::<f32>("low")?.unwrap_or(5.0);
                let high = o.number::<f32>("high")?.unwrap_or(100.0);
                if !(0.0..=100.0).contains(&low) || !(0.0..=100.0).contains(&high) || low > high {
                    return Err(format!("`{spec}`: need 0 <= low <= high <= 100 (percentiles)"));
                }
                Mitigation::DecayClip { low, high, scope }
            }
            "rri" => {
                let lambda = positive_finite(spec, "lambda", o.number::<f32>("lambda")?.unwrap_or(1.0))?;
                let beta = positive_finite(spec, "beta", o.number::<f32>("beta")?.unwrap_or(1.0))?;
                let grow = match o.number::<u8>("grow")? {
                    None | Some(0) => false,
                    Some(1) => true,
                    Some(_) => return Err(format!("`{spec}`: grow is 0 or 1")),
                };
                if (lambda > 1.0 || beta > 1.0) && !grow {
                    return Err(format!(
                        "`{spec}`: lambda and beta above 1 grow retention and insertion, where the paper's rescaling shrinks them (both <= 1); add grow=1 if that is what you want"
                    ));
                }
                if beta != 1.0 && !scope.heads.is_all() {
                    return Err(format!("`{spec}`: beta scales B, which the heads of a group share: scope it with layers= only"));
                }
                Mitigation::Rri { lambda, beta, scope }
            }
            "state-norm" => {
                let every = o.number::<u64>("every")?.unwrap_or(128);
                if every == 0 {
                    return Err(format!("`{spec}`: every must be at least 1"));
                }
                let thresholds = match (o.take("thresholds"), o.number::<usize>("calibrate")?) {
                    (Some(file), None) => Thresholds::File(PathBuf::from(file)),
                    (None, Some(tokens)) if tokens > MAX_CALIBRATION_TOKENS => {
                        return Err(format!("`{spec}`: calibrate=T holds T tokens in memory: at most {MAX_CALIBRATION_TOKENS} (2^26)"))
                    }
                    (None, Some(tokens)) if tokens > 0 => {
                        let factor = positive_finite(spec, "factor", o.number::<f32>("factor")?.unwrap_or(1.0))?;
                        Thresholds::Calibrate { tokens, factor }
                    }
                    _ => return Err(format!("`{spec}`: give exactly one of thresholds=FILE or calibrate=T (T > 0)")),
                };
                Mitigation::StateNorm { thresholds, every, scope }
            }
            "window" => {
                let size = o.number::<u64>("size")?.ok_or_else(|| format!("`{spec}`: give size=R"))?;
                let granularity = o.number::<u64>("granularity")?.unwrap_or(1);
                if size == 0 || granularity == 0 {
                    return Err(format!("`{spec}`: size and granularity must be at least 1"));
                }
                let limit = crate::state::MAX_WINDOW_SPAN;
                if size.checked_add(granularity).is_none_or(|span| span > limit) {
                    return Err(format!("`{spec}`: size + granularity must be at most {limit} tokens (2^40)"));
                }
                if !scope.heads.is_all() {
                    return Err(format!("`{spec}`: a window applies to whole layers: scope it with layers= only"));
                }
                Mitigation::Window { size, granularity, scope }
            }
            // `parse_list` drops a plain `none`; one with options is a mistake worth naming.
            "none" => return Err(format!("`{spec}`: `none` (no mitigation) takes no options")),
            other => {
                return Err(format!(
                    "unknown mitigation `{other}` (expected none, rri, state-norm, window, dt-scale, a-scale, dt-clamp or decay-clip)"
                ))
            }
        };
        o.finish()?;
        Ok(mitigation)
    }
}

impl fmt::Display for Mitigation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = |s: &Scope| {
            let mut text = String::new();
            if !s.layers.is_all() {
                text += &format!(",layers={}", s.layers);
            }
            if !s.heads.is_all() {
                text += &format!(",heads={}", s.heads);
            }
            text
        };
        match self {
            Mitigation::DtScale { factor, scope: s } => write!(f, "dt-scale:{factor}{}", scope(s)),
            Mitigation::AScale { factor, scope: s } => write!(f, "a-scale:{factor}{}", scope(s)),
            Mitigation::DtClamp { min, max, scope: s } => {
                let bounds: Vec<String> = [min.map(|m| format!("min={m}")), max.map(|m| format!("max={m}"))].into_iter().flatten().collect();
                write!(f, "dt-clamp:{}{}", bounds.join(","), scope(s))
            }
            Mitigation::DecayClip { low, high, scope: s } => write!(f, "decay-clip:low={low},high={high}{}", scope(s)),
            Mitigation::Rri { lambda, beta, scope: s } => {
                let grow = if *lambda > 1.0 || *beta > 1.0 { ",grow=1" } else { "" };
                write!(f, "rri:lambda={lambda},beta={beta}{grow}{}", scope(s))
            }
            Mitigation::StateNorm { thresholds, every, scope: s } => {
                let source = match thresholds {
                    Thresholds::File(path) => format!("thresholds={}", path.display()),
                    Thresholds::Calibrate { tokens, factor } => format!("calibrate={tokens},factor={factor}"),
                    Thresholds::Values(_) => "thresholds=<values>".into(),
                };
                write!(f, "state-norm:{source},every={every}{}", scope(s))
            }
            Mitigation::Window { size, granularity, scope: s } => write!(f, "window:size={size},granularity={granularity}{}", scope(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_defaults_and_scopes() {
        assert_eq!(
            "rri:lambda=0.9999,beta=0.75".parse::<Mitigation>().unwrap(),
            Mitigation::Rri { lambda: 0.9999, beta: 0.75, scope: Scope::all() }
        );
        let m: Mitigation = "a-scale:0.5,layers=0-3+7,heads=1".parse().unwrap();
        let Mitigation::AScale { factor, scope } = &m else { panic!() };
        assert_eq!(*factor, 0.5);
        assert!(scope.contains(2, 1) && scope.contains(7, 1) && !scope.contains(4, 1) && !scope.contains(2, 0));
        assert_eq!(m.to_string(), "a-scale:0.5,layers=0-3+7,heads=1");
        // Growth asked for explicitly, and said again when written back.
        let grown: Mitigation = "rri:lambda=1.01,grow=1".parse().unwrap();
        assert_eq!(grown, Mitigation::Rri { lambda: 1.01, beta: 1.0, scope: Scope::all() });
        assert_eq!(grown.to_string().parse::<Mitigation>().unwrap(), grown);
        assert_eq!(
            "window:size=4096".parse::<Mitigation>().unwrap(),
            Mitigation::Window { size: 4096, granularity: 1, scope: Scope::all() }
        );
        assert_eq!(
            "state-norm:calibrate=8192,factor=1.5".parse::<Mitigation>().unwrap(),
            Mitigation::StateNorm { thresholds: Thresholds::Calibrate { tokens: 8192, factor: 1.5 }, every: 128, scope: Scope::all() }
        );
        assert_eq!(Mitigation::parse_list("none").unwrap(), vec![]);
        assert_eq!(Mitigation::parse_list("dt-scale:2; dt-clamp:max=0.1").unwrap().len(), 2);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("warp:9", "unknown mitigation `warp`"),
            ("none:foo=1", "`none` (no mitigation) takes no options"),
            ("dt-scale", "give the factor"),
            ("dt-scale:-1", "positive"),
            ("rri:lambda=0", "positive"),
            ("rri:gamma=2", "unknown option `gamma`"),
            ("rri:lambda=1.5", "add grow=1"),
            ("rri:beta=2", "add grow=1"),
            ("rri:beta=0", "beta must be a positive"),
            ("rri:lambda=1.5,grow=2", "grow is 0 or 1"),
            ("rri:beta=0.5,heads=1", "layers= only"),
            ("window:size=0", "at least 1"),
            ("window:size=18446744073709551615", "at most 1099511627776"),
            ("window:size=1099511627776,granularity=1", "at most"),
            ("state-norm:every=4", "thresholds=FILE or calibrate=T"),
            ("dt-clamp:min=0.5,max=0.1", "min <= max"),
            ("a-scale:2,layers=3-1", "empty"),
            ("a-scale:2,layers=x", "not an index"),
            ("decay-clip:low=90,high=10", "percentiles"),
            ("dt-scale:2,dt-scale:3", "twice"),
        ] {
            let err = spec.parse::<Mitigation>().unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }
}
