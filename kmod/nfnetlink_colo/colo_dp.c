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
 * Compare: TCP by stream offset (cmp_tcp.c), everything else FIFO (cmp_fifo.c),
 * with the semantics of colo_proxy/compare/engine.py: the connection table is an
 * rhashtable keyed by the directional key (tuple + VLAN tags, struct colo_cmp_key)
 * with an LRU for idle eviction at max-connections, closed TCP connections retire
 * (kept with their numbering for late frames, at most COLO_DP_RETIRED_MAX per node,
 * in the same table with a flag), and do-checkpoint re-bases the connections that
 * held frames, the others on their next frame (epoch).
 *
 * Interim (docs/architecture.md): one node per tap and per forward device (no
 * demultiplexing by VM MAC or VLAN yet).
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
#include <linux/rhashtable.h>
#include <linux/if_vlan.h>

#include "colo_core.h"
#include "colo_dp.h"
#include "cmp.h"

#define CREATE_TRACE_POINTS
#include "colo_trace.h"

#if !IS_ENABLED(CONFIG_NETFILTER_INGRESS)
#error "nf_colo's datapath needs CONFIG_NETFILTER_INGRESS"
#endif
#if !IS_ENABLED(CONFIG_NET_CLS_ACT) && !IS_ENABLED(CONFIG_NET_XGRESS)
#error "nf_colo's datapath needs skb->tc_skip_classify (CONFIG_NET_CLS_ACT or CONFIG_NET_XGRESS)"
#endif

#define COLO_DP_EVICT_SCAN	16	/* limits.py evict_idle() */
#define COLO_DP_RETIRED_MAX	4096	/* engine.py RETIRED_MAX */
#define COLO_DP_BUDGET		64	/* frames re-injected per tasklet run */
#define COLO_DP_SCAN_MIN_MS	10
#define COLO_DP_SCAN_MAX_MS	100

/*
 * One tracked connection (direction).  In dp->conns from creation until it is
 * evicted, forgotten from the retired list, or the dp goes; on dp->lru while live,
 * on dp->retired while retired (engine.py _retired).  All under dp->lock; the
 * rhashtable's own bucket locks only order its rehash worker against our inserts
 * and removals, and every lookup is made under dp->lock, so an entry removed under
 * it can be freed at once.
 */
struct colo_dp_conn {
	struct rhash_head rnode;
	struct list_head lru;		/* dp->lru, dp->retired, or checkpoint's grave */
	struct colo_dp_conn *touched_next;	/* checkpoint: connections that held frames */
	u32 touched;			/* checkpoint: dp->visit when listed */
	bool retired;
	struct colo_cmp_conn c;
};

static const struct rhashtable_params colo_dp_conn_params = {
	.head_offset = offsetof(struct colo_dp_conn, rnode),
	.key_offset = offsetof(struct colo_dp_conn, c.key),
	.key_len = sizeof(struct colo_cmp_key),
	.automatic_shrinking = true,
};

/* What one locked call decided, acted on after the lock is dropped. */
struct colo_dp_ctx {
	struct sk_buff_head drop;	/* freed after unlock */
	bool released;			/* rxq grew: schedule the tasklet */
	bool req;
	u8 reason;			/* enum colo_cmp_reason */
	bool has_key;
	bool has_div;			/* a difference: div_offset is where */
	struct colo_cmp_key key;
	s64 div_offset;
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
	struct rhashtable conns;	/* struct colo_dp_conn by c.key */
	struct list_head lru;		/* live connections, least recently used first */
	struct list_head retired;	/* retired ones, least recently retired first */
	u32 nretired;
	u32 visit;			/* checkpoint's mark */
	bool deferring;			/* checkpoint: forgotten retired ones go to grave */
	struct list_head grave;
	struct sk_buff_head rxq;	/* released, awaiting the tasklet (__skb_* under lock) */

	struct tasklet_struct tasklet;
	struct timer_list timer;
	unsigned long scan;		/* timer period, jiffies */
};

