// SPDX-License-Identifier: GPL-2.0
/*
 * TCP stream comparison (colo_proxy/compare/tcp.py; docs/compare.md, "TCP"), a
 * line-by-line port: each side's sequence numbers map to stream offsets through an
 * anchor (seq, offset); bytes beyond the verified offset v wait in the side's
 * pending stream (a copy, see struct colo_cmp_stream) and out-of-order segments; a
 * primary frame is released, in the primary's order, once its bytes and control
 * flags are verified and its ack does not run ahead of the secondary's.
 *
 * The fast paths of tcp.py are ported too, in the same places, so that both
 * implementations take the same branches.  No recursion, no VLA; memory is bounded
 * by the held frames (every pending or out-of-order byte belongs to a held frame).
 */
#include "cmp.h"

#define FIN	0x01
#define SYN	0x02
#define RST	0x04
#define ACK	0x10
#define CTL	(SYN | FIN | RST)
#define HALF	0x80000000u
#define GUESS	(-2)
#define REANCHOR_WINDOW	((s64)16 << 20)
#define AHEAD_WINDOW	((s64)1 << 20)
#define EVIDENCE	16
#define PEND_MAX	0x40000000u	/* one side's pending bytes (far above any limit) */

/* a - b in 32-bit serial-number arithmetic, signed. */
static inline s64 sdiff(s64 a, s64 b)
{
	return (s32)((u32)a - (u32)b);
}

/* ((a - b + HALF) & MASK): the ack gate compares this with HALF. */
static inline u32 udiff(s64 a, s64 b)
{
	return (u32)a - (u32)b + HALF;
}

static inline s64 max64(s64 a, s64 b)
{
	return a > b ? a : b;
}

/* ---- pending streams ------------------------------------------------------------ */

static inline u32 plen(const struct colo_cmp_stream *st)
{
	return st->b ? st->b->len : 0;
}

static inline const u8 *pdata(const struct colo_cmp_stream *st)
{
	return st->b ? st->b->data + st->b->start : NULL;
}

static void pend_clear(struct colo_cmp_core *core, struct colo_cmp_stream *st)
{
	if (st->b)
		core->free(core, st->b);
	st->b = NULL;
}

/* Append n bytes; false when the buffer cannot grow (nothing changed then). */
static bool pend_append(struct colo_cmp_core *core, struct colo_cmp_stream *st,
			const u8 *data, u32 n)
{
	struct colo_cmp_pbuf *b = st->b, *grown;
	u32 len = plen(st), cap;

	if (!n)
		return true;
	if (n > PEND_MAX || len > PEND_MAX - n)
		return false;
	if (!b || b->start + len + n > b->cap) {
		if (b && len + n <= b->cap) {
			memmove(b->data, b->data + b->start, len);
		} else {
			cap = b ? b->cap : 256;
			while (cap < len + n)
				cap = cap > PEND_MAX / 2 ? PEND_MAX : 2 * cap;
			grown = core->alloc(core, sizeof(*grown) + cap);
			if (!grown)
				return false;
			grown->cap = cap;
			grown->len = len;
			if (len)
				memcpy(grown->data, b->data + b->start, len);
			if (b)
				core->free(core, b);
			st->b = b = grown;
		}
		b->start = 0;
	}
	memcpy(b->data + b->start + len, data, n);
	b->len += n;
	return true;
}

static void pend_consume(struct colo_cmp_core *core, struct colo_cmp_stream *st, u32 n)
{
	if (!n)
		return;
	st->b->start += n;
	st->b->len -= n;
	if (!st->b->len)
		pend_clear(core, st);
}

static void ooo_clear(struct colo_cmp_core *core, struct colo_cmp_stream *st)
{
	struct colo_cmp_seg *g;

	while ((g = st->ooo)) {
		st->ooo = g->next;
		core->free(core, g);
	}
}

/* ooo[off] = payload unless a segment at off is at least as long. */
static bool ooo_put(struct colo_cmp_core *core, struct colo_cmp_stream *st, s64 off,
		    const u8 *data, u32 n)
{
	struct colo_cmp_seg **pp = &st->ooo, *g;

	while (*pp && (*pp)->off < off)
		pp = &(*pp)->next;
	if (*pp && (*pp)->off == off && (*pp)->len >= n)
		return true;
	g = core->alloc(core, sizeof(*g) + n);
	if (!g)
		return false;
	g->off = off;
	g->len = n;
	memcpy(g->data, data, n);
	if (*pp && (*pp)->off == off) {
		g->next = (*pp)->next;
		core->free(core, *pp);
	} else {
		g->next = *pp;
	}
	*pp = g;
	return true;
}

