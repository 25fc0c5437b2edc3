//! The process core: one NATS connection, the health endpoints, shutdown with drain. Any number of consumers are
//! bound on it, each with its own handler and event type (typed) or its own raw handler; each one's pull loop,
//! retry policy and circuit breaker are its own.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use events::{Event, Validator};
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, Probe};
use crate::config::{JobConfig, NatsConfig};
use crate::consume::{self, bind_with_backoff};
use crate::dlq::Failures;
use crate::fault::Faults;
use crate::health::{Bound, Health};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::raw::{Raw, RawConsumer, RawJob};
use crate::settle::{DeadLetters, Outcome, Settler};
use crate::typed::{Handler, RunAttempt, Typed};
use crate::{Job, JobError};

/// A connected function process, serving one or more consumers.
pub struct Runtime {
    core: Core,
    health: Health,
    consumers: Vec<Box<dyn Consumer>>,
}

/// What every consumer of the process shares.
struct Core {
    name: String,
    client: async_nats::Client,
    /// What the attempts send, gathered so concurrent acks leave in one write (`outbox`).
    outbox: crate::outbox::Outbox,
    js: jetstream::Context,
    job: JobConfig,
    validator: Arc<Validator>,
    keyring: Option<Arc<publish::sealed::Keyring>>,
    probe: Option<Probe>,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("name", &self.core.name)
            .field("job", &self.core.job)
            .field("consumers", &self.consumers.len())
            .finish_non_exhaustive()
    }
}

/// A consumer registered on the runtime, bound and served when it runs. Called once per consumer at start-up,
/// so the dynamic dispatch is not on the per-message path.
trait Consumer: Send {
    fn serve(
        self: Box<Self>,
        core: Arc<Core>,
        stop: CancellationToken,
        bound: Bound,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl Runtime {
    /// Connects with `NATS_*` and reads `JOB_*`; `name` is the function's name and, by default, its consumer's.
    ///
    /// # Errors
    /// A configuration variable that does not parse, or a connection option that cannot be used.
    pub fn from_env(name: &str) -> Pin<Box<dyn Future<Output = anyhow::Result<Self>> + Send + '_>> {
        // Boxed, as `new` is.
        Box::pin(async move {
            let nats = NatsConfig::from_env().context("reading NATS_* configuration")?;
            let job = JobConfig::from_env().context("reading JOB_* configuration")?;
            Self::new(name, &nats, job).await
        })
    }

    /// Connects with explicit configuration.
    ///
    /// The future is boxed behind a pointer, as are those of [`Runtime::run`] and [`Runtime::serve`]: a crate that
    /// awaits a future of another crate compiles its state machine (and those of everything it awaits) itself, so
    /// each function binary would otherwise compile the connect and start-up path again.
    ///
    /// # Errors
    /// As [`Runtime::from_env`], or a fault-injection variable this build does not accept.
    #[inline(never)]
    pub fn new<'a>(
        name: &'a str,
        nats: &'a NatsConfig,
        job: JobConfig,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<Self>> + Send + 'a>> {
        Box::pin(Self::start(name, nats, job))
    }

