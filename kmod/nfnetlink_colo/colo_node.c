// SPDX-License-Identifier: GPL-2.0
/*
 * nf_colo: the per-network-namespace node store and node lifetime.
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
 * All four paths unlink under colo_net->lock and drop the store reference;
 * memory is freed with kfree_rcu() by the last reference holder.  None of
 * them sleeps or waits for an RCU grace period (the 2015 module hung QEMU's
 * exit by calling synchronize_rcu() from the netlink notifier).
 */
#include <linux/module.h>
#include <linux/netlink.h>
#include <linux/notifier.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <net/netns/generic.h>

#include "colo_core.h"

static unsigned int colo_net_id __read_mostly;

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

void colo_node_put(struct colo_node *node)
{
	/* Lockless readers may still dereference it until a grace period ends. */
	if (refcount_dec_and_test(&node->ref))
		kfree_rcu(node, rcu);
}

void colo_node_snapshot(struct colo_node *node, struct colo_node_info *ni)
{
	ni->index = node->index;
	ni->owner = node->owner;
	ni->mode = node->mode;
	spin_lock(&node->lock);
	ni->state = node->state;
	ni->stats = node->stats;
	spin_unlock(&node->lock);
}

/*
 * Remove @node from the store and move it to @kill.  The store's reference is
 * handed over to the kill list.  Caller holds cn->lock; returns false if the
 * node was already unlinked by another path.
 */
static bool colo_node_unlink_locked(struct colo_net *cn, struct colo_node *node,
				    struct list_head *kill)
{
	lockdep_assert_held(&cn->lock);
	if (node->unlinked)
		return false;
	WRITE_ONCE(node->unlinked, true);
	idr_remove(&cn->idr, node->index);
	list_move_tail(&node->list, kill);
	cn->count--;
	cn->gen++;
	return true;
}

/* Emit node-gone for every node on @kill and drop the store's references. */
static void colo_kill_list(struct list_head *kill, u8 reason, gfp_t gfp)
{
	struct colo_node *node, *tmp;

	list_for_each_entry_safe(node, tmp, kill, list) {
		list_del_init(&node->list);
		colo_event_node_gone(node, reason, gfp);
		colo_node_put(node);
	}
}

int colo_node_create(struct net *net, u32 index, u8 mode, u32 owner,
		     struct colo_node **out, struct netlink_ext_ack *extack)
{
	struct colo_net *cn = colo_pernet(net);
	struct colo_node *node;
	int id = -ENOSPC, err = 0;

	node = kzalloc(sizeof(*node), GFP_KERNEL_ACCOUNT);
	if (!node)
		return -ENOMEM;
	node->net = net;
	node->owner = owner;
	node->mode = mode;
	node->state = COLO_STATE_ACTIVE;
	INIT_LIST_HEAD(&node->list);
	spin_lock_init(&node->lock);
	refcount_set(&node->ref, 2);	/* the store + the caller */

	idr_preload(GFP_KERNEL);
	spin_lock(&cn->lock);
	if (cn->closing) {
		err = -ESHUTDOWN;
		NL_SET_ERR_MSG(extack, "colo: network namespace or module is going away");
	} else if (cn->count >= COLO_MAX_NODES_PER_NET) {
		err = -ENOSPC;
		NL_SET_ERR_MSG(extack, "colo: too many nodes in this network namespace");
	} else if (index) {
		/* Reserve the id with a NULL entry, publish the node below. */
		id = idr_alloc(&cn->idr, NULL, index, index + 1, GFP_NOWAIT);
		if (id == -ENOSPC) {
			err = -EEXIST;
			NL_SET_ERR_MSG(extack, "colo: a node with this index already exists");
		} else if (id < 0) {
			err = id;
		}
	} else {
		id = idr_alloc_cyclic(&cn->idr, NULL, COLO_INDEX_MIN, COLO_INDEX_MAX + 1,
				      GFP_NOWAIT);
		if (id == -ENOSPC)
			NL_SET_ERR_MSG(extack, "colo: no free node index");
		if (id < 0)
			err = id;
	}
	if (!err) {
		node->index = id;
		/* Fully initialised: make it visible to lockless readers. */
		idr_replace(&cn->idr, node, id);
		list_add_tail(&node->list, &cn->nodes);
		cn->count++;
		cn->gen++;
	}
	spin_unlock(&cn->lock);
	idr_preload_end();

