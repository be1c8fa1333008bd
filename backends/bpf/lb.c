// SPDX-License-Identifier: Apache-2.0
/* svclab's eBPF Service load balancer: tc programs in the node's network
 * namespace, following netfilter's split so the kernel's routing stays in
 * charge. Ingress hooks (before routing) change destinations: DNAT to an
 * endpoint, and undoing SNAT on replies. Egress hooks (after routing)
 * change sources: SNAT, and the Service address back on replies.
 *
 *   from_pod  ingress of each pod's host veth (pods' traffic)
 *   to_pod    egress of each pod's host veth (what reaches pods)
 *   from_net  ingress of the uplink (NodePorts, replies from other nodes)
 *   to_net    egress of the uplink (what leaves; the node's own traffic to
 *             Services, which routing sent there by the VIP)
 *   from_lo   egress of lo (the node's own traffic to its NodePorts)
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"
#include "config.h"
#include "flows.h"
#include "maps.h"
#include "packet.h"
#include "reject.h"
#include "select.h"

#define AF_INET 2
#define LOOPBACK_IFINDEX 1

char LICENSE[] SEC("license") = "GPL";

/* 1 when p belongs to a known connection of svc and was DNATed, 0 when it
 * starts a new one, -1 on a rewrite failure. *port_only says whether the
 * connection's source port moves too (open_flow). */
static __always_inline int known_flow(struct __sk_buff *skb, struct pkt *p,
				      const struct svc_val *svc, int *port_only)
{
	struct ct_key k = ct_key_of(p, CT_ORIG);
	struct ct_val *ct = bpf_map_lookup_elem(&conntrack, &k);

	if (!ct || !svc || ct->svc_id != svc->id)
		return 0;
	/* A SYN after the handshake reuses the port for a new connection;
	 * one before it is a retransmission. */
	if (is_syn(p) && (ct->flags & CT_SEEN_ACK))
		return 0;
	if ((p->tcp_flags & TCP_FLAG_ACK) && !(ct->flags & CT_SEEN_ACK))
		ct->flags |= CT_SEEN_ACK;
	count(svc->id, 0);
	*port_only = ct->flags & CT_PORT_SNAT;
	return rewrite(skb, p, 1, ct->addr, ct->port) ? -1 : 1;
}

/* A Service without endpoints in the set its traffic may use: refused at
 * once when it has none anywhere (ifindex and flags say where the refusal
 * goes), dropped when only the traffic policy rules them out. */
static __always_inline int no_endpoint(struct __sk_buff *skb, const struct svc_val *svc,
				       __u32 ifindex, __u64 flags)
{
	if ((svc->flags & SVC_HAS_ANY) || (FAULTS & FAULT_NO_REJECT))
		return TC_ACT_SHOT;
	return reject(skb, ifindex, flags);
}

