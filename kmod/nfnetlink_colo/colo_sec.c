// SPDX-License-Identifier: GPL-2.0
/*
 * nf_colo: the secondary's datapath (SECCOLO): SVM isolation and TCP sequence
 * translation in nf netdev hooks on the SVM's tap and the forward device.
 * Design and semantics: docs/secondary.md; hooks, locking and references:
 * colo_sec.h; the translation itself: xlate.h.
 *
 * Translated connections: a flow starts at a SYN without ACK in either direction
 * (the client's, seen on its way to the SVM, or the SVM's own) and lives until a
 * checkpoint (all flows are forgotten: the restored SVM is numbered as the PVM),
 * an RST, or both FINs acknowledged.  After failover no flow starts: the kept ones
 * are translated until they close, new connections are not.
 */
#include <linux/etherdevice.h>
#include <linux/if_arp.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/jhash.h>
#include <linux/list.h>
#include <linux/netdevice.h>
#include <linux/netfilter.h>
#include <linux/netfilter_netdev.h>
#include <linux/random.h>
#include <linux/rtnetlink.h>
#include <linux/skbuff.h>
#include <linux/slab.h>
#include <linux/tcp.h>
#include <linux/version.h>
#include <net/checksum.h>
#include <net/ip.h>
#include <net/ipv6.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

#include "colo_core.h"
#include "colo_sec.h"
#include "xlate.h"

#if !IS_ENABLED(CONFIG_NETFILTER_INGRESS) || !IS_ENABLED(CONFIG_NETFILTER_EGRESS)
#error "nf_colo's secondary datapath needs CONFIG_NETFILTER_INGRESS and CONFIG_NETFILTER_EGRESS"
#endif

#define COLO_SEC_HASH_BITS	8
#define COLO_SEC_MAX_HELD	8	/* segments to the SVM held per flow before its SYN */

#define TH_FIN	0x01
#define TH_SYN	0x02
#define TH_RST	0x04
#define TH_ACK	0x10

/* A connection as seen from the SVM: its address and port, then the peer's. */
struct colo_sec_key {
	u32 family;
	__be16 svm_port;
	__be16 peer_port;
	__be32 svm[4];
	__be32 peer[4];
};

struct colo_sec_flow {
	struct hlist_node hnode;
	struct colo_sec_key key;
	struct colo_xlate_flow x;
	struct sk_buff_head held;	/* to the SVM, before its SYN (__skb_* under lock) */
	bool svm_fin, peer_fin;
	bool svm_fin_acked, peer_fin_acked;
	u32 svm_fin_end;		/* after the SVM's FIN, in the PVM's numbering */
	u32 peer_fin_end;		/* after the peer's FIN */
};

struct colo_sec {
	struct list_head list;		/* colo_sec_list, under RTNL */
	struct colo_node *node;		/* not counted (colo_sec.h) */
	struct net_device *tap;
	struct net_device *fwd;
	netdevice_tracker tap_tracker;
	netdevice_tracker fwd_tracker;
	struct nf_hook_ops ops[3];	/* tap ingress, tap egress, fwd ingress */
	u32 seed;
	u32 max_flows;

	spinlock_t lock;		/* everything below (BH-safe) */
	bool stopped;			/* detaching: SVM output dropped */
	bool failed_over;		/* no new flows; SVM output goes on */
	u32 nflows;
	struct hlist_head table[1 << COLO_SEC_HASH_BITS];
};

/* One parsed TCP segment: where its header is (from skb->data) and a copy of it. */
struct colo_sec_pkt {
	struct colo_sec_key key;
	u32 thoff;
	u32 doff;
	u32 plen;		/* TCP payload bytes */
	u8 flags;
	u32 seq;
	u32 ack;
	u8 th[60];
};

static LIST_HEAD(colo_sec_list);	/* RTNL */

/* @a comes before @b in sequence space (mod 2^32). */
static bool seq_before(u32 a, u32 b)
{
	return (s32)(a - b) < 0;
}

/* ---- parsing --------------------------------------------------------------- */

static void colo_sec_set_key(struct colo_sec_pkt *p, u32 family, const void *src,
			     const void *dst, size_t alen, bool from_svm)
{
	const __be16 *ports = (const __be16 *)p->th;

	memset(&p->key, 0, sizeof(p->key));
	p->key.family = family;
	memcpy(p->key.svm, from_svm ? src : dst, alen);
	memcpy(p->key.peer, from_svm ? dst : src, alen);
	p->key.svm_port = from_svm ? ports[0] : ports[1];
	p->key.peer_port = from_svm ? ports[1] : ports[0];
}

