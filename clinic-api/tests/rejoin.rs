//! Forced disconnects over a poor mobile link (issue 17: "1,000 forced disconnects of consult
//! participants all rejoin within 5 s"). Ten consults, each with a provider, a patient, a caregiver
//! and an interpreter (the participant limit is four), joined and admitted over real WebSockets
//! (signaling only, no media). Every participant's connection goes through a TCP relay in the test
//! that imitates the link: each chunk, in each direction, is delivered 80 ms ± 20 ms (uniform)
//! after it was read, never before the chunk ahead of it (byte order is kept). The kernel here has
//! no `sch_netem` qdisc (`tc qdisc add dev lo root netem` says "Specified qdisc kind is unknown"),
//! so the impairment is done in userspace. The TCP handshake itself is not delayed (the client
//! connects to the relay on loopback), so a real link would add about one round trip (~160 ms) to
//! every figure.
//!
//! A forced disconnect is the relay dropping both sockets of a connection at once, with `SO_LINGER`
//! zero: a reset each way, no WebSocket close frame, and whatever the relay still held for either
//! side lost, as when a phone loses its network. The participant then connects again through the
//! relay at once and sends `resume` with the resume token of its latest `welcome`.
//!
//! 1,000 disconnects in batches of 25 cut at the same moment, the participants chosen at random (a
//! provider a quarter as likely to be drawn as a guest; several of one consult at once is common,
//! the provider and a guest together included). For each the test measures, from the cut: (a) until
//! its new connection gets `welcome` with `admitted: true`, and (b) until another participant of
//! the consult (the provider; for a provider, the patient) sees it `connected` again in a `roster`.
//! A roster still in flight from before the server saw the cut says `connected` too, so (b) counts
//! only rosters after one that showed the participant `reconnecting`, or rosters on an observer
//! connection opened after the cut. Every connection is read all the time by a task of its own
//! (rosters to everyone on every change would otherwise fill the server's per-connection queue of
//! 128 and close the connection as a slow consumer).
//!
//! Asserted: all 1,000 rejoin, each within 5 s for both (a) and (b); no re-admission (every
//! `welcome` says `admitted: true`, no waiting room after the setup, exactly one `admit` audit
//! event per guest); nobody removed, no `error` or `ended` to anyone, everyone's last roster shows
//! the four of its consult connected; one `reconnect` audit event per disconnect and no `leave` or
//! `remove`. A summary line gives p50, p99 and max of (a) and (b). `REJOIN_SEED` repeats a run's
//! choices and delays (the seed is printed; the scheduling of the run itself still varies).
//!
//! Nothing needed configuring: `TestApp::new()` as it is. The server has no per-address or
//! per-token limit on consult connections, joins or resumes; its only rate limit is the token
//! bucket per connection (40 frames, 20 a second) on frames after the first, and a resuming client
//! sends one frame. The reconnect grace period (30 s) is well over 5 s, and `http.max_connections`
//! (1024) is well over the 40 connections (plus those being cut).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use clinic_api::platform::authz::Role;
use clinic_api::platform::sessions::Stage;
use clinic_api::testkit::{Rng, TestApp};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = WebSocketStream<TcpStream>;

const CONSULTS: usize = 10;
/// Everyone besides the provider, as (role, display name).
const GUESTS: [(&str, &str); 3] = [
    ("patient", "Pat"),
    ("caregiver", "Carey"),
    ("interpreter", "Ines"),
];
const CUTS: usize = 1000;
/// Disconnects cut at the same moment.
const BATCH: usize = 25;
/// The relay's one-way delay, uniform in this range (80 ms ± 20 ms).
const DELAY_MS: (u64, u64) = (60, 100);
/// The goal: back within this long.
const GOAL: Duration = Duration::from_secs(5);
/// How long the test waits for anything before calling it lost.
const GIVE_UP: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The relay

/// A TCP relay to the server that delays every chunk and can cut a connection.
struct Relay {
    addr: SocketAddr,
    /// Each connection's task, by the client's address.
    links: Arc<Mutex<HashMap<SocketAddr, AbortHandle>>>,
}

impl Relay {
    async fn start(upstream: SocketAddr, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<HashMap<SocketAddr, AbortHandle>>> = Arc::default();
        let rng = Arc::new(Mutex::new(Rng(seed)));
        let registry = links.clone();
        tokio::spawn(async move {
            while let Ok((client, peer)) = listener.accept().await {
                let task = tokio::spawn(link(client, upstream, rng.clone()));
                // (A port the kernel reuses replaces a finished connection's entry.)
                registry.lock().unwrap().insert(peer, task.abort_handle());
            }
        });
        Self { addr, links }
    }

