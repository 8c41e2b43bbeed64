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
 *                    gen, next_id and closing flag, and every node's
 *                    `unlinked` flag.  Always taken with spin_lock_bh(): the
 *                    datapath may look nodes up and tear them down from
 *                    softirq.
 *   colo_node->lock  spinlock, protects the node's state, the request being
 *                    (re)sent (req, pending_since), `dying`, the
 *                    control-plane counters (checkpoints, failovers, resets)
 *                    and the per-CPU counters' reset base.  Always
 *                    spin_lock_bh(): the resend timer and the datapath take it
 *                    in softirq.  Nested inside colo_net->lock where both are
 *                    held; never held while sending a message or sleeping.
 *   per-CPU counters (colo_node->pcpu) are updated without node->lock, with
 *                    BH disabled on the local CPU (colo_node_count()), under
 *                    u64_stats_sync; colo_node_snapshot() sums them.
 *
 *   Readers look a node up with idr_find() under rcu_read_lock() and take a
 *   reference with refcount_inc_not_zero() before leaving the RCU section.
 *   The store (idr + nodes list) holds one reference.  Whoever unlinks the
 *   node (destroy, owner release, netns exit, module unload; exactly once
 *   thanks to `unlinked`) marks it dying and queues its teardown on the
 *   ordered colo_wq with queue_rcu_work(): after a grace period the work stops
 *   the resend timer (del_timer_sync), sends node-gone (GFP_KERNEL) and drops
 *   the store's reference.  The last colo_node_put() frees the node with
 *   call_rcu() into colo_node_cache; module exit waits for those callbacks
 *   with rcu_barrier() before destroying the cache.
 */
#ifndef _COLO_CORE_H
#define _COLO_CORE_H

#include <linux/types.h>
#include <linux/idr.h>
#include <linux/in6.h>
#include <linux/list.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/refcount.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/u64_stats_sync.h>
#include <linux/workqueue.h>
#include <net/net_namespace.h>
#include <net/genetlink.h>

#include "colo-nl-gen.h"

struct colo_dp;
struct colo_sec;

#define COLO_INDEX_MIN		1
#define COLO_INDEX_MAX		65535
/* Per-netns node cap so userspace cannot exhaust kernel memory (-ENOSPC). */
#define COLO_MAX_NODES_PER_NET	1024

/* Counters the datapath bumps from softirq: per CPU. */
enum colo_pcpu_counter {
	COLO_PCPU_CHECKPOINT_REQUESTS,
	COLO_PCPU_REQUESTS_SUPPRESSED,
	COLO_PCPU_REQUESTS_RESENT,
	COLO_PCPU_REQUESTS_LOST,
	/* the primary datapath (colo_dp.c) */
	COLO_PCPU_DP_CAPTURED,
	COLO_PCPU_DP_RELEASED,
	COLO_PCPU_DP_SVM_FRAMES,
	COLO_PCPU_DP_MATCHED,
	COLO_PCPU_DP_MISMATCHES,
	COLO_PCPU_DP_UNCOMPARED,
	COLO_PCPU_DP_CONTROL_PASSED,
	COLO_PCPU_DP_DROPPED,
	COLO_PCPU_DP_FLUSHED,
	/* the secondary datapath (colo_sec.c) */
	COLO_PCPU_SEC_SVM_FRAMES,
	COLO_PCPU_SEC_FWD_FRAMES,
	COLO_PCPU_SEC_TRANSLATED_OUT,
	COLO_PCPU_SEC_TRANSLATED_IN,
	COLO_PCPU_SEC_HELD,
	COLO_PCPU_SEC_DROPPED,
	COLO_PCPU_NR
};

struct colo_pcpu_stats {
	u64_stats_t c[COLO_PCPU_NR];
	struct u64_stats_sync syncp;
};

struct colo_stats {
	u64 checkpoints;
	u64 checkpoint_requests;
	u64 requests_suppressed;
	u64 requests_resent;
	u64 requests_lost;
	u64 failovers;
	u64 resets;
	/* the primary datapath (colo_dp.c); the last three are levels, not counts */
	u64 dp_captured;
	u64 dp_released;
	u64 dp_svm_frames;
	u64 dp_matched;
	u64 dp_mismatches;
	u64 dp_uncompared;
	u64 dp_control_passed;
	u64 dp_dropped;
	u64 dp_flushed;
	u64 dp_held_packets;
	u64 dp_held_bytes;
	u64 dp_connections;
	/* the secondary datapath (colo_sec.c); sec_flows is a level */
	u64 sec_svm_frames;
	u64 sec_fwd_frames;
	u64 sec_translated_out;
	u64 sec_translated_in;
	u64 sec_held;
	u64 sec_dropped;
	u64 sec_flows;
};

