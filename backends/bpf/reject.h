/* Refusing a connection to a Service without endpoints at once, as
 * kube-proxy's REJECT does: the packet is turned into an ICMP port
 * unreachable from the Service address and sent back where it came from.
 * TCP clients see ECONNREFUSED on it as on a RST, UDP clients too. */
#ifndef SVCLAB_REJECT_H
#define SVCLAB_REJECT_H

#include <linux/pkt_cls.h>

#include "packet.h"

/* From <linux/icmp.h>, which pulls in libc headers a BPF build lacks. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

struct icmp_unreachable {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 unused;
};

struct port_unreachable {
	struct iphdr ip;
	struct icmp_unreachable icmp;
	/* What ICMP errors quote: the offending IP header and 8 bytes. */
	struct iphdr quoted_ip;
	__u8 quoted_l4[8];
};

/* Rewrites the packet in place (MACs swapped, so it is addressed to its
 * sender) and redirects it to ifindex with flags. */
static __always_inline int reject(struct __sk_buff *skb, __u32 ifindex, __u64 flags)
{
	struct port_unreachable r = {};
	struct ethhdr eth;
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) ||
	    bpf_skb_load_bytes(skb, IP_OFF, &r.quoted_ip, sizeof(r.quoted_ip)) ||
	    bpf_skb_load_bytes(skb, L4_OFF, r.quoted_l4, sizeof(r.quoted_l4)))
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, mac, ETH_ALEN);

	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tos = 0xc0;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = r.quoted_ip.daddr;
	r.ip.daddr = r.quoted_ip.saddr;
	r.icmp.type = ICMP_DEST_UNREACH;
	r.icmp.code = ICMP_PORT_UNREACH;
	r.icmp.checksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.icmp,
						  sizeof(r) - sizeof(r.ip), 0));
	r.ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));

	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, IP_OFF, &r, sizeof(r), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(ifindex, flags);
}

#endif
