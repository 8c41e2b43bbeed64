/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The COLO compare core: frames in, decisions out (docs/compare.md is the
 * specification; colo_proxy/compare/ is its executable form, and
 * tests/unit/test_ccore_*.py check that this C core decides exactly like it).
 *
 * Layers:
 *   cmp_parse.c   one Ethernet frame -> struct colo_cmp_pkt (class, key, compared bytes)
 *   cmp_core.c    engine-wide bookkeeping (core.py): holding, releasing and dropping,
 *                 checkpoint requests with de-duplication, soft limits, the timeout
 *                 check on the arrival queue
 *   cmp_fifo.c    per-connection FIFO pairing (UDP, ICMP, other IP, fragments, non-IP)
 *   cmp_tcp.c     per-connection TCP stream comparison by stream offset (tcp.py)
 *   cmp_engine_user.c  a whole engine for userspace (connection table with LRU
 *                 eviction, hard limits, passthrough, checkpoint_done): the differential
 *                 tests and, later, a Python extension.  The kernel datapath keeps its
 *                 own table (rhashtable, per-bucket locks, a timer) around the same
 *                 per-connection code.
 *
 * The per-connection code allocates only through core->alloc/core->free (the TCP
 * streams' pending bytes and out-of-order segments), takes no lock and reads no
 * clock: time is an argument (microseconds), and every held frame is owned by the
 * caller (an skb in the kernel, a malloc'd copy in userspace) until a decision
 * names it.
 */
#ifndef _COLO_CMP_H
#define _COLO_CMP_H

#include "cmp_env.h"

/* Classes of frames (parse.py: TCP, FIFO, CONTROL, EMPTY). */
enum colo_cmp_class {
	COLO_CMP_TCP = 0,
	COLO_CMP_FIFO = 1,
	COLO_CMP_CONTROL = 2,
	COLO_CMP_EMPTY = 3,
};

#define COLO_CMP_VLAN_NONE		(-1)
#define COLO_CMP_MAX_VLAN_TAGS	4
#define COLO_CMP_MAX_IP6_EXT		16
#define COLO_CMP_HEAD_MAX		12	/* masked header bytes compared before the body */
#define COLO_CMP_RAW_L3		0	/* pseudo EtherType: runt or 802.3/LLC frame */

/*
 * Directional connection key (model.py ConnKey).  vlan is -1 untagged, else every
 * tag id packed outermost first (outer << 12 | inner).  l3 is 4 or 6 for IP, else
 * the EtherType.  alen is 0, 4 or 16.  Padding is always zeroed so that keys can be
 * hashed and compared as bytes.
 */
struct colo_cmp_key {
	s64 vlan;
	u16 l3;
	u16 sport;
	u16 dport;
	u8 proto;
	u8 frag;
	u8 alen;
	u8 pad[7];
	u8 src[16];
	u8 dst[16];
};

/*
 * One parsed frame.  For COLO_CMP_TCP: seq, ack, flags and the payload.  For COLO_CMP_FIFO:
 * the compared bytes are head[0..head_len) followed by body[0..body_len), and
 * malformed says the frame could not be parsed (it is still compared, as opaque
 * bytes).  Pointers point into the frame.
 */
struct colo_cmp_pkt {
	u8 cls;
	bool malformed;
	u8 flags;
	u8 head_len;
	u32 seq;
	u32 ack;
	struct colo_cmp_key key;
	const u8 *payload;
	u32 plen;
	u8 head[COLO_CMP_HEAD_MAX];
	const u8 *body;
	u32 body_len;
};

void colo_cmp_parse(const u8 *frame, u32 len, s32 vnet_hdr_len, struct colo_cmp_pkt *pkt);

/* Compared-byte views: a masked head and a body, compared as one string. */
struct colo_cmp_bytes {
	const u8 *head;
	u32 head_len;
	const u8 *body;
	u32 body_len;
};

static inline u32 colo_cmp_bytes_len(const struct colo_cmp_bytes *b)
{
	return b->head_len + b->body_len;
}

static inline u8 colo_cmp_bytes_at(const struct colo_cmp_bytes *b, u32 i)
{
	return i < b->head_len ? b->head[i] : b->body[i - b->head_len];
}

bool colo_cmp_bytes_equal(const struct colo_cmp_bytes *a, const struct colo_cmp_bytes *b);
u32 colo_cmp_bytes_first_diff(const struct colo_cmp_bytes *a, const struct colo_cmp_bytes *b);
u32 colo_cmp_bytes_copy(const struct colo_cmp_bytes *b, u32 from, u8 *dst, u32 max);

/* ---- decisions (model.py) ---------------------------------------------------- */

enum colo_cmp_side { COLO_CMP_PRIMARY = 0, COLO_CMP_SECONDARY = 1 };

/* Reason of a checkpoint request (model.Reason, in that order). */
enum colo_cmp_reason {
	COLO_CMP_PAYLOAD_MISMATCH,
	COLO_CMP_CONTROL_MISMATCH,
	COLO_CMP_TIMEOUT,
	COLO_CMP_QUEUE_LIMIT,
	COLO_CMP_MEMORY_LIMIT,
	COLO_CMP_CONNECTION_LIMIT,
	__COLO_CMP_REASON_MAX
};

/* Why a frame is dropped (model.DropReason, in that order). */
enum colo_cmp_drop {
	COLO_CMP_MATCHED,
	COLO_CMP_VERIFIED,
	COLO_CMP_DIVERGED,
	COLO_CMP_CHECKPOINT,
	COLO_CMP_SECONDARY_CONTROL,
	COLO_CMP_PASSTHROUGH,
	COLO_CMP_MALFORMED,
	COLO_CMP_OVERFLOW,
	__COLO_CMP_DROP_MAX
};

enum colo_cmp_kind { COLO_CMP_RELEASE, COLO_CMP_DROP, COLO_CMP_REQUEST };

#define COLO_CMP_DIV_BYTES	64

struct colo_cmp_decision {
	u8 kind;		/* enum colo_cmp_kind */
	u8 side;		/* DROP */
	u8 reason;		/* DROP: enum colo_cmp_drop; REQUEST: enum colo_cmp_reason */
	u8 has_key;
	u8 has_div;		/* REQUEST */
	u8 div_plen;
	u8 div_slen;
	u8 pad;
	u64 tag;		/* RELEASE, DROP: the caller's handle */
	s64 time_us;		/* RELEASE: held time; REQUEST: when */
	s64 div_offset;		/* stream offset or FIFO slot of the first difference */
	struct colo_cmp_key key;
	u8 div_p[COLO_CMP_DIV_BYTES];
	u8 div_s[COLO_CMP_DIV_BYTES];
};

/* ---- configuration and counters ---------------------------------------------- */

struct colo_cmp_rule {		/* model.PassthroughRule; a field < 0 matches anything */
	s16 proto;
	s32 port;
	s8 family;		/* 4 or 6 with net, else -1 */
	u8 prefix;
	u8 net[16];
};

#define COLO_CMP_MAX_RULES	16

struct colo_cmp_config {
	s64 compare_timeout_us;
	u32 max_queue_per_conn;
	u64 max_held_bytes;
	u32 max_connections;
	u32 nrules;
	struct colo_cmp_rule rules[COLO_CMP_MAX_RULES];
};

struct colo_cmp_counters {	/* model.Counters */
	u64 frames[2];
	u64 bytes[2];
	u64 released;
	u64 dropped[__COLO_CMP_DROP_MAX];
	u64 pairs_matched;
	u64 bytes_compared;
	u64 checkpoint_requests[__COLO_CMP_REASON_MAX];
	u64 requests_suppressed;
	u64 checkpoints_done;
	u64 passthrough;
	u64 control_passed;
	u64 malformed;
	u64 overflow;
	u64 connections_evicted;
	s64 connections_now;
	s64 held_frames_now;
	s64 held_bytes_now;
};

/* ---- connections and held frames --------------------------------------------- */

struct colo_cmp_conn;

/*
 * One held frame.  It sits on the engine's arrival queue (oldest first) and, while
 * not done, on its connection's queue for its side.  The compared bytes of a FIFO
 * frame stay valid while it is held: the caller owns the frame until a decision
 * names its tag.
 */
struct colo_cmp_held {
	struct colo_cmp_held *next_arrival;
	struct colo_cmp_held *next;	/* connection queue */
	struct colo_cmp_conn *conn;
	void *frame;			/* userspace engine: the copy it owns */
	u64 tag;
	s64 arrival;
	u32 size;
	u8 side;
	bool done;
	u8 head_len;
	u8 head[COLO_CMP_HEAD_MAX];
	const u8 *body;
	u32 body_len;
	/* TCP (conn.py Held): stream offset after its bytes (COLO_CMP_NO_DATA without),
	 * its ack (-1 without ACK), its flags.
	 */
	u8 flags;
	s64 end;
	s64 ack;
};

struct colo_cmp_queue {
	struct colo_cmp_held *first;
	struct colo_cmp_held *last;
};

/* A connection's per-side FIFO of held frames. */
static inline void colo_cmp_q_push(struct colo_cmp_queue *q, struct colo_cmp_held *h)
{
	h->next = NULL;
	if (q->last)
		q->last->next = h;
	else
		q->first = h;
	q->last = h;
}

static inline struct colo_cmp_held *colo_cmp_q_pop(struct colo_cmp_queue *q)
{
	struct colo_cmp_held *h = q->first;

	q->first = h->next;
	if (!q->first)
		q->last = NULL;
	h->next = NULL;
	return h;
}

enum colo_cmp_conn_kind { COLO_CMP_CONN_TCP, COLO_CMP_CONN_FIFO };

#define COLO_CMP_NO_DATA	(-((s64)1 << 62))	/* conn.py NO_DATA */
#define COLO_CMP_NONE		(-(s64)0x7fffffffffffffffLL - 1)	/* Python's None */

/* An out-of-order segment (tcp.py p_ooo/s_ooo), kept sorted by offset. */
struct colo_cmp_seg {
	struct colo_cmp_seg *next;
	s64 off;
	u32 len;
	u8 data[];
};

/* A pending-bytes buffer: data[start..start+len) of cap bytes. */
struct colo_cmp_pbuf {
	u32 start;
	u32 len;
	u32 cap;
	u8 data[];
};

/*
 * One side's bytes beyond the verified offset (tcp.py p_pend/s_pend): a copy in one
 * buffer allocated through core->alloc and freed as soon as it is empty (an idle
 * connection holds none), and the out-of-order segments.
 */
struct colo_cmp_stream {
	struct colo_cmp_pbuf *b;
	struct colo_cmp_seg *ooo;
};

/* tcp.py TcpConn's own state (the queues are colo_cmp_conn.q[0] and q[1]). */
struct colo_cmp_tcp {
	s64 v;
	s64 p_aseq, s_aseq;		/* -1: not known; s: -2 while guessing */
	s64 p_aoff, s_aoff;
	s64 p_next, s_next;
	s64 p_max_ack, s_max_ack;	/* -1: no ACK seen */
	s64 p_fin, s_fin;		/* COLO_CMP_NONE: none */
	s64 p_rst_end, s_rst_end;
	s64 s_isn;			/* -1: none */
	s64 s_guess_seq;		/* with s_guess: the SYN anchor (s_guess_seq, -1) */
	s64 s_old_seq, s_old_off;	/* with s_old: its numbering before a checkpoint */
	struct colo_cmp_stream p, s;
	u8 p_syn, s_syn;
	bool syn_ok, fin_ok, p_rst, s_rst, s_reanchor, s_guess, s_unordered, s_old;
};

struct colo_cmp_conn {		/* conn.py Conn + datagram.py FifoConn */
	struct colo_cmp_key key;
	u64 epoch;
	u8 kind;
	bool passthrough;
	bool diverged;
	bool closed;
	bool queue_flag;
	bool has_first_div;
	s32 held_p;
	s32 held_s;
	u64 frames_matched;
	u64 bytes_matched;
	u64 requests;
	/* FIFO; TCP uses q[0] and q[1] as p_q and s_q */
	struct colo_cmp_queue q[2];
	u64 slot;
	struct colo_cmp_tcp tcp;
};

/*
 * Engine-wide state the per-connection code works on.  The caller serialises
 * every call on one core (the userspace engine is single-threaded; the kernel
 * datapath will hold its node's lock).
 */
struct colo_cmp_core {
	struct colo_cmp_config cfg;
	struct colo_cmp_counters st;
	bool pending;
	bool memory_flag;
	bool connection_flag;
	u64 epoch;
	struct colo_cmp_held *arrivals;		/* oldest first */
	struct colo_cmp_held *arrivals_tail;
	void (*emit)(struct colo_cmp_core *core, const struct colo_cmp_decision *d);
	void (*free_held)(struct colo_cmp_core *core, struct colo_cmp_held *h);
	/* Per-connection allocations (TCP pending bytes and segments): malloc/free in
	 * userspace, kmalloc(GFP_ATOMIC)/kfree in the kernel.  NULL is an allowed
	 * answer (see colo_cmp_tcp_push).
	 */
	void *(*alloc)(struct colo_cmp_core *core, size_t size);
	void (*free)(struct colo_cmp_core *core, void *p);
};

void colo_cmp_request(struct colo_cmp_core *core, u8 reason, struct colo_cmp_conn *conn,
		      s64 now, const struct colo_cmp_bytes *p, const struct colo_cmp_bytes *s,
		      u32 diff_at, s64 offset);
void colo_cmp_drop(struct colo_cmp_core *core, u8 side, u64 tag, struct colo_cmp_conn *conn,
		   u8 reason);
void colo_cmp_release(struct colo_cmp_core *core, u64 tag, struct colo_cmp_conn *conn,
		      s64 held_us);
void colo_cmp_hold(struct colo_cmp_core *core, struct colo_cmp_held *h, s64 now);
void colo_cmp_check_limits(struct colo_cmp_core *core, struct colo_cmp_conn *conn, u8 side,
			   s64 now);
void colo_cmp_drop_held(struct colo_cmp_core *core, struct colo_cmp_held *h, u8 reason);
void colo_cmp_prune(struct colo_cmp_core *core);
void colo_cmp_check_timeout(struct colo_cmp_core *core, s64 now);

void colo_cmp_fifo_rebase(struct colo_cmp_conn *conn, u64 epoch);
/* @h is a filled-in record the connection takes if it holds the frame; returns true
 * then (the caller must keep the frame), false when the frame was decided at once.
 */
bool colo_cmp_fifo_push(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
			struct colo_cmp_held *h, s64 now);

void colo_cmp_tcp_init(struct colo_cmp_conn *conn);
void colo_cmp_tcp_rebase(struct colo_cmp_core *core, struct colo_cmp_conn *conn, u64 epoch);
/* Frees the streams' buffers (the connection goes away; its queues must be empty). */
void colo_cmp_tcp_free(struct colo_cmp_core *core, struct colo_cmp_conn *conn);
/*
 * One parsed TCP segment.  @h is a filled-in record (side, tag, size) that the
 * connection takes if it holds the frame: returns true then, false when the frame
 * was decided at once.  When an allocation for the pending bytes fails, the
 * connection asks for a checkpoint (COLO_CMP_MEMORY_LIMIT) and is treated as
 * diverged until it: held primaries are released by checkpoint_done, secondaries
 * dropped (COLO_CMP_DIVERGED).
 */
bool colo_cmp_tcp_push(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
		       struct colo_cmp_held *h, const struct colo_cmp_pkt *pkt, s64 now);

#ifndef __KERNEL__
/* The userspace engine (cmp_engine_user.c). */
struct colo_cmp_engine;
struct colo_cmp_engine *colo_cmp_engine_new(const struct colo_cmp_config *cfg);
int colo_cmp_engine_push(struct colo_cmp_engine *e, u8 side, const u8 *frame, u32 len,
			 s64 now, u64 tag, s32 vnet_hdr_len);
void colo_cmp_engine_tick(struct colo_cmp_engine *e, s64 now);
void colo_cmp_engine_checkpoint_done(struct colo_cmp_engine *e, s64 now);
size_t colo_cmp_engine_take(struct colo_cmp_engine *e, const struct colo_cmp_decision **out);
const struct colo_cmp_counters *colo_cmp_engine_counters(const struct colo_cmp_engine *e);
bool colo_cmp_engine_pending(const struct colo_cmp_engine *e);
void colo_cmp_engine_set_retired_max(struct colo_cmp_engine *e, u32 n);
u32 colo_cmp_engine_retired_now(const struct colo_cmp_engine *e);
void colo_cmp_engine_fail_alloc(struct colo_cmp_engine *e, s64 after);
void colo_cmp_engine_free(struct colo_cmp_engine *e);
#endif

#endif /* _COLO_CMP_H */
