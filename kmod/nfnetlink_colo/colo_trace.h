/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Tracepoints of nf_colo (system "nf_colo"), instead of per-packet printk:
 *
 *   nf_colo_capture             the primary datapath took a PVM frame from the tap
 *   nf_colo_match               an SVM frame matched the PVM's and was consumed
 *   nf_colo_release             a held PVM frame goes on, matched or by do-checkpoint
 *                               (the flush at node loss is counted in node-gone instead)
 *   nf_colo_mismatch            the first difference on a connection (tuple, offset)
 *   nf_colo_checkpoint_request  any checkpoint request, and what became of it
 *   nf_colo_checkpoint_done     do-checkpoint: what it released and dropped
 *
 * Each is emitted in the context of the code it describes (softirq for the hooks and
 * timers, process context for netlink operations), under at most the datapath's lock.
 * colo_dp.c defines them (CREATE_TRACE_POINTS); Kbuild puts this directory on its
 * include path for define_trace.h.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM nf_colo

#if !defined(_COLO_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _COLO_TRACE_H

#include <linux/string.h>
#include <linux/tracepoint.h>
#include "cmp.h"
#include "uapi/linux/colo.h"

#ifndef _COLO_TRACE_HELPERS
#define _COLO_TRACE_HELPERS
/* One address of @k as IPv6 (v4-mapped for IPv4, :: without L3), for %pI6c. */
static inline void colo_trace_addr(u8 *out, const struct colo_cmp_key *k, const u8 *a)
{
	memset(out, 0, 16);
	if (k->l3 == 4) {
		out[10] = 0xff;
		out[11] = 0xff;
		memcpy(out + 12, a, 4);
	} else if (k->l3 == 6) {
		memcpy(out, a, 16);
	}
}

/* What colo_node_request_checkpoint() did with a request. */
enum colo_trace_req {
	COLO_TRACE_REQ_SENT,		/* the node became checkpoint-pending */
	COLO_TRACE_REQ_SUPPRESSED,	/* already pending */
	COLO_TRACE_REQ_LOST,		/* the event could not be built: ENOBUFS to listeners */
	COLO_TRACE_REQ_REFUSED,		/* node dying or failed over */
};
#endif

TRACE_EVENT(nf_colo_capture,
	TP_PROTO(u32 node, u32 len, u8 cls),
	TP_ARGS(node, len, cls),
	TP_STRUCT__entry(
		__field(u32, node)
		__field(u32, len)
		__field(u8, cls)
	),
	TP_fast_assign(
		__entry->node = node;
		__entry->len = len;
		__entry->cls = cls;
	),
	TP_printk("node=%u len=%u class=%s", __entry->node, __entry->len,
		  __print_symbolic(__entry->cls, { COLO_CMP_TCP, "tcp" },
				   { COLO_CMP_FIFO, "fifo" }, { COLO_CMP_CONTROL, "control" }))
);

/*
 * A connection event: the node, the connection (as the compare core keys it) and a
 * value, printed as the offset of nf_colo_mismatch (nf_colo_match prints it as len).
 */
DECLARE_EVENT_CLASS(nf_colo_conn,
	TP_PROTO(u32 node, const struct colo_cmp_key *key, s64 value),
	TP_ARGS(node, key, value),
	TP_STRUCT__entry(
		__field(u32, node)
		__field(u16, l3)
		__field(u8, proto)
		__field(u16, sport)
		__field(u16, dport)
		__field(s64, vlan)
		__field(s64, value)
		__array(u8, src, 16)
		__array(u8, dst, 16)
	),
	TP_fast_assign(
		__entry->node = node;
		__entry->value = value;
		if (key) {
			__entry->l3 = key->l3;
			__entry->proto = key->proto;
			__entry->sport = key->sport;
			__entry->dport = key->dport;
			__entry->vlan = key->vlan;
			colo_trace_addr(__entry->src, key, key->src);
			colo_trace_addr(__entry->dst, key, key->dst);
		} else {
			__entry->l3 = 0;
			__entry->proto = 0;
			__entry->sport = 0;
			__entry->dport = 0;
			__entry->vlan = -1;
			memset(__entry->src, 0, 16);
			memset(__entry->dst, 0, 16);
		}
	),
	TP_printk("node=%u l3=%u proto=%u src=%pI6c sport=%u dst=%pI6c dport=%u vlan=%lld offset=%lld",
		  __entry->node, __entry->l3, __entry->proto, __entry->src, __entry->sport,
		  __entry->dst, __entry->dport, __entry->vlan, __entry->value)
);