    async fn start(name: &str, nats: &NatsConfig, job: JobConfig) -> anyhow::Result<Self> {
        let faults = Faults::from_env()?;
        crate::fault::ledger_hooks_from_env()?;
        #[cfg(not(feature = "fault-injection"))]
        let Faults {} = faults;
        // A zero lease would judge every claim abandoned: two replicas would both run the effect.
        anyhow::ensure!(
            job.ledger_lease_secs >= 1,
            "JOB_LEDGER_LEASE_SECS: must be at least 1 second (a claim younger than the lease is left to its \
             holder), got 0"
        );
        // 1 would owe the lowest class every turn: low before high.
        anyhow::ensure!(
            job.priority_every >= 2,
            "JOB_PRIORITY_EVERY: must be at least 2 (one start in this many goes to a waiting lower class), got {}",
            job.priority_every
        );
        // Sealed fields open only here, inside the function; the keyring's ids are logged, never its keys.
        let keyring = publish::sealed::Keyring::from_env()?.map(Arc::new);
        let nats_url = crate::nats_url::mask(&nats.url);
        if let Some(server) = crate::nats_url::parse(&nats.url)
            .ok()
            .and_then(|servers| servers.into_iter().next())
        {
            crate::telemetry::set_server_address(server.host(), server.port());
        }
        tracing::info!(function = name, ?job, %nats_url, ?keyring, "starting");
        let client = crate::connect(nats, name).await?;
        let js = jetstream::new(client.clone());
        let health = Health::default();
        health.watch_client(client.clone());
        Ok(Self {
            core: Core {
                name: name.to_owned(),
                outbox: crate::outbox::Outbox::start(client.clone()),
                client,
                js,
                job,
                validator: Arc::new(Validator::new()),
                keyring,
                probe: None,
                #[cfg(feature = "fault-injection")]
                faults,
            },
            health,
            consumers: Vec::new(),
        })
    }

