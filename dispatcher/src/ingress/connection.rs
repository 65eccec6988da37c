//! One accepted connection and its clocks.
//!
//! hyper's own HTTP/1 header timeout also runs while a kept-alive connection waits for its
//! next request, so pooled clients (which keep idle connections for 60–90 s) lost theirs
//! after a few seconds, and their next POST failed ambiguously. Herald keeps the two
//! clocks apart:
//! - **header timeout**: from a request's first byte until its head is complete (and for
//!   a new connection, from accept until its first request), so slow-loris and silent
//!   connections cannot hold a slot. On expiry the connection is dropped.
//! - **idle timeout**: from the end of the last request while none is in flight. It is
//!   announced on HTTP/1.1 responses (`Keep-Alive: timeout=N`), and on expiry the
//!   connection is shut down gracefully: an idle HTTP/1.1 connection gets a FIN (which
//!   pooled clients see and retire), h2 gets GOAWAY, so a request already on its way on h2
//!   is still answered. HTTP/1.1 has no such handshake; the idle clock only fires when no
//!   byte of a request has been read, and the announcement lets clients retire first.
//!
//! The clocks read [`Activity`], which the IO wrapper ([`Watched`]) and the service
//! update with a few relaxed atomics per request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `head_since_ms` when no request head is being read.
const NO_HEAD: u64 = u64::MAX;
/// `armed_ms` while requests are in flight (no clock runs).
const NO_DEADLINE: u64 = u64::MAX;

/// What a connection is doing, as far as its clocks care.
pub(crate) struct Activity {
    born: Instant,
    /// Requests whose service has started and not yet returned a response.
    in_flight: AtomicU32,
    /// Milliseconds after `born` when the last request's response was handed to hyper.
    idle_since_ms: AtomicU64,
    /// Milliseconds after `born` of the first byte of a request head still being read;
    /// [`NO_HEAD`] when none is.
    head_since_ms: AtomicU64,
    /// h2: reads are frames (pings, window updates), never the start of a request head.
    multiplexed: AtomicBool,
    /// Milliseconds after `born` of the deadline the clock sleeps until ([`NO_DEADLINE`]:
    /// none), so that only a change that moves it earlier needs to wake the clock.
    armed_ms: AtomicU64,
    /// Wakes the clock when the deadline moved earlier than the one it sleeps until.
    moved_earlier: tokio::sync::Notify,
    idle: Duration,
    header: Duration,
}

/// Which clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No request arrived for the idle timeout: close gracefully.
    Idle,
    /// A request head (or a new connection's first request) did not complete in time.
    Head,
}

impl Activity {
    /// A new connection: its first request must complete its head within the header
    /// timeout of being accepted.
    pub(crate) fn new(clocks: Clocks) -> Self {
        Activity {
            born: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            multiplexed: AtomicBool::new(false),
            armed_ms: AtomicU64::new(clocks.header.as_millis() as u64),
            moved_earlier: tokio::sync::Notify::new(),
            idle: clocks.idle,
            header: clocks.header,
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Wakes the clock if `deadline_ms` comes before the deadline it sleeps until.
    fn deadline_moved_to(&self, deadline_ms: u64) {
        if deadline_ms < self.armed_ms.load(Ordering::SeqCst) {
            self.moved_earlier.notify_one();
        }
    }

    /// Bytes were read. Starts the header clock if they begin a new HTTP/1 request.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since_ms.load(Ordering::Relaxed) == NO_HEAD
            && !self.multiplexed.load(Ordering::Relaxed)
        {
            let now = self.now_ms();
            self.head_since_ms.store(now, Ordering::Relaxed);
            self.deadline_moved_to(now + self.header.as_millis() as u64);
        }
    }

    /// A request's head is complete and its service starts.
    pub(crate) fn request_started(&self, version: http::Version) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(NO_HEAD, Ordering::Relaxed);
        if version == http::Version::HTTP_2 {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
    }

    /// A request's response has been handed to hyper.
    pub(crate) fn request_finished(&self) {
        let now = self.now_ms();
        self.idle_since_ms.store(now, Ordering::Relaxed);
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.deadline_moved_to(now + self.idle.as_millis() as u64);
        }
    }

    /// The next deadline and what happens there; `None` while requests are in flight.
    pub(crate) fn deadline(&self) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let head = self.head_since_ms.load(Ordering::Relaxed);
        if head != NO_HEAD {
            return Some((
                self.born + Duration::from_millis(head) + self.header,
                Expiry::Head,
            ));
        }
        let idle_since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some((self.born + idle_since + self.idle, Expiry::Idle))
    }

    /// [`Activity::deadline`], remembered as the one the clock sleeps until.
    fn arm(&self) -> Option<(Instant, Expiry)> {
        // Disarmed while the deadline is computed: a change racing the computation (h2
        // services run on other threads) then wakes the clock instead of being missed.
        self.armed_ms.store(NO_DEADLINE, Ordering::SeqCst);
        let deadline = self.deadline();
        let armed = deadline.map_or(NO_DEADLINE, |(at, _)| {
            at.saturating_duration_since(self.born).as_millis() as u64
        });
        self.armed_ms.store(armed, Ordering::SeqCst);
        deadline
    }

    /// Resolves when the deadline moved earlier than the armed one.
    async fn moved_earlier(&self) {
        self.moved_earlier.notified().await;
    }
}

