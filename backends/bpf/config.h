/* Per-node settings, written by the agent into .rodata before loading
 * (the verifier then sees them as constants). Addresses are in network
 * order. */
#ifndef SVCLAB_CONFIG_H
#define SVCLAB_CONFIG_H

#include <linux/types.h>

volatile const __be32 NODE_IP = 0;
/* cni0's address: the source of masqueraded traffic to local pods. */
volatile const __be32 GATEWAY_IP = 0;
volatile const __be32 POD_NET = 0;
volatile const __be32 POD_MASK = 0;
volatile const __be32 CLUSTER_NET = 0;
volatile const __be32 CLUSTER_MASK = 0;
volatile const __u32 FAULTS = 0;
/* Which of the node's two addresses accept NodePorts: its
 * nodePortAddresses, resolved by the agent. */
#define NODEPORT_ON_NODE_IP 1
#define NODEPORT_ON_GATEWAY 2
volatile const __u32 NODEPORT_ON = NODEPORT_ON_NODE_IP;

static __always_inline int on_this_node(__be32 addr)
{
	return (addr & POD_MASK) == POD_NET;
}

static __always_inline int is_nodeport_addr(__be32 addr)
{
	return ((NODEPORT_ON & NODEPORT_ON_NODE_IP) && addr == NODE_IP) ||
	       ((NODEPORT_ON & NODEPORT_ON_GATEWAY) && addr == GATEWAY_IP);
}

static __always_inline int in_cluster(__be32 addr)
{
	return (addr & CLUSTER_MASK) == CLUSTER_NET;
}

#endif