    /// Gives the circuit breaker a way to tell that a downed dependency answers again (an SMTP `NOOP`, an HTTP
    /// health check). Without one, the breaker lets a trial message through after the probe interval.
    #[must_use]
    pub fn with_probe<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), anyhow::Error>> + Send + 'static,
    {
        self.core.probe = Some(Arc::new(move || Box::pin(probe())));
        self
    }

    /// The NATS connection, for handlers that publish.
    pub fn client(&self) -> &async_nats::Client {
        &self.core.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.core.js
    }

    /// The consumer a one-consumer function binds: `JOB_CONSUMER`, or the function's name.
    pub fn default_consumer(&self) -> &str {
        self.core.job.consumer.as_deref().unwrap_or(&self.core.name)
    }

    /// Adds a CloudEvents consumer: the durable `consumer` on `JOB_STREAM`, whose events `handler` handles.
    #[must_use]
    pub fn consume<T, H, Fut>(mut self, consumer: impl Into<String>, handler: H) -> Self
    where
        T: Event,
        H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.consumers.push(Box::new(TypedConsumer {
            consumer: consumer.into(),
            handler,
            _event: PhantomData::<fn() -> T>,
        }));
        self
    }

    /// Adds a raw consumer: `handler` gets each message as it is and says what became of it.
    #[must_use]
    pub fn consume_raw<H, Fut>(mut self, consumer: RawConsumer, handler: H) -> Self
    where
        H: Fn(RawJob) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.consumers
            .push(Box::new(RawConsumerWith { consumer, handler }));
        self
    }

    /// Serves the function's one consumer ([`Runtime::default_consumer`]) with `handler` until `shutdown`
    /// resolves: [`Runtime::consume`] then [`Runtime::run`].
    ///
    /// # Errors
    /// As [`Runtime::run`].
    pub fn serve<'a, T, H, Fut>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()> + Send + 'a,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>
    where
        T: Event,
        H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let consumer = self.default_consumer().to_owned();
        self.consume(consumer, handler).run(shutdown)
    }

    /// Serves every added consumer until `shutdown` resolves, then drains: stops pulling, lets in-flight
    /// handlers finish within `JOB_DRAIN_TIMEOUT_SECS` and settles them. What is unfinished at the deadline is
    /// redelivered later.
    ///
    /// # Errors
    /// Only start-up failures (no consumer was added, the health address cannot be bound); once messages flow,
    /// errors are handled per message and never end the loop.
    pub fn run<'a>(
        self,
        shutdown: impl Future<Output = ()> + Send + 'a,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        self.run_until(Box::pin(shutdown))
    }

    /// [`Runtime::run`], not generic (see [`Runtime::new`]).
    #[inline(never)]
    fn run_until<'a>(
        self,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(self.serve_until(shutdown))
    }

    async fn serve_until(
        self,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send + '_>>,
    ) -> anyhow::Result<()> {
        let Self {
            core,
            health,
            consumers,
        } = self;
        anyhow::ensure!(
            !consumers.is_empty(),
            "the runtime of {} has no consumer to serve",
            core.name
        );
        // Registered before the endpoint starts, so it is not ready until every one is bound.
        let bound: Vec<Bound> = consumers.iter().map(|_| health.consumer()).collect();
        let stop = CancellationToken::new();
        if let Some(addr) = &core.job.health_addr {
            health.clone().serve(addr, stop.clone()).await?;
        }
        let beating = crate::heartbeat::start(
            core.js.clone(),
            &core.name,
            health.clone(),
            Duration::from_secs(core.job.heartbeat_secs),
            stop.clone(),
        );
        let core = Arc::new(core);
        let mut serving = std::pin::pin!(futures::future::join_all(
            consumers
                .into_iter()
                .zip(bound)
                .map(|(consumer, bound)| consumer.serve(core.clone(), stop.clone(), bound)),
        ));
        tokio::select! {
            () = shutdown => stop.cancel(),
            _ = &mut serving => {}
        }
        serving.await;
        if let Some(beating) = beating {
            beating.stop().await;
        }
        // The acks the last attempts queued are handed to the client first, then the client's buffer leaves. A
        // client that never connected answers a flush only once it connects, which may be never: bounded, so
        // SIGTERM ends such a process too.
        let flushed = async {
            core.outbox.flush().await;
            core.client.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(2), flushed).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "flushing the NATS connection failed"),
            Err(_) => tracing::warn!("flushing the NATS connection did not finish in 2 s"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

impl Core {
    fn breaker(&self) -> Arc<Breaker> {
        let breaker = Breaker::new(
            &self.name,
            self.job.breaker_threshold,
            self.probe.clone(),
            Duration::from_secs(self.job.breaker_probe_secs.max(1)),
            Duration::from_secs(self.job.breaker_probe_max_secs.max(1)),
        );
        crate::heartbeat::watch_breaker(&breaker);
        breaker
    }

    fn settler(
        &self,
        policy: Policy,
        failures: Option<Failures>,
        dead_letters: DeadLetters,
        metrics: Arc<Metrics>,
    ) -> Settler {
        Settler {
            function: self.name.clone(),
            outbox: self.outbox.clone(),
            js: self.js.clone(),
            policy,
            ack: self.job.ack,
            failures,
            dead_letters,
            metrics,
            #[cfg(feature = "fault-injection")]
            delay_before_ack: self.faults.delay_before_ack,
        }
    }

    async fn bucket(&self, bucket: &str) -> anyhow::Result<async_nats::jetstream::kv::Store> {
        self.js
            .get_key_value(bucket)
            .await
            .with_context(|| format!("KV bucket {bucket}"))
    }
}

/// Whether a bucket lookup failed because the server has no such bucket (its stream is not found), the one
/// answer that means "absent" rather than "not answered".
fn bucket_missing(err: &async_nats::jetstream::context::KeyValueError) -> bool {
    use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(|inner| {
            matches!(inner.kind(), GetStreamErrorKind::JetStream(error)
                if error.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
        })
}

struct TypedConsumer<T, H> {
    consumer: String,
    handler: H,
    _event: PhantomData<fn() -> T>,
}

impl<T, H, Fut> Consumer for TypedConsumer<T, H>
where
    T: Event,
    H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn serve(
        self: Box<Self>,
        core: Arc<Core>,
        stop: CancellationToken,
        bound: Bound,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let Self {
            consumer, handler, ..
        } = *self;
        let handler: Arc<dyn RunAttempt> = Arc::new(Handler {
            handler,
            _event: PhantomData::<fn() -> T>,
        });
        serve_typed(core, stop, bound, consumer, T::TYPE, handler)
    }
}

/// Binds a typed consumer and serves it. Not generic, and its future is built here: a function binary that
/// awaited this crate's futures would compile their state machines (the pull loop, settle, the ledger, and the
/// async-nats calls under them) again, as it does every generic it instantiates. Here they are compiled once.
#[inline(never)]
fn serve_typed(
    core: Arc<Core>,
    stop: CancellationToken,
    bound: Bound,
    consumer: String,
    event_type: &'static str,
    handler: Arc<dyn RunAttempt>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let stream = core.job.stream.as_str();
        // The consumer, then the ledger and journal buckets: all must exist before a message is taken.
        // The one schema this consumer checks, compiled before the first pull (the rest of the catalog's are
        // compiled only if an event of their type is ever checked).
        core.validator.prepare(event_type);
        let bind = || async {
            // Five independent lookups sent together: start-up waits for one round trip, not five in a row.
            let (pull, ledger, failures, progress, batches) = tokio::join!(
                consume::get_consumer(&core.js, stream, &consumer),
                core.bucket(&core.job.ledger_bucket),
                core.bucket(&core.job.failures_bucket),
                core.js.get_key_value(events::PROGRESS_BUCKET),
                core.js.get_key_value(events::BATCH_BUCKET),
            );
            let (pull, ledger, failures) = (pull?, ledger?, failures?);
            // Optional: without the bucket (a deployment not yet applied) progress is an in-progress ack only.
            // Only the server's "no such bucket" means that: any other error (a timeout, a bucket electing its
            // leader) fails this bind, which is tried again, rather than leaving the process without the bucket
            // for its lifetime.
            let progress = match progress {
                Ok(store) => Some(store),
                Err(err) if bucket_missing(&err) => {
                    tracing::warn!(bucket = events::PROGRESS_BUCKET, error = %err, "progress bucket not found; job progress will not be recorded");
                    None
                }
                Err(err) => return Err(err).context(events::PROGRESS_BUCKET),
            };
            // Optional too: without it, batch items are retried until it exists.
            let batches = match batches {
                Ok(store) => Some(store),
                Err(err) if bucket_missing(&err) => {
                    tracing::warn!(bucket = events::BATCH_BUCKET, error = %err, "batch bucket not found; batch items will wait for it");
                    None
                }
                Err(err) => return Err(err).context(events::BATCH_BUCKET),
            };
            anyhow::Ok((pull, ledger, failures, progress, batches))
        };
        let bound_parts = tokio::select! {
            () = stop.cancelled() => None,
            parts = bind_with_backoff(stream, &consumer, bind) => Some(parts),
        };
        let Some((pull, ledger, failures, progress, batches)) = bound_parts else {
            tracing::info!(consumer = %consumer, "stopped before the consumer was bound");
            return;
        };
        let policy = Policy::of(stream, &consumer, &pull);
        crate::heartbeat::watch_consumer(&pull);
        let breaker = core.breaker();
        // The disk probe of the ledger bucket, beside the plan's lookups: both before the first pull.
        let (plan, disk) = tokio::join!(
            Plan::of(&core, &consumer, &pull),
            Ledger::probe_disk(&ledger, &core.name)
        );
        let stores = Stores {
            ledger,
            failures,
            progress,
            batches,
            disk,
        };
        let plan = match plan {
            Ok(plan) => plan,
            Err(err) => {
                // A definition the runtime cannot serve as written: serving it otherwise would break a promise
                // (a limit not kept, a class not served), so the consumer stays unbound and says why.
                tracing::error!(consumer = %consumer, error = %format!("{err:#}"), "cannot serve this consumer");
                stop.cancelled().await;
                return;
            }
        };
        if plan.is_plain() {
            let typed = typed_for(
                &core,
                &stores,
                policy.clone(),
                &breaker,
                &stop,
                &handler,
                event_type,
            );
            consume::pull(
                pull,
                &policy,
                typed,
                Some(&breaker),
                &stop,
                &bound,
                core.job.drain_timeout(),
            )
            .await;
            return;
        }
        let mut lanes = Vec::new();
        for (class, name) in plan.classes {
            let lane_pull = if name == consumer {
                pull.clone()
            } else {
                let bind = || consume::get_consumer(&core.js, stream, &name);
                tokio::select! {
                    () = stop.cancelled() => return,
                    bound = bind_with_backoff(stream, &name, bind) => bound,
                }
            };
            let lane_policy = Policy::of(stream, &name, &lane_pull);
            lanes.push(crate::lanes::Lane {
                class,
                consumer: lane_pull,
                processor: typed_for(
                    &core,
                    &stores,
                    lane_policy.clone(),
                    &breaker,
                    &stop,
                    &handler,
                    event_type,
                ),
                policy: lane_policy,
            });
        }
        crate::lanes::pull(
            lanes,
            core.job.priority_every,
            plan.limiter,
            Some(&breaker),
            &stop,
            &bound,
            core.job.drain_timeout(),
        )
        .await;
    })
}