    /// Drops both sockets of the client's connection at once (its task is aborted, so both
    /// sockets close with a reset, and the chunks still held are lost).
    fn cut(&self, client: SocketAddr) -> bool {
        match self.links.lock().unwrap().remove(&client) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

/// One relayed connection: the client's socket and a new one to the server, both directions.
async fn link(client: TcpStream, upstream: SocketAddr, rng: Arc<Mutex<Rng>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        // Dropped without a shutdown (a cut): a reset, as from a network that is gone.
        let _ = s.set_zero_linger();
    }
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    tokio::join!(
        pipe(client_rx, server_tx, rng.clone()),
        pipe(server_rx, client_tx, rng),
    );
}

/// Forwards `from` to `to`, each chunk delivered at max(the chunk ahead's time, now + delay).
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, rng: Arc<Mutex<Rng>>) {
    // `None`: the end of the stream, passed on (a shutdown) after its delay like data.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last = Instant::now();
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let delay = rng.lock().unwrap().between(DELAY_MS.0, DELAY_MS.1);
            last = last.max(Instant::now() + Duration::from_millis(delay));
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((last, chunk)).is_err() || n == 0 {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let Some(chunk) = chunk else {
                let _ = to.shutdown().await;
                break;
            };
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(read, write);
}

// ---------------------------------------------------------------------------------------------
// What each participant receives

#[derive(Clone, Debug)]
enum Seen {
    Welcome,
    /// (participant, presence state) of each.
    Roster(Vec<(String, String)>),
    /// Ids waiting (hosts).
    Waiting(Vec<String>),
    Admitted,
    /// An `error` or `ended`.
    Trouble(String),
}

struct Obs {
    at: Instant,
    /// When the connection it came on was opened.
    conn_since: Instant,
    seen: Seen,
}

/// Everything one participant received, over all its connections.
#[derive(Default)]
struct Log {
    obs: Mutex<Vec<Obs>>,
    changed: Notify,
}

impl Log {
    fn push(&self, conn_since: Instant, seen: Seen) {
        self.obs.lock().unwrap().push(Obs {
            at: Instant::now(),
            conn_since,
            seen,
        });
        self.changed.notify_waiters();
    }

    fn len(&self) -> usize {
        self.obs.lock().unwrap().len()
    }

    /// Offers `f` each observation from index `from` on, in order, as they come, until it picks
    /// something out of one; `None` at `deadline`.
    async fn wait<T>(
        &self,
        from: usize,
        deadline: Instant,
        mut f: impl FnMut(&Obs) -> Option<T>,
    ) -> Option<T> {
        let mut next = from;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let obs = self.obs.lock().unwrap();
                for o in &obs[next..] {
                    if let Some(t) = f(o) {
                        return Some(t);
                    }
                }
                next = obs.len();
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// The latest roster received.
    fn last_roster(&self) -> Option<Vec<(String, String)>> {
        self.obs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|o| match &o.seen {
                Seen::Roster(r) => Some(r.clone()),
                _ => None,
            })
    }
}

fn states(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                    (s("id"), s("state"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn seen(m: &Value) -> Option<Seen> {
    Some(match m["type"].as_str()? {
        "welcome" => Seen::Welcome,
        "roster" => Seen::Roster(states(&m["participants"])),
        "waiting_room" => Seen::Waiting(states(&m["waiting"]).into_iter().map(|p| p.0).collect()),
        "admitted" => Seen::Admitted,
        "error" | "ended" => Seen::Trouble(m.to_string()),
        _ => return None,
    })
}

/// The presence state of `id` in a roster.
fn presence<'a>(roster: &'a [(String, String)], id: &str) -> Option<&'a str> {
    roster
        .iter()
        .find(|(p, _)| p == id)
        .map(|(_, s)| s.as_str())
}

/// Reads a connection until it ends, into the participant's log.
async fn read_all(mut stream: SplitStream<Ws>, log: Arc<Log>, since: Instant) {
    while let Some(Ok(frame)) = stream.next().await {
        if let Message::Text(t) = frame
            && let Some(s) = serde_json::from_str(t.as_str())
                .ok()
                .as_ref()
                .and_then(seen)
        {
            log.push(since, s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server, consults and participants

struct Server {
    app: TestApp,
    addr: SocketAddr,
    cookie: String,
}

async fn setup() -> Server {
    let app = TestApp::new().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(clinic_api::run(
        listener,
        app.state.clone(),
        std::future::pending(),
    ));
    let provider = app.user(Role::Provider).await;
    let cookie = app.session(&provider, Stage::Full).await;
    Server { app, addr, cookie }
}

impl Server {
    /// Opens a consult for a new patient; returns its id.
    async fn consult(&self, n: usize) -> String {
        let patient = self
            .app
            .patient_in(
                &self.app.clinic,
                &self.app.locations[0],
                &format!("Pat{n}"),
                "Rejoin",
            )
            .await;
        let r = self
            .app
            .call(
                Method::POST,
                "/api/v1/consults",
                Some(&self.cookie),
                Some(json!({ "location_id": self.app.locations[0], "patient_id": patient })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }

    /// Issues a link for `role` and exchanges its code for a join token.
    async fn token(&self, consult: &str, role: &str, name: &str) -> String {
        let link = self
            .app
            .call(
                Method::POST,
                &format!("/api/v1/consults/{consult}/links"),
                Some(&self.cookie),
                Some(json!({ "role": role, "display_name": name })),
            )
            .await;
        assert_eq!(link.status, StatusCode::OK, "{}", link.text);
        let url = link.body["url"].as_str().unwrap();
        let code = url.split_once('#').unwrap().1;
        let joined = self
            .app
            .call(
                Method::POST,
                "/api/v1/consults/join",
                None,
                Some(json!({ "code": code })),
            )
            .await;
        assert_eq!(joined.status, StatusCode::OK, "{}", joined.text);
        joined.body["token"].as_str().unwrap().to_string()
    }
}

async fn send<S>(ws: &mut S, v: Value)
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Debug,
{
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message (pings skipped); `Null` when the connection closed.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return Value::Null,
        }
    }
}

/// A WebSocket through the relay whose first message is `first` (a join or a resume): the
/// socket, its local address (the relay's name for it) and the first answer.
async fn open(relay: SocketAddr, first: Value) -> Result<(Ws, SocketAddr, Value), String> {
    let stream = TcpStream::connect(relay)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{relay}/api/v1/consults/ws"), stream)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    send(&mut ws, first).await;
    let answer = recv(&mut ws).await;
    Ok((ws, local, answer))
}

struct Member {
    consult: usize,
    host: bool,
    id: String,
    /// From the latest `welcome`.
    resume: String,
    /// The client end of the current connection.
    local: SocketAddr,
    sink: SplitSink<Ws, Message>,
    log: Arc<Log>,
}

impl Member {
    /// Takes a new connection whose `welcome` came: its stream is read into the log from now on.
    fn attach(&mut self, ws: Ws, local: SocketAddr, welcome: &Value, since: Instant) {
        self.resume = welcome["resume_token"].as_str().unwrap().to_string();
        self.local = local;
        let (sink, stream) = ws.split();
        self.sink = sink;
        self.log.push(since, Seen::Welcome);
        tokio::spawn(read_all(stream, self.log.clone(), since));
    }
}

async fn join(relay: SocketAddr, consult: usize, host: bool, token: &str) -> Member {
    let since = Instant::now();
    let first = json!({
        "type": "join", "v": 1, "token": token, "device": { "user_agent": "TestPhone/1.0" },
    });
    let (ws, local, welcome) = tokio::time::timeout(GIVE_UP, open(relay, first))
        .await
        .expect("a welcome")
        .unwrap();
    assert_eq!(
        (welcome["type"].as_str(), welcome["admitted"].as_bool()),
        (Some("welcome"), Some(host)),
        "{welcome}"
    );
    let (sink, stream) = ws.split();
    let log = Arc::new(Log::default());
    log.push(since, Seen::Welcome);
    tokio::spawn(read_all(stream, log.clone(), since));
    Member {
        consult,
        host,
        id: welcome["participant"].as_str().unwrap().to_string(),
        resume: welcome["resume_token"].as_str().unwrap().to_string(),
        local,
        sink,
        log,
    }
}

/// A consult's four, joined and admitted: the provider first, then the guests.
async fn seat(relay: SocketAddr, consult: usize, tokens: &[String]) -> Vec<Member> {
    let deadline = Instant::now() + GIVE_UP;
    let mut provider = join(relay, consult, true, &tokens[0]).await;
    let guests =
        futures_util::future::join_all(tokens[1..].iter().map(|t| join(relay, consult, false, t)))
            .await;
    for g in &guests {
        provider
            .log
            .wait(0, deadline, |o| {
                matches!(&o.seen, Seen::Waiting(w) if w.contains(&g.id)).then_some(())
            })
            .await
            .expect("the provider sees the guest waiting");
        send(
            &mut provider.sink,
            json!({ "type": "admit", "participant": g.id }),
        )
        .await;
    }
    for g in &guests {
        g.log
            .wait(0, deadline, |o| {
                matches!(o.seen, Seen::Admitted).then_some(())
            })
            .await
            .expect("admitted");
    }
    let everyone: Vec<String> = std::iter::once(&provider)
        .chain(&guests)
        .map(|m| m.id.clone())
        .collect();
    provider
        .log
        .wait(0, deadline, |o| match &o.seen {
            Seen::Roster(r) => everyone
                .iter()
                .all(|id| presence(r, id) == Some("connected"))
                .then_some(()),
            _ => None,
        })
        .await
        .expect("all four connected");
    std::iter::once(provider).chain(guests).collect()
}

/// One forced disconnect's times, from the cut.
struct Rejoined {
    /// Until the new connection's `welcome`.
    welcome: Duration,
    /// Until the observer sees the participant `connected` again.
    seen: Duration,
}

/// Connects again after the cut at `t0` and resumes; then waits for `observer` (whose log held
/// `from` observations at the cut) to see the participant connected.
async fn rejoin(
    relay: SocketAddr,
    m: &mut Member,
    observer: &Log,
    from: usize,
    t0: Instant,
) -> Result<Rejoined, String> {
    let since = Instant::now();
    let first = json!({ "type": "resume", "v": 1, "resume_token": m.resume });
    let (ws, local, welcome) = tokio::time::timeout(GIVE_UP, open(relay, first))
        .await
        .map_err(|_| format!("no answer to the resume within {GIVE_UP:?}"))??;
    let welcome_after = t0.elapsed();
    if welcome["type"] != "welcome" {
        return Err(format!("resume refused: {welcome}"));
    }
    if welcome["admitted"] != true {
        return Err(format!("re-admission needed after a resume: {welcome}"));
    }
    m.attach(ws, local, &welcome, since);
    // A roster that left the server before it saw the cut still says "connected"; those that
    // follow a "reconnecting" (or come on a connection opened after the cut) are current.
    let mut current = false;
    let seen_after = observer
        .wait(from, t0 + GIVE_UP, |o| {
            current |= o.conn_since > t0;
            let Seen::Roster(r) = &o.seen else {
                return None;
            };
            match presence(r, &m.id) {
                Some("connected") if current => Some(o.at.duration_since(t0)),
                Some("connected") => None,
                _ => {
                    current = true;
                    None
                }
            }
        })
        .await
        .ok_or_else(|| format!("not seen connected again within {GIVE_UP:?}"))?;
    Ok(Rejoined {
        welcome: welcome_after,
        seen: seen_after,
    })
}

/// p50, p99 and max, in milliseconds (nearest rank).
fn spread(mut v: Vec<Duration>) -> String {
    v.sort();
    let rank = |p: usize| v[(v.len() * p).div_ceil(100).max(1) - 1].as_millis();
    format!(
        "p50 {} ms, p99 {} ms, max {} ms",
        rank(50),
        rank(99),
        v.last().unwrap().as_millis()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_forced_disconnects_all_rejoin_within_5_s_over_a_poor_link() {
    let began = Instant::now();
    let mut rng = Rng::from_env("REJOIN_SEED");
    let seed = rng.0;
    let server = setup().await;
    let relay = Relay::start(server.addr, rng.draw() | 1).await;

    let mut tokens = Vec::new();
    for n in 0..CONSULTS {
        let consult = server.consult(n).await;
        let mut these = vec![server.token(&consult, "provider", "Dr. Hartwell").await];
        for (role, name) in GUESTS {
            these.push(server.token(&consult, role, name).await);
        }
        tokens.push(these);
    }
    let seated = futures_util::future::join_all(
        tokens
            .iter()
            .enumerate()
            .map(|(n, t)| seat(relay.addr, n, t)),
    )
    .await;
    let members: Vec<Member> = seated.into_iter().flatten().collect();
    let logs: Vec<Arc<Log>> = members.iter().map(|m| m.log.clone()).collect();
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    // Whose rosters tell when each is back: the consult's provider; for a provider, its patient.
    let observer: Vec<usize> = members
        .iter()
        .map(|m| {
            let host = !m.host;
            members
                .iter()
                .position(|o| o.consult == m.consult && o.host == host)
                .unwrap()
        })
        .collect();
    let settled: Vec<usize> = logs.iter().map(|l| l.len()).collect();
    let seated_in = began.elapsed();

    let mut pool: Vec<Option<Member>> = members.into_iter().map(Some).collect();
    let (mut results, mut failures) = (Vec::new(), Vec::new());
    let (mut cuts, mut host_cuts) = (0, 0);
    while cuts < CUTS {
        let live = pool.iter().filter(|m| m.is_some()).count();
        let n = BATCH.min(CUTS - cuts).min(live);
        assert!(n > 0, "nobody left to disconnect: {failures:?}");
        let mut picked = Vec::with_capacity(n);
        while picked.len() < n {
            let i = rng.between(0, pool.len() as u64 - 1) as usize;
            let Some(m) = &pool[i] else { continue };
            if picked.contains(&i) || (m.host && !rng.draw().is_multiple_of(4)) {
                continue;
            }
            picked.push(i);
        }
        // The whole batch is cut before anyone connects again.
        let mut batch = Vec::with_capacity(n);
        for &i in &picked {
            let m = pool[i].take().unwrap();
            let from = logs[observer[i]].len();
            let t0 = Instant::now();
            assert!(relay.cut(m.local), "the relay has {}'s connection", m.id);
            host_cuts += usize::from(m.host);
            batch.push((i, m, from, t0));
        }
        cuts += n;
        let tasks: Vec<_> = batch
            .into_iter()
            .map(|(i, mut m, from, t0)| {
                let observer = logs[observer[i]].clone();
                let relay = relay.addr;
                tokio::spawn(async move {
                    let r = rejoin(relay, &mut m, &observer, from, t0).await;
                    (i, m, r)
                })
            })
            .collect();
        for task in tasks {
            let (i, m, r) = task.await.unwrap();
            match r {
                Ok(r) => {
                    results.push(r);
                    pool[i] = Some(m);
                }
                // Not disconnected again.
                Err(e) => failures.push(format!("{} (consult {}): {e}", m.id, m.consult)),
            }
        }
    }
    let cutting = began.elapsed() - seated_in;

    assert!(
        failures.is_empty(),
        "{} of {CUTS} did not rejoin: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(results.len(), CUTS);
    let late: Vec<(u128, u128)> = results
        .iter()
        .filter(|r| r.welcome > GOAL || r.seen > GOAL)
        .map(|r| (r.welcome.as_millis(), r.seen.as_millis()))
        .collect();
    assert!(
        late.is_empty(),
        "{} of {CUTS} took over {GOAL:?} (welcome ms, seen ms): {late:?}",
        late.len()
    );

    // Nothing in flight any more: everyone is in every roster, connected.
    tokio::time::sleep(Duration::from_millis(4 * DELAY_MS.1)).await;
    for (i, log) in logs.iter().enumerate() {
        let consult = pool[i].as_ref().unwrap().consult;
        let roster = log.last_roster().unwrap();
        for (j, id) in ids.iter().enumerate() {
            if pool[j].as_ref().unwrap().consult == consult {
                assert_eq!(
                    presence(&roster, id),
                    Some("connected"),
                    "{id} in {}'s last roster: {roster:?}",
                    ids[i]
                );
            }
        }
        assert_eq!(roster.len(), 1 + GUESTS.len(), "{roster:?}");
        let obs = log.obs.lock().unwrap();
        for o in &obs[settled[i]..] {
            match &o.seen {
                Seen::Trouble(m) => panic!("{} was told {m}", ids[i]),
                Seen::Waiting(w) if !w.is_empty() => {
                    panic!("{} saw a waiting room again: {w:?}", ids[i])
                }
                Seen::Admitted => panic!("{} was admitted again", ids[i]),
                _ => {}
            }
        }
    }

    // The audit log: one reconnect per disconnect, the setup's admissions only, nobody gone.
    let details: Vec<(Option<String>,)> =
        sqlx::query_as("SELECT detail FROM audit_events WHERE resource_type = 'consult'")
            .fetch_all(&server.app.admin.pool)
            .await
            .unwrap();
    let count = |step: &str| {
        details
            .iter()
            .filter(|d| d.0.as_deref().unwrap_or_default().starts_with(step))
            .count()
    };
    assert_eq!(
        (
            count("reconnect"),
            count("admit"),
            count("leave"),
            count("remove")
        ),
        (CUTS, CONSULTS * GUESTS.len(), 0, 0),
        "audit events (reconnect, admit, leave, remove)"
    );

    let a = spread(results.iter().map(|r| r.welcome).collect());
    let b = spread(results.iter().map(|r| r.seen).collect());
    println!(
        "{} forced disconnects ({host_cuts} of providers), batches of {BATCH}, all rejoined \
         within {GOAL:?}: welcome {a}; seen connected by another participant {b}; \
         REJOIN_SEED={seed}; setup {:.1} s, disconnects {:.1} s, total {:.1} s",
        results.len(),
        seated_in.as_secs_f64(),
        cutting.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}
