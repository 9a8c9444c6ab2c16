//! `haagenti report`: the family map, checked in a real browser (headless Chromium) on a
//! generated family: the DOM holds a node per model and an edge per relation the library
//! reports, with the very numbers of `stats --json`, `compare --json` and `show --json`;
//! names with HTML in them stay text; 200 models render fast and small.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{haagenti, json, ok};
use haagenti_core::Dtype;
use haagenti_testkit::synth::{self, Recipe, SynthTensor};
use serde_json::Value;

/// Tensor names a page must show as text, never as markup.
const HTML_TENSOR: &str = "<script>alert(\"x\")</script> & 'q'";
const BOLD_TENSOR: &str = "<b>bold</b>&amp;";

// ---------------------------------------------------------------------------------------
// The browser and a minimal reader of the DOM it dumps.
// ---------------------------------------------------------------------------------------

struct Browser {
    bin: PathBuf,
    /// A profile of its own: tests run in parallel.
    profile: tempfile::TempDir,
}

/// What one headless run printed, and how long it took.
struct Run {
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Browser {
    fn new(test: &str) -> Option<Self> {
        Some(Self {
            bin: haagenti_testkit::env::chromium(test)?,
            profile: tempfile::tempdir().unwrap(),
        })
    }

    fn run(&self, page: &Path, extra: &[&str]) -> Run {
        let url = format!("file://{}", page.canonicalize().unwrap().display());
        let started = Instant::now();
        let out = Command::new(&self.bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-logging=stderr",
                "--v=0",
                "--hide-scrollbars",
                "--no-first-run",
                "--window-size=1280,2400",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium");
        let elapsed = started.elapsed();
        let run = Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        };
        assert!(
            out.status.success(),
            "chromium failed on {url}: {}",
            run.stderr
        );
        run
    }

    /// The DOM after load, and the page's console messages (errors, failed loads).
    fn dump_dom(&self, page: &Path) -> (String, Vec<String>, Duration) {
        let run = self.run(page, &["--dump-dom"]);
        let console = run
            .stderr
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .map(str::to_string)
            .collect();
        (run.stdout, console, run.elapsed)
    }

    fn screenshot(&self, page: &Path, png: &Path) {
        self.run(page, &[&format!("--screenshot={}", png.display())]);
        assert!(png.is_file(), "no screenshot written at {}", png.display());
    }
}

/// A start tag of the dumped DOM.
#[derive(Debug)]
struct Tag {
    name: String,
    attrs: HashMap<String, String>,
}

impl Tag {
    fn attr(&self, name: &str) -> &str {
        self.attrs
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("<{}> has no {name}: {:?}", self.name, self.attrs))
    }

    fn u64(&self, name: &str) -> u64 {
        self.attr(name)
            .parse()
            .unwrap_or_else(|e| panic!("{name} of {self:?}: {e}"))
    }

    fn i64(&self, name: &str) -> i64 {
        self.attr(name)
            .parse()
            .unwrap_or_else(|e| panic!("{name} of {self:?}: {e}"))
    }

