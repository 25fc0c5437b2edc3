//! The acks of concurrent attempts, handed to the connection together so they leave in one write.
//!
//! async-nats' connection task writes whatever commands it has each time it is woken. A command sent from a
//! message's own task wakes it, and tokio runs the woken connection task right after the sending task (the worker's
//! LIFO slot), so an ack per attempt was a write per attempt: a `write` in this process and a wake-up, a `read` and
//! a parse in nats-server, for a few dozen bytes. The raw consumer of the benchmark, one loop acking many messages
//! in one poll, made one write per 23 acks; the runtime made one per 4 (tests/bench/ANALYSIS.md, section 30).
//!
//! Here the attempts queue what they send, and one task sends it: it waits until the worker has run the other
//! ready tasks (`yield_now`), takes everything queued by then, and hands it to the client in one poll, so the
//! connection task finds all of it at once. A request's reply comes back to the attempt that asked. Nothing
//! changes in what is sent or when it counts: a plain ack was already a message left in the client's buffer, and
//! a confirmed ack is still confirmed by the server's reply to that attempt.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

/// The most queued sends one round hands to the client: a bound on how long the other queued work waits.
const ROUND: usize = 1024;

enum Queued {
    Publish {
        subject: Subject,
        body: Bytes,
    },
    /// Work that sends and waits for an answer (a request, a KV write): its first poll, which hands its message
    /// to the connection, happens in the round; its answer goes back through the channel it carries.
    Run(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Answered once everything queued before it is in the client's hands.
    Flush(oneshot::Sender<()>),
}

/// A handle on the process's sending task; cloning it is cheap. Dropping every handle ends the task once the
/// work in flight is finished.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    client: Client,
    queue: mpsc::UnboundedSender<Queued>,
}

impl Outbox {
    /// Starts the sending task on the current tokio runtime.
    #[must_use]
    pub(crate) fn start(client: Client) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(client.clone(), receiver));
        Self { client, queue }
    }

    /// Sends `body` to `subject` without waiting for anything, like [`Client::publish`]. If the sending task is
    /// gone (its runtime is shutting down), the client sends it directly.
    pub(crate) async fn publish(
        &self,
        subject: Subject,
        body: Bytes,
    ) -> Result<(), async_nats::PublishError> {
        match self.queue.send(Queued::Publish { subject, body }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(Queued::Publish { subject, body })) => {
                self.client.publish(subject, body).await
            }
            Err(_) => unreachable!("the send given back is the publish that was sent"),
        }
    }

    /// Sends `body` to `subject` as a request and waits for its reply, like [`Client::send_request`] with a
    /// timeout.
    ///
    /// # Errors
    /// As [`Client::send_request`]: a timeout, no responders, or the connection's own errors.
    pub(crate) async fn request(
        &self,
        subject: Subject,
        body: Bytes,
        timeout: Duration,
    ) -> Result<async_nats::Message, async_nats::RequestError> {
        let client = self.client.clone();
        self.run(async move {
            let request = async_nats::Request::new()
                .payload(body)
                .timeout(Some(timeout));
            client.send_request(subject, request).await
        })
        .await
        .unwrap_or_else(|| {
            Err(async_nats::RequestError::with_source(
                async_nats::RequestErrorKind::Other,
                "the runtime's sending task ended before the reply",
            ))
        })
    }

    /// Runs `work`, which sends through this process's connection and waits for an answer (a KV write and its
    /// acknowledgement), in the sending task: what it sends leaves in the round's write with the others'. Its
    /// output comes back here. If the sending task is gone (its runtime is shutting down), `work` runs here.
    /// `None`: the sending task ended with `work` unfinished (its runtime is being dropped), so whether it sent
    /// anything is unknown, as after a timeout.
    pub(crate) async fn run<T: std::marker::Send + 'static>(
        &self,
        work: impl Future<Output = T> + std::marker::Send + 'static,
    ) -> Option<T> {
        let (done, output) = oneshot::channel();
        let job: Pin<Box<dyn Future<Output = ()> + std::marker::Send>> = Box::pin(async move {
            let _ = done.send(work.await);
        });
        match self.queue.send(Queued::Run(job)) {
            Ok(()) => {}
            Err(mpsc::error::SendError(Queued::Run(job))) => job.await,
            Err(_) => unreachable!("the send given back is the work that was sent"),
        }
        output.await.ok()
    }

    /// Returns once everything sent through this outbox before the call is in the client's hands (its buffer or
    /// the wire); then [`Client::flush`] makes it leave. Used when the process stops, so no ack is left behind.
    pub(crate) async fn flush(&self) {
        let (done, finished) = oneshot::channel();
        if self.queue.send(Queued::Flush(done)).is_ok() {
            let _ = finished.await;
        }
    }
}