static LIST_HEAD(colo_dp_list);		/* RTNL */
static struct kmem_cache *colo_held_cache __read_mostly;
static struct kmem_cache *colo_conn_cache __read_mostly;

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
		trace_nf_colo_release(dp->node->index, tag_skb(d->tag)->len, d->time_us);
		__skb_queue_tail(&dp->rxq, tag_skb(d->tag));
		ctx->released = true;
		break;
	case COLO_CMP_DROP:
		__skb_queue_tail(&ctx->drop, tag_skb(d->tag));
		if (d->reason == COLO_CMP_MATCHED && d->side == COLO_CMP_SECONDARY) {
			ctx->matched++;
			trace_nf_colo_match(dp->node->index, d->has_key ? &d->key : NULL,
					    tag_skb(d->tag)->len);
		}
		else if (d->reason == COLO_CMP_OVERFLOW || d->reason == COLO_CMP_MALFORMED)
			ctx->dropped++;
		break;
	case COLO_CMP_REQUEST:
		if (d->reason == COLO_CMP_PAYLOAD_MISMATCH ||
		    d->reason == COLO_CMP_CONTROL_MISMATCH) {
			ctx->mismatches++;
			trace_nf_colo_mismatch(dp->node->index, d->has_key ? &d->key : NULL,
					       d->has_div ? d->div_offset : -1);
		}
		if (!ctx->req) {
			ctx->req = true;
			ctx->reason = d->reason;
			ctx->has_key = d->has_key;
			ctx->key = d->key;
			ctx->has_div = d->has_div;
			ctx->div_offset = d->div_offset;
		}
		break;
	}
}

/* A record leaves the arrival queue; its skb was disposed of by a decision. */
static void colo_dp_free_held(struct colo_cmp_core *core, struct colo_cmp_held *h)
{
	kmem_cache_free(colo_held_cache, h);
}

/* The TCP streams' pending bytes and out-of-order segments: softirq, under dp->lock.
 * NULL makes the connection ask for a checkpoint (colo_cmp_tcp_push()).
 */
static void *colo_dp_alloc(struct colo_cmp_core *core, size_t size)
{
	return kmalloc(size, GFP_ATOMIC | __GFP_NOWARN);
}

static void colo_dp_kfree(struct colo_cmp_core *core, void *p)
{
	kfree(p);
}

/* ---- connection table (under dp->lock) ----------------------------------- */

static struct colo_dp_conn *dconn(struct colo_cmp_conn *c)
{
	return container_of(c, struct colo_dp_conn, c);
}

static struct colo_dp_conn *colo_dp_lookup(struct colo_dp *dp, const struct colo_cmp_key *k)
{
	return rhashtable_lookup_fast(&dp->conns, k, colo_dp_conn_params);
}

static void colo_dp_free_conn(struct colo_dp *dp, struct colo_dp_conn *dc)
{
	if (dc->c.kind == COLO_CMP_CONN_TCP)
		colo_cmp_tcp_free(&dp->core, &dc->c);
	kmem_cache_free(colo_conn_cache, dc);
}

/* Out of the table and its list, then freed (or into the grave). */
static void colo_dp_unlink_conn(struct colo_dp *dp, struct colo_dp_conn *dc)
{
	rhashtable_remove_fast(&dp->conns, &dc->rnode, colo_dp_conn_params);
	list_del(&dc->lru);
}

static bool colo_dp_busy(const struct colo_cmp_conn *c)
{
	return c->held_p || c->held_s || c->diverged;
}

/* limits.py evict_idle(): the least recently used idle connection goes. */
static bool colo_dp_evict_idle(struct colo_dp *dp)
{
	struct colo_cmp_counters *st = &dp->core.st;
	s64 scan = min_t(s64, st->connections_now, COLO_DP_EVICT_SCAN);
	struct colo_dp_conn *dc;
	s64 i;

	for (i = 0; i < scan; i++) {
		dc = list_first_entry(&dp->lru, struct colo_dp_conn, lru);
		if (colo_dp_busy(&dc->c)) {
			list_move_tail(&dc->lru, &dp->lru);
			continue;
		}
		colo_dp_unlink_conn(dp, dc);
		colo_dp_free_conn(dp, dc);
		st->connections_evicted++;
		st->connections_now--;
		return true;
	}
	return false;
}

/*
 * engine.py _new_conn(): @rdc is the retired connection with this key, if any; it
 * comes back with its numbering.  NULL over the hard limit or out of memory.
 */
static struct colo_dp_conn *colo_dp_new_conn(struct colo_dp *dp, const struct colo_cmp_pkt *pkt,
					     struct colo_dp_conn *rdc, s64 now)
{
	struct colo_cmp_core *core = &dp->core;
	struct colo_cmp_counters *st = &core->st;
	struct colo_dp_conn *dc = rdc;
	bool over;