    fn has_class(&self, class: &str) -> bool {
        self.attrs
            .get("class")
            .is_some_and(|c| c.split_whitespace().any(|c| c == class))
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every start tag of `html` with its attributes (Chromium serialises them double-quoted,
/// `&` and `"` escaped). Text and comments are skipped.
fn tags(html: &str) -> Vec<Tag> {
    let b = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = html[i..].find('<') {
        i += at + 1;
        if html[i..].starts_with("!--") {
            i = html[i..].find("-->").map_or(b.len(), |e| i + e + 3);
            continue;
        }
        if !b.get(i).is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' && b[i] != b'/' {
            i += 1;
        }
        let name = html[start..i].to_ascii_lowercase();
        let mut attrs = HashMap::new();
        loop {
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
                i += 1;
            }
            if i >= b.len() || b[i] == b'>' {
                break;
            }
            let k = i;
            while i < b.len() && !b"=> \t\n/".contains(&b[i]) {
                i += 1;
            }
            let key = html[k..i].to_string();
            let mut value = String::new();
            if b.get(i) == Some(&b'=') {
                i += 1;
                if b.get(i) == Some(&b'"') {
                    let end = html[i + 1..].find('"').map_or(b.len(), |e| i + 1 + e);
                    value = unescape(&html[i + 1..end]);
                    i = end + 1;
                } else {
                    let v = i;
                    while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                        i += 1;
                    }
                    value = unescape(&html[v..i]);
                }
            }
            attrs.insert(key, value);
        }
        // Raw text elements: skip to their end tag.
        if name == "style" || name == "script" {
            if let Some(e) = html[i..].find(&format!("</{name}")) {
                i += e;
            }
        }
        out.push(Tag { name, attrs });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Libraries.
// ---------------------------------------------------------------------------------------

/// The demo family (parent, casts, fine-tune, LoRA merge, encoder, two pipelines sharing
/// it, all-in-one) plus a model whose tensor names hold HTML. Returns the model names.
fn family_library(dir: &Path) -> (PathBuf, Vec<String>) {
    let lib = dir.join("lib");
    let family = synth::small_family(&dir.join("family"), 20).unwrap();
    let mut names = Vec::new();
    for m in &family.models {
        ok(
            &lib,
            &["ingest", "--model", &m.name, m.path.to_str().unwrap()],
        );
        names.push(m.name.clone());
    }
    let odd = dir.join("odd.safetensors");
    let tensor = |name: &str, seed| {
        SynthTensor::new(
            name,
            Dtype::F32,
            vec![64, 64],
            Recipe::Normal {
                seed,
                mean: 0.0,
                std: 0.02,
            },
        )
    };
    synth::write_safetensors(
        &odd,
        &[tensor(HTML_TENSOR, 1), tensor(BOLD_TENSOR, 2)],
        None,
    )
    .unwrap();
    ok(
        &lib,
        &["ingest", "--model", "odd-names", odd.to_str().unwrap()],
    );
    names.push("odd-names".into());
    // A slightly noisy copy ingested lossily: its fragments are replaced by odd-names'.
    let noisy = dir.join("noisy.safetensors");
    let perturbed = |t: SynthTensor, seed| SynthTensor {
        recipe: Recipe::Perturb {
            base: Box::new(t.recipe.clone()),
            seed,
            std: 1e-5,
        },
        ..t
    };
    synth::write_safetensors(
        &noisy,
        &[
            perturbed(tensor(HTML_TENSOR, 1), 3),
            perturbed(tensor(BOLD_TENSOR, 2), 4),
        ],
        None,
    )
    .unwrap();
    ok(
        &lib,
        &[
            "ingest",
            "--model",
            "noisy-names",
            "--lossy-max-rel-error",
            "0.01",
            noisy.to_str().unwrap(),
        ],
    );
    names.push("noisy-names".into());
    names.sort();
    (lib, names)
}

/// Every ordered pair's `compare --json` relation, keyed by (model, other).
fn all_comparisons(lib: &Path, names: &[String]) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let doc = json(lib, &["compare", "--model", a, "--model", b, "--json"]);
            out.insert((a.clone(), b.clone()), doc["a_against_b"].clone());
            out.insert((b.clone(), a.clone()), doc["b_against_a"].clone());
        }
    }
    out
}

