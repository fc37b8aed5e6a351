//! The waiting room: where the front door sends a request that found none of its project's
//! web instances accepting, so that it waits instead of failing. That happens while kiln stops
//! one release and starts the next with the default `cutover: stop` (a deploy, the undo of a
//! failed one, `kiln rollback`, `kiln restart`) and while a crashed instance is restarted: an
//! app that binds `$PORT` itself refuses connections then, and nginx would answer 502.
//!
//! nginx lists the project's waiting room as the `backup` server of its upstream and passes a
//! request on to it only when every instance refused the connection (`proxy_next_upstream
//! error`): nothing of the request reached an app, so even a POST may go on, once.
//! `kiln supervise` listens there. For each connection it waits until a web instance of the
//! project's formation file runs (its instance supervisor says so) and accepts, then relays
//! the bytes both ways. A release stopped for a switch runs no instance of the formation that
//! starts next, so a waiting request is answered by the release that runs once it is up: with
//! `cutover: stop` the new one (or, after a failed deploy, the old one started again), never
//! the one stopped before the switch. An instance that closes the connection before its first
//! byte of answer (it stopped right then) gets the request again on the next one, unless the
//! request is a POST, PATCH or LOCK: nginx's own rule.
//!
//! A request waits as long as nginx waits for an answer (project.yml `proxy.read_timeout`:
//! nginx then closes the connection and answers 504, which the waiting room sees as a
//! hangup), and at most [`LIMIT`]. For a project stopped on purpose (`kiln stop`, a failed
//! first deploy) or without web processes the waiting room closes the connection at once:
//! nginx answers 502, as it would without one. When the daemon itself is down nothing listens
//! on the waiting room's port either, and nginx answers 502 at once, as before.
//!
//! Each project's waiting room has a port of node.yml's `supervisor.ports`
//! ([`crate::runtime::supervisor::ports::assign_waiting_room`]), kept in
//! `waiting-rooms/<project>.json` so that it, and the front door's configuration that names
//! it, stay the same across restarts of the daemon.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::processes::PortRange;
use crate::runtime::supervisor::ports;
use crate::runtime::supervisor::state::{InstanceStatus, ProjectState, RunState, SupervisorPaths};

/// The longest a request waits in the waiting room, whatever nginx's timeout: a connection
/// that never hangs up (not nginx's) must not keep a thread for good.
const LIMIT: Duration = Duration::from_secs(600);

/// How often a waiting request's project is probed (one connection attempt per project per
/// tick, whatever the number of requests waiting): what a request may wait beyond the moment
/// an instance accepts again.
const TICK: Duration = Duration::from_millis(5);

/// An instance that does not even take the connection within this (its queue is full) counts
/// as down for this attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The largest request kept to send it again to another instance (see [`Request`]).
const REPLAY_LIMIT: usize = 1 << 20;

/// How many times one request goes to an instance that drops it unanswered before the
/// waiting room gives up on it (an app that closes every connection must not get it forever).
const MAX_SENDS: u32 = 5;

/// The waiting rooms `kiln supervise` serves, one listening socket per project.
pub struct WaitingRooms {
    paths: SupervisorPaths,
    range: PortRange,
    /// The daemon's log.
    say: fn(&str),
    /// The port each project's waiting room listens on.
    open: Mutex<HashMap<String, u16>>,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

/// What the requests waiting for one project share: the last probe, so that they make one
/// connection attempt per [`TICK`] between them, and where the next relay starts.
#[derive(Default)]
struct Gate {
    last: Mutex<Option<(Instant, Seen)>>,
    next: AtomicUsize,
}

/// What a probe of a project found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// No instance accepted: wait.
    Down,
    /// Stopped on purpose, or no web process: nothing will accept.
    Gone,
}