/* tcp.py _merge: append out-of-order segments that now touch the contiguous data. */
static bool merge(struct colo_cmp_core *core, s64 v, struct colo_cmp_stream *st)
{
	s64 end = v + plen(st), stop;
	struct colo_cmp_seg *g;
	bool ok = true;

	while ((g = st->ooo) && g->off <= end) {
		stop = g->off + g->len;
		if (stop > end && ok) {
			ok = pend_append(core, st, g->data + (end - g->off), (u32)(stop - end));
			end = stop;
		}
		st->ooo = g->next;
		core->free(core, g);
	}
	return ok;
}

/* ---- state -------------------------------------------------------------------------- */

static void fresh(struct colo_cmp_core *core, struct colo_cmp_conn *conn)
{
	struct colo_cmp_tcp *t = &conn->tcp;

	if (core) {
		pend_clear(core, &t->p);
		pend_clear(core, &t->s);
		ooo_clear(core, &t->p);
		ooo_clear(core, &t->s);
	}
	memset(t, 0, sizeof(*t));
	t->p_aseq = t->s_aseq = -1;
	t->p_next = t->s_next = COLO_CMP_NO_DATA;
	t->p_max_ack = t->s_max_ack = -1;
	t->p_fin = t->s_fin = COLO_CMP_NONE;
	t->s_isn = -1;
	conn->closed = false;
}

void colo_cmp_tcp_init(struct colo_cmp_conn *conn)
{
	fresh(NULL, conn);
}

void colo_cmp_tcp_free(struct colo_cmp_core *core, struct colo_cmp_conn *conn)
{
	struct colo_cmp_tcp *t = &conn->tcp;

	pend_clear(core, &t->p);
	pend_clear(core, &t->s);
	ooo_clear(core, &t->p);
	ooo_clear(core, &t->s);
}

static bool busy(const struct colo_cmp_conn *c)
{
	return c->held_p || c->held_s || c->diverged;
}

void colo_cmp_tcp_rebase(struct colo_cmp_core *core, struct colo_cmp_conn *conn, u64 epoch)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	s64 p_end;

	conn->epoch = epoch;
	conn->diverged = false;
	conn->queue_flag = false;
	conn->held_p = 0;
	conn->held_s = 0;
	conn->q[0].first = conn->q[0].last = NULL;
	conn->q[1].first = conn->q[1].last = NULL;
	if (t->p_aseq < 0) {
		fresh(core, conn);
		return;
	}
	/* The secondary's numbering so far, if it is not the primary's: a secondary that
	 * was not restored goes on in it.
	 */
	t->s_old = false;
	if (t->s_guess) {
		t->s_old = true;
		t->s_old_seq = t->s_guess_seq;
		t->s_old_off = -1;
	} else if (t->s_aseq >= 0) {
		t->s_old = true;
		t->s_old_seq = t->s_aseq;
		t->s_old_off = t->s_aoff;
	}
	if (t->s_old && t->p_aoff + sdiff(t->s_old_seq, t->p_aseq) == t->s_old_off)
		t->s_old = false;
	p_end = t->v + plen(&t->p);
	t->v = max64(t->p_next, p_end);
	t->p_next = t->s_next = t->v;
	pend_clear(core, &t->p);
	pend_clear(core, &t->s);
	ooo_clear(core, &t->p);
	ooo_clear(core, &t->s);
	t->s_reanchor = true;
	t->s_guess = false;
	t->s_unordered = false;
	t->s_max_ack = t->p_max_ack;
	t->s_syn = t->p_syn;
	t->syn_ok = !!t->p_syn;
	t->s_fin = t->p_fin;
	t->fin_ok = t->p_fin != COLO_CMP_NONE;
	t->s_rst = false;
	if (t->p_rst || t->p_fin != COLO_CMP_NONE)
		conn->closed = true;
}

/* ---- decisions ---------------------------------------------------------------------- */

static void release_now(struct colo_cmp_core *core, struct colo_cmp_conn *conn, u64 tag)
{
	conn->frames_matched++;
	core->st.released++;
	core->st.pairs_matched++;
	colo_cmp_release(core, tag, conn, 0);
}

