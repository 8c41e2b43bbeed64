/* SPDX-License-Identifier: GPL-2.0 */
/*
 * nf_colo: internal declarations shared by the node store
 * (colo_node.c), the Generic Netlink family (colo_netlink.c) and module
 * init/exit (colo_main.c).
 *
 * Locking and references (see also docs/protocol.md, "Locking"):
 *
 *   colo_nets_mutex  (colo_node.c) protects colo_nets_list and
 *                    colo_unloading.  Process context only.  Outermost.
 *   colo_net->lock   spinlock, protects the netns' idr, nodes list, count,
 *                    gen and closing flag, and every node's `unlinked` flag.
 *                    Never taken from softirq, so plain spin_lock().
 *   colo_node->lock  spinlock, protects the node's state and stats.
 *                    Nested inside colo_net->lock where both are held.
 *
 *   Readers look a node up with idr_find() under rcu_read_lock() and take a
 *   reference with refcount_inc_not_zero() before leaving the RCU section.
 *   The store (idr + nodes list) holds one reference; it is dropped by
 *   whoever unlinks the node (destroy, owner release, netns exit, module
 *   unload), exactly once thanks to `unlinked`.  The last colo_node_put()
 *   frees the node with kfree_rcu(): no release path ever waits for a grace
 *   period and none sleeps.
 */
#ifndef _COLO_CORE_H
#define _COLO_CORE_H

#include <linux/types.h>
#include <linux/idr.h>
#include <linux/list.h>
#include <linux/rcupdate.h>
#include <linux/refcount.h>
#include <linux/spinlock.h>
#include <net/net_namespace.h>
#include <net/genetlink.h>

#include "uapi/linux/colo.h"

#define COLO_INDEX_MIN		1
#define COLO_INDEX_MAX		65535
/* Per-netns node cap so userspace cannot exhaust kernel memory (-ENOSPC). */
#define COLO_MAX_NODES_PER_NET	1024

struct colo_stats {
	u64 checkpoints;
	u64 checkpoint_requests;
	u64 requests_suppressed;
	u64 failovers;
	u64 resets;
};

struct colo_node {
	/* Immutable once the node is published in the idr. */
	struct net *net;	/* not counted: netns exit destroys the node first */
	u32 index;
	u32 owner;		/* netlink port id of the creating socket */
	u8 mode;		/* enum colo_mode */

	/* Store membership, protected by colo_net->lock. */
	struct list_head list;	/* colo_net->nodes, or a private kill list */
	bool unlinked;		/* removed from the store (written under colo_net->lock) */

	refcount_t ref;		/* one for the store + one per in-flight user */
	struct rcu_head rcu;

	/* Mutable state, protected by lock. */
	spinlock_t lock;
	u8 state;		/* enum colo_state */
	struct colo_stats stats;
};

struct colo_net {
	spinlock_t lock;	/* writers of everything below */
	struct idr idr;		/* index -> node; idr_find() under RCU for readers */
	struct list_head nodes;	/* all nodes of this netns, walked under lock */
	unsigned int count;	/* number of nodes, <= COLO_MAX_NODES_PER_NET */
	unsigned int gen;	/* bumped on every insert/remove: dump consistency */
	bool closing;		/* netns exit or module unload: no new nodes */
	struct list_head all;	/* colo_nets_list, under colo_nets_mutex */
};

/* A snapshot of a node taken under its lock, for messages. */
struct colo_node_info {
	u32 index;
	u32 owner;
	u8 mode;
	u8 state;
	struct colo_stats stats;
};

/* colo_node.c */
struct colo_net *colo_pernet(const struct net *net);
struct colo_node *colo_node_get(struct colo_net *cn, u32 index);
void colo_node_put(struct colo_node *node);
void colo_node_snapshot(struct colo_node *node, struct colo_node_info *ni);
int colo_node_create(struct net *net, u32 index, u8 mode, u32 owner,
		     struct colo_node **out, struct netlink_ext_ack *extack);
int colo_node_destroy(struct net *net, u32 index, struct netlink_ext_ack *extack);
int colo_store_init(void);
void colo_store_exit(void);
void colo_store_unload(void);

/* colo_netlink.c */
extern struct genl_family colo_family;
void colo_event_node_gone(struct colo_node *node, u8 gone_reason, gfp_t gfp);
int colo_netlink_init(void);
void colo_netlink_exit(void);

#endif /* _COLO_CORE_H */