/// The connection's socket, reporting reads to its [`Activity`].
pub(crate) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The two clocks' settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clocks {
    pub idle: Duration,
    pub header: Duration,
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Ended<E> {
    /// The peer closed, or a graceful close (idle, shutdown) completed.
    Done(Result<(), E>),
    /// A request head did not arrive in time; the connection was dropped.
    HeadTimeout,
}

/// Drives `connection` to its end under the clocks: gracefully closed once idle or when `stop` is cancelled, dropped when a head is late. `on_idle_close`
/// runs once when the idle clock starts a close.
pub(crate) async fn drive<C: GracefulConnection>(
    mut connection: Pin<&mut C>,
    activity: &Activity,
    stop: &CancellationToken,
    on_idle_close: impl FnOnce(),
) -> Ended<C::Error> {
    let mut on_idle_close = Some(on_idle_close);
    let mut closing = false;
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let deadline = if closing { None } else { activity.arm() };
        if let Some((at, _)) = deadline {
            sleep.as_mut().reset(at);
        }
        tokio::select! {
            // The connection first: bytes that arrived with the timer are read (and move
            // the clocks) before the timer is judged.
            biased;
            ended = connection.as_mut() => return Ended::Done(ended),
            () = stop.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.moved_earlier(), if !closing => {}
            () = sleep.as_mut(), if deadline.is_some() => {
                // The state may have moved since the deadline was taken.
                match activity.deadline() {
                    Some((at, Expiry::Head)) if at <= Instant::now() => return Ended::HeadTimeout,
                    Some((at, Expiry::Idle)) if at <= Instant::now() => {
                        if let Some(f) = on_idle_close.take() {
                            f();
                        }
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCKS: Clocks = Clocks {
        idle: Duration::from_secs(60),
        header: Duration::from_secs(5),
    };

    /// Whether the clock was woken (a permit is waiting).
    async fn woken(activity: &Activity) -> bool {
        tokio::time::timeout(Duration::from_millis(1), activity.moved_earlier())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_must_finish_its_first_head_within_the_header_timeout() {
        let activity = Activity::new(CLOCKS);
        let (at, expiry) = activity.arm().unwrap();
        assert_eq!(expiry, Expiry::Head);
        assert_eq!(at, activity.born + CLOCKS.header);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_clock_starts_when_the_last_response_is_handed_over() {
        let activity = Activity::new(CLOCKS);
        activity.bytes_read();
        activity.request_started(http::Version::HTTP_11);
        assert_eq!(activity.arm(), None, "busy: no clock");
        tokio::time::advance(Duration::from_secs(7)).await;
        activity.request_finished();
        assert!(woken(&activity).await, "a clock armed for nothing is woken");
        let (at, expiry) = activity.arm().unwrap();
        assert_eq!(expiry, Expiry::Idle);
        assert_eq!(at, activity.born + Duration::from_secs(7) + CLOCKS.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_header_clock_starts_at_the_next_requests_first_byte() {
        let activity = Activity::new(CLOCKS);
        activity.request_started(http::Version::HTTP_11);
        activity.request_finished();
        activity.arm();
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.bytes_read();
        assert!(woken(&activity).await, "the head deadline is earlier");
        let (at, expiry) = activity.arm().unwrap();
        assert_eq!(expiry, Expiry::Head);
        assert_eq!(at, activity.born + Duration::from_secs(30) + CLOCKS.header);
        // Body bytes of a request in flight do not start a head.
        activity.request_started(http::Version::HTTP_11);
        activity.bytes_read();
        activity.request_finished();
        assert_eq!(activity.deadline().unwrap().1, Expiry::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_does_not_wake_the_clock() {
        let activity = Activity::new(CLOCKS);
        activity.arm();
        activity.bytes_read();
        activity.request_started(http::Version::HTTP_11);
        activity.request_finished();
        // Armed for the first head (5 s); idle ends at 60 s: the clock finds out at 5 s.
        assert!(!woken(&activity).await);
        let idle = Clocks {
            idle: Duration::from_millis(100),
            ..CLOCKS
        };
        let activity = Activity::new(idle);
        activity.arm();
        activity.request_started(http::Version::HTTP_11);
        activity.request_finished();
        assert!(
            woken(&activity).await,
            "an idle timeout shorter than the head's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn h2_frames_between_requests_do_not_start_a_head() {
        let activity = Activity::new(CLOCKS);
        activity.request_started(http::Version::HTTP_2);
        activity.request_finished();
        activity.bytes_read();
        assert_eq!(activity.deadline().unwrap().1, Expiry::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_keep_the_connection_busy_until_the_last_ends() {
        let activity = Activity::new(CLOCKS);
        activity.request_started(http::Version::HTTP_2);
        activity.request_started(http::Version::HTTP_2);
        activity.request_finished();
        assert_eq!(activity.deadline(), None);
        activity.request_finished();
        assert!(activity.deadline().is_some());
    }
}
