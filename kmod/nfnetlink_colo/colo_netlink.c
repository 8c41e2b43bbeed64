// SPDX-License-Identifier: GPL-2.0
/*
 * nf_colo: the handlers and messages of the "colo" Generic Netlink family
 * (see colo.yaml and docs/protocol.md).
 *
 * The policies, the ops table, the events group and the family struct are
 * generated from colo.yaml into colo-nl-gen.c (scripts/colo-nl-gen.py).
 * Every operation has its own strict policy (resv_start_op is 0).  One
 * permission model: every operation (GENL_UNS_ADMIN_PERM) and the events
 * group (GENL_MCAST_CAP_NET_ADMIN) need CAP_NET_ADMIN in the user namespace
 * that owns the caller's network namespace, as nftables and ctnetlink do.
 * Handlers run with parallel_ops: they rely only on the node store's locking
 * (colo_core.h), never on genl_mutex.
 */
#include <linux/module.h>
#include <linux/netlink.h>
#include <linux/socket.h>
#include <net/genetlink.h>
#include <net/netlink.h>
#include <net/sock.h>

#include "colo_core.h"
#include "colo_dp.h"
#include "colo_sec.h"

/* ---- message building --------------------------------------------------- */

static size_t colo_stats_size(void)
{
	return nla_total_size(0) +			/* nest */
	       26 * nla_total_size_64bit(sizeof(u64));
}

static size_t colo_tuple_size(void)
{
	return nla_total_size(0) +
	       2 * nla_total_size(sizeof(u8)) +		/* family, proto */
	       2 * nla_total_size(sizeof(struct in6_addr)) +	/* src, dst */
	       2 * nla_total_size(sizeof(u16)) +		/* sport, dport */
	       COLO_TUPLE_MAX_VLANS * nla_total_size(sizeof(u16));
}

/* Upper bound of any message this family sends. */
static size_t colo_msg_size(void)
{
	return nla_total_size_64bit(sizeof(u64)) +	/* id */
	       nla_total_size(sizeof(u32)) +		/* index */
	       nla_total_size(sizeof(u32)) +		/* owner */
	       4 * nla_total_size(sizeof(u8)) +		/* mode, state, reason, gone-reason */
	       nla_total_size_64bit(sizeof(u64)) +	/* offset */
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
	    nla_put_u64_64bit(skb, COLO_A_STATS_REQUESTS_RESENT,
			      st->requests_resent, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_REQUESTS_LOST,
			      st->requests_lost, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_FAILOVERS, st->failovers,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_RESETS, st->resets,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_CAPTURED, st->dp_captured, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_RELEASED, st->dp_released, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_SVM_FRAMES, st->dp_svm_frames,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_MATCHED, st->dp_matched, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_MISMATCHES, st->dp_mismatches,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_UNCOMPARED, st->dp_uncompared,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_CONTROL_PASSED, st->dp_control_passed,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_DROPPED, st->dp_dropped, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_FLUSHED, st->dp_flushed, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_HELD_PACKETS, st->dp_held_packets,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_HELD_BYTES, st->dp_held_bytes,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_DP_CONNECTIONS, st->dp_connections,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_SEC_SVM_FRAMES, st->sec_svm_frames,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_SEC_FWD_FRAMES, st->sec_fwd_frames,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_SEC_TRANSLATED_OUT, st->sec_translated_out,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_SEC_TRANSLATED_IN, st->sec_translated_in,
			      COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_SEC_HELD, st->sec_held, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_SEC_DROPPED, st->sec_dropped, COLO_A_STATS_PAD) ||
	    nla_put_u64_64bit(skb, COLO_A_STATS_SEC_FLOWS, st->sec_flows, COLO_A_STATS_PAD)) {
		nla_nest_cancel(skb, nest);
		return -EMSGSIZE;
	}
	nla_nest_end(skb, nest);
	return 0;
}

static int colo_put_id(struct sk_buff *skb, u64 id)
{
	return nla_put_u64_64bit(skb, COLO_A_NODE_ID, id, COLO_A_NODE_PAD);
}

