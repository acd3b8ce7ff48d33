//! Pattern matching throughput on events shaped like event-ruler's citylots2 benchmark
//! (GeoJSON parcels of about 900 bytes: nine string properties, a polygon of coordinate
//! objects), for the fourteen rule types of that benchmark, their combination, and 1,000 rules
//! of mixed kinds — alone (a third of them match every event: the anything-but ones match
//! nearly everything) and each also naming a city block (most events match none). JSON parsing
//! is included: each event is matched from its text.
//!
//! `bench_patterns --dir DIR [--events N] [--passes P] [--only SET] [--skip-alone] [--generate-only]`
//!   writes DIR/events.jsonl and DIR/rules.tsv (deterministic) if they are not there, then
//!   measures skiff's compiled pattern set (median of P passes) and, for reference, each
//!   pattern matched on its own over a parsed tree (the matcher before the set). If
//!   DIR/ruler.tsv and DIR/counts-ruler.tsv are there (written by scripts/peers/event-ruler,
//!   run by scripts/bench-patterns), prints event-ruler's figure beside skiff's and checks
//!   that both engines counted the same matches for every rule.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use skiff_model::pattern::{Pattern, PatternSet};

fn main() {
    let mut dir = PathBuf::from("target/bench-patterns");
    let mut events = 213_068usize;
    let mut passes = 5usize;
    let mut generate_only = false;
    let mut only: Option<String> = None;
    let mut alone = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().expect("--dir DIR").into(),
            "--events" => {
                events = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--events N")
            }
            "--passes" => {
                passes = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--passes P")
            }
            "--generate-only" => generate_only = true,
            "--only" => only = args.next(),
            "--skip-alone" => alone = false,
            other => {
                eprintln!("unknown argument {other:?}; see the top of bench_patterns.rs");
                std::process::exit(2);
            }
        }
    }
    std::fs::create_dir_all(&dir).expect("create the data directory");
    let events_file = dir.join("events.jsonl");
    let rules_file = dir.join("rules.tsv");
    if !events_file.exists() || !rules_file.exists() {
        let lines = citylots(events);
        std::fs::write(&events_file, lines.join("\n") + "\n").expect("write events");
        let mut tsv = String::new();
        for (set, rules) in rule_sets() {
            for (i, r) in rules.iter().enumerate() {
                writeln!(tsv, "{set}\t{set}-{i}\t{r}").unwrap();
            }
        }
        std::fs::write(&rules_file, tsv).expect("write rules");
    }
    if generate_only {
        return;
    }
    let lines: Vec<String> = std::fs::read_to_string(&events_file)
        .expect("read events")
        .lines()
        .map(str::to_string)
        .collect();
    let bytes: usize = lines.iter().map(String::len).sum();
    let mut sets: Vec<(String, Vec<(String, Pattern)>)> = Vec::new();
    for line in std::fs::read_to_string(&rules_file)
        .expect("read rules")
        .lines()
    {
        let mut f = line.splitn(3, '\t');
        let (set, name, text) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let p = Pattern::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        if sets.last().is_none_or(|(s, _)| s != set) {
            sets.push((set.to_string(), Vec::new()));
        }
        sets.last_mut().unwrap().1.push((name.to_string(), p));
    }
    let ruler = read_tsv(&dir.join("ruler.tsv"));
    let ruler_counts = read_tsv(&dir.join("counts-ruler.tsv"));
    println!(
        "bench_patterns: {} events, {:.0} bytes on average, {passes} measured passes (median), one thread",
        lines.len(),
        bytes as f64 / lines.len() as f64
    );
    println!(
        "{:<28} {:>6} {:>9} {:>13} {:>13} {:>8} {:>13} {:>10}",
        "rule set",
        "rules",
        "matches",
        "skiff ev/s",
        "event-ruler",
        "ratio",
        "one by one",
        "counts"
    );
    let mut disagreements = 0;
    for (set, rules) in &sets {
        if only.as_ref().is_some_and(|o| o != set) {
            continue;
        }
        let compiled = PatternSet::new(rules.iter().map(|(_, p)| p.clone()));
        let mut counts = vec![0u64; rules.len()];
        let mut figures = Vec::new();
        for pass in 0..passes + 1 {
            counts.iter_mut().for_each(|c| *c = 0);
            let start = Instant::now();
            for line in &lines {
                for i in compiled.matches_json(line.as_bytes()).expect("valid JSON") {
                    counts[i] += 1;
                }
            }
            if pass > 0 {
                figures.push(lines.len() as f64 / start.elapsed().as_secs_f64());
            }
        }
        figures.sort_by(f64::total_cmp);
        let skiff = figures[figures.len() / 2];
        // The matcher before the set: parse a tree, then each pattern on its own (one pass).
        let mut one_by_one = f64::NAN;
        if alone {
            let start = Instant::now();
            let mut each = vec![0u64; rules.len()];
            for line in &lines {
                let v: Value = serde_json::from_str(line).unwrap();
                for (i, (_, p)) in rules.iter().enumerate() {
                    each[i] += u64::from(p.matches(&v));
                }
            }
            one_by_one = lines.len() as f64 / start.elapsed().as_secs_f64();
            assert_eq!(
                counts, each,
                "{set}: the set and the patterns alone disagree"
            );
        }
        let peer = ruler
            .get(&vec![set.clone()])
            .and_then(|v| v.parse::<f64>().ok());
        let agree = if ruler_counts.is_empty() {
            "-".to_string()
        } else {
            let differ: Vec<String> = rules
                .iter()
                .zip(&counts)
                .filter_map(|((name, _), c)| {
                    let theirs = ruler_counts.get(&vec![set.clone(), name.clone()]);
                    (theirs.map(String::as_str) != Some(c.to_string().as_str()))
                        .then(|| format!("{name}: skiff {c}, event-ruler {theirs:?}"))
                })
                .collect();
            disagreements += differ.len();
            for d in &differ {
                eprintln!("  counts differ: {d}");
            }
            if differ.is_empty() {
                "same".into()
            } else {
                format!("{} differ", differ.len())
            }
        };
        let per_event = counts.iter().sum::<u64>() as f64 / lines.len() as f64;
        println!(
            "{:<28} {:>6} {:>9.2} {:>13.0} {:>13} {:>8} {:>13.0} {:>10}",
            set,
            rules.len(),
            per_event,
            skiff,
            peer.map_or("-".into(), |p| format!("{p:.0}")),
            peer.map_or("-".into(), |p| format!("{:.2}×", skiff / p)),
            one_by_one,
            agree
        );
    }
    if disagreements > 0 {
        eprintln!("{disagreements} rules counted differently by the two engines");
        std::process::exit(1);
    }
}