	over = st->connections_now >= core->cfg.max_connections && !colo_dp_evict_idle(dp);
	if (over && st->connections_now >= 2 * (s64)core->cfg.max_connections)
		return NULL;
	if (dc) {
		list_del(&dc->lru);
		dp->nretired--;
		dc->retired = false;
	} else {
		dc = kmem_cache_zalloc(colo_conn_cache, GFP_ATOMIC | __GFP_NOWARN);
		if (!dc)
			return NULL;
		dc->c.key = pkt->key;
		dc->c.epoch = core->epoch;
		dc->c.kind = pkt->cls == COLO_CMP_TCP ? COLO_CMP_CONN_TCP : COLO_CMP_CONN_FIFO;
		if (dc->c.kind == COLO_CMP_CONN_TCP)
			colo_cmp_tcp_init(&dc->c);
		if (rhashtable_insert_fast(&dp->conns, &dc->rnode, colo_dp_conn_params)) {
			kmem_cache_free(colo_conn_cache, dc);
			return NULL;
		}
	}
	list_add_tail(&dc->lru, &dp->lru);
	st->connections_now++;
	if (over && !core->connection_flag) {
		core->connection_flag = true;
		colo_cmp_request(core, COLO_CMP_CONNECTION_LIMIT, &dc->c, now, NULL, NULL, 0, 0);
	}
	return dc;
}

/* engine.py _bury(): onto the retired list, forgetting the least recently retired. */
static void colo_dp_bury(struct colo_dp *dp, struct colo_dp_conn *dc)
{
	struct colo_dp_conn *old;

	if (dc->retired)
		return;
	dc->retired = true;
	list_move_tail(&dc->lru, &dp->retired);
	dp->core.st.connections_now--;
	if (++dp->nretired <= COLO_DP_RETIRED_MAX)
		return;
	old = list_first_entry(&dp->retired, struct colo_dp_conn, lru);
	colo_dp_unlink_conn(dp, old);
	dp->nretired--;
	if (dp->deferring)
		list_add_tail(&old->lru, &dp->grave);	/* checkpoint may still visit it */
	else
		colo_dp_free_conn(dp, old);
}

/* engine.py _retire(): a closed connection retires; with a tracked reverse
 * direction, when that one is closed and idle too (it retires first).
 */
static void colo_dp_retire(struct colo_dp *dp, struct colo_dp_conn *dc)
{
	struct colo_cmp_key rk = dc->c.key;
	struct colo_dp_conn *other;

	rk.sport = dc->c.key.dport;
	rk.dport = dc->c.key.sport;
	memcpy(rk.src, dc->c.key.dst, sizeof(rk.src));
	memcpy(rk.dst, dc->c.key.src, sizeof(rk.dst));
	rk.frag = 0;
	other = colo_dp_lookup(dp, &rk);
	if (other && !other->retired && other != dc) {
		if (!other->c.closed || colo_dp_busy(&other->c))
			return;
		colo_dp_bury(dp, other);
	}
	colo_dp_bury(dp, dc);
}

static void colo_dp_rebase(struct colo_dp *dp, struct colo_cmp_conn *c, u64 epoch)
{
	if (c->kind == COLO_CMP_CONN_TCP)
		colo_cmp_tcp_rebase(&dp->core, c, epoch);
	else
		colo_cmp_fifo_rebase(c, epoch);
}

/* Every connection goes (detach).  The hooks are gone; under dp->lock. */
static void colo_dp_forget_conns(struct colo_dp *dp)
{
	struct colo_dp_conn *dc, *tmp;

	list_for_each_entry_safe(dc, tmp, &dp->lru, lru) {
		colo_dp_unlink_conn(dp, dc);
		colo_dp_free_conn(dp, dc);
	}
	list_for_each_entry_safe(dc, tmp, &dp->retired, lru) {
		colo_dp_unlink_conn(dp, dc);
		colo_dp_free_conn(dp, dc);
	}
	dp->nretired = 0;
	dp->core.st.connections_now = 0;
}

/* ---- one frame into the core (under dp->lock) ------------------------------ */

