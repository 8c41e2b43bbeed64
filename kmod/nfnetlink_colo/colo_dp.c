// SPDX-License-Identifier: GPL-2.0
/*
 * nf_colo: the primary's in-kernel datapath (PMYCOLO), first cut.
 *
 * Capture: an nf netdev ingress hook on the PVM's tap (last priority) steals
 * every IP frame into the node's compare core; ARP, ND and non-IP frames (the
 * parser's CONTROL class) pass straight through.  A second netdev ingress hook on
 * the forward device consumes every frame: SVM output is compared, then freed,
 * and never reaches the host's stack.
 *
 * Release: matched PVM frames (and, on do-checkpoint, every held one) go on the
 * node's release queue; a tasklet re-injects them ifb-style
 * (tc_skip_classify = 1, netif_receive_skb()), so they skip taps, tc and nf
 * ingress once and meet the bridge (bridged) or ip_rcv (routed) as they would
 * have.  Never from inside a hook.
 *
 * Interim (docs/architecture.md): TCP is not in the C compare core yet, so PVM
 * TCP frames pass uncompared (counted in dp-uncompared) and the SVM's TCP frames
 * are consumed.  One node per tap and per forward device (no demultiplexing by
 * VM MAC or VLAN yet).  The connection table is a fixed hash per node under
 * the node's datapath lock; idle connections are forgotten at each checkpoint.
 *
 * Locking and references: colo_dp.h.
 */
#include <linux/jhash.h>
#include <linux/ktime.h>
#include <linux/list.h>
#include <linux/netdevice.h>
#include <linux/netfilter.h>
#include <linux/netfilter_netdev.h>
#include <linux/rtnetlink.h>
#include <linux/skbuff.h>
#include <linux/slab.h>
#include <linux/interrupt.h>
#include <linux/random.h>

#include "colo_core.h"
#include "colo_dp.h"
#include "cmp.h"

#if !IS_ENABLED(CONFIG_NETFILTER_INGRESS)
#error "nf_colo's datapath needs CONFIG_NETFILTER_INGRESS"
#endif
#if !IS_ENABLED(CONFIG_NET_CLS_ACT) && !IS_ENABLED(CONFIG_NET_XGRESS)
#error "nf_colo's datapath needs skb->tc_skip_classify (CONFIG_NET_CLS_ACT or CONFIG_NET_XGRESS)"
#endif

#define COLO_DP_HASH_BITS	8
#define COLO_DP_BUDGET		64	/* frames re-injected per tasklet run */
#define COLO_DP_SCAN_MIN_MS	10
#define COLO_DP_SCAN_MAX_MS	100

struct colo_dp_conn {
	struct hlist_node hnode;
	struct colo_cmp_conn c;
};

/* What one locked call decided, acted on after the lock is dropped. */
struct colo_dp_ctx {
	struct sk_buff_head drop;	/* freed after unlock */
	bool released;			/* rxq grew: schedule the tasklet */
	bool req;
	u8 reason;			/* enum colo_cmp_reason */
	bool has_key;
	struct colo_cmp_key key;
	u32 matched;
	u32 mismatches;
	u32 dropped;
};

struct colo_dp {
	struct list_head list;		/* colo_dp_list, under RTNL */
	struct colo_node *node;		/* not counted (colo_dp.h) */
	struct net_device *tap;
	struct net_device *fwd;
	netdevice_tracker tap_tracker;
	netdevice_tracker fwd_tracker;
	struct nf_hook_ops ops[2];	/* [0] tap, [1] forward device */
	u8 owner_loss;
	u32 seed;

	spinlock_t lock;		/* everything below (BH-safe) */
	bool stopped;			/* detaching: hooks pass (tap) or drop (fwd) */
	struct colo_dp_ctx *ctx;	/* the locked call's decision sink */
	struct colo_cmp_core core;
	struct hlist_head table[1 << COLO_DP_HASH_BITS];
	struct sk_buff_head rxq;	/* released, awaiting the tasklet (__skb_* under lock) */

	struct tasklet_struct tasklet;
	struct timer_list timer;
	unsigned long scan;		/* timer period, jiffies */
};

static LIST_HEAD(colo_dp_list);		/* RTNL */
static struct kmem_cache *colo_held_cache __read_mostly;