/*
 * A TCP segment over IPv4 or IPv6 (no fragment, no VLAN in the payload), its network
 * header at skb_network_offset().  False for anything else: it is not translated.
 */
static bool colo_sec_parse(struct sk_buff *skb, bool from_svm, struct colo_sec_pkt *p)
{
	int nhoff = skb_network_offset(skb);
	u32 end, hl;
	const u8 *th;
	u8 buf[20];

	if (nhoff < 0)
		return false;
	if (skb->protocol == htons(ETH_P_IP)) {
		const struct iphdr *iph;
		struct iphdr _iph;

		iph = skb_header_pointer(skb, nhoff, sizeof(_iph), &_iph);
		if (!iph || iph->version != 4 || iph->ihl < 5 || iph->protocol != IPPROTO_TCP ||
		    (iph->frag_off & htons(IP_MF | IP_OFFSET)))
			return false;
		hl = iph->ihl * 4;
		end = nhoff + ntohs(iph->tot_len);
		if (ntohs(iph->tot_len) < hl || end > skb->len)
			return false;
		p->thoff = nhoff + hl;
		th = skb_header_pointer(skb, p->thoff, sizeof(buf), buf);
		if (!th)
			return false;
		memcpy(p->th, th, 4);	/* the ports, for the key */
		colo_sec_set_key(p, AF_INET, &iph->saddr, &iph->daddr, 4, from_svm);
	} else if (skb->protocol == htons(ETH_P_IPV6)) {
		const struct ipv6hdr *ip6h;
		struct ipv6hdr _ip6h;
		__be16 frag_off = 0;
		u8 nexthdr;
		int off;

		ip6h = skb_header_pointer(skb, nhoff, sizeof(_ip6h), &_ip6h);
		if (!ip6h || ip6h->version != 6 || !ip6h->payload_len)
			return false;
		end = nhoff + sizeof(*ip6h) + ntohs(ip6h->payload_len);
		if (end > skb->len)
			return false;
		nexthdr = ip6h->nexthdr;
		off = ipv6_skip_exthdr(skb, nhoff + sizeof(*ip6h), &nexthdr, &frag_off);
		if (off < 0 || nexthdr != IPPROTO_TCP || frag_off)
			return false;
		p->thoff = off;
		th = skb_header_pointer(skb, p->thoff, sizeof(buf), buf);
		if (!th)
			return false;
		memcpy(p->th, th, 4);
		colo_sec_set_key(p, AF_INET6, &ip6h->saddr, &ip6h->daddr, 16, from_svm);
	} else {
		return false;
	}
	if (p->thoff + 20 > end)
		return false;
	p->doff = (u32)(th[12] >> 4) << 2;
	if (p->doff < 20 || p->thoff + p->doff > end)
		return false;
	if (skb_copy_bits(skb, p->thoff, p->th, p->doff))
		return false;
	p->plen = end - p->thoff - p->doff;
	p->flags = p->th[13];
	p->seq = get_unaligned_be32(p->th + 4);
	p->ack = get_unaligned_be32(p->th + 8);
	return true;
}

/* Write the edits into the segment; checksums stay right for every ip_summed. */
static int colo_sec_apply(struct sk_buff *skb, const struct colo_sec_pkt *p,
			  const struct colo_xlate_edit *edits, unsigned int n)
{
	struct tcphdr *th;
	unsigned int i;

	/* Taps may have cloned it: private, writable header first. */
	if (skb_ensure_writable(skb, p->thoff + p->doff))
		return -ENOMEM;
	th = (struct tcphdr *)(skb->data + p->thoff);
	for (i = 0; i < n; i++) {
		u8 *field = (u8 *)th + edits[i].off;
		__be32 from = cpu_to_be32(edits[i].from), to = cpu_to_be32(edits[i].to);

		put_unaligned(to, (__be32 *)field);
		/* not a pseudo-header field: right for CHECKSUM_PARTIAL and _COMPLETE */
		inet_proto_csum_replace4(&th->check, skb, from, to, false);
	}
	return 0;
}

