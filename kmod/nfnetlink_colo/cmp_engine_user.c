// SPDX-License-Identifier: GPL-2.0
/*
 * A whole compare engine in userspace around the core (colo_proxy/compare/engine.py):
 * the connection table with LRU eviction, the hard limits, passthrough rules,
 * control frames, checkpoint_done.  Used by the host tests (tests/unit/ccore.py) to
 * check the C core against the Python engine; the kernel datapath has its own table.
 *
 * Frames are copied on push; a held frame's copy is freed when it is decided.
 * Decisions accumulate in engine->out until colo_cmp_engine_take() hands them over.
 */
#ifdef __KERNEL__
#error "cmp_engine_user.c is the userspace engine; the module does not build it"
#endif

#include "cmp.h"

#define TABLE_BITS	12
#define EVICT_SCAN	16
#define RETIRED_MAX	4096	/* engine.py RETIRED_MAX */

struct uconn {
	struct colo_cmp_conn c;
	struct uconn *hnext;		/* hash chain (table or retired table) */
	struct uconn *lru_prev, *lru_next;	/* LRU, or the retired order */
	u64 touched;			/* checkpoint_done's visit mark */
	struct uconn *touched_next;
	bool retired;			/* not in the table (retired, or forgotten) */
};

struct colo_cmp_engine {
	struct colo_cmp_core core;
	struct uconn *table[1 << TABLE_BITS];
	struct uconn lru;		/* sentinel: lru.lru_next is the least recent */
	/* engine.py _retired: closed TCP connections kept with their numbering for late
	 * frames, the least recently retired first (retired.lru_next).
	 */
	struct uconn *rtable[1 << TABLE_BITS];
	struct uconn retired;
	u32 nretired, retired_max;
	s64 fail_after;			/* tests: the allocation after this many fails */
	bool deferring;			/* checkpoint_done: forgotten ones go to grave */
	struct uconn *grave;
	struct colo_cmp_decision *out;
	size_t nout, cap;
	bool oom;
	u64 visit;
};

static struct colo_cmp_engine *engine_of(struct colo_cmp_core *core)
{
	return (struct colo_cmp_engine *)core;
}

static void emit(struct colo_cmp_core *core, const struct colo_cmp_decision *d)
{
	struct colo_cmp_engine *e = engine_of(core);
	struct colo_cmp_decision *grown;

	if (e->nout == e->cap) {
		size_t cap = e->cap ? 2 * e->cap : 64;

		grown = realloc(e->out, cap * sizeof(*grown));
		if (!grown) {
			e->oom = true;
			return;
		}
		e->out = grown;
		e->cap = cap;
	}
	e->out[e->nout++] = *d;
}

static void free_held(struct colo_cmp_core *core, struct colo_cmp_held *h)
{
	free(h->frame);
	free(h);
}

static void *conn_alloc(struct colo_cmp_core *core, size_t size)
{
	struct colo_cmp_engine *e = engine_of(core);

	if (e->fail_after >= 0 && e->fail_after-- == 0)
		return NULL;
	return malloc(size);
}

static void conn_free(struct colo_cmp_core *core, void *p)
{
	free(p);
}

struct colo_cmp_engine *colo_cmp_engine_new(const struct colo_cmp_config *cfg)
{
	struct colo_cmp_engine *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	e->core.cfg = *cfg;
	e->core.emit = emit;
	e->core.free_held = free_held;
	e->core.alloc = conn_alloc;
	e->core.free = conn_free;
	e->lru.lru_next = e->lru.lru_prev = &e->lru;
	e->retired.lru_next = e->retired.lru_prev = &e->retired;
	e->retired_max = RETIRED_MAX;
	e->fail_after = -1;
	return e;
}

static u32 key_hash(const struct colo_cmp_key *k)
{
	const u8 *p = (const u8 *)k;
	u32 h = 2166136261u;
	size_t i;

	for (i = 0; i < sizeof(*k); i++)
		h = (h ^ p[i]) * 16777619u;
	return h >> (32 - TABLE_BITS);
}

static void lru_unlink(struct uconn *u)
{
	u->lru_prev->lru_next = u->lru_next;
	u->lru_next->lru_prev = u->lru_prev;
}

static void list_append(struct uconn *head, struct uconn *u)
{
	u->lru_prev = head->lru_prev;
	u->lru_next = head;
	head->lru_prev->lru_next = u;
	head->lru_prev = u;
}

static void lru_append(struct colo_cmp_engine *e, struct uconn *u)
{
	list_append(&e->lru, u);
}