/* engine.py push() for TCP, FIFO and EMPTY frames; every outcome is a decision. */
static void colo_dp_push(struct colo_dp *dp, u8 side, struct sk_buff *skb,
			 const struct colo_cmp_pkt *pkt, u32 len, s64 now)
{
	struct colo_cmp_core *core = &dp->core;
	struct colo_cmp_counters *st = &core->st;
	u64 tag = (unsigned long)skb;
	struct colo_cmp_held *h;
	struct colo_dp_conn *dc;
	struct colo_cmp_conn *conn;
	bool held;
	s64 count;

	st->frames[side]++;
	st->bytes[side] += len;
	if (pkt->cls != COLO_CMP_FIFO && pkt->cls != COLO_CMP_TCP) {
		st->malformed++;
		colo_cmp_drop(core, side, tag, NULL, COLO_CMP_MALFORMED);
		goto expire;
	}
	dc = colo_dp_lookup(dp, &pkt->key);
	if (!dc || dc->retired)
		dc = colo_dp_new_conn(dp, pkt, dc, now);
	else
		list_move_tail(&dc->lru, &dp->lru);
	if (pkt->cls == COLO_CMP_FIFO && pkt->malformed)
		st->malformed++;
	if (!dc) {
		st->overflow++;
		colo_cmp_drop(core, side, tag, NULL, COLO_CMP_OVERFLOW);
		goto expire;
	}
	conn = &dc->c;
	if (conn->epoch != core->epoch)
		colo_dp_rebase(dp, conn, core->epoch);
	count = side ? conn->held_s : conn->held_p;
	/* the byte limit counts held memory (skb truesize), the engine wire bytes */
	if (count >= 2 * (s64)core->cfg.max_queue_per_conn ||
	    st->held_bytes_now + skb->truesize > 2 * (s64)core->cfg.max_held_bytes) {
		st->overflow++;
		colo_cmp_drop(core, side, tag, conn, COLO_CMP_OVERFLOW);
		goto conn_done;
	}
	h = kmem_cache_zalloc(colo_held_cache, GFP_ATOMIC | __GFP_NOWARN);
	if (!h) {
		st->overflow++;
		colo_cmp_drop(core, side, tag, conn, COLO_CMP_OVERFLOW);
		goto conn_done;
	}
	h->side = side;
	h->tag = tag;
	h->size = skb->truesize;	/* held memory, not wire bytes */
	h->head_len = pkt->head_len;
	memcpy(h->head, pkt->head, sizeof(h->head));
	h->body = pkt->body;
	h->body_len = pkt->body_len;
	h->frame = skb;
	if (pkt->cls == COLO_CMP_TCP)
		held = colo_cmp_tcp_push(core, conn, h, pkt, now);
	else
		held = colo_cmp_fifo_push(core, conn, h, now);
	if (!held)
		kmem_cache_free(colo_held_cache, h);	/* decided at once */
conn_done:
	if (conn->closed && !conn->held_p && !conn->held_s)
		colo_dp_retire(dp, dc);
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
	struct colo_req req = {};
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
	/* colo_cmp_reason + 1 == colo_reason (payload-mismatch .. connection-limit) */
	req.reason = ctx->reason + 1;
	if (ctx->has_key) {
		colo_dp_key_tuple(&ctx->key, &req.tuple);
		req.has_tuple = true;
	}
	if (ctx->has_div && ctx->div_offset >= 0) {
		req.has_offset = true;
		req.offset = (u64)ctx->div_offset;
	}
	err = colo_node_request_checkpoint(node, &req, GFP_ATOMIC);
	if (err) {
		/* Not pending after all: let the next timeout scan ask again. */
		spin_lock_bh(&dp->lock);
		dp->core.pending = false;
		spin_unlock_bh(&dp->lock);
	}
}

/* ---- the hooks ------------------------------------------------------------ */

/*
 * The outer VLAN tag the stack took out of the frame (skb_vlan_untag() in
 * __netif_receive_skb_core(), or the device's rx offload) goes back into it, so that
 * the core keys and compares the frame as the VM sent it, as the engine does.  The skb
 * is then as eth_type_trans() leaves a tagged frame (data at the VLAN header,
 * protocol the TPID): netif_receive_skb() untags it again at release.
 */