static void release_held(struct colo_cmp_core *core, struct colo_cmp_held *h, s64 now)
{
	struct colo_cmp_conn *conn = h->conn;

	h->done = true;
	conn->held_p--;
	conn->frames_matched++;
	core->st.held_frames_now--;
	core->st.held_bytes_now -= h->size;
	core->st.released++;
	core->st.pairs_matched++;
	colo_cmp_release(core, h->tag, conn, now - h->arrival);
}

static void hold(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
		 struct colo_cmp_held *h, s64 end, s64 ack, u8 flags, s64 now)
{
	h->end = end;
	h->ack = ack;
	h->flags = flags;
	colo_cmp_q_push(&conn->q[h->side], h);
	colo_cmp_hold(core, h, now);
}

static void diverge(struct colo_cmp_core *core, struct colo_cmp_conn *conn, u8 reason,
		    s64 offset, const u8 *pb, u32 plen, const u8 *sb, u32 slen, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	struct colo_cmp_bytes p = { .body = pb, .body_len = plen };
	struct colo_cmp_bytes s = { .body = sb, .body_len = slen };

	conn->has_first_div = true;
	colo_cmp_request(core, reason, conn, now, &p, &s, 0, offset);
	conn->diverged = true;
	while (conn->q[1].first)
		colo_cmp_drop_held(core, colo_cmp_q_pop(&conn->q[1]), COLO_CMP_DIVERGED);
	pend_clear(core, &t->s);
	ooo_clear(core, &t->s);
}

/*
 * An allocation for the pending bytes failed: ask for a checkpoint (memory limit)
 * and treat the connection as diverged until it comes (the bytes it could not keep
 * cannot be compared).  No divergence bytes: nothing differed.
 */
static void nomem(struct colo_cmp_core *core, struct colo_cmp_conn *conn, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;

	colo_cmp_request(core, COLO_CMP_MEMORY_LIMIT, conn, now, NULL, NULL, 0, 0);
	conn->diverged = true;
	while (conn->q[1].first)
		colo_cmp_drop_held(core, colo_cmp_q_pop(&conn->q[1]), COLO_CMP_DIVERGED);
	pend_clear(core, &t->s);
	ooo_clear(core, &t->s);
}

/* payload[max(0, at - off):] */
static void tail_of(const u8 *payload, u32 n, s64 at, s64 off, const u8 **b, u32 *len)
{
	s64 i = at - off > 0 ? at - off : 0;

	if (i >= n) {
		*b = payload;
		*len = 0;
	} else {
		*b = payload + i;
		*len = n - (u32)i;
	}
}

/* tcp.py _p_bytes/_s_bytes: up to 64 pending bytes from stream offset at. */
static void bytes_at(const struct colo_cmp_tcp *t, const struct colo_cmp_stream *st, s64 at,
		     const u8 **b, u32 *len)
{
	s64 i = at - t->v;

	*b = pdata(st);
	*len = 0;
	if (i < 0 || i >= plen(st))
		return;
	*b += i;
	*len = min_t(u32, plen(st) - (u32)i, COLO_CMP_DIV_BYTES);
}

/* ---- comparison ---------------------------------------------------------------------- */

static void check_syn(struct colo_cmp_core *core, struct colo_cmp_conn *conn, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;

	if (t->p_syn == t->s_syn)
		t->syn_ok = true;
	else if (!conn->diverged)
		diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, -1, NULL, 0, NULL, 0, now);
}

static void check_fin(struct colo_cmp_core *core, struct colo_cmp_conn *conn, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	const u8 *pb, *sb;
	u32 pl, sl;
	s64 at;

	if (t->p_fin != COLO_CMP_NONE) {
		if (t->s_fin != COLO_CMP_NONE && t->s_fin != t->p_fin) {
			at = t->p_fin < t->s_fin ? t->p_fin : t->s_fin;
			bytes_at(t, &t->p, at, &pb, &pl);
			bytes_at(t, &t->s, at, &sb, &sl);
			diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, at, pb, pl, sb, sl, now);
		} else if (t->s_next > t->p_fin) {
			bytes_at(t, &t->s, t->p_fin, &sb, &sl);
			diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, t->p_fin, NULL, 0, sb, sl, now);
		}
	} else if (t->s_fin != COLO_CMP_NONE && t->p_next > t->s_fin) {
		bytes_at(t, &t->p, t->s_fin, &pb, &pl);
		diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, t->s_fin, pb, pl, NULL, 0, now);
	}
}