static struct uconn *find(struct uconn **table, const struct colo_cmp_key *k)
{
	struct uconn *u;

	for (u = table[key_hash(k)]; u; u = u->hnext)
		if (!memcmp(&u->c.key, k, sizeof(*k)))
			return u;
	return NULL;
}

static struct uconn *lookup(struct colo_cmp_engine *e, const struct colo_cmp_key *k)
{
	return find(e->table, k);
}

static void unlink_from(struct uconn **table, struct uconn *u)
{
	struct uconn **pp = &table[key_hash(&u->c.key)];

	while (*pp != u)
		pp = &(*pp)->hnext;
	*pp = u->hnext;
	lru_unlink(u);
}

static void unlink_conn(struct colo_cmp_engine *e, struct uconn *u)
{
	unlink_from(e->table, u);
}

static void link_conn(struct colo_cmp_engine *e, struct uconn *u)
{
	u32 i = key_hash(&u->c.key);

	u->hnext = e->table[i];
	e->table[i] = u;
	lru_append(e, u);
}

static void free_conn(struct colo_cmp_engine *e, struct uconn *u)
{
	if (u->c.kind == COLO_CMP_CONN_TCP)
		colo_cmp_tcp_free(&e->core, &u->c);
	free(u);
}

static bool busy(const struct colo_cmp_conn *c)
{
	return c->held_p || c->held_s || c->diverged;
}

/* limits.py evict_idle(): the least recently used idle connection goes. */
static bool evict_idle(struct colo_cmp_engine *e)
{
	s64 scan = e->core.st.connections_now < EVICT_SCAN ? e->core.st.connections_now : EVICT_SCAN;
	struct uconn *u;
	s64 i;

	for (i = 0; i < scan; i++) {
		u = e->lru.lru_next;
		if (busy(&u->c)) {
			lru_unlink(u);
			lru_append(e, u);
			continue;
		}
		unlink_conn(e, u);
		free_conn(e, u);
		e->core.st.connections_evicted++;
		e->core.st.connections_now--;
		return true;
	}
	return false;
}

static bool in_net(const struct colo_cmp_rule *r, const u8 *addr)
{
	u32 full = r->prefix / 8, rest = r->prefix % 8;

	if (memcmp(addr, r->net, full))
		return false;
	return !rest || !((addr[full] ^ r->net[full]) & (u8)(0xFF << (8 - rest)));
}

static bool rule_matches(const struct colo_cmp_rule *r, const struct colo_cmp_key *k)
{
	if (r->proto >= 0 && k->proto != r->proto)
		return false;
	if (r->port >= 0 && k->sport != r->port && k->dport != r->port)
		return false;
	if (r->family >= 0) {
		if (k->l3 != r->family)
			return false;
		if (!in_net(r, k->src) && !in_net(r, k->dst))
			return false;
	}
	return true;
}

static struct uconn *new_conn(struct colo_cmp_engine *e, const struct colo_cmp_pkt *pkt,
			      s64 now)
{
	struct colo_cmp_core *core = &e->core;
	struct colo_cmp_counters *st = &core->st;
	bool over;
	struct uconn *u;
	u32 i;

	over = st->connections_now >= core->cfg.max_connections && !evict_idle(e);
	if (over && st->connections_now >= 2 * (s64)core->cfg.max_connections)
		return NULL;
	u = find(e->rtable, &pkt->key);
	if (u) {
		/* A late frame of a retired connection: it comes back with its numbering. */
		unlink_from(e->rtable, u);
		e->nretired--;
		u->retired = false;
		goto linked;
	}
	u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->c.key = pkt->key;
	u->c.epoch = core->epoch;
	u->c.kind = pkt->cls == COLO_CMP_TCP ? COLO_CMP_CONN_TCP : COLO_CMP_CONN_FIFO;
	if (u->c.kind == COLO_CMP_CONN_TCP)
		colo_cmp_tcp_init(&u->c);
	if (pkt->key.l3 == 4 || pkt->key.l3 == 6)
		for (i = 0; i < core->cfg.nrules; i++)
			if (rule_matches(&core->cfg.rules[i], &pkt->key)) {
				u->c.passthrough = true;
				break;
			}
linked:
	link_conn(e, u);
	st->connections_now++;
	if (over && !core->connection_flag) {
		core->connection_flag = true;
		colo_cmp_request(core, COLO_CMP_CONNECTION_LIMIT, &u->c, now, NULL, NULL, 0, 0);
	}
	return u;
}

