// SPDX-License-Identifier: GPL-2.0
/*
 * nf_colo: the per-network-namespace node store, node lifetime, counters and
 * the checkpoint request path.
 *
 * Each netns has a struct colo_net (net_generic storage) holding an IDR that
 * maps the node index (1..65535) to the node, a list of all its nodes, and the
 * spinlock serialising writers.  Lookups are lockless (RCU + refcount).
 *
 * A node is destroyed, and node-gone emitted in its netns, when:
 *   - userspace sends proxy-destroy                    (reason destroyed)
 *   - its owner socket is released (NETLINK_URELEASE)  (reason owner-released)
 *   - its netns exits                                  (reason netns-exit)
 *   - the module is unloaded                           (reason module-unload)
 * All four paths unlink under colo_net->lock (any context) and queue the
 * node's teardown with queue_rcu_work() on the ordered colo_wq; the teardown
 * runs in process context after a grace period (see colo_core.h).
 *
 * Owner identity is (netns, port id).  netlink_release() frees the port id
 * before it runs the URELEASE notifier, so a socket opened in that window can
 * get the same port id, create a node, and see it destroyed by the old
 * socket's notifier.  Userspace must not reuse a port id it just closed (the
 * Python client binds each socket to a fresh random port id).
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/netlink.h>
#include <linux/notifier.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <net/netns/generic.h>

#include "colo_core.h"
#include "colo_dp.h"
#include "colo_sec.h"
#include "colo_trace.h"

unsigned int colo_resend_ms __read_mostly = 1000;
module_param_named(resend_ms, colo_resend_ms, uint, 0644);
MODULE_PARM_DESC(resend_ms,
		 "Resend checkpoint-needed every this many ms while a node stays checkpoint-pending (min 10)");

static unsigned int colo_net_id __read_mostly;
static struct kmem_cache *colo_node_cache __read_mostly;
static struct workqueue_struct *colo_wq __read_mostly;

/*
 * All live colo_net structures, so module unload can destroy every node while
 * the Generic Netlink family is still registered (node-gone must be sent).
 * Protected by colo_nets_mutex, which also protects colo_unloading.
 */
static LIST_HEAD(colo_nets_list);
static DEFINE_MUTEX(colo_nets_mutex);
static bool colo_unloading;

struct colo_net *colo_pernet(const struct net *net)
{
	return net_generic(net, colo_net_id);
}

static unsigned long colo_resend_delay(void)
{
	return msecs_to_jiffies(max(READ_ONCE(colo_resend_ms), 10U));
}

/* Take a reference on the live node @index of @cn, or return NULL. */
struct colo_node *colo_node_get(struct colo_net *cn, u32 index)
{
	struct colo_node *node;

	rcu_read_lock();
	node = idr_find(&cn->idr, index);
	/* An unlinked node is on its way out: treat it as absent. */
	if (node && (READ_ONCE(node->unlinked) || !refcount_inc_not_zero(&node->ref)))
		node = NULL;
	rcu_read_unlock();
	return node;
}

static void colo_node_free_rcu(struct rcu_head *head)
{
	struct colo_node *node = container_of(head, struct colo_node, rcu);

	free_percpu(node->pcpu);
	kmem_cache_free(colo_node_cache, node);
}

void colo_node_put(struct colo_node *node)
{
	/* Lockless readers may still dereference it until a grace period ends. */
	if (refcount_dec_and_test(&node->ref))
		call_rcu(&node->rcu, colo_node_free_rcu);
}

/* Add to a per-CPU counter; any context but hard IRQ, with or without node->lock. */
void colo_node_add(struct colo_node *node, enum colo_pcpu_counter c, u64 n)
{
	struct colo_pcpu_stats *s;

	local_bh_disable();
	s = this_cpu_ptr(node->pcpu);
	u64_stats_update_begin(&s->syncp);
	u64_stats_add(&s->c[c], n);
	u64_stats_update_end(&s->syncp);
	local_bh_enable();
}

void colo_node_count(struct colo_node *node, enum colo_pcpu_counter c)
{
	colo_node_add(node, c, 1);
}

static void colo_pcpu_sum(struct colo_node *node, u64 *sum)
{
	int cpu, i;

	memset(sum, 0, sizeof(u64) * COLO_PCPU_NR);
	for_each_possible_cpu(cpu) {
		const struct colo_pcpu_stats *s = per_cpu_ptr(node->pcpu, cpu);
		u64 v[COLO_PCPU_NR];
		unsigned int start;

		do {
			start = u64_stats_fetch_begin(&s->syncp);
			for (i = 0; i < COLO_PCPU_NR; i++)
				v[i] = u64_stats_read(&s->c[i]);
		} while (u64_stats_fetch_retry(&s->syncp, start));
		for (i = 0; i < COLO_PCPU_NR; i++)
			sum[i] += v[i];
	}
}

