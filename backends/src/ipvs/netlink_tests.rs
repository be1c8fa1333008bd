//! Encoding and decoding against bytes captured from ipvsadm 1.31 (libnl)
//! and Debian's 6.1 kernel with `strace -e trace=sendmsg,recvmsg -xx`: the
//! generic netlink header and attributes of each message, netlink header
//! left out.

use data_encoding::HEXLOWER;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    HEXLOWER.decode(s.as_bytes()).expect("test vector is hex")
}

fn emit(msg: IpvsMessage) -> String {
    let m = GenlMessage::from_payload(msg);
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    HEXLOWER.encode(&buf)
}

fn parse(bytes: &[u8]) -> IpvsMessage {
    let header = GenlHeader::parse(bytes).unwrap();
    IpvsMessage::parse_with_param(&bytes[4..], header).unwrap()
}

fn key(protocol: Protocol, addr: [u8; 4], port: u16) -> ServiceKey {
    ServiceKey {
        protocol,
        addr: Ipv4Addr::from(addr),
        port,
    }
}

const TCP_VIP: [u8; 4] = [10, 96, 0, 10];
const UDP_VIP: [u8; 4] = [10, 96, 0, 11];

/// `ipvsadm -A -t 10.96.0.10:80 -s rr`
const NEW_SERVICE_TCP_RR: &str = "010100005400018006000100020000000600020006000000140003000a60000a\
000000000000000000000000060004000050000007000600727200000c00070000000000ffffffff08000800000000\
0008000900ffffffff";

/// `ipvsadm -A -u 10.96.0.11:53 -s wrr -p 180`
const NEW_SERVICE_UDP_PERSISTENT: &str = "010100005400018006000100020000000600020011000000140003000a60\
000b000000000000000000000000060004000035000008000600777272000c00070001000000ffffffff08000800b400\
000008000900ffffffff";

/// `ipvsadm -E -t 10.96.0.10:80 -s rr -p 300`
const SET_SERVICE_PERSISTENT: &str = "020100005400018006000100020000000600020006000000140003000a6000\
0a000000000000000000000000060004000050000007000600727200000c00070001000000ffffffff080008002c0100\
0008000900ffffffff";

/// `ipvsadm -Ln` asking for the real servers of TCP 10.96.0.10:80: the
/// service attribute carries only the key.
const GET_DEST_TCP: &str = "080100003000018006000100020000000600020006000000140003000a60000a000000\
0000000000000000000600040000500000";

/// The kernel's dump reply for UDP 10.96.0.11:53 (wrr, persistent 180):
/// flags show HASHED as well, then STATS and STATS64 with zero counters.
const SERVICE_REPLY_UDP: &str = "010100002c01010006000100020000000600020011000000140003000a60000b0000\
00000000000000000000060004000035000008000600777272000c00070003000000ffffffff08000800b40000000800\
0900ffffffff5c000a000800010000000000080002000000000008000300000000000c00040000000000000000000c00\
05000000000000000000080006000000000008000700000000000800080000000000080009000000000008000a000000\
00007c000c000c00010000000000000000000c00020000000000000000000c00030000000000000000000c0004000000\
0000000000000c00050000000000000000000c00060000000000000000000c00070000000000000000000c0008000000\
0000000000000c00090000000000000000000c000a000000000000000000";

/// The kernel's dump reply for real server 10.244.1.5:8080 at weight 0.
const DEST_REPLY: &str = "0501000050010200140001000af40105000000000000000000000000060002001f900000\
0800030000000000080004000000000005000d000000000006000e000000000006000f00000000000800050000000000\
080006000000000008000700000000000800080000000000080009000000000006000b00020000005c000a0008000100\
00000000080002000000000008000300000000000c00040000000000000000000c000500000000000000000008000600\
0000000008000700000000000800080000000000080009000000000008000a00000000007c000c000c00010000000000\
000000000c00020000000000000000000c00030000000000000000000c00040000000000000000000c00050000000000\
000000000c00060000000000000000000c00070000000000000000000c00080000000000000000000c00090000000000\
000000000c000a000000000000000000";

