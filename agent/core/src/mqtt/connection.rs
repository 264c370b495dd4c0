//! The connections to the broker, each polled by a task of its own that never runs guest
//! code or disk I/O, reconnects with exponential back-off, and reports what it sees on a
//! shared [`Links`] board (readiness for whoever started the agent, the last errors):
//!
//! - an **intake** connection per function ([`IntakeTask`]): it subscribes to the
//!   function's topics, hands messages to the router and sends their acknowledgements. When
//!   the function's queue is full it stops reading, so TCP flow control makes the broker
//!   hold the stream; one function's backlog, acknowledgement order and in-flight window
//!   never hold up another's;
//! - the **output** connection ([`OutputTask`]): everything the agent publishes, which the
//!   [`Publisher`] follows so that an event is acknowledged only once the broker has its
//!   outputs.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Outgoing, Packet,
    SubscribeFilter,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::mqtt::publisher::Publisher;
use crate::mqtt::refusal::Refusals;
use crate::topic::Subscription;

/// How long a connection must hold before a failure starts the back-off from its minimum.
const HEALTHY: Duration = Duration::from_secs(10);

/// Connections in a row that the broker accepts and then closes before they held for
/// [`HEALTHY`], after which the agent says what usually does that.
const CLOSED_YOUNG: u32 = 3;

/// What the agent says after [`CLOSED_YOUNG`] such connections. Over MQTT 3.1.1 a broker
/// gives no reason when it closes a connection, and a second client with the same client
/// id is what closes one again and again right after the broker accepted it: Mosquitto
/// ends the older connection whenever the other reconnects, so two agents with one id
/// take their sessions from each other in turn, each missing events that the other then
/// handles with its own state.
const CLOSED_YOUNG_HINT: &str = "the broker keeps closing this connection right after accepting it: \
     another client is probably connected with the same client id (two agents with the same \
     `agent.id` or `broker.client_id` on one broker take each other's sessions in turn: give \
     each its own), or the broker refuses something this connection sends (its log says which)";

/// [`CLOSED_YOUNG_HINT`] when the connections were reset rather than closed: a link that
/// drops connections (a proxy resetting them every second in a probe, 2026-12-07) was
/// blamed on a second client alone.
const RESET_YOUNG_HINT: &str = "the connection keeps being reset right after the broker accepted it: \
     a link that drops connections (a failing Wi-Fi or mobile link, a NAT or proxy that resets \
     them), another client connected with the same client id (two agents with the same \
     `agent.id` or `broker.client_id` on one broker take each other's sessions in turn: give \
     each its own), or the broker refusing something this connection sends (its log says which)";

/// What the log says of a TLS handshake that failed, when the failure has a cause the user
/// can act on: `None` for any other failure. Until 2026-12-08 only the certificates'
/// dates had their own words; the rest read "cannot connect to the broker", the same as a
/// broker that is down, so a broker that came back with a certificate the agent does not
/// trust was said only at the tenth attempt, 50 s later (a probe).
fn tls_cause(e: &ConnectionError) -> Option<&'static str> {
    use rustls::AlertDescription as A;
    use rustls::CertificateError as C;
    // tokio-rustls hands rustls's error over inside an `io::Error`, in the handshake, and
    // after it for an alert the broker sends once it has seen the client certificate
    // (TLS 1.3).
    fn inner(io: &std::io::Error) -> Option<&rustls::Error> {
        io.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    }
    let tls = match e {
        ConnectionError::Tls(rumqttc::TlsError::TLS(r)) => Some(r),
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) => inner(io),
        _ => io_error(e).and_then(inner),
    }?;
    Some(match tls {
        // Not yet valid, on a device without a real-time clock before it has the time from
        // the network, is the device's clock (it starts behind: at 1970, or at the time it
        // last saved); expired is the certificate (until 2026-12-07 blamed on the clock
        // too, for one expired three years before), or a clock ahead.
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the broker's certificate is not valid yet at this device's time: if the \
             device has no real-time clock (a Raspberry Pi) and has not had the time \
             from the network yet, this ends when it does; retrying"
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the broker's certificate has expired: renew it on the broker, or set this \
             device's clock if it is ahead; retrying"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            "the broker's certificate is not for the host in `broker.url`: its subject \
             alternative names must include that name or IP address; retrying"
        }
        rustls::Error::InvalidCertificate(_) => {
            "the broker's certificate is not one the agent trusts (`broker.tls.ca_file`, or \
             the system's CAs without it): signed by another CA, or damaged; retrying"
        }
        rustls::Error::AlertReceived(A::CertificateRequired | A::HandshakeFailure) => {
            "the broker wants a client certificate that this agent does not show \
             (`broker.tls.cert_file` and `key_file`), or refused the TLS handshake (its \
             log says why); retrying"
        }
        rustls::Error::AlertReceived(A::CertificateExpired) => {
            "the broker refused this agent's client certificate as expired \
             (`broker.tls.cert_file`): renew it, or set this device's clock if it is \
             behind; retrying"
        }
        rustls::Error::AlertReceived(
            A::UnknownCA
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::AccessDenied,
        ) => {
            "the broker refused this agent's client certificate (`broker.tls.cert_file`): \
             not signed by a CA the broker trusts, or revoked (the broker's log says \
             which); retrying"
        }
        _ => "the TLS handshake with the broker failed; retrying",
    })
}

/// After a removed function's unsubscriptions are confirmed, how long its intake goes on
/// reading with nothing arriving before it takes the broker to have sent all it had.
const QUIET: Duration = Duration::from_millis(500);

/// A [`CancellationToken`] as a future that a connection's loop makes once and polls at
/// every MQTT event: polling it is an atomic load while the token stands. The token's own
/// future, made anew in each `select!`, registered a waiter on a lock at every event,
/// took the token's lock at every poll and another to unregister: 4.8% of the agent's
/// CPU in a QoS 0 burst (docs/benchmarks.md, "Cancellation tokens made once"). Ready,
/// it stays ready.
struct Cancelled(Option<tokio::sync::oneshot::Receiver<()>>);

