//! Admission control: which priorities the door takes while Herald is overloaded.
//!
//! The scheduler orders only what waits inside it. Under CPU overload nothing waits there:
//! requests wait in sockets, in hyper's connection tasks and for the CPU, and high suffers
//! like low. So the door watches delays and refuses the lowest class first, before that
//! class costs a parse, a publish or a delivery.
//!
//! **Signals**, judged every `interval`. Mostly CoDel's standing-queue test, the *minimum*
//! of a delay over the interval: if even the fastest sample waited longer than its
//! target, a queue is standing, not passing.
//! - Door (target `target`, 5 ms): the larger of
//!   - the minimum publish sojourn: from a notification entering the scheduler to its
//!     PubAck (the scheduler, the publisher, NATS);
//!   - the median run-queue delay: every 10 ms a probe task yields and times how long the
//!     ingress runtime takes to poll it again, which is how long a ready connection task
//!     waits for a thread: the queueing in hyper that the publish sojourn does not see.
//!     Its median, not its minimum: ten samples of a saturated runtime include idle
//!     moments, and the minimum let the CPU run full while high's requests queued. Not its
//!     mean either: one stall of 60 ms among ten samples is a hiccup, not a queue.
//!
//!   The door counts as overloaded only once its delay has stood over the target for
//!   [`DOOR_PERSIST`] intervals in a row: a store's checkpoint or a disk flush far below
//!   capacity stalls publishes for an interval or so, and refusing work does not cure it.
//! - Pipeline (target `backlog_target`, 1 s; only where delivery runs in the door's
//!   process, i.e. `dispatcher run`): per class, how long after acceptance its first
//!   delivery attempts start. A class counts only while it is admitted at all, so a backlog
//!   left over from before it was shed cannot shed the classes above it; high's backlog
//!   counts always and sheds the classes below.
//!
//! **Law** (AIMD over an admitted fraction per class, high never shed here):
//! - overloaded (either signal): the lowest class still admitted loses a quarter of its
//!   fraction (below 1/64: none). Medium is cut only once low is fully shed.
//! - calm: the highest class not fully admitted gains 1/16. Low recovers only once medium
//!   is fully back.
//!
//! With a 100 ms interval, low goes from all to nothing in about 1.5 s of overload and
//! back in 1.6 s. High is refused only by its own queue bound (`queue_full`), that is when
//! high alone exceeds capacity.
//!
//! **Admission** of a fraction `f` is deterministic: the n-th arrival is admitted when
//! `floor((n+1)·f) > floor(n·f)`, so admitted requests are spread evenly (no bursts of
//! refusals).
//!
//! **Fairness between tenants.** While a class is partly admitted, its fraction is a
//! budget: `f` times what the class was offered in the last interval, split max-min fair
//! between the tenants that offered it (water-filling: a tenant offering less than an equal
//! share is admitted in full, and what it leaves is split between the others). Each tenant
//! is then admitted at its own fraction, by the even spread over its own arrivals. So a
//! tenant flooding low takes only what the others leave, and a tenant sending little is
//! not refused because another floods. A tenant first seen in an interval is admitted at
//! the class's fraction until the next adjustment knows its rate; the split is kept while
//! the class is wholly admitted, for the next time it is not. Arrivals are counted per
//! tenant only while the class is partly admitted: a calm door pays nothing for it. The
//! split is per `serve` process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::model::Priority;

/// A whole fraction: everything admitted.
const ONE: u32 = 1 << 16;
/// Below this fraction (1/64) a class is shed entirely.
const FLOOR: u32 = ONE / 64;
/// Additive increase per calm interval (1/16).
const STEP: u32 = ONE / 16;
/// No delay sample in this interval.
const NO_SAMPLE: u64 = u64::MAX;
/// Intervals in a row the door's delay must stand over its target to count as overload.
pub const DOOR_PERSIST: u32 = 2;

/// The controller's settings.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Off: every class is always admitted (queue bounds still apply).
    pub enabled: bool,
    /// Standing door delay above which the door is overloaded.
    pub target: Duration,
    /// Standing delivery backlog (age of first attempts) above which the pipeline is
    /// overloaded.
    pub backlog_target: Duration,
    /// How often the fractions are adjusted (and the window of the minimum).
    pub interval: Duration,
    /// How long a request refused as `overloaded` waits for its 429: a flood that resends
    /// at once is paced to one request per hold per connection.
    pub refusal_hold: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            enabled: true,
            target: Duration::from_millis(5),
            backlog_target: Duration::from_secs(1),
            interval: Duration::from_millis(100),
            refusal_hold: Duration::from_millis(100),
        }
    }
}

