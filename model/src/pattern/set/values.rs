//! The value index of one field path: from a leaf to the predicates it satisfies, by lookups
//! whose cost does not grow with the number of predicates (except for the few operators kept
//! in a list: `cidr`, `anything-but` with a prefix, suffix or wildcard, and wildcards that
//! start and end with `*`).

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
    prefixes: Affixes<u32>,
    suffixes: Affixes<u32>,
    /// Case-insensitive ones, keyed by the lower-cased value.
    folded: FxHashMap<Box<str>, Vec<u32>>,
    folded_prefixes: Affixes<u32>,
    folded_suffixes: Affixes<u32>,
    /// Wildcards by their text before the first `*`, or after the last one, then checked.
    wildcards: Vec<Wildcard>,
    wild_heads: Affixes<(u32, u32)>,
    wild_tails: Affixes<(u32, u32)>,
    ranges: Ranges,
    but_strings: Except<Box<str>>,
    but_numbers: Except<u64>,
    but_folded: Except<Box<str>>,
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
            Matcher::Prefix(p) => self.prefixes.add(p, pred),
            Matcher::Suffix(p) => self.suffixes.add(p, pred),
            Matcher::PrefixIgnoreCase(p) => {
                self.folds = true;
                self.folded_prefixes.add(p, pred)
            }
            Matcher::SuffixIgnoreCase(p) => {
                self.folds = true;
                self.folded_suffixes.add(p, pred)
            }
            Matcher::EqualsIgnoreCase(x) => {
                self.folds = true;
                push(&mut self.folded, x.as_str().into(), pred)
            }
            Matcher::Wildcard(w) => {
                let i = self.wildcards.len() as u32;
                let (head, tail) = (&w.parts[0], w.parts.last().expect("one part at least"));
                if !head.is_empty() {
                    self.wild_heads.add(head, (pred, i));
                } else if !tail.is_empty() {
                    self.wild_tails.add(tail, (pred, i));
                } else {
                    self.listed.push((m.clone(), pred));
                }
                self.wildcards.push(w.clone());
            }
            Matcher::Numeric { lower, upper } => self.ranges.pending.push((*lower, *upper, pred)),
            Matcher::AnythingBut(Excluded::Strings(xs)) => self
                .but_strings
                .add(xs.iter().map(|x| x.as_str().into()), pred),
            Matcher::AnythingBut(Excluded::Numbers(xs)) => {
                self.but_numbers.add(xs.iter().copied(), pred)
            }
            Matcher::AnythingBut(Excluded::IgnoreCase(xs)) => {
                self.folds = true;
                self.but_folded
                    .add(xs.iter().map(|x| x.as_str().into()), pred)
            }
            Matcher::AnythingBut(_) | Matcher::Cidr(_) => self.listed.push((m.clone(), pred)),
            Matcher::Exists(false) => unreachable!("absent fields are not predicates"),
        }
    }

    /// Called once every predicate was added.
    pub(super) fn finish(&mut self) {
        self.ranges.build();
    }

    /// Calls `hit` with every predicate `leaf` satisfies (a predicate may come more than once).
    pub(super) fn lookup(&self, leaf: Leaf<'_>, lower: &mut String, hit: &mut dyn FnMut(u32)) {
        let each = |v: &[u32], hit: &mut dyn FnMut(u32)| v.iter().for_each(|&p| hit(p));
        each(&self.any, hit);
        match leaf {
            Leaf::Str(s) => {
                if let Some(v) = self.exact.get(s) {
                    each(v, hit);
                }
                self.prefixes.heads(s, &mut *hit);
                self.suffixes.tails(s, &mut *hit);
                let check = |(p, w): (u32, u32), hit: &mut dyn FnMut(u32)| {
                    if self.wildcards[w as usize].matches(s) {
                        hit(p)
                    }
                };
                self.wild_heads.heads(s, |x| check(x, hit));
                self.wild_tails.tails(s, |x| check(x, hit));
                self.but_strings.allowed::<str>(Some(s), hit);
                if self.folds {
                    let l = fold(s, lower);
                    if let Some(v) = self.folded.get(l) {
                        each(v, hit);
                    }
                    self.folded_prefixes.heads(l, &mut *hit);
                    self.folded_suffixes.tails(l, &mut *hit);
                    self.but_folded.allowed::<str>(Some(l), hit);
                }
            }
            _ => {
                self.but_strings.allowed::<str>(None, hit);
                self.but_folded.allowed::<str>(None, hit);
            }
        }
        match leaf {
            Leaf::Num(n) => {
                let n = order_key(n);
                if let Some(v) = self.numbers.get(&n) {
                    each(v, hit);
                }
                self.ranges.lookup(n, hit);
                self.but_numbers.allowed(Some(&n), hit);
            }
            _ => self.but_numbers.allowed::<u64>(None, hit),
        }
        match leaf {
            Leaf::Bool(true) => each(&self.trues, hit),
            Leaf::Bool(false) => each(&self.falses, hit),
            Leaf::Null => each(&self.nulls, hit),
            Leaf::Str(_) | Leaf::Num(_) => {}
        }
        for (m, p) in &self.listed {
            if m.matches_leaf(leaf) {
                hit(*p);
            }
        }
    }
}

