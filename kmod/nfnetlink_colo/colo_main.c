// SPDX-License-Identifier: GPL-2.0
/*
 * nf_colo: control plane of the COLO network proxy.
 *
 * Registers the "colo" Generic Netlink family (colo.yaml): per network
 * namespace COLO nodes (one protected VM each, primary or secondary) that
 * userspace creates, checkpoints, fails over and destroys, and an "events"
 * multicast group carrying checkpoint-needed and node-gone.
 *
 * Unloading while nodes exist is safe: every node is destroyed (node-gone,
 * reason module-unload) before the family goes away.
 */
#include <linux/module.h>
#include <linux/init.h>

#include "colo_core.h"
#include "colo_dp.h"
#include "colo_sec.h"

static int __init colo_init(void)
{
	int err;

	err = colo_store_init();	/* pernet storage + NETLINK_URELEASE notifier */
	if (err)
		return err;
	err = colo_dp_init();		/* held-frame cache + netdevice notifier */
	if (err)
		goto err_store;
	err = colo_sec_init();		/* the secondary's netdevice notifier */
	if (err)
		goto err_dp;
	err = colo_netlink_init();	/* the family: userspace can create nodes now */
	if (err)
		goto err_sec;
	return 0;

err_sec:
	colo_sec_exit();
err_dp:
	colo_dp_exit();
err_store:
	colo_store_unload();
	colo_store_exit();
	return err;
}

static void __exit colo_exit(void)
{
	/* Notifier off, nodes destroyed with node-gone, family still there. */
	colo_store_unload();
	/* Waits for in-flight operations; none can create a node any more. */
	colo_netlink_exit();
	/* Every datapath was detached by its node's teardown. */
	colo_sec_exit();
	colo_dp_exit();
	/* Pernet storage freed, then rcu_barrier(). */
	colo_store_exit();
}

module_init(colo_init);
module_exit(colo_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("colo-proxy developers");
MODULE_DESCRIPTION("COLO network proxy control plane (Generic Netlink family \"colo\")");
MODULE_VERSION("0.1.0");
MODULE_ALIAS_GENL_FAMILY(COLO_FAMILY_NAME);