/* id, index, mode, state, owner [, stats] */
static int colo_put_node(struct sk_buff *skb, const struct colo_node_info *ni,
			 bool stats)
{
	if (colo_put_id(skb, ni->id) ||
	    nla_put_u32(skb, COLO_A_NODE_INDEX, ni->index) ||
	    nla_put_u8(skb, COLO_A_NODE_MODE, ni->mode) ||
	    nla_put_u8(skb, COLO_A_NODE_STATE, ni->state) ||
	    nla_put_u32(skb, COLO_A_NODE_OWNER, ni->owner))
		return -EMSGSIZE;
	if (stats)
		return colo_put_stats(skb, &ni->stats);
	return 0;
}

static int colo_put_tuple(struct sk_buff *skb, const struct colo_tuple *t)
{
	struct nlattr *nest;
	int i;

	nest = nla_nest_start(skb, COLO_A_NODE_TUPLE);
	if (!nest)
		return -EMSGSIZE;
	if (t->family && nla_put_u8(skb, COLO_A_TUPLE_FAMILY, t->family))
		goto cancel;
	if ((t->has & COLO_TUPLE_HAS_PROTO) && nla_put_u8(skb, COLO_A_TUPLE_PROTO, t->proto))
		goto cancel;
	if (t->family == AF_INET) {
		if ((t->has & COLO_TUPLE_HAS_SRC) &&
		    nla_put_in_addr(skb, COLO_A_TUPLE_SRC4, t->src.ip4))
			goto cancel;
		if ((t->has & COLO_TUPLE_HAS_DST) &&
		    nla_put_in_addr(skb, COLO_A_TUPLE_DST4, t->dst.ip4))
			goto cancel;
	} else if (t->family == AF_INET6) {
		if ((t->has & COLO_TUPLE_HAS_SRC) &&
		    nla_put_in6_addr(skb, COLO_A_TUPLE_SRC6, &t->src.ip6))
			goto cancel;
		if ((t->has & COLO_TUPLE_HAS_DST) &&
		    nla_put_in6_addr(skb, COLO_A_TUPLE_DST6, &t->dst.ip6))
			goto cancel;
	}
	if ((t->has & COLO_TUPLE_HAS_SPORT) && nla_put_be16(skb, COLO_A_TUPLE_SPORT, t->sport))
		goto cancel;
	if ((t->has & COLO_TUPLE_HAS_DPORT) && nla_put_be16(skb, COLO_A_TUPLE_DPORT, t->dport))
		goto cancel;
	for (i = 0; i < t->n_vlans; i++)
		if (nla_put_u16(skb, COLO_A_TUPLE_VLAN, t->vlans[i]))
			goto cancel;
	nla_nest_end(skb, nest);
	return 0;

cancel:
	nla_nest_cancel(skb, nest);
	return -EMSGSIZE;
}

bool colo_event_has_listeners(struct net *net)
{
	return genl_has_listeners(&colo_nl_family, net, COLO_NLGRP_EVENTS);
}

/* An event was lost: listeners get ENOBUFS on their next read and resync. */
void colo_event_lost(struct net *net)
{
	genl_set_err(&colo_nl_family, net, 0, COLO_NLGRP_EVENTS, -ENOBUFS);
}

void colo_event_send(struct net *net, struct sk_buff *skb, gfp_t gfp)
{
	/*
	 * -ESRCH (nobody received it) is normal: a pending request is resent by
	 * the timer; a listener that overran already gets ENOBUFS from the core.
	 */
	genlmsg_multicast_netns(&colo_nl_family, net, skb, 0, COLO_NLGRP_EVENTS, gfp);
}

/* checkpoint-needed: id, index, mode, reason [, tuple].  Any context with @gfp. */
int colo_event_checkpoint_needed(struct colo_node *node, const struct colo_req *req,
				 gfp_t gfp, struct sk_buff **out)
{
	struct sk_buff *skb;
	void *hdr;

	skb = genlmsg_new(colo_msg_size(), gfp);
	if (!skb)
		return -ENOMEM;
	hdr = genlmsg_put(skb, 0, 0, &colo_nl_family, 0, COLO_CMD_CHECKPOINT_NEEDED);
	if (!hdr ||
	    colo_put_id(skb, node->id) ||
	    nla_put_u32(skb, COLO_A_NODE_INDEX, node->index) ||
	    nla_put_u8(skb, COLO_A_NODE_MODE, node->mode) ||
	    nla_put_u8(skb, COLO_A_NODE_REASON, req->reason) ||
	    (req->has_tuple && colo_put_tuple(skb, &req->tuple)) ||
	    (req->has_offset &&
	     nla_put_u64_64bit(skb, COLO_A_NODE_OFFSET, req->offset, COLO_A_NODE_PAD))) {
		nlmsg_free(skb);
		return -EMSGSIZE;
	}
	genlmsg_end(skb, hdr);
	*out = skb;
	return 0;
}