fn push<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, Vec<u32>>, key: K, pred: u32) {
    map.entry(key).or_default().push(pred);
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

/// Prefixes (or suffixes) grouped by their length in bytes: a leaf is looked up once per
/// distinct length.
struct Affixes<T> {
    by_len: Vec<(usize, ByText<T>)>,
}

type ByText<T> = FxHashMap<Box<str>, Vec<T>>;

impl<T> Default for Affixes<T> {
    fn default() -> Self {
        Affixes { by_len: Vec::new() }
    }
}

impl<T: Copy> Affixes<T> {
    fn add(&mut self, key: &str, v: T) {
        let i = match self.by_len.binary_search_by_key(&key.len(), |(l, _)| *l) {
            Ok(i) => i,
            Err(i) => {
                self.by_len.insert(i, (key.len(), FxHashMap::default()));
                i
            }
        };
        self.by_len[i].1.entry(key.into()).or_default().push(v);
    }

    fn heads(&self, s: &str, mut f: impl FnMut(T)) {
        for (len, map) in &self.by_len {
            if *len > s.len() {
                break;
            }
            if let Some(v) = s.get(..*len).and_then(|h| map.get(h)) {
                v.iter().for_each(|x| f(*x));
            }
        }
    }

    fn tails(&self, s: &str, mut f: impl FnMut(T)) {
        for (len, map) in &self.by_len {
            if *len > s.len() {
                break;
            }
            if let Some(v) = s.get(s.len() - len..).and_then(|t| map.get(t)) {
                v.iter().for_each(|x| f(*x));
            }
        }
    }
}

/// `anything-but` over a set of values: every entry is satisfied except the ones whose set
/// holds the leaf. An entry per matcher, not per predicate: two `anything-but`s listed for one
/// field are OR'd, so their sets must not be merged.
struct Except<K> {
    /// Entry → its predicate.
    preds: Vec<u32>,
    /// Value → the entries that exclude it, ascending.
    excluded: FxHashMap<K, Vec<u32>>,
}

impl<K> Default for Except<K> {
    fn default() -> Self {
        Except {
            preds: Vec::new(),
            excluded: FxHashMap::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Except<K> {
    fn add(&mut self, values: impl Iterator<Item = K>, pred: u32) {
        let entry = self.preds.len() as u32;
        self.preds.push(pred);
        for v in values {
            let ex = self.excluded.entry(v).or_default();
            if ex.last() != Some(&entry) {
                ex.push(entry);
            }
        }
    }

    /// `key`: the leaf as this kind of value; None when it is another kind (never excluded).
    fn allowed<Q>(&self, key: Option<&Q>, hit: &mut dyn FnMut(u32))
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if self.preds.is_empty() {
            return;
        }
        let ex: &[u32] = key
            .and_then(|k| self.excluded.get(k))
            .map_or(&[], Vec::as_slice);
        let mut ex = ex.iter().peekable();
        for (entry, &p) in self.preds.iter().enumerate() {
            if ex.peek() == Some(&&(entry as u32)) {
                ex.next();
                continue;
            }
            hit(p);
        }
    }
}

type Bound = Option<(u64, bool)>;

/// Numeric ranges over the number line cut at every bound: a leaf finds its piece by binary
/// search, and each piece lists the ranges that hold it.
#[derive(Default)]
struct Ranges {
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

    fn lookup(&self, n: u64, hit: &mut dyn FnMut(u32)) {
        if self.pieces.is_empty() {
            return;
        }
        let i = match self.bounds.binary_search(&n) {
            Ok(i) => 2 * i + 1,
            Err(i) => 2 * i,
        };
        self.pieces[i].iter().for_each(|&p| hit(p));
    }
}
