//! A TCP proxy in front of a server (normally the [`crate::S3Server`]): counts traffic and
//! connections, and injects faults at the network boundary (dropped connections, delay,
//! a black hole, cutting live connections).

use anyhow::{Context, Result};
use rand::Rng;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Traffic counters of a [`Proxy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Connections accepted from clients (including dropped ones).
    pub connections: u64,
    /// Connections closed at once by the drop fault.
    pub dropped: u64,
    /// Bytes received from clients (to forward to the server).
    pub bytes_up: u64,
    /// Bytes received from the server (to forward to clients).
    pub bytes_down: u64,
}

#[derive(Default)]
struct State {
    stop: AtomicBool,
    connections: AtomicU64,
    dropped: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Fraction of new connections to close at once, in millionths.
    drop_ppm: AtomicU64,
    delay_us: AtomicU64,
    blackhole: AtomicBool,
    /// Requests whose first line holds every one of these strings get their response held back
    /// this long (a server that takes its time to answer).
    hold: Mutex<Option<(Vec<String>, Duration)>>,
    /// Responses held back so far.
    held: AtomicU64,
    next_id: AtomicU64,
    /// Live connections (client side, server side if connected), to cut them on demand.
    live: Mutex<HashMap<u64, (TcpStream, Option<TcpStream>)>>,
}

/// Listens on a free 127.0.0.1 port and forwards each connection to `target`.
/// Stops (and closes every connection) on drop.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn new(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind proxy")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, target, st))?;
        Ok(Proxy { addr, target, state, accept: Some(accept) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.state.connections.load(SeqCst),
            dropped: self.state.dropped.load(SeqCst),
            bytes_up: self.state.bytes_up.load(SeqCst),
            bytes_down: self.state.bytes_down.load(SeqCst),
        }
    }

    /// Bytes received from clients so far (client → server direction).
    pub fn bytes_up(&self) -> u64 {
        self.state.bytes_up.load(SeqCst)
    }

    /// Close this fraction (0.0..=1.0) of new connections right after accepting them.
    pub fn set_drop_fraction(&self, fraction: f64) {
        let ppm = (fraction.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.state.drop_ppm.store(ppm, SeqCst);
    }

    /// Delay every forwarded chunk, both directions, by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_us.store(delay.as_micros().try_into().unwrap_or(u64::MAX), SeqCst);
    }

    /// Accept new connections but never forward or answer anything (a hung network).
    pub fn set_blackhole(&self, on: bool) {
        self.state.blackhole.store(on, SeqCst);
    }

    /// Close every live connection (both sides) now. New connections are unaffected.
    pub fn cut_all(&self) {
        let live = std::mem::take(&mut *self.state.live.lock().expect("proxy lock"));
        for (_, (c, s)) in live {
            let _ = c.shutdown(Shutdown::Both);
            if let Some(s) = s {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Holds back, by `delay`, the response to every request whose request line contains all of
    /// `patterns` (for example `["POST ", "uploadId="]`: CompleteMultipartUpload).
    pub fn set_response_hold(&self, patterns: &[&str], delay: Duration) {
        *self.state.hold.lock().expect("proxy lock") = Some((patterns.iter().map(|p| p.to_string()).collect(), delay));
    }

    /// Responses held back by [`Proxy::set_response_hold`] so far.
    pub fn responses_held(&self) -> u64 {
        self.state.held.load(SeqCst)
    }

    /// Resets all faults (drop fraction, delay, black hole, response hold).
    pub fn heal(&self) {
        self.set_drop_fraction(0.0);
        self.set_delay(Duration::ZERO);
        *self.state.hold.lock().expect("proxy lock") = None;
        self.set_blackhole(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.cut_all();
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, st: Arc<State>) {
    for conn in listener.incoming() {
        if st.stop.load(SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        st.connections.fetch_add(1, SeqCst);
        let ppm = st.drop_ppm.load(SeqCst);
        if ppm > 0 && rand::thread_rng().gen_range(0..1_000_000) < ppm {
            st.dropped.fetch_add(1, SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let id = st.next_id.fetch_add(1, SeqCst);
        if st.blackhole.load(SeqCst) {
            if let Ok(c) = client.try_clone() {
                st.live.lock().expect("proxy lock").insert(id, (c, None));
            }
            continue;
        }
        let st = st.clone();
        let _ =
            std::thread::Builder::new().name(format!("proxy-conn-{id}")).spawn(move || serve(id, client, target, st));
    }
}

fn serve(id: u64, client: TcpStream, target: SocketAddr, st: Arc<State>) {
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) =
        (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
    else {
        return;
    };
    st.live.lock().expect("proxy lock").insert(id, (c3, Some(s3)));
    let st2 = st.clone();
    // Set by the upstream pump when a request to hold passed; the downstream pump waits before
    // forwarding the next response bytes.
    let hold = Arc::new(Mutex::new(None::<Duration>));
    let hold2 = hold.clone();
    let down =
        std::thread::Builder::new().name(format!("proxy-down-{id}")).spawn(move || pump(s2, c2, &st2, false, &hold2));
    pump(client, server, &st, true, &hold);
    if let Ok(h) = down {
        let _ = h.join();
    }
    st.live.lock().expect("proxy lock").remove(&id);
}

fn pump(mut from: TcpStream, mut to: TcpStream, st: &State, up: bool, hold: &Mutex<Option<Duration>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Counted as sent by its sender, even if the other side is gone.
        let counter = if up { &st.bytes_up } else { &st.bytes_down };
        counter.fetch_add(n as u64, SeqCst);
        let delay = st.delay_us.load(SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        if up {
            if let Some(d) = held_for(st, &buf[..n]) {
                *hold.lock().expect("proxy lock") = Some(d);
            }
        } else if let Some(d) = hold.lock().expect("proxy lock").take() {
            st.held.fetch_add(1, SeqCst);
            std::thread::sleep(d);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// How long to hold the response to the request starting in `chunk`, if it is one to hold.
fn held_for(st: &State, chunk: &[u8]) -> Option<Duration> {
    let hold = st.hold.lock().expect("proxy lock");
    let (patterns, delay) = hold.as_ref()?;
    let line_end = chunk.iter().position(|&b| b == b'\n').unwrap_or(chunk.len());
    let line = String::from_utf8_lossy(&chunk[..line_end]);
    patterns.iter().all(|p| line.contains(p.as_str())).then_some(*delay)
}