impl Cancelled {
    /// Follows `token`; a task of its own waits for it, and ends with the future.
    fn new(token: &CancellationToken) -> Self {
        let (mut tx, rx) = tokio::sync::oneshot::channel();
        let token = token.clone();
        tokio::spawn(async move {
            let cancelled = tokio::select! {
                () = token.cancelled() => true,
                () = tx.closed() => false,
            };
            if cancelled {
                let _ = tx.send(());
            }
        });
        Self(Some(rx))
    }
}

impl std::future::Future for Cancelled {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let Some(rx) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        // An error is the task gone without sending: the runtime is shutting down.
        std::task::ready!(std::pin::Pin::new(rx).poll(cx)).ok();
        self.0 = None;
        std::task::Poll::Ready(())
    }
}

/// Completes at `at`, or never.
/// How long a connection that has sent DISCONNECT reads on, discarding, for the broker to
/// close it. Closed at once, a socket with unread data (the messages a broker goes on
/// sending after the intake stopped) ends in a TCP reset, and a broker whose kernel gets
/// the reset before the broker has read the last acknowledgements drops them: those
/// messages came again at the next start, and their outputs went out twice (33-59 after
/// a graceful stop mid-stream under `max_flushes_per_sec = 5`, in 5 of 40 runs).
const LINGER: Duration = Duration::from_secs(1);

/// When a connection that has just sent DISCONNECT stops waiting for the broker to close.
fn linger() -> Option<tokio::time::Instant> {
    Some(tokio::time::Instant::now() + LINGER)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where an intake connection hands what it receives. The pipeline's router implements
/// it, so that the transport never names the pipeline (it sits below it).
pub trait Intake: Send {
    /// A (re)connection: the previous connection's packet ids are void, and so is the
    /// session's history unless the broker kept it (`session_present`).
    fn connected(&self, session_present: bool);
    /// The connection is lost: the packet ids of its messages are void.
    fn disconnected(&self);
    /// Whether the next message can be taken now; when not, the connection stops reading.
    fn has_room(&self) -> bool;
    /// Completes once [`Intake::has_room`].
    fn room(&self) -> impl std::future::Future<Output = ()> + Send;
    /// Takes one message. Never blocks.
    fn route(&self, publish: rumqttc::Publish);
    /// Takes a retained message that the broker sent again only because the connection
    /// subscribed again to a filter its resumed session already had: the agent has had it
    /// before. Acknowledges it without handing it to a function. Never blocks.
    fn retained_copy(&self, publish: rumqttc::Publish);
}

/// One connection as last seen by its task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// The broker accepted the connection (CONNACK success) and it has not failed since.
    pub connected: bool,
    /// The broker answered the subscriptions of the current connection (the output
    /// connection, which subscribes to nothing, counts as subscribed once connected).
    pub subscribed: bool,
    /// Connections that failed or were lost so far.
    pub failures: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
    /// Filters the broker refused (SUBACK failure) on the current connection, in words:
    /// the function hears nothing on them while the rest of the agent runs; tried again.
    pub refused: Option<String>,
}

/// Every connection's status: the output connection's first, then each intake's (a
/// function that a reload adds gets its place at the end, one it removes loses its place).
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// (connection name, status).
    pub links: Vec<(String, ConnectionStatus)>,
}

impl Links {
    /// A board for the output connection and one intake per name in `functions`.
    pub fn new<'a>(functions: impl Iterator<Item = &'a str>) -> Self {
        let names = std::iter::once(OUTPUT.to_string()).chain(functions.map(intake_name));
        Self {
            links: names.map(|n| (n, ConnectionStatus::default())).collect(),
        }
    }

    /// The status of the connection called `name`.
    pub fn get(&self, name: &str) -> Option<&ConnectionStatus> {
        self.links.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }

    /// The agent's connection as a whole: connected and subscribed when every connection
    /// is; failures summed; the first connection's error that has one.
    pub fn overall(&self) -> ConnectionStatus {
        let all = |f: fn(&ConnectionStatus) -> bool| self.links.iter().all(|(_, s)| f(s));
        ConnectionStatus {
            connected: !self.links.is_empty() && all(|s| s.connected),
            subscribed: !self.links.is_empty() && all(|s| s.subscribed),
            failures: self.links.iter().map(|(_, s)| s.failures).sum(),
            last_error: self
                .links
                .iter()
                .find_map(|(n, s)| s.last_error.as_ref().map(|e| format!("{n}: {e}"))),
            refused: self
                .links
                .iter()
                .find_map(|(n, s)| s.refused.as_ref().map(|e| format!("{n}: {e}"))),
        }
    }
}

/// The output connection's name on the board.
pub const OUTPUT: &str = "output";

/// Function `f`'s intake connection's name on the board.
pub fn intake_name(f: &str) -> String {
    format!("intake {f}")
}

/// A connection's place on the [`Links`] board.
#[derive(Clone)]
pub struct Link {
    board: watch::Sender<Links>,
    name: String,
}

impl Link {
    /// The place called `name` on `board`, added at the end if it is not there yet.
    pub fn new(board: watch::Sender<Links>, name: String) -> Self {
        board.send_if_modified(|l| {
            let missing = l.get(&name).is_none();
            if missing {
                l.links.push((name.clone(), ConnectionStatus::default()));
            }
            missing
        });
        Self { board, name }
    }

    fn update(&self, f: impl FnOnce(&mut ConnectionStatus)) {
        self.board.send_modify(|l| {
            if let Some((_, s)) = l.links.iter_mut().find(|(n, _)| *n == self.name) {
                f(s);
            }
        });
    }