async fn run(client: Client, mut queue: mpsc::UnboundedReceiver<Queued>) {
    let mut running = FuturesUnordered::new();
    let mut round = Vec::with_capacity(64);
    let mut flushed = Vec::new();
    loop {
        tokio::select! {
            biased;
            received = queue.recv_many(&mut round, ROUND) => {
                if received == 0 {
                    // Every handle is gone: finish the work in flight, then end.
                    while running.next().await.is_some() {}
                    return;
                }
            }
            Some(()) = running.next(), if !running.is_empty() => continue,
        }
        // The first sends of a round are here. The other tasks this worker has ready (attempts finishing beside
        // this one) run before this task resumes, and queue theirs: they all go out in this round.
        tokio::task::yield_now().await;
        while round.len() < ROUND {
            match queue.try_recv() {
                Ok(send) => round.push(send),
                Err(_) => break,
            }
        }
        for send in round.drain(..) {
            match send {
                Queued::Publish { subject, body } => {
                    if let Err(err) = client.publish(subject, body).await {
                        tracing::warn!(error = %err, "a queued send was not handed to the connection");
                    }
                }
                Queued::Run(job) => running.push(job),
                Queued::Flush(done) => flushed.push(done),
            }
        }
        // The new work's first poll hands its messages to the connection, in this poll with the rest of the round
        // (a finished job's output has already gone back through its channel).
        while let std::task::Poll::Ready(Some(())) = futures::poll!(running.next()) {}
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every send arrives, every request is answered by its own replier, and a flush covers what came before it;
    /// with many tasks sending at once, as attempts do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_send_arrives_and_every_request_gets_its_own_reply() {
        let server = testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let outbox = Outbox::start(client.clone());
        let mut published = client.subscribe("outbox.plain").await.unwrap();
        let mut asked = client.subscribe("outbox.ask.*").await.unwrap();
        let replier = client.clone();
        tokio::spawn(async move {
            while let Some(message) = asked.next().await {
                let mut answer = b"re:".to_vec();
                answer.extend_from_slice(&message.payload);
                let _ = replier
                    .publish(message.reply.unwrap(), Bytes::from(answer))
                    .await;
            }
        });
        client.flush().await.unwrap();

        let tasks: Vec<_> = (0..500)
            .map(|n| {
                let outbox = outbox.clone();
                tokio::spawn(async move {
                    outbox
                        .publish("outbox.plain".into(), Bytes::from(format!("{n}")))
                        .await
                        .unwrap();
                    let reply = outbox
                        .request(
                            format!("outbox.ask.{n}").into(),
                            Bytes::from(format!("{n}")),
                            Duration::from_secs(5),
                        )
                        .await
                        .unwrap();
                    assert_eq!(reply.payload, format!("re:{n}").as_bytes());
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        outbox.flush().await;
        client.flush().await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 500 {
            let message = tokio::time::timeout(Duration::from_secs(5), published.next())
                .await
                .expect("every publish arrives")
                .unwrap();
            let n: u32 = std::str::from_utf8(&message.payload)
                .unwrap()
                .parse()
                .unwrap();
            assert!(seen.insert(n), "{n} arrived twice");
        }
    }

    /// A request nobody answers fails as the client's own would: no responders, not a hang.
    #[tokio::test]
    async fn a_request_without_responders_fails_as_the_clients_would() {
        let server = testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let outbox = Outbox::start(client);
        let err = outbox
            .request(
                "outbox.nobody".into(),
                Bytes::from_static(b"?"),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            async_nats::RequestErrorKind::NoResponders,
            "{err}"
        );
    }
}