static void rebase(struct colo_cmp_engine *e, struct colo_cmp_conn *c, u64 epoch)
{
	if (c->kind == COLO_CMP_CONN_TCP)
		colo_cmp_tcp_rebase(&e->core, c, epoch);
	else
		colo_cmp_fifo_rebase(c, epoch);
}

/* engine.py _bury: into the retired table, forgetting the least recently retired. */
static void bury(struct colo_cmp_engine *e, struct uconn *u)
{
	struct uconn *old;
	u32 i;

	if (u->retired)
		return;
	u->retired = true;
	unlink_conn(e, u);
	e->core.st.connections_now--;
	i = key_hash(&u->c.key);
	u->hnext = e->rtable[i];
	e->rtable[i] = u;
	list_append(&e->retired, u);
	if (++e->nretired > e->retired_max) {
		old = e->retired.lru_next;
		unlink_from(e->rtable, old);
		e->nretired--;
		if (e->deferring) {
			/* checkpoint_done may still visit it */
			old->hnext = e->grave;
			e->grave = old;
		} else {
			free_conn(e, old);
		}
	}
}

/* engine.py _retire: a closed connection retires; with a tracked reverse direction,
 * when that one is closed and idle too (it retires first).
 */
static void retire(struct colo_cmp_engine *e, struct uconn *u)
{
	struct colo_cmp_key rk = u->c.key;
	struct uconn *other;

	rk.sport = u->c.key.dport;
	rk.dport = u->c.key.sport;
	memcpy(rk.src, u->c.key.dst, sizeof(rk.src));
	memcpy(rk.dst, u->c.key.src, sizeof(rk.dst));
	rk.frag = 0;
	other = lookup(e, &rk);
	if (other && other != u) {
		if (!other->c.closed || busy(&other->c))
			return;
		bury(e, other);
	}
	bury(e, u);
}

static void expire(struct colo_cmp_core *core, s64 now)
{
	colo_cmp_prune(core);
	if (core->arrivals && now - core->arrivals->arrival >= core->cfg.compare_timeout_us)
		colo_cmp_check_timeout(core, now);
}

/* Returns 0, or -1 when the engine cannot take the frame (out of memory). */
int colo_cmp_engine_push(struct colo_cmp_engine *e, u8 side, const u8 *frame, u32 len,
			 s64 now, u64 tag, s32 vnet_hdr_len)
{
	struct colo_cmp_core *core = &e->core;
	struct colo_cmp_counters *st = &core->st;
	struct colo_cmp_held *h;
	struct colo_cmp_pkt pkt;
	struct uconn *u;
	u8 *copy;
	s64 count;

	copy = malloc(len ? len : 1);
	if (!copy)
		return -1;
	memcpy(copy, frame, len);
	colo_cmp_parse(copy, len, vnet_hdr_len, &pkt);
	st->frames[side]++;
	st->bytes[side] += len;
	if (pkt.cls == COLO_CMP_FIFO || pkt.cls == COLO_CMP_TCP) {
		u = lookup(e, &pkt.key);
		if (!u) {
			u = new_conn(e, &pkt, now);
		} else {
			lru_unlink(u);
			lru_append(e, u);
		}
		if (pkt.cls == COLO_CMP_FIFO && pkt.malformed)
			st->malformed++;
		if (!u) {
			st->overflow++;
			colo_cmp_drop(core, side, tag, NULL, COLO_CMP_OVERFLOW);
			goto done;
		}
		if (u->c.epoch != core->epoch)
			rebase(e, &u->c, core->epoch);
		if (u->c.passthrough) {
			if (side) {
				colo_cmp_drop(core, 1, tag, &u->c, COLO_CMP_PASSTHROUGH);
			} else {
				st->passthrough++;
				st->released++;
				colo_cmp_release(core, tag, &u->c, 0);
			}
			goto conn_done;
		}
		count = side ? u->c.held_s : u->c.held_p;
		if (count >= 2 * (s64)core->cfg.max_queue_per_conn ||
		    st->held_bytes_now + len > 2 * (s64)core->cfg.max_held_bytes) {
			st->overflow++;
			colo_cmp_drop(core, side, tag, &u->c, COLO_CMP_OVERFLOW);
			goto conn_done;
		}
		h = calloc(1, sizeof(*h));
		if (!h) {
			free(copy);
			return -1;
		}
		h->side = side;
		h->tag = tag;
		h->size = len;
		h->head_len = pkt.head_len;
		memcpy(h->head, pkt.head, sizeof(h->head));
		h->body = pkt.body;
		h->body_len = pkt.body_len;
		h->frame = copy;
		if (pkt.cls == COLO_CMP_TCP ? colo_cmp_tcp_push(core, &u->c, h, &pkt, now) :
		    colo_cmp_fifo_push(core, &u->c, h, now)) {
			copy = NULL;		/* held: the record owns the copy */
		} else {
			h->frame = NULL;
			free(h);
		}
conn_done:
		if (u->c.closed && !u->c.held_p && !u->c.held_s)
			retire(e, u);
	} else if (pkt.cls == COLO_CMP_CONTROL) {
		if (side) {
			colo_cmp_drop(core, 1, tag, NULL, COLO_CMP_SECONDARY_CONTROL);
		} else {
			struct colo_cmp_decision d;

			st->control_passed++;
			st->released++;
			memset(&d, 0, sizeof(d));
			d.kind = COLO_CMP_RELEASE;
			d.tag = tag;
			d.has_key = 1;
			d.key = pkt.key;
			core->emit(core, &d);
		}
	} else {
		st->malformed++;
		colo_cmp_drop(core, side, tag, NULL, COLO_CMP_MALFORMED);
	}
done:
	free(copy);
	expire(core, now);
	return e->oom ? -1 : 0;
}