/// Tab-separated lines, keyed by every field but the last.
fn read_tsv(path: &Path) -> BTreeMap<Vec<String>, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f: Vec<String> = l.split('\t').map(str::to_string).collect();
            let last = f.pop()?;
            Some((f, last))
        })
        .collect()
}

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Skewed towards the front of a list, as street frequencies are.
    fn skewed(&mut self, n: usize) -> usize {
        let u = self.unit();
        ((u * u * u) * n as f64) as usize
    }
}

const STREETS: [&str; 48] = [
    "MISSION",
    "MARKET",
    "FOLSOM",
    "HOWARD",
    "VALENCIA",
    "GUERRERO",
    "DOLORES",
    "CHURCH",
    "SANCHEZ",
    "NOE",
    "CASTRO",
    "DIAMOND",
    "FULTON",
    "GROVE",
    "HAYES",
    "FELL",
    "OAK",
    "PAGE",
    "HAIGHT",
    "WALLER",
    "MASON",
    "TAYLOR",
    "JONES",
    "LEAVENWORTH",
    "HYDE",
    "LARKIN",
    "POLK",
    "VAN NESS",
    "FRANKLIN",
    "GOUGH",
    "OCTAVIA",
    "LAGUNA",
    "BUCHANAN",
    "WEBSTER",
    "FILLMORE",
    "STEINER",
    "PIERCE",
    "SCOTT",
    "DIVISADERO",
    "BRODERICK",
    "BAKER",
    "LYON",
    "CHESTNUT",
    "LOMBARD",
    "GREENWICH",
    "JEFFERSON",
    "BEACH",
    "UNKNOWN",
];
const ST_TYPES: [&str; 6] = ["ST", "AVE", "WAY", "BLVD", "TER", "PL"];

/// `n` GeoJSON parcels in one line each.
fn citylots(n: usize) -> Vec<String> {
    let mut r = Rng(0x5eed_c171);
    (0..n)
        .map(|_| {
            let block = r.below(7600) + 1;
            let lot = r.below(300) + 1;
            let mapblklot = if r.below(20_000) == 0 {
                "VACSTWIL".to_string()
            } else {
                format!("{block:04}{lot:03}")
            };
            let from = r.below(4000);
            let street = STREETS[r.skewed(STREETS.len())];
            let st_type = match r.below(20) {
                0 => Value::Null,
                1..=10 => json!("ST"),
                k => json!(ST_TYPES[k % ST_TYPES.len()]),
            };
            let x0 = -122.52 + r.unit() * 0.16;
            let y0 = 37.70 + r.unit() * 0.11;
            let point = |r: &mut Rng| {
                json!({"x": x0 + r.unit() * 0.002, "y": y0 + r.unit() * 0.002, "z": 0.0})
            };
            let multi = r.below(1500) == 0;
            let (kind, coordinates) = if multi {
                let polys: Vec<Value> = (0..2)
                    .map(|_| json!([(0..5).map(|_| point(&mut r)).collect::<Vec<_>>()]))
                    .collect();
                ("MultiPolygon", json!(polys))
            } else {
                let ring: Vec<Value> = (0..5 + r.below(13)).map(|_| point(&mut r)).collect();
                ("Polygon", json!([ring]))
            };
            let first = json!({"x": x0, "y": y0, "z": 0.0});
            json!({
                "type": "Feature",
                "properties": {
                    "MAPBLKLOT": mapblklot, "BLKLOT": mapblklot,
                    "BLOCK_NUM": format!("{block:04}"), "LOT_NUM": format!("{lot:03}"),
                    "FROM_ST": from.to_string(), "TO_ST": (from + 2 * r.below(20)).to_string(),
                    "STREET": street, "ST_TYPE": st_type,
                    "ODD_EVEN": if from.is_multiple_of(2) { "E" } else { "O" }
                },
                "geometry": {"type": kind, "coordinates": coordinates, "firstCoordinates": first}
            })
            .to_string()
        })
        .collect()
}