/* ---- flow table (under sec->lock) --------------------------------------------- */

static u32 colo_sec_hash(const struct colo_sec *sec, const struct colo_sec_key *k)
{
	return jhash2((const u32 *)k, sizeof(*k) / sizeof(u32), sec->seed) &
	       ((1 << COLO_SEC_HASH_BITS) - 1);
}

static struct colo_sec_flow *colo_sec_lookup(struct colo_sec *sec, const struct colo_sec_key *k)
{
	struct colo_sec_flow *f;

	hlist_for_each_entry(f, &sec->table[colo_sec_hash(sec, k)], hnode)
		if (!memcmp(&f->key, k, sizeof(*k)))
			return f;
	return NULL;
}

/* Unlink @f; its held skbs go to @free (freed after unlock). */
static void colo_sec_forget(struct colo_sec *sec, struct colo_sec_flow *f,
			    struct sk_buff_head *free)
{
	hlist_del(&f->hnode);
	skb_queue_splice_tail_init(&f->held, free);
	kfree(f);
	sec->nflows--;
}

static void colo_sec_forget_all(struct colo_sec *sec, struct sk_buff_head *free)
{
	struct colo_sec_flow *f;
	struct hlist_node *tmp;
	int i;

	for (i = 0; i < ARRAY_SIZE(sec->table); i++)
		hlist_for_each_entry_safe(f, tmp, &sec->table[i], hnode)
			colo_sec_forget(sec, f, free);
}

/*
 * A SYN without ACK: a new connection (or the retransmitted SYN of one whose offset
 * is not known yet, which keeps its flow).  Returns the flow to translate with, or
 * NULL (after failover, at the cap, or out of memory: not translated).
 */
static struct colo_sec_flow *colo_sec_syn(struct colo_sec *sec, struct colo_sec_flow *f,
					  const struct colo_sec_pkt *p, struct sk_buff_head *free,
					  bool *overflow)
{
	if (f && !f->x.active)
		return f;
	if (f)
		colo_sec_forget(sec, f, free);	/* the tuple is reused */
	if (sec->failed_over)
		return NULL;			/* new connections are not translated */
	if (sec->nflows >= sec->max_flows) {
		*overflow = true;
		return NULL;
	}
	f = kzalloc(sizeof(*f), GFP_ATOMIC);
	if (!f) {
		*overflow = true;
		return NULL;
	}
	f->key = p->key;
	__skb_queue_head_init(&f->held);
	hlist_add_head(&f->hnode, &sec->table[colo_sec_hash(sec, &p->key)]);
	sec->nflows++;
	return f;
}

/* ---- what one locked call decided -------------------------------------------- */

struct colo_sec_ctx {
	struct sk_buff_head free;	/* freed after unlock */
	struct sk_buff_head resend;	/* held segments to send to the SVM again */
	struct colo_xlate_edit edits[COLO_XLATE_MAX_EDITS];
	unsigned int nedits;
	bool overflow;
};

static void colo_sec_ctx_init(struct colo_sec_ctx *ctx)
{
	__skb_queue_head_init(&ctx->free);
	__skb_queue_head_init(&ctx->resend);
	ctx->nedits = 0;
	ctx->overflow = false;
}

static void colo_sec_ctx_finish(struct colo_sec *sec, struct colo_sec_ctx *ctx)
{
	struct sk_buff *skb;
	u32 n = 0;

	while ((skb = __skb_dequeue(&ctx->free))) {
		kfree_skb(skb);
		n++;
	}
	if (n || ctx->overflow)
		colo_node_add(sec->node, COLO_PCPU_SEC_DROPPED, n + ctx->overflow);
	/* With BH off (the hooks): dev_queue_xmit() runs the tap's egress hook again. */
	while ((skb = __skb_dequeue(&ctx->resend)))
		dev_queue_xmit(skb);
}

/* Both FINs acknowledged or an RST: the connection is over. */
static bool colo_sec_closed(const struct colo_sec_flow *f, const struct colo_sec_pkt *p)
{
	return (p->flags & TH_RST) || (f->svm_fin_acked && f->peer_fin_acked);
}

/* The SVM's segment @p: seq edits into ctx.  Under sec->lock. */
static void colo_sec_out_locked(struct colo_sec *sec, const struct colo_sec_pkt *p,
				struct colo_sec_ctx *ctx)
{
	struct colo_sec_flow *f = colo_sec_lookup(sec, &p->key);
	bool had_sec;
	u32 seq;