static s64 colo_dp_now(void)
{
	return ktime_to_us(ktime_get());
}

static struct sk_buff *tag_skb(u64 tag)
{
	return (struct sk_buff *)(unsigned long)tag;
}

/* ---- the core's callbacks ------------------------------------------------ */

static void colo_dp_emit(struct colo_cmp_core *core, const struct colo_cmp_decision *d)
{
	struct colo_dp *dp = container_of(core, struct colo_dp, core);
	struct colo_dp_ctx *ctx = dp->ctx;

	switch (d->kind) {
	case COLO_CMP_RELEASE:
		__skb_queue_tail(&dp->rxq, tag_skb(d->tag));
		ctx->released = true;
		break;
	case COLO_CMP_DROP:
		__skb_queue_tail(&ctx->drop, tag_skb(d->tag));
		if (d->reason == COLO_CMP_MATCHED && d->side == COLO_CMP_SECONDARY)
			ctx->matched++;
		else if (d->reason == COLO_CMP_OVERFLOW || d->reason == COLO_CMP_MALFORMED)
			ctx->dropped++;
		break;
	case COLO_CMP_REQUEST:
		if (d->reason == COLO_CMP_PAYLOAD_MISMATCH || d->reason == COLO_CMP_CONTROL_MISMATCH)
			ctx->mismatches++;
		if (!ctx->req) {
			ctx->req = true;
			ctx->reason = d->reason;
			ctx->has_key = d->has_key;
			ctx->key = d->key;
		}
		break;
	}
}

/* A record leaves the arrival queue; its skb was disposed of by a decision. */
static void colo_dp_free_held(struct colo_cmp_core *core, struct colo_cmp_held *h)
{
	kmem_cache_free(colo_held_cache, h);
}

/* ---- connection table (under dp->lock) ----------------------------------- */

static u32 colo_dp_hash(const struct colo_dp *dp, const struct colo_cmp_key *k)
{
	return jhash(k, sizeof(*k), dp->seed) & ((1 << COLO_DP_HASH_BITS) - 1);
}

static struct colo_cmp_conn *colo_dp_lookup(struct colo_dp *dp, const struct colo_cmp_key *k)
{
	struct colo_dp_conn *dc;

	hlist_for_each_entry(dc, &dp->table[colo_dp_hash(dp, k)], hnode)
		if (!memcmp(&dc->c.key, k, sizeof(*k)))
			return &dc->c;
	return NULL;
}

/* engine.py new_conn() without eviction (interim: idle connections go at checkpoints). */
static struct colo_cmp_conn *colo_dp_new_conn(struct colo_dp *dp, const struct colo_cmp_pkt *pkt,
					      s64 now)
{
	struct colo_cmp_core *core = &dp->core;
	struct colo_cmp_counters *st = &core->st;
	struct colo_dp_conn *dc;
	bool over;

	over = st->connections_now >= core->cfg.max_connections;
	if (over && st->connections_now >= 2 * (s64)core->cfg.max_connections)
		return NULL;
	dc = kzalloc(sizeof(*dc), GFP_ATOMIC);
	if (!dc)
		return NULL;
	dc->c.key = pkt->key;
	dc->c.epoch = core->epoch;
	dc->c.kind = COLO_CMP_CONN_FIFO;
	hlist_add_head(&dc->hnode, &dp->table[colo_dp_hash(dp, &pkt->key)]);
	st->connections_now++;
	if (over && !core->connection_flag) {
		core->connection_flag = true;
		colo_cmp_request(core, COLO_CMP_CONNECTION_LIMIT, &dc->c, now, NULL, NULL, 0, 0);
	}
	return &dc->c;
}

static void colo_dp_forget_conns(struct colo_dp *dp)
{
	struct colo_dp_conn *dc;
	struct hlist_node *tmp;
	int i;

	for (i = 0; i < ARRAY_SIZE(dp->table); i++)
		hlist_for_each_entry_safe(dc, tmp, &dp->table[i], hnode) {
			hlist_del(&dc->hnode);
			kfree(dc);
		}
	dp->core.st.connections_now = 0;
}

/* ---- one frame into the core (under dp->lock) ------------------------------ */

