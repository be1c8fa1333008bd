/* The layout shared by the BPF programs and the agent. Every struct here
 * has a #[repr(C)] twin in backends/src/ebpf/abi.rs: keep the field order,
 * sizes and padding identical (the Rust side asserts the sizes). */
#ifndef SVCLAB_ABI_H
#define SVCLAB_ABI_H

#include <linux/types.h>

/* A Service address: ClusterIP or external IP; addr 0 is a NodePort on any
 * node address. */
struct svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* Some endpoint exists somewhere: without one the Service rejects. */
#define SVC_HAS_ANY 0x01
#define SVC_ITP_LOCAL 0x02
#define SVC_ETP_LOCAL 0x04
/* A NodePort or external IP entry (external traffic policy applies). */
#define SVC_EXTERNAL 0x08

#define SET_CLUSTER 0
#define SET_LOCAL 1

struct svc_val {
	__u32 id;
	/* Endpoints in the cluster set [0] and the local set [1]. */
	__u16 count[2];
	__u32 affinity_seconds;
	/* Which of the two backend slot ranges is live: a sync writes the
	 * other one, then flips this in one map update. */
	__u8 generation;
	__u8 flags;
	__u16 pad;
};

/* slot = generation << 31 | set << 30 | index */
struct backend_key {
	__u32 svc_id;
	__u32 slot;
};

struct backend {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* Endpoints of affinity Services, so a remembered endpoint is used only
 * while it is still in the set. */
struct member_key {
	__u32 svc_id;
	__be32 addr;
	__be16 port;
	__u8 set;
	__u8 pad;
};

struct affinity_key {
	__be32 client;
	__u32 svc_id;
	__u8 set;
	__u8 pad[3];
};

struct affinity_val {
	__be32 addr;
	__be16 port;
	__u16 pad;
	__u64 last_ns;
};

/* Conntrack entries, by the tuple a hook sees and what it does to it. */
#define CT_ORIG 1         /* ingress, client -> service: DNAT to endpoint */
#define CT_SNAT 2         /* egress, client -> endpoint: SNAT to node */
#define CT_UNSNAT 3       /* ingress, endpoint -> node: back to client */
#define CT_UNDNAT 4       /* egress, endpoint -> client: service as source */
#define CT_UNDNAT_LOCAL 5 /* ingress, endpoint -> node itself: same */
#define CT_UNDNAT_MASQ 6  /* egress, endpoint -> client after unsnat: same */

/* skb->mark bit reply_in sets on a reply it un-masqueraded, so that egress
 * applies CT_UNDNAT_MASQ entries to that reply and to nothing else (say a
 * reply of another node's DNAT, forwarded through this one, which has the
 * same tuple). */
#define MARK_UNSNATED 0x00100000
/* skb->mark bit ingress sets on a packet it DNATed, so that egress applies
 * CT_SNAT entries to that packet only, and not to another node's DNATed
 * packet forwarded through this one on the same tuple. */
#define MARK_DNATED 0x00200000

struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 kind;
	__u16 pad;
};

/* The client acknowledged: a later SYN on this tuple is a new connection. */
#define CT_SEEN_ACK 0x01
/* A reply for a connection from the node to its own address: deliver it
 * through lo. */
#define CT_TO_LO 0x02
/* An SNAT that changed only the client's port, because the endpoint may
 * still hold the client's own tuple from a connection to another Service
 * address: the reply also needs its Service address back (undnat-local). */
#define CT_PORT_SNAT 0x04

struct ct_val {
	/* The address and port this entry rewrites to. */
	__be32 addr;
	__be16 port;
	__u8 flags;
	__u8 pad;
	__u32 svc_id;
	/* The endpoint of the connection, for stale-flow cleanup. */
	__be32 ep_addr;
	__be16 ep_port;
	/* When the entry was written: seconds of the monotonic clock, modulo
	 * 65536 (enough to tell the last two minutes). */
	__u16 opened;
};

/* Service ids index the stats array. */
#define MAX_SERVICE_IDS 262144

struct svc_stats {
	__u64 packets;
	__u64 connections;
};

/* Deliberate defects (the lab's negative tests), in FAULTS. */
#define FAULT_MISSING_MASQUERADE 0x01
#define FAULT_WRONG_PROBABILITY 0x02
#define FAULT_NO_REJECT 0x04

#endif
