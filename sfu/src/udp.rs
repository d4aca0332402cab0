//! Batched UDP for the media worker (Linux): `recvmmsg` takes every datagram waiting on the
//! socket in one system call, `sendmmsg` sends a batch of datagrams to any mix of destinations in
//! one, and `ppoll` waits for the socket with microsecond timeouts. The worker used to make one
//! `recvfrom` and one `setsockopt` (its read timeout) per datagram received and one `sendto` per
//! datagram sent.
//!
//! The socket stays blocking; every receive here passes `MSG_DONTWAIT`, and sends to loopback or
//! a local interface do not block in practice (when the kernel's buffer is full a datagram is
//! dropped, as `sendto` would).

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Most datagrams taken or sent in one system call.
pub const BATCH: usize = 32;
/// Room for one datagram: larger than any MTU-sized packet.
pub const SLOT: usize = 2048;

/// Buffers for one `recvmmsg`.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: [Option<SocketAddr>; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            bufs: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [None; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// The datagrams of the last receive with their sources (those from an address family we
    /// do not speak are left out).
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        (0..self.count).filter_map(|i| {
            let addr = self.addrs[i]?;
            Some((&self.bufs[i * SLOT..i * SLOT + self.lens[i]], addr))
        })
    }

    /// Takes what is waiting on the socket, up to [`BATCH`] datagrams, without waiting. `Ok(0)`:
    /// nothing was waiting.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.count = 0;
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: all-zero is a valid sockaddr_storage and a valid (empty) mmsghdr.
        let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let base = self.bufs.as_mut_ptr();
        for i in 0..BATCH {
            iovs[i].write(libc::iovec {
                // SAFETY: slot i lies within `bufs` (BATCH * SLOT bytes).
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            });
            let len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            point(&mut hdrs[i], &mut names[i], len, &mut iovs[i]);
        }
        // SAFETY: every header points at a live iovec, name buffer and data slot of the right
        // sizes, all of which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            // A datagram larger than a slot arrives cut (MSG_TRUNC): no packet of ours is that
            // large, so it is dropped rather than handed on in part.
            let truncated = hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = (hdrs[i].msg_len as usize).min(SLOT);
            self.addrs[i] = if truncated {
                None
            } else {
                from_sockaddr(&names[i], hdrs[i].msg_hdr.msg_namelen)
            };
        }
        self.count = n;
        Ok(n)
    }
}

/// Waits until the socket has a datagram or `timeout` passes. `Ok(true)`: readable.
pub fn wait_readable(socket: &UdpSocket, timeout: Duration) -> io::Result<bool> {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec, both outliving the call; no signal mask.
    let n = unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

/// Datagrams waiting to be sent, each with its destination.
#[derive(Default)]
pub struct SendQueue {
    items: Vec<(Vec<u8>, SocketAddr)>,
    /// Datagrams the kernel refused (an error for one destination, or a full buffer).
    pub failed: u64,
}

impl SendQueue {
    pub fn push(&mut self, data: Vec<u8>, to: SocketAddr) {
        self.items.push((data, to));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends everything queued, [`BATCH`] datagrams a call, in order. A datagram the kernel
    /// refuses (say, an ICMP error left for its destination) is counted and skipped.
    pub fn flush(&mut self, socket: &UdpSocket) {
        let mut start = 0;
        while start < self.items.len() {
            let chunk = &self.items[start..(start + BATCH).min(self.items.len())];
            let mut iovs: [MaybeUninit<libc::iovec>; BATCH] =
                [const { MaybeUninit::uninit() }; BATCH];
            // SAFETY: all-zero is a valid sockaddr_storage and a valid (empty) mmsghdr.
            let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for (i, (data, to)) in chunk.iter().enumerate() {
                iovs[i].write(libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                });
                let len = to_sockaddr(to, &mut names[i]);
                point(&mut hdrs[i], &mut names[i], len, &mut iovs[i]);
            }
            // SAFETY: the first `chunk.len()` headers point at live iovecs over the queued
            // datagrams and at filled-in addresses; the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    chunk.len() as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram of the chunk failed: skip it, go on with the rest.
                self.failed += 1;
                start += 1;
            } else {
                start += (n as usize).max(1);
            }
        }
        self.items.clear();
    }
}