/* engine.py push() for FIFO and EMPTY frames; every outcome is a decision. */
static void colo_dp_push(struct colo_dp *dp, u8 side, struct sk_buff *skb,
			 const struct colo_cmp_pkt *pkt, u32 len, s64 now)
{
	struct colo_cmp_core *core = &dp->core;
	struct colo_cmp_counters *st = &core->st;
	u64 tag = (unsigned long)skb;
	struct colo_cmp_held *h;
	struct colo_cmp_conn *conn;
	s64 count;

	st->frames[side]++;
	st->bytes[side] += len;
	if (pkt->cls != COLO_CMP_FIFO) {
		st->malformed++;
		colo_cmp_drop(core, side, tag, NULL, COLO_CMP_MALFORMED);
		goto expire;
	}
	conn = colo_dp_lookup(dp, &pkt->key);
	if (!conn)
		conn = colo_dp_new_conn(dp, pkt, now);
	if (pkt->malformed)
		st->malformed++;
	if (!conn) {
		st->overflow++;
		colo_cmp_drop(core, side, tag, NULL, COLO_CMP_OVERFLOW);
		goto expire;
	}
	if (conn->epoch != core->epoch)
		colo_cmp_fifo_rebase(conn, core->epoch);
	count = side ? conn->held_s : conn->held_p;
	if (count >= 2 * (s64)core->cfg.max_queue_per_conn ||
	    st->held_bytes_now + skb->truesize > 2 * (s64)core->cfg.max_held_bytes) {
		st->overflow++;
		colo_cmp_drop(core, side, tag, conn, COLO_CMP_OVERFLOW);
		goto expire;
	}
	h = kmem_cache_zalloc(colo_held_cache, GFP_ATOMIC);
	if (!h) {
		st->overflow++;
		colo_cmp_drop(core, side, tag, conn, COLO_CMP_OVERFLOW);
		goto expire;
	}
	h->side = side;
	h->tag = tag;
	h->size = skb->truesize;	/* held memory, not wire bytes */
	h->head_len = pkt->head_len;
	memcpy(h->head, pkt->head, sizeof(h->head));
	h->body = pkt->body;
	h->body_len = pkt->body_len;
	h->frame = skb;
	if (!colo_cmp_fifo_push(core, conn, h, now))
		kmem_cache_free(colo_held_cache, h);	/* decided at once */
expire:
	colo_cmp_prune(core);
	if (core->arrivals && now - core->arrivals->arrival >= core->cfg.compare_timeout_us)
		colo_cmp_check_timeout(core, now);
}

/* ---- after the lock ------------------------------------------------------ */

static void colo_dp_ctx_init(struct colo_dp_ctx *ctx)
{
	memset(ctx, 0, sizeof(*ctx));
	__skb_queue_head_init(&ctx->drop);
}

static void colo_dp_key_tuple(const struct colo_cmp_key *k, struct colo_tuple *t)
{
	s64 v = k->vlan;
	u16 ids[COLO_TUPLE_MAX_VLANS];
	int n = 0, i;

	memset(t, 0, sizeof(*t));
	if (k->l3 == 4 || k->l3 == 6) {
		t->family = k->l3 == 4 ? AF_INET : AF_INET6;
		t->proto = k->proto;
		t->sport = htons(k->sport);
		t->dport = htons(k->dport);
		t->has = COLO_TUPLE_HAS_PROTO | COLO_TUPLE_HAS_SPORT | COLO_TUPLE_HAS_DPORT |
			 COLO_TUPLE_HAS_SRC | COLO_TUPLE_HAS_DST;
		if (k->l3 == 4) {
			memcpy(&t->src.ip4, k->src, 4);
			memcpy(&t->dst.ip4, k->dst, 4);
		} else {
			memcpy(&t->src.ip6, k->src, 16);
			memcpy(&t->dst.ip6, k->dst, 16);
		}
	}
	/* packed outermost first: outer << 12 | inner */
	while (v >= 0 && n < COLO_TUPLE_MAX_VLANS) {
		ids[n++] = v & 0xfff;
		v >>= 12;
		if (!v)
			break;
	}
	for (i = 0; i < n; i++)
		t->vlans[i] = ids[n - 1 - i];
	t->n_vlans = n;
}

