//! Lock-free weighted priority scheduler.
//!
//! One bounded [`ArrayQueue`] per priority class. Consumers take items by *smooth weighted
//! round-robin* (the nginx algorithm) over the classes that currently hold work:
//!
//! - For each of the 7 non-empty subsets of classes the SWRR sequence over that subset's
//!   weights is computed once at construction (its length is the subset's weight sum).
//! - A shared atomic ticket counter picks the position in the sequence. A consumer reserves
//!   a block of tickets with one `fetch_add`, so concurrent consumers never serve the same
//!   slot and together follow the sequence exactly.
//! - The sequence is looked up for the subset of classes that hold work *now*, so an empty
//!   class costs the others nothing (its share is redistributed by weight) and a backlogged
//!   low class still gets `w_low` of every `sum(w)` slots: it is never starved.
//!
//! Overload sheds low first: each class has its own bound and low drains slowest, so its
//! queue fills (and [`Scheduler::try_push`] hands items back) before high's does.
//!
//! No locks anywhere: pushes and pops are the queues' CAS loops plus one `fetch_add`;
//! waiting for work parks on a [`Notify`] instead of spinning.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};

use crossbeam::queue::ArrayQueue;
use crossbeam::utils::CachePadded;
use tokio::sync::Notify;

use crate::model::Priority;

const CLASSES: usize = Priority::COUNT;

/// A value for each priority class, written `high:medium:low` (e.g. `8:4:1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerClass(pub [usize; CLASSES]);

impl PerClass {
    pub fn get(&self, priority: Priority) -> usize {
        self.0[priority.index()]
    }
}

impl FromStr for PerClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_positive_list(s, "high:medium:low").map(PerClass)
    }
}

impl fmt::Display for PerClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.0[0], self.0[1], self.0[2])
    }
}

/// Parses `N` positive whole numbers separated by ':' (`shape` names them for errors).
pub fn parse_positive_list<const N: usize>(s: &str, shape: &str) -> Result<[usize; N], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != N {
        return Err(format!("expected {shape}, got {s:?}"));
    }
    let mut out = [0; N];
    for (slot, part) in out.iter_mut().zip(parts) {
        *slot = part
            .trim()
            .parse()
            .map_err(|_| format!("{part:?} is not a whole number"))?;
        if *slot == 0 {
            return Err(String::from("every value must be at least 1"));
        }
    }
    Ok(out)
}

/// Largest weight sum accepted; bounds the precomputed sequences' memory.
pub const MAX_WEIGHT_SUM: usize = 1 << 16;

/// The scheduler's weights and per-class capacities.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub weights: PerClass,
    pub capacities: PerClass,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            weights: PerClass([8, 4, 1]),
            capacities: PerClass([16_384, 8_192, 4_096]),
        }
    }
}

/// Bounded multi-producer, multi-consumer priority queue with weighted fair draining.
pub struct Scheduler<T> {
    queues: [ArrayQueue<T>; CLASSES],
    /// `sequences[mask]`: SWRR order of class indices over the classes in `mask`.
    sequences: [Box<[u8]>; 1 << CLASSES],
    ticket: CachePadded<AtomicUsize>,
    /// Consumers parked (or about to park) in `wait_for_work`; producers skip the wake-up
    /// entirely while it is zero, which is the common case under load.
    waiters: CachePadded<AtomicUsize>,
    work: Notify,
    closed: AtomicBool,
}

