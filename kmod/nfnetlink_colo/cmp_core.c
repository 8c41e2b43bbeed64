// SPDX-License-Identifier: GPL-2.0
/*
 * Engine-wide bookkeeping of the compare core (colo_proxy/compare/core.py): holding,
 * releasing and dropping frames, checkpoint requests with de-duplication, the soft
 * limits and the timeout check on the arrival queue.  The caller serialises calls
 * on one struct colo_cmp_core.
 */
#include "cmp.h"

static void key_of(struct colo_cmp_decision *d, const struct colo_cmp_conn *conn)
{
	if (conn) {
		d->has_key = 1;
		d->key = conn->key;
	}
}

void colo_cmp_request(struct colo_cmp_core *core, u8 reason, struct colo_cmp_conn *conn,
		      s64 now, const struct colo_cmp_bytes *p, const struct colo_cmp_bytes *s,
		      u32 diff_at, s64 offset)
{
	struct colo_cmp_decision d;

	if (conn)
		conn->requests++;
	if (core->pending) {
		core->st.requests_suppressed++;
		return;
	}
	core->pending = true;
	core->st.checkpoint_requests[reason]++;
	memset(&d, 0, sizeof(d));
	d.kind = COLO_CMP_REQUEST;
	d.reason = reason;
	d.time_us = now;
	key_of(&d, conn);
	if (p && s) {
		d.has_div = 1;
		d.div_offset = offset;
		d.div_plen = (u8)colo_cmp_bytes_copy(p, diff_at, d.div_p, COLO_CMP_DIV_BYTES);
		d.div_slen = (u8)colo_cmp_bytes_copy(s, diff_at, d.div_s, COLO_CMP_DIV_BYTES);
	}
	core->emit(core, &d);
}

void colo_cmp_drop(struct colo_cmp_core *core, u8 side, u64 tag, struct colo_cmp_conn *conn,
		   u8 reason)
{
	struct colo_cmp_decision d;

	core->st.dropped[reason]++;
	memset(&d, 0, sizeof(d));
	d.kind = COLO_CMP_DROP;
	d.side = side;
	d.reason = reason;
	d.tag = tag;
	key_of(&d, conn);
	core->emit(core, &d);
}

/* Emit a Release; the caller did the accounting. */
void colo_cmp_release(struct colo_cmp_core *core, u64 tag, struct colo_cmp_conn *conn,
		      s64 held_us)
{
	struct colo_cmp_decision d;

	memset(&d, 0, sizeof(d));
	d.kind = COLO_CMP_RELEASE;
	d.tag = tag;
	d.time_us = held_us > 0 ? held_us : 0;
	key_of(&d, conn);
	core->emit(core, &d);
}

void colo_cmp_check_limits(struct colo_cmp_core *core, struct colo_cmp_conn *conn, u8 side,
			   s64 now)
{
	s64 count = side ? conn->held_s : conn->held_p;

	if (count > (s64)core->cfg.max_queue_per_conn && !conn->queue_flag) {
		conn->queue_flag = true;
		colo_cmp_request(core, COLO_CMP_QUEUE_LIMIT, conn, now, NULL, NULL, 0, 0);
	}
	if (core->st.held_bytes_now > (s64)core->cfg.max_held_bytes && !core->memory_flag) {
		core->memory_flag = true;
		colo_cmp_request(core, COLO_CMP_MEMORY_LIMIT, conn, now, NULL, NULL, 0, 0);
	}
}

/* Account a newly held frame (already on its connection's queue) and check the
 * soft limits.
 */
void colo_cmp_hold(struct colo_cmp_core *core, struct colo_cmp_held *h, s64 now)
{
	struct colo_cmp_conn *conn = h->conn;

	core->st.held_frames_now++;
	core->st.held_bytes_now += h->size;
	h->next_arrival = NULL;
	if (core->arrivals_tail)
		core->arrivals_tail->next_arrival = h;
	else
		core->arrivals = h;
	core->arrivals_tail = h;
	if (h->side)
		conn->held_s++;
	else
		conn->held_p++;
	colo_cmp_check_limits(core, conn, h->side, now);
}

/* A held frame is decided: it leaves the accounting (it stays on the arrival queue,
 * marked done, until colo_cmp_prune() frees it).
 */
static void unhold(struct colo_cmp_core *core, struct colo_cmp_held *h)
{
	h->done = true;
	core->st.held_frames_now--;
	core->st.held_bytes_now -= h->size;
	if (h->side)
		h->conn->held_s--;
	else
		h->conn->held_p--;
}

void colo_cmp_drop_held(struct colo_cmp_core *core, struct colo_cmp_held *h, u8 reason)
{
	unhold(core, h);
	colo_cmp_drop(core, h->side, h->tag, h->conn, reason);
}

void colo_cmp_prune(struct colo_cmp_core *core)
{
	struct colo_cmp_held *h;

	while ((h = core->arrivals) && h->done) {
		core->arrivals = h->next_arrival;
		if (!core->arrivals)
			core->arrivals_tail = NULL;
		core->free_held(core, h);
	}
}

void colo_cmp_check_timeout(struct colo_cmp_core *core, s64 now)
{
	struct colo_cmp_held *h;

	colo_cmp_prune(core);
	h = core->arrivals;
	if (!h || core->pending)
		return;
	if (now - h->arrival >= core->cfg.compare_timeout_us)
		colo_cmp_request(core, COLO_CMP_TIMEOUT, h->conn, now, NULL, NULL, 0, 0);
}