	if ((p->flags & (TH_SYN | TH_ACK)) == TH_SYN)
		f = colo_sec_syn(sec, f, p, &ctx->free, &ctx->overflow);
	if (!f)
		return;
	had_sec = f->x.have_sec;
	colo_xlate_from_svm(&f->x, p->th, p->doff, ctx->edits, &ctx->nedits);
	if (!had_sec && f->x.have_sec)
		skb_queue_splice_tail_init(&f->held, &ctx->resend);
	seq = f->x.active ? p->seq + f->x.offset : p->seq;
	if (p->flags & TH_FIN) {
		f->svm_fin = true;
		f->svm_fin_end = seq + p->plen + 1;
	}
	if ((p->flags & TH_ACK) && f->peer_fin && !seq_before(p->ack, f->peer_fin_end))
		f->peer_fin_acked = true;
	if (colo_sec_closed(f, p))
		colo_sec_forget(sec, f, &ctx->free);
}

/*
 * A segment to the SVM: ack and SACK edits into ctx.  Returns true if it was held
 * (the skb now belongs to the flow).  Under sec->lock.
 */
static bool colo_sec_in_locked(struct colo_sec *sec, struct sk_buff *skb,
			       const struct colo_sec_pkt *p, struct colo_sec_ctx *ctx)
{
	struct colo_sec_flow *f = colo_sec_lookup(sec, &p->key);
	int verdict;

	if ((p->flags & (TH_SYN | TH_ACK)) == TH_SYN)
		f = colo_sec_syn(sec, f, p, &ctx->free, &ctx->overflow);
	if (!f)
		return false;
	verdict = colo_xlate_to_svm(&f->x, p->th, p->doff, ctx->edits, &ctx->nedits);
	if (verdict == COLO_XLATE_HOLD) {
		if (skb_queue_len(&f->held) >= COLO_SEC_MAX_HELD) {
			ctx->overflow = true;
			__skb_queue_tail(&ctx->free, skb);	/* the client retransmits */
			return true;
		}
		__skb_queue_tail(&f->held, skb);
		return true;
	}
	if (p->flags & TH_FIN) {
		f->peer_fin = true;
		f->peer_fin_end = p->seq + p->plen + 1;
	}
	/* the peer acknowledges in the PVM's numbering, as svm_fin_end is */
	if ((p->flags & TH_ACK) && f->svm_fin && !seq_before(p->ack, f->svm_fin_end))
		f->svm_fin_acked = true;
	if (colo_sec_closed(f, p))
		colo_sec_forget(sec, f, &ctx->free);
	return false;
}

/* ---- the hooks ------------------------------------------------------------------ */

static bool colo_sec_off(const struct colo_sec *sec)
{
	return READ_ONCE(sec->stopped) || READ_ONCE(sec->node->unlinked);
}

/* Our own skb to edit and send on: a clone if it was shared; NULL if freed. */
static struct sk_buff *colo_sec_own(struct sk_buff *skb)
{
	struct sk_buff *nskb;

	if (!skb_shared(skb))
		return skb;
	nskb = skb_clone(skb, GFP_ATOMIC);
	kfree_skb(skb);		/* our reference, stolen */
	return nskb;
}

/* Send a frame received on one of our devices out of @dev (as nft fwd does). */
static void colo_sec_redirect(struct sk_buff *skb, struct net_device *dev)
{
	skb_push_rcsum(skb, skb->data - skb_mac_header(skb));
	skb->dev = dev;
	skb_clear_tstamp(skb);
	dev_queue_xmit(skb);
}

static bool colo_sec_mac_ok(const struct sk_buff *skb)
{
	int off;

	if (!skb_mac_header_was_set(skb))
		return false;
	off = skb->data - skb_mac_header(skb);
	return off >= 0 && off <= skb_headroom(skb);
}