static void colo_dp_finish(struct colo_dp *dp, struct colo_dp_ctx *ctx)
{
	struct colo_node *node = dp->node;
	struct colo_tuple tuple;
	struct sk_buff *skb;
	int err;

	while ((skb = __skb_dequeue(&ctx->drop)))
		kfree_skb(skb);
	if (ctx->released)
		tasklet_schedule(&dp->tasklet);
	if (ctx->matched)
		colo_node_add(node, COLO_PCPU_DP_MATCHED, ctx->matched);
	if (ctx->mismatches)
		colo_node_add(node, COLO_PCPU_DP_MISMATCHES, ctx->mismatches);
	if (ctx->dropped)
		colo_node_add(node, COLO_PCPU_DP_DROPPED, ctx->dropped);
	if (!ctx->req)
		return;
	if (ctx->has_key)
		colo_dp_key_tuple(&ctx->key, &tuple);
	/* colo_cmp_reason + 1 == colo_reason (payload-mismatch .. connection-limit) */
	err = colo_node_request_checkpoint(node, ctx->reason + 1, ctx->has_key ? &tuple : NULL,
					   GFP_ATOMIC);
	if (err) {
		/* Not pending after all: let the next timeout scan ask again. */
		spin_lock_bh(&dp->lock);
		dp->core.pending = false;
		spin_unlock_bh(&dp->lock);
	}
}

/* ---- the hooks ------------------------------------------------------------ */

/*
 * Make @skb ours to hold and read linearly.  Returns the skb to use (a clone if it
 * was shared) or NULL when it was freed.  *@same says it is still the hook's skb.
 */
static struct sk_buff *colo_dp_own(struct sk_buff *skb, bool *same)
{
	struct sk_buff *nskb;

	*same = true;
	if (skb_shared(skb)) {
		nskb = skb_clone(skb, GFP_ATOMIC);
		kfree_skb(skb);		/* our reference, stolen */
		if (!nskb)
			return NULL;
		skb = nskb;
		*same = false;
	}
	/* vhost zero-copy: do not pin guest pages while holding */
	if (skb_orphan_frags_rx(skb, GFP_ATOMIC) || skb_linearize(skb)) {
		kfree_skb(skb);
		return NULL;
	}
	return skb;
}

static bool colo_dp_frame(struct sk_buff *skb, const u8 **frame, u32 *len)
{
	int off;

	if (!skb_mac_header_was_set(skb))
		return false;
	off = skb->data - skb_mac_header(skb);
	if (off < 0 || off > skb_headroom(skb))
		return false;
	*frame = skb_mac_header(skb);
	*len = skb->len + off;
	return true;
}

static bool colo_dp_off(const struct colo_dp *dp)
{
	return READ_ONCE(dp->stopped) || READ_ONCE(dp->node->unlinked);
}

static void colo_dp_queue_release(struct colo_dp *dp, struct sk_buff *skb)
{
	spin_lock(&dp->lock);
	__skb_queue_tail(&dp->rxq, skb);
	spin_unlock(&dp->lock);
	tasklet_schedule(&dp->tasklet);
}

/* PVM output, softirq. */
static unsigned int colo_dp_tap_hook(void *priv, struct sk_buff *skb,
				     const struct nf_hook_state *state)
{
	struct colo_dp *dp = priv;
	struct colo_node *node = dp->node;
	struct colo_cmp_pkt pkt;
	struct colo_dp_ctx ctx;
	const u8 *frame;
	bool same;
	u32 len;

	if (colo_dp_off(dp) || !colo_dp_frame(skb, &frame, &len))
		return NF_ACCEPT;
	skb = colo_dp_own(skb, &same);
	if (!skb) {
		colo_node_count(node, COLO_PCPU_DP_DROPPED);
		return NF_STOLEN;
	}
	colo_dp_frame(skb, &frame, &len);
	colo_cmp_parse(frame, len, 0, &pkt);
	colo_node_count(node, COLO_PCPU_DP_CAPTURED);
	if (pkt.cls == COLO_CMP_CONTROL || pkt.cls == COLO_CMP_TCP) {
		/* ARP, ND, non-IP: straight through; TCP: uncompared (interim) */
		colo_node_count(node, pkt.cls == COLO_CMP_TCP ? COLO_PCPU_DP_UNCOMPARED :
				COLO_PCPU_DP_CONTROL_PASSED);
		if (same)
			return NF_ACCEPT;
		colo_dp_queue_release(dp, skb);
		return NF_STOLEN;
	}
	colo_dp_ctx_init(&ctx);
	spin_lock(&dp->lock);
	if (dp->stopped) {
		spin_unlock(&dp->lock);
		if (same)
			return NF_ACCEPT;
		colo_dp_queue_release(dp, skb);
		return NF_STOLEN;
	}
	dp->ctx = &ctx;
	colo_dp_push(dp, COLO_CMP_PRIMARY, skb, &pkt, len, colo_dp_now());
	dp->ctx = NULL;
	spin_unlock(&dp->lock);
	colo_dp_finish(dp, &ctx);
	return NF_STOLEN;
}

