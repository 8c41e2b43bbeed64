/* SPDX-License-Identifier: GPL-2.0 */
/*
 * nf_colo: the primary's in-kernel datapath (PMYCOLO), docs/architecture.md.
 *
 * A primary node attached with tap-ifindex and fwd-ifindex owns a struct
 * colo_dp: two nf netdev ingress hooks (the PVM's tap, the forward device),
 * the compare core (cmp.h) with its connection table, a release queue
 * drained by a tasklet, and a timeout timer.
 *
 * Locking and references (see also colo_core.h):
 *
 *   RTNL            protects colo_dp_list, every node's `dp` pointer (writers)
 *                   and attach/detach, which therefore run exactly once per dp.
 *                   Taken by proxy-init (attach), the node teardown work and the
 *                   netdevice notifier (detach).  Nested outside everything else.
 *   colo_dp->lock   spinlock, always BH-safe (the hooks, the timer and the
 *                   tasklet run in softirq): the compare core and its
 *                   connection table (every lookup, insert and removal of the
 *                   rhashtable dp->conns, the LRU and retired lists, the TCP
 *                   streams' buffers), the release queue (rxq), `stopped`.  Never
 *                   held while re-injecting, freeing skbs or requesting a
 *                   checkpoint.  Nested inside nothing of colo_core.h.
 *   node->dp        RCU pointer: readers (do-checkpoint, get/dump) use it under
 *                   rcu_read_lock(); detach clears it and waits synchronize_net()
 *                   before freeing the dp.  The hooks' priv is the dp; it is
 *                   freed only after the hooks are unregistered and a grace period
 *                   passed (nf_unregister_net_hook() does not wait for one).
 *   dp->node        not counted: the dp is detached (under RTNL) before the node's
 *                   teardown drops the store's reference.
 *   dp->tap, dp->fwd  netdev_hold() with a tracker from attach to detach;
 *                   NETDEV_DOWN and NETDEV_UNREGISTER of either detach the dp and
 *                   destroy the node (gone-reason device-gone), so the device is
 *                   never waited for.
 *   connections     struct colo_dp_conn, owned by dp->conns (rhashtable; its
 *                   bucket locks are taken inside dp->lock, its rehash worker
 *                   runs on its own and is stopped by rhashtable_destroy() at
 *                   detach).  Freed at once when removed: no lookup runs outside
 *                   dp->lock.
 *   held skbs       owned by the core's held records (tag = the skb) from
 *                   NF_STOLEN until a decision names them: release (rxq, then the
 *                   tasklet re-injects), drop (freed after unlock), or the flush at
 *                   detach (released or dropped by the owner-loss policy).
 */
#ifndef _COLO_DP_H
#define _COLO_DP_H

#include <linux/types.h>
#include <net/netlink.h>

struct colo_node;
struct colo_stats;

struct colo_dp_cfg {
	u32 tap_ifindex;
	u32 fwd_ifindex;
	u32 max_held_packets;	/* per connection and side, soft (hard: twice) */
	u32 max_held_bytes;	/* per node, skb truesize, soft (hard: twice) */
	u32 hold_timeout_ms;
	u32 max_connections;	/* per node, soft (hard: twice) */
	u8 owner_loss;		/* enum colo_owner_loss */
};

#define COLO_DP_DEF_MAX_HELD_PACKETS	256
#define COLO_DP_DEF_MAX_HELD_BYTES	(16U << 20)
#define COLO_DP_DEF_HOLD_TIMEOUT_MS	3000
#define COLO_DP_DEF_MAX_CONNECTIONS	4096

int colo_dp_attach(struct colo_node *node, const struct colo_dp_cfg *cfg,
		   struct netlink_ext_ack *extack);
void colo_dp_node_gone(struct colo_node *node);
void colo_dp_checkpoint(struct colo_node *node);
void colo_dp_fill_stats(struct colo_node *node, struct colo_stats *st);
int colo_dp_init(void);
void colo_dp_exit(void);

#endif /* _COLO_DP_H */