/* Translate the SVM's segment in @skb (ours); false if it must be dropped. */
static bool colo_sec_translate_out(struct colo_sec *sec, struct sk_buff *skb)
{
	struct colo_sec_pkt p;
	struct colo_sec_ctx ctx;
	bool ok = true;

	if (!colo_sec_parse(skb, true, &p))
		return true;
	colo_sec_ctx_init(&ctx);
	spin_lock(&sec->lock);
	colo_sec_out_locked(sec, &p, &ctx);
	spin_unlock(&sec->lock);
	if (ctx.nedits) {
		ok = !colo_sec_apply(skb, &p, ctx.edits, ctx.nedits);
		colo_node_count(sec->node, ok ? COLO_PCPU_SEC_TRANSLATED_OUT :
				COLO_PCPU_SEC_DROPPED);
	}
	colo_sec_ctx_finish(sec, &ctx);
	return ok;
}

/* The SVM's output, softirq.  Until failover: to the forward link and nowhere else. */
static unsigned int colo_sec_tap_in(void *priv, struct sk_buff *skb,
				    const struct nf_hook_state *state)
{
	struct colo_sec *sec = priv;
	struct colo_node *node = sec->node;

	colo_node_count(node, COLO_PCPU_SEC_SVM_FRAMES);
	if (colo_sec_off(sec) || !colo_sec_mac_ok(skb))
		goto drop;
	if (READ_ONCE(sec->failed_over)) {
		/* The service VM now: translated for the kept connections, then on. */
		if (skb_shared(skb))
			goto drop;	/* cannot edit in place; TCP retransmits */
		return colo_sec_translate_out(sec, skb) ? NF_ACCEPT : NF_DROP;
	}
	skb = colo_sec_own(skb);
	if (!skb) {
		colo_node_count(node, COLO_PCPU_SEC_DROPPED);
		return NF_STOLEN;
	}
	if (!colo_sec_translate_out(sec, skb)) {
		kfree_skb(skb);
		return NF_STOLEN;
	}
	colo_sec_redirect(skb, sec->fwd);
	return NF_STOLEN;

drop:
	colo_node_count(node, COLO_PCPU_SEC_DROPPED);
	return NF_DROP;
}

/* The primary's mirrored inbound frames, softirq: to the SVM until failover. */
static unsigned int colo_sec_fwd_in(void *priv, struct sk_buff *skb,
				    const struct nf_hook_state *state)
{
	struct colo_sec *sec = priv;
	struct colo_node *node = sec->node;

	colo_node_count(node, COLO_PCPU_SEC_FWD_FRAMES);
	if (colo_sec_off(sec) || READ_ONCE(sec->failed_over) || !colo_sec_mac_ok(skb)) {
		colo_node_count(node, COLO_PCPU_SEC_DROPPED);
		return NF_DROP;
	}
	skb = colo_sec_own(skb);
	if (!skb) {
		colo_node_count(node, COLO_PCPU_SEC_DROPPED);
		return NF_STOLEN;
	}
	colo_sec_redirect(skb, sec->tap);	/* the tap's egress hook translates */
	return NF_STOLEN;
}

/* Every frame to the SVM, BH disabled (__dev_queue_xmit): ack and SACK translated. */
static unsigned int colo_sec_tap_out(void *priv, struct sk_buff *skb,
				     const struct nf_hook_state *state)
{
	struct colo_sec *sec = priv;
	struct colo_sec_pkt p;
	struct colo_sec_ctx ctx;
	bool held, ok = true;

	if (colo_sec_off(sec) || !colo_sec_parse(skb, false, &p))
		return NF_ACCEPT;
	colo_sec_ctx_init(&ctx);
	spin_lock(&sec->lock);
	held = colo_sec_in_locked(sec, skb, &p, &ctx);
	spin_unlock(&sec->lock);
	if (held && !ctx.overflow)
		colo_node_count(sec->node, COLO_PCPU_SEC_HELD);
	else if (ctx.nedits) {
		ok = !skb_shared(skb) && !colo_sec_apply(skb, &p, ctx.edits, ctx.nedits);
		colo_node_count(sec->node, ok ? COLO_PCPU_SEC_TRANSLATED_IN :
				COLO_PCPU_SEC_DROPPED);
	}
	colo_sec_ctx_finish(sec, &ctx);
	if (held)
		return NF_STOLEN;
	return ok ? NF_ACCEPT : NF_DROP;
}

/* ---- checkpoint, failover, stats ----------------------------------------------- */

