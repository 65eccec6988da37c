//! Herald: a durable, priority-aware notification dispatcher.
//!
//! How a notification moves through this crate (data flows one way):
//!
//! ```text
//! ingress (HTTP) ──▶ scheduler ──▶ publisher ──▶ NATS JetStream (stream NOTIFY)
//! ```
//!
//! - [`ingress`]: hyper server; reads and limits the body, validates it into a
//!   [`model::Validated`] notification, gives it a UUIDv7 id and queues it. It answers 202
//!   only after JetStream acknowledged the message.
//! - [`admission`]: under overload (a standing delay at the door), refuses the lowest
//!   priority first, before it costs a parse or a publish; background roles in
//!   `dispatcher run` yield to the door while it sheds.
//! - [`scheduler`]: bounded lock-free queues per [`model::Priority`], drained by smooth
//!   weighted round-robin over the classes holding work; full classes refuse (429).
//! - [`publisher`]: batches from the scheduler, pipelined publishes, one ack per waiting
//!   request.
//! - [`jetstream`]: connection, names under the configured prefix, the stream's
//!   definition and readiness.
//! - [`model`] (request, validation, wire document), [`error`] (every client-visible error
//!   and its status), [`config`] (plain settings with their defaults; the binary's
//!   `cli/` fills them from flags and `HERALD_*`), [`metrics`] (Prometheus).
//! - [`app`]: the one composition root that starts each role from its settings (the
//!   binary, the tests and the benchmarks all use it, and the only place that builds
//!   parts); [`lifecycle`]: backoff, shutdown deadlines and the health endpoints every role
//!   answers alike; [`purge`]: removes a namespace, each store emptied by its own module.
//!
//! Downstream of NATS, each role alone or all in `dispatcher run`:
//! - [`delivery`]: pull consumers → per-channel schedulers → senders, retries by NAK with
//!   backoff, [`dlq`] for what keeps failing, outcome [`events`]; [`egress`] is the
//!   SSRF policy every webhook address passes.
//! - [`recorder`]: NOTIFY and EVENTS → PostgreSQL ([`postgres`]), MongoDB and the Redis
//!   [`status`] cache, one statement per batch. Its batches and the outcome events' close
//!   by one rule, [`batch`] (items, bytes, or a linger from the first item).
//! - At the ingress, from Redis ([`redis_store`]): [`idempotency`] and [`ratelimit`];
//!   from PostgreSQL: [`tenants`] and API keys.
//! - [`trace`]: the W3C `traceparent` a request brings (or one started at the door), carried
//!   in the NOTIFY message's headers to every delivery attempt and on to the webhook.
//! - `fuzzing`: the properties the cargo-fuzz targets check (dispatcher/fuzz).

pub mod admission;
pub mod app;
pub mod batch;
pub mod buckets;
pub mod config;
pub mod delivery;
pub mod dependencies;
pub mod dlq;
pub mod egress;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod idempotency;
pub mod ingress;
pub mod jetstream;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod postgres;
pub mod publisher;
pub mod purge;
pub mod ratelimit;
pub mod recorder;
pub mod redis_store;
pub mod scheduler;
pub mod sealing;
pub mod signing;
pub mod status;
pub mod tenants;
pub mod trace;
