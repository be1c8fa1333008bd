/* The BPF conntrack: the entries one load-balanced connection needs, each
 * keyed by the tuple the hook that uses it will see. */
#ifndef SVCLAB_FLOWS_H
#define SVCLAB_FLOWS_H

#include "maps.h"
#include "packet.h"

static __always_inline struct ct_key ct_key_of(const struct pkt *p, __u8 kind)
{
	struct ct_key k = {
		.saddr = p->saddr,
		.daddr = p->daddr,
		.sport = p->sport,
		.dport = p->dport,
		.proto = p->proto,
		.kind = kind,
	};
	return k;
}

static __always_inline void ct_put(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport,
				   __u8 proto, __u8 kind, struct ct_val *v)
{
	struct ct_key k = {
		.saddr = saddr,
		.daddr = daddr,
		.sport = sport,
		.dport = dport,
		.proto = proto,
		.kind = kind,
	};

	bpf_map_update_elem(&conntrack, &k, v, BPF_ANY);
}

/* The source port for masquerading p to addr towards ep: the client's own
 * unless another connection already has it. */
static __always_inline __be16 snat_port(const struct pkt *p, __be32 addr,
					const struct backend *ep)
{
	struct ct_key k = {
		.saddr = ep->addr,
		.daddr = addr,
		.sport = ep->port,
		.dport = p->sport,
		.proto = p->proto,
		.kind = CT_UNSNAT,
	};
	struct ct_val *v;

	for (int i = 0; i < 4; i++) {
		v = bpf_map_lookup_elem(&conntrack, &k);
		if (!v || (v->addr == p->saddr && v->port == p->sport))
			break;
		/* Above the node's ephemeral range (32768-60999). */
		k.dport = bpf_htons(61000 + bpf_get_prandom_u32() % 4535);
	}
	return k.dport;
}

/* Records a new connection p -> ep. With snat_addr, the endpoint sees that
 * address instead of the client. reply_kind is CT_UNDNAT for replies that
 * leave the node, CT_UNDNAT_LOCAL for replies to the node itself. */
static __always_inline void open_flow(const struct pkt *p, const struct backend *ep,
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

	ct_put(p->saddr, p->daddr, p->sport, p->dport, p->proto, CT_ORIG, &v);
	if (snat_addr) {
		__be16 port = snat_port(p, snat_addr, ep);

		v.addr = snat_addr;
		v.port = port;
		ct_put(p->saddr, ep->addr, p->sport, ep->port, p->proto, CT_SNAT, &v);
		v.addr = p->saddr;
		v.port = p->sport;
		ct_put(ep->addr, snat_addr, ep->port, port, p->proto, CT_UNSNAT, &v);
	}
	v.addr = p->daddr;
	v.port = p->dport;
	v.flags = reply_flags;
	ct_put(ep->addr, p->saddr, ep->port, p->sport, p->proto, reply_kind, &v);
}

#endif
