// SPDX-License-Identifier: GPL-2.0
/*
 * nf_colo: the "colo" Generic Netlink family (see colo.yaml and
 * docs/protocol.md).
 *
 * Every operation has its own strict policy (resv_start_op is 0, so the core
 * validates strictly, rejects attributes an operation does not take and
 * non-zero reserved header fields).  Mutating operations need CAP_NET_ADMIN
 * (GENL_ADMIN_PERM, colo.yaml "admin-perm": checked against the initial user
 * namespace, so an unprivileged user namespace cannot drive nodes); get is
 * open to everyone in the netns.
 * Handlers run with parallel_ops: they rely only on the node store's locking
 * (colo_core.h), never on genl_mutex.
 */
#include <linux/module.h>
#include <linux/netlink.h>
#include <net/genetlink.h>
#include <net/netlink.h>
#include <net/sock.h>

#include "colo_core.h"

/* Index of the events group in colo_mcgrps[]. */
enum { COLO_MCGRP_EVENTS_IDX };

/* Not const: 6.1's nla_policy.range is a non-const pointer. */
static struct netlink_range_validation colo_index_range __ro_after_init = {
	.min = COLO_INDEX_MIN,
	.max = COLO_INDEX_MAX,
};

static const struct nla_policy colo_tuple_policy[COLO_A_TUPLE_MAX + 1] = {
	[COLO_A_TUPLE_FAMILY]	= NLA_POLICY_RANGE(NLA_U8, 4, 6),
	[COLO_A_TUPLE_PROTO]	= { .type = NLA_U8 },
	[COLO_A_TUPLE_SRC]	= { .type = NLA_BINARY, .len = 16 },
	[COLO_A_TUPLE_DST]	= { .type = NLA_BINARY, .len = 16 },
	[COLO_A_TUPLE_SPORT]	= { .type = NLA_U16 },
	[COLO_A_TUPLE_DPORT]	= { .type = NLA_U16 },
	[COLO_A_TUPLE_VLAN]	= NLA_POLICY_MAX(NLA_U16, 4095),
};

#define COLO_POLICY_INDEX \
	[COLO_A_NODE_INDEX] = NLA_POLICY_FULL_RANGE(NLA_U32, &colo_index_range)
#define COLO_POLICY_MODE \
	[COLO_A_NODE_MODE] = NLA_POLICY_MAX(NLA_U8, COLO_MODE_SECONDARY)

/* Request policies, one per operation: exactly the attributes colo.yaml lists. */
static const struct nla_policy colo_index_policy[COLO_A_NODE_MAX + 1] = {
	COLO_POLICY_INDEX,
};

static const struct nla_policy colo_index_mode_policy[COLO_A_NODE_MAX + 1] = {
	COLO_POLICY_INDEX,
	COLO_POLICY_MODE,
};

static const struct nla_policy colo_request_policy[COLO_A_NODE_MAX + 1] = {
	COLO_POLICY_INDEX,
	[COLO_A_NODE_REASON] = NLA_POLICY_MAX(NLA_U8, COLO_REASON_MANUAL),
	[COLO_A_NODE_TUPLE]  = NLA_POLICY_NESTED(colo_tuple_policy),
};

/* ---- message building --------------------------------------------------- */

static size_t colo_stats_size(void)
{
	return nla_total_size(0) +			/* nest */
	       5 * nla_total_size_64bit(sizeof(u64));
}

static size_t colo_tuple_size(void)
{
	return nla_total_size(0) +
	       2 * nla_total_size(sizeof(u8)) +		/* family, proto */
	       2 * nla_total_size(16) +			/* src, dst */
	       3 * nla_total_size(sizeof(u16));		/* sport, dport, vlan */
}

/* Upper bound of any message this family sends. */
static size_t colo_msg_size(void)
{
	return nla_total_size(sizeof(u32)) +		/* index */
	       nla_total_size(sizeof(u32)) +		/* owner */
	       4 * nla_total_size(sizeof(u8)) +		/* mode, state, reason, gone-reason */
	       colo_stats_size() + colo_tuple_size();
}

static int colo_put_stats(struct sk_buff *skb, const struct colo_stats *st)
{
	struct nlattr *nest;

	nest = nla_nest_start(skb, COLO_A_NODE_STATS);
	if (!nest)
		return -EMSGSIZE;
	if (nla_put_u64_64bit(skb, COLO_A_STATS_CHECKPOINTS, st->checkpoints,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_CHECKPOINT_REQUESTS,
			      st->checkpoint_requests, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_REQUESTS_SUPPRESSED,
			      st->requests_suppressed, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_FAILOVERS, st->failovers,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_RESETS, st->resets,
			      COLO_A_STATS_PAD)) {
		nla_nest_cancel(skb, nest);
		return -EMSGSIZE;
	}
	nla_nest_end(skb, nest);
	return 0;
}