/* SVM output on the forward device, softirq: always consumed. */
static unsigned int colo_dp_fwd_hook(void *priv, struct sk_buff *skb,
				     const struct nf_hook_state *state)
{
	struct colo_dp *dp = priv;
	struct colo_node *node = dp->node;
	struct colo_cmp_pkt pkt;
	struct colo_dp_ctx ctx;
	const u8 *frame;
	bool same;
	u32 len;

	colo_node_count(node, COLO_PCPU_DP_SVM_FRAMES);
	if (colo_dp_off(dp) || !colo_dp_frame(skb, &frame, &len))
		return NF_DROP;
	skb = colo_dp_own(skb, &same);
	if (!skb)
		return NF_STOLEN;
	colo_dp_frame(skb, &frame, &len);
	colo_cmp_parse(frame, len, 0, &pkt);
	if (pkt.cls == COLO_CMP_CONTROL || pkt.cls == COLO_CMP_TCP) {
		consume_skb(skb);	/* the SVM's ARP/ND, and TCP (interim) */
		return NF_STOLEN;
	}
	colo_dp_ctx_init(&ctx);
	spin_lock(&dp->lock);
	if (dp->stopped) {
		spin_unlock(&dp->lock);
		consume_skb(skb);
		return NF_STOLEN;
	}
	dp->ctx = &ctx;
	colo_dp_push(dp, COLO_CMP_SECONDARY, skb, &pkt, len, colo_dp_now());
	dp->ctx = NULL;
	spin_unlock(&dp->lock);
	colo_dp_finish(dp, &ctx);
	return NF_STOLEN;
}

/* ---- release, timer ------------------------------------------------------ */

static void colo_dp_reinject(struct colo_dp *dp, struct sk_buff *skb)
{
	memset(skb->cb, 0, sizeof(skb->cb));
	skb->tc_skip_classify = 1;	/* skips taps, tc and nf ingress once, as ifb */
	netif_receive_skb(skb);
}

/* Softirq: re-inject at most COLO_DP_BUDGET frames, then yield. */
static void colo_dp_tasklet(struct tasklet_struct *t)
{
	struct colo_dp *dp = from_tasklet(dp, t, tasklet);
	struct sk_buff_head q;
	struct sk_buff *skb;
	bool more;
	int n = 0;

	__skb_queue_head_init(&q);
	spin_lock(&dp->lock);
	while (n < COLO_DP_BUDGET && (skb = __skb_dequeue(&dp->rxq))) {
		__skb_queue_tail(&q, skb);
		n++;
	}
	more = !skb_queue_empty(&dp->rxq);
	spin_unlock(&dp->lock);
	while ((skb = __skb_dequeue(&q)))
		colo_dp_reinject(dp, skb);
	if (n)
		colo_node_add(dp->node, COLO_PCPU_DP_RELEASED, n);
	if (more)
		tasklet_schedule(&dp->tasklet);
}

/* Softirq: the oldest held frame past hold-timeout raises a timeout request. */
static void colo_dp_timer(struct timer_list *t)
{
	struct colo_dp *dp = from_timer(dp, t, timer);
	struct colo_dp_ctx ctx;

	colo_dp_ctx_init(&ctx);
	spin_lock(&dp->lock);
	if (dp->stopped) {
		spin_unlock(&dp->lock);
		return;
	}
	dp->ctx = &ctx;
	colo_cmp_check_timeout(&dp->core, colo_dp_now());
	dp->ctx = NULL;
	mod_timer(&dp->timer, jiffies + dp->scan);
	spin_unlock(&dp->lock);
	colo_dp_finish(dp, &ctx);
}

