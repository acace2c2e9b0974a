//! The dynamic batcher: one OS thread that owns the model and serves a bounded two-class queue.
//!
//! Callers [`Queue::submit`] whole requests (many texts each) and wait on their [`Reply`]. The
//! worker thread moves requests from the shared queue into its own state, cuts batches of at
//! most `batch_size` texts, runs them through the model (a [`BatchModel`]) inside its rayon pool,
//! and sends each request its rows once all of them are done. A request larger than one batch
//! is served over several batches.
//!
//! Scheduling rules:
//! - Query texts always go first. A batch holds query texts only or bulk texts only, so a
//!   query waits for at most the one bulk batch already running, and its own batch is small.
//! - A bulk batch that is not full waits until `batch_wait` after its oldest request arrived
//!   for company, then runs anyway. A query batch never waits: it runs as soon as the model is
//!   free, with every query that queued up while the previous batch ran (under load queries
//!   batch by themselves; alone, a query pays no deadline).
//! - A request whose caller has gone away (its future was dropped) is skipped.
//! - A failure (tokenizer error, model error, panic) fails the requests of that batch, each on
//!   its own reply channel; the worker carries on.
//!
//! Locking: one mutex guards the shared queue; the worker holds it only to move requests and
//! update counters, never while the model runs.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::{Embeddings, Priority};
use crate::error::{EngineError, Result};

/// What the worker runs: a model that embeds a batch of texts in two steps, so that a text it
/// cannot take (a tokenizer error) fails only its own request.
pub(crate) trait BatchModel: Sync {
    /// A text made ready for the model (token ids).
    type Prepared: Send;
    /// Width of the rows.
    fn dim(&self) -> usize;
    /// Prepares each text independently (on the worker's rayon pool).
    fn prepare(&self, texts: &[String]) -> Vec<Result<Self::Prepared>>;
    /// Embeds prepared texts; returns their rows, flat, in order.
    fn run(&self, items: &[Self::Prepared]) -> Result<Vec<f32>>;
}

/// Where a request's result goes.
pub(crate) enum Reply {
    /// An `async` caller.
    Async(oneshot::Sender<Result<Embeddings>>),
    /// A blocking caller.
    Blocking(mpsc::SyncSender<Result<Embeddings>>),
}

impl Reply {
    fn send(self, r: Result<Embeddings>) {
        // A caller that has gone away no longer wants the result; nothing to do.
        match self {
            Self::Async(tx) => {
                let _ = tx.send(r);
            }
            Self::Blocking(tx) => {
                let _ = tx.send(r);
            }
        }
    }

    fn is_cancelled(&self) -> bool {
        match self {
            Self::Async(tx) => tx.is_canceled(),
            // A blocking caller cannot go away while it waits.
            Self::Blocking(_) => false,
        }
    }
}

struct Request {
    texts: Vec<String>,
    priority: Priority,
    reply: Reply,
    arrived: Instant,
}

#[derive(Default)]
struct Shared {
    incoming: VecDeque<Request>,
    /// Texts submitted but not yet taken into a batch, per class (`Priority as usize`).
    queued: [usize; 2],
    closed: bool,
}

/// Sizing of the batcher.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchParams {
    /// Most texts per batch.
    pub batch_size: usize,
    /// How long a partial batch waits for more requests.
    pub batch_wait: Duration,
    /// Most queued texts per priority class.
    pub capacity: usize,
}

/// The queue shared by the handles and the worker thread.
pub(crate) struct Queue {
    shared: Mutex<Shared>,
    wake: Condvar,
    params: BatchParams,
}