/*
 * node-gone: id, index, mode, gone-reason, stats.  Sent by the teardown work
 * (GFP_KERNEL); listeners get ENOBUFS if it cannot be built.
 */
void colo_event_node_gone(struct colo_node *node, u8 gone_reason, gfp_t gfp)
{
	struct colo_node_info ni;
	struct sk_buff *skb;
	void *hdr;

	if (!colo_event_has_listeners(node->net))
		return;
	colo_node_snapshot(node, &ni);
	skb = genlmsg_new(colo_msg_size(), gfp);
	if (!skb)
		goto lost;
	hdr = genlmsg_put(skb, 0, 0, &colo_nl_family, 0, COLO_CMD_NODE_GONE);
	if (!hdr ||
	    colo_put_id(skb, ni.id) ||
	    nla_put_u32(skb, COLO_A_NODE_INDEX, ni.index) ||
	    nla_put_u8(skb, COLO_A_NODE_MODE, ni.mode) ||
	    nla_put_u8(skb, COLO_A_NODE_GONE_REASON, gone_reason) ||
	    colo_put_stats(skb, &ni.stats)) {
		nlmsg_free(skb);
		goto lost;
	}
	genlmsg_end(skb, hdr);
	colo_event_send(node->net, skb, gfp);
	return;
lost:
	colo_event_lost(node->net);
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
				    "no such node in this network namespace");
		return ERR_PTR(-ENOENT);
	}
	return node;
}