/* ---- checkpoint, stats ---------------------------------------------------- */

/*
 * do-checkpoint (engine.py checkpoint_done()): every held PVM frame is released in
 * arrival order, every held SVM frame dropped, the epoch advances and the
 * connections are forgotten (all idle now, and a new connection equals a rebased
 * one).  Process context.
 */
void colo_dp_checkpoint(struct colo_node *node)
{
	struct colo_cmp_core *core;
	struct colo_cmp_held *h, *next;
	struct colo_dp_ctx ctx;
	struct colo_dp *dp;
	s64 now = colo_dp_now();

	colo_dp_ctx_init(&ctx);
	rcu_read_lock();
	dp = rcu_dereference(node->dp);
	if (!dp)
		goto out;
	core = &dp->core;
	spin_lock_bh(&dp->lock);
	if (dp->stopped) {
		spin_unlock_bh(&dp->lock);
		goto out;
	}
	dp->ctx = &ctx;
	for (h = core->arrivals; h; h = next) {
		next = h->next_arrival;
		if (!h->done) {
			if (h->side) {
				colo_cmp_drop(core, 1, h->tag, h->conn, COLO_CMP_CHECKPOINT);
			} else {
				core->st.released++;
				colo_cmp_release(core, h->tag, h->conn, now - h->arrival);
			}
		}
		core->free_held(core, h);
	}
	core->arrivals = NULL;
	core->arrivals_tail = NULL;
	core->st.held_frames_now = 0;
	core->st.held_bytes_now = 0;
	core->st.checkpoints_done++;
	core->epoch++;
	core->pending = false;
	core->memory_flag = false;
	core->connection_flag = false;
	colo_dp_forget_conns(dp);
	dp->ctx = NULL;
	spin_unlock_bh(&dp->lock);
	local_bh_disable();
	colo_dp_finish(dp, &ctx);
	local_bh_enable();
out:
	rcu_read_unlock();
}

/* The datapath's levels for get/dump and node-gone (0 once detached). */
void colo_dp_fill_stats(struct colo_node *node, struct colo_stats *st)
{
	struct colo_dp *dp;

	rcu_read_lock();
	dp = rcu_dereference(node->dp);
	if (dp) {
		spin_lock_bh(&dp->lock);
		st->dp_held_packets = dp->core.st.held_frames_now;
		st->dp_held_bytes = dp->core.st.held_bytes_now;
		st->dp_connections = dp->core.st.connections_now;
		spin_unlock_bh(&dp->lock);
	}
	rcu_read_unlock();
}

/* ---- attach, detach ------------------------------------------------------- */

static void colo_dp_hook_ops(struct nf_hook_ops *ops, nf_hookfn *fn, struct net_device *dev,
			     struct colo_dp *dp)
{
	ops->hook = fn;
	ops->pf = NFPROTO_NETDEV;
	ops->hooknum = NF_NETDEV_INGRESS;
	ops->priority = INT_MAX;	/* last: netdev hooks after ours are skipped on release */
	ops->dev = dev;
	ops->priv = dp;
}

static struct net_device *colo_dp_dev(struct net *net, u32 ifindex, int attr,
				      struct netlink_ext_ack *extack)
{
	struct net_device *dev = __dev_get_by_index(net, ifindex);
	struct colo_dp *dp;

	if (!dev) {
		if (attr == COLO_A_NODE_TAP_IFINDEX)
			NL_SET_ERR_MSG(extack, "no device with tap-ifindex in this network namespace");
		else
			NL_SET_ERR_MSG(extack, "no device with fwd-ifindex in this network namespace");
		return ERR_PTR(-ENODEV);
	}
	list_for_each_entry(dp, &colo_dp_list, list)
		if (dp->tap == dev || dp->fwd == dev) {
			NL_SET_ERR_MSG(extack, "device already used by another node's datapath");
			return ERR_PTR(-EBUSY);
		}
	return dev;
}

