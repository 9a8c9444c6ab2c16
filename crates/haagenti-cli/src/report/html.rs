//! The page: inline CSS, SVG drawn here, no script. Every name is escaped with
//! [`escape`]; every figure is a field of [`ReportData`] printed as is, in a `data-*`
//! attribute (exact bytes) next to its human form, so tests and scripts read the DOM.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use haagenti_core::{ByteCount, ModelSavings, Relation};

use super::layout;
use super::{ModelDetail, ReportData};

/// A size in binary units.
fn human(bytes: u64) -> String {
    haagenti_core::HumanBytes(bytes).to_string()
}

/// [`human`] with a sign, for savings that can be negative.
fn human_signed(bytes: i64) -> String {
    let magnitude = human(bytes.unsigned_abs());
    if bytes < 0 {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

/// Edges drawn in the lineage graph at most (the heaviest); the rest are counted.
const MAX_EDGES: usize = 400;
/// Models in the heatmap at most (the most related); the table still lists the pairs.
const MATRIX_MODELS: usize = 30;
/// Pairs listed in the table at most (the most related); the rest are summarised.
const MAX_PAIR_ROWS: usize = 300;
/// Characters of a model name drawn as a label (the full name is in its title).
const LABEL_CHARS: usize = 32;
/// Width of a label character in the SVGs' 11px font, for sizing margins.
const CHAR_WIDTH: f64 = 6.6;

/// `s` safe in HTML text and in a double- or single-quoted attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Appends formatted text to a `String` (which cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
    }};
}

/// How two models relate in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Exact,
    Cast,
    Delta,
    Lossy,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Exact => "exact",
            Kind::Cast => "cast",
            Kind::Delta => "delta",
            Kind::Lossy => "lossy",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Exact => "share identical fragments",
            Kind::Cast => "is cast from",
            Kind::Delta => "is delta-coded against",
            Kind::Lossy => "lossily substitutes fragments of",
        }
    }
}

/// An edge of the lineage graph: `from`'s bytes that relate to `to` (for exact edges,
/// `back` is `to`'s bytes that `from` holds too).
struct Edge {
    kind: Kind,
    from: usize,
    to: usize,
    count: ByteCount,
    back: ByteCount,
    /// The larger share of either model's bytes the edge stands for.
    share: f64,
}

impl Edge {
    fn weight(&self) -> u64 {
        self.count.bytes.max(self.back.bytes)
    }
}

/// The edges to draw when there are more than [`MAX_EDGES`]: every derivation (delta,
/// cast, lossy: at most a few per model) first, then each model's two exact edges
/// covering most of either side (a component shared by many models makes a clique of
/// exact edges that would hide everything else), then the rest; within each, by the
/// share of the models' bytes, then bytes. Returns (drawn, left out).
fn select_edges(edges: &[Edge], models: usize) -> (Vec<&Edge>, Vec<&Edge>) {
    let by_share = |a: &&Edge, b: &&Edge| {
        b.share
            .total_cmp(&a.share)
            .then(b.weight().cmp(&a.weight()))
            .then((a.kind, a.from, a.to).cmp(&(b.kind, b.from, b.to)))
    };
    let mut exact: Vec<&Edge> = edges.iter().filter(|e| e.kind == Kind::Exact).collect();
    exact.sort_by(by_share);
    let mut kept = vec![0usize; models];
    let mut rank: HashMap<(usize, usize), u8> = HashMap::new();
    for e in &exact {
        let top = kept[e.from] < 2 || kept[e.to] < 2;
        if top {
            kept[e.from] += 1;
            kept[e.to] += 1;
        }
        rank.insert((e.from, e.to), if top { 1 } else { 2 });
    }
    let class = |e: &Edge| match e.kind {
        Kind::Exact => rank.get(&(e.from, e.to)).copied().unwrap_or(2),
        _ => 0,
    };
    let mut all: Vec<&Edge> = edges.iter().collect();
    all.sort_by(|a, b| class(a).cmp(&class(b)).then_with(|| by_share(a, b)));
    let rest = all.split_off(all.len().min(MAX_EDGES));
    (all, rest)
}

/// Bytes a model stores itself (first references, as stored).
fn own_stored(s: &ModelSavings) -> u64 {
    s.standalone.stored_bytes + s.delta.stored_bytes + s.cast.stored_bytes
}