fn bytes(v: &Value, class: &str) -> u64 {
    v[class]["bytes"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// The acceptance test of the page: a real browser loads it without a console message,
/// and what it shows is what the library reports.
#[test]
fn family_page_in_a_browser_shows_what_the_library_reports() {
    let Some(browser) = Browser::new("family_page_in_a_browser_shows_what_the_library_reports")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (lib, names) = family_library(dir.path());
    let page = dir.path().join("family.html");
    let said = ok(&lib, &["report", "--out", page.to_str().unwrap()]);
    assert!(said.contains("family.html"), "{said}");

    let (dom, console, _) = browser.dump_dom(&page);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let tags = tags(&dom);
    let with_class = |name: &str, class: &str| -> Vec<&Tag> {
        tags.iter()
            .filter(|t| t.name == name && t.has_class(class))
            .collect()
    };

    // One node per model.
    let nodes = with_class("g", "node");
    let shown: BTreeSet<&str> = nodes.iter().map(|t| t.attr("data-model")).collect();
    assert_eq!(nodes.len(), names.len(), "one node per model");
    assert_eq!(
        shown,
        names.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    for n in &nodes {
        let m = json(&lib, &["show", "--model", n.attr("data-model"), "--json"]);
        assert_eq!(n.u64("data-logical-bytes"), m["logical_bytes"]);
    }

    // An edge for every relation `compare` reports, with its bytes, and no other.
    let compared = all_comparisons(&lib, &names);
    let edges: HashMap<(String, String, String), &Tag> = with_class("path", "edge")
        .into_iter()
        .map(|t| {
            let key = (
                t.attr("data-kind").to_string(),
                t.attr("data-from").to_string(),
                t.attr("data-to").to_string(),
            );
            (key, t)
        })
        .collect();
    let mut expected = 0;
    for ((a, b), rel) in &compared {
        for kind in ["delta", "cast"] {
            let key = (kind.to_string(), a.clone(), b.clone());
            if bytes(rel, kind) > 0 {
                expected += 1;
                let e = edges
                    .get(&key)
                    .unwrap_or_else(|| panic!("no {kind} edge {a} -> {b}"));
                assert_eq!(e.u64("data-bytes"), bytes(rel, kind), "{key:?}");
                assert_eq!(e.u64("data-fragments"), rel[kind]["fragments"], "{key:?}");
            } else {
                assert!(!edges.contains_key(&key), "{kind} edge {a} -> {b}");
            }
        }
        if a < b {
            let key = ("exact".to_string(), a.clone(), b.clone());
            let back = &compared[&(b.clone(), a.clone())];
            if bytes(rel, "identical") > 0 {
                expected += 1;
                let e = edges
                    .get(&key)
                    .unwrap_or_else(|| panic!("no exact edge {a} - {b}"));
                assert_eq!(e.u64("data-bytes"), bytes(rel, "identical"));
                assert_eq!(e.u64("data-back-bytes"), bytes(back, "identical"));
            } else {
                assert!(!edges.contains_key(&key), "exact edge {a} - {b}");
            }
        }
    }
    // Lossy substitution: an edge from the lossy model to the one whose fragments replaced
    // its own, with the bytes `show` reports as lossy.
    let lossy = &json(&lib, &["show", "--model", "noisy-names", "--json"])["savings"]["lossy"];
    assert!(
        lossy["bytes"].as_u64().unwrap() > 0,
        "the noisy copy was ingested lossily"
    );
    let key = (
        "lossy".to_string(),
        "noisy-names".to_string(),
        "odd-names".to_string(),
    );
    let e = edges.get(&key).expect("the lossy edge");
    assert_eq!(e.u64("data-bytes"), lossy["bytes"]);
    assert_eq!(e.u64("data-fragments"), lossy["fragments"]);
    expected += 1;
    assert_eq!(
        edges.len(),
        expected,
        "edges beyond what the library reports"
    );
    // The relations the family is made of.
    for (kind, from, to) in [
        ("delta", "finetune-bf16", "base-fp32"),
        ("delta", "finetune-bf16", "base-bf16"),
        ("delta", "lora-bf16", "base-bf16"),
        ("cast", "base-bf16", "base-fp32"),
        ("cast", "base-fp16", "base-fp32"),
        ("exact", "flux-like", "text-encoder"),
        ("exact", "sd35-like", "text-encoder"),
        ("exact", "all-in-one", "base-bf16"),
        ("exact", "all-in-one", "text-encoder"),
    ] {
        let key = (kind.to_string(), from.to_string(), to.to_string());
        assert!(edges.contains_key(&key), "the family's {key:?} edge");
    }

    // The sharing table and heatmap hold `compare`'s numbers for every related pair.
    let rows = with_class("tr", "pair");
    let mut listed = BTreeSet::new();
    for r in &rows {
        let key = (
            r.attr("data-model").to_string(),
            r.attr("data-other").to_string(),
        );
        let rel = &compared[&key];
        for (attr, class) in [
            ("data-total", "total"),
            ("data-identical", "identical"),
            ("data-delta", "delta"),
            ("data-cast", "cast"),
            ("data-unique", "unique"),
        ] {
            assert_eq!(r.u64(attr), bytes(rel, class), "{attr} of {key:?}");
        }
        listed.insert(key);
    }
    for (key, rel) in &compared {
        let related = bytes(rel, "identical") + bytes(rel, "delta") + bytes(rel, "cast");
        assert_eq!(
            listed.contains(key),
            related > 0,
            "{key:?} listed iff related"
        );
    }
    let cells = with_class("rect", "cell");
    assert_eq!(cells.len(), listed.len(), "a heatmap cell per related pair");
    for c in &cells {
        let rel = &compared[&(c.attr("data-model").into(), c.attr("data-other").into())];
        assert_eq!(c.u64("data-identical"), bytes(rel, "identical"));
        assert_eq!(c.u64("data-delta"), bytes(rel, "delta"));
        assert_eq!(c.u64("data-cast"), bytes(rel, "cast"));
    }

    // The totals are `stats --json`'s.
    let stats = json(&lib, &["stats", "--json"]);
    let figures: HashMap<&str, &str> = tags
        .iter()
        .filter_map(|t| {
            Some((
                t.attrs.get("data-stat")?.as_str(),
                t.attrs.get("data-value")?.as_str(),
            ))
        })
        .collect();
    for key in [
        "models",
        "fragments",
        "logical_bytes",
        "stored_bytes",
        "fragment_bytes",
        "manifest_bytes",
        "index_bytes",
    ] {
        assert_eq!(figures[key], stats[key].to_string(), "{key}");
    }
    for kind in [
        "exact_dedup_bytes",
        "delta_bytes",
        "cast_bytes",
        "compression_bytes",
        "lossy_bytes",
    ] {
        let key = format!("savings.{kind}");
        assert_eq!(
            figures[key.as_str()],
            stats["savings"][kind].to_string(),
            "{key}"
        );
    }
    let ratio: f64 = figures["ratio"].parse().unwrap();
    // The page divides in JavaScript: equal up to the last bit of the quotient.
    let expected = stats["ratio"].as_f64().unwrap();
    assert!(
        (ratio - expected).abs() <= 1e-12 * expected,
        "ratio {ratio} vs {expected}"
    );
    assert!(ratio > 1.5, "the family stores smaller: {ratio}");

    // Each model's bar is `show --json`'s savings.
    let bars = with_class("g", "bar");
    assert_eq!(bars.len(), names.len());
    let segments = with_class("rect", "seg");
    for name in &names {
        let s = &json(&lib, &["show", "--model", name, "--json"])["savings"];
        let stored = ["standalone", "delta", "cast"]
            .iter()
            .map(|k| s[k]["stored_bytes"].as_u64().unwrap())
            .sum::<u64>();
        let want: [(&str, i64); 6] = [
            ("stored", stored as i64),
            ("exact", s["savings"]["exact_dedup_bytes"].as_i64().unwrap()),
            ("delta", s["savings"]["delta_bytes"].as_i64().unwrap()),
            ("cast", s["savings"]["cast_bytes"].as_i64().unwrap()),
            (
                "compression",
                s["savings"]["compression_bytes"].as_i64().unwrap(),
            ),
            ("lossy", s["savings"]["lossy_bytes"].as_i64().unwrap()),
        ];
        // Segments follow their bar's <g> in document order.
        let at = tags
            .iter()
            .position(|t| t.name == "g" && t.has_class("bar") && t.attr("data-model") == name)
            .unwrap();
        let mine: Vec<&Tag> = tags[at + 1..]
            .iter()
            .filter(|t| t.name == "rect" && t.has_class("seg"))
            .take(6)
            .collect();
        for ((kind, value), seg) in want.iter().zip(&mine) {
            assert_eq!(seg.attr("data-kind"), *kind, "{name}");
            assert_eq!(seg.i64("data-bytes"), *value, "{name}: {kind}");
        }
    }
    assert_eq!(
        segments.len(),
        6 * names.len() + 6,
        "6 per model + the library's"
    );

    // Names holding HTML are text: no element came out of them.
    assert!(!tags.iter().any(|t| t.name == "script" || t.name == "b"));
    let tensors: BTreeSet<&str> = with_class("tr", "tensor")
        .iter()
        .map(|t| t.attr("data-tensor"))
        .collect();
    assert!(tensors.contains(HTML_TENSOR), "{tensors:?}");
    assert!(tensors.contains(BOLD_TENSOR), "{tensors:?}");
    assert!(dom.contains("&lt;script&gt;alert(\"x\")&lt;/script&gt; &amp; 'q'"));
    assert!(dom.contains("&lt;b&gt;bold&lt;/b&gt;&amp;amp;"));

    // A screenshot under target/, not blank: it must weigh several times a blank page's
    // and its compressed image data must use nearly every byte value.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let png = shots.join("report-family.png");
    browser.screenshot(&page, &png);
    let blank_page = dir.path().join("blank.html");
    std::fs::write(&blank_page, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank = shots.join("report-blank.png");
    browser.screenshot(&blank_page, &blank);
    let (shot, white) = (std::fs::read(&png).unwrap(), std::fs::read(&blank).unwrap());
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let variety = image_data(&shot).iter().collect::<BTreeSet<_>>().len();
    assert!(
        shot.len() > 4 * white.len() && variety > 200,
        "the screenshot looks blank: {} bytes (blank page {}), {variety} byte values",
        shot.len(),
        white.len()
    );
}

/// The concatenated IDAT chunks of a PNG (its compressed pixels).
fn image_data(png: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 8;
    while i + 8 <= png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
        let end = (i + 8 + len).min(png.len());
        if &png[i + 4..i + 8] == b"IDAT" {
            out.extend_from_slice(&png[i + 8..end]);
        }
        i = end + 4;
    }
    out
}

/// 200 models (50 groups, named like hub repositories: an f32 model, its bf16 and f16 casts, a pipeline holding the
/// bf16 file and an encoder every pipeline shares): the report is written quickly, weighs
/// under 2 MB, and loads in the browser in under a second.
///
/// The load time is measured by the browser itself: a copy of the page gets one script
/// that, at the `load` event, forces layout and records `performance.now()` (ms since
/// navigation start) in an attribute, read back from the dumped DOM. Wall-clock times of
/// the whole `chromium --dump-dom` run (mostly browser start-up) are printed next to that
/// of an empty page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_models_render_in_a_second_under_two_megabytes() {
    // Hub-like names of 45 characters: names are repeated in attributes and titles, and
    // make most of the page's weight.
    const ORG: &str = "an-organisation-name";
    let browser = Browser::new("two_hundred_models_render_in_a_second_under_two_megabytes");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let lib_dir = dir.path().join("lib");
    let encoder = src.join("encoder.safetensors");
    synth::generate_model(&encoder, 48 << 10, 999, Dtype::BF16).unwrap();
    let mut models: Vec<(String, PathBuf)> = Vec::new();
    for g in 0..50u64 {
        let base = src.join(format!("g{g}"));
        for (suffix, dtype, size) in [
            ("fp32", Dtype::F32, 128 << 10),
            ("bf16", Dtype::BF16, 64 << 10),
            ("fp16", Dtype::F16, 64 << 10),
        ] {
            let path = base.join(format!("{suffix}.safetensors"));
            synth::generate_model(&path, size, 1000 + g, dtype).unwrap();
            models.push((format!("{ORG}/family-{g:02}-{suffix}"), path));
        }
        let pipeline = base.join("pipeline");
        std::fs::create_dir_all(pipeline.join("unet")).unwrap();
        std::fs::copy(
            base.join("bf16.safetensors"),
            pipeline.join("unet/model.safetensors"),
        )
        .unwrap();
        std::fs::copy(&encoder, pipeline.join("encoder.safetensors")).unwrap();
        models.push((format!("{ORG}/family-{g:02}-pipeline"), pipeline));
    }
    let lib = haagenti_fragments::open(
        lib_dir.to_str().unwrap(),
        haagenti_fragments::OpenOptions::default(),
    )
    .await
    .unwrap();
    for (name, path) in &models {
        lib.ingest(name, path, haagenti_core::IngestOptions::default())
            .await
            .unwrap();
    }
    drop(lib);

    let page = dir.path().join("200.html");
    let started = Instant::now();
    ok(&lib_dir, &["report", "--out", page.to_str().unwrap()]);
    let written = started.elapsed();
    let html = std::fs::read_to_string(&page).unwrap();
    eprintln!(
        "200 models: `report` ran in {:.0} ms (open, collect, render, write; test profile), page {} bytes",
        written.as_secs_f64() * 1e3,
        html.len()
    );
    assert!(html.len() < 2_000_000, "page of {} bytes", html.len());
    let t = tags(&html);
    let count = |name: &str, class: &str| {
        t.iter()
            .filter(|x| x.name == name && x.has_class(class))
            .count()
    };
    assert_eq!(count("g", "node"), 200);
    assert_eq!(count("g", "bar"), 200);
    // 50 pipelines share the encoder: 1225 exact pairs and more, so the graph draws the
    // heaviest edges and says how many it left out, and the matrix collapses.
    assert!(count("path", "edge") <= 400);
    assert!(
        t.iter()
            .any(|x| x.attrs.get("id").is_some_and(|i| i == "edges-hidden"))
    );
    assert!(
        t.iter()
            .any(|x| x.attrs.get("id").is_some_and(|i| i == "matrix-collapsed"))
    );
    assert!(
        t.iter()
            .any(|x| x.attrs.get("id").is_some_and(|i| i == "pairs-rest"))
    );
    assert!(count("tr", "pair") <= 300);

    let Some(browser) = browser else {
        return;
    };
    let timed = dir.path().join("200-timed.html");
    let probe = "<script>addEventListener('load', () => { document.body.offsetHeight; \
                 document.documentElement.setAttribute('data-load-ms', performance.now().toFixed(1)); });</script></body>";
    std::fs::write(&timed, html.replacen("</body>", probe, 1)).unwrap();
    let (dom, console, wall) = browser.dump_dom(&timed);
    assert!(console.is_empty(), "console messages: {console:#?}");
    let load_ms: f64 = tags(&dom)
        .iter()
        .find(|x| x.name == "html")
        .and_then(|x| x.attrs.get("data-load-ms"))
        .expect("the probe ran")
        .parse()
        .unwrap();
    let blank = dir.path().join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let (_, _, blank_wall) = browser.dump_dom(&blank);
    eprintln!(
        "200 models in chromium: loaded and laid out {load_ms} ms after navigation start; \
         whole --dump-dom run {:.0} ms (empty page {:.0} ms)",
        wall.as_secs_f64() * 1e3,
        blank_wall.as_secs_f64() * 1e3
    );
    assert!(load_ms < 1000.0, "the page took {load_ms} ms to load");
    // For people to look at (nothing is checked beyond its existence).
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR"));
    browser.screenshot(&page, &keep.join("report-200.png"));
    std::fs::copy(&page, keep.join("report-200.html")).unwrap();
    assert_eq!(
        tags(&dom).iter().filter(|x| x.has_class("node")).count(),
        200
    );
}

#[test]
fn model_selection_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (lib, _) = family_library(dir.path());
    let doc = json(
        &lib,
        &[
            "report",
            "--json",
            "--model",
            "text-encoder",
            "--model",
            "flux-like",
        ],
    );
    let shown: Vec<&str> = doc["family"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model"].as_str().unwrap())
        .collect();
    assert_eq!(shown, ["flux-like", "text-encoder"]);
    // Both directions of the one pair, as compare reports them; the totals stay the
    // library's.
    let compared = json(
        &lib,
        &[
            "compare",
            "--model",
            "flux-like",
            "--model",
            "text-encoder",
            "--json",
        ],
    );
    let relations = doc["family"]["relations"].as_array().unwrap();
    assert_eq!(relations.len(), 2);
    assert_eq!(relations[0], compared["a_against_b"]);
    assert_eq!(relations[1], compared["b_against_a"]);
    assert_eq!(doc["stats"]["models"], 11);

    let out = haagenti(&lib, &["report", "--json", "--model", "no-such-model"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-model"), "{err}");
}
