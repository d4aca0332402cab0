//! ICE-TCP (RFC 4571): the worker's TCP listener and its connections, framed with a 16-bit
//! length before each packet, both ways. Non-blocking: the worker asks it for frames between UDP
//! reads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How often the ICE-TCP listener is asked for new connections. Asking on every pass of the loop
/// cost a tenth of the worker's CPU at 64 consults: Linux allocates a socket and a file for every
/// `accept`, also for the ones that find nothing (EAGAIN). A new ICE-TCP connection waits at most
/// this long more.
const ACCEPT_EVERY: Duration = Duration::from_millis(5);

/// Most ICE-TCP connections a worker holds; more are refused.
const MAX_TCP_CONNS: usize = 512;
/// A connection whose unsent data grows past this is too slow: packets are dropped for it.
const MAX_TCP_BACKLOG: usize = 1 << 20;

/// An ICE-TCP connection: RFC 4571 frames (16-bit length, then the packet) both ways.
struct TcpConn {
    stream: TcpStream,
    remote: SocketAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    alive: bool,
}

/// The listener and its connections.
pub(super) struct IceTcp {
    listener: TcpListener,
    addr: SocketAddr,
    conns: Vec<TcpConn>,
    /// When the listener is next asked for new connections (see [`ACCEPT_EVERY`]).
    next_accept: Instant,
}

impl IceTcp {
    pub(super) fn new(listener: TcpListener, addr: SocketAddr, now: Instant) -> Self {
        Self {
            listener,
            addr,
            conns: Vec::new(),
            next_accept: now,
        }
    }

    /// The listener's address (the destination of what arrives over ICE-TCP).
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) fn has_connections(&self) -> bool {
        !self.conns.is_empty()
    }

    /// Accepts new connections (at most every [`ACCEPT_EVERY`]), reads every connection's
    /// complete frames into `frames`, and flushes their backlogs.
    pub(super) fn io(&mut self, now: Instant, frames: &mut Vec<(Vec<u8>, SocketAddr)>) {
        if now >= self.next_accept {
            self.next_accept = now + ACCEPT_EVERY;
            while let Ok((stream, remote)) = self.listener.accept() {
                if self.conns.len() >= MAX_TCP_CONNS || stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                self.conns.push(TcpConn {
                    stream,
                    remote,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    alive: true,
                });
            }
        }
        let mut chunk = [0u8; 4096];
        for conn in &mut self.conns {
            loop {
                match conn.stream.read(&mut chunk) {
                    Ok(0) => {
                        conn.alive = false;
                        break;
                    }
                    Ok(n) => conn.rbuf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        conn.alive = false;
                        break;
                    }
                }
                if conn.rbuf.len() > 4 * 65_538 {
                    // Not a framing this side speaks: a flood or garbage.
                    conn.alive = false;
                    break;
                }
            }
            let mut at = 0;
            while conn.rbuf.len() >= at + 2 {
                let len = u16::from_be_bytes([conn.rbuf[at], conn.rbuf[at + 1]]) as usize;
                if conn.rbuf.len() < at + 2 + len {
                    break;
                }
                frames.push((conn.rbuf[at + 2..at + 2 + len].to_vec(), conn.remote));
                at += 2 + len;
            }
            conn.rbuf.drain(..at);
            flush(conn);
        }
        self.conns.retain(|c| c.alive);
    }

    /// Frames `data` to the connection from `to`, and sends what the socket takes now; dropped
    /// if there is no such connection or its backlog is full.
    pub(super) fn send(&mut self, to: SocketAddr, data: &[u8]) {
        if let Some(conn) = self.conns.iter_mut().find(|c| c.alive && c.remote == to)
            && conn.wbuf.len() + data.len() + 2 <= MAX_TCP_BACKLOG
            && data.len() <= u16::MAX as usize
        {
            conn.wbuf
                .extend_from_slice(&(data.len() as u16).to_be_bytes());
            conn.wbuf.extend_from_slice(data);
            flush(conn);
        }
    }
}

/// Writes as much of a connection's backlog as the socket takes now.
fn flush(conn: &mut TcpConn) {
    while !conn.wbuf.is_empty() {
        match conn.stream.write(&conn.wbuf) {
            Ok(0) => {
                conn.alive = false;
                return;
            }
            Ok(n) => {
                conn.wbuf.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                conn.alive = false;
                return;
            }
        }
    }
}