/* Compare the common prefix of the two pending streams; true if v moved. */
static bool compare(struct colo_cmp_core *core, struct colo_cmp_conn *conn, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	u32 n = min_t(u32, plen(&t->p), plen(&t->s)), i;
	const u8 *p = pdata(&t->p), *s = pdata(&t->s);

	if (memcmp(p, s, n)) {
		for (i = 0; p[i] == s[i]; i++)
			;
		diverge(core, conn, COLO_CMP_PAYLOAD_MISMATCH, t->v + i, p + i,
			min_t(u32, plen(&t->p) - i, COLO_CMP_DIV_BYTES), s + i,
			min_t(u32, plen(&t->s) - i, COLO_CMP_DIV_BYTES), now);
		return false;
	}
	pend_consume(core, &t->p, n);
	pend_consume(core, &t->s, n);
	t->v += n;
	conn->bytes_matched += n;
	core->st.bytes_compared += n;
	return true;
}

static bool releasable(const struct colo_cmp_tcp *t, s64 end, s64 ack, u8 flags)
{
	if (end > t->v)
		return false;
	if (flags & CTL) {
		if ((flags & SYN) && !t->syn_ok)
			return false;
		if ((flags & FIN) && !t->fin_ok)
			return false;
		if ((flags & RST) && !t->s_rst)
			return false;
	}
	if (ack >= 0 && (t->s_max_ack < 0 || udiff(ack, t->s_max_ack) > HALF))
		return false;
	return true;
}

static bool consumed(const struct colo_cmp_tcp *t, s64 end, u8 flags)
{
	if (end > t->v)
		return false;
	if (flags & CTL) {
		if ((flags & SYN) && !t->p_syn)
			return false;
		if ((flags & FIN) && !t->fin_ok)
			return false;
		if ((flags & RST) && !t->p_rst)
			return false;
	}
	return true;
}

/* Release what became releasable and consume what became consumed. */
static void settle(struct colo_cmp_core *core, struct colo_cmp_conn *conn, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	struct colo_cmp_queue *q = &conn->q[0], keep;
	struct colo_cmp_held *h, *next;

	if (!t->fin_ok && t->p_fin != COLO_CMP_NONE && t->p_fin == t->s_fin && t->v >= t->p_fin)
		t->fin_ok = true;
	while ((h = q->first)) {
		if (h->end > t->v)
			break;
		if (h->ack >= 0 && (t->s_max_ack < 0 || udiff(h->ack, t->s_max_ack) > HALF))
			break;
		if (h->flags & CTL) {
			if (!releasable(t, h->end, h->ack, h->flags))
				break;
			if (h->flags & (FIN | RST))
				conn->closed = true;
		}
		release_held(core, colo_cmp_q_pop(q), now);
	}
	q = &conn->q[1];
	while (q->first && consumed(t, q->first->end, q->first->flags))
		colo_cmp_drop_held(core, colo_cmp_q_pop(q), COLO_CMP_MATCHED);
	if (q->first && t->s_unordered) {
		keep.first = keep.last = NULL;
		for (h = q->first; h; h = next) {
			next = h->next;
			if (consumed(t, h->end, h->flags))
				colo_cmp_drop_held(core, h, COLO_CMP_MATCHED);
			else
				colo_cmp_q_push(&keep, h);
		}
		*q = keep;
	}
	if (!q->first)
		t->s_unordered = false;
}

/* ---- numbering --------------------------------------------------------------------- */

/*
 * tcp.py _agreement: how many bytes of payload placed at off equal the other side's
 * held bytes (pending from v, and its out-of-order segments); -1 if one differs.
 */
static s64 agreement(const struct colo_cmp_tcp *t, const u8 *payload, u32 n, s64 off,
		     const struct colo_cmp_stream *other)
{
	s64 v = t->v, end = off + n, lo, hi, same = 0;
	const struct colo_cmp_seg *g;

	lo = off > v ? off : v;
	hi = v + plen(other);
	if (end < hi)
		hi = end;
	if (lo < hi) {
		if (memcmp(payload + (lo - off), pdata(other) + (lo - v), hi - lo))
			return -1;
		same = hi - lo;
	}
	for (g = other->ooo; g; g = g->next) {
		lo = off > g->off ? off : g->off;
		hi = g->off + g->len;
		if (end < hi)
			hi = end;
		if (lo < hi) {
			if (memcmp(payload + (lo - off), g->data + (lo - g->off), hi - lo))
				return -1;
			same += hi - lo;
		}
	}
	return same;
}

struct anchor {
	s64 seq;
	s64 off;
};

/*
 * tcp.py _choose: the numbering of a side's first numbered segment.  shared[0..nshared)
 * in order of preference; here (NULL: none) the last resort; behind the window.
 */