impl<T> Scheduler<T> {
    /// # Panics
    /// When a weight or capacity is zero or the weights sum to more than [`MAX_WEIGHT_SUM`];
    /// configuration parsing rejects both before this is reached.
    pub fn new(config: SchedulerConfig) -> Self {
        let weights = config.weights.0;
        assert!(weights.iter().all(|&w| w > 0), "weights must be positive");
        assert!(
            weights.iter().sum::<usize>() <= MAX_WEIGHT_SUM,
            "weights sum over {MAX_WEIGHT_SUM}"
        );
        let sequences = std::array::from_fn(|mask| swrr_sequence(&weights, mask));
        Scheduler {
            queues: config.capacities.0.map(ArrayQueue::new),
            sequences,
            ticket: CachePadded::new(AtomicUsize::new(0)),
            waiters: CachePadded::new(AtomicUsize::new(0)),
            work: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Enqueues `item` in its class, or hands it back when that class is full or the
    /// scheduler is closed.
    pub fn try_push(&self, priority: Priority, item: T) -> Result<(), T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        self.queues[priority.index()].push(item)?;
        // Pairs with the fence in `wait_for_work`: either the waiter sees this item, or
        // this sees the waiter and wakes it.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Moves up to `max` items into `out` in weighted order; returns how many.
    pub fn pop_batch(&self, max: usize, out: &mut Vec<T>) -> usize {
        self.pop_into(max, |item| out.push(item))
    }

    /// Takes one item in weighted order.
    pub fn pop(&self) -> Option<T> {
        let mut one = None;
        self.pop_into(1, |item| one = Some(item));
        one
    }

    fn pop_into(&self, max: usize, mut sink: impl FnMut(T)) -> usize {
        let mut mask = self.nonempty_mask();
        if mask == 0 || max == 0 {
            return 0;
        }
        let mut ticket = self.ticket.fetch_add(max, Ordering::Relaxed);
        let mut taken = 0;
        while taken < max {
            let sequence = &self.sequences[mask];
            let class = sequence[ticket % sequence.len()] as usize;
            match self.queues[class].pop() {
                Some(item) => {
                    sink(item);
                    taken += 1;
                    ticket = ticket.wrapping_add(1);
                }
                None => {
                    mask &= !(1 << class);
                    if mask == 0 {
                        mask = self.nonempty_mask();
                        if mask == 0 {
                            break;
                        }
                    }
                }
            }
        }
        taken
    }

    /// Resolves once there is work or the scheduler is closed; never spins.
    pub async fn wait_for_work(&self) {
        loop {
            if self.nonempty_mask() != 0 || self.is_closed() {
                return;
            }
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiters.fetch_add(1, Ordering::Relaxed);
            // Undone on every exit, including this future being dropped mid-wait.
            let _parked = Parked(&self.waiters);
            fence(Ordering::SeqCst);
            if self.nonempty_mask() == 0 && !self.is_closed() {
                notified.await;
            }
        }
    }

    /// Refuses further pushes and wakes every waiting consumer; what is queued stays
    /// poppable so consumers can drain it.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.work.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn len(&self, priority: Priority) -> usize {
        self.queues[priority.index()].len()
    }

    pub fn is_empty(&self) -> bool {
        self.nonempty_mask() == 0
    }

    pub fn capacity(&self, priority: Priority) -> usize {
        self.queues[priority.index()].capacity()
    }

    fn nonempty_mask(&self) -> usize {
        self.queues
            .iter()
            .enumerate()
            .fold(0, |m, (i, q)| if q.is_empty() { m } else { m | 1 << i })
    }
}

struct Parked<'a>(&'a AtomicUsize);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One period of smooth weighted round-robin over the classes in `mask`: each step adds
/// every class's weight to its credit, serves the class with most credit (ties to the
/// higher priority) and charges it the total. Interleaves instead of bursting.
fn swrr_sequence(weights: &[usize; CLASSES], mask: usize) -> Box<[u8]> {
    let members: Vec<usize> = (0..CLASSES).filter(|i| mask & (1 << i) != 0).collect();
    let total: usize = members.iter().map(|&i| weights[i]).sum();
    let mut credit = [0i64; CLASSES];
    let mut sequence = Vec::with_capacity(total);
    for _ in 0..total {
        for &i in &members {
            credit[i] += weights[i] as i64;
        }
        let best = *members
            .iter()
            .max_by_key(|&&i| (credit[i], std::cmp::Reverse(i)))
            .expect("mask is non-empty");
        credit[best] -= total as i64;
        sequence.push(best as u8);
    }
    sequence.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    use proptest::prelude::*;

    fn scheduler(weights: [usize; 3], capacity: usize) -> Scheduler<(Priority, u64)> {
        Scheduler::new(SchedulerConfig {
            weights: PerClass(weights),
            capacities: PerClass([capacity; 3]),
        })
    }

    fn fill(s: &Scheduler<(Priority, u64)>, classes: &[Priority], n: u64) {
        for &p in classes {
            for i in 0..n {
                s.try_push(p, (p, i)).unwrap();
            }
        }
    }

    fn shares(items: &[(Priority, u64)]) -> [usize; 3] {
        let mut counts = [0; 3];
        for (p, _) in items {
            counts[p.index()] += 1;
        }
        counts
    }

    #[test]
    fn swrr_sequence_is_smooth_and_exact() {
        let seq = swrr_sequence(&[8, 4, 1], 0b111);
        assert_eq!(seq.len(), 13);
        assert_eq!(seq.iter().filter(|&&c| c == 0).count(), 8);
        assert_eq!(seq.iter().filter(|&&c| c == 1).count(), 4);
        assert_eq!(seq.iter().filter(|&&c| c == 2).count(), 1);
        // Smooth: high never runs more than twice in a row with these weights.
        assert!(seq
            .windows(3)
            .all(|w| !(w[0] == 0 && w[1] == 0 && w[2] == 0)));
        assert_eq!(&*swrr_sequence(&[8, 4, 1], 0b110), &[1, 1, 2, 1, 1]);
    }

    #[test]
    fn backlogged_shares_follow_weights_within_two_percent() {
        let s = scheduler([8, 4, 1], 100_000);
        fill(&s, &Priority::ALL, 100_000);
        let mut out = Vec::new();
        // Odd batch sizes so the shares do not depend on batches aligning with the period.
        while out.len() < 130_000 {
            s.pop_batch(97, &mut out);
        }
        out.truncate(130_000);
        let counts = shares(&out);
        let expected = [80_000.0, 40_000.0, 10_000.0];
        for i in 0..3 {
            let err = (counts[i] as f64 - expected[i]).abs() / expected[i];
            assert!(err < 0.02, "class {i}: {counts:?}");
        }
    }

    #[test]
    fn fifo_within_a_class() {
        let s = scheduler([8, 4, 1], 1000);
        fill(&s, &Priority::ALL, 500);
        let mut out = Vec::new();
        while s.pop_batch(7, &mut out) > 0 {}
        for p in Priority::ALL {
            let seq: Vec<u64> = out.iter().filter(|(q, _)| *q == p).map(|x| x.1).collect();
            assert_eq!(seq, (0..500).collect::<Vec<_>>());
        }
    }

    #[test]
    fn empty_class_costs_the_others_nothing() {
        let s = scheduler([8, 4, 1], 10_000);
        fill(&s, &[Priority::Medium, Priority::Low], 5_000);
        let mut out = Vec::new();
        // Every pop is served while work remains: no slot is wasted on empty high.
        assert_eq!(s.pop_batch(5_000, &mut out), 5_000);
        let counts = shares(&out);
        assert_eq!(counts[0], 0);
        assert_eq!(counts[1], 4_000);
        assert_eq!(counts[2], 1_000);
    }

    #[test]
    fn low_is_served_in_every_period_under_constant_high_pressure() {
        let s = scheduler([8, 4, 1], 64);
        let mut served_low_at = Vec::new();
        let mut out = Vec::new();
        for step in 0..10_000u64 {
            // Producers keep high and medium topped up; low has a standing backlog.
            for p in Priority::ALL {
                while s.try_push(p, (p, step)).is_ok() {}
            }
            out.clear();
            s.pop_batch(1, &mut out);
            if out[0].0 == Priority::Low {
                served_low_at.push(step);
            }
        }
        assert!(served_low_at.windows(2).all(|w| w[1] - w[0] <= 13));
        assert!(served_low_at.len() >= 10_000 / 13);
    }

    #[test]
    fn full_class_hands_the_item_back_and_closed_refuses() {
        let s = scheduler([1, 1, 1], 2);
        s.try_push(Priority::Low, (Priority::Low, 1)).unwrap();
        s.try_push(Priority::Low, (Priority::Low, 2)).unwrap();
        assert_eq!(
            s.try_push(Priority::Low, (Priority::Low, 3)),
            Err((Priority::Low, 3))
        );
        // Another class is unaffected by low being full.
        s.try_push(Priority::High, (Priority::High, 1)).unwrap();
        s.close();
        assert!(s.try_push(Priority::High, (Priority::High, 2)).is_err());
        // Closing keeps what was queued.
        let mut out = Vec::new();
        assert_eq!(s.pop_batch(10, &mut out), 3);
    }

    #[test]
    fn overload_sheds_low_before_high() {
        let s: Scheduler<u64> = Scheduler::new(SchedulerConfig::default());
        let mut shed = [0usize; 3];
        let mut out = Vec::new();
        // Offer every class the same rate, 2x what the consumer takes.
        for round in 0..20_000u64 {
            for p in Priority::ALL {
                for _ in 0..2 {
                    if s.try_push(p, round).is_err() {
                        shed[p.index()] += 1;
                    }
                }
            }
            out.clear();
            s.pop_batch(3, &mut out);
        }
        assert!(shed[2] > 0, "{shed:?}");
        assert!(shed[2] > shed[1] && shed[1] >= shed[0], "{shed:?}");
    }

    #[tokio::test]
    async fn wait_for_work_wakes_on_push_and_on_close() {
        let s = Arc::new(scheduler([1, 1, 1], 8));
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                s.wait_for_work().await;
                s.pop()
            })
        };
        tokio::task::yield_now().await;
        s.try_push(Priority::Medium, (Priority::Medium, 7)).unwrap();
        assert_eq!(waiter.await.unwrap(), Some((Priority::Medium, 7)));

        let closer = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for_work().await })
        };
        tokio::task::yield_now().await;
        s.close();
        closer.await.unwrap();
    }

    /// Producers skip the wake-up while nobody waits; a consumer that parks between a
    /// producer's push and its check must still be woken. Many park/wake cycles, no hang.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parked_consumer_is_never_missed() {
        let s = Arc::new(scheduler([8, 4, 1], 1024));
        let total = 20_000u64;
        let producer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..total {
                    let p = Priority::ALL[(i % 3) as usize];
                    while s.try_push(p, (p, i)).is_err() {
                        std::thread::yield_now();
                    }
                    if i % 64 == 0 {
                        // Let the consumer drain and park.
                        std::thread::sleep(std::time::Duration::from_micros(50));
                    }
                }
            })
        };
        let consumer = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut got = 0u64;
                let mut out = Vec::new();
                while got < total {
                    s.wait_for_work().await;
                    out.clear();
                    got += s.pop_batch(16, &mut out) as u64;
                }
                got
            })
        };
        let got = tokio::time::timeout(std::time::Duration::from_secs(30), consumer)
            .await
            .expect("consumer was never woken for pending work")
            .unwrap();
        producer.join().unwrap();
        assert_eq!(got, total);
        assert_eq!(s.waiters.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn concurrent_producers_and_consumers_lose_and_duplicate_nothing() {
        let s = Arc::new(scheduler([8, 4, 1], 256));
        let producers = 4u64;
        let per_producer = 50_000u64;
        let done = Arc::new(AtomicBool::new(false));
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let s = s.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let n = s.pop_batch(31, &mut got);
                        if n == 0 {
                            if done.load(Ordering::Acquire) && s.is_empty() {
                                return got;
                            }
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let handles: Vec<_> = (0..producers)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..per_producer {
                        let p = Priority::ALL[(i % 3) as usize];
                        let mut item = (p, t * per_producer + i);
                        while let Err(back) = s.try_push(p, item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        done.store(true, Ordering::Release);
        let mut seen = HashSet::new();
        for c in consumers {
            for (_, id) in c.join().unwrap() {
                assert!(seen.insert(id), "duplicate {id}");
            }
        }
        assert_eq!(seen.len() as u64, producers * per_producer);
    }

    proptest! {
        /// Any interleaving of pushes and batch pops: every accepted item comes out exactly
        /// once, FIFO within its class, and rejections happen only when the class is full.
        #[test]
        fn pushes_and_pops_conserve_items(
            weights in prop::array::uniform3(1usize..20),
            ops in prop::collection::vec((0usize..3, 0usize..6), 1..400),
        ) {
            let s: Scheduler<(usize, u32)> = Scheduler::new(SchedulerConfig {
                weights: PerClass(weights),
                capacities: PerClass([8, 8, 8]),
            });
            let mut next = [0u32; 3];
            let mut model: [std::collections::VecDeque<u32>; 3] = Default::default();
            for (class, pops) in ops {
                let p = Priority::ALL[class];
                let full = s.len(p) == 8;
                let pushed = s.try_push(p, (class, next[class])).is_ok();
                prop_assert_eq!(pushed, !full);
                if pushed {
                    model[class].push_back(next[class]);
                    next[class] += 1;
                }
                let mut out = Vec::new();
                let available: usize = model.iter().map(|q| q.len()).sum();
                prop_assert_eq!(s.pop_batch(pops, &mut out), pops.min(available));
                for (c, v) in out {
                    prop_assert_eq!(model[c].pop_front(), Some(v));
                }
            }
            let mut rest = Vec::new();
            while s.pop_batch(5, &mut rest) > 0 {}
            for (c, v) in rest {
                prop_assert_eq!(model[c].pop_front(), Some(v));
            }
            prop_assert!(model.iter().all(|q| q.is_empty()));
        }

        /// For any weights, with every class backlogged, one period serves each class
        /// exactly its weight.
        #[test]
        fn one_period_serves_each_class_its_weight(weights in prop::array::uniform3(1usize..50)) {
            let total: usize = weights.iter().sum();
            let s: Scheduler<usize> = Scheduler::new(SchedulerConfig {
                weights: PerClass(weights),
                capacities: PerClass([total; 3]),
            });
            for p in Priority::ALL {
                for _ in 0..total {
                    s.try_push(p, p.index()).unwrap();
                }
            }
            let mut out = Vec::new();
            s.pop_batch(total, &mut out);
            let mut counts = [0; 3];
            for c in out {
                counts[c] += 1;
            }
            prop_assert_eq!(counts, weights);
        }
    }
}