/* The optional mode attribute, if present, must equal @want. */
static bool colo_req_mode_differs(struct genl_info *info, u8 want)
{
	struct nlattr *attr = info->attrs[COLO_A_NODE_MODE];

	return attr && nla_get_u8(attr) != want;
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
	hdr = genlmsg_put_reply(skb, info, &colo_nl_family, 0, cmd);
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

static u32 colo_attr_u32(struct genl_info *info, int type, u32 def)
{
	return info->attrs[type] ? nla_get_u32(info->attrs[type]) : def;
}

/*
 * The datapath attributes of proxy-init; returns 1 if a primary datapath is asked
 * for, 2 for a secondary one (only tap, fwd and max-connections in @cfg), else 0.
 */
static int colo_parse_dp(struct genl_info *info, u8 mode, struct colo_dp_cfg *cfg)
{
	struct nlattr *tap = info->attrs[COLO_A_NODE_TAP_IFINDEX];
	struct nlattr *fwd = info->attrs[COLO_A_NODE_FWD_IFINDEX];
	static const int caps[] = {
		COLO_A_NODE_MAX_HELD_PACKETS, COLO_A_NODE_MAX_HELD_BYTES,
		COLO_A_NODE_HOLD_TIMEOUT_MS, COLO_A_NODE_MAX_CONNECTIONS,
		COLO_A_NODE_OWNER_LOSS,
	};
	int i;

	if (!tap && !fwd) {
		for (i = 0; i < ARRAY_SIZE(caps); i++)
			if (info->attrs[caps[i]]) {
				NL_SET_ERR_MSG_ATTR(info->extack, info->attrs[caps[i]],
						    "datapath limits need tap-ifindex and fwd-ifindex");
				return -EINVAL;
			}
		return 0;
	}
	if (!tap || !fwd) {
		NL_SET_ERR_MSG_ATTR(info->extack, tap ?: fwd,
				    "tap-ifindex and fwd-ifindex go together");
		return -EINVAL;
	}
	if (mode == COLO_MODE_SECONDARY) {
		/* SECCOLO: no hold, so max-connections is its only limit. */
		for (i = 0; i < ARRAY_SIZE(caps); i++)
			if (caps[i] != COLO_A_NODE_MAX_CONNECTIONS && info->attrs[caps[i]]) {
				NL_SET_ERR_MSG_ATTR(info->extack, info->attrs[caps[i]],
						    "a secondary datapath holds nothing: only max-connections applies");
				return -EINVAL;
			}
		cfg->tap_ifindex = nla_get_u32(tap);
		cfg->fwd_ifindex = nla_get_u32(fwd);
		cfg->max_connections = colo_attr_u32(info, COLO_A_NODE_MAX_CONNECTIONS,
						     COLO_SEC_DEF_MAX_CONNECTIONS);
		return 2;
	}
	if (mode != COLO_MODE_PRIMARY) {
		NL_SET_ERR_MSG_ATTR(info->extack, tap,
				    "the datapath is for a primary or secondary node");
		return -EINVAL;
	}
	cfg->tap_ifindex = nla_get_u32(tap);
	cfg->fwd_ifindex = nla_get_u32(fwd);
	cfg->max_held_packets = colo_attr_u32(info, COLO_A_NODE_MAX_HELD_PACKETS,
					      COLO_DP_DEF_MAX_HELD_PACKETS);
	cfg->max_held_bytes = colo_attr_u32(info, COLO_A_NODE_MAX_HELD_BYTES,
					    COLO_DP_DEF_MAX_HELD_BYTES);
	cfg->hold_timeout_ms = colo_attr_u32(info, COLO_A_NODE_HOLD_TIMEOUT_MS,
					     COLO_DP_DEF_HOLD_TIMEOUT_MS);
	cfg->max_connections = colo_attr_u32(info, COLO_A_NODE_MAX_CONNECTIONS,
					     COLO_DP_DEF_MAX_CONNECTIONS);
	cfg->owner_loss = info->attrs[COLO_A_NODE_OWNER_LOSS] ?
			  nla_get_u8(info->attrs[COLO_A_NODE_OWNER_LOSS]) : COLO_OWNER_LOSS_RELEASE;
	return 1;
}

int colo_nl_proxy_init_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct nlattr *index_attr = info->attrs[COLO_A_NODE_INDEX];
	struct colo_dp_cfg cfg;
	struct colo_node *node;
	int err, want_dp;
	u8 mode;

	if (GENL_REQ_ATTR_CHECK(info, COLO_A_NODE_MODE))
		return -EINVAL;
	mode = nla_get_u8(info->attrs[COLO_A_NODE_MODE]);
	want_dp = colo_parse_dp(info, mode, &cfg);
	if (want_dp < 0)
		return want_dp;
	err = colo_node_create(genl_info_net(info),
			       index_attr ? nla_get_u32(index_attr) : 0,
			       mode, info->snd_portid, &node, info->extack);
	if (err) {
		if (err == -EEXIST)
			NL_SET_BAD_ATTR(info->extack, index_attr);
		return err;
	}
	if (want_dp) {
		if (want_dp == 2) {
			struct colo_sec_cfg sc = {
				.tap_ifindex = cfg.tap_ifindex,
				.fwd_ifindex = cfg.fwd_ifindex,
				.max_connections = cfg.max_connections,
			};

			err = colo_sec_attach(node, &sc, info->extack);
		} else {
			err = colo_dp_attach(node, &cfg, info->extack);
		}
		if (err) {
			/* The node never existed for the caller (node-gone: destroyed). */
			colo_node_kill(node, COLO_GONE_REASON_DESTROYED);
			colo_node_put(node);
			return err;
		}
	}
	/*
	 * If the reply cannot be sent the node stays: it belongs to the
	 * caller's socket and goes away with it.
	 */
	err = colo_reply_node(info, node, COLO_CMD_PROXY_INIT, false);
	colo_node_put(node);
	return err;
}

int colo_nl_proxy_reset_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct colo_node *node = colo_req_node(info);

	if (IS_ERR(node))
		return PTR_ERR(node);
	colo_node_reset_counters(node);
	colo_node_put(node);
	return 0;
}

