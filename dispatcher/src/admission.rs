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
//!   - the median run-queue delay: a probe task yields and times how long the ingress
//!     runtime takes to poll it again, which is how long a ready connection task waits for
//!     a thread: the queueing in hyper that the publish sojourn does not see. Its median,
//!     not its minimum: ten samples of a saturated runtime include idle moments, and the
//!     minimum let the CPU run full while high's requests queued. Not its mean either: one
//!     stall of 60 ms among ten samples is a hiccup, not a queue. The probe runs every
//!     10 ms while requests arrive. A door that had none for an interval, with no
//!     ceiling standing and no overload, parks the controller: it judges once a second
//!     and the first arrival wakes it at once (a wake-up costs an admitted request one
//!     atomic load), so an idle Herald is not woken ten times a second for a door
//!     nobody knocks on.
//!
//!   The door counts as overloaded only once its delay has stood over the target for
//!   [`DOOR_PERSIST`] intervals in a row: a store's checkpoint or a disk flush far below
//!   capacity stalls publishes for an interval or so, and refusing work does not cure it.
//! - Pipeline (target `backlog_target`, 1 s): per class, how long after acceptance its
//!   first delivery attempts start (only where delivery runs in the door's process, i.e.
//!   `dispatcher run`), or, for `serve` alone, the due backlog of its delivery consumer
//!   (messages stored and not yet handed to any worker; scheduled and held ones are
//!   handed out already, so they never count) divided by the class's admitted rate. A
//!   class counts only while it is admitted at all, so a backlog left over from before it
//!   was shed cannot shed the classes above it; high's backlog counts always and sheds the
//!   classes below.
//!
//! **Law**: a ceiling on the admitted rate of all classes together, in requests/s. There
//! is none until the door is first overloaded; then:
//! - overloaded (either signal): the *knee*, the mean rate admitted in the second before
//!   overload began, is taken as the capacity of the moment, and the ceiling is cut to
//!   three quarters of the mean rate admitted in the last second (not the last interval's
//!   alone: clients that pause offer in bursts), but never below `goodput_floor` of the
//!   *peak*, the highest knee since the ceiling was set. The knee is re-taken at each
//!   overload and may fall, so cuts can go as far as the delays say (high first); the
//!   peak only grows while a ceiling stands, because what passes under a ceiling is what
//!   it let through, not capacity, and a floor on a re-taken knee would ratchet down with
//!   it. (At 5bb8ec5 the knee itself only grew; a knee taken while a flood's first burst
//!   filled the queues then held the ceiling over capacity, and high's ingest p99 beside
//!   a 3x flood read 1.7 s.) After a cut the law waits [`DOOR_PERSIST`] intervals before it
//!   judges again, as long as a queue takes to drain.
//! - calm: the ceiling climbs back by a sixteenth of the knee an interval, but only up to
//!   `(1 - headroom)` of the knee: the headroom is capacity kept free, so that the queues
//!   high meets stay short. Above that it creeps, a hundredth of the headroom an interval
//!   (ten seconds to the knee), so a capacity that grew is found; it is cut again at the
//!   knee. A ceiling that everything offered has fitted under for a second is lifted.
//!   `headroom = 0` runs at the knee: goodput first.
//!
//! Under a ceiling high is always admitted; medium gets what high leaves; low what both
//! leave. High is refused only by its own queue bound (`queue_full`), when high alone
//! exceeds capacity.
//!
//! **Fairness between tenants.** A class's budget (its share of the ceiling) is split max-min
//! fair between the tenants that offered it in the last interval (water-filling: a tenant
//! offering less than an equal share is admitted in full, and what it leaves is split
//! between the others), and each tenant is held to its rate by a token bucket. So a tenant
//! flooding low takes only what the others leave, and a tenant sending little is not
//! refused because another floods. A tenant first seen in an interval gets the class's
//! budget until the next adjustment knows its rate; the split is kept while the class is
//! wholly admitted, for the next time it is not. Arrivals are counted per tenant only while
//! the class is partly admitted: a calm door pays one atomic add per request. The split is
//! per `serve` process.
//!
//! **Retry-After** is the tenant's own: the seconds its bucket takes to earn one request
//! (at least 1), and the bucket holds that many seconds of its rate. A client that pauses
//! for Retry-After after each refusal then gets its share in bursts and converges to it;
//! one that resends at once is refused each time its bucket is empty, at the same rate.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::model::Priority;

/// No delay sample in this interval.
const NO_SAMPLE: u64 = u64::MAX;
/// Intervals in a row the door's delay must stand over its target to count as overload,
/// and intervals the law waits after a cut before it judges again.
pub const DOOR_PERSIST: u32 = 2;
/// What a cut leaves of the rate admitted.
const CUT: f64 = 0.75;
/// Calm intervals with everything offered under the ceiling before it is lifted.
const LIFT_AFTER: u32 = 10;
/// Intervals of admitted rates kept, and over which the knee and a cut's base are the
/// mean (1 s at 100 ms).
const RECENT: usize = 10;
/// The least knee, requests/s: a door overloaded while almost nothing arrived (a stalled
/// store) must still climb back.
const MIN_KNEE: f64 = 64.0;

