//! Synchronous netlink request/reply, shared by the IPVS generic netlink
//! client and the rtnetlink link/address code. One socket per namespace: a
//! netlink socket belongs to the namespace it was opened in.
//!
//! Many requests go out in one `send` (the kernel processes every message of
//! a buffer and acks each one), which keeps a sync of thousands of virtual
//! servers from paying one round trip per object.

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::setsockopt;
use nix::sys::socket::sockopt::ReceiveTimeout;
use nix::sys::time::TimeVal;

/// Receive buffer: larger than any single datagram a dump sends.
const RECV_BUF: usize = 1 << 16;
/// Requests per `send` in a batch; their acks must fit the socket's receive
/// buffer, which the kernel caps at `net.core.rmem_max` (208 KiB by default).
const BATCH: usize = 64;
const RCVBUF_BYTES: usize = 1 << 20;
const RECV_TIMEOUT_SECS: i64 = 30;

pub struct Transport {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Transport {
    /// Opens a socket of netlink `protocol` in the calling thread's namespace.
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.set_rx_buf_sz(RCVBUF_BYTES)?;
        // The kernel answers at once; a wait this long means it never will,
        // and every read loop below ends with an error instead of hanging.
        setsockopt(&socket, ReceiveTimeout, &TimeVal::new(RECV_TIMEOUT_SECS, 0))
            .map_err(io::Error::from)?;
        Ok(Transport {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends one request with `NLM_F_ACK` and returns the replies that came
    /// before the ack, or the kernel's error.
    pub fn request<I>(&mut self, msg: I, flags: u16) -> io::Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
    }

    /// Sends a dump request and collects every reply up to `NLMSG_DONE`.
    pub fn dump<I>(&mut self, msg: I) -> io::Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// Sends `msg` and collects its replies up to `NLMSG_DONE`, an error,
    /// or (with `NLM_F_ACK`) the ack.
    fn exchange<I>(&mut self, msg: I, flags: u16) -> io::Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        let seq = self.next_seq();
        let bytes = serialize(msg, flags, seq);
        self.socket.send(&bytes, 0)?;
        let mut replies = Vec::new();
        loop {
            for (reply_seq, payload) in self.receive::<I>()? {
                if reply_seq != seq {
                    continue;
                }
                match payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) if flags & NLM_F_ACK != 0 => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    /// Sends every request with `NLM_F_ACK`, [`BATCH`] per `send`, and
    /// returns one result per request, in order. A failed request does not
    /// stop the others.
    pub fn batch<I>(&mut self, msgs: Vec<(I, u16)>) -> io::Result<Vec<io::Result<()>>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        let mut results: Vec<io::Result<()>> = Vec::with_capacity(msgs.len());
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let first_seq = self.seq.wrapping_add(1);
            let mut bytes = Vec::new();
            let mut count = 0usize;
            for (msg, flags) in msgs.by_ref().take(BATCH) {
                let seq = self.next_seq();
                bytes.extend(serialize(msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq));
                count += 1;
            }
            self.socket.send(&bytes, 0)?;
            let mut chunk: Vec<Option<io::Result<()>>> = (0..count).map(|_| None).collect();
            let mut pending = count;
            while pending > 0 {
                for (seq, payload) in self.receive::<I>()? {
                    let index = seq.wrapping_sub(first_seq) as usize;
                    let NetlinkPayload::Error(e) = payload else {
                        continue;
                    };
                    if index >= count || chunk[index].is_some() {
                        continue;
                    }
                    chunk[index] = Some(match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    });
                    pending -= 1;
                }
            }
            results.extend(chunk.into_iter().flatten());
        }
        Ok(results)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Reads one datagram and splits it into (sequence, payload) pairs.
    fn receive<I>(&mut self) -> io::Result<Vec<(u32, NetlinkPayload<I>)>>
    where
        I: NetlinkDeserializable + Debug,
    {
        self.buf.clear();
        let n = self.socket.recv(&mut self.buf, libc::MSG_TRUNC)?;
        if n > self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("netlink datagram of {n} bytes truncated to {RECV_BUF}"),
            ));
        }
        split(&self.buf)
    }
}

pub(crate) fn serialize<I: NetlinkSerializable + Debug>(msg: I, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// Splits a datagram that holds one or more netlink messages.
fn split<I>(mut data: &[u8]) -> io::Result<Vec<(u32, NetlinkPayload<I>)>>
where
    I: NetlinkDeserializable + Debug,
{
    let mut out = Vec::new();
    while data.len() >= 16 {
        let message = NetlinkMessage::<I>::deserialize(data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let len = (message.header.length as usize).div_ceil(4) * 4;
        out.push((message.header.sequence_number, message.payload));
        if len == 0 || len >= data.len() {
            break;
        }
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::RouteNetlinkMessage;

    /// Two acks in one datagram, as the kernel sends them for a batch: the
    /// first a success, the second EEXIST, each carrying its sequence.
    #[test]
    fn splits_a_datagram_of_acks() {
        let mut data = Vec::new();
        for (seq, code) in [(7u32, 0i32), (8, -libc::EEXIST)] {
            data.extend(36u32.to_ne_bytes());
            data.extend(2u16.to_ne_bytes()); // NLMSG_ERROR
            data.extend(0x100u16.to_ne_bytes()); // NLM_F_CAPPED
            data.extend(seq.to_ne_bytes());
            data.extend(0u32.to_ne_bytes());
            data.extend(code.to_ne_bytes());
            data.extend([0u8; 16]); // the request's header
        }
        let got = split::<RouteNetlinkMessage>(&data).unwrap();
        assert_eq!(got.len(), 2);
        let codes: Vec<(u32, Option<i32>)> = got
            .into_iter()
            .map(|(seq, p)| match p {
                NetlinkPayload::Error(e) => (seq, e.code.map(|c| c.get())),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(codes, vec![(7, None), (8, Some(-libc::EEXIST))]);
    }
}
