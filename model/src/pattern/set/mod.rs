//! Many patterns compiled into one matcher, so that the cost of matching an event grows with
//! the event (its fields and the conditions they satisfy), not with the number of patterns.
//!
//! Compilation: every pattern is expanded into *branches* — conjunctions of field conditions,
//! one per combination of its `$or` alternatives — and every condition becomes a *predicate*
//! registered in the value index ([`values::ValueIndex`]) of its field's path in a trie of
//! field names. Matching: the event is walked once ([`walk`]); fields no pattern names are
//! skipped unread; each leaf looks up, in its path's index, the predicates it satisfies
//! (hash lookups for exact and case-folded values, prefixes and suffixes by length, numeric
//! ranges by binary search) and counts them towards their branches. A branch whose predicates
//! are all satisfied is a match.
//!
//! Two cases are decided by the per-pattern matcher ([`Pattern::matches`]), so the answers
//! are the same as matching every pattern one by one: a branch two of whose predicates were
//! satisfied inside arrays of objects (they must be satisfied within the *same* element,
//! which counting does not see), and `exists: false` on a field the event has inside an
//! array of objects. Patterns whose `$or`s expand past [`MAX_BRANCHES`], or that list
//! `exists: false` beside other values for one field, are matched whole, one by one.

mod values;
mod walk;

use std::cell::RefCell;

use rustc_hash::FxHashMap;
use serde_json::Value;

use super::{Leaf, Matcher, Node, Pattern};
use values::ValueIndex;

/// Branches one pattern may expand into before it is matched whole instead.
pub const MAX_BRANCHES: usize = 64;

/// Patterns compiled together; [`PatternSet::matches`] answers which of them an event matches,
/// as their positions in the list given to [`PatternSet::new`].
pub struct PatternSet {
    patterns: Vec<Pattern>,
    /// The trie of field names the patterns use; node 0 is the event itself.
    nodes: Vec<PathNode>,
    branches: Vec<Branch>,
    preds: Vec<Pred>,
    /// Branches with no predicate (only `exists: false` fields): looked at for every event.
    unconditional: Vec<u32>,
    /// Patterns matched whole, for every event.
    whole: Vec<u32>,
}

#[derive(Default)]
struct PathNode {
    children: FxHashMap<Box<str>, u32>,
    values: Option<Box<ValueIndex>>,
}

/// A predicate: the branch it belongs to and how many that branch needs (kept here so that
/// a hit reads one entry).
#[derive(Clone, Copy)]
struct Pred {
    branch: u32,
    need: u32,
}

struct Branch {
    pattern: u32,
    /// Paths that must have no leaf (`exists: false`).
    absent: Box<[u32]>,
}

/// One field condition of a branch: a path and the values any of which satisfies it.
struct Cond<'p> {
    path: Vec<&'p str>,
    matchers: &'p [Matcher],
}