static struct anchor choose(const struct colo_cmp_tcp *t, u32 seq, const u8 *payload, u32 n,
			    const struct anchor *shared, int nshared,
			    const struct anchor *here, const struct colo_cmp_stream *other,
			    s64 other_next, s64 behind)
{
	s64 v = t->v, top = v + plen(other), off, end, same, here_same;
	s64 strong_same = 0, best_dist = 0, dist;
	bool strong_at_v = false, best_not_v = false, at_v, here_agrees = false;
	int strong = -1, best = -1, near = -1, here_v = -1, i;

	if (other_next > top)
		top = other_next;
	for (i = 0; i < nshared; i++) {
		off = shared[i].off + sdiff(seq, shared[i].seq);
		end = off + n;
		if (!(v - behind <= end && off <= top + AHEAD_WINDOW))
			continue;
		if (near < 0)
			near = i;
		same = agreement(t, payload, n, off, other);
		at_v = off == v;
		if (at_v && here_v < 0) {
			here_v = i;
			here_agrees = same >= 0;
		}
		if (same < 0)
			continue;
		if (same >= EVIDENCE) {
			if (strong < 0 || at_v > strong_at_v ||
			    (at_v == strong_at_v && same > strong_same)) {
				strong = i;
				strong_at_v = at_v;
				strong_same = same;
			}
		}
		dist = end < v ? v - end : (off > top ? off - top : 0);
		if (best < 0 || dist < best_dist || (dist == best_dist && !at_v < best_not_v)) {
			best = i;
			best_dist = dist;
			best_not_v = !at_v;
		}
	}
	/* 0. a candidate that puts the segment exactly at v */
	if (here_v >= 0 && (here_agrees || strong < 0))
		return shared[here_v];
	if (strong >= 0)
		return shared[strong];
	here_same = here ? agreement(t, payload, n, v, other) : -1;
	if (here && here_same >= EVIDENCE && (best < 0 || best_dist > 0))
		return *here;
	if (best >= 0)
		return shared[best];
	if (here && here_same >= 0)
		return *here;
	if (near >= 0)
		return shared[near];
	return here ? *here : shared[nshared - 1];
}

static void secondary_syn(struct colo_cmp_tcp *t, u32 seq)
{
	t->s_isn = seq;
	if (t->p_syn && t->p_aoff + sdiff(seq, t->p_aseq) == -1) {
		t->s_aseq = seq;
		t->s_aoff = -1;
	} else {
		t->s_aseq = GUESS;
		t->s_aoff = -1;
		t->s_guess = true;
		t->s_guess_seq = seq;
	}
}

static void secondary_numbering(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
				u32 seq, u8 flags, const u8 *payload, u32 n)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	struct anchor c[2], here, a;
	int nc;

	if (t->s_reanchor) {
		t->s_reanchor = false;
		if (flags & SYN) {
			secondary_syn(t, seq);
		} else {
			/* its own numbering from before counts only where it puts the
			 * segment at or beyond the new common point
			 */
			c[0] = (struct anchor){ t->p_aseq, t->p_aoff };
			nc = 1;
			if (t->s_old && t->s_old_off + sdiff(seq, t->s_old_seq) >= t->v)
				c[nc++] = (struct anchor){ t->s_old_seq, t->s_old_off };
			here = (struct anchor){ seq, t->v };
			a = choose(t, seq, payload, n, c, nc, &here, &t->p, t->p_next,
				   REANCHOR_WINDOW);
			t->s_aseq = a.seq;
			t->s_aoff = a.off;
		}
	} else if (t->s_guess) {
		if (flags & SYN) {
			if (seq == t->s_isn)
				return;
			if (!busy(conn)) {
				fresh(core, conn);
				secondary_syn(t, seq);
				return;
			}
		}
		t->s_guess = false;
		c[1] = (struct anchor){ t->s_guess_seq, -1 };
		if (t->p_aseq < 0) {
			a = c[1];
		} else {
			c[0] = (struct anchor){ t->p_aseq, t->p_aoff };
			a = choose(t, seq, payload, n, c, 2, NULL, &t->p, t->p_next, 0);
		}
		t->s_aseq = a.seq;
		t->s_aoff = a.off;
	} else if (t->s_aseq < 0) {
		if (flags & SYN) {
			secondary_syn(t, seq);
		} else if (t->p_aseq >= 0) {
			c[0] = (struct anchor){ t->p_aseq, t->p_aoff };
			here = (struct anchor){ seq, t->v };
			a = choose(t, seq, payload, n, c, 1, &here, &t->p, t->p_next,
				   REANCHOR_WINDOW);
			t->s_aseq = a.seq;
			t->s_aoff = a.off;
		} else {
			t->s_aseq = seq;
			t->s_aoff = t->v;
		}
	} else if ((flags & SYN) && seq != t->s_isn &&
		   t->s_aoff + sdiff(seq, t->s_aseq) != -1 && !busy(conn)) {
		fresh(core, conn);
		secondary_syn(t, seq);
	}
}