fn related(r: &Relation) -> u64 {
    r.identical.bytes + r.delta.bytes + r.cast.bytes
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn label(name: &str) -> String {
    if name.chars().count() <= LABEL_CHARS {
        escape(name)
    } else {
        let cut: String = name.chars().take(LABEL_CHARS - 1).collect();
        format!("{}…", escape(&cut))
    }
}

/// The whole page.
pub fn render(data: &ReportData) -> String {
    let models = &data.family.models;
    let index: HashMap<&str, usize> = models
        .iter()
        .enumerate()
        .map(|(i, m)| (m.model.as_str(), i))
        .collect();
    let edges = edges(data, &index);
    let sizes: Vec<f64> = models.iter().map(|m| m.logical_bytes as f64).collect();
    let weighted: Vec<(usize, usize, f64)> = edges
        .iter()
        .map(|e| (e.from, e.to, e.weight() as f64))
        .collect();
    let order = layout::order(&sizes, &weighted);

    let mut out = String::with_capacity(64 << 10);
    out.push_str(HEAD);
    w!(
        out,
        "<header><h1>haagenti family map</h1><p>{}</p></header>\n",
        subtitle(data)
    );
    totals(&mut out, data);
    problems(&mut out, data);
    lineage(&mut out, data, &edges, &order);
    matrix(&mut out, data, &index, &order);
    bars(&mut out, data, &order);
    details(&mut out, data);
    w!(
        out,
        "<footer>haagenti {} · every figure is exact in its element's <code>data-*</code> \
         attributes; <code>haagenti report --json</code> prints them all</footer>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION")
    );
    out
}

