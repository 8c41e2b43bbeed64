/* SPDX-License-Identifier: GPL-2.0 */
/*
 * nf_colo: the secondary's in-kernel datapath (SECCOLO), docs/secondary.md.
 *
 * A secondary node attached with tap-ifindex (the SVM's tap) and fwd-ifindex
 * (the forward link to the primary host) owns a struct colo_sec: three nf
 * netdev hooks and a table of the TCP connections opened since the last
 * checkpoint, each with its sequence translation (xlate.h).
 *
 *   tap ingress  (the SVM's output): seq += offset; then, until failover, the
 *                frame is sent out of the forward device and nothing else: it
 *                never enters the host's bridge or IP stack.  After failover it
 *                goes on (NF_ACCEPT), still translated for the kept connections.
 *   fwd ingress  (the primary's mirrored inbound frames): sent out of the tap to
 *                the SVM; dropped after failover.
 *   tap egress   (every frame to the SVM, from the forward link or, after
 *                failover, the host's bridge): ack and SACK edges -= offset.
 *
 * Locking and references (see also colo_core.h):
 *
 *   RTNL            protects colo_sec_list, every node's `sec` pointer (writers)
 *                   and attach/detach, which therefore run exactly once per sec.
 *                   Taken by proxy-init (attach), the node teardown work, the
 *                   netdevice notifier (detach), do-checkpoint and do-failover.
 *   colo_sec->lock  spinlock, always BH-safe (the hooks run in softirq or with BH
 *                   disabled): the flow table, the flows' hold queues, `stopped`
 *                   and `failed_over`.  Never held while transmitting or freeing
 *                   skbs.  Nested inside nothing of colo_core.h.
 *   node->sec       RCU pointer: readers (get/dump stats) use it under
 *                   rcu_read_lock(); detach clears it and waits synchronize_net()
 *                   before freeing.  The hooks' priv is the sec; it is freed only
 *                   after the hooks are unregistered and a grace period passed.
 *   sec->node       not counted: the sec is detached (under RTNL) before the node's
 *                   teardown drops the store's reference.
 *   sec->tap, sec->fwd  netdev_hold() with a tracker from attach to detach;
 *                   NETDEV_DOWN and NETDEV_UNREGISTER of either detach the sec and
 *                   destroy the node (gone-reason device-gone).
 *   held skbs       segments to the SVM that arrived before the SVM's SYN or
 *                   SYN-ACK (xlate.h, COLO_XLATE_HOLD): owned by their flow's
 *                   queue until that SYN is seen (sent again), or freed with the
 *                   flow (checkpoint, detach).
 */
#ifndef _COLO_SEC_H
#define _COLO_SEC_H

#include <linux/types.h>
#include <net/netlink.h>

struct colo_node;
struct colo_stats;

struct colo_sec_cfg {
	u32 tap_ifindex;
	u32 fwd_ifindex;
	u32 max_connections;	/* translated connections per node */
};

#define COLO_SEC_DEF_MAX_CONNECTIONS	4096

int colo_sec_attach(struct colo_node *node, const struct colo_sec_cfg *cfg,
		    struct netlink_ext_ack *extack);
void colo_sec_node_gone(struct colo_node *node);
void colo_sec_checkpoint(struct colo_node *node);
void colo_sec_failover(struct colo_node *node);
void colo_sec_fill_stats(struct colo_node *node, struct colo_stats *st);
int colo_sec_init(void);
void colo_sec_exit(void);

#endif /* _COLO_SEC_H */