/// The door's admission state, shared by the request handlers (read), the publisher
/// (delay samples) and, in `dispatcher run`, the background roles (whether to yield).
pub struct Admission {
    config: AdmissionConfig,
    /// Admitted fraction per class, in 1/65536.
    admitted: [AtomicU32; 3],
    /// Arrivals per class while partly admitted, for the even spread.
    arrivals: [AtomicU64; 3],
    /// Minimum publish sojourn of this interval, µs.
    publish_min_us: AtomicU64,
    /// The median run-queue delay of this interval, µs ([`NO_SAMPLE`] until one).
    lag_us: AtomicU64,
    /// Minimum age of first delivery attempts of this interval per class, µs.
    backlog_min_us: [AtomicU64; 3],
    /// The door itself was overloaded in the last interval (not only the pipeline): only
    /// then does background work yield, since a pipeline that is behind must work.
    door_overloaded: AtomicBool,
    /// Intervals in a row the door's delay stood over its target.
    door_streak: AtomicU32,
    /// Per class, the tenants seen while it was partly admitted.
    tenants: [RwLock<HashMap<Uuid, Arc<TenantShare>>>; 3],
}

/// One tenant's share of a partly admitted class.
struct TenantShare {
    /// Arrivals in this interval.
    offered: AtomicU64,
    /// Arrivals ever, for the even spread.
    arrivals: AtomicU64,
    /// Its admitted fraction, in 1/65536; [`UNSET`] until an adjustment has set it.
    admitted: AtomicU32,
}

/// A tenant's fraction not computed yet: the class's applies.
const UNSET: u32 = u32::MAX;

/// Whether the n-th arrival (0-based) is admitted at `fraction` (in 1/65536): the even
/// spread.
fn spread(n: u64, fraction: u32) -> bool {
    let f = u64::from(fraction);
    ((n + 1) * f) >> 16 > (n * f) >> 16
}

/// Max-min fair split of `budget` between `offers`: each gets what it offers or the level
/// the budget fills to, whichever is less. Returns that level (`f64::INFINITY` when every
/// offer fits).
fn water_level(offers: &mut [f64], budget: f64) -> f64 {
    offers.sort_unstable_by(f64::total_cmp);
    let mut left = budget;
    for (i, offer) in offers.iter().enumerate() {
        let share = left / (offers.len() - i) as f64;
        if *offer > share {
            return share;
        }
        left -= offer;
    }
    f64::INFINITY
}