impl PatternSet {
    pub fn new(patterns: impl IntoIterator<Item = Pattern>) -> PatternSet {
        let mut set = PatternSet {
            patterns: Vec::new(),
            nodes: vec![PathNode::default()],
            branches: Vec::new(),
            preds: Vec::new(),
            unconditional: Vec::new(),
            whole: Vec::new(),
        };
        let patterns: Vec<Pattern> = patterns.into_iter().collect();
        for (i, p) in patterns.iter().enumerate() {
            let i = i as u32;
            match expand(p, &[]).filter(|bs| bs.iter().all(|b| countable(b))) {
                Some(branches) => {
                    for conds in branches {
                        set.add_branch(i, &conds);
                    }
                }
                None => set.whole.push(i),
            }
        }
        for node in &mut set.nodes {
            if let Some(v) = &mut node.values {
                v.finish();
            }
        }
        set.patterns = patterns;
        set
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The positions of the patterns `event` matches, ascending.
    pub fn matches(&self, event: &Value) -> Vec<usize> {
        SCRATCH.with_borrow_mut(|s| {
            s.start(self);
            walk::value(self, event, s);
            self.finish(s, &mut |p| p.matches(event))
        })
    }

    /// The same for an event given as JSON text, read once without building a tree (fields
    /// no pattern names are skipped unread). A tree is built only if a pattern must be matched
    /// whole.
    pub fn matches_json(&self, text: &[u8]) -> Result<Vec<usize>, serde_json::Error> {
        SCRATCH.with_borrow_mut(|s| {
            s.start(self);
            walk::json(self, text, s)?;
            let mut tree: Option<Value> = None;
            Ok(self.finish(s, &mut |p| {
                // The walk read it, so this parses; Null keeps a surprise from panicking.
                let event =
                    tree.get_or_insert_with(|| serde_json::from_slice(text).unwrap_or(Value::Null));
                p.matches(event)
            }))
        })
    }

    fn add_branch(&mut self, pattern: u32, conds: &[Cond<'_>]) {
        let b = self.branches.len() as u32;
        let mut need = 0;
        let mut absent = Vec::new();
        for c in conds {
            let node = self.node_for(&c.path);
            if c.matchers.iter().all(|m| *m == Matcher::Exists(false)) {
                absent.push(node);
                continue;
            }
            let pred = self.preds.len() as u32;
            self.preds.push(Pred { branch: b, need: 0 });
            need += 1;
            let values = self.nodes[node as usize]
                .values
                .get_or_insert_with(Default::default);
            for m in c.matchers {
                values.add(m, pred);
            }
        }
        let first = self.preds.len() - need as usize;
        for p in &mut self.preds[first..] {
            p.need = need;
        }
        if need == 0 {
            self.unconditional.push(b);
        }
        self.branches.push(Branch {
            pattern,
            absent: absent.into(),
        });
    }

    fn node_for(&mut self, path: &[&str]) -> u32 {
        let mut at = 0u32;
        for key in path {
            at = match self.nodes[at as usize].children.get(*key) {
                Some(&c) => c,
                None => {
                    let c = self.nodes.len() as u32;
                    self.nodes.push(PathNode::default());
                    self.nodes[at as usize].children.insert((*key).into(), c);
                    c
                }
            };
        }
        at
    }

    /// A leaf of the event at `node`; `in_array`: it was reached through an array of objects.
    fn leaf(&self, node: u32, leaf: Leaf<'_>, in_array: bool, s: &mut Scratch) {
        let Scratch { marks, lower, .. } = s;
        marks.node_seen[node as usize] = marks.gen;
        if !in_array {
            marks.node_plain[node as usize] = marks.gen;
        }
        if let Some(values) = &self.nodes[node as usize].values {
            values.lookup(leaf, lower, &mut |pred| marks.hit(self, pred, in_array));
        }
    }

    /// The patterns matched, once every leaf was seen. `whole` decides one pattern on its own.
    fn finish(&self, s: &mut Scratch, whole: &mut dyn FnMut(&Pattern) -> bool) -> Vec<usize> {
        let m = &mut s.marks;
        let candidates = std::mem::take(&mut m.candidates);
        for &b in candidates.iter().chain(&self.unconditional) {
            let branch = &self.branches[b as usize];
            let p = branch.pattern as usize;
            if m.matched.contains(p) {
                continue;
            }
            let state = &m.branch[b as usize];
            let in_arrays = if state.gen == m.gen {
                state.in_arrays
            } else {
                0
            };
            let mut decide_whole = in_arrays >= 2;
            let mut failed = false;
            for &n in branch.absent.iter() {
                if m.node_plain[n as usize] == m.gen {
                    failed = true;
                    break;
                }
                if m.node_seen[n as usize] == m.gen {
                    decide_whole = true;
                }
            }
            if failed || (decide_whole && !whole(&self.patterns[p])) {
                continue;
            }
            m.matched.insert(p);
        }
        m.candidates = candidates;
        for &p in &self.whole {
            if whole(&self.patterns[p as usize]) {
                m.matched.insert(p as usize);
            }
        }
        m.matched.drain()
    }
}

/// Whether counting can decide this branch: `exists: false` OR'd with values for one field
/// cannot be a predicate (it is satisfied by the field's absence).
fn countable(conds: &[Cond<'_>]) -> bool {
    conds.iter().all(|c| {
        let absent = c
            .matchers
            .iter()
            .filter(|m| **m == Matcher::Exists(false))
            .count();
        absent == 0 || absent == c.matchers.len()
    })
}

/// The branches of `p` (fields under `prefix`): one per combination of `$or` alternatives,
/// or None past [`MAX_BRANCHES`].
fn expand<'p>(p: &'p Pattern, prefix: &[&'p str]) -> Option<Vec<Vec<Cond<'p>>>> {
    let mut acc: Vec<Vec<Cond<'p>>> = vec![Vec::new()];
    for (key, node) in &p.fields {
        let mut path = prefix.to_vec();
        path.push(key.as_str());
        let alternatives = match node {
            Node::Leaf(ms) => vec![vec![Cond { path, matchers: ms }]],
            Node::Nested(q) => expand(q, &path)?,
        };
        acc = cross(acc, alternatives)?;
    }
    for or in &p.ors {
        let mut alternatives = Vec::new();
        for q in or {
            alternatives.extend(expand(q, prefix)?);
            if alternatives.len() > MAX_BRANCHES {
                return None;
            }
        }
        acc = cross(acc, alternatives)?;
    }
    Some(acc)
}

fn cross<'p>(a: Vec<Vec<Cond<'p>>>, b: Vec<Vec<Cond<'p>>>) -> Option<Vec<Vec<Cond<'p>>>> {
    if a.len() * b.len() > MAX_BRANCHES {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in &a {
        for y in &b {
            out.push(
                x.iter()
                    .chain(y)
                    .map(|c| Cond {
                        path: c.path.clone(),
                        matchers: c.matchers,
                    })
                    .collect(),
            );
        }
    }
    Some(out)
}

thread_local! {
    /// Per-thread working memory, reused from event to event (no allocation per event).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    marks: Marks,
    /// A string leaf, lower-cased, for the case-insensitive indexes.
    lower: String,
}

/// What this event satisfied. Entries hold the number of the event that last set them
/// (`gen`), so nothing is cleared between events.
#[derive(Default)]
struct Marks {
    gen: u32,
    pred_seen: Vec<u32>,
    branch: Vec<BranchMark>,
    /// A leaf was at this path / one outside any array of objects.
    node_seen: Vec<u32>,
    node_plain: Vec<u32>,
    candidates: Vec<u32>,
    matched: Bits,
}

#[derive(Default, Clone, Copy)]
struct BranchMark {
    gen: u32,
    /// Predicates satisfied.
    count: u32,
    /// Of those, satisfied inside an array of objects.
    in_arrays: u32,
}

impl Scratch {
    fn start(&mut self, set: &PatternSet) {
        let m = &mut self.marks;
        m.gen = m.gen.wrapping_add(1);
        if m.gen == 0 {
            *m = Marks {
                gen: 1,
                ..Marks::default()
            };
        }
        let grow = |v: &mut Vec<u32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0);
            }
        };
        grow(&mut m.pred_seen, set.preds.len());
        grow(&mut m.node_seen, set.nodes.len());
        grow(&mut m.node_plain, set.nodes.len());
        if m.branch.len() < set.branches.len() {
            m.branch.resize(set.branches.len(), BranchMark::default());
        }
        m.matched.fit(set.patterns.len());
        m.candidates.clear();
    }
}

impl Marks {
    fn hit(&mut self, set: &PatternSet, pred: u32, in_array: bool) {
        let gen = self.gen;
        if std::mem::replace(&mut self.pred_seen[pred as usize], gen) == gen {
            return;
        }
        let Pred { branch, need } = set.preds[pred as usize];
        let b = &mut self.branch[branch as usize];
        if b.gen != gen {
            *b = BranchMark {
                gen,
                count: 0,
                in_arrays: 0,
            };
        }
        b.count += 1;
        b.in_arrays += u32::from(in_array);
        if b.count == need {
            self.candidates.push(branch);
        }
    }
}

/// The patterns matched so far: a bit each, read out in ascending order, with the words set
/// remembered so that emptying it costs what was matched, not the number of patterns.
#[derive(Default)]
struct Bits {
    words: Vec<u64>,
    touched: Vec<u32>,
}

impl Bits {
    fn fit(&mut self, n: usize) {
        let words = n.div_ceil(64);
        if self.words.len() < words {
            self.words.resize(words, 0);
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn insert(&mut self, i: usize) {
        let w = &mut self.words[i / 64];
        if *w == 0 {
            self.touched.push((i / 64) as u32);
        }
        *w |= 1 << (i % 64);
    }

    /// The members, ascending; leaves it empty.
    fn drain(&mut self) -> Vec<usize> {
        self.touched.sort_unstable();
        let mut out = Vec::new();
        for &w in &self.touched {
            let mut bits = std::mem::take(&mut self.words[w as usize]);
            while bits != 0 {
                out.push(w as usize * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        self.touched.clear();
        out
    }
}

#[cfg(test)]
mod tests;