    /// Takes the place off the board (its function was removed); later updates do nothing.
    pub fn remove(&self) {
        self.board.send_if_modified(|l| {
            let before = l.links.len();
            l.links.retain(|(n, _)| *n != self.name);
            l.links.len() != before
        });
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// Reconnection delays: doubling from `min` to `max`, back to `min` only after a
/// connection has held for [`HEALTHY`] (one that the broker accepts and then drops at once,
/// a protocol error or a client-id takeover, must not reconnect in a loop at the minimum).
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    failures: u32,
    /// Connections in a row that the broker closed before they held for [`HEALTHY`].
    closed_young: u32,
    /// On tokio's clock, like the delays, so that a test can let the time pass.
    connected_at: Option<tokio::time::Instant>,
    /// What the log last said of a failure in this row ([`first_failure`]).
    said: Option<&'static str>,
}

impl Backoff {
    /// Delays from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
            failures: 0,
            closed_young: 0,
            connected_at: None,
            said: None,
        }
    }

    fn connected(&mut self) {
        self.connected_at = Some(tokio::time::Instant::now());
    }

    /// Whether the connection that just failed had been up for less than [`HEALTHY`].
    fn young(&self) -> bool {
        self.connected_at.is_some_and(|t| t.elapsed() < HEALTHY)
    }

    /// The cause of the failures in a row so far is known and removed: the next attempt
    /// comes at the shortest delay, as after a healthy connection.
    fn dealt_with(&mut self) {
        self.next = self.min;
        self.failures = 0;
        self.closed_young = 0;
    }

    /// Whether `what` ([`first_failure`]) is not what the log said of the last failure in
    /// this row (the first of a row always is); it is from now on.
    fn new_cause(&mut self, what: &'static str) -> bool {
        if self.failures == 1 {
            self.said = None;
        }
        self.said.replace(what) != Some(what)
    }

    /// Records a failure on `link`, logs it, and waits out the delay. False if `force_stop`
    /// came first.
    async fn failed(
        &mut self,
        link: &Link,
        e: &ConnectionError,
        force_stop: &CancellationToken,
    ) -> bool {
        let held = self.connected_at.take().map(|t| t.elapsed());
        if held.is_some_and(|held| held >= HEALTHY) {
            self.next = self.min;
            self.failures = 0;
        }
        self.failures += 1;
        self.closed_young = match held {
            Some(held) if held < HEALTHY && closed_by_peer(e) => self.closed_young + 1,
            _ => 0,
        };
        let hint = (self.closed_young >= CLOSED_YOUNG).then_some(if reset(e) {
            RESET_YOUNG_HINT
        } else {
            CLOSED_YOUNG_HINT
        });
        link.update(|s| {
            s.connected = false;
            s.subscribed = false;
            s.failures += 1;
            s.last_error = Some(match hint {
                Some(hint) => format!("{e}: {hint}"),
                None => e.to_string(),
            });
        });
        let (name, retry_in_ms) = (link.name(), self.next.as_millis() as u64);
        // Said at the first failure of a row, and again when the cause changes: a broker
        // that comes up while the agent waits and then refuses its credentials was told
        // only as "keeps failing" 50 s later, without the hint (until 2026-12-07).
        let what = first_failure(e, held.is_some());
        let new_cause = self.new_cause(what);
        if let Some(hint) = hint.filter(|_| self.closed_young == CLOSED_YOUNG) {
            tracing::warn!(connection = %name, error = %e, times = self.closed_young, retry_in_ms, "{hint}");
        } else if new_cause {
            tracing::warn!(connection = %name, error = %e, retry_in_ms, "{what}");
        } else {
            tracing::debug!(connection = %name, error = %e, attempt = self.failures, retry_in_ms, "reconnect failed");
        }
        if self.failures.is_multiple_of(10) {
            tracing::warn!(connection = %name, error = %e, attempts = self.failures, "broker connection keeps failing: {what}");
        }
        let waited = tokio::select! {
            () = force_stop.cancelled() => false,
            () = tokio::time::sleep(self.next) => true,
        };
        self.next = (self.next * 2).min(self.max);
        waited
    }
}

/// What the log says of the first failure in a row: `e`, on a connection that the broker
/// had accepted (`was_up`) or not.
pub(crate) fn first_failure(e: &ConnectionError, was_up: bool) -> &'static str {
    if let Some(cause) = tls_cause(e) {
        return cause;
    }
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => {
            "the broker refused the agent's credentials (`broker.username`, `broker.password`); retrying"
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => {
            "the broker refused the client id (`broker.client_id`); retrying"
        }
        _ if !was_up && reset(e) => {
            "the connection was reset before the broker accepted it: a TLS port reached \
             without TLS (`broker.url` with mqtt:// where it needs mqtts://), a broker that \
             will not take the agent's CONNECT (its log says why: Mosquitto with \
             `retain_available false` refuses the agent's retained last will), or a link \
             that drops connections (a failing Wi-Fi or mobile link, a NAT or proxy that \
             resets them); retrying"
        }
        _ if !was_up && closed_by_peer(e) => {
            "the broker closed the connection before accepting it: a TLS port reached \
             without TLS (`broker.url` with mqtt:// where it needs mqtts://), or a broker \
             that will not take the agent's CONNECT (its log says why: Mosquitto with \
             `retain_available false` refuses the agent's retained last will); retrying"
        }
        _ if !was_up => "cannot connect to the broker; retrying",
        _ => "broker connection lost; reconnecting",
    }
}

/// Whether `e` is the broker (or something on the way) closing a connection, rather than
/// refusing it or timing out.
fn closed_by_peer(e: &ConnectionError) -> bool {
    use std::io::ErrorKind;
    io_error(e).is_some_and(|e| {
        matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        )
    }) || matches!(
        e,
        ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted)
    )
}