/// How a request fared at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit,
    /// Refused: its class is being shed.
    Shed,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Admission {
            config,
            admitted: std::array::from_fn(|_| AtomicU32::new(ONE)),
            arrivals: std::array::from_fn(|_| AtomicU64::new(0)),
            publish_min_us: AtomicU64::new(NO_SAMPLE),
            lag_us: AtomicU64::new(NO_SAMPLE),
            backlog_min_us: std::array::from_fn(|_| AtomicU64::new(NO_SAMPLE)),
            door_overloaded: AtomicBool::new(false),
            door_streak: AtomicU32::new(0),
            tenants: Default::default(),
        }
    }

    /// Whether a request of `tenant` at `priority` is admitted now. Cheap: one load while a
    /// class is wholly admitted or shed; while it is partly, a shared-lock lookup of the
    /// tenant and two `fetch_add`s.
    pub fn admit(&self, tenant: Uuid, priority: Priority) -> Decision {
        let c = priority.index();
        let fraction = self.admitted[c].load(Ordering::Relaxed);
        if fraction >= ONE {
            return Decision::Admit;
        }
        if fraction == 0 {
            return Decision::Shed;
        }
        let share = self.share(c, tenant);
        share.offered.fetch_add(1, Ordering::Relaxed);
        let (n, fraction) = match share.admitted.load(Ordering::Relaxed) {
            UNSET => (self.arrivals[c].fetch_add(1, Ordering::Relaxed), fraction),
            own => (share.arrivals.fetch_add(1, Ordering::Relaxed), own),
        };
        if spread(n, fraction) {
            Decision::Admit
        } else {
            Decision::Shed
        }
    }

    fn share(&self, class: usize, tenant: Uuid) -> Arc<TenantShare> {
        if let Some(share) = self.tenants[class]
            .read()
            .expect("shares lock")
            .get(&tenant)
        {
            return share.clone();
        }
        let mut shares = self.tenants[class].write().expect("shares lock");
        shares
            .entry(tenant)
            .or_insert_with(|| {
                Arc::new(TenantShare {
                    offered: AtomicU64::new(0),
                    arrivals: AtomicU64::new(0),
                    admitted: AtomicU32::new(UNSET),
                })
            })
            .clone()
    }

    /// Splits each partly admitted class's budget between its tenants (max-min fair). A
    /// class wholly admitted or shed keeps the last split: when shedding starts again, a
    /// small tenant is not refused for an interval at the class's fraction, nor a flood let
    /// in at it, while their rates are counted anew.
    fn share_out(&self) {
        for (c, tenants) in self.tenants.iter().enumerate() {
            let fraction = self.admitted[c].load(Ordering::Relaxed);
            if fraction >= ONE || fraction == 0 {
                continue;
            }
            let mut shares = tenants.write().expect("shares lock");
            // Nothing was counted: the class was wholly admitted (or shed) in the interval
            // that just ended, and the split it had before is the best guess.
            if shares
                .values()
                .all(|s| s.offered.load(Ordering::Relaxed) == 0)
            {
                continue;
            }
            // A tenant that offered nothing this interval is forgotten.
            shares.retain(|_, s| s.offered.load(Ordering::Relaxed) > 0);
            let offers: Vec<f64> = shares
                .values()
                .map(|s| s.offered.swap(0, Ordering::Relaxed) as f64)
                .collect();
            let budget = offers.iter().sum::<f64>() * f64::from(fraction) / f64::from(ONE);
            let level = water_level(&mut offers.clone(), budget);
            for (share, offer) in shares.values().zip(offers) {
                let own = if offer <= level {
                    ONE
                } else {
                    ((level / offer) * f64::from(ONE)) as u32
                };
                share.admitted.store(own.min(ONE), Ordering::Relaxed);
            }
        }
    }

    /// Whether `priority` is being shed at all.
    pub fn shedding(&self, priority: Priority) -> bool {
        self.admitted[priority.index()].load(Ordering::Relaxed) < ONE
    }

    /// Whether background work of `priority` should yield the CPU: the door is overloaded
    /// and sheds that class. A pipeline that is merely behind keeps working.
    pub fn yield_for(&self, priority: Priority) -> bool {
        self.door_overloaded.load(Ordering::Relaxed) && self.shedding(priority)
    }

    /// The admitted fraction of a class, 0.0 to 1.0.
    pub fn fraction(&self, priority: Priority) -> f64 {
        f64::from(self.admitted[priority.index()].load(Ordering::Relaxed)) / f64::from(ONE)
    }

    /// A publish sojourn (scheduler entry to PubAck).
    pub fn publish_delay(&self, delay: Duration) {
        self.publish_min_us
            .fetch_min(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// The interval's median run-queue delay (the probe in [`Admission::run`]).
    fn runtime_lag(&self, lag: Duration) {
        self.lag_us.store(lag.as_micros() as u64, Ordering::Relaxed);
    }

    /// How long after its acceptance a first delivery attempt of `priority` starts.
    pub fn backlog_age(&self, priority: Priority, age: Duration) {
        self.backlog_min_us[priority.index()].fetch_min(age.as_micros() as u64, Ordering::Relaxed);
    }

    /// Closes the interval: takes its minimum delays and adjusts the fractions. Returns the
    /// standing delays it judged by: the door's and the pipeline's.
    pub fn adjust(&self) -> Standing {
        let publish = self.publish_min_us.swap(NO_SAMPLE, Ordering::Relaxed);
        let lag = self.lag_us.swap(NO_SAMPLE, Ordering::Relaxed);
        // The worse of the two standing delays; no sample of either: no evidence.
        let door = worst([publish, lag]);
        // Classes shed entirely do not count: their backlog is what is left from before.
        let backlog = worst(std::array::from_fn::<_, 3, _>(|c| {
            let min = self.backlog_min_us[c].swap(NO_SAMPLE, Ordering::Relaxed);
            if self.admitted[c].load(Ordering::Relaxed) > 0 {
                min
            } else {
                NO_SAMPLE
            }
        }));
        let standing = Standing { door, backlog };
        if !self.config.enabled {
            return standing;
        }

        let door_over = door.is_some_and(|d| d > self.config.target);
        let streak = if door_over {
            self.door_streak.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.door_streak.store(0, Ordering::Relaxed);
            0
        };
        let door_overloaded = streak >= DOOR_PERSIST;
        self.door_overloaded
            .store(door_overloaded, Ordering::Relaxed);
        let overloaded = door_overloaded || backlog.is_some_and(|d| d > self.config.backlog_target);
        let [_, medium, low] = &self.admitted;
        if overloaded {
            // Lowest class still admitted gives up a quarter.
            for class in [low, medium] {
                let f = class.load(Ordering::Relaxed);
                if f > 0 {
                    let cut = f - f / 4;
                    class.store(if cut < FLOOR { 0 } else { cut }, Ordering::Relaxed);
                    break;
                }
            }
        } else if !door_over {
            // Highest class not wholly admitted gets some back (not in a stall that has
            // not stood long enough to count: it is no evidence of calm either).
            for class in [medium, low] {
                let f = class.load(Ordering::Relaxed);
                if f < ONE {
                    class.store((f + STEP).min(ONE), Ordering::Relaxed);
                    break;
                }
            }
        }
        // The budget of the fractions just set, split by the arrivals of the interval.
        self.share_out();
        standing
    }

    /// Runs the controller until `stop`: a run-queue probe every 10 ms and one adjustment
    /// per interval, exported to `metrics`.
    pub async fn run(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        const PROBE: Duration = Duration::from_millis(10);
        let mut next_adjust = tokio::time::Instant::now() + self.config.interval;
        let mut lags = Vec::with_capacity(32);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROBE) => {}
            }
            // A yielded task goes to the back of the runtime's queue: the time until it
            // runs again is what a connection task woken now would wait.
            let yielded = std::time::Instant::now();
            tokio::task::yield_now().await;
            lags.push(yielded.elapsed());
            let now = tokio::time::Instant::now();
            if now >= next_adjust {
                next_adjust = now + self.config.interval;
                lags.sort_unstable();
                if let Some(median) = lags.get(lags.len() / 2) {
                    self.runtime_lag(*median);
                }
                lags.clear();
                let standing = self.adjust();
                let seconds = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
                metrics.admission(
                    seconds(standing.door),
                    seconds(standing.backlog),
                    Priority::ALL.map(|p| self.fraction(p)),
                );
            }
        }
    }
}