void colo_node_snapshot(struct colo_node *node, struct colo_node_info *ni)
{
	u64 sum[COLO_PCPU_NR];
	int i;

	ni->id = node->id;
	ni->index = node->index;
	ni->owner = node->owner;
	ni->mode = node->mode;
	spin_lock_bh(&node->lock);
	ni->state = node->state;
	ni->stats.checkpoints = node->checkpoints;
	ni->stats.failovers = node->failovers;
	ni->stats.resets = node->resets;
	colo_pcpu_sum(node, sum);
	for (i = 0; i < COLO_PCPU_NR; i++)
		sum[i] -= node->pcpu_base[i];
	spin_unlock_bh(&node->lock);
	ni->stats.checkpoint_requests = sum[COLO_PCPU_CHECKPOINT_REQUESTS];
	ni->stats.requests_suppressed = sum[COLO_PCPU_REQUESTS_SUPPRESSED];
	ni->stats.requests_resent = sum[COLO_PCPU_REQUESTS_RESENT];
	ni->stats.requests_lost = sum[COLO_PCPU_REQUESTS_LOST];
	ni->stats.dp_captured = sum[COLO_PCPU_DP_CAPTURED];
	ni->stats.dp_released = sum[COLO_PCPU_DP_RELEASED];
	ni->stats.dp_svm_frames = sum[COLO_PCPU_DP_SVM_FRAMES];
	ni->stats.dp_matched = sum[COLO_PCPU_DP_MATCHED];
	ni->stats.dp_mismatches = sum[COLO_PCPU_DP_MISMATCHES];
	ni->stats.dp_uncompared = sum[COLO_PCPU_DP_UNCOMPARED];
	ni->stats.dp_control_passed = sum[COLO_PCPU_DP_CONTROL_PASSED];
	ni->stats.dp_dropped = sum[COLO_PCPU_DP_DROPPED];
	ni->stats.dp_flushed = sum[COLO_PCPU_DP_FLUSHED];
	ni->stats.sec_svm_frames = sum[COLO_PCPU_SEC_SVM_FRAMES];
	ni->stats.sec_fwd_frames = sum[COLO_PCPU_SEC_FWD_FRAMES];
	ni->stats.sec_translated_out = sum[COLO_PCPU_SEC_TRANSLATED_OUT];
	ni->stats.sec_translated_in = sum[COLO_PCPU_SEC_TRANSLATED_IN];
	ni->stats.sec_held = sum[COLO_PCPU_SEC_HELD];
	ni->stats.sec_dropped = sum[COLO_PCPU_SEC_DROPPED];
	colo_dp_fill_stats(node, &ni->stats);
	colo_sec_fill_stats(node, &ni->stats);
}

/* proxy-reset: zero the counters (per-CPU ones by moving their base), clear pending. */
void colo_node_reset_counters(struct colo_node *node)
{
	spin_lock_bh(&node->lock);
	colo_pcpu_sum(node, node->pcpu_base);
	node->checkpoints = 0;
	node->failovers = 0;
	node->resets++;
	if (node->state == COLO_STATE_CHECKPOINT_PENDING)
		node->state = COLO_STATE_ACTIVE;
	spin_unlock_bh(&node->lock);
}

/*
 * The resend timer: while the node stays checkpoint-pending, send
 * checkpoint-needed again (a listener that overran, or subscribed after the
 * request, learns about it this way).  Softirq.
 */
static void colo_node_resend(struct timer_list *t)
{
	struct colo_node *node = from_timer(node, t, resend);
	struct colo_req req;
	struct sk_buff *skb;

	spin_lock(&node->lock);
	if (node->dying || node->state != COLO_STATE_CHECKPOINT_PENDING) {
		spin_unlock(&node->lock);
		return;
	}
	req = node->req;
	mod_timer(&node->resend, jiffies + colo_resend_delay());
	spin_unlock(&node->lock);

	if (!colo_event_has_listeners(node->net))
		return;
	if (colo_event_checkpoint_needed(node, &req, GFP_ATOMIC, &skb)) {
		colo_event_lost(node->net);	/* still pending: retried next time */
		return;
	}
	colo_node_count(node, COLO_PCPU_REQUESTS_RESENT);
	colo_event_send(node->net, skb, GFP_ATOMIC);
}