/// Whether `e` is a connection reset (a TCP RST): from the broker, or from anything on
/// the way, where a closed connection (end of file) comes from the broker.
fn reset(e: &ConnectionError) -> bool {
    io_error(e).is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// The I/O error under `e`, if it is one.
fn io_error(e: &ConnectionError) -> Option<&std::io::Error> {
    match e {
        ConnectionError::MqttState(
            rumqttc::StateError::Io(e)
            | rumqttc::StateError::Deserialization(rumqttc::mqttbytes::Error::Io(e)),
        )
        | ConnectionError::Io(e) => Some(e),
        _ => None,
    }
}

/// The output connection's task.
pub struct OutputTask {
    /// rumqttc's event loop of the output connection.
    pub eventloop: EventLoop,
    /// Follows what goes out.
    pub publisher: Arc<Publisher>,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Where the task reports what it sees.
    pub link: Link,
    /// Filters an agent with one connection for everything subscribed to under this client
    /// id: dropped if the first connection resumes such a session.
    pub stale_filters: Vec<String>,
    /// Finds a message the broker refuses by closing the connection.
    pub refusals: Refusals,
}

impl OutputTask {
    /// Follows what went out and what the broker confirmed.
    fn seen(&mut self, event: &Event) {
        self.publisher.observe(event);
        match event {
            Event::Incoming(Packet::PubAck(_) | Packet::PubRec(_)) => {
                let ping_outstanding = self.eventloop.state.await_pingresp;
                self.refusals
                    .confirmed(&mut self.eventloop.pending, ping_outstanding);
            }
            Event::Incoming(Packet::PingResp) => self.refusals.pinged(&mut self.eventloop.pending),
            Event::Outgoing(Outgoing::Publish(pkid)) => self.refusals.written(*pkid),
            _ => {}
        }
    }

    /// Runs until `force_stop` is cancelled or a clean disconnect has been sent.
    pub async fn run(mut self, force_stop: CancellationToken) {
        let mut stop = Cancelled::new(&force_stop);
        // Set once DISCONNECT is out: read on until the broker closes ([`LINGER`]).
        let mut closing = None;
        loop {
            let polled = tokio::select! {
                biased;
                () = &mut stop => break,
                () = sleep_until(closing) => break,
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(event) => {
                    self.seen(&event);
                    match event {
                        Event::Incoming(Packet::ConnAck(ack))
                            if ack.code == ConnectReturnCode::Success =>
                        {
                            tracing::info!(
                                connection = "output",
                                session_present = ack.session_present,
                                "connected to broker"
                            );
                            if !ack.session_present {
                                self.refusals.session_lost();
                            }
                            let dropped = self.publisher.reconnected(ack.session_present);
                            if dropped > 0 {
                                tracing::error!(
                                    dropped,
                                    "the broker did not keep the output connection's session: \
                                    unconfirmed outputs were dropped; their events stay unacknowledged for redelivery"
                                );
                            }
                            // The session is kept so that, after a reconnection, rumqttc
                            // resends what the broker had not confirmed. An older agent
                            // received its events on this client id: drop its subscriptions.
                            if ack.session_present {
                                self.publisher
                                    .unsubscribe(&std::mem::take(&mut self.stale_filters));
                            }
                            self.stale_filters.clear();
                            self.backoff.connected();
                            self.link.update(|s| {
                                s.connected = true;
                                s.subscribed = true;
                            });
                        }
                        Event::Outgoing(Outgoing::Disconnect) => closing = linger(),
                        _ => {}
                    }
                }
                // The broker closed the connection after our DISCONNECT.
                Err(_) if closing.is_some() => break,
                Err(e) => {
                    // What rumqttc wrote, and what the broker confirmed, before the failure
                    // and not handed out yet: followed now, so that the publisher pairs
                    // what it numbered before deciding what the session's loss drops.
                    let buffered: Vec<Event> = self.eventloop.state.events.drain(..).collect();
                    for event in &buffered {
                        self.seen(event);
                    }
                    // Our DISCONNECT went out, and the broker closed: done.
                    if buffered
                        .iter()
                        .any(|e| matches!(e, Event::Outgoing(Outgoing::Disconnect)))
                    {
                        break;
                    }
                    let taken = self.refusals.unnumbered(&self.eventloop.pending);
                    self.publisher.connection_lost(taken);
                    let by_broker = closed_by_peer(&e) && self.backoff.young();
                    if let Some(r) = self.refusals.lost(by_broker, &mut self.eventloop).await {
                        let what = if r.too_large {
                            "larger than any it took: it refuses messages this large (a packet \
                             size limit: set broker.max_packet_bytes to it). Messages of this \
                             size or more are dropped (their events were handled) and refused \
                             when published, until the agent restarts"
                        } else if r.topic_refused {
                            "the second to this topic so refused: it refuses the topic (its \
                             ACL or policy: its log says why). Messages to it are dropped \
                             (their events were handled) and refused when published, until \
                             the agent restarts"
                        } else {
                            "no larger than others it took: it refuses this one (its ACL or \
                             policy: its log says why), which is dropped (its event was \
                             handled); a second one so refused refuses the topic"
                        };
                        tracing::error!(
                            topic = %r.topic,
                            bytes = r.bytes,
                            largest_confirmed = r.largest_confirmed,
                            dropped = r.dropped,
                            "the broker closed the output connection each time this message \
                             was alone in flight, {what}"
                        );
                        // Found and dealt with: nothing to back off from.
                        self.backoff.dealt_with();
                    }
                    if !self.backoff.failed(&self.link, &e, &force_stop).await {
                        break;
                    }
                    self.refusals.reconnecting(&mut self.eventloop).await;
                }
            }
        }
    }
}

/// The first wait before asking again for a subscription the broker refused; it doubles
/// with each refusal, up to [`RESUBSCRIBE_MAX`] (an ACL fixed on the broker is taken
/// without a restart).
const RESUBSCRIBE_FIRST: Duration = Duration::from_secs(1);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(300);

/// An intake connection's task.
pub struct IntakeTask {
    /// Where its subscription requests run (they must not block the polling loop), owned
    /// by the stop sequence.
    pub background: crate::tasks::Background,
    /// rumqttc's event loop of this connection.
    pub eventloop: EventLoop,
    /// Its client (for subscribing).
    pub client: AsyncClient,
    /// What to subscribe to after each connect.
    pub subscriptions: Vec<Subscription>,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Where the task reports what it sees.
    pub link: Link,
    /// Longest stop in reading while the queue is full: half the keep-alive, so that the
    /// keep-alive pings still go out in time.
    pub max_pause: Duration,
    /// Cancelled when a reload removes the function: the task unsubscribes, routes what
    /// arrives until the broker confirms, then drops the router (the queue drains).
    pub retire: CancellationToken,
    /// Where the filters that the broker's session for this connection has are kept, so
    /// that a restart of the agent knows them too ([`SessionFilters`]).
    pub session: SessionFilters,
}

/// The filters a connection's session on the broker has, as far as the agent knows: those
/// the broker confirmed (SUBACK) on a connection of that session. Over MQTT 3.1.1 every
/// SUBSCRIBE, even of a filter the session already has, makes the broker send the
/// filter's retained messages again, and the agent subscribes again at each connect (the
/// only way to be sure of its subscriptions): without this, each reconnect and each
/// restart handed every retained message to the functions once more, and a counter counted
/// it again. Kept in a file (one filter a line); a missing or unreadable one is no
/// filters, which costs one more copy of each retained message, never an event.
pub struct SessionFilters {
    file: std::path::PathBuf,
    had: std::collections::BTreeSet<String>,
}

impl SessionFilters {
    /// The filters kept in `file` (none if it does not exist or cannot be read).
    pub fn load(file: std::path::PathBuf) -> Self {
        let had = std::fs::read_to_string(&file)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default();
        Self { file, had }
    }

    /// The broker confirmed `filters` on this session: kept, in the background.
    fn confirmed(&mut self, filters: &[Subscription], background: &crate::tasks::Background) {
        let filters: std::collections::BTreeSet<String> =
            filters.iter().map(|s| s.filter.clone()).collect();
        if filters == self.had {
            return;
        }
        self.had = filters;
        self.keep(background);
    }

    /// The function is removed and its filters unsubscribed: the session has none. Its
    /// file stays, empty, for the session to be ended on the broker (with the receipts
    /// that answered its resends) and the file with it
    /// ([`crate::daemon::lanes`]`::end_stale_sessions`, at once or at the next start).
    fn forget(&mut self, background: &crate::tasks::Background) {
        self.had.clear();
        self.keep(background);
    }

    /// Writes the filters to the file, in the background. The turn is taken now: a write
    /// decided before this one (or before the session's end deletes the file) that
    /// reaches a stalled disk after it is skipped, so nothing waits for the disk here.
    fn keep(&self, background: &crate::tasks::Background) {
        let text: String = self.had.iter().map(|f| format!("{f}\n")).collect();
        let (file, turn) = (self.file.clone(), crate::files::Turn::take());
        background.spawn_until_stopped(async move {
            let written = tokio::task::spawn_blocking(move || {
                (crate::files::replace_in_turn(&file, text.as_bytes(), turn), file)
            })
            .await;
            if let Ok((Err(e), file)) = written {
                tracing::warn!(file = %file.display(), error = %e, "could not write the session's filters: after a restart, retained messages on them may be handled again, or not at all");
            }
        });
    }
}

impl IntakeTask {
    /// Runs until `force_stop` is cancelled or a clean disconnect has been sent. When
    /// `stop_intake` is cancelled the router is dropped: later messages are left
    /// unacknowledged for the broker to redeliver, and the function's queue closes.
    pub async fn run(
        mut self,
        router: impl Intake,
        stop_intake: CancellationToken,
        force_stop: CancellationToken,
    ) {
        let mut router = Some(router);
        let (mut connected, mut retiring) = (false, false);
        // UNSUBACKs still awaited while retiring, then when the broker is taken to have
        // sent all it had for us (nothing for QUIET while there was room to read).
        let mut unsubscribing = 0;
        let mut quiet_at: Option<tokio::time::Instant> = None;
        // A message that came while the queue was full. Only it waits for room: the
        // other events of the loop (above all the acknowledgements it writes, which
        // rumqttc reports one per poll) go on, so that acknowledgements leave as events
        // finish and a broker restart finds few events handled but not acknowledged.
        let mut held: Option<rumqttc::Publish> = None;
        // Set once DISCONNECT is out: read on until the broker closes ([`LINGER`]).
        let mut closing = None;
        // The filters the session had when this connection resumed it (none for a new
        // session): the retained messages of those that the broker sends again are copies.
        let mut resumed: std::collections::BTreeSet<String> = Default::default();
        // Each SUBSCRIBE sent on this connection, by the indexes of its filters in
        // `subscriptions` (SUBACKs come in the same order); the filters the broker
        // refused, and when to ask for them again.
        let mut sent: std::collections::VecDeque<Vec<usize>> = Default::default();
        let mut refused: std::collections::BTreeSet<usize> = Default::default();
        let (mut ask_again, mut ask_wait) = (None, RESUBSCRIBE_FIRST);
        let (mut force, mut intake, mut retire) = (
            Cancelled::new(&force_stop),
            Cancelled::new(&stop_intake),
            Cancelled::new(&self.retire),
        );
        loop {
            if let (Some(r), Some(_)) = (router.as_ref(), held.as_ref()) {
                if !r.has_room() {
                    // Backpressure: read nothing until the queue has room; the broker
                    // holds the stream meanwhile (TCP flow control), QoS 0 as well.
                    tokio::select! {
                        biased;
                        () = &mut force => break,
                        () = &mut intake => {}
                        () = &mut retire, if !retiring => {}
                        _ = tokio::time::timeout(self.max_pause, r.room()) => {}
                    }
                }
                if r.has_room() {
                    r.route(held.take().expect("held"));
                }
            }
            let polled = tokio::select! {
                biased;
                () = &mut force => break,
                () = sleep_until(closing) => break,
                () = &mut intake, if router.is_some() => {
                    router = None;
                    held = None;
                    tracing::info!(connection = %self.link.name(), "intake stopped; new messages are left with the broker");
                    continue;
                }
                () = &mut retire, if router.is_some() && !retiring => {
                    retiring = true;
                    if connected && !self.subscriptions.is_empty() {
                        unsubscribing = self.subscriptions.len();
                        self.unsubscribe();
                    } else {
                        router = None;
                    }
                    continue;
                }
                () = sleep_until(quiet_at), if router.is_some() => {
                    if router.as_ref().is_some_and(Intake::has_room) {
                        tracing::info!(connection = %self.link.name(), "unsubscribed and nothing more came: the removed function's queue drains");
                        router = None;
                    } else {
                        quiet_at = Some(tokio::time::Instant::now() + QUIET);
                    }
                    continue;
                }
                () = sleep_until(ask_again), if connected && router.is_some() && !retiring => {
                    ask_again = None;
                    let again: Vec<usize> = refused.iter().copied().collect();
                    self.subscribe_to(&again);
                    sent.push_back(again);
                    continue;
                }
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(Event::Incoming(Packet::Publish(p))) => match &router {
                    Some(r) => {
                        if quiet_at.is_some() {
                            quiet_at = Some(tokio::time::Instant::now() + QUIET);
                        }
                        // Polled without room only after `max_pause` (to keep the
                        // connection alive): the message in hand goes in over the limit.
                        if let Some(earlier) = held.take() {
                            r.route(earlier);
                        }
                        // At QoS 0 the broker queued nothing while the agent was away: the
                        // copy may be the only delivery of a newer value, so it is handled.
                        let copy = p.retain && p.qos != rumqttc::QoS::AtMostOnce;
                        if copy && self.had_before(&resumed, &p.topic) {
                            tracing::debug!(topic = %p.topic, "a retained message sent again on a resumed subscription: acknowledged, not handled again");
                            r.retained_copy(p);
                        } else if r.has_room() {
                            r.route(p);
                        } else {
                            held = Some(p);
                        }
                    }
                    None => {
                        tracing::debug!(topic = %p.topic, "message after intake stopped; not acknowledged")
                    }
                },
                Ok(Event::Incoming(Packet::UnsubAck(_))) if retiring => {
                    unsubscribing = unsubscribing.saturating_sub(1);
                    if unsubscribing == 0 {
                        self.session.forget(&self.background);
                        // What the broker had queued or in flight for this client may
                        // still come: it is the function's, and handled.
                        quiet_at = Some(tokio::time::Instant::now() + QUIET);
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack)))
                    if ack.code == ConnectReturnCode::Success =>
                {
                    connected = true;
                    tracing::debug!(connection = %self.link.name(), session_present = ack.session_present, "connected to broker");
                    self.backoff.connected();
                    self.link.update(|s| {
                        s.connected = true;
                        s.subscribed = false;
                    });
                    if retiring {
                        // Removed while the connection was down: subscribe no more.
                        router = None;
                    }
                    resumed = if ack.session_present {
                        self.session.had.clone()
                    } else {
                        // The broker had one (its filters were confirmed before) and has
                        // it no more. Said: until 2026-12-08 only the output connection's
                        // `session_present` was logged, at debug (a probe).
                        if !self.session.had.is_empty() && router.is_some() {
                            tracing::warn!(connection = %self.link.name(), "the broker did not keep this function's session (it expired, the broker restarted without persistence, or it was ended): the messages it queued for the function while it was away are lost, and the retained messages on its filters come again as new events");
                        }
                        Default::default()
                    };
                    (sent, refused, ask_again, ask_wait) = (
                        Default::default(),
                        Default::default(),
                        None,
                        RESUBSCRIBE_FIRST,
                    );
                    if let Some(r) = &router {
                        r.connected(ack.session_present);
                        self.subscribe();
                        sent.push_back((0..self.subscriptions.len()).collect());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    use rumqttc::SubscribeReasonCode;
                    let asked = sent
                        .pop_front()
                        .unwrap_or_else(|| (0..self.subscriptions.len()).collect());
                    for (&i, code) in asked.iter().zip(&ack.return_codes) {
                        let filter = self.subscriptions.get(i).map_or("?", |s| s.filter.as_str());
                        if matches!(code, SubscribeReasonCode::Failure) {
                            // Said once per connection at error, then at each try again.
                            if refused.insert(i) {
                                tracing::error!(connection = %self.link.name(), filter, "broker refused the subscription: the function hears nothing on it (an ACL or policy?); asking again, less and less often");
                            } else {
                                tracing::debug!(connection = %self.link.name(), filter, "broker refused the subscription again");
                            }
                        } else if refused.remove(&i) {
                            tracing::info!(connection = %self.link.name(), filter, "broker took the subscription it had refused");
                        }
                    }
                    // What the broker took is the session's: a filter refused is not,
                    // and its retained messages are new when it is taken.
                    let taken: Vec<Subscription> = (0..self.subscriptions.len())
                        .filter(|i| !refused.contains(i))
                        .filter_map(|i| self.subscriptions.get(i).cloned())
                        .collect();
                    self.session.confirmed(&taken, &self.background);
                    let said = (!refused.is_empty()).then(|| {
                        let filters: Vec<&str> = refused
                            .iter()
                            .filter_map(|&i| self.subscriptions.get(i))
                            .map(|s| s.filter.as_str())
                            .collect();
                        format!(
                            "the broker refused the subscription to {}",
                            filters.join(", ")
                        )
                    });
                    if said.is_some() && ask_again.is_none() && sent.is_empty() {
                        // Until 2026-12-08 never asked again: deaf until a restart, while
                        // the agent said it was ready (a probe).
                        ask_again = Some(tokio::time::Instant::now() + ask_wait);
                        ask_wait = (ask_wait * 2).min(RESUBSCRIBE_MAX);
                    }
                    self.link.update(|s| {
                        s.subscribed = true;
                        s.refused = said;
                    });
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => closing = linger(),
                Ok(_) => {}
                // The broker closed the connection after our DISCONNECT.
                Err(_) if closing.is_some() => break,
                Err(e) => {
                    connected = false;
                    if let Some(r) = &router {
                        r.disconnected();
                    }
                    // Its packet id died with the connection: the broker sends it again.
                    held = None;
                    if retiring && router.take().is_some() {
                        tracing::info!(connection = %self.link.name(), "connection lost while the function is removed: its queue drains");
                    }
                    // A stop of intake cuts the back-off short (the loop then drops the
                    // router): the stop waits for every intake to let go of its router,
                    // and waiting out a delay of up to `reconnect_max_ms` for a broker
                    // that is not there held it for the whole grace period.
                    let waited = tokio::select! {
                        waited = self.backoff.failed(&self.link, &e, &force_stop) => waited,
                        () = &mut intake, if router.is_some() => true,
                    };
                    if !waited {
                        break;
                    }
                }
            }
        }
    }

    /// Whether every one of this connection's filters that `topic` matches was in the
    /// session it resumed (`resumed`), so that a retained message on `topic` came before.
    fn had_before(&self, resumed: &std::collections::BTreeSet<String>, topic: &str) -> bool {
        let mut matching = self
            .subscriptions
            .iter()
            .filter(|s| crate::topic::matches(&s.filter, topic))
            .peekable();
        matching.peek().is_some() && matching.all(|s| resumed.contains(&s.filter))
    }

    fn subscribe(&self) {
        for s in &self.subscriptions {
            tracing::info!(connection = %self.link.name(), filter = %s.filter, qos = s.qos, "subscribing");
        }
        self.subscribe_to(&(0..self.subscriptions.len()).collect::<Vec<_>>());
    }

    /// Subscribes to the filters at `indexes` in `subscriptions`, in one SUBSCRIBE.
    fn subscribe_to(&self, indexes: &[usize]) {
        let filters: Vec<SubscribeFilter> = indexes
            .iter()
            .filter_map(|&i| self.subscriptions.get(i))
            .map(|s| SubscribeFilter::new(s.filter.clone(), crate::event::mqtt_qos(s.qos)))
            .collect();
        // Through a task: the request queue may be full and this loop must keep polling.
        let client = self.client.clone();
        self.background.spawn_until_stopped(async move {
            if let Err(e) = client.subscribe_many(filters).await {
                tracing::error!(error = %e, "could not subscribe");
            }
        });
    }

    fn unsubscribe(&self) {
        let filters: Vec<String> = self
            .subscriptions
            .iter()
            .map(|s| s.filter.clone())
            .collect();
        tracing::info!(connection = %self.link.name(), ?filters, "function removed: unsubscribing");
        let client = self.client.clone();
        self.background.spawn_until_stopped(async move {
            // One request per filter (rumqttc 0.25 has no unsubscribe_many); the task
            // drops the router once the broker has confirmed them all.
            for f in filters {
                if let Err(e) = client.unsubscribe(f).await {
                    tracing::error!(error = %e, "could not unsubscribe");
                }
            }
        });
    }
}

/// Sends the acknowledgements that [`crate::mqtt::ack::AckQueue`] releases, in that order,
/// until the queue is dropped or the connection is gone; drops those of a connection that
/// is no longer `generation` (lost: the broker resends their messages).
pub async fn send_acks(
    client: AsyncClient,
    mut ready: mpsc::UnboundedReceiver<crate::mqtt::ack::Ready>,
    generation: Arc<std::sync::atomic::AtomicU64>,
) {
    while let Some(r) = ready.recv().await {
        if r.generation != generation.load(std::sync::atomic::Ordering::Acquire) {
            continue;
        }
        if client.ack(&r.ack).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake that failed on a certificate is told apart, each cause in its own
    /// words (tokio-rustls hands rustls's error over inside an `io::Error`), and no other
    /// failure is.
    #[test]
    fn a_certificate_the_handshake_refused_is_named() {
        use rustls::CertificateError as C;
        let tls = |e: rustls::Error| {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            ConnectionError::Tls(rumqttc::TlsError::Io(io))
        };
        let handshake = |c: C| tls(rustls::Error::InvalidCertificate(c));
        let said = |e: &ConnectionError| first_failure(e, false);
        assert!(said(&handshake(C::Expired)).contains("has expired: renew it"));
        assert!(said(&handshake(C::NotValidYet)).contains("real-time clock"));
        assert!(said(&handshake(C::UnknownIssuer)).contains("not one the agent trusts"));
        assert!(said(&handshake(C::NotValidForName)).contains("subject alternative names"));
        // The broker's alert after it saw the agent's certificate, read as the CONNACK.
        let alert = |a| {
            let io = std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(a),
            );
            ConnectionError::MqttState(rumqttc::StateError::Io(io))
        };
        use rustls::AlertDescription as A;
        assert!(said(&alert(A::UnknownCA)).contains("refused this agent's client certificate"));
        assert!(said(&alert(A::CertificateExpired)).contains("client certificate as expired"));
        assert!(said(&alert(A::CertificateRequired)).contains("wants a client certificate"));
        // Each its own cause, told apart from a broker that is down: the log says a new
        // cause at once.
        let refused = ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(said(&refused), "cannot connect to the broker; retrying");
        assert_eq!(tls_cause(&refused), None);
        assert_eq!(
            tls_cause(&ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            )),
            None
        );
    }

    /// The loops poll one `Cancelled` per token again and again: pending while the token
    /// stands, ready once it is cancelled, and ready at every poll after that (the intake
    /// polls its `stop_intake` future in two `select!`s).
    #[tokio::test]
    async fn cancelled_is_ready_once_its_token_is_and_stays_ready() {
        let short = Duration::from_millis(20);
        let token = CancellationToken::new();
        let mut c = Cancelled::new(&token);
        assert!(
            tokio::time::timeout(short, &mut c).await.is_err(),
            "ready before"
        );
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), &mut c)
            .await
            .expect("not ready once cancelled");
        for _ in 0..3 {
            tokio::time::timeout(short, &mut c)
                .await
                .expect("not ready again");
        }
        // A token cancelled before the future is made.
        let mut late = Cancelled::new(&token);
        tokio::time::timeout(Duration::from_secs(5), &mut late)
            .await
            .expect("an already cancelled token");
    }

    /// A loop that ends without its token cancelled (a connection of a removed function)
    /// leaves no task behind: the one that waits for the token ends with the future.
    #[tokio::test]
    async fn a_dropped_cancelled_leaves_no_task_behind() {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = alive();
        let token = CancellationToken::new();
        let c = Cancelled::new(&token);
        tokio::task::yield_now().await;
        assert_eq!(alive(), before + 1, "its task runs");
        drop(c);
        for _ in 0..100 {
            if alive() == before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the task outlived its future: {} alive, {before} before",
            alive()
        );
    }

    /// How long each of `n` failures waits, on tokio's paused clock.
    async fn waits(b: &mut Backoff, link: &Link, n: usize) -> Vec<u128> {
        let (e, done) = (ConnectionError::NetworkTimeout, CancellationToken::new());
        let mut out = Vec::new();
        for _ in 0..n {
            let start = tokio::time::Instant::now();
            assert!(b.failed(link, &e, &done).await, "not cancelled");
            out.push(start.elapsed().as_millis());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_doubles_and_resets_only_after_a_healthy_connection() {
        let (board, _seen) = watch::channel(Links::new(std::iter::empty()));
        let link = Link::new(board.clone(), "output".into());
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        assert_eq!(waits(&mut b, &link, 5).await, [100, 200, 400, 800, 800]);
        assert_eq!(board.borrow().overall().failures, 5);
        // Accepted, then dropped before it held for HEALTHY: no reset.
        b.connected();
        tokio::time::advance(HEALTHY - Duration::from_millis(1)).await;
        assert_eq!(waits(&mut b, &link, 1).await, [800]);
        // Held for HEALTHY: back to the minimum.
        b.connected();
        tokio::time::advance(HEALTHY).await;
        assert_eq!(waits(&mut b, &link, 2).await, [100, 200]);
    }

    /// A connection accepted, held for `held`, then lost with `e`.
    async fn lost_after(b: &mut Backoff, link: &Link, held: Duration, e: &ConnectionError) {
        b.connected();
        tokio::time::advance(held).await;
        assert!(
            b.failed(link, e, &CancellationToken::new()).await,
            "not cancelled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connections_closed_young_again_and_again_are_explained() {
        let (board, _seen) = watch::channel(Links::new(std::iter::empty()));
        let link = Link::new(board.clone(), "output".into());
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let closed = ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted);
        let timeout = ConnectionError::NetworkTimeout;
        let young = Duration::from_millis(50);
        let explained = || {
            let last = board.borrow().overall().last_error.unwrap_or_default();
            last.contains("same client id")
        };
        for n in 1..=CLOSED_YOUNG + 1 {
            lost_after(&mut b, &link, young, &closed).await;
            assert_eq!(explained(), n >= CLOSED_YOUNG, "after {n}");
        }
        // A connection that held starts a new count, and so does one the broker never
        // accepted.
        lost_after(&mut b, &link, HEALTHY, &closed).await;
        assert!(!explained());
        for _ in 1..CLOSED_YOUNG {
            lost_after(&mut b, &link, young, &closed).await;
        }
        assert!(b.failed(&link, &timeout, &CancellationToken::new()).await);
        lost_after(&mut b, &link, young, &closed).await;
        assert!(!explained());
        // Timeouts are not the broker closing it.
        for _ in 0..CLOSED_YOUNG {
            lost_after(&mut b, &link, young, &timeout).await;
        }
        assert!(!explained());
        // Resets may be the link's: said so too.
        let reset = ConnectionError::Io(std::io::ErrorKind::ConnectionReset.into());
        for _ in 0..CLOSED_YOUNG {
            lost_after(&mut b, &link, young, &reset).await;
        }
        let last = board.borrow().overall().last_error.unwrap_or_default();
        assert!(explained() && last.contains("a link that drops"), "{last}");
        assert!(!last.contains("  "), "one space between words: {last}");
    }

    #[test]
    fn a_connection_closed_before_it_was_accepted_is_explained() {
        let reset = || {
            let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::mqttbytes::Error::Io(io),
            ))
        };
        let said = first_failure(&reset(), false);
        assert!(
            said.contains("mqtts://") && said.contains("a link"),
            "{said}"
        );
        let eof = ConnectionError::Io(std::io::ErrorKind::UnexpectedEof.into());
        let said = first_failure(&eof, false);
        assert!(
            said.contains("mqtts://") && !said.contains("a link"),
            "{said}"
        );
        assert_eq!(
            first_failure(&reset(), true),
            "broker connection lost; reconnecting"
        );
        let refused = ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(
            first_failure(&refused, false),
            "cannot connect to the broker; retrying"
        );
    }

    #[test]
    fn a_new_cause_of_failure_is_said_when_it_comes() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let refused = ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
        let credentials = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        let mut said = Vec::new();
        for e in [&refused, &refused, &credentials, &credentials, &refused] {
            b.failures += 1;
            said.push(b.new_cause(first_failure(e, false)));
        }
        // Said at the first; then, once the broker came up and refused the agent, at once
        // (not as "keeps failing" at the tenth failure).
        assert_eq!(said, [true, false, true, false, true]);
        // A new row of failures starts afresh.
        b.dealt_with();
        b.failures += 1;
        assert!(b.new_cause(first_failure(&refused, false)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_ends_the_backoff_wait() {
        let (board, _seen) = watch::channel(Links::new(std::iter::empty()));
        let link = Link::new(board, "output".into());
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let done = CancellationToken::new();
        done.cancel();
        let start = tokio::time::Instant::now();
        assert!(
            !b.failed(&link, &ConnectionError::NetworkTimeout, &done)
                .await
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