/// The standing delays of one interval (`None`: no sample).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub door: Option<Duration>,
    pub backlog: Option<Duration>,
}

/// The largest of an interval's delays in µs, [`NO_SAMPLE`] meaning none.
fn worst<const N: usize>(minima: [u64; N]) -> Option<Duration> {
    minima
        .into_iter()
        .filter(|&us| us != NO_SAMPLE)
        .max()
        .map(Duration::from_micros)
}

/// How background work (delivery, the recorder) in the door's process yields to it: while
/// the door is overloaded and sheds a class, that class's background work runs in short
/// bursts with pauses between, so the CPU goes to the door first, and nothing stops
/// entirely (low is never starved, the recorder's lag stays bounded). Outside `dispatcher
/// run` there is no door in the process and nothing waits (`record` alone runs niced).
#[derive(Clone, Default)]
pub struct Yielding(Option<Arc<Admission>>);

impl Yielding {
    /// Pause between bursts while shedding.
    pub const PAUSE: Duration = Duration::from_millis(250);

    /// Yields to `admission`.
    pub fn to(admission: Arc<Admission>) -> Self {
        Yielding(Some(admission))
    }

    /// A first delivery attempt of `priority` starts `age` after it was accepted.
    pub fn backlog_age(&self, priority: Priority, age: Duration) {
        if let Some(admission) = &self.0 {
            admission.backlog_age(priority, age);
        }
    }