/* index, mode, state, owner [, stats] */
static int colo_put_node(struct sk_buff *skb, const struct colo_node_info *ni,
			 bool stats)
{
	if (nla_put_u32(skb, COLO_A_NODE_INDEX, ni->index) ||
	    nla_put_u8(skb, COLO_A_NODE_MODE, ni->mode) ||
	    nla_put_u8(skb, COLO_A_NODE_STATE, ni->state) ||
	    nla_put_u32(skb, COLO_A_NODE_OWNER, ni->owner))
		return -EMSGSIZE;
	if (stats)
		return colo_put_stats(skb, &ni->stats);
	return 0;
}

/* Re-emit a validated tuple nest attribute by attribute (never raw bytes). */
static int colo_put_tuple(struct sk_buff *skb, struct nlattr **tb)
{
	struct nlattr *nest;
	int type;

	nest = nla_nest_start(skb, COLO_A_NODE_TUPLE);
	if (!nest)
		return -EMSGSIZE;
	for (type = 1; type <= COLO_A_TUPLE_MAX; type++) {
		if (tb[type] && nla_put(skb, type, nla_len(tb[type]), nla_data(tb[type]))) {
			nla_nest_cancel(skb, nest);
			return -EMSGSIZE;
		}
	}
	nla_nest_end(skb, nest);
	return 0;
}

static void colo_multicast(struct net *net, struct sk_buff *skb, gfp_t gfp)
{
	/* -ESRCH (nobody listening) is normal; there is nothing else to do. */
	genlmsg_multicast_netns(&colo_family, net, skb, 0, COLO_MCGRP_EVENTS_IDX, gfp);
}

/*
 * node-gone: index, mode, gone-reason, stats.  Called by every destroy path;
 * may run in atomic context (gfp says so), never sleeps with GFP_ATOMIC.
 * Allocation failure loses the event (there is no one to report it to).
 */
void colo_event_node_gone(struct colo_node *node, u8 gone_reason, gfp_t gfp)
{
	struct colo_node_info ni;
	struct sk_buff *skb;
	void *hdr;

	if (!genl_has_listeners(&colo_family, node->net, COLO_MCGRP_EVENTS_IDX))
		return;
	colo_node_snapshot(node, &ni);
	skb = genlmsg_new(colo_msg_size(), gfp);
	if (!skb)
		return;
	hdr = genlmsg_put(skb, 0, 0, &colo_family, 0, COLO_CMD_NODE_GONE);
	if (!hdr ||
	    nla_put_u32(skb, COLO_A_NODE_INDEX, ni.index) ||
	    nla_put_u8(skb, COLO_A_NODE_MODE, ni.mode) ||
	    nla_put_u8(skb, COLO_A_NODE_GONE_REASON, gone_reason) ||
	    colo_put_stats(skb, &ni.stats)) {
		nlmsg_free(skb);
		return;
	}
	genlmsg_end(skb, hdr);
	colo_multicast(node->net, skb, gfp);
}

/* checkpoint-request: index, mode, reason [, tuple].  Process context. */
static void colo_event_checkpoint_request(struct colo_node *node, u8 reason,
					  struct nlattr **tuple)
{
	struct sk_buff *skb;
	void *hdr;

	if (!genl_has_listeners(&colo_family, node->net, COLO_MCGRP_EVENTS_IDX))
		return;
	skb = genlmsg_new(colo_msg_size(), GFP_KERNEL);
	if (!skb)
		return;
	hdr = genlmsg_put(skb, 0, 0, &colo_family, 0, COLO_CMD_CHECKPOINT_REQUEST);
	if (!hdr ||
	    nla_put_u32(skb, COLO_A_NODE_INDEX, node->index) ||
	    nla_put_u8(skb, COLO_A_NODE_MODE, node->mode) ||
	    nla_put_u8(skb, COLO_A_NODE_REASON, reason) ||
	    (tuple && colo_put_tuple(skb, tuple))) {
		nlmsg_free(skb);
		return;
	}
	genlmsg_end(skb, hdr);
	colo_multicast(node->net, skb, GFP_KERNEL);
}

/* ---- request helpers ----------------------------------------------------- */

/* Look up the node named by the mandatory index attribute; takes a reference. */
static struct colo_node *colo_req_node(struct genl_info *info)
{
	struct nlattr *attr;
	struct colo_node *node;