/* The connection a checkpoint request is about, in host form. */
struct colo_tuple {
	u8 family;		/* 0 (absent), AF_INET or AF_INET6 */
	u8 proto;
	u8 has;			/* COLO_TUPLE_HAS_* */
	u8 n_vlans;		/* tags, outermost first */
	__be16 sport;
	__be16 dport;
	u16 vlans[COLO_TUPLE_MAX_VLANS];
	union {
		__be32 ip4;
		struct in6_addr ip6;
	} src, dst;
};

#define COLO_TUPLE_HAS_PROTO	BIT(0)
#define COLO_TUPLE_HAS_SPORT	BIT(1)
#define COLO_TUPLE_HAS_DPORT	BIT(2)
#define COLO_TUPLE_HAS_SRC	BIT(3)
#define COLO_TUPLE_HAS_DST	BIT(4)

/* A checkpoint request: what checkpoint-needed carries (and its resends repeat). */
struct colo_req {
	u8 reason;		/* enum colo_reason */
	bool has_tuple;
	bool has_offset;
	struct colo_tuple tuple;
	u64 offset;		/* the first difference (stream offset or FIFO slot) */
};

struct colo_node {
	/* Immutable once the node is published in the idr. */
	struct net *net;	/* not counted: netns exit waits for our teardown */
	u64 id;			/* never reused in the netns */
	u32 index;
	u32 owner;		/* netlink port id of the creating socket */
	u8 mode;		/* enum colo_mode */

	/* Store membership, protected by colo_net->lock. */
	struct list_head list;	/* colo_net->nodes */
	bool unlinked;		/* removed from the store (written under colo_net->lock) */
	u8 gone_reason;		/* set with unlinked */

	refcount_t ref;		/* one for the store + one per in-flight user */
	struct rcu_work teardown;
	struct rcu_head rcu;

	/* Mutable state, protected by lock. */
	spinlock_t lock;
	u8 state;		/* enum colo_state */
	bool dying;		/* unlinked: no new state changes, timer not re-armed */
	unsigned long pending_since;	/* jiffies */
	struct colo_req req;	/* the pending request (resent by timer) */
	struct timer_list resend;
	u64 checkpoints;
	u64 failovers;
	u64 resets;
	u64 pcpu_base[COLO_PCPU_NR];	/* per-CPU sums at the last reset */

	struct colo_pcpu_stats __percpu *pcpu;

	/* The primary datapath, if attached: RTNL for writers, RCU for readers (colo_dp.h). */
	struct colo_dp __rcu *dp;
	/* The secondary datapath, if attached: likewise (colo_sec.h). */
	struct colo_sec __rcu *sec;
};

struct colo_net {
	spinlock_t lock;	/* writers of everything below */
	struct idr idr;		/* index -> node; idr_find() under RCU for readers */
	struct list_head nodes;	/* all nodes of this netns, walked under lock */
	unsigned int count;	/* number of nodes, <= COLO_MAX_NODES_PER_NET */
	unsigned int gen;	/* bumped on every insert/remove: dump consistency */
	u64 next_id;		/* next node id; ids are never reused */
	bool closing;		/* netns exit or module unload: no new nodes */
	atomic_t teardowns;	/* unlinked nodes whose teardown has not run yet */
	struct list_head all;	/* colo_nets_list, under colo_nets_mutex */
};

/* A snapshot of a node, for messages. */
struct colo_node_info {
	u64 id;
	u32 index;
	u32 owner;
	u8 mode;
	u8 state;
	struct colo_stats stats;
};

/* colo_node.c */
extern unsigned int colo_resend_ms;
struct colo_net *colo_pernet(const struct net *net);
struct colo_node *colo_node_get(struct colo_net *cn, u32 index);
void colo_node_put(struct colo_node *node);
void colo_node_snapshot(struct colo_node *node, struct colo_node_info *ni);
void colo_node_count(struct colo_node *node, enum colo_pcpu_counter c);
void colo_node_add(struct colo_node *node, enum colo_pcpu_counter c, u64 n);
void colo_node_kill(struct colo_node *node, u8 gone_reason);
void colo_node_reset_counters(struct colo_node *node);
int colo_node_request_checkpoint(struct colo_node *node, const struct colo_req *req,
				 gfp_t gfp);
int colo_node_create(struct net *net, u32 index, u8 mode, u32 owner,
		     struct colo_node **out, struct netlink_ext_ack *extack);
int colo_node_destroy(struct net *net, u32 index, struct netlink_ext_ack *extack);
int colo_store_init(void);
void colo_store_exit(void);
void colo_store_unload(void);

/* colo_netlink.c */
int colo_event_checkpoint_needed(struct colo_node *node, const struct colo_req *req,
				 gfp_t gfp, struct sk_buff **out);
void colo_event_send(struct net *net, struct sk_buff *skb, gfp_t gfp);
void colo_event_node_gone(struct colo_node *node, u8 gone_reason, gfp_t gfp);
void colo_event_lost(struct net *net);
bool colo_event_has_listeners(struct net *net);
int colo_netlink_init(void);
void colo_netlink_exit(void);

#endif /* _COLO_CORE_H */
