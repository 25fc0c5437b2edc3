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
//!
//! A request (a confirmed ack, a TERM) is a publish with a reply subject on this task's own inbox, `<inbox>.<n>`
//! for a counter `n`, and its reply is matched back by `n`. Through async-nats' `send_request` each one cost a
//! fresh random inbox name, a timer registered and cancelled, a boxed future and a map keyed by that name: about
//! 5,000 instructions per confirmed ack in this task against about 1,200 for a plain one (tests/bench/ANALYSIS.md,
//! section 41). The timeouts are checked together instead: one timer, set for the earliest deadline pending.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::time::Duration;

use async_nats::{Client, RequestError, RequestErrorKind, StatusCode, Subject, Subscriber};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The most queued sends one round hands to the client: a bound on how long the other queued work waits.
const ROUND: usize = 1024;

enum Queued {
    Publish {
        subject: Subject,
        body: Bytes,
    },
    /// A request: published with a reply subject on the task's inbox; the reply, or the error, goes back through
    /// `answer`.
    Request {
        subject: Subject,
        headers: Option<async_nats::HeaderMap>,
        body: Bytes,
        timeout: Duration,
        answer: oneshot::Sender<Result<async_nats::Message, RequestError>>,
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
    ) -> Result<async_nats::Message, RequestError> {
        self.request_with_headers(subject, None, body, timeout)
            .await
    }

