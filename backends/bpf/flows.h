/* The BPF conntrack: the entries one load-balanced connection needs, each
 * keyed by the tuple the hook that uses it will see. */
#ifndef SVCLAB_FLOWS_H
#define SVCLAB_FLOWS_H

#include "maps.h"
#include "packet.h"

static __always_inline struct ct_key ct_key(__be32 saddr, __be32 daddr, __be16 sport,
					     __be16 dport, __u8 proto, __u8 kind)
{
	struct ct_key k = {
		.saddr = saddr,
		.daddr = daddr,
		.sport = sport,
		.dport = dport,
		.proto = proto,
		.kind = kind,
	};
	return k;
}

static __always_inline struct ct_key ct_key_of(const struct pkt *p, __u8 kind)
{
	return ct_key(p->saddr, p->daddr, p->sport, p->dport, p->proto, kind);
}

/* Seconds of the monotonic clock, modulo 65536. */
static __always_inline __u16 now_s(void)
{
	return (__u16)(bpf_ktime_get_ns() / 1000000000ULL);
}

static __always_inline void ct_put(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport,
				   __u8 proto, __u8 kind, struct ct_val *v)
{
	struct ct_key k = ct_key(saddr, daddr, sport, dport, proto, kind);

	v->opened = now_s();
	bpf_map_update_elem(&conntrack, &k, v, BPF_ANY);
}

/* How long an endpoint may hold a closed connection's tuple: TIME_WAIT is
 * 60 s; netfilter keeps its entry 120 s. */
#define TUPLE_HELD_S 120

/* The entry of kind for the tuple an endpoint sees, endpoint -> client,
 * if it was written in the last TUPLE_HELD_S seconds. */
static __always_inline struct ct_val *at_endpoint(const struct backend *ep, __be32 addr,
						  __be16 port, __u8 proto, __u8 kind)
{
	struct ct_key k = ct_key(ep->addr, addr, ep->port, port, proto, kind);
	struct ct_val *v = bpf_map_lookup_elem(&conntrack, &k);

	if (v && (__u16)(now_s() - v->opened) > TUPLE_HELD_S)
		return NULL;
	return v;
}

/* Whether the endpoint saw addr:port as a client recently, in a connection
 * other than p's: one of the node's own connections to a Service (reply
 * entry undnat-local), or one masqueraded to that port (unsnat) for another
 * client. DNAT alone hands the endpoint the same tuple again, which it may
 * still hold in TIME_WAIT; a SYN whose timestamp is older than the last
 * one's (the client's timestamp offset depends on the address it
 * connects to) is then rejected there (PAWS), and the client retries a
 * second later. Netfilter's NAT keeps every NATed tuple unique; so does
 * this, by moving the client's port. */
static __always_inline int endpoint_tuple_taken(const struct pkt *p, const struct backend *ep,
						__be32 addr, __be16 port)
{
	struct ct_val *v = at_endpoint(ep, addr, port, p->proto, CT_UNSNAT);

	if (v) {
		if (v->addr != p->saddr || v->port != p->sport || (v->flags & CT_PORT_SNAT))
			return 1;
		/* This client, masqueraded to this tuple before: fine only
		 * if it connected to the same address then. */
		v = at_endpoint(ep, p->saddr, p->sport, p->proto, CT_UNDNAT_MASQ);
		if (!v || v->addr != p->daddr || v->port != p->dport)
			return 1;
	}
	v = at_endpoint(ep, addr, port, p->proto, CT_UNDNAT_LOCAL);
	if (!v)
		v = at_endpoint(ep, addr, port, p->proto, CT_UNDNAT);
	/* The same client to the same address: its timestamps only grow. */
	return v && (addr != p->saddr || port != p->sport || v->addr != p->daddr ||
		     v->port != p->dport);
}

/* Random ports tried before taking one the endpoint may still hold: enough
 * that a busy endpoint (a third of the range held) almost never gets one. */
#define SNAT_PORT_TRIES 16

/* The source port for masquerading p to addr towards ep: the client's own
 * unless the endpoint has seen it from another connection (or fresh asks
 * for another). */
static __always_inline __be16 snat_port(const struct pkt *p, __be32 addr,
					const struct backend *ep, int fresh)
{
	__be16 port = p->sport;

	for (int i = 0; i < SNAT_PORT_TRIES; i++) {
		if (fresh || i > 0)
			/* Above the node's ephemeral range (32768-60999),
			 * so no connection of the node's own, which no map
			 * knows, has it. */
			port = bpf_htons(61000 + bpf_get_prandom_u32() % 4535);
		if (!endpoint_tuple_taken(p, ep, addr, port))
			break;
	}
	return port;
}

/* Records a new connection p -> ep. With snat_addr, the endpoint sees that
 * address instead of the client. reply_kind is CT_UNDNAT for replies that
 * leave the node (CT_UNDNAT_MASQ once masqueraded: see MARK_UNSNATED),
 * CT_UNDNAT_LOCAL for replies to the node itself. When the
 * endpoint has seen the client's own tuple from another connection, only
 * the client's port changes (CT_PORT_SNAT, also on the dnat entry, and the
 * return value): then the reply entry is keyed by the tuple the endpoint
 * sees, and reply_in undoes both at once. */
static __always_inline int open_flow(const struct pkt *p, const struct backend *ep,
				     __u32 svc_id, __be32 snat_addr, __u8 reply_kind,
				     __u8 reply_flags)
{
	struct ct_val v = {
		.addr = ep->addr,
		.port = ep->port,
		.svc_id = svc_id,
		.ep_addr = ep->addr,
		.ep_port = ep->port,
	};
	int port_only = !snat_addr && endpoint_tuple_taken(p, ep, p->saddr, p->sport);
	__be16 reply_port = p->sport;

	v.flags = port_only ? CT_PORT_SNAT : 0;
	ct_put(p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_ORIG, &v);
	v.flags = 0;
	if (port_only)
		snat_addr = p->saddr;
	if (snat_addr) {
		__be16 port = snat_port(p, snat_addr, ep, port_only);

		v.addr = snat_addr;
		v.port = port;
		ct_put(p->saddr, ep->addr, p->sport, ep->port, p->proto, CT_SNAT, &v);
		v.addr = p->saddr;
		v.port = p->sport;
		v.flags = port_only ? CT_PORT_SNAT : 0;
		ct_put(ep->addr, snat_addr, ep->port, port, p->proto, CT_UNSNAT, &v);
		if (port_only)
			reply_port = port;
		else if (reply_kind == CT_UNDNAT)
			reply_kind = CT_UNDNAT_MASQ;
	} else {
		/* An SNAT entry left by an earlier connection on this tuple
		 * must not apply to this one. */
		struct ct_key k =
			ct_key(p->saddr, ep->addr, p->sport, ep->port, p->proto, CT_SNAT);

		bpf_map_delete_elem(&conntrack, &k);
	}
	v.addr = p->daddr;
	v.port = p->dport;
	v.flags = reply_flags;
	ct_put(ep->addr, p->saddr, ep->port, reply_port, p->proto, reply_kind, &v);
	return port_only;
}

#endif