const HEAD: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>haagenti family map</title>
<style>
:root { --exact: #2166ac; --delta: #e08214; --cast: #7b3294; --lossy: #d6301d;
  --stored: #4d4d4d; --compression: #1b9e77; --ink: #1a1a1a; --muted: #666; --line: #ddd; }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--ink); margin: 0 auto; max-width: 1280px; padding: 0 20px 40px; }
h1 { font-size: 22px; margin: 20px 0 0; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
header p, .note, footer { color: var(--muted); }
dl#totals { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 6px 18px; }
dl#totals div { border-left: 3px solid var(--line); padding-left: 8px; }
dt { color: var(--muted); font-size: 12px; } dd { margin: 0; font-size: 16px; font-variant-numeric: tabular-nums; }
svg { max-width: 100%; height: auto; font: 11px system-ui, sans-serif; }
svg text { fill: var(--ink); }
.edge { fill: none; stroke-opacity: .55; } .edge:hover { stroke-opacity: 1; }
.edge.exact { stroke: var(--exact); } .edge.delta { stroke: var(--delta); }
.edge.cast { stroke: var(--cast); } .edge.lossy { stroke: var(--lossy); stroke-dasharray: 6 3; }
.node circle { fill: #f4f4f4; stroke: #555; stroke-width: 1.5; } .node:hover circle { fill: #ffe9a8; }
.seg.stored { fill: var(--stored); } .seg.exact { fill: var(--exact); } .seg.delta { fill: var(--delta); }
.seg.cast { fill: var(--cast); } .seg.compression { fill: var(--compression); } .seg.lossy { fill: var(--lossy); }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 6px 0; font-size: 13px; }
.legend span::before { content: ""; display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -1px; background: var(--c); }
.matrix-wrap { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.matrix-wrap > div { flex: 1 1 420px; min-width: 0; overflow: auto; max-height: 720px; }
table { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
th, td { padding: 2px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child, th.name, td.name { text-align: left; }
caption { text-align: left; color: var(--muted); padding-bottom: 4px; }
details { margin: 4px 0; } summary { cursor: pointer; }
details table { margin: 4px 0 10px 18px; }
code { font-size: 12px; }
</style>
</head>
<body>
"##;

fn subtitle(data: &ReportData) -> String {
    let shown = data.family.models.len();
    match &data.selection {
        Some(_) => format!(
            "{shown} of {} models shown (the totals are the whole library's)",
            data.stats.models
        ),
        None => format!(
            "{shown} models, {} rebuilt from {} stored",
            human(data.stats.logical_bytes),
            human(data.stats.stored_bytes)
        ),
    }
}

/// The library totals, each figure as `stats --json` names it.
fn totals(out: &mut String, data: &ReportData) {
    let s = &data.stats;
    let sv = &s.savings;
    out.push_str("<section id=\"library\"><h2>Library totals</h2>\n<dl id=\"totals\">\n");
    let mut item = |name: &str, key: &str, value: String, shown: String| {
        w!(
            out,
            "<div><dt>{name}</dt><dd data-stat=\"{key}\" data-value=\"{value}\">{shown}</dd></div>\n"
        );
    };
    item(
        "models",
        "models",
        s.models.to_string(),
        s.models.to_string(),
    );
    item(
        "logical bytes",
        "logical_bytes",
        s.logical_bytes.to_string(),
        human(s.logical_bytes),
    );
    item(
        "stored bytes",
        "stored_bytes",
        s.stored_bytes.to_string(),
        human(s.stored_bytes),
    );
    item(
        "ratio (logical / stored)",
        "ratio",
        data.ratio.to_string(),
        format!("{:.2}x", data.ratio),
    );
    item(
        "fragments",
        "fragments",
        s.fragments.to_string(),
        s.fragments.to_string(),
    );
    item(
        "fragment objects",
        "fragment_bytes",
        s.fragment_bytes.to_string(),
        human(s.fragment_bytes),
    );
    item(
        "manifests",
        "manifest_bytes",
        s.manifest_bytes.to_string(),
        human(s.manifest_bytes),
    );
    item(
        "similarity index",
        "index_bytes",
        s.index_bytes.to_string(),
        human(s.index_bytes),
    );
    item(
        "saved by exact dedup",
        "savings.exact_dedup_bytes",
        sv.exact_dedup_bytes.to_string(),
        human(sv.exact_dedup_bytes),
    );
    item(
        "saved by deltas",
        "savings.delta_bytes",
        sv.delta_bytes.to_string(),
        human_signed(sv.delta_bytes),
    );
    item(
        "saved by casts",
        "savings.cast_bytes",
        sv.cast_bytes.to_string(),
        human(sv.cast_bytes),
    );
    item(
        "saved by compression",
        "savings.compression_bytes",
        sv.compression_bytes.to_string(),
        human_signed(sv.compression_bytes),
    );
    item(
        "saved by lossy sharing",
        "savings.lossy_bytes",
        sv.lossy_bytes.to_string(),
        human(sv.lossy_bytes),
    );
    out.push_str("</dl>\n");
    // The library as one bar: what is stored, then each saving.
    let parts = [
        ("stored", "stored", s.stored_bytes),
        ("exact", "exact dedup", sv.exact_dedup_bytes),
        ("delta", "deltas", sv.delta_bytes.max(0).unsigned_abs()),
        ("cast", "casts", sv.cast_bytes),
        (
            "compression",
            "compression",
            sv.compression_bytes.max(0).unsigned_abs(),
        ),
        ("lossy", "lossy sharing", sv.lossy_bytes),
    ];
    let sum: u64 = parts.iter().map(|p| p.2).sum();
    out.push_str(
        "<svg id=\"library-bar\" role=\"img\" aria-label=\"stored bytes and savings of the library\" \
         viewBox=\"0 0 1000 28\" width=\"1000\" height=\"28\">\n",
    );
    let mut x = 0.0;
    for (kind, what, bytes) in parts {
        let width = if sum == 0 {
            0.0
        } else {
            1000.0 * bytes as f64 / sum as f64
        };
        w!(
            out,
            "<rect class=\"seg {kind}\" x=\"{x:.1}\" y=\"2\" width=\"{width:.1}\" height=\"24\"><title>{}: {} ({:.1}%)</title></rect>\n",
            if kind == "stored" { "stored" } else { what },
            human(bytes),
            percent(bytes, sum)
        );
        x += width;
    }
    out.push_str("</svg>\n");
    legend(out, true);
    if !data.lossy_models.is_empty() {
        out.push_str("<p>Lossy models:");
        for m in &data.lossy_models {
            w!(
                out,
                " <span class=\"lossy-model\" data-model=\"{}\">{} ({} substitutions, max relative L2 error {:.3e})</span>",
                escape(&m.model),
                escape(&m.model),
                m.substitutions,
                m.max_rel_error
            );
        }
        out.push_str("</p>\n");
    }
    out.push_str("</section>\n");
}

fn legend(out: &mut String, savings: bool) {
    out.push_str("<div class=\"legend\">");
    if savings {
        out.push_str(
            "<span style=\"--c: var(--stored)\">stored</span>\
             <span style=\"--c: var(--exact)\">saved by exact dedup</span>\
             <span style=\"--c: var(--delta)\">saved by deltas</span>\
             <span style=\"--c: var(--cast)\">saved by casts</span>\
             <span style=\"--c: var(--compression)\">saved by compression</span>\
             <span style=\"--c: var(--lossy)\">saved by lossy sharing</span>",
        );
    } else {
        out.push_str(
            "<span style=\"--c: var(--exact)\">exact: identical fragments</span>\
             <span style=\"--c: var(--delta)\">delta: XOR delta against the other's fragments</span>\
             <span style=\"--c: var(--cast)\">cast: exact bf16/f16 cast of the other's</span>\
             <span style=\"--c: var(--lossy)\">lossy: substituted by the other's fragments</span>",
        );
    }
    out.push_str("</div>\n");
}

fn problems(out: &mut String, data: &ReportData) {
    let f = &data.family;
    if f.damaged.is_empty() && f.warnings.is_empty() {
        return;
    }
    out.push_str("<section id=\"problems\"><h2>Problems</h2><ul>\n");
    for d in &f.damaged {
        w!(
            out,
            "<li class=\"damaged\" data-model=\"{}\">DAMAGED: {}: {} (left out of every figure)</li>\n",
            escape(&d.model),
            escape(&d.model),
            escape(&d.error)
        );
    }
    for warning in &f.warnings {
        w!(out, "<li class=\"warning\">{}</li>\n", escape(warning));
    }
    out.push_str("</ul></section>\n");
}

/// Every relation of the report as an edge: a delta or cast edge per ordered pair, one
/// exact edge per unordered pair, a lossy edge per lossy link.
fn edges(data: &ReportData, index: &HashMap<&str, usize>) -> Vec<Edge> {
    let mut out = Vec::new();
    let mut exact: BTreeMap<(usize, usize), (ByteCount, ByteCount, f64)> = BTreeMap::new();
    for r in &data.family.relations {
        let (Some(&from), Some(&to)) = (index.get(r.model.as_str()), index.get(r.other.as_str()))
        else {
            continue;
        };
        for (kind, count) in [(Kind::Delta, r.delta), (Kind::Cast, r.cast)] {
            if count.bytes > 0 {
                out.push(Edge {
                    kind,
                    from,
                    to,
                    count,
                    back: ByteCount::default(),
                    share: percent(count.bytes, r.total.bytes),
                });
            }
        }
        if r.identical.bytes > 0 {
            let entry = exact.entry((from.min(to), from.max(to))).or_default();
            let side = if from < to {
                &mut entry.0
            } else {
                &mut entry.1
            };
            *side = r.identical;
            entry.2 = entry.2.max(percent(r.identical.bytes, r.total.bytes));
        }
    }
    for ((from, to), (count, back, share)) in exact {
        out.push(Edge {
            kind: Kind::Exact,
            from,
            to,
            count,
            back,
            share,
        });
    }
    for l in &data.family.lossy {
        if let (Some(&from), Some(&to)) = (index.get(l.model.as_str()), index.get(l.other.as_str()))
        {
            out.push(Edge {
                kind: Kind::Lossy,
                from,
                to,
                count: l.substituted,
                back: ByteCount::default(),
                share: models_total(data, from)
                    .map_or(0.0, |total| percent(l.substituted.bytes, total)),
            });
        }
    }
    out
}

/// Every fragment reference's bytes of model `i`.
fn models_total(data: &ReportData, i: usize) -> Option<u64> {
    data.family.models.get(i).map(|m| m.fragments.bytes)
}

fn node_radius(logical: u64, largest: u64) -> f64 {
    if largest == 0 {
        6.0
    } else {
        6.0 + 26.0 * (logical as f64 / largest as f64).sqrt()
    }
}

fn lineage(out: &mut String, data: &ReportData, edges: &[Edge], order: &[usize]) {
    let models = &data.family.models;
    out.push_str("<section id=\"lineage\"><h2>Lineage</h2>\n");
    out.push_str(
        "<p class=\"note\">Each model is a circle sized by its logical bytes; an edge joins \
         two models whose stored bytes relate, as thick as the bytes, coloured by how. Arrows \
         point from a model to the one it is derived from. Hover for the figures.</p>\n",
    );
    legend(out, false);
    let largest = models.iter().map(|m| m.logical_bytes).max().unwrap_or(0);
    let radii: Vec<f64> = models
        .iter()
        .map(|m| node_radius(m.logical_bytes, largest))
        .collect();
    let longest = models
        .iter()
        .map(|m| m.model.chars().count().min(LABEL_CHARS))
        .max()
        .unwrap_or(0);
    let margin = longest as f64 * CHAR_WIDTH + 16.0;
    let circle = layout::circle(&radii, order, 6.0, margin);
    let size = 2.0 * circle.centre;
    w!(
        out,
        "<svg id=\"lineage-graph\" role=\"img\" aria-label=\"lineage graph of {} models\" viewBox=\"0 0 {size:.0} {size:.0}\" width=\"{size:.0}\" height=\"{size:.0}\">\n<defs>",
        models.len()
    );
    for kind in ["delta", "cast", "lossy"] {
        w!(
            out,
            "<marker id=\"arrow-{kind}\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"11\" markerHeight=\"11\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" style=\"fill: var(--{kind})\"/></marker>"
        );
    }
    out.push_str("</defs>\n<g class=\"edges\">\n");
    // Exact edges drawn first, so the derivations' arrows stay on top.
    let (mut drawn, hidden) = select_edges(edges, models.len());
    drawn.sort_by_key(|e| (e.kind, e.from, e.to));
    let heaviest = drawn.iter().map(|e| e.weight()).max().unwrap_or(1).max(1);
    for e in &drawn {
        let (p, q) = (circle.points[e.from], circle.points[e.to]);
        let (c, cx, cy) = (circle.centre, (p.x + q.x) / 2.0, (p.y + q.y) / 2.0);
        // Bow towards the centre, so edges between neighbours stay visible.
        let (kx, ky) = (c + 0.35 * (cx - c), c + 0.35 * (cy - c));
        let trim = |from: layout::Point, r: f64| {
            let (dx, dy) = (from.x - kx, from.y - ky);
            let d = (dx * dx + dy * dy).sqrt().max(1e-9);
            (from.x - dx / d * r, from.y - dy / d * r)
        };
        let (x1, y1) = trim(p, radii[e.from]);
        let (x2, y2) = trim(q, radii[e.to] + 1.0);
        let width = 1.5 + 8.0 * (e.weight() as f64 / heaviest as f64).sqrt();
        let kind = e.kind.as_str();
        let (from, to) = (&models[e.from].model, &models[e.to].model);
        let marker = if e.kind == Kind::Exact {
            String::new()
        } else {
            format!(" marker-end=\"url(#arrow-{kind})\"")
        };
        let title = if e.kind == Kind::Exact {
            format!(
                "{} and {} {}: {} of {}'s bytes, {} of {}'s",
                escape(from),
                escape(to),
                e.kind.describe(),
                human(e.count.bytes),
                escape(from),
                human(e.back.bytes),
                escape(to)
            )
        } else {
            format!(
                "{} {} {}: {} in {} fragments",
                escape(from),
                e.kind.describe(),
                escape(to),
                human(e.count.bytes),
                e.count.fragments
            )
        };
        w!(
            out,
            "<path class=\"edge {kind}\" id=\"edge-{kind}-{}-{}\" data-kind=\"{kind}\" data-from=\"{}\" data-to=\"{}\" data-bytes=\"{}\" data-fragments=\"{}\" data-back-bytes=\"{}\" d=\"M{x1:.1},{y1:.1} Q{kx:.1},{ky:.1} {x2:.1},{y2:.1}\" stroke-width=\"{width:.1}\"{marker}><title>{title}</title></path>\n",
            e.from,
            e.to,
            escape(from),
            escape(to),
            e.count.bytes,
            e.count.fragments,
            e.back.bytes,
        );
    }
    out.push_str("</g>\n<g class=\"nodes\">\n");
    for (i, m) in models.iter().enumerate() {
        let p = circle.points[i];
        let r = radii[i];
        let name = escape(&m.model);
        let stored = own_stored(m);
        w!(
            out,
            "<g class=\"node\" id=\"node-{i}\" data-model=\"{name}\" data-logical-bytes=\"{}\" data-stored-bytes=\"{stored}\"><circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r:.1}\"><title>{name}: {} logical, stores {} of its own</title></circle>",
            m.logical_bytes,
            p.x,
            p.y,
            human(m.logical_bytes),
            human(stored)
        );
        // Labels point away from the centre, read left to right on both halves.
        let (lx, ly) = (
            circle.centre + (circle.radius + r + 5.0) * p.angle.cos(),
            circle.centre + (circle.radius + r + 5.0) * p.angle.sin(),
        );
        let (lx, ly) = if models.len() == 1 {
            (p.x + r + 5.0, p.y)
        } else {
            (lx, ly)
        };
        let degrees = p.angle.to_degrees();
        let (rotate, anchor) = if p.angle.cos() >= -1e-9 {
            (degrees, "start")
        } else {
            (degrees + 180.0, "end")
        };
        w!(
            out,
            "<text x=\"{lx:.1}\" y=\"{ly:.1}\" dy=\"0.35em\" text-anchor=\"{anchor}\" transform=\"rotate({rotate:.1} {lx:.1} {ly:.1})\">{}</text></g>\n",
            label(&m.model)
        );
    }
    out.push_str("</g>\n</svg>\n");
    if !hidden.is_empty() {
        let bytes: u64 = hidden.iter().map(|e| e.weight()).sum();
        w!(
            out,
            "<p class=\"note\" id=\"edges-hidden\" data-count=\"{}\" data-bytes=\"{bytes}\">{} more relations ({} in all; mostly exact sharing within groups of models that share one component) are not drawn; the table below and <code>report --json</code> list them.</p>\n",
            hidden.len(),
            hidden.len(),
            human(bytes)
        );
    }
    out.push_str("</section>\n");
}

/// The sharing matrix: a heatmap of the most related models and the table of pairs.
fn matrix(out: &mut String, data: &ReportData, index: &HashMap<&str, usize>, order: &[usize]) {
    let models = &data.family.models;
    let relations = &data.family.relations;
    out.push_str("<section id=\"sharing\"><h2>Sharing matrix</h2>\n");
    out.push_str(
        "<p class=\"note\">Row model's bytes that the column model holds identically, or \
         that are stored as a delta or cast of the column model's fragments (what \
         <code>compare</code> reports), as a share of the row model's bytes.</p>\n",
    );
    // The models taking part in the most related bytes, in the graph's order.
    let mut involvement = vec![0u64; models.len()];
    let mut cells: HashMap<(usize, usize), &Relation> = HashMap::new();
    for r in relations {
        if let (Some(&a), Some(&b)) = (index.get(r.model.as_str()), index.get(r.other.as_str())) {
            involvement[a] += related(r);
            involvement[b] += related(r);
            cells.insert((a, b), r);
        }
    }
    let mut chosen: Vec<usize> = (0..models.len()).collect();
    chosen.sort_by(|a, b| involvement[*b].cmp(&involvement[*a]).then(a.cmp(b)));
    chosen.truncate(MATRIX_MODELS);
    let shown: Vec<usize> = order
        .iter()
        .copied()
        .filter(|i| chosen.contains(i))
        .collect();
    let k = shown.len();
    let cell = 18.0;
    let longest = shown
        .iter()
        .map(|&i| models[i].model.chars().count().min(LABEL_CHARS))
        .max()
        .unwrap_or(0);
    let pad = longest as f64 * CHAR_WIDTH + 10.0;
    let side = pad + k as f64 * cell + 4.0;
    out.push_str("<div class=\"matrix-wrap\"><div>\n");
    w!(
        out,
        "<svg id=\"matrix\" role=\"img\" aria-label=\"sharing matrix of {k} models (the table beside lists the values)\" viewBox=\"0 0 {side:.0} {side:.0}\" width=\"{side:.0}\" height=\"{side:.0}\">\n"
    );
    w!(
        out,
        "<rect x=\"{pad:.1}\" y=\"{pad:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#fafafa\" stroke=\"#ddd\"/>\n",
        k as f64 * cell,
        k as f64 * cell
    );
    for (slot, &i) in shown.iter().enumerate() {
        let name = label(&models[i].model);
        let at = pad + (slot as f64 + 0.5) * cell;
        w!(
            out,
            "<text x=\"{:.1}\" y=\"{at:.1}\" dy=\"0.35em\" text-anchor=\"end\">{name}</text><text x=\"{at:.1}\" y=\"{:.1}\" dy=\"0.35em\" text-anchor=\"start\" transform=\"rotate(-90 {at:.1} {:.1})\">{name}</text>\n",
            pad - 4.0,
            pad - 4.0,
            pad - 4.0
        );
    }
    for (row, &a) in shown.iter().enumerate() {
        for (col, &b) in shown.iter().enumerate() {
            let (x, y) = (pad + col as f64 * cell, pad + row as f64 * cell);
            if a == b {
                w!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell}\" height=\"{cell}\" fill=\"#bbb\"/>\n"
                );
                continue;
            }
            let Some(r) = cells.get(&(a, b)) else {
                continue;
            };
            let share = percent(related(r), r.total.bytes);
            let light = 96.0 - 0.6 * share;
            w!(
                out,
                "<rect class=\"cell\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell}\" height=\"{cell}\" fill=\"hsl(212, 65%, {light:.0}%)\" data-model=\"{}\" data-other=\"{}\" data-identical=\"{}\" data-delta=\"{}\" data-cast=\"{}\" data-total=\"{}\"><title>{} against {}: {share:.1}% related (identical {}, delta {}, cast {}, unique {} of {})</title></rect>\n",
                escape(&r.model),
                escape(&r.other),
                r.identical.bytes,
                r.delta.bytes,
                r.cast.bytes,
                r.total.bytes,
                escape(&r.model),
                escape(&r.other),
                human(r.identical.bytes),
                human(r.delta.bytes),
                human(r.cast.bytes),
                human(r.unique.bytes),
                human(r.total.bytes),
            );
        }
    }
    out.push_str("</svg>\n");
    if k < models.len() {
        w!(
            out,
            "<p class=\"note\" id=\"matrix-collapsed\" data-shown=\"{k}\" data-models=\"{}\">The {k} models most related to others are shown; the table lists the most related pairs of all {} models.</p>\n",
            models.len(),
            models.len()
        );
    }
    out.push_str("</div><div>\n");
    pairs_table(out, relations);
    out.push_str("</div></div>\n</section>\n");
}

fn pairs_table(out: &mut String, relations: &[Relation]) {
    let mut rows: Vec<&Relation> = relations.iter().collect();
    rows.sort_by(|a, b| {
        related(b)
            .cmp(&related(a))
            .then_with(|| (&a.model, &a.other).cmp(&(&b.model, &b.other)))
    });
    let rest = rows.split_off(rows.len().min(MAX_PAIR_ROWS));
    out.push_str(
        "<table id=\"pairs\"><caption>Related pairs, most related first (bytes of the first model \
         against the second)</caption>\n<thead><tr><th scope=\"col\">model</th><th scope=\"col\">against</th>\
         <th scope=\"col\">identical</th><th scope=\"col\">delta</th><th scope=\"col\">cast</th>\
         <th scope=\"col\">unique</th><th scope=\"col\">total</th><th scope=\"col\">related</th></tr></thead>\n<tbody>\n",
    );
    for r in &rows {
        w!(
            out,
            "<tr class=\"pair\" data-model=\"{}\" data-other=\"{}\" data-total=\"{}\" data-identical=\"{}\" data-delta=\"{}\" data-cast=\"{}\" data-unique=\"{}\"><td class=\"name\">{}</td><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td></tr>\n",
            escape(&r.model),
            escape(&r.other),
            r.total.bytes,
            r.identical.bytes,
            r.delta.bytes,
            r.cast.bytes,
            r.unique.bytes,
            escape(&r.model),
            escape(&r.other),
            human(r.identical.bytes),
            human(r.delta.bytes),
            human(r.cast.bytes),
            human(r.unique.bytes),
            human(r.total.bytes),
            percent(related(r), r.total.bytes)
        );
    }
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"8\">No two models share or derive any bytes.</td></tr>\n");
    }
    out.push_str("</tbody>\n");
    if !rest.is_empty() {
        let bytes: u64 = rest.iter().map(|r| related(r)).sum();
        w!(
            out,
            "<tfoot><tr id=\"pairs-rest\" data-count=\"{}\" data-bytes=\"{bytes}\"><td colspan=\"8\">and {} more related pairs ({} related in all): <code>report --json</code> lists them</td></tr></tfoot>\n",
            rest.len(),
            rest.len(),
            human(bytes)
        );
    }
    out.push_str("</table>\n");
}

/// The savings of a model by kind, as `show` reports them; negative savings draw nothing.
fn segments(m: &ModelSavings) -> [(&'static str, &'static str, i64); 6] {
    let unsigned = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
    let s = &m.savings;
    [
        ("stored", "stored", unsigned(own_stored(m))),
        (
            "exact",
            "saved by exact dedup",
            unsigned(s.exact_dedup_bytes),
        ),
        ("delta", "saved by deltas", s.delta_bytes),
        ("cast", "saved by casts", unsigned(s.cast_bytes)),
        ("compression", "saved by compression", s.compression_bytes),
        ("lossy", "saved by lossy sharing", unsigned(s.lossy_bytes)),
    ]
}

/// Per model, a stacked bar: what it stores itself, then what each kind of saving spared.
fn bars(out: &mut String, data: &ReportData, order: &[usize]) {
    let models = &data.family.models;
    out.push_str("<section id=\"models\"><h2>What each model costs</h2>\n");
    out.push_str(
        "<p class=\"note\">The fragments a model references first are stored (dark); \
         the rest of its bytes are saved: fragments an earlier model holds (exact dedup), \
         deltas, casts, compression of what it stores, lossy sharing.</p>\n",
    );
    legend(out, true);
    let widest = models
        .iter()
        .map(|m| {
            segments(m)
                .iter()
                .map(|s| s.2.max(0).unsigned_abs())
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let longest = models
        .iter()
        .map(|m| m.model.chars().count().min(LABEL_CHARS))
        .max()
        .unwrap_or(0);
    let pad = longest as f64 * CHAR_WIDTH + 10.0;
    let (span, row) = (640.0, 22.0);
    let width = pad + span + 230.0;
    let height = row * models.len() as f64 + 4.0;
    w!(
        out,
        "<svg id=\"bars\" role=\"img\" aria-label=\"stored bytes and savings per model (each model's details below list them)\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"{width:.0}\" height=\"{height:.0}\">\n"
    );
    for (slot, &i) in order.iter().enumerate() {
        let m = &models[i];
        let name = escape(&m.model);
        let y = slot as f64 * row + 2.0;
        // One title for the whole bar: a title per segment would repeat the name six times.
        let parts: Vec<String> = segments(m)
            .iter()
            .map(|(_, what, bytes)| format!("{what} {}", human_signed(*bytes)))
            .collect();
        w!(
            out,
            "<g class=\"bar\" id=\"bar-{i}\" data-model=\"{name}\" data-logical-bytes=\"{}\"><title>{name}: {}</title><text x=\"{:.1}\" y=\"{:.1}\" dy=\"0.35em\" text-anchor=\"end\">{}</text>",
            m.logical_bytes,
            parts.join(", "),
            pad - 6.0,
            y + row / 2.0,
            label(&m.model)
        );
        let mut x = pad;
        let mut stored = 0;
        for (kind, _, bytes) in segments(m) {
            if kind == "stored" {
                stored = bytes;
            }
            let w = span * bytes.max(0) as f64 / widest as f64;
            w!(
                out,
                "<rect class=\"seg {kind}\" data-kind=\"{kind}\" data-bytes=\"{bytes}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\"/>",
                y + 2.0,
                row - 5.0,
            );
            x += w;
        }
        w!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" dy=\"0.35em\">{} · stores {}</text></g>\n",
            x + 6.0,
            y + row / 2.0,
            human(m.logical_bytes),
            human_signed(stored)
        );
    }
    out.push_str("</svg>\n");
}

/// Per model: its savings as numbers, its files and its largest tensors.
fn details(out: &mut String, data: &ReportData) {
    let by_name: HashMap<&str, &ModelDetail> =
        data.models.iter().map(|d| (d.model.as_str(), d)).collect();
    out.push_str("<section id=\"details\"><h2>Models</h2>\n");
    for m in &data.family.models {
        let name = escape(&m.model);
        w!(
            out,
            "<details class=\"model\" data-model=\"{name}\"><summary><strong>{name}</strong>: {} logical, stores {}</summary>\n<table class=\"savings\"><tbody>",
            human(m.logical_bytes),
            human(own_stored(m))
        );
        for (kind, what, bytes) in segments(m) {
            w!(
                out,
                "<tr data-kind=\"{kind}\" data-bytes=\"{bytes}\"><th scope=\"row\" class=\"name\">{what}</th><td>{}</td></tr>",
                human_signed(bytes)
            );
        }
        out.push_str("</tbody></table>\n");
        let Some(d) = by_name.get(m.model.as_str()) else {
            out.push_str("</details>\n");
            continue;
        };
        w!(
            out,
            "<table class=\"files\"><caption>{} files</caption><tbody>",
            d.file_count
        );
        for f in &d.files {
            w!(
                out,
                "<tr><td class=\"name\">{}</td><td>{}</td></tr>",
                escape(&f.path),
                human(f.size)
            );
        }
        if d.file_count > d.files.len() {
            w!(
                out,
                "<tr><td class=\"name\" colspan=\"2\">and {} more</td></tr>",
                d.file_count - d.files.len()
            );
        }
        w!(
            out,
            "</tbody></table>\n<table class=\"tensors\"><caption>largest of {} tensors</caption><tbody>",
            d.tensor_count
        );
        for t in &d.largest_tensors {
            w!(
                out,
                "<tr class=\"tensor\" data-tensor=\"{}\"><td class=\"name\">{}</td><td class=\"name\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(&t.name),
                escape(&t.name),
                escape(&t.file),
                escape(&t.dtype),
                human(t.bytes)
            );
        }
        out.push_str("</tbody></table></details>\n");
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<script>alert(\"x\")</script>"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("a & b"), "a &amp; b");
        assert_eq!(escape("it's"), "it&#39;s");
        assert_eq!(escape("&amp;"), "&amp;amp;");
        assert_eq!(escape("plain.name-1/x_y é"), "plain.name-1/x_y é");
        // Nothing that opens a tag or closes an attribute survives.
        let nasty = "\"'><img src=x onerror=alert(1)>&";
        let escaped = escape(nasty);
        assert!(!escaped.contains(['<', '>', '"', '\'']), "{escaped}");
    }

    #[test]
    fn labels_are_escaped_and_truncated() {
        assert_eq!(label("a<b"), "a&lt;b");
        let long = "x".repeat(LABEL_CHARS + 5);
        assert_eq!(label(&long).chars().count(), LABEL_CHARS);
    }
}