/// The buckets a typed consumer's jobs write.
struct Stores {
    ledger: async_nats::jetstream::kv::Store,
    failures: async_nats::jetstream::kv::Store,
    progress: Option<async_nats::jetstream::kv::Store>,
    batches: Option<async_nats::jetstream::kv::Store>,
    /// Whether the ledger bucket's writes wait for the disk, probed once for all the consumer's classes.
    disk: Arc<crate::ledger::Disk>,
}

/// The metadata on a main consumer naming its priority classes' consumers, and its rate limit.
pub(crate) const PRIORITY_HIGH_METADATA: &str = "jetfn.priority.high";
pub(crate) const PRIORITY_LOW_METADATA: &str = "jetfn.priority.low";
pub(crate) const RATE_LIMIT_METADATA: &str = "jetfn.rate_limit";

/// How a typed consumer is served: its classes (highest first) and its rate limit.
struct Plan {
    classes: Vec<(events::Priority, String)>,
    limiter: Option<crate::RateLimiter>,
}

impl Plan {
    /// Reads the main consumer's metadata (`jetfn.priority.high`, `jetfn.priority.low`, `jetfn.rate_limit`) and
    /// `JOB_RATE_LIMIT`, which wins over the metadata.
    async fn of(core: &Core, consumer: &str, pull: &PullConsumer) -> anyhow::Result<Self> {
        let metadata = &pull.cached_info().config.metadata;
        let mut classes = Vec::new();
        if let Some(high) = metadata.get(PRIORITY_HIGH_METADATA) {
            classes.push((events::Priority::High, high.clone()));
        }
        classes.push((events::Priority::Normal, consumer.to_owned()));
        if let Some(low) = metadata.get(PRIORITY_LOW_METADATA) {
            classes.push((events::Priority::Low, low.clone()));
        }
        let limit = match (&core.job.rate_limit, metadata.get(RATE_LIMIT_METADATA)) {
            (Some(limit), _) => Some(*limit),
            (None, Some(text)) => Some(text.parse::<crate::Limit>().map_err(|err| {
                anyhow::anyhow!("consumer {consumer}: metadata.\"{RATE_LIMIT_METADATA}\": {err}")
            })?),
            (None, None) => None,
        };
        let limiter = match limit {
            Some(limit) => Some(
                crate::RateLimiter::bind(
                    &core.js,
                    &core.job.rate_bucket,
                    &core.name,
                    limit.limit,
                    limit.window,
                )
                .await?,
            ),
            None => None,
        };
        Ok(Self { classes, limiter })
    }

