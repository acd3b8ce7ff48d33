//! The engine contract, checked on both engines: what the store's methods rely on.

use std::ops::Bound;
use std::sync::Arc;

use super::engine::{Engine, TxError};
use super::tree::{transact, Tree};
use super::{MemoryEngine, SledEngine, StoreError};

fn engines() -> Vec<(&'static str, Arc<dyn Engine>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sled: Arc<dyn Engine> = Arc::new(SledEngine::open(dir.path()).unwrap());
    vec![
        ("sled", sled, Some(dir)),
        ("memory", Arc::new(MemoryEngine::new()), None),
    ]
}

fn keys(entries: impl Iterator<Item = Result<super::Entry, StoreError>>) -> Vec<String> {
    entries
        .map(|kv| String::from_utf8(kv.unwrap().0).unwrap())
        .collect()
}

#[test]
fn trees_keep_keys_in_order_apart_from_each_other() {
    for (name, engine, _dir) in engines() {
        let a = Tree::open(&engine, "a").unwrap();
        let b = Tree::open(&engine, "b").unwrap();
        for k in ["b", "a\u{ff}", "ab", "a", "c"] {
            a.insert(k, k).unwrap();
        }
        b.insert("a", "other").unwrap();
        assert_eq!(a.get("a").unwrap().unwrap(), b"a", "{name}");
        assert_eq!(b.get("a").unwrap().unwrap(), b"other", "{name}");
        assert_eq!(keys(a.iter()), ["a", "ab", "a\u{ff}", "b", "c"], "{name}");
        assert_eq!(keys(a.iter().rev()).first().unwrap(), "c", "{name}");
        assert_eq!(keys(a.scan_prefix("a")), ["a", "ab", "a\u{ff}"], "{name}");
        assert_eq!(
            keys(a.range(
                Bound::Excluded(b"ab".to_vec()),
                Bound::Included(b"b".to_vec())
            )),
            ["a\u{ff}", "b"],
            "{name}"
        );
        assert_eq!(a.remove("ab").unwrap().unwrap(), b"ab", "{name}");
        assert!(a.remove("ab").unwrap().is_none(), "{name}");
        a.apply(vec![
            (b"d".to_vec(), Some(b"d".to_vec())),
            (b"a".to_vec(), None),
        ])
        .unwrap();
        assert_eq!(keys(a.iter()), ["a\u{ff}", "b", "c", "d"], "{name}");
        assert_eq!(a.len(), 4, "{name}");
        a.clear().unwrap();
        assert_eq!(a.len(), 0, "{name}");
        assert_eq!(b.len(), 1, "{name}");
        // The same name is the same tree.
        let b_again = Tree::open(&engine, "b").unwrap();
        assert_eq!(b_again.get("a").unwrap().unwrap(), b"other", "{name}");
    }
}

#[test]
fn a_transaction_sees_its_own_writes_and_keeps_all_or_none() {
    for (name, engine, _dir) in engines() {
        let a = Tree::open(&engine, "a").unwrap();
        let b = Tree::open(&engine, "b").unwrap();
        a.insert("x", "1").unwrap();
        let seen = transact(engine.as_ref(), &[&a, &b], |tx| {
            tx.insert(&a, "x", "2")?;
            tx.insert(&b, "y", "3")?;
            tx.remove(&a, "gone")?;
            tx.get(&a, "x")
        })
        .unwrap();
        assert_eq!(seen.unwrap(), b"2", "{name}");
        assert_eq!(a.get("x").unwrap().unwrap(), b"2", "{name}");
        assert_eq!(b.get("y").unwrap().unwrap(), b"3", "{name}");

        // A body that gives up leaves nothing of what it wrote, and its error is returned.
        let err = transact(engine.as_ref(), &[&a, &b], |tx| {
            tx.insert(&a, "x", "4")?;
            tx.remove(&b, "y")?;
            Err::<(), _>(TxError::Abort(StoreError::Rejected("no".into())))
        })
        .unwrap_err();
        assert!(
            matches!(err, StoreError::Rejected(m) if m == "no"),
            "{name}"
        );
        assert_eq!(a.get("x").unwrap().unwrap(), b"2", "{name}");
        assert_eq!(b.get("y").unwrap().unwrap(), b"3", "{name}");

        // A tree left out of the transaction is refused, not written behind its back.
        let c = Tree::open(&engine, "c").unwrap();
        let err = transact(engine.as_ref(), &[&a], |tx| tx.insert(&c, "z", "5")).unwrap_err();
        assert!(
            err.to_string().contains("not part of this transaction"),
            "{name}: {err}"
        );
        assert!(c.get("z").unwrap().is_none(), "{name}");
    }
}

#[test]
fn concurrent_transactions_lose_no_update() {
    // Read-modify-write from four threads at once: every increment is kept. An engine must
    // isolate transactions (sled serialises them; the memory engine holds its lock for the
    // body; a replicated engine would retry a conflict), never let one overwrite another.
    for (name, engine, _dir) in engines() {
        let t = Tree::open(&engine, "counter").unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        transact(engine.as_ref(), &[&t], |tx| {
                            let n = tx
                                .get(&t, "n")?
                                .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                            tx.insert(&t, "n", (n + 1).to_be_bytes())
                        })
                        .unwrap();
                    }
                });
            }
        });
        let n = u64::from_be_bytes(t.get("n").unwrap().unwrap().try_into().unwrap());
        assert_eq!(n, 800, "{name}");
        // The same through a single-key update, which needs no transaction.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        t.update("m", |old| {
                            let n = old.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                            Some((n + 1).to_be_bytes().to_vec())
                        })
                        .unwrap();
                    }
                });
            }
        });
        let m = u64::from_be_bytes(t.get("m").unwrap().unwrap().try_into().unwrap());
        assert_eq!(m, 800, "{name}");
        t.update("m", |_| None).unwrap();
        assert!(t.get("m").unwrap().is_none(), "{name}");
    }
}