int colo_nl_do_checkpoint_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct colo_node *node = colo_req_node(info);
	int err;

	if (IS_ERR(node))
		return PTR_ERR(node);
	err = 0;
	if (colo_req_mode_differs(info, node->mode)) {
		err = -EINVAL;
		NL_SET_ERR_MSG_ATTR(info->extack, info->attrs[COLO_A_NODE_MODE],
				    "mode does not match the node's mode");
		goto out;
	}
	spin_lock_bh(&node->lock);
	if (node->dying) {
		err = -ENOENT;
		NL_SET_ERR_MSG(info->extack, "no such node in this network namespace");
	} else if (node->state == COLO_STATE_FAILED_OVER) {
		err = -EINVAL;
		NL_SET_ERR_MSG(info->extack, "node has failed over");
	} else {
		node->checkpoints++;
		node->state = COLO_STATE_ACTIVE;	/* clears checkpoint-pending */
	}
	spin_unlock_bh(&node->lock);
	if (!err) {
		colo_dp_checkpoint(node);	/* release held PVM frames, drop SVM's */
		colo_sec_checkpoint(node);	/* forget the sequence translations */
	}
out:
	colo_node_put(node);
	return err;
}

int colo_nl_do_failover_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct colo_node *node = colo_req_node(info);
	int err;

	if (IS_ERR(node))
		return PTR_ERR(node);
	err = 0;
	if (colo_req_mode_differs(info, COLO_MODE_SECONDARY)) {
		err = -EINVAL;
		NL_SET_ERR_MSG_ATTR(info->extack, info->attrs[COLO_A_NODE_MODE],
				    "failover is only for a secondary node");
		goto out;
	}
	if (node->mode != COLO_MODE_SECONDARY) {
		err = -EINVAL;
		NL_SET_ERR_MSG_ATTR(info->extack, info->attrs[COLO_A_NODE_INDEX],
				    "failover is only for a secondary node");
		goto out;
	}
	spin_lock_bh(&node->lock);
	if (node->dying) {
		err = -ENOENT;
		NL_SET_ERR_MSG(info->extack, "no such node in this network namespace");
	} else if (node->state == COLO_STATE_FAILED_OVER) {
		err = -EALREADY;
		NL_SET_ERR_MSG(info->extack, "node has already failed over");
	} else {
		node->state = COLO_STATE_FAILED_OVER;
		node->failovers++;
	}
	spin_unlock_bh(&node->lock);
	if (!err)
		colo_sec_failover(node);	/* the SVM's output goes on */
out:
	colo_node_put(node);
	return err;
}

int colo_nl_get_doit(struct sk_buff *skb, struct genl_info *info)
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
int colo_nl_get_dumpit(struct sk_buff *skb, struct netlink_callback *cb)
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
				  &colo_nl_family, NLM_F_MULTI, COLO_CMD_GET);
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

int colo_nl_proxy_destroy_doit(struct sk_buff *skb, struct genl_info *info)
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

/* The tuple nest (validated by colo_tuple_nl_policy) in host form. */
static int colo_parse_tuple(struct nlattr *nest, struct colo_tuple *t,
			    struct netlink_ext_ack *extack)
{
	struct nlattr *tb[COLO_A_TUPLE_MAX + 1];
	struct nlattr *attr;
	int err, rem;