/// The controller's settings.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Off: every class is always admitted (queue bounds still apply).
    pub enabled: bool,
    /// Standing door delay above which the door is overloaded.
    pub target: Duration,
    /// Standing delivery backlog (age of first attempts, or due messages over the admitted
    /// rate) above which the pipeline is overloaded.
    pub backlog_target: Duration,
    /// How often the ceiling is adjusted (and the window of the minimum).
    pub interval: Duration,
    /// How long a request refused as `overloaded` waits for its 429: a flood that resends
    /// at once is paced to one request per hold per connection.
    pub refusal_hold: Duration,
    /// Share of the knee (the capacity measured when overload began) kept free while
    /// shedding: 0.0 admits up to the knee (goodput first), 0.2 keeps a fifth free.
    pub headroom: f64,
    /// Share of the knee a cut never goes below (0 to 1): the goodput promised while
    /// shedding, paid for in high's latency. 0: cut as far as the signals say.
    pub goodput_floor: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            enabled: true,
            target: Duration::from_millis(5),
            backlog_target: Duration::from_secs(1),
            interval: Duration::from_millis(100),
            refusal_hold: Duration::from_millis(100),
            headroom: 0.2,
            goodput_floor: 0.0,
        }
    }
}

/// A class's budget: everything, nothing, or a rate (requests/s) split between tenants.
/// Stored as `f64` bits: infinity is everything, zero nothing.
struct Budget(AtomicU64);

impl Budget {
    fn whole() -> Self {
        Budget(AtomicU64::new(f64::INFINITY.to_bits()))
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    fn set(&self, rate: f64) {
        self.0.store(rate.to_bits(), Ordering::Relaxed);
    }
}

/// The law's own state, touched once an interval.
#[derive(Debug, Default)]
struct Law {
    /// Admitted requests/s of all classes together; `None`: no limit.
    ceiling: Option<f64>,
    /// The rate admitted when overload last began.
    knee: f64,
    /// The highest knee since the ceiling was set: what `goodput_floor` is a share of.
    peak: f64,
    /// Overloaded in the last judged interval: the knee is taken only when overload begins.
    overloaded: bool,
    /// Intervals still to wait after a cut.
    hold: u32,
    /// Calm intervals in a row with everything offered under the ceiling.
    fitting: u32,
    /// The admitted rate of the last [`RECENT`] intervals, newest last.
    recent: VecDeque<f64>,
}

impl Law {
    /// The mean rate admitted over the last `intervals`: what the pipeline carried. Not
    /// the last interval's alone: clients that pause (for Retry-After, or held by
    /// refusals) offer in bursts, and one interval between bursts would take the knee,
    /// and with it the ceiling, towards nothing. Not the highest either: one burst's
    /// interval overstates capacity tenfold, and the ceiling then never binds.
    fn carried(&self, intervals: usize) -> f64 {
        let recent = self.recent.iter().rev().take(intervals);
        let n = recent.len().max(1) as f64;
        recent.sum::<f64>() / n
    }
}

/// The door's admission state, shared by the request handlers (read), the publisher
/// (delay samples) and, in `dispatcher run`, the background roles (whether to yield).
pub struct Admission {
    config: AdmissionConfig,
    /// Per class: what it may be admitted at.
    budget: [Budget; 3],
    /// Per class, arrivals of this interval.
    offered: [AtomicU64; 3],
    /// Per class, admissions of this interval while partly admitted (a wholly admitted
    /// class admits what it is offered).
    admitted: [AtomicU64; 3],
    /// Per class, the share admitted in the last interval, in 1/65536 (for metrics).
    admitted_share: [AtomicU32; 3],
    law: Mutex<Law>,
    /// Minimum publish sojourn of this interval, µs.
    publish_min_us: AtomicU64,
    /// The median run-queue delay of this interval, µs ([`NO_SAMPLE`] until one).
    lag_us: AtomicU64,
    /// Minimum age of first delivery attempts of this interval per class, µs.
    backlog_min_us: [AtomicU64; 3],
    /// Per class, due messages not yet handed to a worker (polled, for `serve` alone).
    due: [AtomicU64; 3],
    /// Requests arrived in the last interval.
    busy: AtomicBool,
    /// The controller sleeps through an idle door; the next arrival wakes it ([`Self::run`]).
    parked: AtomicBool,
    wake: tokio::sync::Notify,
    /// The door itself was overloaded in the last interval (not only the pipeline): only
    /// then does background work yield, since a pipeline that is behind must work.
    door_overloaded: AtomicBool,
    /// Intervals in a row the door's delay stood over its target.
    door_streak: AtomicU32,
    /// Per class, the tenants seen while it was partly admitted.
    tenants: [RwLock<HashMap<Uuid, Arc<TenantShare>>>; 3],
    /// The origin of the buckets' clocks.
    epoch: Instant,
}

/// One tenant's share of a partly admitted class.
struct TenantShare {
    /// Arrivals in this interval.
    offered: AtomicU64,
    bucket: Mutex<Bucket>,
}

/// A token bucket: `rate` requests/s, holding at most `retry_after` seconds of it.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    tokens: f64,
    /// When `tokens` was counted, seconds since the epoch.
    at: f64,
}

