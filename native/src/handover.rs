//! The gRPC port's listening socket, bound by Python and handed to the plane.
//!
//! Python binds the port (the same bind, address resolution and errors whichever plane
//! serves, and a socket a supervisor passed on could be handed on as it is) and sends the
//! socket over a Unix datagram pair with `SCM_RIGHTS`. Receiving it is the one way for
//! safe Rust to take ownership of a file descriptor another owner opened: rustix's
//! `recvmsg` yields it as an `OwnedFd`, where adopting a descriptor number would need
//! `unsafe`.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sockopt, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    ReturnFlags, SocketType,
};

/// Where the listener arrives: the plane's end of a datagram pair.
pub struct Inbox {
    ours: UnixDatagram,
}

impl Inbox {
    /// An inbox, and the end to send the listener on (its owner closes it once sent).
    pub fn new() -> std::io::Result<(Inbox, OwnedFd)> {
        let (ours, theirs) = UnixDatagram::pair()?;
        ours.set_nonblocking(true)?;
        Ok((Inbox { ours }, theirs.into()))
    }

    /// The listener sent, if one was: a listening TCP socket, made non-blocking. The
    /// error says what else came.
    pub fn take(&self) -> Result<Option<TcpListener>, String> {
        let mut data = [0u8; 64];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = match recvmsg(
            &self.ours,
            &mut [IoSliceMut::new(&mut data)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(format!("handed listener: {e}")),
        };
        // Every descriptor received is owned here, and closed on return unless kept.
        let mut fds: Vec<OwnedFd> = control
            .drain()
            .filter_map(|message| match message {
                RecvAncillaryMessage::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        if got.flags.contains(ReturnFlags::CTRUNC) || fds.len() != 1 {
            return Err("handed listener: send exactly one socket (SCM_RIGHTS)".into());
        }
        let fd = fds.pop().expect("one descriptor");
        check(&fd).map_err(|why| format!("handed listener: {why}"))?;
        let listener = TcpListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("handed listener: {e}"))?;
        Ok(Some(listener))
    }
}

/// Whether `fd` is a listening TCP socket (IPv4 or IPv6).
fn check(fd: &OwnedFd) -> Result<(), String> {
    let not_socket = |e: Errno| format!("not a socket ({e})");
    let domain = sockopt::socket_domain(fd).map_err(not_socket)?;
    let kind = sockopt::socket_type(fd).map_err(not_socket)?;
    if !matches!(domain, AddressFamily::INET | AddressFamily::INET6) || kind != SocketType::STREAM {
        return Err("not a TCP socket".into());
    }
    if !sockopt::socket_acceptconn(fd).map_err(not_socket)? {
        return Err("the socket is not listening".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    fn send(to: &OwnedFd, fds: &[std::os::fd::BorrowedFd<'_>]) {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        sendmsg(
            to,
            &[IoSlice::new(b"listener")],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
    }

    #[test]
    fn a_listening_socket_sent_is_served_and_anything_else_refused() {
        let (inbox, theirs) = Inbox::new().unwrap();
        assert!(inbox.take().unwrap().is_none()); // nothing sent yet

        let bound = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = bound.local_addr().unwrap().port();
        send(&theirs, &[bound.as_fd()]);
        drop(bound); // the plane's copy keeps the port
        let listener = inbox.take().unwrap().expect("the listener");
        assert_eq!(listener.local_addr().unwrap().port(), port);
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();

        let connected = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        send(&theirs, &[connected.as_fd()]);
        assert!(inbox.take().unwrap_err().contains("not listening"));
        let (a, _b) = UnixDatagram::pair().unwrap();
        send(&theirs, &[a.as_fd()]);
        assert!(inbox.take().unwrap_err().contains("not a TCP socket"));
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        send(&theirs, &[other.as_fd(), listener.as_fd()]);
        assert!(inbox.take().unwrap_err().contains("exactly one"));
        rustix::net::send(&theirs, b"no socket", SendFlags::empty()).unwrap();
        assert!(inbox.take().unwrap_err().contains("exactly one"));
    }
}