enum Attempt {
    Up(TcpStream),
    Wait,
    GiveUp,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WaitingRooms {
    pub fn new(paths: &SupervisorPaths, range: PortRange, say: fn(&str)) -> Arc<WaitingRooms> {
        Arc::new(WaitingRooms {
            paths: paths.clone(),
            range,
            say,
            open: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        })
    }

    /// Makes `project`'s waiting room listen (its port given first if it has none). Returns
    /// the port.
    pub fn ensure(self: &Arc<Self>, project: &str) -> Result<u16, String> {
        let mut open = locked(&self.open);
        // Listening already on the port its file names: the common case, every second.
        if let Some(&listening) = open.get(project)
            && ports::waiting_room(&self.paths, project) == Some(listening)
        {
            return Ok(listening);
        }
        let port = ports::assign_waiting_room(&self.paths, &self.range, project).map_err(|e| {
            format!(
                "no waiting room for the front door's requests: {}",
                crate::error::chain(&e)
            )
        })?;
        if open.get(project) == Some(&port) {
            return Ok(port);
        }
        let listener: TcpListener = ports::listen(port)
            .map_err(|e| format!("cannot listen on the waiting room 127.0.0.1:{port}: {e}"))?
            .into();
        let rooms = Arc::clone(self);
        let name = project.to_string();
        thread::Builder::new()
            .name(format!("waiting room {project}"))
            .spawn(move || rooms.accept_forever(&name, &listener))
            .map_err(|e| format!("cannot start the waiting room of 127.0.0.1:{port}: {e}"))?;
        open.insert(project.to_string(), port);
        Ok(port)
    }

    fn accept_forever(self: Arc<Self>, project: &str, listener: &TcpListener) {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let rooms = Arc::clone(&self);
                    let name = project.to_string();
                    // Without a thread the connection is dropped: nginx answers 502.
                    let _ = thread::Builder::new().spawn(move || rooms.serve(&name, stream));
                }
                Err(e) => {
                    (self.say)(&format!(
                        "{project}: the waiting room could not accept: {e}"
                    ));
                    // Out of file descriptors, say: do not spin.
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn gate(&self, project: &str) -> Arc<Gate> {
        Arc::clone(locked(&self.gates).entry(project.to_string()).or_default())
    }

    /// One request from nginx: waits until an instance accepts, then relays; gives up when
    /// the project is stopped, nginx hangs up, or after [`LIMIT`] (dropping the connection:
    /// nginx answers 502, or 504 if it gave up first).
    fn serve(&self, project: &str, client: TcpStream) {
        let gate = self.gate(project);
        let started = Instant::now();
        let mut request = Request::default();
        loop {
            match gate.attempt(&self.paths, project) {
                Attempt::Up(app) => match first_answer(&client, app, &mut request) {
                    Answer::Started(app) => return relay(client, app),
                    // The instance went away without a word, and the request may be sent again:
                    // wait for the next one.
                    Answer::Retry => {}
                    Answer::Failed => return,
                },
                Attempt::GiveUp => return,
                Attempt::Wait => {}
            }
            if started.elapsed() >= LIMIT || hung_up(&client, TICK) {
                return;
            }
        }
    }
}

impl Gate {
    fn attempt(&self, paths: &SupervisorPaths, project: &str) -> Attempt {
        {
            let mut last = locked(&self.last);
            match *last {
                Some((at, Seen::Gone)) if at.elapsed() < TICK => return Attempt::GiveUp,
                Some((at, Seen::Down)) if at.elapsed() < TICK => return Attempt::Wait,
                // This request probes for all of them.
                _ => *last = Some((Instant::now(), Seen::Down)),
            }
        }
        let seen = match ProjectState::load(paths, project) {
            Ok(Some(state)) => match state.serving_instances() {
                Some(instances) => {
                    let up = up_ports(paths, &state, &instances);
                    match self.connect(&up) {
                        Some(app) => {
                            // The others connect on their next tick.
                            *locked(&self.last) = None;
                            return Attempt::Up(app);
                        }
                        None => Seen::Down,
                    }
                }
                None => Seen::Gone,
            },
            Ok(None) => Seen::Gone,
            // Formation files are replaced atomically: an unreadable one is an operator's
            // business, and the request waits for it as for a restart.
            Err(_) => Seen::Down,
        };
        *locked(&self.last) = Some((Instant::now(), seen));
        match seen {
            Seen::Gone => Attempt::GiveUp,
            Seen::Down => Attempt::Wait,
        }
    }

    /// A connection to one of `ports` on 127.0.0.1, each relay starting at the next instance.
    fn connect(&self, ports: &[u16]) -> Option<TcpStream> {
        if ports.is_empty() {
            return None;
        }
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        (0..ports.len()).find_map(|i| {
            let port = ports[(first + i) % ports.len()];
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).ok()
        })
    }
}

/// The ports of the instances whose supervisor says their app runs, for the release of the
/// formation. An instance being stopped says so before its app gets SIGTERM, so a request is
/// not handed to an app that is closing its port (the connections the kernel queued there
/// for it would be reset unanswered).
fn up_ports(
    paths: &SupervisorPaths,
    state: &ProjectState,
    instances: &[(String, u16)],
) -> Vec<u16> {
    instances
        .iter()
        .filter(|(key, _)| {
            InstanceStatus::load(&paths.instance_dir(&state.formation.project, key)).is_some_and(
                |status| status.state == RunState::Up && status.release == state.formation.release,
            )
        })
        .map(|(_, port)| *port)
        .collect()
}

/// What nginx sent of the request so far, kept until the app answers, so that it can be sent
/// to another instance if the first one goes away without a word.
#[derive(Default)]
struct Request {
    bytes: Vec<u8>,
    /// More than [`REPLAY_LIMIT`] came: it cannot be sent again.
    overflow: bool,
    /// How many instances it went to.
    sends: u32,
}

impl Request {
    fn keep(&mut self, chunk: &[u8]) {
        if self.overflow || self.bytes.len() + chunk.len() > REPLAY_LIMIT {
            self.overflow = true;
            self.bytes = Vec::new();
        } else {
            self.bytes.extend_from_slice(chunk);
        }
    }