	if (GENL_REQ_ATTR_CHECK(info, COLO_A_NODE_INDEX))
		return ERR_PTR(-EINVAL);
	attr = info->attrs[COLO_A_NODE_INDEX];
	node = colo_node_get(colo_pernet(genl_info_net(info)), nla_get_u32(attr));
	if (!node) {
		NL_SET_ERR_MSG_ATTR(info->extack, attr,
				    "colo: no such node in this network namespace");
		return ERR_PTR(-ENOENT);
	}
	return node;
}

/* The mandatory mode attribute must equal the node's mode. */
static int colo_req_mode_matches(struct genl_info *info, struct colo_node *node)
{
	struct nlattr *attr;

	if (GENL_REQ_ATTR_CHECK(info, COLO_A_NODE_MODE))
		return -EINVAL;
	attr = info->attrs[COLO_A_NODE_MODE];
	if (nla_get_u8(attr) != node->mode) {
		NL_SET_ERR_MSG_ATTR(info->extack, attr,
				    "colo: mode does not match the node's mode");
		return -EINVAL;
	}
	return 0;
}

static int colo_reply_node(struct genl_info *info, struct colo_node *node,
			   u8 cmd, bool stats)
{
	struct colo_node_info ni;
	struct sk_buff *skb;
	void *hdr;

	skb = genlmsg_new(colo_msg_size(), GFP_KERNEL);
	if (!skb)
		return -ENOMEM;
	hdr = genlmsg_put_reply(skb, info, &colo_family, 0, cmd);
	if (!hdr)
		goto nospace;
	colo_node_snapshot(node, &ni);
	if (colo_put_node(skb, &ni, stats))
		goto nospace;
	genlmsg_end(skb, hdr);
	return genlmsg_reply(skb, info);

nospace:
	nlmsg_free(skb);
	return -EMSGSIZE;
}

/* ---- operations ----------------------------------------------------------- */

static int colo_cmd_proxy_init(struct sk_buff *skb, struct genl_info *info)
{
	struct nlattr *index_attr = info->attrs[COLO_A_NODE_INDEX];
	struct colo_node *node;
	int err;

	if (GENL_REQ_ATTR_CHECK(info, COLO_A_NODE_MODE))
		return -EINVAL;
	err = colo_node_create(genl_info_net(info),
			       index_attr ? nla_get_u32(index_attr) : 0,
			       nla_get_u8(info->attrs[COLO_A_NODE_MODE]),
			       info->snd_portid, &node, info->extack);
	if (err) {
		if (err == -EEXIST)
			NL_SET_BAD_ATTR(info->extack, index_attr);
		return err;
	}
	/*
	 * If the reply cannot be sent the node stays: it belongs to the
	 * caller's socket and goes away with it.
	 */
	err = colo_reply_node(info, node, COLO_CMD_PROXY_INIT, false);
	colo_node_put(node);
	return err;
}

static int colo_cmd_proxy_reset(struct sk_buff *skb, struct genl_info *info)
{
	struct colo_node *node = colo_req_node(info);
	u64 resets;

	if (IS_ERR(node))
		return PTR_ERR(node);
	spin_lock(&node->lock);
	resets = node->stats.resets + 1;
	memset(&node->stats, 0, sizeof(node->stats));
	node->stats.resets = resets;
	if (node->state == COLO_STATE_CHECKPOINT_PENDING)
		node->state = COLO_STATE_ACTIVE;
	spin_unlock(&node->lock);
	colo_node_put(node);
	return 0;
}

static int colo_cmd_do_checkpoint(struct sk_buff *skb, struct genl_info *info)
{
	struct colo_node *node = colo_req_node(info);
	int err;

	if (IS_ERR(node))
		return PTR_ERR(node);
	err = colo_req_mode_matches(info, node);
	if (err)
		goto out;
	spin_lock(&node->lock);
	if (node->state == COLO_STATE_FAILED_OVER) {
		err = -EINVAL;
		NL_SET_ERR_MSG(info->extack, "colo: node has failed over");
	} else {
		node->stats.checkpoints++;
		node->state = COLO_STATE_ACTIVE;	/* clears checkpoint-pending */
	}
	spin_unlock(&node->lock);
out:
	colo_node_put(node);
	return err;
}

