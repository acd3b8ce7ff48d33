//! The value index of one field path: from a leaf to the predicates it satisfies, by lookups
//! whose cost does not grow with the number of predicates: hash maps for exact and
//! case-folded values and numbers, byte tries for prefixes and suffixes (one walk of the
//! leaf finds every one it starts or ends with), wildcards by their literal ends, numeric
//! ranges by binary search, and `anything-but` as "every entry but the ones this leaf
//! excludes". Only `cidr` and wildcards starting and ending with `*` are checked one by one.

use rustc_hash::FxHashMap;

use super::super::{order_key, Excluded, Leaf, Matcher, Wildcard};

#[derive(Default)]
pub(super) struct ValueIndex {
    exact: FxHashMap<Box<str>, Vec<u32>>,
    numbers: FxHashMap<u64, Vec<u32>>,
    trues: Vec<u32>,
    falses: Vec<u32>,
    nulls: Vec<u32>,
    /// `exists: true`: any leaf.
    any: Vec<u32>,
    prefixes: Trie<u32>,
    /// Over the reversed bytes.
    suffixes: Trie<u32>,
    /// Case-insensitive ones, keyed by the lower-cased value.
    folded: FxHashMap<Box<str>, Vec<u32>>,
    folded_prefixes: Trie<u32>,
    folded_suffixes: Trie<u32>,
    /// Wildcards by their text before the first `*`, or after the last one, then checked.
    wild: Wildcards,
    ranges: Ranges,
    but: Except,
    /// Checked one by one.
    listed: Vec<(Matcher, u32)>,
    folds: bool,
}

impl ValueIndex {
    pub(super) fn add(&mut self, m: &Matcher, pred: u32) {
        match m {
            Matcher::Str(s) => push(&mut self.exact, s.as_str().into(), pred),
            Matcher::Num(n) => push(&mut self.numbers, *n, pred),
            Matcher::Bool(true) => self.trues.push(pred),
            Matcher::Bool(false) => self.falses.push(pred),
            Matcher::Null => self.nulls.push(pred),
            Matcher::Exists(true) => self.any.push(pred),
            Matcher::Prefix(p) => self.prefixes.add(p.bytes(), pred),
            Matcher::Suffix(p) => self.suffixes.add(p.bytes().rev(), pred),
            Matcher::PrefixIgnoreCase(p) => {
                self.folds = true;
                self.folded_prefixes.add(p.bytes(), pred)
            }
            Matcher::SuffixIgnoreCase(p) => {
                self.folds = true;
                self.folded_suffixes.add(p.bytes().rev(), pred)
            }
            Matcher::EqualsIgnoreCase(x) => {
                self.folds = true;
                push(&mut self.folded, x.as_str().into(), pred)
            }
            Matcher::Wildcard(w) => self.wild.add(w, pred),
            Matcher::Numeric { lower, upper } => self.ranges.pending.push((*lower, *upper, pred)),
            Matcher::AnythingBut(ex) => {
                self.folds |= matches!(ex, Excluded::IgnoreCase(_));
                self.but.add(ex, pred)
            }
            Matcher::Cidr(_) => self.listed.push((m.clone(), pred)),
            Matcher::Exists(false) => unreachable!("absent fields are not predicates"),
        }
    }

    /// Called once every predicate was added.
    /// Called once every predicate was added; `pieces`: numeric range pieces numbered so far
    /// in the set (each gets a number for [`Buffers`] to remember it by). Returns the new count.
    pub(super) fn finish(&mut self, pieces: usize) -> usize {
        self.ranges.build();
        self.ranges.first = pieces;
        pieces + self.ranges.pieces.len()
    }