/* do-checkpoint: every translation is forgotten.  Process context. */
void colo_sec_checkpoint(struct colo_node *node)
{
	struct sk_buff_head free;
	struct colo_sec *sec;
	struct sk_buff *skb;

	__skb_queue_head_init(&free);
	rcu_read_lock();
	sec = rcu_dereference(node->sec);
	if (sec) {
		spin_lock_bh(&sec->lock);
		if (!sec->stopped)
			colo_sec_forget_all(sec, &free);
		spin_unlock_bh(&sec->lock);
	}
	rcu_read_unlock();
	/* Held segments predate the checkpoint: the client sends them again. */
	while ((skb = __skb_dequeue(&free)))
		kfree_skb(skb);
}

/* do-failover: the SVM's output goes on; no new translations.  Process context. */
void colo_sec_failover(struct colo_node *node)
{
	struct colo_sec *sec;

	rcu_read_lock();
	sec = rcu_dereference(node->sec);
	if (sec) {
		spin_lock_bh(&sec->lock);
		WRITE_ONCE(sec->failed_over, true);
		spin_unlock_bh(&sec->lock);
	}
	rcu_read_unlock();
}

void colo_sec_fill_stats(struct colo_node *node, struct colo_stats *st)
{
	struct colo_sec *sec;

	rcu_read_lock();
	sec = rcu_dereference(node->sec);
	if (sec) {
		spin_lock_bh(&sec->lock);
		st->sec_flows = sec->nflows;
		spin_unlock_bh(&sec->lock);
	}
	rcu_read_unlock();
}

/* ---- attach, detach -------------------------------------------------------------- */

static void colo_sec_hook_ops(struct nf_hook_ops *ops, nf_hookfn *fn, int hooknum,
			      struct net_device *dev, struct colo_sec *sec)
{
	ops->hook = fn;
	ops->pf = NFPROTO_NETDEV;
	ops->hooknum = hooknum;
	/* Ingress: first, so no later netdev hook sees the SVM's frames before us.
	 * Egress: last, so the frame is translated as it leaves.
	 */
	ops->priority = hooknum == NF_NETDEV_INGRESS ? INT_MIN : INT_MAX;
	ops->dev = dev;
	ops->priv = sec;
}

static struct net_device *colo_sec_dev(struct net *net, u32 ifindex, int attr,
				       struct netlink_ext_ack *extack)
{
	struct net_device *dev = __dev_get_by_index(net, ifindex);
	struct colo_sec *sec;

	if (!dev) {
		if (attr == COLO_A_NODE_TAP_IFINDEX)
			NL_SET_ERR_MSG(extack, "no device with tap-ifindex in this network namespace");
		else
			NL_SET_ERR_MSG(extack, "no device with fwd-ifindex in this network namespace");
		return ERR_PTR(-ENODEV);
	}
	if (dev->type != ARPHRD_ETHER) {
		NL_SET_ERR_MSG(extack, "the secondary datapath needs Ethernet devices");
		return ERR_PTR(-EINVAL);
	}
	list_for_each_entry(sec, &colo_sec_list, list)
		if (sec->tap == dev || sec->fwd == dev) {
			NL_SET_ERR_MSG(extack, "device already used by another node's datapath");
			return ERR_PTR(-EBUSY);
		}
	return dev;
}

/* proxy-init: give a secondary @node its datapath.  Process context. */
int colo_sec_attach(struct colo_node *node, const struct colo_sec_cfg *cfg,
		    struct netlink_ext_ack *extack)
{
	struct net_device *tap, *fwd;
	struct colo_sec *sec;
	int err, i;

	sec = kzalloc(sizeof(*sec), GFP_KERNEL_ACCOUNT);
	if (!sec)
		return -ENOMEM;
	sec->node = node;
	sec->seed = get_random_u32();
	sec->max_flows = cfg->max_connections;
	spin_lock_init(&sec->lock);