    /// nginx's own rule for a request that reached an upstream that failed before answering:
    /// sent again unless its method is not idempotent (POST, LOCK, PATCH: the app may have
    /// acted on it).
    fn may_send_again(&self) -> bool {
        let method = self.bytes.split(|b| *b == b' ').next().unwrap_or_default();
        !self.overflow && self.sends < MAX_SENDS && !matches!(method, b"POST" | b"LOCK" | b"PATCH")
    }
}

/// The app went away before answering: another instance may have the request if it is safe.
fn lost(request: &Request) -> Answer {
    if request.may_send_again() {
        Answer::Retry
    } else {
        Answer::Failed
    }
}

enum Answer {
    /// The app's first bytes went to nginx: relay the rest.
    Started(TcpStream),
    Retry,
    Failed,
}

/// Sends the request (what came so far, then the rest as it comes) to `app` until the app's
/// first bytes come back and go to nginx. If the app closes or resets the connection before
/// that, the request goes to another instance when that is safe ([`Request::may_send_again`]).
fn first_answer(client: &TcpStream, mut app: TcpStream, request: &mut Request) -> Answer {
    request.sends += 1;
    if app.write_all(&request.bytes).is_err() {
        return lost(request);
    }
    let mut buffer = vec![0u8; 64 << 10];
    let events = PollFlags::POLLIN | PollFlags::from_bits_retain(libc::POLLRDHUP);
    loop {
        let (from_app, from_client) = {
            let mut fds = [
                PollFd::new(app.as_fd(), events),
                PollFd::new(client.as_fd(), events),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => (fds[0].any().unwrap_or(true), fds[1].any().unwrap_or(true)),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return Answer::Failed,
            }
        };
        if from_app {
            return match (&app).read(&mut buffer) {
                Ok(0) | Err(_) => lost(request),
                Ok(n) => match (&*client).write_all(&buffer[..n]) {
                    Ok(()) => Answer::Started(app),
                    Err(_) => Answer::Failed,
                },
            };
        }
        if from_client {
            match (&*client).read(&mut buffer) {
                // nginx gave up (its timeout, or its client left).
                Ok(0) | Err(_) => return Answer::Failed,
                Ok(n) => {
                    request.keep(&buffer[..n]);
                    if app.write_all(&buffer[..n]).is_err() {
                        // What did not fit is gone with the connection: only a request kept
                        // whole can go to another instance.
                        return lost(request);
                    }
                }
            }
        }
    }
}

/// Whether nginx closed the connection (gave up on the request, or its client did), waiting
/// up to `wait` for it. The request it sent is unread, so only a hangup wakes this.
fn hung_up(client: &TcpStream, wait: Duration) -> bool {
    let mut fds = [PollFd::new(
        client.as_fd(),
        PollFlags::from_bits_retain(libc::POLLRDHUP),
    )];
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => false,
        // The hangup, or an error or POLLHUP, which poll always reports.
        Ok(_) => true,
        Err(_) => true,
    }
}