    /// Calls `hit` with the predicates `leaf` satisfies, in slices (a predicate may come more
    /// than once). `buf` is working memory.
    pub(super) fn lookup(&self, leaf: Leaf<'_>, buf: &mut Buffers, hit: &mut dyn FnMut(&[u32])) {
        let each = |v: &[u32], hit: &mut dyn FnMut(&[u32])| {
            if !v.is_empty() {
                hit(v)
            }
        };
        each(&self.any, hit);
        buf.excluded.clear();
        match leaf {
            Leaf::Str(s) => {
                if let Some(v) = self.exact.get(s) {
                    each(v, hit);
                }
                self.prefixes.walk(s.bytes(), &mut *hit);
                self.suffixes.walk(s.bytes().rev(), &mut *hit);
                self.wild.matching(s, &mut *hit);
                let folded = if self.folds {
                    let l = fold(s, &mut buf.lower);
                    if let Some(v) = self.folded.get(l) {
                        each(v, hit);
                    }
                    self.folded_prefixes.walk(l.bytes(), &mut *hit);
                    self.folded_suffixes.walk(l.bytes().rev(), &mut *hit);
                    Some(l)
                } else {
                    None
                };
                self.but.excluded_string(s, folded, &mut buf.excluded);
            }
            Leaf::Num(n) => {
                let n = order_key(n);
                if let Some(v) = self.numbers.get(&n) {
                    each(v, hit);
                }
                self.ranges.lookup(n, buf, hit);
                self.but.excluded_number(n, &mut buf.excluded);
            }
            Leaf::Bool(true) => each(&self.trues, hit),
            Leaf::Bool(false) => each(&self.falses, hit),
            Leaf::Null => each(&self.nulls, hit),
        }
        self.but.allowed(&mut buf.excluded, hit);
        for (m, p) in &self.listed {
            if m.matches_leaf(leaf) {
                hit(std::slice::from_ref(p));
            }
        }
    }
}

/// Working memory of a lookup, kept between leaves.
#[derive(Default)]
pub(super) struct Buffers {
    /// A string leaf, lower-cased.
    lower: String,
    /// `anything-but` entries the leaf excludes.
    excluded: Vec<u32>,
    /// The event being matched, and the last event each numeric range piece was handed out
    /// in: the many coordinates of one polygon mostly fall in the same piece.
    pub(super) gen: u32,
    pub(super) piece_seen: Vec<u32>,
}

/// Adds `v` to `key`'s list, once (a value listed twice for one matcher counts once).
fn push<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, Vec<u32>>, key: K, v: u32) {
    let list = map.entry(key).or_default();
    if list.last() != Some(&v) {
        list.push(v);
    }
}

/// `s` lower-cased as [`str::to_lowercase`] does it (the per-pattern matcher's definition),
/// without allocating for ASCII.
fn fold<'b>(s: &str, buf: &'b mut String) -> &'b str {
    buf.clear();
    if s.is_ascii() {
        buf.push_str(s);
        buf.make_ascii_lowercase();
    } else {
        buf.push_str(&s.to_lowercase());
    }
    buf
}

/// Keys as paths of bytes: walking a leaf's bytes from one end meets every key it starts
/// (or, over reversed bytes, ends) with. A key is whole UTF-8, so a match ends on a character
/// boundary of the leaf.
struct Trie<T> {
    nodes: Vec<TrieNode<T>>,
}

struct TrieNode<T> {
    /// Sorted by byte.
    next: Vec<(u8, u32)>,
    items: Vec<T>,
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie { nodes: Vec::new() }
    }
}