impl Bucket {
    /// A bucket at `rate` holding one request: a tenant new to a shedding class is not let
    /// in a burst before its rate is known.
    fn new(rate: f64, now: f64) -> Self {
        Bucket {
            rate,
            tokens: 1.0,
            at: now,
        }
    }

    /// Seconds a client should wait after a refusal: long enough to earn one request.
    fn retry_after(&self) -> u32 {
        if self.rate <= 0.0 {
            return 1;
        }
        (1.0 / self.rate).ceil().clamp(1.0, 3600.0) as u32
    }

    /// What it holds at most: Retry-After's worth of its rate, so a client that waits that
    /// long finds as many requests as it was owed.
    fn capacity(&self) -> f64 {
        (self.rate * f64::from(self.retry_after())).max(1.0)
    }

    fn refill(&mut self, now: f64) {
        let earned = (now - self.at).max(0.0) * self.rate;
        self.tokens = (self.tokens + earned).min(self.capacity());
        self.at = now;
    }

    /// Takes one request's token at `now`; refused: the Retry-After.
    fn take(&mut self, now: f64) -> Result<(), u32> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.retry_after())
        }
    }

    /// A new rate; what it holds is kept (up to the new capacity). The time since the last
    /// take is earned at the new rate: at most an interval at a rate that changed.
    fn rerate(&mut self, rate: f64) {
        self.rate = rate;
        self.tokens = self.tokens.min(self.capacity());
    }
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
    /// Refused: its class is being shed. A client should wait `retry_after` seconds.
    Shed {
        retry_after: u32,
    },
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Admission {
            config,
            budget: std::array::from_fn(|_| Budget::whole()),
            offered: Default::default(),
            admitted: Default::default(),
            admitted_share: std::array::from_fn(|_| AtomicU32::new(1 << 16)),
            law: Mutex::new(Law::default()),
            publish_min_us: AtomicU64::new(NO_SAMPLE),
            lag_us: AtomicU64::new(NO_SAMPLE),
            backlog_min_us: std::array::from_fn(|_| AtomicU64::new(NO_SAMPLE)),
            due: Default::default(),
            busy: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            door_overloaded: AtomicBool::new(false),
            door_streak: AtomicU32::new(0),
            tenants: Default::default(),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Whether a request of `tenant` at `priority` is admitted now. Cheap: an add and a
    /// load while a class is wholly admitted or shed; while it is partly, a shared-lock
    /// lookup of the tenant and its bucket's lock.
    pub fn admit(&self, tenant: Uuid, priority: Priority) -> Decision {
        self.admit_at(tenant, priority, self.now())
    }

    /// [`Admission::admit`] at `now`, seconds on the buckets' clock.
    fn admit_at(&self, tenant: Uuid, priority: Priority, now: f64) -> Decision {
        let c = priority.index();
        self.offered[c].fetch_add(1, Ordering::SeqCst);
        // After the count (both SeqCst, no dearer on x86 than before): either this sees the
        // controller parked, or the controller, parking, sees this count.
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
        let budget = self.budget[c].get();
        if budget == f64::INFINITY {
            return Decision::Admit;
        }
        if budget <= 0.0 {
            return Decision::Shed { retry_after: 1 };
        }
        let share = self.share(c, tenant, budget, now);
        share.offered.fetch_add(1, Ordering::Relaxed);
        let taken = share.bucket.lock().expect("bucket lock").take(now);
        match taken {
            Ok(()) => {
                self.admitted[c].fetch_add(1, Ordering::Relaxed);
                Decision::Admit
            }
            Err(retry_after) => Decision::Shed { retry_after },
        }
    }

    /// `tenant`'s share of class `class`; a new one gets the class's whole `budget` until
    /// the next split.
    fn share(&self, class: usize, tenant: Uuid, budget: f64, now: f64) -> Arc<TenantShare> {
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
                    bucket: Mutex::new(Bucket::new(budget, now)),
                })
            })
            .clone()
    }

    /// Splits each partly admitted class's budget between its tenants (max-min fair). A
    /// class wholly admitted or shed keeps the last split: when shedding starts again, a
    /// small tenant is not refused while their rates are counted anew, nor a flood let in
    /// at the whole budget.
    fn share_out(&self, seconds: f64) {
        for (c, tenants) in self.tenants.iter().enumerate() {
            let budget = self.budget[c].get();
            if budget == f64::INFINITY || budget <= 0.0 {
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
                .map(|s| s.offered.swap(0, Ordering::Relaxed) as f64 / seconds)
                .collect();
            // Every offer fits (the budget is the class's, and arrivals vary): each gets
            // the whole budget's room, never less than it offered.
            let level = water_level(&mut offers.clone(), budget).min(budget);
            for share in shares.values() {
                share.bucket.lock().expect("bucket lock").rerate(level);
            }
        }
    }

    /// Whether `priority` is being shed at all.
    pub fn shedding(&self, priority: Priority) -> bool {
        self.budget[priority.index()].get() < f64::INFINITY
    }

    /// Whether background work of `priority` should yield the CPU: the door is overloaded
    /// and sheds that class. A pipeline that is merely behind keeps working.
    pub fn yield_for(&self, priority: Priority) -> bool {
        self.door_overloaded.load(Ordering::Relaxed) && self.shedding(priority)
    }

    /// The share of a class admitted in the last interval, 0.0 to 1.0 (1.0 while wholly
    /// admitted).
    pub fn fraction(&self, priority: Priority) -> f64 {
        f64::from(self.admitted_share[priority.index()].load(Ordering::Relaxed))
            / f64::from(1u32 << 16)
    }

    /// The ceiling on the admitted rate of all classes, requests/s (`None`: no limit).
    pub fn ceiling(&self) -> Option<f64> {
        self.law.lock().expect("law lock").ceiling
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

    /// Whether requests arrived in the last interval.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Nothing to judge: no arrivals in the last interval, no ceiling to lift and no
    /// overload for background work to yield to.
    fn idle(&self) -> bool {
        !self.busy() && !self.door_overloaded.load(Ordering::Relaxed) && self.ceiling().is_none()
    }

    /// Messages of `priority` stored, due and not yet handed to a delivery worker (the
    /// delivery consumer's pending count, polled).
    pub fn due_backlog(&self, priority: Priority, messages: u64) {
        self.due[priority.index()].store(messages, Ordering::Relaxed);
    }

    /// Closes the interval: takes its delays and arrivals and adjusts the ceiling and the
    /// budgets. Returns the standing delays it judged by: the door's and the pipeline's.
    pub fn adjust(&self) -> Standing {
        let seconds = self.config.interval.as_secs_f64();
        let publish = self.publish_min_us.swap(NO_SAMPLE, Ordering::Relaxed);
        let lag = self.lag_us.swap(NO_SAMPLE, Ordering::Relaxed);
        // The worse of the two standing delays; no sample of either: no evidence.
        let door = worst([publish, lag]);
        let offered: [f64; 3] =
            std::array::from_fn(|c| self.offered[c].swap(0, Ordering::Relaxed) as f64 / seconds);
        let admitted: [f64; 3] = std::array::from_fn(|c| {
            let partly = self.admitted[c].swap(0, Ordering::Relaxed) as f64 / seconds;
            match self.budget[c].get() {
                b if b == f64::INFINITY => offered[c],
                b if b <= 0.0 => 0.0,
                _ => partly,
            }
        });
        self.busy
            .store(offered.iter().any(|&o| o > 0.0), Ordering::Relaxed);
        for c in 0..3 {
            let share = if offered[c] > 0.0 {
                admitted[c] / offered[c]
            } else {
                f64::from(u8::from(self.budget[c].get() > 0.0))
            };
            self.admitted_share[c].store((share.min(1.0) * 65536.0) as u32, Ordering::Relaxed);
        }
        // Classes shed entirely do not count: their backlog is what is left from before.
        let backlogs: [u64; 3] = std::array::from_fn(|c| {
            let min = self.backlog_min_us[c].swap(NO_SAMPLE, Ordering::Relaxed);
            let due = self.due[c].load(Ordering::Relaxed);
            // Due messages over the rate they were admitted at: how long the last of them
            // waits (a class admitted at nothing drains at no rate, and does not count).
            let due_us = if due > 0 && admitted[c] > 0.0 {
                (due as f64 / admitted[c] * 1e6) as u64
            } else {
                NO_SAMPLE
            };
            if self.budget[c].get() > 0.0 {
                match (min, due_us) {
                    (NO_SAMPLE, d) => d,
                    (m, NO_SAMPLE) => m,
                    (m, d) => m.max(d),
                }
            } else {
                NO_SAMPLE
            }
        });
        let backlog = worst(backlogs);
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
        // The highest class whose backlog stands over its target: the classes above it are
        // not what is behind, and a cut never takes the ceiling below what they offer.
        let target_us = self.config.backlog_target.as_micros() as u64;
        let behind = (0..3).find(|&c| backlogs[c] != NO_SAMPLE && backlogs[c] > target_us);
        let backlog_over = behind.is_some();
        let spared = if door_overloaded {
            1
        } else {
            behind.unwrap_or(1).max(1)
        };
        let protected: f64 = offered[..spared].iter().sum();
        let mut law = self.law.lock().expect("law lock");
        let total: f64 = admitted.iter().sum();
        if law.recent.len() == RECENT {
            law.recent.pop_front();
        }
        law.recent.push_back(total);
        if law.hold > 0 {
            law.hold -= 1;
        } else if door_overloaded || backlog_over {
            if !law.overloaded {
                law.knee = law.carried(RECENT).max(MIN_KNEE);
                // Within one shedding regime (a ceiling set) the peak only grows: the rate
                // carried under a ceiling is what the ceiling let through, not capacity.
                law.peak = match law.ceiling {
                    Some(_) => law.peak.max(law.knee),
                    None => law.knee,
                };
            }
            law.overloaded = true;
            let was = law.ceiling.unwrap_or(f64::INFINITY);
            let carried = law.carried(RECENT);
            let floor = self.config.goodput_floor * law.peak;
            law.ceiling = Some((CUT * was.min(carried)).max(protected).max(floor));
            law.hold = DOOR_PERSIST;
            law.fitting = 0;
            self.door_streak.store(0, Ordering::Relaxed);
        } else if !door_over {
            // Not in a stall that has not stood long enough to count: that is no evidence
            // of calm either.
            law.overloaded = false;
            if let Some(ceiling) = law.ceiling {
                let knee = law.knee;
                let cap = (1.0 - self.config.headroom) * knee;
                let raised = if ceiling < cap {
                    (ceiling + knee / 16.0).min(cap)
                } else {
                    ceiling + knee * self.config.headroom.max(0.01) / 100.0
                };
                law.fitting = if offered.iter().sum::<f64>() <= ceiling {
                    law.fitting + 1
                } else {
                    0
                };
                law.ceiling = (law.fitting < LIFT_AFTER).then_some(raised);
            }
        }
        self.set_budgets(law.ceiling, offered);
        drop(law);
        // The budgets just set, split by the arrivals of the interval.
        self.share_out(seconds);
        standing
    }

    /// High takes what it is offered; medium what high leaves of the ceiling, low what
    /// both leave. A class whose offer fits is admitted wholly.
    fn set_budgets(&self, ceiling: Option<f64>, offered: [f64; 3]) {
        let Some(ceiling) = ceiling else {
            for budget in &self.budget {
                budget.set(f64::INFINITY);
            }
            return;
        };
        let mut left = Some(ceiling - offered[Priority::High.index()]);
        for priority in [Priority::Medium, Priority::Low] {
            let c = priority.index();
            match left {
                // No room at all sheds even a class that offered nothing yet: its first
                // requests would not fit either.
                Some(room) if room > 0.0 && room >= offered[c] => {
                    self.budget[c].set(f64::INFINITY);
                    left = Some(room - offered[c]);
                }
                // Below a class cut short, nothing: medium is cut only once low is shed.
                Some(room) => {
                    self.budget[c].set(room.max(0.0));
                    left = None;
                }
                None => self.budget[c].set(0.0),
            }
        }
    }

    /// Runs the controller until `stop`: a run-queue probe every 10 ms and one adjustment
    /// per interval, exported to `metrics`; parked while the door is idle (module doc).
    pub async fn run(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        const PROBE: Duration = Duration::from_millis(10);
        const PARKED: Duration = Duration::from_secs(1);
        let mut next_adjust = tokio::time::Instant::now() + self.config.interval;
        let mut lags = Vec::with_capacity(32);
        let mut idle = false;
        loop {
            if idle {
                self.parked.store(true, Ordering::SeqCst);
                // An arrival counted before that store did not see the controller parked.
                idle = self.offered.iter().all(|o| o.load(Ordering::SeqCst) == 0);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(if idle { PARKED } else { PROBE }) => {}
                // A permit left by an arrival while not parked only ends one sleep early.
                () = self.wake.notified(), if idle => {
                    next_adjust = tokio::time::Instant::now() + self.config.interval;
                    idle = false;
                }
            }
            self.parked.store(false, Ordering::Relaxed);
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
                idle = self.idle();
                let seconds = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64());
                metrics.admission(
                    seconds(standing.door),
                    seconds(standing.backlog),
                    Priority::ALL.map(|p| self.fraction(p)),
                    self.ceiling().unwrap_or(0.0),
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

    #[tokio::test(start_paused = true)]
    async fn an_idle_door_parks_the_controller_and_the_first_arrival_wakes_it() {
        let a = Arc::new(admission());
        let stop = CancellationToken::new();
        let controller = tokio::spawn(a.clone().run(Arc::new(Metrics::new()), stop.clone()));
        // The first interval finds no arrivals: parked from then on.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(a.parked.load(Ordering::SeqCst));
        assert!(!a.busy());
        // Parked, it judges once a second; an arrival wakes it, and the interval that
        // follows is judged as usual, long before the second is out.
        assert_eq!(a.admit(Uuid::nil(), Priority::Low), Decision::Admit);
        assert!(!a.parked.load(Ordering::SeqCst));
        tokio::time::sleep(a.config.interval + Duration::from_millis(20)).await;
        assert!(a.busy(), "the interval after the arrival was not judged");
        stop.cancel();
        controller.await.unwrap();
    }

    /// Offers `arrivals` of `priority` from `tenant`, spread over one interval of the
    /// buckets' clock from `clock`; returns how many were admitted.
    fn offer(
        a: &Admission,
        tenant: Uuid,
        priority: Priority,
        arrivals: usize,
        clock: f64,
    ) -> usize {
        let step = a.config.interval.as_secs_f64() / arrivals.max(1) as f64;
        (0..arrivals)
            .filter(|&i| {
                a.admit_at(tenant, priority, clock + step * (i + 1) as f64) == Decision::Admit
            })
            .count()
    }

    /// One interval: `arrivals` per class from one tenant, then an adjustment with a
    /// standing door delay of `delay_ms`. Returns what each class had admitted.
    fn interval(a: &Admission, delay_ms: u64, arrivals: [usize; 3], clock: &mut f64) -> [usize; 3] {
        let took = Priority::ALL.map(|p| offer(a, Uuid::nil(), p, arrivals[p.index()], *clock));
        *clock += a.config.interval.as_secs_f64();
        a.publish_delay(Duration::from_millis(delay_ms));
        a.runtime_lag(Duration::from_micros(100));
        a.adjust();
        took
    }

    #[test]
    fn the_water_level_gives_small_offers_in_full_and_splits_the_rest() {
        assert_eq!(water_level(&mut [10.0, 1000.0], 500.0), 490.0);
        assert_eq!(water_level(&mut [100.0, 100.0, 1000.0], 600.0), 400.0);
        assert_eq!(water_level(&mut [300.0, 300.0], 400.0), 200.0);
        assert_eq!(water_level(&mut [1.0, 2.0], 10.0), f64::INFINITY);
    }

    #[test]
    fn calm_admits_everything_and_sets_no_ceiling() {
        let a = admission();
        let mut clock = 0.0;
        for _ in 0..50 {
            assert_eq!(
                interval(&a, 1, [100, 300, 600], &mut clock),
                [100, 300, 600]
            );
        }
        assert_eq!(a.ceiling(), None);
    }

    #[test]
    fn overload_cuts_to_the_knee_less_the_headroom_and_holds_there() {
        let a = admission();
        let mut clock = 0.0;
        // 2,000/s arrive (200 an interval: 20 high, 60 medium, 120 low) and the door's
        // delay stands: the knee is 2,000/s.
        let arrivals = [20, 60, 120];
        for _ in 0..DOOR_PERSIST {
            interval(&a, 50, arrivals, &mut clock);
        }
        assert_eq!(a.ceiling(), Some(1500.0));
        assert!(a.shedding(Priority::Low) && !a.shedding(Priority::Medium));
        // Calm again: the ceiling climbs back to 80 % of the knee and no further for a
        // while, so low gets 1,600 - 200 - 600 = 800/s of its 1,200/s.
        for _ in 0..20 {
            interval(&a, 1, arrivals, &mut clock);
        }
        let ceiling = a.ceiling().unwrap();
        assert!((1600.0..1700.0).contains(&ceiling), "{ceiling}");
        let took = interval(&a, 1, arrivals, &mut clock);
        assert_eq!(took[0..2], [20, 60]);
        assert!((78..=90).contains(&took[2]), "{took:?}");
        // Above the headroom it creeps: the knee is reached only after about ten seconds,
        // and once everything fits for a second the ceiling is lifted.
        for _ in 0..120 {
            interval(&a, 1, arrivals, &mut clock);
        }
        assert_eq!(a.ceiling(), None);
        assert_eq!(interval(&a, 1, arrivals, &mut clock), arrivals);
    }

    #[test]
    fn a_goodput_floor_bounds_the_cuts_and_a_second_overload_keeps_its_base() {
        let a = Admission::new(AdmissionConfig {
            goodput_floor: 0.5,
            ..AdmissionConfig::default()
        });
        let mut clock = 0.0;
        let arrivals = [20, 60, 120];
        // The delay stands for long: each cut takes three quarters of what passed, but
        // never below half the 2,000/s knee.
        for _ in 0..40 {
            interval(&a, 50, arrivals, &mut clock);
        }
        assert_eq!(a.ceiling(), Some(1000.0));
        // Calm, then overload again under the ceiling: the peak is still 2,000/s, not the
        // rate the ceiling let through, so the floor is still 1,000/s.
        for _ in 0..5 {
            interval(&a, 1, arrivals, &mut clock);
        }
        for _ in 0..40 {
            interval(&a, 50, arrivals, &mut clock);
        }
        assert_eq!(a.ceiling(), Some(1000.0));
        // Without a floor the same delays cut to what high offers.
        let b = admission();
        for _ in 0..40 {
            interval(&b, 50, arrivals, &mut clock);
        }
        assert_eq!(b.ceiling(), Some(200.0));
    }

    #[test]
    fn a_second_overload_retakes_the_knee_from_what_was_carried() {
        let a = admission();
        let mut clock = 0.0;
        let arrivals = [20, 60, 120];
        for _ in 0..40 {
            interval(&a, 50, arrivals, &mut clock);
        }
        assert_eq!(a.ceiling(), Some(200.0));
        // A short calm climbs part of the way back; overload again takes the knee from the
        // rate carried meanwhile, not the 2,000/s of the first overload...
        for _ in 0..3 {
            interval(&a, 1, arrivals, &mut clock);
        }
        for _ in 0..6 {
            interval(&a, 50, arrivals, &mut clock);
        }
        // ...so a long calm climbs back only towards (1 - headroom) of that knee.
        for _ in 0..20 {
            interval(&a, 1, arrivals, &mut clock);
        }
        let ceiling = a.ceiling().expect("still shedding");
        assert!(ceiling < 0.8 * 2000.0 / 2.0, "{ceiling}");
    }

    #[test]
    fn no_headroom_climbs_straight_back_to_the_knee() {
        let a = Admission::new(AdmissionConfig {
            headroom: 0.0,
            ..AdmissionConfig::default()
        });
        let mut clock = 0.0;
        for _ in 0..DOOR_PERSIST {
            interval(&a, 50, [20, 60, 120], &mut clock);
        }
        for _ in 0..8 {
            interval(&a, 1, [20, 60, 120], &mut clock);
        }
        assert!(a.ceiling().unwrap() >= 2000.0 || a.ceiling().is_none());
    }

    #[test]
    fn overload_sheds_low_wholly_before_medium_and_never_high() {
        let a = admission();
        let mut clock = 0.0;
        let mut low_gone_at = None;
        for i in 0..80 {
            let took = interval(&a, 50, [20, 60, 120], &mut clock);
            assert_eq!(took[0], 20, "high refused");
            if low_gone_at.is_none() && a.fraction(Priority::Low) == 0.0 {
                low_gone_at = Some(i);
            }
            if a.fraction(Priority::Medium) < 1.0 {
                assert_eq!(
                    a.fraction(Priority::Low),
                    0.0,
                    "medium cut while low admitted"
                );
            }
        }
        assert!(low_gone_at.unwrap() <= 20, "{low_gone_at:?}");
        assert_eq!(interval(&a, 50, [20, 60, 120], &mut clock), [20, 0, 0]);
    }

    #[test]
    fn recovery_restores_medium_before_low() {
        let a = admission();
        let mut clock = 0.0;
        for _ in 0..80 {
            interval(&a, 50, [20, 60, 120], &mut clock);
        }
        let mut medium_full_at = None;
        for i in 0..200 {
            interval(&a, 1, [20, 60, 120], &mut clock);
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
    fn a_flooding_tenant_takes_only_what_a_small_one_leaves() {
        let a = admission();
        let mut clock = 0.0;
        let (flood, small) = (Uuid::now_v7(), Uuid::now_v7());
        // The knee is 2,000/s of low; the ceiling then holds at 1,600/s.
        for _ in 0..DOOR_PERSIST {
            interval(&a, 50, [0, 0, 200], &mut clock);
        }
        let mut took = HashMap::<Uuid, usize>::new();
        for round in 0..30 {
            // Per interval the flood offers 2,000 (20,000/s), the small one 12 (120/s).
            let step = 0.1 / 2_012.0;
            let mut this = HashMap::<Uuid, usize>::new();
            for i in 0..2_012 {
                clock += step;
                let tenant = if i % 167 == 166 { small } else { flood };
                if a.admit_at(tenant, Priority::Low, clock) == Decision::Admit {
                    *this.entry(tenant).or_default() += 1;
                }
            }
            a.publish_delay(Duration::from_millis(1));
            a.runtime_lag(Duration::from_micros(100));
            a.adjust();
            if round == 29 {
                took = this;
            }
        }
        assert_eq!(took[&small], 12, "{took:?}");
        // The flood gets the rest of the ceiling's interval: about 160 - 12.
        let flood_took = took[&flood];
        assert!((140..=175).contains(&flood_took), "{took:?}");
    }

    #[test]
    fn a_refusal_says_how_long_the_tenants_bucket_takes_to_earn_one_request() {
        let mut bucket = Bucket::new(0.25, 0.0);
        assert_eq!(bucket.take(0.0), Ok(()));
        assert_eq!(bucket.take(0.1), Err(4));
        // Waiting as told finds a request's worth.
        assert_eq!(bucket.take(4.1), Ok(()));
        // A fast rate: one second, holding a second of it.
        let mut bucket = Bucket::new(500.0, 0.0);
        bucket.refill(10.0);
        assert_eq!(bucket.tokens, 500.0);
        let admitted = (0..600).filter(|_| bucket.take(10.0).is_ok()).count();
        assert_eq!(admitted, 500);
        assert_eq!(bucket.take(10.0), Err(1));
    }

    #[test]
    fn a_client_that_honours_retry_after_converges_to_its_share() {
        // A client wanting 10,000/s against a bucket of 800/s: it sends until refused,
        // then pauses for Retry-After.
        let mut bucket = Bucket::new(800.0, 0.0);
        let (mut clock, mut admitted) = (0.0, 0u32);
        while clock < 30.0 {
            match bucket.take(clock) {
                Ok(()) => {
                    admitted += 1;
                    clock += 1.0 / 10_000.0;
                }
                Err(seconds) => clock += f64::from(seconds),
            }
        }
        let rate = f64::from(admitted) / 30.0;
        assert!((700.0..=820.0).contains(&rate), "{rate}");
    }

    #[test]
    fn the_runtime_lag_alone_is_evidence_of_overload() {
        let a = admission();
        let clock = 0.0;
        for _ in 0..DOOR_PERSIST {
            offer(&a, Uuid::nil(), Priority::Low, 100, clock);
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
        let mut clock = 0.0;
        // Low's deliveries stay 3 s old. Low is cut to nothing; medium is never cut for it.
        let mut reached_nothing = false;
        for _ in 0..60 {
            a.backlog_age(Priority::Low, Duration::from_secs(3));
            a.backlog_age(Priority::Medium, Duration::from_millis(20));
            interval(&a, 1, [0, 60, 120], &mut clock);
            reached_nothing |= a.fraction(Priority::Low) == 0.0;
            assert_eq!(a.fraction(Priority::Medium), 1.0);
        }
        assert!(reached_nothing);
        // A pipeline that is behind keeps working: nothing yields for it.
        assert!(!a.yield_for(Priority::Low));
        // High's backlog sheds the classes below it.
        let a = admission();
        offer(&a, Uuid::nil(), Priority::Low, 100, clock);
        a.backlog_age(Priority::High, Duration::from_secs(2));
        assert_eq!(a.adjust().backlog, Some(Duration::from_secs(2)));
        assert!(a.shedding(Priority::Low));
    }

    #[test]
    fn a_due_backlog_counts_as_its_wait_at_the_admitted_rate() {
        let a = admission();
        let clock = 0.0;
        // 3,000 low messages due while low is admitted at 1,000/s: a 3 s wait.
        a.due_backlog(Priority::Low, 3_000);
        offer(&a, Uuid::nil(), Priority::Low, 100, clock);
        assert_eq!(a.adjust().backlog, Some(Duration::from_secs(3)));
        assert!(a.shedding(Priority::Low));
        // Nothing due: no evidence.
        let a = admission();
        a.due_backlog(Priority::Low, 0);
        offer(&a, Uuid::nil(), Priority::Low, 100, clock);
        assert_eq!(a.adjust().backlog, None);
    }

    #[test]
    fn a_stall_of_one_interval_is_not_overload_but_one_that_stands_is() {
        let a = admission();
        let mut clock = 0.0;
        for delay in [1, 1, 80, 1, 1, 120, 1] {
            interval(&a, delay, [20, 60, 120], &mut clock);
            assert!(
                !a.shedding(Priority::Low),
                "shed after a {delay} ms interval"
            );
        }
        interval(&a, 80, [20, 60, 120], &mut clock);
        interval(&a, 80, [20, 60, 120], &mut clock);
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
        a.adjust();
        assert!(!a.shedding(Priority::Low));
    }

    #[test]
    fn disabled_never_sheds() {
        let a = Admission::new(AdmissionConfig {
            enabled: false,
            ..AdmissionConfig::default()
        });
        let mut clock = 0.0;
        for _ in 0..50 {
            assert_eq!(interval(&a, 500, [20, 60, 120], &mut clock), [20, 60, 120]);
        }
    }

    proptest! {
        /// Whatever the sequence of delays and arrivals, high is always admitted, medium
        /// is shed only while low is shed entirely, and nothing is admitted beyond what
        /// was offered.
        #[test]
        fn the_order_of_classes_holds(
            steps in proptest::collection::vec((0u64..40, 0usize..50, 0usize..50, 0usize..50), 1..150)
        ) {
            let a = admission();
            let mut clock = 0.0;
            for (d, h, m, l) in steps {
                let took = interval(&a, d, [h, m, l], &mut clock);
                prop_assert_eq!(took[0], h);
                prop_assert!(took[1] <= m && took[2] <= l);
                let (mf, lf) = (a.fraction(Priority::Medium), a.fraction(Priority::Low));
                prop_assert!((0.0..=1.0).contains(&mf) && (0.0..=1.0).contains(&lf));
                prop_assert!(!a.shedding(Priority::Medium) || a.budget[Priority::Low.index()].get() == 0.0,
                    "medium shed while low admitted");
            }
        }
    }
}