/* ---- primary ------------------------------------------------------------------------- */

static bool primary_fin_rst(struct colo_cmp_core *core, struct colo_cmp_conn *conn, u8 flags,
			    s64 end, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	bool changed = false;
	const u8 *sb;
	u32 sl;

	if ((flags & FIN) && t->p_fin == COLO_CMP_NONE) {
		t->p_fin = end;
		changed = true;
		if (!conn->diverged)
			check_fin(core, conn, now);
	}
	if ((flags & RST) && !t->p_rst) {
		t->p_rst = true;
		t->p_rst_end = max64(t->p_next, end);
		changed = true;
		if (!conn->diverged && t->s_next > t->p_rst_end) {
			bytes_at(t, &t->s, t->p_rst_end, &sb, &sl);
			diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, t->p_rst_end, NULL, 0,
				sb, sl, now);
		}
	}
	return changed;
}

static bool primary_slow(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
			 struct colo_cmp_held *h, const struct colo_cmp_pkt *pkt, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	u32 seq = pkt->seq, n = pkt->plen;
	const u8 *payload = pkt->payload, *b;
	u8 flags = pkt->flags;
	struct anchor c, here, a;
	s64 off, end, ack, p_end;
	bool changed = false;
	u32 bl;

	if (t->p_aseq < 0) {
		if (flags & SYN) {
			t->p_aseq = seq;
			t->p_aoff = -1;
		} else if (t->s_aseq >= 0 && !t->s_reanchor) {
			c = (struct anchor){ t->s_aseq, t->s_aoff };
			here = (struct anchor){ seq, t->v };
			a = choose(t, seq, payload, n, &c, 1, &here, &t->s, t->s_next,
				   REANCHOR_WINDOW);
			t->p_aseq = a.seq;
			t->p_aoff = a.off;
		} else {
			t->p_aseq = seq;
			t->p_aoff = t->v;
		}
	}
	off = t->p_aoff + sdiff(seq, t->p_aseq);
	if (flags & SYN) {
		if (off != -1 && !busy(conn)) {
			fresh(core, conn);
			t->p_aseq = seq;
			t->p_aoff = -1;
			off = -1;
		}
		off++;
	}
	end = off + n;
	ack = pkt->ack;
	if (flags & ACK) {
		if (t->p_max_ack < 0 || sdiff(ack, t->p_max_ack) > 0)
			t->p_max_ack = ack;
	} else {
		ack = -1;
	}
	if ((flags & SYN) && !t->p_syn) {
		t->p_syn = flags & (SYN | ACK);
		changed = true;
		if (t->s_syn)
			check_syn(core, conn, now);
	}
	if (n) {
		if (end > t->p_next)
			t->p_next = end;
		if (!conn->diverged) {
			p_end = t->v + plen(&t->p);
			if (end > p_end) {
				if (t->s_fin != COLO_CMP_NONE && end > t->s_fin) {
					tail_of(payload, n, t->s_fin, off, &b, &bl);
					diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, t->s_fin,
						b, min_t(u32, bl, COLO_CMP_DIV_BYTES), NULL, 0, now);
				} else if (t->s_rst && end > t->s_rst_end) {
					tail_of(payload, n, t->s_rst_end, off, &b, &bl);
					diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, t->s_rst_end,
						b, min_t(u32, bl, COLO_CMP_DIV_BYTES), NULL, 0, now);
				} else if (off <= p_end) {
					if (!pend_append(core, &t->p, payload + (p_end - off),
							 (u32)(end - p_end))) {
						nomem(core, conn, now);
					} else {
						t->p_aseq = (u32)(seq + n + ((flags & SYN) ? 1 : 0));
						t->p_aoff = end;
						if (t->p.ooo && !merge(core, t->v, &t->p))
							nomem(core, conn, now);
						else if (plen(&t->s))
							changed = compare(core, conn, now) || changed;
					}
				} else if (!ooo_put(core, &t->p, off, payload, n)) {
					nomem(core, conn, now);
				}
			}
		}
	}
	if (flags & (FIN | RST))
		changed = primary_fin_rst(core, conn, flags, end, now) || changed;
	if (!n)
		end = COLO_CMP_NO_DATA;
	if (!conn->q[0].first && !conn->diverged && releasable(t, end, ack, flags)) {
		release_now(core, conn, h->tag);
		if (flags & (FIN | RST))
			conn->closed = true;
		if (changed && !conn->diverged)
			settle(core, conn, now);
		return false;
	}
	hold(core, conn, h, end, ack, flags, now);
	if (changed && !conn->diverged)
		settle(core, conn, now);
	return true;
}

