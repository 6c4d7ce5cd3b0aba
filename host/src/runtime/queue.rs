//! A queue of events bounded by count and by bytes, whose room is held by
//! each queued item until that item is done with — including while it waits
//! to be retried — so nothing a plugin causes can grow it past its bounds.
//!
//! Room is two semaphores (events, bytes). Pushing takes permits for one
//! event and its size; the permits travel with the item ([`Room`]) and are
//! given back when it is dropped, wherever that happens: after delivery, in
//! a dead letter, or when the worker holding parked retries stops.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// The room one queued item holds: one event slot and its bytes.
#[derive(Debug)]
pub(crate) struct Room {
    _slot: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The item alone is larger than the whole queue may hold.
    TooLarge,
    /// No room came free before the deadline (or at once, for a push that
    /// may not wait).
    Full,
    /// Nobody reads the queue any more.
    Closed,
}

impl Refused {
    /// Why, in words, for a dead letter.
    pub(crate) fn reason(self, count: usize, bytes: usize) -> String {
        match self {
            Refused::TooLarge => format!("the event is larger than the queue's {bytes} bytes"),
            Refused::Full => format!("the queue stayed full ({count} events or {bytes} bytes)"),
            Refused::Closed => "the subscriber is gone".into(),
        }
    }
}

/// A bounded multi-producer, single-consumer queue of `T`.
pub(crate) struct BoundedQueue<T> {
    sender: mpsc::UnboundedSender<(T, Room)>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<(T, Room)>>>,
    slots: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    capacity: usize,
    capacity_bytes: usize,
}

impl<T> BoundedQueue<T> {
    /// A queue of at most `capacity` items and `capacity_bytes` bytes.
    pub(crate) fn new(capacity: usize, capacity_bytes: usize) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        // tokio semaphores hold at most `usize::MAX >> 3` permits.
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        let capacity_bytes = capacity_bytes.clamp(1, Semaphore::MAX_PERMITS);
        BoundedQueue {
            sender,
            receiver: Mutex::new(Some(receiver)),
            slots: Arc::new(Semaphore::new(capacity)),
            bytes: Arc::new(Semaphore::new(capacity_bytes)),
            capacity,
            capacity_bytes,
        }
    }

    /// The queue's bounds: items and bytes.
    pub(crate) fn capacity(&self) -> (usize, usize) {
        (self.capacity, self.capacity_bytes)
    }

    /// The receiving end, once: the consumer takes it when it starts.
    pub(crate) fn take_receiver(&self) -> Option<Receiver<T>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|inner| Receiver {
                inner,
                _token: None,
            })
    }

    /// Items queued or held (being delivered, or parked for a retry) right
    /// now.
    pub(crate) fn len(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    /// Queues `item` of `size` bytes if there is room now.
    pub(crate) fn try_push(&self, item: T, size: usize) -> Result<(), Refused> {
        let bytes = self.permits_for(size)?;
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| Refused::Full)?;
        let bytes = Arc::clone(&self.bytes)
            .try_acquire_many_owned(bytes)
            .map_err(|_| Refused::Full)?;
        self.send(item, slot, bytes)
    }

    /// Queues `item` of `size` bytes, waiting for room until `deadline`.
    pub(crate) async fn push_until(
        &self,
        item: T,
        size: usize,
        deadline: Instant,
    ) -> Result<(), Refused> {
        let bytes = self.permits_for(size)?;
        let deadline = tokio::time::Instant::from_std(deadline);
        let room = async {
            let slot = Arc::clone(&self.slots).acquire_owned().await?;
            let bytes = Arc::clone(&self.bytes).acquire_many_owned(bytes).await?;
            Ok::<_, tokio::sync::AcquireError>((slot, bytes))
        };
        match tokio::time::timeout_at(deadline, room).await {
            Ok(Ok((slot, bytes))) => self.send(item, slot, bytes),
            Ok(Err(_closed)) => Err(Refused::Closed),
            Err(_elapsed) => Err(Refused::Full),
        }
    }

    fn permits_for(&self, size: usize) -> Result<u32, Refused> {
        if size > self.capacity_bytes {
            return Err(Refused::TooLarge);
        }
        // The byte capacity fits in u32 permits unless it is over 4 GiB; an
        // item that large is refused above for any sane capacity.
        u32::try_from(size.max(1)).map_err(|_| Refused::TooLarge)
    }

    fn send(
        &self,
        item: T,
        slot: OwnedSemaphorePermit,
        bytes: OwnedSemaphorePermit,
    ) -> Result<(), Refused> {
        let room = Room {
            _slot: slot,
            _bytes: bytes,
        };
        self.sender.send((item, room)).map_err(|_| Refused::Closed)
    }
}

/// The consumer's end of a [`BoundedQueue`]. Each item comes with its
/// [`Room`]; dropping the room gives it back.
pub(crate) struct Receiver<T> {
    inner: mpsc::UnboundedReceiver<(T, Room)>,
    /// Kept alive as long as this receiver, so producers can tell (through
    /// a `Weak`) that nobody reads any more.
    _token: Option<Arc<()>>,
}

impl<T> Receiver<T> {
    /// This receiver, keeping `token` alive until it is dropped.
    pub(crate) fn with_token(mut self, token: Arc<()>) -> Self {
        self._token = Some(token);
        self
    }

    /// The next item, or `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<(T, Room)> {
        self.inner.recv().await
    }

    /// The next item if one is waiting now.
    pub(crate) fn try_recv(&mut self) -> Option<(T, Room)> {
        self.inner.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn room_is_bounded_by_count_and_bytes_and_held_until_the_item_is_dropped() {
        let queue = BoundedQueue::<u32>::new(3, 100);
        let mut receiver = queue.take_receiver().unwrap();
        assert!(queue.take_receiver().is_none(), "one consumer");
        queue.try_push(1, 60).unwrap();
        assert_eq!(queue.try_push(2, 60), Err(Refused::Full), "bytes");
        queue.try_push(2, 20).unwrap();
        queue.try_push(3, 20).unwrap();
        assert_eq!(queue.try_push(4, 1), Err(Refused::Full), "count");
        assert_eq!(queue.try_push(5, 101), Err(Refused::TooLarge));

        // Taking an item out does not free its room while it is held (for
        // example parked for a retry)...
        let (first, room) = receiver.recv().await.unwrap();
        assert_eq!(first, 1);
        assert_eq!(queue.try_push(4, 1), Err(Refused::Full));
        assert_eq!(queue.len(), 3);
        // ...dropping it does.
        drop(room);
        queue.try_push(4, 50).unwrap();
    }

    #[tokio::test]
    async fn a_waiting_push_gives_up_at_its_deadline_or_gets_room_when_freed() {
        let queue = Arc::new(BoundedQueue::<u32>::new(1, 100));
        let mut receiver = queue.take_receiver().unwrap();
        queue.try_push(1, 1).unwrap();
        let started = Instant::now();
        let refused = queue
            .push_until(2, 1, Instant::now() + Duration::from_millis(50))
            .await;
        assert_eq!(refused, Err(Refused::Full));
        assert!(started.elapsed() < Duration::from_secs(5));

        let pusher = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                queue
                    .push_until(3, 1, Instant::now() + Duration::from_secs(30))
                    .await
            })
        };
        let (_, room) = receiver.recv().await.unwrap();
        drop(room);
        assert_eq!(pusher.await.unwrap(), Ok(()));
        assert_eq!(receiver.recv().await.unwrap().0, 3);
    }
}