static int colo_cmd_do_failover(struct sk_buff *skb, struct genl_info *info)
{
	struct colo_node *node = colo_req_node(info);
	int err;

	if (IS_ERR(node))
		return PTR_ERR(node);
	err = colo_req_mode_matches(info, node);
	if (err)
		goto out;
	if (node->mode != COLO_MODE_SECONDARY) {
		err = -EINVAL;
		NL_SET_ERR_MSG_ATTR(info->extack, info->attrs[COLO_A_NODE_MODE],
				    "colo: failover is only for a secondary node");
		goto out;
	}
	spin_lock(&node->lock);
	if (node->state == COLO_STATE_FAILED_OVER) {
		err = -EALREADY;
		NL_SET_ERR_MSG(info->extack, "colo: node has already failed over");
	} else {
		node->state = COLO_STATE_FAILED_OVER;
		node->stats.failovers++;
	}
	spin_unlock(&node->lock);
out:
	colo_node_put(node);
	return err;
}

static int colo_cmd_get_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct colo_node *node = colo_req_node(info);
	int err;

	if (IS_ERR(node))
		return PTR_ERR(node);
	err = colo_reply_node(info, node, COLO_CMD_GET, true);
	colo_node_put(node);
	return err;
}

/*
 * Dump every node of the caller's netns in index order.  cb->args[0] is the
 * next index to visit, so a node deleted between two dump calls is simply
 * skipped and none is visited twice.  cb->seq carries the store generation:
 * NLM_F_DUMP_INTR tells userspace the set changed during the dump.
 */
static int colo_cmd_get_dumpit(struct sk_buff *skb, struct netlink_callback *cb)
{
	struct colo_net *cn = colo_pernet(sock_net(cb->skb->sk));
	struct colo_node_info ni;
	struct colo_node *node;
	int id = cb->args[0] ? (int)cb->args[0] : COLO_INDEX_MIN;
	void *hdr;

	rcu_read_lock();
	cb->seq = READ_ONCE(cn->gen);
	for (; (node = idr_get_next(&cn->idr, &id)); id++) {
		if (READ_ONCE(node->unlinked))
			continue;
		colo_node_snapshot(node, &ni);
		hdr = genlmsg_put(skb, NETLINK_CB(cb->skb).portid, cb->nlh->nlmsg_seq,
				  &colo_family, NLM_F_MULTI, COLO_CMD_GET);
		if (!hdr)
			break;
		genl_dump_check_consistent(cb, hdr);
		if (colo_put_node(skb, &ni, true)) {
			genlmsg_cancel(skb, hdr);
			break;
		}
		genlmsg_end(skb, hdr);
	}
	rcu_read_unlock();
	cb->args[0] = id;
	return skb->len;
}

static int colo_cmd_proxy_destroy(struct sk_buff *skb, struct genl_info *info)
{
	int err;

	if (GENL_REQ_ATTR_CHECK(info, COLO_A_NODE_INDEX))
		return -EINVAL;
	err = colo_node_destroy(genl_info_net(info),
				nla_get_u32(info->attrs[COLO_A_NODE_INDEX]), info->extack);
	if (err == -ENOENT)
		NL_SET_BAD_ATTR(info->extack, info->attrs[COLO_A_NODE_INDEX]);
	return err;
}

/* Semantic checks the policy cannot express: address lengths per family. */
static int colo_check_tuple(struct nlattr **tb, struct netlink_ext_ack *extack)
{
	int alen = 0, type;

	if (tb[COLO_A_TUPLE_FAMILY]) {
		switch (nla_get_u8(tb[COLO_A_TUPLE_FAMILY])) {
		case 4:
			alen = 4;
			break;
		case 6:
			alen = 16;
			break;
		default:
			NL_SET_ERR_MSG_ATTR(extack, tb[COLO_A_TUPLE_FAMILY],
					    "colo: tuple family must be 4 or 6");
			return -EINVAL;
		}
	}
	for (type = COLO_A_TUPLE_SRC; type <= COLO_A_TUPLE_DST; type++) {
		if (!tb[type])
			continue;
		if (!alen) {
			NL_SET_ERR_MSG_ATTR(extack, tb[type],
					    "colo: tuple address needs the tuple family");
			return -EINVAL;
		}
		if (nla_len(tb[type]) != alen) {
			NL_SET_ERR_MSG_ATTR(extack, tb[type],
					    "colo: tuple address length does not match its family");
			return -EINVAL;
		}
	}
	return 0;
}