    /// Sleeps [`Yielding::PAUSE`] if work of `priority` should yield to the door now.
    pub async fn pause(&self, priority: Priority) {
        if self.0.as_ref().is_some_and(|a| a.yield_for(priority)) {
            tokio::time::sleep(Self::PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn admission() -> Admission {
        Admission::new(AdmissionConfig::default())
    }

    /// One interval whose standing publish delay is `delay_ms`.
    fn interval(a: &Admission, delay_ms: u64) {
        a.publish_delay(Duration::from_millis(delay_ms));
        a.runtime_lag(Duration::from_micros(100));
        a.adjust();
    }

    fn admitted_of(a: &Admission, priority: Priority, n: usize) -> usize {
        (0..n)
            .filter(|_| a.admit(Uuid::nil(), priority) == Decision::Admit)
            .count()
    }

    #[test]
    fn the_water_level_gives_small_offers_in_full_and_splits_the_rest() {
        assert_eq!(water_level(&mut [10.0, 1000.0], 500.0), 490.0);
        assert_eq!(water_level(&mut [100.0, 100.0, 1000.0], 600.0), 400.0);
        assert_eq!(water_level(&mut [300.0, 300.0], 400.0), 200.0);
        assert_eq!(water_level(&mut [1.0, 2.0], 10.0), f64::INFINITY);
    }

    #[test]
    fn a_flooding_tenant_takes_only_what_a_small_one_leaves() {
        let a = admission();
        let (flood, small) = (Uuid::now_v7(), Uuid::now_v7());
        // Low at a tenth: the class's budget is a tenth of what it is offered.
        a.admitted[Priority::Low.index()].store(ONE / 10, Ordering::Relaxed);
        let mut admitted = HashMap::<Uuid, usize>::new();
        for round in 0..5 {
            let mut took = HashMap::<Uuid, usize>::new();
            // Per interval the flood offers 2,000, the small tenant 20, interleaved.
            for i in 0..2_020 {
                let tenant = if i % 101 == 100 { small } else { flood };
                if a.admit(tenant, Priority::Low) == Decision::Admit {
                    *took.entry(tenant).or_default() += 1;
                }
            }
            a.share_out();
            if round > 0 {
                admitted = took;
            }
        }
        // The budget is 202 a round: the small tenant's 20 in full, the flood the rest.
        assert_eq!(admitted[&small], 20, "{admitted:?}");
        let flood_took = admitted[&flood] as f64;
        assert!((181.0..=183.0).contains(&flood_took), "{admitted:?}");

        // A calm spell, then shedding again: the split is remembered, so the small tenant
        // is admitted in full from the first interval on, and the flood is held at once.
        // As `adjust` does it: the split after the calm interval, and again once the class
        // is cut, before any arrival of the new interval is counted.
        a.admitted[Priority::Low.index()].store(ONE, Ordering::Relaxed);
        a.share_out();
        a.admitted[Priority::Low.index()].store(ONE / 10, Ordering::Relaxed);
        a.share_out();
        let (mut small_took, mut flood_took) = (0, 0);
        for i in 0..2_020 {
            let tenant = if i % 101 == 100 { small } else { flood };
            if a.admit(tenant, Priority::Low) == Decision::Admit {
                if tenant == small {
                    small_took += 1;
                } else {
                    flood_took += 1;
                }
            }
        }
        assert_eq!(small_took, 20);
        assert!(flood_took <= 183, "{flood_took}");
    }

    #[test]
    fn calm_admits_everything() {
        let a = admission();
        for _ in 0..50 {
            interval(&a, 1);
        }
        for p in Priority::ALL {
            assert_eq!(admitted_of(&a, p, 1000), 1000);
        }
    }

    #[test]
    fn overload_sheds_low_wholly_before_medium_and_never_high() {
        let a = admission();
        let mut low_gone_at = None;
        let mut medium_cut_at = None;
        for i in 0..60 {
            interval(&a, 50);
            if low_gone_at.is_none() && a.fraction(Priority::Low) == 0.0 {
                low_gone_at = Some(i);
            }
            if medium_cut_at.is_none() && a.fraction(Priority::Medium) < 1.0 {
                medium_cut_at = Some(i);
                assert_eq!(
                    a.fraction(Priority::Low),
                    0.0,
                    "medium cut while low admitted"
                );
            }
        }
        assert!(low_gone_at.unwrap() <= 20, "{low_gone_at:?}");
        assert!(medium_cut_at.unwrap() > low_gone_at.unwrap());
        assert_eq!(a.fraction(Priority::Medium), 0.0);
        assert_eq!(admitted_of(&a, Priority::High, 1000), 1000);
        assert_eq!(admitted_of(&a, Priority::Low, 1000), 0);
    }

    #[test]
    fn recovery_restores_medium_before_low() {
        let a = admission();
        for _ in 0..60 {
            interval(&a, 50);
        }
        let mut medium_full_at = None;
        for i in 0..60 {
            interval(&a, 1);
            if a.fraction(Priority::Low) > 0.0 {
                let full = medium_full_at.expect("medium back before low");
                assert!(i > full);
            }
            if medium_full_at.is_none() && a.fraction(Priority::Medium) == 1.0 {
                medium_full_at = Some(i);
            }
        }
        assert_eq!(a.fraction(Priority::Low), 1.0);
    }

    #[test]
    fn the_runtime_lag_alone_is_evidence_of_overload() {
        let a = admission();
        for _ in 0..DOOR_PERSIST {
            a.publish_delay(Duration::from_micros(300));
            a.runtime_lag(Duration::from_millis(40));
            assert_eq!(a.adjust().door, Some(Duration::from_millis(40)));
        }
        assert!(a.shedding(Priority::Low));
        assert!(
            a.yield_for(Priority::Low),
            "background yields to an overloaded door"
        );
        assert!(!a.yield_for(Priority::High));
    }

    #[test]
    fn a_standing_backlog_sheds_and_a_shed_classs_leftover_does_not_cut_the_next() {
        let a = admission();
        // Low's deliveries stay 3 s old. Low is cut to nothing; while its leftover backlog
        // drains, low is let in a little at a time and cut again, but medium is never cut
        // for it.
        let mut reached_nothing = false;
        for _ in 0..40 {
            a.backlog_age(Priority::Low, Duration::from_secs(3));
            a.backlog_age(Priority::Medium, Duration::from_millis(20));
            interval(&a, 1);
            reached_nothing |= a.fraction(Priority::Low) == 0.0;
            assert_eq!(a.fraction(Priority::Medium), 1.0);
        }
        assert!(reached_nothing);
        assert!(a.fraction(Priority::Low) <= 1.0 / 16.0);
        // A pipeline that is behind keeps working: nothing yields for it.
        assert!(!a.yield_for(Priority::Low));
        // High's backlog sheds the classes below it.
        let a = admission();
        a.backlog_age(Priority::High, Duration::from_secs(2));
        assert_eq!(a.adjust().backlog, Some(Duration::from_secs(2)));
        assert!(a.shedding(Priority::Low));
    }

    #[test]
    fn a_stall_of_one_interval_is_not_overload_but_one_that_stands_is() {
        let a = admission();
        // Calm, one stalled interval, calm again: nothing is refused.
        for delay in [1, 1, 80, 1, 1, 120, 1] {
            interval(&a, delay);
            assert!(
                !a.shedding(Priority::Low),
                "shed after a {delay} ms interval"
            );
        }
        interval(&a, 80);
        interval(&a, 80);
        assert!(
            a.shedding(Priority::Low),
            "a delay standing two intervals sheds"
        );
    }

    #[test]
    fn a_single_fast_sample_means_no_standing_queue() {
        let a = admission();
        for delay in [80, 60, 2, 90] {
            a.publish_delay(Duration::from_millis(delay));
        }
        a.adjust();
        assert!(!a.shedding(Priority::Low));
    }

    #[test]
    fn disabled_never_sheds() {
        let a = Admission::new(AdmissionConfig {
            enabled: false,
            ..AdmissionConfig::default()
        });
        for _ in 0..50 {
            interval(&a, 500);
        }
        assert_eq!(admitted_of(&a, Priority::Low, 100), 100);
    }

    proptest! {
        /// Any admitted fraction is kept to within one request over any run of arrivals.
        #[test]
        fn admission_follows_the_fraction(fraction in 1u32..ONE, n in 1usize..5000) {
            let a = admission();
            a.admitted[Priority::Low.index()].store(fraction, Ordering::Relaxed);
            let admitted = admitted_of(&a, Priority::Low, n) as f64;
            let expected = n as f64 * f64::from(fraction) / f64::from(ONE);
            prop_assert!((admitted - expected).abs() <= 1.0, "{admitted} vs {expected}");
        }

        /// Whatever the sequence of delays, high is always admitted, medium is shed only
        /// while low is shed entirely, and fractions stay within [0, 1].
        #[test]
        fn the_order_of_classes_holds(delays in proptest::collection::vec(0u64..40, 1..200)) {
            let a = admission();
            for d in delays {
                interval(&a, d);
                prop_assert_eq!(a.fraction(Priority::High), 1.0);
                let (m, l) = (a.fraction(Priority::Medium), a.fraction(Priority::Low));
                prop_assert!((0.0..=1.0).contains(&m) && (0.0..=1.0).contains(&l));
                prop_assert!(m == 1.0 || l == 0.0, "medium {} while low {}", m, l);
            }
        }
    }
}