static int colo_dp_vlan_inline(struct sk_buff *skb)
{
	int err;

	if (skb->data - skb_mac_header(skb) != ETH_HLEN)
		return -EINVAL;
	skb_push(skb, ETH_HLEN);
	err = __vlan_insert_tag(skb, skb->vlan_proto, skb_vlan_tag_get(skb));
	if (err) {
		skb_pull(skb, ETH_HLEN);
		return err;
	}
	skb->protocol = skb->vlan_proto;
	__vlan_hwaccel_clear_tag(skb);
	skb_pull(skb, ETH_HLEN);
	skb_postpush_rcsum(skb, skb->data, VLAN_HLEN);
	skb_reset_network_header(skb);
	skb->mac_len = ETH_HLEN;
	return 0;
}

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
	if (skb_vlan_tag_present(skb)) {
		if (colo_dp_vlan_inline(skb)) {
			kfree_skb(skb);
			return NULL;
		}
		*same = false;	/* changed: it must go round again, not on */
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
	trace_nf_colo_capture(node->index, len, pkt.cls);
	if (pkt.cls == COLO_CMP_CONTROL) {
		/* ARP, ND, non-IP: straight through */
		colo_node_count(node, COLO_PCPU_DP_CONTROL_PASSED);
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
	if (pkt.cls == COLO_CMP_CONTROL) {
		consume_skb(skb);	/* the SVM's ARP/ND */
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
 * arrival order, every held SVM frame dropped, the epoch advances, and the
 * connections that held frames are re-based now (closed ones retire); the others
 * re-base on their next frame.  Process context.
 */
void colo_dp_checkpoint(struct colo_node *node)
{
	struct colo_dp_conn *first = NULL, *last = NULL, *dc, *tmp;
	struct colo_cmp_core *core;
	struct colo_cmp_held *h, *next;
	struct colo_dp_ctx ctx;
	struct colo_dp *dp;
	s64 now = colo_dp_now();
	u32 released = 0, dropped = 0;

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
	dp->visit++;
	for (h = core->arrivals; h; h = next) {
		next = h->next_arrival;
		if (!h->done) {
			dc = dconn(h->conn);
			if (dc->touched != dp->visit) {
				dc->touched = dp->visit;
				dc->touched_next = NULL;
				if (last)
					last->touched_next = dc;
				else
					first = dc;
				last = dc;
			}
			if (h->side) {
				colo_cmp_drop(core, 1, h->tag, h->conn, COLO_CMP_CHECKPOINT);
				dropped++;
			} else {
				core->st.released++;
				colo_cmp_release(core, h->tag, h->conn, now - h->arrival);
				released++;
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
	dp->deferring = true;
	for (dc = first; dc; dc = dc->touched_next) {
		colo_dp_rebase(dp, &dc->c, core->epoch);
		if (dc->c.closed)
			colo_dp_retire(dp, dc);
	}
	dp->deferring = false;
	list_for_each_entry_safe(dc, tmp, &dp->grave, lru) {
		list_del(&dc->lru);
		colo_dp_free_conn(dp, dc);
	}
	dp->ctx = NULL;
	spin_unlock_bh(&dp->lock);
	local_bh_disable();
	colo_dp_finish(dp, &ctx);
	local_bh_enable();
out:
	rcu_read_unlock();
	trace_nf_colo_checkpoint_done(node->index, released, dropped);
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
	dp->core.alloc = colo_dp_alloc;
	dp->core.free = colo_dp_kfree;
	INIT_LIST_HEAD(&dp->lru);
	INIT_LIST_HEAD(&dp->retired);
	INIT_LIST_HEAD(&dp->grave);
	err = rhashtable_init(&dp->conns, &colo_dp_conn_params);
	if (err) {
		kfree(dp);
		return err;
	}
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
	rhashtable_destroy(&dp->conns);
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
	rhashtable_destroy(&dp->conns);		/* empty; waits for its rehash worker */
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
	colo_conn_cache = KMEM_CACHE(colo_dp_conn, 0);
	if (!colo_conn_cache) {
		kmem_cache_destroy(colo_held_cache);
		return -ENOMEM;
	}
	err = register_netdevice_notifier(&colo_dp_netdev_notifier);
	if (err) {
		kmem_cache_destroy(colo_conn_cache);
		kmem_cache_destroy(colo_held_cache);
	}
	return err;
}

/* After every node is gone (colo_store_unload()). */
void colo_dp_exit(void)
{
	unregister_netdevice_notifier(&colo_dp_netdev_notifier);
	kmem_cache_destroy(colo_conn_cache);
	kmem_cache_destroy(colo_held_cache);
}
