//! skiff's pattern semantics next to event-ruler's, case by case (run by
//! `scripts/pattern-conformance EVENT_RULER_CHECKOUT`).
//!
//! `pattern_cases write FILE [--random N] [--cases JSON]...` writes one case per line,
//!   `PATTERN<TAB>EVENT`: N random pairs (`skiff_model::testing::patterns`, seed 1), and the
//!   cases of each JSON file given (a list of `{"rule": …, "event": …}`, as event-ruler's
//!   `correctness-cases.json`).
//! `pattern_cases compare FILE ANSWERS` reads event-ruler's answer per line (`1`, `0` or
//!   `invalid`), answers each case with skiff (the pattern alone, and a `PatternSet` of it
//!   over the JSON text), and prints how many agree and every case that does not. Exits 1 if
//!   any differs.

use skiff_model::pattern::{Pattern, PatternSet};
use skiff_model::testing::patterns::{event_object, pattern_object, Rng};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("write") if args.len() >= 2 => write(&args[1], &args[2..]),
        Some("compare") if args.len() == 3 => compare(&args[1], &args[2]),
        _ => {
            eprintln!("usage: pattern_cases write FILE [--random N] [--cases JSON]... | compare FILE ANSWERS");
            std::process::exit(2);
        }
    }
}

fn write(file: &str, rest: &[String]) {
    let mut lines = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next()) {
            ("--random", Some(n)) => {
                let n: usize = n.parse().expect("--random N");
                let mut r = Rng(1);
                while lines.len() < n {
                    let p = pattern_object(&mut r, 0);
                    let e = event_object(&mut r, 0);
                    lines.push(format!("{p}\t{e}"));
                }
            }
            ("--cases", Some(path)) => {
                let text = std::fs::read_to_string(path).expect("read the cases");
                let cases: Vec<serde_json::Value> = serde_json::from_str(&text).expect("a list");
                for c in cases {
                    lines.push(format!("{}\t{}", c["rule"], c["event"]));
                }
            }
            _ => {
                eprintln!("write: expected --random N or --cases JSON, got {a:?}");
                std::process::exit(2);
            }
        }
    }
    std::fs::write(file, lines.join("\n") + "\n").expect("write the cases");
    eprintln!("{} cases in {file}", lines.len());
}

fn compare(file: &str, answers: &str) {
    let cases = std::fs::read_to_string(file).expect("read the cases");
    let answers = std::fs::read_to_string(answers).expect("read the answers");
    let (mut same, mut differ) = (0, 0);
    let mut tally = std::collections::BTreeMap::<(String, String), usize>::new();
    for (line, theirs) in cases.lines().zip(answers.lines()) {
        let (pattern, event) = line.split_once('\t').expect("PATTERN<TAB>EVENT");
        let ours = match Pattern::parse(pattern) {
            Err(_) => "invalid".to_string(),
            Ok(p) => {
                let event_value: serde_json::Value = serde_json::from_str(event).unwrap();
                let alone = p.matches(&event_value);
                let set = PatternSet::new([p]).matches_json(event.as_bytes()).unwrap();
                assert_eq!(
                    alone,
                    !set.is_empty(),
                    "the set and the pattern differ: {line}"
                );
                if alone { "1" } else { "0" }.to_string()
            }
        };
        *tally.entry((theirs.to_string(), ours.clone())).or_default() += 1;
        if ours == theirs {
            same += 1;
        } else {
            differ += 1;
            println!("event-ruler {theirs}, skiff {ours}: {pattern}  on  {event}");
        }
    }
    println!("{same} cases agree, {differ} differ (event-ruler, skiff → cases): {tally:?}");
    if differ > 0 {
        std::process::exit(1);
    }
}
