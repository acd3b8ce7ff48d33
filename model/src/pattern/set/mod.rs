//! Many patterns compiled into one matcher, so that the cost of matching an event grows with
//! the event (its fields and the conditions they satisfy), not with the number of patterns.
//!
//! Compilation: every pattern is expanded into *branches* — conjunctions of field conditions,
//! one per combination of its `$or` alternatives — and every condition becomes a *predicate*
//! registered in the value index ([`values::ValueIndex`]) of its field's path in a trie of
//! field names. Matching: the event is walked once ([`walk`]); fields no pattern names are
//! skipped unread; each leaf looks up, in its path's index, the predicates it satisfies
//! (hash lookups for exact and case-folded values, byte tries for prefixes and suffixes,
//! numeric ranges by binary search) and counts them towards their branches. A branch whose
//! predicates are all satisfied is a match. A branch led by a rare condition
//! ([`LEAD_SHARED_BY`]) registers only that one; its other conditions are checked on the
//! leaves kept at their paths once it holds.
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

/// A condition leads its branch (the others are checked only once it holds) when it names
/// values (exact, prefix, suffix, wildcard) that at most this many branches name: then it is
/// rarely true, and checking the others on the few events it holds for costs less than
/// counting them for every event. Otherwise every condition is counted.
const LEAD_SHARED_BY: u32 = 16;

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
    /// Numeric range pieces, over every path.
    pieces: usize,
}

#[derive(Default)]
struct PathNode {
    children: Children,
    values: Option<Box<ValueIndex>>,
    /// A deferred condition looks at this path: its leaves are kept during a match.
    keep_leaves: bool,
}

/// A predicate: the branch it belongs to, how many that branch needs and its pattern (kept
/// here so that a hit reads one entry).
#[derive(Clone, Copy)]
struct Pred {
    branch: u32,
    need: u32,
    pattern: u32,
    /// The branch's only predicate, with no field that must be absent: a hit is a match.
    direct: bool,
}

/// A node's field names: most nodes have a few, compared one by one (cheaper than hashing a
/// key); past [`Children::FEW`] they are hashed.
#[derive(Default)]
struct Children {
    few: Vec<(Box<str>, u32)>,
    many: Option<FxHashMap<Box<str>, u32>>,
}

impl Children {
    const FEW: usize = 8;

    fn get(&self, key: &str) -> Option<u32> {
        match &self.many {
            Some(m) => m.get(key).copied(),
            None => self.few.iter().find(|(k, _)| **k == *key).map(|(_, c)| *c),
        }
    }

    fn insert(&mut self, key: &str, child: u32) {
        self.few.push((key.into(), child));
        if self.few.len() > Self::FEW {
            self.many = Some(self.few.iter().cloned().collect());
        }
    }

    fn is_empty(&self) -> bool {
        self.few.is_empty()
    }
}

struct Branch {
    pattern: u32,
    /// The conditions besides the one that leads the branch: not counted leaf by leaf, but
    /// checked against the leaves kept at their paths once the lead one holds.
    deferred: Box<[Deferred]>,
    /// Paths that must have no leaf (`exists: false`).
    absent: Box<[u32]>,
}