void colo_cmp_engine_tick(struct colo_cmp_engine *e, s64 now)
{
	colo_cmp_check_timeout(&e->core, now);
}

void colo_cmp_engine_checkpoint_done(struct colo_cmp_engine *e, s64 now)
{
	struct colo_cmp_core *core = &e->core;
	struct colo_cmp_held *h, *next;
	struct uconn *first = NULL, *last = NULL, *u;

	e->visit++;
	for (h = core->arrivals; h; h = next) {
		next = h->next_arrival;
		if (!h->done) {
			u = (struct uconn *)h->conn;
			if (u->touched != e->visit) {
				u->touched = e->visit;
				u->touched_next = NULL;
				if (last)
					last->touched_next = u;
				else
					first = u;
				last = u;
			}
			if (h->side) {
				colo_cmp_drop(core, 1, h->tag, h->conn, COLO_CMP_CHECKPOINT);
			} else {
				core->st.released++;
				colo_cmp_release(core, h->tag, h->conn, now - h->arrival);
			}
		}
		core->free_held(core, h);
	}
	core->arrivals = core->arrivals_tail = NULL;
	core->st.held_frames_now = 0;
	core->st.held_bytes_now = 0;
	core->st.checkpoints_done++;
	core->epoch++;
	core->pending = false;
	core->memory_flag = false;
	core->connection_flag = false;
	e->deferring = true;
	for (u = first; u; u = u->touched_next) {
		rebase(e, &u->c, core->epoch);
		if (u->c.closed)
			retire(e, u);
	}
	e->deferring = false;
	while ((u = e->grave)) {
		e->grave = u->hnext;
		free_conn(e, u);
	}
}

/* Hand over the decisions so far; they stay valid until the next call. */
size_t colo_cmp_engine_take(struct colo_cmp_engine *e, const struct colo_cmp_decision **out)
{
	size_t n = e->nout;

	*out = e->out;
	e->nout = 0;
	return n;
}

const struct colo_cmp_counters *colo_cmp_engine_counters(const struct colo_cmp_engine *e)
{
	return &e->core.st;
}

bool colo_cmp_engine_pending(const struct colo_cmp_engine *e)
{
	return e->core.pending;
}

/* Tests: engine.py RETIRED_MAX is a module constant they can patch. */
void colo_cmp_engine_set_retired_max(struct colo_cmp_engine *e, u32 n)
{
	e->retired_max = n;
}

u32 colo_cmp_engine_retired_now(const struct colo_cmp_engine *e)
{
	return e->nretired;
}

/* Tests: the allocation after @after more succeeded ones fails (< 0: none fails). */
void colo_cmp_engine_fail_alloc(struct colo_cmp_engine *e, s64 after)
{
	e->fail_after = after;
}

void colo_cmp_engine_free(struct colo_cmp_engine *e)
{
	struct colo_cmp_held *h, *next;
	struct uconn *u, *un;

	if (!e)
		return;
	for (h = e->core.arrivals; h; h = next) {
		next = h->next_arrival;
		free_held(&e->core, h);
	}
	for (u = e->lru.lru_next; u != &e->lru; u = un) {
		un = u->lru_next;
		free_conn(e, u);
	}
	for (u = e->retired.lru_next; u != &e->retired; u = un) {
		un = u->lru_next;
		free_conn(e, u);
	}
	free(e->out);
	free(e);
}
