//! Notifications canceled before they were sent.
//!
//! `POST /v1/notifications/{id}/cancel` puts `<tenant>.<id>` into the `<prefix>CANCELS`
//! bucket. Every delivery process follows the bucket (a watch from its first key), so the
//! check before a send is a lookup in memory, never a round trip. A canceled message is
//! terminated instead of sent, whether it was scheduled (`send_at`), waiting for a retry
//! or for its destination.
//!
//! A cancel reaches the processes within milliseconds: one that comes while the
//! notification's send is already on the wire cannot stop it, and the recorder then keeps
//! `delivered`, which is what happened.

use std::sync::Arc;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::jetstream::Names;

/// What this process knows to be canceled.
pub struct Cancels {
    canceled: moka::sync::Cache<Uuid, ()>,
}

impl Cancels {
    /// Follows the bucket until `stop`. The bucket forgets a cancel when NOTIFY would have
    /// dropped its notification; memory holds the newest million.
    pub async fn start(
        js: &jetstream::Context,
        names: &Names,
        stop: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<Arc<Self>, async_nats::Error> {
        let kv = js.get_key_value(&names.cancels_bucket).await?;
        let cancels = Arc::new(Cancels {
            canceled: moka::sync::Cache::builder().max_capacity(1_000_000).build(),
        });
        let watch = kv.watch_all_from_revision(1).await?;
        let following = cancels.clone();
        tasks.spawn(crate::jetstream::follow_bucket(
            watch,
            move |seen| {
                let kv = kv.clone();
                async move { kv.watch_all_from_revision(seen + 1).await }
            },
            move |entry| {
                let id = entry
                    .key
                    .rsplit('.')
                    .next()
                    .and_then(|i| Uuid::try_parse(i).ok());
                if let Some(id) = id {
                    following.canceled.insert(id, ());
                }
            },
            "cancels",
            stop,
        ));
        Ok(cancels)
    }

    pub fn is_canceled(&self, id: &Uuid) -> bool {
        self.canceled.contains_key(id)
    }
}
