//! Closing a batch, once for every consumer that writes in batches (the recorder's
//! consumers, the outcome-event batcher, the ingress's accepted-status writer): a batch
//! starts with its first item and closes at whichever limit comes first, items, bytes, or
//! a linger that starts with the first item.

use std::future::Future;
use std::time::Duration;

/// What closes a batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items.
    pub max: usize,
    /// Most bytes, as the caller weighs an item.
    pub max_bytes: usize,
    /// How long the batch waits for more after its first item.
    pub linger: Duration,
}

/// Where a batch's items come from; `None` once the source has ended (or stops).
pub trait Source {
    type Item;
    fn next(&mut self) -> impl Future<Output = Option<Self::Item>> + Send;
}

/// The batch that starts with `first`: what `source` yields until a limit is reached. An
/// item that is ready is taken at once, even with a zero linger.
pub async fn collect<S: Source>(
    first: S::Item,
    source: &mut S,
    limits: Limits,
    weigh: impl Fn(&S::Item) -> usize,
) -> Vec<S::Item> {
    let deadline = tokio::time::Instant::now() + limits.linger;
    let mut bytes = weigh(&first);
    let mut batch = vec![first];
    while batch.len() < limits.max && bytes < limits.max_bytes {
        // `timeout_at` polls the source before it looks at the clock.
        match tokio::time::timeout_at(deadline, source.next()).await {
            Ok(Some(item)) => {
                bytes += weigh(&item);
                batch.push(item);
            }
            Ok(None) | Err(_) => break,
        }
    }
    batch
}

impl<T: Send> Source for tokio::sync::mpsc::Receiver<T> {
    type Item = T;
    fn next(&mut self) -> impl Future<Output = Option<T>> + Send {
        self.recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, max_bytes: usize, linger_ms: u64) -> Limits {
        Limits {
            max,
            max_bytes,
            linger: Duration::from_millis(linger_ms),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_at_whichever_limit_comes_first() {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<usize>(16);
        for n in 1..=10 {
            sender.send(n).await.unwrap();
        }
        // Items first: four of the ten that are ready.
        let first = receiver.recv().await.unwrap();
        let batch = collect(first, &mut receiver, limits(4, usize::MAX, 50), |_| 0).await;
        assert_eq!(batch, [1, 2, 3, 4]);
        // Bytes next: 5 + 6 = 11, then 7 reaches 18 ≥ 12.
        let first = receiver.recv().await.unwrap();
        let batch = collect(first, &mut receiver, limits(100, 12, 50), |n| *n).await;
        assert_eq!(batch, [5, 6, 7]);
        // A zero linger still takes what is ready.
        let first = receiver.recv().await.unwrap();
        let batch = collect(first, &mut receiver, limits(100, usize::MAX, 0), |_| 0).await;
        assert_eq!(batch, [8, 9, 10]);

        // The linger starts with the first item: one 60 ms after it does not join.
        let late = tokio::spawn(async move {
            sender.send(11).await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
            sender.send(12).await.unwrap();
        });
        let first = receiver.recv().await.unwrap();
        let started = tokio::time::Instant::now();
        let batch = collect(first, &mut receiver, limits(100, usize::MAX, 50), |_| 0).await;
        assert_eq!(batch, [11]);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        late.await.unwrap();
        // A source that ends (the sender is gone) closes the batch without the linger.
        let first = receiver.recv().await.unwrap();
        let started = tokio::time::Instant::now();
        let batch = collect(first, &mut receiver, limits(100, usize::MAX, 50), |_| 0).await;
        assert_eq!(batch, [12]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