impl<T: Copy> Trie<T> {
    fn add(&mut self, key: impl Iterator<Item = u8>, v: T) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode {
                next: Vec::new(),
                items: Vec::new(),
            });
        }
        let mut at = 0usize;
        for b in key {
            at = match self.nodes[at].next.binary_search_by_key(&b, |(x, _)| *x) {
                Ok(i) => self.nodes[at].next[i].1 as usize,
                Err(i) => {
                    let n = self.nodes.len();
                    self.nodes.push(TrieNode {
                        next: Vec::new(),
                        items: Vec::new(),
                    });
                    self.nodes[at].next.insert(i, (b, n as u32));
                    n
                }
            };
        }
        self.nodes[at].items.push(v);
    }

    /// Calls `f` with the items of every key the bytes start with (that are not empty).
    fn walk(&self, bytes: impl Iterator<Item = u8>, mut f: impl FnMut(&[T])) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        if !node.items.is_empty() {
            f(&node.items);
        }
        for b in bytes {
            let next = match node.next.as_slice() {
                [] => return,
                [(x, n)] => (*x == b).then_some(*n),
                many => many
                    .binary_search_by_key(&b, |(x, _)| *x)
                    .ok()
                    .map(|i| many[i].1),
            };
            let Some(n) = next else { return };
            node = &self.nodes[n as usize];
            if !node.items.is_empty() {
                f(&node.items);
            }
        }
    }
}

/// Wildcards indexed by a literal end: the text before the first `*` (a prefix), else the
/// text after the last `*` (a suffix); a leaf is checked only against the wildcards one of
/// its ends matches. `*` alone, or `*x*`, is checked against every leaf.
#[derive(Default)]
struct Wildcards {
    all: Vec<(Wildcard, u32)>,
    heads: Trie<u32>,
    tails: Trie<u32>,
    rest: Vec<u32>,
}

impl Wildcards {
    /// `v`: what a match hands back (a predicate, or an `anything-but` entry).
    fn add(&mut self, w: &Wildcard, v: u32) {
        let i = self.all.len() as u32;
        self.all.push((w.clone(), v));
        let (head, tail) = (&w.parts[0], w.parts.last().expect("one part at least"));
        if !head.is_empty() {
            self.heads.add(head.bytes(), i);
        } else if !tail.is_empty() {
            self.tails.add(tail.bytes().rev(), i);
        } else {
            self.rest.push(i);
        }
    }

    fn matching(&self, s: &str, mut f: impl FnMut(&[u32])) {
        if self.all.is_empty() {
            return;
        }
        let mut check = |is: &[u32]| {
            for &i in is {
                let (w, v) = &self.all[i as usize];
                if w.matches(s) {
                    f(std::slice::from_ref(v))
                }
            }
        };
        self.heads.walk(s.bytes(), &mut check);
        self.tails.walk(s.bytes().rev(), &mut check);
        check(&self.rest);
    }
}

/// Every `anything-but` of a path, one entry per matcher: a leaf satisfies every entry except
/// the ones that exclude it, found by lookups like the positive operators'. (Two
/// `anything-but`s listed for one field are OR'd, so their sets are never merged.)
#[derive(Default)]
struct Except {
    /// Entry → its predicate.
    preds: Vec<u32>,
    strings: FxHashMap<Box<str>, Vec<u32>>,
    numbers: FxHashMap<u64, Vec<u32>>,
    folded: FxHashMap<Box<str>, Vec<u32>>,
    prefixes: Trie<u32>,
    suffixes: Trie<u32>,
    wild: Wildcards,
}

impl Except {
    fn add(&mut self, ex: &Excluded, pred: u32) {
        let entry = self.preds.len() as u32;
        self.preds.push(pred);
        match ex {
            Excluded::Strings(xs) => xs
                .iter()
                .for_each(|x| push(&mut self.strings, x.as_str().into(), entry)),
            Excluded::IgnoreCase(xs) => xs
                .iter()
                .for_each(|x| push(&mut self.folded, x.as_str().into(), entry)),
            Excluded::Numbers(xs) => xs.iter().for_each(|x| push(&mut self.numbers, *x, entry)),
            Excluded::Prefixes(ps) => ps.iter().for_each(|p| self.prefixes.add(p.bytes(), entry)),
            Excluded::Suffixes(ps) => ps
                .iter()
                .for_each(|p| self.suffixes.add(p.bytes().rev(), entry)),
            Excluded::Wildcards(ws) => ws.iter().for_each(|w| self.wild.add(w, entry)),
        }
    }