    /// One class and no limit: the plain pull, as before priorities.
    fn is_plain(&self) -> bool {
        self.classes.len() == 1 && self.limiter.is_none()
    }
}

/// The typed layer of one of a function's consumers; every class of a function shares its handler, breaker and
/// ledger, each has its own policy (its backoff, its name on dead letters).
fn typed_for(
    core: &Arc<Core>,
    stores: &Stores,
    policy: Policy,
    breaker: &Arc<Breaker>,
    stop: &CancellationToken,
    handler: &Arc<dyn RunAttempt>,
    event_type: &'static str,
) -> Arc<Typed> {
    let metrics = Arc::new(Metrics::new(
        &core.name,
        events::subject_for(event_type),
        &policy.consumer,
    ));
    let publisher = Arc::new(
        publish::Publisher::new(core.client.clone(), format!("/{}", core.name))
            .with_validator(core.validator.clone()),
    );
    Arc::new(Typed {
        settler: core.settler(
            policy,
            Some(Failures::new(stores.failures.clone())),
            DeadLetters::Record {
                prefix: core.job.dlq_prefix.clone(),
            },
            metrics.clone(),
        ),
        validator: core.validator.clone(),
        keyring: core.keyring.clone(),
        ledger: Ledger::batched_on(
            core.js.clone(),
            stores.ledger.clone(),
            &core.name,
            Duration::from_secs(core.job.ledger_lease_secs),
            stores.disk.clone(),
            core.outbox.clone(),
        ),
        handler: handler.clone(),
        shutdown: stop.clone(),
        breaker: breaker.clone(),
        metrics,
        handler_timeout: Duration::from_secs(core.job.handler_timeout_secs),
        function: core.name.as_str().into(),
        publisher: publisher.clone(),
        batches: Arc::new(crate::batch::Batches {
            store: stores.batches.clone(),
            js: core.js.clone(),
            publisher,
            function: core.name.as_str().into(),
        }),
        progress: Arc::new(crate::progress::Reporter {
            store: stores.progress.clone(),
            client: core.client.clone(),
        }),
    })
}