/// The kernel's answer to GET_INFO: version 1.2.1, 4096 hash buckets.
const INFO_REPLY: &str = "0e01000008000100010201000800020000100000";

#[test]
fn new_service_matches_ipvsadm() {
    let vs = VirtualServer {
        key: key(Protocol::Tcp, TCP_VIP, 80),
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
    };
    assert_eq!(emit(Op::NewService(vs).message()), NEW_SERVICE_TCP_RR);
}

#[test]
fn persistent_services_match_ipvsadm() {
    let udp = VirtualServer {
        key: key(Protocol::Udp, UDP_VIP, 53),
        scheduler: "wrr".into(),
        flags: SVC_F_PERSISTENT,
        timeout: 180,
    };
    assert_eq!(
        emit(Op::NewService(udp).message()),
        NEW_SERVICE_UDP_PERSISTENT
    );
    let tcp = VirtualServer {
        key: key(Protocol::Tcp, TCP_VIP, 80),
        scheduler: "rr".into(),
        flags: SVC_F_PERSISTENT,
        timeout: 300,
    };
    assert_eq!(emit(Op::SetService(tcp).message()), SET_SERVICE_PERSISTENT);
}

#[test]
fn dest_dump_request_matches_ipvsadm() {
    let msg = IpvsMessage {
        cmd: CMD_GET_DEST,
        attrs: vec![CmdAttr::Service(key_attrs(&key(
            Protocol::Tcp,
            TCP_VIP,
            80,
        )))],
    };
    assert_eq!(emit(msg), GET_DEST_TCP);
}

/// ipvsadm sends the whole service and three tunnel attributes with every
/// destination; we send the service key and the destination's own fields,
/// which is what the kernel requires. The layout follows `ip_vs.h`.
#[test]
fn dest_messages_follow_the_uapi_layout() {
    let svc = key(Protocol::Tcp, TCP_VIP, 80);
    let rs = RealServer {
        addr: Ipv4Addr::new(10, 244, 1, 5),
        port: 8080,
        weight: 1,
    };
    // The service key attribute exactly as ipvsadm sends it in a dump request.
    let service = &GET_DEST_TCP[8..];
    let dest_key = "06000b0002000000140001000af40105000000000000000000000000060002001f900000";
    let dest_full = "0800030000000000080004000100000008000500000000000800060000000000";
    assert_eq!(
        emit(Op::NewDest(svc, rs).message()),
        format!("05010000{service}48000280{dest_key}{dest_full}")
    );
    assert_eq!(
        emit(Op::DelDest(svc, rs).message()),
        format!("07010000{service}28000280{dest_key}")
    );
}

#[test]
fn decodes_a_service_from_the_kernel() {
    let msg = parse(&hex(SERVICE_REPLY_UDP));
    assert_eq!(msg.cmd, CMD_NEW_SERVICE);
    let [CmdAttr::Service(attrs)] = msg.attrs.as_slice() else {
        panic!("one service attribute expected: {msg:?}");
    };
    let info = service_from_attrs(attrs).expect("an IPv4 service");
    assert_eq!(
        info.server,
        VirtualServer {
            key: key(Protocol::Udp, UDP_VIP, 53),
            scheduler: "wrr".into(),
            flags: SVC_F_PERSISTENT,
            timeout: 180,
        }
    );
    assert_eq!(info.counters, Counters::default());
}

#[test]
fn decodes_a_real_server_from_the_kernel() {
    let msg = parse(&hex(DEST_REPLY));
    let [CmdAttr::Dest(attrs)] = msg.attrs.as_slice() else {
        panic!("one destination attribute expected: {msg:?}");
    };
    let info = dest_from_attrs(attrs).expect("an IPv4 destination");
    assert_eq!(
        info.server,
        RealServer {
            addr: Ipv4Addr::new(10, 244, 1, 5),
            port: 8080,
            weight: 0,
        }
    );
    assert_eq!((info.active_conns, info.inactive_conns), (0, 0));
}