    /// The entries a string leaf excludes (`folded`: the leaf lower-cased, when any entry
    /// needs it), appended to `out`.
    fn excluded_string(&self, s: &str, folded: Option<&str>, out: &mut Vec<u32>) {
        if self.preds.is_empty() {
            return;
        }
        if let Some(v) = self.strings.get(s) {
            out.extend_from_slice(v);
        }
        if let Some(v) = folded.and_then(|l| self.folded.get(l)) {
            out.extend_from_slice(v);
        }
        self.prefixes.walk(s.bytes(), |e| out.extend_from_slice(e));
        self.suffixes
            .walk(s.bytes().rev(), |e| out.extend_from_slice(e));
        self.wild.matching(s, |e| out.extend_from_slice(e));
    }

    fn excluded_number(&self, n: u64, out: &mut Vec<u32>) {
        if let Some(v) = self.numbers.get(&n) {
            out.extend_from_slice(v);
        }
    }

    /// Hits every entry's predicate but the excluded ones'.
    fn allowed(&self, excluded: &mut Vec<u32>, hit: &mut dyn FnMut(&[u32])) {
        if self.preds.is_empty() {
            return;
        }
        excluded.sort_unstable();
        excluded.dedup();
        // The runs of entries between the excluded ones.
        let mut from = 0usize;
        for &e in excluded.iter() {
            if from < e as usize {
                hit(&self.preds[from..e as usize]);
            }
            from = e as usize + 1;
        }
        if from < self.preds.len() {
            hit(&self.preds[from..]);
        }
    }
}

type Bound = Option<(u64, bool)>;

/// Numeric ranges over the number line cut at every bound: a leaf finds its piece by binary
/// search, and each piece lists the ranges that hold it.
#[derive(Default)]
struct Ranges {
    /// The set-wide number of the first piece.
    first: usize,
    pending: Vec<(Bound, Bound, u32)>,
    bounds: Vec<u64>,
    /// 2·bounds + 1 pieces: below the first bound, the first bound, between the first two, …
    pieces: Vec<Vec<u32>>,
}

impl Ranges {
    fn build(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut bounds: Vec<u64> = self
            .pending
            .iter()
            .flat_map(|(lo, hi, _)| [lo.map(|b| b.0), hi.map(|b| b.0)])
            .flatten()
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut pieces = vec![Vec::new(); 2 * bounds.len() + 1];
        for (i, piece) in pieces.iter_mut().enumerate() {
            for &(lo, hi, pred) in &self.pending {
                let holds = if i % 2 == 1 {
                    let x = bounds[i / 2];
                    lo.is_none_or(|(b, inc)| if inc { x >= b } else { x > b })
                        && hi.is_none_or(|(b, inc)| if inc { x <= b } else { x < b })
                } else {
                    // Strictly between `below` and `above`: every bound is one of the cuts,
                    // so a range holds the whole piece or none of it.
                    let below = (i > 0).then(|| bounds[i / 2 - 1]);
                    let above = bounds.get(i / 2).copied();
                    lo.is_none_or(|(b, _)| below.is_some_and(|x| b <= x))
                        && hi.is_none_or(|(b, _)| above.is_some_and(|x| b >= x))
                };
                if holds {
                    piece.push(pred);
                }
            }
        }
        self.bounds = bounds;
        self.pieces = pieces;
    }

    fn lookup(&self, n: u64, buf: &mut Buffers, hit: &mut dyn FnMut(&[u32])) {
        if self.pieces.is_empty() {
            return;
        }
        let i = match self.bounds.binary_search(&n) {
            Ok(i) => 2 * i + 1,
            Err(i) => 2 * i,
        };
        let seen = &mut buf.piece_seen[self.first + i];
        if !self.pieces[i].is_empty() && std::mem::replace(seen, buf.gen) != buf.gen {
            hit(&self.pieces[i]);
        }
    }
}