/*
 * The one checkpoint request path (request-checkpoint now, the datapath
 * later), callable from any context but hard IRQ with a matching @gfp.
 *
 * The node becomes checkpoint-pending only once the event is built (or when
 * nobody listens: then the resend timer delivers it to whoever subscribes).
 * If the event cannot be built, listeners get ENOBUFS, requests-lost counts
 * it, the node stays active and the error is returned.
 */
int colo_node_request_checkpoint(struct colo_node *node, const struct colo_req *req,
				 gfp_t gfp)
{
	struct sk_buff *skb = NULL;
	bool sent = false;
	int err = 0;

	spin_lock_bh(&node->lock);
	if (node->dying)
		err = -ENOENT;
	else if (node->state == COLO_STATE_FAILED_OVER)
		err = -EINVAL;
	else if (node->state == COLO_STATE_CHECKPOINT_PENDING)
		err = -EALREADY;
	spin_unlock_bh(&node->lock);
	if (err == -EALREADY) {
		colo_node_count(node, COLO_PCPU_REQUESTS_SUPPRESSED);
		trace_nf_colo_checkpoint_request(node->index, req->reason,
						 COLO_TRACE_REQ_SUPPRESSED);
		return 0;
	}
	if (err)
		goto refused;

	if (colo_event_has_listeners(node->net)) {
		err = colo_event_checkpoint_needed(node, req, gfp, &skb);
		if (err) {
			colo_event_lost(node->net);
			colo_node_count(node, COLO_PCPU_REQUESTS_LOST);
			trace_nf_colo_checkpoint_request(node->index, req->reason,
							 COLO_TRACE_REQ_LOST);
			return err;
		}
	}

	spin_lock_bh(&node->lock);
	if (node->dying) {
		err = -ENOENT;
	} else if (node->state == COLO_STATE_FAILED_OVER) {
		err = -EINVAL;
	} else if (node->state == COLO_STATE_CHECKPOINT_PENDING) {
		err = -EALREADY;	/* lost a race with another request */
	} else {
		node->state = COLO_STATE_CHECKPOINT_PENDING;
		node->req = *req;
		node->pending_since = jiffies;
		mod_timer(&node->resend, node->pending_since + colo_resend_delay());
		sent = true;
	}
	spin_unlock_bh(&node->lock);

	if (!sent) {
		kfree_skb(skb);
		if (err != -EALREADY)
			goto refused;
		colo_node_count(node, COLO_PCPU_REQUESTS_SUPPRESSED);
		trace_nf_colo_checkpoint_request(node->index, req->reason,
						 COLO_TRACE_REQ_SUPPRESSED);
		return 0;
	}
	colo_node_count(node, COLO_PCPU_CHECKPOINT_REQUESTS);
	trace_nf_colo_checkpoint_request(node->index, req->reason, COLO_TRACE_REQ_SENT);
	/* After unlock: do-checkpoint may already have cleared pending (harmless). */
	if (skb)
		colo_event_send(node->net, skb, gfp);
	return 0;

refused:
	trace_nf_colo_checkpoint_request(node->index, req->reason, COLO_TRACE_REQ_REFUSED);
	return err;
}

/* Process context, after a grace period: stop the timer, node-gone, drop the store's ref. */
static void colo_node_teardown(struct work_struct *work)
{
	struct colo_node *node = container_of(to_rcu_work(work), struct colo_node, teardown);
	struct colo_net *cn = colo_pernet(node->net);

	/* The datapath first: held PVM frames go out, node-gone counts them. */
	colo_dp_node_gone(node);
	colo_sec_node_gone(node);
	del_timer_sync(&node->resend);	/* `dying` keeps it from being re-armed */
	colo_event_node_gone(node, node->gone_reason, GFP_KERNEL);
	colo_node_put(node);
	atomic_dec(&cn->teardowns);	/* last use of the netns */
}

/*
 * Remove @node from the store, mark it dying and queue its teardown, which
 * takes over the store's reference.  Caller holds cn->lock (BH disabled).
 * Returns false if the node was already unlinked by another path.
 */
static bool colo_node_unlink_locked(struct colo_net *cn, struct colo_node *node,
				    u8 reason)
{
	lockdep_assert_held(&cn->lock);
	if (node->unlinked)
		return false;
	WRITE_ONCE(node->unlinked, true);
	node->gone_reason = reason;
	spin_lock(&node->lock);
	node->dying = true;
	spin_unlock(&node->lock);
	idr_remove(&cn->idr, node->index);
	list_del_init(&node->list);
	cn->count--;
	cn->gen++;
	atomic_inc(&cn->teardowns);
	INIT_RCU_WORK(&node->teardown, colo_node_teardown);
	queue_rcu_work(colo_wq, &node->teardown);
	return true;
}