/* value: the SVM frame's length */
DEFINE_EVENT_PRINT(nf_colo_conn, nf_colo_match,
	TP_PROTO(u32 node, const struct colo_cmp_key *key, s64 value),
	TP_ARGS(node, key, value),
	TP_printk("node=%u l3=%u proto=%u src=%pI6c sport=%u dst=%pI6c dport=%u vlan=%lld len=%lld",
		  __entry->node, __entry->l3, __entry->proto, __entry->src, __entry->sport,
		  __entry->dst, __entry->dport, __entry->vlan, __entry->value)
);

/* value: the offset of the first difference (stream offset or FIFO slot), -1 unknown */
DEFINE_EVENT(nf_colo_conn, nf_colo_mismatch,
	TP_PROTO(u32 node, const struct colo_cmp_key *key, s64 value),
	TP_ARGS(node, key, value)
);

TRACE_EVENT(nf_colo_release,
	TP_PROTO(u32 node, u32 len, s64 held_us),
	TP_ARGS(node, len, held_us),
	TP_STRUCT__entry(
		__field(u32, node)
		__field(u32, len)
		__field(s64, held_us)
	),
	TP_fast_assign(
		__entry->node = node;
		__entry->len = len;
		__entry->held_us = held_us;
	),
	TP_printk("node=%u len=%u held_us=%lld", __entry->node, __entry->len, __entry->held_us)
);

TRACE_EVENT(nf_colo_checkpoint_request,
	TP_PROTO(u32 node, u8 reason, u8 result),
	TP_ARGS(node, reason, result),
	TP_STRUCT__entry(
		__field(u32, node)
		__field(u8, reason)
		__field(u8, result)
	),
	TP_fast_assign(
		__entry->node = node;
		__entry->reason = reason;
		__entry->result = result;
	),
	TP_printk("node=%u reason=%s result=%s", __entry->node,
		  __print_symbolic(__entry->reason, { COLO_REASON_UNSPEC, "unspec" },
				   { COLO_REASON_PAYLOAD_MISMATCH, "payload-mismatch" },
				   { COLO_REASON_CONTROL_MISMATCH, "control-mismatch" },
				   { COLO_REASON_TIMEOUT, "timeout" },
				   { COLO_REASON_QUEUE_LIMIT, "queue-limit" },
				   { COLO_REASON_MEMORY_LIMIT, "memory-limit" },
				   { COLO_REASON_CONNECTION_LIMIT, "connection-limit" },
				   { COLO_REASON_MANUAL, "manual" }),
		  __print_symbolic(__entry->result, { COLO_TRACE_REQ_SENT, "sent" },
				   { COLO_TRACE_REQ_SUPPRESSED, "suppressed" },
				   { COLO_TRACE_REQ_LOST, "lost" },
				   { COLO_TRACE_REQ_REFUSED, "refused" }))
);

TRACE_EVENT(nf_colo_checkpoint_done,
	TP_PROTO(u32 node, u32 released, u32 dropped),
	TP_ARGS(node, released, dropped),
	TP_STRUCT__entry(
		__field(u32, node)
		__field(u32, released)
		__field(u32, dropped)
	),
	TP_fast_assign(
		__entry->node = node;
		__entry->released = released;
		__entry->dropped = dropped;
	),
	TP_printk("node=%u released=%u dropped=%u", __entry->node, __entry->released,
		  __entry->dropped)
);

#endif /* _COLO_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE colo_trace
#include <trace/define_trace.h>