/// Copies both ways until both sides are done. The app's end of file is passed on to nginx as
/// the end of the answer; nginx's end of file (it closes, never half-closes: it gave up or has
/// the whole answer) or an error on either side ends both, so that an app that hangs keeps no
/// thread here.
fn relay(client: TcpStream, app: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = app.set_nodelay(true);
    let (Ok(mut from_client), Ok(mut to_app)) = (client.try_clone(), app.try_clone()) else {
        return;
    };
    let upstream = thread::Builder::new().spawn(move || {
        let _ = io::copy(&mut from_client, &mut to_app);
        let _ = from_client.shutdown(Shutdown::Both);
        let _ = to_app.shutdown(Shutdown::Both);
    });
    let Ok(upstream) = upstream else {
        return;
    };
    let (mut from_app, mut to_client) = (app, client);
    match io::copy(&mut from_app, &mut to_client) {
        Ok(_) => {
            let _ = to_client.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from_app.shutdown(Shutdown::Both);
            let _ = to_client.shutdown(Shutdown::Both);
        }
    }
    let _ = upstream.join();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::formation::{Formation, ProcessType, Slot};
    use std::collections::BTreeMap;
    use std::io::{Read, Write};
    use std::path::PathBuf;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    fn formation(web_port: Option<u16>) -> Formation {
        Formation {
            project: "shop".into(),
            release: "r1".into(),
            cwd: PathBuf::from("/x"),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            types: BTreeMap::from([(
                "web".to_string(),
                ProcessType {
                    command: "serve".into(),
                    count: 1,
                },
            )]),
            grace: Duration::from_secs(1),
            limits: Default::default(),
            log_dir: PathBuf::from("/x"),
            ports: web_port
                .map(|port| BTreeMap::from([("web.1".to_string(), port)]))
                .unwrap_or_default(),
            check_command: None,
            socket_activation: false,
            slot: Slot::A,
        }
    }

    fn save_state(paths: &SupervisorPaths, web_port: u16, running: bool, hold_sockets: bool) {
        ProjectState {
            running,
            formation: formation(Some(web_port)),
            draining: None,
            hold_sockets,
        }
        .save(paths)
        .expect("save the formation");
    }

    /// What the instance supervisor of web.1 says of its app.
    fn save_status(paths: &SupervisorPaths, state: RunState) {
        let dir = paths.instance_dir("shop", "web.1");
        std::fs::create_dir_all(&dir).expect("the instance dir");
        let me = crate::runtime::supervisor::proc::ProcessId {
            pid: std::process::id() as i32,
            start: 0,
        };
        InstanceStatus {
            release: "r1".into(),
            shim: me,
            app: Some(me),
            state,
            restarts: 0,
            since: None,
            last_exit: None,
            next_start: None,
        }
        .save(&dir)
        .expect("save the status");
    }

    /// A client of the waiting room (nginx's part) that has sent `request`.
    fn client(room: u16, request: &[u8]) -> TcpStream {
        let mut client =
            TcpStream::connect(("127.0.0.1", room)).expect("connect to the waiting room");
        client.write_all(request).expect("send");
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        client
    }

    fn range() -> PortRange {
        let first = free_port().min(65000);
        PortRange {
            first,
            last: first + 20,
        }
    }

    #[test]
    fn a_request_waits_for_an_instance_and_is_relayed_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = SupervisorPaths::new(dir.path());
        let range = range();
        let web = free_port();
        // Stopped for a switch: the next start takes the same port.
        save_state(&paths, web, false, true);
        let rooms = WaitingRooms::new(&paths, range, |_| {});
        let room = rooms.ensure("shop").expect("the waiting room listens");
        assert!(range.contains(room), "{room}");
        assert_eq!(ports::waiting_room(&paths, "shop"), Some(room));
        assert_eq!(rooms.ensure("shop"), Ok(room), "kept");

        let mut client = client(room, b"ping");
        // Nothing listens on the web port yet: the request waits ...
        thread::sleep(Duration::from_millis(200));
        // ... while something does but its supervisor does not say it runs (an app being
        // stopped still listens for a moment) ...
        let app = TcpListener::bind(("127.0.0.1", web)).expect("the instance binds its port");
        save_status(&paths, RunState::Stopping);
        thread::sleep(Duration::from_millis(200));
        app.set_nonblocking(true).expect("nonblocking");
        assert!(
            app.accept().is_err(),
            "the waiting room connected to a stopping app"
        );
        app.set_nonblocking(false).expect("blocking");
        // ... until the instance runs.
        save_state(&paths, web, true, false);
        save_status(&paths, RunState::Up);
        let (mut served, _) = app.accept().expect("the waiting room connects");
        let mut request = [0u8; 4];
        served.read_exact(&mut request).expect("the request");
        assert_eq!(&request, b"ping");
        served.write_all(b"pong").expect("answer");
        drop(served);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).expect("the answer");
        assert_eq!(answer, b"pong");
    }

    #[test]
    fn a_request_the_app_dropped_unanswered_goes_again_unless_it_is_a_post() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = SupervisorPaths::new(dir.path());
        let web = free_port();
        let app = TcpListener::bind(("127.0.0.1", web)).expect("the instance binds its port");
        save_state(&paths, web, true, false);
        save_status(&paths, RunState::Up);
        let rooms = WaitingRooms::new(&paths, range(), |_| {});
        let room = rooms.ensure("shop").expect("the waiting room listens");
        let read_request = |served: &mut TcpStream, length: usize| {
            let mut request = vec![0u8; length];
            served.read_exact(&mut request).expect("the request");
            String::from_utf8_lossy(&request).into_owned()
        };

        let get = b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n";
        let mut client_get = client(room, get);
        // The first connection is closed unanswered (an app that stopped right then) ...
        let (mut first, _) = app.accept().expect("the waiting room connects");
        assert_eq!(read_request(&mut first, get.len()).as_bytes(), get);
        drop(first);
        // ... so the GET goes to the instance again, whole.
        let (mut second, _) = app.accept().expect("the waiting room connects again");
        assert_eq!(read_request(&mut second, get.len()).as_bytes(), get);
        second
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .expect("answer");
        drop(second);
        let mut answer = Vec::new();
        client_get.read_to_end(&mut answer).expect("the answer");
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");

        let post = b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 2\r\n\r\nhi";
        let mut client_post = client(room, post);
        let (mut first, _) = app.accept().expect("the waiting room connects");
        assert_eq!(read_request(&mut first, post.len()).as_bytes(), post);
        drop(first);
        // The app may have acted on it: never sent twice; nginx answers 502.
        let mut answer = Vec::new();
        let read = client_post.read_to_end(&mut answer);
        assert!(answer.is_empty(), "{read:?} {answer:?}");
        app.set_nonblocking(true).expect("nonblocking");
        assert!(app.accept().is_err(), "the POST was sent again");
    }

    #[test]
    fn a_project_stopped_on_purpose_is_not_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = SupervisorPaths::new(dir.path());
        save_state(&paths, free_port(), false, false);
        let rooms = WaitingRooms::new(&paths, range(), |_| {});
        let room = rooms.ensure("shop").expect("the waiting room listens");
        let mut client = client(room, b"GET / HTTP/1.1\r\n\r\n");
        let mut answer = Vec::new();
        // Closed at once: nginx answers 502.
        let read = client.read_to_end(&mut answer);
        assert!(answer.is_empty(), "{read:?} {answer:?}");
    }

    #[test]
    fn waiting_room_ports_are_kept_per_project() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = SupervisorPaths::new(dir.path());
        let range = range();
        let shop = ports::assign_waiting_room(&paths, &range, "shop").expect("a port");
        let blog = ports::assign_waiting_room(&paths, &range, "blog").expect("a port");
        assert_ne!(shop, blog);
        assert_eq!(
            ports::assign_waiting_room(&paths, &range, "shop").expect("kept"),
            shop
        );
        // The lowest free port of the range is the first waiting room's: a web instance
        // gets another one.
        let mut web = formation(None);
        drop(ports::assign(&paths, &range, &mut web, ports::Assign::Keep).expect("ports"));
        let web = web.ports["web.1"];
        assert!(web != shop && web != blog, "{web} {shop} {blog}");
        assert_eq!(
            ports::waiting_rooms(&paths),
            [("blog".to_string(), blog), ("shop".to_string(), shop)]
        );
    }
}