/* Destroy @node (the datapath lost a device).  Any context; no-op if already unlinked. */
void colo_node_kill(struct colo_node *node, u8 gone_reason)
{
	struct colo_net *cn = colo_pernet(node->net);

	spin_lock_bh(&cn->lock);
	colo_node_unlink_locked(cn, node, gone_reason);
	spin_unlock_bh(&cn->lock);
}

/* Wait until every teardown queued for @cn (or all, @cn NULL) has run.  Sleeps. */
static void colo_wait_teardowns(struct colo_net *cn)
{
	if (cn && !atomic_read(&cn->teardowns))
		return;
	rcu_barrier();			/* queue_rcu_work's callbacks have queued the works */
	flush_workqueue(colo_wq);
}

int colo_node_create(struct net *net, u32 index, u8 mode, u32 owner,
		     struct colo_node **out, struct netlink_ext_ack *extack)
{
	struct colo_net *cn = colo_pernet(net);
	struct colo_node *node;
	int cpu, id = -ENOSPC, err = 0;

	node = kmem_cache_zalloc(colo_node_cache, GFP_KERNEL_ACCOUNT);
	if (!node)
		return -ENOMEM;
	node->pcpu = alloc_percpu_gfp(struct colo_pcpu_stats, GFP_KERNEL_ACCOUNT);
	if (!node->pcpu) {
		kmem_cache_free(colo_node_cache, node);
		return -ENOMEM;
	}
	for_each_possible_cpu(cpu)
		u64_stats_init(&per_cpu_ptr(node->pcpu, cpu)->syncp);
	node->net = net;
	node->owner = owner;
	node->mode = mode;
	node->state = COLO_STATE_ACTIVE;
	INIT_LIST_HEAD(&node->list);
	spin_lock_init(&node->lock);
	timer_setup(&node->resend, colo_node_resend, 0);
	refcount_set(&node->ref, 2);	/* the store + the caller */

	idr_preload(GFP_KERNEL);
	spin_lock_bh(&cn->lock);
	if (cn->closing) {
		err = -ESHUTDOWN;
		NL_SET_ERR_MSG(extack, "network namespace or module is going away");
	} else if (cn->count >= COLO_MAX_NODES_PER_NET) {
		err = -ENOSPC;
		NL_SET_ERR_MSG(extack, "too many nodes in this network namespace");
	} else if (index) {
		/* Reserve the id with a NULL entry, publish the node below. */
		id = idr_alloc(&cn->idr, NULL, index, index + 1, GFP_NOWAIT);
		if (id == -ENOSPC) {
			err = -EEXIST;
			NL_SET_ERR_MSG(extack, "a node with this index already exists");
		} else if (id < 0) {
			err = id;
		}
	} else {
		id = idr_alloc_cyclic(&cn->idr, NULL, COLO_INDEX_MIN, COLO_INDEX_MAX + 1,
				      GFP_NOWAIT);
		if (id == -ENOSPC)
			NL_SET_ERR_MSG(extack, "no free node index");
		if (id < 0)
			err = id;
	}
	if (!err) {
		node->index = id;
		node->id = cn->next_id++;
		/* Fully initialised: make it visible to lockless readers. */
		idr_replace(&cn->idr, node, id);
		list_add_tail(&node->list, &cn->nodes);
		cn->count++;
		cn->gen++;
	}
	spin_unlock_bh(&cn->lock);
	idr_preload_end();

	if (err) {
		free_percpu(node->pcpu);
		kmem_cache_free(colo_node_cache, node);
		return err;
	}
	*out = node;
	return 0;
}

int colo_node_destroy(struct net *net, u32 index, struct netlink_ext_ack *extack)
{
	struct colo_net *cn = colo_pernet(net);
	struct colo_node *node;
	bool done = false;

	spin_lock_bh(&cn->lock);
	node = idr_find(&cn->idr, index);
	if (node)
		done = colo_node_unlink_locked(cn, node, COLO_GONE_REASON_DESTROYED);
	spin_unlock_bh(&cn->lock);

	if (!done) {
		NL_SET_ERR_MSG(extack, "no such node in this network namespace");
		return -ENOENT;
	}
	return 0;
}

/* Destroy every node of @cn and refuse new ones. */
static void colo_net_kill_all(struct colo_net *cn, u8 reason)
{
	struct colo_node *node, *tmp;

	spin_lock_bh(&cn->lock);
	cn->closing = true;
	list_for_each_entry_safe(node, tmp, &cn->nodes, list)
		colo_node_unlink_locked(cn, node, reason);
	spin_unlock_bh(&cn->lock);
}