#[test]
fn decodes_info() {
    let msg = parse(&hex(INFO_REPLY));
    assert_eq!(
        msg.attrs,
        vec![
            CmdAttr::InfoVersion(0x010201),
            CmdAttr::InfoConnTabSize(4096)
        ]
    );
    let info = Info {
        version: 0x010201,
        conn_tab_size: 4096,
    };
    assert_eq!(info.version_string(), "1.2.1");
}

#[test]
fn counters_round_trip_and_take_32_bit_stats_only_as_opaque() {
    let c = Counters {
        conns: 3,
        in_packets: 1 << 33,
        out_packets: 7,
        in_bytes: 1500,
        out_bytes: 9000,
    };
    let attrs = vec![SvcAttr::Stats64(c), SvcAttr::Port(8080)];
    let mut buf = vec![0u8; attrs.as_slice().buffer_len()];
    attrs.as_slice().emit(&mut buf);
    assert_eq!(parse_nested::<SvcAttr>(&buf).unwrap(), attrs);
    // A 32-bit packet counter parses as well (the STATS attribute layout).
    let mut stats = Vec::new();
    for (kind, v) in [(STATS_ATTR_CONNS, 5u32), (STATS_ATTR_INPKTS, 9)] {
        stats.extend(8u16.to_ne_bytes());
        stats.extend(kind.to_ne_bytes());
        stats.extend(v.to_ne_bytes());
    }
    let parsed = parse_counters(&stats).unwrap();
    assert_eq!((parsed.conns, parsed.in_packets), (5, 9));
}

#[test]
fn non_ipv4_services_are_skipped() {
    let mut attrs = key_attrs(&key(Protocol::Tcp, TCP_VIP, 80));
    attrs[0] = SvcAttr::Af(libc::AF_INET6 as u16);
    assert_eq!(service_from_attrs(&attrs), None);
}

#[test]
fn operations_name_their_objects() {
    let svc = key(Protocol::Udp, UDP_VIP, 53);
    let rs = RealServer {
        addr: Ipv4Addr::new(10, 244, 2, 7),
        port: 5353,
        weight: 0,
    };
    assert_eq!(
        Op::SetDest(svc, rs).to_string(),
        "setting real server 10.244.2.7:5353 of UDP/10.96.0.11:53 to weight 0"
    );
    let err = IpvsError::Ops(vec![(
        Op::DelService(svc).to_string(),
        io::Error::from_raw_os_error(libc::ESRCH),
    )]);
    let msg = err.to_string();
    assert!(
        msg.contains("deleting virtual server UDP/10.96.0.11:53"),
        "{msg}"
    );
    assert!(msg.contains("No such process"), "{msg}");
}

#[test]
fn operations_render_as_ipvsadm_restore_lines() {
    let vs = VirtualServer {
        key: key(Protocol::Udp, UDP_VIP, 53),
        scheduler: "mh".into(),
        flags: SVC_F_PERSISTENT | SVC_F_SCHED_SH_PORT,
        timeout: 180,
    };
    let rs = RealServer {
        addr: Ipv4Addr::new(10, 244, 2, 7),
        port: 5353,
        weight: 1,
    };
    let lines: Vec<String> = [
        Op::NewService(vs.clone()),
        Op::NewDest(vs.key, rs),
        Op::DelDest(vs.key, rs),
        Op::DelService(key(Protocol::Sctp, TCP_VIP, 80)),
    ]
    .iter()
    .map(Op::ipvsadm_line)
    .collect();
    assert_eq!(
        lines,
        [
            "-A -u 10.96.0.11:53 -s mh -p 180 -b sh-port",
            "-a -u 10.96.0.11:53 -r 10.244.2.7:5353 -m -w 1",
            "-d -u 10.96.0.11:53 -r 10.244.2.7:5353",
            "-D --sctp-service 10.96.0.10:80",
        ]
    );
}
