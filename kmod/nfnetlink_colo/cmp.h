/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The COLO compare core: frames in, decisions out (docs/compare.md is the
 * specification; colo_proxy/compare/ is its executable form, and
 * tests/unit/test_ccore_*.py check that this C core decides exactly like it).
 *
 * Layers:
 *   cmp_parse.c   one Ethernet frame -> struct colo_cmp_pkt (class, key, compared bytes)
 *   cmp_fifo.c    per-connection FIFO pairing (UDP, ICMP, other IP, fragments, non-IP)
 *   cmp_engine.c  a whole engine for userspace (connection table, arrival queue,
 *                 limits, checkpoint de-duplication): the differential tests and,
 *                 later, a Python extension.  The kernel datapath keeps its own table
 *                 (rhashtable, per-bucket locks, a timer) around the same per-connection
 *                 code.
 *
 * Nothing here allocates in the per-connection code, takes locks or reads clocks:
 * time is an argument (microseconds), and every held frame is owned by the caller
 * (an skb in the kernel, a malloc'd copy in userspace) until a decision names it.
 */
#ifndef _COLO_CMP_H
#define _COLO_CMP_H

#include "cmp_env.h"

/* Classes of frames (parse.py: TCP, FIFO, CONTROL, EMPTY). */
enum cmp_class {
	CMP_TCP = 0,
	CMP_FIFO = 1,
	CMP_CONTROL = 2,
	CMP_EMPTY = 3,
};

#define CMP_VLAN_NONE		(-1)
#define CMP_MAX_VLAN_TAGS	4
#define CMP_MAX_IP6_EXT		16
#define CMP_HEAD_MAX		12	/* masked header bytes compared before the body */
#define CMP_RAW_L3		0	/* pseudo EtherType: runt or 802.3/LLC frame */

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
 * One parsed frame.  For CMP_TCP: seq, ack, flags and the payload.  For CMP_FIFO:
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
	u8 head[CMP_HEAD_MAX];
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

#endif /* _COLO_CMP_H */