struct Deferred {
    node: u32,
    matchers: Box<[Matcher]>,
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
            pieces: 0,
        };
        let patterns: Vec<Pattern> = patterns.into_iter().collect();
        let mut expanded = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            match expand(p, &[]).filter(|bs| bs.iter().all(|b| countable(b))) {
                Some(branches) => expanded.extend(branches.into_iter().map(|b| (i as u32, b))),
                None => set.whole.push(i as u32),
            }
        }
        // How many branches share each condition: a value many rules name is likely common
        // in events too, so a branch is led by its rarest one.
        let mut shared: FxHashMap<String, u32> = FxHashMap::default();
        for (_, conds) in &expanded {
            for c in conds {
                *shared.entry(c.key()).or_default() += 1;
            }
        }
        for (i, conds) in &expanded {
            let lead = conds
                .iter()
                .enumerate()
                .filter(|(_, c)| !is_absent(c))
                .map(|(k, c)| (k, (c.tier(), shared[&c.key()])))
                .min_by_key(|(_, rank)| *rank)
                .filter(|(_, (tier, shared))| *tier <= 1 && *shared <= LEAD_SHARED_BY)
                .map(|(k, _)| k);
            set.add_branch(*i, conds, lead);
        }
        for node in &mut set.nodes {
            if let Some(v) = &mut node.values {
                set.pieces = v.finish(set.pieces);
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

    /// `lead`: the condition counted leaf by leaf, the others being checked against the
    /// leaves kept at their paths once it holds; None: every condition is counted.
    fn add_branch(&mut self, pattern: u32, conds: &[Cond<'_>], lead: Option<usize>) {
        let b = self.branches.len() as u32;
        let mut need = 0;
        let mut absent = Vec::new();
        let mut deferred = Vec::new();
        for (k, c) in conds.iter().enumerate() {
            let node = self.node_for(&c.path);
            if is_absent(c) {
                absent.push(node);
                continue;
            }
            if lead.is_some_and(|l| l != k) {
                self.nodes[node as usize].keep_leaves = true;
                deferred.push(Deferred {
                    node,
                    matchers: c.matchers.into(),
                });
                continue;
            }
            let pred = self.preds.len() as u32;
            self.preds.push(Pred {
                branch: b,
                need: 0,
                pattern,
                direct: false,
            });
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
            p.direct = need == 1 && absent.is_empty() && deferred.is_empty();
        }
        if need == 0 {
            self.unconditional.push(b);
        }
        self.branches.push(Branch {
            pattern,
            deferred: deferred.into(),
            absent: absent.into(),
        });
    }

    fn node_for(&mut self, path: &[&str]) -> u32 {
        let mut at = 0u32;
        for key in path {
            at = match self.nodes[at as usize].children.get(key) {
                Some(c) => c,
                None => {
                    let c = self.nodes.len() as u32;
                    self.nodes.push(PathNode::default());
                    self.nodes[at as usize].children.insert(key, c);
                    c
                }
            };
        }
        at
    }

    /// A leaf of the event at `node`; `in_array`: it was reached through an array of objects.
    fn leaf(&self, node: u32, leaf: Leaf<'_>, in_array: bool, s: &mut Scratch) {
        let Scratch {
            marks,
            buffers,
            kept,
        } = s;
        marks.node_seen[node as usize] = marks.gen;
        if !in_array {
            marks.node_plain[node as usize] = marks.gen;
        }
        if self.nodes[node as usize].keep_leaves {
            kept.keep(node, leaf, in_array);
        }
        if let Some(values) = &self.nodes[node as usize].values {
            values.lookup(leaf, buffers, &mut |preds| {
                for &p in preds {
                    marks.hit(self, p, in_array)
                }
            });
        }
    }

    /// The patterns matched, once every leaf was seen. `whole` decides one pattern on its own.
    fn finish(&self, s: &mut Scratch, whole: &mut dyn FnMut(&Pattern) -> bool) -> Vec<usize> {
        let m = &mut s.marks;
        let kept = &s.kept;
        let candidates = std::mem::take(&mut m.candidates);
        for &b in candidates.iter().chain(&self.unconditional) {
            let branch = &self.branches[b as usize];
            let p = branch.pattern as usize;
            if m.matched.contains(p) {
                continue;
            }
            let state = &m.branch[b as usize];
            let mut in_arrays = if state.gen == m.gen {
                state.in_arrays
            } else {
                0
            };
            let mut failed = false;
            for d in branch.deferred.iter() {
                match kept.find(d.node, |leaf| d.matchers.iter().any(|m| m.holds(leaf))) {
                    Some(in_array) => in_arrays += u32::from(in_array),
                    None => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                continue;
            }
            let mut decide_whole = in_arrays >= 2;
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

fn is_absent(c: &Cond<'_>) -> bool {
    c.matchers.iter().all(|m| *m == Matcher::Exists(false))
}

impl Cond<'_> {
    /// The condition as text, to count the branches that share it.
    fn key(&self) -> String {
        format!("{:?}{:?}", self.path, self.matchers)
    }

    /// How few leaves the condition is likely to hold for, by its operators: exact values
    /// first, then prefixes, suffixes and wildcards, then numeric ranges and CIDR blocks,
    /// then `anything-but` and `exists`, which nearly every leaf satisfies.
    fn tier(&self) -> u8 {
        self.matchers
            .iter()
            .map(|m| match m {
                Matcher::Str(_)
                | Matcher::Num(_)
                | Matcher::Bool(_)
                | Matcher::Null
                | Matcher::EqualsIgnoreCase(_) => 0,
                Matcher::Prefix(_)
                | Matcher::PrefixIgnoreCase(_)
                | Matcher::Suffix(_)
                | Matcher::SuffixIgnoreCase(_)
                | Matcher::Wildcard(_) => 1,
                Matcher::Numeric { .. } | Matcher::Cidr(_) => 2,
                Matcher::AnythingBut(_) | Matcher::Exists(_) => 3,
            })
            .max()
            .unwrap_or(3)
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
    buffers: values::Buffers,
    kept: Kept,
}

/// The leaves of this event at the paths deferred conditions look at.
#[derive(Default)]
struct Kept {
    leaves: Vec<(u32, bool, KeptLeaf)>,
    /// The text of string leaves, one after another.
    text: String,
}

enum KeptLeaf {
    Str(usize, usize),
    Num(f64),
    Bool(bool),
    Null,
}

impl Kept {
    fn keep(&mut self, node: u32, leaf: Leaf<'_>, in_array: bool) {
        let kept = match leaf {
            Leaf::Str(s) => {
                let start = self.text.len();
                self.text.push_str(s);
                KeptLeaf::Str(start, self.text.len())
            }
            Leaf::Num(n) => KeptLeaf::Num(n),
            Leaf::Bool(b) => KeptLeaf::Bool(b),
            Leaf::Null => KeptLeaf::Null,
        };
        self.leaves.push((node, in_array, kept));
    }

    /// Whether a leaf at `node` satisfies `test`: Some(it was inside an array of objects).
    fn find(&self, node: u32, test: impl Fn(Leaf<'_>) -> bool) -> Option<bool> {
        self.leaves
            .iter()
            .filter(|(n, _, _)| *n == node)
            .find(|(_, _, l)| {
                test(match *l {
                    KeptLeaf::Str(a, b) => Leaf::Str(&self.text[a..b]),
                    KeptLeaf::Num(n) => Leaf::Num(n),
                    KeptLeaf::Bool(b) => Leaf::Bool(b),
                    KeptLeaf::Null => Leaf::Null,
                })
            })
            .map(|(_, in_array, _)| *in_array)
    }

    fn clear(&mut self) {
        self.leaves.clear();
        self.text.clear();
    }
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
            // Every mark may now look current: start them all afresh.
            *m = Marks {
                gen: 1,
                ..Marks::default()
            };
            self.buffers.piece_seen.clear();
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
        self.kept.clear();
        self.buffers.gen = m.gen;
        grow(&mut self.buffers.piece_seen, set.pieces);
    }
}

impl Marks {
    #[inline]
    fn hit(&mut self, set: &PatternSet, pred: u32, in_array: bool) {
        let gen = self.gen;
        if std::mem::replace(&mut self.pred_seen[pred as usize], gen) == gen {
            return;
        }
        let Pred {
            branch,
            need,
            pattern,
            direct,
        } = set.preds[pred as usize];
        if direct {
            self.matched.insert(pattern as usize);
            return;
        }
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
        let n = self
            .touched
            .iter()
            .map(|&w| self.words[w as usize].count_ones() as usize)
            .sum();
        let mut out = Vec::with_capacity(n);
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