fn prop(field: &str, value: Value) -> String {
    json!({"properties": { field: [value] }}).to_string()
}

fn geo(kind: Option<&str>, field: &str, axis: &str, numeric: Value) -> String {
    let mut g = serde_json::Map::new();
    if let Some(k) = kind {
        g.insert("type".into(), json!([k]));
    }
    g.insert(field.into(), json!({ axis: [{"numeric": numeric}] }));
    json!({ "geometry": g }).to_string()
}

/// The fourteen rule types of event-ruler's citylots2 benchmark, five rules each (values of
/// this data set), their combination, and 1,000 rules of mixed kinds.
fn rule_sets() -> Vec<(&'static str, Vec<String>)> {
    let p = prop;
    let streets = |op: &str, vals: [&str; 5]| -> Vec<String> {
        vals.iter().map(|v| p("STREET", json!({ op: v }))).collect()
    };
    let folded = |op: &str, vals: [&str; 5]| -> Vec<String> {
        vals.iter()
            .map(|v| p("STREET", json!({ op: {"equals-ignore-case": v} })))
            .collect()
    };
    let but = |inner: fn(&str) -> Value| -> Vec<String> {
        vec![
            p("STREET", json!({"anything-but": inner("FULTON")})),
            p("STREET", json!({"anything-but": inner("MASON")})),
            p("ST_TYPE", json!({"anything-but": inner("ST")})),
            json!({"geometry": {"type": [{"anything-but": inner("Polygon")}]}}).to_string(),
            p("FROM_ST", json!({"anything-but": inner("441")})),
        ]
    };
    let numeric = vec![
        geo(
            Some("Polygon"),
            "firstCoordinates",
            "x",
            json!(["<", -122.5]),
        ),
        geo(
            Some("MultiPolygon"),
            "firstCoordinates",
            "z",
            json!(["=", 0]),
        ),
        geo(None, "firstCoordinates", "x", json!(["<", -122.45])),
        geo(None, "firstCoordinates", "x", json!([">", -122.45])),
        geo(
            None,
            "firstCoordinates",
            "x",
            json!([">", -122.48, "<", -122.41]),
        ),
    ];
    let arrays = vec![
        geo(Some("Polygon"), "coordinates", "x", json!(["<", -122.515])),
        geo(Some("MultiPolygon"), "coordinates", "y", json!([">", 37.8])),
        geo(None, "coordinates", "x", json!(["<", -122.45])),
        geo(None, "coordinates", "x", json!([">", -122.45])),
        geo(
            None,
            "coordinates",
            "x",
            json!([">", -122.48, "<", -122.41]),
        ),
    ];
    let mut sets: Vec<(&str, Vec<String>)> = vec![
        (
            "EXACT",
            ["0123045", "2607117", "3745012", "0001001", "VACSTWIL"]
                .iter()
                .map(|v| p("MAPBLKLOT", json!(v)))
                .collect(),
        ),
        (
            "WILDCARD",
            ["143*", "2*0*1*7", "*218", "3*5*2", "VA*IL"]
                .iter()
                .map(|v| p("MAPBLKLOT", json!({"wildcard": v})))
                .collect(),
        ),
        (
            "PREFIX",
            streets("prefix", ["MA", "FU", "LA", "BR", "VAN "]),
        ),
        (
            "PREFIX_EQUALS_IGNORE_CASE",
            folded("prefix", ["Ma", "fU", "la", "Br", "van "]),
        ),
        ("SUFFIX", streets("suffix", ["ON", "KE", "ER", "ING", "GO"])),
        (
            "SUFFIX_EQUALS_IGNORE_CASE",
            folded("suffix", ["oN", "Ke", "eR", "InG", "gO"]),
        ),
        (
            "EQUALS_IGNORE_CASE",
            vec![
                p("STREET", json!({"equals-ignore-case": "jefferson"})),
                p("STREET", json!({"equals-ignore-case": "bEaCh"})),
                p("STREET", json!({"equals-ignore-case": "HyDe"})),
                p("STREET", json!({"equals-ignore-case": "CHESTNUT"})),
                p("ST_TYPE", json!({"equals-ignore-case": "st"})),
            ],
        ),
        ("NUMERIC", numeric),
        ("ANYTHING-BUT", but(|v| json!([v]))),
        (
            "ANYTHING-BUT-IGNORE-CASE",
            but(|v| json!({"equals-ignore-case": [v.to_lowercase()]})),
        ),
        (
            "ANYTHING-BUT-PREFIX",
            but(|v| json!({"prefix": &v[..v.len() - 1]})),
        ),
        ("ANYTHING-BUT-SUFFIX", but(|v| json!({"suffix": &v[1..]}))),
        (
            "ANYTHING-BUT-WILDCARD",
            but(|v| json!({"wildcard": format!("{}*", &v[..v.len() - 1])})),
        ),
        ("COMPLEX_ARRAYS", arrays),
    ];
    let combo: Vec<String> = sets
        .iter()
        .filter(|(name, _)| *name != "COMPLEX_ARRAYS")
        .flat_map(|(_, rules)| rules.clone())
        .collect();
    sets.push(("COMBO", combo));
    let mixed = mixed(1000);
    // The same rules, each also naming one city block, as rules in a bus name the source
    // they are about: an event matches one now and then instead of a third of them.
    let mut r = Rng(0x0002_0000);
    let keyed = mixed
        .iter()
        .map(|rule| {
            let mut v: Value = serde_json::from_str(rule).unwrap();
            let block = format!("{:04}", 1 + r.below(7600));
            let props = v
                .as_object_mut()
                .unwrap()
                .entry("properties")
                .or_insert_with(|| json!({}));
            props["BLOCK_NUM"] = json!([block]);
            v.to_string()
        })
        .collect();
    sets.push(("MIXED_1000", mixed));
    sets.push(("MIXED_1000_KEYED", keyed));
    sets
}