static bool primary(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
		    struct colo_cmp_held *h, const struct colo_cmp_pkt *pkt, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	u32 seq = pkt->seq, n = pkt->plen;
	u8 flags = pkt->flags;
	s64 off, end, ack, m;

	if ((s64)seq == t->p_aseq && n && !(flags & CTL) && !conn->diverged &&
	    t->s_fin == COLO_CMP_NONE && !t->s_rst) {
		off = t->p_aoff;
		if (off == t->v + plen(&t->p) && !t->p.ooo &&
		    (!plen(&t->s) || (plen(&t->s) >= n && !memcmp(pdata(&t->s), pkt->payload, n)))) {
			end = off + n;
			ack = pkt->ack;
			if (flags & ACK) {
				m = t->p_max_ack;
				if (ack != m && (m < 0 || sdiff(ack, m) > 0))
					t->p_max_ack = ack;
			} else {
				ack = -1;
			}
			if (end > t->p_next)
				t->p_next = end;
			t->p_aseq = (u32)(seq + n);
			t->p_aoff = end;
			if (!plen(&t->s)) {
				if (!pend_append(core, &t->p, pkt->payload, n))
					nomem(core, conn, now);
				hold(core, conn, h, end, ack, flags, now);
				return true;
			}
			pend_consume(core, &t->s, n);
			t->v = end;
			conn->bytes_matched += n;
			core->st.bytes_compared += n;
			m = t->s_max_ack;
			if (!conn->q[0].first &&
			    (ack < 0 || (m >= 0 && udiff(ack, m) <= HALF))) {
				release_now(core, conn, h->tag);
				settle(core, conn, now);
				return false;
			}
			hold(core, conn, h, end, ack, flags, now);
			settle(core, conn, now);
			return true;
		}
	}
	return primary_slow(core, conn, h, pkt, now);
}

/* ---- secondary ---------------------------------------------------------------------- */

static bool secondary_fin_rst(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
			      u8 flags, s64 end, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	bool isnew = false;
	const u8 *pb;
	u32 pl;

	if ((flags & FIN) && t->s_fin == COLO_CMP_NONE) {
		t->s_fin = end;
		isnew = true;
		if (!conn->diverged)
			check_fin(core, conn, now);
	}
	if ((flags & RST) && !t->s_rst) {
		t->s_rst = true;
		t->s_rst_end = max64(t->s_next, end);
		isnew = true;
		if (!conn->diverged && t->p_next > t->s_rst_end) {
			bytes_at(t, &t->p, t->s_rst_end, &pb, &pl);
			diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, t->s_rst_end, pb, pl,
				NULL, 0, now);
		}
	}
	return isnew;
}