impl Queue {
    pub(crate) fn new(params: BatchParams) -> Self {
        Self {
            shared: Mutex::new(Shared::default()),
            wake: Condvar::new(),
            params,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // The critical sections only move values and update counters; a panic elsewhere
        // cannot leave them half done, so a poisoned lock is still consistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `texts` (non-empty). Fails with `Overloaded` when the class's queue is full and
    /// with `InvalidInput` when one request holds more texts than the queue can.
    pub(crate) fn submit(
        &self,
        texts: Vec<String>,
        priority: Priority,
        reply: Reply,
    ) -> Result<()> {
        let n = texts.len();
        let cap = self.params.capacity;
        if n > cap {
            return Err(EngineError::InvalidInput(format!(
                "{n} texts in one embedding request; at most {cap} (engine.embed_queue) fit, \
                 split the request"
            )));
        }
        let mut s = self.lock();
        if s.closed {
            return Err(EngineError::Internal(
                "the embedder has shut down".to_owned(),
            ));
        }
        let queued = &mut s.queued[priority as usize];
        if *queued + n > cap {
            return Err(EngineError::Overloaded(format!(
                "the embedder's {priority:?} queue holds {queued} of {cap} texts; retry later"
            )));
        }
        *queued += n;
        s.incoming.push_back(Request {
            texts,
            priority,
            reply,
            arrived: Instant::now(),
        });
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// Stops the worker after its current batch; requests still queued are dropped, which
    /// their callers see as a closed reply channel.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

/// A request the worker has accepted: where its rows go.
struct Sink {
    out: Vec<f32>,
    remaining: usize,
    reply: Reply,
}

/// The part of a request not yet taken into a batch.
struct Waiting {
    id: u64,
    texts: std::vec::IntoIter<String>,
    arrived: Instant,
}

/// A slice of one request inside a batch.
struct Piece {
    id: u64,
    count: usize,
}

/// The worker's own state: no lock needed.
struct Worker<'a, M> {
    queue: &'a Queue,
    model: &'a M,
    pool: &'a rayon::ThreadPool,
    next_id: u64,
    /// Per class, oldest first.
    waiting: [VecDeque<Waiting>; 2],
    sinks: HashMap<u64, Sink>,
}

/// The worker thread's body: serves batches until the queue is closed.
pub(crate) fn run<M: BatchModel>(queue: &Queue, model: &M, pool: &rayon::ThreadPool) {
    let mut w = Worker {
        queue,
        model,
        pool,
        next_id: 0,
        waiting: [VecDeque::new(), VecDeque::new()],
        sinks: HashMap::new(),
    };
    while let Some((pieces, texts)) = w.next_batch() {
        w.serve(pieces, texts);
    }
    tracing::debug!("embedder worker stopped");
}

impl<M: BatchModel> Worker<'_, M> {
    /// Moves new requests out of the shared queue.
    fn accept(&mut self, s: &mut Shared) {
        while let Some(r) = s.incoming.pop_front() {
            let id = self.next_id;
            self.next_id += 1;
            let n = r.texts.len();
            self.sinks.insert(
                id,
                Sink {
                    out: Vec::with_capacity(n * self.model.dim()),
                    remaining: n,
                    reply: r.reply,
                },
            );
            self.waiting[r.priority as usize].push_back(Waiting {
                id,
                texts: r.texts.into_iter(),
                arrived: r.arrived,
            });
        }
    }

    /// Drops waiting requests that failed earlier or whose caller has gone; returns the texts
    /// still waiting per class.
    fn prune(&mut self, s: &mut Shared) -> [usize; 2] {
        let mut left = [0; 2];
        for (class, queue) in self.waiting.iter_mut().enumerate() {
            queue.retain(|wt| {
                let live = match self.sinks.get(&wt.id) {
                    Some(sink) if !sink.reply.is_cancelled() => true,
                    Some(_) => {
                        self.sinks.remove(&wt.id);
                        false
                    }
                    None => false,
                };
                if !live {
                    s.queued[class] -= wt.texts.len();
                }
                live
            });
            left[class] = queue.iter().map(|wt| wt.texts.len()).sum();
        }
        left
    }

    /// Blocks until a batch is due; `None` once the queue is closed.
    fn next_batch(&mut self) -> Option<(Vec<Piece>, Vec<String>)> {
        let queue = self.queue;
        let params = queue.params;
        let mut s = queue.lock();
        let class = loop {
            if s.closed {
                return None;
            }
            self.accept(&mut s);
            let left = self.prune(&mut s);
            let class = if left[Priority::Query as usize] > 0 {
                Priority::Query as usize
            } else if left[Priority::Bulk as usize] > 0 {
                Priority::Bulk as usize
            } else {
                s = queue.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            if left[class] >= params.batch_size || class == Priority::Query as usize {
                break class;
            }
            let oldest = self.waiting[class]
                .front()
                .map_or_else(Instant::now, |wt| wt.arrived);
            let now = Instant::now();
            let due = oldest + params.batch_wait;
            if now >= due {
                break class;
            }
            s = queue
                .wake
                .wait_timeout(s, due - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        let mut pieces = Vec::new();
        let mut texts = Vec::with_capacity(params.batch_size);
        while texts.len() < params.batch_size {
            let Some(front) = self.waiting[class].front_mut() else {
                break;
            };
            let before = texts.len();
            texts.extend(front.texts.by_ref().take(params.batch_size - before));
            let count = texts.len() - before;
            pieces.push(Piece {
                id: front.id,
                count,
            });
            if front.texts.len() == 0 {
                self.waiting[class].pop_front();
            }
        }
        s.queued[class] -= texts.len();
        Some((pieces, texts))
    }

    /// Runs one batch and hands out its rows.
    fn serve(&mut self, pieces: Vec<Piece>, texts: Vec<String>) {
        let model = self.model;
        let dim = model.dim();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.pool.install(|| {
                let tokens = model.prepare(&texts);
                drop(texts);
                // Requests with a text the tokenizer rejects fail alone.
                let mut ok = Vec::with_capacity(tokens.len());
                let mut failed = Vec::new();
                let mut tokens = tokens.into_iter();
                for p in &pieces {
                    let mut seqs = Vec::with_capacity(p.count);
                    let mut err = None;
                    for t in tokens.by_ref().take(p.count) {
                        match t {
                            Ok(ids) => seqs.push(ids),
                            Err(e) => err = err.or(Some(e)),
                        }
                    }
                    match err {
                        None => ok.extend(seqs),
                        Some(e) => failed.push((p.id, e)),
                    }
                }
                let rows = model.run(&ok)?;
                Ok::<_, EngineError>((rows, failed))
            })
        }));
        let (rows, failed) = match outcome {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "embedding batch failed");
                return self.fail(&pieces, |_| clone_error(&e));
            }
            Err(panic) => {
                let msg = panic_message(&*panic);
                tracing::error!(panic = %msg, "embedding model panicked");
                return self.fail(&pieces, |_| {
                    EngineError::Internal(format!("embedding model panicked: {msg}"))
                });
            }
        };
        let mut failed: HashMap<u64, EngineError> = failed.into_iter().collect();
        let mut rows = rows.chunks_exact(dim);
        for p in &pieces {
            if let Some(e) = failed.remove(&p.id) {
                if let Some(sink) = self.sinks.remove(&p.id) {
                    sink.reply.send(Err(e));
                }
                continue;
            }
            let Some(sink) = self.sinks.get_mut(&p.id) else {
                // Failed in an earlier piece of this batch; its rows were never computed.
                continue;
            };
            for row in rows.by_ref().take(p.count) {
                sink.out.extend_from_slice(row);
            }
            sink.remaining -= p.count;
            if sink.remaining == 0
                && let Some(sink) = self.sinks.remove(&p.id)
            {
                sink.reply.send(Ok(Embeddings::new(dim, sink.out)));
            }
        }
    }