/* proxy-init: give a primary @node its datapath.  Process context. */
int colo_dp_attach(struct colo_node *node, const struct colo_dp_cfg *cfg,
		   struct netlink_ext_ack *extack)
{
	struct net_device *tap, *fwd;
	struct colo_cmp_config *cc;
	struct colo_dp *dp;
	unsigned int scan;
	int err;

	dp = kzalloc(sizeof(*dp), GFP_KERNEL_ACCOUNT);
	if (!dp)
		return -ENOMEM;
	dp->node = node;
	dp->owner_loss = cfg->owner_loss;
	dp->seed = get_random_u32();
	spin_lock_init(&dp->lock);
	__skb_queue_head_init(&dp->rxq);
	tasklet_setup(&dp->tasklet, colo_dp_tasklet);
	timer_setup(&dp->timer, colo_dp_timer, 0);
	cc = &dp->core.cfg;
	cc->compare_timeout_us = (s64)cfg->hold_timeout_ms * USEC_PER_MSEC;
	cc->max_queue_per_conn = cfg->max_held_packets;
	cc->max_held_bytes = cfg->max_held_bytes;
	cc->max_connections = cfg->max_connections;
	dp->core.emit = colo_dp_emit;
	dp->core.free_held = colo_dp_free_held;
	scan = clamp(cfg->hold_timeout_ms / 4, COLO_DP_SCAN_MIN_MS, COLO_DP_SCAN_MAX_MS);
	dp->scan = msecs_to_jiffies(scan);

	rtnl_lock();
	err = -ENOENT;
	if (READ_ONCE(node->unlinked)) {
		NL_SET_ERR_MSG(extack, "node is going away");
		goto unlock;
	}
	tap = colo_dp_dev(node->net, cfg->tap_ifindex, COLO_A_NODE_TAP_IFINDEX, extack);
	if (IS_ERR(tap)) {
		err = PTR_ERR(tap);
		goto unlock;
	}
	fwd = colo_dp_dev(node->net, cfg->fwd_ifindex, COLO_A_NODE_FWD_IFINDEX, extack);
	if (IS_ERR(fwd)) {
		err = PTR_ERR(fwd);
		goto unlock;
	}
	err = -EINVAL;
	if (tap == fwd) {
		NL_SET_ERR_MSG(extack, "tap-ifindex and fwd-ifindex name the same device");
		goto unlock;
	}
	dp->tap = tap;
	dp->fwd = fwd;
	netdev_hold(tap, &dp->tap_tracker, GFP_KERNEL);
	netdev_hold(fwd, &dp->fwd_tracker, GFP_KERNEL);
	colo_dp_hook_ops(&dp->ops[0], colo_dp_tap_hook, tap, dp);
	colo_dp_hook_ops(&dp->ops[1], colo_dp_fwd_hook, fwd, dp);
	err = nf_register_net_hook(node->net, &dp->ops[0]);
	if (err)
		goto put;
	err = nf_register_net_hook(node->net, &dp->ops[1]);
	if (err) {
		nf_unregister_net_hook(node->net, &dp->ops[0]);
		synchronize_net();
		goto put;
	}
	list_add_tail(&dp->list, &colo_dp_list);
	rcu_assign_pointer(node->dp, dp);
	mod_timer(&dp->timer, jiffies + dp->scan);
	rtnl_unlock();
	return 0;

put:
	netdev_put(fwd, &dp->fwd_tracker);
	netdev_put(tap, &dp->tap_tracker);
unlock:
	rtnl_unlock();
	kfree(dp);
	return err;
}

/* Re-inject (or free) @q in budgets from process context. */
static void colo_dp_flush_list(struct colo_dp *dp, struct sk_buff_head *q, bool release)
{
	struct sk_buff *skb;
	int n;

	while (!skb_queue_empty(q)) {
		local_bh_disable();
		for (n = 0; n < COLO_DP_BUDGET && (skb = __skb_dequeue(q)); n++)
			if (release)
				colo_dp_reinject(dp, skb);
			else
				kfree_skb(skb);
		local_bh_enable();
		if (release)
			colo_node_add(dp->node, COLO_PCPU_DP_RELEASED, n);
		cond_resched();
	}
}

/*
 * Node loss: stop comparing, unhook, then every held PVM frame goes out (or is
 * dropped under owner-loss drop) after the frames already released, every held
 * SVM frame is freed, the devices are put and the dp freed.  RTNL, process context.
 */
