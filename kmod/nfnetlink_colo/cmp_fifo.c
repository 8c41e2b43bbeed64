// SPDX-License-Identifier: GPL-2.0
/*
 * FIFO pairing for everything that is not a TCP stream
 * (colo_proxy/compare/datagram.py; docs/compare.md, "Datagrams"): the n-th primary
 * frame of a connection must equal its n-th secondary frame.
 */
#include "cmp.h"


static void bytes_of(const struct colo_cmp_held *h, struct colo_cmp_bytes *b)
{
	b->head = h->head;
	b->head_len = h->head_len;
	b->body = h->body;
	b->body_len = h->body_len;
}

void colo_cmp_fifo_rebase(struct colo_cmp_conn *conn, u64 epoch)
{
	conn->epoch = epoch;
	conn->diverged = false;
	conn->queue_flag = false;
	conn->held_p = 0;
	conn->held_s = 0;
	conn->q[0].first = conn->q[0].last = NULL;
	conn->q[1].first = conn->q[1].last = NULL;
	conn->slot = 0;
}

static void diverge(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
		    const struct colo_cmp_bytes *p, const struct colo_cmp_bytes *s, s64 now)
{
	u32 i = colo_cmp_bytes_first_diff(p, s);
	struct colo_cmp_held *h;

	conn->has_first_div = true;
	colo_cmp_request(core, COLO_CMP_PAYLOAD_MISMATCH, conn, now, p, s, i, (s64)conn->slot);
	conn->diverged = true;
	while (conn->q[1].first) {
		h = colo_cmp_q_pop(&conn->q[1]);
		colo_cmp_drop_held(core, h, COLO_CMP_DIVERGED);
	}
}

/* The matched pair's bookkeeping: slot, byte counts, the primary's Release. */
static void matched(struct colo_cmp_core *core, struct colo_cmp_conn *conn, u32 n)
{
	conn->slot++;
	conn->bytes_matched += n;
	conn->frames_matched++;
	core->st.bytes_compared += n;
	core->st.released++;
	core->st.pairs_matched++;
}

static bool fifo_primary(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
			 struct colo_cmp_held *h, s64 now)
{
	struct colo_cmp_bytes pb, sb;
	struct colo_cmp_held *s = conn->q[1].first;

	bytes_of(h, &pb);
	if (s && !conn->diverged) {
		bytes_of(s, &sb);
		if (colo_cmp_bytes_equal(&sb, &pb)) {
			colo_cmp_q_pop(&conn->q[1]);
			colo_cmp_drop_held(core, s, COLO_CMP_MATCHED);
			matched(core, conn, colo_cmp_bytes_len(&pb));
			colo_cmp_release(core, h->tag, conn, 0);
			return false;
		}
		colo_cmp_q_push(&conn->q[0], h);
		colo_cmp_hold(core, h, now);
		diverge(core, conn, &pb, &sb, now);
		return true;
	}
	colo_cmp_q_push(&conn->q[0], h);
	colo_cmp_hold(core, h, now);
	return true;
}

static bool fifo_secondary(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
			   struct colo_cmp_held *h, s64 now)
{
	struct colo_cmp_bytes pb, sb;
	struct colo_cmp_held *p = conn->q[0].first;
	u32 n;

	if (conn->diverged) {
		colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_DIVERGED);
		return false;
	}
	if (!p) {
		colo_cmp_q_push(&conn->q[1], h);
		colo_cmp_hold(core, h, now);
		return true;
	}
	bytes_of(p, &pb);
	bytes_of(h, &sb);
	if (colo_cmp_bytes_equal(&pb, &sb)) {
		colo_cmp_q_pop(&conn->q[0]);
		n = colo_cmp_bytes_len(&sb);
		p->done = true;
		conn->held_p--;
		core->st.held_frames_now--;
		core->st.held_bytes_now -= p->size;
		matched(core, conn, n);
		colo_cmp_release(core, p->tag, conn, now - p->arrival);
		colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_MATCHED);
		return false;
	}
	diverge(core, conn, &pb, &sb, now);
	colo_cmp_drop(core, 1, h->tag, conn, COLO_CMP_DIVERGED);
	return false;
}

bool colo_cmp_fifo_push(struct colo_cmp_core *core, struct colo_cmp_conn *conn,
			struct colo_cmp_held *h, s64 now)
{
	h->conn = conn;
	h->arrival = now;
	h->done = false;
	if (h->side)
		return fifo_secondary(core, conn, h, now);
	return fifo_primary(core, conn, h, now);
}