	if (err) {
		kfree(node);
		return err;
	}
	*out = node;
	return 0;
}

int colo_node_destroy(struct net *net, u32 index, struct netlink_ext_ack *extack)
{
	struct colo_net *cn = colo_pernet(net);
	struct colo_node *node;
	LIST_HEAD(kill);

	spin_lock(&cn->lock);
	node = idr_find(&cn->idr, index);
	if (node)
		colo_node_unlink_locked(cn, node, &kill);
	spin_unlock(&cn->lock);

	if (list_empty(&kill)) {
		NL_SET_ERR_MSG(extack, "colo: no such node in this network namespace");
		return -ENOENT;
	}
	colo_kill_list(&kill, COLO_GONE_REASON_DESTROYED, GFP_KERNEL);
	return 0;
}

/* Destroy every node of @cn and refuse new ones.  Process context. */
static void colo_net_kill_all(struct colo_net *cn, u8 reason)
{
	struct colo_node *node, *tmp;
	LIST_HEAD(kill);

	spin_lock(&cn->lock);
	cn->closing = true;
	list_for_each_entry_safe(node, tmp, &cn->nodes, list)
		colo_node_unlink_locked(cn, node, &kill);
	spin_unlock(&cn->lock);
	colo_kill_list(&kill, reason, GFP_KERNEL);
}

/*
 * NETLINK_URELEASE: a netlink socket was released.  Destroy the nodes it owns
 * (a node's owner is a NETLINK_GENERIC port id in the node's netns).
 *
 * Must not sleep: the notifier chain is a blocking one in 6.1 and 6.12 but was
 * atomic in older kernels, and netlink_release() gives no guarantee.  Hence
 * only spinlocks and GFP_ATOMIC here.
 */
static int colo_netlink_event(struct notifier_block *nb, unsigned long event,
			      void *ptr)
{
	struct netlink_notify *n = ptr;
	struct colo_node *node, *tmp;
	struct colo_net *cn;
	LIST_HEAD(kill);

	if (event != NETLINK_URELEASE || n->protocol != NETLINK_GENERIC || !n->portid)
		return NOTIFY_DONE;

	/* The socket still holds its netns, so the pernet data is alive. */
	cn = colo_pernet(n->net);
	if (!READ_ONCE(cn->count))
		return NOTIFY_DONE;

	spin_lock(&cn->lock);
	list_for_each_entry_safe(node, tmp, &cn->nodes, list)
		if (node->owner == n->portid)
			colo_node_unlink_locked(cn, node, &kill);
	spin_unlock(&cn->lock);

	colo_kill_list(&kill, COLO_GONE_REASON_OWNER_RELEASED, GFP_ATOMIC);
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
	 * were already destroyed by colo_store_unload().
	 */
	colo_net_kill_all(cn, COLO_GONE_REASON_NETNS_EXIT);
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
	int err;

	err = register_pernet_subsys(&colo_net_ops);
	if (err)
		return err;
	err = netlink_register_notifier(&colo_netlink_notifier);
	if (err)
		unregister_pernet_subsys(&colo_net_ops);
	return err;
}

/*
 * First step of module unload, while the family is still registered: stop
 * reacting to socket releases, refuse new nodes and destroy all existing ones
 * (node-gone, reason module-unload, in each netns).
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
}

/* Last step of module unload, after the family is unregistered. */
void colo_store_exit(void)
{
	unregister_pernet_subsys(&colo_net_ops);
	/*
	 * Nodes are freed with kfree_rcu(), which runs no module code; wait for
	 * pending RCU callbacks anyway so that stays true if call_rcu() is used.
	 */
	rcu_barrier();
}