static void colo_dp_detach(struct colo_dp *dp)
{
	struct colo_node *node = dp->node;
	struct net *net = node->net;
	struct colo_cmp_held *h, *next;
	struct sk_buff_head out, held, drop;
	u64 flushed = 0;

	ASSERT_RTNL();
	spin_lock_bh(&dp->lock);
	dp->stopped = true;
	spin_unlock_bh(&dp->lock);
	list_del(&dp->list);
	nf_unregister_net_hook(net, &dp->ops[1]);
	nf_unregister_net_hook(net, &dp->ops[0]);
	RCU_INIT_POINTER(node->dp, NULL);
	/* No hook, checkpoint or stats reader uses the dp after this. */
	synchronize_net();
	del_timer_sync(&dp->timer);	/* `stopped`: not re-armed */
	tasklet_kill(&dp->tasklet);	/* nothing schedules it any more */

	__skb_queue_head_init(&out);
	__skb_queue_head_init(&held);
	__skb_queue_head_init(&drop);
	spin_lock_bh(&dp->lock);
	skb_queue_splice_tail_init(&dp->rxq, &out);	/* already released: first */
	for (h = dp->core.arrivals; h; h = next) {
		next = h->next_arrival;
		if (!h->done) {
			if (h->side == COLO_CMP_PRIMARY) {
				flushed++;
				__skb_queue_tail(dp->owner_loss == COLO_OWNER_LOSS_DROP ? &drop : &held,
						 tag_skb(h->tag));
			} else {
				__skb_queue_tail(&drop, tag_skb(h->tag));
			}
		}
		kmem_cache_free(colo_held_cache, h);
	}
	dp->core.arrivals = NULL;
	dp->core.arrivals_tail = NULL;
	colo_dp_forget_conns(dp);
	spin_unlock_bh(&dp->lock);

	skb_queue_splice_tail_init(&held, &out);
	colo_dp_flush_list(dp, &out, true);
	colo_dp_flush_list(dp, &drop, false);
	if (flushed)
		colo_node_add(node, COLO_PCPU_DP_FLUSHED, flushed);
	netdev_put(dp->fwd, &dp->fwd_tracker);
	netdev_put(dp->tap, &dp->tap_tracker);
	kfree(dp);
}

/* The node's teardown work (colo_node.c), before node-gone.  Process context. */
void colo_dp_node_gone(struct colo_node *node)
{
	struct colo_dp *dp;

	rtnl_lock();
	dp = rtnl_dereference(node->dp);
	if (dp)
		colo_dp_detach(dp);
	rtnl_unlock();
}

/* NETDEV_DOWN or NETDEV_UNREGISTER of a tap or forward device: the node is lost. */
static int colo_dp_netdev_event(struct notifier_block *nb, unsigned long event, void *ptr)
{
	struct net_device *dev = netdev_notifier_info_to_dev(ptr);
	struct colo_dp *dp, *tmp;
	struct colo_node *node;

	if (event != NETDEV_DOWN && event != NETDEV_UNREGISTER)
		return NOTIFY_DONE;
	list_for_each_entry_safe(dp, tmp, &colo_dp_list, list) {
		if (dp->tap != dev && dp->fwd != dev)
			continue;
		node = dp->node;	/* alive: its teardown needs RTNL to pass */
		colo_dp_detach(dp);
		colo_node_kill(node, COLO_GONE_REASON_DEVICE_GONE);
	}
	return NOTIFY_DONE;
}

static struct notifier_block colo_dp_netdev_notifier = {
	.notifier_call = colo_dp_netdev_event,
};

int colo_dp_init(void)
{
	int err;

	colo_held_cache = KMEM_CACHE(colo_cmp_held, 0);
	if (!colo_held_cache)
		return -ENOMEM;
	err = register_netdevice_notifier(&colo_dp_netdev_notifier);
	if (err)
		kmem_cache_destroy(colo_held_cache);
	return err;
}

/* After every node is gone (colo_store_unload()). */
void colo_dp_exit(void)
{
	unregister_netdevice_notifier(&colo_dp_netdev_notifier);
	kmem_cache_destroy(colo_held_cache);
}