	err = nla_parse_nested(tb, COLO_A_TUPLE_MAX, nest, colo_tuple_nl_policy, extack);
	if (err)
		return err;
	memset(t, 0, sizeof(*t));
	if (tb[COLO_A_TUPLE_FAMILY]) {
		t->family = nla_get_u8(tb[COLO_A_TUPLE_FAMILY]);
		if (t->family != AF_INET && t->family != AF_INET6) {
			NL_SET_ERR_MSG_ATTR(extack, tb[COLO_A_TUPLE_FAMILY],
					    "tuple family must be AF_INET or AF_INET6");
			return -EINVAL;
		}
	}
	if ((tb[COLO_A_TUPLE_SRC4] || tb[COLO_A_TUPLE_DST4]) && t->family != AF_INET) {
		NL_SET_ERR_MSG_ATTR(extack, tb[COLO_A_TUPLE_SRC4] ?: tb[COLO_A_TUPLE_DST4],
				    "IPv4 tuple address needs family AF_INET");
		return -EINVAL;
	}
	if ((tb[COLO_A_TUPLE_SRC6] || tb[COLO_A_TUPLE_DST6]) && t->family != AF_INET6) {
		NL_SET_ERR_MSG_ATTR(extack, tb[COLO_A_TUPLE_SRC6] ?: tb[COLO_A_TUPLE_DST6],
				    "IPv6 tuple address needs family AF_INET6");
		return -EINVAL;
	}
	if (tb[COLO_A_TUPLE_PROTO]) {
		t->proto = nla_get_u8(tb[COLO_A_TUPLE_PROTO]);
		t->has |= COLO_TUPLE_HAS_PROTO;
	}
	if (tb[COLO_A_TUPLE_SRC4]) {
		t->src.ip4 = nla_get_in_addr(tb[COLO_A_TUPLE_SRC4]);
		t->has |= COLO_TUPLE_HAS_SRC;
	}
	if (tb[COLO_A_TUPLE_DST4]) {
		t->dst.ip4 = nla_get_in_addr(tb[COLO_A_TUPLE_DST4]);
		t->has |= COLO_TUPLE_HAS_DST;
	}
	if (tb[COLO_A_TUPLE_SRC6]) {
		t->src.ip6 = nla_get_in6_addr(tb[COLO_A_TUPLE_SRC6]);
		t->has |= COLO_TUPLE_HAS_SRC;
	}
	if (tb[COLO_A_TUPLE_DST6]) {
		t->dst.ip6 = nla_get_in6_addr(tb[COLO_A_TUPLE_DST6]);
		t->has |= COLO_TUPLE_HAS_DST;
	}
	if (tb[COLO_A_TUPLE_SPORT]) {
		t->sport = nla_get_be16(tb[COLO_A_TUPLE_SPORT]);
		t->has |= COLO_TUPLE_HAS_SPORT;
	}
	if (tb[COLO_A_TUPLE_DPORT]) {
		t->dport = nla_get_be16(tb[COLO_A_TUPLE_DPORT]);
		t->has |= COLO_TUPLE_HAS_DPORT;
	}
	/* vlan is a multi-attr: one per tag, outermost first. */
	nla_for_each_nested(attr, nest, rem) {
		if (nla_type(attr) != COLO_A_TUPLE_VLAN)
			continue;
		if (t->n_vlans == COLO_TUPLE_MAX_VLANS) {
			NL_SET_ERR_MSG_ATTR(extack, attr, "too many VLAN tags in the tuple");
			return -E2BIG;
		}
		t->vlans[t->n_vlans++] = nla_get_u16(attr);
	}
	return 0;
}

int colo_nl_request_checkpoint_doit(struct sk_buff *skb, struct genl_info *info)
{
	struct nlattr *nest = info->attrs[COLO_A_NODE_TUPLE];
	struct colo_req req = {};
	struct colo_node *node;
	int err;

	if (nest) {
		err = colo_parse_tuple(nest, &req.tuple, info->extack);
		if (err)
			return err;
		req.has_tuple = true;
	}
	req.reason = info->attrs[COLO_A_NODE_REASON] ?
		     nla_get_u8(info->attrs[COLO_A_NODE_REASON]) : COLO_REASON_UNSPEC;
	if (info->attrs[COLO_A_NODE_OFFSET]) {
		req.has_offset = true;
		req.offset = nla_get_u64(info->attrs[COLO_A_NODE_OFFSET]);
	}

	node = colo_req_node(info);
	if (IS_ERR(node))
		return PTR_ERR(node);
	err = colo_node_request_checkpoint(node, &req, GFP_KERNEL);
	if (err == -EINVAL)
		NL_SET_ERR_MSG(info->extack, "node has failed over");
	else if (err == -ENOENT)
		NL_SET_ERR_MSG(info->extack, "no such node in this network namespace");
	else if (err)
		NL_SET_ERR_MSG(info->extack, "checkpoint-needed could not be built; listeners got ENOBUFS");
	colo_node_put(node);
	return err;
}

/* ---- family ------------------------------------------------------------- */

int colo_netlink_init(void)
{
	return genl_register_family(&colo_nl_family);
}

void colo_netlink_exit(void)
{
	genl_unregister_family(&colo_nl_family);
}
