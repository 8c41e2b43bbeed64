// SPDX-License-Identifier: GPL-2.0
/*
 * TCP sequence translation for the secondary host: see xlate.h.  Everything is
 * read with explicit bounds; a header that does not parse is left alone.
 */
#include "xlate.h"

#define TH_FIN	0x01
#define TH_SYN	0x02
#define TH_ACK	0x10

#define TCPOPT_EOL	0
#define TCPOPT_NOP	1
#define TCPOPT_SACK	5

static void edit(struct colo_xlate_edit *edits, unsigned int *n, u16 off, u32 from, u32 to)
{
	if (from == to || *n >= COLO_XLATE_MAX_EDITS)
		return;
	edits[*n].off = off;
	edits[*n].from = from;
	edits[*n].to = to;
	(*n)++;
}

/* Data offset of a readable header, or 0. */
static u32 header_len(const u8 *th, u32 len)
{
	u32 doff;

	if (len < 20)
		return 0;
	doff = (u32)(th[12] >> 4) << 2;
	return doff >= 20 && doff <= len ? doff : 0;
}

int colo_xlate_from_svm(struct colo_xlate_flow *f, const u8 *th, u32 len,
			struct colo_xlate_edit *edits, unsigned int *nedits)
{
	u32 seq;

	*nedits = 0;
	if (!header_len(th, len))
		return COLO_XLATE_BAD;
	seq = cmp_be32(th + 4);
	if ((th[13] & TH_SYN) && !f->have_sec) {
		/* Its SYN or SYN-ACK.  Translated only if the client already acknowledged
		 * the PVM's SYN (then held, see colo_xlate_to_svm()); else it goes out in
		 * the SVM's own numbering.
		 */
		f->have_sec = true;
		f->sec_isn = seq;
		if (f->have_pri) {
			f->offset = f->pri_isn - f->sec_isn;
			f->active = true;
		}
	}
	if (f->active) {
		edit(edits, nedits, 4, seq, seq + f->offset);
		if (*nedits)
			f->translated++;
	}
	return COLO_XLATE_PASS;
}

static void sack_edits(const struct colo_xlate_flow *f, const u8 *th, u32 doff,
		       struct colo_xlate_edit *edits, unsigned int *nedits)
{
	u32 i = 20, olen, j, v;

	while (i < doff) {
		if (th[i] == TCPOPT_EOL)
			break;
		if (th[i] == TCPOPT_NOP) {
			i++;
			continue;
		}
		if (i + 1 >= doff)
			break;
		olen = th[i + 1];
		if (olen < 2 || i + olen > doff)
			break;		/* malformed options: the rest is not touched */
		if (th[i] == TCPOPT_SACK && olen >= 10 && (olen - 2) % 8 == 0) {
			for (j = i + 2; j + 4 <= i + olen; j += 4) {
				v = cmp_be32(th + j);
				edit(edits, nedits, (u16)j, v, v - f->offset);
			}
		}
		i += olen;
	}
}

int colo_xlate_to_svm(struct colo_xlate_flow *f, const u8 *th, u32 len,
		      struct colo_xlate_edit *edits, unsigned int *nedits)
{
	u32 doff = header_len(th, len), ack;

	*nedits = 0;
	if (!doff)
		return COLO_XLATE_BAD;
	if (!(th[13] & TH_ACK))
		return COLO_XLATE_PASS;
	ack = cmp_be32(th + 8);
	if (!f->have_pri) {
		/* The first client segment that acknowledges the PVM's SYN: the handshake
		 * ACK (client-initiated) or the SYN-ACK (SVM-initiated).
		 */
		f->have_pri = true;
		f->pri_isn = ack - 1;
		if (f->have_sec) {
			f->offset = f->pri_isn - f->sec_isn;
			f->active = true;
		}
	}
	if (!f->have_sec)
		return COLO_XLATE_HOLD;
	if (f->active) {
		edit(edits, nedits, 8, ack, ack - f->offset);
		sack_edits(f, th, doff, edits, nedits);
		if (*nedits)
			f->translated++;
	}
	return COLO_XLATE_PASS;
}