/// `n` rules of every kind above with values drawn from the data's vocabulary, some with two
/// fields: each kind about as often as the others.
fn mixed(n: usize) -> Vec<String> {
    let mut r = Rng(0x0001_0000);
    // Values of two characters at least, so that a prefix and a suffix are never empty.
    let fields = ["STREET", "ST_TYPE", "FROM_ST", "MAPBLKLOT", "BLOCK_NUM"];
    (0..n)
        .map(|i| {
            let field = fields[r.below(fields.len())];
            let word = match field {
                "STREET" => STREETS[r.below(STREETS.len())].to_string(),
                "ST_TYPE" => ST_TYPES[r.below(ST_TYPES.len())].to_string(),
                "MAPBLKLOT" => format!("{:04}{:03}", r.below(7600) + 1, r.below(300) + 1),
                "BLOCK_NUM" => format!("{:04}", r.below(7600) + 1),
                _ => (10 + r.below(3990)).to_string(),
            };
            let cut = 1 + r.below(word.len() - 1);
            let x = -122.52 + r.unit() * 0.16;
            let value = match i % 14 {
                0 => json!(word),
                1 => json!({"wildcard": format!("{}*{}", &word[..cut], &word[cut..])}),
                2 => json!({"prefix": &word[..cut]}),
                3 => json!({"prefix": {"equals-ignore-case": word[..cut].to_lowercase()}}),
                4 => json!({"suffix": &word[cut..]}),
                5 => json!({"suffix": {"equals-ignore-case": word[cut..].to_lowercase()}}),
                6 => json!({"equals-ignore-case": word.to_lowercase()}),
                7 => {
                    return geo(
                        None,
                        "firstCoordinates",
                        "x",
                        json!([">", x, "<", x + 0.02]),
                    );
                }
                8 => json!({"anything-but": [word]}),
                9 => json!({"anything-but": {"equals-ignore-case": [word.to_lowercase()]}}),
                10 => json!({"anything-but": {"prefix": &word[..cut]}}),
                11 => json!({"anything-but": {"suffix": &word[cut..]}}),
                12 => json!({"anything-but": {"wildcard": format!("{}*", &word[..cut])}}),
                _ => {
                    return geo(Some("Polygon"), "coordinates", "x", json!(["<", x - 0.05]));
                }
            };
            if r.below(3) == 0 {
                // A second condition: the parcel's side of the street.
                let side = ["E", "O"][r.below(2)];
                json!({"properties": { field: [value], "ODD_EVEN": [side] }}).to_string()
            } else {
                prop(field, value)
            }
        })
        .collect()
}
