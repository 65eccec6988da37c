//! Scheduler throughput: N items pushed by 1, 2 or 4 producer threads and drained by one
//! consumer thread, for Herald's weighted scheduler and three baselines:
//!
//! - `array_queue`: one crossbeam `ArrayQueue`, no priorities at all (the floor cost);
//! - `mutex_heap`: `Mutex<BinaryHeap>` ordered by priority (strict, not weighted);
//! - `tokio_mpsc_biased`: three bounded tokio channels drained by a `biased` select
//!   (strict priority, the usual async idiom).
//!
//! `pop_batch` variants drain 64 at a time. Run: `cargo bench --bench scheduler`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use herald::model::Priority;
use herald::scheduler::{PerClass, Scheduler, SchedulerConfig};

const ITEMS: u64 = 60_000;
const CAPACITY: usize = 4096;
const PRODUCERS: [u64; 3] = [1, 2, 4];

/// Times `ITEMS` pushes spread over `producers` threads against one draining consumer.
fn run<Q: Send + Sync + 'static>(
    queue: Arc<Q>,
    producers: u64,
    push: fn(&Q, Priority, u64) -> bool,
    drain: fn(&Q, &mut Vec<u64>) -> usize,
) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..producers)
        .map(|t| {
            let queue = queue.clone();
            thread::spawn(move || {
                for i in (t..ITEMS).step_by(producers as usize) {
                    let p = Priority::ALL[(i % 3) as usize];
                    while !push(&queue, p, i) {
                        std::hint::spin_loop();
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let mut got = 0u64;
    let mut buf = Vec::with_capacity(64);
    while got < ITEMS {
        buf.clear();
        let n = drain(&queue, &mut buf);
        if n == 0 {
            thread::yield_now();
        }
        got += n as u64;
    }
    let elapsed = start.elapsed();
    for h in handles {
        h.join().unwrap();
    }
    elapsed
}

fn scheduler() -> Arc<Scheduler<u64>> {
    Arc::new(Scheduler::new(SchedulerConfig {
        weights: PerClass([8, 4, 1]),
        capacities: PerClass([CAPACITY; 3]),
    }))
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Ranked(Reverse<Priority>, Reverse<u64>);

fn mpsc_biased(producers: u64) -> Duration {
    use tokio::sync::mpsc;
    let channels: Vec<_> = (0..3).map(|_| mpsc::channel::<u64>(CAPACITY)).collect();
    let (senders, mut receivers): (Vec<_>, Vec<_>) = channels.into_iter().unzip();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let start = Instant::now();
    let handles: Vec<_> = (0..producers)
        .map(|t| {
            let senders = senders.clone();
            thread::spawn(move || {
                for i in (t..ITEMS).step_by(producers as usize) {
                    senders[(i % 3) as usize].blocking_send(i).unwrap();
                }
            })
        })
        .collect();
    drop(senders);
    let (mut low, mut medium, mut high) = (
        receivers.pop().unwrap(),
        receivers.pop().unwrap(),
        receivers.pop().unwrap(),
    );
    rt.block_on(async {
        let mut got = 0u64;
        while got < ITEMS {
            let item = tokio::select! {
                biased;
                Some(x) = high.recv() => x,
                Some(x) = medium.recv() => x,
                Some(x) = low.recv() => x,
            };
            std::hint::black_box(item);
            got += 1;
        }
    });
    let elapsed = start.elapsed();
    for h in handles {
        h.join().unwrap();
    }
    elapsed
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Registers one queue implementation at one producer count.
fn bench_queue<Q: Send + Sync + 'static>(
    group: &mut Group<'_>,
    name: &str,
    producers: u64,
    make: fn() -> Arc<Q>,
    push: fn(&Q, Priority, u64) -> bool,
    drain: fn(&Q, &mut Vec<u64>) -> usize,
) {
    group.bench_with_input(BenchmarkId::new(name, producers), &producers, |b, &p| {
        b.iter_custom(|iters| (0..iters).map(|_| run(make(), p, push, drain)).sum())
    });
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("push_pop");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for producers in PRODUCERS {
        bench_queue(
            &mut group,
            "herald_scheduler",
            producers,
            scheduler,
            |q, pr, i| q.try_push(pr, i).is_ok(),
            |q, out| q.pop().map(|x| out.push(x)).is_some() as usize,
        );
        bench_queue(
            &mut group,
            "herald_scheduler_pop_batch64",
            producers,
            scheduler,
            |q, pr, i| q.try_push(pr, i).is_ok(),
            |q, out| q.pop_batch(64, out),
        );
        bench_queue(
            &mut group,
            "array_queue",
            producers,
            || Arc::new(ArrayQueue::new(CAPACITY * 3)),
            |q, _, i| q.push(i).is_ok(),
            |q, out| q.pop().map(|x| out.push(x)).is_some() as usize,
        );
        bench_queue(
            &mut group,
            "mutex_heap",
            producers,
            || Arc::new(Mutex::new(BinaryHeap::with_capacity(CAPACITY * 3))),
            |q, pr, i| {
                let mut heap = q.lock().unwrap();
                if heap.len() >= CAPACITY * 3 {
                    return false;
                }
                heap.push(Ranked(Reverse(pr), Reverse(i)));
                true
            },
            |q, out| {
                let item = q.lock().unwrap().pop();
                item.map(|Ranked(_, Reverse(i))| out.push(i)).is_some() as usize
            },
        );
        group.bench_with_input(
            BenchmarkId::new("tokio_mpsc_biased", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| (0..iters).map(|_| mpsc_biased(p)).sum()),
        );
    }
    group.finish();
}

/// Single-threaded cost of one `pop_batch` call on a backlogged scheduler, by batch size.
fn pop_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("pop_batch_backlogged");
    for batch in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let s = scheduler();
            let mut out = Vec::with_capacity(batch);
            b.iter(|| {
                for i in 0..batch as u64 {
                    let _ = s.try_push(Priority::ALL[(i % 3) as usize], i);
                }
                out.clear();
                s.pop_batch(batch, &mut out)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, push_pop, pop_batch);
criterion_main!(benches);