struct RawConsumerWith<H> {
    consumer: RawConsumer,
    handler: H,
}

impl<H, Fut> Consumer for RawConsumerWith<H>
where
    H: Fn(RawJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn serve(
        self: Box<Self>,
        core: Arc<Core>,
        stop: CancellationToken,
        bound: Bound,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let Self { consumer, handler } = *self;
        let handler: crate::raw::RawHandler = Arc::new(move |job| Box::pin(handler(job)));
        serve_raw(core, stop, bound, consumer, handler)
    }
}

/// Binds a raw consumer and serves it; not generic, for the reason `serve_typed` gives.
#[inline(never)]
fn serve_raw(
    core: Arc<Core>,
    stop: CancellationToken,
    bound: Bound,
    consumer: RawConsumer,
    handler: crate::raw::RawHandler,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let RawConsumer {
            stream,
            consumer,
            dead_letters,
        } = consumer;
        let bind = || async {
            let pull = consume::get_consumer(&core.js, &stream, &consumer).await?;
            let failures = if dead_letters {
                Some(Failures::new(core.bucket(&core.job.failures_bucket).await?))
            } else {
                None
            };
            anyhow::Ok((pull, failures))
        };
        let bound_parts = tokio::select! {
            () = stop.cancelled() => None,
            parts = bind_with_backoff(&stream, &consumer, bind) => Some(parts),
        };
        let Some((pull, failures)) = bound_parts else {
            tracing::info!(consumer = %consumer, "stopped before the consumer was bound");
            return;
        };
        let policy = Policy::of(&stream, &consumer, &pull);
        crate::heartbeat::watch_consumer(&pull);
        let dead_letters = if dead_letters {
            DeadLetters::Record {
                prefix: core.job.dlq_prefix.clone(),
            }
        } else {
            DeadLetters::TermOnly
        };
        let metrics = Arc::new(Metrics::new(&core.name, stream.clone(), &consumer));
        let raw = Arc::new(Raw {
            settler: core.settler(policy.clone(), failures, dead_letters, metrics),
            handler,
            shutdown: stop.clone(),
            handler_timeout: Duration::from_secs(core.job.handler_timeout_secs),
        });
        consume::pull(
            pull,
            &policy,
            raw,
            None,
            &stop,
            &bound,
            core.job.drain_timeout(),
        )
        .await;
    })
}