/* Undoes SNAT and, for the node's own connections, DNAT on replies. */
static __always_inline int reply_in(struct __sk_buff *skb, struct pkt *p, int *done)
{
	struct ct_key k = ct_key_of(p, CT_UNSNAT);
	struct ct_val *ct = bpf_map_lookup_elem(&conntrack, &k);
	struct ct_val *undnat = NULL;
	__u8 zero_macs[2 * ETH_ALEN] = {};
	__be32 addr;
	__be16 port;
	int to_lo;

	*done = 1;
	if (ct) {
		if (!(ct->flags & CT_PORT_SNAT)) {
			skb->mark |= MARK_UNSNATED;
			return rewrite(skb, p, 1, ct->addr, ct->port) ? TC_ACT_SHOT : TC_ACT_OK;
		}
		/* Only the port moved (open_flow): the reply entry is keyed by
		 * the tuple as it came back, and both are undone here. */
		k.kind = CT_UNDNAT_LOCAL;
		undnat = bpf_map_lookup_elem(&conntrack, &k);
		if (!undnat) {
			k.kind = CT_UNDNAT;
			undnat = bpf_map_lookup_elem(&conntrack, &k);
		}
		if (rewrite(skb, p, 1, ct->addr, ct->port))
			return TC_ACT_SHOT;
	} else {
		k.kind = CT_UNDNAT_LOCAL;
		undnat = bpf_map_lookup_elem(&conntrack, &k);
		if (!undnat) {
			*done = 0;
			return TC_ACT_OK;
		}
	}
	if (!undnat)
		return TC_ACT_OK;
	addr = undnat->addr;
	port = undnat->port;
	to_lo = undnat->flags & CT_TO_LO;
	if (rewrite(skb, p, 0, addr, port))
		return TC_ACT_SHOT;
	if (!to_lo)
		return TC_ACT_OK;
	/* From the node's own address to itself: only lo may deliver that,
	 * and lo's address is all zeros. */
	if (bpf_skb_store_bytes(skb, 0, zero_macs, sizeof(zero_macs), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(LOOPBACK_IFINDEX, BPF_F_INGRESS);
}

#define ORIGIN_POD 0
#define ORIGIN_NET 1

static __always_inline int ingress(struct __sk_buff *skb, int origin)
{
	struct svc_val *svc;
	struct backend ep;
	struct pkt p;
	int done, verdict, snat, outside, port_only;
	__u8 set;

	if (parse(skb, &p))
		return TC_ACT_OK;
	verdict = reply_in(skb, &p, &done);
	if (done)
		return verdict;
	svc = find_service(&p);
	verdict = known_flow(skb, &p, svc, &port_only);
	if (verdict < 0)
		return TC_ACT_SHOT;
	if (verdict) {
		skb->mark |= MARK_DNATED;
		return TC_ACT_OK;
	}
	if (!svc)
		return TC_ACT_OK;

	/* kube-proxy's rules: external traffic policy Cluster masquerades
	 * everything; Local keeps the source and uses local endpoints,
	 * except for pods, which short-circuit to the cluster set. Traffic
	 * from outside the cluster to a ClusterIP is masqueraded. */
	outside = origin == ORIGIN_NET && !in_cluster(p.saddr);
	if (svc->flags & SVC_EXTERNAL) {
		int local = svc->flags & SVC_ETP_LOCAL;

		set = local && outside ? SET_LOCAL : SET_CLUSTER;
		snat = !local;
	} else {
		set = svc->flags & SVC_ITP_LOCAL ? SET_LOCAL : SET_CLUSTER;
		snat = outside;
	}
	if (pick(svc, set, p.saddr, &ep))
		return no_endpoint(skb, svc, skb->ifindex, 0);
	/* Hairpin: an endpoint calling itself must not see its own address
	 * as the source, or it would answer itself directly. */
	if (ep.addr == p.saddr)
		snat = 1;
	if (FAULTS & FAULT_MISSING_MASQUERADE)
		snat = 0;
	open_flow(&p, &ep, svc->id, snat ? (on_this_node(ep.addr) ? GATEWAY_IP : NODE_IP) : 0,
		  CT_UNDNAT, 0);
	count(svc->id, 1);
	skb->mark |= MARK_DNATED;
	return rewrite(skb, &p, 1, ep.addr, ep.port) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Routing chose the device by the Service address; send the DNATed packet
 * where the endpoint really is, with the neighbour resolved by the
 * kernel. */
static __always_inline int reroute(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = p->proto,
		.sport = p->sport,
		.dport = p->dport,
		.ipv4_src = p->saddr,
		.ipv4_dst = p->daddr,
		.ifindex = skb->ifindex,
	};
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);

	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_SHOT;
	return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
}

/* The node's own connections to a Service (kube-proxy's OUTPUT chain).
 * The source stays the node's address; replies are undone on ingress. */
static __always_inline int from_node(struct __sk_buff *skb, struct pkt *p, int lo)
{
	struct svc_val *svc = find_service(p);
	struct backend ep;
	int port_only = 0;
	int verdict = known_flow(skb, p, svc, &port_only);
	struct ct_val *snat;
	struct ct_key k;
	__u8 set;

	if (verdict < 0)
		return TC_ACT_SHOT;
	if (!verdict) {
		if (!svc)
			return TC_ACT_OK;
		set = !(svc->flags & SVC_EXTERNAL) && (svc->flags & SVC_ITP_LOCAL) ? SET_LOCAL
										   : SET_CLUSTER;
		if (pick(svc, set, p->saddr, &ep))
			return no_endpoint(skb, svc, lo ? LOOPBACK_IFINDEX : skb->ifindex,
					   BPF_F_INGRESS);
		port_only = open_flow(p, &ep, svc->id, 0, CT_UNDNAT_LOCAL, lo ? CT_TO_LO : 0);
		count(svc->id, 1);
		if (rewrite(skb, p, 1, ep.addr, ep.port))
			return TC_ACT_SHOT;
	}
	if (!port_only)
		return reroute(skb, p);
	/* Already at egress: the port-only SNAT applies here. */
	k = ct_key_of(p, CT_SNAT);
	snat = bpf_map_lookup_elem(&conntrack, &k);
	if (snat && rewrite(skb, p, 0, snat->addr, snat->port))
		return TC_ACT_SHOT;
	return reroute(skb, p);
}

#define DEV_POD 0
#define DEV_NET 1
#define DEV_LO 2

static __always_inline int egress(struct __sk_buff *skb, int dev)
{
	struct ct_key k;
	struct ct_val *ct;
	struct pkt p;

	if (parse(skb, &p))
		return TC_ACT_OK;
	k = ct_key_of(&p, skb->mark & MARK_UNSNATED ? CT_UNDNAT_MASQ : CT_UNDNAT);
	ct = bpf_map_lookup_elem(&conntrack, &k);
	if (!ct && (skb->mark & MARK_DNATED)) {
		k.kind = CT_SNAT;
		ct = bpf_map_lookup_elem(&conntrack, &k);
	}
	if (ct)
		return rewrite(skb, &p, 0, ct->addr, ct->port) ? TC_ACT_SHOT : TC_ACT_OK;
	if (dev == DEV_POD)
		return TC_ACT_OK;
	return from_node(skb, &p, dev == DEV_LO);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	return ingress(skb, ORIGIN_POD);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	return egress(skb, DEV_POD);
}

SEC("classifier")
int from_net(struct __sk_buff *skb)
{
	return ingress(skb, ORIGIN_NET);
}

SEC("classifier")
int to_net(struct __sk_buff *skb)
{
	return egress(skb, DEV_NET);
}

SEC("classifier")
int from_lo(struct __sk_buff *skb)
{
	return egress(skb, DEV_LO);
}