/*
 * NETLINK_URELEASE: a netlink socket was released.  Destroy the nodes it owns
 * (a node's owner is a NETLINK_GENERIC port id in the node's netns).  The
 * chain is a blocking one (6.1 and 6.12); node-gone is sent by the teardown
 * work with GFP_KERNEL, and listeners get ENOBUFS if that fails.
 */
static int colo_netlink_event(struct notifier_block *nb, unsigned long event,
			      void *ptr)
{
	struct netlink_notify *n = ptr;
	struct colo_node *node, *tmp;
	struct colo_net *cn;

	if (event != NETLINK_URELEASE || n->protocol != NETLINK_GENERIC || !n->portid)
		return NOTIFY_DONE;

	/* The socket still holds its netns, so the pernet data is alive. */
	cn = colo_pernet(n->net);
	if (!READ_ONCE(cn->count))
		return NOTIFY_DONE;

	spin_lock_bh(&cn->lock);
	list_for_each_entry_safe(node, tmp, &cn->nodes, list)
		if (node->owner == n->portid)
			colo_node_unlink_locked(cn, node, COLO_GONE_REASON_OWNER_RELEASED);
	spin_unlock_bh(&cn->lock);
	return NOTIFY_DONE;
}

static struct notifier_block colo_netlink_notifier = {
	.notifier_call = colo_netlink_event,
};

static int __net_init colo_net_init(struct net *net)
{
	struct colo_net *cn = colo_pernet(net);

	spin_lock_init(&cn->lock);
	idr_init(&cn->idr);
	INIT_LIST_HEAD(&cn->nodes);
	cn->count = 0;
	cn->gen = 1;
	cn->next_id = 1;
	atomic_set(&cn->teardowns, 0);

	mutex_lock(&colo_nets_mutex);
	cn->closing = colo_unloading;
	list_add_tail(&cn->all, &colo_nets_list);
	mutex_unlock(&colo_nets_mutex);
	return 0;
}

static void __net_exit colo_net_exit(struct net *net)
{
	struct colo_net *cn = colo_pernet(net);

	mutex_lock(&colo_nets_mutex);
	list_del(&cn->all);
	mutex_unlock(&colo_nets_mutex);

	/*
	 * Normally empty: every userspace socket of the netns (and so every
	 * owner) is gone before the netns can exit.  At module unload the nodes
	 * were already destroyed by colo_store_unload().  Teardowns still queued
	 * (an owner released just before) use the netns: wait for them.
	 */
	colo_net_kill_all(cn, COLO_GONE_REASON_NETNS_EXIT);
	colo_wait_teardowns(cn);
	idr_destroy(&cn->idr);
}

static struct pernet_operations colo_net_ops = {
	.init = colo_net_init,
	.exit = colo_net_exit,
	.id   = &colo_net_id,
	.size = sizeof(struct colo_net),
};

int colo_store_init(void)
{
	int err = -ENOMEM;

	colo_node_cache = KMEM_CACHE(colo_node, 0);
	if (!colo_node_cache)
		return err;
	colo_wq = alloc_ordered_workqueue("nf_colo", 0);
	if (!colo_wq)
		goto err_cache;
	err = register_pernet_subsys(&colo_net_ops);
	if (err)
		goto err_wq;
	err = netlink_register_notifier(&colo_netlink_notifier);
	if (err)
		goto err_pernet;
	return 0;

err_pernet:
	unregister_pernet_subsys(&colo_net_ops);
err_wq:
	destroy_workqueue(colo_wq);
err_cache:
	kmem_cache_destroy(colo_node_cache);
	return err;
}

/*
 * First step of module unload, while the family is still registered: stop
 * reacting to socket releases, refuse new nodes, destroy all existing ones and
 * wait until their node-gone (reason module-unload) is sent.
 */
void colo_store_unload(void)
{
	struct colo_net *cn;

	netlink_unregister_notifier(&colo_netlink_notifier);

	mutex_lock(&colo_nets_mutex);
	colo_unloading = true;
	list_for_each_entry(cn, &colo_nets_list, all)
		colo_net_kill_all(cn, COLO_GONE_REASON_MODULE_UNLOAD);
	mutex_unlock(&colo_nets_mutex);
	colo_wait_teardowns(NULL);
}

/* Last step of module unload, after the family is unregistered. */
void colo_store_exit(void)
{
	unregister_pernet_subsys(&colo_net_ops);
	/* Nodes are freed by call_rcu() callbacks from colo_node_cache. */
	rcu_barrier();
	destroy_workqueue(colo_wq);
	kmem_cache_destroy(colo_node_cache);
}