static int colo_cmd_request_checkpoint(struct sk_buff *skb, struct genl_info *info)
{
	struct nlattr *tuple_tb[COLO_A_TUPLE_MAX + 1];
	struct nlattr *tuple = info->attrs[COLO_A_NODE_TUPLE];
	struct colo_node *node;
	bool emit = false;
	int err = 0;
	u8 reason;

	if (tuple) {
		/* Already validated strictly by the core against colo_tuple_policy. */
		err = nla_parse_nested(tuple_tb, COLO_A_TUPLE_MAX, tuple,
				       colo_tuple_policy, info->extack);
		if (err)
			return err;
		err = colo_check_tuple(tuple_tb, info->extack);
		if (err)
			return err;
	}
	reason = info->attrs[COLO_A_NODE_REASON] ?
		 nla_get_u8(info->attrs[COLO_A_NODE_REASON]) : COLO_REASON_UNSPEC;

	node = colo_req_node(info);
	if (IS_ERR(node))
		return PTR_ERR(node);
	spin_lock(&node->lock);
	if (node->state == COLO_STATE_FAILED_OVER) {
		err = -EINVAL;
		NL_SET_ERR_MSG(info->extack, "colo: node has failed over");
	} else if (node->state == COLO_STATE_CHECKPOINT_PENDING) {
		node->stats.requests_suppressed++;
	} else {
		node->state = COLO_STATE_CHECKPOINT_PENDING;
		node->stats.checkpoint_requests++;
		emit = true;
	}
	spin_unlock(&node->lock);

	if (emit)
		colo_event_checkpoint_request(node, reason, tuple ? tuple_tb : NULL);
	colo_node_put(node);
	return err;
}

/* ---- family ------------------------------------------------------------- */

static const struct genl_ops colo_ops[] = {
	{
		.cmd	 = COLO_CMD_PROXY_INIT,
		.doit	 = colo_cmd_proxy_init,
		.policy	 = colo_index_mode_policy,
		.maxattr = COLO_A_NODE_MAX,
		.flags	 = GENL_ADMIN_PERM,
	},
	{
		.cmd	 = COLO_CMD_PROXY_RESET,
		.doit	 = colo_cmd_proxy_reset,
		.policy	 = colo_index_policy,
		.maxattr = COLO_A_NODE_MAX,
		.flags	 = GENL_ADMIN_PERM,
	},
	{
		.cmd	 = COLO_CMD_DO_CHECKPOINT,
		.doit	 = colo_cmd_do_checkpoint,
		.policy	 = colo_index_mode_policy,
		.maxattr = COLO_A_NODE_MAX,
		.flags	 = GENL_ADMIN_PERM,
	},
	{
		.cmd	 = COLO_CMD_DO_FAILOVER,
		.doit	 = colo_cmd_do_failover,
		.policy	 = colo_index_mode_policy,
		.maxattr = COLO_A_NODE_MAX,
		.flags	 = GENL_ADMIN_PERM,
	},
	{
		.cmd	 = COLO_CMD_GET,
		.doit	 = colo_cmd_get_doit,
		.dumpit	 = colo_cmd_get_dumpit,
		.policy	 = colo_index_policy,
		.maxattr = COLO_A_NODE_MAX,
	},
	{
		.cmd	 = COLO_CMD_PROXY_DESTROY,
		.doit	 = colo_cmd_proxy_destroy,
		.policy	 = colo_index_policy,
		.maxattr = COLO_A_NODE_MAX,
		.flags	 = GENL_ADMIN_PERM,
	},
	{
		.cmd	 = COLO_CMD_REQUEST_CHECKPOINT,
		.doit	 = colo_cmd_request_checkpoint,
		.policy	 = colo_request_policy,
		.maxattr = COLO_A_NODE_MAX,
		.flags	 = GENL_ADMIN_PERM,
	},
};

static const struct genl_multicast_group colo_mcgrps[] = {
	[COLO_MCGRP_EVENTS_IDX] = {
		.name = COLO_MCGRP_EVENTS,
#ifdef GENL_MCAST_CAP_NET_ADMIN
		/* Events carry connection tuples: listeners need CAP_NET_ADMIN. */
		.flags = GENL_MCAST_CAP_NET_ADMIN,
#endif
	},
};

struct genl_family colo_family __ro_after_init = {
	.name		= COLO_FAMILY_NAME,
	.version	= COLO_FAMILY_VERSION,
	.netnsok	= true,
	.parallel_ops	= true,
	.module		= THIS_MODULE,
	.ops		= colo_ops,
	.n_ops		= ARRAY_SIZE(colo_ops),
	.mcgrps		= colo_mcgrps,
	.n_mcgrps	= ARRAY_SIZE(colo_mcgrps),
	/* .resv_start_op = 0: a new family, every op strictly validated. */
};

int colo_netlink_init(void)
{
	return genl_register_family(&colo_family);
}

void colo_netlink_exit(void)
{
	genl_unregister_family(&colo_family);
}
