/* Which Service a packet is for, and which endpoint serves it: uniformly
 * random over the set its traffic policy allows, or the client's
 * remembered endpoint under ClientIP affinity. */
#ifndef SVCLAB_SELECT_H
#define SVCLAB_SELECT_H

#include "config.h"
#include "maps.h"
#include "packet.h"

#define NSEC_PER_SEC 1000000000ULL

/* The Service at the packet's destination: a ClusterIP or external IP, or
 * a NodePort when the destination is one of this node's NodePort
 * addresses. */
static __always_inline struct svc_val *find_service(const struct pkt *p)
{
	struct svc_key k = {.addr = p->daddr, .port = p->dport, .proto = p->proto};
	struct svc_val *svc = bpf_map_lookup_elem(&services, &k);

	if (svc || !is_nodeport_addr(p->daddr))
		return svc;
	k.addr = 0;
	return bpf_map_lookup_elem(&services, &k);
}

static __always_inline void count(__u32 svc_id, int new_connection)
{
	struct svc_stats *s = bpf_map_lookup_elem(&stats, &svc_id);

	if (!s)
		return;
	__sync_fetch_and_add(&s->packets, 1);
	if (new_connection)
		__sync_fetch_and_add(&s->connections, 1);
}

static __always_inline int remembered(struct svc_val *svc, struct affinity_val *av, __u8 set,
				      __u64 now)
{
	struct member_key mk = {
		.svc_id = svc->id, .addr = av->addr, .port = av->port, .set = set};

	if (now - av->last_ns >= (__u64)svc->affinity_seconds * NSEC_PER_SEC)
		return 0;
	return bpf_map_lookup_elem(&members, &mk) != NULL;
}

/* 0 and the endpoint in out, or -1 when the set is empty. */
static __always_inline int pick(struct svc_val *svc, __u8 set, __be32 client,
				struct backend *out)
{
	struct affinity_key ak = {.client = client, .svc_id = svc->id, .set = set};
	struct backend_key bk = {.svc_id = svc->id};
	struct affinity_val *av;
	struct backend *b;
	__u64 now = 0;
	__u32 index, n;

	n = set == SET_LOCAL ? svc->count[SET_LOCAL] : svc->count[SET_CLUSTER];
	if (!n)
		return -1;
	if (svc->affinity_seconds) {
		now = bpf_ktime_get_ns();
		av = bpf_map_lookup_elem(&affinity, &ak);
		if (av && remembered(svc, av, set, now)) {
			av->last_ns = now;
			out->addr = av->addr;
			out->port = av->port;
			return 0;
		}
	}
	index = bpf_get_prandom_u32() % n;
	if (FAULTS & FAULT_WRONG_PROBABILITY) {
		__u32 other = bpf_get_prandom_u32() % n;

		if (other < index)
			index = other;
	}
	bk.slot = ((__u32)svc->generation << 31) | ((__u32)set << 30) | index;
	b = bpf_map_lookup_elem(&backends, &bk);
	if (!b)
		return -1;
	out->addr = b->addr;
	out->port = b->port;
	if (svc->affinity_seconds) {
		struct affinity_val nv = {.addr = b->addr, .port = b->port, .last_ns = now};

		bpf_map_update_elem(&affinity, &ak, &nv, BPF_ANY);
	}
	return 0;
}

#endif