/// Points a message header at its address (`len` bytes of it used) and its one iovec.
fn point(
    hdr: &mut libc::mmsghdr,
    name: &mut libc::sockaddr_storage,
    len: libc::socklen_t,
    iov: &mut MaybeUninit<libc::iovec>,
) {
    let h = &mut hdr.msg_hdr;
    h.msg_name = (name as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = len;
    h.msg_iov = iov.as_mut_ptr();
    h.msg_iovlen = 1;
}

fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than, and aligned for, sockaddr_in6.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match s.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET, length checked).
            let sin: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6, length checked).
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Datagrams from several senders, to several destinations, over IPv4 and IPv6: each
    /// arrives whole, in order per sender, with its true source; oversize ones are dropped, not
    /// cut; an empty socket answers at once; the wait times out when nothing comes.
    #[test]
    fn batches_carry_every_datagram_whole_with_its_source() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(rx) = UdpSocket::bind(any) else {
                eprintln!("SKIPPED for {any}: cannot bind");
                continue;
            };
            let txs: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind(any).unwrap()).collect();
            let other = UdpSocket::bind(any).unwrap();
            let mut batch = RecvBatch::default();
            assert_eq!(batch.recv(&rx).unwrap(), 0, "nothing waiting");
            let t = Instant::now();
            assert!(!wait_readable(&rx, Duration::from_millis(30)).unwrap());
            assert!(t.elapsed() >= Duration::from_millis(25));

            let mut queues: Vec<SendQueue> = (0..3).map(|_| SendQueue::default()).collect();
            for k in 0..50u8 {
                let q = &mut queues[k as usize % 3];
                q.push(vec![k; 10 + k as usize * 20], rx.local_addr().unwrap());
                if k % 10 == 0 {
                    q.push(vec![k; 3], other.local_addr().unwrap());
                }
            }
            // One datagram too large for a slot (but legal UDP).
            queues[0].push(vec![0xee; SLOT + 100], rx.local_addr().unwrap());
            // Sender 0: 17 to rx, 2 to the other socket (k = 0, 30), the oversize one.
            assert_eq!(queues[0].len(), 17 + 2 + 1);
            for (q, tx) in queues.iter_mut().zip(&txs) {
                q.flush(tx);
                assert!(q.is_empty());
                assert_eq!(q.failed, 0);
            }
            assert!(wait_readable(&rx, Duration::from_secs(2)).unwrap());
            let mut got: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(2);
            while got.len() < 50 && Instant::now() < deadline {
                if batch.recv(&rx).unwrap() == 0 {
                    wait_readable(&rx, Duration::from_millis(50)).unwrap();
                }
                got.extend(batch.datagrams().map(|(d, a)| (d.to_vec(), a)));
            }
            assert_eq!(
                got.len(),
                50,
                "{any}: every datagram, the oversize one dropped"
            );
            for (i, tx) in txs.iter().enumerate() {
                let from: Vec<u8> = got
                    .iter()
                    .filter(|(_, a)| *a == tx.local_addr().unwrap())
                    .map(|(d, _)| d[0])
                    .collect();
                let want: Vec<u8> = (0..50u8).filter(|k| *k as usize % 3 == i).collect();
                assert_eq!(from, want, "{any}: sender {i}'s datagrams, in order");
            }
            for (d, _) in &got {
                assert_eq!(d.len(), 10 + d[0] as usize * 20);
                assert!(d.iter().all(|b| *b == d[0]));
            }
            // A datagram the kernel refuses (a destination of the other address family) is
            // counted and skipped; the ones around it go out.
            let wrong: SocketAddr = if any.starts_with('[') {
                "127.0.0.1:9".parse().unwrap()
            } else {
                "[::1]:9".parse().unwrap()
            };
            let mut q = SendQueue::default();
            q.push(vec![1], wrong);
            q.push(vec![2], rx.local_addr().unwrap());
            q.push(vec![3], wrong);
            q.push(vec![4], rx.local_addr().unwrap());
            q.flush(&txs[0]);
            assert_eq!(q.failed, 2);
            assert!(wait_readable(&rx, Duration::from_secs(2)).unwrap());
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(2);
            while seen.len() < 2 && Instant::now() < deadline {
                if batch.recv(&rx).unwrap() == 0 {
                    wait_readable(&rx, Duration::from_millis(50)).unwrap();
                }
                seen.extend(batch.datagrams().map(|(d, _)| d[0]));
            }
            assert_eq!(seen, vec![2, 4]);
            let mut small = [0u8; 16];
            for _ in 0..5 {
                let (n, from) = other.recv_from(&mut small).unwrap();
                assert_eq!(n, 3);
                assert!(txs.iter().any(|t| t.local_addr().unwrap() == from));
            }
        }
    }
}
