/* SPDX-License-Identifier: GPL-2.0 */
/*
 * TCP sequence translation for the secondary host (SECCOLO), the pure part: which
 * fields of a TCP header change, and to what.  No skb, lock or clock here; the
 * caller applies the edits (in the kernel with inet_proto_csum_replace4(), which is
 * right for CHECKSUM_PARTIAL and CHECKSUM_COMPLETE; the host tests with an RFC 1624
 * update) and keeps one struct colo_xlate_flow per TCP connection.
 *
 * The SVM's stack picks its own initial sequence number; the client knows the PVM's.
 * For a connection opened since the last checkpoint the offset is
 * pri_isn - sec_isn (mod 2^32):
 *
 *   SVM -> client  seq += offset                  (colo_xlate_from_svm)
 *   client -> SVM  ack -= offset, SACK edges -= offset   (colo_xlate_to_svm)
 *
 * sec_isn is the seq of the SVM's SYN or SYN-ACK; pri_isn is ack - 1 of the first
 * client segment that acknowledges the PVM's SYN (the handshake ACK of a
 * client-initiated connection, the SYN-ACK of an SVM-initiated one).  When the SVM's
 * SYN or SYN-ACK comes first, its offset is not known yet and it goes out in the
 * SVM's own numbering, exactly like QEMU's filter-rewriter (docs/compare.md says how
 * the primary's compare handles it); when the client's segment comes first, it is
 * held (COLO_XLATE_HOLD) until the SVM's SYN or SYN-ACK, which is then translated
 * too: delivered untranslated, the SVM would reset the connection.
 *
 * The caller keeps flows only for connections opened since the last checkpoint (a
 * flow starts at a SYN in either direction) and forgets them all at a checkpoint,
 * after which the SVM's numbering is the PVM's.
 */
#ifndef _COLO_XLATE_H
#define _COLO_XLATE_H

#include "cmp_env.h"

struct colo_xlate_flow {
	u32 sec_isn;
	u32 pri_isn;
	u32 offset;
	bool have_sec;
	bool have_pri;
	bool active;		/* offset known: translate */
	u64 translated;		/* segments with at least one edit */
};

#define COLO_XLATE_MAX_EDITS	10	/* seq or ack, and 4 SACK blocks of 2 edges */

/* A 32-bit field at byte @off of the TCP header changes from @from to @to (host order). */
struct colo_xlate_edit {
	u16 off;
	u32 from;
	u32 to;
};

enum colo_xlate_verdict {
	COLO_XLATE_PASS,	/* send on, with the edits applied */
	COLO_XLATE_HOLD,	/* keep it until the SVM's SYN is seen, then ask again */
	COLO_XLATE_BAD,		/* not a TCP header we can read: send on unchanged */
};

int colo_xlate_from_svm(struct colo_xlate_flow *f, const u8 *th, u32 len,
			struct colo_xlate_edit *edits, unsigned int *nedits);
int colo_xlate_to_svm(struct colo_xlate_flow *f, const u8 *th, u32 len,
		      struct colo_xlate_edit *edits, unsigned int *nedits);

#endif /* _COLO_XLATE_H */
