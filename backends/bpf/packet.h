/* Reading a TCP or UDP over IPv4 packet's addresses and rewriting them with
 * their checksums. Everything goes through the skb helpers, so packets
 * whose headers are not in the linear area work too. */
#ifndef SVCLAB_PACKET_H
#define SVCLAB_PACKET_H

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_SRC_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + offsetof(struct iphdr, daddr))
/* Packets with IP options are left alone, so L4 is at a fixed offset. */
#define L4_OFF (IP_OFF + sizeof(struct iphdr))
#define TCP_FLAGS_OFF (L4_OFF + 13)
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

struct pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
};

/* 0 for an unfragmented TCP or UDP over IPv4 packet without IP options. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;
	__be16 ports[2];

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)))
		return -1;
	if (ip.ihl != 5 || (ip.frag_off & bpf_htons(0x3fff)))
		return -1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;
	if (bpf_skb_load_bytes(skb, L4_OFF, ports, sizeof(ports)))
		return -1;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->sport = ports[0];
	p->dport = ports[1];
	p->proto = ip.protocol;
	p->tcp_flags = 0;
	if (ip.protocol == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, TCP_FLAGS_OFF, &p->tcp_flags, 1))
		return -1;
	return 0;
}

static __always_inline int is_syn(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* Rewrites the source (dst == 0) or destination (dst == 1) address and
 * port, fixing the IP and L4 checksums; p follows. A UDP checksum of 0
 * (none) stays 0. */
static __always_inline int rewrite(struct __sk_buff *skb, struct pkt *p, int dst,
				   __be32 addr, __be16 port)
{
	__be32 old_addr = dst ? p->daddr : p->saddr;
	__be16 old_port = dst ? p->dport : p->sport;
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	int csum = L4_OFF + (p->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
						     : offsetof(struct udphdr, check));

	if (old_addr != addr) {
		if (bpf_l4_csum_replace(skb, csum, old_addr, addr,
					mangled | BPF_F_PSEUDO_HDR | sizeof(addr)))
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, addr, sizeof(addr)))
			return -1;
		if (bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &addr,
					sizeof(addr), 0))
			return -1;
	}
	if (old_port != port) {
		if (bpf_l4_csum_replace(skb, csum, old_port, port, mangled | sizeof(port)))
			return -1;
		if (bpf_skb_store_bytes(skb, L4_OFF + (dst ? 2 : 0), &port, sizeof(port), 0))
			return -1;
	}
	if (dst) {
		p->daddr = addr;
		p->dport = port;
	} else {
		p->saddr = addr;
		p->sport = port;
	}
	return 0;
}

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

#endif
