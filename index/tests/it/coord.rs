//! Several writers over one store: the lease and the generations, on SeaweedFS (with separate
//! clients, as separate replicas would have), behind a proxy that drops the conditions, and on
//! a local directory.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_index::fixtures::{ConditionIgnoringProxy, SeaweedFs};
use hearth_index::{BlobStore, Generations, IndexError, Lease, LeaseStatus, S3Config};

const TERM: Duration = Duration::from_millis(2000);
const STEP: Duration = Duration::from_millis(150);

fn held(s: &LeaseStatus) -> Option<u64> {
    match s {
        LeaseStatus::Held { epoch, .. } => Some(*epoch),
        LeaseStatus::Taken { .. } => None,
    }
}

fn client(cfg: &S3Config) -> BlobStore {
    BlobStore::s3(cfg).unwrap()
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_lapsed_lease_is_taken_over_after_its_term() {
    let cfg = SeaweedFs::shared().fresh_bucket();
    let mut lease: Vec<Lease> = ["a", "b", "c"]
        .iter()
        .map(|name| Lease::new(client(&cfg), "leases/indexer", *name, TERM))
        .collect();

    // Three contenders at once: exactly one holds, and keeps holding while it renews.
    let mut holder = None;
    let mut last_renewal = Instant::now();
    for round in 0..6 {
        let started = Instant::now();
        let (x, y, z) = {
            let [a, b, c] = &mut lease[..] else {
                unreachable!()
            };
            tokio::join!(a.tick(), b.tick(), c.tick())
        };
        let statuses = [x.unwrap(), y.unwrap(), z.unwrap()];
        let holders: Vec<usize> = (0..3).filter(|i| held(&statuses[*i]).is_some()).collect();
        assert_eq!(holders.len(), 1, "round {round}: {statuses:?}");
        assert_eq!(held(&statuses[holders[0]]), Some(1), "{statuses:?}");
        if let Some(h) = holder {
            assert_eq!(
                holders[0], h,
                "the holder changed while renewing: {statuses:?}"
            );
        }
        holder = Some(holders[0]);
        last_renewal = started;
        tokio::time::sleep(STEP).await;
    }
    let first = holder.unwrap();
    let LeaseStatus::Held {
        until: first_until, ..
    } = lease[first].tick().await.unwrap()
    else {
        panic!("the holder lost its lease while renewing");
    };
    last_renewal = last_renewal.max(first_until - TERM);

    // The holder pauses (a stalled process): the others take over, one of them, and not
    // before the term of its last renewal has passed.
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let (second, taken_at) = 'wait: {
        let deadline = Instant::now() + 10 * TERM;
        while Instant::now() < deadline {
            for &i in &others {
                let now = Instant::now();
                if held(&lease[i].tick().await.unwrap()) == Some(2) {
                    break 'wait (i, now);
                }
            }
            tokio::time::sleep(STEP).await;
        }
        panic!("nobody took the lapsed lease over within 10 terms");
    };
    assert!(
        taken_at >= last_renewal + TERM,
        "taken over {:?} after the last renewal, before its term",
        taken_at - last_renewal
    );
    // The paused holder's own view of its hold had ended before the new one began...
    assert!(first_until <= taken_at);
    // ...and when it wakes it learns that it lost, and to whom.
    match lease[first].tick().await.unwrap() {
        LeaseStatus::Taken { holder, epoch } => {
            assert_eq!(holder, ["a", "b", "c"][second]);
            assert_eq!(epoch, 2);
        }
        s => panic!("the paused holder still believes it holds: {s:?}"),
    }
    let third = others.into_iter().find(|i| *i != second).unwrap();
    assert_eq!(held(&lease[third].tick().await.unwrap()), None);

    // A released lease is taken at once, without waiting for a term.
    assert_eq!(held(&lease[second].tick().await.unwrap()), Some(2));
    lease[second].release().await.unwrap();
    let before = Instant::now();
    assert_eq!(held(&lease[third].tick().await.unwrap()), Some(3));
    assert!(before.elapsed() < TERM);
    assert_eq!(held(&lease[second].tick().await.unwrap()), None);
}

/// Two writers that both read generation `g` and both commit `g + 1`; what each was told.
async fn both_commit(a: &Generations, b: &Generations, tag: &str) -> (u64, bool, bool) {
    let ga = a.latest().await.unwrap().map_or(0, |(g, _)| g);
    let gb = b.latest().await.unwrap().map_or(0, |(g, _)| g);
    assert_eq!(ga, gb);
    let (x, y) = tokio::join!(
        a.commit(ga + 1, Bytes::from(format!("{tag}-a"))),
        b.commit(gb + 1, Bytes::from(format!("{tag}-b")))
    );
    (ga + 1, x.unwrap(), y.unwrap())
}