    /// [`Outbox::request`] with headers: a KV write with its expected revision, answered by the stream's ack.
    ///
    /// # Errors
    /// As [`Outbox::request`].
    pub(crate) async fn request_with_headers(
        &self,
        subject: Subject,
        headers: Option<async_nats::HeaderMap>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<async_nats::Message, RequestError> {
        let (answer, answered) = oneshot::channel();
        match self.queue.send(Queued::Request {
            subject,
            headers,
            body,
            timeout,
            answer,
        }) {
            Ok(()) => answered.await.unwrap_or_else(|_| {
                Err(RequestError::with_source(
                    RequestErrorKind::Other,
                    "the runtime's sending task ended before the reply",
                ))
            }),
            Err(mpsc::error::SendError(Queued::Request {
                subject,
                headers,
                body,
                timeout,
                ..
            })) => {
                let mut request = async_nats::Request::new()
                    .payload(body)
                    .timeout(Some(timeout));
                if let Some(headers) = headers {
                    request = request.headers(headers);
                }
                self.client.send_request(subject, request).await
            }
            Err(_) => unreachable!("the send given back is the request that was sent"),
        }
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
    let mut requests = Requests::default();
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            received = queue.recv_many(&mut round, ROUND) => {
                if received == 0 {
                    // Every handle is gone: finish the work in flight, then end. No request is waiting: its
                    // caller holds a handle until it is answered.
                    while running.next().await.is_some() {}
                    return;
                }
            }
            Some(()) = running.next(), if !running.is_empty() => continue,
            Some(reply) = next_reply(requests.replies.as_mut()), if requests.replies.is_some() => {
                requests.answer(reply);
                // The replies that came in the same read are answered here, not one per turn of the select, which
                // polls every other branch first each time.
                while let Some(replies) = requests.replies.as_mut()
                    && let std::task::Poll::Ready(Some(reply)) = futures::poll!(replies.subscriber.next())
                {
                    requests.answer(reply);
                }
                continue;
            }
            () = &mut timer, if requests.armed.is_some() => {
                requests.expire(timer.as_mut());
                continue;
            }
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
        let now = Instant::now();
        for send in round.drain(..) {
            match send {
                Queued::Publish { subject, body } => {
                    if let Err(err) = client.publish(subject, body).await {
                        tracing::warn!(error = %err, "a queued send was not handed to the connection");
                    }
                }
                Queued::Request {
                    subject,
                    headers,
                    body,
                    timeout,
                    answer,
                } => {
                    let message = (subject, headers, body);
                    requests
                        .send(&client, message, now + timeout, answer, timer.as_mut())
                        .await;
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

/// The next reply on the task's inbox; never, before the first request has subscribed to it.
async fn next_reply(replies: Option<&mut Replies>) -> Option<async_nats::Message> {
    match replies {
        Some(replies) => replies.subscriber.next().await,
        None => std::future::pending().await,
    }
}

/// The subscription every request's reply comes to.
struct Replies {
    /// `<inbox>.`: what each reply subject starts with, before its number.
    prefix: String,
    subscriber: Subscriber,
}

/// A request sent and not answered yet.
struct Pending {
    answer: oneshot::Sender<Result<async_nats::Message, RequestError>>,
    deadline: Instant,
}

/// The requests in flight, by the number that ends their reply subject.
#[derive(Default)]
struct Requests {
    /// Subscribed at the first request, so a function that never asks (plain acks) holds no subscription for it.
    replies: Option<Replies>,
    next: u64,
    pending: HashMap<u64, Pending, BuildHasherDefault<Sequential>>,
    /// The deadline the timer is set for; `None` while it is not set. Later deadlines than the one set wait for
    /// it: with one timeout for every ack, the timer fires about once per timeout while requests are in flight.
    armed: Option<Instant>,
}

/// The hash of a request's number. The numbers are consecutive and made here, so no caller can choose keys that
/// collide, and SipHash's guard against that costs more than the map's lookup itself. A multiply by an odd constant
/// spreads consecutive numbers over the table's buckets (the low bits) and its control bytes (the high bits).
#[derive(Default)]
struct Sequential(u64);

impl Hasher for Sequential {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Requests {
    /// Publishes `body` to `subject` with a reply subject of its own, and keeps `answer` for the reply.
    async fn send(
        &mut self,
        client: &Client,
        (subject, headers, body): (Subject, Option<async_nats::HeaderMap>, Bytes),
        deadline: Instant,
        answer: oneshot::Sender<Result<async_nats::Message, RequestError>>,
        timer: Pin<&mut tokio::time::Sleep>,
    ) {
        let replies = match &mut self.replies {
            Some(replies) => replies,
            None => {
                let inbox = client.new_inbox();
                match client.subscribe(format!("{inbox}.*")).await {
                    Ok(subscriber) => self.replies.insert(Replies {
                        prefix: inbox + ".",
                        subscriber,
                    }),
                    Err(err) => {
                        let _ = answer
                            .send(Err(RequestError::with_source(RequestErrorKind::Other, err)));
                        return;
                    }
                }
            }
        };
        let token = self.next;
        self.next += 1;
        let mut digits = [0; 20];
        let digits = crate::log_fields::decimal(token, &mut digits);
        let mut reply = String::with_capacity(replies.prefix.len() + digits.len());
        reply.push_str(&replies.prefix);
        reply.push_str(digits);
        let sent = match headers {
            Some(headers) => {
                client
                    .publish_with_reply_and_headers(subject, reply, headers, body)
                    .await
            }
            None => client.publish_with_reply(subject, reply, body).await,
        };
        if let Err(err) = sent {
            let kind = match err.kind() {
                async_nats::client::PublishErrorKind::InvalidSubject => {
                    RequestErrorKind::InvalidSubject
                }
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    RequestErrorKind::MaxPayloadExceeded
                }
                _ => RequestErrorKind::Other,
            };
            let _ = answer.send(Err(RequestError::with_source(kind, err)));
            return;
        }
        self.pending.insert(token, Pending { answer, deadline });
        if self.armed.is_none_or(|armed| deadline < armed) {
            timer.reset(deadline);
            self.armed = Some(deadline);
        }
    }

    /// Gives a reply to the request its subject names, as `send_request` would: a no-responders status is an
    /// error. A reply nobody waits for (its request timed out, a duplicate) is dropped.
    fn answer(&mut self, reply: async_nats::Message) {
        let Some(token) = self
            .replies
            .as_ref()
            .and_then(|replies| reply.subject.as_str().strip_prefix(&replies.prefix))
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            return;
        };
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        let answer = if reply.status == Some(StatusCode::NO_RESPONDERS) {
            Err(RequestError::with_source(
                RequestErrorKind::NoResponders,
                "no responders",
            ))
        } else {
            Ok(reply)
        };
        let _ = pending.answer.send(answer);
    }

    /// Fails the requests whose deadline has passed, and sets the timer for the earliest one left.
    fn expire(&mut self, mut timer: Pin<&mut tokio::time::Sleep>) {
        let now = Instant::now();
        for (_, pending) in self
            .pending
            .extract_if(|_, pending| pending.deadline <= now)
        {
            let _ = pending.answer.send(Err(RequestError::with_source(
                RequestErrorKind::TimedOut,
                "no reply before the deadline",
            )));
        }
        self.armed = self.pending.values().map(|pending| pending.deadline).min();
        if let Some(earliest) = self.armed {
            timer.as_mut().reset(earliest);
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

    /// A request whose reply never comes fails at its deadline, not at a later one's, and the requests after it
    /// are still answered: the one timer is set again for what is left.
    #[tokio::test]
    async fn a_request_left_unanswered_times_out_at_its_own_deadline() {
        let server = testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        // Subscribed and silent: the server has a responder, so no status comes back either.
        let _silent = client.subscribe("outbox.silent").await.unwrap();
        let mut asked = client.subscribe("outbox.echo").await.unwrap();
        let replier = client.clone();
        tokio::spawn(async move {
            while let Some(message) = asked.next().await {
                let _ = replier
                    .publish(message.reply.unwrap(), message.payload)
                    .await;
            }
        });
        client.flush().await.unwrap();
        let outbox = Outbox::start(client);

        let slow = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                outbox
                    .request(
                        "outbox.silent".into(),
                        Bytes::from_static(b"?"),
                        Duration::from_secs(30),
                    )
                    .await
            })
        };
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            outbox.request(
                "outbox.silent".into(),
                Bytes::from_static(b"?"),
                Duration::from_millis(300),
            ),
        )
        .await
        .expect("the request's own deadline ends it")
        .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.kind(), async_nats::RequestErrorKind::TimedOut, "{err}");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
            "timed out after {waited:?}"
        );
        for n in 0..3 {
            let reply = outbox
                .request(
                    "outbox.echo".into(),
                    Bytes::from(format!("{n}")),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert_eq!(reply.payload, format!("{n}").as_bytes());
        }
        assert!(!slow.is_finished(), "the 30 s request ended early");
        slow.abort();
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