	rtnl_lock();
	err = -ENOENT;
	if (READ_ONCE(node->unlinked)) {
		NL_SET_ERR_MSG(extack, "node is going away");
		goto unlock;
	}
	tap = colo_sec_dev(node->net, cfg->tap_ifindex, COLO_A_NODE_TAP_IFINDEX, extack);
	if (IS_ERR(tap)) {
		err = PTR_ERR(tap);
		goto unlock;
	}
	fwd = colo_sec_dev(node->net, cfg->fwd_ifindex, COLO_A_NODE_FWD_IFINDEX, extack);
	if (IS_ERR(fwd)) {
		err = PTR_ERR(fwd);
		goto unlock;
	}
	err = -EINVAL;
	if (tap == fwd) {
		NL_SET_ERR_MSG(extack, "tap-ifindex and fwd-ifindex name the same device");
		goto unlock;
	}
	sec->tap = tap;
	sec->fwd = fwd;
	netdev_hold(tap, &sec->tap_tracker, GFP_KERNEL);
	netdev_hold(fwd, &sec->fwd_tracker, GFP_KERNEL);
	colo_sec_hook_ops(&sec->ops[0], colo_sec_tap_in, NF_NETDEV_INGRESS, tap, sec);
	colo_sec_hook_ops(&sec->ops[1], colo_sec_tap_out, NF_NETDEV_EGRESS, tap, sec);
	colo_sec_hook_ops(&sec->ops[2], colo_sec_fwd_in, NF_NETDEV_INGRESS, fwd, sec);
	for (i = 0; i < ARRAY_SIZE(sec->ops); i++) {
		err = nf_register_net_hook(node->net, &sec->ops[i]);
		if (err) {
			while (--i >= 0)
				nf_unregister_net_hook(node->net, &sec->ops[i]);
			synchronize_net();
			goto put;
		}
	}
	list_add_tail(&sec->list, &colo_sec_list);
	rcu_assign_pointer(node->sec, sec);
	rtnl_unlock();
	return 0;

put:
	netdev_put(fwd, &sec->fwd_tracker);
	netdev_put(tap, &sec->tap_tracker);
unlock:
	rtnl_unlock();
	kfree(sec);
	return err;
}

/* Node loss: unhook, forget every flow, put the devices.  RTNL, process context. */
static void colo_sec_detach(struct colo_sec *sec)
{
	struct colo_node *node = sec->node;
	struct sk_buff_head free;
	struct sk_buff *skb;
	int i;

	ASSERT_RTNL();
	spin_lock_bh(&sec->lock);
	sec->stopped = true;
	spin_unlock_bh(&sec->lock);
	list_del(&sec->list);
	for (i = ARRAY_SIZE(sec->ops) - 1; i >= 0; i--)
		nf_unregister_net_hook(node->net, &sec->ops[i]);
	RCU_INIT_POINTER(node->sec, NULL);
	/* No hook, checkpoint or stats reader uses the sec after this. */
	synchronize_net();

	__skb_queue_head_init(&free);
	spin_lock_bh(&sec->lock);
	colo_sec_forget_all(sec, &free);
	spin_unlock_bh(&sec->lock);
	while ((skb = __skb_dequeue(&free)))
		kfree_skb(skb);
	netdev_put(sec->fwd, &sec->fwd_tracker);
	netdev_put(sec->tap, &sec->tap_tracker);
	kfree(sec);
}

/* The node's teardown work (colo_node.c), before node-gone.  Process context. */
void colo_sec_node_gone(struct colo_node *node)
{
	struct colo_sec *sec;

	rtnl_lock();
	sec = rtnl_dereference(node->sec);
	if (sec)
		colo_sec_detach(sec);
	rtnl_unlock();
}

/* NETDEV_DOWN or NETDEV_UNREGISTER of a tap or forward device: the node is lost. */
static int colo_sec_netdev_event(struct notifier_block *nb, unsigned long event, void *ptr)
{
	struct net_device *dev = netdev_notifier_info_to_dev(ptr);
	struct colo_sec *sec, *tmp;
	struct colo_node *node;

	if (event != NETDEV_DOWN && event != NETDEV_UNREGISTER)
		return NOTIFY_DONE;
	list_for_each_entry_safe(sec, tmp, &colo_sec_list, list) {
		if (sec->tap != dev && sec->fwd != dev)
			continue;
		node = sec->node;	/* alive: its teardown needs RTNL to pass */
		colo_sec_detach(sec);
		colo_node_kill(node, COLO_GONE_REASON_DEVICE_GONE);
	}
	return NOTIFY_DONE;
}

static struct notifier_block colo_sec_netdev_notifier = {
	.notifier_call = colo_sec_netdev_event,
};

int colo_sec_init(void)
{
	return register_netdevice_notifier(&colo_sec_netdev_notifier);
}

/* After every node is gone (colo_store_unload()). */
void colo_sec_exit(void)
{
	unregister_netdevice_notifier(&colo_sec_netdev_notifier);
}