#[tokio::test]
async fn two_writers_who_both_believe_they_hold_the_lease_never_lose_a_generation() {
    let weed = SeaweedFs::shared();
    let cfg = weed.fresh_bucket();
    let prefix = "manifests/c/";

    // A holds the lease and stalls; B takes it over; A, not having ticked, still believes.
    let mut a_lease = Lease::new(client(&cfg), "leases/c", "a", TERM);
    let mut b_lease = Lease::new(client(&cfg), "leases/c", "b", TERM);
    assert_eq!(held(&a_lease.tick().await.unwrap()), Some(1));
    let deadline = Instant::now() + 10 * TERM;
    while held(&b_lease.tick().await.unwrap()) != Some(2) {
        assert!(Instant::now() < deadline, "B never took the lease over");
        tokio::time::sleep(STEP).await;
    }

    // Both commit the next generation from the same state: one wins, the other is told.
    let a = Generations::new(client(&cfg), prefix);
    let b = Generations::new(client(&cfg), prefix);
    let mut told_won = Vec::new();
    for round in 0..10 {
        let (g, x, y) = both_commit(&a, &b, &format!("r{round}")).await;
        assert!(x ^ y, "round {round}: a {x}, b {y}");
        told_won.push((g, if x { "a" } else { "b" }, round));
    }
    // And as racing loops, each re-reading after a loss.
    let race = |w: Generations, name: &'static str| async move {
        let mut won = Vec::new();
        for n in 0..15 {
            let g = w.latest().await.unwrap().map_or(0, |(g, _)| g) + 1;
            if w.commit(g, Bytes::from(format!("{name}{n}")))
                .await
                .unwrap()
            {
                won.push((g, format!("{name}{n}")));
            }
        }
        won
    };
    let (wa, wb) = tokio::join!(race(a.clone(), "a"), race(b.clone(), "b"));

    // Every generation told committed is there with its writer's bytes; none is missing.
    let gens = a.list().await.unwrap();
    let expected: Vec<u64> = (1..=gens.len() as u64).collect();
    assert_eq!(gens, expected);
    assert_eq!(gens.len(), told_won.len() + wa.len() + wb.len());
    for (g, who, round) in &told_won {
        assert_eq!(a.get(*g).await.unwrap().unwrap(), format!("r{round}-{who}"));
    }
    for (g, bytes) in wa.iter().chain(&wb) {
        assert_eq!(&a.get(*g).await.unwrap().unwrap()[..], bytes.as_bytes());
    }
    assert_eq!(a.prune(gens.len() as u64).await.unwrap(), gens.len() - 1);
    assert_eq!(a.latest().await.unwrap().unwrap().0, gens.len() as u64);

    // The same through a store that ignores the condition: both are told they won, and one
    // generation is lost. What `hearth store check` and `hearth serve` refuse.
    let proxy = ConditionIgnoringProxy::start(&weed.endpoint).unwrap();
    let cheat = proxy.bucket(&cfg.bucket);
    let (a, b) = (
        Generations::new(client(&cheat), "manifests/d/"),
        Generations::new(client(&cheat), "manifests/d/"),
    );
    let (g, x, y) = both_commit(&a, &b, "lost").await;
    assert!(x && y, "both writers are told they committed");
    let kept = a.get(g).await.unwrap().unwrap();
    assert!(kept == "lost-a" || kept == "lost-b");
    assert_eq!(
        a.list().await.unwrap(),
        vec![g],
        "one of the two generations is gone"
    );
}

#[tokio::test]
async fn a_local_directory_commits_generations_once_but_cannot_renew_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Generations::new(BlobStore::local(dir.path()).unwrap(), "manifests/c/"),
        Generations::new(BlobStore::local(dir.path()).unwrap(), "manifests/c/"),
    );
    for round in 0..5 {
        let (_, x, y) = both_commit(&a, &b, &format!("r{round}")).await;
        assert!(x ^ y, "round {round}");
    }
    assert_eq!(a.list().await.unwrap(), vec![1, 2, 3, 4, 5]);
    assert!(matches!(
        a.commit(0, Bytes::new()).await,
        Err(IndexError::InvalidInput(_))
    ));

    let mut lease = Lease::new(BlobStore::local(dir.path()).unwrap(), "leases/c", "a", TERM);
    assert_eq!(held(&lease.tick().await.unwrap()), Some(1));
    match lease.tick().await {
        Err(IndexError::InvalidInput(m)) => assert!(m.contains("If-Match"), "{m}"),
        other => panic!("a local lease renewed: {other:?}"),
    }
}