static bool secondary_slow(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
			   struct colo_cmp_held *h, const struct colo_cmp_pkt *pkt, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	u32 seq = pkt->seq, n = pkt->plen, bl;
	const u8 *payload = pkt->payload, *b;
	u8 flags = pkt->flags, ctl = flags & CTL;
	bool changed = false, isnew = false;
	s64 off, end, s_end;

	if (n || ctl || t->s_aseq < 0)
		secondary_numbering(core, conn, seq, flags, payload, n);
	if (flags & ACK) {
		if (t->s_max_ack < 0 || sdiff(pkt->ack, t->s_max_ack) > 0) {
			t->s_max_ack = pkt->ack;
			changed = !!conn->q[0].first;
		}
	}
	if (!n && !ctl) {
		colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_VERIFIED);
		if (changed)
			settle(core, conn, now);
		return false;
	}
	if ((flags & SYN) && (s64)seq == t->s_isn) {
		off = 0;
	} else {
		off = t->s_aoff + sdiff(seq, t->s_aseq);
		if (flags & SYN)
			off++;
	}
	end = off + n;
	if ((flags & SYN) && !t->s_syn) {
		t->s_syn = flags & (SYN | ACK);
		isnew = true;
		if (t->p_syn)
			check_syn(core, conn, now);
	}
	if (n && !conn->diverged) {
		if (end > t->s_next)
			t->s_next = end;
		s_end = t->v + plen(&t->s);
		if (end > s_end) {
			isnew = true;
			if (t->p_fin != COLO_CMP_NONE && end > t->p_fin) {
				tail_of(payload, n, t->p_fin, off, &b, &bl);
				diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, t->p_fin, NULL, 0,
					b, min_t(u32, bl, COLO_CMP_DIV_BYTES), now);
			} else if (t->p_rst && end > t->p_rst_end) {
				tail_of(payload, n, t->p_rst_end, off, &b, &bl);
				diverge(core, conn, COLO_CMP_CONTROL_MISMATCH, t->p_rst_end, NULL, 0,
					b, min_t(u32, bl, COLO_CMP_DIV_BYTES), now);
			} else if (off <= s_end) {
				if (!pend_append(core, &t->s, payload + (s_end - off),
						 (u32)(end - s_end))) {
					nomem(core, conn, now);
				} else {
					t->s_aseq = (u32)(seq + n + ((flags & SYN) ? 1 : 0));
					t->s_aoff = end;
					if (t->s.ooo && !merge(core, t->v, &t->s))
						nomem(core, conn, now);
					else if (plen(&t->p))
						changed = compare(core, conn, now) || changed;
				}
			} else {
				if (!ooo_put(core, &t->s, off, payload, n))
					nomem(core, conn, now);
				else
					t->s_unordered = true;
			}
		}
	}
	if ((flags & (FIN | RST)) && !conn->diverged)
		isnew = secondary_fin_rst(core, conn, flags, end, now) || isnew;
	if (conn->diverged) {
		colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_DIVERGED);
		return false;
	}
	if (!n)
		end = COLO_CMP_NO_DATA;
	if (!isnew) {
		colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_VERIFIED);
	} else if (consumed(t, end, flags)) {
		colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_MATCHED);
	} else {
		hold(core, conn, h, end, -1, flags, now);
		settle(core, conn, now);
		return true;
	}
	if (changed || isnew)
		settle(core, conn, now);
	return false;
}

static bool secondary(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
		      struct colo_cmp_held *h, const struct colo_cmp_pkt *pkt, s64 now)
{
	struct colo_cmp_tcp *t = &conn->tcp;
	u32 seq = pkt->seq, n = pkt->plen;
	struct colo_cmp_queue *q = &conn->q[0];
	struct colo_cmp_held *p;
	u8 flags = pkt->flags;
	s64 off, end, m, a;

	if (conn->diverged) {
		colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_DIVERGED);
		return false;
	}
	if ((s64)seq == t->s_aseq && n && !(flags & CTL) && !t->s_reanchor && !plen(&t->s) &&
	    !t->s.ooo && t->p_fin == COLO_CMP_NONE && !t->p_rst) {
		off = t->s_aoff;
		if (off == t->v && plen(&t->p) >= n && !memcmp(pdata(&t->p), pkt->payload, n)) {
			end = off + n;
			pend_consume(core, &t->p, n);
			t->v = end;
			if (end > t->s_next)
				t->s_next = end;
			t->s_aseq = (u32)(seq + n);
			t->s_aoff = end;
			conn->bytes_matched += n;
			core->st.bytes_compared += n;
			if (flags & ACK) {
				m = t->s_max_ack;
				if ((s64)pkt->ack != m && (m < 0 || sdiff(pkt->ack, m) > 0))
					t->s_max_ack = pkt->ack;
			}
			colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_MATCHED);
			p = q->first;
			if (p) {
				a = p->ack;
				m = t->s_max_ack;
				if (p->end <= end && !(p->flags & CTL) &&
				    (a == m || a < 0 || (m >= 0 && udiff(a, m) <= HALF))) {
					release_held(core, colo_cmp_q_pop(q), now);
					if (!q->first || q->first->end > end) {
						if (conn->q[1].first)
							settle(core, conn, now);
						return false;
					}
				}
			}
			settle(core, conn, now);
			return false;
		}
	}
	return secondary_slow(core, conn, h, pkt, now);
}

bool colo_cmp_tcp_push(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
		       struct colo_cmp_held *h, const struct colo_cmp_pkt *pkt, s64 now)
{
	h->conn = conn;
	h->arrival = now;
	h->done = false;
	if (h->side)
		return secondary(core, conn, h, pkt, now);
	return primary(core, conn, h, pkt, now);
}