    /// Fails every request with a piece in the batch; their unserved texts are pruned later.
    fn fail(&mut self, pieces: &[Piece], err: impl Fn(u64) -> EngineError) {
        for p in pieces {
            if let Some(sink) = self.sinks.remove(&p.id) {
                sink.reply.send(Err(err(p.id)));
            }
        }
    }
}

/// `EngineError` is not `Clone` (it can hold an `io::Error`); a batch failure is reported to
/// each of its requests with the same message.
fn clone_error(e: &EngineError) -> EngineError {
    match e {
        EngineError::InvalidInput(m) => EngineError::InvalidInput(m.clone()),
        EngineError::Overloaded(m) => EngineError::Overloaded(m.clone()),
        EngineError::Internal(m) => EngineError::Internal(m.clone()),
        EngineError::Unsupported(m) => EngineError::Unsupported(m.clone()),
        EngineError::UnknownAdapter(m) => EngineError::UnknownAdapter(m.clone()),
        EngineError::InvalidAdapter { name, detail } => EngineError::InvalidAdapter {
            name: name.clone(),
            detail: detail.clone(),
        },
        EngineError::ModelMissing { .. } | EngineError::Io { .. } | EngineError::Corrupt { .. } => {
            EngineError::Internal(e.to_string())
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use super::*;

    /// A stand-in model: text `"n"` embeds as `[n, -n]`; `"bad"` fails to prepare, `"error"`
    /// fails the batch, `"panic"` panics. Records every batch it runs.
    struct Fake {
        delay: Duration,
        log: Mutex<Vec<Vec<String>>>,
    }

    impl BatchModel for Fake {
        type Prepared = String;

        fn dim(&self) -> usize {
            2
        }

        fn prepare(&self, texts: &[String]) -> Vec<Result<String>> {
            texts
                .iter()
                .map(|t| match t.as_str() {
                    "bad" => Err(EngineError::InvalidInput("bad text".into())),
                    _ => Ok(t.clone()),
                })
                .collect()
        }

        fn run(&self, items: &[String]) -> Result<Vec<f32>> {
            self.log.lock().unwrap().push(items.to_vec());
            std::thread::sleep(self.delay);
            if items.iter().any(|t| t == "panic") {
                panic!("boom");
            }
            if items.iter().any(|t| t == "error") {
                return Err(EngineError::Internal("model failed".into()));
            }
            Ok(items
                .iter()
                .flat_map(|t| {
                    let n: f32 = t.trim_start_matches(['q', 'b']).parse().unwrap_or(0.0);
                    [n, -n]
                })
                .collect())
        }
    }

    struct Harness {
        queue: Arc<Queue>,
        model: Arc<Fake>,
        worker: Option<JoinHandle<()>>,
    }

    impl Harness {
        fn start(batch_size: usize, wait_ms: u64, capacity: usize, delay_ms: u64) -> Self {
            let queue = Arc::new(Queue::new(BatchParams {
                batch_size,
                batch_wait: Duration::from_millis(wait_ms),
                capacity,
            }));
            let model = Arc::new(Fake {
                delay: Duration::from_millis(delay_ms),
                log: Mutex::new(Vec::new()),
            });
            let (q, m) = (Arc::clone(&queue), Arc::clone(&model));
            let worker = std::thread::spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                run(&q, &*m, &pool);
            });
            Self {
                queue,
                model,
                worker: Some(worker),
            }
        }

        fn submit(
            &self,
            texts: &[&str],
            p: Priority,
        ) -> Result<mpsc::Receiver<Result<Embeddings>>> {
            let (tx, rx) = mpsc::sync_channel(1);
            let texts = texts.iter().map(|t| (*t).to_owned()).collect();
            self.queue.submit(texts, p, Reply::Blocking(tx))?;
            Ok(rx)
        }

        fn log(&self) -> Vec<Vec<String>> {
            self.model.log.lock().unwrap().clone()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.queue.close();
            if let Some(w) = self.worker.take() {
                w.join().unwrap();
            }
        }
    }

    fn numbers(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| i.to_string()).collect()
    }

    #[test]
    fn large_request_spans_batches_in_order() {
        let h = Harness::start(3, 0, 100, 0);
        let texts = numbers(1..11);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let e = h
            .submit(&refs, Priority::Bulk)
            .unwrap()
            .recv()
            .unwrap()
            .unwrap();
        assert_eq!(e.len(), 10);
        for (i, row) in e.iter().enumerate() {
            let n = (i + 1) as f32;
            assert_eq!(row, &[n, -n]);
        }
        let sizes: Vec<usize> = h.log().iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
    }

    #[test]
    fn concurrent_requests_share_a_batch() {
        // The batch fills (8 texts), so the long wait only guards against a slow submitter.
        let h = Harness::start(8, 5000, 100, 0);
        let a = h.submit(&["1", "2"], Priority::Bulk).unwrap();
        let b = h.submit(&["3"], Priority::Bulk).unwrap();
        let c = h
            .submit(&["4", "5", "6", "7", "8"], Priority::Bulk)
            .unwrap();
        assert_eq!(
            a.recv().unwrap().unwrap().into_vec(),
            vec![1., -1., 2., -2.]
        );
        assert_eq!(b.recv().unwrap().unwrap().into_vec(), vec![3., -3.]);
        assert_eq!(c.recv().unwrap().unwrap().len(), 5);
        // Eight texts filled the batch: it ran at once, as one.
        assert_eq!(h.log().len(), 1);
    }

    #[test]
    fn failures_stay_with_their_requests_and_the_worker_survives() {
        // Every step fills a batch of 4 exactly, so the long wait never runs out and batch
        // composition is deterministic.
        let h = Harness::start(4, 5000, 100, 0);
        // A tokenizer-style failure fails only its own request.
        let a = h.submit(&["1", "bad", "2"], Priority::Bulk).unwrap();
        let b = h.submit(&["3"], Priority::Bulk).unwrap();
        assert!(matches!(
            a.recv().unwrap(),
            Err(EngineError::InvalidInput(_))
        ));
        assert_eq!(b.recv().unwrap().unwrap().into_vec(), vec![3., -3.]);
        // A panic fails the batch it was in, nothing else.
        let p = h
            .submit(&["panic", "9", "9", "9"], Priority::Query)
            .unwrap();
        match p.recv().unwrap() {
            Err(EngineError::Internal(m)) => assert!(m.contains("panicked: boom"), "{m}"),
            other => panic!("expected Internal, got {other:?}"),
        }
        let ok = h.submit(&["4", "4", "4", "4"], Priority::Query).unwrap();
        assert_eq!(ok.recv().unwrap().unwrap().row(0), &[4., -4.]);
        // A model error fails every request in its batch.
        let e = h.submit(&["5", "error", "5"], Priority::Bulk).unwrap();
        let f = h.submit(&["6"], Priority::Bulk).unwrap();
        assert!(matches!(e.recv().unwrap(), Err(EngineError::Internal(_))));
        assert!(matches!(f.recv().unwrap(), Err(EngineError::Internal(_))));
        // The rest of a failed request that spans batches is dropped, not computed.
        let r = h.submit(&["error", "1", "1", "1", "1", "1"], Priority::Bulk);
        assert!(matches!(
            r.unwrap().recv().unwrap(),
            Err(EngineError::Internal(_))
        ));
        let g = h.submit(&["7", "7", "7", "7"], Priority::Bulk).unwrap();
        assert_eq!(g.recv().unwrap().unwrap().len(), 4);
        let log = h.log();
        assert_eq!(log.len(), 6, "{log:?}");
        assert_eq!(log[5], vec!["7"; 4]);
    }

    #[test]
    fn a_query_overtakes_the_bulk_backlog() {
        let h = Harness::start(2, 0, 100, 20);
        let bulk_texts = numbers(0..20);
        let refs: Vec<&str> = bulk_texts.iter().map(String::as_str).collect();
        let bulk = h.submit(&refs, Priority::Bulk).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let q = h.submit(&["q99"], Priority::Query).unwrap();
        assert_eq!(q.recv().unwrap().unwrap().into_vec(), vec![99., -99.]);
        // The backlog (10 batches of 20 ms) is still running when the query is answered.
        assert!(matches!(bulk.try_recv(), Err(mpsc::TryRecvError::Empty)));
        assert_eq!(bulk.recv().unwrap().unwrap().len(), 20);
        let log = h.log();
        let at = log.iter().position(|b| b == &["q99"]).unwrap();
        assert!(at <= 3, "query ran as batch {at} of {}", log.len());
        assert!(at < log.len() - 1);
    }

    #[test]
    fn queries_never_wait_for_company_but_batch_while_the_model_is_busy() {
        // A 10 s batch wait would hold a bulk text; a lone query runs at once.
        let h = Harness::start(8, 10_000, 100, 300);
        let q1 = h.submit(&["q1"], Priority::Query).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // q1 is running (300 ms): these two queue up and then run together.
        let q2 = h.submit(&["q2"], Priority::Query).unwrap();
        let q3 = h.submit(&["q3"], Priority::Query).unwrap();
        let answer = |rx: mpsc::Receiver<Result<Embeddings>>| {
            rx.recv_timeout(Duration::from_secs(5))
                .expect("a query waited for the batch deadline")
                .unwrap()
                .into_vec()
        };
        assert_eq!(answer(q1), vec![1., -1.]);
        assert_eq!(answer(q2), vec![2., -2.]);
        assert_eq!(answer(q3), vec![3., -3.]);
        assert_eq!(h.log(), vec![vec!["q1"], vec!["q2", "q3"]]);
        // A bulk text still waits for company (or the deadline).
        let b = h.submit(&["4"], Priority::Bulk).unwrap();
        assert!(b.recv_timeout(Duration::from_millis(500)).is_err());
    }

    #[test]
    fn full_queue_is_overloaded_per_class_and_oversized_requests_are_invalid() {
        // A long batch wait keeps everything queued while we probe.
        let h = Harness::start(100, 300, 4, 0);
        let a = h.submit(&["1", "2", "3"], Priority::Bulk).unwrap();
        assert!(matches!(
            h.submit(&["4", "5"], Priority::Bulk),
            Err(EngineError::Overloaded(_))
        ));
        // Queries have their own budget.
        let q = h.submit(&["6", "7", "8", "9"], Priority::Query).unwrap();
        assert!(matches!(
            h.submit(&["1", "2", "3", "4", "5"], Priority::Query),
            Err(EngineError::InvalidInput(_))
        ));
        assert_eq!(q.recv().unwrap().unwrap().len(), 4);
        assert_eq!(a.recv().unwrap().unwrap().len(), 3);
        // Served texts leave the queue.
        assert!(h.submit(&["1", "2", "3", "4"], Priority::Bulk).is_ok());
    }

    #[test]
    fn abandoned_async_requests_are_skipped() {
        let h = Harness::start(8, 100, 100, 0);
        let (tx, rx) = oneshot::channel();
        h.queue
            .submit(vec!["41".into()], Priority::Bulk, Reply::Async(tx))
            .unwrap();
        drop(rx);
        let b = h.submit(&["42"], Priority::Bulk).unwrap();
        assert_eq!(b.recv().unwrap().unwrap().into_vec(), vec![42., -42.]);
        assert_eq!(h.log(), vec![vec!["42".to_owned()]]);
    }

    #[test]
    fn closing_stops_the_worker_and_refuses_new_work() {
        let mut h = Harness::start(8, 0, 100, 0);
        h.queue.close();
        h.worker.take().unwrap().join().unwrap();
        assert!(matches!(
            h.submit(&["1"], Priority::Query),
            Err(EngineError::Internal(_))
        ));
    }
}
